//! SHA-256 merkle trees of BitTorrent v2 (BEP 52): block hashes, piece layers, file roots.
//!
//! # The tree of one file
//! A file is cut into 16 KiB blocks (the last one shorter, hashed as it is, never padded with
//! zero bytes); each block's SHA-256 is a leaf. The leaves are padded to a power of two with
//! leaves of 32 zero bytes, and every node above is the SHA-256 of its two children laid end to
//! end. So a padding node at height `h` is the root of a subtree of `2^h` zero leaves
//! ([`pad_hash`]), and padding a layer to an even length with it at every level gives the same
//! root as padding the leaves to a power of two ([`merkle_root`] works that way, without
//! building the padded tree).
//!
//! The *piece layer* is the layer whose nodes each cover one piece (`piece length / 16 KiB`
//! leaves); a file gets one hash per piece it touches, the last piece padded with zero leaves.
//! A `.torrent` carries the piece layer of every file larger than one piece (`piece layers`);
//! a file of one piece or less is checked against its root alone, and its tree has only as many
//! leaves as the next power of two of its block count ([`leaves_for`]).

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a node of a merkle tree, or a v2 info hash.
pub type Hash256 = [u8; 32];

/// Bytes covered by one leaf of the tree: 16 KiB (BEP 52).
pub const BLOCK_LEN: u64 = 16 * 1024;

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash256 {
    Sha256::digest(data).into()
}

/// The parent of two nodes: the SHA-256 of `left` then `right`.
pub fn parent(left: &Hash256, right: &Hash256) -> Hash256 {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of a subtree of `2^height` zero leaves (height 0: the zero leaf itself).
pub fn pad_hash(height: u32) -> Hash256 {
    let mut h = [0u8; 32];
    for _ in 0..height {
        h = parent(&h, &h);
    }
    h
}

/// The root of `layer`, a layer of nodes at the height whose padding node is `pad`: padded to
/// a power of two with `pad` (an empty layer is `pad` itself).
pub fn merkle_root(layer: &[Hash256], pad: Hash256) -> Hash256 {
    match layer.len() {
        0 => return pad,
        1 => return layer[0],
        _ => {}
    }
    let mut cur: Vec<Hash256> = layer.to_vec();
    let mut pad = pad;
    while cur.len() > 1 {
        if cur.len() % 2 == 1 {
            cur.push(pad);
        }
        let next: Vec<Hash256> = cur.chunks_exact(2).map(|p| parent(&p[0], &p[1])).collect();
        cur = next;
        pad = parent(&pad, &pad);
    }
    cur[0]
}

/// The leaf hashes of `data`: one per 16 KiB block (none for empty data).
pub fn leaf_hashes(data: &[u8]) -> Vec<Hash256> {
    data.chunks(BLOCK_LEN as usize).map(sha256).collect()
}

/// How many 16 KiB blocks a file of `length` bytes has.
pub fn num_blocks(length: u64) -> u64 {
    length.div_ceil(BLOCK_LEN)
}

/// How many leaves a piece's subtree has in a file of `file_length` bytes with pieces of
/// `piece_length` bytes (a power of two, at least 16 KiB): a whole piece's worth of blocks for a
/// file larger than a piece, else the next power of two of the file's block count (the file's
/// whole tree).
pub fn leaves_for(file_length: u64, piece_length: u64) -> u64 {
    let blocks_per_piece = (piece_length / BLOCK_LEN).max(1);
    if file_length > piece_length {
        blocks_per_piece
    } else {
        num_blocks(file_length).max(1).next_power_of_two()
    }
}

/// The hash of one piece from its leaf hashes: the root of `leaves` (a power of two) leaves,
/// those past the end of the file zero.
pub fn piece_root(leaf_hashes: &[Hash256], leaves: u64) -> Hash256 {
    let height = leaves.max(1).trailing_zeros();
    let mut cur: Vec<Hash256> = leaf_hashes.to_vec();
    let mut pad = [0u8; 32];
    for _ in 0..height {
        if cur.len() % 2 == 1 {
            cur.push(pad);
        }
        cur = cur.chunks_exact(2).map(|p| parent(&p[0], &p[1])).collect();
        pad = parent(&pad, &pad);
    }
    cur.first().copied().unwrap_or(pad)
}

/// The hash of a piece's bytes (`data`, at most one piece) as its file's tree has it: the
/// piece layer's entry for a file larger than a piece, the file's root otherwise.
pub fn piece_hash(data: &[u8], file_length: u64, piece_length: u64) -> Hash256 {
    piece_root(&leaf_hashes(data), leaves_for(file_length, piece_length))
}

/// The root of a file from its piece layer (`piece_length` bytes per piece, a power of two of
/// at least 16 KiB).
pub fn root_from_layer(layer: &[Hash256], piece_length: u64) -> Hash256 {
    let height = (piece_length / BLOCK_LEN).max(1).trailing_zeros();
    merkle_root(layer, pad_hash(height))
}

/// Hashes one file's bytes as they arrive, block by block, keeping only the leaf hashes
/// (32 bytes per 16 KiB).
#[derive(Clone, Debug, Default)]
pub struct FileHasher {
    /// The hashes of the complete blocks so far.
    leaves: Vec<Hash256>,
    /// The bytes of the block being filled.
    partial: Vec<u8>,
    /// Bytes fed so far.
    length: u64,
}

/// What one piece must hash to, in any torrent: its SHA-1 (v1 and hybrid torrents), or the
/// root of its subtree in its file's merkle tree (v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceHash {
    /// The SHA-1 of the whole piece (pad bytes included: they are zeros).
    Sha1([u8; 20]),
    /// A v2 piece: the first `data_len` bytes are its file's (the rest is the pad after it),
    /// hashed as `leaves` leaves (a power of two) to `hash`.
    Merkle {
        /// The piece layer's entry, or the file's root for a file of one piece or less.
        hash: Hash256,
        /// Bytes of the piece that belong to its file.
        data_len: u32,
        /// Leaves of the piece's subtree ([`leaves_for`]).
        leaves: u32,
    },
}

impl PieceHash {
    /// Whether the piece's bytes, given in order in any number of chunks, hash as they must.
    pub fn verify<'a>(&self, chunks: impl IntoIterator<Item = &'a [u8]>) -> bool {
        match self {
            PieceHash::Sha1(expected) => {
                use sha1::Digest as _;
                let mut sha = sha1::Sha1::new();
                for c in chunks {
                    sha.update(c);
                }
                <[u8; 20]>::from(sha.finalize()) == *expected
            }
            PieceHash::Merkle {
                hash,
                data_len,
                leaves,
            } => {
                let mut h = FileHasher::new();
                let mut left = *data_len as usize;
                for c in chunks {
                    let take = left.min(c.len());
                    h.update(&c[..take]);
                    left -= take;
                }
                left == 0 && piece_root(&h.into_leaves(), u64::from(*leaves)) == *hash
            }
        }
    }
}

/// A file's tree, summed up: what a `.torrent` records of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTree {
    /// The file's length in bytes.
    pub length: u64,
    /// The merkle root (`pieces root`); `None` for an empty file, which has none.
    pub root: Option<Hash256>,
    /// The piece layer; empty for a file of one piece or less, which needs none.
    pub piece_layer: Vec<Hash256>,
}

impl FileHasher {
    /// A hasher for a new file.
    pub fn new() -> FileHasher {
        FileHasher::default()
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        let block = BLOCK_LEN as usize;
        if !self.partial.is_empty() {
            let take = (block - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == block {
                self.leaves.push(sha256(&self.partial));
                self.partial.clear();
            }
        }
        let mut chunks = data.chunks_exact(block);
        for c in &mut chunks {
            self.leaves.push(sha256(c));
        }
        self.partial.extend_from_slice(chunks.remainder());
    }

    /// The leaf hashes of everything fed (the last block hashed short).
    pub fn into_leaves(mut self) -> Vec<Hash256> {
        if !self.partial.is_empty() {
            self.leaves.push(sha256(&self.partial));
        }
        self.leaves
    }

    /// The file's root and piece layer for pieces of `piece_length` bytes (a power of two of
    /// at least 16 KiB).
    pub fn finish(mut self, piece_length: u64) -> FileTree {
        if !self.partial.is_empty() {
            self.leaves.push(sha256(&self.partial));
        }
        if self.length == 0 {
            return FileTree {
                length: 0,
                root: None,
                piece_layer: Vec::new(),
            };
        }
        let leaves = leaves_for(self.length, piece_length);
        if self.length <= piece_length {
            return FileTree {
                length: self.length,
                root: Some(piece_root(&self.leaves, leaves)),
                piece_layer: Vec::new(),
            };
        }
        let layer: Vec<Hash256> = self
            .leaves
            .chunks(leaves as usize)
            .map(|c| piece_root(c, leaves))
            .collect();
        FileTree {
            length: self.length,
            root: Some(root_from_layer(&layer, piece_length)),
            piece_layer: layer,
        }
    }
}

/// The tree of a whole file held in memory.
pub fn file_tree(data: &[u8], piece_length: u64) -> FileTree {
    let mut h = FileHasher::new();
    h.update(data);
    h.finish(piece_length)
}

/// Whether `data`, piece `index` of a file of `file_length` bytes, matches the file's tree:
/// its entry in `layer` for a file larger than a piece, else the file's `root`.
pub fn verify_piece(
    data: &[u8],
    index: usize,
    file_length: u64,
    piece_length: u64,
    layer: &[Hash256],
    root: &Hash256,
) -> bool {
    let h = piece_hash(data, file_length, piece_length);
    if file_length > piece_length {
        layer.get(index) == Some(&h)
    } else {
        index == 0 && &h == root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The padded tree built the slow, obvious way: every leaf, zero leaves to a power of two.
    fn naive_root(data: &[u8], min_leaves: usize) -> Hash256 {
        let mut layer = leaf_hashes(data);
        let n = layer.len().max(min_leaves).max(1).next_power_of_two();
        layer.resize(n, [0; 32]);
        while layer.len() > 1 {
            layer = layer.chunks(2).map(|p| parent(&p[0], &p[1])).collect();
        }
        layer[0]
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn pad_hashes_are_zero_subtrees() {
        assert_eq!(pad_hash(0), [0; 32]);
        assert_eq!(pad_hash(1), sha256(&[0; 64]));
        assert_eq!(pad_hash(2), parent(&pad_hash(1), &pad_hash(1)));
    }

    #[test]
    fn roots_match_the_naive_tree() {
        let b = BLOCK_LEN as usize;
        for piece_length in [BLOCK_LEN, 2 * BLOCK_LEN, 4 * BLOCK_LEN, 16 * BLOCK_LEN] {
            for len in [
                1,
                b - 1,
                b,
                b + 1,
                3 * b,
                4 * b,
                5 * b + 7,
                17 * b,
                33 * b - 1,
            ] {
                let d = data(len);
                let t = file_tree(&d, piece_length);
                assert_eq!(
                    t.root,
                    Some(naive_root(&d, 1)),
                    "len {len} pl {piece_length}"
                );
                if len as u64 > piece_length {
                    assert_eq!(
                        t.piece_layer.len() as u64,
                        (len as u64).div_ceil(piece_length)
                    );
                    assert_eq!(
                        root_from_layer(&t.piece_layer, piece_length),
                        t.root.unwrap()
                    );
                    for (i, piece) in d.chunks(piece_length as usize).enumerate() {
                        assert!(verify_piece(
                            piece,
                            i,
                            len as u64,
                            piece_length,
                            &t.piece_layer,
                            &t.root.unwrap()
                        ));
                        let mut bad = piece.to_vec();
                        bad[0] ^= 1;
                        assert!(!verify_piece(
                            &bad,
                            i,
                            len as u64,
                            piece_length,
                            &t.piece_layer,
                            &t.root.unwrap()
                        ));
                    }
                } else {
                    assert!(t.piece_layer.is_empty());
                    assert!(verify_piece(
                        &d,
                        0,
                        len as u64,
                        piece_length,
                        &[],
                        &t.root.unwrap()
                    ));
                    assert!(!verify_piece(
                        &d,
                        1,
                        len as u64,
                        piece_length,
                        &[],
                        &t.root.unwrap()
                    ));
                }
            }
        }
    }

    #[test]
    fn streaming_equals_whole() {
        let d = data(5 * BLOCK_LEN as usize + 123);
        let whole = file_tree(&d, 2 * BLOCK_LEN);
        let mut h = FileHasher::new();
        for c in d.chunks(1000) {
            h.update(c);
        }
        assert_eq!(h.finish(2 * BLOCK_LEN), whole);
        assert_eq!(file_tree(&[], BLOCK_LEN).root, None);
    }

    #[test]
    fn piece_hashes_verify_v2_pieces_with_their_pad() {
        let pl = 4 * BLOCK_LEN;
        let d = data(9 * BLOCK_LEN as usize + 5);
        let t = file_tree(&d, pl);
        for (i, piece) in d.chunks(pl as usize).enumerate() {
            let check = PieceHash::Merkle {
                hash: t.piece_layer[i],
                data_len: piece.len() as u32,
                leaves: leaves_for(d.len() as u64, pl) as u32,
            };
            // The piece as the wire carries it: the file's bytes, then the pad's zeros.
            let mut wire = piece.to_vec();
            wire.resize(pl as usize, 0);
            assert!(check.verify(wire.chunks(1000)));
            wire[0] ^= 1;
            assert!(!check.verify([&wire[..]]));
            assert!(
                !check.verify([&piece[..piece.len() - 1]]),
                "short data fails"
            );
        }
        let one = PieceHash::Sha1(sha1::Digest::finalize(sha1::Sha1::new()).into());
        assert!(one.verify([]));
    }

    #[test]
    fn known_vector() {
        // One block of 16 KiB of zero bytes: the root is the SHA-256 of those bytes.
        let d = vec![0u8; BLOCK_LEN as usize];
        let t = file_tree(&d, BLOCK_LEN);
        assert_eq!(
            t.root.unwrap(),
            <[u8; 32]>::try_from(
                &hex("4fe7b59af6de3b665b67788cc2f99892ab827efae3a467342b3bb4e3bc8e5bfe")[..]
            )
            .unwrap()
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
