//! The map from torrent byte ranges (pieces, blocks) to the spans of the files they cover.
//!
//! A torrent's bytes are its files laid end to end in metainfo order. A piece or block may cross
//! any number of file boundaries, and zero-length files occupy no bytes at all: they never
//! appear in a span (the disk actor still creates them). This module only computes where bytes
//! go; the disk actor opens the files and does the I/O.

use std::path::PathBuf;

use crate::lengths::{BlockInfo, Lengths};

/// One file of the torrent and where it sits among the torrent's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The path relative to the download folder (already validated by metainfo).
    pub path: PathBuf,
    /// The file's length in bytes.
    pub length: u64,
    /// The offset of the file's first byte in the torrent.
    pub offset: u64,
    /// A BEP 47 pad file: zero bytes that are never on disk (reads give zeros, writes are
    /// dropped).
    pub pad: bool,
}

/// The part of one file that a range of torrent bytes covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpan {
    /// The index of the file in [`Layout::files`].
    pub file: usize,
    /// Where the span starts in that file.
    pub file_offset: u64,
    /// The span's length in bytes (never zero).
    pub len: usize,
    /// Where the span starts in the caller's buffer for the whole range.
    pub buf_offset: usize,
}

/// The files of a torrent with their offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The files in metainfo order; `files[i].offset` is the sum of the lengths before it.
    files: Vec<FileInfo>,
    /// The sum of all file lengths.
    total_length: u64,
}

impl Layout {
    /// Lays files end to end, in the order given.
    pub fn new(files: impl IntoIterator<Item = (PathBuf, u64)>) -> Layout {
        Layout::with_pads(files.into_iter().map(|(p, l)| (p, l, false)))
    }

    /// Lays files end to end, in the order given, each with whether it is a pad file.
    pub fn with_pads(files: impl IntoIterator<Item = (PathBuf, u64, bool)>) -> Layout {
        let mut offset = 0u64;
        let files = files
            .into_iter()
            .map(|(path, length, pad)| {
                let f = FileInfo {
                    path,
                    length,
                    offset,
                    pad,
                };
                // Metainfo bounds the total far below u64::MAX; saturate rather than panic.
                offset = offset.saturating_add(length);
                f
            })
            .collect();
        Layout {
            files,
            total_length: offset,
        }
    }

    /// The files, in order.
    pub fn files(&self) -> &[FileInfo] {
        &self.files
    }

    /// The sum of the file lengths.
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// The file spans that the `len` torrent bytes from `offset` cover, in order; the range is
    /// clipped at the end of the torrent. Finds the first file by binary search.
    pub fn spans(&self, offset: u64, len: usize) -> impl Iterator<Item = FileSpan> + '_ {
        let end = offset
            .saturating_add(len as u64)
            .min(self.total_length)
            .max(offset);
        // File ends are non-decreasing, so this finds the first file that ends after `offset`.
        // That file is never empty: an empty file ending after `offset` would start after it
        // too, and so would the file before it, which would then have been found first.
        let first = self
            .files
            .partition_point(|f| f.offset.saturating_add(f.length) <= offset);
        Spans {
            files: &self.files,
            next: first,
            pos: offset,
            end,
            start: offset,
        }
    }

    /// The file spans of a whole piece; none for a piece out of range.
    pub fn piece_spans(
        &self,
        lengths: &Lengths,
        piece: u32,
    ) -> impl Iterator<Item = FileSpan> + '_ {
        self.spans(
            lengths.piece_offset(piece),
            lengths.piece_len(piece) as usize,
        )
    }

    /// The file spans of a block, clipped to its piece.
    pub fn block_spans(
        &self,
        lengths: &Lengths,
        block: &BlockInfo,
    ) -> impl Iterator<Item = FileSpan> + '_ {
        let len = lengths
            .piece_len(block.piece)
            .saturating_sub(block.begin)
            .min(block.len);
        self.spans(
            lengths.piece_offset(block.piece) + u64::from(block.begin),
            len as usize,
        )
    }
}

/// The iterator behind [`Layout::spans`].
struct Spans<'a> {
    /// All files of the layout.
    files: &'a [FileInfo],
    /// The index of the next file to look at.
    next: usize,
    /// The torrent offset of the next byte to map.
    pos: u64,
    /// The torrent offset just past the range.
    end: u64,
    /// The torrent offset of the range's first byte (buffer offset zero).
    start: u64,
}

impl Iterator for Spans<'_> {
    type Item = FileSpan;

    fn next(&mut self) -> Option<FileSpan> {
        while self.pos < self.end {
            let file = self.next;
            let f = self.files.get(file)?;
            self.next += 1;
            let f_end = f.offset.saturating_add(f.length);
            if f_end <= self.pos {
                continue; // zero-length file (or one before the range)
            }
            let span_end = f_end.min(self.end);
            let span = FileSpan {
                file,
                file_offset: self.pos - f.offset,
                len: (span_end - self.pos) as usize,
                buf_offset: (self.pos - self.start) as usize,
            };
            self.pos = span_end;
            return Some(span);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(lens: &[u64]) -> Layout {
        Layout::new(
            lens.iter()
                .enumerate()
                .map(|(i, &l)| (PathBuf::from(format!("f{i}")), l)),
        )
    }

    fn span(file: usize, file_offset: u64, len: usize, buf_offset: usize) -> FileSpan {
        FileSpan {
            file,
            file_offset,
            len,
            buf_offset,
        }
    }

    fn spans(l: &Layout, offset: u64, len: usize) -> Vec<FileSpan> {
        l.spans(offset, len).collect()
    }

    #[test]
    fn computes_offsets() {
        let l = layout(&[10, 0, 5, 7]);
        let offs: Vec<u64> = l.files().iter().map(|f| f.offset).collect();
        assert_eq!(offs, [0, 10, 10, 15]);
        assert_eq!(l.total_length(), 22);
        assert_eq!(l.files()[2].path, PathBuf::from("f2"));
    }

    #[test]
    fn one_file() {
        let l = layout(&[100]);
        assert_eq!(spans(&l, 0, 100), [span(0, 0, 100, 0)]);
        assert_eq!(spans(&l, 40, 10), [span(0, 40, 10, 0)]);
        // Clipped at the end; nothing past it.
        assert_eq!(spans(&l, 90, 50), [span(0, 90, 10, 0)]);
        assert_eq!(spans(&l, 100, 5), []);
        assert_eq!(spans(&l, u64::MAX, 5), []);
        assert_eq!(spans(&l, 10, 0), []);
    }

    #[test]
    fn piece_crosses_several_files() {
        let l = layout(&[5, 3, 4, 20]);
        let lengths = Lengths::new(32, 10).unwrap();
        let p0: Vec<_> = l.piece_spans(&lengths, 0).collect();
        assert_eq!(p0, [span(0, 0, 5, 0), span(1, 0, 3, 5), span(2, 0, 2, 8)]);
        let p1: Vec<_> = l.piece_spans(&lengths, 1).collect();
        assert_eq!(p1, [span(2, 2, 2, 0), span(3, 0, 8, 2)]);
        let p3: Vec<_> = l.piece_spans(&lengths, 3).collect();
        assert_eq!(p3, [span(3, 18, 2, 0)]);
        assert_eq!(l.piece_spans(&lengths, 4).count(), 0);
        // Every piece's spans add up to its length, and together cover every byte once.
        let mut covered = 0u64;
        for p in 0..lengths.num_pieces() {
            let total: usize = l.piece_spans(&lengths, p).map(|s| s.len).sum();
            assert_eq!(total as u32, lengths.piece_len(p));
            covered += total as u64;
        }
        assert_eq!(covered, l.total_length());
    }

    #[test]
    fn zero_length_files_never_appear() {
        // At the start, in the middle (two in a row), at the end.
        let l = layout(&[0, 4, 0, 0, 4, 0]);
        assert_eq!(l.total_length(), 8);
        assert_eq!(spans(&l, 0, 8), [span(1, 0, 4, 0), span(4, 0, 4, 4)]);
        assert_eq!(spans(&l, 4, 4), [span(4, 0, 4, 0)]);
        assert_eq!(spans(&l, 3, 2), [span(1, 3, 1, 0), span(4, 0, 1, 1)]);
        assert_eq!(spans(&l, 8, 1), []);
        let all_empty = layout(&[0, 0]);
        assert_eq!(spans(&all_empty, 0, 10), []);
    }

    #[test]
    fn exact_boundaries() {
        let l = layout(&[4, 4, 4]);
        assert_eq!(spans(&l, 4, 4), [span(1, 0, 4, 0)]);
        assert_eq!(spans(&l, 0, 4), [span(0, 0, 4, 0)]);
        assert_eq!(spans(&l, 3, 1), [span(0, 3, 1, 0)]);
        assert_eq!(spans(&l, 3, 2), [span(0, 3, 1, 0), span(1, 0, 1, 1)]);
        assert_eq!(spans(&l, 8, 100), [span(2, 0, 4, 0)]);
    }

    #[test]
    fn block_spans() {
        let l = layout(&[20_000, 30_000, 50_000]);
        let lengths = Lengths::new(100_000, 32_768).unwrap();
        let b = lengths.block(0, 1); // bytes 16384..32768
        let got: Vec<_> = l.block_spans(&lengths, &b).collect();
        assert_eq!(got, [span(0, 16_384, 3_616, 0), span(1, 0, 12_768, 3_616)]);
        let last = lengths.block(3, 0); // bytes 98304..100000
        let got: Vec<_> = l.block_spans(&lengths, &last).collect();
        assert_eq!(got, [span(2, 48_304, 1_696, 0)]);
        // A block reaching past its piece is clipped to the piece.
        let wild = BlockInfo {
            piece: 0,
            begin: 32_000,
            len: 16_384,
        };
        let total: usize = l.block_spans(&lengths, &wild).map(|s| s.len).sum();
        assert_eq!(total, 768);
    }

    #[test]
    fn matches_a_linear_model() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let lens: Vec<u64> = (0..rng.usize(1..8))
                .map(|_| if rng.bool() { 0 } else { rng.u64(1..50) })
                .collect();
            let l = layout(&lens);
            let offset = rng.u64(0..l.total_length() + 5);
            let len = rng.usize(0..80);
            // The model: which file holds each byte.
            let mut owner = Vec::new();
            for (i, &n) in lens.iter().enumerate() {
                for k in 0..n {
                    owner.push((i, k));
                }
            }
            let mut expect: Vec<(usize, u64)> = Vec::new();
            for b in offset..offset + len as u64 {
                if let Some(&o) = owner.get(b as usize) {
                    expect.push(o);
                }
            }
            let mut got = Vec::new();
            let mut next_buf = 0;
            for s in l.spans(offset, len) {
                assert!(s.len > 0);
                assert_eq!(s.buf_offset, next_buf);
                next_buf += s.len;
                for k in 0..s.len as u64 {
                    got.push((s.file, s.file_offset + k));
                }
            }
            assert_eq!(got, expect, "lens {lens:?} offset {offset} len {len}");
        }
    }
}
