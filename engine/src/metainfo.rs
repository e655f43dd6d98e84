//! `.torrent` files (BEP 3, BEP 12): a checked parse, the info hash over the raw bytes, and a
//! canonical encoder.
//!
//! # Reading
//! [`Metainfo::from_bytes`] walks the bencode with the borrowing decoder of [`crate::bencode`]
//! rather than `bendy`'s: `bendy` refuses dictionaries whose keys are not sorted, and real `.torrent`
//! files with unsorted keys exist. Their info hash must be the SHA-1 of the info dictionary's
//! bytes *exactly as they appear in the file*, so the decoder keeps every value's byte span and
//! the hash is taken over the span of `info`. The decoder allocates nothing: lists and
//! dictionaries are byte spans walked again when read, so a hostile file can make us allocate at
//! most what it declares in `pieces` and in its file list, both bounded by its own size.
//!
//! Everything a client will act on is checked and refused with an error that names the key:
//! wrong types, malformed or overflowing integers, nesting deeper than [`MAX_DEPTH`], `pieces`
//! not a multiple of 20 or not matching the total length, piece lengths out of range, negative
//! lengths or a total that overflows, an empty torrent, duplicate or clashing file paths, and any
//! path component that could step outside the download folder (empty, `.`, `..`, containing `/`,
//! `\` or NUL). Unknown keys are skipped. `name.utf-8` and `path.utf-8` (written by some old
//! clients next to a legacy-encoded `name` / `path`) are preferred when present; a name or path
//! that is not UTF-8 is refused rather than guessed at.
//!
//! # Writing
//! [`Info::to_bencode`] and [`Metainfo::to_bytes`] write canonical bencode (sorted keys) through
//! `bendy`'s encoder; `to_bytes` splices [`Metainfo::raw_info`] in verbatim, so the info hash of
//! a parsed torrent survives a round trip.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use bendy::encoding::{Encoder, SingleItemEncoder};
use sha1::{Digest, Sha1};

use crate::bencode::{self, BencodeError, Dict, List, Value};
use crate::lengths::{Lengths, LengthsError};
use crate::merkle::{self, Hash256};
use crate::InfoHash;

/// How deeply lists and dictionaries may nest: [`bencode::MAX_DEPTH`].
pub const MAX_DEPTH: usize = bencode::MAX_DEPTH;

/// The most files a v2 `file tree` may hold: 1,048,576. Each costs about 60 bytes of input, so
/// [`MAX_METAINFO_LEN`] alone would allow about a million; the bound says so outright, and keeps
/// a tree of empty files (which add no pieces) from making us allocate without end. The tree's
/// depth is bounded by [`MAX_DEPTH`], as every bencode value is.
pub const MAX_FILES: usize = 1 << 20;

/// The largest `.torrent` file callers should read into memory: 64 MiB (over three million
/// pieces; real torrents stay under a few MiB). [`Metainfo::from_bytes`] refuses anything larger.
pub const MAX_METAINFO_LEN: usize = 64 * 1024 * 1024;

/// A parsed, checked `.torrent` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    /// The info dictionary, checked.
    pub info: Info,
    /// The SHA-1 of [`Metainfo::raw_info`]: the torrent's identity in the swarm.
    pub info_hash: InfoHash,
    /// The `announce` URL, if any.
    pub announce: Option<String>,
    /// The `announce-list` tiers (BEP 12), empty tiers dropped; empty if absent.
    pub announce_list: Vec<Vec<String>>,
    /// `creation date`, seconds since the Unix epoch.
    pub creation_date: Option<i64>,
    /// `comment`, free text (invalid UTF-8 replaced).
    pub comment: Option<String>,
    /// `created by`, the program that made the file (invalid UTF-8 replaced).
    pub created_by: Option<String>,
    /// The info dictionary's bytes exactly as in the file; the info hash is taken over them.
    pub raw_info: Vec<u8>,
    /// Web seeds (BEP 19 `url-list`): HTTP(S) or FTP URLs serving the torrent's files. At most
    /// [`MAX_WEB_SEEDS`], each at most [`MAX_WEB_SEED_URL`] bytes; anything else in the key is
    /// ignored, as the BEP allows a client to ignore the key.
    pub url_list: Vec<String>,
    /// The SHA-256 of [`Metainfo::raw_info`] for a v2 or hybrid torrent (BEP 52); `None` for
    /// v1. For a v2-only torrent [`Metainfo::info_hash`] is its first 20 bytes.
    pub info_hash_v2: Option<Hash256>,
    /// The `piece layers` of a v2 or hybrid torrent: the piece layer of every file larger than
    /// one piece, by its `pieces root`, each checked against that root. Empty when the
    /// metainfo came from a magnet (the layers are not in the info dictionary; peers send them).
    pub piece_layers: BTreeMap<Hash256, Vec<Hash256>>,
}

/// The most `url-list` entries kept: each becomes a task fetching from a server, so a file
/// cannot make us start thousands; real torrents name one to a handful of mirrors.
pub const MAX_WEB_SEEDS: usize = 16;

/// The longest `url-list` URL kept (bytes): far above real URLs, small enough to log.
pub const MAX_WEB_SEED_URL: usize = 2048;

/// The `info` dictionary: what the swarm shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The suggested name of the file (single-file) or folder (multi-file).
    pub name: String,
    /// Bytes per piece (the last piece may be shorter).
    pub piece_length: u32,
    /// The SHA-1 of every piece, in order.
    pub pieces: Vec<[u8; 20]>,
    /// The files, in torrent order; their bytes laid end to end make the torrent's data.
    pub files: Vec<FileEntry>,
    /// The `private` flag (BEP 27): peers only from the tracker.
    pub private: bool,
    /// Whether the torrent has a `files` list (a folder) rather than a single `length`.
    pub multi_file: bool,
    /// The validated piece arithmetic for this torrent.
    pub lengths: Lengths,
    /// Which BitTorrent versions the info dictionary describes.
    pub version: MetaVersion,
}

/// Which BitTorrent versions a torrent's info dictionary describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaVersion {
    /// BEP 3: SHA-1 `pieces` over the files laid end to end.
    V1,
    /// BEP 52 only (`meta version` 2, no `pieces`): a `file tree` with a SHA-256 merkle root per
    /// file, every file starting at a piece boundary. [`Info::files`] holds the pad files
    /// (BEP 47) that put them there, after every file that does not end on one, as libtorrent
    /// lays them out; [`Info::pieces`] is empty.
    V2,
    /// Both (BEP 52's hybrid): a v1 `files` list with pad files and a v2 `file tree` that agree.
    Hybrid,
}

impl MetaVersion {
    /// Whether the torrent has v1 `pieces` (v1 or hybrid).
    pub fn has_v1(self) -> bool {
        self != MetaVersion::V2
    }

    /// Whether the torrent has a v2 `file tree` (v2 or hybrid).
    pub fn has_v2(self) -> bool {
        self != MetaVersion::V1
    }
}

/// One file of a torrent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileEntry {
    /// Path components relative to the download folder, the torrent name first: `[name]` for
    /// a single-file torrent, `[name, dir.., file]` for a multi-file one. Every component is
    /// checked safe: not empty, `.` or `..`, and free of `/`, `\` and NUL.
    pub path: Vec<String>,
    /// The file's length in bytes (may be zero).
    pub length: u64,
    /// A BEP 47 pad file (`attr` holding `p`): zero bytes that align the next file to a piece,
    /// never written to disk. Its path is always `[name, ".pad", length]`, whatever the
    /// torrent said.
    pub pad: bool,
    /// The file's v2 merkle root (`pieces root`); `None` for v1 torrents, pad files and empty
    /// files.
    pub pieces_root: Option<Hash256>,
}

impl FileEntry {
    /// A file that is not a pad file and has no v2 root.
    pub fn new(path: Vec<String>, length: u64) -> FileEntry {
        FileEntry {
            path,
            length,
            pad: false,
            pieces_root: None,
        }
    }

    /// A pad file of `length` zero bytes in the torrent `name`.
    pub fn pad(name: &str, length: u64) -> FileEntry {
        FileEntry {
            path: vec![name.to_string(), ".pad".into(), length.to_string()],
            length,
            pad: true,
            pieces_root: None,
        }
    }

    /// The file's path relative to the download folder.
    pub fn relative_path(&self) -> PathBuf {
        self.path.iter().collect()
    }
}

/// Why a `.torrent` file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetainfoError {
    /// The input is larger than [`MAX_METAINFO_LEN`].
    TooLarge(usize),
    /// The bytes are not well-formed bencode.
    Bencode {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong there.
        problem: &'static str,
    },
    /// Lists and dictionaries nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A required key is absent.
    Missing(String),
    /// A key holds the wrong kind of value.
    WrongType {
        /// The key, with its place (`files[2].path`).
        key: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// A key appears twice in one dictionary.
    DuplicateKey(String),
    /// A key holds a value of the right type but out of range or malformed.
    BadValue {
        /// The key, with its place.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A name or path component could write outside the download folder.
    UnsafePath {
        /// The key, with its place.
        key: String,
        /// The offending component, escaped for display.
        component: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Two files have the same path, or a file's path is also another file's folder.
    DuplicatePath(String),
    /// The sum of the file lengths overflows 64 bits.
    TotalOverflow,
    /// The total length and piece length do not make a torrent.
    Lengths(LengthsError),
    /// The number of hashes in `pieces` does not match the total length.
    PieceCount {
        /// Pieces implied by the total length and piece length.
        expected: u32,
        /// Hashes present in `pieces`.
        found: usize,
    },
    /// `meta version` is neither 1 nor 2.
    UnsupportedVersion(i64),
    /// The `file tree` holds more than [`MAX_FILES`] files.
    TooManyFiles,
    /// A file larger than one piece has no entry in `piece layers`.
    MissingPieceLayer(String),
    /// A file's piece layer has the wrong number of hashes, or does not hash to its root.
    PieceLayerMismatch {
        /// The file's path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A hybrid torrent's v1 file list and v2 file tree describe different files.
    HybridMismatch(String),
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(
                f,
                "metainfo is {n} bytes, more than the maximum of {MAX_METAINFO_LEN}"
            ),
            Self::Bencode { offset, problem } => {
                write!(f, "malformed bencode at byte {offset}: {problem}")
            }
            Self::TooDeep => write!(f, "bencode nests deeper than {MAX_DEPTH} levels"),
            Self::Missing(key) => write!(f, "missing key \"{key}\""),
            Self::WrongType { key, expected } => {
                write!(f, "key \"{key}\" should be {expected}")
            }
            Self::DuplicateKey(key) => write!(f, "key \"{key}\" appears twice"),
            Self::BadValue { key, problem } => write!(f, "key \"{key}\": {problem}"),
            Self::UnsafePath {
                key,
                component,
                reason,
            } => write!(
                f,
                "key \"{key}\": unsafe path component \"{component}\": {reason}"
            ),
            Self::DuplicatePath(p) => write!(f, "duplicate file path \"{p}\""),
            Self::TotalOverflow => write!(f, "the sum of the file lengths overflows 64 bits"),
            Self::Lengths(e) => write!(f, "bad lengths: {e}"),
            Self::PieceCount { expected, found } => write!(
                f,
                "key \"pieces\" holds {found} hashes but the lengths need {expected}"
            ),
            Self::UnsupportedVersion(v) => {
                write!(f, "unsupported meta version {v} (only 1 and 2 are known)")
            }
            Self::TooManyFiles => write!(f, "the file tree holds more than {MAX_FILES} files"),
            Self::MissingPieceLayer(p) => {
                write!(f, "key \"piece layers\" has no layer for file \"{p}\"")
            }
            Self::PieceLayerMismatch { path, problem } => {
                write!(f, "the piece layer of file \"{path}\" {problem}")
            }
            Self::HybridMismatch(p) => {
                write!(
                    f,
                    "hybrid torrent: the v1 files and the v2 file tree disagree: {p}"
                )
            }
        }
    }
}

impl std::error::Error for MetainfoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Lengths(e) => Some(e),
            _ => None,
        }
    }
}

type Result<T, E = MetainfoError> = std::result::Result<T, E>;

impl From<BencodeError> for MetainfoError {
    fn from(e: BencodeError) -> Self {
        if e.is_too_deep() {
            MetainfoError::TooDeep
        } else {
            MetainfoError::Bencode {
                offset: e.offset,
                problem: e.problem,
            }
        }
    }
}

/// Reads the keys `names` of a dictionary in one pass (unknown keys skipped, a wanted key seen
/// twice refused). `place` prefixes key names in errors (`files[3].`).
fn fields<'a, const N: usize>(
    dict: Dict<'a>,
    names: [&str; N],
    place: &str,
) -> Result<[Option<Value<'a>>; N]> {
    let mut out = [None; N];
    for (key, value) in dict.pairs() {
        if let Some(i) = names.iter().position(|n| n.as_bytes() == key) {
            if out[i].is_some() {
                return Err(MetainfoError::DuplicateKey(format!("{place}{}", names[i])));
            }
            out[i] = Some(value);
        }
    }
    Ok(out)
}

fn wrong(key: impl Into<String>, expected: &'static str) -> MetainfoError {
    MetainfoError::WrongType {
        key: key.into(),
        expected,
    }
}

fn as_int(v: Value<'_>, key: &str) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(n),
        _ => Err(wrong(key, "an integer")),
    }
}

fn as_bytes<'a>(v: Value<'a>, key: &str) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(wrong(key, "a string")),
    }
}

fn as_utf8(v: Value<'_>, key: &str) -> Result<String> {
    let b = as_bytes(v, key)?;
    String::from_utf8(b.to_vec()).map_err(|_| MetainfoError::BadValue {
        key: key.into(),
        problem: "not valid utf-8".into(),
    })
}

fn as_text(v: Value<'_>, key: &str) -> Result<String> {
    Ok(String::from_utf8_lossy(as_bytes(v, key)?).into_owned())
}

fn as_list<'a>(v: Value<'a>, key: &str) -> Result<List<'a>> {
    match v {
        Value::List(s) => Ok(s),
        _ => Err(wrong(key, "a list")),
    }
}

fn as_dict<'a>(v: Value<'a>, key: &str) -> Result<Dict<'a>> {
    match v {
        Value::Dict(s) => Ok(s),
        _ => Err(wrong(key, "a dictionary")),
    }
}

/// Why `component` may not be a file or folder name in a torrent, if it may not.
pub fn unsafe_component_reason(component: &str) -> Option<&'static str> {
    if component.is_empty() {
        Some("empty")
    } else if component == "." || component == ".." {
        Some("refers to a folder by . or ..")
    } else if component.contains('/') || component.contains('\\') {
        Some("contains a path separator")
    } else if component.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

fn check_component(component: &str, key: &str) -> Result<()> {
    match unsafe_component_reason(component) {
        None => Ok(()),
        Some(reason) => Err(MetainfoError::UnsafePath {
            key: key.into(),
            component: component.escape_debug().to_string(),
            reason,
        }),
    }
}

/// Picks `key.utf-8` when present, else `key`.
fn utf8_variant<'a>(
    plain: Option<Value<'a>>,
    utf8: Option<Value<'a>>,
    key: &'static str,
    key_utf8: &'static str,
) -> Option<(Value<'a>, &'static str)> {
    utf8.map(|v| (v, key_utf8)).or(plain.map(|v| (v, key)))
}

fn length_of(v: Option<Value<'_>>, key: &str) -> Result<u64> {
    let n = as_int(v.ok_or_else(|| MetainfoError::Missing(key.into()))?, key)?;
    u64::try_from(n).map_err(|_| MetainfoError::BadValue {
        key: key.into(),
        problem: format!("negative length {n}"),
    })
}

fn parse_files(list: List<'_>, name: &str) -> Result<Vec<FileEntry>> {
    let mut files = Vec::new();
    for (i, item) in list.items().enumerate() {
        let place = format!("files[{i}]");
        let file = as_dict(item, &place)?;
        let [length, path, path_utf8, attr] = fields(
            file,
            ["length", "path", "path.utf-8", "attr"],
            &format!("{place}."),
        )?;
        let length = length_of(length, &format!("{place}.length"))?;
        let attr = attr
            .map(|a| as_bytes(a, &format!("{place}.attr")))
            .transpose()?;
        if attr.is_some_and(|a| a.contains(&b'p')) {
            // BEP 47: a pad file's path names nothing we will ever open; it is not read.
            files.push(FileEntry::pad(name, length));
            continue;
        }
        let (path, key) = utf8_variant(path, path_utf8, "path", "path.utf-8")
            .ok_or_else(|| MetainfoError::Missing(format!("{place}.path")))?;
        let key = format!("{place}.{key}");
        let mut components = vec![name.to_string()];
        for c in as_list(path, &key)?.items() {
            let c = as_utf8(c, &key)?;
            check_component(&c, &key)?;
            components.push(c);
        }
        if components.len() == 1 {
            return Err(MetainfoError::BadValue {
                key,
                problem: "empty path".into(),
            });
        }
        files.push(FileEntry::new(components, length));
    }
    Ok(files)
}

/// Refuses two files with the same path, and a file whose path is a folder of another. Pad
/// files are not on disk, so they clash with nothing.
fn check_unique_paths(files: &[FileEntry]) -> Result<()> {
    let real = || files.iter().filter(|f| !f.pad);
    let mut paths: HashSet<&[String]> = HashSet::with_capacity(files.len());
    for f in real() {
        if !paths.insert(&f.path) {
            return Err(MetainfoError::DuplicatePath(f.path.join("/")));
        }
    }
    for f in real() {
        for n in 1..f.path.len() {
            if paths.contains(&f.path[..n]) {
                return Err(MetainfoError::DuplicatePath(f.path[..n].join("/")));
            }
        }
    }
    Ok(())
}

/// Reads a v2 `file tree` (BEP 52) into files in tree order, each path starting with `name`.
/// `multi_file` is whether the info dictionary has a v1 `files` list; without one, a tree
/// holding a single file at its top is a single-file torrent, whose file must be `name`.
fn parse_file_tree(tree: Dict<'_>, name: &str, multi_file: bool) -> Result<(Vec<FileEntry>, bool)> {
    let mut entries = tree.pairs();
    if let (Some((key, Value::Dict(node))), None) = (entries.next(), entries.next()) {
        if !multi_file && node.get(b"").is_some() {
            let key = String::from_utf8_lossy(key);
            if key != name {
                return Err(MetainfoError::BadValue {
                    key: "file tree".into(),
                    problem: format!(
                        "its single file is named \"{}\" but the torrent \"{}\"",
                        key.escape_debug(),
                        name.escape_debug()
                    ),
                });
            }
            let mut files = Vec::new();
            tree_node(node, &mut vec![name.to_string()], &mut files)?;
            return Ok((files, false));
        }
    }
    let mut files = Vec::new();
    tree_folder(tree, &mut vec![name.to_string()], &mut files)?;
    Ok((files, true))
}

/// The `file tree` key of the node at `path`, for errors.
fn tree_key(path: &[String]) -> String {
    let mut key = String::from("file tree");
    for c in &path[1..] {
        key.push('/');
        key.push_str(&c.escape_debug().to_string());
    }
    key
}

/// Reads a folder of the file tree: every entry is a file or a folder. Recursion is bounded by
/// the decoder's [`MAX_DEPTH`].
fn tree_folder(dict: Dict<'_>, path: &mut Vec<String>, files: &mut Vec<FileEntry>) -> Result<()> {
    for (key, value) in dict.pairs() {
        let place = tree_key(path);
        let component = String::from_utf8(key.to_vec()).map_err(|_| MetainfoError::BadValue {
            key: place.clone(),
            problem: "a name is not valid utf-8".into(),
        })?;
        check_component(&component, &place)?;
        path.push(component);
        let node = as_dict(value, &tree_key(path))?;
        tree_node(node, path, files)?;
        path.pop();
    }
    Ok(())
}

/// Reads one node: a file (a dictionary holding only the key `""`) or a folder.
fn tree_node(node: Dict<'_>, path: &mut Vec<String>, files: &mut Vec<FileEntry>) -> Result<()> {
    let key = tree_key(path);
    let Some(leaf) = node.get(b"") else {
        return tree_folder(node, path, files);
    };
    if node.pairs().count() != 1 {
        return Err(MetainfoError::BadValue {
            key,
            problem: "is both a file and a folder".into(),
        });
    }
    if files.len() >= MAX_FILES {
        return Err(MetainfoError::TooManyFiles);
    }
    let leaf = as_dict(leaf, &key)?;
    let [length, root, attr] = fields(leaf, ["length", "pieces root", "attr"], &format!("{key}."))?;
    let length = length_of(length, &format!("{key}.length"))?;
    if let Some(attr) = attr {
        let attr = as_bytes(attr, &format!("{key}.attr"))?;
        let problem = if attr.contains(&b'p') {
            Some("a pad file in a file tree")
        } else if attr.contains(&b'l') {
            Some("a symbolic link (not supported)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(MetainfoError::BadValue {
                key: format!("{key}.attr"),
                problem: problem.into(),
            });
        }
    }
    let pieces_root = if length == 0 {
        None
    } else {
        let rkey = format!("{key}.pieces root");
        let root = as_bytes(
            root.ok_or_else(|| MetainfoError::Missing(rkey.clone()))?,
            &rkey,
        )?;
        let root: Hash256 = root.try_into().map_err(|_| MetainfoError::BadValue {
            key: rkey.clone(),
            problem: format!("is {} bytes, not 32", root.len()),
        })?;
        if root == [0; 32] {
            return Err(MetainfoError::BadValue {
                key: rkey,
                problem: "is all zeros".into(),
            });
        }
        Some(root)
    };
    files.push(FileEntry {
        path: path.clone(),
        length,
        pad: false,
        pieces_root,
    });
    Ok(())
}

/// The v2 files laid out as libtorrent lays them: a pad file after every file that does not
/// end on a piece boundary (the last one too), so every file starts on one.
fn pad_v2_files(files: Vec<FileEntry>, name: &str, piece_length: u64) -> Result<Vec<FileEntry>> {
    let mut out = Vec::with_capacity(files.len() * 2);
    let mut total = 0u64;
    for f in files {
        total = total
            .checked_add(f.length)
            .ok_or(MetainfoError::TotalOverflow)?;
        out.push(f);
        let rem = total % piece_length;
        if rem != 0 {
            let pad = piece_length - rem;
            total = total.checked_add(pad).ok_or(MetainfoError::TotalOverflow)?;
            out.push(FileEntry::pad(name, pad));
        }
    }
    Ok(out)
}

/// Checks that a hybrid's v1 files (`v1`, with pad files) are the v2 files (`v2`) in the same
/// order, each non-empty one starting on a piece boundary; gives the v1 list with each file's
/// v2 root.
fn merge_hybrid(
    mut v1: Vec<FileEntry>,
    v2: Vec<FileEntry>,
    piece_length: u64,
) -> Result<Vec<FileEntry>> {
    let mut v2 = v2.into_iter();
    let mut offset = 0u64;
    for f in &mut v1 {
        if f.pad {
            if f.length >= piece_length {
                return Err(MetainfoError::HybridMismatch(format!(
                    "a pad file of {} bytes is not shorter than a piece",
                    f.length
                )));
            }
        } else {
            let Some(g) = v2.next() else {
                return Err(MetainfoError::HybridMismatch(format!(
                    "\"{}\" is not in the file tree",
                    f.path.join("/")
                )));
            };
            if g.path != f.path || g.length != f.length {
                return Err(MetainfoError::HybridMismatch(format!(
                    "\"{}\" ({} bytes) in the files, \"{}\" ({} bytes) in the tree",
                    f.path.join("/"),
                    f.length,
                    g.path.join("/"),
                    g.length
                )));
            }
            if f.length > 0 && offset % piece_length != 0 {
                return Err(MetainfoError::HybridMismatch(format!(
                    "\"{}\" does not start on a piece boundary",
                    f.path.join("/")
                )));
            }
            f.pieces_root = g.pieces_root;
        }
        offset = offset
            .checked_add(f.length)
            .ok_or(MetainfoError::TotalOverflow)?;
    }
    if let Some(g) = v2.next() {
        return Err(MetainfoError::HybridMismatch(format!(
            "\"{}\" is not in the files",
            g.path.join("/")
        )));
    }
    Ok(v1)
}

fn parse_info(dict: Dict<'_>) -> Result<Info> {
    let [name, name_utf8, piece_length, pieces, length, files, private, meta_version, file_tree] =
        fields(
            dict,
            [
                "name",
                "name.utf-8",
                "piece length",
                "pieces",
                "length",
                "files",
                "private",
                "meta version",
                "file tree",
            ],
            "",
        )?;
    let (name, name_key) = utf8_variant(name, name_utf8, "name", "name.utf-8")
        .ok_or_else(|| MetainfoError::Missing("name".into()))?;
    let name = as_utf8(name, name_key)?;
    check_component(&name, name_key)?;

    let v2 = match meta_version
        .map(|v| as_int(v, "meta version"))
        .transpose()?
    {
        None | Some(1) => false,
        Some(2) => true,
        Some(v) => return Err(MetainfoError::UnsupportedVersion(v)),
    };
    if !v2 && file_tree.is_some() {
        return Err(MetainfoError::BadValue {
            key: "file tree".into(),
            problem: "present without \"meta version\" 2".into(),
        });
    }

    let piece_length = as_int(
        piece_length.ok_or_else(|| MetainfoError::Missing("piece length".into()))?,
        "piece length",
    )?;
    if piece_length <= 0 || piece_length > i64::from(crate::lengths::MAX_PIECE_LENGTH) {
        return Err(MetainfoError::BadValue {
            key: "piece length".into(),
            problem: format!(
                "{piece_length} is not between 1 and {}",
                crate::lengths::MAX_PIECE_LENGTH
            ),
        });
    }
    if v2 && (piece_length < merkle::BLOCK_LEN as i64 || piece_length.count_ones() != 1) {
        return Err(MetainfoError::BadValue {
            key: "piece length".into(),
            problem: format!("{piece_length} is not a power of two of at least 16 KiB (BEP 52)"),
        });
    }
    let pl = piece_length as u64;

    let tree = if v2 {
        let tree = as_dict(
            file_tree.ok_or_else(|| MetainfoError::Missing("file tree".into()))?,
            "file tree",
        )?;
        Some(parse_file_tree(tree, &name, files.is_some())?)
    } else {
        None
    };
    let has_v1 = !v2 || pieces.is_some() || length.is_some() || files.is_some();

    let pieces = if has_v1 {
        let pieces = as_bytes(
            pieces.ok_or_else(|| MetainfoError::Missing("pieces".into()))?,
            "pieces",
        )?;
        if pieces.len() % 20 != 0 {
            return Err(MetainfoError::BadValue {
                key: "pieces".into(),
                problem: format!("length {} is not a multiple of 20", pieces.len()),
            });
        }
        pieces
    } else {
        &[][..]
    };

    let (files, multi_file, version) = if has_v1 {
        let (v1_files, multi_file) = match (length, files) {
            (Some(_), Some(_)) => {
                return Err(MetainfoError::BadValue {
                    key: "info".into(),
                    problem: "has both \"length\" and \"files\"".into(),
                })
            }
            (None, None) => return Err(MetainfoError::Missing("length\" or \"files".into())),
            (Some(length), None) => {
                let length = length_of(Some(length), "length")?;
                (vec![FileEntry::new(vec![name.clone()], length)], false)
            }
            (None, Some(files)) => (parse_files(as_list(files, "files")?, &name)?, true),
        };
        match tree {
            None => (v1_files, multi_file, MetaVersion::V1),
            Some((v2_files, v2_multi)) => {
                if v2_multi != multi_file {
                    return Err(MetainfoError::HybridMismatch(
                        "one is a single file and the other a folder".into(),
                    ));
                }
                let files = merge_hybrid(v1_files, v2_files, pl)?;
                (files, multi_file, MetaVersion::Hybrid)
            }
        }
    } else {
        let (v2_files, multi_file) = tree.expect("v2 without v1 has a tree");
        (
            pad_v2_files(v2_files, &name, pl)?,
            multi_file,
            MetaVersion::V2,
        )
    };
    check_unique_paths(&files)?;

    let total = files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.length))
        .ok_or(MetainfoError::TotalOverflow)?;
    let lengths = Lengths::new(total, pl).map_err(MetainfoError::Lengths)?;
    let found = pieces.len() / 20;
    if version.has_v1() && found != lengths.num_pieces() as usize {
        return Err(MetainfoError::PieceCount {
            expected: lengths.num_pieces(),
            found,
        });
    }
    let pieces = pieces
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect();

    let private = match private {
        None => false,
        Some(v) => as_int(v, "private")? == 1,
    };

    Ok(Info {
        name,
        piece_length: lengths.piece_length(),
        pieces,
        files,
        private,
        multi_file,
        lengths,
        version,
    })
}

/// Reads `piece layers` and checks the layer of every file of `info` larger than a piece
/// against its root: present, one hash per piece of the file, hashing to the root. Layers of
/// roots that no file has are dropped.
fn parse_piece_layers(
    layers: Option<Value<'_>>,
    info: &Info,
) -> Result<BTreeMap<Hash256, Vec<Hash256>>> {
    let pl = u64::from(info.piece_length);
    let mut wanted: BTreeMap<Hash256, &FileEntry> = BTreeMap::new();
    for f in &info.files {
        if let Some(root) = f.pieces_root.filter(|_| f.length > pl) {
            // Two files with one root share one layer, which fits only one length.
            if let Some(other) = wanted.insert(root, f).filter(|o| o.length != f.length) {
                return Err(MetainfoError::PieceLayerMismatch {
                    path: f.path.join("/"),
                    problem: format!(
                        "is shared with \"{}\", whose length differs",
                        other.path.join("/")
                    ),
                });
            }
        }
    }
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let dict = as_dict(
        layers.ok_or_else(|| MetainfoError::Missing("piece layers".into()))?,
        "piece layers",
    )?;
    for (key, value) in dict.pairs() {
        let Ok(root) = Hash256::try_from(key) else {
            return Err(MetainfoError::BadValue {
                key: "piece layers".into(),
                problem: format!("a key is {} bytes, not 32", key.len()),
            });
        };
        let bytes = as_bytes(value, "piece layers")?;
        let Some(file) = wanted.get(&root) else {
            continue;
        };
        let path = file.path.join("/");
        let expected = file.length.div_ceil(pl);
        if bytes.len() % 32 != 0 || (bytes.len() / 32) as u64 != expected {
            return Err(MetainfoError::PieceLayerMismatch {
                path,
                problem: format!(
                    "is {} bytes, not {expected} hashes of 32 bytes",
                    bytes.len()
                ),
            });
        }
        let layer: Vec<Hash256> = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("chunks of 32"))
            .collect();
        if merkle::root_from_layer(&layer, pl) != root {
            return Err(MetainfoError::PieceLayerMismatch {
                path,
                problem: "does not hash to its pieces root".into(),
            });
        }
        out.insert(root, layer);
    }
    if let Some(f) = wanted
        .iter()
        .find(|(r, _)| !out.contains_key(*r))
        .map(|(_, f)| f)
    {
        return Err(MetainfoError::MissingPieceLayer(f.path.join("/")));
    }
    Ok(out)
}

/// The info hash a torrent is known by in the swarm, and its v2 hash if any: SHA-1 of the
/// info dictionary for v1 and hybrid torrents, the SHA-256 truncated to 20 bytes for v2-only.
fn info_hashes(raw_info: &[u8], version: MetaVersion) -> (InfoHash, Option<Hash256>) {
    let v2 = version.has_v2().then(|| merkle::sha256(raw_info));
    let v1 = match (version.has_v1(), v2) {
        (false, Some(h)) => InfoHash(h[..20].try_into().expect("20 of 32 bytes")),
        _ => InfoHash(Sha1::digest(raw_info).into()),
    };
    (v1, v2)
}

fn parse_tiers(list: List<'_>) -> Result<Vec<Vec<String>>> {
    let mut tiers = Vec::new();
    for (i, tier) in list.items().enumerate() {
        let key = format!("announce-list[{i}]");
        let mut urls = Vec::new();
        for url in as_list(tier, &key)?.items() {
            let url = as_utf8(url, &key)?;
            if !url.is_empty() {
                urls.push(url);
            }
        }
        if !urls.is_empty() {
            tiers.push(urls);
        }
    }
    Ok(tiers)
}

/// The `url-list` key (BEP 19): one URL or a list of them. The key may be ignored by a client,
/// so nothing in it is an error: entries that are not UTF-8 strings, empty, too long
/// ([`MAX_WEB_SEED_URL`]), repeated or past [`MAX_WEB_SEEDS`] are dropped.
fn parse_url_list(v: Value<'_>) -> Vec<String> {
    let keep = |v: Value<'_>| match v {
        Value::Bytes(b) if !b.is_empty() && b.len() <= MAX_WEB_SEED_URL => {
            std::str::from_utf8(b).ok().map(str::to_string)
        }
        _ => None,
    };
    let mut urls: Vec<String> = Vec::new();
    match v {
        Value::List(list) => {
            for url in list.items().filter_map(keep) {
                if urls.len() == MAX_WEB_SEEDS {
                    break;
                }
                if !urls.contains(&url) {
                    urls.push(url);
                }
            }
        }
        other => urls.extend(keep(other)),
    }
    urls
}

impl Metainfo {
    /// Parses and checks a `.torrent` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo> {
        if bytes.len() > MAX_METAINFO_LEN {
            return Err(MetainfoError::TooLarge(bytes.len()));
        }
        let root = match bencode::decode(bytes)? {
            Value::Dict(dict) => dict,
            _ => return Err(wrong("(top level)", "a dictionary")),
        };
        let [info, announce, announce_list, creation_date, comment, created_by, piece_layers, url_list] =
            fields(
                root,
                [
                    "info",
                    "announce",
                    "announce-list",
                    "creation date",
                    "comment",
                    "created by",
                    "piece layers",
                    "url-list",
                ],
                "",
            )?;
        let info_dict = as_dict(
            info.ok_or_else(|| MetainfoError::Missing("info".into()))?,
            "info",
        )?;
        let raw_info = info_dict.raw();
        let info = parse_info(info_dict)?;
        let piece_layers = if info.version.has_v2() {
            parse_piece_layers(piece_layers, &info)?
        } else {
            BTreeMap::new()
        };
        let (info_hash, info_hash_v2) = info_hashes(raw_info, info.version);
        let announce = announce
            .map(|v| as_utf8(v, "announce"))
            .transpose()?
            .filter(|s| !s.is_empty());
        let announce_list = match announce_list {
            None => Vec::new(),
            Some(v) => parse_tiers(as_list(v, "announce-list")?)?,
        };
        Ok(Metainfo {
            info,
            info_hash,
            announce,
            announce_list,
            creation_date: creation_date
                .map(|v| as_int(v, "creation date"))
                .transpose()?,
            comment: comment.map(|v| as_text(v, "comment")).transpose()?,
            created_by: created_by.map(|v| as_text(v, "created by")).transpose()?,
            raw_info: raw_info.to_vec(),
            url_list: url_list.map(parse_url_list).unwrap_or_default(),
            info_hash_v2,
            piece_layers,
        })
    }

    /// Builds the metainfo of an info dictionary received on its own (BEP 9 metadata exchange),
    /// kept verbatim so the info hash is the SHA-1 of `raw_info`, with trackers in `tiers`
    /// (`announce` is the first URL; `announce-list` is written when there is more than one).
    /// [`Metainfo::to_bytes`] then gives a `.torrent` file to keep.
    pub fn from_info_bytes(raw_info: &[u8], tiers: Vec<Vec<String>>) -> Result<Metainfo> {
        if raw_info.len() > MAX_METAINFO_LEN {
            return Err(MetainfoError::TooLarge(raw_info.len()));
        }
        let info_dict = match bencode::decode(raw_info)? {
            Value::Dict(dict) => dict,
            _ => return Err(wrong("info", "a dictionary")),
        };
        let info = parse_info(info_dict)?;
        let (info_hash, info_hash_v2) = info_hashes(raw_info, info.version);
        let tiers: Vec<Vec<String>> = tiers.into_iter().filter(|t| !t.is_empty()).collect();
        let announce = tiers.first().and_then(|t| t.first()).cloned();
        let url_count: usize = tiers.iter().map(Vec::len).sum();
        Ok(Metainfo {
            info,
            info_hash,
            announce,
            announce_list: if url_count > 1 { tiers } else { Vec::new() },
            creation_date: None,
            comment: None,
            created_by: None,
            raw_info: raw_info.to_vec(),
            url_list: Vec::new(),
            info_hash_v2,
            piece_layers: BTreeMap::new(),
        })
    }

    /// Builds the metainfo of `info` with trackers in `tiers` (one or more URLs per tier):
    /// `announce` is the first URL, and `announce-list` is written when there is more than one.
    /// A v2 or hybrid torrent's piece layers are given to [`Metainfo::with_piece_layers`].
    pub fn new(
        info: Info,
        tiers: Vec<Vec<String>>,
        comment: Option<String>,
        created_by: Option<String>,
        creation_date: Option<i64>,
    ) -> Metainfo {
        let raw_info = info.to_bencode();
        let tiers: Vec<Vec<String>> = tiers.into_iter().filter(|t| !t.is_empty()).collect();
        let announce = tiers.first().and_then(|t| t.first()).cloned();
        let url_count: usize = tiers.iter().map(Vec::len).sum();
        let announce_list = if url_count > 1 { tiers } else { Vec::new() };
        let (info_hash, info_hash_v2) = info_hashes(&raw_info, info.version);
        Metainfo {
            info_hash,
            info_hash_v2,
            piece_layers: BTreeMap::new(),
            info,
            announce,
            announce_list,
            creation_date,
            comment,
            created_by,
            raw_info,
            url_list: Vec::new(),
        }
    }

    /// Sets the piece layers of a v2 or hybrid torrent (by `pieces root`), as
    /// [`crate::create`] computes them.
    pub fn with_piece_layers(mut self, layers: BTreeMap<Hash256, Vec<Hash256>>) -> Metainfo {
        self.piece_layers = layers;
        self
    }

    /// What every piece must hash to: SHA-1 for v1 and hybrid torrents (a hybrid runs on its v1
    /// half), merkle subtree roots for v2-only ones. `None` for a v2 torrent whose piece layers
    /// are missing (from a magnet: peers would have to send them).
    pub fn piece_hashes(&self) -> Option<Vec<merkle::PieceHash>> {
        let info = &self.info;
        if info.version.has_v1() {
            return Some(
                info.pieces
                    .iter()
                    .map(|h| merkle::PieceHash::Sha1(*h))
                    .collect(),
            );
        }
        let pl = u64::from(info.piece_length);
        let n = info.lengths.num_pieces() as usize;
        // A piece of no file (never, with libtorrent's layout) fails every check.
        let mut out = vec![merkle::PieceHash::Sha1([0; 20]); n];
        let mut offset = 0u64;
        for f in &info.files {
            if let (false, Some(root)) = (f.pad, f.pieces_root) {
                let leaves = merkle::leaves_for(f.length, pl) as u32;
                let layer = if f.length > pl {
                    Some(self.piece_layers.get(&root)?)
                } else {
                    None
                };
                for j in 0..f.length.div_ceil(pl) {
                    let piece = (offset / pl + j) as usize;
                    let hash = match layer {
                        Some(l) => *l.get(j as usize)?,
                        None => root,
                    };
                    if let Some(slot) = out.get_mut(piece) {
                        *slot = merkle::PieceHash::Merkle {
                            hash,
                            data_len: (f.length - j * pl).min(pl) as u32,
                            leaves,
                        };
                    }
                }
            }
            offset += f.length;
        }
        Some(out)
    }

    /// The v2 info hash truncated to 20 bytes, as a v2 handshake and tracker carry it.
    pub fn info_hash_v2_truncated(&self) -> Option<InfoHash> {
        self.info_hash_v2
            .map(|h| InfoHash(h[..20].try_into().expect("20 of 32 bytes")))
    }

    /// The tracker tiers to announce to: `announce-list` if it has any URL, else `announce`
    /// alone, else none.
    pub fn tiers(&self) -> Vec<Vec<String>> {
        if !self.announce_list.is_empty() {
            self.announce_list.clone()
        } else if let Some(a) = &self.announce {
            vec![vec![a.clone()]]
        } else {
            Vec::new()
        }
    }

    /// Total bytes over all files.
    pub fn total_length(&self) -> u64 {
        self.info.lengths.total_length()
    }

    /// The `.torrent` file: canonical bencode with [`Metainfo::raw_info`] spliced in verbatim.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut enc = Encoder::new();
        // Every key sorts before "info", so the dictionary is written without it and "info"
        // appended before the closing `e`: the raw bytes keep the info hash unchanged.
        let written = enc.emit_dict(|mut d| {
            if let Some(a) = &self.announce {
                d.emit_pair(b"announce", a.as_str())?;
            }
            if !self.announce_list.is_empty() {
                d.emit_pair_with(b"announce-list", |e| {
                    e.emit_list(|e| {
                        for tier in &self.announce_list {
                            e.emit_list(|e| {
                                for url in tier {
                                    e.emit_str(url)?;
                                }
                                Ok(())
                            })?;
                        }
                        Ok(())
                    })
                })?;
            }
            if let Some(c) = &self.comment {
                d.emit_pair(b"comment", c.as_str())?;
            }
            if let Some(c) = &self.created_by {
                d.emit_pair(b"created by", c.as_str())?;
            }
            if let Some(t) = self.creation_date {
                d.emit_pair(b"creation date", t)?;
            }
            Ok(())
        });
        let mut out = written
            .and_then(|()| enc.get_output())
            .expect("keys are emitted in sorted order, so encoding cannot fail");
        out.pop(); // the closing `e`
        out.extend_from_slice(b"4:info");
        out.extend_from_slice(&self.raw_info);
        if !self.piece_layers.is_empty() {
            // "piece layers" sorts after "info"; its keys are the roots, sorted by the map.
            out.extend_from_slice(b"12:piece layersd");
            for (root, layer) in &self.piece_layers {
                out.extend_from_slice(b"32:");
                out.extend_from_slice(root);
                out.extend_from_slice(format!("{}:", layer.len() * 32).as_bytes());
                out.extend_from_slice(layer.as_flattened());
            }
            out.push(b'e');
        }
        // "url-list" sorts after "info" and "piece layers": written here to keep the keys in order.
        if !self.url_list.is_empty() {
            out.extend_from_slice(b"8:url-listl");
            for url in &self.url_list {
                out.extend_from_slice(format!("{}:", url.len()).as_bytes());
                out.extend_from_slice(url.as_bytes());
            }
            out.push(b'e');
        }
        out.push(b'e');
        out
    }
}

impl Info {
    /// The canonical bencode of this info dictionary (sorted keys; `private` only when set).
    /// A v2 or hybrid torrent gets its `file tree` (files in [`Info::files`] order, which must
    /// be sorted by path as a tree is) and `meta version`; a hybrid's pad files are written
    /// as BEP 47 has them (`attr` `p`, path `.pad/<length>`).
    pub fn to_bencode(&self) -> Vec<u8> {
        let mut enc = Encoder::new();
        let written = enc.emit_dict(|mut d| {
            if self.version.has_v2() {
                let real: Vec<&FileEntry> = self.files.iter().filter(|f| !f.pad).collect();
                let depth = usize::from(self.multi_file);
                d.emit_pair_with(b"file tree", |e| emit_tree(e, &real, depth))?;
            }
            if self.version.has_v1() {
                if self.multi_file {
                    d.emit_pair_with(b"files", |e| {
                        e.emit_list(|e| {
                            for f in &self.files {
                                e.emit_dict(|mut d| {
                                    if f.pad {
                                        d.emit_pair(b"attr", "p")?;
                                    }
                                    d.emit_pair(b"length", f.length)?;
                                    d.emit_pair_with(b"path", |e| emit_path(e, &f.path[1..]))
                                })?;
                            }
                            Ok(())
                        })
                    })?;
                } else {
                    let length = self.files.first().map_or(0, |f| f.length);
                    d.emit_pair(b"length", length)?;
                }
            }
            if self.version.has_v2() {
                d.emit_pair(b"meta version", 2)?;
            }
            d.emit_pair(b"name", self.name.as_str())?;
            d.emit_pair(b"piece length", self.piece_length)?;
            if self.version.has_v1() {
                d.emit_pair_with(b"pieces", |e| e.emit_bytes(self.pieces.as_flattened()))?;
            }
            if self.private {
                d.emit_pair(b"private", 1)?;
            }
            Ok(())
        });
        written
            .and_then(|()| enc.get_output())
            .expect("keys are emitted in sorted order, so encoding cannot fail")
    }
}

/// Writes the folder of `files` whose paths agree up to `depth` (a single-file torrent's tree
/// starts at depth 0, its name; a folder's at 1).
fn emit_tree(
    e: SingleItemEncoder<'_>,
    files: &[&FileEntry],
    depth: usize,
) -> Result<(), bendy::encoding::Error> {
    e.emit_unsorted_dict(|d| {
        let mut i = 0;
        while i < files.len() {
            let key = files[i].path.get(depth).map_or("", String::as_str);
            let mut j = i + 1;
            while j < files.len() && files[j].path.get(depth).map(String::as_str) == Some(key) {
                j += 1;
            }
            let group = &files[i..j];
            if group.len() == 1 && group[0].path.len() == depth + 1 {
                let f = group[0];
                d.emit_pair_with(key.as_bytes(), |e| {
                    e.emit_dict(|mut d| {
                        d.emit_pair_with(b"", |e| {
                            e.emit_dict(|mut d| {
                                d.emit_pair(b"length", f.length)?;
                                if let Some(root) = &f.pieces_root {
                                    d.emit_pair_with(b"pieces root", |e| e.emit_bytes(root))?;
                                }
                                Ok(())
                            })
                        })
                    })
                })?;
            } else {
                d.emit_pair_with(key.as_bytes(), |e| emit_tree(e, group, depth + 1))?;
            }
            i = j;
        }
        Ok(())
    })
}

fn emit_path(
    e: SingleItemEncoder<'_>,
    components: &[String],
) -> Result<(), bendy::encoding::Error> {
    e.emit_list(|e| {
        for c in components {
            e.emit_str(c)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hashes(n: usize) -> Vec<u8> {
        (0..n * 20).map(|i| i as u8).collect()
    }

    fn single(extra_info: &str, length: &str, piece_length: &str, pieces: usize) -> Vec<u8> {
        let p = hashes(pieces);
        let mut v = format!(
            "d8:announce9:http://t/4:infod{extra_info}6:lengthi{length}e4:name3:abc12:piece lengthi{piece_length}e6:pieces{}:",
            p.len()
        )
        .into_bytes();
        v.extend_from_slice(&p);
        v.extend_from_slice(b"ee");
        v
    }

    #[test]
    fn parses_single_file() {
        let bytes = single("", "40000", "16384", 3);
        let m = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(m.info.name, "abc");
        assert_eq!(m.total_length(), 40_000);
        assert_eq!(m.info.pieces.len(), 3);
        assert!(!m.info.multi_file);
        assert_eq!(m.info.files[0].path, vec!["abc".to_string()]);
        assert_eq!(m.tiers(), vec![vec!["http://t/".to_string()]]);
        let start = bytes.windows(6).position(|w| w == b"4:info").unwrap() + 6;
        let raw = &bytes[start..bytes.len() - 1];
        assert_eq!(m.raw_info, raw);
        assert_eq!(m.info_hash.0, <[u8; 20]>::from(Sha1::digest(raw)));
        assert_eq!(m.to_bytes(), bytes);
    }

    #[test]
    fn hashes_unsorted_info_verbatim() {
        // Keys out of order, and an unknown key: kept in the hash, not refused.
        let mut bytes =
            b"d4:infod4:name1:x6:lengthi5e1:zi1e12:piece lengthi16384e6:pieces20:".to_vec();
        bytes.extend_from_slice(&[7; 20]);
        bytes.extend_from_slice(b"ee");
        let m = Metainfo::from_bytes(&bytes).unwrap();
        let raw = &bytes[7..bytes.len() - 1];
        assert_eq!(m.raw_info, raw);
        assert_eq!(m.info_hash.0, <[u8; 20]>::from(Sha1::digest(raw)));
        // Re-encoding the info canonically gives a different hash; to_bytes keeps the original.
        assert_ne!(m.info.to_bencode(), raw);
        assert_eq!(
            Metainfo::from_bytes(&m.to_bytes()).unwrap().info_hash,
            m.info_hash
        );
    }

    #[test]
    fn refuses_bad_lengths() {
        let e = |b: Vec<u8>| Metainfo::from_bytes(&b).unwrap_err().to_string();
        assert!(e(single("", "-1", "16384", 1)).contains("negative length"));
        assert!(e(single("", "40000", "0", 3)).contains("piece length"));
        assert!(e(single("", "40000", "-5", 3)).contains("piece length"));
        assert!(e(single("", "40000", "1099511627776", 3)).contains("piece length"));
        assert!(e(single("", "40000", "16384", 2)).contains("pieces"));
        assert!(e(single("", "0", "16384", 0)).contains("no data"));
        assert!(e(single("", "99999999999999999999", "16384", 1)).contains("range"));
        assert!(e(single("", "40000", "16384x", 3)).contains("malformed"));
    }

    #[test]
    fn refuses_malformed_bencode() {
        for bad in [
            &b""[..],
            b"d",
            b"de1",
            b"i01e",
            b"i-0e",
            b"ie",
            b"d1:ae",
            b"di1e1:ae",
            b"5:abc",
            b"99999999999999999999999:",
            b"x",
            b"l",
        ] {
            assert!(Metainfo::from_bytes(bad).is_err(), "{bad:?}");
        }
        let deep = [vec![b'l'; 100_000], vec![b'e'; 100_000]].concat();
        assert_eq!(Metainfo::from_bytes(&deep), Err(MetainfoError::TooDeep));
        assert!(
            matches!(
                Metainfo::from_bytes(b"le"),
                Err(MetainfoError::WrongType { .. })
            ),
            "a list at the top"
        );
    }

    fn multi(paths: &[&str]) -> Vec<u8> {
        let mut files = String::new();
        for p in paths {
            files.push_str("d6:lengthi10e4:pathl");
            for c in p.split('|') {
                files.push_str(&format!("{}:{c}", c.len()));
            }
            files.push_str("ee");
        }
        let total = 10 * paths.len();
        let n = total.div_ceil(16384);
        let mut v = format!(
            "d4:infod5:filesl{files}e4:name1:n12:piece lengthi16384e6:pieces{}:",
            n * 20
        )
        .into_bytes();
        v.extend_from_slice(&hashes(n));
        v.extend_from_slice(b"ee");
        v
    }

    #[test]
    fn parses_multi_file_and_refuses_unsafe_paths() {
        let m = Metainfo::from_bytes(&multi(&["a|b", "c"])).unwrap();
        assert!(m.info.multi_file);
        assert_eq!(m.info.files[0].relative_path(), PathBuf::from("n/a/b"));
        assert_eq!(m.total_length(), 20);
        for bad in [
            &["..|x"][..],
            &["a|.|b"],
            &["a||b"],
            &["/etc"],
            &["a\\b"],
            &["a\0b"],
            &["a", "a"],
            &["a", "a|b"],
        ] {
            let err = Metainfo::from_bytes(&multi(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    MetainfoError::UnsafePath { .. } | MetainfoError::DuplicatePath(_)
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn refuses_overflowing_total() {
        let max = i64::MAX;
        let files = format!(
            "d6:lengthi{max}e4:pathl1:aeed6:lengthi{max}e4:pathl1:beed6:lengthi{max}e4:pathl1:cee"
        );
        let bytes = format!("d4:infod5:filesl{files}e4:name1:n12:piece lengthi16384e6:pieces0:ee");
        assert_eq!(
            Metainfo::from_bytes(bytes.as_bytes()),
            Err(MetainfoError::TotalOverflow)
        );
    }

    #[test]
    fn prefers_utf8_names_and_reads_tiers() {
        let mut v = b"d13:announce-listll3:u:1elel3:u:23:u:3ee4:infod6:lengthi1e4:name1:?10:name.utf-82:\xc3\xa912:piece lengthi16384e6:pieces20:".to_vec();
        v.extend_from_slice(&[0; 20]);
        v.extend_from_slice(b"ee");
        let m = Metainfo::from_bytes(&v).unwrap();
        assert_eq!(m.info.name, "é");
        assert_eq!(
            m.tiers(),
            vec![vec!["u:1".to_string()], vec!["u:2".into(), "u:3".into()]]
        );
    }

    #[test]
    fn reads_url_list_as_string_or_list_and_ignores_junk() {
        let with = |url_list: &[u8]| {
            let mut v = single("", "1", "16384", 1);
            v.pop();
            v.extend_from_slice(url_list);
            v.push(b'e');
            Metainfo::from_bytes(&v).unwrap()
        };
        assert_eq!(with(b"8:url-list9:http://a/").url_list, ["http://a/"]);
        let m = with(b"8:url-listl9:http://a/i3e0:ld1:ai1eee9:http://a/9:http://b/e");
        assert_eq!(m.url_list, ["http://a/", "http://b/"]);
        // Written back after `info`, in key order, and read again the same.
        assert_eq!(Metainfo::from_bytes(&m.to_bytes()).unwrap(), m);
        assert!(with(b"8:url-listi7e").url_list.is_empty());
        assert!(with(b"8:url-list2:\xff\xfe").url_list.is_empty());
        let many: String = (0..100).map(|i| format!("10:http://{i:02}/")).collect();
        assert_eq!(
            with(format!("8:url-listl{many}e").as_bytes())
                .url_list
                .len(),
            MAX_WEB_SEEDS
        );
        let long = "x".repeat(MAX_WEB_SEED_URL + 1);
        assert!(with(format!("8:url-list{}:{long}", long.len()).as_bytes())
            .url_list
            .is_empty());
    }

    #[test]
    fn refuses_duplicate_keys_and_both_layouts() {
        let e = Metainfo::from_bytes(&single("4:name1:x", "1", "16384", 1)).unwrap_err();
        assert_eq!(e, MetainfoError::DuplicateKey("name".into()));
        let e = Metainfo::from_bytes(&single("5:filesle", "1", "16384", 1)).unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
    }

    /// The content `tests/helpers/make_v2_fixtures.py` gave libtorrent: file `k` of a torrent.
    fn fixture_content(k: usize, length: usize) -> Vec<u8> {
        (0..length)
            .map(|i| ((i * 31 + k * 17 + i / 256) & 0xff) as u8)
            .collect()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../fuzz/corpus/metainfo_v2/seed-{name}.torrent",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Every fixture libtorrent 2.0.8 made, with the hashes and sizes libtorrent gives it.
    const LT_FIXTURES: &[(&str, &str, &str, u64)] = &[
        (
            "lt-hybrid-multi",
            "4eb4eec016a4758d88176c26787a76d4ce0dae46",
            "0baee78725a11fc7c21b68d742f3d91ed426f13c0ece3ead866446bc80676332",
            393_216,
        ),
        (
            "lt-hybrid-single",
            "333fde24a8c5b952d184b1c0e80a96b6ed5762aa",
            "583b488fac834770dd83d8a1605143a7c154ee03bc7799df5af84ee7ce9773e2",
            100_000,
        ),
        (
            "lt-hybrid-small",
            "ae986ea722d6922664bda1b6fe380435ee60320a",
            "866d31fa0ef6d969be30dbcac571ed94547f696df06025a9957a642c354cf362",
            20_000,
        ),
        (
            "lt-v2-multi",
            "",
            "6411ae4bb9dbad12f8e61d353ebd0c026f7bdb1a1c946abc2fc3fd5910fd0518",
            393_216,
        ),
        (
            "lt-v2-single",
            "",
            "5223f128892bf8d21783937426536ccf2096728217fff71b691a2320c89a8fcf",
            131_072,
        ),
        (
            "lt-v2-small",
            "",
            "f2239d161b78b9e0cffe79402c8b5aba605b63b3930e1a6fcb5225e1d09ecdd7",
            32_768,
        ),
    ];

    #[test]
    fn reads_libtorrent_v2_and_hybrid() {
        for &(name, v1, v2, total) in LT_FIXTURES {
            let bytes = fixture(name);
            let m = Metainfo::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(hex(&m.info_hash_v2.unwrap()), v2, "{name}");
            if v1.is_empty() {
                assert_eq!(m.info.version, MetaVersion::V2, "{name}");
                assert_eq!(hex(&m.info_hash.0), v2[..40], "{name}: truncated v2");
                assert!(m.info.pieces.is_empty());
            } else {
                assert_eq!(m.info.version, MetaVersion::Hybrid, "{name}");
                assert_eq!(hex(&m.info_hash.0), v1, "{name}");
            }
            assert_eq!(
                m.info_hash_v2_truncated().unwrap().0,
                m.info_hash_v2.unwrap()[..20]
            );
            assert_eq!(m.total_length(), total, "{name}: libtorrent's layout");
            // Every real file starts on a piece boundary; its root is ours for its content.
            let mut offset = 0;
            let mut k = 0;
            for f in &m.info.files {
                if !f.pad {
                    assert_eq!(offset % u64::from(m.info.piece_length), 0, "{name}");
                    let data = fixture_content(k, f.length as usize);
                    let tree = merkle::file_tree(&data, u64::from(m.info.piece_length));
                    assert_eq!(f.pieces_root, tree.root, "{name}: {:?}", f.path);
                    if f.length > u64::from(m.info.piece_length) {
                        assert_eq!(m.piece_layers[&tree.root.unwrap()], tree.piece_layer);
                    }
                    k += 1;
                }
                offset += f.length;
            }
            // Every piece of the torrent's bytes (pads as zeros) checks out, v1 or v2.
            let mut bytes = Vec::new();
            let mut k = 0;
            for f in &m.info.files {
                if f.pad {
                    bytes.resize(bytes.len() + f.length as usize, 0);
                } else {
                    bytes.extend(fixture_content(k, f.length as usize));
                    k += 1;
                }
            }
            let checks = m.piece_hashes().unwrap();
            assert_eq!(checks.len(), m.info.lengths.num_pieces() as usize);
            for (i, piece) in bytes.chunks(m.info.piece_length as usize).enumerate() {
                assert!(checks[i].verify([piece]), "{name}: piece {i}");
                assert!(!checks[i].verify([&piece[1..]]), "{name}: piece {i} cut");
            }
            // Our canonical encoding is libtorrent's, byte for byte.
            assert_eq!(m.info.to_bencode(), m.raw_info, "{name}: to_bencode");
            let again = Metainfo::from_bytes(&m.to_bytes()).unwrap();
            assert_eq!(again, m, "{name}: round trip");
        }
        let multi = Metainfo::from_bytes(&fixture("lt-hybrid-multi")).unwrap();
        let pads: Vec<u64> = multi
            .info
            .files
            .iter()
            .filter(|f| f.pad)
            .map(|f| f.length)
            .collect();
        assert_eq!(pads, [28_304, 16_384, 32_767, 29_376]);
        assert_eq!(multi.info.files[2].path, ["multi", "b", "c.bin"]);
    }

    /// Replaces the first `from` in `bytes` by `to` (same length keeps the bencode valid).
    fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(from)));
        [&bytes[..at], to, &bytes[at + from.len()..]].concat()
    }

    #[test]
    fn refuses_hostile_v2() {
        let multi = fixture("lt-v2-multi");
        let e = |b: &[u8]| Metainfo::from_bytes(b).unwrap_err();
        // Unsafe names in the file tree.
        assert!(matches!(
            e(&patch(&multi, b"1:bd", b"1:.d")),
            MetainfoError::UnsafePath { .. }
        ));
        let dotdot = patch(&multi, b"5:a.bind", b"5:..bind");
        assert!(
            Metainfo::from_bytes(&dotdot).is_ok(),
            "\"..bin\" is a fine name"
        );
        let up = patch(&multi, b"1:bd", b"1:/d");
        assert!(
            matches!(e(&up), MetainfoError::UnsafePath { .. }),
            "{}",
            e(&up)
        );
        // A piece layer that does not hash to its root, and one of the wrong size.
        let m = Metainfo::from_bytes(&multi).unwrap();
        let (root, layer) = m.piece_layers.iter().next().unwrap();
        let mut bad = layer.as_flattened().to_vec();
        bad[5] ^= 1;
        let err = e(&patch(&multi, layer.as_flattened(), &bad));
        assert!(
            matches!(err, MetainfoError::PieceLayerMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("does not hash"), "{err}");
        // A missing layer: its key no longer names the file's root.
        let mut other = *root;
        other[0] ^= 1;
        let err = e(&patch(
            &multi,
            &[b"32:", &root[..]].concat(),
            &[b"32:", &other[..]].concat(),
        ));
        assert!(matches!(err, MetainfoError::MissingPieceLayer(_)), "{err}");
        // Unknown meta versions, and a root of the wrong size.
        let err = e(&patch(&multi, b"12:meta versioni2e", b"12:meta versioni3e"));
        assert_eq!(err, MetainfoError::UnsupportedVersion(3));
        let err = e(&patch(&multi, b"11:pieces root32:", b"11:pieces root31:"));
        assert!(matches!(
            err,
            MetainfoError::Bencode { .. } | MetainfoError::BadValue { .. }
        ));
        // A piece length that is not a power of two.
        let err = e(&patch(
            &multi,
            b"12:piece lengthi32768e",
            b"12:piece lengthi32767e",
        ));
        assert!(err.to_string().contains("power of two"), "{err}");
        // Deep trees are refused by the decoder's bound.
        let mut deep = b"d4:infod9:file treed".to_vec();
        for _ in 0..100 {
            deep.extend_from_slice(b"1:ad");
        }
        deep.extend_from_slice(&vec![b'e'; 103]);
        assert_eq!(e(&deep), MetainfoError::TooDeep);
    }

    #[test]
    fn refuses_hybrids_that_disagree() {
        let hybrid = fixture("lt-hybrid-multi");
        let e = |b: &[u8]| Metainfo::from_bytes(b).unwrap_err();
        // A v1 length that differs from the tree's.
        let err = e(&patch(
            &hybrid,
            b"6:lengthi70000e4:path",
            b"6:lengthi70001e4:path",
        ));
        assert!(matches!(err, MetainfoError::HybridMismatch(_)), "{err}");
        // A v1 name that differs from the tree's.
        let err = e(&patch(&hybrid, b"4:pathl5:e.bin", b"4:pathl5:f.bin"));
        assert!(matches!(err, MetainfoError::HybridMismatch(_)), "{err}");
        // A pad of the wrong size: the next file is no longer on a piece boundary.
        let err = e(&patch(
            &hybrid,
            b"i28304e4:pathl4:.pad5:28304",
            b"i28303e4:pathl4:.pad5:28304",
        ));
        assert!(
            matches!(
                err,
                MetainfoError::HybridMismatch(_) | MetainfoError::PieceCount { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("piece boundary"), "{err}");
        // A v1 torrent may not carry a file tree without meta version 2.
        let err = e(&patch(
            &hybrid,
            b"12:meta versioni2e",
            b"12:meta versioni1e",
        ));
        assert!(err.to_string().contains("file tree"), "{err}");
    }

    #[test]
    fn v1_pad_files_are_marked_and_clash_with_nothing() {
        let mut v = b"d4:infod5:filesld6:lengthi5e4:pathl1:aeed4:attr1:p6:lengthi16379e4:pathl4:.pad5:16379eed4:attr1:p6:lengthi16379e4:pathl4:.pad5:16379eed6:lengthi3e4:pathl1:beee4:name1:n12:piece lengthi16384e6:pieces40:".to_vec();
        v.extend_from_slice(&hashes(2));
        v.extend_from_slice(b"ee");
        let m = Metainfo::from_bytes(&v).unwrap();
        let pads: Vec<bool> = m.info.files.iter().map(|f| f.pad).collect();
        assert_eq!(pads, [false, true, true, false]);
        assert_eq!(m.info.files[1].path, ["n", ".pad", "16379"]);
        assert_eq!(m.info.version, MetaVersion::V1);
        assert_eq!(m.info.to_bencode(), m.raw_info);
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ._é-]{1,12}".prop_filter("safe", |c| unsafe_component_reason(c).is_none())
    }

    proptest! {
        #[test]
        fn round_trips(
            name in component(),
            files in prop::collection::btree_map(
                prop::collection::vec(component(), 1..4), 0u64..100_000, 1..6),
            multi_file in any::<bool>(),
            piece_length in 1u32..70_000,
            private in any::<bool>(),
            tiers in prop::collection::vec(prop::collection::vec("[a-z:/.]{1,20}", 1..3), 0..3),
            comment in prop::option::of(".{0,20}"),
            creation_date in prop::option::of(any::<i64>()),
        ) {
            let mut files: Vec<FileEntry> = files
                .into_iter()
                .map(|(p, length)| {
                    FileEntry::new(std::iter::once(name.clone()).chain(p).collect(), length)
                })
                .collect();
            if !multi_file {
                files.truncate(1);
                files[0].path.truncate(1);
            }
            let total: u64 = files.iter().map(|f| f.length).sum();
            let lengths = Lengths::new(total, piece_length.into());
            prop_assume!(lengths.is_ok());
            // A folder path that is also a file path cannot be written: skip those layouts.
            prop_assume!(check_unique_paths(&files).is_ok());
            let lengths = lengths.unwrap();
            let pieces = (0..lengths.num_pieces()).map(|i| [i as u8; 20]).collect();
            let info = Info {
                name, piece_length, pieces, files, private, multi_file, lengths,
                version: MetaVersion::V1,
            };
            let m = Metainfo::new(info, tiers, comment, Some("test".into()), creation_date);
            let bytes = m.to_bytes();
            let back = Metainfo::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &m);
            // Canonical: the info dictionary re-encodes to the same bytes.
            prop_assert_eq!(back.info.to_bencode(), back.raw_info);
        }

        #[test]
        fn never_panics_on_mutations(seed in any::<u64>(), flips in 1usize..8) {
            let mut bytes = multi(&["a|b", "c", "d|e|f"]);
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..flips {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
            let cut = rng.usize(..=bytes.len());
            let _ = Metainfo::from_bytes(&bytes);
            let _ = Metainfo::from_bytes(&bytes[..cut]);
        }
    }
}
