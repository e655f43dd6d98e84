//! A torrent started from a magnet link: before it can check files or pick pieces it fetches
//! its info dictionary from peers (BEP 9), in state [`TorrentState::Metadata`].
//!
//! The torrent's task runs a small loop of its own first: it announces to the magnet's trackers,
//! dials the magnet's `x.pe` peers and those the trackers (or the user) give, and runs each
//! connection in *metadata mode*: the handshake, the extension handshake, and `ut_metadata`
//! messages only. The fetch itself is the engine's [`MetadataFetch`] (16 KiB pieces from
//! several peers, sizes bounded before allocation, blame and ban on a hash failure). Every other
//! message a peer sends meanwhile (its bitfield, HAVEs, its extension handshake) is kept, in
//! order, bounded by [`MAX_REPLAY`]. When the metadata checks out, it is saved as
//! `<metadata_dir>/<info hash>.torrent` (a restart reads it and skips the fetch), the shared
//! counters get their sizes, and the torrent starts as any other, adopting the connections it
//! has: each is handed to a normal peer whose first input is the kept messages, so no peer is
//! dropped.
//!
//! A v2-only magnet (`urn:btmh`, BEP 52) fetches the dictionary by the v2 hash cut to 20 bytes
//! and checks it against the whole SHA-256 (a hybrid magnet: against both hashes); the
//! dictionary has each file's root but not its piece layer, so the phase goes on, still in
//! metadata mode, asking the peers for the piece layers with hash requests
//! ([`HashPicker`]): each run of hashes is kept only when its proof leads to its file's root,
//! and a peer whose proof fails is banned. The torrent starts once every layer is here.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shoal_engine::extension::{OurHandshake, PeerExtensions, OUR_UT_METADATA_ID};
use shoal_engine::hash_picker::{Accepted, HashError, HashPicker};
use shoal_engine::magnet::{Magnet, MagnetPeer};
use shoal_engine::metadata::{
    MetadataFetch, MetadataMessage, Progress as FetchProgress, DEFAULT_MAX_METADATA_SIZE,
};
use shoal_engine::metainfo::Metainfo;
use shoal_engine::wire::{Handshake, HashRequest, Message};
use shoal_engine::InfoHash;

use super::start::{launch, layout, Carry};
use super::swarm::Swarm;
use super::{AddTorrent, SessionContext, Torrent, TorrentMsg, TorrentSettings, TORRENT_MAILBOX};
use crate::extension::CLIENT_VERSION;
use crate::peer::connect::{self, BoxStream, Start};
use crate::runtime::{mailbox, Mailbox};
use crate::shared::{Shared, TorrentEvent, TorrentState};
use crate::tracker::{TrackerClient, TrackerConfig, TransferStats};

/// Bytes of other messages (bitfield, HAVEs, the extension handshake) kept per connection
/// while the metadata is fetched, to be handed to the normal peer after. A bitfield of the
/// largest torrent we accept (32 MiB of metadata is 1.6 million pieces) is 200 KiB; 1 MiB
/// leaves room for HAVEs, and a peer that sends more is dropped.
pub const MAX_REPLAY: usize = 1024 * 1024;

/// Events from the connections to the fetch loop. Small: connections wait when it is full.
const CONN_EVENTS: usize = 64;

/// Orders to one connection: at most [`shoal_engine::metadata::MAX_REQUESTS_PER_PEER`]
/// requests plus a handover or stop are ever queued.
const CONN_COMMANDS: usize = 8;

/// How long adopting the connections may take once the metadata is here.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// How to add a torrent from a magnet link.
#[derive(Clone, Debug)]
pub struct AddMagnet {
    /// The magnet link.
    pub magnet: Magnet,
    /// The download folder (as [`AddTorrent::folder`]).
    pub folder: PathBuf,
    /// Peers to dial at once, besides the magnet's `x.pe` ones.
    pub peers: Vec<SocketAddr>,
    /// Settings.
    pub settings: TorrentSettings,
    /// Where to keep the fast-resume record, as [`AddTorrent::resume`].
    pub resume: Option<PathBuf>,
    /// Start paused once the metadata is here (the metadata itself is fetched either way;
    /// [`Torrent::pause`] during the fetch stops it).
    pub paused: bool,
    /// Sequential mode once the metadata is here.
    pub sequential: bool,
    /// Where the fetched metadata is kept as `<info hash>.torrent` (and read back from on a
    /// restart); `None`: not kept.
    pub metadata_dir: Option<PathBuf>,
    /// The largest `metadata_size` accepted from a peer, refused before anything is allocated.
    pub max_metadata_size: usize,
}

impl AddMagnet {
    /// Download what `magnet` names into `folder`, with default settings.
    pub fn new(magnet: Magnet, folder: impl Into<PathBuf>) -> Self {
        Self {
            magnet,
            folder: folder.into(),
            peers: Vec::new(),
            settings: TorrentSettings::default(),
            resume: None,
            paused: false,
            sequential: false,
            metadata_dir: None,
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
        }
    }

    /// The torrent to start once `metainfo` is known.
    fn into_add(self, metainfo: Arc<Metainfo>, peers: Vec<SocketAddr>) -> AddTorrent {
        AddTorrent {
            peers,
            settings: self.settings,
            resume: self.resume,
            paused: self.paused,
            sequential: self.sequential,
            ..AddTorrent::download(metainfo, self.folder)
        }
    }

    /// Where the metadata is kept, if it is.
    fn saved_path(&self) -> Option<PathBuf> {
        self.metadata_dir
            .as_ref()
            .map(|d| d.join(format!("{}.torrent", self.magnet.info_hash)))
    }
}

impl AddTorrent {
    /// A torrent started from a magnet link, downloaded into `folder` (see [`AddMagnet`]).
    pub fn magnet(magnet: Magnet, folder: impl Into<PathBuf>) -> AddMagnet {
        AddMagnet::new(magnet, folder)
    }
}

/// Starts a torrent from a magnet link: the handle comes back at once, in
/// [`TorrentState::Metadata`] (counting 0 pieces until the metadata is here).
pub(crate) fn start_magnet(add: AddMagnet, ctx: SessionContext) -> Torrent {
    let shared = Arc::new(Shared::new_metadata());
    let (addr, inbox) = mailbox(TORRENT_MAILBOX);
    let place = Arc::new(std::sync::OnceLock::new());
    let (down_limit, up_limit, limits) = super::limits(&add.settings, &ctx);
    let torrent = Torrent {
        addr,
        shared: shared.clone(),
        info_hash: add.magnet.info_hash,
        alias: add
            .magnet
            .info_hash_v2
            .map(|h| InfoHash(h[..20].try_into().expect("20 of 32 bytes")))
            .filter(|h| *h != add.magnet.info_hash),
        place: place.clone(),
        resume: add.resume.clone(),
        down_limit,
        up_limit,
    };
    ctx.spawner
        .spawn(fetch_then_start(
            add,
            ctx.clone(),
            shared,
            inbox,
            place,
            limits,
        ))
        .detach();
    torrent
}

/// Reads the kept metadata, if there is a file for this info hash and it matches.
fn load_saved(path: &PathBuf, info_hash: &InfoHash) -> Option<Metainfo> {
    let bytes = std::fs::read(path).ok()?;
    let meta = Metainfo::from_bytes(&bytes).ok()?;
    // A v2 torrent kept without its piece layers is fetched again, layers and all.
    (meta.info_hash == *info_hash && meta.piece_hashes().is_some()).then_some(meta)
}

/// Writes the fetched metadata as a `.torrent` file (a temporary file renamed over).
fn save(path: &PathBuf, meta: &Metainfo) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("torrent.tmp");
    std::fs::write(&tmp, meta.to_bytes())?;
    std::fs::rename(&tmp, path)
}

/// The torrent's task: the metadata (kept or fetched), then the normal start.
async fn fetch_then_start(
    add: AddMagnet,
    ctx: SessionContext,
    shared: Arc<Shared>,
    mut inbox: Mailbox<TorrentMsg>,
    place: Arc<std::sync::OnceLock<super::Place>>,
    limits: crate::limit::Limits,
) {
    let saved = add.saved_path();
    let info_hash = add.magnet.info_hash;
    let kept = match saved.clone() {
        Some(p) => smol::unblock(move || load_saved(&p, &info_hash)).await,
        None => None,
    };
    let (meta, carry) = match kept {
        Some(meta) => {
            log::debug!("{info_hash}: metadata read from the state folder");
            (meta, Carry::default())
        }
        None => match Fetcher::new(&add, &ctx, &shared).run(&mut inbox).await {
            Some(done) => done,
            None => return,
        },
    };
    if let Some(path) = saved {
        let m = meta.clone();
        if let Err(e) = smol::unblock(move || save(&path, &m)).await {
            log::warn!("{info_hash}: could not keep the metadata: {e}");
        }
    }
    let meta = Arc::new(meta);
    shared.set_size(
        meta.info.lengths.num_pieces(),
        meta.info.lengths.total_length(),
    );
    shared.emit(TorrentEvent::MetadataReceived);
    let mut peers = add.peers.clone();
    peers.extend(magnet_addrs(&add.magnet));
    let torrent = add.into_add(meta, peers);
    let _ = place.set(super::Place::of(&torrent));
    let layout = layout(&torrent);
    launch(torrent, ctx, layout, shared, inbox, limits, carry).await;
}

/// The numeric `x.pe` peers of a magnet (host names are not resolved here).
fn magnet_addrs(m: &Magnet) -> Vec<SocketAddr> {
    m.peers
        .iter()
        .filter_map(|p| match p {
            MagnetPeer::Addr(a) => Some(*a),
            MagnetPeer::Host { .. } => None,
        })
        .collect()
}

/// A connection handed from the metadata phase to the normal torrent.
pub(crate) struct Handover {
    /// The remote address.
    pub(crate) addr: SocketAddr,
    /// The stream, whose first bytes are the messages kept during the fetch.
    pub(crate) stream: BoxStream,
    /// The remote handshake.
    pub(crate) remote: Handshake,
    /// Whether the stream is RC4-encrypted.
    pub(crate) encrypted: bool,
    /// TCP or uTP.
    pub(crate) transport: crate::utp::Transport,
}

/// What a metadata connection tells the fetch loop.
enum ConnEvent {
    /// Its extended handshake: its `metadata_size`, and whether it speaks `ut_metadata`.
    Extensions { size: Option<i64>, metadata: bool },
    /// A piece of the metadata.
    Data {
        piece: u32,
        total_size: i64,
        data: Vec<u8>,
    },
    /// It rejected a piece.
    Reject(u32),
    /// Hashes answering a hash request (BEP 52), 32 bytes each.
    Hashes { req: HashRequest, hashes: Vec<u8> },
    /// It refused a hash request.
    HashReject(HashRequest),
    /// The handshake is done.
    Connected,
    /// It ended.
    Closed { reason: String, connected: bool },
}

/// Orders to a metadata connection.
enum ConnCmd {
    /// Ask for this piece.
    Request(u32),
    /// Ask for these hashes (BEP 52).
    Hashes(HashRequest),
    /// End, handing the stream over (the task's result).
    Handover,
}

/// One metadata connection, as the fetch loop sees it.
struct Conn {
    /// Its address.
    addr: SocketAddr,
    /// Orders to it.
    cmds: Sender<ConnCmd>,
    /// Its task; its result is the connection to adopt.
    task: smol::Task<Option<Handover>>,
    /// Whether its handshake is done.
    connected: bool,
}

/// The metadata phase's state.
struct Fetcher {
    /// The magnet's tracker tiers.
    tiers: Vec<Vec<String>>,
    /// What the session gives.
    ctx: SessionContext,
    /// The torrent's settings.
    settings: TorrentSettings,
    /// The counters and events.
    shared: Arc<Shared>,
    /// The fetch.
    fetch: MetadataFetch<u32>,
    /// The addresses to dial, and bans.
    swarm: Swarm,
    /// The connections, by key.
    conns: HashMap<u32, Conn>,
    /// The next connection key.
    next: u32,
    /// Our extension handshake for metadata connections.
    ext: Vec<u8>,
    /// Where connections report.
    events_tx: Sender<(u32, ConnEvent)>,
    /// Their reports.
    events: Receiver<(u32, ConnEvent)>,
    /// Paused during the fetch (by [`Torrent::pause`]): no dialling.
    paused: bool,
    /// Set when paused or resumed during the fetch: overrides [`AddMagnet::paused`] at start.
    pause_override: Option<bool>,
    /// Whether the magnet is v2-only: our handshakes carry the v2 bit. A hybrid magnet's do
    /// not: the metadata is fetched by the v1 hash, not upgraded (a peer answering with the v2
    /// hash of the torrent it has, when the magnet's btmh is wrong, would otherwise be refused
    /// before the metadata could show that the magnet is wrong).
    v2: bool,
    /// A hybrid magnet's v2 hash cut to 20 bytes, which peers may answer with.
    also: Option<InfoHash>,
    /// Once the dictionary of a v2-only torrent is here: it, and the fetch of its piece layers.
    layers: Option<(Metainfo, HashPicker<u32>)>,
}

impl Fetcher {
    fn new(add: &AddMagnet, ctx: &SessionContext, shared: &Arc<Shared>) -> Self {
        let mut swarm = Swarm::new(ctx.listen_port);
        let now = Instant::now();
        swarm.add(add.peers.iter().copied(), now);
        swarm.add(magnet_addrs(&add.magnet), now);
        let (events_tx, events) = async_channel::bounded(CONN_EVENTS);
        let ext = OurHandshake {
            ut_metadata: Some(OUR_UT_METADATA_ID),
            ut_pex: None,
            metadata_size: None,
            listen_port: Some(ctx.listen_port),
            reqq: None,
            client: Some(CLIENT_VERSION),
            yourip: None,
        }
        .encode();
        Self {
            tiers: if add.settings.use_trackers {
                add.magnet.tiers()
            } else {
                Vec::new()
            },
            ctx: ctx.clone(),
            settings: add.settings.clone(),
            shared: shared.clone(),
            fetch: match add.magnet.info_hash_v2 {
                Some(v2) => MetadataFetch::new(add.magnet.info_hash, add.max_metadata_size)
                    .with_v2(v2, !add.magnet.is_v2_only()),
                None => MetadataFetch::new(add.magnet.info_hash, add.max_metadata_size),
            },
            swarm,
            conns: HashMap::new(),
            next: 0,
            ext,
            events_tx,
            events,
            paused: false,
            pause_override: None,
            v2: add.magnet.is_v2_only(),
            also: add
                .magnet
                .info_hash_v2
                .map(|h| InfoHash(h[..20].try_into().expect("20 of 32 bytes")))
                .filter(|h| *h != add.magnet.info_hash),
            layers: None,
        }
    }

    /// Runs until the metadata is here (then the metainfo and the connections to adopt), or the
    /// torrent is shut down (`None`, the shutdown answered).
    async fn run(mut self, inbox: &mut Mailbox<TorrentMsg>) -> Option<(Metainfo, Carry)> {
        let info_hash = self.fetch.info_hash();
        let (tracker_tx, tracker_rx) = async_channel::bounded(16);
        let _tracker = (!self.tiers.is_empty()).then(|| {
            TrackerClient::spawn_on(
                &self.ctx.spawner,
                TrackerConfig {
                    tiers: self.tiers.clone(),
                    info_hash,
                    peer_id: self.ctx.peer_id,
                    port: self.ctx.listen_port,
                    numwant: 50,
                    timing: Default::default(),
                    local_only: self.ctx.local_only,
                },
                Arc::new(TransferStats::default()),
                tracker_tx,
            )
        });
        enum Ev {
            Msg(Option<TorrentMsg>),
            Conn(u32, ConnEvent),
            Peers(Vec<SocketAddr>),
            Tick,
        }
        loop {
            self.dial();
            let layers_wake = self.layers.as_ref().and_then(|(_, p)| p.poll_timeout());
            let wake = self
                .fetch
                .poll_timeout()
                .into_iter()
                .chain(layers_wake)
                .min()
                .map_or(Duration::from_secs(1), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_secs(1));
            let ev = future::or(
                async { Ev::Msg(inbox.recv().await) },
                future::or(
                    async {
                        match self.events.recv().await {
                            Ok((k, e)) => Ev::Conn(k, e),
                            Err(_) => Ev::Tick,
                        }
                    },
                    future::or(
                        async {
                            match tracker_rx.recv().await {
                                Ok(p) => Ev::Peers(p),
                                Err(_) => future::pending().await,
                            }
                        },
                        async {
                            smol::Timer::after(wake).await;
                            Ev::Tick
                        },
                    ),
                ),
            )
            .await;
            let now = Instant::now();
            match ev {
                Ev::Msg(None) => {
                    self.stop_all();
                    self.shared.set_stopped();
                    return None;
                }
                Ev::Msg(Some(msg)) => match msg {
                    TorrentMsg::Shutdown(reply) => {
                        self.stop_all();
                        self.shared.set_stopped();
                        reply.send(());
                        return None;
                    }
                    TorrentMsg::AddPeers(p) => self.swarm.add(p, now),
                    TorrentMsg::Incoming(accepted) => {
                        let addr = accepted.addr();
                        if self
                            .swarm
                            .is_banned(&addr, Some(&accepted.remote().peer_id))
                            || self.conns.len() >= self.settings.max_peers
                            || !self.ctx.slots.try_take()
                        {
                            continue;
                        }
                        self.spawn(addr, Start::Accepted(accepted));
                    }
                    TorrentMsg::Peers(reply) => reply.send(Vec::new()),
                    TorrentMsg::SoleCopies(reply) => reply.send(0),
                    TorrentMsg::Trackers(reply) => reply.send(Vec::new()),
                    TorrentMsg::Pause(reply) => {
                        self.paused = true;
                        reply.send(());
                    }
                    TorrentMsg::Resume(reply) => {
                        self.paused = false;
                        reply.send(());
                    }
                    TorrentMsg::SetWanted(_, reply) => {
                        reply.send(Err(crate::error::Error::Failed(
                            "the files are not known before the metadata".into(),
                        )))
                    }
                    TorrentMsg::SetSequential(_)
                    | TorrentMsg::SetDeadline(_)
                    | TorrentMsg::SetSuperSeed(_) => {}
                },
                Ev::Peers(p) => self.swarm.add(p, now),
                Ev::Tick => {
                    self.fetch.handle_timeout(now);
                    if let Some((_, picker)) = &mut self.layers {
                        picker.handle_timeout(now);
                    }
                }
                Ev::Conn(key, e) => {
                    let done = match self.conn_event(key, e, now) {
                        Ok(Some(raw)) => {
                            match Metainfo::from_info_bytes(&raw, self.tiers.clone()) {
                                Ok(m) if m.piece_hashes().is_some() => Some(m),
                                Ok(m) => {
                                    // A v2 torrent: its piece layers come next.
                                    let pl = u64::from(m.info.piece_length);
                                    let files: Vec<_> = m
                                        .info
                                        .files
                                        .iter()
                                        .filter(|f| !f.pad)
                                        .filter_map(|f| f.pieces_root.map(|r| (r, f.length)))
                                        .collect();
                                    let picker = HashPicker::new(pl, files);
                                    log::info!(
                                        "{info_hash}: fetching the piece layers ({} runs of \
                                         hashes)",
                                        picker.progress().1
                                    );
                                    self.layers = Some((m, picker));
                                    None
                                }
                                Err(e) => {
                                    // The hash matched, so every peer agrees on these bytes:
                                    // the torrent itself is unusable.
                                    self.fail(format!("the torrent's metadata is invalid: {e}"));
                                    return None;
                                }
                            }
                        }
                        Ok(None) => self.layers_done(),
                        Err(what) => {
                            self.fail(what);
                            return None;
                        }
                    };
                    if let Some(meta) = done {
                        let handover = self.handover().await;
                        return Some((
                            meta,
                            Carry {
                                swarm: Some(self.swarm),
                                handover,
                                paused: self.pause_override,
                            },
                        ));
                    }
                }
            }
            self.request_all(now);
        }
    }

    /// Ends the torrent in error: the magnet cannot be fetched.
    fn fail(&mut self, what: String) {
        log::warn!("{what}");
        self.stop_all();
        self.shared.set_error(what);
        self.shared.set_state(TorrentState::Error);
        self.shared.set_stopped();
    }

    /// The metainfo with its piece layers, once the layer fetch of a v2 torrent is over.
    fn layers_done(&mut self) -> Option<Metainfo> {
        if !self.layers.as_ref().is_some_and(|(_, p)| p.is_done()) {
            return None;
        }
        let (meta, picker) = self.layers.take()?;
        let meta = meta.with_piece_layers(picker.layers());
        meta.piece_hashes().is_some().then_some(meta)
    }

    /// Handles one connection's event: the raw info dictionary once it is complete and good;
    /// an error when the magnet itself is wrong.
    fn conn_event(
        &mut self,
        key: u32,
        e: ConnEvent,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, String> {
        match e {
            ConnEvent::Hashes { req, hashes } => {
                let Some((_, picker)) = &mut self.layers else {
                    return Ok(None);
                };
                match picker.handle_hashes(key, &req, &hashes) {
                    Ok(Accepted::Stored | Accepted::Done | Accepted::Duplicate) => {}
                    Err(HashError::Unsolicited) => {}
                    Err(e) => {
                        log::warn!("{}: bad piece-layer hashes: {e}", self.addr_of(key));
                        self.ban(key, "sent hashes whose proof fails");
                    }
                }
            }
            ConnEvent::HashReject(req) => {
                if let Some((_, picker)) = &mut self.layers {
                    picker.handle_reject(key, &req);
                }
            }
            ConnEvent::Connected => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.connected = true;
                    self.shared.emit(TorrentEvent::PeerConnected(c.addr));
                }
            }
            ConnEvent::Extensions { size, metadata } => {
                if let (Some(size), true) = (size, metadata) {
                    if let Err(e) = self.fetch.add_peer(key, size) {
                        log::debug!("{}: no metadata from it: {e}", self.addr_of(key));
                    }
                }
            }
            ConnEvent::Reject(piece) => self.fetch.handle_reject(key, piece, now),
            ConnEvent::Data {
                piece,
                total_size,
                data,
            } => match self.fetch.handle_data(key, piece, total_size, &data) {
                Ok(FetchProgress::Done(raw)) => return Ok(Some(raw)),
                Ok(FetchProgress::V2Mismatch) => {
                    return Err(format!(
                        "the metadata peers sent matches the magnet's v1 hash (urn:btih {}) but \
                         not its v2 hash (urn:btmh): the magnet is wrong",
                        self.fetch.info_hash()
                    ))
                }
                Ok(FetchProgress::HashMismatch { blamed, banned }) => {
                    log::warn!(
                        "metadata failed the hash check; sent by {} peers",
                        blamed.len()
                    );
                    if let Some(b) = banned {
                        self.ban(b, "sent bad metadata");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::debug!("{}: bad metadata piece: {e}", self.addr_of(key));
                    self.ban(key, "sent bad metadata");
                }
            },
            ConnEvent::Closed { reason, connected } => {
                self.fetch.remove_peer(key);
                if let Some((_, picker)) = &mut self.layers {
                    picker.remove_peer(key);
                }
                if let Some(c) = self.conns.remove(&key) {
                    self.ctx.slots.give_back(1);
                    if connected {
                        self.swarm.disconnected(c.addr, now, false);
                        self.shared.emit(TorrentEvent::PeerDisconnected {
                            addr: c.addr,
                            reason,
                        });
                    } else {
                        self.swarm.connect_failed(c.addr, now);
                        self.shared.emit(TorrentEvent::ConnectFailed {
                            addr: c.addr,
                            reason,
                        });
                    }
                }
            }
        }
        Ok(None)
    }

    fn addr_of(&self, key: u32) -> String {
        self.conns
            .get(&key)
            .map_or_else(|| "a closed peer".into(), |c| c.addr.to_string())
    }

    /// Bans a connection's address and closes it.
    fn ban(&mut self, key: u32, why: &str) {
        self.fetch.remove_peer(key);
        if let Some((_, picker)) = &mut self.layers {
            picker.remove_peer(key);
        }
        if let Some(c) = self.conns.remove(&key) {
            log::warn!("banned {}: {why}", c.addr);
            self.swarm.ban(c.addr, None);
            self.shared.emit(TorrentEvent::PeerBanned(c.addr));
            self.ctx.slots.give_back(1);
            // Dropping the task ends the connection.
            drop(c);
        }
    }

    /// Asks every connection for what the fetch wants of it: metadata pieces, then (a v2
    /// torrent) piece-layer hashes of connections whose handshake is done.
    fn request_all(&mut self, now: Instant) {
        for (&key, c) in &self.conns {
            while let Some(piece) = self.fetch.next_request(key, now) {
                if c.cmds.try_send(ConnCmd::Request(piece)).is_err() {
                    break;
                }
            }
            if let (Some((_, picker)), true) = (&mut self.layers, c.connected) {
                while let Some(req) = picker.next_request(key, now) {
                    if c.cmds.try_send(ConnCmd::Hashes(req)).is_err() {
                        // Asked of it again once the request times out.
                        break;
                    }
                }
            }
        }
    }

    /// Dials known addresses within the torrent's and the session's limits.
    fn dial(&mut self) {
        if self.paused {
            return;
        }
        let connecting = self.conns.values().filter(|c| !c.connected).count();
        let budget = self
            .settings
            .max_dialing
            .saturating_sub(connecting)
            .min(self.settings.max_peers.saturating_sub(self.conns.len()))
            .min(self.ctx.slots.free());
        let busy: std::collections::HashSet<SocketAddr> =
            self.conns.values().map(|c| c.addr).collect();
        for addr in self
            .swarm
            .to_dial(Instant::now(), budget, false, |a| busy.contains(a))
        {
            if !self.ctx.slots.try_take() {
                break;
            }
            self.spawn(addr, Start::Dial(addr));
        }
    }

    fn spawn(&mut self, addr: SocketAddr, start: Start) {
        let key = self.next;
        self.next = self.next.wrapping_add(1);
        let (cmds, cmds_rx) = async_channel::bounded(CONN_COMMANDS);
        let ours = Handshake::new(self.fetch.info_hash(), self.ctx.peer_id);
        let ours = if self.v2 { ours.with_v2() } else { ours };
        let task = self.ctx.spawner.spawn(metadata_conn(
            key,
            addr,
            start,
            (ours, self.also),
            (self.ctx.encryption, self.ctx.utp.clone()),
            self.ext.clone(),
            self.events_tx.clone(),
            cmds_rx,
        ));
        self.conns.insert(
            key,
            Conn {
                addr,
                cmds,
                task,
                connected: false,
            },
        );
    }

    /// Closes every connection.
    fn stop_all(&mut self) {
        let n = self.conns.len();
        self.conns.clear();
        self.ctx.slots.give_back(n);
    }

    /// Ends every connection's metadata mode and collects the streams to adopt; their
    /// session slots are given back (the torrent takes them again).
    async fn handover(&mut self) -> Vec<Handover> {
        let conns: Vec<Conn> = self.conns.drain().map(|(_, c)| c).collect();
        self.ctx.slots.give_back(conns.len());
        for c in &conns {
            let _ = c.cmds.try_send(ConnCmd::Handover);
        }
        // Connections blocked on a full event channel see it closed and hand over.
        self.events.close();
        let mut out = Vec::new();
        let deadline = Instant::now() + HANDOVER_TIMEOUT;
        for c in conns {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = future::or(c.task, async {
                smol::Timer::after(left).await;
                None
            })
            .await;
            out.extend(got);
        }
        out
    }
}

/// One connection in metadata mode; its result is the connection to adopt, when the fetch
/// loop asks for it.
async fn metadata_conn(
    key: u32,
    addr: SocketAddr,
    start: Start,
    (ours, also): (Handshake, Option<InfoHash>),
    (encryption, utp): (
        crate::peer::encrypt::Encryption,
        Option<crate::utp::UtpEndpoint>,
    ),
    ext: Vec<u8>,
    events: Sender<(u32, ConnEvent)>,
    cmds: Receiver<ConnCmd>,
) -> Option<Handover> {
    let established = connect::establish(start, ours, also, encryption, utp.as_ref()).await;
    let (stream, remote, encrypted, transport) = match established {
        Ok(e) => (e.stream, e.remote, e.encrypted, e.transport),
        Err(e) => {
            let _ = events
                .send((
                    key,
                    ConnEvent::Closed {
                        reason: format!("connect: {e}"),
                        connected: false,
                    },
                ))
                .await;
            return None;
        }
    };
    let _ = events.send((key, ConnEvent::Connected)).await;
    let mut conn = MetaConn {
        key,
        stream,
        events,
        their_id: None,
        input: Vec::new(),
        replay: Vec::new(),
    };
    match conn.run(&ext, &cmds, remote.supports_extended()).await {
        Ok(()) => {
            let mut head = conn.replay;
            head.extend_from_slice(&conn.input);
            Some(Handover {
                addr,
                stream: Box::new(Prefixed {
                    head,
                    at: 0,
                    inner: conn.stream,
                }),
                remote,
                encrypted,
                transport,
            })
        }
        Err(reason) => {
            // When the fetch loop is gone it asked for a handover, or shut down.
            if let Ok(ConnCmd::Handover) = cmds.try_recv() {
                let mut head = conn.replay;
                head.extend_from_slice(&conn.input);
                return Some(Handover {
                    addr,
                    stream: Box::new(Prefixed {
                        head,
                        at: 0,
                        inner: conn.stream,
                    }),
                    remote,
                    encrypted,
                    transport,
                });
            }
            let _ = conn
                .events
                .send((
                    key,
                    ConnEvent::Closed {
                        reason,
                        connected: true,
                    },
                ))
                .await;
            None
        }
    }
}

/// A connection in metadata mode.
struct MetaConn {
    /// Its key in the fetch loop.
    key: u32,
    /// The stream.
    stream: BoxStream,
    /// Where it reports.
    events: Sender<(u32, ConnEvent)>,
    /// The peer's id for `ut_metadata`.
    their_id: Option<u8>,
    /// Bytes read and not yet framed.
    input: Vec<u8>,
    /// Whole messages other than `ut_metadata` ones, kept for the normal peer.
    replay: Vec<u8>,
}

impl MetaConn {
    /// Exchanges extension handshakes and `ut_metadata` messages until told to hand over
    /// (`Ok`) or the connection fails (the reason).
    async fn run(
        &mut self,
        ext: &[u8],
        cmds: &Receiver<ConnCmd>,
        extended: bool,
    ) -> Result<(), String> {
        let mut out = Vec::new();
        if extended {
            Message::Extended {
                id: 0,
                payload: ext,
            }
            .encode(&mut out);
            self.stream
                .write_all(&out)
                .await
                .map_err(|e| format!("connection error: {e}"))?;
        }
        let mut buf = vec![0u8; 16 * 1024];
        enum W {
            Cmd(Option<ConnCmd>),
            Read(io::Result<usize>),
        }
        loop {
            let w = {
                let stream = &mut self.stream;
                let buf = &mut buf;
                future::or(async { W::Cmd(cmds.recv().await.ok()) }, async {
                    W::Read(stream.read(buf).await)
                })
                .await
            };
            match w {
                W::Cmd(None) => return Err("torrent closed the connection".into()),
                W::Cmd(Some(ConnCmd::Handover)) => return Ok(()),
                W::Cmd(Some(ConnCmd::Hashes(req))) => {
                    out.clear();
                    Message::HashRequest(req).encode(&mut out);
                    self.stream
                        .write_all(&out)
                        .await
                        .map_err(|e| format!("connection error: {e}"))?;
                }
                W::Cmd(Some(ConnCmd::Request(piece))) => {
                    let Some(id) = self.their_id else { continue };
                    let mut payload = Vec::new();
                    MetadataMessage::Request { piece }.encode(&mut payload);
                    out.clear();
                    Message::Extended {
                        id,
                        payload: &payload,
                    }
                    .encode(&mut out);
                    self.stream
                        .write_all(&out)
                        .await
                        .map_err(|e| format!("connection error: {e}"))?;
                }
                W::Read(Ok(0)) => return Err("connection closed by peer".into()),
                W::Read(Err(e)) => return Err(format!("connection error: {e}")),
                W::Read(Ok(n)) => {
                    self.input.extend_from_slice(&buf[..n]);
                    let (events, answers) = self.frames()?;
                    if !answers.is_empty() {
                        self.stream
                            .write_all(&answers)
                            .await
                            .map_err(|e| format!("connection error: {e}"))?;
                    }
                    for e in events {
                        if self.events.send((self.key, e)).await.is_err() {
                            return Err("torrent closed the connection".into());
                        }
                    }
                }
            }
        }
    }

    /// Takes the whole messages out of the input: events for the fetch loop, and the bytes of
    /// our answers (rejects: we have no metadata to serve yet).
    fn frames(&mut self) -> Result<(Vec<ConnEvent>, Vec<u8>), String> {
        let mut events = Vec::new();
        let mut answers = Vec::new();
        let mut at = 0;
        let max = shoal_engine::wire::DEFAULT_MAX_MESSAGE_LEN as usize;
        while self.input.len() - at >= 4 {
            let len =
                u32::from_be_bytes(self.input[at..at + 4].try_into().expect("4 bytes")) as usize;
            if len > max {
                return Err(format!("protocol error: a message of {len} bytes"));
            }
            let end = at + 4 + len;
            if self.input.len() < end {
                break;
            }
            let body = &self.input[at + 4..end];
            let metadata_msg = len >= 2 && body[0] == 20 && body[1] == OUR_UT_METADATA_ID;
            // Answers to our hash requests (BEP 52) go to the fetch loop, not to the replay;
            // requests to us are refused at once (we have no layer yet).
            let hash_msg = len >= 1 && (21..=23).contains(&body[0]);
            if hash_msg {
                match shoal_engine::wire::decode(&self.input[at..end], max as u32) {
                    Ok(shoal_engine::wire::Decoded::Message {
                        message: Message::Hashes { request, hashes },
                        ..
                    }) => events.push(ConnEvent::Hashes {
                        req: request,
                        hashes: hashes.to_vec(),
                    }),
                    Ok(shoal_engine::wire::Decoded::Message {
                        message: Message::HashReject(request),
                        ..
                    }) => events.push(ConnEvent::HashReject(request)),
                    Ok(shoal_engine::wire::Decoded::Message {
                        message: Message::HashRequest(request),
                        ..
                    }) => Message::HashReject(request).encode(&mut answers),
                    Ok(_) => {}
                    Err(e) => return Err(format!("protocol error: {e}")),
                }
            } else if metadata_msg {
                match MetadataMessage::parse(&body[2..]) {
                    Ok(MetadataMessage::Request { piece }) => {
                        if let Some(id) = self.their_id {
                            let mut payload = Vec::new();
                            MetadataMessage::Reject { piece }.encode(&mut payload);
                            Message::Extended {
                                id,
                                payload: &payload,
                            }
                            .encode(&mut answers);
                        }
                    }
                    Ok(MetadataMessage::Data {
                        piece,
                        total_size,
                        data,
                    }) => events.push(ConnEvent::Data {
                        piece,
                        total_size,
                        data: data.to_vec(),
                    }),
                    Ok(MetadataMessage::Reject { piece }) => events.push(ConnEvent::Reject(piece)),
                    Err(e) => log::debug!("ignoring a bad ut_metadata message: {e}"),
                }
            } else {
                if len >= 2 && body[0] == 20 && body[1] == 0 {
                    if let Some(x) = PeerExtensions::parse(&body[2..]) {
                        self.their_id = x.ut_metadata();
                        events.push(ConnEvent::Extensions {
                            size: x.metadata_size,
                            metadata: self.their_id.is_some(),
                        });
                    }
                }
                // Kept for the normal peer, the extension handshake too (it reads `reqq`
                // and the `m` map from it).
                if self.replay.len() + (end - at) > MAX_REPLAY {
                    return Err(format!(
                        "sent over {MAX_REPLAY} bytes of messages before the metadata"
                    ));
                }
                let (from, to) = (at, end);
                let bytes = self.input[from..to].to_vec();
                self.replay.extend_from_slice(&bytes);
            }
            at = end;
        }
        self.input.drain(..at);
        Ok((events, answers))
    }
}

/// A stream whose first bytes come from `head`: the messages kept during the metadata phase,
/// read again by the normal peer.
struct Prefixed {
    /// Bytes to read first.
    head: Vec<u8>,
    /// How many of them were read.
    at: usize,
    /// The connection.
    inner: BoxStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.len().min(this.head.len() - this.at);
            buf[..n].copy_from_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> MetaConn {
        let (events, _) = async_channel::bounded(1);
        MetaConn {
            key: 0,
            stream: Box::new(futures_lite::io::Cursor::new(Vec::new())),
            events,
            their_id: None,
            input: Vec::new(),
            replay: Vec::new(),
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn metadata_mode_keeps_other_messages_and_takes_ut_metadata_ones() {
        let mut c = conn();
        let bitfield = frame(&[5, 0xff, 0x80]);
        let mut hs = vec![20, 0];
        hs.extend_from_slice(b"d1:md11:ut_metadatai3ee13:metadata_sizei20000ee");
        let hs = frame(&hs);
        let mut data = vec![20, OUR_UT_METADATA_ID];
        data.extend_from_slice(b"d8:msg_typei1e5:piecei1e10:total_sizei20000ee");
        data.extend(std::iter::repeat_n(7u8, 20000 - 16384));
        let data = frame(&data);
        let request = frame(&[20, OUR_UT_METADATA_ID, b'd', b'8', b':']); // malformed: ignored
        let have = frame(&[4, 0, 0, 0, 3]);
        for msg in [&bitfield, &hs, &data, &request] {
            c.input.extend_from_slice(msg);
        }
        // Half of a HAVE: waits for the rest.
        c.input.extend_from_slice(&have[..3]);
        let (events, answers) = c.frames().unwrap();
        assert!(answers.is_empty());
        assert_eq!(c.their_id, Some(3));
        assert!(matches!(
            events[0],
            ConnEvent::Extensions {
                size: Some(20000),
                metadata: true
            }
        ));
        assert!(matches!(
            &events[1],
            ConnEvent::Data { piece: 1, total_size: 20000, data } if data.len() == 20000 - 16384
        ));
        assert_eq!(events.len(), 2);
        let mut kept = bitfield.clone();
        kept.extend_from_slice(&hs);
        assert_eq!(c.replay, kept);
        assert_eq!(c.input, &have[..3]);
        // A request while we have nothing is answered with a reject, under the peer's id.
        let mut req = vec![20, OUR_UT_METADATA_ID];
        req.extend_from_slice(b"d8:msg_typei0e5:piecei0ee");
        c.input.clear();
        c.input.extend_from_slice(&frame(&req));
        let (_, answers) = c.frames().unwrap();
        assert_eq!(&answers[4..6], &[20, 3]);
        assert!(answers.ends_with(b"d8:msg_typei2e5:piecei0ee"));
    }

    #[test]
    fn metadata_mode_takes_hash_answers_and_refuses_hash_requests() {
        let mut c = conn();
        let req = HashRequest {
            pieces_root: [9; 32],
            base_layer: 1,
            index: 0,
            length: 4,
            proof_layers: 1,
        };
        let mut input = Vec::new();
        Message::Hashes {
            request: req,
            hashes: &[1; 4 * 32],
        }
        .encode(&mut input);
        Message::HashReject(req).encode(&mut input);
        Message::HashRequest(req).encode(&mut input);
        c.input.extend_from_slice(&input);
        let (events, answers) = c.frames().unwrap();
        assert!(
            matches!(&events[0], ConnEvent::Hashes { req: r, hashes } if *r == req && hashes.len() == 128)
        );
        assert!(matches!(&events[1], ConnEvent::HashReject(r) if *r == req));
        assert_eq!(events.len(), 2);
        let mut reject = Vec::new();
        Message::HashReject(req).encode(&mut reject);
        assert_eq!(answers, reject);
        assert!(c.replay.is_empty(), "hash messages are not replayed");
        // Hashes that are not whole 32-byte hashes end the connection.
        c.input = vec![0, 0, 0, 50, 22];
        c.input.extend_from_slice(&[0; 49]);
        assert!(c.frames().is_err());
    }

    #[test]
    fn metadata_mode_bounds_what_it_keeps_and_the_message_length() {
        let mut c = conn();
        let have = frame(&[4, 0, 0, 0, 1]);
        for _ in 0..MAX_REPLAY / have.len() + 1 {
            c.input.extend_from_slice(&have);
        }
        assert!(c.frames().is_err());
        let mut c = conn();
        c.input.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(c.frames().is_err());
    }

    #[test]
    fn a_prefixed_stream_reads_the_kept_bytes_first() {
        smol::block_on(async {
            let inner: BoxStream = Box::new(futures_lite::io::Cursor::new(b"world".to_vec()));
            let mut s = Prefixed {
                head: b"hello ".to_vec(),
                at: 0,
                inner,
            };
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, "hello world");
        });
    }
}
