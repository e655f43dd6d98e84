//! Piece selection policy: random first, partial pieces first, rarest first, endgame.
//!
//! The picker actor is the single owner of a [`Picker`] and calls it for every peer; nothing
//! here knows about sockets or time. Peers are named by a [`PeerKey`] that is never reused
//! during a torrent.
//!
//! # Data
//! - `avail[p]`: how many connected peers have piece `p` (kept for every piece).
//! - `order`: every piece we have not verified, grouped by availability into buckets
//!   (`bucket_start[a]` is the first index with availability `a`); `pos[p]` is `p`'s index in
//!   `order`. A change of availability moves a piece across one bucket boundary with one swap,
//!   so rarest first scans from the rarest bucket up and usually stops at once, never sorting.
//! - `in_progress`: block state only for pieces that have at least one block requested or
//!   received and are not verified; `started` mirrors its keys as a bitfield for O(1) checks.
//! - `partial`: the pieces in progress that still have a free block (neither requested nor
//!   received), with each piece's index in it stored in its state.
//! - `requests[peer]`: the blocks currently requested from each peer, so choke and disconnect
//!   release them without scanning every piece.
//!
//! # Invariants
//! 1. `order` holds exactly the pieces not in `have`; `pos` is its inverse; within `order` the
//!    availabilities are non-decreasing and `bucket_start` marks where each value begins.
//! 2. A piece is in `in_progress` iff its bit in `started` is set; it is never in `have`; it has
//!    at least one block requested or received (a piece whose last request is released and
//!    that holds no data goes back to the pool, so rarest first sees it again).
//! 3. A block is free, requested by 1 to [`MAX_REQUESTERS`] distinct peers, or received; a
//!    received block has no requesters. `free` and `received` count them per piece.
//! 4. `partial` holds exactly the pieces in progress with `free > 0`.
//! 5. `(peer, block)` is in `requests[peer]` iff `peer` is among that block's requesters.
//! 6. `not_started` counts pieces neither verified nor in progress; `missing` counts blocks of
//!    unverified pieces not yet received. Endgame is `missing > 0 && not_started == 0 &&
//!    partial` empty: every missing block is already requested from someone.
//!
//! # Cost
//! `pick` is O(partial pieces the peer has + blocks returned) when the peer has a rare piece
//! we need; the rarest-first scan is O(pieces) only for a peer whose every useful piece is among
//! the most common. Availability changes are O(1) per piece; verifying a piece is O(distinct
//! availability values). Nothing is O(pieces × peers).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;

use crate::bitfield::Bitfield;
use crate::lengths::{BlockInfo, Lengths};

/// While we hold fewer verified pieces than this, pick pieces at random rather than rarest
/// first: a whole piece soon gives us something to trade, and a rare piece is slow to get.
pub const RANDOM_FIRST_PIECES: u32 = 4;

/// In endgame, how many peers beyond the first a block may be requested from at once.
pub const ENDGAME_EXTRA_REQUESTERS: usize = 2;

/// The most peers one block is requested from at a time.
pub const MAX_REQUESTERS: usize = 1 + ENDGAME_EXTRA_REQUESTERS;

/// Marks a piece that is not in `partial`.
const NOT_PARTIAL: u32 = u32::MAX;
/// Marks a piece that is not in `order` (we have it).
const NOT_IN_ORDER: u32 = u32::MAX;

/// A connected peer, as the picker actor names it. Never reused during a torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

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

/// The state of one block of a piece in progress.
#[derive(Clone, Copy)]
struct BlockState {
    /// The data has arrived (and gone to disk).
    received: bool,
    /// How many entries of `peers` are in use.
    n: u8,
    /// The peers it is requested from, `peers[..n]`.
    peers: [PeerKey; MAX_REQUESTERS],
}

impl BlockState {
    /// Neither requested nor received.
    const FREE: Self = Self {
        received: false,
        n: 0,
        peers: [PeerKey(0); MAX_REQUESTERS],
    };

    fn is_free(&self) -> bool {
        !self.received && self.n == 0
    }

    fn requesters(&self) -> &[PeerKey] {
        &self.peers[..usize::from(self.n)]
    }

    fn is_requested_by(&self, peer: PeerKey) -> bool {
        self.requesters().contains(&peer)
    }

    /// Adds a requester; the caller checked there is room and it is not one already.
    fn add(&mut self, peer: PeerKey) {
        self.peers[usize::from(self.n)] = peer;
        self.n += 1;
    }

    /// Removes a requester; whether it was one.
    fn remove(&mut self, peer: PeerKey) -> bool {
        let n = usize::from(self.n);
        match self.peers[..n].iter().position(|&p| p == peer) {
            Some(i) => {
                self.peers[i] = self.peers[n - 1];
                self.n -= 1;
                true
            }
            None => false,
        }
    }
}

/// The block state of one piece in progress.
struct PieceState {
    /// One entry per block of the piece.
    blocks: Box<[BlockState]>,
    /// Blocks received.
    received: u32,
    /// Blocks neither requested nor received.
    free: u32,
    /// Peers that sent data for this piece, to blame if its hash fails.
    contributors: Vec<PeerKey>,
    /// This piece's index in `Picker::partial`, or [`NOT_PARTIAL`].
    partial_idx: u32,
    /// For a piece that failed before: the one peer allowed to fetch it, so that a second
    /// failure has a single contributor to blame. Cleared when that peer gives up a block.
    owner: Option<PeerKey>,
}

impl PieceState {
    /// Whether `peer` may fetch blocks of this piece.
    fn open_to(&self, peer: PeerKey) -> bool {
        self.owner.is_none_or(|o| o == peer)
    }
}

/// The piece picking policy of one torrent. See the module documentation for its invariants.
pub struct Picker {
    /// Piece and block arithmetic.
    lengths: Lengths,
    /// The pieces we have verified.
    have: Bitfield,
    /// `have.count_ones()`.
    num_have: u32,
    /// How many connected peers have each piece.
    avail: Vec<u32>,
    /// Unverified pieces, grouped by availability (invariant 1).
    order: Vec<u32>,
    /// Each piece's index in `order`, or [`NOT_IN_ORDER`].
    pos: Vec<u32>,
    /// `bucket_start[a]`: first index in `order` with availability `a` (or more, when there is
    /// none with `a`). Buckets past the end start at `order.len()`.
    bucket_start: Vec<u32>,
    /// The keys of `in_progress` as a bitfield.
    started: Bitfield,
    /// Block state of the pieces in progress.
    in_progress: HashMap<u32, PieceState>,
    /// Pieces in progress with a free block (invariant 4).
    partial: Vec<u32>,
    /// Unverified pieces not in progress.
    not_started: u32,
    /// Blocks of unverified pieces not yet received.
    missing: u64,
    /// The blocks currently requested from each peer, in the order they were picked.
    requests: HashMap<PeerKey, Vec<BlockInfo>>,
    /// Random source for random first and tie breaks.
    rng: fastrand::Rng,
    /// Reused buffer for sorting partial pieces in `pick`.
    scratch: Vec<(Reverse<u32>, u32, u32)>,
    /// Whether `pick` may start new pieces (see [`Picker::set_new_pieces_allowed`]).
    new_pieces_allowed: bool,
    /// Pieces that failed their hash check and are not verified yet: the next attempt is
    /// fetched from one peer only (see `PieceState::owner`).
    failed: Bitfield,
}

impl fmt::Debug for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picker")
            .field("have", &self.num_have)
            .field("pieces", &self.lengths.num_pieces())
            .field("in_progress", &self.in_progress.len())
            .field("partial", &self.partial.len())
            .field("missing_blocks", &self.missing)
            .field("endgame", &self.in_endgame())
            .finish()
    }
}

impl Picker {
    /// A picker for a torrent of which we already hold the pieces in `have` (bits past the
    /// torrent's piece count are ignored). Seeds its random source from the thread's.
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
        let mut order: Vec<u32> = (0..n).filter(|&p| !own.get(p)).collect();
        rng.shuffle(&mut order);
        let mut pos = vec![NOT_IN_ORDER; n as usize];
        for (i, &p) in order.iter().enumerate() {
            pos[p as usize] = i as u32;
        }
        let missing = order
            .iter()
            .map(|&p| u64::from(lengths.blocks_in_piece(p)))
            .sum();
        Self {
            lengths,
            num_have: own.count_ones(),
            have: own,
            avail: vec![0; n as usize],
            not_started: order.len() as u32,
            order,
            pos,
            bucket_start: vec![0],
            started: Bitfield::new(n),
            in_progress: HashMap::new(),
            partial: Vec::new(),
            missing,
            requests: HashMap::new(),
            rng,
            scratch: Vec::new(),
            new_pieces_allowed: true,
            failed: Bitfield::new(n),
        }
    }

    /// The pieces we have verified.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.num_have == self.lengths.num_pieces()
    }

    /// Whether a peer with these pieces has one we lack.
    pub fn is_interesting(&self, peer_has: &Bitfield) -> bool {
        peer_has.has_any_not_in(&self.have)
    }

    /// How many connected peers have `piece` (0 out of range).
    pub fn availability(&self, piece: u32) -> u32 {
        self.avail.get(piece as usize).copied().unwrap_or(0)
    }

    /// Blocks of unverified pieces that have not been received.
    pub fn missing_blocks(&self) -> u64 {
        self.missing
    }

    /// Whether every missing block is already requested from some peer, so `pick` hands out
    /// duplicates.
    pub fn in_endgame(&self) -> bool {
        self.missing > 0 && self.not_started == 0 && self.partial.is_empty()
    }

    /// The blocks currently requested from `peer`, oldest first.
    pub fn requests_of(&self, peer: PeerKey) -> &[BlockInfo] {
        self.requests.get(&peer).map_or(&[], Vec::as_slice)
    }

    /// A new peer's bitfield (or a full one for `have all`): one more peer has each of its
    /// pieces.
    pub fn peer_bitfield(&mut self, bf: &Bitfield) {
        let n = self.lengths.num_pieces();
        for p in bf.iter_ones().take_while(|&p| p < n) {
            self.inc_avail(p);
        }
    }

    /// A peer announced `have piece`: one more peer has it. Call it only when the peer's bit
    /// was not already set. Out of range is ignored.
    pub fn peer_have(&mut self, piece: u32) {
        if self.lengths.contains(piece) {
            self.inc_avail(piece);
        }
    }

    /// A peer no longer counts as having the pieces in `bf` (its bitfield is being replaced,
    /// say); its requests stay as they are.
    pub fn peer_lost(&mut self, bf: &Bitfield) {
        let n = self.lengths.num_pieces();
        for p in bf.iter_ones().take_while(|&p| p < n) {
            self.dec_avail(p);
        }
    }

    /// A peer no longer counts as having `piece` (it rejected our request for it, so as far as
    /// picking goes it lacks it). Out of range is ignored.
    pub fn peer_lost_piece(&mut self, piece: u32) {
        if self.lengths.contains(piece) {
            self.dec_avail(piece);
        }
    }

    /// Whether `pick` may start pieces nobody is fetching yet. The picker actor turns this off
    /// while the memory budget for pieces in progress is spent, so that pieces already started
    /// finish first.
    pub fn set_new_pieces_allowed(&mut self, allowed: bool) {
        self.new_pieces_allowed = allowed;
    }

    /// A peer disconnected: `bf` (every piece it had, as counted through `peer_bitfield` and
    /// `peer_have`) loses one peer, and every block requested from it goes back to the pool.
    pub fn peer_gone(&mut self, peer: PeerKey, bf: &Bitfield) {
        let n = self.lengths.num_pieces();
        for p in bf.iter_ones().take_while(|&p| p < n) {
            self.dec_avail(p);
        }
        self.release_all(peer);
        self.requests.remove(&peer);
    }

    /// A peer choked us: every block requested from it goes back to the pool (its pieces still
    /// count). With the fast extension a choke does not cancel requests (BEP 6): release each
    /// one on its `reject` instead.
    pub fn peer_choked(&mut self, peer: PeerKey) {
        self.release_all(peer);
    }

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
        // (a) Finish pieces in progress first, the most complete first.
        if !self.partial.is_empty() {
            let mut cands = std::mem::take(&mut self.scratch);
            cands.clear();
            for &p in &self.partial {
                let st = &self.in_progress[&p];
                if peer_has.get(p) && st.open_to(peer) {
                    cands.push((Reverse(st.received), st.free, p));
                }
            }
            cands.sort_unstable();
            for &(_, _, p) in &cands {
                if out.len() >= limit {
                    break;
                }
                self.request_free(p, peer, limit, out);
            }
            self.scratch = cands;
        }
        // (b), (c) Start new pieces: random while we have few, then rarest first.
        while out.len() < limit && self.not_started > 0 && self.new_pieces_allowed {
            let next = if self.num_have < RANDOM_FIRST_PIECES {
                self.random_candidate(peer_has)
            } else {
                self.rarest_candidate(peer_has)
            };
            let Some(p) = next else { break };
            self.start(p, peer);
            self.request_free(p, peer, limit, out);
        }
        // (d) Endgame: ask for blocks already requested elsewhere, least-requested first.
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
        let Some(st) = self.in_progress.get_mut(&block.piece) else {
            return Received::NotRequested;
        };
        let b = &mut st.blocks[block.index() as usize];
        if b.received {
            return Received::Duplicate;
        }
        let was = *b;
        b.received = true;
        b.n = 0;
        st.received += 1;
        if was.n == 0 {
            st.free -= 1;
        }
        if !st.contributors.contains(&peer) {
            st.contributors.push(peer);
        }
        let piece_complete = st.received as usize == st.blocks.len();
        self.missing -= 1;
        self.sync_partial(block.piece);
        let mut cancel = Vec::new();
        for &r in was.requesters() {
            self.forget_request(r, &block);
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
        if self.forget_request(peer, &block) {
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
        if self.started.get(piece) {
            let st = self.take_state(piece);
            self.missing -= u64::from(st.blocks.len() as u32 - st.received);
        } else {
            self.not_started -= 1;
            self.missing -= u64::from(self.lengths.blocks_in_piece(piece));
        }
        self.remove_from_order(piece);
    }

    /// The piece's hash failed: all its blocks are missing again, and it can be picked again,
    /// by one peer only (the one that starts it), so that another failure has exactly one peer
    /// to blame. Returns the peers that sent data for it.
    pub fn piece_failed(&mut self, piece: u32) -> Vec<PeerKey> {
        if !self.started.get(piece) {
            return Vec::new();
        }
        let st = self.take_state(piece);
        self.missing += u64::from(st.received);
        self.not_started += 1;
        self.failed.set(piece);
        st.contributors
    }

    // ---- internals ----

    /// Removes a piece's state (it must be in progress), with its requests and its place in
    /// `partial`; the caller fixes `missing` and `not_started`.
    fn take_state(&mut self, piece: u32) -> PieceState {
        self.partial_remove(piece);
        self.started.clear(piece);
        let st = self
            .in_progress
            .remove(&piece)
            .expect("started bit mirrors in_progress");
        for (i, b) in st.blocks.iter().enumerate() {
            let block = self.lengths.block(piece, i as u32);
            for &r in b.requesters() {
                self.forget_request(r, &block);
            }
        }
        st
    }

    /// Puts a piece in progress with every block free; a piece that failed before is reserved
    /// for `peer`, the one starting it.
    fn start(&mut self, piece: u32, peer: PeerKey) {
        let n = self.lengths.blocks_in_piece(piece);
        self.in_progress.insert(
            piece,
            PieceState {
                blocks: vec![BlockState::FREE; n as usize].into_boxed_slice(),
                received: 0,
                free: n,
                contributors: Vec::new(),
                partial_idx: NOT_PARTIAL,
                owner: self.failed.get(piece).then_some(peer),
            },
        );
        self.started.set(piece);
        self.not_started -= 1;
        self.sync_partial(piece);
    }

    /// Requests free blocks of a piece in progress from `peer` until `out` holds `limit`.
    fn request_free(&mut self, piece: u32, peer: PeerKey, limit: usize, out: &mut Vec<BlockInfo>) {
        let Some(st) = self.in_progress.get_mut(&piece) else {
            return;
        };
        let list = self.requests.entry(peer).or_default();
        for (i, b) in st.blocks.iter_mut().enumerate() {
            if out.len() >= limit || st.free == 0 {
                break;
            }
            if b.is_free() {
                b.add(peer);
                st.free -= 1;
                let block = self.lengths.block(piece, i as u32);
                out.push(block);
                list.push(block);
            }
        }
        self.sync_partial(piece);
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
        let list = self.requests.entry(peer).or_default();
        for n in 1..MAX_REQUESTERS as u8 {
            for (&piece, st) in self.in_progress.iter_mut() {
                if !peer_has.get(piece) || !st.open_to(peer) {
                    continue;
                }
                for (i, b) in st.blocks.iter_mut().enumerate() {
                    if out.len() >= limit {
                        return;
                    }
                    if !b.received && b.n == n && !b.is_requested_by(peer) {
                        b.add(peer);
                        let block = self.lengths.block(piece, i as u32);
                        out.push(block);
                        list.push(block);
                    }
                }
            }
        }
    }

    /// A random piece the peer has that nobody is fetching.
    fn random_candidate(&mut self, peer_has: &Bitfield) -> Option<u32> {
        let n = self.order.len();
        if n == 0 {
            return None;
        }
        let start = self.rng.usize(0..n);
        (0..n)
            .map(|i| self.order[(start + i) % n])
            .find(|&p| peer_has.get(p) && !self.started.get(p))
    }

    /// The rarest piece the peer has that nobody is fetching, ties broken at random. Pieces
    /// nobody is counted as having (bucket 0) are looked at last: a peer's pieces normally
    /// count, so they are only reached if the caller did not register this peer.
    fn rarest_candidate(&mut self, peer_has: &Bitfield) -> Option<u32> {
        let buckets = self.bucket_start.len();
        for k in (1..buckets).chain(std::iter::once(0)) {
            let s = self.bucket_start[k] as usize;
            let e = self
                .bucket_start
                .get(k + 1)
                .map_or(self.order.len(), |&x| x as usize);
            if s >= e {
                continue;
            }
            let len = e - s;
            let start = self.rng.usize(0..len);
            let found = (0..len)
                .map(|i| self.order[s + (start + i) % len])
                .find(|&p| peer_has.get(p) && !self.started.get(p));
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Swaps two entries of `order`, keeping `pos` in step.
    fn swap_order(&mut self, i: usize, j: usize) {
        if i != j {
            self.order.swap(i, j);
            self.pos[self.order[i] as usize] = i as u32;
            self.pos[self.order[j] as usize] = j as u32;
        }
    }

    /// One more peer has `piece`: move it to the front of the next bucket.
    fn inc_avail(&mut self, piece: u32) {
        let a = self.avail[piece as usize];
        if a == u32::MAX {
            return;
        }
        let pos = self.pos[piece as usize];
        if pos != NOT_IN_ORDER {
            let a = a as usize;
            if self.bucket_start.len() <= a + 1 {
                self.bucket_start.push(self.order.len() as u32);
            }
            // The last element of bucket `a`; `piece` is in that bucket, so it is not empty.
            let last = self.bucket_start[a + 1] as usize - 1;
            self.swap_order(pos as usize, last);
            self.bucket_start[a + 1] -= 1;
        }
        self.avail[piece as usize] += 1;
    }

    /// One peer fewer has `piece`: move it to the back of the previous bucket.
    fn dec_avail(&mut self, piece: u32) {
        let a = self.avail[piece as usize];
        if a == 0 {
            return; // the caller removed more than it added; never underflow
        }
        let pos = self.pos[piece as usize];
        if pos != NOT_IN_ORDER {
            let first = self.bucket_start[a as usize] as usize;
            self.swap_order(pos as usize, first);
            self.bucket_start[a as usize] += 1;
        }
        self.avail[piece as usize] -= 1;
    }

    /// Takes a verified piece out of `order`: walk it up across every higher bucket boundary
    /// to the very end, then pop it.
    fn remove_from_order(&mut self, piece: u32) {
        let pos = self.pos[piece as usize];
        if pos == NOT_IN_ORDER {
            return;
        }
        let a = self.avail[piece as usize] as usize;
        for b in a + 1..self.bucket_start.len() {
            let last = self.bucket_start[b] as usize - 1;
            self.swap_order(self.pos[piece as usize] as usize, last);
            self.bucket_start[b] -= 1;
        }
        let end = self.order.len() - 1;
        self.swap_order(self.pos[piece as usize] as usize, end);
        self.order.pop();
        self.pos[piece as usize] = NOT_IN_ORDER;
    }

    /// Drops `block` from `peer`'s request list; whether it was there.
    fn forget_request(&mut self, peer: PeerKey, block: &BlockInfo) -> bool {
        let Some(list) = self.requests.get_mut(&peer) else {
            return false;
        };
        match list.iter().position(|b| b == block) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }

    /// Removes `peer` as a requester of `block` (its request list is the caller's business).
    /// A piece left with nothing requested or received goes back to the pool.
    fn unrequest(&mut self, peer: PeerKey, block: &BlockInfo) {
        let Some(st) = self.in_progress.get_mut(&block.piece) else {
            return;
        };
        let Some(b) = st.blocks.get_mut(block.index() as usize) else {
            return;
        };
        if b.received || !b.remove(peer) {
            return;
        }
        if st.owner == Some(peer) {
            // The one peer allowed on this piece gave up a block: open it to everyone rather
            // than let it stall.
            st.owner = None;
        }
        if b.n == 0 {
            st.free += 1;
        }
        if st.received == 0 && st.free as usize == st.blocks.len() {
            self.take_state(block.piece);
            self.not_started += 1;
        } else {
            self.sync_partial(block.piece);
        }
    }

    /// Releases every block requested from `peer`.
    fn release_all(&mut self, peer: PeerKey) {
        let Some(list) = self.requests.get_mut(&peer) else {
            return;
        };
        let blocks = std::mem::take(list);
        for block in &blocks {
            self.unrequest(peer, block);
        }
        // Keep the (now empty) allocation for the peer's next requests.
        if let Some(list) = self.requests.get_mut(&peer) {
            if list.is_empty() {
                *list = blocks;
                list.clear();
            }
        }
    }

    /// Puts a piece in or out of `partial` according to its free count.
    fn sync_partial(&mut self, piece: u32) {
        let Some(st) = self.in_progress.get_mut(&piece) else {
            return;
        };
        if st.free > 0 && st.partial_idx == NOT_PARTIAL {
            st.partial_idx = self.partial.len() as u32;
            self.partial.push(piece);
        } else if st.free == 0 && st.partial_idx != NOT_PARTIAL {
            self.partial_remove(piece);
        }
    }

    /// Takes a piece out of `partial` if it is there.
    fn partial_remove(&mut self, piece: u32) {
        let Some(st) = self.in_progress.get_mut(&piece) else {
            return;
        };
        let idx = st.partial_idx;
        if idx == NOT_PARTIAL {
            return;
        }
        st.partial_idx = NOT_PARTIAL;
        self.partial.swap_remove(idx as usize);
        if let Some(&moved) = self.partial.get(idx as usize) {
            if let Some(m) = self.in_progress.get_mut(&moved) {
                m.partial_idx = idx;
            }
        }
    }

    /// Checks every invariant of the module documentation; for tests.
    #[cfg(test)]
    fn check(&self) {
        // 1. order / pos / buckets.
        let n = self.lengths.num_pieces();
        assert_eq!(self.order.len() as u32, n - self.num_have);
        for (i, &p) in self.order.iter().enumerate() {
            assert!(!self.have.get(p));
            assert_eq!(self.pos[p as usize], i as u32);
            if i > 0 {
                assert!(self.avail[self.order[i - 1] as usize] <= self.avail[p as usize]);
            }
        }
        for (a, &s) in self.bucket_start.iter().enumerate() {
            let s = s as usize;
            assert!(s <= self.order.len());
            if s < self.order.len() {
                assert!(self.avail[self.order[s] as usize] >= a as u32);
            }
            if s > 0 {
                assert!(self.avail[self.order[s - 1] as usize] < a as u32);
            }
        }
        // 2.-5.
        let mut missing = 0u64;
        let mut not_started = 0;
        for p in 0..n {
            if self.have.get(p) {
                assert!(!self.started.get(p));
                continue;
            }
            match self.in_progress.get(&p) {
                None => {
                    assert!(!self.started.get(p));
                    not_started += 1;
                    missing += u64::from(self.lengths.blocks_in_piece(p));
                }
                Some(st) => {
                    assert!(self.started.get(p));
                    let free = st.blocks.iter().filter(|b| b.is_free()).count() as u32;
                    let recv = st.blocks.iter().filter(|b| b.received).count() as u32;
                    assert_eq!((st.free, st.received), (free, recv));
                    assert!(recv > 0 || free < st.blocks.len() as u32);
                    assert_eq!(st.partial_idx != NOT_PARTIAL, free > 0);
                    if st.partial_idx != NOT_PARTIAL {
                        assert_eq!(self.partial[st.partial_idx as usize], p);
                    }
                    missing += u64::from(st.blocks.len() as u32 - recv);
                    for (i, b) in st.blocks.iter().enumerate() {
                        assert!(!(b.received && b.n > 0));
                        let block = self.lengths.block(p, i as u32);
                        for r in b.requesters() {
                            assert!(self.requests_of(*r).contains(&block));
                        }
                    }
                }
            }
        }
        assert_eq!(
            self.partial.len(),
            self.in_progress.values().filter(|s| s.free > 0).count()
        );
        assert_eq!(self.missing, missing);
        assert_eq!(self.not_started, not_started);
        for (&peer, list) in &self.requests {
            for b in list {
                let st = &self.in_progress[&b.piece];
                assert!(st.blocks[b.index() as usize].is_requested_by(peer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// `pieces` pieces of `blocks` blocks each.
    fn lengths(pieces: u32, blocks: u32) -> Lengths {
        let pl = u64::from(blocks) * 16_384;
        Lengths::new(pl * u64::from(pieces), pl).unwrap()
    }

    fn bf(len: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in ones {
            b.set(i);
        }
        b
    }

    fn pieces_of(blocks: &[BlockInfo]) -> Vec<u32> {
        let mut v: Vec<u32> = blocks.iter().map(|b| b.piece).collect();
        v.dedup();
        v
    }

    const A: PeerKey = PeerKey(1);
    const B: PeerKey = PeerKey(2);
    const C: PeerKey = PeerKey(3);

    #[test]
    fn random_first_varies_and_stays_in_peer_pieces() {
        let l = lengths(200, 2);
        let has = bf(200, (0..200).filter(|p| p % 3 == 0));
        let mut firsts = HashSet::new();
        for seed in 0..40 {
            let mut pk = Picker::with_seed(l, Bitfield::new(200), seed);
            pk.peer_bitfield(&has);
            let mut out = Vec::new();
            pk.pick(A, &has, 2, &mut out);
            assert_eq!(out.len(), 2);
            assert!(has.get(out[0].piece));
            assert_eq!(out[0].piece, out[1].piece, "whole piece first");
            firsts.insert(out[0].piece);
            pk.check();
        }
        assert!(firsts.len() > 10, "first picks barely vary: {firsts:?}");
    }

    #[test]
    fn rarest_first_after_random_first() {
        let l = lengths(20, 1);
        for seed in 0..20 {
            let mut pk = Picker::with_seed(l, bf(20, 0..RANDOM_FIRST_PIECES), seed);
            let mut no7 = Bitfield::full(20);
            no7.clear(7);
            pk.peer_bitfield(&no7);
            pk.peer_bitfield(&no7);
            let rare_peer = bf(20, std::iter::once(7).chain(9..20));
            pk.peer_bitfield(&rare_peer);
            assert_eq!(pk.availability(7), 1);
            assert_eq!(pk.availability(8), 2);
            assert_eq!(pk.availability(9), 3);
            pk.check();
            // The rare peer: piece 7 (one peer) before its common ones.
            let mut out = Vec::new();
            pk.pick(C, &rare_peer, 2, &mut out);
            assert_eq!(out[0].piece, 7, "seed {seed}");
            assert!(out[1].piece >= 9);
            // Another peer: the availability-2 pieces 4, 5, 6, 8 before the 3s.
            let mut out = Vec::new();
            pk.pick(A, &no7, 4, &mut out);
            let mut got = pieces_of(&out);
            got.sort();
            assert_eq!(got, [4, 5, 6, 8], "seed {seed}");
            pk.check();
        }
    }

    #[test]
    fn a_piece_only_one_peer_has_comes_first() {
        let l = lengths(50, 1);
        for seed in 0..20 {
            let mut pk = Picker::with_seed(l, bf(50, 0..4), seed);
            for _ in 0..5 {
                pk.peer_bitfield(&Bitfield::full(50));
            }
            // Four of the five leave piece 30 (as if they had only announced it).
            pk.peer_gone(PeerKey(50), &bf(50, [30]));
            pk.peer_gone(PeerKey(51), &bf(50, [30]));
            pk.peer_gone(PeerKey(52), &bf(50, [30]));
            pk.peer_gone(PeerKey(53), &bf(50, [30]));
            assert_eq!(pk.availability(30), 1);
            let mut out = Vec::new();
            pk.pick(A, &Bitfield::full(50), 1, &mut out);
            assert_eq!(out[0].piece, 30, "seed {seed}");
        }
    }

    #[test]
    fn ties_are_broken_at_random() {
        let l = lengths(100, 1);
        let mut seen = HashSet::new();
        for seed in 0..30 {
            let mut pk = Picker::with_seed(l, bf(100, 0..4), seed);
            pk.peer_bitfield(&Bitfield::full(100));
            let mut out = Vec::new();
            pk.pick(A, &Bitfield::full(100), 1, &mut out);
            seen.insert(out[0].piece);
        }
        assert!(seen.len() > 10, "{seen:?}");
    }

    #[test]
    fn partial_pieces_are_finished_first() {
        let l = lengths(30, 4);
        let mut pk = Picker::with_seed(l, Bitfield::new(30), 3);
        let all = Bitfield::full(30);
        pk.peer_bitfield(&all);
        pk.peer_bitfield(&all);
        let mut out = Vec::new();
        pk.pick(A, &all, 2, &mut out);
        let p = out[0].piece;
        assert_eq!(pieces_of(&out), [p]);
        // B gets the rest of A's piece before anything new.
        let mut out_b = Vec::new();
        pk.pick(B, &all, 3, &mut out_b);
        assert_eq!(out_b[0].piece, p);
        assert_eq!(out_b[1].piece, p);
        assert_ne!(out_b[2].piece, p);
        // Two partial pieces: the one with more blocks received goes first.
        assert_ne!(out_b[2].piece, p);
        pk.peer_choked(B); // q back to the pool (it held nothing); p's blocks 2, 3 free
        pk.check();
        pk.block_received(A, out[0]);
        let mut out_c = Vec::new();
        pk.pick(C, &all, 4, &mut out_c);
        assert_eq!(out_c[0], l.block(p, 2));
        assert_eq!(out_c[1], l.block(p, 3));
        pk.check();
    }

    #[test]
    fn most_complete_partial_first() {
        let l = lengths(10, 4);
        let mut pk = Picker::with_seed(l, Bitfield::new(10), 5);
        let all = Bitfield::full(10);
        pk.peer_bitfield(&all);
        let mut a = Vec::new();
        pk.pick(A, &all, 8, &mut a); // two whole pieces
        let (p1, p2) = (a[0].piece, a[4].piece);
        // p2 gets 3 blocks, p1 gets 1; then A chokes: both partial.
        for b in &a[4..7] {
            pk.block_received(A, *b);
        }
        pk.block_received(A, a[0]);
        pk.peer_choked(A);
        pk.check();
        let mut out = Vec::new();
        pk.pick(B, &all, 4, &mut out);
        assert_eq!(out[0], l.block(p2, 3));
        assert_eq!(pieces_of(&out[1..]), [p1]);
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let l = lengths(3, 2);
        let mut pk = Picker::with_seed(l, Bitfield::new(3), 9);
        let all = Bitfield::full(3);
        for _ in 0..4 {
            pk.peer_bitfield(&all);
        }
        let mut a = Vec::new();
        pk.pick(A, &all, 100, &mut a);
        assert_eq!(a.len(), 6);
        assert!(pk.in_endgame());
        pk.check();
        // B gets duplicates of all six, C too, a fourth peer nothing (two extra requesters).
        let mut b = Vec::new();
        pk.pick(B, &all, 100, &mut b);
        assert_eq!(b.len(), 6);
        let mut c = Vec::new();
        pk.pick(C, &all, 100, &mut c);
        assert_eq!(c.len(), 6);
        let mut d = Vec::new();
        pk.pick(PeerKey(4), &all, 100, &mut d);
        assert!(d.is_empty());
        // Asking again gives nothing new to the same peer.
        let mut b2 = Vec::new();
        pk.pick(B, &all, 100, &mut b2);
        assert!(b2.is_empty());
        pk.check();
        // B delivers a block: cancel it at A and C.
        match pk.block_received(B, a[0]) {
            Received::New {
                cancel,
                piece_complete,
            } => {
                let mut cancel = cancel;
                cancel.sort();
                assert_eq!(cancel, [A, C]);
                assert!(!piece_complete);
            }
            other => panic!("{other:?}"),
        }
        assert!(!pk.requests_of(A).contains(&a[0]));
        assert_eq!(pk.block_received(A, a[0]), Received::Duplicate);
        // The block is done: nobody gets it again, not even the peer left out.
        let mut d = Vec::new();
        pk.pick(PeerKey(4), &all, 100, &mut d);
        assert!(!d.contains(&a[0]));
        pk.check();
    }

    #[test]
    fn endgame_prefers_least_requested() {
        let l = lengths(1, 4);
        let mut pk = Picker::with_seed(l, Bitfield::new(1), 9);
        let all = Bitfield::full(1);
        pk.peer_bitfield(&all);
        let mut a = Vec::new();
        pk.pick(A, &all, 4, &mut a);
        let mut b = Vec::new();
        pk.pick(B, &all, 2, &mut b);
        let mut c = Vec::new();
        pk.pick(C, &all, 2, &mut c);
        // B took blocks 0, 1; C must take 2, 3 (one requester) before 0, 1 (two).
        assert_eq!(b, [l.block(0, 0), l.block(0, 1)]);
        assert_eq!(c, [l.block(0, 2), l.block(0, 3)]);
    }

    #[test]
    fn choke_and_gone_release_blocks() {
        let l = lengths(4, 2);
        let mut pk = Picker::with_seed(l, Bitfield::new(4), 2);
        let all = Bitfield::full(4);
        pk.peer_bitfield(&all);
        pk.peer_bitfield(&all);
        let mut a = Vec::new();
        pk.pick(A, &all, 8, &mut a);
        assert_eq!(a.len(), 8);
        assert!(pk.in_endgame());
        pk.peer_choked(A);
        assert!(!pk.in_endgame());
        assert!(pk.requests_of(A).is_empty());
        assert_eq!(pk.availability(0), 2);
        pk.check();
        let mut b = Vec::new();
        pk.pick(B, &all, 8, &mut b);
        let got: HashSet<_> = b.iter().copied().collect();
        assert_eq!(got.len(), 8, "everything A had is B's now");
        pk.peer_gone(B, &all);
        assert_eq!(pk.availability(0), 1);
        assert!(pk.requests_of(B).is_empty());
        pk.check();
        let mut c = Vec::new();
        pk.pick(C, &all, 8, &mut c);
        assert_eq!(c.len(), 8);
        pk.check();
    }

    #[test]
    fn released_block_goes_back_and_late_data_counts() {
        let l = lengths(4, 2);
        let mut pk = Picker::with_seed(l, bf(4, 0..3), 2);
        let all = Bitfield::full(4);
        pk.peer_bitfield(&all);
        let mut a = Vec::new();
        pk.pick(A, &all, 1, &mut a);
        assert_eq!(a, [l.block(3, 0)]);
        pk.block_released(A, a[0]);
        pk.check();
        let mut b = Vec::new();
        pk.pick(B, &all, 1, &mut b);
        assert_eq!(b, a);
        // A's late answer still counts, and B is told to cancel.
        assert_eq!(
            pk.block_received(A, a[0]),
            Received::New {
                piece_complete: false,
                cancel: vec![B]
            }
        );
        assert!(pk.requests_of(B).is_empty());
        // Bad blocks and pieces nobody fetches are NotRequested.
        let off = BlockInfo {
            piece: 3,
            begin: 1,
            len: 16_384,
        };
        assert_eq!(pk.block_received(A, off), Received::NotRequested);
        assert_eq!(pk.block_received(A, l.block(0, 0)), Received::Duplicate);
        assert_eq!(pk.block_received(A, l.block(99, 0)), Received::NotRequested);
        pk.check();
    }

    #[test]
    fn piece_failed_blames_and_repicks() {
        let l = lengths(2, 2);
        let mut pk = Picker::with_seed(l, bf(2, [0]), 4);
        let all = Bitfield::full(2);
        pk.peer_bitfield(&all);
        let mut a = Vec::new();
        pk.pick(A, &all, 1, &mut a);
        let mut b = Vec::new();
        pk.pick(B, &all, 1, &mut b);
        assert_eq!(pk.missing_blocks(), 2);
        pk.block_received(A, a[0]);
        let r = pk.block_received(B, b[0]);
        assert_eq!(
            r,
            Received::New {
                piece_complete: true,
                cancel: vec![]
            }
        );
        assert_eq!(pk.missing_blocks(), 0);
        let mut none = Vec::new();
        pk.pick(C, &all, 4, &mut none);
        assert!(none.is_empty(), "complete piece waiting for its hash");
        let mut blame = pk.piece_failed(1);
        blame.sort();
        assert_eq!(blame, [A, B]);
        assert_eq!(pk.missing_blocks(), 2);
        pk.check();
        let mut c = Vec::new();
        pk.pick(C, &all, 4, &mut c);
        assert_eq!(c, [l.block(1, 0), l.block(1, 1)]);
        for blk in &c {
            pk.block_received(C, *blk);
        }
        pk.piece_verified(1);
        assert!(pk.is_complete());
        assert_eq!(pk.missing_blocks(), 0);
        assert!(!pk.in_endgame());
        pk.check();
    }

    #[test]
    fn interest_and_have() {
        let l = lengths(10, 1);
        let mut pk = Picker::with_seed(l, bf(10, [1, 2]), 0);
        assert!(!pk.is_interesting(&bf(10, [1])));
        assert!(pk.is_interesting(&bf(10, [1, 3])));
        pk.peer_have(3);
        pk.peer_have(3);
        pk.peer_have(1000);
        assert_eq!(pk.availability(3), 2);
        assert_eq!(pk.availability(1000), 0);
        pk.check();
        pk.piece_verified(3);
        assert!(pk.have().get(3));
        assert!(!pk.is_interesting(&bf(10, [1, 3])));
        pk.check();
    }

    #[test]
    fn whole_download_from_a_swarm() {
        let l = lengths(64, 3);
        let mut pk = Picker::with_seed(l, Bitfield::new(64), 11);
        let mut rng = fastrand::Rng::with_seed(1);
        let peers: Vec<Bitfield> = (0..8)
            .map(|_| bf(64, (0..64).filter(|_| rng.u8(..) < 140)))
            .collect();
        let mut union = Bitfield::new(64);
        for p in &peers {
            pk.peer_bitfield(p);
            for i in p.iter_ones() {
                union.set(i);
            }
        }
        let mut rounds = 0;
        while !pk.have().as_bytes().eq(union.as_bytes()) {
            rounds += 1;
            assert!(rounds < 1000);
            for (k, has) in peers.iter().enumerate() {
                let key = PeerKey(k as u64);
                let mut out = Vec::new();
                pk.pick(key, has, 5, &mut out);
                for b in out {
                    assert!(has.get(b.piece));
                    if rng.u8(..) < 30 {
                        pk.block_released(key, b);
                        continue;
                    }
                    if let Received::New {
                        piece_complete: true,
                        ..
                    } = pk.block_received(key, b)
                    {
                        if rng.u8(..) < 20 {
                            assert!(!pk.piece_failed(b.piece).is_empty());
                        } else {
                            pk.piece_verified(b.piece);
                        }
                    }
                }
                pk.check();
            }
        }
    }

    proptest! {
        #[test]
        fn never_a_piece_the_peer_lacks(
            seed in any::<u64>(),
            have in proptest::collection::vec(any::<bool>(), 40),
            peers in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 40), 1..6),
            ops in proptest::collection::vec((0usize..6, 0u8..6, 1usize..12), 1..60),
        ) {
            let l = lengths(40, 3);
            let have = bf(40, (0..40).filter(|&i| have[i as usize]));
            let peers: Vec<Bitfield> = peers.iter().map(|v| bf(40, (0..40).filter(|&i| v[i as usize]))).collect();
            let mut pk = Picker::with_seed(l, have.clone(), seed);
            for p in &peers { pk.peer_bitfield(p); }
            let mut received = HashSet::new();
            let mut gone = HashSet::new();
            for (who, op, max) in ops {
                let who = who % peers.len();
                if gone.contains(&who) { continue; }
                let key = PeerKey(who as u64);
                let has = &peers[who];
                match op {
                    0..=2 => {
                        let before = pk.requests_of(key).len();
                        let mut out = Vec::new();
                        pk.pick(key, has, max, &mut out);
                        prop_assert!(out.len() <= max);
                        prop_assert_eq!(pk.requests_of(key).len(), before + out.len());
                        for b in &out {
                            prop_assert!(has.get(b.piece), "piece {} the peer lacks", b.piece);
                            prop_assert!(!pk.have().get(b.piece));
                            prop_assert!(!received.contains(b));
                            prop_assert!(l.is_our_block(b));
                        }
                        let distinct: HashSet<_> = pk.requests_of(key).iter().collect();
                        prop_assert_eq!(distinct.len(), pk.requests_of(key).len());
                    }
                    3 => {
                        if let Some(&b) = pk.requests_of(key).first() {
                            if let Received::New { piece_complete, .. } = pk.block_received(key, b) {
                                received.insert(b);
                                if piece_complete {
                                    pk.piece_verified(b.piece);
                                }
                            }
                        }
                    }
                    4 => pk.peer_choked(key),
                    _ => {
                        pk.peer_gone(key, has);
                        gone.insert(who);
                    }
                }
                pk.check();
            }
        }
    }

    #[test]
    fn a_failed_piece_is_refetched_from_one_peer_only() {
        let lengths = Lengths::new(4 * 32_768, 32_768).unwrap();
        let mut pk = Picker::with_seed(lengths, Bitfield::new(4), 1);
        let all = Bitfield::full(4);
        pk.peer_bitfield(&all);
        pk.peer_bitfield(&all);
        let (a, b) = (PeerKey(1), PeerKey(2));
        // Both peers fetch piece blocks; pick them all and deliver piece 0 from both.
        let mut out = Vec::new();
        pk.pick(a, &all, 8, &mut out);
        let first: Vec<BlockInfo> = out
            .iter()
            .copied()
            .filter(|x| x.piece == out[0].piece)
            .collect();
        let piece = first[0].piece;
        for blk in &first {
            pk.block_received(a, *blk);
        }
        let blame = pk.piece_failed(piece);
        assert_eq!(blame, vec![a]);
        // Peer b starts the failed piece: it is reserved for b; a gets none of its blocks.
        let mut only = Bitfield::new(4);
        only.set(piece);
        let mut got_b = Vec::new();
        pk.pick(b, &only, 1, &mut got_b);
        assert_eq!(got_b.len(), 1);
        assert_eq!(got_b[0].piece, piece);
        let mut got_a = Vec::new();
        pk.pick(a, &only, 8, &mut got_a);
        assert!(got_a.iter().all(|x| x.piece != piece), "{got_a:?}");
        // When b gives up a block, the piece opens to everyone.
        pk.block_released(b, got_b[0]);
        let mut again = Vec::new();
        pk.pick(a, &only, 8, &mut again);
        assert!(again.iter().any(|x| x.piece == piece));
    }
}
