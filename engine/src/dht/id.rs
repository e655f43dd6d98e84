//! Node ids: the 160-bit XOR metric of Kademlia and the IP-derived ids of BEP 42.
//!
//! On a public address our id follows BEP 42: its first 21 bits are the CRC-32C of our masked
//! address, so a node cannot pick an id next to a chosen info hash without owning an address
//! that hashes there. On loopback, private, link-local and unspecified addresses (tests, home
//! networks behind a NAT where we do not know the outside address yet) the id is random and
//! [`is_bep42_valid`] is not enforced on anyone: those ranges are exempt in BEP 42 too.
//!
//! The CRC-32C is written here, bitwise and table-free: it runs over 4 or 8 bytes when an id
//! is made or checked, so a 1 KiB table or a crate (with its SIMD dispatch) buys nothing.

use std::fmt;
use std::net::IpAddr;

/// A node id (or a lookup target: info hashes live in the same 160-bit space).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 20]);

impl NodeId {
    /// A uniformly random id.
    pub fn random(rng: &mut fastrand::Rng) -> Self {
        let mut id = [0u8; 20];
        rng.fill(&mut id);
        NodeId(id)
    }

    /// The XOR distance to `other`, comparable as a big-endian number (`Ord` on the array).
    pub fn distance(&self, other: &NodeId) -> [u8; 20] {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// How many leading bits `self` and `other` share (160 when equal).
    pub fn common_prefix_len(&self, other: &NodeId) -> usize {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        160
    }

    /// Bit `i` (0 is the most significant bit of byte 0).
    pub fn bit(&self, i: usize) -> bool {
        self.0[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// The id as it should be for a node at `ip`: BEP 42 for a public address, random for
    /// any other (see the module doc).
    pub fn for_address(ip: IpAddr, rng: &mut fastrand::Rng) -> Self {
        if is_exempt(ip) {
            return NodeId::random(rng);
        }
        let r = rng.u8(..);
        let mut id = NodeId::random(rng);
        let crc = bep42_crc(ip, r);
        id.0[0] = (crc >> 24) as u8;
        id.0[1] = (crc >> 16) as u8;
        id.0[2] = ((crc >> 8) as u8 & 0xf8) | (id.0[2] & 0x07);
        id.0[19] = r;
        id
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// Whether BEP 42 leaves `ip` alone: loopback, private, link-local, unspecified and other
/// addresses that are not reachable from the internet.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                // 100.64.0.0/10, carrier-grade NAT.
                || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64)
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                // fc00::/7 unique local, fe80::/10 link-local.
                || seg0 & 0xfe00 == 0xfc00
                || seg0 & 0xffc0 == 0xfe80
        }
    }
}

/// Whether `id` is a valid BEP 42 id for a node at `ip` (always true for exempt addresses).
pub fn is_bep42_valid(ip: IpAddr, id: &NodeId) -> bool {
    if is_exempt(ip) {
        return true;
    }
    let crc = bep42_crc(ip, id.0[19]);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && id.0[2] & 0xf8 == (crc >> 8) as u8 & 0xf8
}

/// The CRC-32C of the masked address with the 3 random bits of `r` in the top of byte 0.
fn bep42_crc(ip: IpAddr, r: u8) -> u32 {
    const V4_MASK: [u8; 4] = [0x03, 0x0f, 0x3f, 0xff];
    const V6_MASK: [u8; 8] = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
    let mut buf = [0u8; 8];
    let n = match ip {
        IpAddr::V4(v4) => {
            for (i, b) in v4.octets().iter().enumerate() {
                buf[i] = b & V4_MASK[i];
            }
            4
        }
        IpAddr::V6(v6) => {
            for (i, b) in v6.octets()[..8].iter().enumerate() {
                buf[i] = b & V6_MASK[i];
            }
            8
        }
    };
    buf[0] |= (r & 0x07) << 5;
    crc32c(&buf[..n])
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn bep42_test_vectors() {
        // The table of BEP 42: address, random byte, expected first 3 bytes (top 21 bits).
        let vectors: [([u8; 4], u8, [u8; 3]); 5] = [
            ([124, 31, 75, 21], 1, [0x5f, 0xbf, 0xbf]),
            ([21, 75, 31, 124], 86, [0x5a, 0x3c, 0xe9]),
            ([65, 23, 51, 170], 22, [0xa5, 0xd4, 0x32]),
            ([84, 124, 73, 14], 65, [0x1b, 0x03, 0x21]),
            ([43, 213, 53, 83], 90, [0xe5, 0x6f, 0x6c]),
        ];
        for (ip, r, prefix) in vectors {
            let ip = IpAddr::V4(Ipv4Addr::from(ip));
            let crc = bep42_crc(ip, r);
            assert_eq!((crc >> 24) as u8, prefix[0], "{ip}");
            assert_eq!((crc >> 16) as u8, prefix[1], "{ip}");
            assert_eq!((crc >> 8) as u8 & 0xf8, prefix[2] & 0xf8, "{ip}");
            let mut id = NodeId([0; 20]);
            id.0[..3].copy_from_slice(&prefix);
            id.0[19] = r;
            assert!(is_bep42_valid(ip, &id));
            id.0[1] ^= 1;
            assert!(!is_bep42_valid(ip, &id));
        }
    }

    #[test]
    fn ids_for_public_addresses_follow_bep42_and_private_ones_are_random() {
        let mut rng = fastrand::Rng::with_seed(7);
        let public: IpAddr = "124.31.75.21".parse().unwrap();
        for _ in 0..20 {
            let id = NodeId::for_address(public, &mut rng);
            assert!(is_bep42_valid(public, &id));
        }
        let v6: IpAddr = "2001:db9::1".parse().unwrap();
        assert!(is_bep42_valid(v6, &NodeId::for_address(v6, &mut rng)));
        for ip in ["127.0.0.1", "10.1.2.3", "192.168.1.1", "::1", "100.64.1.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_exempt(ip));
            assert!(is_bep42_valid(ip, &NodeId([0xab; 20])));
        }
        assert!(!is_exempt(public));
    }

    #[test]
    fn distance_and_prefix() {
        let a = NodeId([0; 20]);
        let mut b = NodeId([0; 20]);
        assert_eq!(a.common_prefix_len(&b), 160);
        b.0[2] = 0x10;
        assert_eq!(a.common_prefix_len(&b), 19);
        assert!(b.bit(19) && !b.bit(18));
        assert_eq!(a.distance(&b)[2], 0x10);
    }
}
