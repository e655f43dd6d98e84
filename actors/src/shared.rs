//! What a torrent's actors publish for everyone to read: progress counters, the log of verified
//! pieces that peers turn into HAVE messages, and events for subscribers.
//!
//! Counters are plain atomics; the have-log is append-only and read by each peer from its own
//! cursor, with an `event-listener` wake-up, so no HAVE is ever lost to a full mailbox and the
//! picker never waits on a slow peer.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use async_channel::Sender;
use event_listener::{Event, EventListener};
use shoal_engine::bitfield::Bitfield;

/// Something that happened to a torrent, for subscribers (progress displays, tests, embedders).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TorrentEvent {
    /// A piece verified and is on disk.
    PieceVerified(u32),
    /// A piece failed its hash check; these peers sent data for it.
    PieceFailed {
        /// The piece.
        piece: u32,
        /// The peers that sent its blocks.
        peers: Vec<SocketAddr>,
    },
    /// A peer connection finished its handshake.
    PeerConnected(SocketAddr),
    /// A peer connection ended.
    PeerDisconnected {
        /// The peer.
        addr: SocketAddr,
        /// Why, in words.
        reason: String,
    },
    /// A connection attempt failed before the handshake was done (refused, timed out, not a
    /// BitTorrent peer, the wrong torrent). The address is dialled again later.
    ConnectFailed {
        /// The address dialled.
        addr: SocketAddr,
        /// Why, in words.
        reason: String,
    },
    /// A peer was banned for sending corrupt data.
    PeerBanned(SocketAddr),
    /// The metadata of a torrent started from a magnet link arrived and checked out: the
    /// torrent now knows its files and checks them.
    MetadataReceived,
    /// Every piece is verified and on disk.
    Complete,
    /// Writing failed (disk full, permission denied): the download pauses.
    DiskError(String),
}

/// What a torrent is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TorrentState {
    /// Checking the data already on disk (or reading its fast-resume record).
    #[default]
    Checking,
    /// Fetching pieces.
    Downloading,
    /// Every piece is here; serving others.
    Seeding,
    /// Paused by the user: no peers, no trackers, every piece kept.
    Paused,
    /// Stopped by an error (see [`Progress::error`](Shared::error)); nothing moves.
    Error,
    /// Started from a magnet link: fetching the info dictionary from peers (BEP 9). Sizes are
    /// unknown until then: progress counts 0 pieces.
    Metadata,
}

impl TorrentState {
    /// The lowercase name used in displays and the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checking => "checking",
            Self::Downloading => "downloading",
            Self::Seeding => "seeding",
            Self::Paused => "paused",
            Self::Error => "error",
            Self::Metadata => "metadata",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Downloading,
            2 => Self::Seeding,
            3 => Self::Paused,
            4 => Self::Error,
            5 => Self::Metadata,
            _ => Self::Checking,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Checking => 0,
            Self::Downloading => 1,
            Self::Seeding => 2,
            Self::Paused => 3,
            Self::Error => 4,
            Self::Metadata => 5,
        }
    }
}

impl fmt::Display for TorrentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many events a subscriber may fall behind before further events are dropped for it.
pub const EVENT_QUEUE: usize = 1024;

/// The state a torrent's actors share.
pub struct Shared {
    /// Number of pieces in the torrent (0 until a magnet's metadata is here; set once).
    num_pieces: AtomicU32,
    /// Pieces verified and written, in the order they completed.
    have_log: Mutex<Vec<u32>>,
    /// Notified when `have_log` grows.
    have_grew: Event,
    /// Every piece verified and on disk, those found at start included (the have-log holds
    /// only the ones verified since), for displays and for streaming readers that wait for a
    /// piece. Written once per piece, so a lock of its own costs nothing on the hot path.
    have: Mutex<Bitfield>,
    /// Notified when a peer becomes interested, so the torrent can unchoke it into a free slot
    /// at once instead of on its next one-second tick.
    interest: Event,
    /// Pieces verified and on disk.
    verified: AtomicU32,
    /// Payload bytes received from peers (every block, good or not).
    downloaded: AtomicU64,
    /// Payload bytes sent to peers.
    uploaded: AtomicU64,
    /// Bytes thrown away: duplicates and pieces that failed.
    wasted: AtomicU64,
    /// Bytes still missing.
    left: AtomicU64,
    /// Connected peers.
    peers: AtomicU32,
    /// Set while every wanted piece is verified (every piece, unless files are skipped).
    complete: AtomicBool,
    /// What the torrent is doing ([`TorrentState`] as a byte), written by the torrent actor.
    state: AtomicU8,
    /// Pieces checked so far while [`TorrentState::Checking`].
    checked: AtomicU32,
    /// Whether the pieces on disk at start came from the fast-resume record, not a check.
    from_record: AtomicBool,
    /// Verified pieces found on disk (or in the record) when the check ended; unlike
    /// `verified`, it does not grow as pieces arrive.
    found_at_start: AtomicU32,
    /// Payload bytes per second received, measured by the torrent each second.
    download_rate: AtomicU64,
    /// Payload bytes per second sent, measured by the torrent each second.
    upload_rate: AtomicU64,
    /// Notified when the torrent completes, or stops.
    finished: Event,
    /// Set when the torrent stops (shutdown or fatal error).
    stopped: AtomicBool,
    /// The last fatal or pausing error, if any.
    error: Mutex<Option<String>>,
    /// Event subscribers.
    subscribers: Mutex<Vec<Sender<TorrentEvent>>>,
    /// The peers we are connected to that others may dial (their listen addresses, with PEX
    /// flags), rebuilt by the torrent each second and read by each peer when its PEX message
    /// is due (BEP 11). At most the torrent's `max_peers` entries.
    pex_view: Mutex<Arc<Vec<shoal_engine::pex::PexPeer>>>,
    /// Whether the torrent super-seeds (BEP 16): a peer that connects now is told none of our
    /// pieces, and is offered them one at a time by the picker. Set before the picker starts,
    /// cleared by the picker when super-seeding ends.
    super_seeding: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("progress", &self.progress())
            .finish()
    }
}

/// A snapshot of a torrent's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Pieces verified and on disk.
    pub verified_pieces: u32,
    /// Pieces in the torrent.
    pub total_pieces: u32,
    /// Bytes still missing, of the wanted files' pieces.
    pub left: u64,
    /// Payload bytes received.
    pub downloaded: u64,
    /// Payload bytes sent.
    pub uploaded: u64,
    /// Bytes thrown away (duplicates, failed pieces).
    pub wasted: u64,
    /// Connected peers.
    pub peers: u32,
    /// Whether every wanted piece is verified: every piece, unless files are skipped.
    pub complete: bool,
    /// What the torrent is doing.
    pub state: TorrentState,
    /// Pieces checked so far while checking.
    pub checked_pieces: u32,
    /// Payload bytes per second received, over the last few seconds.
    pub download_rate: u64,
    /// Payload bytes per second sent, over the last few seconds.
    pub upload_rate: u64,
}

impl Progress {
    /// Seconds until complete at the current download rate; `None` while nothing arrives
    /// (and `Some(0)` once complete).
    pub fn eta(&self) -> Option<u64> {
        match (self.left, self.download_rate) {
            (0, _) => Some(0),
            (_, 0) => None,
            (left, rate) => Some(left.div_ceil(rate)),
        }
    }
}

impl Shared {
    /// Fresh shared state for a torrent of `num_pieces` pieces, `left` bytes still missing.
    pub fn new(num_pieces: u32, verified: u32, left: u64) -> Self {
        Self {
            num_pieces: AtomicU32::new(num_pieces),
            have_log: Mutex::new(Vec::new()),
            have_grew: Event::new(),
            have: Mutex::new(Bitfield::new(num_pieces)),
            interest: Event::new(),
            verified: AtomicU32::new(verified),
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            wasted: AtomicU64::new(0),
            left: AtomicU64::new(left),
            peers: AtomicU32::new(0),
            complete: AtomicBool::new(verified == num_pieces),
            state: AtomicU8::new(TorrentState::Checking.to_u8()),
            checked: AtomicU32::new(0),
            from_record: AtomicBool::new(false),
            found_at_start: AtomicU32::new(0),
            download_rate: AtomicU64::new(0),
            upload_rate: AtomicU64::new(0),
            finished: Event::new(),
            stopped: AtomicBool::new(false),
            error: Mutex::new(None),
            subscribers: Mutex::new(Vec::new()),
            pex_view: Mutex::new(Arc::new(Vec::new())),
            super_seeding: AtomicBool::new(false),
        }
    }

    /// Fresh shared state for a torrent started from a magnet link: no pieces known yet, not
    /// complete, in [`TorrentState::Metadata`].
    pub fn new_metadata() -> Self {
        let s = Self::new(0, 0, 0);
        s.complete.store(false, Ordering::Release);
        s.state
            .store(TorrentState::Metadata.to_u8(), Ordering::Release);
        s
    }

    /// The metadata arrived: the torrent has `num_pieces` pieces of `total` bytes; it checks
    /// its files next.
    pub(crate) fn set_size(&self, num_pieces: u32, total: u64) {
        *self.have.lock().unwrap_or_else(|e| e.into_inner()) = Bitfield::new(num_pieces);
        self.num_pieces.store(num_pieces, Ordering::Release);
        self.left.store(total, Ordering::Relaxed);
        self.set_state(TorrentState::Checking);
    }

    /// The peers to tell others about (see `pex_view`).
    pub(crate) fn pex_view(&self) -> Arc<Vec<shoal_engine::pex::PexPeer>> {
        self.pex_view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the peers to tell others about; written by the torrent only.
    pub(crate) fn set_pex_view(&self, view: Vec<shoal_engine::pex::PexPeer>) {
        *self.pex_view.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
    }

    /// A snapshot of the counters.
    pub fn progress(&self) -> Progress {
        Progress {
            verified_pieces: self.verified.load(Ordering::Relaxed),
            total_pieces: self.num_pieces.load(Ordering::Acquire),
            left: self.left.load(Ordering::Relaxed),
            downloaded: self.downloaded.load(Ordering::Relaxed),
            uploaded: self.uploaded.load(Ordering::Relaxed),
            wasted: self.wasted.load(Ordering::Relaxed),
            peers: self.peers.load(Ordering::Relaxed),
            complete: self.complete.load(Ordering::Acquire),
            state: self.state(),
            checked_pieces: self.checked.load(Ordering::Relaxed),
            download_rate: self.download_rate.load(Ordering::Relaxed),
            upload_rate: self.upload_rate.load(Ordering::Relaxed),
        }
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// What the torrent is doing.
    pub fn state(&self) -> TorrentState {
        TorrentState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether the torrent has stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Waits until the torrent completes or stops.
    pub async fn wait_finished(&self) {
        loop {
            let listener = self.finished.listen();
            if self.is_complete() || self.is_stopped() {
                return;
            }
            listener.await;
        }
    }

    /// Waits until the check of the files is over, or the torrent stops.
    pub async fn wait_checked(&self) {
        loop {
            let listener = self.finished.listen();
            let waiting = matches!(
                self.state(),
                TorrentState::Checking | TorrentState::Metadata
            );
            if !waiting || self.is_stopped() {
                return;
            }
            listener.await;
        }
    }

    /// The error that stopped or paused the torrent, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Subscribes to events; events are dropped for a subscriber more than [`EVENT_QUEUE`]
    /// behind.
    pub fn subscribe(&self) -> async_channel::Receiver<TorrentEvent> {
        let (tx, rx) = async_channel::bounded(EVENT_QUEUE);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    pub(crate) fn emit(&self, event: TorrentEvent) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if subs.is_empty() {
            return;
        }
        subs.retain(|s| {
            !matches!(
                s.try_send(event.clone()),
                Err(async_channel::TrySendError::Closed(_))
            )
        });
    }

    /// Appends a verified piece to the have-log and wakes the peers. `wanted`: the piece
    /// counts toward what is left (it is not of skipped files only); `done`: every wanted
    /// piece is now verified.
    pub(crate) fn piece_verified(&self, piece: u32, len: u64, wanted: bool, done: bool) {
        self.have
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(piece);
        self.have_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(piece);
        if wanted {
            self.left.fetch_sub(
                len.min(self.left.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        self.verified.fetch_add(1, Ordering::AcqRel);
        self.have_grew.notify(usize::MAX);
        self.emit(TorrentEvent::PieceVerified(piece));
        self.set_complete(done);
    }

    /// Whether every wanted piece is verified (every piece, unless files are skipped). Going
    /// from not complete to complete emits [`TorrentEvent::Complete`] and wakes the waiters.
    pub(crate) fn set_complete(&self, done: bool) {
        let was = self.complete.swap(done, Ordering::AcqRel);
        if done && !was {
            self.emit(TorrentEvent::Complete);
            self.finished.notify(usize::MAX);
        }
    }

    /// Whether the torrent super-seeds now (BEP 16; see `shoal_engine::superseed`).
    pub fn is_super_seeding(&self) -> bool {
        self.super_seeding.load(Ordering::Acquire)
    }

    /// Super-seeding starts or ends for the peers that connect from now on.
    pub(crate) fn set_super_seeding(&self, on: bool) {
        self.super_seeding.store(on, Ordering::Release);
    }

    /// A copy of the pieces verified and on disk.
    pub fn have(&self) -> Bitfield {
        self.have.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `piece` is verified and on disk.
    pub fn has_piece(&self, piece: u32) -> bool {
        piece < self.num_pieces.load(Ordering::Acquire)
            && self
                .have
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(piece)
    }

    /// A listener notified whenever a piece is verified (and when the check ends). Register it,
    /// then look at [`has_piece`](Self::has_piece).
    pub fn listen_pieces(&self) -> EventListener {
        self.have_grew.listen()
    }

    /// Bytes of wanted pieces still missing (after the file selection changed).
    pub(crate) fn set_left(&self, left: u64) {
        self.left.store(left, Ordering::Relaxed);
    }

    /// Copies the have-log entries from `cursor` on into `out` and advances the cursor.
    pub(crate) fn new_haves(&self, cursor: &mut usize, out: &mut Vec<u32>) {
        let log = self.have_log.lock().unwrap_or_else(|e| e.into_inner());
        if *cursor < log.len() {
            out.extend_from_slice(&log[*cursor..]);
            *cursor = log.len();
        }
    }

    /// A peer became interested: wake the torrent so it can unchoke it into a free slot.
    pub(crate) fn peer_interested(&self) {
        self.interest.notify(usize::MAX);
    }

    /// A listener for peers becoming interested. Register it, then look at the peers.
    pub(crate) fn listen_interest(&self) -> EventListener {
        self.interest.listen()
    }

    /// A listener for have-log growth. Register it before reading the log.
    pub(crate) fn listen_haves(&self) -> EventListener {
        self.have_grew.listen()
    }

    pub(crate) fn add_downloaded(&self, n: u64) {
        self.downloaded.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_uploaded(&self, n: u64) {
        self.uploaded.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_wasted(&self, n: u64) {
        self.wasted.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn peer_count_add(&self, delta: i32) {
        if delta >= 0 {
            self.peers.fetch_add(delta as u32, Ordering::Relaxed);
        } else {
            self.peers.fetch_sub((-delta) as u32, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_error(&self, error: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub(crate) fn set_state(&self, state: TorrentState) {
        self.state.store(state.to_u8(), Ordering::Release);
        // Whoever waits for the check to end looks again.
        self.finished.notify(usize::MAX);
    }

    /// Verified pieces found on disk (or taken from the record) when the check ended.
    pub fn found_at_start(&self) -> u32 {
        self.found_at_start.load(Ordering::Relaxed)
    }

    /// Whether the pieces on disk at start came from the fast-resume record, not a check.
    pub fn from_record(&self) -> bool {
        self.from_record.load(Ordering::Relaxed)
    }

    pub(crate) fn set_from_record(&self, yes: bool) {
        self.from_record.store(yes, Ordering::Relaxed);
    }

    /// The rates the torrent measured this second.
    pub(crate) fn set_rates(&self, download: u64, upload: u64) {
        self.download_rate.store(download, Ordering::Relaxed);
        self.upload_rate.store(upload, Ordering::Relaxed);
    }

    /// Pieces checked so far, while checking.
    pub(crate) fn set_checked(&self, pieces: u32) {
        self.checked.store(pieces, Ordering::Relaxed);
    }

    /// The pieces found good by the check (or the fast-resume record), before
    /// [`checked`](Self::checked).
    pub(crate) fn set_initial_have(&self, have: &Bitfield) {
        let mut ours = self.have.lock().unwrap_or_else(|e| e.into_inner());
        if have.len() == ours.len() {
            for p in have.iter_ones() {
                ours.set(p);
            }
        }
        drop(ours);
        self.have_grew.notify(usize::MAX);
    }

    /// The check is over: `verified` pieces are good and `left` bytes are missing.
    pub(crate) fn checked(&self, verified: u32, left: u64) {
        self.found_at_start.store(verified, Ordering::Relaxed);
        self.verified.store(verified, Ordering::Release);
        self.left.store(left, Ordering::Relaxed);
        let num_pieces = self.num_pieces.load(Ordering::Acquire);
        self.checked.store(num_pieces, Ordering::Relaxed);
        if verified == num_pieces {
            self.complete.store(true, Ordering::Release);
            self.finished.notify(usize::MAX);
        }
    }

    pub(crate) fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
        self.finished.notify(usize::MAX);
        // Readers waiting for a piece look again, and see the torrent stopped.
        self.have_grew.notify(usize::MAX);
    }
}
