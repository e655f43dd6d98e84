//! Piece selection policy: priorities, deadlines, partial pieces first, random first, rarest
//! first (or sequential), endgame.
//!
//! The picker actor is the single owner of a [`Picker`] and calls it for every peer; nothing
//! here knows about sockets or time. Peers are named by a [`PeerKey`] that is never reused
//! during a torrent.
//!
//! # Where each part lives
//! - `availability.rs`: how many peers have each piece, and the wanted pieces we lack in
//!   rarest-first order, one order per [`Priority`] class.
//! - `progress.rs`: pieces in progress: the state of each block (free, requested from whom,
//!   received), and the pieces that still have a free block.
//! - `requests.rs`: each peer's outstanding blocks, removed in O(1).
//! - `mod.rs` (this file): the [`Picker`], which decides what to pick and keeps the three in
//!   step.
//! - `tests.rs`: the policy as a whole; each module tests its own part.
//!
//! # The order of a pick
//! 1. Deadline pieces ([`Picker::set_deadline`]), lowest index first; when at most
//!    [`DEADLINE_RACE_PIECES`] of them are missing, their blocks are also requested from
//!    several peers at once, as in endgame.
//! 2. Free blocks of pieces in progress: the highest priority first, then the most complete.
//! 3. New pieces, from the highest priority class that has one the peer can give: the lowest
//!    index in sequential mode ([`Picker::set_sequential`]); otherwise random while we hold
//!    fewer than [`RANDOM_FIRST_PIECES`], rarest first after.
//! 4. Endgame: once every missing block of a wanted piece is requested, blocks requested from
//!    others, the least requested first.
//!
//! A piece of priority [`Priority::Skip`] is never picked, not in endgame nor as a deadline.
//!
//! # Invariants
//! 1. The availability orders hold exactly the pieces neither in `have` nor skipped, each in
//!    the order of its priority.
//! 2. A piece in progress is never in `have`; it has at least one block requested or received
//!    (a piece whose last request is released and that holds no data goes back to the pool, so
//!    rarest first sees it again).
//! 3. A piece is marked partial iff it is in progress, not skipped, and has a free block.
//! 4. `(peer, block)` is in `peer`'s request list at index `i` iff `peer` is among the block's
//!    requesters with index `i`.
//! 5. `not_started[c]` counts the pieces of priority `c` neither verified nor in progress;
//!    `missing` counts the blocks of wanted (not skipped) unverified pieces not yet received.
//!    Endgame is `missing > 0`, no wanted piece not started and no partial piece: every
//!    missing block is already requested from someone.
//!
//! # Cost
//! `pick` is O(partial pieces the peer has + blocks returned) when the peer has a rare piece
//! we need; the rarest-first scan is O(pieces) only for a peer whose every useful piece is among
//! the most common. Availability changes are O(1) per piece; verifying a piece is O(distinct
//! availability values). A received or released block is O(1). Nothing is O(pieces × peers).
//! The modes cost more only when on: a deadline scans its range (at most
//! [`MAX_DEADLINE_PIECES`]) on each pick, and sequential mode scans from the lowest piece not
//! started, O(pieces) for a peer that has none of the next ones.

mod availability;
mod progress;
mod requests;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::fmt;
use std::ops::RangeInclusive;

use crate::bitfield::Bitfield;
use crate::lengths::{BlockInfo, Lengths};

use availability::Availability;
use progress::{InProgress, PieceState};
use requests::Requests;

/// While we hold fewer verified pieces than this, pick pieces at random rather than rarest
/// first: a whole piece soon gives us something to trade, and a rare piece is slow to get.
pub const RANDOM_FIRST_PIECES: u32 = 4;

/// In endgame, how many peers beyond the first a block may be requested from at once.
pub const ENDGAME_EXTRA_REQUESTERS: usize = 2;

/// The most peers one block is requested from at a time.
pub const MAX_REQUESTERS: usize = 1 + ENDGAME_EXTRA_REQUESTERS;

/// When this many deadline pieces or fewer are still missing, their blocks are requested from
/// up to [`MAX_REQUESTERS`] peers at once: the last pieces before a player's position should not
/// wait on the slowest peer. Four pieces is a few seconds of video at common piece sizes.
pub const DEADLINE_RACE_PIECES: u32 = 4;

/// The most pieces a deadline range covers (a longer one is cut): each pick scans the range, so
/// it must stay short. A streaming window is a few dozen pieces; a whole file wants
/// [`Priority::High`] instead.
pub const MAX_DEADLINE_PIECES: u32 = 256;

/// A connected peer, as the picker actor names it. Never reused during a torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

/// How much we want a piece. Higher classes are picked first; within a class, rarest first (or
/// lowest index first in sequential mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Priority {
    /// Never requested; does not count toward [`Picker::is_complete_wanted`].
    Skip = 0,
    /// Fetched after every normal and high piece.
    Low = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Fetched before every normal and low piece.
    High = 3,
}

impl Priority {
    /// How many priorities there are.
    const COUNT: usize = 4;

    /// The wanted priorities, highest first.
    const WANTED_DESC: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Whether pieces of this priority are fetched at all.
    pub fn is_wanted(self) -> bool {
        self != Priority::Skip
    }

    /// Index into per-priority tables.
    fn class(self) -> u8 {
        self as u8
    }
}

/// What [`Picker::block_received`] made of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The first copy of a block we still needed: write it.
    New {
        /// All blocks of the piece are now received: hash it.
        piece_complete: bool,
        /// Other peers this block was also requested from (endgame): send them `cancel`.
        cancel: Vec<PeerKey>,
    },
    /// We already had this block (another peer sent it first, or the piece is verified).
    Duplicate,
    /// Nobody is fetching this piece, or the block is not one of ours (misaligned, wrong
    /// length, out of range).
    NotRequested,
}

/// The piece picking policy of one torrent. See the module documentation for its invariants.
pub struct Picker {
    /// Piece and block arithmetic.
    lengths: Lengths,
    /// The pieces we have verified.
    have: Bitfield,
    /// `have.count_ones()`.
    num_have: u32,
    /// Each piece's priority.
    priority: Vec<Priority>,
    /// Peer counts and rarest-first orders (invariant 1).
    avail: Availability,
    /// Pieces in progress and the partial ones (invariants 2, 3).
    progress: InProgress,
    /// Each peer's outstanding blocks (invariant 4).
    requests: Requests,
    /// Pieces neither verified nor in progress, per priority (invariant 5).
    not_started: [u32; Priority::COUNT],
    /// Blocks of wanted unverified pieces not yet received (invariant 5).
    missing: u64,
    /// Random source for random first and tie breaks.
    rng: fastrand::Rng,
    /// Reused buffer for sorting partial pieces in `pick`.
    scratch: Vec<(Reverse<Priority>, Reverse<u32>, u32, u32)>,
    /// Whether `pick` may start new pieces (see [`Picker::set_new_pieces_allowed`]).
    new_pieces_allowed: bool,
    /// Pieces that failed their hash check and are not verified yet: the next attempt is
    /// fetched from one peer only (see `PieceState::owner`).
    failed: Bitfield,
    /// Whether new pieces are started lowest index first.
    sequential: bool,
    /// In sequential mode, no piece below this is wanted, unverified and not in progress.
    seq_cursor: u32,
    /// The deadline pieces, `first..=last`; `first` moves past pieces we have.
    deadline: Option<(u32, u32)>,
}

impl fmt::Debug for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picker")
            .field("have", &self.num_have)
            .field("pieces", &self.lengths.num_pieces())
            .field("in_progress", &self.progress.len())
            .field("partial", &self.progress.partial().len())
            .field("missing_blocks", &self.missing)
            .field("endgame", &self.in_endgame())
            .field("sequential", &self.sequential)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Picker {
    /// A picker for a torrent of which we already hold the pieces in `have` (bits past the
    /// torrent's piece count are ignored); every piece is [`Priority::Normal`]. Seeds its
    /// random source from the thread's.
    pub fn new(lengths: Lengths, have: Bitfield) -> Self {
        Self::with_seed(lengths, have, fastrand::u64(..))
    }

    /// Like [`Picker::new`] with a fixed random seed, for reproducible tests and benches.
    pub fn with_seed(lengths: Lengths, have: Bitfield, seed: u64) -> Self {
        let n = lengths.num_pieces();
        let mut own = Bitfield::new(n);
        for p in have.iter_ones().take_while(|&p| p < n) {
            own.set(p);
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut lacking: Vec<u32> = (0..n).filter(|&p| !own.get(p)).collect();
        // Shuffled, so that pieces of equal rarity are met in random order.
        rng.shuffle(&mut lacking);
        let mut avail = Availability::new(n, Priority::COUNT as u8);
        for &p in &lacking {
            avail.insert(p, Priority::Normal.class());
        }
        let missing = lacking
            .iter()
            .map(|&p| u64::from(lengths.blocks_in_piece(p)))
            .sum();
        let mut not_started = [0; Priority::COUNT];
        not_started[usize::from(Priority::Normal.class())] = lacking.len() as u32;
        Self {
            lengths,
            num_have: own.count_ones(),
            have: own,
            priority: vec![Priority::Normal; n as usize],
            avail,
            progress: InProgress::new(n),
            requests: Requests::default(),
            not_started,
            missing,
            rng,
            scratch: Vec::new(),
            new_pieces_allowed: true,
            failed: Bitfield::new(n),
            sequential: false,
            seq_cursor: 0,
            deadline: None,
        }
    }

    // ---- getters ----

    /// The pieces we have verified.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Whether every piece is verified, skipped or not.
    pub fn is_complete(&self) -> bool {
        self.num_have == self.lengths.num_pieces()
    }

    /// Whether every piece not skipped is verified: the download the user asked for is done.
    pub fn is_complete_wanted(&self) -> bool {
        Priority::WANTED_DESC
            .iter()
            .all(|p| self.avail.class_len(p.class()) == 0)
    }

    /// How many of our verified pieces no connected peer has: were we to leave now, the peers
    /// that lack them could not get them from anyone they know. O(pieces); a finished download
    /// asks it while it hands over such pieces before exiting.
    pub fn sole_copies(&self) -> u32 {
        self.have
            .iter_ones()
            .filter(|&p| self.avail.count(p) == 0)
            .count() as u32
    }

    /// The priority of `piece` ([`Priority::Skip`] out of range).
    pub fn piece_priority(&self, piece: u32) -> Priority {
        self.priority
            .get(piece as usize)
            .copied()
            .unwrap_or(Priority::Skip)
    }

    /// Whether every missing block of a wanted piece is already requested from some peer, so
    /// `pick` hands out duplicates.
    pub fn in_endgame(&self) -> bool {
        self.missing > 0 && self.wanted_not_started() == 0 && self.progress.partial().is_empty()
    }

    // ---- what peers tell us ----

    /// A new peer's bitfield (or a full one for `have all`): one more peer has each of its
    /// pieces.
    pub fn peer_bitfield(&mut self, bf: &Bitfield) {
        let n = self.lengths.num_pieces();
        for p in bf.iter_ones().take_while(|&p| p < n) {
            self.avail.inc(p);
        }
    }

    /// A peer announced `have piece`: one more peer has it. Call it only when the peer's bit
    /// was not already set. Out of range is ignored.
    pub fn peer_have(&mut self, piece: u32) {
        if self.lengths.contains(piece) {
            self.avail.inc(piece);
        }
    }

    /// A peer no longer counts as having the pieces in `bf` (its bitfield is being replaced,
    /// say); its requests stay as they are.
    pub fn peer_lost(&mut self, bf: &Bitfield) {
        let n = self.lengths.num_pieces();
        for p in bf.iter_ones().take_while(|&p| p < n) {
            self.avail.dec(p);
        }
    }

    /// A peer no longer counts as having `piece` (it rejected our request for it, so as far as
    /// picking goes it lacks it). Out of range is ignored.
    pub fn peer_lost_piece(&mut self, piece: u32) {
        if self.lengths.contains(piece) {
            self.avail.dec(piece);
        }
    }

    /// A peer disconnected: `bf` (every piece it had, as counted through `peer_bitfield` and
    /// `peer_have`) loses one peer, and every block requested from it goes back to the pool.
    pub fn peer_gone(&mut self, peer: PeerKey, bf: &Bitfield) {
        self.peer_lost(bf);
        self.release_all(peer);
        self.requests.remove_peer(peer);
    }

    // ---- what the application asks ----

    /// Whether `pick` may start pieces nobody is fetching yet. The picker actor turns this off
    /// while the memory budget for pieces in progress is spent, so that pieces already started
    /// finish first.
    pub fn set_new_pieces_allowed(&mut self, allowed: bool) {
        self.new_pieces_allowed = allowed;
    }

    /// Sets the priority of one piece (out of range is ignored). Takes effect at the next
    /// pick; blocks already requested of a piece now skipped are left to arrive (the picker
    /// actor may keep or drop them), but none is requested again.
    pub fn set_piece_priority(&mut self, piece: u32, prio: Priority) {
        let Some(&old) = self.priority.get(piece as usize) else {
            return;
        };
        if old == prio {
            return;
        }
        self.priority[piece as usize] = prio;
        if self.have.get(piece) {
            return;
        }
        self.avail.remove(piece);
        if prio.is_wanted() {
            self.avail.insert(piece, prio.class());
            self.seq_cursor = self.seq_cursor.min(piece);
        }
        let unreceived = match self.progress.get(piece) {
            Some(st) => u64::from(st.blocks.len() as u32 - st.received),
            None => {
                self.not_started[usize::from(old.class())] -= 1;
                self.not_started[usize::from(prio.class())] += 1;
                u64::from(self.lengths.blocks_in_piece(piece))
            }
        };
        match (old.is_wanted(), prio.is_wanted()) {
            (true, false) => self.missing -= unreceived,
            (false, true) => self.missing += unreceived,
            _ => {}
        }
        self.progress.sync_partial(piece, prio.is_wanted());
    }

    /// Sets the priorities of the first `priorities.len()` pieces (extra entries are ignored;
    /// pieces past the slice keep theirs).
    pub fn set_piece_priorities(&mut self, priorities: &[Priority]) {
        for (p, &prio) in (0..self.lengths.num_pieces()).zip(priorities) {
            self.set_piece_priority(p, prio);
        }
    }

    /// Sets the priority of every piece in `pieces` (cut to the torrent's pieces).
    pub fn set_range_priority(&mut self, pieces: RangeInclusive<u32>, prio: Priority) {
        let last = (*pieces.end()).min(self.lengths.num_pieces().saturating_sub(1));
        for p in *pieces.start()..=last {
            self.set_piece_priority(p, prio);
        }
    }

    /// Sequential mode: start new pieces lowest index first (within a priority class) instead
    /// of rarest first. Several peers still fetch different pieces at once, and pieces in
    /// progress are still finished first.
    pub fn set_sequential(&mut self, on: bool) {
        self.sequential = on;
        self.seq_cursor = 0;
    }

    /// Deadline pieces (for streaming): the pieces of `pieces` we lack are picked before any
    /// other, lowest index first, and raced between peers when few are left (see
    /// [`DEADLINE_RACE_PIECES`]). A range longer than [`MAX_DEADLINE_PIECES`] is cut; `None`
    /// (or an empty range) clears it, and it clears itself once every wanted piece of it is
    /// verified. Skipped pieces in the range stay skipped.
    pub fn set_deadline(&mut self, pieces: Option<RangeInclusive<u32>>) {
        self.deadline = pieces.and_then(|r| {
            let n = self.lengths.num_pieces();
            let first = *r.start();
            let last = (*r.end())
                .min(n.saturating_sub(1))
                .min(first.saturating_add(MAX_DEADLINE_PIECES - 1));
            (first <= last && first < n).then_some((first, last))
        });
    }

    // ---- picking ----

    /// Appends to `out` up to `max` blocks to request from `peer`, which has `peer_has`, and
    /// records them as requested from it. See the module documentation for the order.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        max: usize,
        out: &mut Vec<BlockInfo>,
    ) {
        let limit = out.len().saturating_add(max);
        if max == 0 || self.missing == 0 {
            return;
        }
        // 1. Deadline pieces.
        if self.deadline.is_some() {
            self.pick_deadline(peer, peer_has, limit, out);
        }
        // 2. Finish pieces in progress first: highest priority, then the most complete.
        if out.len() < limit && !self.progress.partial().is_empty() {
            let mut cands = std::mem::take(&mut self.scratch);
            cands.clear();
            for &p in self.progress.partial() {
                let st = self
                    .progress
                    .get(p)
                    .expect("partial pieces are in progress");
                if peer_has.get(p) && st.open_to(peer) {
                    let prio = self.priority[p as usize];
                    cands.push((Reverse(prio), Reverse(st.received), st.free, p));
                }
            }
            cands.sort_unstable();
            for &(_, _, _, p) in &cands {
                if out.len() >= limit {
                    break;
                }
                self.request_free(p, peer, limit, out);
            }
            self.scratch = cands;
        }
        // 3. Start new pieces.
        while out.len() < limit && self.new_pieces_allowed && self.wanted_not_started() > 0 {
            let Some(p) = self.new_piece(peer_has) else {
                break;
            };
            self.start(p, peer);
            self.request_free(p, peer, limit, out);
        }
        // 4. Endgame: blocks already requested elsewhere, least requested first.
        if out.len() < limit && self.in_endgame() {
            self.pick_endgame(peer, peer_has, limit, out);
        }
    }

    /// A block arrived from `peer`. A block in a piece in progress that nobody delivered yet
    /// is [`Received::New`] even if its request from `peer` was released (a late answer after a
    /// timeout or choke is still good data); `peer` becomes a contributor of the piece.
    pub fn block_received(&mut self, peer: PeerKey, block: BlockInfo) -> Received {
        if !self.lengths.is_our_block(&block) {
            return Received::NotRequested;
        }
        if self.have.get(block.piece) {
            return Received::Duplicate;
        }
        let Some(st) = self.progress.get_mut(block.piece) else {
            return Received::NotRequested;
        };
        let b = &mut st.blocks[block.index() as usize];
        if b.received {
            return Received::Duplicate;
        }
        let was = b.take_requests();
        b.received = true;
        st.received += 1;
        if was.requesters() == 0 {
            st.free -= 1;
        }
        if !st.contributors.contains(&peer) {
            st.contributors.push(peer);
        }
        let piece_complete = st.is_complete();
        let wanted = self.priority[block.piece as usize].is_wanted();
        if wanted {
            self.missing -= 1;
        }
        self.progress.sync_partial(block.piece, wanted);
        let mut cancel = Vec::new();
        for (r, at) in was.requests() {
            self.drop_from_list(r, at, &block);
            if r != peer {
                cancel.push(r);
            }
        }
        Received::New {
            piece_complete,
            cancel,
        }
    }

    /// A request to `peer` was rejected, cancelled or timed out: the block goes back to the
    /// pool for others. Anything not requested from `peer` is ignored.
    pub fn block_released(&mut self, peer: PeerKey, block: BlockInfo) {
        if !self.lengths.is_our_block(&block) {
            return;
        }
        let at = self
            .progress
            .get(block.piece)
            .and_then(|st| st.blocks[block.index() as usize].at_of(peer));
        if let Some(at) = at {
            self.drop_from_list(peer, at, &block);
            self.unrequest(peer, &block);
        }
    }

    /// The piece's hash matched: we have it now.
    pub fn piece_verified(&mut self, piece: u32) {
        if !self.lengths.contains(piece) || self.have.get(piece) {
            return;
        }
        self.have.set(piece);
        self.failed.clear(piece);
        self.num_have += 1;
        let prio = self.priority[piece as usize];
        let unreceived = match self.take_state(piece) {
            Some(st) => {
                let left = st.blocks.len() as u32 - st.received;
                self.progress.recycle(st.blocks);
                left
            }
            None => {
                self.not_started[usize::from(prio.class())] -= 1;
                self.lengths.blocks_in_piece(piece)
            }
        };
        if prio.is_wanted() {
            self.missing -= u64::from(unreceived);
        }
        self.avail.remove(piece);
    }

    /// The piece's hash failed: all its blocks are missing again, and it can be picked again,
    /// by one peer only (the one that starts it), so that another failure has exactly one peer
    /// to blame. Returns the peers that sent data for it.
    pub fn piece_failed(&mut self, piece: u32) -> Vec<PeerKey> {
        let Some(st) = self.take_state(piece) else {
            return Vec::new();
        };
        let prio = self.priority[piece as usize];
        if prio.is_wanted() {
            self.missing += u64::from(st.received);
        }
        self.not_started[usize::from(prio.class())] += 1;
        self.seq_cursor = self.seq_cursor.min(piece);
        self.failed.set(piece);
        self.progress.recycle(st.blocks);
        st.contributors
    }

    // ---- internals ----

    /// Wanted pieces neither verified nor in progress.
    fn wanted_not_started(&self) -> u32 {
        Priority::WANTED_DESC
            .iter()
            .map(|p| self.not_started[usize::from(p.class())])
            .sum()
    }

    /// A piece to start for a peer with `peer_has`: from the highest class that has one, the
    /// lowest index (sequential), a random one (random first) or the rarest.
    fn new_piece(&mut self, peer_has: &Bitfield) -> Option<u32> {
        for prio in Priority::WANTED_DESC {
            let c = prio.class();
            if self.not_started[usize::from(c)] == 0 {
                continue;
            }
            let found = if self.sequential {
                self.sequential_candidate(prio, peer_has)
            } else {
                let progress = &self.progress;
                let ok = |p| peer_has.get(p) && !progress.contains(p);
                if self.num_have < RANDOM_FIRST_PIECES {
                    self.avail.random(c, &mut self.rng, ok)
                } else {
                    self.avail.rarest(c, &mut self.rng, ok)
                }
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// The lowest-index piece of priority `prio` that the peer has and nobody fetches.
    fn sequential_candidate(&mut self, prio: Priority, peer_has: &Bitfield) -> Option<u32> {
        let n = self.lengths.num_pieces();
        while self.seq_cursor < n {
            let p = self.seq_cursor;
            if self.have.get(p)
                || self.progress.contains(p)
                || !self.priority[p as usize].is_wanted()
            {
                self.seq_cursor += 1;
            } else {
                break;
            }
        }
        (self.seq_cursor..n).find(|&p| {
            self.priority[p as usize] == prio
                && peer_has.get(p)
                && !self.have.get(p)
                && !self.progress.contains(p)
        })
    }

    /// Deadline pieces first, in order; raced between peers when few are left.
    fn pick_deadline(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        limit: usize,
        out: &mut Vec<BlockInfo>,
    ) {
        let Some((mut first, last)) = self.deadline else {
            return;
        };
        while first <= last && self.have.get(first) {
            first += 1;
        }
        if first > last {
            self.deadline = None;
            return;
        }
        self.deadline = Some((first, last));
        let mut left = 0;
        for p in first..=last {
            if self.have.get(p) || !self.priority[p as usize].is_wanted() {
                continue;
            }
            left += 1;
            if out.len() >= limit || !peer_has.get(p) {
                continue;
            }
            if !self.progress.contains(p) {
                if !self.new_pieces_allowed {
                    continue;
                }
                self.start(p, peer);
            }
            if self.progress.get(p).is_some_and(|st| st.open_to(peer)) {
                self.request_free(p, peer, limit, out);
            }
        }
        if left == 0 {
            // Every wanted piece of it is verified.
            self.deadline = None;
        } else if left <= DEADLINE_RACE_PIECES {
            for n in 1..MAX_REQUESTERS as u8 {
                for p in first..=last {
                    if out.len() >= limit {
                        return;
                    }
                    if peer_has.get(p) && self.priority[p as usize].is_wanted() {
                        self.request_duplicates(p, peer, n, limit, out);
                    }
                }
            }
        }
    }

    /// Endgame: blocks not received, requested by others but not `peer`, fewest requesters
    /// first, at most [`MAX_REQUESTERS`] each.
    fn pick_endgame(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        limit: usize,
        out: &mut Vec<BlockInfo>,
    ) {
        for n in 1..MAX_REQUESTERS as u8 {
            // Requesting changes no piece's place, so walking by index is sound.
            for i in 0..self.progress.len() {
                if out.len() >= limit {
                    return;
                }
                let p = self.progress.piece_at(i);
                if peer_has.get(p) && self.priority[p as usize].is_wanted() {
                    self.request_duplicates(p, peer, n, limit, out);
                }
            }
        }
    }

    /// Puts a piece (not started, not verified) in progress with every block free; a piece
    /// that failed before is reserved for `peer`, the one starting it.
    fn start(&mut self, piece: u32, peer: PeerKey) {
        let owner = self.failed.get(piece).then_some(peer);
        self.progress
            .start(piece, self.lengths.blocks_in_piece(piece), owner);
        let prio = self.priority[piece as usize];
        self.not_started[usize::from(prio.class())] -= 1;
        self.progress.sync_partial(piece, prio.is_wanted());
    }

    /// Requests free blocks of a piece in progress from `peer` until `out` holds `limit`.
    fn request_free(&mut self, piece: u32, peer: PeerKey, limit: usize, out: &mut Vec<BlockInfo>) {
        let Some(st) = self.progress.get_mut(piece) else {
            return;
        };
        let list = self.requests.list_mut(peer);
        for (i, b) in st.blocks.iter_mut().enumerate() {
            if out.len() >= limit || st.free == 0 {
                break;
            }
            if b.is_free() {
                b.add(peer, list.len() as u32);
                st.free -= 1;
                let block = self.lengths.block(piece, i as u32);
                out.push(block);
                list.push(block);
            }
        }
        let wanted = self.priority[piece as usize].is_wanted();
        self.progress.sync_partial(piece, wanted);
    }

    /// Requests from `peer` the blocks of `piece` that are not received and are requested from
    /// exactly `n` other peers, until `out` holds `limit`.
    fn request_duplicates(
        &mut self,
        piece: u32,
        peer: PeerKey,
        n: u8,
        limit: usize,
        out: &mut Vec<BlockInfo>,
    ) {
        let Some(st) = self.progress.get_mut(piece) else {
            return;
        };
        if !st.open_to(peer) {
            return;
        }
        let list = self.requests.list_mut(peer);
        for (i, b) in st.blocks.iter_mut().enumerate() {
            if out.len() >= limit {
                return;
            }
            if !b.received && b.requesters() == n && !b.is_requested_by(peer) {
                b.add(peer, list.len() as u32);
                let block = self.lengths.block(piece, i as u32);
                out.push(block);
                list.push(block);
            }
        }
    }

    /// Takes a piece out of progress with all its requests; `None` if it was not in progress.
    /// The caller fixes the counters and recycles the block array.
    fn take_state(&mut self, piece: u32) -> Option<PieceState> {
        let blocks = self.progress.get(piece)?.blocks.len();
        // Drop the requests while the state is in place: a removal may move another block of
        // this very piece within a peer's list, and its recorded index must follow.
        for i in 0..blocks {
            let was = match self.progress.get_mut(piece) {
                Some(st) => st.blocks[i].take_requests(),
                None => break,
            };
            let block = self.lengths.block(piece, i as u32);
            for (r, at) in was.requests() {
                self.drop_from_list(r, at, &block);
            }
        }
        self.progress.finish(piece)
    }

    /// Removes `block` from index `at` of `peer`'s request list, and records the new index of
    /// the block that moved into its place.
    fn drop_from_list(&mut self, peer: PeerKey, at: u32, block: &BlockInfo) {
        if let Some(moved) = self.requests.remove_at(peer, at, block) {
            if let Some(st) = self.progress.get_mut(moved.piece) {
                if let Some(b) = st.blocks.get_mut(moved.index() as usize) {
                    b.set_at(peer, at);
                }
            }
        }
    }

    /// Removes `peer` as a requester of `block` (its request list is the caller's business).
    /// A piece left with nothing requested or received goes back to the pool.
    fn unrequest(&mut self, peer: PeerKey, block: &BlockInfo) {
        let Some(st) = self.progress.get_mut(block.piece) else {
            return;
        };
        let Some(b) = st.blocks.get_mut(block.index() as usize) else {
            return;
        };
        if b.received || !b.remove(peer) {
            return;
        }
        let now_free = b.requesters() == 0;
        if st.owner == Some(peer) {
            // The one peer allowed on this piece gave up a block: open it to everyone rather
            // than let it stall.
            st.owner = None;
        }
        if now_free {
            st.free += 1;
        }
        let prio = self.priority[block.piece as usize];
        if st.received == 0 && st.free as usize == st.blocks.len() {
            if let Some(st) = self.take_state(block.piece) {
                self.progress.recycle(st.blocks);
            }
            self.not_started[usize::from(prio.class())] += 1;
            self.seq_cursor = self.seq_cursor.min(block.piece);
        } else {
            self.progress.sync_partial(block.piece, prio.is_wanted());
        }
    }

    /// Releases every block requested from `peer`.
    fn release_all(&mut self, peer: PeerKey) {
        let blocks = self.requests.take(peer);
        for block in &blocks {
            self.unrequest(peer, block);
        }
        self.requests.give_back(peer, blocks);
    }

    /// Checks every invariant of the module documentation; for tests.
    #[cfg(test)]
    fn check(&self) {
        self.avail.check();
        self.progress.check();
        let n = self.lengths.num_pieces();
        let mut missing = 0u64;
        let mut not_started = [0u32; Priority::COUNT];
        let mut in_orders = 0;
        for p in 0..n {
            let prio = self.priority[p as usize];
            // 1.
            assert_eq!(
                self.avail.contains(p),
                !self.have.get(p) && prio.is_wanted(),
                "piece {p}"
            );
            in_orders += usize::from(self.avail.contains(p));
            if self.have.get(p) {
                assert!(!self.progress.contains(p));
                continue;
            }
            match self.progress.get(p) {
                None => {
                    not_started[usize::from(prio.class())] += 1;
                    if prio.is_wanted() {
                        missing += u64::from(self.lengths.blocks_in_piece(p));
                    }
                }
                Some(st) => {
                    // 2., 3.
                    assert!(st.received > 0 || (st.free as usize) < st.blocks.len());
                    assert_eq!(self.progress.is_partial(p), st.free > 0 && prio.is_wanted());
                    if prio.is_wanted() {
                        missing += u64::from(st.blocks.len() as u32 - st.received);
                    }
                    // 4., from the block side.
                    for (i, b) in st.blocks.iter().enumerate() {
                        let block = self.lengths.block(p, i as u32);
                        for (r, at) in b.requests() {
                            assert_eq!(self.requests.of(r).get(at as usize), Some(&block));
                        }
                    }
                }
            }
        }
        let classes: usize = (0..Priority::COUNT as u8)
            .map(|c| self.avail.class_len(c))
            .sum();
        assert_eq!(classes, in_orders);
        // 5.
        assert_eq!(self.missing, missing);
        assert_eq!(self.not_started, not_started);
        // 4., from the list side.
        for (&peer, list) in self.requests.iter() {
            for (i, b) in list.iter().enumerate() {
                let st = self
                    .progress
                    .get(b.piece)
                    .expect("requested piece in progress");
                assert_eq!(st.blocks[b.index() as usize].at_of(peer), Some(i as u32));
            }
        }
    }
}
