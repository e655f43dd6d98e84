//! The 68-byte handshake that opens every peer connection (BEP 3), with the reserved bits of
//! BEP 5 (DHT), BEP 6 (fast extension), BEP 10 (extension protocol) and BEP 52 (v2).

use super::WireError;
use crate::{InfoHash, PeerId};

/// The protocol string every BitTorrent handshake carries after its length byte.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Bytes in a handshake: length byte, protocol string, 8 reserved bytes, info hash, peer id.
pub const HANDSHAKE_LEN: usize = 1 + PROTOCOL.len() + 8 + 20 + 20;

/// Reserved byte and mask of the extension protocol bit (BEP 10).
const EXTENDED_BIT: (usize, u8) = (5, 0x10);
/// Reserved byte and mask of the fast extension bit (BEP 6).
const FAST_BIT: (usize, u8) = (7, 0x04);
/// Reserved byte and mask of the DHT bit (BEP 5).
const DHT_BIT: (usize, u8) = (7, 0x01);
/// Reserved byte and mask of the BitTorrent v2 bit (BEP 52): the sender speaks v2 (the hash
/// messages) and, dialling a hybrid torrent by its v1 hash, may be upgraded to its v2 hash.
const V2_BIT: (usize, u8) = (7, 0x10);

/// The greeting both sides send first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Extension bits; see [`Handshake::supports_extended`] and friends.
    pub reserved: [u8; 8],
    /// The torrent this connection is about.
    pub info_hash: InfoHash,
    /// The sender's peer id.
    pub peer_id: PeerId,
}

impl Handshake {
    /// Our handshake: it advertises the extension protocol (BEP 10) and the fast extension
    /// (BEP 6), nothing else (no DHT: we do not run one).
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        let mut reserved = [0u8; 8];
        reserved[EXTENDED_BIT.0] |= EXTENDED_BIT.1;
        reserved[FAST_BIT.0] |= FAST_BIT.1;
        Self {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// The 68 bytes sent on the wire.
    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id.0);
        out
    }

    /// Reads a handshake from the start of `buf`. `Ok(None)` means more bytes are needed (it
    /// consumes exactly [`HANDSHAKE_LEN`] once it returns one). The length byte and the protocol
    /// string are checked as soon as their bytes arrive, so a peer speaking something else is
    /// refused after its first bytes rather than after 68.
    pub fn decode(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
        let Some(&plen) = buf.first() else {
            return Ok(None);
        };
        if usize::from(plen) != PROTOCOL.len() {
            return Err(WireError::BadProtocolLength(plen));
        }
        let got = &buf[1..buf.len().min(1 + PROTOCOL.len())];
        if got != &PROTOCOL[..got.len()] {
            return Err(WireError::BadProtocol);
        }
        if buf.len() < HANDSHAKE_LEN {
            return Ok(None);
        }
        let mut h = Handshake {
            reserved: [0; 8],
            info_hash: InfoHash([0; 20]),
            peer_id: PeerId([0; 20]),
        };
        h.reserved.copy_from_slice(&buf[20..28]);
        h.info_hash.0.copy_from_slice(&buf[28..48]);
        h.peer_id.0.copy_from_slice(&buf[48..68]);
        Ok(Some(h))
    }

    /// Whether the sender speaks the extension protocol (BEP 10).
    pub fn supports_extended(&self) -> bool {
        self.reserved[EXTENDED_BIT.0] & EXTENDED_BIT.1 != 0
    }

    /// Whether the sender speaks the fast extension (BEP 6): `have all`, `reject` and friends.
    pub fn supports_fast(&self) -> bool {
        self.reserved[FAST_BIT.0] & FAST_BIT.1 != 0
    }

    /// Whether the sender runs a DHT node (BEP 5) and may send `port`.
    pub fn supports_dht(&self) -> bool {
        self.reserved[DHT_BIT.0] & DHT_BIT.1 != 0
    }

    /// Whether the sender speaks BitTorrent v2 (BEP 52).
    pub fn supports_v2(&self) -> bool {
        self.reserved[V2_BIT.0] & V2_BIT.1 != 0
    }

    /// The same handshake advertising BitTorrent v2 (BEP 52), for a v2 or hybrid torrent.
    pub fn with_v2(mut self) -> Self {
        self.reserved[V2_BIT.0] |= V2_BIT.1;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Handshake {
        Handshake::new(InfoHash([0xab; 20]), PeerId(*b"-SH0001-abcdefghijkl"))
    }

    #[test]
    fn round_trips_and_sets_our_bits() {
        let h = sample();
        let bytes = h.to_bytes();
        assert_eq!(bytes[0], 19);
        assert_eq!(&bytes[1..20], PROTOCOL);
        assert_eq!(&bytes[20..28], &[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
        assert_eq!(Handshake::decode(&bytes), Ok(Some(h)));
        assert!(h.supports_extended() && h.supports_fast() && !h.supports_dht());
        // Trailing bytes (the first message) are left alone.
        let mut more = bytes.to_vec();
        more.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Handshake::decode(&more), Ok(Some(h)));
    }

    #[test]
    fn needs_all_68_bytes() {
        let bytes = sample().to_bytes();
        for n in 0..HANDSHAKE_LEN {
            assert_eq!(Handshake::decode(&bytes[..n]), Ok(None), "prefix of {n}");
        }
    }

    #[test]
    fn refuses_garbage_early() {
        let err = Handshake::decode(b"GET / HTTP/1.1").unwrap_err();
        assert_eq!(err, WireError::BadProtocolLength(b'G'));
        assert_eq!(
            err.to_string(),
            "handshake protocol length is 71, expected 19"
        );
        let err = Handshake::decode(b"\x13BitTorrent pro7").unwrap_err();
        assert_eq!(err, WireError::BadProtocol);
        assert_eq!(
            err.to_string(),
            "handshake protocol string is not BitTorrent protocol"
        );
        assert_eq!(Handshake::decode(b"\x13BitTorrent pro"), Ok(None));
    }

    #[test]
    fn reads_other_bits() {
        let mut bytes = sample().to_bytes();
        bytes[20..28].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x01]);
        let h = Handshake::decode(&bytes).unwrap().unwrap();
        assert!(h.supports_dht() && !h.supports_fast() && !h.supports_extended());
        assert!(!h.supports_v2());
    }

    #[test]
    fn v2_bit_is_bit_4_of_byte_7() {
        let h = sample().with_v2();
        assert_eq!(&h.to_bytes()[20..28], &[0, 0, 0, 0, 0, 0x10, 0, 0x14]);
        let back = Handshake::decode(&h.to_bytes()).unwrap().unwrap();
        assert!(back.supports_v2() && back.supports_fast() && back.supports_extended());
        assert!(!sample().supports_v2());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Handshake::decode(&bytes);
        }

        #[test]
        fn any_handshake_round_trips(reserved in any::<[u8; 8]>(), ih in any::<[u8; 20]>(), id in any::<[u8; 20]>()) {
            let h = Handshake { reserved, info_hash: InfoHash(ih), peer_id: PeerId(id) };
            prop_assert_eq!(Handshake::decode(&h.to_bytes()), Ok(Some(h)));
        }
    }
}
