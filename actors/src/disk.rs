//! The disk actor: a small pool of threads, shared by every torrent of a session, that alone
//! touches the files. Each job carries the [`Storage`] (the open files) of its torrent.
//!
//! Blocking file I/O never runs on the executor. Verified pieces arrive from the hasher as the
//! blocks they were received in and are written with positional writes; uploads read blocks
//! into pooled buffers. Files and folders are created under the download folder only: every
//! path comes from validated metainfo (no absolute paths, no `..`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;

use async_channel::Sender;
use sha1::{Digest, Sha1};
use shoal_engine::bitfield::Bitfield;
use shoal_engine::lengths::{BlockInfo, Lengths};
use shoal_engine::merkle::{self, PieceHash};
use shoal_engine::storage::Layout;

use crate::buffers::{Block, BlockPool};
use crate::workers::Workers;

/// How many jobs may wait for a disk thread. Writers (the hasher) and readers (peers) wait
/// when it is full.
pub const DISK_QUEUE: usize = 64;

/// Write-behind: once this many bytes were written to a torrent's files since their last flush,
/// the disk thread that wrote the last of them flushes the files (`fdatasync`) after reporting
/// its piece. Dirty pages then never pile up, and the flush a torrent does when it stops (so
/// that its resume record may claim every piece) waits for at most this much data, plus what
/// arrived during the flush before: 16 MiB takes about 8 ms on a disk that writes 2 GB/s, and
/// each flush costs one journal commit, so a GiB costs 64 of them.
pub const WRITE_BEHIND: u64 = 16 * 1024 * 1024;

/// Recheck reads and hashes pieces in chunks of this size (it fits in a core's L2 cache).
const RECHECK_CHUNK: usize = 128 * 1024;

/// Whether the files may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Download: create missing files and folders, read and write.
    ReadWrite,
    /// Seed data the user gave us: open existing files read-only, never change them.
    ReadOnly,
}

/// A torrent's files, opened.
pub struct Storage {
    /// Where the files live, and how the torrent's bytes map onto them.
    layout: Layout,
    /// The torrent's piece and block arithmetic.
    lengths: Lengths,
    /// One open handle per file of `layout`; unset for a file missing in read-only mode, and
    /// for a skipped file not created (see `skipped`) until it is wanted.
    files: Vec<OnceLock<File>>,
    /// Per file, whether it is skipped and not on disk: its bytes (those of the pieces it shares
    /// with wanted files) go to the part file, at their offset in the torrent, so the file
    /// itself is never created. Cleared, under the file's write lock, when it becomes wanted.
    skipped: Vec<AtomicBool>,
    /// The folder the layout's paths are under.
    root: PathBuf,
    /// Where skipped files' bytes go (a sparse file, created at the first such write).
    part_path: Option<PathBuf>,
    /// The part file, once opened.
    part: OnceLock<File>,
    /// One lock per file, held while writing to it: the kernel serialises buffered writes to
    /// one file anyway, and a second disk thread spins on the inode lock meanwhile (5% of the
    /// downloader's CPU in one profile); waiting here parks it instead.
    write_locks: Vec<std::sync::Mutex<()>>,
    /// Per file, how many bytes it held before we extended it: beyond that it is a hole of
    /// zeros we made, so [`Storage::recheck`] need not read and hash it.
    existing: Vec<u64>,
    /// Whether the files may be written.
    mode: Mode,
    /// Bytes written since the last write-behind flush began (see [`WRITE_BEHIND`]).
    unflushed: AtomicU64,
    /// Set while a disk thread runs a write-behind flush, so that only one does at a time.
    flushing: AtomicBool,
    /// Set once a read without waiting was refused as unsupported (old kernel, some file
    /// systems): uploads then always go through the disk threads.
    #[cfg(target_os = "linux")]
    nowait_unsupported: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("files", &self.files.len())
            .finish()
    }
}

impl Storage {
    /// Opens (and in [`Mode::ReadWrite`], creates) every file of `layout` under `root`.
    /// Zero-length files are created too. Existing data is kept.
    pub fn open(root: &Path, layout: Layout, lengths: Lengths, mode: Mode) -> io::Result<Self> {
        let wanted = vec![true; layout.files().len()];
        Self::open_selected(root, layout, lengths, mode, &wanted, None)
    }

    /// Like [`open`](Self::open), but a file whose `wanted` entry is `false` and that is not
    /// on disk yet is not created: the bytes of it that pieces shared with wanted files bring
    /// are kept in the part file at `part` (libtorrent keeps such bytes the same way).
    pub fn open_selected(
        root: &Path,
        layout: Layout,
        lengths: Lengths,
        mode: Mode,
        wanted: &[bool],
        part: Option<PathBuf>,
    ) -> io::Result<Self> {
        let mut files = Vec::with_capacity(layout.files().len());
        let mut existing = Vec::with_capacity(layout.files().len());
        let mut skipped = Vec::with_capacity(layout.files().len());
        for (i, info) in layout.files().iter().enumerate() {
            let path = root.join(&info.path);
            let skip = mode == Mode::ReadWrite
                && !wanted.get(i).copied().unwrap_or(true)
                && part.is_some()
                && !path.exists();
            let (file, held) = if skip || info.pad {
                // A pad file (BEP 47) is never opened: its bytes are zeros.
                (None, 0)
            } else {
                open_file(&path, info.length, mode)?
            };
            let cell = OnceLock::new();
            if let Some(f) = file {
                let _ = cell.set(f);
            }
            files.push(cell);
            existing.push(held);
            skipped.push(AtomicBool::new(skip));
        }
        Ok(Self {
            skipped,
            root: root.to_path_buf(),
            part_path: part,
            part: OnceLock::new(),
            layout,
            lengths,
            mode,
            write_locks: files.iter().map(|_| std::sync::Mutex::new(())).collect(),
            files,
            existing,
            unflushed: AtomicU64::new(0),
            flushing: AtomicBool::new(false),
            #[cfg(target_os = "linux")]
            nowait_unsupported: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The torrent's lengths.
    pub fn lengths(&self) -> &Lengths {
        &self.lengths
    }

    /// The files, where they are and how long the torrent says they are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The files whose length on disk is not the torrent's (or that are missing), in torrent
    /// order. Pieces may still verify when a file is too long, so a check of the data must
    /// look at this too.
    pub fn wrong_lengths(&self) -> Vec<WrongLength> {
        self.layout
            .files()
            .iter()
            .zip(&self.files)
            .enumerate()
            .filter(|(i, (info, _))| !self.is_skipped(*i) && !info.pad)
            .filter_map(|(_, (info, file))| {
                let found = file.get().and_then(|f| f.metadata().ok()).map(|m| m.len());
                (found != Some(info.length)).then(|| WrongLength {
                    path: info.path.clone(),
                    expected: info.length,
                    found,
                })
            })
            .collect()
    }

    /// Cuts back every file longer than the torrent says (in [`Mode::ReadWrite`] only; read-only
    /// data is never changed) and returns their paths. Called when a download completes, so
    /// that nothing written behind our back survives past the torrent's end.
    pub fn trim_to_length(&self) -> io::Result<Vec<std::path::PathBuf>> {
        let mut trimmed = Vec::new();
        if self.mode != Mode::ReadWrite {
            return Ok(trimmed);
        }
        for (info, file) in self.layout.files().iter().zip(&self.files) {
            let Some(file) = file.get() else { continue };
            let len = file
                .metadata()
                .map_err(|e| annotate(e, "stat", &info.path))?
                .len();
            if len > info.length {
                file.set_len(info.length)
                    .map_err(|e| annotate(e, "cut back", &info.path))?;
                trimmed.push(info.path.clone());
            }
        }
        Ok(trimmed)
    }

    /// Reads `buf.len()` bytes at torrent offset `offset`, across files.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for span in self.layout.spans(offset, buf.len()) {
            let dst = &mut buf[span.buf_offset..span.buf_offset + span.len];
            if self.is_pad(span.file) {
                dst.fill(0);
                continue;
            }
            let (file, at) = self.target(span.file, span.file_offset, false)?;
            file.read_exact_at(dst, at)?;
        }
        Ok(())
    }

    /// Whether file `index` is a pad file (BEP 47): zeros, never on disk.
    fn is_pad(&self, index: usize) -> bool {
        self.layout.files().get(index).is_some_and(|f| f.pad)
    }

    /// Writes `data` at torrent offset `offset`, across files (a pad file's part is dropped:
    /// it is zeros by definition, and the piece's hash has already vouched for it).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        for span in self.layout.spans(offset, data.len()) {
            if self.is_pad(span.file) {
                continue;
            }
            let _writing = self.write_lock(span.file);
            let (file, at) = self.target(span.file, span.file_offset, true)?;
            file.write_all_at(&data[span.buf_offset..span.buf_offset + span.len], at)?;
        }
        Ok(())
    }

    /// Reads one block.
    pub fn read_block(&self, block: &BlockInfo, buf: &mut [u8]) -> io::Result<()> {
        let offset = self.lengths.piece_offset(block.piece) + u64::from(block.begin);
        self.read_at(offset, &mut buf[..block.len as usize])
    }

    /// Reads one block only if it can be done without waiting for the disk, that is, if every
    /// byte is in the page cache: `Ok(true)` when `buf` holds the block, `Ok(false)` when it
    /// must be read by a disk thread instead (not cached, or not supported here). Network
    /// threads use it to serve uploads of hot data without a round trip to a disk thread.
    pub fn read_block_cached(&self, block: &BlockInfo, buf: &mut [u8]) -> io::Result<bool> {
        #[cfg(target_os = "linux")]
        {
            if self.nowait_unsupported.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let offset = self.lengths.piece_offset(block.piece) + u64::from(block.begin);
            let buf = &mut buf[..block.len as usize];
            for span in self.layout.spans(offset, buf.len()) {
                let dst = &mut buf[span.buf_offset..span.buf_offset + span.len];
                if self.is_pad(span.file) {
                    dst.fill(0);
                    continue;
                }
                let (file, at) = self.target(span.file, span.file_offset, false)?;
                if !self.read_nowait(file, &mut [io::IoSliceMut::new(dst)], at)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (block, buf);
            Ok(false)
        }
    }

    /// Reads a run of consecutive blocks starting at `first` into `bufs` (one per block, in
    /// order) with as few calls as possible, only if it can be done without waiting for the
    /// disk and the run lies in one file: `Ok(false)` otherwise, and the caller reads the blocks
    /// one by one. Uploads use it to read many requested blocks in one system call.
    pub fn read_run_cached(
        &self,
        first: &BlockInfo,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> io::Result<bool> {
        #[cfg(target_os = "linux")]
        {
            if self.nowait_unsupported.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let offset = self.lengths.piece_offset(first.piece) + u64::from(first.begin);
            let len = bufs.iter().map(|b| b.len()).sum();
            let mut spans = self.layout.spans(offset, len);
            let (Some(span), None) = (spans.next(), spans.next()) else {
                return Ok(false);
            };
            if self.is_pad(span.file) {
                return Ok(false); // read block by block, as zeros
            }
            let (file, at) = self.target(span.file, span.file_offset, false)?;
            self.read_nowait(file, bufs, at)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (first, bufs);
            Ok(false)
        }
    }

    /// Fills `bufs` from `file` at `at` with `preadv2(RWF_NOWAIT)`, short reads resumed:
    /// `Ok(false)` as soon as a byte would have to wait for the disk (or the kernel cannot say).
    #[cfg(target_os = "linux")]
    fn read_nowait(
        &self,
        file: &File,
        mut bufs: &mut [io::IoSliceMut<'_>],
        mut at: u64,
    ) -> io::Result<bool> {
        while !bufs.is_empty() {
            match rustix::io::preadv2(file, bufs, at, rustix::io::ReadWriteFlags::NOWAIT) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    at += n as u64;
                    io::IoSliceMut::advance_slices(&mut bufs, n);
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
                    // An old kernel or a file system without RWF_NOWAIT.
                    self.nowait_unsupported.store(true, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Writes a whole piece given as its blocks in order: with one `pwritev` when the piece
    /// lies in one file (the common case), where the platform has it.
    pub fn write_piece(&self, piece: u32, blocks: &[Block]) -> io::Result<()> {
        let mut offset = self.lengths.piece_offset(piece);
        #[cfg(target_os = "linux")]
        {
            let len = blocks.iter().map(|b| b.len()).sum();
            let mut spans = self.layout.spans(offset, len);
            if let (Some(span), None) = (spans.next(), spans.next()) {
                if self.is_pad(span.file) {
                    return Ok(());
                }
                let _writing = self.write_lock(span.file);
                let (file, at) = self.target(span.file, span.file_offset, true)?;
                return write_all_vectored_at(file, blocks, at);
            }
        }
        for b in blocks {
            self.write_at(offset, b)?;
            offset += b.len() as u64;
        }
        Ok(())
    }

    /// Flushes every file to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        for f in self
            .files
            .iter()
            .filter_map(OnceLock::get)
            .chain(self.part.get())
        {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Counts `len` bytes just written and, once [`WRITE_BEHIND`] bytes are unflushed and no
    /// other thread is flushing, flushes every file (write-behind; see the constant). Errors
    /// are left for the flush that must succeed, the one before the resume record is saved.
    pub fn write_behind(&self, len: u64) {
        if self.unflushed.fetch_add(len, Ordering::Relaxed) + len < WRITE_BEHIND {
            return;
        }
        if self
            .flushing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.unflushed.store(0, Ordering::Relaxed);
        if let Err(e) = self.sync() {
            log::debug!("write-behind flush: {e}");
        }
        self.flushing.store(false, Ordering::Release);
    }

    /// Whether any byte of `offset..offset + len` was in a file before we opened it (a piece
    /// wholly in the holes we made is zeros, not data: checking it would hash for nothing).
    fn any_existing(&self, offset: u64, len: usize) -> bool {
        self.layout
            .spans(offset, len)
            .any(|s| s.file_offset < self.existing.get(s.file).copied().unwrap_or(u64::MAX))
    }

    /// Holds the write lock of file `index` (a poisoned lock is still a lock: it guards no data).
    fn write_lock(&self, index: usize) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.write_locks
            .get(index)
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Where the bytes at `file_offset` of file `index` are: the file itself, or for a skipped
    /// file the part file at their offset in the torrent (opened, and with `create` created,
    /// on first use).
    fn target(&self, index: usize, file_offset: u64, create: bool) -> io::Result<(&File, u64)> {
        let info = &self.layout.files()[index];
        if self.skipped[index].load(Ordering::Acquire) {
            return Ok((self.part_file(create)?, info.offset + file_offset));
        }
        let file = self.files[index].get().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is missing", info.path.display()),
            )
        })?;
        Ok((file, file_offset))
    }

    /// The part file, opened on first use; created only when `create`.
    fn part_file(&self, create: bool) -> io::Result<&File> {
        if let Some(f) = self.part.get() {
            return Ok(f);
        }
        let path = self.part_path.as_ref().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "a skipped file has no part file")
        })?;
        if create {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| annotate(e, "create folder", parent))?;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| annotate(e, "open", path))?;
        // Two threads may race here: one handle wins, the other is closed.
        let _ = self.part.set(file);
        Ok(self.part.get().expect("just set"))
    }

    /// Whether file `index` is skipped and not on disk (its bytes in the part file).
    pub fn is_skipped(&self, index: usize) -> bool {
        self.skipped
            .get(index)
            .is_some_and(|s| s.load(Ordering::Acquire))
    }

    /// A skipped file becomes wanted: it is created at its full length, the bytes the part file
    /// holds for it are copied in, and from then on reads and writes go to it. Writes to the
    /// file wait meanwhile (its write lock), so none is lost to the move.
    pub fn want(&self, index: usize) -> io::Result<()> {
        if !self.is_skipped(index) || self.mode != Mode::ReadWrite {
            return Ok(());
        }
        let _writing = self.write_lock(index);
        let info = &self.layout.files()[index];
        let (file, _) = open_file(&self.root.join(&info.path), info.length, self.mode)?;
        let file = file.expect("read-write opens create");
        if let Ok(part) = self.part_file(false) {
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            while done < info.length {
                let n = (info.length - done).min(buf.len() as u64) as usize;
                let got = part.read_at(&mut buf[..n], info.offset + done)?;
                if got == 0 {
                    break; // the rest of the part file is past its end: holes
                }
                file.write_all_at(&buf[..got], done)
                    .map_err(|e| annotate(e, "write", &info.path))?;
                done += got as u64;
            }
        }
        let _ = self.files[index].set(file);
        self.skipped[index].store(false, Ordering::Release);
        Ok(())
    }

    /// The SHA-1 of `len` bytes at torrent offset `offset`, read in chunks through `buf`;
    /// `None` if they cannot all be read.
    fn hash_range(&self, offset: u64, len: usize, buf: &mut [u8]) -> Option<[u8; 20]> {
        let mut sha = Sha1::new();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            self.read_at(offset + done as u64, &mut buf[..n]).ok()?;
            sha.update(&buf[..n]);
            done += n;
        }
        Some(sha.finalize().into())
    }

    /// Whether the `len` bytes at torrent offset `offset` hash as `expected` says, read in
    /// chunks through `buf` (a v2 piece: only its file's bytes, into a merkle subtree).
    fn check_range(&self, offset: u64, len: usize, buf: &mut [u8], expected: &PieceHash) -> bool {
        match expected {
            PieceHash::Sha1(h) => self.hash_range(offset, len, buf).as_ref() == Some(h),
            PieceHash::Merkle {
                hash,
                data_len,
                leaves,
            } => {
                let len = (*data_len as usize).min(len);
                let mut tree = merkle::FileHasher::new();
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(buf.len());
                    if self.read_at(offset + done as u64, &mut buf[..n]).is_err() {
                        return false;
                    }
                    tree.update(&buf[..n]);
                    done += n;
                }
                merkle::piece_root(&tree.into_leaves(), u64::from(*leaves)) == *hash
            }
        }
    }

    /// Checks every piece against its SHA-1 in `hashes` (see [`Storage::recheck_pieces`]).
    pub fn recheck(
        &self,
        hashes: &[[u8; 20]],
        threads: usize,
        progress: &(dyn Fn(u32) + Sync),
    ) -> Bitfield {
        let hashes: Vec<PieceHash> = hashes.iter().map(|h| PieceHash::Sha1(*h)).collect();
        self.recheck_pieces(&hashes, threads, progress)
    }

    /// Checks every piece against `hashes` (SHA-1 or v2 merkle) with `threads` threads (0: one
    /// per core) and returns the pieces that verify. Missing or short files simply fail their
    /// pieces. `progress` is called with the number of pieces checked so far, now and then.
    pub fn recheck_pieces(
        &self,
        hashes: &[PieceHash],
        threads: usize,
        progress: &(dyn Fn(u32) + Sync),
    ) -> Bitfield {
        let n = self.lengths.num_pieces();
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        }
        .min(n as usize)
        .max(1);
        let next = AtomicU32::new(0);
        let done = AtomicU32::new(0);
        let good: Vec<Vec<u32>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        // Read and hash in chunks that stay in the CPU cache, rather than
                        // a whole piece (up to 64 MiB) that would be read back from memory.
                        let mut buf =
                            vec![0u8; RECHECK_CHUNK.min(self.lengths.piece_length() as usize)];
                        let mut ok = Vec::new();
                        loop {
                            let piece = next.fetch_add(1, Ordering::Relaxed);
                            if piece >= n {
                                break;
                            }
                            let len = self.lengths.piece_len(piece) as usize;
                            let offset = self.lengths.piece_offset(piece);
                            if self.any_existing(offset, len)
                                && hashes
                                    .get(piece as usize)
                                    .is_some_and(|h| self.check_range(offset, len, &mut buf, h))
                            {
                                ok.push(piece);
                            }
                            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if d % 64 == 0 || d == n {
                                progress(d);
                            }
                        }
                        ok
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let mut have = Bitfield::new(n);
        for piece in good.into_iter().flatten() {
            have.set(piece);
        }
        have
    }
}

/// One thread per core, as the machine reports it.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Writes `blocks` back to back at `at`, with as few `pwritev` calls as the kernel allows.
#[cfg(target_os = "linux")]
fn write_all_vectored_at(file: &File, blocks: &[Block], mut at: u64) -> io::Result<()> {
    /// The most buffers one call takes (`IOV_MAX` on Linux).
    const IOV_MAX: usize = 1024;
    let mut slices: Vec<io::IoSlice<'_>> = blocks.iter().map(|b| io::IoSlice::new(b)).collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let batch = bufs.len().min(IOV_MAX);
        match rustix::io::pwritev(file, &bufs[..batch], at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                at += n as u64;
                io::IoSlice::advance_slices(&mut bufs, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Opens one file of a torrent: in [`Mode::ReadWrite`] created (with its folders) and set to
/// exactly `length` (sparse when shorter, cut back when longer: stale bytes from an older file of
/// the same name never survive), in [`Mode::ReadOnly`] as it is (`None` when missing). Returns
/// the handle and how many of its bytes were there before (the rest is a hole we made).
fn open_file(path: &Path, length: u64, mode: Mode) -> io::Result<(Option<File>, u64)> {
    match mode {
        Mode::ReadWrite => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| annotate(e, "create folder", parent))?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| annotate(e, "open", path))?;
            let len = file
                .metadata()
                .map_err(|e| annotate(e, "stat", path))?
                .len();
            if len != length {
                file.set_len(length)
                    .map_err(|e| annotate(e, "size", path))?;
            }
            Ok((Some(file), len.min(length)))
        }
        Mode::ReadOnly => match File::open(path) {
            Ok(f) => Ok((Some(f), length)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((None, length)),
            Err(e) => Err(annotate(e, "open", path)),
        },
    }
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
}

/// A file whose length on disk is not the one the torrent gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongLength {
    /// Where the file is.
    pub path: std::path::PathBuf,
    /// Its length in the torrent.
    pub expected: u64,
    /// Its length on disk; `None` when it is missing.
    pub found: Option<u64>,
}

/// How a piece handed to the hasher ended.
#[derive(Debug)]
pub enum PieceOutcome {
    /// Its hash matched and it is on disk.
    Written,
    /// Its hash did not match: the data was thrown away.
    HashFailed,
    /// Its hash matched but writing it failed (disk full, permission denied...).
    WriteFailed(io::Error),
}

/// The end of a piece's trip through the hasher and the disk.
#[derive(Debug)]
pub struct PieceDone {
    /// The piece.
    pub piece: u32,
    /// How it ended.
    pub outcome: PieceOutcome,
    /// The SHA-1 of each block, in order: always for a failed piece, and for a good one when
    /// the picker asked (to tell which blocks of an earlier failure were wrong).
    pub block_digests: Vec<[u8; 20]>,
}

/// A block read for an upload.
#[derive(Debug)]
pub struct ReadDone {
    /// The block asked for.
    pub block: BlockInfo,
    /// Its bytes.
    pub data: io::Result<Block>,
}

/// Work for the disk threads.
#[derive(Debug)]
pub enum DiskJob {
    /// Write a verified piece, then report on `done`.
    Write {
        /// The torrent's files.
        storage: Arc<Storage>,
        /// The piece index.
        piece: u32,
        /// Its blocks, in order.
        blocks: Vec<Block>,
        /// Where to report; its capacity covers every piece in flight, so sending never waits
        /// for long (see `torrent`).
        done: Sender<PieceDone>,
        /// Passed on in the report.
        block_digests: Vec<[u8; 20]>,
    },
    /// Read a block for an upload and send it back with `try_send` (the requester sized its
    /// channel for every read it has outstanding).
    Read {
        /// The torrent's files.
        storage: Arc<Storage>,
        /// The block.
        block: BlockInfo,
        /// Where the bytes go.
        reply: Sender<ReadDone>,
    },
    /// Flush every file of a torrent, then answer.
    Sync {
        /// The torrent's files.
        storage: Arc<Storage>,
        /// Answered once the files are flushed.
        reply: Sender<io::Result<()>>,
    },
}

/// The disk actor's handle: a queue of jobs served by a few threads.
#[derive(Clone)]
pub struct Disk {
    /// The threads and their job queue, bounded by [`DISK_QUEUE`].
    workers: Workers<DiskJob>,
    /// The block buffers of everything that uses these threads: uploads read into them, and
    /// torrents receive into them. One pool, so idle buffers are recycled across torrents.
    blocks: Arc<BlockPool>,
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disk")
            .field("workers", &self.workers)
            .finish()
    }
}

impl Disk {
    /// Starts `threads` disk threads; upload reads take buffers from `blocks`.
    pub fn spawn(threads: usize, blocks: Arc<BlockPool>) -> Self {
        let uploads = blocks.clone();
        let workers = Workers::spawn("shoal-disk", threads, DISK_QUEUE, move |job| {
            serve(&uploads, job)
        });
        Self { workers, blocks }
    }

    /// The block buffers shared by the users of these threads.
    pub fn blocks(&self) -> &Arc<BlockPool> {
        &self.blocks
    }

    /// The job queue, for the hasher and peers.
    pub fn jobs(&self) -> &Sender<DiskJob> {
        self.workers.jobs()
    }

    /// How many threads serve the queue.
    pub fn threads(&self) -> usize {
        self.workers.threads()
    }

    /// Flushes every file of `storage`.
    pub async fn sync(&self, storage: &Arc<Storage>) -> io::Result<()> {
        let (tx, rx) = async_channel::bounded(1);
        self.jobs()
            .send(DiskJob::Sync {
                storage: storage.clone(),
                reply: tx,
            })
            .await
            .map_err(|_| io::Error::other("disk threads have stopped"))?;
        rx.recv()
            .await
            .map_err(|_| io::Error::other("disk threads have stopped"))?
    }

    /// Stops taking jobs, lets the threads finish what is queued, and waits for them (off the
    /// executor). Call it last, after everything that writes has stopped.
    pub async fn shutdown(&self) {
        self.workers.shutdown().await;
    }
}

fn serve(uploads: &Arc<BlockPool>, job: DiskJob) {
    match job {
        DiskJob::Write {
            storage,
            piece,
            blocks,
            done,
            block_digests,
        } => {
            let len: u64 = blocks.iter().map(|b| b.len() as u64).sum();
            let outcome = match storage.write_piece(piece, &blocks) {
                Ok(()) => PieceOutcome::Written,
                Err(e) => PieceOutcome::WriteFailed(e),
            };
            let written = matches!(outcome, PieceOutcome::Written);
            drop(blocks); // the budget goes back before the report
            let _ = done.send_blocking(PieceDone {
                piece,
                outcome,
                block_digests,
            });
            if written {
                // After the report: the piece counts as soon as it is written.
                storage.write_behind(len);
            }
        }
        DiskJob::Read {
            storage,
            block,
            reply,
        } => {
            // Every byte is read over; on error the block is dropped.
            let mut buf = uploads.take_for_overwrite(block.len as usize);
            let data = storage.read_block(&block, &mut buf).map(|()| buf);
            let _ = reply.try_send(ReadDone { block, data });
        }
        DiskJob::Sync { storage, reply } => {
            let _ = reply.try_send(storage.sync());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_engine::lengths::BLOCK_LEN;
    use std::io::Write;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_piece_across_two_files_is_written_and_read_back_from_the_cache() {
        let dir = scratch("span");
        let (a, b) = (dir.join("a"), dir.join("b"));
        let piece = 2 * BLOCK_LEN as u64;
        let lengths = Lengths::new(10_000 + 30_000, piece).unwrap();
        let layout = Layout::new([(a.clone(), 10_000), (b.clone(), 30_000)]);
        let s = Storage::open(Path::new(""), layout, lengths, Mode::ReadWrite).unwrap();
        let data: Vec<u8> = (0..piece as usize).map(|i| (i * 7 % 251) as u8).collect();
        let pool = BlockPool::new();
        let blocks: Vec<Block> = data
            .chunks(BLOCK_LEN as usize)
            .map(|c| pool.take_copy(c))
            .collect();
        // The first block spans both files: the per-span path, not one pwritev.
        s.write_piece(0, &blocks).unwrap();
        let on_disk = [std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap()].concat();
        assert_eq!(&on_disk[..piece as usize], &data[..]);
        let first = BlockInfo {
            piece: 0,
            begin: 0,
            len: BLOCK_LEN,
        };
        let mut buf = vec![0u8; BLOCK_LEN as usize];
        // Just written, so in the page cache: read without waiting, across both files.
        let cached = s.read_block_cached(&first, &mut buf).unwrap();
        assert_eq!(cached, cfg!(target_os = "linux"));
        if cached {
            assert_eq!(&buf[..], &data[..BLOCK_LEN as usize]);
        }
        // A run across the two files is left to the block-by-block path.
        let mut two = vec![0u8; 2 * BLOCK_LEN as usize];
        let (x, y) = two.split_at_mut(BLOCK_LEN as usize);
        let mut slots = [io::IoSliceMut::new(x), io::IoSliceMut::new(y)];
        assert!(!s.read_run_cached(&first, &mut slots).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pad_files_read_as_zeros_and_never_reach_the_disk() {
        // BEP 47: a (10,000 bytes), a pad of 6,384 to the 16 KiB piece boundary, b (5,000).
        let dir = scratch("pad");
        let (a, pad, b) = (dir.join("a"), dir.join(".pad").join("6384"), dir.join("b"));
        let piece = BLOCK_LEN as u64;
        let lengths = Lengths::new(piece + 5_000, piece).unwrap();
        let layout = Layout::with_pads([
            (a.clone(), 10_000, false),
            (pad.clone(), 6_384, true),
            (b.clone(), 5_000, false),
        ]);
        let s = Storage::open(Path::new(""), layout, lengths, Mode::ReadWrite).unwrap();
        assert!(
            !pad.exists() && !dir.join(".pad").exists(),
            "no pad file is created"
        );
        assert!(
            s.wrong_lengths().is_empty(),
            "the pad's absence is not a wrong length"
        );
        let mut data: Vec<u8> = (0..piece as usize).map(|i| (i % 251) as u8 | 1).collect();
        data[10_000..].fill(0);
        let pool = BlockPool::new();
        s.write_piece(0, &[pool.take_copy(&data)]).unwrap();
        s.write_at(piece, &[7u8; 5_000]).unwrap();
        assert!(!pad.exists());
        assert_eq!(std::fs::read(&a).unwrap(), &data[..10_000]);
        assert_eq!(std::fs::read(&b).unwrap(), vec![7u8; 5_000]);
        let mut back = vec![1u8; piece as usize];
        s.read_at(0, &mut back).unwrap();
        assert_eq!(back, data, "the pad reads as zeros");
        let block = BlockInfo {
            piece: 0,
            begin: 0,
            len: BLOCK_LEN,
        };
        let mut cached = vec![1u8; piece as usize];
        if s.read_block_cached(&block, &mut cached).unwrap() {
            assert_eq!(cached, data);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_piece_of_more_blocks_than_one_pwritev_takes_is_written_whole() {
        let dir = scratch("iov");
        let path = dir.join("f");
        // 1100 blocks of 16 bytes: more buffers than one call accepts (1024).
        let len = 1100 * 16;
        let lengths = Lengths::new(len, len).unwrap();
        let layout = Layout::new([(path.clone(), len)]);
        let s = Storage::open(Path::new(""), layout, lengths, Mode::ReadWrite).unwrap();
        let data: Vec<u8> = (0..len as usize).map(|i| (i % 253) as u8).collect();
        let pool = BlockPool::new();
        let blocks: Vec<Block> = data.chunks(16).map(|c| pool.take_copy(c)).collect();
        s.write_piece(0, &blocks).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Three consecutive blocks read back from the page cache with one vectored read.
        let mut bufs = [[0u8; 16]; 3];
        let first = BlockInfo {
            piece: 0,
            begin: 32,
            len: 16,
        };
        let mut slots: Vec<io::IoSliceMut<'_>> =
            bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
        let cached = s.read_run_cached(&first, &mut slots).unwrap();
        assert_eq!(cached, cfg!(target_os = "linux"));
        if cached {
            assert_eq!(bufs.concat(), &data[32..80]);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_longer_file_is_cut_back_for_a_download_and_reported_read_only() {
        let dir = scratch("long");
        let path = dir.join("f");
        std::fs::write(&path, [1u8; 300]).unwrap();
        let lengths = Lengths::new(205, 64).unwrap();
        let layout = || Layout::new([(path.clone(), 200), (dir.join("gone"), 5)]);
        // Read-only: nothing changes, and both files are reported.
        let s = Storage::open(Path::new(""), layout(), lengths, Mode::ReadOnly).unwrap();
        let wrong = s.wrong_lengths();
        assert_eq!(wrong.len(), 2);
        assert_eq!((wrong[0].expected, wrong[0].found), (200, Some(300)));
        assert_eq!(wrong[1].found, None);
        assert!(s.trim_to_length().unwrap().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 300);
        // Read-write: cut back (and the missing file made) on open.
        let s = Storage::open(Path::new(""), layout(), lengths, Mode::ReadWrite).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 200);
        assert!(s.wrong_lengths().is_empty());
        // Grown behind our back: cut back on request.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        assert_eq!(s.trim_to_length().unwrap(), vec![path.clone()]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recheck_skips_the_holes_it_made_and_checks_what_was_there() {
        let dir = std::env::temp_dir().join(format!("shoal-disk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let piece = 16 * 1024u64;
        // Three pieces; the file holds the first one and a half (real data, then zeros).
        let mut data = vec![7u8; 3 * piece as usize];
        data[(3 * piece / 2) as usize..].fill(0);
        std::fs::write(&path, &data[..(3 * piece / 2) as usize]).unwrap();
        let hashes: Vec<[u8; 20]> = data
            .chunks(piece as usize)
            .map(|c| Sha1::digest(c).into())
            .collect();
        let lengths = Lengths::new(3 * piece, piece).unwrap();
        let layout = Layout::new([(path.clone(), 3 * piece)]);
        let s = Storage::open(Path::new(""), layout, lengths, Mode::ReadWrite).unwrap();
        let have = s.recheck(&hashes, 2, &|_| {});
        // Piece 1 was half there (its zero half is a hole that happens to match): checked.
        // Piece 2 lies wholly in the hole we made: not even read, so not claimed.
        assert!(have.get(0) && have.get(1) && !have.get(2));
        // Reopened, the file is whole: every piece is checked and verifies.
        let layout = Layout::new([(path.clone(), 3 * piece)]);
        let s = Storage::open(Path::new(""), layout, lengths, Mode::ReadWrite).unwrap();
        assert!(s.recheck(&hashes, 2, &|_| {}).all());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_skipped_file_is_never_created_and_its_bytes_wait_in_the_part_file() {
        let dir = scratch("skipped");
        let files = [("a", 10_000u64), ("b", 20_000), ("c", 10_000)];
        let layout = Layout::new(files.iter().map(|(n, l)| (dir.join(n), *l)));
        let lengths = Lengths::new(40_000, 16 * 1024).unwrap();
        let part = dir.join(".shoal/x.parts");
        let wanted = [true, false, true];
        let s = Storage::open_selected(
            Path::new(""),
            layout,
            lengths,
            Mode::ReadWrite,
            &wanted,
            Some(part.clone()),
        )
        .unwrap();
        assert!(s.is_skipped(1) && !s.is_skipped(0));
        assert!(!dir.join("b").exists(), "a skipped file is not created");
        assert!(!part.exists(), "the part file waits for its first byte");
        // Piece 0 covers a and the start of b; piece 1 the rest of b and the start of c.
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        s.write_at(0, &data[..32_768]).unwrap();
        assert!(!dir.join("b").exists());
        assert!(part.exists());
        let mut back = vec![0u8; 32_768];
        s.read_at(0, &mut back).unwrap();
        assert_eq!(back, data[..32_768]);
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), data[..10_000]);
        assert_eq!(
            s.wrong_lengths(),
            Vec::new(),
            "a skipped file is not a wrong length"
        );
        // Wanted after all: created, with the bytes the part file held for it.
        s.want(1).unwrap();
        assert!(!s.is_skipped(1));
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), data[10_000..30_000]);
        // Writes now land in the file itself.
        s.write_at(10_000, &[7u8; 100]).unwrap();
        assert_eq!(std::fs::read(dir.join("b")).unwrap()[..100], [7u8; 100]);
        s.write_at(32_768, &data[32_768..]).unwrap();
        assert_eq!(std::fs::read(dir.join("c")).unwrap(), data[30_000..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
