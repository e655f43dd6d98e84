//! The torrent actor's run loop: peers joining (dialled or accepted) and leaving, the
//! one-second tick (choking, dialling, resume records), and the shutdown order.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::{future, FutureExt};
use shoal_engine::bitfield::Bitfield;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::picker::PeerKey;
use shoal_engine::rate::Rate;
use shoal_engine::wire::Handshake;

use super::admission::{self, Conn, MAX_EVICTING};
use super::choker::{Candidate, Choker};
use super::swarm::BanKey;
use super::swarm::Swarm;
use super::{PeerInfo, SessionContext, TorrentMsg, TorrentSettings};
use crate::buffers::BlockPool;
use crate::disk::{Disk, Storage};
use crate::limit::{Limits, Throttled};
use crate::peer::connect::{self, Accepted, Start};
use crate::peer::{
    self, PeerControl, PeerExit, PeerSettings, PeerSetup, PeerStats, ServeFilter, PEER_CONTROL,
};
use crate::picker::PickerMsg;
use crate::runtime::{Addr, Mailbox, Outcome, Supervisor};
use crate::shared::{Shared, TorrentEvent, TorrentState};
use crate::tracker::{TrackerClient, TrackerConfig, TransferStats};

/// How often the torrent looks at its peers, dials, rechokes and samples rates.
const TICK: Duration = Duration::from_secs(1);

/// How often an idle torrent (no peer, nothing left to fetch or paused) wakes: redials of
/// addresses that failed wait at most this long, new peers from trackers or the user are
/// dialled at once.
const IDLE_TICK: Duration = Duration::from_secs(30);

/// How often the fast-resume record is saved while pieces keep arriving.
const RESUME_EVERY: Duration = Duration::from_secs(30);

/// Where a peer connection comes from.
enum Origin {
    /// We dial it.
    Dial,
    /// It dialled us.
    Accepted(Accepted),
    /// Handed over from the metadata phase, handshakes done.
    Established(super::magnet::Handover),
}

/// One peer connection as the torrent sees it.
pub(super) struct Entry {
    /// Its address.
    addr: SocketAddr,
    /// Orders to it.
    control: Sender<PeerControl>,
    /// Its counters.
    stats: Arc<PeerStats>,
    /// Whether we dialled it (so its address is where it listens, worth telling others).
    dialled: bool,
    /// Whether we choke it.
    choked: bool,
    /// `stats.downloaded` at the last rechoke, for rates.
    last_down: u64,
    /// `stats.uploaded` at the last rechoke, for rates.
    last_up: u64,
    /// Its download rate, sampled every second.
    down_rate: Rate,
    /// Its upload rate, sampled every second.
    up_rate: Rate,
    /// When it was admitted (dialled or accepted).
    since: Instant,
    /// When a piece last went either way (seen at the one-second tick), if ever.
    last_piece: Option<Instant>,
    /// Payload bytes both ways at the last tick, to see pieces moving.
    seen_bytes: u64,
}

/// The torrent actor's state. Built by [`super::start`]; fields are set there.
pub(super) struct State {
    /// The torrent.
    pub(super) meta: Arc<Metainfo>,
    /// The trees of its piece layers, answering BEP 52 hash requests (v2 and hybrid torrents).
    pub(super) hash_trees: Option<Arc<shoal_engine::hash_picker::PieceTrees>>,
    /// What the session gives every torrent.
    pub(super) ctx: SessionContext,
    /// This torrent's settings.
    pub(super) settings: TorrentSettings,
    /// What every peer of this torrent starts with.
    pub(super) peer_settings: Arc<PeerSettings>,
    /// Progress and events, read by the handles.
    pub(super) shared: Arc<Shared>,
    /// Our pieces when the torrent started; a new peer reads later ones from the have-log.
    pub(super) initial_have: Arc<Bitfield>,
    /// The picker's mailbox.
    pub(super) picker: Addr<PickerMsg>,
    /// The picker's task, awaited at shutdown.
    pub(super) picker_task: Option<smol::Task<()>>,
    /// The session's disk threads.
    pub(super) disk: Disk,
    /// This torrent's files.
    pub(super) storage: Arc<Storage>,
    /// The block buffers of downloads.
    pub(super) downloads: Arc<BlockPool>,
    /// The tracker client, while the torrent runs and has trackers.
    pub(super) tracker: Option<TrackerClient>,
    /// How to start the tracker client again after a pause; `None`: no trackers.
    pub(super) tracker_config: Option<TrackerConfig>,
    /// Where tracker clients send the peers they learn (the run loop holds the receiver).
    pub(super) tracker_peers: Sender<Vec<SocketAddr>>,
    /// The totals the tracker client announces.
    pub(super) transfer: Arc<TransferStats>,
    /// Optional limit on what we serve.
    pub(super) serve_filter: Option<Arc<dyn ServeFilter>>,
    /// The peer tasks.
    pub(super) peers: Supervisor<PeerExit>,
    /// Peers by key.
    pub(super) entries: HashMap<PeerKey, Entry>,
    /// Keys by address (connecting or connected).
    pub(super) by_addr: HashMap<SocketAddr, PeerKey>,
    /// The key of the next peer.
    pub(super) next_key: u64,
    /// Peer keys by supervisor task key.
    pub(super) by_task: HashMap<usize, PeerKey>,
    /// Peers told to close to make room (see [`admission`]), until they exit.
    pub(super) evicting: HashSet<PeerKey>,
    /// The addresses we may dial, and bans.
    pub(super) swarm: Swarm,
    /// Who we upload to.
    pub(super) choker: Choker,
    /// The torrent's download rate, sampled every second.
    pub(super) down_rate: Rate,
    /// The torrent's upload rate, sampled every second.
    pub(super) up_rate: Rate,
    /// Whether the tracker was told we completed.
    pub(super) announced_complete: bool,
    /// Paused: no peers, no trackers.
    pub(super) paused: bool,
    /// Which files are wanted, one flag per file.
    pub(super) wanted: Vec<bool>,
    /// The rate limiters every peer's stream passes through: the session's, then ours.
    pub(super) limits: Limits,
    /// The fast-resume record and the files it stamps.
    pub(super) resume: Option<(PathBuf, Vec<PathBuf>)>,
    /// Verified pieces in the last record saved.
    pub(super) saved_pieces: u32,
    /// When the record was last saved.
    pub(super) last_save: Instant,
    /// The web seeds (BEP 19): fetched from while the torrent runs and is not complete.
    pub(super) web_seeds: crate::webseed::WebSeeds,
}

pub(super) async fn run(
    mut st: State,
    mut inbox: Mailbox<TorrentMsg>,
    tracker_peers: Receiver<Vec<SocketAddr>>,
) {
    // Once a second while anything moves; an idle torrent (no peers, nothing to fetch) sleeps
    // longer, so a server with many idle torrents stays quiet. Any event brings the next tick
    // back within a second.
    let mut tick_at = Instant::now() + TICK;
    let mut tick = smol::Timer::at(tick_at);
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
                            (&mut tick).await;
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
            Ev::Msg(Some(TorrentMsg::Incoming(accepted))) => st.incoming(accepted),
            Ev::Msg(Some(TorrentMsg::Pause(reply))) => {
                st.pause().await;
                reply.send(());
            }
            Ev::Msg(Some(TorrentMsg::Resume(reply))) => {
                st.resume_work();
                reply.send(());
            }
            Ev::Msg(Some(TorrentMsg::SetWanted(wanted, reply))) => {
                reply.send(st.set_wanted(wanted).await)
            }
            Ev::Msg(Some(TorrentMsg::SetSequential(on))) => {
                let _ = st.picker.send(PickerMsg::SetSequential { on }).await;
            }
            Ev::Msg(Some(TorrentMsg::SetSuperSeed(on))) => {
                let _ = st.picker.send(PickerMsg::SetSuperSeed { on }).await;
            }
            Ev::Msg(Some(TorrentMsg::SetDeadline(pieces))) => {
                let _ = st.picker.send(PickerMsg::SetDeadline { pieces }).await;
            }
            Ev::Msg(Some(TorrentMsg::AddPeers(peers))) | Ev::TrackerPeers(peers) => {
                st.add_candidates(peers);
                st.dial();
            }
            Ev::Msg(Some(TorrentMsg::Peers(reply))) => reply.send(st.peer_infos()),
            Ev::Msg(Some(TorrentMsg::SoleCopies(reply))) => {
                // The picker answers the caller itself: the torrent does not wait on it.
                let _ = st.picker.send(PickerMsg::SoleCopies { reply }).await;
            }
            Ev::Msg(Some(TorrentMsg::Trackers(reply))) => {
                reply.send(st.tracker.as_ref().map(|t| t.status()).unwrap_or_default())
            }
            Ev::Exit(exit) => st.peer_exited(exit).await,
            Ev::Tick => {
                st.tick().await;
                tick_at = Instant::now() + if st.is_idle() { IDLE_TICK } else { TICK };
                tick.set_at(tick_at);
                continue;
            }
            Ev::Interest => st.fill_slots(),
        }
        if tick_at > Instant::now() + TICK && !st.is_idle() {
            tick_at = Instant::now() + TICK;
            tick.set_at(tick_at);
        }
    }
    st.shutdown().await;
    if let Some(reply) = shutdown_reply {
        reply.send(());
    }
}

impl State {
    /// Starts (or restarts, after a pause) the trackers and the dialling.
    pub(super) fn resume_work(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.shared.set_state(if self.shared.is_complete() {
            TorrentState::Seeding
        } else {
            TorrentState::Downloading
        });
        if let Some(config) = &self.tracker_config {
            self.tracker = Some(TrackerClient::spawn_on(
                &self.ctx.spawner,
                config.clone(),
                self.transfer.clone(),
                self.tracker_peers.clone(),
            ));
        }
        self.dial();
        self.start_web_seeds();
    }

    /// Starts the web seeds not running (and not given up), unless paused or complete.
    fn start_web_seeds(&mut self) {
        if self.paused || self.shared.is_complete() {
            return;
        }
        self.web_seeds.start(crate::webseed::StartWith {
            spawner: &self.ctx.spawner,
            picker: &self.picker,
            pool: &self.downloads,
            shared: &self.shared,
            next_key: &mut self.next_key,
        });
    }

    /// A new file selection: newly wanted files are created (their bytes moved in from the
    /// part file), then the picker gets the pieces' new priorities.
    pub(super) async fn set_wanted(&mut self, wanted: Vec<bool>) -> crate::error::Result<()> {
        if wanted.len() != self.wanted.len() {
            return Err(crate::error::Error::Failed(format!(
                "{} flags for {} files",
                wanted.len(),
                self.wanted.len()
            )));
        }
        let newly: Vec<usize> = (0..wanted.len())
            .filter(|&i| wanted[i] && self.storage.is_skipped(i))
            .collect();
        let storage = self.storage.clone();
        smol::unblock(move || newly.iter().try_for_each(|&i| storage.want(i)))
            .await
            .map_err(|e| crate::error::Error::io("creating a file that became wanted", e))?;
        let priorities =
            super::start::piece_priorities(self.storage.layout(), self.meta.info.lengths, &wanted);
        self.wanted = wanted;
        let _ = self
            .picker
            .send(PickerMsg::SetPriorities { priorities })
            .await;
        Ok(())
    }

    /// Stops the trackers (announcing `stopped`) and every peer; keeps the pieces and saves
    /// the fast-resume record.
    async fn pause(&mut self) {
        if self.paused {
            return;
        }
        self.paused = true;
        self.shared.set_state(TorrentState::Paused);
        if let Some(t) = self.tracker.take() {
            t.stop().await;
        }
        for e in self.entries.values() {
            let _ = e.control.try_send(PeerControl::Stop);
        }
        self.web_seeds.stop().await;
        if let Ok(have) = self
            .picker
            .call(|reply| PickerMsg::Verified { reply })
            .await
        {
            self.save_resume(have).await;
        }
    }

    fn add_candidates(&mut self, peers: Vec<SocketAddr>) {
        self.swarm.add(peers, Instant::now());
    }

    fn connections(&self) -> usize {
        self.entries.len()
    }

    /// Dials known addresses whose time has come, within the connection and dialling limits.
    fn dial(&mut self) {
        if self.paused {
            return;
        }
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
        let complete = self.shared.is_complete();
        let by_addr = &self.by_addr;
        let ready = self.swarm.to_dial(Instant::now(), budget, complete, |a| {
            by_addr.contains_key(a)
        });
        for addr in ready {
            if !self.ctx.slots.try_take() {
                break;
            }
            self.spawn_peer(addr, Origin::Dial);
        }
    }

    fn incoming(&mut self, accepted: Accepted) {
        let (addr, remote) = (accepted.addr(), *accepted.remote());
        if self.paused
            || self.swarm.is_banned(&addr, Some(&remote.peer_id))
            || remote.peer_id == self.ctx.peer_id
        {
            log::debug!("refusing {addr}: banned, ourselves, or paused");
            return;
        }
        if self.connections_from(addr) >= self.settings.max_peers_per_ip {
            log::debug!("refusing {addr}: at the limit of connections from one address");
            return;
        }
        if !self.admit(addr) {
            return;
        }
        self.spawn_peer(addr, Origin::Accepted(accepted));
    }

    /// Takes a connection slot for a newcomer from `addr`, evicting the least useful
    /// connection when the torrent or the session is full (see [`admission`]); false (the
    /// newcomer is refused) when every connection is useful.
    fn admit(&mut self, addr: SocketAddr) -> bool {
        let open = self.connections() - self.evicting.len();
        if open < self.settings.max_peers && self.ctx.slots.try_take() {
            return true;
        }
        if self.evicting.len() >= MAX_EVICTING {
            log::debug!("refusing {addr}: at the connection limit, evictions in progress");
            return false;
        }
        let now = Instant::now();
        let conns = self.conns();
        let Some(victim) = admission::victim(&conns, now) else {
            log::debug!("refusing {addr}: at the connection limit and every peer is useful");
            return false;
        };
        self.evict(victim, "to make room");
        // The victim holds its slot until it has closed; the newcomer takes one on top, within
        // `MAX_EVICTING`.
        self.ctx.slots.take_anyway();
        true
    }

    /// What the admission policy needs to know of each connection.
    fn conns(&self) -> Vec<Conn> {
        self.entries
            .iter()
            .filter(|(k, _)| !self.evicting.contains(k))
            .map(|(&key, e)| Conn {
                key,
                connected: e.stats.connected.load(Ordering::Relaxed),
                since: e.since,
                spoke: e.stats.spoke.load(Ordering::Relaxed),
                interested: e.stats.peer_interested.load(Ordering::Relaxed),
                interesting: e.stats.we_interested.load(Ordering::Relaxed),
                last_piece: e.last_piece,
            })
            .collect()
    }

    /// Tells a peer to close to make room; it is forgotten when it exits.
    fn evict(&mut self, key: PeerKey, why: &str) {
        if let Some(e) = self.entries.get(&key) {
            log::debug!("closing {} {why}", e.addr);
            let _ = e.control.try_send(PeerControl::Evict);
            self.evicting.insert(key);
        }
    }

    /// Connections (open or being opened) with the same host as `addr` (see [`BanKey`]: on
    /// loopback every port is its own host).
    fn connections_from(&self, addr: SocketAddr) -> usize {
        let host = BanKey::of(addr);
        self.by_addr
            .keys()
            .filter(|a| BanKey::of(**a) == host)
            .count()
    }

    /// When connections are scarce, closes those silent since [`admission::SILENT_GRACE`].
    fn drop_silent_when_scarce(&mut self) {
        let open = self.connections() - self.evicting.len();
        let scarce = admission::scarce(open, self.settings.max_peers)
            || admission::scarce(self.ctx.slots.used(), self.ctx.slots.limit());
        if !scarce {
            return;
        }
        for key in admission::silent_too_long(&self.conns(), Instant::now()) {
            self.evict(key, "after a silence past the grace");
        }
    }

    /// Takes on a connection from the metadata phase (a torrent started from a magnet link):
    /// its handshakes are done, its stream replays what the peer sent meanwhile.
    pub(super) fn adopt(&mut self, h: super::magnet::Handover) {
        if self.by_addr.contains_key(&h.addr)
            || self.connections() >= self.settings.max_peers
            || !self.ctx.slots.try_take()
        {
            return;
        }
        self.spawn_peer(h.addr, Origin::Established(h));
    }

    fn spawn_peer(&mut self, addr: SocketAddr, origin: Origin) {
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        let (control_tx, control_rx) = async_channel::bounded(PEER_CONTROL);
        let stats = Arc::new(PeerStats::default());
        let (ours, also) = match &origin {
            Origin::Accepted(a) => answer_handshake(&self.meta, self.ctx.peer_id, a.remote()),
            _ => (
                our_handshake(&self.meta, self.ctx.peer_id),
                hybrid_v2_hash(&self.meta),
            ),
        };
        let setup = PeerSetup {
            key,
            addr,
            our_reserved: ours.reserved,
            listen_port: Some(self.ctx.listen_port),
            metainfo: self.meta.clone(),
            hash_trees: self.hash_trees.clone(),
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
            pex: (self.settings.pex && !self.meta.info.private).then(|| self.tracker_peers.clone()),
        };
        let limits = self.limits.clone();
        let encryption = self.ctx.encryption;
        let utp = self.ctx.utp.clone();
        let dialled = matches!(origin, Origin::Dial);
        let task = self.peers.spawn(async move {
            let utp = utp.as_ref();
            // Boxed: the dial's state (two transports racing, each through MSE) is large and
            // lives only until the connection is up, not in every peer task for its whole life.
            let established = match origin {
                Origin::Accepted(accepted) => {
                    Box::pin(connect::establish(
                        Start::Accepted(accepted),
                        ours,
                        also,
                        encryption,
                        utp,
                    ))
                    .await
                }
                Origin::Dial => {
                    Box::pin(connect::establish(
                        Start::Dial(addr),
                        ours,
                        also,
                        encryption,
                        utp,
                    ))
                    .await
                }
                Origin::Established(h) => Ok(connect::Established {
                    stream: h.stream,
                    remote: h.remote,
                    encrypted: h.encrypted,
                    transport: h.transport,
                }),
            };
            match established {
                Ok(e) => {
                    setup.stats.encrypted.store(e.encrypted, Ordering::Relaxed);
                    let utp = e.transport == crate::utp::Transport::Utp;
                    setup.stats.utp.store(utp, Ordering::Relaxed);
                    peer::run(setup, Throttled::new(e.stream, limits), e.remote).await
                }
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
                dialled,
                choked: true,
                last_down: 0,
                last_up: 0,
                down_rate: Rate::default(),
                up_rate: Rate::default(),
                since: Instant::now(),
                last_piece: None,
                seen_bytes: 0,
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
        self.evicting.remove(&key);
        if self.by_addr.get(&entry.addr) == Some(&key) {
            self.by_addr.remove(&entry.addr);
        }
        self.choker.peer_gone(key);
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
        if failed_to_connect {
            self.swarm.connect_failed(entry.addr, Instant::now());
        } else {
            // A peer we parted from as useless is skipped like a seed while we want no more.
            let seed = entry.stats.peer_is_seed.load(Ordering::Relaxed)
                || entry.stats.redundant.load(Ordering::Relaxed);
            self.swarm.disconnected(entry.addr, Instant::now(), seed);
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
            self.swarm.ban(entry.addr, peer_id);
            self.shared.emit(TorrentEvent::PeerBanned(entry.addr));
        }
        self.dial();
    }

    /// Whether nothing moves: no peer connected or connecting, and nothing to fetch (complete,
    /// or paused).
    fn is_idle(&self) -> bool {
        self.entries.is_empty()
            && !self.web_seeds.any_running()
            && (self.paused || self.shared.is_complete())
    }

    async fn tick(&mut self) {
        if !self.entries.is_empty() || self.web_seeds.any_running() {
            // A lost tick is harmless: another comes in a second.
            let _ = self.picker.try_send(PickerMsg::Tick);
        }
        self.web_seeds.tick();
        self.update_pex_view();
        let p = self.shared.progress();
        if self.entries.is_empty() {
            // Nothing moves, and ticks may come far apart: start the windows again.
            self.down_rate = Rate::default();
            self.up_rate = Rate::default();
        }
        self.down_rate.sample(p.downloaded);
        self.up_rate.sample(p.uploaded);
        self.shared
            .set_rates(self.down_rate.per_second(), self.up_rate.per_second());
        let now = Instant::now();
        for e in self.entries.values_mut() {
            let (down, up) = (
                e.stats.downloaded.load(Ordering::Relaxed),
                e.stats.uploaded.load(Ordering::Relaxed),
            );
            e.down_rate.sample(down);
            e.up_rate.sample(up);
            if down + up != e.seen_bytes {
                e.seen_bytes = down + up;
                e.last_piece = Some(now);
            }
        }
        self.drop_silent_when_scarce();
        self.transfer.uploaded.store(p.uploaded, Ordering::Relaxed);
        self.transfer
            .downloaded
            .store(p.downloaded, Ordering::Relaxed);
        self.transfer.left.store(p.left, Ordering::Relaxed);
        match self.shared.state() {
            TorrentState::Downloading if p.complete => self.shared.set_state(TorrentState::Seeding),
            // More files became wanted.
            TorrentState::Seeding if !p.complete => {
                self.shared.set_state(TorrentState::Downloading)
            }
            _ => {}
        }
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
            self.web_seeds.stop().await;
        } else if !p.complete {
            // More files became wanted, or a seed's task ended: (re)start what may run.
            self.start_web_seeds();
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
        if self.choker.due(Instant::now()) {
            self.rechoke();
        } else {
            self.fill_slots();
        }
        self.dial();
    }

    /// The peers others may hear of from us over PEX: those we dialled and are connected to
    /// (their address is where they listen), seeds flagged.
    fn update_pex_view(&mut self) {
        if !self.settings.pex || self.meta.info.private {
            return;
        }
        use shoal_engine::pex::{PexFlags, PexPeer};
        let view = self
            .entries
            .values()
            .filter(|e| e.dialled && e.stats.connected.load(Ordering::Relaxed))
            .map(|e| PexPeer {
                addr: e.addr,
                flags: if e.stats.peer_is_seed.load(Ordering::Relaxed) {
                    PexFlags::SEED
                } else {
                    PexFlags::default()
                },
            })
            .collect();
        self.shared.set_pex_view(view);
    }

    /// What the choker needs to know of each peer; with `measure`, the bytes since the last
    /// round become the rates and the counters move on.
    fn candidates(&mut self, measure: bool) -> Vec<Candidate> {
        let seeding = self.shared.is_complete();
        let mut out = Vec::with_capacity(self.entries.len());
        for (&key, e) in self.entries.iter_mut() {
            let mut rate = 0;
            if measure {
                let down = e.stats.downloaded.load(Ordering::Relaxed);
                let up = e.stats.uploaded.load(Ordering::Relaxed);
                rate = if seeding {
                    up - e.last_up.min(up)
                } else {
                    down - e.last_down.min(down)
                };
                e.last_down = down;
                e.last_up = up;
            }
            out.push(Candidate {
                key,
                interested: e.stats.peer_interested.load(Ordering::Relaxed),
                choked: e.choked,
                rate,
            });
        }
        out
    }

    /// Unchokes interested peers while slots are free, between full rounds.
    fn fill_slots(&mut self) {
        let candidates = self.candidates(false);
        let fill = if self.shared.is_super_seeding() {
            super_seed_unchokes(&candidates)
                .into_iter()
                .filter(|k| candidates.iter().any(|c| c.key == *k && c.choked))
                .collect()
        } else {
            self.choker.fill(&candidates)
        };
        for key in fill {
            if let Some(e) = self.entries.get_mut(&key) {
                if e.control.try_send(PeerControl::Unchoke).is_ok() {
                    e.choked = false;
                }
            }
        }
    }

    /// A full round of the choker (see [`Choker::rechoke`]).
    fn rechoke(&mut self) {
        let candidates = self.candidates(true);
        let unchoke: HashSet<PeerKey> = if self.shared.is_super_seeding() {
            super_seed_unchokes(&candidates)
        } else {
            self.choker
                .rechoke(Instant::now(), &candidates, |n| fastrand::usize(..n))
        };
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

    /// Flushes the files and writes the fast-resume record for `have`, both at once (the
    /// record off the executor); the record is renamed into place only once the flush has
    /// returned, so it never claims a piece whose bytes are not durable.
    async fn save_resume(&mut self, have: Bitfield) {
        let record = self.resume.clone();
        let count = have.count_ones();
        let info_hash = self.meta.info_hash;
        let prepare = async move {
            let (record, files) = record?;
            Some(
                smol::unblock(move || crate::resume::prepare(&record, &info_hash, &have, &files))
                    .await,
            )
        };
        let (synced, prepared) = future::zip(self.disk.sync(&self.storage), prepare).await;
        if let Err(e) = synced {
            log::error!("flushing {}: {e}", self.meta.info.name);
            if let Some(Ok(p)) = prepared {
                smol::unblock(move || p.discard()).await;
            }
            return;
        }
        self.last_save = Instant::now();
        let saved = match prepared {
            None => return,
            Some(Ok(p)) => smol::unblock(move || p.commit()).await,
            Some(Err(e)) => Err(e),
        };
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
                download_rate: e.down_rate.per_second(),
                upload_rate: e.up_rate.per_second(),
                encrypted: e.stats.encrypted.load(Ordering::Relaxed),
                transport: if e.stats.utp.load(Ordering::Relaxed) {
                    crate::utp::Transport::Utp
                } else {
                    crate::utp::Transport::Tcp
                },
                pieces: e.stats.pieces.load(Ordering::Relaxed),
                client: e.stats.client.get().cloned(),
                url: None,
            })
            .chain(self.web_seeds.infos())
            .collect()
    }

    /// Shuts down: the trackers' `stopped` announce runs alongside the rest, which goes in
    /// order: peers, the picker (which waits for pieces in flight to be hashed and written),
    /// then the flush of the files with the resume record written meanwhile.
    async fn shutdown(&mut self) {
        let tracker = self.tracker.take();
        let completed_unsaid = self.shared.is_complete() && !self.announced_complete;
        let trackers_done = async move {
            if let Some(t) = tracker {
                if completed_unsaid {
                    // Completed between two ticks: the trackers still count the download.
                    t.completed().await;
                }
                t.stop().await;
            }
        };
        let (_, ()) = future::zip(trackers_done, self.stop_peers_and_save()).await;
        self.shared.set_stopped();
    }

    /// The part of [`shutdown`](Self::shutdown) that is not the trackers'.
    async fn stop_peers_and_save(&mut self) {
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
        self.web_seeds.stop().await;
        // Their exits were not handled one by one: give back every slot at once.
        self.ctx.slots.give_back(self.entries.len());
        self.entries.clear();
        self.evicting.clear();
        let have = self
            .picker
            .call(|reply| PickerMsg::Shutdown { reply })
            .await;
        if let Some(t) = self.picker_task.take() {
            t.await;
        }
        if self.shared.is_complete() && !self.announced_complete {
            // Completed since the last tick: cut back what grew past the end, as the tick does.
            self.announced_complete = true;
            let storage = self.storage.clone();
            if let Err(e) = smol::unblock(move || storage.trim_to_length()).await {
                log::error!("{}: {e}", self.meta.info.name);
            }
        }
        if let Ok(have) = have {
            // Saving flushes the files too.
            self.save_resume(have).await;
        } else if let Err(e) = self.disk.sync(&self.storage).await {
            log::error!("flushing {}: {e}", self.meta.info.name);
        }
    }
}

/// While super-seeding (BEP 16) every interested peer is unchoked: each can take only the
/// pieces offered to it, so more slots cost no copy, while a choked peer would hold its offer
/// (a piece nobody else has) until the next round and stall the spread.
fn super_seed_unchokes(candidates: &[Candidate]) -> HashSet<PeerKey> {
    candidates
        .iter()
        .filter(|c| c.interested)
        .map(|c| c.key)
        .collect()
}

/// Our handshake for `meta`: with the v2 bit for a v2 or hybrid torrent (BEP 52), by which a
/// hybrid's peer dialled with the v1 hash may answer with the v2 one (the upgrade).
pub(crate) fn our_handshake(meta: &Metainfo, peer_id: shoal_engine::PeerId) -> Handshake {
    let h = Handshake::new(meta.info_hash, peer_id);
    if meta.info.version.has_v2() {
        h.with_v2()
    } else {
        h
    }
}

/// A hybrid torrent's v2 info hash cut to 20 bytes: the other hash its peers may name.
pub(crate) fn hybrid_v2_hash(meta: &Metainfo) -> Option<shoal_engine::InfoHash> {
    meta.info_hash_v2_truncated()
        .filter(|h| *h != meta.info_hash)
}

/// Our answer to a peer that dialled us: for a hybrid torrent, a peer that names the v2 hash,
/// or names the v1 hash with the v2 bit set, is answered with the v2 hash (the BEP 52 upgrade,
/// as libtorrent does); the other hash is accepted too.
fn answer_handshake(
    meta: &Metainfo,
    peer_id: shoal_engine::PeerId,
    remote: &Handshake,
) -> (Handshake, Option<shoal_engine::InfoHash>) {
    let mut ours = our_handshake(meta, peer_id);
    match hybrid_v2_hash(meta) {
        Some(v2) if remote.info_hash == v2 || remote.supports_v2() => {
            log::debug!(
                "{}: a v2 peer of a hybrid torrent: answering with the v2 info hash",
                meta.info_hash
            );
            ours.info_hash = v2;
            (ours, Some(meta.info_hash))
        }
        also => (ours, also),
    }
}
