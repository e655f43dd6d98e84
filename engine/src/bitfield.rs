//! Which pieces a peer (or we) have: a fixed-length bit set stored exactly as on the wire.
//!
//! Bit `i` is bit `7 - i % 8` of byte `i / 8` (most significant bit first, BEP 3), so
//! [`Bitfield::as_bytes`] is the payload of a `bitfield` message and [`Bitfield::from_bytes`]
//! checks one. Spare bits after the last piece are always zero: that keeps `==`,
//! [`Bitfield::count_ones`] and [`Bitfield::has_any_not_in`] bytewise.

use std::fmt;

/// A set of piece indices `0..len`, stored most significant bit first as on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    /// `ceil(len / 8)` bytes, bit `i` at `bytes[i / 8] & (0x80 >> (i % 8))`; spare bits zero.
    bytes: Vec<u8>,
    /// The number of bits (pieces).
    len: u32,
}

/// Why the payload of a `bitfield` message does not fit the torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitfieldError {
    /// The byte length is not `ceil(len / 8)`.
    WrongLength {
        /// Bytes received.
        got: usize,
        /// Bytes expected for the torrent's piece count.
        expected: usize,
    },
    /// A bit past the last piece is set.
    SpareBitSet {
        /// The index of the first set bit past the end.
        bit: u64,
        /// The number of pieces.
        len: u32,
    },
}

impl fmt::Display for BitfieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength { got, expected } => {
                write!(f, "bitfield has {got} bytes, expected {expected}")
            }
            Self::SpareBitSet { bit, len } => write!(
                f,
                "bitfield has spare bit {bit} set past the last of {len} pieces"
            ),
        }
    }
}

impl std::error::Error for BitfieldError {}

/// The number of bytes that hold `len` bits.
fn byte_len(len: u32) -> usize {
    len.div_ceil(8) as usize
}

/// The mask of the bits of the last byte that belong to the set (all ones when `len % 8 == 0`).
fn last_byte_mask(len: u32) -> u8 {
    match len % 8 {
        0 => 0xff,
        r => !(0xffu8 >> r),
    }
}

impl Bitfield {
    /// An all-zero bit set of `len` bits.
    pub fn new(len: u32) -> Self {
        Self {
            bytes: vec![0; byte_len(len)],
            len,
        }
    }

    /// An all-one bit set of `len` bits (the spare bits stay zero).
    pub fn full(len: u32) -> Self {
        let mut bytes = vec![0xff; byte_len(len)];
        if let Some(last) = bytes.last_mut() {
            *last &= last_byte_mask(len);
        }
        Self { bytes, len }
    }

    /// Checks a `bitfield` payload against a torrent of `len` pieces: exactly `ceil(len / 8)`
    /// bytes, and no bit set past the last piece.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Self, BitfieldError> {
        let expected = byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                got: bytes.len(),
                expected,
            });
        }
        if let Some(&last) = bytes.last() {
            let spare = last & !last_byte_mask(len);
            if spare != 0 {
                let bit = (expected as u64 - 1) * 8 + u64::from(spare.leading_zeros());
                return Err(BitfieldError::SpareBitSet { bit, len });
            }
        }
        Ok(Self {
            bytes: bytes.to_vec(),
            len,
        })
    }

    /// The bytes as sent in a `bitfield` message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The number of bits (pieces).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the set has no bits at all (`len == 0`), not whether no bit is set: see
    /// [`Bitfield::none`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether bit `i` is set; `false` for an index out of range.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Sets bit `i`; an index out of range is ignored.
    pub fn set(&mut self, i: u32) {
        if i < self.len {
            self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }

    /// Clears bit `i`; an index out of range is ignored.
    pub fn clear(&mut self, i: u32) {
        if i < self.len {
            self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        }
    }

    /// How many bits are set.
    pub fn count_ones(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// Whether every bit is set (true for an empty set).
    pub fn all(&self) -> bool {
        self.count_ones() == self.len
    }

    /// Whether no bit is set.
    pub fn none(&self) -> bool {
        self.bytes.iter().all(|&b| b == 0)
    }

    /// The indices of the set bits, in increasing order. Skips zero bytes whole.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b != 0)
            .flat_map(|(i, &b)| {
                let base = i as u32 * 8;
                let mut rest = b;
                std::iter::from_fn(move || {
                    if rest == 0 {
                        return None;
                    }
                    let bit = rest.leading_zeros();
                    rest &= !(0x80 >> bit);
                    Some(base + bit)
                })
            })
    }

    /// Whether `self` has a bit set that `other` lacks (a peer has a piece we need). Compares
    /// bytewise; bits of `self` past the end of a shorter `other` count as lacking there.
    pub fn has_any_not_in(&self, other: &Bitfield) -> bool {
        let common = self.bytes.len().min(other.bytes.len());
        let (head, tail) = self.bytes.split_at(common);
        head.iter()
            .zip(&other.bytes[..common])
            .any(|(&a, &b)| a & !b != 0)
            || tail.iter().any(|&a| a != 0)
    }
}

impl fmt::Debug for Bitfield {
    /// Compact: `Bitfield(3/10 0b1010000100)` for short sets, counts and hex head for long ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{}", self.count_ones(), self.len)?;
        if self.len <= 64 {
            write!(f, " ")?;
            for i in 0..self.len {
                write!(f, "{}", if self.get(i) { '1' } else { '0' })?;
            }
        } else {
            write!(f, " ")?;
            for b in self.bytes.iter().take(8) {
                write!(f, "{b:02x}")?;
            }
            write!(f, "..")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_and_full() {
        let b = Bitfield::new(10);
        assert_eq!(b.as_bytes(), &[0, 0]);
        assert!(b.none());
        assert!(!b.all());
        let f = Bitfield::full(10);
        assert_eq!(f.as_bytes(), &[0xff, 0xc0]);
        assert_eq!(f.count_ones(), 10);
        assert!(f.all());
        let f8 = Bitfield::full(8);
        assert_eq!(f8.as_bytes(), &[0xff]);
        let e = Bitfield::full(0);
        assert!(e.is_empty());
        assert!(e.all() && e.none());
        assert_eq!(e.as_bytes(), &[] as &[u8]);
    }

    #[test]
    fn msb_first() {
        let mut b = Bitfield::new(16);
        b.set(0);
        b.set(9);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.get(0) && b.get(9) && !b.get(1));
        b.clear(0);
        assert_eq!(b.as_bytes(), &[0x00, 0x40]);
    }

    #[test]
    fn out_of_range_is_ignored() {
        let mut b = Bitfield::new(10);
        b.set(10);
        b.set(u32::MAX);
        b.clear(100);
        assert!(b.none());
        assert!(!b.get(10));
        assert!(!b.get(u32::MAX));
    }

    #[test]
    fn from_bytes_checks_length_and_spare_bits() {
        assert_eq!(
            Bitfield::from_bytes(&[0xff], 10),
            Err(BitfieldError::WrongLength {
                got: 1,
                expected: 2
            })
        );
        let err = Bitfield::from_bytes(&[0xff, 0xe0], 10).unwrap_err();
        assert_eq!(err, BitfieldError::SpareBitSet { bit: 10, len: 10 });
        assert_eq!(
            err.to_string(),
            "bitfield has spare bit 10 set past the last of 10 pieces"
        );
        assert_eq!(
            Bitfield::from_bytes(&[1, 2, 3], 10)
                .unwrap_err()
                .to_string(),
            "bitfield has 3 bytes, expected 2"
        );
        let ok = Bitfield::from_bytes(&[0xff, 0xc0], 10).unwrap();
        assert!(ok.all());
        assert!(Bitfield::from_bytes(&[], 0).unwrap().is_empty());
    }

    #[test]
    fn has_any_not_in() {
        let mut a = Bitfield::new(20);
        let mut b = Bitfield::new(20);
        assert!(!a.has_any_not_in(&b));
        a.set(17);
        assert!(a.has_any_not_in(&b));
        b.set(17);
        assert!(!a.has_any_not_in(&b));
        b.set(3);
        assert!(!a.has_any_not_in(&b));
        assert!(b.has_any_not_in(&a));
    }

    #[test]
    fn debug_is_compact() {
        let mut b = Bitfield::new(5);
        b.set(1);
        assert_eq!(format!("{b:?}"), "Bitfield(1/5 01000)");
        let big = Bitfield::full(100_000);
        let s = format!("{big:?}");
        assert!(s.len() < 60, "{s}");
        assert!(s.starts_with("Bitfield(100000/100000 ffff"));
    }

    proptest! {
        #[test]
        fn matches_a_bool_vector(len in 0u32..200, ops in proptest::collection::vec((any::<bool>(), 0u32..220), 0..100)) {
            let mut b = Bitfield::new(len);
            let mut model = vec![false; len as usize];
            for (on, i) in ops {
                if on { b.set(i) } else { b.clear(i) }
                if let Some(m) = model.get_mut(i as usize) { *m = on }
            }
            for i in 0..len + 10 {
                prop_assert_eq!(b.get(i), model.get(i as usize).copied().unwrap_or(false));
            }
            let ones: Vec<u32> = b.iter_ones().collect();
            let model_ones: Vec<u32> = (0..len).filter(|&i| model[i as usize]).collect();
            prop_assert_eq!(&ones, &model_ones);
            prop_assert_eq!(b.count_ones() as usize, model_ones.len());
            prop_assert_eq!(b.all(), model_ones.len() == len as usize);
            prop_assert_eq!(b.none(), model_ones.is_empty());
            let back = Bitfield::from_bytes(b.as_bytes(), len).unwrap();
            prop_assert_eq!(back, b);
        }

        #[test]
        fn has_any_not_in_matches_model(len in 1u32..100, a in any::<u128>(), b in any::<u128>()) {
            let mut x = Bitfield::new(len);
            let mut y = Bitfield::new(len);
            for i in 0..len {
                if a >> i & 1 == 1 { x.set(i) }
                if b >> i & 1 == 1 { y.set(i) }
            }
            let model = (0..len).any(|i| x.get(i) && !y.get(i));
            prop_assert_eq!(x.has_any_not_in(&y), model);
        }

        #[test]
        fn from_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20), len in 0u32..200) {
            if let Ok(b) = Bitfield::from_bytes(&bytes, len) {
                prop_assert_eq!(b.as_bytes(), &bytes[..]);
                prop_assert!(b.count_ones() <= len);
            }
        }
    }
}
