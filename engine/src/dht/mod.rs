//! A mainline DHT node (BEP 5) as a sans-IO state machine: bytes and time in, datagrams,
//! timers and events out.
//!
//! # Layout
//! - [`krpc`]: the KRPC codec (queries, responses, errors), bounded and panic-free.
//! - [`id`]: node ids, the XOR metric, BEP 42 ids derived from our IP address.
//! - [`routing`]: the routing table of k-buckets, node states, refresh, save and load.
//! - [`lookup`]: the iterative lookup (3 queries in flight, the 8 closest).
//! - [`token`]: announce tokens from a secret rotated every 5 minutes.
//! - [`storage`]: the peers announced to us, bounded and aging.
//! - [`Dht`] (here): one node tying them together, shaped like `quinn_proto::Connection`.
//!
//! # Driving a node
//! Nothing here touches a socket or reads the clock. The caller (an actor owning the UDP
//! socket) loops:
//! - a datagram arrives: [`Dht::handle_packet`]`(now, from, bytes)`;
//! - the instant of [`Dht::poll_timeout`] passes: [`Dht::handle_timeout`]`(now)`;
//! - after either, and after any application call: send every [`Dht::poll_transmit`], handle
//!   every [`Dht::poll_event`], and sleep until the new [`Dht::poll_timeout`].
//!
//! The application calls [`Dht::bootstrap`], [`Dht::get_peers`], [`Dht::announce`] (which
//! also re-announces every [`REANNOUNCE_EVERY`] until [`Dht::stop_announcing`]), and
//! [`Dht::save`] to keep the routing table in the state folder. Randomness comes from the
//! seed and token key in [`Config`]: the actor fills them from the OS, tests fix them.
//!
//! # Examples
//! Two nodes wired by hand: one joins through the other.
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use shoal_engine::dht::{Config, Dht, Event, NodeId};
//!
//! let now = Instant::now();
//! let (a_addr, b_addr): (SocketAddr, SocketAddr) =
//!     ("127.0.0.1:6881".parse().unwrap(), "127.0.0.1:6882".parse().unwrap());
//! let mut a = Dht::new(Config::new(NodeId([1; 20]), [1; 32], 1), now);
//! let mut b = Dht::new(Config::new(NodeId([2; 20]), [2; 32], 2), now);
//! b.bootstrap(now, &[a_addr]).unwrap();
//! loop {
//!     let mut moved = false;
//!     while let Some((to, bytes)) = b.poll_transmit() {
//!         assert_eq!(to, a_addr);
//!         a.handle_packet(now, b_addr, &bytes);
//!         moved = true;
//!     }
//!     while let Some((to, bytes)) = a.poll_transmit() {
//!         assert_eq!(to, b_addr);
//!         b.handle_packet(now, a_addr, &bytes);
//!         moved = true;
//!     }
//!     if !moved {
//!         break;
//!     }
//! }
//! assert_eq!(b.poll_event(), Some(Event::Bootstrapped { nodes: 1 }));
//! assert_eq!((a.routing_table_len(), b.routing_table_len()), (1, 1));
//! ```
//!
//! # Sharing the UDP socket with uTP
//! The DHT listens on the same UDP port as uTP (BEP 29). The actor tells them apart by the
//! first byte of each datagram: a KRPC message is a bencoded dictionary, so it starts with
//! `d` (0x64); a uTP packet starts with its type in the high nibble and version 1 in the low
//! nibble (0x01, 0x11, 0x21, 0x31, 0x41). The sets do not overlap, since 0x64 has 4 in its
//! low nibble. Anything else is dropped.
//!
//! # Limits
//! Every table a stranger can grow is bounded by a named constant: the routing table
//! ([`routing::MAX_BUCKETS`] × ([`routing::K`] + [`routing::MAX_REPLACEMENTS`])), the peer
//! store ([`storage::MAX_INFO_HASHES`] × [`storage::MAX_PEERS_PER_HASH`]), what one reply may
//! carry ([`krpc::MAX_NODES_PER_REPLY`], [`krpc::MAX_VALUES_PER_REPLY`]), the per-address rate
//! limiter ([`MAX_RATE_LIMITED_ADDRESSES`]), the outgoing queue ([`MAX_OUTGOING`]), queries in
//! flight ([`MAX_TRANSACTIONS`], [`MAX_TIMERS`]), lookups ([`MAX_LOOKUPS`]), events
//! ([`MAX_EVENTS`]), address votes ([`MAX_ADDRESS_VOTES`]); and what the application adds,
//! torrents announced ([`MAX_ANNOUNCED`]).
//!
//! Only IPv4 nodes enter the routing table (BEP 32's `nodes6` is not spoken yet); queries
//! from IPv6 addresses are still answered.

pub mod id;
pub mod krpc;
pub mod lookup;
pub mod routing;
pub mod storage;
pub mod token;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

pub use id::NodeId;
use krpc::{code, error_reply, Body, KrpcError, Message, Query, Response, Tid, Token};
use lookup::Lookup;
pub use routing::SavedTable;
use routing::{Contact, Insert, RoutingTable, K};
use storage::{PeerStore, MAX_VALUES_IN_REPLY};
use token::Tokens;

use crate::InfoHash;

/// How long we wait for an answer before counting a query as failed. Most nodes answer within
/// a second; libtorrent waits 5 s at most.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(4);

/// How long a lookup query may hold one of the 3 in-flight slots before the lookup asks
/// another node beside it (it may still be answered until [`QUERY_TIMEOUT`]).
pub const SLOW_AFTER: Duration = Duration::from_secs(1);

/// Queries we have in flight at once. Lookups need at most 3 each plus 8 announces; the rest
/// is room for pings. Also bounds the transaction table.
pub const MAX_TRANSACTIONS: usize = 1024;

/// Timer entries kept. The timer of a query answered early lingers until its deadline, so a
/// churn of quickly answered queries could pile them up; past this, no query is sent until
/// old timers expire (4 per slot of [`MAX_TRANSACTIONS`] is never reached by honest traffic).
pub const MAX_TIMERS: usize = 4 * MAX_TRANSACTIONS;

/// Lookups running at once. A session announcing many torrents queues them here; each lookup
/// holds about 64 candidates and 3 to 8 queries.
pub const MAX_LOOKUPS: usize = 32;

/// Datagrams waiting for the caller to send. The actor drains the queue after every call, so
/// this is only reached when it cannot keep up; replies are then dropped (the querier will
/// retry elsewhere) and lookups wait.
pub const MAX_OUTGOING: usize = 512;

/// Events waiting for the application; the oldest is dropped past this.
pub const MAX_EVENTS: usize = 1024;

/// Incoming queries per second an address may sustain. A node doing a lookup sends us one or
/// two; a flood of `get_peers` from one address (to map our store, or to make us amplify
/// traffic) is cut here.
pub const QUERY_RATE_PER_SEC: f64 = 5.0;

/// Queries an address may send in a burst before the rate applies.
pub const QUERY_BURST: f64 = 20.0;

/// Addresses tracked by the rate limiter. Entries whose bucket has refilled are swept every
/// [`MAINTENANCE_EVERY`]; when the table is full, queries from new addresses are dropped
/// until the sweep (which only bites under a flood from thousands of addresses at once).
pub const MAX_RATE_LIMITED_ADDRESSES: usize = 4096;

/// How often housekeeping runs: token rotation, storage expiry, bucket refresh,
/// re-announces, re-bootstrap.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

/// How often we re-announce a torrent (peers are stored for 30 minutes; libtorrent and
/// others announce every 15).
pub const REANNOUNCE_EVERY: Duration = Duration::from_secs(15 * 60);

/// Torrents we keep announcing. The session's own torrents, so a generous bound.
pub const MAX_ANNOUNCED: usize = 4096;

/// How often an empty table retries its bootstrap nodes.
pub const BOOTSTRAP_RETRY: Duration = Duration::from_secs(60);

/// Distinct addresses remembered from the `ip` key of replies (BEP 42), to tell our outside
/// address. Honest nodes agree on one (two behind a changing NAT); a few slots let it win
/// over liars without a table strangers could grow.
pub const MAX_ADDRESS_VOTES: usize = 8;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our node id (see [`NodeId::for_address`]).
    pub id: NodeId,
    /// The secret key of announce tokens; fill it from the OS's randomness.
    pub token_key: [u8; 32],
    /// The seed of the random numbers (refresh targets, transaction ids).
    pub seed: u64,
    /// BEP 42: keep nodes at public addresses out of the routing table unless their id
    /// matches their address. Off by default, as in libtorrent: many honest nodes predate
    /// BEP 42. Nodes at exempt addresses (loopback, private) are never checked.
    pub enforce_node_ids: bool,
}

impl Config {
    /// A configuration with BEP 42 enforcement off.
    pub fn new(id: NodeId, token_key: [u8; 32], seed: u64) -> Self {
        Config {
            id,
            token_key,
            seed,
            enforce_node_ids: false,
        }
    }
}

/// Why an application call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhtError {
    /// [`MAX_LOOKUPS`] lookups are running; try again after a `LookupDone`.
    TooManyLookups,
    /// [`MAX_ANNOUNCED`] torrents are being announced.
    TooManyAnnounced,
}

impl fmt::Display for DhtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DhtError::TooManyLookups => write!(f, "too many dht lookups running"),
            DhtError::TooManyAnnounced => write!(f, "too many torrents announced in the dht"),
        }
    }
}

impl std::error::Error for DhtError {}

/// Names a lookup, in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A `get_peers` lookup found peers not reported before in this lookup.
    PeersFound {
        /// The lookup.
        lookup: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// The new peers.
        peers: Vec<SocketAddr>,
    },
    /// A `get_peers` lookup ended.
    LookupDone {
        /// The lookup.
        lookup: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// Distinct peers found.
        peers: usize,
        /// Queries sent.
        queries: usize,
    },
    /// The `announce_peer` queries that followed a lookup were all answered or timed out.
    AnnounceDone {
        /// The lookup.
        lookup: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// How many nodes accepted the announce.
        nodes: usize,
    },
    /// A bootstrap lookup ended.
    Bootstrapped {
        /// Nodes in the routing table now.
        nodes: usize,
    },
}

/// Counters and sizes, for the API and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Nodes in the routing table.
    pub nodes: usize,
    /// Of which good.
    pub good_nodes: usize,
    /// Buckets of the routing table.
    pub buckets: usize,
    /// Peers stored for others.
    pub stored_peers: usize,
    /// Torrents with stored peers.
    pub stored_info_hashes: usize,
    /// Lookups running.
    pub lookups: usize,
    /// Queries in flight.
    pub in_flight: usize,
    /// Queries received (rate-limited ones not counted).
    pub queries_in: u64,
    /// Queries sent.
    pub queries_out: u64,
    /// Replies received that matched a query.
    pub replies_in: u64,
    /// Queries that timed out.
    pub timeouts: u64,
    /// Queries dropped by the per-address rate limit.
    pub rate_limited: u64,
    /// Datagrams that were not KRPC or not a reply to anything we sent.
    pub dropped_in: u64,
    /// Datagrams dropped because the outgoing queue was full.
    pub dropped_out: u64,
    /// `announce_peer` queries refused for a bad token.
    pub bad_tokens: u64,
}

/// Rough memory figures, for benches and the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Bytes per node in the routing table (entries live inline in the bucket vectors).
    pub bytes_per_routing_entry: usize,
    /// Bytes per stored peer (inline in the per-torrent vector).
    pub bytes_per_stored_peer: usize,
    /// Bytes per torrent in the peer store, besides its peers (hash map slot and header).
    pub bytes_per_stored_info_hash: usize,
}

/// The per-entry sizes of the tables.
pub fn memory_estimate() -> MemoryEstimate {
    MemoryEstimate {
        bytes_per_routing_entry: std::mem::size_of::<routing::Entry>(),
        bytes_per_stored_peer: std::mem::size_of::<storage::StoredPeer>(),
        bytes_per_stored_info_hash: storage::bytes_per_info_hash(),
    }
}

/// What a query in flight is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxKind {
    /// A ping: verifying a node that queried us, or deciding an eviction.
    Ping,
    /// A `find_node` or `get_peers` of a lookup.
    Lookup(LookupId),
    /// An `announce_peer` after a lookup.
    Announce(LookupId),
}

/// A query in flight.
#[derive(Clone, Copy, Debug)]
struct Tx {
    /// Where it went; a reply must come from there.
    addr: SocketAddr,
    /// The id we expect there, if known (to report a timeout to the routing table).
    node: Option<NodeId>,
    /// What it is for.
    kind: TxKind,
    /// A sequence number, so timer entries of a reused transaction id are told apart.
    seq: u64,
}

/// Why a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// `find_node` of our own id, from the bootstrap nodes.
    Bootstrap,
    /// `find_node` of a random id in a stale bucket.
    Refresh,
    /// `get_peers`, then `announce_peer` when `announce` is set (the port).
    GetPeers {
        /// The torrent.
        info_hash: InfoHash,
        /// Our TCP port, to announce once the lookup is done.
        announce: Option<u16>,
    },
}

/// A lookup and its announce phase.
#[derive(Clone, Debug)]
struct Run {
    /// The search.
    lookup: Lookup,
    /// Why it runs.
    purpose: Purpose,
    /// `Some` once the search is over and announces are out: (awaited, accepted).
    announcing: Option<(usize, usize)>,
}

/// Per-address token buckets for incoming queries.
///
/// An address is an IP, so a flooder cannot escape the limit by changing ports; except on
/// loopback, where it is IP and port: there many nodes share one IP on purpose (tests and
/// benches run dozens of nodes on 127.0.0.1), and nobody outside can reach it.
#[derive(Clone, Debug, Default)]
struct RateLimiter {
    /// Tokens left and when they were counted, per address (port 0 unless loopback); at
    /// most [`MAX_RATE_LIMITED_ADDRESSES`].
    buckets: HashMap<SocketAddr, (f64, Instant)>,
}

impl RateLimiter {
    fn allow(&mut self, now: Instant, from: SocketAddr) -> bool {
        let key = if from.ip().is_loopback() {
            from
        } else {
            SocketAddr::new(from.ip(), 0)
        };
        if let Some((tokens, at)) = self.buckets.get_mut(&key) {
            let elapsed = now.saturating_duration_since(*at).as_secs_f64();
            *tokens = (*tokens + elapsed * QUERY_RATE_PER_SEC).min(QUERY_BURST);
            *at = now;
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                return true;
            }
            return false;
        }
        if self.buckets.len() >= MAX_RATE_LIMITED_ADDRESSES {
            return false;
        }
        self.buckets.insert(key, (QUERY_BURST - 1.0, now));
        true
    }

    /// Forgets addresses whose bucket is full again: they are as if never seen.
    fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, (tokens, at)| {
            let elapsed = now.saturating_duration_since(*at).as_secs_f64();
            *tokens + elapsed * QUERY_RATE_PER_SEC < QUERY_BURST
        });
    }
}

/// A torrent we announce.
#[derive(Clone, Copy, Debug)]
struct Announced {
    /// Our TCP port for it.
    port: u16,
    /// When the next announce is due.
    next: Instant,
}

/// A DHT node. See the module doc.
#[derive(Debug)]
pub struct Dht {
    /// Our id.
    id: NodeId,
    /// See [`Config::enforce_node_ids`].
    enforce_node_ids: bool,
    /// Known nodes.
    table: RoutingTable,
    /// Announce tokens.
    tokens: Tokens,
    /// Peers announced to us.
    store: PeerStore,
    /// Running lookups, at most [`MAX_LOOKUPS`].
    lookups: HashMap<LookupId, Run>,
    /// The next lookup id.
    next_lookup: u64,
    /// Queries in flight by transaction id, at most [`MAX_TRANSACTIONS`].
    transactions: HashMap<u16, Tx>,
    /// The next transaction id to try.
    next_tid: u16,
    /// The next transaction sequence number.
    next_seq: u64,
    /// When lookup queries turn slow: (instant, tid, seq), in order.
    slow_timers: VecDeque<(Instant, u16, u64)>,
    /// When queries time out: (instant, tid, seq), in order.
    timeout_timers: VecDeque<(Instant, u16, u64)>,
    /// Datagrams to send, at most [`MAX_OUTGOING`].
    outgoing: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Events for the application, at most [`MAX_EVENTS`].
    events: VecDeque<Event>,
    /// The per-address limit on incoming queries.
    rate: RateLimiter,
    /// Torrents we announce, at most [`MAX_ANNOUNCED`].
    announced: HashMap<InfoHash, Announced>,
    /// Bootstrap addresses, for re-bootstrapping an empty table; at most
    /// [`lookup::MAX_SEEDS`].
    bootstrap_nodes: Vec<SocketAddrV4>,
    /// When we last bootstrapped.
    last_bootstrap: Option<Instant>,
    /// Our address as repliers saw it, with how many replies said so; at most
    /// [`MAX_ADDRESS_VOTES`].
    address_votes: Vec<(IpAddr, u32)>,
    /// When housekeeping next runs.
    next_maintenance: Instant,
    /// Random numbers.
    rng: fastrand::Rng,
    /// Counters.
    stats: Stats,
}

impl Dht {
    /// A node with an empty routing table.
    pub fn new(config: Config, now: Instant) -> Self {
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let next_tid = rng.u16(..);
        Dht {
            id: config.id,
            enforce_node_ids: config.enforce_node_ids,
            table: RoutingTable::new(config.id, now),
            tokens: Tokens::new(config.token_key, now),
            store: PeerStore::new(),
            lookups: HashMap::new(),
            next_lookup: 0,
            transactions: HashMap::new(),
            next_tid,
            next_seq: 0,
            slow_timers: VecDeque::new(),
            timeout_timers: VecDeque::new(),
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            rate: RateLimiter::default(),
            announced: HashMap::new(),
            bootstrap_nodes: Vec::new(),
            last_bootstrap: None,
            address_votes: Vec::new(),
            next_maintenance: now + MAINTENANCE_EVERY,
            rng,
            stats: Stats::default(),
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Nodes in the routing table.
    pub fn routing_table_len(&self) -> usize {
        self.table.len()
    }

    /// The routing table, read-only.
    pub fn routing_table(&self) -> &RoutingTable {
        &self.table
    }

    /// The routing table as bytes, for the state folder (see [`SavedTable::load`]).
    pub fn save(&self, now: Instant) -> Vec<u8> {
        self.table.save(now)
    }

    /// Adds the nodes of a saved table as questionable nodes (they answered in an earlier
    /// session). Call [`Dht::bootstrap`] next, which starts from them.
    pub fn restore(&mut self, now: Instant, saved: &SavedTable) {
        for n in &saved.nodes {
            self.table.heard_from(now, n.id, n.addr, Contact::Loaded);
        }
    }

    /// Our outside IP address as most replies report it (BEP 42's `ip` key), once at least
    /// two replies agree. The actor may use it to pick a BEP 42 id ([`NodeId::for_address`])
    /// when it listens on an unspecified address.
    pub fn external_ip(&self) -> Option<IpAddr> {
        self.address_votes
            .iter()
            .max_by_key(|(_, n)| *n)
            .filter(|(_, n)| *n >= 2)
            .map(|(ip, _)| *ip)
    }

    fn vote_address(&mut self, ip: IpAddr) {
        if let Some((_, n)) = self.address_votes.iter_mut().find(|(a, _)| *a == ip) {
            *n = n.saturating_add(1);
            return;
        }
        if self.address_votes.len() >= MAX_ADDRESS_VOTES {
            // The least voted address makes room (its votes carry over, so a newcomer must
            // outvote it to stay).
            let Some(min) = self.address_votes.iter_mut().min_by_key(|(_, n)| *n) else {
                return;
            };
            *min = (ip, min.1);
            return;
        }
        self.address_votes.push((ip, 1));
    }

    /// A snapshot of the counters.
    pub fn stats(&self, now: Instant) -> Stats {
        let (good, _, _) = self.table.state_counts(now);
        Stats {
            nodes: self.table.len(),
            good_nodes: good,
            buckets: self.table.bucket_count(),
            stored_peers: self.store.len(),
            stored_info_hashes: self.store.info_hashes(),
            lookups: self.lookups.len(),
            in_flight: self.transactions.len(),
            ..self.stats
        }
    }

    /// Joins the network: a `find_node` lookup of our own id from `nodes` (the bootstrap
    /// routers or `--dht-bootstrap` nodes; only IPv4 ones are used) and whatever the table
    /// already holds. The IPv4 addresses are remembered to retry while the table is empty.
    pub fn bootstrap(&mut self, now: Instant, nodes: &[SocketAddr]) -> Result<LookupId, DhtError> {
        for n in nodes {
            if let SocketAddr::V4(v4) = n {
                if !self.bootstrap_nodes.contains(v4)
                    && self.bootstrap_nodes.len() < lookup::MAX_SEEDS
                {
                    self.bootstrap_nodes.push(*v4);
                }
            }
        }
        let seeds: Vec<SocketAddrV4> = nodes
            .iter()
            .filter_map(|n| match n {
                SocketAddr::V4(v4) => Some(*v4),
                SocketAddr::V6(_) => None,
            })
            .collect();
        self.last_bootstrap = Some(now);
        self.start_lookup(now, self.id, Purpose::Bootstrap, &seeds)
    }

    /// Looks for peers of a torrent; they arrive as [`Event::PeersFound`], then
    /// [`Event::LookupDone`].
    pub fn get_peers(&mut self, now: Instant, info_hash: InfoHash) -> Result<LookupId, DhtError> {
        self.start_lookup(
            now,
            NodeId(info_hash.0),
            Purpose::GetPeers {
                info_hash,
                announce: None,
            },
            &[],
        )
    }

    /// Looks for peers of a torrent and announces that we download it on TCP `port`, now and
    /// every [`REANNOUNCE_EVERY`] until [`Dht::stop_announcing`]. Ends with
    /// [`Event::AnnounceDone`].
    pub fn announce(
        &mut self,
        now: Instant,
        info_hash: InfoHash,
        port: u16,
    ) -> Result<LookupId, DhtError> {
        if !self.announced.contains_key(&info_hash) && self.announced.len() >= MAX_ANNOUNCED {
            return Err(DhtError::TooManyAnnounced);
        }
        // Registered first, so a lookup that ends at once (an empty table) can bring the
        // next announce forward.
        let next = now + REANNOUNCE_EVERY;
        self.announced.insert(info_hash, Announced { port, next });
        let id = self.start_lookup(
            now,
            NodeId(info_hash.0),
            Purpose::GetPeers {
                info_hash,
                announce: Some(port),
            },
            &[],
        );
        if id.is_err() {
            // No room for a lookup now: maintenance retries it.
            if let Some(a) = self.announced.get_mut(&info_hash) {
                a.next = now;
            }
        }
        id
    }

    /// Stops re-announcing a torrent.
    pub fn stop_announcing(&mut self, info_hash: &InfoHash) {
        self.announced.remove(info_hash);
    }

    fn start_lookup(
        &mut self,
        now: Instant,
        target: NodeId,
        purpose: Purpose,
        seeds: &[SocketAddrV4],
    ) -> Result<LookupId, DhtError> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return Err(DhtError::TooManyLookups);
        }
        let nodes = self.table.closest(&target, lookup::MAX_CANDIDATES, now);
        // With a thin table, the bootstrap nodes help any lookup along.
        let seeds: Vec<SocketAddrV4> = if seeds.is_empty() && nodes.len() < K {
            self.bootstrap_nodes.clone()
        } else {
            seeds.to_vec()
        };
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        self.lookups.insert(
            id,
            Run {
                lookup: Lookup::new(target, self.id, &nodes, &seeds),
                purpose,
                announcing: None,
            },
        );
        self.pump(now);
        Ok(id)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outgoing.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Dht::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_maintenance;
        if let Some(&(at, _, _)) = self.slow_timers.front() {
            t = t.min(at);
        }
        if let Some(&(at, _, _)) = self.timeout_timers.front() {
            t = t.min(at);
        }
        Some(t)
    }

    /// Runs what is due at `now`: query timeouts, then housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, tid, seq)) = self.slow_timers.front() {
            if at > now {
                break;
            }
            self.slow_timers.pop_front();
            if let Some(tx) = self.transactions.get(&tid).filter(|tx| tx.seq == seq) {
                if let (TxKind::Lookup(l), SocketAddr::V4(addr)) = (tx.kind, tx.addr) {
                    if let Some(run) = self.lookups.get_mut(&l) {
                        run.lookup.on_slow(addr);
                    }
                }
            }
        }
        while let Some(&(at, tid, seq)) = self.timeout_timers.front() {
            if at > now {
                break;
            }
            self.timeout_timers.pop_front();
            if self.transactions.get(&tid).is_some_and(|tx| tx.seq == seq) {
                if let Some(tx) = self.transactions.remove(&tid) {
                    self.stats.timeouts += 1;
                    self.on_tx_failed(now, tx, true);
                }
            }
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE_EVERY;
            self.maintenance(now);
        }
        self.pump(now);
    }

    fn maintenance(&mut self, now: Instant) {
        self.tokens.handle_timeout(now);
        self.store.expire(now);
        self.rate.sweep(now);
        if self.table.is_empty() {
            let due = self
                .last_bootstrap
                .is_none_or(|t| now.saturating_duration_since(t) >= BOOTSTRAP_RETRY);
            let running = self
                .lookups
                .values()
                .any(|r| r.purpose == Purpose::Bootstrap);
            if due && !running && !self.bootstrap_nodes.is_empty() {
                let nodes: Vec<SocketAddr> = self
                    .bootstrap_nodes
                    .iter()
                    .map(|&a| SocketAddr::V4(a))
                    .collect();
                let _ = self.bootstrap(now, &nodes);
            }
        } else {
            for target in self.table.refresh_targets(now, &mut self.rng) {
                if self
                    .start_lookup(now, target, Purpose::Refresh, &[])
                    .is_err()
                {
                    break;
                }
            }
        }
        let due: Vec<(InfoHash, u16)> = self
            .announced
            .iter()
            .filter(|(_, a)| a.next <= now)
            .map(|(h, a)| (*h, a.port))
            .collect();
        for (info_hash, port) in due {
            let running = self.lookups.values().any(|r| {
                matches!(r.purpose, Purpose::GetPeers { info_hash: h, announce: Some(_) } if h == info_hash)
            });
            if running {
                continue;
            }
            if self.announce(now, info_hash, port).is_err() {
                break;
            }
        }
    }

    /// Handles one datagram from `from`.
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) {
        match Message::decode(packet) {
            Ok(msg) => match msg.body {
                Body::Query {
                    id,
                    query,
                    read_only,
                } => self.on_query(now, from, msg.tid, id, query, read_only),
                Body::Response(r) => self.on_response(now, from, msg.tid, r, msg.ip),
                Body::Error { .. } => self.on_error(now, from, msg.tid),
            },
            Err(KrpcError::BadQuery { tid, problem }) => {
                if self.allow_query(now, from) {
                    self.reply(from, error_reply(tid, code::PROTOCOL, problem));
                }
            }
            Err(KrpcError::UnknownMethod { tid }) => {
                if self.allow_query(now, from) {
                    self.reply(
                        from,
                        error_reply(tid, code::METHOD_UNKNOWN, "method unknown"),
                    );
                }
            }
            Err(KrpcError::BadReply { tid, .. }) => self.on_error(now, from, tid),
            Err(KrpcError::Bencode(_) | KrpcError::NotKrpc(_)) => self.stats.dropped_in += 1,
        }
        self.pump(now);
    }

    /// Counts a query against its address's rate.
    fn allow_query(&mut self, now: Instant, from: SocketAddr) -> bool {
        if self.rate.allow(now, from) {
            self.stats.queries_in += 1;
            true
        } else {
            self.stats.rate_limited += 1;
            false
        }
    }

    fn reply(&mut self, to: SocketAddr, msg: Message) {
        if self.outgoing.len() >= MAX_OUTGOING {
            self.stats.dropped_out += 1;
            return;
        }
        self.outgoing.push_back((to, msg.to_bytes()));
    }

    fn on_query(
        &mut self,
        now: Instant,
        from: SocketAddr,
        tid: Tid,
        id: NodeId,
        query: Query,
        read_only: bool,
    ) {
        if !self.allow_query(now, from) {
            return;
        }
        // An unknown querier may belong in our table: it gets in by answering a ping (sent
        // after our reply), which proves the address is really its own.
        let verify = match (from, read_only) {
            (SocketAddr::V4(v4), false) => {
                self.table.heard_from(now, id, v4, Contact::Queried) == Insert::Ignored
                    && self.table.get(&id).is_none()
                    && self.table.would_accept(&id, now)
                    && !self.transactions.values().any(|t| t.addr == from)
            }
            _ => false,
        };
        let mut r = Response::id_only(self.id);
        match query {
            Query::Ping => {}
            Query::FindNode { target } => r.nodes = self.table.closest(&target, K, now),
            Query::GetPeers { info_hash } => {
                r.token = Token::new(&self.tokens.token(from.ip()));
                r.values = self.store.peers(&info_hash, MAX_VALUES_IN_REPLY);
                if r.values.is_empty() {
                    r.nodes = self.table.closest(&NodeId(info_hash.0), K, now);
                }
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if !self.tokens.check(from.ip(), token.as_bytes()) {
                    self.stats.bad_tokens += 1;
                    self.reply(from, error_reply(tid, code::PROTOCOL, "bad token"));
                    return;
                }
                let port = if implied_port { from.port() } else { port };
                if port != 0 {
                    self.store
                        .announce(now, info_hash, SocketAddr::new(from.ip(), port));
                }
            }
        }
        self.reply(
            from,
            Message {
                tid,
                body: Body::Response(r),
                ip: Some(from),
            },
        );
        if verify {
            self.send_query(now, from, Some(id), Query::Ping, TxKind::Ping);
        }
    }

    /// Removes and returns the query that `tid` from `from` answers, if any.
    fn take_tx(&mut self, from: SocketAddr, tid: Tid) -> Option<Tx> {
        let b = tid.as_bytes();
        let key = u16::from_be_bytes(b.try_into().ok()?);
        if self.transactions.get(&key)?.addr != from {
            return None;
        }
        self.transactions.remove(&key)
    }

    fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        tid: Tid,
        r: Response,
        ip: Option<SocketAddr>,
    ) {
        let Some(tx) = self.take_tx(from, tid) else {
            self.stats.dropped_in += 1;
            return;
        };
        self.stats.replies_in += 1;
        if let Some(ip) = ip {
            self.vote_address(ip.ip());
        }
        if let Some(expected) = tx.node.filter(|&e| e != r.id) {
            // Another node answers at that address now (a restart with a new id): the one we
            // knew there is gone.
            self.table.failed(&expected, now);
        }
        let id_ok = !self.enforce_node_ids || id::is_bep42_valid(from.ip(), &r.id);
        if let (SocketAddr::V4(v4), true) = (from, id_ok) {
            if let Insert::Full { ping: Some(n) } =
                self.table.heard_from(now, r.id, v4, Contact::Responded)
            {
                self.send_query(
                    now,
                    SocketAddr::V4(n.addr),
                    Some(n.id),
                    Query::Ping,
                    TxKind::Ping,
                );
            }
        }
        match tx.kind {
            TxKind::Ping => {}
            TxKind::Lookup(l) => {
                let (SocketAddr::V4(v4), Some(run)) = (from, self.lookups.get_mut(&l)) else {
                    return;
                };
                let new = run
                    .lookup
                    .on_response(v4, r.id, &r.nodes, &r.values, r.token);
                if let (Purpose::GetPeers { info_hash, .. }, false) = (run.purpose, new.is_empty())
                {
                    self.push_event(Event::PeersFound {
                        lookup: l,
                        info_hash,
                        peers: new,
                    });
                }
            }
            TxKind::Announce(l) => {
                if let Some(Run {
                    announcing: Some((awaited, accepted)),
                    ..
                }) = self.lookups.get_mut(&l)
                {
                    *awaited = awaited.saturating_sub(1);
                    *accepted += 1;
                }
            }
        }
    }

    fn on_error(&mut self, now: Instant, from: SocketAddr, tid: Tid) {
        match self.take_tx(from, tid) {
            Some(tx) => {
                self.stats.replies_in += 1;
                // It is alive but refused: not a failure for the table, a failure for the
                // lookup.
                self.on_tx_failed(now, tx, false);
            }
            None => self.stats.dropped_in += 1,
        }
    }

    /// A query went unanswered (`timed_out`) or was answered with an error.
    fn on_tx_failed(&mut self, now: Instant, tx: Tx, timed_out: bool) {
        if timed_out {
            if let Some(id) = tx.node {
                self.table.failed(&id, now);
            }
        }
        match tx.kind {
            TxKind::Ping => {}
            TxKind::Lookup(l) => {
                if let (Some(run), SocketAddr::V4(v4)) = (self.lookups.get_mut(&l), tx.addr) {
                    run.lookup.on_failure(v4);
                }
            }
            TxKind::Announce(l) => {
                if let Some(Run {
                    announcing: Some((awaited, _)),
                    ..
                }) = self.lookups.get_mut(&l)
                {
                    *awaited = awaited.saturating_sub(1);
                }
            }
        }
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Whether a query can be sent now.
    fn room(&self) -> bool {
        self.outgoing.len() < MAX_OUTGOING
            && self.transactions.len() < MAX_TRANSACTIONS
            && self.timeout_timers.len() < MAX_TIMERS
    }

    /// Sends a query, unless there is no room (then it is as if it was never asked).
    fn send_query(
        &mut self,
        now: Instant,
        to: SocketAddr,
        node: Option<NodeId>,
        query: Query,
        kind: TxKind,
    ) -> bool {
        if !self.room() {
            self.stats.dropped_out += 1;
            return false;
        }
        let mut tid = self.next_tid;
        while self.transactions.contains_key(&tid) {
            tid = tid.wrapping_add(1);
        }
        self.next_tid = tid.wrapping_add(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = Message {
            tid: Tid::new(&tid.to_be_bytes()).expect("two bytes fit"),
            body: Body::Query {
                id: self.id,
                query,
                read_only: false,
            },
            ip: None,
        };
        self.outgoing.push_back((to, msg.to_bytes()));
        self.transactions.insert(
            tid,
            Tx {
                addr: to,
                node,
                kind,
                seq,
            },
        );
        if matches!(kind, TxKind::Lookup(_)) {
            self.slow_timers.push_back((now + SLOW_AFTER, tid, seq));
        }
        self.timeout_timers
            .push_back((now + QUERY_TIMEOUT, tid, seq));
        self.stats.queries_out += 1;
        true
    }

    /// Sends the queries lookups want, and finishes the lookups that are done.
    fn pump(&mut self, now: Instant) {
        let mut ids: Vec<LookupId> = self.lookups.keys().copied().collect();
        ids.sort_unstable();
        for l in ids {
            let Some(run) = self.lookups.get_mut(&l) else {
                continue;
            };
            if run.announcing.is_none() {
                let mut queries = Vec::new();
                while self.outgoing.len() + queries.len() < MAX_OUTGOING
                    && self.transactions.len() + queries.len() < MAX_TRANSACTIONS
                    && self.timeout_timers.len() + queries.len() < MAX_TIMERS
                {
                    let Some(q) = run.lookup.next_query() else {
                        break;
                    };
                    queries.push(q);
                }
                let target = run.lookup.target();
                let query = match run.purpose {
                    Purpose::GetPeers { info_hash, .. } => Query::GetPeers { info_hash },
                    _ => Query::FindNode { target },
                };
                for (node, addr) in queries {
                    self.send_query(
                        now,
                        SocketAddr::V4(addr),
                        node,
                        query.clone(),
                        TxKind::Lookup(l),
                    );
                }
            }
            self.maybe_finish(now, l);
        }
    }

    fn maybe_finish(&mut self, now: Instant, l: LookupId) {
        let Some(run) = self.lookups.get_mut(&l) else {
            return;
        };
        match run.announcing {
            None if run.lookup.is_done() => match run.purpose {
                Purpose::Bootstrap => {
                    self.lookups.remove(&l);
                    let nodes = self.table.len();
                    self.push_event(Event::Bootstrapped { nodes });
                    // Then a lookup into every bucket, as Kademlia's join does: without it,
                    // the far regions of the id space learn of us only by chance.
                    for target in self.table.all_refresh_targets(now, &mut self.rng) {
                        if self
                            .start_lookup(now, target, Purpose::Refresh, &[])
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                Purpose::Refresh => {
                    self.lookups.remove(&l);
                }
                Purpose::GetPeers {
                    info_hash,
                    announce,
                } => {
                    let done = Event::LookupDone {
                        lookup: l,
                        info_hash,
                        peers: run.lookup.peers_found(),
                        queries: run.lookup.queries_sent(),
                    };
                    let targets = match announce {
                        Some(_) => run.lookup.announce_targets(),
                        None => Vec::new(),
                    };
                    self.push_event(done);
                    let Some(port) = announce else {
                        self.lookups.remove(&l);
                        return;
                    };
                    let mut sent = 0;
                    for (id, addr, token) in targets {
                        let q = Query::AnnouncePeer {
                            info_hash,
                            port,
                            implied_port: false,
                            token,
                        };
                        if self.send_query(
                            now,
                            SocketAddr::V4(addr),
                            Some(id),
                            q,
                            TxKind::Announce(l),
                        ) {
                            sent += 1;
                        }
                    }
                    if let Some(run) = self.lookups.get_mut(&l) {
                        run.announcing = Some((sent, 0));
                    }
                    self.maybe_finish(now, l);
                }
            },
            Some((0, accepted)) => {
                if let Purpose::GetPeers { info_hash, .. } = run.purpose {
                    self.lookups.remove(&l);
                    if accepted == 0 {
                        // Nobody took it (an empty table at start-up, a network outage):
                        // try again soon rather than in 15 minutes.
                        if let Some(a) = self.announced.get_mut(&info_hash) {
                            a.next = a.next.min(now + BOOTSTRAP_RETRY);
                        }
                    }
                    self.push_event(Event::AnnounceDone {
                        lookup: l,
                        info_hash,
                        nodes: accepted,
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
