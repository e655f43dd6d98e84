//! Super-seeding (BEP 16): a seed that hides its pieces and offers each downloader one piece
//! nobody has yet, then the next once the last has been seen spreading.
//!
//! The policy only; the caller tells it who joined, left and announced what, and sends the
//! HAVEs it asks for ([`SuperSeed::poll_event`]). Time and randomness are passed in, so tests
//! drive it with a fake clock and a fixed seed.
//!
//! # The rules
//! - **What a peer is told.** A super-seeded peer gets no bitfield (HAVE NONE with the fast
//!   extension), then one HAVE per piece offered to it. It may request only pieces it has been
//!   offered (the caller refuses the rest).
//! - **Which piece.** The piece offered is one the peer lacks that nobody has and nobody is
//!   being offered (chosen at random among those). When none is left, nothing is offered: the
//!   peer gets its pieces from the others. Only on a stall (below) may a piece nobody has be
//!   offered to a second peer while the first still holds it, and only once it was last
//!   offered [`STALL`] ago or more. A piece some peer has, or had, is never offered again
//!   (see *Departures*).
//! - **When the next.** A peer holds at most `offers_per_peer` offers it has not completed,
//!   and at most [`AHEAD`] completed ones not yet seen spreading: while below both, its own
//!   HAVE earns it the next (so the seeder's upload is not held to one piece per spread, which
//!   waits on the holder's choker). An offer is retired when another peer announces the
//!   piece: it has been seen spreading (BEP 16: "present on at least one other client"). The
//!   holder's own HAVE is not needed for that, since many clients (shoal before this module
//!   among them) do not send a HAVE for a piece the remote says it has; when it comes after
//!   the other peer's, the offer is retired then. When the peer is the only downloader
//!   connected, its own HAVE retires the offer (nobody could spread it).
//!   An offer the peer had already (its bitfield came after the offer) is retired at once.
//! - **Stalls.** A peer whose offers have not moved for [`STALL`] has the offers it completed
//!   retired (they will spread later through the normal exchange), or, when it completed none
//!   (or never said so), one more offer; past [`MAX_OFFERS`] its oldest offer is retired
//!   first. A slow spread, a lone peer that sends no HAVE or a peer that never asks cannot
//!   stop the swarm; such a peer gets a piece per [`STALL`] at worst.
//! - **Departures.** A piece once seen at a peer stays "in the swarm" when that peer's
//!   connection ends: under a per-torrent peer cap, connections end to make room (a
//!   downloader evicts an idle one, and ours looks idle between offers) while the peer stays
//!   in the swarm and hands the piece on, so offering it again would upload it twice (at 200
//!   downloaders capped at 90 peers, 118 of 256 pieces were offered two to seven times
//!   before this rule). Only when no connected peer has announced it for [`LOST_GRACE`] is it
//!   taken as gone and offered again: the BEP's "very rare" piece.
//! - **Seeds** get no offers.
//! - **The end.** Super-seeding ends for good once every piece is at two connected peers or
//!   more: the swarm then holds two copies without us, and no piece depends on one peer, so
//!   hiding pieces from then on would only slow the last downloaders. [`Event::End`] tells the
//!   caller to reveal every piece to every peer (a HAVE each). Ending at the first full copy
//!   instead would put the seeder back to normal seeding at the very moment it was needed
//!   least, and ending when the first downloader completes did so too when that downloader
//!   had been alone long enough to take everything from us. libtorrent keeps super-seeding
//!   until it is turned off and ends it only when the torrent stops being a seed; the caller
//!   ends it then too, by dropping this state.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::bitfield::Bitfield;
use crate::picker::PeerKey;

/// How long a peer's offers may stay unchanged before it gets another one anyway.
pub const STALL: Duration = Duration::from_secs(10);

/// The most offers a peer may hold at once, stall offers included. A peer can grow its offers
/// only by not completing them, so this bounds what one slow or silent peer can be told.
pub const MAX_OFFERS: usize = 4;

/// The most peers a piece is offered to at once. A second (third, fourth) offer happens only
/// on a stall, when no holder has delivered the piece for [`STALL`] since the last offer of
/// it, so at most one more holder per [`STALL`]: a piece whose holders do not fetch it (at 200
/// downloaders, two pieces stayed with two such holders for 140 s while every download waited
/// on them) reaches the swarm, and a piece that is merely slow costs a second copy at most.
const MAX_HOLDERS: usize = 4;

/// How long a piece seen at a peer may go without any connected peer having it before it is
/// taken as gone from the swarm and offered again. A peer whose connection ended usually
/// stays in the swarm, and its neighbours announce the piece within a spread or two (a
/// spread takes up to [`STALL`]); a piece truly lost waits this long to come back.
pub const LOST_GRACE: Duration = Duration::from_secs(30);

/// Completed offers not yet seen spreading a peer may hold and still get its next: the seeder
/// then hands out fresh pieces as fast as its peers fetch them instead of one per spread
/// (a spread waits on the holder's choker, 10 s and more: at 200 downloaders the first copy
/// took 100 s against 16 s for a normal seeder), while a peer that shares nothing gets no
/// more than this many pieces ahead of the swarm. Every offer is still a piece nobody has.
pub const AHEAD: usize = 3;

/// How many random draws among the fresh pieces are tried before a full scan.
const FRESH_DRAWS: usize = 64;

/// What the caller must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Send `peer` a HAVE for `piece` and let it request that piece.
    Offer {
        /// The peer.
        peer: PeerKey,
        /// The piece.
        piece: u32,
    },
    /// Super-seeding is over: tell every peer every piece.
    End(EndReason),
}

/// Why super-seeding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Every piece is at two connected peers or more: the swarm no longer needs us for any
    /// piece, even if one peer holding it leaves.
    EveryPieceAtTwoPeers,
}

/// One connected peer.
#[derive(Debug)]
struct PeerState {
    /// Its pieces, as its bitfield and HAVEs say.
    has: Bitfield,
    /// Whether it gets offers (it was told nothing of our pieces at connect).
    super_seeded: bool,
    /// The pieces offered to it and not retired.
    offers: Vec<u32>,
    /// When its offers last changed.
    moved: Instant,
}

/// The super-seeding policy of one torrent; see the module documentation.
#[derive(Debug)]
pub struct SuperSeed {
    /// Pieces in the torrent.
    num_pieces: u32,
    /// Offers a peer holds in the normal course, not counting completed ones.
    offers_per_peer: usize,
    /// Completed offers not yet seen spreading that a peer may hold and still get the next.
    ahead: usize,
    /// How many connected peers have each piece.
    availability: Vec<u32>,
    /// How many times each piece was offered, in all.
    offered_count: Vec<u32>,
    /// When each piece was last offered, if ever.
    offered_at: Vec<Option<Instant>>,
    /// The peers each piece is offered to now (only pieces with an offer).
    holders: HashMap<u32, Vec<PeerKey>>,
    /// Pieces nobody has and nobody is offered, as far as was known when each was added (kept
    /// lazily: checked when drawn); `in_fresh` marks members, so each appears once.
    fresh: Vec<u32>,
    /// Membership of `fresh`.
    in_fresh: Bitfield,
    /// Pieces seen at a connected peer at some time (so in the swarm, as far as we know),
    /// until taken as lost ([`LOST_GRACE`]).
    seen: Bitfield,
    /// Since when each seen piece is at no connected peer (`None`: at one at least, or
    /// never seen).
    lost_at: Vec<Option<Instant>>,
    /// Seen pieces at no connected peer, in the order they were lost (kept lazily: checked
    /// at each tick); `in_lost` marks members, so each appears once and the queue holds at
    /// most one entry per piece.
    lost: VecDeque<u32>,
    /// Membership of `lost`.
    in_lost: Bitfield,
    /// Connected peers.
    peers: HashMap<PeerKey, PeerState>,
    /// Connected peers that are not seeds.
    downloaders: usize,
    /// Pieces that two connected peers or more have.
    at_two: u32,
    /// The random state (xorshift64*).
    rng: u64,
    /// What the caller must do, in order.
    events: VecDeque<Event>,
    /// Set once super-seeding ended.
    ended: bool,
}

impl SuperSeed {
    /// Super-seeding of a torrent of `num_pieces` pieces, offering each peer
    /// `offers_per_peer` pieces at a time (at least 1, at most [`MAX_OFFERS`]), with random
    /// choices drawn from `seed`.
    pub fn new(num_pieces: u32, offers_per_peer: usize, seed: u64) -> Self {
        Self {
            num_pieces,
            offers_per_peer: offers_per_peer.clamp(1, MAX_OFFERS),
            ahead: AHEAD,
            availability: vec![0; num_pieces as usize],
            offered_count: vec![0; num_pieces as usize],
            offered_at: vec![None; num_pieces as usize],
            holders: HashMap::new(),
            fresh: (0..num_pieces).collect(),
            in_fresh: Bitfield::full(num_pieces),
            seen: Bitfield::new(num_pieces),
            lost_at: vec![None; num_pieces as usize],
            lost: VecDeque::new(),
            in_lost: Bitfield::new(num_pieces),
            peers: HashMap::new(),
            downloaders: 0,
            at_two: 0,
            rng: seed | 1,
            events: VecDeque::new(),
            ended: false,
        }
    }

    /// Lets a peer hold up to `ahead` completed offers not yet seen spreading and still get
    /// its next ([`AHEAD`] by default; 0: the next waits until every completed offer spread).
    pub fn set_ahead(&mut self, ahead: usize) {
        self.ahead = ahead.min(MAX_OFFERS - 1);
    }

    /// Whether super-seeding has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The pieces offered to `peer` now.
    pub fn offers(&self, peer: PeerKey) -> &[u32] {
        self.peers.get(&peer).map_or(&[], |p| &p.offers)
    }

    /// How many times `piece` was offered, in all.
    pub fn offered_count(&self, piece: u32) -> u32 {
        self.offered_count.get(piece as usize).copied().unwrap_or(0)
    }

    /// The next thing the caller must do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A peer connected. `super_seeded`: it was told none of our pieces, so it gets offers;
    /// otherwise (it connected before super-seeding began) only its pieces count.
    pub fn handle_join(&mut self, peer: PeerKey, super_seeded: bool, now: Instant) {
        if self.ended || self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            PeerState {
                has: Bitfield::new(self.num_pieces),
                super_seeded,
                offers: Vec::new(),
                moved: now,
            },
        );
        self.downloaders += 1;
        // Offer at once: a peer with nothing may never send a bitfield at all.
        self.refill(peer, now);
    }

    /// The peer's whole bitfield (or HAVE ALL / HAVE NONE), replacing what it said before.
    /// Ignored when its length is not the torrent's.
    pub fn handle_bitfield(&mut self, peer: PeerKey, bitfield: &Bitfield, now: Instant) {
        if self.ended || bitfield.len() != self.num_pieces {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let was_seed = p.has.all();
        let old = std::mem::replace(&mut p.has, bitfield.clone());
        for i in old.iter_ones() {
            self.avail_dec(i, now);
            if self.availability[i as usize] == 0 {
                self.maybe_fresh(i);
            }
        }
        let mut news = Vec::new();
        for i in bitfield.iter_ones() {
            self.avail_inc(i);
            if !old.get(i) {
                news.push(i);
            }
        }
        let is_seed = bitfield.all();
        if is_seed != was_seed {
            if is_seed {
                self.downloaders -= 1;
            } else {
                self.downloaders += 1;
            }
        }
        // Offers it had already cost nothing: retire them and offer others.
        let p = self.peers.get_mut(&peer).expect("present");
        let had: Vec<u32> = p.offers.iter().copied().filter(|&i| p.has.get(i)).collect();
        for i in had {
            self.retire(peer, i, now);
        }
        for i in news {
            self.spread_check(i, peer, now);
        }
        self.refill(peer, now);
        self.maybe_end();
    }

    /// The peer announced `piece`. Ignored for pieces out of range.
    pub fn handle_have(&mut self, peer: PeerKey, piece: u32, now: Instant) {
        if self.ended || piece >= self.num_pieces {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.has.get(piece) {
            return;
        }
        p.has.set(piece);
        let now_seed = p.has.all();
        let offered = p.offers.contains(&piece);
        self.avail_inc(piece);
        if now_seed {
            // A seed holds no offers.
            self.downloaders -= 1;
            let held = self
                .peers
                .get(&peer)
                .map(|p| p.offers.clone())
                .unwrap_or_default();
            for i in held {
                self.retire(peer, i, now);
            }
        } else if offered && (self.availability[piece as usize] >= 2 || self.downloaders <= 1) {
            self.retire(peer, piece, now);
            self.refill(peer, now);
        } else if offered {
            // Completed, not seen spreading yet: the next, if it is not `ahead` already.
            self.refill(peer, now);
        }
        self.spread_check(piece, peer, now);
        self.maybe_end();
    }

    /// The peer's connection ended.
    pub fn handle_leave(&mut self, peer: PeerKey, now: Instant) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        if !p.has.all() {
            self.downloaders -= 1;
        }
        for i in p.has.iter_ones() {
            self.avail_dec(i, now);
        }
        for &i in &p.offers {
            self.unhold(i, peer);
        }
        for i in p.has.iter_ones().chain(p.offers.iter().copied()) {
            self.maybe_fresh(i);
        }
        // Its offers that nobody has are fresh again: to the peers waiting for one now, not
        // at their next stall.
        if !self.ended && p.offers.iter().any(|&i| self.in_fresh.get(i)) {
            self.refill_all(now);
        }
        // With one downloader fewer, a lone downloader's completed offers are now spent.
        if self.downloaders == 1 && !self.ended {
            let lone: Vec<(PeerKey, Vec<u32>)> = self
                .peers
                .iter()
                .filter(|(_, p)| !p.has.all())
                .map(|(&k, p)| {
                    let done = p.offers.iter().copied().filter(|&i| p.has.get(i)).collect();
                    (k, done)
                })
                .collect();
            for (k, done) in lone {
                if !done.is_empty() {
                    for i in done {
                        self.retire(k, i, now);
                    }
                    self.refill(k, now);
                }
            }
        }
    }

    /// Time passed: peers whose offers have not moved for [`STALL`] get new ones, and pieces
    /// at no connected peer for [`LOST_GRACE`] are offered again.
    pub fn handle_tick(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if self.expire_lost(now) {
            self.refill_all(now);
        }
        let stalled: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.super_seeded && !p.has.all() && now.saturating_duration_since(p.moved) >= STALL
            })
            .map(|(&k, _)| k)
            .collect();
        // Those holding the fewest offers first (a peer with none before one with a spare),
        // in a fixed order: the map's own order is random.
        let mut stalled = stalled;
        stalled.sort_by_key(|k| (self.peers[k].offers.len(), k.0));
        for k in stalled {
            let p = self.peers.get_mut(&k).expect("present");
            p.moved = now;
            let done: Vec<u32> = p.offers.iter().copied().filter(|&i| p.has.get(i)).collect();
            if done.is_empty() {
                if let Some(&oldest) = p.offers.first().filter(|_| p.offers.len() >= MAX_OFFERS) {
                    self.retire(k, oldest, now);
                }
                self.offer_one(k, now, true);
            } else {
                for i in done {
                    self.retire(k, i, now);
                }
                self.refill(k, now);
            }
        }
    }

    /// `piece` was just seen at `by`: it has spread, for every other holder of an offer of it.
    fn spread_check(&mut self, piece: u32, by: PeerKey, now: Instant) {
        let Some(hs) = self.holders.get(&piece) else {
            return;
        };
        let spread: Vec<PeerKey> = hs.iter().copied().filter(|&k| k != by).collect();
        for k in spread {
            self.retire(k, piece, now);
            self.refill(k, now);
        }
    }

    /// One more peer has `piece`.
    fn avail_inc(&mut self, piece: u32) {
        let a = &mut self.availability[piece as usize];
        *a += 1;
        if *a == 2 {
            self.at_two += 1;
        }
        self.seen.set(piece);
        self.lost_at[piece as usize] = None;
    }

    /// One peer fewer has `piece`; at none now, it is lost from `now` (see
    /// [`Self::expire_lost`]).
    fn avail_dec(&mut self, piece: u32, now: Instant) {
        let a = &mut self.availability[piece as usize];
        if *a == 2 {
            self.at_two -= 1;
        }
        *a = a.saturating_sub(1);
        if *a == 0 && self.seen.get(piece) {
            self.lost_at[piece as usize] = Some(now);
            if !self.in_lost.get(piece) {
                self.in_lost.set(piece);
                self.lost.push_back(piece);
            }
        }
    }

    /// Pieces at no connected peer for [`LOST_GRACE`] are taken as gone from the swarm: no
    /// longer seen, so fresh again (unless offered meanwhile). True if any is.
    fn expire_lost(&mut self, now: Instant) -> bool {
        let mut any = false;
        for _ in 0..self.lost.len() {
            let Some(piece) = self.lost.pop_front() else {
                break;
            };
            match self.lost_at[piece as usize] {
                // Some peer has it again.
                None => self.in_lost.clear(piece),
                Some(since) if now.saturating_duration_since(since) >= LOST_GRACE => {
                    self.in_lost.clear(piece);
                    self.lost_at[piece as usize] = None;
                    self.seen.clear(piece);
                    self.maybe_fresh(piece);
                    any = true;
                }
                Some(_) => self.lost.push_back(piece),
            }
        }
        any
    }

    /// Offers fresh pieces to every peer with room for an offer, those holding the fewest
    /// first, in a fixed order (the map's own order is random).
    fn refill_all(&mut self, now: Instant) {
        let mut room: Vec<(usize, PeerKey)> = self
            .peers
            .iter()
            .filter(|(_, p)| self.has_room(p))
            .map(|(&k, p)| (p.offers.len(), k))
            .collect();
        room.sort_by_key(|&(n, k)| (n, k.0));
        for (_, k) in room {
            self.refill(k, now);
        }
    }

    /// Ends super-seeding once every piece is at two peers or more.
    fn maybe_end(&mut self) {
        if !self.ended && self.at_two == self.num_pieces {
            self.ended = true;
            self.events
                .push_back(Event::End(EndReason::EveryPieceAtTwoPeers));
        }
    }

    /// Takes `piece` out of `peer`'s offers.
    fn retire(&mut self, peer: PeerKey, piece: u32, now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if let Some(at) = p.offers.iter().position(|&i| i == piece) {
                p.offers.swap_remove(at);
                p.moved = now;
            }
        }
        self.unhold(piece, peer);
        self.maybe_fresh(piece);
    }

    /// Removes `peer` from the holders of an offer of `piece`.
    fn unhold(&mut self, piece: u32, peer: PeerKey) {
        if let Some(hs) = self.holders.get_mut(&piece) {
            hs.retain(|&k| k != peer);
            if hs.is_empty() {
                self.holders.remove(&piece);
            }
        }
    }

    /// Puts `piece` back among the fresh ones if nobody has it, had it (see [`LOST_GRACE`])
    /// or is offered it.
    fn maybe_fresh(&mut self, piece: u32) {
        if self.availability[piece as usize] == 0
            && !self.seen.get(piece)
            && !self.holders.contains_key(&piece)
            && !self.in_fresh.get(piece)
        {
            self.in_fresh.set(piece);
            self.fresh.push(piece);
        }
    }

    /// Offers `peer` pieces until it holds `offers_per_peer`.
    fn refill(&mut self, peer: PeerKey, now: Instant) {
        while self.peers.get(&peer).is_some_and(|p| self.has_room(p)) {
            if !self.offer_one(peer, now, false) {
                break;
            }
        }
    }

    /// Whether a peer may be offered one more piece in the normal course: it gets offers,
    /// holds fewer than `offers_per_peer` it has not completed, at most `ahead` completed
    /// ones not yet seen spreading, and fewer than [`MAX_OFFERS`] in all.
    fn has_room(&self, p: &PeerState) -> bool {
        let done = p.offers.iter().filter(|&&i| p.has.get(i)).count();
        p.super_seeded
            && !p.has.all()
            && p.offers.len() - done < self.offers_per_peer
            && done <= self.ahead
            && p.offers.len() < MAX_OFFERS
    }

    /// Offers `peer` one more piece; false if there is none to offer. `again`: a piece
    /// offered to another peer that has not delivered it may be offered again (a stall).
    fn offer_one(&mut self, peer: PeerKey, now: Instant, again: bool) -> bool {
        let Some(piece) = self.choose(peer, again, now) else {
            return false;
        };
        let p = self.peers.get_mut(&peer).expect("present");
        p.offers.push(piece);
        p.moved = now;
        self.holders.entry(piece).or_default().push(peer);
        self.offered_count[piece as usize] += 1;
        self.offered_at[piece as usize] = Some(now);
        self.events.push_back(Event::Offer { peer, piece });
        true
    }

    /// The piece to offer `peer` next (see the module documentation).
    fn choose(&mut self, peer: PeerKey, again: bool, now: Instant) -> Option<u32> {
        // Out of the map while the random state is drawn from; put back below.
        let p = self.peers.remove(&peer)?;
        let piece = self.choose_for(&p, again, now);
        self.peers.insert(peer, p);
        piece
    }

    /// [`Self::choose`] for a peer taken out of the map.
    fn choose_for(&mut self, p: &PeerState, again: bool, now: Instant) -> Option<u32> {
        // A fresh piece, drawn at random; stale entries are dropped as they are met.
        let mut draws = 0;
        while !self.fresh.is_empty() && draws < FRESH_DRAWS {
            draws += 1;
            let at = (self.next_random() % self.fresh.len() as u64) as usize;
            let piece = self.fresh[at];
            if self.availability[piece as usize] > 0
                || self.seen.get(piece)
                || self.holders.contains_key(&piece)
            {
                self.fresh.swap_remove(at);
                self.in_fresh.clear(piece);
                continue;
            }
            if p.has.get(piece) {
                continue;
            }
            self.fresh.swap_remove(at);
            self.in_fresh.clear(piece);
            return Some(piece);
        }
        // Otherwise a piece no peer has: offered to nobody now, or (`again`) to fewer than
        // [`MAX_HOLDERS`] peers, the last of them [`STALL`] ago or more (a piece offered a
        // moment ago is on its way: a second holder would most likely take a second copy);
        // fewest holders, then fewest offers so far, ties at random.
        // A piece some peer has (or had: see `LOST_GRACE`) is never offered: the others get
        // it from that peer.
        let most_holders = if again { MAX_HOLDERS } else { 1 };
        let mut best: Option<((usize, u32), u32)> = None;
        let mut ties = 0u64;
        for i in 0..self.num_pieces {
            if p.has.get(i)
                || p.offers.contains(&i)
                || self.availability[i as usize] > 0
                || self.seen.get(i)
            {
                continue;
            }
            let holders = self.holders.get(&i).map_or(0, Vec::len);
            if holders >= most_holders {
                continue;
            }
            let recent = self.offered_at[i as usize]
                .is_some_and(|at| now.saturating_duration_since(at) < STALL);
            if holders > 0 && recent {
                continue;
            }
            let key = (holders, self.offered_count[i as usize]);
            match best {
                Some((k, _)) if key > k => {}
                Some((k, _)) if key == k => {
                    ties += 1;
                    if self.next_random() % ties == 0 {
                        best = Some((key, i));
                    }
                }
                _ => {
                    best = Some((key, i));
                    ties = 1;
                }
            }
        }
        let piece = best.map(|(_, i)| i)?;
        if self.in_fresh.get(piece) {
            self.in_fresh.clear(piece);
            self.fresh.retain(|&f| f != piece);
        }
        Some(piece)
    }

    /// xorshift64*: enough to spread choices; nothing here needs to be unpredictable.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(ss: &mut SuperSeed) -> Vec<(PeerKey, u32)> {
        let mut v = Vec::new();
        while let Some(e) = ss.poll_event() {
            if let Event::Offer { peer, piece } = e {
                v.push((peer, piece));
            }
        }
        v
    }

    const A: PeerKey = PeerKey(1);
    const B: PeerKey = PeerKey(2);
    const C: PeerKey = PeerKey(3);

    #[test]
    fn each_peer_is_offered_a_distinct_piece_at_join() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(8, 1, 7);
        let mut seen = Vec::new();
        for k in 0..8 {
            ss.handle_join(PeerKey(k), true, t);
            let o = offers(&mut ss);
            assert_eq!(o.len(), 1);
            assert_eq!(o[0].0, PeerKey(k));
            seen.push(o[0].1);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>(), "no piece offered twice");
        // A ninth peer gets nothing at once: every piece is on its way to someone.
        ss.handle_join(PeerKey(9), true, t);
        assert!(offers(&mut ss).is_empty());
        // After a stall it gets one of the pieces nobody has delivered yet.
        ss.handle_tick(t + STALL);
        let o: Vec<_> = offers(&mut ss)
            .into_iter()
            .filter(|(k, _)| *k == PeerKey(9))
            .collect();
        assert_eq!(o.len(), 1);
        // Never a piece some peer has.
        let mut ss = SuperSeed::new(2, 1, 1);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        let pa = ss.offers(A)[0];
        ss.handle_have(A, pa, t);
        ss.handle_have(B, 1 - pa, t);
        ss.handle_join(C, true, t);
        ss.handle_tick(t + STALL);
        assert!(
            offers(&mut ss).iter().all(|(k, _)| *k != C),
            "both pieces are in the swarm"
        );
    }

    #[test]
    fn next_offer_waits_until_the_piece_is_seen_elsewhere() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(16, 1, 1);
        ss.set_ahead(0);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        let o = offers(&mut ss);
        let pa = o.iter().find(|(k, _)| *k == A).unwrap().1;
        let pb = o.iter().find(|(k, _)| *k == B).unwrap().1;
        assert_ne!(pa, pb);
        // A completes its piece: not spread yet, so nothing new for A.
        ss.handle_have(A, pa, t);
        assert!(offers(&mut ss).is_empty());
        assert_eq!(ss.offers(A), &[pa]);
        // B gets it from A: A's piece spread, A gets a new offer; B's own offer stands.
        ss.handle_have(B, pa, t);
        let o = offers(&mut ss);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].0, A);
        assert_ne!(o[0].1, pa);
        assert_ne!(
            o[0].1, pb,
            "never a piece offered to someone else while fresh ones remain"
        );
        assert_eq!(ss.offers(B), &[pb]);
    }

    #[test]
    fn a_peer_gets_its_next_offer_up_to_ahead_completed_ones_before_they_spread() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(16, 1, 1);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        offers(&mut ss);
        // A completes piece after piece, none seen elsewhere: a new one each time, until it
        // holds AHEAD completed ones.
        let mut done = Vec::new();
        for _ in 0..AHEAD {
            let next = *ss.offers(A).iter().find(|&&i| !done.contains(&i)).unwrap();
            ss.handle_have(A, next, t);
            done.push(next);
            let o = offers(&mut ss);
            assert_eq!(o.len(), 1, "a next offer while {} are ahead", done.len());
            assert_eq!(o[0].0, A);
            assert!(!done.contains(&o[0].1));
        }
        assert_eq!(ss.offers(A).len(), AHEAD + 1);
        let last = *ss.offers(A).iter().find(|&&i| !done.contains(&i)).unwrap();
        ss.handle_have(A, last, t);
        assert!(offers(&mut ss).is_empty(), "AHEAD + 1 completed: it waits");
        assert_eq!(ss.offers(A).len(), MAX_OFFERS);
        // B takes one of them: it spread, and A gets one more.
        ss.handle_have(B, done[0], t);
        let o = offers(&mut ss);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].0, A);
        // Every offer was a distinct piece.
        let offered = (0..16).filter(|&i| ss.offered_count(i) > 0).count();
        assert_eq!(offered, AHEAD + 3, "A: 1 + AHEAD + 1 offers, B: 1");
        assert!((0..16).all(|i| ss.offered_count(i) <= 1));
    }

    #[test]
    fn another_peer_announcing_the_piece_is_enough() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(16, 1, 3);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        let pa = ss.offers(A)[0];
        offers(&mut ss);
        // B announces A's piece while A never said it has it (it skips HAVEs for pieces we
        // announced): the piece is at another client, so A gets its next one.
        ss.handle_have(B, pa, t);
        let o = offers(&mut ss);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].0, A);
        assert_ne!(o[0].1, pa);
        // A's late HAVE changes nothing.
        ss.handle_have(A, pa, t);
        assert!(offers(&mut ss).is_empty());
    }

    #[test]
    fn a_lone_downloader_is_not_held_back() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(4, 1, 5);
        ss.handle_join(A, true, t);
        let mut got = Vec::new();
        for _ in 0..3 {
            let o = offers(&mut ss);
            assert_eq!(o.len(), 1);
            got.push(o[0].1);
            ss.handle_have(A, o[0].1, t);
        }
        let o = offers(&mut ss);
        assert_eq!(o.len(), 1);
        assert!(!got.contains(&o[0].1));
        ss.handle_have(A, o[0].1, t);
        assert_eq!(
            ss.poll_event(),
            None,
            "a seed now: no more offers, and one copy only"
        );
        assert!(!ss.is_ended());
        assert!(ss.offers(A).is_empty());
    }

    #[test]
    fn it_ends_once_every_piece_is_at_two_peers() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(3, 1, 5);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        ss.handle_bitfield(A, &Bitfield::full(3), t);
        let mut bf = Bitfield::new(3);
        bf.set(0);
        bf.set(1);
        ss.handle_bitfield(B, &bf, t);
        assert!(!ss.is_ended());
        // A is a seed, B lacks piece 2 only: its HAVE puts every piece at two peers.
        ss.handle_have(B, 2, t);
        let ended: Vec<_> = std::iter::from_fn(|| ss.poll_event())
            .filter(|e| matches!(e, Event::End(_)))
            .collect();
        assert_eq!(ended, vec![Event::End(EndReason::EveryPieceAtTwoPeers)]);
        assert!(ss.is_ended());
        // Nothing more happens once ended.
        ss.handle_join(C, true, t);
        assert_eq!(ss.poll_event(), None);
    }

    #[test]
    fn never_offers_a_piece_the_peer_has_and_replaces_one_its_bitfield_shows() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(8, 1, 9);
        ss.handle_join(A, true, t);
        let first = ss.offers(A)[0];
        offers(&mut ss);
        // It has everything but the piece after the one offered.
        let missing = (first + 1) % 8;
        let mut bf = Bitfield::full(8);
        bf.clear(missing);
        ss.handle_bitfield(A, &bf, t);
        assert_eq!(offers(&mut ss), vec![(A, missing)]);
        assert_eq!(ss.offers(A), &[missing]);
    }

    #[test]
    fn seeds_get_nothing_and_a_seed_arriving_does_not_end_it() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(8, 1, 2);
        ss.handle_join(A, true, t);
        offers(&mut ss);
        ss.handle_bitfield(A, &Bitfield::full(8), t);
        assert!(ss.offers(A).is_empty());
        assert!(offers(&mut ss).is_empty());
        assert!(!ss.is_ended());
        // Every piece is at A: B gets them from A, not from us.
        ss.handle_join(B, true, t);
        assert!(offers(&mut ss).is_empty());
        ss.handle_tick(t + STALL);
        assert!(offers(&mut ss).is_empty());
    }

    #[test]
    fn a_stalled_peer_gets_more_after_the_stall_time() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(32, 1, 4);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        offers(&mut ss);
        let pa = ss.offers(A)[0];
        // A never asks for its piece: after STALL it gets a second one, up to MAX_OFFERS.
        ss.handle_tick(t + STALL / 2);
        assert!(offers(&mut ss).iter().all(|(k, _)| *k != A));
        let mut now = t;
        for _ in 0..10 {
            now += STALL;
            ss.handle_tick(now);
        }
        assert_eq!(ss.offers(A).len(), MAX_OFFERS, "never more than MAX_OFFERS");
        assert!(!ss.offers(A).contains(&pa), "the oldest made room");
        // A completed its piece but nobody took it: after STALL it is retired and replaced.
        let mut ss = SuperSeed::new(32, 1, 4);
        ss.set_ahead(0);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        let pa = ss.offers(A)[0];
        ss.handle_have(A, pa, t);
        offers(&mut ss);
        ss.handle_tick(t + STALL);
        let o: Vec<_> = offers(&mut ss)
            .into_iter()
            .filter(|(k, _)| *k == A)
            .collect();
        assert_eq!(o.len(), 1);
        assert_eq!(ss.offers(A).len(), 1);
        assert!(!ss.offers(A).contains(&pa));
    }

    #[test]
    fn a_peer_leaving_frees_its_offer_for_others() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(2, 1, 8);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        let pa = ss.offers(A)[0];
        offers(&mut ss);
        ss.handle_leave(A, t);
        ss.handle_join(C, true, t);
        let o = offers(&mut ss);
        assert_eq!(o, vec![(C, pa)], "the piece nobody has now goes first");
    }

    #[test]
    fn a_piece_whose_holder_left_is_offered_again_only_once_lost_for_the_grace() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(2, 1, 8);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        let pa = ss.offers(A)[0];
        let pb = ss.offers(B)[0];
        offers(&mut ss);
        ss.handle_have(A, pa, t);
        ss.handle_have(B, pb, t);
        // A's connection ends (a downloader under its peer cap evicted us, say): A stays in
        // the swarm with pa, so a newcomer is not offered pa.
        ss.handle_leave(A, t);
        ss.handle_join(C, true, t);
        assert!(offers(&mut ss).is_empty(), "pa is at A, pb at B");
        ss.handle_tick(t + STALL);
        ss.handle_tick(t + LOST_GRACE - Duration::from_secs(1));
        assert!(
            offers(&mut ss).is_empty(),
            "stalls do not bring pa back within the grace"
        );
        // Nobody connected announced pa for LOST_GRACE: it is gone, and offered again, to one
        // peer (B comes first; C may not take a second copy of an offer made a moment ago).
        ss.handle_tick(t + LOST_GRACE);
        assert_eq!(offers(&mut ss), vec![(B, pa)]);
        assert_eq!(ss.offered_count(pa), 2);

        // A piece whose holder comes back (or reaches another connected peer) within the
        // grace is never offered again.
        let mut ss = SuperSeed::new(2, 1, 8);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t);
        let pa = ss.offers(A)[0];
        let pb = ss.offers(B)[0];
        ss.handle_have(A, pa, t);
        ss.handle_have(B, pb, t);
        ss.handle_leave(A, t);
        let mut bf = Bitfield::new(2);
        bf.set(pa);
        ss.handle_join(A, true, t + STALL);
        ss.handle_bitfield(A, &bf, t + STALL);
        offers(&mut ss);
        ss.handle_leave(C, t);
        for k in 1..=6 {
            ss.handle_tick(t + STALL * k);
        }
        assert_eq!(ss.offered_count(pa), 1, "pa came back: never offered again");
    }

    #[test]
    fn a_stall_offers_a_second_holder_only_pieces_offered_a_stall_ago() {
        let t = Instant::now();
        // One piece, two peers: A holds it; B gets nothing at once.
        let mut ss = SuperSeed::new(1, 1, 3);
        ss.handle_join(A, true, t);
        ss.handle_join(B, true, t + STALL / 2);
        assert_eq!(offers(&mut ss), vec![(A, 0)]);
        ss.handle_tick(t + STALL - Duration::from_millis(1));
        assert!(offers(&mut ss).is_empty(), "nobody stalled yet");
        // B stalls at t + STALL * 3 / 2; A's offer is STALL * 3 / 2 old: B shares it.
        ss.handle_tick(t + STALL * 3 / 2);
        let o = offers(&mut ss);
        assert!(o.contains(&(B, 0)), "{o:?}");
        assert_eq!(ss.offered_count(0), 2);
        // A third peer gets it a stall after the second, not before; no more than
        // MAX_HOLDERS ever hold it.
        ss.handle_join(C, true, t + STALL * 3 / 2);
        ss.handle_tick(t + STALL * 5 / 2 - Duration::from_millis(1));
        assert!(offers(&mut ss).iter().all(|(k, _)| *k != C));
        ss.handle_tick(t + STALL * 5 / 2);
        assert!(offers(&mut ss).contains(&(C, 0)));
        for k in 10..30 {
            ss.handle_join(PeerKey(k), true, t + STALL * 3);
        }
        for k in 3..20 {
            ss.handle_tick(t + STALL * k);
        }
        assert!(ss.offered_count(0) as usize <= MAX_HOLDERS);

        // A piece offered a moment ago is not given to a second peer that stalls now.
        let mut ss = SuperSeed::new(2, 1, 3);
        ss.handle_join(A, true, t);
        let first = ss.offers(A)[0];
        offers(&mut ss);
        // A leaves with nothing: its piece is fresh again, and B, joining then, takes it; C,
        // stalled at that moment, may not take it too.
        ss.handle_join(C, true, t);
        let c_piece = ss.offers(C)[0];
        assert_ne!(c_piece, first);
        offers(&mut ss);
        ss.handle_leave(A, t + STALL);
        ss.handle_join(B, true, t + STALL);
        assert_eq!(offers(&mut ss), vec![(B, first)]);
        ss.handle_tick(t + STALL);
        let o = offers(&mut ss);
        assert!(!o.contains(&(C, first)), "offered to B a moment ago: {o:?}");
    }

    #[test]
    fn peers_not_super_seeded_only_count_for_availability() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(4, 1, 6);
        ss.handle_join(A, false, t);
        assert!(offers(&mut ss).is_empty());
        let mut bf = Bitfield::new(4);
        bf.set(0);
        bf.set(1);
        bf.set(2);
        ss.handle_bitfield(A, &bf, t);
        assert!(offers(&mut ss).is_empty());
        ss.handle_join(B, true, t);
        assert_eq!(offers(&mut ss), vec![(B, 3)], "the one piece nobody has");
    }

    #[test]
    fn offers_per_peer_are_kept_and_out_of_range_input_is_ignored() {
        let t = Instant::now();
        let mut ss = SuperSeed::new(10, 2, 11);
        ss.handle_join(A, true, t);
        assert_eq!(offers(&mut ss).len(), 2);
        ss.handle_have(A, 99, t);
        ss.handle_bitfield(A, &Bitfield::new(3), t);
        ss.handle_have(C, 1, t);
        ss.handle_leave(C, t);
        assert_eq!(ss.offers(A).len(), 2);
    }

    #[test]
    fn connections_that_end_and_come_back_cost_no_second_copy() {
        // 12 peers, 96 pieces, a round a second: each peer fetches its offers from us, then
        // takes one piece from another peer (whether or not we are connected to it); every
        // round one connection to us ends (a downloader made room for a newcomer) and comes
        // back three rounds later with its bitfield. Pieces at a peer whose connection ended
        // are still in the swarm: the seed must upload each piece about once.
        let t0 = Instant::now();
        let n = 12usize;
        let pieces = 96u32;
        let mut ss = SuperSeed::new(pieces, 1, 21);
        let mut has = vec![Bitfield::new(pieces); n];
        let mut away: Vec<Option<u64>> = vec![None; n];
        for k in 0..n {
            ss.handle_join(PeerKey(k as u64), true, t0);
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut uploads = 0u32;
        let mut round = 0u64;
        let full = |has: &[Bitfield]| {
            let mut u = Bitfield::new(pieces);
            for h in has {
                for i in h.iter_ones() {
                    u.set(i);
                }
            }
            u.all()
        };
        while !full(&has) && round < 2_000 {
            round += 1;
            let now = t0 + Duration::from_secs(round);
            // Offers made: fetched from us at once by peers still connected.
            while let Some(e) = ss.poll_event() {
                if let Event::Offer { peer, piece } = e {
                    let k = peer.0 as usize;
                    if away[k].is_none() && !has[k].get(piece) {
                        uploads += 1;
                        has[k].set(piece);
                        ss.handle_have(peer, piece, now);
                    }
                }
            }
            // Trading among the peers.
            for k in 0..n {
                let from = (next() % n as u64) as usize;
                let got = has[from].iter_ones().find(|&i| !has[k].get(i));
                if let Some(i) = got {
                    has[k].set(i);
                    if away[k].is_none() {
                        ss.handle_have(PeerKey(k as u64), i, now);
                    }
                }
            }
            // One connection ends; those away for three rounds come back.
            for k in 0..n {
                if away[k].is_some_and(|r| round >= r + 3) {
                    away[k] = None;
                    ss.handle_join(PeerKey(k as u64), true, now);
                    ss.handle_bitfield(PeerKey(k as u64), &has[k], now);
                }
            }
            let k = (next() % n as u64) as usize;
            if away[k].is_none() {
                away[k] = Some(round);
                ss.handle_leave(PeerKey(k as u64), now);
            }
            ss.handle_tick(now);
        }
        assert!(full(&has), "the swarm got every piece");
        assert!(
            uploads <= pieces + 4,
            "seed uploaded {uploads} pieces of {pieces}"
        );
    }

    #[test]
    fn a_swarm_gets_one_copy_of_each_piece_from_the_seed() {
        // 6 peers, 60 pieces; each peer fetches its offer from us, then peers trade: every
        // completed piece is taken by one other peer at once. The seed must upload each piece
        // about once.
        let t = Instant::now();
        let n = 6u64;
        let pieces = 60u32;
        let mut ss = SuperSeed::new(pieces, 1, 12);
        let mut has = vec![Bitfield::new(pieces); n as usize];
        for k in 0..n {
            ss.handle_join(PeerKey(k), true, t);
        }
        let mut uploads = 0u32;
        let mut queue: VecDeque<(PeerKey, u32)> = VecDeque::new();
        for _ in 0..10_000 {
            while let Some(e) = ss.poll_event() {
                if let Event::Offer { peer, piece } = e {
                    queue.push_back((peer, piece));
                }
            }
            let Some((peer, piece)) = queue.pop_front() else {
                break;
            };
            if has[peer.0 as usize].get(piece) {
                continue;
            }
            uploads += 1;
            has[peer.0 as usize].set(piece);
            ss.handle_have(peer, piece, t);
            // Another peer lacking it takes it from this one.
            if let Some(other) = (0..n).find(|&o| !has[o as usize].get(piece)) {
                has[other as usize].set(piece);
                ss.handle_have(PeerKey(other), piece, t);
            }
            if ss.is_ended() {
                break;
            }
        }
        let mut union = Bitfield::new(pieces);
        for h in &has {
            for i in h.iter_ones() {
                union.set(i);
            }
        }
        assert!(union.all(), "every piece reached the swarm");
        assert!(
            uploads <= pieces + n as u32,
            "seed uploaded {uploads} pieces of {pieces}"
        );
    }
}
