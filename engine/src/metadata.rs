//! Metadata exchange (BEP 9): the `ut_metadata` messages, fetching a torrent's info dictionary
//! from peers, and serving ours.
//!
//! # Messages
//! A `ut_metadata` message is a bencoded dictionary with `msg_type` (0 request, 1 data,
//! 2 reject) and `piece`; a data message adds `total_size` and is followed, after the
//! dictionary, by the piece's raw bytes. The info dictionary is cut into pieces of
//! [`METADATA_PIECE_LEN`] bytes, the last one shorter. [`MetadataMessage::parse`] borrows from
//! the payload, allocates nothing and never panics.
//!
//! # Fetching
//! [`MetadataFetch`] is a sans-IO state machine in the style of the rest of the engine: the
//! caller tells it which peers advertised which `metadata_size` ([`MetadataFetch::add_peer`]),
//! asks it what to request from each ([`MetadataFetch::next_request`]), and hands it what
//! arrives ([`MetadataFetch::handle_data`], [`MetadataFetch::handle_reject`]) and when time
//! passes ([`MetadataFetch::poll_timeout`], [`MetadataFetch::handle_timeout`]). Time comes in
//! as `now: Instant`, so tests drive it with a fake clock.
//!
//! - A size that is not positive or is over the configured bound is refused before anything
//!   is allocated; the first acceptable size is chosen, and a peer advertising another one is
//!   refused. The buffer for the whole dictionary is allocated when the first piece arrives.
//! - Each peer has at most [`MAX_REQUESTS_PER_PEER`] pieces asked of it at once, so pieces
//!   spread over the peers that have the metadata. A rejected or timed-out piece goes back to
//!   the pool and that peer rests for [`RETRY_BACKOFF`].
//! - When every piece is in, the SHA-1 of the assembled bytes must equal the info hash. If it
//!   does not, every piece is discarded and each peer that sent any is blamed; a peer that sent
//!   every piece alone is banned from the fetch. After a failure with several senders the next
//!   round takes every piece from one peer at a time, so a second failure pins the liar down.
//! - Success gives the raw info dictionary; [`Metainfo::from_info_bytes`] turns it into a
//!   [`Metainfo`] whose [`Metainfo::to_bytes`] is a `.torrent` file to keep.
//!
//! # Serving
//! [`serve`] answers a request from our own info dictionary.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::bencode::{self, Value};
use crate::metainfo::{Metainfo, MAX_METAINFO_LEN};
use crate::InfoHash;

/// Bytes per metadata piece (BEP 9); only the last piece is shorter.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;

/// The default bound on a `metadata_size` we accept: 32 MiB. An info dictionary is about 20
/// bytes per piece plus the file list, so this covers a 1.5-million-piece torrent (6 TB at
/// 4 MiB pieces), while a hostile peer cannot make us hold more than this per torrent.
pub const DEFAULT_MAX_METADATA_SIZE: usize = 32 * 1024 * 1024;

/// The largest bound a caller may configure: a `.torrent` file larger than
/// [`MAX_METAINFO_LEN`] is refused anyway.
pub const MAX_METADATA_SIZE: usize = MAX_METAINFO_LEN;

/// How long a peer has to answer a piece request before we ask someone else. libtorrent
/// answers from memory in milliseconds; ten seconds leaves room for a slow link.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer that rejected or timed out is left alone before we ask it again.
pub const RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Pieces asked of one peer at a time: two keeps one piece in flight while the next is
/// answered, and lets a second and third peer share the work of a small dictionary.
pub const MAX_REQUESTS_PER_PEER: usize = 2;

/// The most peers one fetch tracks; more are refused. The peer count of a torrent is already
/// bounded by connection limits well below this.
pub const MAX_FETCH_PEERS: usize = 512;

/// The most banned peers remembered by one fetch; the oldest is forgotten first. Each ban
/// costs the liar a whole metadata upload, so this is never reached in practice.
pub const MAX_BANNED: usize = 256;

/// `msg_type` values of BEP 9.
mod msg_type {
    pub const REQUEST: i64 = 0;
    pub const DATA: i64 = 1;
    pub const REJECT: i64 = 2;
}

/// One `ut_metadata` message; a data piece borrows from the payload it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataMessage<'a> {
    /// Asks for a piece.
    Request {
        /// The piece index.
        piece: u32,
    },
    /// A piece of the info dictionary.
    Data {
        /// The piece index.
        piece: u32,
        /// The size of the whole info dictionary, as the sender says.
        total_size: i64,
        /// The piece's bytes.
        data: &'a [u8],
    },
    /// The sender will not send this piece.
    Reject {
        /// The piece index.
        piece: u32,
    },
}

/// Why a `ut_metadata` message or a step of a fetch was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataError {
    /// The payload does not start with a bencoded dictionary.
    Malformed,
    /// A required key is absent or not an integer.
    MissingKey(&'static str),
    /// A `msg_type` we do not know; BEP 9 says to ignore such a message.
    UnknownMessageType(i64),
    /// A piece index that is negative or does not fit 32 bits.
    BadPieceIndex(i64),
    /// A data message carries more than [`METADATA_PIECE_LEN`] bytes.
    PieceTooLong(usize),
    /// A `metadata_size` of zero or less.
    SizeNotPositive(i64),
    /// A `metadata_size` over the configured bound.
    SizeTooLarge {
        /// The advertised size.
        size: i64,
        /// The bound.
        max: usize,
    },
    /// A size that disagrees with the one already chosen.
    SizeMismatch {
        /// The size this peer gave.
        size: i64,
        /// The size chosen earlier.
        chosen: usize,
    },
    /// The peer was never added, or was removed.
    UnknownPeer,
    /// The peer is banned from this fetch.
    Banned,
    /// The fetch already tracks [`MAX_FETCH_PEERS`] peers.
    TooManyPeers,
    /// A piece index past the last piece.
    PieceOutOfRange {
        /// The index received.
        piece: u32,
        /// How many pieces there are.
        count: u32,
    },
    /// A piece whose length is not what the size implies.
    WrongPieceLength {
        /// The index received.
        piece: u32,
        /// Bytes received.
        got: usize,
        /// Bytes that piece has.
        expected: usize,
    },
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => write!(f, "ut_metadata message is not a bencoded dictionary"),
            Self::MissingKey(k) => write!(f, "ut_metadata message lacks an integer \"{k}\""),
            Self::UnknownMessageType(t) => write!(f, "unknown ut_metadata msg_type {t}"),
            Self::BadPieceIndex(n) => write!(f, "metadata piece index {n} is out of range"),
            Self::PieceTooLong(n) => write!(
                f,
                "metadata piece of {n} bytes is longer than {METADATA_PIECE_LEN}"
            ),
            Self::SizeNotPositive(n) => write!(f, "metadata_size {n} is not positive"),
            Self::SizeTooLarge { size, max } => {
                write!(f, "metadata_size {size} is over the maximum of {max}")
            }
            Self::SizeMismatch { size, chosen } => write!(
                f,
                "metadata_size {size} disagrees with the size {chosen} other peers gave"
            ),
            Self::UnknownPeer => write!(f, "peer is not part of the metadata fetch"),
            Self::Banned => write!(
                f,
                "peer is banned for sending metadata that failed the hash"
            ),
            Self::TooManyPeers => write!(f, "metadata fetch already has {MAX_FETCH_PEERS} peers"),
            Self::PieceOutOfRange { piece, count } => {
                write!(f, "metadata piece {piece} is out of range ({count} pieces)")
            }
            Self::WrongPieceLength {
                piece,
                got,
                expected,
            } => write!(
                f,
                "metadata piece {piece} has {got} bytes, expected {expected}"
            ),
        }
    }
}

impl std::error::Error for MetadataError {}

/// Appends `<key>i<n>e` to a bencoded dictionary being written.
fn put_pair(out: &mut Vec<u8>, key: &str, n: i64) {
    out.extend_from_slice(format!("{}:{key}i{n}e", key.len()).as_bytes());
}

impl<'a> MetadataMessage<'a> {
    /// Reads a `ut_metadata` payload (what follows the extended message id).
    ///
    /// Bytes after the dictionary are the piece of a data message and are ignored after a
    /// request or reject. A data message must carry `total_size` and at most
    /// [`METADATA_PIECE_LEN`] bytes; [`MetadataFetch::handle_data`] checks the rest.
    pub fn parse(payload: &'a [u8]) -> Result<Self, MetadataError> {
        let Ok((Value::Dict(dict), end)) = bencode::decode_prefix(payload) else {
            return Err(MetadataError::Malformed);
        };
        let (mut kind, mut piece, mut total_size) = (None, None, None);
        for (key, value) in dict.pairs() {
            let Value::Int(n) = value else { continue };
            match key {
                b"msg_type" => kind = Some(n),
                b"piece" => piece = Some(n),
                b"total_size" => total_size = Some(n),
                _ => {}
            }
        }
        let kind = kind.ok_or(MetadataError::MissingKey("msg_type"))?;
        if !(msg_type::REQUEST..=msg_type::REJECT).contains(&kind) {
            return Err(MetadataError::UnknownMessageType(kind));
        }
        let piece = piece.ok_or(MetadataError::MissingKey("piece"))?;
        let piece = u32::try_from(piece).map_err(|_| MetadataError::BadPieceIndex(piece))?;
        Ok(match kind {
            msg_type::REQUEST => Self::Request { piece },
            msg_type::REJECT => Self::Reject { piece },
            _ => {
                let total_size = total_size.ok_or(MetadataError::MissingKey("total_size"))?;
                let data = payload.get(end..).unwrap_or_default();
                if data.len() > METADATA_PIECE_LEN {
                    return Err(MetadataError::PieceTooLong(data.len()));
                }
                Self::Data {
                    piece,
                    total_size,
                    data,
                }
            }
        })
    }

    /// Appends the payload (what follows the extended message id) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'd');
        match *self {
            Self::Request { piece } => {
                put_pair(out, "msg_type", msg_type::REQUEST);
                put_pair(out, "piece", piece.into());
                out.push(b'e');
            }
            Self::Reject { piece } => {
                put_pair(out, "msg_type", msg_type::REJECT);
                put_pair(out, "piece", piece.into());
                out.push(b'e');
            }
            Self::Data {
                piece,
                total_size,
                data,
            } => {
                put_pair(out, "msg_type", msg_type::DATA);
                put_pair(out, "piece", piece.into());
                put_pair(out, "total_size", total_size);
                out.push(b'e');
                out.extend_from_slice(data);
            }
        }
    }
}

/// How many pieces a dictionary of `size` bytes has.
fn piece_count(size: usize) -> u32 {
    // size <= MAX_METADATA_SIZE, so the count is at most 4096.
    size.div_ceil(METADATA_PIECE_LEN) as u32
}

/// The length of piece `piece` of a dictionary of `size` bytes.
fn piece_len(size: usize, piece: u32) -> usize {
    let start = piece as usize * METADATA_PIECE_LEN;
    size.saturating_sub(start).min(METADATA_PIECE_LEN)
}

/// Answers a `ut_metadata` request for `piece` from our info dictionary `info`: appends the
/// data message's payload to `out` and returns true, or a reject's and returns false when the
/// piece is out of range. A caller that has no metadata yet sends
/// [`MetadataMessage::Reject`] itself.
pub fn serve(info: &[u8], piece: u32, out: &mut Vec<u8>) -> bool {
    let start = (piece as usize).saturating_mul(METADATA_PIECE_LEN);
    if start >= info.len() {
        MetadataMessage::Reject { piece }.encode(out);
        return false;
    }
    let end = info.len().min(start + METADATA_PIECE_LEN);
    MetadataMessage::Data {
        piece,
        total_size: info.len() as i64,
        data: &info[start..end],
    }
    .encode(out);
    true
}

/// The bytes of a `.torrent` file holding the info dictionary `info` verbatim and `tiers` of
/// trackers (a magnet's [`crate::magnet::Magnet::tiers`]), for keeping fetched metadata.
pub fn torrent_file(
    info: &[u8],
    tiers: Vec<Vec<String>>,
) -> Result<Vec<u8>, crate::metainfo::MetainfoError> {
    Ok(Metainfo::from_info_bytes(info, tiers)?.to_bytes())
}

/// Where one piece of the fetch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot<P> {
    /// Nobody is asked for it.
    Missing,
    /// Asked of `peer` at `at`.
    Asked {
        /// The peer asked.
        peer: P,
        /// When.
        at: Instant,
    },
    /// Received from `from`, waiting for the rest.
    Have {
        /// The sender.
        from: P,
    },
}

/// What the fetch knows of one peer.
#[derive(Clone, Copy, Debug, Default)]
struct PeerState {
    /// No requests to this peer before then (after a reject or a timeout).
    rest_until: Option<Instant>,
}

/// What [`MetadataFetch::handle_data`] did with a piece.
#[derive(Clone, PartialEq, Eq)]
pub enum Progress<P> {
    /// Stored; more pieces are needed.
    Stored,
    /// We already had that piece (or the fetch is over); the bytes were dropped.
    Duplicate,
    /// Every piece is in and the SHA-1 matches the info hash: the raw info dictionary.
    Done(Vec<u8>),
    /// Every piece is in and the SHA-1 matches the info hash, but the SHA-256 is not the
    /// magnet's v2 hash (`urn:btmh`): every peer agrees on a dictionary that is not the one
    /// the magnet names, so the magnet itself is wrong. The fetch is over.
    V2Mismatch,
    /// Every piece is in but the hash is wrong: all pieces were discarded.
    HashMismatch {
        /// Every peer that sent any piece, in the order of the pieces.
        blamed: Vec<P>,
        /// The peer that sent every piece alone, now banned from the fetch.
        banned: Option<P>,
    },
}

impl<P: fmt::Debug> fmt::Debug for Progress<P> {
    /// Compact: a finished dictionary shows its length, not its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stored => write!(f, "Stored"),
            Self::Duplicate => write!(f, "Duplicate"),
            Self::Done(b) => write!(f, "Done({} bytes)", b.len()),
            Self::V2Mismatch => write!(f, "V2Mismatch"),
            Self::HashMismatch { blamed, banned } => f
                .debug_struct("HashMismatch")
                .field("blamed", blamed)
                .field("banned", banned)
                .finish(),
        }
    }
}

/// Fetches one torrent's info dictionary from its peers (BEP 9). `P` is the caller's key for a
/// peer connection.
#[derive(Debug)]
pub struct MetadataFetch<P> {
    /// The hash the assembled dictionary must have (the SHA-1, unless `v1` is off).
    info_hash: InfoHash,
    /// Whether the SHA-1 is checked: off for a v2-only magnet, whose `info_hash` is its
    /// SHA-256 cut to 20 bytes.
    v1: bool,
    /// The SHA-256 the dictionary must have too (BEP 52), when the magnet gave one.
    v2: Option<[u8; 32]>,
    /// The largest `metadata_size` accepted.
    max_size: usize,
    /// The chosen size, once a peer gave an acceptable one.
    size: Option<usize>,
    /// One slot per piece (empty until the size is chosen).
    slots: Vec<Slot<P>>,
    /// The assembled bytes (empty until the first piece arrives).
    buffer: Vec<u8>,
    /// Pieces in `Have`.
    received: u32,
    /// The peers that can be asked.
    peers: HashMap<P, PeerState>,
    /// Peers banned for sending a whole dictionary that failed the hash, oldest first.
    banned: VecDeque<P>,
    /// After a failure with several senders: take a round from one peer only.
    one_source: bool,
    /// The peer the current one-source round is taken from.
    source: Option<P>,
    /// Set once the dictionary was handed out.
    done: bool,
}

impl<P: Copy + Eq + Hash + fmt::Debug> MetadataFetch<P> {
    /// A fetch for `info_hash` accepting sizes up to `max_size` bytes (clamped to
    /// [`MAX_METADATA_SIZE`]; [`DEFAULT_MAX_METADATA_SIZE`] is a good value).
    pub fn new(info_hash: InfoHash, max_size: usize) -> Self {
        Self {
            info_hash,
            v1: true,
            v2: None,
            max_size: max_size.min(MAX_METADATA_SIZE),
            size: None,
            slots: Vec::new(),
            buffer: Vec::new(),
            received: 0,
            peers: HashMap::new(),
            banned: VecDeque::new(),
            one_source: false,
            source: None,
            done: false,
        }
    }

    /// Checks the dictionary against a v2 info hash (`urn:btmh`) too; with `v1` false, only
    /// against it (a v2-only magnet, whose wire info hash is the first 20 bytes of `v2`).
    pub fn with_v2(mut self, v2: [u8; 32], v1: bool) -> Self {
        self.v2 = Some(v2);
        self.v1 = v1;
        self
    }

    /// The info hash being fetched.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The chosen `metadata_size`, once a peer gave an acceptable one.
    pub fn size(&self) -> Option<usize> {
        self.size
    }

    /// Whether the dictionary was fetched and handed out.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Pieces received so far and the piece count (0 until the size is known).
    pub fn progress(&self) -> (u32, u32) {
        (self.received, self.slots.len() as u32)
    }

    /// Bytes held for the dictionary itself (0 until the first piece arrives).
    pub fn allocated_bytes(&self) -> usize {
        self.buffer.capacity()
    }

    /// Whether `peer` is banned from this fetch.
    pub fn is_banned(&self, peer: P) -> bool {
        self.banned.contains(&peer)
    }

    /// Adds a peer whose extended handshake said `metadata_size` (adding one again, or after
    /// the fetch is done, is harmless). Refuses, before allocating anything, a size that is not positive, over the
    /// bound, or different from the size already chosen; and a banned peer.
    pub fn add_peer(&mut self, peer: P, metadata_size: i64) -> Result<(), MetadataError> {
        if self.done {
            return Ok(());
        }
        if self.is_banned(peer) {
            return Err(MetadataError::Banned);
        }
        if metadata_size <= 0 {
            return Err(MetadataError::SizeNotPositive(metadata_size));
        }
        let size = usize::try_from(metadata_size)
            .ok()
            .filter(|&s| s <= self.max_size)
            .ok_or(MetadataError::SizeTooLarge {
                size: metadata_size,
                max: self.max_size,
            })?;
        if let Some(chosen) = self.size.filter(|&c| c != size) {
            return Err(MetadataError::SizeMismatch {
                size: metadata_size,
                chosen,
            });
        }
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_FETCH_PEERS {
            return Err(MetadataError::TooManyPeers);
        }
        if self.size.is_none() {
            self.size = Some(size);
            self.slots = vec![Slot::Missing; piece_count(size) as usize];
        }
        self.peers.entry(peer).or_default();
        Ok(())
    }

    /// Forgets a peer (it disconnected): the pieces asked of it go back to the pool. When no
    /// peer is left and no piece was received, the chosen size is forgotten too, so peers
    /// that disagreed with it can be added again.
    pub fn remove_peer(&mut self, peer: P) {
        self.peers.remove(&peer);
        self.release(peer);
        if self.source == Some(peer) {
            self.source = None;
        }
        if self.peers.is_empty() && self.received == 0 && !self.done {
            self.size = None;
            self.slots = Vec::new();
            self.buffer = Vec::new();
        }
    }

    /// Puts every piece asked of `peer` back in the pool.
    fn release(&mut self, peer: P) {
        for s in &mut self.slots {
            if matches!(*s, Slot::Asked { peer: p, .. } if p == peer) {
                *s = Slot::Missing;
            }
        }
    }

    /// The next piece to ask `peer` for, now recorded as asked of it at `now`; `None` when
    /// it has [`MAX_REQUESTS_PER_PEER`] outstanding, is resting after a reject or timeout,
    /// is unknown, or there is nothing left to ask. Call it until `None` whenever a peer is
    /// added or answers, and for every peer after [`MetadataFetch::handle_timeout`].
    pub fn next_request(&mut self, peer: P, now: Instant) -> Option<u32> {
        if self.done {
            return None;
        }
        let state = self.peers.get(&peer)?;
        if state.rest_until.is_some_and(|t| now < t) {
            return None;
        }
        if self.one_source {
            match self.source {
                Some(s) if s != peer => return None,
                _ => {}
            }
        }
        let asked = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Asked { peer: p, .. } if *p == peer))
            .count();
        if asked >= MAX_REQUESTS_PER_PEER {
            return None;
        }
        let i = self.slots.iter().position(|s| *s == Slot::Missing)?;
        self.slots[i] = Slot::Asked { peer, at: now };
        if self.one_source {
            self.source = Some(peer);
        }
        Some(i as u32)
    }

    /// `peer` rejected `piece`: it goes back to the pool and the peer rests for
    /// [`RETRY_BACKOFF`].
    pub fn handle_reject(&mut self, peer: P, piece: u32, now: Instant) {
        let Some(slot) = self.slots.get_mut(piece as usize) else {
            return;
        };
        if matches!(*slot, Slot::Asked { peer: p, .. } if p == peer) {
            *slot = Slot::Missing;
        }
        self.rest(peer, now);
    }

    /// Sends `peer` to rest; a one-source round moves to another peer.
    fn rest(&mut self, peer: P, now: Instant) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.rest_until = Some(now + RETRY_BACKOFF);
        }
        if self.source == Some(peer) {
            self.source = None;
            self.release(peer);
        }
    }

    /// When [`MetadataFetch::handle_timeout`] next has something to do: a request's
    /// deadline or the end of a peer's rest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let asked = self.slots.iter().filter_map(|s| match s {
            Slot::Asked { at, .. } => Some(*at + REQUEST_TIMEOUT),
            _ => None,
        });
        let rests = self.peers.values().filter_map(|p| p.rest_until);
        asked.chain(rests).min()
    }

    /// Expires requests older than [`REQUEST_TIMEOUT`] (their peer rests) and ends rests that
    /// are over. Afterwards, call [`MetadataFetch::next_request`] for every peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut late = Vec::new();
        for s in &mut self.slots {
            if let Slot::Asked { peer, at } = *s {
                if now >= at + REQUEST_TIMEOUT {
                    *s = Slot::Missing;
                    late.push(peer);
                }
            }
        }
        for state in self.peers.values_mut() {
            if state.rest_until.is_some_and(|t| now >= t) {
                state.rest_until = None;
            }
        }
        for peer in late {
            self.rest(peer, now);
        }
    }

    /// A data message from `peer`. Checks the size, the index and the length (an error means
    /// the peer misbehaved); stores the piece; when it was the last one, checks the hash.
    pub fn handle_data(
        &mut self,
        peer: P,
        piece: u32,
        total_size: i64,
        data: &[u8],
    ) -> Result<Progress<P>, MetadataError> {
        if self.done {
            return Ok(Progress::Duplicate);
        }
        if self.is_banned(peer) {
            return Err(MetadataError::Banned);
        }
        if !self.peers.contains_key(&peer) {
            return Err(MetadataError::UnknownPeer);
        }
        let Some(size) = self.size else {
            return Err(MetadataError::UnknownPeer);
        };
        if usize::try_from(total_size).ok() != Some(size) {
            return Err(MetadataError::SizeMismatch {
                size: total_size,
                chosen: size,
            });
        }
        let count = self.slots.len() as u32;
        let Some(slot) = self.slots.get(piece as usize).copied() else {
            return Err(MetadataError::PieceOutOfRange { piece, count });
        };
        let expected = piece_len(size, piece);
        if data.len() != expected {
            return Err(MetadataError::WrongPieceLength {
                piece,
                got: data.len(),
                expected,
            });
        }
        if let Slot::Have { .. } = slot {
            return Ok(Progress::Duplicate);
        }
        if self.buffer.len() != size {
            self.buffer = vec![0; size];
        }
        let start = piece as usize * METADATA_PIECE_LEN;
        self.buffer[start..start + expected].copy_from_slice(data);
        self.slots[piece as usize] = Slot::Have { from: peer };
        self.received += 1;
        if self.received < count {
            return Ok(Progress::Stored);
        }
        let v1_ok = !self.v1 || InfoHash(Sha1::digest(&self.buffer).into()) == self.info_hash;
        let v2_ok = self
            .v2
            .is_none_or(|h| <[u8; 32]>::from(Sha256::digest(&self.buffer)) == h);
        if v1_ok && (v2_ok || self.v1) {
            self.done = true;
            self.peers.clear();
            self.slots = Vec::new();
            if !v2_ok {
                self.buffer = Vec::new();
                return Ok(Progress::V2Mismatch);
            }
            return Ok(Progress::Done(std::mem::take(&mut self.buffer)));
        }
        Ok(self.fail())
    }

    /// Discards a complete dictionary that failed the hash; blames and bans.
    fn fail(&mut self) -> Progress<P> {
        let mut blamed: Vec<P> = Vec::new();
        for s in &mut self.slots {
            if let Slot::Have { from } = *s {
                if !blamed.contains(&from) {
                    blamed.push(from);
                }
            }
            *s = Slot::Missing;
        }
        self.received = 0;
        self.source = None;
        let banned = match blamed[..] {
            [only] => {
                self.peers.remove(&only);
                self.release(only);
                if self.banned.len() >= MAX_BANNED {
                    self.banned.pop_front();
                }
                self.banned.push_back(only);
                // The liar is gone: spread the next round again.
                self.one_source = false;
                Some(only)
            }
            _ => {
                self.one_source = true;
                None
            }
        };
        if self.peers.is_empty() {
            self.size = None;
            self.slots = Vec::new();
            self.buffer = Vec::new();
        }
        Progress::HashMismatch { blamed, banned }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An info dictionary of `len` bytes (not a valid one, but the fetch only hashes it).
    fn dict(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn hash_of(b: &[u8]) -> InfoHash {
        InfoHash(Sha1::digest(b).into())
    }

    fn piece(info: &[u8], i: u32) -> &[u8] {
        let s = i as usize * METADATA_PIECE_LEN;
        &info[s..info.len().min(s + METADATA_PIECE_LEN)]
    }

    #[test]
    fn messages_round_trip_and_match_bep_9() {
        let mut out = Vec::new();
        MetadataMessage::Request { piece: 0 }.encode(&mut out);
        assert_eq!(out, b"d8:msg_typei0e5:piecei0ee");
        out.clear();
        MetadataMessage::Reject { piece: 3 }.encode(&mut out);
        assert_eq!(out, b"d8:msg_typei2e5:piecei3ee");
        out.clear();
        let data = MetadataMessage::Data {
            piece: 1,
            total_size: 34_256,
            data: b"xxxx",
        };
        data.encode(&mut out);
        assert_eq!(out, b"d8:msg_typei1e5:piecei1e10:total_sizei34256eexxxx");
        assert_eq!(MetadataMessage::parse(&out), Ok(data));
        for m in [
            MetadataMessage::Request { piece: u32::MAX },
            MetadataMessage::Reject { piece: 0 },
            MetadataMessage::Data {
                piece: 0,
                total_size: -1,
                data: &[],
            },
        ] {
            out.clear();
            m.encode(&mut out);
            assert_eq!(MetadataMessage::parse(&out), Ok(m));
        }
        // Unsorted keys, unknown keys and trailing bytes after a request are accepted.
        assert_eq!(
            MetadataMessage::parse(b"d5:piecei2e1:xle8:msg_typei0eetrailing"),
            Ok(MetadataMessage::Request { piece: 2 })
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        use MetadataError as E;
        let long = [
            b"d8:msg_typei1e5:piecei0e10:total_sizei9ee".to_vec(),
            vec![0; 16_385],
        ]
        .concat();
        for (bad, want) in [
            (&b""[..], E::Malformed),
            (b"le", E::Malformed),
            (b"d8:msg_typei0e", E::Malformed),
            (b"d5:piecei0ee", E::MissingKey("msg_type")),
            (b"d8:msg_type1:0e", E::MissingKey("msg_type")),
            (b"d8:msg_typei0ee", E::MissingKey("piece")),
            (b"d8:msg_typei1e5:piecei0ee", E::MissingKey("total_size")),
            (b"d8:msg_typei3e5:piecei0ee", E::UnknownMessageType(3)),
            (b"d8:msg_typei-1ee", E::UnknownMessageType(-1)),
            (b"d8:msg_typei0e5:piecei-1ee", E::BadPieceIndex(-1)),
            (
                b"d8:msg_typei0e5:piecei4294967296ee",
                E::BadPieceIndex(1 << 32),
            ),
            (&long, E::PieceTooLong(16_385)),
        ] {
            assert_eq!(MetadataMessage::parse(bad), Err(want.clone()), "{bad:?}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn serves_pieces_and_rejects_past_the_end() {
        let info = dict(40_000);
        let mut out = Vec::new();
        assert!(serve(&info, 2, &mut out));
        assert_eq!(
            MetadataMessage::parse(&out),
            Ok(MetadataMessage::Data {
                piece: 2,
                total_size: 40_000,
                data: &info[32_768..]
            })
        );
        for p in [3, u32::MAX] {
            out.clear();
            assert!(!serve(&info, p, &mut out));
            assert_eq!(
                MetadataMessage::parse(&out),
                Ok(MetadataMessage::Reject { piece: p })
            );
        }
    }

    #[test]
    fn fetches_from_three_peers_in_pieces() {
        let info = dict(5 * METADATA_PIECE_LEN + 1234); // 6 pieces
        let mut f = MetadataFetch::new(hash_of(&info), DEFAULT_MAX_METADATA_SIZE);
        let now = Instant::now();
        for p in 1..=3 {
            f.add_peer(p, info.len() as i64).unwrap();
        }
        assert_eq!(f.progress(), (0, 6));
        assert_eq!(f.allocated_bytes(), 0);
        // Each peer gets two pieces; nothing is left for a fourth ask.
        let mut asked = Vec::new();
        for p in 1..=3 {
            while let Some(i) = f.next_request(p, now) {
                asked.push((p, i));
            }
        }
        assert_eq!(
            asked,
            [(1, 0), (1, 1), (2, 2), (2, 3), (3, 4), (3, 5)],
            "spread over the peers"
        );
        // Answers arrive out of order.
        for &(p, i) in asked[1..].iter().rev() {
            let got = f
                .handle_data(p, i, info.len() as i64, piece(&info, i))
                .unwrap();
            assert_eq!(got, Progress::Stored);
        }
        assert_eq!(
            f.handle_data(3, 4, info.len() as i64, piece(&info, 4)),
            Ok(Progress::Duplicate)
        );
        let (p, i) = asked[0];
        let done = f
            .handle_data(p, i, info.len() as i64, piece(&info, i))
            .unwrap();
        assert_eq!(done, Progress::Done(info.clone()));
        assert!(f.is_done());
        assert_eq!(f.next_request(1, now), None);
        assert_eq!(f.poll_timeout(), None);
    }

    /// Fetches `info` whole from peer 1 with `f`.
    fn fetch_all(mut f: MetadataFetch<u8>, info: &[u8]) -> Progress<u8> {
        let now = Instant::now();
        f.add_peer(1, info.len() as i64).unwrap();
        let mut last = Progress::Stored;
        while let Some(i) = f.next_request(1, now) {
            last = f
                .handle_data(1, i, info.len() as i64, piece(info, i))
                .unwrap();
        }
        last
    }

    #[test]
    fn v2_and_hybrid_magnets_check_the_sha256() {
        let info = dict(3 * METADATA_PIECE_LEN + 10);
        let v2: [u8; 32] = Sha256::digest(&info).into();
        let cut = InfoHash(v2[..20].try_into().unwrap());
        // A v2-only magnet: the SHA-256 alone, the wire hash being its first 20 bytes.
        let f = MetadataFetch::new(cut, DEFAULT_MAX_METADATA_SIZE).with_v2(v2, false);
        assert_eq!(fetch_all(f, &info), Progress::Done(info.clone()));
        let mut wrong = v2;
        wrong[31] ^= 1;
        let f = MetadataFetch::new(cut, DEFAULT_MAX_METADATA_SIZE).with_v2(wrong, false);
        assert!(matches!(
            fetch_all(f, &info),
            Progress::HashMismatch {
                banned: Some(1),
                ..
            }
        ));
        // A hybrid magnet: both hashes; a SHA-1 that matches with a SHA-256 that does not
        // means the magnet is wrong, not the peer.
        let f = MetadataFetch::new(hash_of(&info), DEFAULT_MAX_METADATA_SIZE).with_v2(v2, true);
        assert_eq!(fetch_all(f, &info), Progress::Done(info.clone()));
        let f = MetadataFetch::new(hash_of(&info), DEFAULT_MAX_METADATA_SIZE).with_v2(wrong, true);
        assert_eq!(fetch_all(f, &info), Progress::V2Mismatch);
        let f = MetadataFetch::new(cut, DEFAULT_MAX_METADATA_SIZE).with_v2(v2, true);
        assert!(matches!(fetch_all(f, &info), Progress::HashMismatch { .. }));
    }

    #[test]
    fn wrong_hash_blames_every_sender_and_bans_a_sole_one() {
        let info = dict(3 * METADATA_PIECE_LEN);
        let mut bad = info.clone();
        for i in 0..3 {
            bad[i * METADATA_PIECE_LEN + 100] ^= 1;
        }
        let size = info.len() as i64;
        let mut f = MetadataFetch::new(hash_of(&info), DEFAULT_MAX_METADATA_SIZE);
        let now = Instant::now();
        // Peer 1 alone sends a wrong dictionary: banned.
        f.add_peer(1, size).unwrap();
        let mut last = None;
        while let Some(i) = f.next_request(1, now) {
            last = Some(f.handle_data(1, i, size, piece(&bad, i)).unwrap());
        }
        assert_eq!(
            last,
            Some(Progress::HashMismatch {
                blamed: vec![1],
                banned: Some(1)
            })
        );
        assert!(f.is_banned(1));
        assert_eq!(f.add_peer(1, size), Err(MetadataError::Banned));
        assert_eq!(
            f.handle_data(1, 0, size, piece(&info, 0)),
            Err(MetadataError::Banned)
        );
        // Nobody left: the size is forgotten.
        assert_eq!(f.size(), None);

        // Peers 2 and 3 share the pieces, 3 lies: both blamed, neither banned.
        f.add_peer(2, size).unwrap();
        f.add_peer(3, size).unwrap();
        let a: Vec<u32> = std::iter::from_fn(|| f.next_request(2, now)).collect();
        let b: Vec<u32> = std::iter::from_fn(|| f.next_request(3, now)).collect();
        assert_eq!((a.clone(), b.clone()), (vec![0, 1], vec![2]));
        for i in a {
            assert_eq!(
                f.handle_data(2, i, size, piece(&info, i)),
                Ok(Progress::Stored)
            );
        }
        assert_eq!(
            f.handle_data(3, 2, size, piece(&bad, 2)),
            Ok(Progress::HashMismatch {
                blamed: vec![2, 3],
                banned: None
            })
        );
        assert_eq!(f.progress(), (0, 3));
        // The next round comes from one peer alone: 3 asks first and gets every piece.
        assert_eq!(f.next_request(3, now), Some(0));
        assert_eq!(f.next_request(2, now), None, "kept out of the round");
        assert_eq!(f.next_request(3, now), Some(1));
        assert_eq!(f.next_request(3, now), None);
        for i in [0, 1] {
            assert_eq!(
                f.handle_data(3, i, size, piece(&bad, i)),
                Ok(Progress::Stored)
            );
        }
        assert_eq!(f.next_request(2, now), None);
        assert_eq!(f.next_request(3, now), Some(2));
        // It lies again, alone this time: banned.
        assert_eq!(
            f.handle_data(3, 2, size, piece(&bad, 2)),
            Ok(Progress::HashMismatch {
                blamed: vec![3],
                banned: Some(3)
            })
        );
        // Peer 2 finishes alone, with the hash right.
        let mut last = None;
        while let Some(i) = f.next_request(2, now) {
            last = Some(f.handle_data(2, i, size, piece(&info, i)).unwrap());
        }
        assert_eq!(last, Some(Progress::Done(info)));
    }

    #[test]
    fn huge_zero_and_negative_sizes_are_refused_without_allocating() {
        let mut f: MetadataFetch<u8> = MetadataFetch::new(InfoHash([0; 20]), 1024 * 1024);
        for (size, want) in [
            (0, MetadataError::SizeNotPositive(0)),
            (-1, MetadataError::SizeNotPositive(-1)),
            (i64::MIN, MetadataError::SizeNotPositive(i64::MIN)),
            (
                1024 * 1024 + 1,
                MetadataError::SizeTooLarge {
                    size: 1024 * 1024 + 1,
                    max: 1024 * 1024,
                },
            ),
            (
                i64::MAX,
                MetadataError::SizeTooLarge {
                    size: i64::MAX,
                    max: 1024 * 1024,
                },
            ),
        ] {
            assert_eq!(f.add_peer(1, size), Err(want.clone()));
            assert!(want.to_string().starts_with("metadata_size"));
        }
        assert_eq!(f.size(), None);
        assert_eq!(f.allocated_bytes(), 0);
        assert_eq!(f.progress(), (0, 0));
        assert_eq!(f.next_request(1, Instant::now()), None);
        assert_eq!(
            f.handle_data(1, 0, 10, &[0; 10]),
            Err(MetadataError::UnknownPeer)
        );
        // A bound above the hard ceiling is clamped to it.
        let mut f: MetadataFetch<u8> = MetadataFetch::new(InfoHash([0; 20]), usize::MAX);
        assert!(matches!(
            f.add_peer(1, MAX_METADATA_SIZE as i64 + 1),
            Err(MetadataError::SizeTooLarge { .. })
        ));
        // Even at the bound, nothing is allocated before the first piece.
        f.add_peer(1, MAX_METADATA_SIZE as i64).unwrap();
        assert_eq!(f.allocated_bytes(), 0);
    }

    #[test]
    fn size_disagreement_is_refused() {
        let mut f = MetadataFetch::new(InfoHash([0; 20]), DEFAULT_MAX_METADATA_SIZE);
        f.add_peer('a', 40_000).unwrap();
        let e = f.add_peer('b', 40_001).unwrap_err();
        assert_eq!(
            e,
            MetadataError::SizeMismatch {
                size: 40_001,
                chosen: 40_000
            }
        );
        assert_eq!(
            e.to_string(),
            "metadata_size 40001 disagrees with the size 40000 other peers gave"
        );
        f.add_peer('b', 40_000).unwrap();
        // A data message giving another total_size is refused too.
        let i = f.next_request('a', Instant::now()).unwrap();
        assert!(matches!(
            f.handle_data('a', i, 39_999, &[0; METADATA_PIECE_LEN]),
            Err(MetadataError::SizeMismatch { .. })
        ));
        // Once everyone leaves before a piece arrived, another size can be chosen.
        f.remove_peer('a');
        f.remove_peer('b');
        f.add_peer('c', 5).unwrap();
        assert_eq!(f.size(), Some(5));
    }

    #[test]
    fn out_of_range_and_wrong_length_pieces_are_refused() {
        let info = dict(METADATA_PIECE_LEN + 10); // 2 pieces, the last of 10 bytes
        let size = info.len() as i64;
        let mut f = MetadataFetch::new(hash_of(&info), DEFAULT_MAX_METADATA_SIZE);
        f.add_peer(7u16, size).unwrap();
        assert_eq!(
            f.handle_data(7, 2, size, &[0; 10]),
            Err(MetadataError::PieceOutOfRange { piece: 2, count: 2 })
        );
        assert_eq!(
            f.handle_data(7, u32::MAX, size, &[]),
            Err(MetadataError::PieceOutOfRange {
                piece: u32::MAX,
                count: 2
            })
        );
        assert_eq!(
            f.handle_data(7, 1, size, &[0; 11]),
            Err(MetadataError::WrongPieceLength {
                piece: 1,
                got: 11,
                expected: 10
            })
        );
        assert_eq!(
            f.handle_data(7, 0, size, &[0; 10]),
            Err(MetadataError::WrongPieceLength {
                piece: 0,
                got: 10,
                expected: METADATA_PIECE_LEN
            })
        );
        assert_eq!(
            f.handle_data(8, 0, size, piece(&info, 0)),
            Err(MetadataError::UnknownPeer)
        );
        assert_eq!(f.allocated_bytes(), 0, "nothing kept from refused pieces");
        // Unasked but valid pieces are kept.
        assert_eq!(
            f.handle_data(7, 1, size, piece(&info, 1)),
            Ok(Progress::Stored)
        );
        assert_eq!(
            f.handle_data(7, 0, size, piece(&info, 0)),
            Ok(Progress::Done(info))
        );
    }

    #[test]
    fn rejects_and_timeouts_move_pieces_to_other_peers() {
        let info = dict(2 * METADATA_PIECE_LEN);
        let size = info.len() as i64;
        let mut f = MetadataFetch::new(hash_of(&info), DEFAULT_MAX_METADATA_SIZE);
        let t0 = Instant::now();
        f.add_peer(1, size).unwrap();
        assert_eq!(f.next_request(1, t0), Some(0));
        assert_eq!(f.next_request(1, t0), Some(1));
        assert_eq!(f.poll_timeout(), Some(t0 + REQUEST_TIMEOUT));
        f.handle_reject(1, 0, t0);
        // Peer 1 rests; peer 2 takes piece 0.
        assert_eq!(f.next_request(1, t0), None);
        f.add_peer(2, size).unwrap();
        let t = t0 + Duration::from_secs(1);
        assert_eq!(f.next_request(2, t), Some(0));
        assert_eq!(
            f.next_request(2, t),
            None,
            "piece 1 is still asked of peer 1"
        );
        assert_eq!(f.poll_timeout(), Some(t0 + RETRY_BACKOFF));
        // Piece 1 times out at peer 1 (piece 0, asked of 2 later, does not); 2 gets it.
        let t1 = t0 + REQUEST_TIMEOUT;
        f.handle_timeout(t1);
        assert_eq!(f.next_request(1, t1), None, "resting again after a timeout");
        assert_eq!(f.next_request(2, t1), Some(1));
        assert_eq!(f.poll_timeout(), Some(t + REQUEST_TIMEOUT));
        f.handle_data(2, 0, size, piece(&info, 0)).unwrap();
        // A late answer from peer 1 still counts.
        assert_eq!(
            f.handle_data(1, 1, size, piece(&info, 1)),
            Ok(Progress::Done(info))
        );
        // A peer that leaves gives its pieces back.
        let mut f = MetadataFetch::new(InfoHash([0; 20]), DEFAULT_MAX_METADATA_SIZE);
        f.add_peer(1, 100).unwrap();
        f.add_peer(2, 100).unwrap();
        assert_eq!(f.next_request(1, t0), Some(0));
        assert_eq!(f.next_request(2, t0), None);
        f.remove_peer(1);
        assert_eq!(f.next_request(2, t0), Some(0));
    }

    /// The data message python3-libtorrent 2.0.8 sent for piece 0 of a 259-byte info
    /// dictionary (a hybrid v1/v2 torrent it created), captured over loopback.
    const LT_DATA: &[u8] =
        b"d8:msg_typei1e5:piecei0e10:total_sizei259eed9:file treed8:data.bind0:d6:lengthi100000e11\
      :pieces root32:\x81\xbd\x95\xef%ZJ\x0bA\x1e\xf1-\xbe\xf3S\x80\xe9\xb42\xba\xb9\xa8\x90\
      \xf9\xb4\x13l\xae\xb9qS`eee6:lengthi100000e12:meta versioni2e4:name8:data.bin12:piece le\
      ngthi32768e6:pieces80:bb\x7f\xab-\xd9i\xed\x89\x1b\xc4\x8eyF\xcc\xa05#\x1d\xe7\xaet@ua\
      \x91\x0d\x5c\x92\x0ed\xf5\x99\x87\xd9\x8bf\xe8o\x5c\xff\x89\xf6=\xbd\x01Y\xf7\xe1pG\xd1A\
      \x02@\xeb\xf1\xfb\x88\xaf\xb4\xe0f\xb9x\xdc\xccT\xc3\xe2\x84\xac\xa5f\x9e\x9d\xeb\xcarEe";

    #[test]
    fn reads_what_libtorrent_sends() {
        let hash = InfoHash::from_hex("ee052d579eda6919762c3731b233ac6e652763c0").unwrap();
        let Ok(MetadataMessage::Data {
            piece,
            total_size,
            data,
        }) = MetadataMessage::parse(LT_DATA)
        else {
            panic!("not a data message")
        };
        assert_eq!((piece, total_size, data.len()), (0, 259, 259));
        let mut f = MetadataFetch::new(hash, DEFAULT_MAX_METADATA_SIZE);
        f.add_peer(0u8, 259).unwrap();
        assert_eq!(f.next_request(0, Instant::now()), Some(0));
        let Ok(Progress::Done(info)) = f.handle_data(0, piece, total_size, data) else {
            panic!("not done")
        };
        let meta = Metainfo::from_info_bytes(&info, Vec::new()).unwrap();
        assert_eq!(meta.info_hash, hash);
        assert_eq!(meta.info.name, "data.bin");
        assert_eq!(meta.total_length(), 100_000);
        // Its reject carries a total_size too, which we ignore.
        assert_eq!(
            MetadataMessage::parse(b"d8:msg_typei2e5:piecei5e10:total_sizei259ee"),
            Ok(MetadataMessage::Reject { piece: 5 })
        );
        // What we serve for the same dictionary is byte for byte what libtorrent sent.
        let mut ours = Vec::new();
        assert!(serve(&info, 0, &mut ours));
        assert_eq!(ours, LT_DATA);
    }

    #[test]
    fn fetched_metadata_becomes_a_torrent_file() {
        let bytes = include_bytes!("../../fuzz/corpus/metainfo/seed-multi.torrent");
        let meta = Metainfo::from_bytes(bytes).unwrap();
        let info = meta.raw_info.clone();
        let mut f = MetadataFetch::new(meta.info_hash, DEFAULT_MAX_METADATA_SIZE);
        f.add_peer((), info.len() as i64).unwrap();
        let mut done = None;
        while let Some(i) = f.next_request((), Instant::now()) {
            let mut msg = Vec::new();
            assert!(serve(&info, i, &mut msg));
            let MetadataMessage::Data {
                piece,
                total_size,
                data,
            } = MetadataMessage::parse(&msg).unwrap()
            else {
                panic!("not data")
            };
            if let Progress::Done(b) = f.handle_data((), piece, total_size, data).unwrap() {
                done = Some(b);
            }
        }
        let got = done.expect("fetched");
        let tiers = vec![vec!["udp://t.invalid:1".to_string()]];
        let file = torrent_file(&got, tiers.clone()).unwrap();
        let back = Metainfo::from_bytes(&file).unwrap();
        assert_eq!(back.info_hash, meta.info_hash);
        assert_eq!(back.info, meta.info);
        assert_eq!(back.tiers(), tiers);
        assert!(torrent_file(b"d4:name1:xe", vec![]).is_err());
        assert!(torrent_file(b"not bencode", vec![]).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = MetadataMessage::parse(&bytes) {
                let mut out = Vec::new();
                m.encode(&mut out);
                prop_assert_eq!(MetadataMessage::parse(&out), Ok(m));
            }
        }

        #[test]
        fn hostile_peer_never_panics(
            ops in prop::collection::vec((0u8..5, any::<u32>(), any::<i64>(), 0usize..20_000), 0..60),
        ) {
            let mut f = MetadataFetch::new(InfoHash([1; 20]), 100_000);
            let t = Instant::now();
            for (op, a, b, len) in ops {
                let peer = a % 4;
                match op {
                    0 => { let _ = f.add_peer(peer, b % 120_000); }
                    1 => { let _ = f.next_request(peer, t); }
                    2 => { let _ = f.handle_data(peer, a % 10, b % 120_000, &vec![0; len]); }
                    3 => f.handle_reject(peer, a % 10, t),
                    _ => f.remove_peer(peer),
                }
                prop_assert!(f.allocated_bytes() <= 100_000);
            }
        }
    }
}
