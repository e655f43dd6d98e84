//! The torrent actor: one per torrent. It opens the files, checks what is already there, starts
//! the picker and the tracker client, and owns the peer connections: dialling, accepting,
//! choking, banning, and shutting it all down in order.
//!
//! - `start`: opening the files, the check (or the fast-resume record) and
//!   the start of the picker, the tracker client and the actor;
//! - `swarm`: the addresses we may dial, their backoff, and bans;
//! - `admission`: who makes room when connections are scarce (pure policy);
//! - `choker`: which peers we upload to (pure policy);
//! - `actor`: the run loop, peer spawning and exits, the tick, resume records and shutdown.
//!
//! This file holds the types others use: the settings, [`AddTorrent`] and the [`Torrent`]
//! handle.

mod actor;
mod admission;
mod choker;
mod magnet;
mod start;
mod swarm;

pub(crate) use magnet::start_magnet;
pub use magnet::{AddMagnet, MAX_REPLAY};
pub(crate) use start::start;
pub use swarm::BanKey;

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

use async_channel::Receiver;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::{InfoHash, PeerId};

use crate::disk::{Disk, Mode};
use crate::error::{Error, Result};
use crate::hasher::Hasher;
use crate::limit::Limiter;
use crate::peer::connect::Accepted;
use crate::peer::ServeFilter;
use crate::runtime::{Addr, ReplyTo, Spawner};
use crate::session::ConnectionSlots;
use crate::shared::{Progress, Shared, TorrentEvent, TorrentState};

/// Capacity of a torrent's mailbox.
pub const TORRENT_MAILBOX: usize = 128;

/// The default [`TorrentSettings::disk_budget`]: bytes of pieces in progress plus pieces
/// waiting to be hashed and written. It is most of a downloader's memory when the hasher or
/// the disk falls behind (a busy machine): at 64 MiB `shoal download` peaked at 81 MiB of RSS,
/// at 32 MiB at 48 MiB (BENCHMARKS.md, issue 15). 24 MiB still holds 24 pieces of 1 MiB in
/// progress (a fast peer's pipeline on loopback holds a few MiB), and a piece larger than the
/// budget is always allowed, one at a time.
pub const DISK_BUDGET: u64 = 24 * 1024 * 1024;

/// Settings of one torrent.
#[derive(Clone, Debug)]
pub struct TorrentSettings {
    /// The fewest requests kept outstanding per peer; the queue grows with the peer's rate.
    pub queue_depth: usize,
    /// Most peer connections at once.
    pub max_peers: usize,
    /// Most connections from one host (one IP address; on loopback, where every local client
    /// shares 127.0.0.1, each address and port counts as its own host, as for bans).
    pub max_peers_per_ip: usize,
    /// Most outgoing connection attempts at once (the outgoing half-open limit).
    pub max_dialing: usize,
    /// Regular unchoke slots (one optimistic slot comes on top).
    pub upload_slots: usize,
    /// Bytes allowed between the sockets and the disk.
    pub disk_budget: u64,
    /// Threads that check the data already on disk when the torrent starts (0: one per core).
    /// Pieces downloaded later are checked by the session's hasher pool.
    pub hasher_threads: usize,
    /// Whether to announce to the torrent's trackers.
    pub use_trackers: bool,
    /// The user's own re-announce period, overriding the tracker's `interval` (and its
    /// `min interval`: the user asked for it); `None` honours the tracker. Each announce's
    /// peers are dialled, so a short period makes a seeder find new downloaders soon.
    pub announce_interval: Option<std::time::Duration>,
    /// Download rate limit of this torrent in bytes per second (0: none); the session's
    /// applies too.
    pub download_limit: u64,
    /// Upload rate limit of this torrent in bytes per second (0: none).
    pub upload_limit: u64,
    /// Peer exchange (BEP 11) with peers that speak it; never for private torrents.
    pub pex: bool,
    /// Super-seeding (BEP 16), for a torrent that is a seed when it starts: each downloader
    /// is told none of our pieces, then offered one piece nobody has at a time, the next once
    /// the last has been seen at another peer; requests for pieces not offered are refused.
    /// It ends by itself once every piece is at two peers (see `shoal_engine::superseed`).
    pub super_seed: bool,
}

impl Default for TorrentSettings {
    fn default() -> Self {
        Self {
            queue_depth: 5,
            max_peers: 200,
            max_peers_per_ip: 8,
            max_dialing: 32,
            upload_slots: 4,
            disk_budget: DISK_BUDGET,
            hasher_threads: 0,
            use_trackers: true,
            announce_interval: None,
            download_limit: 0,
            upload_limit: 0,
            pex: true,
            super_seed: false,
        }
    }
}

/// How to add a torrent.
#[derive(Clone)]
pub struct AddTorrent {
    /// The torrent.
    pub metainfo: Arc<Metainfo>,
    /// The download folder: files land at `folder/<paths of the metainfo>` (a file, or a
    /// folder named after the torrent).
    pub folder: PathBuf,
    /// Where the content itself is, when it is not `folder/<torrent name>`: the file of a
    /// single-file torrent, or the folder of a multi-file one (seeding data the user renamed).
    pub content: Option<PathBuf>,
    /// Read-write (download) or read-only (seed what the user gave us).
    pub mode: Mode,
    /// Peers to dial at once, with or without trackers.
    pub peers: Vec<SocketAddr>,
    /// Settings.
    pub settings: TorrentSettings,
    /// Optional limit on what we serve (the stop-after-one-copy seeding mode).
    pub serve_filter: Option<Arc<dyn ServeFilter>>,
    /// Where to keep the fast-resume record (see [`crate::resume`]); `None`: check every piece
    /// on start.
    pub resume: Option<PathBuf>,
    /// Start paused: check the files, then wait for [`Torrent::resume`].
    pub paused: bool,
    /// Which files to download, one flag per file of the metainfo (`None`: all). A skipped
    /// file is never created; pieces that lie only in skipped files are never requested; the
    /// bytes of skipped files that shared pieces bring wait in `<folder>/.shoal/<info hash>.parts`.
    pub wanted: Option<Vec<bool>>,
    /// Sequential mode: new pieces lowest index first instead of rarest first.
    pub sequential: bool,
}

impl fmt::Debug for AddTorrent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddTorrent")
            .field("name", &self.metainfo.info.name)
            .field("folder", &self.folder)
            .field("mode", &self.mode)
            .field("peers", &self.peers)
            .field("paused", &self.paused)
            .finish()
    }
}

impl AddTorrent {
    /// Download `metainfo` into `folder` with default settings.
    pub fn download(metainfo: Arc<Metainfo>, folder: impl Into<PathBuf>) -> Self {
        Self {
            metainfo,
            folder: folder.into(),
            content: None,
            mode: Mode::ReadWrite,
            peers: Vec::new(),
            settings: TorrentSettings::default(),
            serve_filter: None,
            resume: None,
            paused: false,
            wanted: None,
            sequential: false,
        }
    }

    /// Seed `metainfo` from the data in `folder` (read-only) with default settings.
    pub fn seed(metainfo: Arc<Metainfo>, folder: impl Into<PathBuf>) -> Self {
        Self {
            mode: Mode::ReadOnly,
            ..Self::download(metainfo, folder)
        }
    }
}

/// Where a file of the metainfo (`path`, starting with the torrent name) is when the content
/// itself is at `content`: `content` for a single-file torrent, `content/<rest of path>` for a
/// multi-file one.
pub fn content_path(content: &std::path::Path, path: &[String]) -> PathBuf {
    let mut p = content.to_path_buf();
    for c in path.iter().skip(1) {
        p.push(c);
    }
    p
}

/// Where each file of `meta` is: under `folder` (at `folder/<name>/...`), or, when `content`
/// is given, there (the file itself for a single-file torrent, the torrent's folder for a
/// multi-file one). The one place that maps a torrent's files to paths.
pub fn layout_of(
    meta: &Metainfo,
    folder: &std::path::Path,
    content: Option<&std::path::Path>,
) -> shoal_engine::storage::Layout {
    let files = meta.info.files.iter();
    shoal_engine::storage::Layout::with_pads(files.map(|f| {
        let path = match content {
            // The metainfo's paths start with the torrent name; the content replaces it.
            Some(content) => content_path(content, &f.path),
            None => folder.join(f.relative_path()),
        };
        // A pad file (BEP 47) keeps its place in the layout but never reaches the disk.
        (path, f.length, f.pad)
    }))
}

/// A torrent's own rate limiters (from its settings) and the chain its peers' streams pass
/// through: the session's, then the torrent's.
pub(crate) fn limits(
    settings: &TorrentSettings,
    ctx: &SessionContext,
) -> (Arc<Limiter>, Arc<Limiter>, crate::limit::Limits) {
    let down = Arc::new(Limiter::new(settings.download_limit));
    let up = Arc::new(Limiter::new(settings.upload_limit));
    let chain = crate::limit::Limits {
        down: vec![ctx.down_limit.clone(), down.clone()],
        up: vec![ctx.up_limit.clone(), up.clone()],
    };
    (down, up, chain)
}

/// What the session gives every torrent.
#[derive(Clone, Debug)]
pub(crate) struct SessionContext {
    /// Our peer id.
    pub peer_id: PeerId,
    /// The port we accept peers on.
    pub listen_port: u16,
    /// The session listens on a loopback address, so it never leaves the machine: trackers
    /// (and anything else a torrent names) are contacted only on this machine.
    pub local_only: bool,
    /// Where tasks run.
    pub spawner: Spawner,
    /// The session's hasher pool.
    pub hasher: Hasher,
    /// The session's disk threads.
    pub disk: Disk,
    /// The session's connection limit, shared by its torrents.
    pub slots: Arc<ConnectionSlots>,
    /// The session's download rate limit, shared by every peer of every torrent.
    pub down_limit: Arc<Limiter>,
    /// The session's upload rate limit, likewise.
    pub up_limit: Arc<Limiter>,
    /// The session's encryption policy, for dialling.
    pub encryption: crate::session::Encryption,
    /// The session's uTP socket, for dialling over uTP too.
    pub utp: Option<crate::utp::UtpEndpoint>,
}

/// Messages to a torrent.
pub(crate) enum TorrentMsg {
    /// An incoming connection whose handshake names this torrent (ours not yet sent).
    Incoming(Accepted),
    /// Peers to dial.
    AddPeers(Vec<SocketAddr>),
    /// The connected peers.
    Peers(ReplyTo<Vec<PeerInfo>>),
    /// How many of our pieces no connected peer has (see [`Torrent::sole_copies`]).
    SoleCopies(ReplyTo<u32>),
    /// The trackers' status (empty while the tracker client does not run).
    Trackers(ReplyTo<Vec<crate::tracker::TrackerStatus>>),
    /// Stop the peers and trackers, keep every piece.
    Pause(ReplyTo<()>),
    /// Start the peers and trackers again, without a recheck.
    Resume(ReplyTo<()>),
    /// A new file selection, one flag per file.
    SetWanted(Vec<bool>, ReplyTo<Result<()>>),
    /// Sequential mode on or off.
    SetSequential(bool),
    /// Pieces to fetch before any other, in order (streaming); `None` clears them.
    SetDeadline(Option<RangeInclusive<u32>>),
    /// Super-seeding on or off.
    SetSuperSeed(bool),
    /// Stop everything, flush, then answer.
    Shutdown(ReplyTo<()>),
}

impl fmt::Debug for TorrentMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incoming(a) => write!(f, "Incoming({})", a.addr()),
            Self::AddPeers(p) => write!(f, "AddPeers({})", p.len()),
            Self::Peers(_) => write!(f, "Peers"),
            Self::SoleCopies(_) => write!(f, "SoleCopies"),
            Self::Trackers(_) => write!(f, "Trackers"),
            Self::Pause(_) => write!(f, "Pause"),
            Self::Resume(_) => write!(f, "Resume"),
            Self::SetWanted(w, _) => write!(f, "SetWanted({} files)", w.len()),
            Self::SetSequential(on) => write!(f, "SetSequential({on})"),
            Self::SetDeadline(d) => write!(f, "SetDeadline({d:?})"),
            Self::SetSuperSeed(on) => write!(f, "SetSuperSeed({on})"),
            Self::Shutdown(_) => write!(f, "Shutdown"),
        }
    }
}

/// A connected peer, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its address.
    pub addr: SocketAddr,
    /// Payload bytes received from it.
    pub downloaded: u64,
    /// Payload bytes sent to it.
    pub uploaded: u64,
    /// Whether it has every piece.
    pub is_seed: bool,
    /// Payload bytes per second received from it, over the last few seconds.
    pub download_rate: u64,
    /// Payload bytes per second sent to it, over the last few seconds.
    pub upload_rate: u64,
    /// Whether the connection is RC4-encrypted (MSE/PE).
    pub encrypted: bool,
    /// TCP or uTP.
    pub transport: crate::utp::Transport,
    /// Pieces it has, as its bitfield and HAVEs say.
    pub pieces: u32,
    /// Its client name and version, from its extension handshake.
    pub client: Option<String>,
    /// For a web seed (BEP 19, transport `web`), its URL; `addr` is then only its name with the
    /// picker (see `webseed::seed_addr`). `None` for a peer.
    pub url: Option<String>,
}

/// Where a torrent's content is on disk.
#[derive(Debug)]
pub(crate) struct Place {
    /// Where each file of the torrent is.
    pub(crate) files: Vec<PathBuf>,
    /// The torrent's own content: its file, or its folder for a multi-file torrent.
    pub(crate) root: PathBuf,
}

impl Place {
    /// The place of `add`'s content.
    pub(crate) fn of(add: &AddTorrent) -> Self {
        Place {
            files: start::layout(add)
                .files()
                .iter()
                .map(|f| f.path.clone())
                .collect(),
            root: add
                .content
                .clone()
                .unwrap_or_else(|| add.folder.join(&add.metainfo.info.name)),
        }
    }
}

/// A handle to a running torrent.
#[derive(Clone)]
pub struct Torrent {
    /// The torrent's mailbox.
    addr: Addr<TorrentMsg>,
    /// Progress and events.
    shared: Arc<Shared>,
    /// The info hash.
    info_hash: InfoHash,
    /// A hybrid torrent's v2 info hash cut to 20 bytes: peers may name the torrent by it too.
    pub(crate) alias: Option<InfoHash>,
    /// Where the torrent's files are, once known (at once, or when a magnet's metadata
    /// arrives): for removal with its files.
    pub(crate) place: Arc<std::sync::OnceLock<Place>>,
    /// The fast-resume record, if kept.
    pub(crate) resume: Option<PathBuf>,
    /// This torrent's download rate limit, shared by its peers.
    pub(crate) down_limit: Arc<Limiter>,
    /// This torrent's upload rate limit, shared by its peers.
    pub(crate) up_limit: Arc<Limiter>,
}

impl fmt::Debug for Torrent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Torrent")
            .field("info_hash", &self.info_hash)
            .finish()
    }
}

impl Torrent {
    /// The torrent's info hash.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// Whether the pieces on disk at start were taken from the fast-resume record (trusted
    /// because no file changed size or modification time) rather than read and checked.
    pub fn resumed_from_record(&self) -> bool {
        self.shared.from_record()
    }

    /// How many verified pieces were on disk when the check ended (read and verified, or
    /// taken from the fast-resume record): unlike `progress().verified_pieces`, it does not
    /// grow as pieces arrive.
    pub fn found_at_start(&self) -> u32 {
        self.shared.found_at_start()
    }

    /// A snapshot of its progress.
    pub fn progress(&self) -> Progress {
        self.shared.progress()
    }

    /// The pieces verified and on disk (a copy).
    pub fn have(&self) -> shoal_engine::bitfield::Bitfield {
        self.shared.have()
    }

    /// Whether `piece` is verified and on disk.
    pub fn have_piece(&self, piece: u32) -> bool {
        self.shared.has_piece(piece)
    }

    /// Waits until `piece` is verified and on disk; `false` if the torrent stops first, or the
    /// piece is not one of the torrent's.
    pub async fn wait_piece(&self, piece: u32) -> bool {
        loop {
            let listener = self.shared.listen_pieces();
            if self.shared.has_piece(piece) {
                return true;
            }
            if self.shared.is_stopped() || piece >= self.shared.progress().total_pieces {
                return false;
            }
            listener.await;
        }
    }

    /// Subscribes to its events.
    pub fn subscribe(&self) -> Receiver<TorrentEvent> {
        self.shared.subscribe()
    }

    /// What the torrent is doing now.
    pub fn state(&self) -> TorrentState {
        self.shared.state()
    }

    /// Waits until the check of the files is over (at once when it is).
    pub async fn wait_checked(&self) -> Result<()> {
        self.shared.wait_checked().await;
        match self.shared.state() {
            TorrentState::Error => Err(Error::Failed(self.error().unwrap_or_default())),
            _ if self.shared.is_stopped() => Err(Error::Stopped),
            _ => Ok(()),
        }
    }

    /// Waits until every piece is verified and written, or the torrent stops (then the error,
    /// if one stopped it).
    pub async fn wait_complete(&self) -> Result<()> {
        self.shared.wait_finished().await;
        if self.shared.is_complete() {
            Ok(())
        } else {
            Err(self.shared.error().map_or(Error::Stopped, Error::Failed))
        }
    }

    /// Pauses: closes every peer connection, tells the trackers we stopped, keeps every
    /// piece. A paused torrent accepts and dials nobody until [`resume`](Self::resume).
    pub async fn pause(&self) -> Result<()> {
        self.addr
            .call(TorrentMsg::Pause)
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Resumes a paused torrent, without checking its files again.
    pub async fn resume(&self) -> Result<()> {
        self.addr
            .call(TorrentMsg::Resume)
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Chooses the files to download, one flag per file of the metainfo: pieces that lie only
    /// in skipped files are no longer requested; a file that becomes wanted is created (with
    /// the bytes the part file held for it) and its pieces fetched. A file already on disk stays
    /// when skipped. Answers once the files are in place.
    pub async fn set_wanted_files(&self, wanted: Vec<bool>) -> Result<()> {
        self.addr
            .call(|reply| TorrentMsg::SetWanted(wanted, reply))
            .await
            .map_err(|_| Error::Stopped)?
    }

    /// Sequential mode: new pieces lowest index first (for playing while downloading).
    pub async fn set_sequential(&self, on: bool) -> Result<()> {
        self.addr
            .send(TorrentMsg::SetSequential(on))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Super-seeding (BEP 16, see [`TorrentSettings::super_seed`]) on or off. Off: every peer
    /// is told every piece at once. On: only while we have every piece, and for the peers
    /// that connect from then on (those connected already know our pieces).
    pub async fn set_super_seed(&self, on: bool) -> Result<()> {
        self.addr
            .send(TorrentMsg::SetSuperSeed(on))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Whether the torrent super-seeds now (it may have ended by itself).
    pub fn is_super_seeding(&self) -> bool {
        self.shared.is_super_seeding()
    }

    /// Streaming: these pieces are fetched before any other, in order, from several peers at
    /// once when few are left; `None` clears them. A later call replaces an earlier one.
    pub async fn set_deadline(&self, pieces: Option<RangeInclusive<u32>>) -> Result<()> {
        self.addr
            .send(TorrentMsg::SetDeadline(pieces))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Sets this torrent's rate limits in bytes per second (0: none), at once for every peer.
    /// The session's limits apply too.
    pub fn set_limits(&self, download: u64, upload: u64) {
        self.down_limit.set_rate(download);
        self.up_limit.set_rate(upload);
    }

    /// This torrent's rate limits in bytes per second (download, upload; 0: none).
    pub fn limits(&self) -> (u64, u64) {
        (self.down_limit.rate(), self.up_limit.rate())
    }

    /// Where each file of the torrent is on disk.
    /// Empty while a magnet's metadata is being fetched.
    pub fn files(&self) -> &[PathBuf] {
        self.place.get().map_or(&[], |p| &p.files)
    }

    /// Whether the torrent has stopped (shut down, or stopped by a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.shared.is_stopped()
    }

    /// The last error that paused or stopped the torrent (a disk error, say).
    pub fn error(&self) -> Option<String> {
        self.shared.error()
    }

    /// Dials these peers.
    pub async fn add_peers(&self, peers: Vec<SocketAddr>) {
        let _ = self.addr.send(TorrentMsg::AddPeers(peers)).await;
    }

    /// Each tracker's last announce: when it answered, its error, its peer counts. Empty while
    /// the torrent has no tracker client running (no trackers, paused, not started yet).
    pub async fn trackers(&self) -> Vec<crate::tracker::TrackerStatus> {
        self.addr
            .call(TorrentMsg::Trackers)
            .await
            .unwrap_or_default()
    }

    /// The connected peers.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.addr.call(TorrentMsg::Peers).await.unwrap_or_default()
    }

    /// How many of our verified pieces none of the connected peers has (0 when no peer is
    /// connected). A download that leaves the swarm while this is above 0 takes the only copy
    /// those peers know of with it: `shoal download` waits a few seconds for it to reach 0
    /// before exiting (see DESIGN.md, "Leaving the swarm").
    pub async fn sole_copies(&self) -> u32 {
        self.addr.call(TorrentMsg::SoleCopies).await.unwrap_or(0)
    }

    /// Stops the torrent: tells the trackers, closes the peers, writes what is in flight and
    /// flushes the files.
    pub async fn shutdown(&self) {
        let _ = self.addr.call(TorrentMsg::Shutdown).await;
    }

    pub(crate) fn addr(&self) -> &Addr<TorrentMsg> {
        &self.addr
    }
}
