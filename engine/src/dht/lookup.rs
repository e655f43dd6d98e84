//! The iterative lookup of Kademlia: ask the closest nodes we know for closer ones until the
//! [`K`] closest have all answered.
//!
//! A [`Lookup`] only decides whom to ask next and when it is done; the [`Dht`](super::Dht)
//! sends the queries, matches the replies and reports timeouts. At most [`ALPHA`] queries are
//! in flight; a query that has not been answered within the caller's "slow" delay stops
//! counting against that limit (it can still be answered), so one dead node does not stall
//! the lookup for a whole timeout. The lookup is over when the [`K`] closest candidates that
//! did not fail have all answered, or nothing is left to ask, or it has sent
//! [`MAX_QUERIES_PER_LOOKUP`] queries.
//!
//! A `get_peers` lookup also collects the peers found (deduplicated, at most
//! [`MAX_PEERS_PER_LOOKUP`]) and the tokens of the nodes that answered, for the
//! `announce_peer` that may follow ([`Lookup::announce_targets`]).

use std::collections::HashSet;
use std::net::{SocketAddr, SocketAddrV4};

use super::id::NodeId;
use super::krpc::{CompactNode, Token};
use super::routing::K;

/// Queries in flight per lookup (Kademlia's alpha; BEP 5 implementations use 3).
pub const ALPHA: usize = 3;

/// Candidates remembered per lookup, closest first. Replies add up to 8 nodes each; keeping
/// the 64 closest is ample to find the 8 closest while bounding what replies can grow.
pub const MAX_CANDIDATES: usize = 64;

/// Queries one lookup may send. A lookup in the whole mainline DHT converges in 20 to 60;
/// this stops one that a hostile network keeps feeding with ever "closer" fake nodes.
pub const MAX_QUERIES_PER_LOOKUP: usize = 128;

/// Distinct peers one lookup collects. A torrent's swarm is rarely bigger than what a
/// session can dial; replies from many nodes repeat the same peers.
pub const MAX_PEERS_PER_LOOKUP: usize = 1000;

/// Addresses without a known id (bootstrap nodes) a lookup may start from.
pub const MAX_SEEDS: usize = 32;

/// Where a candidate stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ask {
    /// Not asked yet.
    Fresh,
    /// Asked; counts against [`ALPHA`].
    InFlight,
    /// Asked long ago; still awaited but no longer counts against [`ALPHA`].
    Slow,
    /// Answered, with a token when it was a `get_peers`.
    Answered(Option<Token>),
    /// Did not answer, or answered with an error.
    Failed,
}

/// A node the lookup may ask.
#[derive(Clone, Debug)]
struct Candidate {
    /// Its id; `None` for a bootstrap address, which is asked first.
    id: Option<NodeId>,
    /// Its address.
    addr: SocketAddrV4,
    /// The distance of its id to the target (all zero for an unknown id).
    distance: [u8; 20],
    /// Where it stands.
    ask: Ask,
}

/// One iterative lookup.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// The id or info hash sought.
    target: NodeId,
    /// Our own id, never a candidate.
    own: NodeId,
    /// At most [`MAX_CANDIDATES`] nodes, closest first (unknown ids first of all).
    candidates: Vec<Candidate>,
    /// Peers found, at most [`MAX_PEERS_PER_LOOKUP`].
    peers: HashSet<SocketAddr>,
    /// Queries sent so far.
    queries: usize,
    /// Replies received so far.
    answers: usize,
}

impl Lookup {
    /// A lookup of `target` starting from known nodes and bootstrap addresses.
    pub fn new(target: NodeId, own: NodeId, nodes: &[CompactNode], seeds: &[SocketAddrV4]) -> Self {
        let mut l = Lookup {
            target,
            own,
            candidates: Vec::new(),
            peers: HashSet::new(),
            queries: 0,
            answers: 0,
        };
        for &addr in seeds.iter().take(MAX_SEEDS) {
            if !l.candidates.iter().any(|c| c.addr == addr) {
                l.candidates.push(Candidate {
                    id: None,
                    addr,
                    distance: [0; 20],
                    ask: Ask::Fresh,
                });
            }
        }
        l.add_nodes(nodes);
        l
    }

    /// The id or info hash sought.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Adds nodes learned from a reply (or the routing table), keeping the closest.
    pub fn add_nodes(&mut self, nodes: &[CompactNode]) {
        for n in nodes {
            if n.id == self.own
                || self
                    .candidates
                    .iter()
                    .any(|c| c.id == Some(n.id) || c.addr == n.addr)
            {
                continue;
            }
            let distance = n.id.distance(&self.target);
            let at = self
                .candidates
                .partition_point(|c| c.id.is_none() || c.distance <= distance);
            if at >= MAX_CANDIDATES {
                continue;
            }
            self.candidates.insert(
                at,
                Candidate {
                    id: Some(n.id),
                    addr: n.addr,
                    distance,
                    ask: Ask::Fresh,
                },
            );
            // Drop the farthest candidate that is not awaited, to stay bounded.
            if self.candidates.len() > MAX_CANDIDATES {
                if let Some(pos) = self
                    .candidates
                    .iter()
                    .rposition(|c| !matches!(c.ask, Ask::InFlight | Ask::Slow))
                {
                    self.candidates.remove(pos);
                }
            }
        }
    }

    /// The K closest candidates that did not fail.
    fn closest(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates
            .iter()
            .filter(|c| c.ask != Ask::Failed)
            .take(K)
    }

    /// The next node to ask, if the lookup has room for a query now; it counts as in flight
    /// from here on. Call until `None`.
    pub fn next_query(&mut self) -> Option<(Option<NodeId>, SocketAddrV4)> {
        if self.queries >= MAX_QUERIES_PER_LOOKUP {
            return None;
        }
        let in_flight = self
            .candidates
            .iter()
            .filter(|c| c.ask == Ask::InFlight)
            .count();
        if in_flight >= ALPHA {
            return None;
        }
        // The first fresh candidate among the K closest still in the running. Those beyond
        // are only worth asking if closer ones fail.
        let mut seen = 0;
        let mut pick = None;
        for (i, c) in self.candidates.iter().enumerate() {
            if c.ask == Ask::Failed {
                continue;
            }
            if c.ask == Ask::Fresh {
                pick = Some(i);
                break;
            }
            seen += 1;
            if seen >= K {
                break;
            }
        }
        let c = &mut self.candidates[pick?];
        c.ask = Ask::InFlight;
        self.queries += 1;
        Some((c.id, c.addr))
    }

    fn find(&mut self, addr: SocketAddrV4) -> Option<&mut Candidate> {
        self.candidates.iter_mut().find(|c| c.addr == addr)
    }

    /// A query to `addr` has been waiting long: it no longer holds a slot of [`ALPHA`].
    pub fn on_slow(&mut self, addr: SocketAddrV4) {
        if let Some(c) = self.find(addr) {
            if c.ask == Ask::InFlight {
                c.ask = Ask::Slow;
            }
        }
    }

    /// `addr` answered with id `id`, closer `nodes`, peers and a token. Returns the peers not
    /// seen before in this lookup.
    pub fn on_response(
        &mut self,
        addr: SocketAddrV4,
        id: NodeId,
        nodes: &[CompactNode],
        values: &[SocketAddr],
        token: Option<Token>,
    ) -> Vec<SocketAddr> {
        self.answers += 1;
        let target = self.target;
        if let Some(c) = self.find(addr) {
            c.ask = Ask::Answered(token);
            if c.id.is_none() {
                // A bootstrap node: now that its id is known, it takes its place by distance.
                c.id = Some(id);
                c.distance = id.distance(&target);
                self.candidates.sort_by(|a, b| {
                    (a.id.is_some(), a.distance).cmp(&(b.id.is_some(), b.distance))
                });
            }
        }
        self.add_nodes(nodes);
        let mut new = Vec::new();
        for &p in values {
            if self.peers.len() >= MAX_PEERS_PER_LOOKUP {
                break;
            }
            if self.peers.insert(p) {
                new.push(p);
            }
        }
        new
    }

    /// The query to `addr` timed out or was answered with an error.
    pub fn on_failure(&mut self, addr: SocketAddrV4) {
        if let Some(c) = self.find(addr) {
            c.ask = Ask::Failed;
        }
    }

    /// Whether the lookup is over (see the module doc).
    pub fn is_done(&self) -> bool {
        let awaited = self
            .candidates
            .iter()
            .any(|c| matches!(c.ask, Ask::InFlight | Ask::Slow));
        if self.queries >= MAX_QUERIES_PER_LOOKUP {
            return !awaited;
        }
        let mut closest = self.closest().peekable();
        if closest.peek().is_none() {
            return !awaited;
        }
        closest.all(|c| matches!(c.ask, Ask::Answered(_)))
    }

    /// The K closest nodes that answered with a token, to announce to.
    pub fn announce_targets(&self) -> Vec<(NodeId, SocketAddrV4, Token)> {
        self.candidates
            .iter()
            .filter_map(|c| match (&c.ask, c.id) {
                (Ask::Answered(Some(t)), Some(id)) => Some((id, c.addr, *t)),
                _ => None,
            })
            .take(K)
            .collect()
    }

    /// The K closest nodes that answered, closest first.
    pub fn closest_answered(&self) -> Vec<CompactNode> {
        self.candidates
            .iter()
            .filter_map(|c| match (&c.ask, c.id) {
                (Ask::Answered(_), Some(id)) => Some(CompactNode { id, addr: c.addr }),
                _ => None,
            })
            .take(K)
            .collect()
    }

    /// How many peers the lookup found.
    pub fn peers_found(&self) -> usize {
        self.peers.len()
    }

    /// How many queries it sent.
    pub fn queries_sent(&self) -> usize {
        self.queries
    }

    /// How many replies it received.
    pub fn answers(&self) -> usize {
        self.answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn node(i: u8) -> CompactNode {
        let mut id = [0u8; 20];
        id[0] = i;
        CompactNode {
            id: NodeId(id),
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 6881),
        }
    }

    #[test]
    fn asks_three_at_a_time_closest_first_and_ends_when_the_closest_answered() {
        let target = NodeId([0; 20]);
        let own = NodeId([0xff; 20]);
        let start: Vec<_> = (100..120).map(node).collect();
        let mut l = Lookup::new(target, own, &start, &[]);
        let q: Vec<_> = std::iter::from_fn(|| l.next_query()).collect();
        assert_eq!(q.len(), ALPHA);
        assert_eq!(q[0].1, node(100).addr);
        // An answer with closer nodes: the next query goes to the closest.
        let closer: Vec<_> = (1..9).map(node).collect();
        l.on_response(node(100).addr, node(100).id, &closer, &[], None);
        assert_eq!(l.next_query().unwrap().1, node(1).addr);
        assert!(l.next_query().is_none());
        // Slow queries free their slot.
        l.on_slow(node(101).addr);
        l.on_slow(node(102).addr);
        assert_eq!(l.next_query().unwrap().1, node(2).addr);
        assert_eq!(l.next_query().unwrap().1, node(3).addr);
        // Answer everything asked, then the rest, until done.
        let mut rounds = 0;
        while !l.is_done() {
            rounds += 1;
            assert!(rounds < 100);
            for n in (1..9).map(node).chain(start.iter().copied()) {
                l.on_response(n.addr, n.id, &[], &[], Token::new(b"tk"));
            }
            while l.next_query().is_some() {}
        }
        let closest: Vec<_> = l.closest_answered().iter().map(|c| c.id).collect();
        assert_eq!(closest, (1..9).map(|i| node(i).id).collect::<Vec<_>>());
        assert_eq!(l.announce_targets().len(), K);
        assert!(l.queries_sent() < 30, "never asks beyond the K closest");
    }

    #[test]
    fn failures_let_farther_nodes_in_and_exhaustion_ends_it() {
        let target = NodeId([0; 20]);
        let start: Vec<_> = (1..4).map(node).collect();
        let mut l = Lookup::new(target, NodeId([0xff; 20]), &start, &[]);
        while l.next_query().is_some() {}
        assert!(!l.is_done());
        for n in &start {
            l.on_failure(n.addr);
        }
        assert!(l.is_done(), "nothing left to ask");
        assert!(l.closest_answered().is_empty());
    }

    #[test]
    fn bootstrap_seeds_are_asked_first_and_peers_are_deduplicated() {
        let seed = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 6881);
        let mut l = Lookup::new(
            NodeId([0; 20]),
            NodeId([0xff; 20]),
            &[node(50)],
            &[seed, seed],
        );
        assert_eq!(l.next_query(), Some((None, seed)));
        let peers: Vec<SocketAddr> =
            vec!["1.2.3.4:5".parse().unwrap(), "1.2.3.4:5".parse().unwrap()];
        let new = l.on_response(seed, NodeId([0x80; 20]), &[node(9)], &peers, None);
        assert_eq!(new.len(), 1);
        assert!(l
            .on_response(seed, NodeId([0x80; 20]), &[], &peers, None)
            .is_empty());
        assert_eq!(l.peers_found(), 1);
        assert_eq!(l.next_query().unwrap().1, node(9).addr);
    }

    #[test]
    fn candidates_and_queries_are_bounded() {
        let mut rng = fastrand::Rng::with_seed(1);
        let target = NodeId::random(&mut rng);
        let mut l = Lookup::new(target, NodeId::random(&mut rng), &[], &[]);
        for round in 0..1000u32 {
            let nodes: Vec<_> = (0..16u32)
                .map(|i| CompactNode {
                    id: NodeId::random(&mut rng),
                    addr: SocketAddrV4::new(Ipv4Addr::from(round * 16 + i + 1), 1),
                })
                .collect();
            l.add_nodes(&nodes);
            assert!(l.candidates.len() <= MAX_CANDIDATES);
            while let Some((id, addr)) = l.next_query() {
                // A hostile network: every answer points at fresh nodes.
                l.on_response(addr, id.unwrap(), &[], &[], None);
            }
        }
        assert!(l.queries_sent() <= MAX_QUERIES_PER_LOOKUP);
        assert!(l.is_done());
    }
}
