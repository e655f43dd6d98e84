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
use smol::net::{TcpListener, TcpStream};

use crate::buffers::BlockPool;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::hasher::Hasher;
use crate::peer::connect;
use crate::runtime::{Runtime, Spawner, Task, TrySendError};
use crate::torrent::{self, AddTorrent, SessionContext, Torrent, TorrentMsg};

/// Most incoming connections waiting for their handshake at once; more are closed at once.
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
        let accept = spawner.spawn(accept_loop(listener, torrents.clone(), spawner.clone()));
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
        let info_hash = add.metainfo.info_hash;
        let ctx = SessionContext {
            peer_id: self.peer_id,
            listen_port: self.local_addr.port(),
            spawner: self.spawner(),
            hasher: self.pools.hasher.clone(),
            disk: self.pools.disk.clone(),
            slots: self.slots.clone(),
        };
        // Checked and inserted under one lock: two adds of the same torrent cannot both start.
        let mut torrents = self.lock();
        if torrents.contains_key(&info_hash) {
            return Err(Error::AlreadyPresent(info_hash));
        }
        let torrent = torrent::start(add, ctx);
        torrents.insert(info_hash, torrent.clone());
        Ok(torrent)
    }

    /// Adds a torrent from a magnet link and returns at once, in
    /// [`TorrentState::Metadata`](crate::shared::TorrentState::Metadata) while it fetches the
    /// info dictionary from peers; then it checks its files and starts as any other. Refused
    /// with [`Error::AlreadyPresent`] when the torrent is in the session.
    pub fn start_magnet(&self, add: torrent::AddMagnet) -> Result<Torrent> {
        let info_hash = add.magnet.info_hash;
        let ctx = self.context();
        let mut torrents = self.lock();
        if torrents.contains_key(&info_hash) {
            return Err(Error::AlreadyPresent(info_hash));
        }
        let torrent = torrent::start_magnet(add, ctx);
        torrents.insert(info_hash, torrent.clone());
        Ok(torrent)
    }

    /// What every torrent of the session starts with.
    fn context(&self) -> SessionContext {
        SessionContext {
            peer_id: self.peer_id,
            listen_port: self.local_addr.port(),
            spawner: self.spawner(),
            hasher: self.pools.hasher.clone(),
            disk: self.pools.disk.clone(),
            slots: self.slots.clone(),
        }
    }

    /// Adds a torrent (see [`start_torrent`](Self::start_torrent)) and waits for the check of
    /// its files to end.
    pub async fn add_torrent(&self, add: AddTorrent) -> Result<Torrent> {
        let info_hash = add.metainfo.info_hash;
        let torrent = self.start_torrent(add)?;
        if let Err(e) = torrent.wait_checked().await {
            self.lock().remove(&info_hash);
            return Err(e);
        }
        Ok(torrent)
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
        let torrents: Vec<Torrent> = self.lock().drain().map(|(_, t)| t).collect();
        for t in torrents {
            t.shutdown().await;
        }
        if self.owns_pools {
            // Last: every torrent has flushed its files.
            self.pools.shutdown().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InfoHash, Torrent>> {
        self.torrents.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn accept_loop(listener: TcpListener, torrents: Registry, spawner: Spawner) {
    let pending = Arc::new(AtomicUsize::new(0));
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
        if pending.load(Ordering::Relaxed) >= MAX_PENDING_HANDSHAKES {
            log::debug!("too many pending handshakes; closing {addr}");
            continue;
        }
        pending.fetch_add(1, Ordering::Relaxed);
        let torrents = torrents.clone();
        let pending = pending.clone();
        spawner
            .spawn(async move {
                route_incoming(stream, addr, &torrents).await;
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
async fn route_incoming(stream: TcpStream, addr: SocketAddr, torrents: &Registry) {
    let accepted = match connect::accept(stream, addr).await {
        Ok(a) => a,
        Err(e) => {
            log::debug!("incoming {addr}: {e}");
            return;
        }
    };
    let remote = accepted.remote();
    let torrent = torrents
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&remote.info_hash)
        .cloned();
    let Some(torrent) = torrent else {
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
