//! The choker: which peers we upload to. Pure policy, with the time and the randomness passed
//! in; the torrent actor measures the rates and sends the orders.
//!
//! Tit-for-tat: every ten seconds the interested peers that gave us the most since the last round
//! (or, seeding, took the most) get the regular slots, and one more peer gets the optimistic slot,
//! which moves every thirty seconds so that newcomers get a chance to prove themselves. Between
//! rounds, free slots go to interested peers at once, so a newcomer does not wait ten seconds
//! for its first byte.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use shoal_engine::picker::PeerKey;

/// How often the choker re-ranks peers.
pub(super) const RECHOKE_EVERY: Duration = Duration::from_secs(10);

/// How often the optimistic unchoke moves to another peer.
pub(super) const OPTIMISTIC_EVERY: Duration = Duration::from_secs(30);

/// What the choker needs to know of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Candidate {
    /// The peer.
    pub key: PeerKey,
    /// Whether it wants our pieces.
    pub interested: bool,
    /// Whether we choke it now.
    pub choked: bool,
    /// Bytes it gave us (or, seeding, took from us) since the last round.
    pub rate: u64,
}

/// The choker's state between rounds.
#[derive(Debug)]
pub(super) struct Choker {
    /// Regular unchoke slots; the optimistic one comes on top.
    upload_slots: usize,
    /// The peer holding the optimistic unchoke.
    optimistic: Option<PeerKey>,
    /// When the last full round ran.
    last_rechoke: Instant,
    /// When the optimistic slot last moved.
    last_optimistic: Instant,
}

impl Choker {
    /// A choker with `upload_slots` regular slots, its first round due ten seconds from `now`.
    pub(super) fn new(upload_slots: usize, now: Instant) -> Self {
        Self {
            upload_slots,
            optimistic: None,
            last_rechoke: now,
            last_optimistic: now,
        }
    }

    /// Whether a full round is due.
    pub(super) fn due(&self, now: Instant) -> bool {
        now.duration_since(self.last_rechoke) >= RECHOKE_EVERY
    }

    /// A peer left: it no longer holds the optimistic slot.
    pub(super) fn peer_gone(&mut self, key: PeerKey) {
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
    }

    /// A full round: the peers to unchoke (every other one is choked). `pick(n)` chooses one of
    /// `n` candidates for the optimistic slot at random.
    pub(super) fn rechoke(
        &mut self,
        now: Instant,
        peers: &[Candidate],
        pick: impl FnOnce(usize) -> usize,
    ) -> HashSet<PeerKey> {
        self.last_rechoke = now;
        let mut ranked: Vec<&Candidate> = peers.iter().filter(|c| c.interested).collect();
        // Fastest first; ties by key, so a round is reproducible.
        ranked.sort_by(|a, b| b.rate.cmp(&a.rate).then(a.key.cmp(&b.key)));
        let mut unchoke: HashSet<PeerKey> = ranked
            .iter()
            .take(self.upload_slots)
            .map(|c| c.key)
            .collect();
        let holder_gone = self.optimistic.is_none_or(|k| {
            unchoke.contains(&k) || !peers.iter().any(|c| c.key == k && c.interested)
        });
        if holder_gone || now.duration_since(self.last_optimistic) >= OPTIMISTIC_EVERY {
            let rest: Vec<PeerKey> = ranked
                .iter()
                .map(|c| c.key)
                .filter(|k| !unchoke.contains(k))
                .collect();
            self.optimistic = if rest.is_empty() {
                None
            } else {
                Some(rest[pick(rest.len()).min(rest.len() - 1)])
            };
            self.last_optimistic = now;
        }
        if let Some(k) = self.optimistic {
            unchoke.insert(k);
        }
        unchoke
    }

    /// Between rounds: the choked, interested peers to unchoke now, while slots (regular plus
    /// the optimistic one) are free.
    pub(super) fn fill(&self, peers: &[Candidate]) -> Vec<PeerKey> {
        let unchoked = peers.iter().filter(|c| !c.choked).count();
        let free = (self.upload_slots + 1).saturating_sub(unchoked);
        peers
            .iter()
            .filter(|c| c.choked && c.interested)
            .take(free)
            .map(|c| c.key)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: u64, interested: bool, choked: bool, rate: u64) -> Candidate {
        Candidate {
            key: PeerKey(key),
            interested,
            choked,
            rate,
        }
    }

    fn keys(set: &HashSet<PeerKey>) -> Vec<u64> {
        let mut v: Vec<u64> = set.iter().map(|k| k.0).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_fastest_interested_peers_get_the_regular_slots_plus_one_optimistic() {
        let t0 = Instant::now();
        let mut c = Choker::new(2, t0);
        let peers = [
            peer(1, true, true, 10),
            peer(2, true, true, 500),
            peer(3, false, true, 9_999), // not interested: never unchoked
            peer(4, true, true, 300),
            peer(5, true, true, 1),
        ];
        // The optimistic pick is the first of the rest (1 or 5, in rate order: 1 then 5).
        let un = c.rechoke(t0, &peers, |_| 0);
        assert_eq!(keys(&un), [1, 2, 4]);
        let un = c.rechoke(t0, &peers, |n| n - 1);
        // The holder stays until thirty seconds have passed, whatever `pick` says now.
        assert_eq!(keys(&un), [1, 2, 4]);
    }

    #[test]
    fn the_optimistic_slot_moves_after_thirty_seconds() {
        let t0 = Instant::now();
        let mut c = Choker::new(1, t0);
        let peers = [
            peer(1, true, true, 100),
            peer(2, true, true, 0),
            peer(3, true, true, 0),
        ];
        let first = c.rechoke(t0, &peers, |_| 0);
        assert_eq!(keys(&first), [1, 2]);
        let same = c.rechoke(t0 + Duration::from_secs(20), &peers, |_| 1);
        assert_eq!(keys(&same), [1, 2]);
        let moved = c.rechoke(t0 + OPTIMISTIC_EVERY, &peers, |_| 1);
        assert_eq!(keys(&moved), [1, 3]);
    }

    #[test]
    fn an_optimistic_holder_that_earns_a_regular_slot_frees_the_optimistic_one() {
        let t0 = Instant::now();
        let mut c = Choker::new(1, t0);
        let un = c.rechoke(t0, &[peer(1, true, true, 5), peer(2, true, true, 0)], |_| 0);
        assert_eq!(keys(&un), [1, 2]);
        // Peer 2 is now the fastest: it takes the regular slot, peer 1 becomes optimistic.
        let un = c.rechoke(t0, &[peer(1, true, true, 0), peer(2, true, true, 9)], |_| 0);
        assert_eq!(keys(&un), [1, 2]);
    }

    #[test]
    fn a_departed_or_uninterested_holder_is_replaced() {
        let t0 = Instant::now();
        let mut c = Choker::new(0, t0);
        let un = c.rechoke(t0, &[peer(1, true, true, 0)], |_| 0);
        assert_eq!(keys(&un), [1]);
        c.peer_gone(PeerKey(1));
        let un = c.rechoke(t0, &[peer(2, true, true, 0)], |_| 0);
        assert_eq!(keys(&un), [2]);
        let un = c.rechoke(
            t0,
            &[peer(2, false, true, 0), peer(3, true, true, 0)],
            |_| 0,
        );
        assert_eq!(keys(&un), [3]);
        assert!(c.rechoke(t0, &[], |_| 0).is_empty());
    }

    #[test]
    fn fill_gives_free_slots_to_choked_interested_peers_only() {
        let t0 = Instant::now();
        let c = Choker::new(2, t0);
        let peers = [
            peer(1, true, false, 0), // already unchoked: takes a slot
            peer(2, false, true, 0),
            peer(3, true, true, 0),
            peer(4, true, true, 0),
            peer(5, true, true, 0),
        ];
        assert_eq!(c.fill(&peers), [PeerKey(3), PeerKey(4)]);
        let all_taken = [
            peer(1, true, false, 0),
            peer(2, true, false, 0),
            peer(3, true, false, 0),
        ];
        assert!(c.fill(&all_taken).is_empty());
    }

    #[test]
    fn a_round_is_due_every_ten_seconds() {
        let t0 = Instant::now();
        let mut c = Choker::new(4, t0);
        assert!(!c.due(t0 + Duration::from_secs(9)));
        assert!(c.due(t0 + RECHOKE_EVERY));
        c.rechoke(t0 + RECHOKE_EVERY, &[], |_| 0);
        assert!(!c.due(t0 + RECHOKE_EVERY + Duration::from_secs(1)));
    }
}
