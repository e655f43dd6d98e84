//! The Kademlia routing table of BEP 5: k-buckets of 8 nodes, split around our own id.
//!
//! Bucket `i` holds the nodes whose ids share exactly `i` leading bits with ours, except the
//! last bucket, which holds everything sharing at least as many: it is the one containing our
//! own id, and the only one that splits when full (so the table knows many nodes near us and
//! a few far away). There are at most [`MAX_BUCKETS`] buckets of [`K`] nodes plus
//! [`MAX_REPLACEMENTS`] spares each, so the table is bounded whatever strangers send.
//!
//! A node is *good* when it answered one of our queries in the last 15 minutes, or once
//! answered and sent us a query in the last 15 minutes; *bad* after [`MAX_FAILURES`] queries
//! in a row went unanswered; *questionable* otherwise. Only nodes that answered us enter the
//! table (a node that merely queried us is pinged first by the caller, see
//! [`RoutingTable::would_accept`]), so an address spoofed in a query cannot take a slot.
//! When a bucket is full a newcomer waits among the spares: a bad node is replaced at once,
//! and the least recently seen questionable node is pinged (the caller sends it, see
//! [`Insert::Full`]); failing twice makes it bad, and the newest spare takes its place.
//! A bucket nobody touched for 15 minutes is refreshed with a lookup of a random id in it
//! ([`RoutingTable::refresh_targets`]).

use std::fmt;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::id::NodeId;
use super::krpc::{read_compact_nodes, CompactNode, COMPACT_NODE_LEN};
use crate::bencode::{self, Value};

/// Nodes per bucket (Kademlia's k; BEP 5 uses 8).
pub const K: usize = 8;

/// Spare nodes kept per bucket to replace bad ones. As many as the bucket holds: enough to
/// refill it after a wave of departures without asking the network again.
pub const MAX_REPLACEMENTS: usize = 8;

/// At most one bucket per bit of the id space, so 1,280 nodes and 1,280 spares. In practice
/// a table of the whole mainline DHT has about 25 buckets.
pub const MAX_BUCKETS: usize = 160;

/// How long a node stays good after answering us, and how long a bucket may go untouched
/// before it is refreshed (BEP 5: 15 minutes for both).
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);

/// Unanswered queries in a row that make a node bad. BEP 5 suggests trying a silent node once
/// more before discarding it: a lost datagram is common, two in a row means the node is gone.
pub const MAX_FAILURES: u8 = 2;

/// How soon a questionable node may be pinged again to decide an eviction: longer than a
/// query's timeout, so one ping is in flight at a time.
pub const EVICTION_PING_INTERVAL: Duration = Duration::from_secs(10);

/// The state of a node (BEP 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Answered us recently.
    Good,
    /// Not heard from in 15 minutes, or never answered us in this session.
    Questionable,
    /// Failed to answer several queries in a row.
    Bad,
}

/// How we heard from a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// It answered one of our queries: the proof that it is at that address.
    Responded,
    /// It sent us a query. Known nodes are refreshed; unknown ones are not added.
    Queried,
    /// Loaded from a saved table: added as questionable where there is room.
    Loaded,
}

/// One node of the table.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddrV4,
    /// When it last answered one of our queries.
    last_response: Option<Instant>,
    /// When it last sent us a query.
    last_query: Option<Instant>,
    /// Queries in a row it left unanswered.
    failures: u8,
    /// When we last pinged it to decide an eviction.
    last_ping: Option<Instant>,
}

impl Entry {
    fn new(id: NodeId, addr: SocketAddrV4) -> Self {
        Entry {
            id,
            addr,
            last_response: None,
            last_query: None,
            failures: 0,
            last_ping: None,
        }
    }

    /// The node's state at `now`.
    pub fn state(&self, now: Instant) -> NodeState {
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < GOOD_FOR);
        if self.failures >= MAX_FAILURES {
            NodeState::Bad
        } else if recent(self.last_response)
            || (self.last_response.is_some() && recent(self.last_query))
        {
            NodeState::Good
        } else {
            NodeState::Questionable
        }
    }

    /// The contact, for replies.
    pub fn compact(&self) -> CompactNode {
        CompactNode {
            id: self.id,
            addr: self.addr,
        }
    }
}

/// What [`RoutingTable::heard_from`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// The node is new in the table.
    Added,
    /// The node was known; its times were updated.
    Updated,
    /// The node's bucket is full; it waits among the spares. When `ping` is set, the caller
    /// should ping that questionable node, and report a timeout with
    /// [`RoutingTable::failed`].
    Full {
        /// A questionable node of the bucket to ping.
        ping: Option<CompactNode>,
    },
    /// Nothing changed (our own id, a query from an unknown node, or a known id claimed from
    /// another address while its owner is still good).
    Ignored,
}

/// A bucket.
#[derive(Clone, Debug)]
struct Bucket {
    /// At most [`K`] nodes.
    nodes: Vec<Entry>,
    /// At most [`MAX_REPLACEMENTS`] spares that answered us, oldest first.
    replacements: Vec<Entry>,
    /// When a node of the bucket was last added or heard from, for refresh.
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            nodes: Vec::new(),
            replacements: Vec::new(),
            last_changed: now,
        }
    }
}

/// Why a saved table cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutingError {
    /// The bytes are not bencode.
    Bencode(bencode::BencodeError),
    /// Bencode, but not a saved table.
    Format(&'static str),
}

impl fmt::Display for RoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutingError::Bencode(e) => write!(f, "saved routing table: {e}"),
            RoutingError::Format(p) => write!(f, "saved routing table: {p}"),
        }
    }
}

impl std::error::Error for RoutingError {}

/// A saved table: our id and the nodes we knew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedTable {
    /// Our node id when saved.
    pub id: NodeId,
    /// The nodes, at most [`MAX_BUCKETS`] × [`K`].
    pub nodes: Vec<CompactNode>,
}

impl SavedTable {
    /// Reads a table written by [`RoutingTable::save`].
    pub fn load(bytes: &[u8]) -> Result<SavedTable, RoutingError> {
        let Value::Dict(d) = bencode::decode(bytes).map_err(RoutingError::Bencode)? else {
            return Err(RoutingError::Format("not a dictionary"));
        };
        let id = match d.get(b"id") {
            Some(Value::Bytes(b)) if b.len() == 20 => {
                let mut id = [0u8; 20];
                id.copy_from_slice(b);
                NodeId(id)
            }
            _ => return Err(RoutingError::Format("no 20-byte id")),
        };
        let nodes = match d.get(b"nodes") {
            Some(Value::Bytes(b)) if b.len() % COMPACT_NODE_LEN == 0 => {
                read_compact_nodes(b, MAX_BUCKETS * K)
            }
            Some(_) => return Err(RoutingError::Format("nodes is not a compact node list")),
            None => Vec::new(),
        };
        Ok(SavedTable { id, nodes })
    }
}

/// The routing table.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    /// Our id.
    own: NodeId,
    /// At least one bucket, at most [`MAX_BUCKETS`]; the last one contains our id.
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table around our id.
    pub fn new(own: NodeId, now: Instant) -> Self {
        RoutingTable {
            own,
            buckets: vec![Bucket::new(now)],
        }
    }

    /// Our id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    fn index(&self, id: &NodeId) -> usize {
        self.own.common_prefix_len(id).min(self.buckets.len() - 1)
    }

    /// How many nodes the table holds (spares not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.nodes.is_empty())
    }

    /// How many buckets there are.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// How many nodes are in each state: (good, questionable, bad).
    pub fn state_counts(&self, now: Instant) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for e in self.entries() {
            match e.state(now) {
                NodeState::Good => c.0 += 1,
                NodeState::Questionable => c.1 += 1,
                NodeState::Bad => c.2 += 1,
            }
        }
        c
    }

    /// Every node, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// The node with id `id`.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        self.buckets[self.index(id)]
            .nodes
            .iter()
            .find(|e| e.id == *id)
    }

    /// Whether a node with this id would get a slot if it answered us: unknown, and its
    /// bucket has room, a bad node, or can split.
    pub fn would_accept(&self, id: &NodeId, now: Instant) -> bool {
        if *id == self.own {
            return false;
        }
        let i = self.index(id);
        let b = &self.buckets[i];
        !b.nodes.iter().any(|e| e.id == *id)
            && (b.nodes.len() < K
                || b.nodes.iter().any(|e| e.state(now) == NodeState::Bad)
                || (i == self.buckets.len() - 1 && self.buckets.len() < MAX_BUCKETS))
    }

    /// Records that we heard from node `id` at `addr`.
    pub fn heard_from(
        &mut self,
        now: Instant,
        id: NodeId,
        addr: SocketAddrV4,
        contact: Contact,
    ) -> Insert {
        if id == self.own || addr.port() == 0 {
            return Insert::Ignored;
        }
        loop {
            let last = self.buckets.len() - 1;
            let can_split = self.buckets.len() < MAX_BUCKETS;
            let i = self.index(&id);
            let bucket = &mut self.buckets[i];
            if let Some(e) = bucket.nodes.iter_mut().find(|e| e.id == id) {
                if e.addr != addr {
                    // Someone else claims a known id: only a bad owner loses it.
                    if e.state(now) != NodeState::Bad || contact != Contact::Responded {
                        return Insert::Ignored;
                    }
                    e.addr = addr;
                }
                match contact {
                    Contact::Responded => {
                        e.last_response = Some(now);
                        e.failures = 0;
                    }
                    Contact::Queried => e.last_query = Some(now),
                    Contact::Loaded => {}
                }
                bucket.last_changed = now;
                return Insert::Updated;
            }
            if contact == Contact::Queried {
                return Insert::Ignored;
            }
            let mut entry = Entry::new(id, addr);
            if contact == Contact::Responded {
                entry.last_response = Some(now);
            }
            if bucket.nodes.len() < K {
                bucket.replacements.retain(|e| e.id != id);
                bucket.nodes.push(entry);
                bucket.last_changed = now;
                return Insert::Added;
            }
            if let Some(bad) = bucket
                .nodes
                .iter_mut()
                .find(|e| e.state(now) == NodeState::Bad)
            {
                *bad = entry;
                bucket.replacements.retain(|e| e.id != id);
                bucket.last_changed = now;
                return Insert::Added;
            }
            if i == last && can_split {
                self.split();
                continue;
            }
            if contact == Contact::Loaded {
                return Insert::Ignored;
            }
            // Full: keep it as the newest spare, and ask for a ping of the least recently
            // seen questionable node that has not just been pinged.
            bucket.replacements.retain(|e| e.id != id);
            if bucket.replacements.len() >= MAX_REPLACEMENTS {
                bucket.replacements.remove(0);
            }
            bucket.replacements.push(entry);
            let ping = bucket
                .nodes
                .iter_mut()
                .filter(|e| e.state(now) == NodeState::Questionable)
                .filter(|e| {
                    e.last_ping
                        .is_none_or(|t| now.saturating_duration_since(t) >= EVICTION_PING_INTERVAL)
                })
                .min_by_key(|e| e.last_response.max(e.last_query))
                .map(|e| {
                    e.last_ping = Some(now);
                    e.compact()
                });
            return Insert::Full { ping };
        }
    }

    /// Splits the last bucket: the nodes sharing one more bit with us move to a new last one.
    fn split(&mut self) {
        let i = self.buckets.len() - 1;
        let own = self.own;
        let old = &mut self.buckets[i];
        let mut new = Bucket::new(old.last_changed);
        let (near, far): (Vec<Entry>, Vec<Entry>) = old
            .nodes
            .drain(..)
            .partition(|e| own.common_prefix_len(&e.id) > i);
        old.nodes = far;
        new.nodes = near;
        let (near, far): (Vec<Entry>, Vec<Entry>) = old
            .replacements
            .drain(..)
            .partition(|e| own.common_prefix_len(&e.id) > i);
        old.replacements = far;
        new.replacements = near;
        self.buckets.push(new);
    }

    /// Records that node `id` left a query unanswered. A node that becomes bad is replaced by
    /// the newest spare of its bucket, if there is one.
    pub fn failed(&mut self, id: &NodeId, now: Instant) {
        let i = self.index(id);
        let bucket = &mut self.buckets[i];
        let Some(pos) = bucket.nodes.iter().position(|e| e.id == *id) else {
            bucket.replacements.retain(|e| e.id != *id);
            return;
        };
        let e = &mut bucket.nodes[pos];
        e.failures = e.failures.saturating_add(1);
        if e.state(now) == NodeState::Bad {
            if let Some(spare) = bucket.replacements.pop() {
                bucket.nodes[pos] = spare;
            }
        }
    }

    /// Up to `n` nodes closest to `target` that are not bad, closest first.
    pub fn closest(&self, target: &NodeId, n: usize, now: Instant) -> Vec<CompactNode> {
        let mut all: Vec<([u8; 20], CompactNode)> = self
            .entries()
            .filter(|e| e.state(now) != NodeState::Bad)
            .map(|e| (e.id.distance(target), e.compact()))
            .collect();
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().take(n).map(|(_, c)| c).collect()
    }

    /// Targets for refreshing the buckets untouched for [`GOOD_FOR`]: a random id in each.
    /// The buckets count as touched now, so each is refreshed at most every 15 minutes.
    pub fn refresh_targets(&mut self, now: Instant, rng: &mut fastrand::Rng) -> Vec<NodeId> {
        let last = self.buckets.len() - 1;
        let own = self.own;
        let mut targets = Vec::new();
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if now.saturating_duration_since(b.last_changed) < GOOD_FOR {
                continue;
            }
            b.last_changed = now;
            targets.push(random_in_bucket(&own, i, i == last, rng));
        }
        targets
    }

    /// A random id in every bucket, all marked touched now: after joining, a lookup into each
    /// region of the id space fills our buckets and makes us known there, as Kademlia's join
    /// procedure does.
    pub fn all_refresh_targets(&mut self, now: Instant, rng: &mut fastrand::Rng) -> Vec<NodeId> {
        let last = self.buckets.len() - 1;
        let own = self.own;
        self.buckets
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                b.last_changed = now;
                random_in_bucket(&own, i, i == last, rng)
            })
            .collect()
    }

    /// The table as bytes (bencode: our id and the compact nodes that are not bad), for the
    /// state folder. Read back with [`SavedTable::load`].
    pub fn save(&self, now: Instant) -> Vec<u8> {
        let nodes: Vec<&Entry> = self
            .entries()
            .filter(|e| e.state(now) != NodeState::Bad)
            .collect();
        let mut out = Vec::with_capacity(40 + nodes.len() * COMPACT_NODE_LEN);
        out.extend_from_slice(b"d2:id20:");
        out.extend_from_slice(&self.own.0);
        out.extend_from_slice(b"5:nodes");
        out.extend_from_slice((nodes.len() * COMPACT_NODE_LEN).to_string().as_bytes());
        out.push(b':');
        for e in nodes {
            e.compact().write(&mut out);
        }
        out.push(b'e');
        out
    }
}

/// A random id in bucket `i`: sharing exactly `i` leading bits with `own` (at least `i` for the
/// last bucket).
pub fn random_in_bucket(own: &NodeId, i: usize, last: bool, rng: &mut fastrand::Rng) -> NodeId {
    let mut id = NodeId::random(rng);
    for bit in 0..i.min(160) {
        let mask = 0x80u8 >> (bit % 8);
        id.0[bit / 8] = (id.0[bit / 8] & !mask) | (own.0[bit / 8] & mask);
    }
    if !last && i < 160 {
        let mask = 0x80u8 >> (i % 8);
        id.0[i / 8] = (id.0[i / 8] & !mask) | (!own.0[i / 8] & mask);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addr(i: u32) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 6881)
    }

    /// An id sharing exactly `prefix` bits with the all-zero id, tagged by `tag`.
    fn id_at(prefix: usize, tag: u8) -> NodeId {
        let mut id = [0u8; 20];
        id[prefix / 8] |= 0x80 >> (prefix % 8);
        id[19] ^= tag;
        if prefix == 159 {
            id[19] |= 1;
        }
        NodeId(id)
    }

    #[test]
    fn splits_the_bucket_holding_our_id() {
        let now = Instant::now();
        let own = NodeId([0; 20]);
        let mut t = RoutingTable::new(own, now);
        // Eight far nodes (first bit differs) fill the only bucket.
        for i in 0..8u8 {
            let mut id = [0xffu8; 20];
            id[19] = i;
            assert_eq!(
                t.heard_from(now, NodeId(id), addr(u32::from(i)), Contact::Responded),
                Insert::Added
            );
        }
        assert_eq!(t.bucket_count(), 1);
        // A ninth node near us splits it.
        assert_eq!(
            t.heard_from(now, id_at(5, 0), addr(100), Contact::Responded),
            Insert::Added
        );
        assert!(t.bucket_count() >= 2);
        assert_eq!(t.len(), 9);
        // A ninth far node finds its bucket full and cannot split it.
        let mut far = [0xffu8; 20];
        far[19] = 200;
        assert!(!t.would_accept(&NodeId(far), now));
        assert!(matches!(
            t.heard_from(now, NodeId(far), addr(200), Contact::Responded),
            Insert::Full { ping: None }
        ));
        assert_eq!(t.len(), 9);
        // Many nodes near us: the table grows in buckets, never past 8 per bucket.
        for p in 1..40 {
            for tag in 0..10u8 {
                t.heard_from(
                    now,
                    id_at(p, tag),
                    addr(1000 + p as u32 * 16 + u32::from(tag)),
                    Contact::Responded,
                );
            }
        }
        for b in &t.buckets {
            assert!(b.nodes.len() <= K && b.replacements.len() <= MAX_REPLACEMENTS);
        }
        assert!(t.bucket_count() <= MAX_BUCKETS);
        // Each bucket holds ids with the right prefix.
        let last = t.bucket_count() - 1;
        for (i, b) in t.buckets.iter().enumerate() {
            for e in &b.nodes {
                let cpl = own.common_prefix_len(&e.id);
                assert!(if i == last { cpl >= i } else { cpl == i });
            }
        }
        let closest = t.closest(&id_at(20, 0), 3, now);
        assert_eq!(closest[0].id, id_at(20, 0));
    }

    #[test]
    fn node_states_follow_the_fifteen_minute_rule() {
        let t0 = Instant::now();
        let mut t = RoutingTable::new(NodeId([0; 20]), t0);
        let a = id_at(0, 1);
        t.heard_from(t0, a, addr(1), Contact::Responded);
        assert_eq!(t.get(&a).unwrap().state(t0), NodeState::Good);
        let later = t0 + GOOD_FOR;
        assert_eq!(t.get(&a).unwrap().state(later), NodeState::Questionable);
        // A query from a node that answered before makes it good again.
        t.heard_from(later, a, addr(1), Contact::Queried);
        assert_eq!(t.get(&a).unwrap().state(later), NodeState::Good);
        t.failed(&a, later);
        assert_eq!(t.get(&a).unwrap().state(later), NodeState::Good);
        t.failed(&a, later);
        assert_eq!(t.get(&a).unwrap().state(later), NodeState::Bad);
        assert_eq!(t.state_counts(later), (0, 0, 1));
        // An answer clears the failures.
        t.heard_from(later, a, addr(1), Contact::Responded);
        assert_eq!(t.get(&a).unwrap().state(later), NodeState::Good);
        // A query from an unknown node adds nothing.
        let b = id_at(0, 2);
        assert_eq!(
            t.heard_from(t0, b, addr(2), Contact::Queried),
            Insert::Ignored
        );
        assert!(t.get(&b).is_none());
        assert!(t.would_accept(&b, t0));
        // A known good id claimed from another address is ignored.
        assert_eq!(
            t.heard_from(later, a, addr(3), Contact::Responded),
            Insert::Ignored
        );
        assert_eq!(t.get(&a).unwrap().addr, addr(1));
    }

    #[test]
    fn bad_and_silent_questionable_nodes_are_replaced() {
        let t0 = Instant::now();
        let own = NodeId([0; 20]);
        let mut t = RoutingTable::new(own, t0);
        // Fill a far bucket: split once so bucket 0 is not the last.
        t.heard_from(t0, id_at(3, 0), addr(999), Contact::Responded);
        for i in 0..8u8 {
            t.heard_from(t0, id_at(0, i), addr(u32::from(i)), Contact::Responded);
        }
        t.heard_from(t0, id_at(0, 50), addr(50), Contact::Responded);
        assert!(t.bucket_count() >= 2);
        assert_eq!(t.buckets[0].nodes.len(), 8);
        // All good: the newcomer waits, nobody to ping.
        assert_eq!(
            t.heard_from(t0, id_at(0, 100), addr(100), Contact::Responded),
            Insert::Full { ping: None }
        );
        // Later they are questionable: the least recently seen is pinged.
        let later = t0 + GOOD_FOR + Duration::from_secs(1);
        t.heard_from(later, id_at(0, 0), addr(0), Contact::Responded);
        let Insert::Full { ping: Some(p) } =
            t.heard_from(later, id_at(0, 101), addr(101), Contact::Responded)
        else {
            panic!("expected a ping")
        };
        assert_ne!(p.id, id_at(0, 0), "the node just heard from is good");
        // It fails twice: the newest spare takes its slot.
        t.failed(&p.id, later);
        assert!(t.get(&p.id).is_some());
        t.failed(&p.id, later);
        assert!(t.get(&p.id).is_none());
        assert!(t.get(&id_at(0, 101)).is_some());
        // A bad node is replaced at once by a newcomer.
        let victim = id_at(0, 3);
        t.failed(&victim, later);
        t.failed(&victim, later);
        // (it was replaced by the remaining spare, id 100)
        assert!(t.get(&victim).is_none());
        assert!(t.get(&id_at(0, 100)).is_some());
        // The last spare (id 50, which arrived when the bucket first filled) replaces the next.
        let v2 = id_at(0, 4);
        t.failed(&v2, later);
        t.failed(&v2, later);
        assert!(t.get(&id_at(0, 50)).is_some());
        let v2 = id_at(0, 5);
        t.failed(&v2, later);
        t.failed(&v2, later);
        assert_eq!(
            t.get(&v2).unwrap().state(later),
            NodeState::Bad,
            "no spare left"
        );
        assert_eq!(
            t.heard_from(later, id_at(0, 102), addr(102), Contact::Responded),
            Insert::Added
        );
        assert!(t.get(&v2).is_none());
        assert_eq!(t.buckets[0].nodes.len(), 8);
    }

    #[test]
    fn refresh_targets_untouched_buckets_and_land_in_them() {
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(3);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, t0);
        for _ in 0..200 {
            let id = NodeId::random(&mut rng);
            t.heard_from(t0, id, addr(rng.u32(..1 << 20)), Contact::Responded);
        }
        assert!(t.refresh_targets(t0, &mut rng).is_empty());
        let later = t0 + GOOD_FOR;
        let targets = t.refresh_targets(later, &mut rng);
        assert_eq!(targets.len(), t.bucket_count());
        let last = t.bucket_count() - 1;
        for (i, target) in targets.iter().enumerate() {
            let cpl = own.common_prefix_len(target);
            assert!(if i == last { cpl >= i } else { cpl == i }, "{i} {cpl}");
        }
        assert!(t.refresh_targets(later, &mut rng).is_empty());
    }

    #[test]
    fn save_and_load() {
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(5);
        let own = NodeId::random(&mut rng);
        let mut t = RoutingTable::new(own, t0);
        for i in 0..50 {
            t.heard_from(t0, NodeId::random(&mut rng), addr(i), Contact::Responded);
        }
        let bytes = t.save(t0);
        let saved = SavedTable::load(&bytes).unwrap();
        assert_eq!(saved.id, own);
        assert_eq!(saved.nodes.len(), t.len());
        let mut t2 = RoutingTable::new(saved.id, t0);
        for n in &saved.nodes {
            t2.heard_from(t0, n.id, n.addr, Contact::Loaded);
        }
        assert_eq!(t2.len(), t.len());
        assert_eq!(
            t2.state_counts(t0),
            (0, t.len(), 0),
            "loaded nodes are questionable"
        );
        let mut a: Vec<_> = t.entries().map(|e| (e.id, e.addr)).collect();
        let mut b: Vec<_> = t2.entries().map(|e| (e.id, e.addr)).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);

        assert!(SavedTable::load(b"").is_err());
        assert!(SavedTable::load(b"de").is_err());
        assert!(SavedTable::load(b"d2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes3:abce").is_err());
        assert_eq!(
            SavedTable::load(b"d2:id20:aaaaaaaaaaaaaaaaaaaae")
                .unwrap()
                .nodes,
            vec![]
        );
    }
}
