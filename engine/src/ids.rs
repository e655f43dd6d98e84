//! The 20-byte identifiers of BitTorrent: info hashes and peer ids.

use std::fmt;

/// The SHA-1 of a torrent's `info` dictionary, as it appears in the `.torrent` file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 20]);

/// A peer's 20-byte id, sent in the handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub [u8; 20]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex(s: &str) -> Option<[u8; 20]> {
    let s = s.as_bytes();
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

impl InfoHash {
    /// Parses 40 hexadecimal digits (either case); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex(s).map(Self)
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash(")?;
        write_hex(f, &self.0)?;
        write!(f, ")")
    }
}

impl PeerId {
    /// A fresh random peer id in Azureus style: `-SH0100-` followed by 12 random bytes.
    pub fn generate() -> Self {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-SH0100-");
        for b in &mut id[8..] {
            // Printable alphanumerics, so the id reads well in logs and trackers.
            const ALPHABET: &[u8] =
                b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
            *b = ALPHABET[fastrand::usize(..ALPHABET.len())];
        }
        Self(id)
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId(")?;
        for &b in &self.0 {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = InfoHash::from_hex("00ff10AB00ff10ab00ff10ab00ff10ab00ff10ab").unwrap();
        assert_eq!(h.to_string(), "00ff10ab00ff10ab00ff10ab00ff10ab00ff10ab");
        assert!(InfoHash::from_hex("00ff").is_none());
        assert!(InfoHash::from_hex("zzff10ab00ff10ab00ff10ab00ff10ab00ff10ab").is_none());
        assert!(InfoHash::from_hex("é0ff10ab00ff10ab00ff10ab00ff10ab00ff10a").is_none());
    }

    #[test]
    fn generated_peer_ids_differ() {
        let a = PeerId::generate();
        let b = PeerId::generate();
        assert_ne!(a, b);
        assert_eq!(&a.0[..8], b"-SH0100-");
    }
}
