//! Torrent creation from a file or a folder, hashing pieces on every core.
//!
//! # What goes in
//! A file makes a single-file torrent named after it. A folder makes a multi-file torrent named
//! after it, holding every regular file below it in a stable order: paths sorted by the bytes
//! of their components. On purpose, and silently:
//! - hidden entries (names starting with `.`) are skipped unless
//!   [`CreateOptions::include_hidden`], and a hidden folder is not entered;
//! - symbolic links are skipped, never followed (a link could point outside the folder or loop),
//!   and so are special files (FIFOs, sockets, devices), whose "contents" are not data;
//! - empty folders leave no trace (a torrent lists files only); zero-length files are kept.
//!
//! A name that is not UTF-8, or that a reader would refuse as unsafe (a `\` in a Unix file
//! name), is an error rather than a silently renamed file.
//!
//! # Hashing
//! The pieces are cut into batches handed out to `threads` scoped threads through a shared
//! queue. Each thread owns a piece buffer and its own file handles and reads its pieces with
//! positional reads (a piece may span several files), so threads never share a file cursor and
//! the result is the same as hashing sequentially.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use sha1::{Digest, Sha1};

use crate::lengths::{Lengths, LengthsError};
use crate::merkle;
use crate::metainfo::{unsafe_component_reason, FileEntry, Info, MetaVersion, Metainfo};

/// The smallest piece length [`default_piece_length`] picks: 16 KiB, one block.
pub const MIN_DEFAULT_PIECE_LENGTH: u32 = 16 * 1024;

/// The largest piece length [`default_piece_length`] picks: 16 MiB.
pub const MAX_DEFAULT_PIECE_LENGTH: u32 = 16 * 1024 * 1024;

/// Bytes of pieces a thread takes from the queue at a time: large enough that each thread
/// reads long sequential runs (good for read-ahead on a cold disk), small enough to balance.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// How to make a torrent.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Bytes per piece; `None` picks [`default_piece_length`] of the total.
    pub piece_length: Option<u32>,
    /// Tracker tiers (BEP 12); the command line gives one URL per tier.
    pub trackers: Vec<Vec<String>>,
    /// Sets the `private` flag (BEP 27).
    pub private: bool,
    /// A free-text `comment`.
    pub comment: Option<String>,
    /// `created by`; `None` writes `shoal/<version>`.
    pub created_by: Option<String>,
    /// `creation date` in seconds since the Unix epoch; `None` writes the current time.
    pub creation_date: Option<i64>,
    /// Includes files and folders whose names start with `.`.
    pub include_hidden: bool,
    /// Hashing threads; 0 uses every core.
    pub threads: usize,
    /// Web seeds (BEP 19 `url-list`): URLs serving the same files over HTTP(S).
    pub web_seeds: Vec<String>,
    /// The kind of torrent: v1 (the default), v2 only, or hybrid (BEP 52). v2 and hybrid
    /// torrents need a piece length that is a power of two of at least 16 KiB.
    pub version: Option<MetaVersion>,
}

/// Why a torrent could not be made.
#[derive(Debug)]
pub enum CreateError {
    /// Reading the file system failed.
    Io {
        /// The file or folder being read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path has no usable name (such as `/`).
    NoName(PathBuf),
    /// A file or folder name is not UTF-8.
    NotUtf8(PathBuf),
    /// A file or folder name would be refused by readers (see
    /// [`crate::metainfo::unsafe_component_reason`]).
    UnsafeName {
        /// The file or folder.
        path: PathBuf,
        /// Why its name is refused.
        reason: &'static str,
    },
    /// The path is neither a regular file nor a folder (a symlink to nothing, a device...).
    NotAFileOrFolder(PathBuf),
    /// The folder holds no files, or only empty ones.
    Empty(PathBuf),
    /// The lengths do not make a torrent (piece length zero or too large, too many pieces).
    Lengths(LengthsError),
    /// A file's size changed while it was being hashed.
    Changed(PathBuf),
    /// A v2 or hybrid torrent was asked for with a piece length BEP 52 does not allow.
    V2PieceLength(u32),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::NoName(p) => write!(f, "{}: has no file name to name the torrent", p.display()),
            Self::NotUtf8(p) => write!(f, "{}: name is not valid utf-8", p.display()),
            Self::UnsafeName { path, reason } => {
                write!(
                    f,
                    "{}: name cannot go in a torrent: {reason}",
                    path.display()
                )
            }
            Self::NotAFileOrFolder(p) => {
                write!(f, "{}: not a regular file or a folder", p.display())
            }
            Self::Empty(p) => write!(f, "{}: no data to put in a torrent", p.display()),
            Self::Lengths(e) => write!(f, "bad lengths: {e}"),
            Self::Changed(p) => write!(f, "{}: file changed while hashing", p.display()),
            Self::V2PieceLength(n) => write!(
                f,
                "a v2 or hybrid torrent needs a piece length that is a power of two of at \
                 least 16 KiB, not {n}"
            ),
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Lengths(e) => Some(e),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A piece length for `total` bytes: a power of two giving 1024 to 2048 pieces, clamped to
/// 16 KiB..=16 MiB (so small torrents have fewer pieces, huge ones more).
pub fn default_piece_length(total: u64) -> u32 {
    let target = total.div_ceil(2048).max(1).next_power_of_two();
    target.clamp(
        u64::from(MIN_DEFAULT_PIECE_LENGTH),
        u64::from(MAX_DEFAULT_PIECE_LENGTH),
    ) as u32
}

/// One file found on disk: where it is, and its entry in the torrent.
struct Source {
    disk: PathBuf,
    entry: FileEntry,
}

fn utf8_name(path: &Path, name: &std::ffi::OsStr) -> Result<String, CreateError> {
    let name = name
        .to_str()
        .ok_or_else(|| CreateError::NotUtf8(path.to_path_buf()))?;
    match unsafe_component_reason(name) {
        None => Ok(name.to_string()),
        Some(reason) => Err(CreateError::UnsafeName {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

/// Appends the regular files below `dir` to `out`, depth first with children sorted by name
/// bytes, which lists paths in the byte order of their components.
fn walk(
    dir: &Path,
    prefix: &[String],
    include_hidden: bool,
    out: &mut Vec<Source>,
) -> Result<(), CreateError> {
    let mut children = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if !include_hidden && name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        children.push((name, entry.path()));
    }
    children.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    for (name, path) in children {
        // `symlink_metadata` does not follow links: a link is seen as a link and skipped.
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut sub = prefix.to_vec();
            sub.push(utf8_name(&path, &name)?);
            walk(&path, &sub, include_hidden, out)?;
        } else if kind.is_file() {
            let mut components = prefix.to_vec();
            components.push(utf8_name(&path, &name)?);
            out.push(Source {
                disk: path,
                entry: FileEntry::new(components, meta.len()),
            });
        }
        // Anything else (symlinks, FIFOs, sockets, devices) is skipped on purpose.
    }
    Ok(())
}

/// Finds the files of the torrent at `path`: its name, the files, whether it is multi-file.
fn collect(path: &Path, include_hidden: bool) -> Result<(String, Vec<Source>, bool), CreateError> {
    // The path the user named is followed even when it is a link: they asked for it.
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let absolute = fs::canonicalize(path).map_err(io_err(path))?;
    let name = absolute
        .file_name()
        .ok_or_else(|| CreateError::NoName(path.to_path_buf()))?;
    let name = utf8_name(path, name)?;
    if meta.is_file() {
        let file = Source {
            disk: path.to_path_buf(),
            entry: FileEntry::new(vec![name.clone()], meta.len()),
        };
        Ok((name, vec![file], false))
    } else if meta.is_dir() {
        let mut files = Vec::new();
        walk(
            path,
            std::slice::from_ref(&name),
            include_hidden,
            &mut files,
        )?;
        Ok((name, files, true))
    } else {
        Err(CreateError::NotAFileOrFolder(path.to_path_buf()))
    }
}

/// Makes the `.torrent` file for the file or folder at `path`: canonical bencode (sorted keys).
/// A v2 or hybrid torrent is laid out as libtorrent 2.0.8 lays one out, so that both make the
/// same info dictionary of the same files: the file tree in path order, and in a hybrid's v1
/// list a pad file (BEP 47) after every file of a folder that does not end on a piece
/// boundary (the last one too); a v2-only torrent's pieces are aligned the same way.
pub fn create_torrent(path: &Path, opts: &CreateOptions) -> Result<Vec<u8>, CreateError> {
    let (name, mut sources, multi_file) = collect(path, opts.include_hidden)?;
    let total = sources.iter().map(|s| s.entry.length).sum::<u64>();
    if total == 0 {
        return Err(CreateError::Empty(path.to_path_buf()));
    }
    let version = opts.version.unwrap_or(MetaVersion::V1);
    let piece_length = opts
        .piece_length
        .unwrap_or_else(|| default_piece_length(total));
    if version.has_v2()
        && (piece_length < merkle::BLOCK_LEN as u32 || !piece_length.is_power_of_two())
    {
        return Err(CreateError::V2PieceLength(piece_length));
    }
    let pl = u64::from(piece_length);
    let mut layers = BTreeMap::new();
    if version.has_v2() {
        let trees = hash_trees(&sources, pl, opts.threads)?;
        for (s, tree) in sources.iter_mut().zip(trees) {
            s.entry.pieces_root = tree.root;
            if let Some(root) = tree.root.filter(|_| !tree.piece_layer.is_empty()) {
                layers.insert(root, tree.piece_layer);
            }
        }
        // Pad after each file that does not end on a piece boundary: after every file for
        // v2 (libtorrent's layout of a v2 torrent), and in a hybrid's v1 list only between
        // files of a folder (a single file is never padded, or it could not be v1 too).
        if version == MetaVersion::V2 || sources.len() > 1 {
            let mut padded = Vec::with_capacity(sources.len() * 2);
            let mut at = 0u64;
            for s in sources {
                at += s.entry.length;
                padded.push(s);
                if at % pl != 0 {
                    let pad = pl - at % pl;
                    at += pad;
                    padded.push(Source {
                        disk: PathBuf::new(),
                        entry: FileEntry::pad(&name, pad),
                    });
                }
            }
            sources = padded;
        }
    }
    let total = sources.iter().map(|s| s.entry.length).sum::<u64>();
    let lengths = Lengths::new(total, pl).map_err(CreateError::Lengths)?;
    let pieces = if version.has_v1() {
        hash_pieces(&sources, lengths, opts.threads)?
    } else {
        Vec::new()
    };
    let info = Info {
        name,
        piece_length,
        pieces,
        files: sources.into_iter().map(|s| s.entry).collect(),
        private: opts.private,
        multi_file,
        lengths,
        version,
    };
    let created_by = opts
        .created_by
        .clone()
        .unwrap_or_else(|| concat!("shoal/", env!("CARGO_PKG_VERSION")).to_string());
    let creation_date = opts.creation_date.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let mut meta = Metainfo::new(
        info,
        opts.trackers.clone(),
        opts.comment.clone(),
        Some(created_by),
        Some(creation_date),
    )
    .with_piece_layers(layers);
    meta.url_list = opts.web_seeds.clone();
    Ok(meta.to_bytes())
}

/// The merkle tree of every file (v2), files shared out to `threads` threads (0 = every core);
/// each file is read front to back in 1 MiB reads.
fn hash_trees(
    sources: &[Source],
    piece_length: u64,
    threads: usize,
) -> Result<Vec<merkle::FileTree>, CreateError> {
    const READ: usize = 1 << 20;
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, sources.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<merkle::FileTree>>> =
        sources.iter().map(|_| Mutex::new(None)).collect();
    let worker = || -> Result<(), CreateError> {
        let mut buf = vec![0u8; READ];
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(src) = sources.get(i) else {
                return Ok(());
            };
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut hasher = merkle::FileHasher::new();
            if src.entry.length > 0 {
                let file = File::open(&src.disk).map_err(io_err(&src.disk))?;
                let mut at = 0u64;
                while at < src.entry.length {
                    let n = (src.entry.length - at).min(READ as u64) as usize;
                    if let Err(e) = read_at(&file, &mut buf[..n], at) {
                        failed.store(true, Ordering::Relaxed);
                        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                            CreateError::Changed(src.disk.clone())
                        } else {
                            CreateError::Io {
                                path: src.disk.clone(),
                                source: e,
                            }
                        });
                    }
                    hasher.update(&buf[..n]);
                    at += n as u64;
                }
            }
            let tree = hasher.finish(piece_length);
            if let Ok(mut slot) = slots[i].lock() {
                *slot = Some(tree);
            }
        }
    };
    let results: Vec<Result<(), CreateError>> = std::thread::scope(|s| {
        let spawned: Vec<_> = (1..threads).map(|_| s.spawn(worker)).collect();
        let mut results = vec![worker()];
        for h in spawned {
            results.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        results
    });
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .expect("every file was hashed")
        })
        .collect())
}

/// Reads exactly `buf.len()` bytes of `file` at `offset`.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Reads the torrent's bytes at `offset..offset + buf.len()` from the files they lie in.
/// `starts[i]` is the torrent offset of file `i`. `open` is this thread's one open file (index
/// and handle): a thread reads its pieces in increasing order, so it never goes back to a file it
/// has left, and holding one handle keeps a folder of many files within the descriptor limit.
fn read_span(
    sources: &[Source],
    starts: &[u64],
    open: &mut Option<(usize, File)>,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), CreateError> {
    // The last file starting at or before `offset`; zero-length files are stepped over below.
    let mut i = starts.partition_point(|&s| s <= offset).saturating_sub(1);
    let mut done = 0usize;
    while done < buf.len() {
        let Some(src) = sources.get(i) else {
            // The files hold fewer bytes than their sizes said: one shrank.
            return Err(CreateError::Changed(
                sources.last().map_or_else(PathBuf::new, |s| s.disk.clone()),
            ));
        };
        let at = offset + done as u64;
        let end = starts[i] + src.entry.length;
        if at >= end {
            i += 1;
            continue;
        }
        let n = (end - at).min((buf.len() - done) as u64) as usize;
        if src.entry.pad {
            buf[done..done + n].fill(0);
            done += n;
            i += 1;
            continue;
        }
        let file = match open.take() {
            Some((j, f)) if j == i => f,
            _ => File::open(&src.disk).map_err(io_err(&src.disk))?,
        };
        let file = &open.insert((i, file)).1;
        read_at(file, &mut buf[done..done + n], at - starts[i]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                CreateError::Changed(src.disk.clone())
            } else {
                CreateError::Io {
                    path: src.disk.clone(),
                    source: e,
                }
            }
        })?;
        done += n;
        i += 1;
    }
    Ok(())
}

/// Hashes every piece of the files, on `threads` threads (0 = every core).
fn hash_pieces(
    sources: &[Source],
    lengths: Lengths,
    threads: usize,
) -> Result<Vec<[u8; 20]>, CreateError> {
    let mut starts = Vec::with_capacity(sources.len());
    let mut at = 0u64;
    for s in sources {
        starts.push(at);
        at += s.entry.length;
    }
    let num_pieces = lengths.num_pieces() as usize;
    let batch = (BATCH_BYTES / u64::from(lengths.piece_length())).max(1) as usize;
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(num_pieces.div_ceil(batch))
    .max(1);

    let mut pieces = vec![[0u8; 20]; num_pieces];
    // The queue of work: each item is a batch's first piece and the slots for its hashes.
    let queue = Mutex::new(pieces.chunks_mut(batch).enumerate());
    let failed = AtomicBool::new(false);
    let worker = || -> Result<(), CreateError> {
        let mut buf = vec![0u8; lengths.piece_length() as usize];
        let mut open = None;
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            // A poisoned lock means another worker panicked; its panic is re-raised by scope.
            let next = match queue.lock() {
                Ok(mut q) => q.next(),
                Err(_) => return Ok(()),
            };
            let Some((b, slots)) = next else {
                return Ok(());
            };
            for (k, slot) in slots.iter_mut().enumerate() {
                let piece = (b * batch + k) as u32;
                let len = lengths.piece_len(piece) as usize;
                let data = &mut buf[..len];
                if let Err(e) = read_span(
                    sources,
                    &starts,
                    &mut open,
                    data,
                    lengths.piece_offset(piece),
                ) {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                *slot = Sha1::digest(data).into();
            }
        }
    };
    let results: Vec<Result<(), CreateError>> = std::thread::scope(|s| {
        let spawned: Vec<_> = (1..threads).map(|_| s.spawn(worker)).collect();
        let mut results = vec![worker()];
        for h in spawned {
            results.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        results
    });
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "shoal-create-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write(path: &Path, len: usize, seed: u64) -> Vec<u8> {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut rng = fastrand::Rng::with_seed(seed);
        let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        fs::write(path, &data).unwrap();
        data
    }

    fn opts(piece_length: u32, threads: usize) -> CreateOptions {
        CreateOptions {
            piece_length: Some(piece_length),
            creation_date: Some(1),
            threads,
            ..Default::default()
        }
    }

    /// The content `tests/helpers/make_v2_fixtures.py` gave libtorrent: file `k`.
    fn fixture_content(k: usize, length: usize) -> Vec<u8> {
        (0..length)
            .map(|i| ((i * 31 + k * 17 + i / 256) & 0xff) as u8)
            .collect()
    }

    /// The info dictionary of a libtorrent 2.0.8 fixture.
    fn lt_info(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../fuzz/corpus/metainfo_v2/seed-lt-{name}.torrent",
            env!("CARGO_MANIFEST_DIR")
        );
        Metainfo::from_bytes(&fs::read(path).unwrap())
            .unwrap()
            .raw_info
    }

    #[test]
    fn v2_and_hybrid_torrents_are_libtorrents_byte_for_byte() {
        let dir = TempDir::new("v2");
        let layouts: [(&str, &[(&str, usize)]); 3] = [
            ("single", &[("single.bin", 100_000)]),
            ("small", &[("small.bin", 20_000)]),
            (
                "multi",
                &[
                    ("multi/a.bin", 70_000),
                    ("multi/b/c.bin", 16_384),
                    ("multi/b/d.bin", 1),
                    ("multi/e.bin", 200_000),
                ],
            ),
        ];
        for (name, files) in layouts {
            for (k, (rel, len)) in files.iter().enumerate() {
                let p = dir.0.join(rel);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, fixture_content(k, *len)).unwrap();
            }
            let top = dir.0.join(files[0].0.split('/').next().unwrap());
            for (kind, version) in [("v2", MetaVersion::V2), ("hybrid", MetaVersion::Hybrid)] {
                for threads in [1, 3] {
                    let o = CreateOptions {
                        version: Some(version),
                        ..opts(32_768, threads)
                    };
                    let m = Metainfo::from_bytes(&create_torrent(&top, &o).unwrap()).unwrap();
                    assert_eq!(m.info.version, version);
                    assert_eq!(
                        m.raw_info,
                        lt_info(&format!("{kind}-{name}")),
                        "{kind}-{name}: the same info dictionary as libtorrent's"
                    );
                }
            }
        }
        // BEP 52 piece lengths only.
        let o = CreateOptions {
            version: Some(MetaVersion::V2),
            ..opts(20_000, 1)
        };
        let err = create_torrent(&dir.0.join("single.bin"), &o).unwrap_err();
        assert!(matches!(err, CreateError::V2PieceLength(20_000)), "{err}");
    }

    #[test]
    fn default_piece_length_grows_with_size() {
        assert_eq!(default_piece_length(1), 16 * 1024);
        assert_eq!(default_piece_length(1 << 30), 512 * 1024);
        assert_eq!(default_piece_length(1 << 50), 16 * 1024 * 1024);
        for total in [1u64 << 26, (1 << 33) + 7, 3_000_000_000] {
            let pl = default_piece_length(total);
            assert!(pl.is_power_of_two());
            let n = total.div_ceil(u64::from(pl));
            assert!((1024..=2048).contains(&n), "{total}: {n} pieces");
        }
    }

    #[test]
    fn hashes_a_folder_like_a_sequential_hash() {
        let dir = TempDir::new("folder");
        let root = dir.0.join("data");
        let mut all = Vec::new();
        // Sorted order: "a" < "b/c" < "b/d" (zero-length) < "e"; ".hidden" skipped.
        all.extend(write(&root.join("a"), 30_001, 1));
        all.extend(write(&root.join("b/c"), 5, 2));
        write(&root.join("b/d"), 0, 0);
        all.extend(write(&root.join("e"), 70_000, 3));
        write(&root.join(".hidden"), 10, 4);
        fs::create_dir_all(root.join("empty")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();

        for (pl, threads) in [(16_384, 1), (16_384, 3), (20_000, 2), (1 << 20, 0)] {
            let bytes = create_torrent(&root, &opts(pl, threads)).unwrap();
            let m = Metainfo::from_bytes(&bytes).unwrap();
            assert_eq!(m.info.name, "data");
            let paths: Vec<String> = m.info.files.iter().map(|f| f.path.join("/")).collect();
            assert_eq!(paths, ["data/a", "data/b/c", "data/b/d", "data/e"]);
            let expected: Vec<[u8; 20]> = all
                .chunks(pl as usize)
                .map(|c| Sha1::digest(c).into())
                .collect();
            assert_eq!(
                m.info.pieces, expected,
                "piece length {pl}, {threads} threads"
            );
            assert_eq!(m.created_by.as_deref(), Some("shoal/0.1.0"));
        }

        let with_hidden = CreateOptions {
            include_hidden: true,
            ..opts(16_384, 1)
        };
        let m = Metainfo::from_bytes(&create_torrent(&root, &with_hidden).unwrap()).unwrap();
        assert_eq!(m.info.files[0].path, ["data", ".hidden"]);
    }

    #[test]
    fn many_small_files_in_one_piece() {
        let dir = TempDir::new("many");
        let root = dir.0.join("m");
        let mut all = Vec::new();
        for i in 0..300u64 {
            // Names sort as written: zero-padded.
            all.extend(write(
                &root.join(format!("{:03}", i)),
                (i * 37 % 500) as usize,
                i,
            ));
        }
        for (pl, threads) in [(1_000, 2), (16_384, 2), (7, 1)] {
            let m =
                Metainfo::from_bytes(&create_torrent(&root, &opts(pl, threads)).unwrap()).unwrap();
            assert_eq!(m.info.files.len(), 300);
            let expected: Vec<[u8; 20]> = all
                .chunks(pl as usize)
                .map(|c| Sha1::digest(c).into())
                .collect();
            assert_eq!(m.info.pieces, expected, "piece length {pl}");
        }
    }

    #[test]
    fn single_file_with_trackers() {
        let dir = TempDir::new("single");
        let data = write(&dir.0.join("f.bin"), 40_000, 9);
        let o = CreateOptions {
            trackers: vec![vec!["http://a/".into()], vec!["http://b/".into()]],
            private: true,
            comment: Some("hi".into()),
            ..opts(32_768, 2)
        };
        let m = Metainfo::from_bytes(&create_torrent(&dir.0.join("f.bin"), &o).unwrap()).unwrap();
        assert!(!m.info.multi_file);
        assert!(m.info.private);
        assert_eq!(m.info.files[0].path, ["f.bin"]);
        assert_eq!(
            m.info.pieces[1],
            <[u8; 20]>::from(Sha1::digest(&data[32_768..]))
        );
        assert_eq!(m.announce.as_deref(), Some("http://a/"));
        assert_eq!(m.tiers().len(), 2);
        assert_eq!(m.comment.as_deref(), Some("hi"));
        assert_eq!(m.creation_date, Some(1));
    }

    #[test]
    fn refuses_empty_and_bad_inputs() {
        let dir = TempDir::new("empty");
        fs::create_dir_all(dir.0.join("d/sub")).unwrap();
        write(&dir.0.join("d/zero"), 0, 0);
        assert!(matches!(
            create_torrent(&dir.0.join("d"), &opts(16_384, 1)),
            Err(CreateError::Empty(_))
        ));
        assert!(matches!(
            create_torrent(&dir.0.join("missing"), &opts(16_384, 1)),
            Err(CreateError::Io { .. })
        ));
        write(&dir.0.join("f"), 10, 0);
        assert!(matches!(
            create_torrent(&dir.0.join("f"), &opts(0, 1)),
            Err(CreateError::Lengths(LengthsError::ZeroPieceLength))
        ));
        #[cfg(unix)]
        {
            write(&dir.0.join("g/a\\b"), 10, 0);
            let e = create_torrent(&dir.0.join("g"), &opts(16_384, 1)).unwrap_err();
            assert!(e.to_string().contains("separator"), "{e}");
        }
    }
}
