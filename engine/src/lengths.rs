//! Piece and block arithmetic: the one place that knows how a torrent's bytes are cut.
//!
//! A torrent of `total_length` bytes is cut into pieces of `piece_length` bytes (the last one
//! shorter), and each piece into blocks of [`BLOCK_LEN`] bytes (the last one shorter). Every
//! index that comes from a peer is checked here before it is used.

use std::fmt;

/// The block size every client requests: 16 KiB.
pub const BLOCK_LEN: u32 = 16 * 1024;

/// The largest block a peer may ask of us; requests above it are refused (BEP 3 clients use
/// 16 KiB, some old ones up to 128 KiB).
pub const MAX_REQUEST_LEN: u32 = 128 * 1024;

/// The largest piece length we accept: 64 MiB (libtorrent's limit is 128 MiB; nobody uses more
/// than 32 MiB, and a piece is held in memory while it is hashed).
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;

/// The most pieces we accept in one torrent (keeps bitfields and hash tables bounded).
pub const MAX_PIECES: u32 = 1 << 24;

/// One block of one piece: what a `request`, `piece` or `cancel` message names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockInfo {
    /// The piece index.
    pub piece: u32,
    /// The byte offset of the block within the piece.
    pub begin: u32,
    /// The block's length in bytes.
    pub len: u32,
}

impl BlockInfo {
    /// The index of this block within its piece, for blocks aligned on [`BLOCK_LEN`].
    pub fn index(&self) -> u32 {
        self.begin / BLOCK_LEN
    }
}

/// Why a pair of lengths does not describe a torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LengthsError {
    /// The piece length is zero.
    ZeroPieceLength,
    /// The piece length is above [`MAX_PIECE_LENGTH`].
    PieceLengthTooLarge(u64),
    /// The torrent holds no bytes.
    Empty,
    /// The torrent would have more than [`MAX_PIECES`] pieces.
    TooManyPieces(u64),
}

impl fmt::Display for LengthsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroPieceLength => write!(f, "piece length is zero"),
            Self::PieceLengthTooLarge(n) => {
                write!(
                    f,
                    "piece length {n} is above the maximum of {MAX_PIECE_LENGTH}"
                )
            }
            Self::Empty => write!(f, "torrent holds no data"),
            Self::TooManyPieces(n) => {
                write!(f, "{n} pieces is more than the maximum of {MAX_PIECES}")
            }
        }
    }
}

impl std::error::Error for LengthsError {}

/// The validated lengths of a torrent. Built only by [`Lengths::new`], so every value is sane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    /// Total bytes in the torrent, over all files.
    total_length: u64,
    /// Bytes per piece, except the last.
    piece_length: u32,
    /// Number of pieces, at least 1.
    num_pieces: u32,
}

impl Lengths {
    /// Checks and builds the lengths of a torrent.
    pub fn new(total_length: u64, piece_length: u64) -> Result<Self, LengthsError> {
        if piece_length == 0 {
            return Err(LengthsError::ZeroPieceLength);
        }
        if piece_length > u64::from(MAX_PIECE_LENGTH) {
            return Err(LengthsError::PieceLengthTooLarge(piece_length));
        }
        if total_length == 0 {
            return Err(LengthsError::Empty);
        }
        let num_pieces = total_length.div_ceil(piece_length);
        if num_pieces > u64::from(MAX_PIECES) {
            return Err(LengthsError::TooManyPieces(num_pieces));
        }
        Ok(Self {
            total_length,
            piece_length: piece_length as u32,
            num_pieces: num_pieces as u32,
        })
    }

    /// Total bytes in the torrent.
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// Bytes per piece (all but the last piece).
    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Whether `piece` is a valid index.
    pub fn contains(&self, piece: u32) -> bool {
        piece < self.num_pieces
    }

    /// The length of `piece`; the last piece may be shorter. Zero for an index out of range.
    pub fn piece_len(&self, piece: u32) -> u32 {
        if piece + 1 < self.num_pieces {
            self.piece_length
        } else if piece + 1 == self.num_pieces {
            let rest = self.total_length - self.piece_offset(piece);
            rest as u32
        } else {
            0
        }
    }

    /// The offset of `piece` from the start of the torrent.
    pub fn piece_offset(&self, piece: u32) -> u64 {
        u64::from(piece) * u64::from(self.piece_length)
    }

    /// How many blocks `piece` is cut into.
    pub fn blocks_in_piece(&self, piece: u32) -> u32 {
        self.piece_len(piece).div_ceil(BLOCK_LEN)
    }

    /// The most blocks any piece has.
    pub fn max_blocks_per_piece(&self) -> u32 {
        self.piece_length.div_ceil(BLOCK_LEN)
    }

    /// Block `index` of `piece` (the last block of a piece may be shorter).
    pub fn block(&self, piece: u32, index: u32) -> BlockInfo {
        let begin = index * BLOCK_LEN;
        let len = self.piece_len(piece).saturating_sub(begin).min(BLOCK_LEN);
        BlockInfo { piece, begin, len }
    }

    /// All blocks of `piece`, in order.
    pub fn blocks(&self, piece: u32) -> impl Iterator<Item = BlockInfo> + '_ {
        (0..self.blocks_in_piece(piece)).map(move |i| self.block(piece, i))
    }

    /// Whether a request from a peer names bytes inside one piece, at most
    /// [`MAX_REQUEST_LEN`] long and not empty.
    pub fn is_valid_request(&self, block: &BlockInfo) -> bool {
        block.piece < self.num_pieces
            && block.len > 0
            && block.len <= MAX_REQUEST_LEN
            && u64::from(block.begin) + u64::from(block.len)
                <= u64::from(self.piece_len(block.piece))
    }

    /// Whether `block` is exactly one of the blocks we request: aligned on [`BLOCK_LEN`] and of
    /// the right length. Data a peer sends for anything else was never asked for.
    pub fn is_our_block(&self, block: &BlockInfo) -> bool {
        block.piece < self.num_pieces
            && block.begin % BLOCK_LEN == 0
            && block.begin < self.piece_len(block.piece)
            && self.block(block.piece, block.index()).len == block.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_pieces_and_blocks() {
        let l = Lengths::new(100_000, 32_768).unwrap();
        assert_eq!(l.num_pieces(), 4);
        assert_eq!(l.piece_len(0), 32_768);
        assert_eq!(l.piece_len(3), 100_000 - 3 * 32_768);
        assert_eq!(l.piece_len(4), 0);
        assert_eq!(l.blocks_in_piece(0), 2);
        assert_eq!(l.blocks_in_piece(3), 1);
        assert_eq!(
            l.block(3, 0),
            BlockInfo {
                piece: 3,
                begin: 0,
                len: 1_696
            }
        );
        let total: u64 = (0..4)
            .flat_map(|p| l.blocks(p))
            .map(|b| u64::from(b.len))
            .sum();
        assert_eq!(total, 100_000);
    }

    #[test]
    fn exact_multiple_has_full_last_piece() {
        let l = Lengths::new(4 * 16_384, 16_384).unwrap();
        assert_eq!(l.num_pieces(), 4);
        assert_eq!(l.piece_len(3), 16_384);
    }

    #[test]
    fn small_pieces_have_one_short_block() {
        let l = Lengths::new(10_000, 1_000).unwrap();
        assert_eq!(l.blocks_in_piece(9), 1);
        assert_eq!(l.block(9, 0).len, 1_000);
    }

    #[test]
    fn refuses_bad_lengths() {
        assert_eq!(Lengths::new(10, 0), Err(LengthsError::ZeroPieceLength));
        assert_eq!(Lengths::new(0, 16_384), Err(LengthsError::Empty));
        assert!(matches!(
            Lengths::new(10, 1 << 40),
            Err(LengthsError::PieceLengthTooLarge(_))
        ));
        assert!(matches!(
            Lengths::new(u64::MAX, 1),
            Err(LengthsError::TooManyPieces(_))
        ));
    }

    #[test]
    fn validates_requests() {
        let l = Lengths::new(100_000, 32_768).unwrap();
        assert!(l.is_valid_request(&BlockInfo {
            piece: 0,
            begin: 16_384,
            len: 16_384
        }));
        assert!(!l.is_valid_request(&BlockInfo {
            piece: 0,
            begin: 16_385,
            len: 16_384
        }));
        assert!(!l.is_valid_request(&BlockInfo {
            piece: 4,
            begin: 0,
            len: 1
        }));
        assert!(!l.is_valid_request(&BlockInfo {
            piece: 0,
            begin: 0,
            len: 0
        }));
        assert!(!l.is_valid_request(&BlockInfo {
            piece: 0,
            begin: u32::MAX,
            len: 16
        }));
        assert!(l.is_our_block(&BlockInfo {
            piece: 3,
            begin: 0,
            len: 1_696
        }));
        assert!(!l.is_our_block(&BlockInfo {
            piece: 3,
            begin: 0,
            len: 1_695
        }));
        assert!(!l.is_our_block(&BlockInfo {
            piece: 0,
            begin: 8,
            len: 16_384
        }));
    }
}
