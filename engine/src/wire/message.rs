//! The length-prefixed messages that follow the handshake: a decoder that borrows from a
//! partial read buffer and an encoder that appends to a reusable one.
//!
//! Every message is `<length: u32 big-endian><id: u8><payload>`, the length counting the id
//! and the payload; a length of zero is a keep-alive.

use std::fmt;

use super::WireError;
use crate::lengths::BlockInfo;

/// The largest length prefix we accept by default: 2 MiB + 13.
///
/// A `piece` message carries a 16 KiB block plus 13 bytes of header, but a `bitfield` is one
/// bit per piece: a torrent at the limit of [`crate::lengths::MAX_PIECES`] (2^24 pieces) sends a
/// 2 MiB bitfield. 2 MiB + 13 admits both (and blocks up to
/// [`crate::lengths::MAX_REQUEST_LEN`]) while still refusing a 4 GiB length prefix before a
/// byte of it is buffered. A caller that knows the torrent can pass a tighter limit.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 2 * 1024 * 1024 + 13;

/// Message ids of BEP 3, BEP 6, BEP 10 and BEP 52.
mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 13;
    pub const HAVE_ALL: u8 = 14;
    pub const HAVE_NONE: u8 = 15;
    pub const REJECT: u8 = 16;
    pub const ALLOWED_FAST: u8 = 17;
    pub const EXTENDED: u8 = 20;
    pub const HASH_REQUEST: u8 = 21;
    pub const HASHES: u8 = 22;
    pub const HASH_REJECT: u8 = 23;
}

/// Bytes of the header shared by `hash request`, `hashes` and `hash reject` (BEP 52): the
/// file's `pieces root`, then base layer, index, length and proof layers, 4 bytes each.
pub const HASH_HEADER_LEN: usize = 32 + 4 * 4;

/// The header of the BEP 52 hash messages: which hashes of which file's merkle tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashRequest {
    /// The file's merkle root (`pieces root`), naming the file.
    pub pieces_root: [u8; 32],
    /// The layer the hashes come from, counted from the leaves (0: 16 KiB blocks).
    pub base_layer: u32,
    /// The first hash's index in that layer.
    pub index: u32,
    /// How many hashes of the base layer.
    pub length: u32,
    /// How many layers above the base the proof covers (uncle hashes come after the base
    /// hashes in a `hashes` message).
    pub proof_layers: u32,
}

impl HashRequest {
    /// Reads the header (the caller checked there are [`HASH_HEADER_LEN`] bytes).
    fn read(p: &[u8]) -> Self {
        let mut pieces_root = [0u8; 32];
        pieces_root.copy_from_slice(&p[..32]);
        Self {
            pieces_root,
            base_layer: be32(&p[32..36]),
            index: be32(&p[36..40]),
            length: be32(&p[40..44]),
            proof_layers: be32(&p[44..48]),
        }
    }

    /// Appends the header.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pieces_root);
        for n in [self.base_layer, self.index, self.length, self.proof_layers] {
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// One peer wire message. Variable-size payloads borrow from the buffer they were decoded from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A zero-length message that keeps the connection open.
    KeepAlive,
    /// The sender will not answer our requests.
    Choke,
    /// The sender will answer our requests.
    Unchoke,
    /// The sender wants pieces we have.
    Interested,
    /// The sender wants nothing from us.
    NotInterested,
    /// The sender has completed this piece.
    Have(u32),
    /// The sender's pieces, MSB first; check it with [`crate::bitfield::Bitfield::from_bytes`].
    Bitfield(&'a [u8]),
    /// The sender asks for a block.
    Request(BlockInfo),
    /// A block of data.
    Piece {
        /// The piece index.
        piece: u32,
        /// The byte offset within the piece.
        begin: u32,
        /// The block's bytes.
        data: &'a [u8],
    },
    /// The sender withdraws a request.
    Cancel(BlockInfo),
    /// The sender's DHT port (BEP 5).
    Port(u16),
    /// The sender suggests we download this piece (BEP 6).
    Suggest(u32),
    /// The sender has every piece (BEP 6), in place of a bitfield.
    HaveAll,
    /// The sender has no piece (BEP 6), in place of a bitfield.
    HaveNone,
    /// The sender will not answer this request (BEP 6).
    Reject(BlockInfo),
    /// We may request this piece even while choked (BEP 6).
    AllowedFast(u32),
    /// An extension protocol message (BEP 10): `id` 0 is the extended handshake.
    Extended {
        /// The extended message id.
        id: u8,
        /// The bencoded (or extension-specific) payload.
        payload: &'a [u8],
    },
    /// The sender asks for hashes of a file's merkle tree (BEP 52).
    HashRequest(HashRequest),
    /// Hashes of a file's merkle tree (BEP 52): `length` hashes of the base layer, then the
    /// uncle hashes of the proof, 32 bytes each (`hashes.len()` is a multiple of 32).
    Hashes {
        /// What they answer.
        request: HashRequest,
        /// The hashes laid end to end.
        hashes: &'a [u8],
    },
    /// The sender will not send these hashes (BEP 52).
    HashReject(HashRequest),
    /// A message with an id we do not know; ignore it.
    Unknown {
        /// The message id.
        id: u8,
        /// Its payload.
        payload: &'a [u8],
    },
}

/// What [`decode`] found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole message, which used the first `consumed` bytes of the buffer.
    Message {
        /// The message.
        message: Message<'a>,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// The buffer holds part of a message: read at least this many more bytes.
    NeedMore(usize),
}

/// What a message id's payload must look like.
enum Shape {
    /// Exactly this many bytes.
    Exact(u32),
    /// At least this many bytes.
    AtLeast(u32),
}

/// The name and payload shape of a known id; `None` for an unknown one (any payload).
fn shape(id: u8) -> Option<(&'static str, Shape)> {
    Some(match id {
        id::CHOKE => ("choke", Shape::Exact(0)),
        id::UNCHOKE => ("unchoke", Shape::Exact(0)),
        id::INTERESTED => ("interested", Shape::Exact(0)),
        id::NOT_INTERESTED => ("not interested", Shape::Exact(0)),
        id::HAVE => ("have", Shape::Exact(4)),
        id::BITFIELD => ("bitfield", Shape::AtLeast(0)),
        id::REQUEST => ("request", Shape::Exact(12)),
        id::PIECE => ("piece", Shape::AtLeast(8)),
        id::CANCEL => ("cancel", Shape::Exact(12)),
        id::PORT => ("port", Shape::Exact(2)),
        id::SUGGEST => ("suggest", Shape::Exact(4)),
        id::HAVE_ALL => ("have all", Shape::Exact(0)),
        id::HAVE_NONE => ("have none", Shape::Exact(0)),
        id::REJECT => ("reject", Shape::Exact(12)),
        id::ALLOWED_FAST => ("allowed fast", Shape::Exact(4)),
        id::EXTENDED => ("extended", Shape::AtLeast(1)),
        id::HASH_REQUEST => ("hash request", Shape::Exact(HASH_HEADER_LEN as u32)),
        id::HASHES => ("hashes", Shape::AtLeast(HASH_HEADER_LEN as u32)),
        id::HASH_REJECT => ("hash reject", Shape::Exact(HASH_HEADER_LEN as u32)),
        _ => return None,
    })
}

/// Reads a big-endian u32 from the first four bytes (the caller checked there are four).
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads a `request`/`cancel`/`reject` payload (the caller checked it is 12 bytes).
fn block(p: &[u8]) -> BlockInfo {
    BlockInfo {
        piece: be32(&p[0..4]),
        begin: be32(&p[4..8]),
        len: be32(&p[8..12]),
    }
}

/// Decodes the message at the start of `buf`, borrowing from it.
///
/// A length prefix above `max_len` is refused as soon as its four bytes are there, and a known
/// message with an impossible payload size as soon as its id byte is, so a hostile peer cannot
/// make the caller buffer anything. Unknown ids decode as [`Message::Unknown`].
pub fn decode(buf: &[u8], max_len: u32) -> Result<Decoded<'_>, WireError> {
    if buf.len() < 4 {
        return Ok(Decoded::NeedMore(4 - buf.len()));
    }
    let len = be32(buf);
    if len > max_len {
        return Err(WireError::MessageTooLong { len, max: max_len });
    }
    if len == 0 {
        return Ok(Decoded::Message {
            message: Message::KeepAlive,
            consumed: 4,
        });
    }
    let Some(&id) = buf.get(4) else {
        return Ok(Decoded::NeedMore(len as usize));
    };
    let payload_len = len - 1;
    if let Some((name, shape)) = shape(id) {
        match shape {
            Shape::Exact(expected) if payload_len != expected => {
                return Err(WireError::WrongPayloadLength {
                    message: name,
                    got: payload_len,
                    expected,
                })
            }
            Shape::AtLeast(min) if payload_len < min => {
                return Err(WireError::PayloadTooShort {
                    message: name,
                    got: payload_len,
                    min,
                })
            }
            _ => {}
        }
    }
    if id == id::HASHES && (payload_len as usize - HASH_HEADER_LEN) % 32 != 0 {
        return Err(WireError::WrongPayloadLength {
            message: "hashes",
            got: payload_len,
            expected: payload_len - (payload_len - HASH_HEADER_LEN as u32) % 32,
        });
    }
    let total = (len as usize).saturating_add(4);
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total - buf.len()));
    }
    let p = &buf[5..total];
    let message = match id {
        id::CHOKE => Message::Choke,
        id::UNCHOKE => Message::Unchoke,
        id::INTERESTED => Message::Interested,
        id::NOT_INTERESTED => Message::NotInterested,
        id::HAVE => Message::Have(be32(p)),
        id::BITFIELD => Message::Bitfield(p),
        id::REQUEST => Message::Request(block(p)),
        id::PIECE => Message::Piece {
            piece: be32(&p[0..4]),
            begin: be32(&p[4..8]),
            data: &p[8..],
        },
        id::CANCEL => Message::Cancel(block(p)),
        id::PORT => Message::Port(u16::from_be_bytes([p[0], p[1]])),
        id::SUGGEST => Message::Suggest(be32(p)),
        id::HAVE_ALL => Message::HaveAll,
        id::HAVE_NONE => Message::HaveNone,
        id::REJECT => Message::Reject(block(p)),
        id::ALLOWED_FAST => Message::AllowedFast(be32(p)),
        id::EXTENDED => Message::Extended {
            id: p[0],
            payload: &p[1..],
        },
        id::HASH_REQUEST => Message::HashRequest(HashRequest::read(p)),
        id::HASHES => Message::Hashes {
            request: HashRequest::read(p),
            hashes: &p[HASH_HEADER_LEN..],
        },
        id::HASH_REJECT => Message::HashReject(HashRequest::read(p)),
        _ => Message::Unknown { id, payload: p },
    };
    Ok(Decoded::Message {
        message,
        consumed: total,
    })
}

/// The 13 bytes that precede a block's data in a `piece` message: length prefix, id 7, piece
/// and begin. Write them, then the data straight from its buffer, without copying it.
pub fn piece_header(piece: u32, begin: u32, len: u32) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[0..4].copy_from_slice(&9u32.saturating_add(len).to_be_bytes());
    h[4] = id::PIECE;
    h[5..9].copy_from_slice(&piece.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    h
}

impl Message<'_> {
    /// The message id; `None` for a keep-alive, which has none.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Self::KeepAlive => return None,
            Self::Choke => id::CHOKE,
            Self::Unchoke => id::UNCHOKE,
            Self::Interested => id::INTERESTED,
            Self::NotInterested => id::NOT_INTERESTED,
            Self::Have(_) => id::HAVE,
            Self::Bitfield(_) => id::BITFIELD,
            Self::Request(_) => id::REQUEST,
            Self::Piece { .. } => id::PIECE,
            Self::Cancel(_) => id::CANCEL,
            Self::Port(_) => id::PORT,
            Self::Suggest(_) => id::SUGGEST,
            Self::HaveAll => id::HAVE_ALL,
            Self::HaveNone => id::HAVE_NONE,
            Self::Reject(_) => id::REJECT,
            Self::AllowedFast(_) => id::ALLOWED_FAST,
            Self::Extended { .. } => id::EXTENDED,
            Self::HashRequest(_) => id::HASH_REQUEST,
            Self::Hashes { .. } => id::HASHES,
            Self::HashReject(_) => id::HASH_REJECT,
            Self::Unknown { id, .. } => *id,
        })
    }

    /// The bytes after the id.
    fn payload_len(&self) -> usize {
        match self {
            Self::KeepAlive
            | Self::Choke
            | Self::Unchoke
            | Self::Interested
            | Self::NotInterested
            | Self::HaveAll
            | Self::HaveNone => 0,
            Self::Have(_) | Self::Suggest(_) | Self::AllowedFast(_) => 4,
            Self::Request(_) | Self::Cancel(_) | Self::Reject(_) => 12,
            Self::Port(_) => 2,
            Self::Bitfield(b) => b.len(),
            Self::Piece { data, .. } => 8 + data.len(),
            Self::Extended { payload, .. } => 1 + payload.len(),
            Self::HashRequest(_) | Self::HashReject(_) => HASH_HEADER_LEN,
            Self::Hashes { hashes, .. } => HASH_HEADER_LEN + hashes.len(),
            Self::Unknown { payload, .. } => payload.len(),
        }
    }

    /// The number of bytes [`Message::encode`] appends, length prefix included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::KeepAlive => 4,
            _ => 5 + self.payload_len(),
        }
    }

    /// Appends the message, length prefix included, to `out`.
    ///
    /// The length prefix of a payload over 4 GiB would not fit; such a message cannot be
    /// decoded by anyone, and the caller never builds one (blocks are at most 128 KiB).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let Some(id) = self.id() else {
            out.extend_from_slice(&[0; 4]);
            return;
        };
        out.extend_from_slice(&(1 + self.payload_len() as u32).to_be_bytes());
        out.push(id);
        match self {
            Self::Have(n) | Self::Suggest(n) | Self::AllowedFast(n) => {
                out.extend_from_slice(&n.to_be_bytes())
            }
            Self::Request(b) | Self::Cancel(b) | Self::Reject(b) => {
                out.extend_from_slice(&b.piece.to_be_bytes());
                out.extend_from_slice(&b.begin.to_be_bytes());
                out.extend_from_slice(&b.len.to_be_bytes());
            }
            Self::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Self::Bitfield(b) => out.extend_from_slice(b),
            Self::Piece { piece, begin, data } => {
                out.extend_from_slice(&piece.to_be_bytes());
                out.extend_from_slice(&begin.to_be_bytes());
                out.extend_from_slice(data);
            }
            Self::Extended { id, payload } => {
                out.push(*id);
                out.extend_from_slice(payload);
            }
            Self::HashRequest(r) | Self::HashReject(r) => r.write(out),
            Self::Hashes { request, hashes } => {
                request.write(out);
                out.extend_from_slice(hashes);
            }
            Self::Unknown { payload, .. } => out.extend_from_slice(payload),
            Self::KeepAlive
            | Self::Choke
            | Self::Unchoke
            | Self::Interested
            | Self::NotInterested
            | Self::HaveAll
            | Self::HaveNone => {}
        }
    }
}

impl fmt::Debug for Message<'_> {
    /// Compact: byte payloads show their length, not their contents (a block is 16 KiB).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeepAlive => write!(f, "KeepAlive"),
            Self::Choke => write!(f, "Choke"),
            Self::Unchoke => write!(f, "Unchoke"),
            Self::Interested => write!(f, "Interested"),
            Self::NotInterested => write!(f, "NotInterested"),
            Self::Have(n) => write!(f, "Have({n})"),
            Self::Bitfield(b) => write!(f, "Bitfield({} bytes)", b.len()),
            Self::Request(b) => write!(f, "Request({}, {}, {})", b.piece, b.begin, b.len),
            Self::Piece { piece, begin, data } => {
                write!(f, "Piece({piece}, {begin}, {} bytes)", data.len())
            }
            Self::Cancel(b) => write!(f, "Cancel({}, {}, {})", b.piece, b.begin, b.len),
            Self::Port(p) => write!(f, "Port({p})"),
            Self::Suggest(n) => write!(f, "Suggest({n})"),
            Self::HaveAll => write!(f, "HaveAll"),
            Self::HaveNone => write!(f, "HaveNone"),
            Self::Reject(b) => write!(f, "Reject({}, {}, {})", b.piece, b.begin, b.len),
            Self::AllowedFast(n) => write!(f, "AllowedFast({n})"),
            Self::Extended { id, payload } => {
                write!(f, "Extended({id}, {} bytes)", payload.len())
            }
            Self::HashRequest(r) => write!(f, "HashRequest({r:?})"),
            Self::Hashes { request, hashes } => {
                write!(f, "Hashes({request:?}, {} hashes)", hashes.len() / 32)
            }
            Self::HashReject(r) => write!(f, "HashReject({r:?})"),
            Self::Unknown { id, payload } => write!(f, "Unknown({id}, {} bytes)", payload.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = DEFAULT_MAX_MESSAGE_LEN;

    fn b(piece: u32, begin: u32, len: u32) -> BlockInfo {
        BlockInfo { piece, begin, len }
    }

    /// One of every message, with fixed payloads.
    fn every_message() -> Vec<Message<'static>> {
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(0xdead_beef),
            Message::Bitfield(&[0xff, 0x00, 0x80]),
            Message::Bitfield(&[]),
            Message::Request(b(1, 16_384, 16_384)),
            Message::Piece {
                piece: 3,
                begin: 32_768,
                data: b"some block data",
            },
            Message::Piece {
                piece: 0,
                begin: 0,
                data: &[],
            },
            Message::Cancel(b(u32::MAX, 1, 2)),
            Message::Port(6881),
            Message::Suggest(12),
            Message::HaveAll,
            Message::HaveNone,
            Message::Reject(b(9, 0, 100)),
            Message::AllowedFast(42),
            Message::Extended {
                id: 0,
                payload: b"d1:md11:ut_metadatai1eee",
            },
            Message::Extended {
                id: 3,
                payload: &[],
            },
            Message::Unknown {
                id: 99,
                payload: b"xyz",
            },
            Message::Unknown {
                id: 24,
                payload: &[],
            },
            Message::HashRequest(hr()),
            Message::Hashes {
                request: hr(),
                hashes: &[7; 96],
            },
            Message::Hashes {
                request: hr(),
                hashes: &[],
            },
            Message::HashReject(hr()),
        ]
    }

    fn hr() -> HashRequest {
        HashRequest {
            pieces_root: [0xab; 32],
            base_layer: 2,
            index: 512,
            length: 512,
            proof_layers: 9,
        }
    }

    fn encode_all(msgs: &[Message<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let before = out.len();
            m.encode(&mut out);
            assert_eq!(out.len() - before, m.encoded_len(), "{m:?}");
        }
        out
    }

    /// Decodes everything in `buf`, which must end on a message boundary.
    fn decode_all(mut buf: &[u8]) -> Vec<Message<'_>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            match decode(buf, MAX).unwrap() {
                Decoded::Message { message, consumed } => {
                    out.push(message);
                    buf = &buf[consumed..];
                }
                Decoded::NeedMore(n) => panic!("trailing partial message, need {n}"),
            }
        }
        out
    }

    #[test]
    fn every_message_round_trips() {
        for m in every_message() {
            let bytes = encode_all(&[m]);
            assert_eq!(
                decode(&bytes, MAX),
                Ok(Decoded::Message {
                    message: m,
                    consumed: bytes.len()
                }),
                "{m:?}"
            );
        }
    }

    #[test]
    fn hash_messages_are_checked_for_size() {
        let mut bytes = Vec::new();
        Message::HashRequest(hr()).encode(&mut bytes);
        assert_eq!(bytes.len(), 4 + 1 + 48);
        assert_eq!(&bytes[..5], &[0, 0, 0, 49, 21]);
        assert_eq!(&bytes[5..37], &[0xab; 32]);
        assert_eq!(
            &bytes[37..53],
            &[0, 0, 0, 2, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 9]
        );
        // A hash request one byte short, or hashes that are not whole 32-byte hashes.
        let short = [0, 0, 0, 48, 21];
        assert!(matches!(
            decode(&short, MAX),
            Err(WireError::WrongPayloadLength {
                message: "hash request",
                got: 47,
                ..
            })
        ));
        let mut odd = vec![0, 0, 0, 49 + 31, 22];
        odd.extend_from_slice(&[0; 48 + 31]);
        let err = decode(&odd, MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hashes message has 79 bytes of payload, expected 48"
        );
        // Refused as soon as the header is there, before the body is buffered.
        assert!(decode(&odd[..5], MAX).is_err());
        let reject = [0, 0, 0, 10, 23];
        assert!(matches!(
            decode(&reject, MAX),
            Err(WireError::WrongPayloadLength {
                message: "hash reject",
                ..
            })
        ));
    }

    #[test]
    fn known_encodings() {
        assert_eq!(encode_all(&[Message::KeepAlive]), [0, 0, 0, 0]);
        assert_eq!(encode_all(&[Message::Interested]), [0, 0, 0, 1, 2]);
        assert_eq!(encode_all(&[Message::Have(1)]), [0, 0, 0, 5, 4, 0, 0, 0, 1]);
        assert_eq!(encode_all(&[Message::HaveAll]), [0, 0, 0, 1, 0x0e]);
        assert_eq!(
            encode_all(&[Message::Request(b(1, 2, 3))]),
            [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]
        );
        assert_eq!(
            encode_all(&[Message::Extended {
                id: 1,
                payload: b"d"
            }]),
            [0, 0, 0, 3, 20, 1, b'd']
        );
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let msgs = every_message();
        let bytes = encode_all(&msgs);
        assert_eq!(decode_all(&bytes), msgs);
    }

    #[test]
    fn one_byte_at_a_time() {
        let msgs = every_message();
        let stream = encode_all(&msgs);
        let mut buf: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut want_more = 0usize;
        for &byte in &stream {
            buf.push(byte);
            if want_more > 1 {
                // The decoder promised it needs more: it must still say so.
                match decode(&buf, MAX).unwrap() {
                    Decoded::NeedMore(n) => assert_eq!(n, want_more - 1),
                    Decoded::Message { message, .. } => panic!("early {message:?}"),
                }
                want_more -= 1;
                continue;
            }
            match decode(&buf, MAX).unwrap() {
                Decoded::NeedMore(n) => {
                    assert!(n >= 1);
                    want_more = n;
                }
                Decoded::Message { message, consumed } => {
                    assert_eq!(consumed, buf.len());
                    // Own the message so the buffer can be cleared: compare by re-encoding.
                    got.push(encode_all(&[message]));
                    buf.clear();
                    want_more = 0;
                }
            }
        }
        assert!(buf.is_empty());
        let want: Vec<Vec<u8>> = msgs.iter().map(|m| encode_all(&[*m])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn oversize_prefix_refused_with_four_bytes() {
        let err = decode(&[0xff, 0xff, 0xff, 0xff], MAX).unwrap_err();
        assert_eq!(
            err,
            WireError::MessageTooLong {
                len: u32::MAX,
                max: MAX
            }
        );
        assert_eq!(
            err.to_string(),
            format!("message length 4294967295 is above the maximum of {MAX}")
        );
        // Right at the limit is fine (and waits for the rest).
        let at = MAX.to_be_bytes();
        assert_eq!(decode(&at, MAX), Ok(Decoded::NeedMore(MAX as usize)));
        assert_eq!(
            decode(&[0, 0, 0, 10], 9),
            Err(WireError::MessageTooLong { len: 10, max: 9 })
        );
    }

    #[test]
    fn wrong_fixed_sizes_refused_at_the_id() {
        // A `have` with 3 bytes of payload: refused before its payload arrives.
        let err = decode(&[0, 0, 0, 4, 4], MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "have message has 3 bytes of payload, expected 4"
        );
        let err = decode(&[0, 0, 0, 2, 1, 0], MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unchoke message has 1 bytes of payload, expected 0"
        );
        let err = decode(&[0, 0, 0, 12, 6], MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request message has 11 bytes of payload, expected 12"
        );
        let err = decode(&[0, 0, 0, 5, 7], MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "piece message has 4 bytes of payload, expected at least 8"
        );
        let err = decode(&[0, 0, 0, 1, 20], MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            "extended message has 0 bytes of payload, expected at least 1"
        );
        assert!(matches!(
            decode(&[0, 0, 0, 4, 9], MAX),
            Err(WireError::WrongPayloadLength {
                message: "port",
                got: 3,
                expected: 2
            })
        ));
        // An unknown id may have any payload, an empty one too.
        assert_eq!(
            decode(&[0, 0, 0, 1, 200], MAX),
            Ok(Decoded::Message {
                message: Message::Unknown {
                    id: 200,
                    payload: &[]
                },
                consumed: 5
            })
        );
    }

    #[test]
    fn need_more_counts() {
        assert_eq!(decode(&[], MAX), Ok(Decoded::NeedMore(4)));
        assert_eq!(decode(&[0, 0], MAX), Ok(Decoded::NeedMore(2)));
        assert_eq!(decode(&[0, 0, 0, 5], MAX), Ok(Decoded::NeedMore(5)));
        assert_eq!(decode(&[0, 0, 0, 5, 4, 0], MAX), Ok(Decoded::NeedMore(3)));
    }

    #[test]
    fn piece_header_matches_encode() {
        let data = [7u8; 100];
        let msg = Message::Piece {
            piece: 5,
            begin: 16_384,
            data: &data,
        };
        let bytes = encode_all(&[msg]);
        let header = piece_header(5, 16_384, 100);
        assert_eq!(&bytes[..13], &header);
        assert_eq!(&bytes[13..], &data);
    }

    #[test]
    fn debug_does_not_dump_blocks() {
        let data = vec![0u8; 16_384];
        let m = Message::Piece {
            piece: 1,
            begin: 0,
            data: &data,
        };
        assert_eq!(format!("{m:?}"), "Piece(1, 0, 16384 bytes)");
    }

    /// An owned description of a message, for proptest.
    #[derive(Clone, Debug)]
    enum Owned {
        Simple(u8),
        Index(u8, u32),
        Block(u8, u32, u32, u32),
        Bitfield(Vec<u8>),
        Piece(u32, u32, Vec<u8>),
        Port(u16),
        Extended(u8, Vec<u8>),
        Unknown(u8, Vec<u8>),
        Hash(u8, HashRequest, Vec<u8>),
    }

    impl Owned {
        fn message(&self) -> Message<'_> {
            match self {
                Owned::Simple(k) => [
                    Message::KeepAlive,
                    Message::Choke,
                    Message::Unchoke,
                    Message::Interested,
                    Message::NotInterested,
                    Message::HaveAll,
                    Message::HaveNone,
                ][*k as usize % 7],
                Owned::Index(k, n) => [
                    Message::Have(*n),
                    Message::Suggest(*n),
                    Message::AllowedFast(*n),
                ][*k as usize % 3],
                Owned::Block(k, p, s, l) => {
                    let bl = b(*p, *s, *l);
                    [
                        Message::Request(bl),
                        Message::Cancel(bl),
                        Message::Reject(bl),
                    ][*k as usize % 3]
                }
                Owned::Bitfield(v) => Message::Bitfield(v),
                Owned::Piece(p, s, d) => Message::Piece {
                    piece: *p,
                    begin: *s,
                    data: d,
                },
                Owned::Port(p) => Message::Port(*p),
                Owned::Extended(id, v) => Message::Extended {
                    id: *id,
                    payload: v,
                },
                Owned::Unknown(id, v) => Message::Unknown {
                    id: *id,
                    payload: v,
                },
                Owned::Hash(k, r, v) => match k % 3 {
                    0 => Message::HashRequest(*r),
                    1 => Message::HashReject(*r),
                    _ => Message::Hashes {
                        request: *r,
                        hashes: &v[..v.len() / 32 * 32],
                    },
                },
            }
        }
    }

    fn owned() -> impl Strategy<Value = Owned> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            any::<u8>().prop_map(Owned::Simple),
            (any::<u8>(), any::<u32>()).prop_map(|(k, n)| Owned::Index(k, n)),
            (any::<u8>(), any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(k, p, s, l)| Owned::Block(k, p, s, l)),
            bytes().prop_map(Owned::Bitfield),
            (any::<u32>(), any::<u32>(), bytes()).prop_map(|(p, s, d)| Owned::Piece(p, s, d)),
            any::<u16>().prop_map(Owned::Port),
            (any::<u8>(), bytes()).prop_map(|(id, v)| Owned::Extended(id, v)),
            (24u8.., bytes()).prop_map(|(id, v)| Owned::Unknown(id, v)),
            (any::<u8>(), any::<[u8; 32]>(), any::<[u32; 4]>(), bytes()).prop_map(
                |(k, root, n, v)| Owned::Hash(
                    k,
                    HashRequest {
                        pieces_root: root,
                        base_layer: n[0],
                        index: n[1],
                        length: n[2],
                        proof_layers: n[3],
                    },
                    v
                )
            ),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(msgs in proptest::collection::vec(owned(), 0..20)) {
            let msgs: Vec<Message<'_>> = msgs.iter().map(Owned::message).collect();
            let bytes = encode_all(&msgs);
            prop_assert_eq!(decode_all(&bytes), msgs);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), max in any::<u32>()) {
            let mut buf = &bytes[..];
            // Walk the whole buffer as a stream would, until an error or a partial message.
            while let Ok(Decoded::Message { consumed, .. }) = decode(buf, max) {
                prop_assert!(consumed >= 4 && consumed <= buf.len());
                buf = &buf[consumed..];
            }
        }

        #[test]
        fn need_more_is_exact_for_whole_messages(m in owned(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_all(&[m.message()]);
            let n = cut.index(bytes.len());
            match decode(&bytes[..n], MAX).unwrap() {
                Decoded::NeedMore(more) => {
                    prop_assert!(more >= 1 && n + more <= bytes.len());
                    // Past the 4-byte prefix the count is exact.
                    if n >= 4 { prop_assert_eq!(n + more, bytes.len()); }
                }
                Decoded::Message { .. } => prop_assert!(false, "decoded from a strict prefix"),
            }
        }
    }
}
