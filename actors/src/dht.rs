//! The DHT node of a session: an actor driving [`shoal_engine::dht::Dht`] with the real clock,
//! the OS's randomness and the session's UDP socket, and feeding the peers it finds to the
//! torrents.
//!
//! The engine does the protocol; this actor only moves bytes and time:
//! - KRPC datagrams arrive from the UDP task ([`crate::udp`]) on a bounded queue and go to
//!   `handle_packet`; everything `poll_transmit` gives goes to the UDP task's bounded outgoing
//!   queue (dropped when full: the engine's queries time out and are retried elsewhere);
//! - the actor sleeps until `poll_timeout` and calls `handle_timeout`;
//! - torrents are added and removed by the session ([`DhtNode::add_torrent`]). Each is
//!   announced on our TCP port at once (a `get_peers` lookup followed by `announce_peer`,
//!   which the engine repeats every 15 minutes), and looked up again every
//!   [`LOOKUP_EVERY`] while it downloads. Peers found go to the torrent's mailbox with
//!   `try_send` (a busy torrent loses them rather than stall the node).
//!
//! # Randomness
//! The node id, the token secret and the engine's seed come from the OS (`getrandom`): an
//! attacker who could predict our id could place nodes next to it and eclipse us, and one who
//! could predict the token secret could announce anyone into our store. `fastrand` is fast but
//! not a cryptographic generator, so it is only used inside the engine, seeded from here.
//!
//! # Bootstrap and the loopback rule
//! The node joins through the `--dht-bootstrap` nodes, or, when none is given, the well-known
//! public routers ([`PUBLIC_ROUTERS`]). A session listening on a loopback address contacts
//! nothing but the nodes it was given, and does no DNS lookup: a bootstrap node given as a host
//! name is skipped there with a warning. Elsewhere host names are resolved off the executor,
//! in a task of their own, so a slow resolver never holds up the node.
//!
//! # State
//! With a state file, the routing table (and our id) is read at start and written every
//! [`SAVE_EVERY`] and at shutdown (to a temporary file, then renamed, so a crash never
//! leaves half a table).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::future;
use shoal_engine::dht::{id, Config, Dht, Event, LookupId, NodeId, SavedTable};
use shoal_engine::InfoHash;

pub use shoal_engine::dht::Stats as DhtStats;

use crate::runtime::{mailbox, Addr, Mailbox, ReplyTo, Spawner, Task, TrySendError};
use crate::shared::TorrentState;
use crate::torrent::{Torrent, TorrentMsg};
use crate::udp::Datagram;

/// The routers a node joins through when no bootstrap node is given (and it does not listen
/// on loopback). Those every major client uses.
pub const PUBLIC_ROUTERS: [&str; 4] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

/// How often a downloading torrent looks for peers again (the announce every 15 minutes also
/// looks). libtorrent looks every 5 to 15 minutes.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(5 * 60);

/// How soon a downloading torrent with no peer looks again; the wait doubles after each
/// lookup that leaves it without peers, up to [`LOOKUP_EVERY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// How often the routing table is written to the state file.
pub const SAVE_EVERY: Duration = Duration::from_secs(10 * 60);

/// Requests from the session waiting for the node (adds, removes, stats). A session adding
/// torrents faster than this waits.
pub const DHT_MAILBOX: usize = 256;

/// Bootstrap nodes kept from the settings; the engine uses at most 32 anyway.
pub const MAX_BOOTSTRAP_NODES: usize = 32;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct DhtConfig {
    /// The address of the session's listener (its IP decides the loopback rule).
    pub listen: SocketAddr,
    /// Our TCP port, announced for every torrent.
    pub port: u16,
    /// `HOST:PORT` of the nodes to join through; empty: [`PUBLIC_ROUTERS`] (not on loopback).
    pub bootstrap: Vec<String>,
    /// Where the routing table is kept between runs (`None`: not kept).
    pub state_file: Option<PathBuf>,
}

/// What the node is asked.
enum DhtMsg {
    /// Find peers for this torrent and announce it.
    AddTorrent(Torrent),
    /// Stop announcing this torrent.
    RemoveTorrent(InfoHash),
    /// Resolved bootstrap addresses.
    Bootstrap(Vec<SocketAddr>),
    /// The counters.
    Stats(ReplyTo<DhtStats>),
    /// A `get_peers` lookup on behalf of the application.
    Lookup(InfoHash, ReplyTo<Option<LookupResult>>),
    /// Save the table and stop.
    Shutdown(ReplyTo<()>),
}

impl fmt::Debug for DhtMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddTorrent(t) => write!(f, "AddTorrent({})", t.info_hash()),
            Self::RemoveTorrent(h) => write!(f, "RemoveTorrent({h})"),
            Self::Bootstrap(n) => write!(f, "Bootstrap({})", n.len()),
            Self::Stats(_) => write!(f, "Stats"),
            Self::Lookup(h, _) => write!(f, "Lookup({h})"),
            Self::Shutdown(_) => write!(f, "Shutdown"),
        }
    }
}

/// What a lookup found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookupResult {
    /// The peers found, at most `shoal_engine::dht::lookup::MAX_PEERS_PER_LOOKUP`.
    pub peers: Vec<SocketAddr>,
    /// Queries the lookup sent.
    pub queries: usize,
}

/// The running node: a handle to the actor.
pub struct DhtNode {
    /// The actor's mailbox.
    addr: Addr<DhtMsg>,
    /// The actor's task.
    task: Mutex<Option<Task<()>>>,
    /// Where the session spawns (for sends that must wait).
    spawner: Spawner,
}

impl fmt::Debug for DhtNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhtNode").finish_non_exhaustive()
    }
}

impl DhtNode {
    /// Starts the node. `packets` is the KRPC queue the UDP task fills, `outgoing` its queue
    /// of datagrams to send.
    pub fn start(
        config: DhtConfig,
        packets: Receiver<Datagram>,
        outgoing: Sender<Datagram>,
        spawner: &Spawner,
    ) -> Self {
        let (addr, inbox) = mailbox(DHT_MAILBOX);
        let task = spawner.spawn(run(
            config,
            packets,
            outgoing,
            inbox,
            addr.clone(),
            spawner.clone(),
        ));
        Self {
            addr,
            task: Mutex::new(Some(task)),
            spawner: spawner.clone(),
        }
    }

    /// Starts finding peers for `torrent` and announcing it. Never waits: when the mailbox is
    /// full the request is queued by a task of its own.
    pub fn add_torrent(&self, torrent: Torrent) {
        self.tell(DhtMsg::AddTorrent(torrent));
    }

    /// Stops announcing a torrent.
    pub fn remove_torrent(&self, info_hash: InfoHash) {
        self.tell(DhtMsg::RemoveTorrent(info_hash));
    }

    fn tell(&self, msg: DhtMsg) {
        self.addr.tell(msg, &self.spawner);
    }

    /// The node's counters (`None` once it has stopped).
    pub async fn stats(&self) -> Option<DhtStats> {
        self.addr.call(DhtMsg::Stats).await.ok()
    }

    /// Runs one `get_peers` lookup and waits for its end (`None`: the node has stopped, or
    /// runs too many lookups now). The torrents' own lookups need no call: this is for the
    /// API, tests and benches.
    pub async fn lookup(&self, info_hash: InfoHash) -> Option<LookupResult> {
        self.addr
            .call(|r| DhtMsg::Lookup(info_hash, r))
            .await
            .ok()
            .flatten()
    }

    /// Saves the routing table and stops the node.
    pub async fn shutdown(&self) {
        let _ = self.addr.call(DhtMsg::Shutdown).await;
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.cancel().await;
        }
    }
}

/// Fills `buf` from the OS's randomness. Only if the OS has none (no such Linux) falls back to
/// fastrand, with a warning: the node still works, only its id is guessable.
fn os_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        log::warn!("no randomness from the operating system ({e}); the dht id is guessable");
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
}

/// Our node id: the saved one if it still suits `ip`, else a fresh one (BEP 42 on a public
/// address, with every bit BEP 42 leaves free taken from the OS).
fn node_id(ip: IpAddr, saved: Option<&SavedTable>) -> NodeId {
    if let Some(s) = saved {
        if id::is_exempt(ip) || ip.is_unspecified() || id::is_bep42_valid(ip, &s.id) {
            return s.id;
        }
    }
    let mut random = [0u8; 20];
    os_random(&mut random);
    if id::is_exempt(ip) || ip.is_unspecified() {
        return NodeId(random);
    }
    let mut seed = [0u8; 8];
    os_random(&mut seed);
    let mut rng = fastrand::Rng::with_seed(u64::from_le_bytes(seed));
    let mut id = NodeId::for_address(ip, &mut rng);
    // Bytes 0-1 and the top 5 bits of byte 2 come from the address, byte 19 is BEP 42's `r`.
    id.0[2] = (id.0[2] & 0xf8) | (random[2] & 0x07);
    id.0[3..19].copy_from_slice(&random[3..19]);
    id
}

/// Reads the saved table, if any.
async fn load_table(path: Option<PathBuf>) -> Option<SavedTable> {
    let path = path?;
    smol::unblock(move || {
        let bytes = std::fs::read(&path).ok()?;
        match SavedTable::load(&bytes) {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("dht: ignoring {}: {e}", path.display());
                None
            }
        }
    })
    .await
}

/// Writes the table: to a temporary file, then renamed over the old one.
async fn save_table(path: &Option<PathBuf>, bytes: Vec<u8>) {
    let Some(path) = path.clone() else {
        return;
    };
    let result = smol::unblock(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)
    })
    .await;
    if let Err(e) = result {
        log::warn!("dht: cannot save the routing table: {e}");
    }
}

/// The bootstrap nodes that need no DNS (literal addresses), and the names that do.
fn split_bootstrap(given: &[String]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    for g in given.iter().take(MAX_BOOTSTRAP_NODES) {
        match g.parse::<SocketAddr>() {
            Ok(a) => addrs.push(a),
            Err(_) => names.push(g.clone()),
        }
    }
    (addrs, names)
}

/// Resolves host names off the executor and hands the addresses to the node.
fn resolve_later(names: Vec<String>, node: Addr<DhtMsg>, spawner: &Spawner) {
    if names.is_empty() {
        return;
    }
    spawner
        .spawn(async move {
            let addrs = smol::unblock(move || {
                let mut out = Vec::new();
                for n in &names {
                    match n.to_socket_addrs() {
                        Ok(a) => out.extend(a.filter(|a| a.is_ipv4())),
                        Err(e) => log::info!("dht: cannot resolve bootstrap node {n}: {e}"),
                    }
                }
                out
            })
            .await;
            if !addrs.is_empty() {
                let _ = node.send(DhtMsg::Bootstrap(addrs)).await;
            }
        })
        .detach();
}

/// A torrent the node works for.
struct Entry {
    /// Its handle, to feed it peers and read its state.
    torrent: Torrent,
    /// When it next looks for peers (while downloading).
    next_lookup: Instant,
    /// The wait after a lookup that leaves it without peers.
    backoff: Duration,
    /// When to announce again because the last announce reached no node (an empty table at
    /// start, say); `None` while the engine's own re-announce suffices.
    reannounce: Option<Instant>,
    /// The wait after an announce that reached no node.
    announce_backoff: Duration,
}

/// What woke the actor.
enum Wake {
    /// A datagram (`None`: the UDP task is gone).
    Packet(Option<Datagram>),
    /// A request (`None`: every handle is gone).
    Msg(Option<DhtMsg>),
    /// The timer.
    Timer,
}

/// The actor.
async fn run(
    config: DhtConfig,
    packets: Receiver<Datagram>,
    outgoing: Sender<Datagram>,
    mut inbox: Mailbox<DhtMsg>,
    me: Addr<DhtMsg>,
    spawner: Spawner,
) {
    let ip = config.listen.ip();
    let loopback = ip.is_loopback();
    let saved = load_table(config.state_file.clone()).await;
    let mut key = [0u8; 32];
    os_random(&mut key);
    let mut seed = [0u8; 8];
    os_random(&mut seed);
    let now = Instant::now();
    let mut dht = Dht::new(
        Config::new(node_id(ip, saved.as_ref()), key, u64::from_le_bytes(seed)),
        now,
    );
    if let Some(s) = &saved {
        dht.restore(now, s);
    }
    let (mut nodes, mut names) = split_bootstrap(&config.bootstrap);
    if loopback {
        // The loopback rule: nothing but the given nodes, no DNS.
        for n in names.drain(..) {
            log::warn!("dht: bootstrap node {n} skipped: a session on loopback does no dns lookup");
        }
        nodes.retain(|a| a.ip().is_loopback());
    } else if config.bootstrap.is_empty() {
        names = PUBLIC_ROUTERS.iter().map(|s| s.to_string()).collect();
    }
    if !nodes.is_empty() || dht.routing_table_len() > 0 {
        let _ = dht.bootstrap(now, &nodes);
    }
    resolve_later(names, me, &spawner);
    log::debug!(
        "dht: node {:?} on {} ({} saved nodes)",
        dht.id(),
        config.listen,
        dht.routing_table_len()
    );

    let mut torrents: HashMap<InfoHash, Entry> = HashMap::new();
    // Lookups asked through `DhtNode::lookup`: the reply and the peers so far; at most
    // `shoal_engine::dht::MAX_LOOKUPS`, since the engine refuses more.
    let mut asked: HashMap<LookupId, (ReplyTo<Option<LookupResult>>, Vec<SocketAddr>)> =
        HashMap::new();
    let mut next_save = now + SAVE_EVERY;
    let mut packets_open = true;
    loop {
        flush(&mut dht, &outgoing);
        let now = Instant::now();
        while let Some(event) = dht.poll_event() {
            match &event {
                Event::PeersFound { lookup, peers, .. } => {
                    if let Some((_, found)) = asked.get_mut(lookup) {
                        found.extend(peers.iter().copied());
                    }
                }
                Event::LookupDone {
                    lookup, queries, ..
                } => {
                    if let Some((reply, peers)) = asked.remove(lookup) {
                        reply.send(Some(LookupResult {
                            peers,
                            queries: *queries,
                        }));
                    }
                }
                _ => {}
            }
            match &event {
                Event::AnnounceDone {
                    info_hash, nodes, ..
                } => {
                    if let Some(e) = torrents.get_mut(info_hash) {
                        if *nodes == 0 {
                            e.reannounce = Some(now + e.announce_backoff);
                            e.announce_backoff = (e.announce_backoff * 2).min(LOOKUP_EVERY);
                        } else {
                            e.reannounce = None;
                            e.announce_backoff = FIRST_RETRY;
                        }
                    }
                }
                Event::Bootstrapped { nodes } if *nodes > 0 => {
                    // The table has nodes now: announces that reached nobody go again.
                    for e in torrents.values_mut() {
                        if e.reannounce.is_some() {
                            e.reannounce = Some(now);
                        }
                    }
                }
                _ => {}
            }
            on_event(event, &torrents, config.listen);
        }
        let mut deadline = dht.poll_timeout().unwrap_or(now + Duration::from_secs(5));
        deadline = deadline.min(next_save);
        // The torrents' own times (lookups, re-announces) are rounded up to whole seconds, so
        // that a thousand torrents cost one wake-up a second at most, not one each.
        let mut torrents_due: Option<Instant> = None;
        for e in torrents.values() {
            let due = e.reannounce.map_or(e.next_lookup, |r| r.min(e.next_lookup));
            torrents_due = Some(torrents_due.map_or(due, |d| d.min(due)));
        }
        if let Some(due) = torrents_due {
            let second = Duration::from_secs(1);
            let ahead = due.saturating_duration_since(now);
            let rounded =
                now + Duration::from_secs(ahead.as_secs() + u64::from(ahead.subsec_nanos() > 0));
            deadline = deadline.min(rounded.max(now + second.min(ahead)));
        }
        let wake = {
            let msg = async { Wake::Msg(inbox.recv().await) };
            let timer = async {
                smol::Timer::at(deadline).await;
                Wake::Timer
            };
            if packets_open {
                let packet = async { Wake::Packet(packets.recv().await.ok()) };
                // Requests first, so a flood of datagrams cannot keep shutdown waiting.
                future::or(msg, future::or(timer, packet)).await
            } else {
                future::or(msg, timer).await
            }
        };
        let now = Instant::now();
        match wake {
            Wake::Packet(Some((from, bytes))) => {
                dht.handle_packet(now, from, &bytes);
                // Take what else is queued at once: one wake-up per burst.
                for _ in 0..64 {
                    let Ok((from, bytes)) = packets.try_recv() else {
                        break;
                    };
                    dht.handle_packet(now, from, &bytes);
                    flush(&mut dht, &outgoing);
                }
            }
            Wake::Packet(None) => packets_open = false,
            Wake::Msg(None) => break,
            Wake::Msg(Some(msg)) => match msg {
                DhtMsg::AddTorrent(t) => {
                    let info_hash = t.info_hash();
                    if let Err(e) = dht.announce(now, info_hash, config.port) {
                        log::debug!("dht: announce of {info_hash} deferred: {e}");
                    }
                    torrents.insert(
                        info_hash,
                        Entry {
                            torrent: t,
                            next_lookup: now + FIRST_RETRY,
                            backoff: FIRST_RETRY,
                            reannounce: None,
                            announce_backoff: FIRST_RETRY,
                        },
                    );
                }
                DhtMsg::RemoveTorrent(h) => {
                    dht.stop_announcing(&h);
                    torrents.remove(&h);
                }
                DhtMsg::Bootstrap(addrs) => {
                    let _ = dht.bootstrap(now, &addrs);
                }
                DhtMsg::Stats(reply) => reply.send(dht.stats(now)),
                DhtMsg::Lookup(h, reply) => match dht.get_peers(now, h) {
                    Ok(id) => {
                        asked.insert(id, (reply, Vec::new()));
                    }
                    Err(e) => {
                        log::debug!("dht: lookup of {h} refused: {e}");
                        reply.send(None);
                    }
                },
                DhtMsg::Shutdown(reply) => {
                    save_table(&config.state_file, dht.save(now)).await;
                    reply.send(());
                    return;
                }
            },
            Wake::Timer => {
                if dht.poll_timeout().is_some_and(|t| t <= now) {
                    dht.handle_timeout(now);
                }
                if now >= next_save {
                    next_save = now + SAVE_EVERY;
                    save_table(&config.state_file, dht.save(now)).await;
                }
                torrents.retain(|h, e| {
                    if e.torrent.is_stopped() {
                        dht.stop_announcing(h);
                        return false;
                    }
                    true
                });
                for (h, e) in torrents.iter_mut() {
                    if e.reannounce.is_some_and(|r| r <= now) {
                        e.reannounce = None;
                        if let Err(err) = dht.announce(now, *h, config.port) {
                            log::debug!("dht: announce of {h} deferred: {err}");
                        }
                    }
                    if e.next_lookup > now {
                        continue;
                    }
                    let progress = e.torrent.progress();
                    if !matches!(
                        progress.state,
                        TorrentState::Downloading | TorrentState::Metadata
                    ) {
                        // Checking, seeding or paused: no lookup; look at it again soon.
                        e.next_lookup = now + FIRST_RETRY;
                        continue;
                    }
                    if let Err(err) = dht.get_peers(now, *h) {
                        log::debug!("dht: lookup of {h} deferred: {err}");
                    }
                    if progress.peers == 0 {
                        e.next_lookup = now + e.backoff;
                        e.backoff = (e.backoff * 2).min(LOOKUP_EVERY);
                    } else {
                        e.next_lookup = now + LOOKUP_EVERY;
                        e.backoff = FIRST_RETRY;
                    }
                }
            }
        }
    }
    save_table(&config.state_file, dht.save(Instant::now())).await;
}

/// Hands every queued datagram to the UDP task; when its queue is full the rest are dropped
/// (the engine's timeouts retry what matters).
fn flush(dht: &mut Dht, outgoing: &Sender<Datagram>) {
    while let Some(d) = dht.poll_transmit() {
        if outgoing.try_send(d).is_err() {
            log::trace!("dht: udp queue full; datagram dropped");
        }
    }
}

/// Feeds found peers to their torrent.
fn on_event(event: Event, torrents: &HashMap<InfoHash, Entry>, us: SocketAddr) {
    match event {
        Event::PeersFound {
            info_hash, peers, ..
        } => {
            let Some(e) = torrents.get(&info_hash) else {
                return;
            };
            // Our own announce comes back from the nodes we told.
            let peers: Vec<SocketAddr> = peers
                .into_iter()
                .filter(|p| {
                    !(p.port() == us.port() && (p.ip() == us.ip() || us.ip().is_unspecified()))
                })
                .collect();
            if peers.is_empty() {
                return;
            }
            log::debug!("dht: {} peers for {info_hash}", peers.len());
            match e.torrent.addr().try_send(TorrentMsg::AddPeers(peers)) {
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(_)) => {
                    log::debug!("dht: {info_hash} is busy; peers dropped")
                }
            }
        }
        Event::LookupDone {
            info_hash,
            peers,
            queries,
            ..
        } => log::debug!("dht: lookup of {info_hash}: {peers} peers, {queries} queries"),
        Event::AnnounceDone {
            info_hash, nodes, ..
        } => log::debug!("dht: announced {info_hash} to {nodes} nodes"),
        Event::Bootstrapped { nodes } => log::debug!("dht: bootstrapped, {nodes} nodes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_names_are_split_from_addresses() {
        let (a, n) = split_bootstrap(&["127.0.0.1:6881".into(), "router.example:6881".into()]);
        assert_eq!(a, vec!["127.0.0.1:6881".parse().unwrap()]);
        assert_eq!(n, vec!["router.example:6881".to_string()]);
    }

    #[test]
    fn node_ids_are_random_and_bep42_on_public_addresses() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_ne!(node_id(lo, None), node_id(lo, None));
        let public: IpAddr = "124.31.75.21".parse().unwrap();
        let id = node_id(public, None);
        assert!(id::is_bep42_valid(public, &id));
        assert_ne!(id, node_id(public, None));
    }

    #[test]
    fn udp_queue_sizes_hold_a_full_engine_queue() {
        assert!(crate::udp::OUTGOING_QUEUE >= shoal_engine::dht::MAX_OUTGOING);
    }
}
