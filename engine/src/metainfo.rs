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

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use bendy::encoding::{Encoder, SingleItemEncoder};
use sha1::{Digest, Sha1};

use crate::bencode::{self, BencodeError, Dict, List, Value};
use crate::lengths::{Lengths, LengthsError};
use crate::InfoHash;

/// How deeply lists and dictionaries may nest: [`bencode::MAX_DEPTH`].
pub const MAX_DEPTH: usize = bencode::MAX_DEPTH;

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
}

impl FileEntry {
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
        let [length, path, path_utf8] =
            fields(file, ["length", "path", "path.utf-8"], &format!("{place}."))?;
        let length = length_of(length, &format!("{place}.length"))?;
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
        files.push(FileEntry {
            path: components,
            length,
        });
    }
    Ok(files)
}

/// Refuses two files with the same path, and a file whose path is a folder of another.
fn check_unique_paths(files: &[FileEntry]) -> Result<()> {
    let mut paths: HashSet<&[String]> = HashSet::with_capacity(files.len());
    for f in files {
        if !paths.insert(&f.path) {
            return Err(MetainfoError::DuplicatePath(f.path.join("/")));
        }
    }
    for f in files {
        for n in 1..f.path.len() {
            if paths.contains(&f.path[..n]) {
                return Err(MetainfoError::DuplicatePath(f.path[..n].join("/")));
            }
        }
    }
    Ok(())
}

fn parse_info(dict: Dict<'_>) -> Result<Info> {
    let [name, name_utf8, piece_length, pieces, length, files, private] = fields(
        dict,
        [
            "name",
            "name.utf-8",
            "piece length",
            "pieces",
            "length",
            "files",
            "private",
        ],
        "",
    )?;
    let (name, name_key) = utf8_variant(name, name_utf8, "name", "name.utf-8")
        .ok_or_else(|| MetainfoError::Missing("name".into()))?;
    let name = as_utf8(name, name_key)?;
    check_component(&name, name_key)?;

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

    let (files, multi_file) = match (length, files) {
        (Some(_), Some(_)) => {
            return Err(MetainfoError::BadValue {
                key: "info".into(),
                problem: "has both \"length\" and \"files\"".into(),
            })
        }
        (None, None) => return Err(MetainfoError::Missing("length\" or \"files".into())),
        (Some(length), None) => {
            let length = length_of(Some(length), "length")?;
            let file = FileEntry {
                path: vec![name.clone()],
                length,
            };
            (vec![file], false)
        }
        (None, Some(files)) => (parse_files(as_list(files, "files")?, &name)?, true),
    };
    check_unique_paths(&files)?;

    let total = files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.length))
        .ok_or(MetainfoError::TotalOverflow)?;
    let lengths = Lengths::new(total, piece_length as u64).map_err(MetainfoError::Lengths)?;
    let found = pieces.len() / 20;
    if found != lengths.num_pieces() as usize {
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
    })
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
        let [info, announce, announce_list, creation_date, comment, created_by, url_list] = fields(
            root,
            [
                "info",
                "announce",
                "announce-list",
                "creation date",
                "comment",
                "created by",
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
            info_hash: InfoHash(Sha1::digest(raw_info).into()),
            announce,
            announce_list,
            creation_date: creation_date
                .map(|v| as_int(v, "creation date"))
                .transpose()?,
            comment: comment.map(|v| as_text(v, "comment")).transpose()?,
            created_by: created_by.map(|v| as_text(v, "created by")).transpose()?,
            raw_info: raw_info.to_vec(),
            url_list: url_list.map(parse_url_list).unwrap_or_default(),
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
        let tiers: Vec<Vec<String>> = tiers.into_iter().filter(|t| !t.is_empty()).collect();
        let announce = tiers.first().and_then(|t| t.first()).cloned();
        let url_count: usize = tiers.iter().map(Vec::len).sum();
        Ok(Metainfo {
            info,
            info_hash: InfoHash(Sha1::digest(raw_info).into()),
            announce,
            announce_list: if url_count > 1 { tiers } else { Vec::new() },
            creation_date: None,
            comment: None,
            created_by: None,
            raw_info: raw_info.to_vec(),
            url_list: Vec::new(),
        })
    }

    /// Builds the metainfo of `info` with trackers in `tiers` (one or more URLs per tier):
    /// `announce` is the first URL, and `announce-list` is written when there is more than one.
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
        Metainfo {
            info_hash: InfoHash(Sha1::digest(&raw_info).into()),
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
        // "url-list" sorts after "info": written here to keep the keys in order.
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
    pub fn to_bencode(&self) -> Vec<u8> {
        let mut enc = Encoder::new();
        let written = enc.emit_dict(|mut d| {
            if self.multi_file {
                d.emit_pair_with(b"files", |e| {
                    e.emit_list(|e| {
                        for f in &self.files {
                            e.emit_dict(|mut d| {
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
            d.emit_pair(b"name", self.name.as_str())?;
            d.emit_pair(b"piece length", self.piece_length)?;
            d.emit_pair_with(b"pieces", |e| e.emit_bytes(self.pieces.as_flattened()))?;
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
                .map(|(p, length)| FileEntry {
                    path: std::iter::once(name.clone()).chain(p).collect(),
                    length,
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
            let info = Info { name, piece_length, pieces, files, private, multi_file, lengths };
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
