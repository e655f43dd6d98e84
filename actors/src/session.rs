//! The session: owns the torrents, the listening socket, our peer id and the runtime.
//!
//! Incoming connections are accepted here; each gets a short task that reads the remote
//! handshake (bounded in time) and hands the connection to the torrent it names, or drops it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use shoal_actors::session::{Session, SessionSettings};
//! use shoal_actors::torrent::AddTorrent;
//! use shoal_engine::metainfo::Metainfo;
//!
//! let bytes = std::fs::read("some.torrent").unwrap();
//! let meta = Arc::new(Metainfo::from_bytes(&bytes).unwrap());
//! let session = Session::new(SessionSettings::default()).unwrap();
//! session.block_on(async {
//!     let torrent = session.add_torrent(AddTorrent::download(meta, "downloads")).await.unwrap();
//!     torrent.wait_complete().await.unwrap();
//!     session.shutdown().await;
//! });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_engine::{InfoHash, PeerId};
use smol::net::TcpListener;

use crate::buffers::BlockPool;
use crate::discovery::{Discovery, DiscoverySettings};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::hasher::Hasher;
use crate::limit::Limiter;
use crate::peer::connect::{self, Responder};
pub use crate::peer::encrypt::Encryption;
use crate::runtime::{Runtime, Spawner, Task, TrySendError};
use crate::torrent::{self, AddTorrent, SessionContext, Torrent, TorrentMsg};
use crate::utp::{Transport, UtpEndpoint};

/// The default of [`SessionSettings::max_half_open`]: a waiting handshake costs a task and a
/// socket, and 256 covers a burst of honest arrivals while bounding a flood.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Settings of a session.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Where to accept peers (port 0: any free port).
    pub listen: SocketAddr,
    /// Executor threads (0: one per core).
    pub threads: usize,
    /// Our peer id (`None`: a fresh random one).
    pub peer_id: Option<PeerId>,
    /// Threads that hash complete pieces (0: one per core), unless pools are given.
    pub hasher_threads: usize,
    /// Threads that read and write files, unless pools are given.
    pub disk_threads: usize,
    /// The most peer connections of all torrents together (each also has its own
    /// `max_peers`): keep it under the process's file descriptor limit.
    pub max_connections: usize,
    /// Run a DHT node (BEP 5) on UDP at the listen port, and find peers of public torrents
    /// through it.
    pub dht: bool,
    /// `HOST:PORT` (or `IP:PORT`) nodes to join the DHT through; empty: the well-known public
    /// routers, except on loopback, where only these are ever contacted.
    pub dht_bootstrap: Vec<String>,
    /// Local service discovery (BEP 14) on the listen address's network (never on loopback).
    pub lsd: bool,
    /// Peer exchange (BEP 11); carried for the peer-level wiring.
    pub pex: bool,
    /// Where the session keeps its state between runs (the DHT routing table); `None`: none
    /// is kept.
    pub state_dir: Option<std::path::PathBuf>,
    /// Most incoming connections waiting for their handshake at once (half-open); more are
    /// closed at once. Outgoing ones are bounded by each torrent's `max_dialing`.
    pub max_half_open: usize,
    /// Download rate limit of the whole session in bytes per second (0: none).
    pub download_limit: u64,
    /// Upload rate limit of the whole session in bytes per second (0: none).
    pub upload_limit: u64,
    /// Message stream encryption (MSE/PE) of peer connections, both ways.
    pub encryption: Encryption,
    /// Speak uTP too: a UDP socket on the listening port accepts uTP peers, and every dial
    /// tries uTP and TCP at once (the first to connect wins).
    pub utp: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 6881)),
            threads: 0,
            peer_id: None,
            hasher_threads: 0,
            disk_threads: 2,
            max_connections: 500,
            dht: true,
            dht_bootstrap: Vec::new(),
            lsd: true,
            pex: true,
            state_dir: None,
            max_half_open: MAX_PENDING_HANDSHAKES,
            download_limit: 0,
            upload_limit: 0,
            encryption: Encryption::default(),
            utp: true,
        }
    }
}

/// The torrents a session routes incoming connections to.
type Registry = Arc<Mutex<HashMap<InfoHash, Torrent>>>;

/// A running BitTorrent session.
pub struct Session {
    /// The executor threads when the session owns them; dropped last.
    runtime: Option<Runtime>,
    /// Where the session's tasks run.
    spawner: Spawner,
    /// The accept loop.
    accept: Mutex<Option<Task<()>>>,
    /// Torrents by info hash.
    torrents: Registry,
    /// Our peer id.
    peer_id: PeerId,
    /// The address we accept peers on.
    local_addr: SocketAddr,
    /// The hasher and disk threads.
    pools: Pools,
    /// Whether the session made `pools` (and so shuts them down).
    owns_pools: bool,
    /// The connection limit its torrents share.
    slots: Arc<ConnectionSlots>,
    /// The DHT node, LSD and their UDP socket.
    discovery: Discovery,
    /// The download rate limit every peer shares.
    down_limit: Arc<Limiter>,
    /// The upload rate limit every peer shares.
    up_limit: Arc<Limiter>,
    /// The encryption policy its torrents dial with.
    encryption: Encryption,
    /// The uTP socket, when the session speaks uTP.
    utp: Option<UtpEndpoint>,
    /// The uTP socket's driver and accept loop.
    utp_tasks: Mutex<Vec<Task<()>>>,
}

/// The threads that hash pieces and touch files, which every torrent of a session (or of
/// several sessions) shares.
#[derive(Clone, Debug)]
pub struct Pools {
    /// SHA-1 checking of complete pieces.
    pub hasher: Hasher,
    /// File reads and writes.
    pub disk: Disk,
}

impl Pools {
    /// Starts `hasher_threads` hashing threads (0: one per core) and `disk_threads` disk threads.
    pub fn new(hasher_threads: usize, disk_threads: usize) -> Self {
        let disk = Disk::spawn(disk_threads, BlockPool::new());
        let hasher = Hasher::spawn(hasher_threads, disk.jobs().clone());
        Self { hasher, disk }
    }

    /// Stops the threads once their queues are empty. Call it after the torrents have stopped.
    pub async fn shutdown(&self) {
        self.hasher.shutdown().await;
        self.disk.shutdown().await;
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local_addr", &self.local_addr)
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Session {
    /// Starts the runtime and listens for peers.
    pub fn new(settings: SessionSettings) -> std::io::Result<Self> {
        let runtime = Runtime::new(settings.threads);
        let spawner = runtime.handle();
        Self::start(settings, Some(runtime), spawner, None)
    }

    /// Starts a session on an existing runtime, so that many sessions (a bench's swarm, say)
    /// share one set of executor threads.
    pub fn with_spawner(settings: SessionSettings, spawner: Spawner) -> std::io::Result<Self> {
        Self::start(settings, None, spawner, None)
    }

    /// Starts a session on an existing runtime and existing hasher and disk pools, so that many
    /// sessions in one process share a fixed set of threads. The caller shuts the pools down
    /// after the sessions.
    pub fn with_pools(
        settings: SessionSettings,
        spawner: Spawner,
        pools: Pools,
    ) -> std::io::Result<Self> {
        Self::start(settings, None, spawner, Some(pools))
    }

    fn start(
        settings: SessionSettings,
        runtime: Option<Runtime>,
        spawner: Spawner,
        pools: Option<Pools>,
    ) -> std::io::Result<Self> {
        let owns_pools = pools.is_none();
        let pools =
            pools.unwrap_or_else(|| Pools::new(settings.hasher_threads, settings.disk_threads));
        let listener = bind(settings.listen)?;
        let local_addr = listener.local_addr()?;
        let listener = TcpListener::try_from(listener)?;
        let peer_id = settings.peer_id.unwrap_or_else(PeerId::generate);
        let torrents: Registry = Arc::default();
        let responder = Responder {
            encryption: settings.encryption,
            lookup: skey_lookup(torrents.clone()),
            slots: Arc::default(),
        };
        let pending = Arc::new(AtomicUsize::new(0));
        let mut utp_tasks = Vec::new();
        let utp = if settings.utp {
            match UtpEndpoint::bind(local_addr) {
                Ok(utp) => {
                    utp_tasks.push(spawner.spawn(utp.clone().run()));
                    utp_tasks.push(spawner.spawn(utp_accept_loop(
                        utp.clone(),
                        torrents.clone(),
                        responder.clone(),
                        pending.clone(),
                        spawner.clone(),
                    )));
                    Some(utp)
                }
                Err(e) => {
                    log::warn!("no utp: cannot bind udp {local_addr}: {e}");
                    None
                }
            }
        } else {
            None
        };
        let discovery = Discovery::start(
            &DiscoverySettings {
                dht: settings.dht,
                dht_bootstrap: settings.dht_bootstrap.clone(),
                lsd: settings.lsd,
                state_dir: settings.state_dir.clone(),
            },
            local_addr,
            &spawner,
            utp.as_ref(),
        );
        let accept = spawner.spawn(accept_loop(
            listener,
            torrents.clone(),
            responder,
            pending,
            spawner.clone(),
            settings.max_half_open.max(1),
        ));
        Ok(Self {
            runtime,
            spawner,
            accept: Mutex::new(Some(accept)),
            torrents,
            peer_id,
            local_addr,
            pools,
            owns_pools,
            slots: Arc::new(ConnectionSlots::new(settings.max_connections.max(1))),
            discovery,
            down_limit: Arc::new(Limiter::new(settings.download_limit)),
            up_limit: Arc::new(Limiter::new(settings.upload_limit)),
            encryption: settings.encryption,
            utp,
            utp_tasks: Mutex::new(utp_tasks),
        })
    }

    /// The address peers can reach us on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The executor, for spawning more tasks next to the session's.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Runs a future to completion on the calling thread (the session's actors keep running on
    /// their threads meanwhile).
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        match &self.runtime {
            Some(rt) => rt.block_on(fut),
            None => smol::block_on(fut),
        }
    }

    /// Adds a torrent and returns at once: the torrent is in [`TorrentState::Checking`] while
    /// it checks the data already in its folder (see [`Progress::checked_pieces`]), then starts.
    /// A torrent already in the session is refused with [`Error::AlreadyPresent`]: a second
    /// copy is never started.
    ///
    /// [`TorrentState::Checking`]: crate::shared::TorrentState::Checking
    /// [`Progress::checked_pieces`]: crate::shared::Progress::checked_pieces
    pub fn start_torrent(&self, add: AddTorrent) -> Result<Torrent> {
        if add.metainfo.piece_hashes().is_none() {
            // A v2-only torrent's pieces are checked against its piece layers; a `.torrent`
            // without them is refused (its magnet fetches them from peers, proved).
            return Err(Error::Failed(
                "this v2 torrent (BEP 52) has no piece layers: add it by its magnet link \
                 (urn:btmh), which fetches them from peers"
                    .into(),
            ));
        }
        let info_hash = add.metainfo.info_hash;
        let private = add.metainfo.info.private;
        self.insert(info_hash, private, |ctx| torrent::start(add, ctx))
    }

    /// Adds a torrent from a magnet link and returns at once, in
    /// [`TorrentState::Metadata`](crate::shared::TorrentState::Metadata) while it fetches the
    /// info dictionary from peers; then it checks its files and starts as any other. Refused
    /// with [`Error::AlreadyPresent`] when the torrent is in the session.
    pub fn start_magnet(&self, add: torrent::AddMagnet) -> Result<Torrent> {
        // A magnet says nothing of `private`: its peers come from the DHT too; once the
        // metadata is known, a private torrent's own trackers and peers are what it uses.
        let info_hash = add.magnet.info_hash;
        self.insert(info_hash, false, |ctx| torrent::start_magnet(add, ctx))
    }

    /// Starts a torrent with `start` and registers it, checked and inserted under one lock so
    /// that two adds of the same torrent cannot both start; then gives it to discovery.
    fn insert(
        &self,
        info_hash: InfoHash,
        private: bool,
        start: impl FnOnce(SessionContext) -> Torrent,
    ) -> Result<Torrent> {
        let ctx = self.context();
        let mut torrents = self.lock();
        if torrents.contains_key(&info_hash) {
            return Err(Error::AlreadyPresent(info_hash));
        }
        let torrent = start(ctx);
        torrents.insert(info_hash, torrent.clone());
        self.discovery.add_torrent(&torrent, private);
        Ok(torrent)
    }

    /// What every torrent of the session starts with.
    fn context(&self) -> SessionContext {
        SessionContext {
            peer_id: self.peer_id,
            listen_port: self.local_addr.port(),
            local_only: self.local_addr.ip().is_loopback(),
            spawner: self.spawner(),
            hasher: self.pools.hasher.clone(),
            disk: self.pools.disk.clone(),
            slots: self.slots.clone(),
            down_limit: self.down_limit.clone(),
            up_limit: self.up_limit.clone(),
            encryption: self.encryption,
            utp: self.utp.clone(),
        }
    }

    /// Adds a torrent (see [`start_torrent`](Self::start_torrent)) and waits for the check of
    /// its files to end.
    pub async fn add_torrent(&self, add: AddTorrent) -> Result<Torrent> {
        let info_hash = add.metainfo.info_hash;
        let torrent = self.start_torrent(add)?;
        if let Err(e) = torrent.wait_checked().await {
            self.lock().remove(&info_hash);
            self.discovery.remove_torrent(info_hash);
            return Err(e);
        }
        Ok(torrent)
    }

    /// Sets the session's rate limits in bytes per second (0: none), at once for every peer of
    /// every torrent.
    pub fn set_limits(&self, download: u64, upload: u64) {
        self.down_limit.set_rate(download);
        self.up_limit.set_rate(upload);
    }

    /// The session's rate limits in bytes per second (download, upload; 0: none).
    pub fn limits(&self) -> (u64, u64) {
        (self.down_limit.rate(), self.up_limit.rate())
    }

    /// The torrent with this info hash.
    pub fn torrent(&self, info_hash: &InfoHash) -> Option<Torrent> {
        self.lock().get(info_hash).cloned()
    }

    /// Every torrent of the session.
    pub fn torrents(&self) -> Vec<Torrent> {
        self.lock().values().cloned().collect()
    }

    /// Stops one torrent and forgets it; with `delete_files`, its files (and fast-resume
    /// record) are deleted too, and the folders the torrent made if they are left empty.
    pub async fn remove_torrent(&self, info_hash: &InfoHash, delete_files: bool) -> Result<()> {
        let torrent = self.lock().remove(info_hash);
        let Some(t) = torrent else {
            return Err(Error::UnknownTorrent(*info_hash));
        };
        self.discovery.remove_torrent(*info_hash);
        t.shutdown().await;
        if delete_files {
            let place = t.place.clone();
            let resume = t.resume.clone();
            smol::unblock(move || match place.get() {
                Some(p) => delete(&p.files, &p.root, resume.as_deref()),
                // A magnet removed before its metadata came: no file of it exists.
                None => resume.map_or(Ok(()), |r| match std::fs::remove_file(&r) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(Error::io(format!("deleting {}", r.display()), e))
                    }
                    _ => Ok(()),
                }),
            })
            .await?;
        }
        Ok(())
    }

    /// Stops accepting peers and shuts every torrent down in order (each flushes its files).
    pub async fn shutdown(&self) {
        let accept = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = accept {
            task.cancel().await;
        }
        self.discovery.shutdown().await;
        let utp_tasks =
            std::mem::take(&mut *self.utp_tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let torrents: Vec<Torrent> = self.lock().drain().map(|(_, t)| t).collect();
        for t in torrents {
            t.shutdown().await;
        }
        // After the torrents: their peers' uTP connections have closed.
        for task in utp_tasks {
            task.cancel().await;
        }
        if self.owns_pools {
            // Last: every torrent has flushed its files.
            self.pools.shutdown().await;
        }
    }

    /// The DHT node's counters: nodes in its routing table, peers stored for others, queries
    /// (`None` when the DHT is off).
    pub async fn dht_stats(&self) -> Option<crate::dht::DhtStats> {
        self.discovery.dht_stats().await
    }

    /// Runs one DHT `get_peers` lookup and waits for its end (`None`: the DHT is off or
    /// busy). Torrents look up their own peers; this is for the API, tests and benches.
    pub async fn dht_lookup(&self, info_hash: InfoHash) -> Option<crate::dht::LookupResult> {
        self.discovery.dht_lookup(info_hash).await
    }

    /// The address of the session's UDP socket (the DHT's), when it is open.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.discovery
            .udp_addr()
            .or_else(|| self.utp.as_ref().and_then(|u| u.local_addr().ok()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InfoHash, Torrent>> {
        self.torrents.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The MSE responder's lookup: the torrent of the registry whose `HASH('req2', info_hash)` the
/// peer sent. Computed over the registry (one SHA-1 per torrent) rather than kept in a second
/// map that adds and removes would have to keep in step; the number of MSE handshakes in
/// progress is bounded, and so is this work.
fn skey_lookup(torrents: Registry) -> crate::peer::encrypt::SkeyLookup {
    Arc::new(move |req2: &[u8; 20]| {
        torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|t| std::iter::once(t.info_hash()).chain(t.alias))
            .find(|h| shoal_engine::mse::req2_hash(h) == *req2)
    })
}

/// The torrent a peer names by `hash`: its info hash, or a hybrid torrent's v2 hash (BEP 52).
fn find_torrent(torrents: &Registry, hash: &InfoHash) -> Option<Torrent> {
    let torrents = torrents.lock().unwrap_or_else(|e| e.into_inner());
    torrents
        .get(hash)
        .or_else(|| torrents.values().find(|t| t.alias == Some(*hash)))
        .cloned()
}

/// Accepts uTP connections and routes each like a TCP one (the same bound on pending
/// handshakes).
async fn utp_accept_loop(
    utp: UtpEndpoint,
    torrents: Registry,
    responder: Responder,
    pending: Arc<AtomicUsize>,
    spawner: Spawner,
) {
    while let Ok((stream, addr)) = utp.accept().await {
        if pending.load(Ordering::Relaxed) >= MAX_PENDING_HANDSHAKES {
            log::debug!("too many pending handshakes; closing utp {addr}");
            continue;
        }
        pending.fetch_add(1, Ordering::Relaxed);
        let torrents = torrents.clone();
        let pending = pending.clone();
        let responder = responder.clone();
        spawner
            .spawn(async move {
                route_incoming(stream, addr, Transport::Utp, &torrents, &responder).await;
                pending.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
    }
}

async fn accept_loop(
    listener: TcpListener,
    torrents: Registry,
    responder: Responder,
    pending: Arc<AtomicUsize>,
    spawner: Spawner,
    max_half_open: usize,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                log::warn!("accept failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if pending.load(Ordering::Relaxed) >= max_half_open {
            log::debug!("too many pending handshakes; closing {addr}");
            continue;
        }
        pending.fetch_add(1, Ordering::Relaxed);
        let torrents = torrents.clone();
        let pending = pending.clone();
        let responder = responder.clone();
        spawner
            .spawn(async move {
                let _ = stream.set_nodelay(true);
                route_incoming(stream, addr, Transport::Tcp, &torrents, &responder).await;
                pending.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
    }
}

/// Ports tried after the one asked for when it is taken, as libtorrent does
/// (`max_retry_port_bind`): a second client on the machine still starts.
const PORT_RETRIES: u16 = 10;

/// Listens on `addr`; when its port (not 0) is taken, on one of the next [`PORT_RETRIES`].
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let first = std::net::TcpListener::bind(addr);
    match first {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            for port in (1..=PORT_RETRIES).filter_map(|i| addr.port().checked_add(i)) {
                if let Ok(l) = std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
                    log::info!("port {} is taken; listening on {port}", addr.port());
                    return Ok(l);
                }
            }
            Err(e)
        }
        other => other,
    }
}

/// Deletes a removed torrent's files and record, then the folders under `root` (the torrent's
/// own folder, for a multi-file torrent) that are left empty.
fn delete(
    files: &[std::path::PathBuf],
    root: &std::path::Path,
    resume: Option<&std::path::Path>,
) -> Result<()> {
    let mut folders = std::collections::BTreeSet::new();
    for f in files.iter().map(|f| f.as_path()).chain(resume) {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("deleting {}", f.display()), e)),
        }
        let mut dir = f.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(root)) {
            folders.insert(d.to_path_buf());
            dir = d.parent();
        }
    }
    // Deepest first; a folder that still holds anything (the user's own files, the download
    // folder itself with other torrents) stays.
    for d in folders.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    Ok(())
}

/// Reads an incoming handshake and hands the connection to its torrent.
async fn route_incoming<S: connect::PeerStream>(
    stream: S,
    addr: SocketAddr,
    transport: Transport,
    torrents: &Registry,
    responder: &Responder,
) {
    let accepted = match connect::accept(stream, addr, transport, responder).await {
        Ok(a) => a,
        Err(e) => {
            log::debug!("incoming {addr}: {e}");
            return;
        }
    };
    let remote = accepted.remote();
    let Some(torrent) = find_torrent(torrents, &remote.info_hash) else {
        log::debug!("incoming {addr}: unknown info hash {}", remote.info_hash);
        return;
    };
    match torrent.addr().try_send(TorrentMsg::Incoming(accepted)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => log::debug!("incoming {addr}: torrent is busy"),
        Err(TrySendError::Closed(_)) => {}
    }
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
    pub(crate) fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .is_ok()
    }

    /// Takes a slot even past the limit: for a newcomer admitted by evicting a connection that
    /// still holds its slot until it has closed (bounded by the torrent's evictions in
    /// progress, see `torrent::admission`).
    pub(crate) fn take_anyway(&self) {
        self.used.fetch_add(1, Ordering::AcqRel);
    }

    /// Connections open or being opened.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most connections at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Gives `n` slots back.
    pub(crate) fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Slots free now.
    pub(crate) fn free(&self) -> usize {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }
}
