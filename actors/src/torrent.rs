//! The torrent actor: one per torrent. It opens the files, checks what is already there, starts
//! the disk threads, the hasher pool, the picker and the tracker client, and owns the peer
//! connections: dialling, accepting, choking, banning, and shutting it all down in order.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt, FutureExt};
use shoal_engine::bitfield::Bitfield;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::picker::PeerKey;
use shoal_engine::storage::Layout;
use shoal_engine::wire::{Handshake, HANDSHAKE_LEN};
use shoal_engine::{InfoHash, PeerId};
use smol::net::TcpStream;

use crate::buffers::BlockPool;
use crate::disk::{Disk, Mode, Storage, DISK_QUEUE};
use crate::hasher::{Hasher, HASH_QUEUE};
use crate::peer::{
    self, PeerControl, PeerExit, PeerSettings, PeerSetup, PeerStats, ServeFilter, PEER_CONTROL,
};
use crate::picker::{self, PickerMsg, PickerSetup, PICKER_MAILBOX};
use crate::runtime::{mailbox, Addr, Mailbox, Outcome, ReplyTo, Spawner, Supervisor};
use crate::shared::{Progress, Shared, TorrentEvent};
use crate::tracker::{TrackerClient, TrackerConfig, TransferStats};

/// Capacity of a torrent's mailbox.
pub const TORRENT_MAILBOX: usize = 128;

/// Capacity of the channel of peer addresses from the tracker client.
const TRACKER_PEERS: usize = 16;

/// How long a TCP connect plus handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the choker re-ranks peers; it also fills free slots every second.
const RECHOKE_EVERY: Duration = Duration::from_secs(10);

/// How often the optimistic unchoke moves to another peer.
const OPTIMISTIC_EVERY: Duration = Duration::from_secs(30);

/// How often the fast-resume record is saved while pieces keep arriving.
const RESUME_EVERY: Duration = Duration::from_secs(30);

/// The longest wait before dialling again an address that keeps failing.
const MAX_REDIAL_WAIT: Duration = Duration::from_secs(60);

/// The most addresses remembered for dialling; beyond it, those that failed most are dropped.
const MAX_KNOWN: usize = 2000;

/// Settings of one torrent.
#[derive(Clone, Debug)]
pub struct TorrentSettings {
    /// The fewest requests kept outstanding per peer; the queue grows with the peer's rate.
    pub queue_depth: usize,
    /// Most peer connections at once.
    pub max_peers: usize,
    /// Most outgoing connection attempts at once.
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
}

impl Default for TorrentSettings {
    fn default() -> Self {
        Self {
            queue_depth: 5,
            max_peers: 200,
            max_dialing: 32,
            upload_slots: 4,
            disk_budget: 64 * 1024 * 1024,
            hasher_threads: 0,
            use_trackers: true,
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
}

impl fmt::Debug for AddTorrent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddTorrent")
            .field("name", &self.metainfo.info.name)
            .field("folder", &self.folder)
            .field("mode", &self.mode)
            .field("peers", &self.peers)
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

/// What the session gives every torrent.
#[derive(Clone, Debug)]
pub(crate) struct SessionContext {
    /// Our peer id.
    pub peer_id: PeerId,
    /// The port we accept peers on.
    pub listen_port: u16,
    /// Where tasks run.
    pub spawner: Spawner,
    /// The session's hasher pool.
    pub hasher: Hasher,
    /// The session's disk threads.
    pub disk: Disk,
    /// The session's connection limit, shared by its torrents.
    pub slots: Arc<ConnectionSlots>,
}

/// The peer connections of a whole session against its limit, shared by its torrents, so that
/// many torrents together stay under the process's file descriptors.
#[derive(Debug)]
pub(crate) struct ConnectionSlots {
    /// The most connections at once.
    limit: usize,
    /// Connections open or being opened.
    used: AtomicUsize,
}

impl ConnectionSlots {
    /// Slots for `limit` connections.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes a slot if one is free.
    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .is_ok()
    }

    /// Gives `n` slots back.
    fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Slots free now.
    fn free(&self) -> usize {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }
}

/// Messages to a torrent.
pub(crate) enum TorrentMsg {
    /// An incoming connection whose handshake names this torrent.
    Incoming {
        /// The socket, our handshake not yet sent.
        stream: TcpStream,
        /// The remote address.
        addr: SocketAddr,
        /// The remote handshake.
        remote: Handshake,
    },
    /// Peers to dial.
    AddPeers(Vec<SocketAddr>),
    /// The connected peers.
    Peers(ReplyTo<Vec<PeerInfo>>),
    /// Stop everything, flush, then answer.
    Shutdown(ReplyTo<()>),
}

impl fmt::Debug for TorrentMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incoming { addr, .. } => write!(f, "Incoming({addr})"),
            Self::AddPeers(p) => write!(f, "AddPeers({})", p.len()),
            Self::Peers(_) => write!(f, "Peers"),
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
    /// Whether the pieces on disk at start were taken from the fast-resume record.
    from_record: bool,
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
        self.from_record
    }

    /// A snapshot of its progress.
    pub fn progress(&self) -> Progress {
        self.shared.progress()
    }

    /// Subscribes to its events.
    pub fn subscribe(&self) -> Receiver<TorrentEvent> {
        self.shared.subscribe()
    }

    /// Waits until every piece is verified and written, or the torrent stops (then the error,
    /// if one stopped it).
    pub async fn wait_complete(&self) -> Result<(), String> {
        self.shared.wait_finished().await;
        if self.shared.is_complete() {
            Ok(())
        } else {
            Err(self
                .shared
                .error()
                .unwrap_or_else(|| "torrent stopped".into()))
        }
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

    /// The connected peers.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.addr.call(TorrentMsg::Peers).await.unwrap_or_default()
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

/// Opens the files, checks them, and starts the torrent's actors. The check runs off the
/// executor, on every core.
pub(crate) async fn start(add: AddTorrent, ctx: SessionContext) -> Result<Torrent, String> {
    let meta = add.metainfo.clone();
    let lengths = meta.info.lengths;
    let layout = match &add.content {
        // The metainfo's paths start with the torrent name; the content replaces it.
        Some(content) => Layout::new(
            meta.info
                .files
                .iter()
                .map(|f| (content_path(content, &f.path), f.length)),
        ),
        None => Layout::new(
            meta.info
                .files
                .iter()
                .map(|f| (add.folder.join(f.relative_path()), f.length)),
        ),
    };
    // Paths in the layout are complete: the folder is already joined in.
    let folder = PathBuf::new();
    let mode = add.mode;
    let hashes = Arc::new(meta.info.pieces.clone());
    let threads = add.settings.hasher_threads;
    let check_hashes = hashes.clone();
    let files: Vec<PathBuf> = layout.files().iter().map(|f| f.path.clone()).collect();
    let resume = add
        .resume
        .clone()
        .filter(|_| mode == Mode::ReadWrite)
        .map(|r| (r, files));
    let record = resume.clone();
    let info_hash = meta.info_hash;
    let (storage, have, from_record) = smol::unblock(move || {
        let storage = Storage::open(&folder, layout, lengths, mode)?;
        let resumed = record.and_then(|(r, files)| {
            crate::resume::load(&r, &info_hash, lengths.num_pieces(), &files)
        });
        let from_record = resumed.is_some();
        let have = match resumed {
            Some(have) => have,
            None => storage.recheck(&check_hashes, threads, &|_| {}),
        };
        std::io::Result::Ok((storage, have, from_record))
    })
    .await
    .map_err(|e| e.to_string())?;
    let left: u64 = (0..lengths.num_pieces())
        .filter(|&p| !have.get(p))
        .map(|p| u64::from(lengths.piece_len(p)))
        .sum();
    let shared = Arc::new(Shared::new(lengths.num_pieces(), have.count_ones(), left));
    if mode == Mode::ReadOnly && !have.all() {
        // Said to the user by the caller, which knows what it will do about it.
        log::debug!(
            "{}: {} of {} pieces are missing or wrong in the data given",
            meta.info.name,
            lengths.num_pieces() - have.count_ones(),
            lengths.num_pieces()
        );
    }

    let storage = Arc::new(storage);
    let disk = ctx.disk.clone();
    let downloads = disk.blocks().clone();
    let hasher = ctx.hasher.clone();
    // Every piece in flight reports once: in the hasher's queue or threads, or in the disk's.
    // The pools are shared, so this bounds one torrent's pieces in flight too.
    let done_capacity = HASH_QUEUE + hasher.threads() + DISK_QUEUE + disk.threads().max(1) + 1;
    let (done_tx, done_rx) = async_channel::bounded(done_capacity);
    let (picker_addr, picker_inbox) = mailbox(PICKER_MAILBOX);
    let picker_task = ctx.spawner.spawn(picker::run(
        PickerSetup {
            lengths,
            have: have.clone(),
            hashes,
            disk_budget: add.settings.disk_budget,
            hasher,
            storage: storage.clone(),
            done_tx,
            done_rx,
            shared: shared.clone(),
            download: mode == Mode::ReadWrite,
        },
        picker_inbox,
    ));

    let (tracker_peers_tx, tracker_peers_rx) = async_channel::bounded(TRACKER_PEERS);
    let transfer = Arc::new(TransferStats::default());
    transfer.left.store(left, Ordering::Relaxed);
    let tiers = if add.settings.use_trackers {
        meta.tiers()
    } else {
        Vec::new()
    };
    let tracker = (!tiers.is_empty()).then(|| {
        TrackerClient::spawn(
            TrackerConfig {
                tiers,
                info_hash: meta.info_hash,
                peer_id: ctx.peer_id,
                port: ctx.listen_port,
                numwant: 50,
                timing: Default::default(),
            },
            transfer.clone(),
            tracker_peers_tx,
        )
    });

    let (addr, inbox) = mailbox(TORRENT_MAILBOX);
    let state = State {
        meta: meta.clone(),
        ctx: ctx.clone(),
        settings: add.settings.clone(),
        peer_settings: Arc::new(PeerSettings {
            queue_depth: add.settings.queue_depth,
            ..PeerSettings::default()
        }),
        shared: shared.clone(),
        initial_have: Arc::new(have),
        picker: picker_addr,
        picker_task: Some(picker_task),
        disk,
        storage,
        downloads,
        tracker,
        transfer,
        serve_filter: add.serve_filter.clone(),
        peers: Supervisor::new(ctx.spawner.clone()),
        entries: HashMap::new(),
        by_addr: HashMap::new(),
        next_key: 0,
        known: HashMap::new(),
        by_task: HashMap::new(),
        banned: BanList::default(),
        optimistic: None,
        last_rechoke: Instant::now(),
        last_optimistic: Instant::now(),
        announced_complete: shared.is_complete(),
        resume,
        saved_pieces: u32::MAX,
        last_save: Instant::now(),
    };
    let task = ctx.spawner.spawn(run(state, inbox, tracker_peers_rx));
    task.detach();
    let torrent = Torrent {
        addr,
        shared,
        info_hash: meta.info_hash,
        from_record,
    };
    if !add.peers.is_empty() {
        torrent.add_peers(add.peers).await;
    }
    Ok(torrent)
}

/// Who is banned: by IP address, except on loopback, where every local peer shares 127.0.0.1
/// (tests, several clients on one machine): there by address and port. Also by peer id, which
/// stops a banned peer that reconnects from a new port without changing its id.
#[derive(Debug, Default)]
struct BanList {
    /// Banned IP addresses.
    ips: HashSet<IpAddr>,
    /// Banned loopback addresses.
    addrs: HashSet<SocketAddr>,
    /// Banned peer ids.
    peer_ids: HashSet<PeerId>,
}

impl BanList {
    fn ban(&mut self, addr: SocketAddr, peer_id: Option<PeerId>) {
        if addr.ip().is_loopback() {
            self.addrs.insert(addr);
        } else {
            self.ips.insert(addr.ip());
        }
        if let Some(id) = peer_id {
            self.peer_ids.insert(id);
        }
    }

    fn is_banned(&self, addr: &SocketAddr, peer_id: Option<&PeerId>) -> bool {
        self.ips.contains(&addr.ip())
            || self.addrs.contains(addr)
            || peer_id.is_some_and(|id| self.peer_ids.contains(id))
    }
}

/// An address we may dial.
#[derive(Debug)]
struct Known {
    /// Connection attempts that failed in a row.
    failures: u32,
    /// Not before this.
    next_try: Instant,
    /// Whether it had every piece when we last saw it (seeds have no use for seeds).
    seed: bool,
}

/// One peer connection as the torrent sees it.
struct Entry {
    /// Its address.
    addr: SocketAddr,
    /// Orders to it.
    control: Sender<PeerControl>,
    /// Its counters.
    stats: Arc<PeerStats>,
    /// Whether we choke it.
    choked: bool,
    /// `stats.downloaded` and `stats.uploaded` at the last rechoke, for rates.
    last_down: u64,
    last_up: u64,
}

struct State {
    meta: Arc<Metainfo>,
    ctx: SessionContext,
    settings: TorrentSettings,
    peer_settings: Arc<PeerSettings>,
    shared: Arc<Shared>,
    initial_have: Arc<Bitfield>,
    picker: Addr<PickerMsg>,
    picker_task: Option<smol::Task<()>>,
    /// The session's disk threads.
    disk: Disk,
    /// This torrent's files.
    storage: Arc<Storage>,
    downloads: Arc<BlockPool>,
    tracker: Option<TrackerClient>,
    transfer: Arc<TransferStats>,
    serve_filter: Option<Arc<dyn ServeFilter>>,
    /// The peer tasks.
    peers: Supervisor<PeerExit>,
    /// Peers by key.
    entries: HashMap<PeerKey, Entry>,
    /// Keys by address (connecting or connected).
    by_addr: HashMap<SocketAddr, PeerKey>,
    next_key: u64,
    /// Addresses we may dial (from trackers and the user), and when.
    known: HashMap<SocketAddr, Known>,
    /// Peer keys by supervisor task key.
    by_task: HashMap<usize, PeerKey>,
    /// Peers banned for corrupt data or lies.
    banned: BanList,
    /// The peer holding the optimistic unchoke.
    optimistic: Option<PeerKey>,
    last_rechoke: Instant,
    last_optimistic: Instant,
    announced_complete: bool,
    /// The fast-resume record and the files it stamps.
    resume: Option<(PathBuf, Vec<PathBuf>)>,
    /// Verified pieces in the last record saved.
    saved_pieces: u32,
    /// When the record was last saved.
    last_save: Instant,
}

async fn run(
    mut st: State,
    mut inbox: Mailbox<TorrentMsg>,
    tracker_peers: Receiver<Vec<SocketAddr>>,
) {
    let mut tick = smol::Timer::interval(Duration::from_secs(1));
    let mut shutdown_reply = None;
    loop {
        enum Ev {
            Msg(Option<TorrentMsg>),
            Exit(crate::runtime::Exit<PeerExit>),
            TrackerPeers(Vec<SocketAddr>),
            Tick,
            Interest,
        }
        // Registered before the peers are looked at (fill_slots), so no interest is missed.
        let interest = st.shared.listen_interest();
        let ev = future::or(
            async { Ev::Msg(inbox.recv().await) },
            future::or(
                async { Ev::Exit(st.peers.next_exit().await) },
                future::or(
                    async {
                        match tracker_peers.recv().await {
                            Ok(p) => Ev::TrackerPeers(p),
                            Err(_) => future::pending().await,
                        }
                    },
                    future::or(
                        async {
                            futures_lite::StreamExt::next(&mut tick).await;
                            Ev::Tick
                        },
                        async {
                            interest.await;
                            Ev::Interest
                        },
                    ),
                ),
            ),
        )
        .await;
        match ev {
            Ev::Msg(None) => break,
            Ev::Msg(Some(TorrentMsg::Shutdown(reply))) => {
                shutdown_reply = Some(reply);
                break;
            }
            Ev::Msg(Some(TorrentMsg::Incoming {
                stream,
                addr,
                remote,
            })) => st.incoming(stream, addr, remote),
            Ev::Msg(Some(TorrentMsg::AddPeers(peers))) | Ev::TrackerPeers(peers) => {
                st.add_candidates(peers);
                st.dial();
            }
            Ev::Msg(Some(TorrentMsg::Peers(reply))) => reply.send(st.peer_infos()),
            Ev::Exit(exit) => st.peer_exited(exit).await,
            Ev::Tick => st.tick().await,
            Ev::Interest => st.fill_slots(),
        }
    }
    st.shutdown().await;
    if let Some(reply) = shutdown_reply {
        reply.send(());
    }
}

impl State {
    fn add_candidates(&mut self, peers: Vec<SocketAddr>) {
        let now = Instant::now();
        for p in peers {
            if p.port() == 0 || self.banned.is_banned(&p, None) {
                continue;
            }
            if (p.ip().is_loopback() || p.ip().is_unspecified()) && p.port() == self.ctx.listen_port
            {
                // Ourselves, as the tracker sees us.
                continue;
            }
            if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&p) {
                // Forget the address that failed most, if it failed at all.
                let worst = self
                    .known
                    .iter()
                    .max_by_key(|(_, k)| k.failures)
                    .map(|(a, k)| (*a, k.failures));
                match worst {
                    Some((a, f)) if f > 0 => {
                        self.known.remove(&a);
                    }
                    _ => continue,
                }
            }
            // A fresh mention (a tracker reply, the user) makes an address worth a try now.
            let k = self.known.entry(p).or_insert(Known {
                failures: 0,
                next_try: now,
                seed: false,
            });
            k.next_try = k
                .next_try
                .min(now + Duration::from_secs(u64::from(k.failures.min(3))));
        }
    }

    fn connections(&self) -> usize {
        self.entries.len()
    }

    /// Dials known addresses whose time has come, within the connection and dialling limits.
    fn dial(&mut self) {
        let connecting = self
            .entries
            .values()
            .filter(|e| !e.stats.connected.load(Ordering::Relaxed))
            .count();
        let budget = self
            .settings
            .max_dialing
            .saturating_sub(connecting)
            .min(self.settings.max_peers.saturating_sub(self.connections()))
            .min(self.ctx.slots.free());
        if budget == 0 {
            return;
        }
        let now = Instant::now();
        let complete = self.shared.is_complete();
        let mut ready: Vec<(u32, SocketAddr)> = self
            .known
            .iter()
            .filter(|(a, k)| {
                k.next_try <= now
                    && (!complete || !k.seed)
                    && !self.by_addr.contains_key(a)
                    && !self.banned.is_banned(a, None)
            })
            .map(|(a, k)| (k.failures, *a))
            .collect();
        ready.sort_unstable();
        for (_, addr) in ready.into_iter().take(budget) {
            if !self.ctx.slots.try_take() {
                break;
            }
            self.spawn_peer(addr, None);
        }
    }

    fn incoming(&mut self, stream: TcpStream, addr: SocketAddr, remote: Handshake) {
        if self.banned.is_banned(&addr, Some(&remote.peer_id))
            || self.connections() >= self.settings.max_peers
            || remote.peer_id == self.ctx.peer_id
        {
            log::debug!("refusing {addr}: banned, ourselves, or at the torrent's peer limit");
            return;
        }
        if !self.ctx.slots.try_take() {
            log::debug!("refusing {addr}: at the session's connection limit");
            return;
        }
        self.spawn_peer(addr, Some((stream, remote)));
    }

    fn spawn_peer(&mut self, addr: SocketAddr, incoming: Option<(TcpStream, Handshake)>) {
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        let (control_tx, control_rx) = async_channel::bounded(PEER_CONTROL);
        let stats = Arc::new(PeerStats::default());
        let ours = Handshake::new(self.meta.info_hash, self.ctx.peer_id);
        let info_hash = self.meta.info_hash;
        let our_id = self.ctx.peer_id;
        let setup = PeerSetup {
            key,
            addr,
            our_reserved: ours.reserved,
            listen_port: Some(self.ctx.listen_port),
            lengths: self.meta.info.lengths,
            initial_have: self.initial_have.clone(),
            picker: self.picker.clone(),
            disk: self.disk.jobs().clone(),
            storage: self.storage.clone(),
            shared: self.shared.clone(),
            pool: self.downloads.clone(),
            control: control_rx,
            stats: stats.clone(),
            settings: self.peer_settings.clone(),
            serve_filter: self.serve_filter.clone(),
        };
        let task = self.peers.spawn(async move {
            let connected = async {
                let (mut stream, remote) = match incoming {
                    Some((mut stream, remote)) => {
                        stream.write_all(&ours.to_bytes()).await?;
                        (stream, remote)
                    }
                    None => {
                        let mut stream = TcpStream::connect(addr).await?;
                        stream.set_nodelay(true)?;
                        stream.write_all(&ours.to_bytes()).await?;
                        let mut buf = [0u8; HANDSHAKE_LEN];
                        stream.read_exact(&mut buf).await?;
                        let remote = Handshake::decode(&buf)
                            .map_err(|e| {
                                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                            })?
                            .ok_or_else(|| {
                                std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
                            })?;
                        if remote.info_hash != info_hash {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "wrong info hash",
                            ));
                        }
                        if remote.peer_id == our_id {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "connected to ourselves",
                            ));
                        }
                        (stream, remote)
                    }
                };
                stream.flush().await?;
                Ok((stream, remote))
            }
            .or(async {
                smol::Timer::after(HANDSHAKE_TIMEOUT).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake timed out",
                ))
            })
            .await;
            match connected {
                Ok((stream, remote)) => peer::run(setup, stream, remote).await,
                Err(e) => PeerExit {
                    reason: format!("connect: {e}"),
                    ban: false,
                    peer_id: None,
                },
            }
        });
        self.by_addr.insert(addr, key);
        self.by_task.insert(task, key);
        self.entries.insert(
            key,
            Entry {
                addr,
                control: control_tx,
                stats,
                choked: true,
                last_down: 0,
                last_up: 0,
            },
        );
    }

    async fn peer_exited(&mut self, exit: crate::runtime::Exit<PeerExit>) {
        let Some(key) = self.by_task.remove(&exit.key) else {
            return;
        };
        let Some(entry) = self.entries.remove(&key) else {
            return;
        };
        self.ctx.slots.give_back(1);
        self.by_addr.remove(&entry.addr);
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
        let (reason, ban, peer_id) = match exit.outcome {
            Outcome::Finished(e) => (e.reason, e.ban, e.peer_id),
            Outcome::Panicked(msg) => {
                log::error!("peer {} task panicked: {msg}", entry.addr);
                // It could not tell the picker itself.
                let _ = self.picker.send(PickerMsg::Leave { peer: key }).await;
                (format!("internal error: {msg}"), false, None)
            }
        };
        let failed_to_connect = !entry.stats.connected.load(Ordering::Relaxed);
        if let Some(k) = self.known.get_mut(&entry.addr) {
            // Redial with exponential backoff while it fails; soon after a connection that
            // worked and dropped (a seeder that restarts, say).
            if failed_to_connect {
                k.failures = k.failures.saturating_add(1);
                let wait = Duration::from_secs(1u64 << k.failures.min(6)).min(MAX_REDIAL_WAIT);
                k.next_try = Instant::now() + wait;
            } else {
                k.failures = 0;
                k.next_try = Instant::now() + Duration::from_secs(2);
                k.seed = entry.stats.peer_is_seed.load(Ordering::Relaxed);
            }
        }
        if !failed_to_connect {
            self.shared.emit(TorrentEvent::PeerDisconnected {
                addr: entry.addr,
                reason: reason.clone(),
            });
        } else {
            self.shared.emit(TorrentEvent::ConnectFailed {
                addr: entry.addr,
                reason: reason.clone(),
            });
        }
        if ban {
            log::warn!("banned {}: {reason}", entry.addr);
            self.known.remove(&entry.addr);
            self.banned.ban(entry.addr, peer_id);
            self.shared.emit(TorrentEvent::PeerBanned(entry.addr));
        }
        self.dial();
    }

    async fn tick(&mut self) {
        // A lost tick is harmless: another comes in a second.
        let _ = self.picker.try_send(PickerMsg::Tick);
        let p = self.shared.progress();
        self.transfer.uploaded.store(p.uploaded, Ordering::Relaxed);
        self.transfer
            .downloaded
            .store(p.downloaded, Ordering::Relaxed);
        self.transfer.left.store(p.left, Ordering::Relaxed);
        if p.complete && !self.announced_complete {
            self.announced_complete = true;
            let storage = self.storage.clone();
            if let Err(e) = smol::unblock(move || storage.trim_to_length()).await {
                log::error!("{}: {e}", self.meta.info.name);
            }
            if let Some(t) = &self.tracker {
                t.completed().await;
            }
            // Seeds have no use for other seeds.
            for e in self.entries.values() {
                if e.stats.peer_is_seed.load(Ordering::Relaxed) {
                    let _ = e.control.try_send(PeerControl::Stop);
                }
            }
        }
        if self.last_save.elapsed() >= RESUME_EVERY && p.verified_pieces != self.saved_pieces {
            if let Ok(have) = self
                .picker
                .call(|reply| PickerMsg::Verified { reply })
                .await
            {
                self.save_resume(have).await;
            }
        }
        if self.last_rechoke.elapsed() >= RECHOKE_EVERY {
            self.rechoke();
        } else {
            self.fill_slots();
        }
        self.dial();
    }

    /// Unchokes interested peers while regular slots are free, between full rechokes, so a
    /// newcomer does not wait ten seconds for its first byte.
    fn fill_slots(&mut self) {
        let unchoked = self.entries.values().filter(|e| !e.choked).count();
        let mut free = (self.settings.upload_slots + 1).saturating_sub(unchoked);
        for e in self.entries.values_mut() {
            if free == 0 {
                break;
            }
            if e.choked
                && e.stats.peer_interested.load(Ordering::Relaxed)
                && e.control.try_send(PeerControl::Unchoke).is_ok()
            {
                e.choked = false;
                free -= 1;
            }
        }
    }

    /// Tit-for-tat: the interested peers that gave us the most (or, seeding, took the most)
    /// since the last round get the regular slots; one more gets the optimistic slot, which
    /// rotates every thirty seconds.
    fn rechoke(&mut self) {
        self.last_rechoke = Instant::now();
        let seeding = self.shared.is_complete();
        let mut ranked: Vec<(u64, PeerKey)> = Vec::new();
        for (&key, e) in self.entries.iter_mut() {
            let down = e.stats.downloaded.load(Ordering::Relaxed);
            let up = e.stats.uploaded.load(Ordering::Relaxed);
            let rate = if seeding {
                up - e.last_up.min(up)
            } else {
                down - e.last_down.min(down)
            };
            e.last_down = down;
            e.last_up = up;
            if e.stats.peer_interested.load(Ordering::Relaxed) {
                ranked.push((rate, key));
            }
        }
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut unchoke: HashSet<PeerKey> = ranked
            .iter()
            .take(self.settings.upload_slots)
            .map(|&(_, k)| k)
            .collect();
        let rotate = self.last_optimistic.elapsed() >= OPTIMISTIC_EVERY
            || self
                .optimistic
                .is_none_or(|k| !self.entries.contains_key(&k) || unchoke.contains(&k));
        if rotate {
            let rest: Vec<PeerKey> = ranked
                .iter()
                .map(|&(_, k)| k)
                .filter(|k| !unchoke.contains(k))
                .collect();
            self.optimistic = if rest.is_empty() {
                None
            } else {
                Some(rest[fastrand::usize(..rest.len())])
            };
            self.last_optimistic = Instant::now();
        }
        if let Some(k) = self.optimistic {
            unchoke.insert(k);
        }
        for (key, e) in self.entries.iter_mut() {
            let want_choked = !unchoke.contains(key);
            if want_choked != e.choked {
                let order = if want_choked {
                    PeerControl::Choke
                } else {
                    PeerControl::Unchoke
                };
                if e.control.try_send(order).is_ok() {
                    e.choked = want_choked;
                }
            }
        }
    }

    /// Flushes the files, then writes the fast-resume record for `have` (off the executor).
    async fn save_resume(&mut self, have: Bitfield) {
        if let Err(e) = self.disk.sync(&self.storage).await {
            log::error!("flushing {}: {e}", self.meta.info.name);
            return;
        }
        self.last_save = Instant::now();
        let Some((record, files)) = self.resume.clone() else {
            return;
        };
        let count = have.count_ones();
        let info_hash = self.meta.info_hash;
        let saved =
            smol::unblock(move || crate::resume::save(&record, &info_hash, &have, &files)).await;
        match saved {
            Ok(()) => self.saved_pieces = count,
            Err(e) => log::warn!(
                "cannot save the resume record of {}: {e}",
                self.meta.info.name
            ),
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        self.entries
            .values()
            .map(|e| PeerInfo {
                addr: e.addr,
                downloaded: e.stats.downloaded.load(Ordering::Relaxed),
                uploaded: e.stats.uploaded.load(Ordering::Relaxed),
                is_seed: e.stats.peer_is_seed.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Shuts down in order: trackers, peers, the picker (which waits for pieces in flight to be
    /// hashed and written), then the disk, which flushes last.
    async fn shutdown(&mut self) {
        if let Some(t) = self.tracker.take() {
            t.stop().await;
        }
        for e in self.entries.values() {
            let _ = e.control.try_send(PeerControl::Stop);
        }
        let peers_done = async {
            while !self.peers.is_empty() {
                let _ = self.peers.next_exit().await;
            }
        };
        peers_done
            .or(async {
                smol::Timer::after(Duration::from_secs(5)).await;
            })
            .await;
        // Peers that did not stop in time are cancelled.
        self.peers = Supervisor::new(self.ctx.spawner.clone());
        // Their exits were not handled one by one: give back every slot at once.
        self.ctx.slots.give_back(self.entries.len());
        self.entries.clear();
        let have = self
            .picker
            .call(|reply| PickerMsg::Shutdown { reply })
            .await;
        if let Some(t) = self.picker_task.take() {
            t.await;
        }
        if let Ok(have) = have {
            // Saving flushes the files first.
            self.save_resume(have).await;
        } else if let Err(e) = self.disk.sync(&self.storage).await {
            log::error!("flushing {}: {e}", self.meta.info.name);
        }
        self.shared.set_stopped();
    }
}
