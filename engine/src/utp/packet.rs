//! The uTP packet of BEP 29: a 20-byte header, a chain of extensions (selective ACK among them),
//! then the payload; decoded without panicking or allocating, encoded into a caller's buffer.
//!
//! ```text
//! 0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! +---------------+---------------+---------------+---------------+
//! | timestamp_difference_microseconds                             |
//! +---------------+---------------+---------------+---------------+
//! | wnd_size                                                      |
//! +---------------+---------------+---------------+---------------+
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Each extension is `[next extension type][length][length bytes]`; the header's `extension`
//! byte names the first. Type 1 is the selective ACK: bit `i` (least significant bit of each
//! byte first) says packet `ack_nr + 2 + i` arrived. BEP 29 asks for a length that is a multiple
//! of 4 and we always send one; libtorrent sends any length, so any length is accepted.
//!
//! Extension [`EXT_MAX_DATAGRAM`] is shoal's own: a 2-byte big-endian count of the largest
//! datagram the sender reads whole, sent during the handshake (see `conn`'s path MTU
//! discovery). libtorrent and libutp skip extensions they do not know, so it costs them nothing.
//!
//! ```
//! use shoal_engine::utp::packet::{Packet, PacketType, HEADER_LEN};
//! let mut p = Packet::new(PacketType::Syn, 1234);
//! p.seq_nr = 1;
//! let mut buf = [0u8; 64];
//! let n = p.encode(&mut buf).unwrap();
//! assert_eq!(n, HEADER_LEN);
//! let (back, payload) = Packet::decode(&buf[..n]).unwrap();
//! assert_eq!(back, p);
//! assert!(payload.is_empty());
//! ```

use super::UtpError;

/// The size of the fixed header.
pub const HEADER_LEN: usize = 20;
/// The protocol version every packet carries in the low nibble of its first byte.
pub const VERSION: u8 = 1;
/// Extension type: none (ends the chain).
pub const EXT_NONE: u8 = 0;
/// Extension type: selective ACK.
pub const EXT_SACK: u8 = 1;
/// Extension type: the largest UDP payload the sender reads whole (2 bytes, big-endian). Ours:
/// 1 is the selective ACK, 2 libutp's extension bits and 3 libtorrent's close reason; no
/// implementation we know uses 0x53 ('S'), and every one skips a type it does not know.
pub const EXT_MAX_DATAGRAM: u8 = 0x53;
/// The most selective-ACK bytes kept from a packet (512 packets past `ack_nr + 1`), and the
/// most we send. Longer bitmasks are cut to this length: a bit we ignore only costs a
/// retransmission, and our send queue never holds more packets than that
/// ([`super::conn::MAX_IN_FLIGHT`]).
pub const MAX_SACK_BYTES: usize = 64;
/// The most extensions read from one packet. The chain is bounded by the packet's length
/// already; this keeps a chain of thousands of empty unknown extensions from costing work.
pub const MAX_EXTENSIONS: usize = 8;

/// The five packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Payload data (`ST_DATA`, 0).
    Data,
    /// The sender's last packet (`ST_FIN`, 1).
    Fin,
    /// An ACK without data (`ST_STATE`, 2); it does not consume a sequence number.
    State,
    /// The connection is torn down (`ST_RESET`, 3).
    Reset,
    /// Opens a connection (`ST_SYN`, 4).
    Syn,
}

impl PacketType {
    /// The type from its 4-bit code, if it is one of the five.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Data,
            1 => Self::Fin,
            2 => Self::State,
            3 => Self::Reset,
            4 => Self::Syn,
            _ => return None,
        })
    }

    /// The 4-bit code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Fin => 1,
            Self::State => 2,
            Self::Reset => 3,
            Self::Syn => 4,
        }
    }
}

/// A selective-ACK bitmask of up to [`MAX_SACK_BYTES`] bytes, held inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SelectiveAck {
    /// How many bytes of `bits` are in use.
    len: u8,
    /// The bitmask: bit `i` of the whole (LSB first in each byte) is packet `ack_nr + 2 + i`.
    bits: [u8; MAX_SACK_BYTES],
}

impl std::fmt::Debug for SelectiveAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SelectiveAck(")?;
        for b in self.as_bytes() {
            write!(f, "{b:08b}")?;
        }
        write!(f, ")")
    }
}

impl Default for SelectiveAck {
    fn default() -> Self {
        Self::new()
    }
}

impl SelectiveAck {
    /// An empty bitmask (no bytes).
    pub fn new() -> Self {
        Self {
            len: 0,
            bits: [0; MAX_SACK_BYTES],
        }
    }

    /// A bitmask read from the wire, cut to [`MAX_SACK_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut s = Self::new();
        let n = bytes.len().min(MAX_SACK_BYTES);
        s.bits[..n].copy_from_slice(&bytes[..n]);
        s.len = n as u8;
        s
    }

    /// The bytes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits[..usize::from(self.len)]
    }

    /// How many packets the bitmask covers.
    pub fn bit_len(&self) -> usize {
        usize::from(self.len) * 8
    }

    /// Whether bit `i` (packet `ack_nr + 2 + i`) is set.
    pub fn get(&self, i: usize) -> bool {
        i < self.bit_len() && self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i`, growing the mask by whole 4-byte words as BEP 29 asks. Returns false (and
    /// changes nothing) when `i` is past [`MAX_SACK_BYTES`].
    pub fn set(&mut self, i: usize) -> bool {
        if i >= MAX_SACK_BYTES * 8 {
            return false;
        }
        let need = (i / 8 + 1).div_ceil(4) * 4;
        if need > usize::from(self.len) {
            self.len = need as u8;
        }
        self.bits[i / 8] |= 1 << (i % 8);
        true
    }

    /// The indices of the set bits, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.bit_len()).filter(move |&i| self.get(i))
    }
}

/// One uTP packet's header and selective ACK; the payload stays in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// What the packet is.
    pub ty: PacketType,
    /// The receiver's id for the connection (for a SYN: the id the sender will receive on).
    pub connection_id: u16,
    /// The sender's clock when it sent the packet, in microseconds (wrapping).
    pub timestamp_us: u32,
    /// The sender's clock when it received the last packet minus that packet's timestamp:
    /// the one-way delay of the path towards the sender plus the clocks' offset.
    pub timestamp_diff_us: u32,
    /// The bytes the sender can still take into its receive buffer.
    pub wnd_size: u32,
    /// This packet's sequence number (for a STATE, the next one the sender will use).
    pub seq_nr: u16,
    /// The last sequence number the sender has received in order.
    pub ack_nr: u16,
    /// The packets past `ack_nr + 1` the sender has received, if it says.
    pub sack: Option<SelectiveAck>,
    /// The largest datagram the sender reads whole, if it says ([`EXT_MAX_DATAGRAM`]).
    pub max_datagram: Option<u16>,
}

impl Packet {
    /// A packet of type `ty` on `connection_id` with every other field zero.
    pub fn new(ty: PacketType, connection_id: u16) -> Self {
        Self {
            ty,
            connection_id,
            timestamp_us: 0,
            timestamp_diff_us: 0,
            wnd_size: 0,
            seq_nr: 0,
            ack_nr: 0,
            sack: None,
            max_datagram: None,
        }
    }

    /// Decodes one datagram into its header and payload. Unknown extensions are skipped; a
    /// second selective ACK is ignored.
    pub fn decode(buf: &[u8]) -> Result<(Self, &[u8]), UtpError> {
        if buf.len() < HEADER_LEN {
            return Err(UtpError::Truncated { len: buf.len() });
        }
        let version = buf[0] & 0x0f;
        if version != VERSION {
            return Err(UtpError::BadVersion(version));
        }
        let ty = PacketType::from_code(buf[0] >> 4).ok_or(UtpError::BadType(buf[0] >> 4))?;
        let u16_at = |at: usize| u16::from_be_bytes([buf[at], buf[at + 1]]);
        let u32_at =
            |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mut packet = Self {
            ty,
            connection_id: u16_at(2),
            timestamp_us: u32_at(4),
            timestamp_diff_us: u32_at(8),
            wnd_size: u32_at(12),
            seq_nr: u16_at(16),
            ack_nr: u16_at(18),
            sack: None,
            max_datagram: None,
        };
        let mut ext = buf[1];
        let mut at = HEADER_LEN;
        let mut count = 0;
        while ext != EXT_NONE {
            count += 1;
            if count > MAX_EXTENSIONS {
                return Err(UtpError::TooManyExtensions);
            }
            let (next, len) = match buf.get(at..at + 2) {
                Some(h) => (h[0], usize::from(h[1])),
                None => return Err(UtpError::BadExtension { at }),
            };
            let body = buf
                .get(at + 2..at + 2 + len)
                .ok_or(UtpError::BadExtension { at })?;
            if ext == EXT_SACK && packet.sack.is_none() && !body.is_empty() {
                packet.sack = Some(SelectiveAck::from_bytes(body));
            } else if ext == EXT_MAX_DATAGRAM && body.len() == 2 {
                packet.max_datagram = Some(u16::from_be_bytes([body[0], body[1]]));
            }
            at += 2 + len;
            ext = next;
        }
        Ok((packet, &buf[at..]))
    }

    /// The bytes [`Packet::encode`] writes: the header and the extensions, if any.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self
                .sack
                .as_ref()
                .map_or(0, |s| if s.len > 0 { 2 + usize::from(s.len) } else { 0 })
            + if self.max_datagram.is_some() { 4 } else { 0 }
    }

    /// Writes the header (and extensions) at the start of `buf` and returns its length; the
    /// caller puts the payload after it. `None` when `buf` is too small.
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let len = self.encoded_len();
        let out = buf.get_mut(..len)?;
        let sack = self.sack.as_ref().filter(|s| s.len > 0);
        out[0] = (self.ty.code() << 4) | VERSION;
        out[2..4].copy_from_slice(&self.connection_id.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp_us.to_be_bytes());
        out[8..12].copy_from_slice(&self.timestamp_diff_us.to_be_bytes());
        out[12..16].copy_from_slice(&self.wnd_size.to_be_bytes());
        out[16..18].copy_from_slice(&self.seq_nr.to_be_bytes());
        out[18..20].copy_from_slice(&self.ack_nr.to_be_bytes());
        // The chain: each extension's first byte names the next; `link` is where the type of
        // the next one goes (the header's `extension` byte first).
        let mut link = 1;
        let mut at = HEADER_LEN;
        if let Some(s) = sack {
            out[link] = EXT_SACK;
            link = at;
            out[at + 1] = s.len;
            out[at + 2..at + 2 + usize::from(s.len)].copy_from_slice(s.as_bytes());
            at += 2 + usize::from(s.len);
        }
        if let Some(m) = self.max_datagram {
            out[link] = EXT_MAX_DATAGRAM;
            link = at;
            out[at + 1] = 2;
            out[at + 2..at + 4].copy_from_slice(&m.to_be_bytes());
        }
        out[link] = EXT_NONE;
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Packet {
        Packet {
            ty: PacketType::Data,
            connection_id: 0xbeef,
            timestamp_us: 0x0102_0304,
            timestamp_diff_us: 0xa0b0_c0d0,
            wnd_size: 1 << 20,
            seq_nr: 0xfffe,
            ack_nr: 7,
            sack: None,
            max_datagram: None,
        }
    }

    #[test]
    fn round_trip_every_type() {
        for code in 0..5 {
            let mut p = sample();
            p.ty = PacketType::from_code(code).unwrap();
            let mut buf = [0u8; 64];
            let n = p.encode(&mut buf).unwrap();
            buf[n..n + 3].copy_from_slice(b"abc");
            let (back, payload) = Packet::decode(&buf[..n + 3]).unwrap();
            assert_eq!(back, p);
            assert_eq!(payload, b"abc");
        }
    }

    #[test]
    fn round_trip_with_sack() {
        let mut p = sample();
        let mut s = SelectiveAck::new();
        assert!(s.set(0));
        assert!(s.set(9));
        assert!(s.set(33));
        assert_eq!(s.as_bytes().len(), 8, "grown in whole words");
        assert!(!s.set(MAX_SACK_BYTES * 8));
        p.sack = Some(s);
        let mut buf = [0u8; 64];
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(n, HEADER_LEN + 2 + 8);
        assert_eq!(buf[1], EXT_SACK);
        assert_eq!(&buf[20..24], &[0, 8, 0b0000_0001, 0b0000_0010]);
        let (back, payload) = Packet::decode(&buf[..n]).unwrap();
        assert_eq!(back, p);
        assert!(payload.is_empty());
        assert_eq!(
            back.sack.unwrap().iter().collect::<Vec<_>>(),
            vec![0, 9, 33]
        );
        assert!(p.encode(&mut [0u8; 25]).is_none(), "buffer too small");
    }

    #[test]
    fn round_trip_max_datagram_with_and_without_sack() {
        let mut p = sample();
        p.max_datagram = Some(65_535);
        let mut buf = [0u8; 64];
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(n, HEADER_LEN + 4);
        assert_eq!(buf[1], EXT_MAX_DATAGRAM);
        assert_eq!(&buf[20..24], &[EXT_NONE, 2, 0xff, 0xff]);
        assert_eq!(Packet::decode(&buf[..n]).unwrap().0, p);
        let mut s = SelectiveAck::new();
        s.set(3);
        p.sack = Some(s);
        p.max_datagram = Some(16_448);
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(n, HEADER_LEN + 6 + 4);
        assert_eq!((buf[1], buf[20], buf[21]), (EXT_SACK, EXT_MAX_DATAGRAM, 4));
        assert_eq!(&buf[26..30], &[EXT_NONE, 2, 0x40, 0x40]);
        let (back, payload) = Packet::decode(&buf[..n]).unwrap();
        assert_eq!(back, p);
        assert!(payload.is_empty());
        // A body of another length is skipped, as an unknown extension would be.
        buf[27] = 1;
        let (back, payload) = Packet::decode(&buf[..n]).unwrap();
        assert_eq!(back.max_datagram, None);
        assert_eq!(payload, &[0x40]);
    }

    /// A SYN captured from libtorrent 2.0.8 dialling over loopback: type 4, version 1, no
    /// extension, connection id 0x2037, its clock, no delay sample, a zero window, a random
    /// seq_nr, ack_nr 0.
    #[test]
    fn libtorrent_syn_bytes() {
        let bytes = [
            0x41, 0x00, 0x20, 0x37, 0x0c, 0xde, 0xf5, 0xdb, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x16, 0x7b, 0x00, 0x00,
        ];
        let (p, payload) = Packet::decode(&bytes).unwrap();
        assert_eq!(p.ty, PacketType::Syn);
        assert_eq!(p.connection_id, 0x2037);
        assert_eq!(p.timestamp_us, 0x0cde_f5db);
        assert_eq!(p.timestamp_diff_us, 0);
        assert_eq!(p.wnd_size, 0);
        assert_eq!(p.seq_nr, 0x167b);
        assert_eq!(p.ack_nr, 0);
        assert!(p.sack.is_none() && payload.is_empty());
        let mut out = [0u8; 20];
        assert_eq!(p.encode(&mut out), Some(20));
        assert_eq!(out, bytes);
    }

    /// A STATE with a 1-byte selective ACK, as libtorrent writes it (not a multiple of 4).
    #[test]
    fn accepts_short_sack_and_skips_unknown_extensions() {
        let mut bytes = vec![
            0x21, 0x01, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0, 0, 0, 9, 0, 3,
        ];
        // SACK of one byte, then an unknown extension 3 ("close reason") of 4 bytes.
        bytes.extend_from_slice(&[3, 1, 0b101, 0, 4, 0, 0, 0, 7]);
        bytes.extend_from_slice(b"xy");
        let (p, payload) = Packet::decode(&bytes).unwrap();
        assert_eq!(p.ty, PacketType::State);
        assert_eq!(p.sack.unwrap().iter().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(payload, b"xy");
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut good = [0u8; 20];
        sample().encode(&mut good).unwrap();
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::decode(&good[..len]),
                Err(UtpError::Truncated { len })
            );
        }
        let mut b = good;
        b[0] = 0x02;
        assert_eq!(Packet::decode(&b), Err(UtpError::BadVersion(2)));
        b[0] = 0x51;
        assert_eq!(Packet::decode(&b), Err(UtpError::BadType(5)));
        // An extension header that is cut off, or whose length runs past the end.
        let mut b = good.to_vec();
        b[1] = EXT_SACK;
        assert_eq!(Packet::decode(&b), Err(UtpError::BadExtension { at: 20 }));
        b.push(0);
        assert_eq!(Packet::decode(&b), Err(UtpError::BadExtension { at: 20 }));
        b.extend_from_slice(&[8, 0xff, 0xff]);
        assert_eq!(Packet::decode(&b), Err(UtpError::BadExtension { at: 20 }));
        // A chain of empty unknown extensions longer than the bound.
        let mut b = good.to_vec();
        b[1] = 9;
        for _ in 0..MAX_EXTENSIONS + 1 {
            b.extend_from_slice(&[9, 0]);
        }
        assert_eq!(Packet::decode(&b), Err(UtpError::TooManyExtensions));
    }

    #[test]
    fn long_sack_is_cut_to_the_bound() {
        let mut b = [0u8; 20].to_vec();
        sample().encode(&mut b).unwrap();
        b[1] = EXT_SACK;
        b.extend_from_slice(&[0, 200]);
        b.extend_from_slice(&[0xff; 200]);
        let (p, payload) = Packet::decode(&b).unwrap();
        assert_eq!(p.sack.unwrap().as_bytes().len(), MAX_SACK_BYTES);
        assert!(payload.is_empty());
    }
}
