//! Pieces in progress: the state of every block of each piece being fetched (free, requested
//! from whom, received), and the list of those pieces that still have a free block.
//!
//! States live in a dense vector indexed through a per-piece slot number, so a lookup is two
//! array reads (no hashing) and a scan of every piece in progress (endgame) walks one slice.
//!
//! # Invariants
//! 1. `slot[p]` is `p`'s index in `states` iff `p` is in progress (and then its bit in
//!    `started` is set), and `states[i].piece` names its piece.
//! 2. A block is free, requested by 1 to [`MAX_REQUESTERS`] distinct peers, or received; a
//!    received block has no requesters. `free` and `received` count them per piece.
//! 3. `partial` holds exactly the pieces marked partial by [`InProgress::sync_partial`] (in
//!    progress, with a free block, and wanted), each knowing its index there.

use super::{PeerKey, MAX_REQUESTERS};
use crate::bitfield::Bitfield;

/// Marks a piece that is not in `partial`.
const NOT_PARTIAL: u32 = u32::MAX;

/// Marks a piece that is not in progress.
const NO_SLOT: u32 = u32::MAX;

/// How many block-state arrays of finished pieces are kept for the next pieces, so starting a
/// piece usually allocates nothing. 64 arrays of at most a few hundred small entries each.
const SPARE_BLOCK_LISTS: usize = 64;

/// The state of one block of a piece in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockState {
    /// The data has arrived.
    pub(super) received: bool,
    /// How many entries of `peers` are in use.
    n: u8,
    /// The peers it is requested from, `peers[..n]`.
    peers: [PeerKey; MAX_REQUESTERS],
    /// For each of `peers`, this block's index in that peer's request list, so the list entry
    /// can be removed in O(1) (see [`super::requests`]).
    at: [u32; MAX_REQUESTERS],
}

impl BlockState {
    /// Neither requested nor received.
    pub(super) const FREE: Self = Self {
        received: false,
        n: 0,
        peers: [PeerKey(0); MAX_REQUESTERS],
        at: [0; MAX_REQUESTERS],
    };

    /// Neither requested nor received.
    pub(super) fn is_free(&self) -> bool {
        !self.received && self.n == 0
    }

    /// How many peers it is requested from.
    pub(super) fn requesters(&self) -> u8 {
        self.n
    }

    /// Whether it is requested from `peer`.
    pub(super) fn is_requested_by(&self, peer: PeerKey) -> bool {
        self.peers[..usize::from(self.n)].contains(&peer)
    }

    /// Each requester with the block's index in its request list.
    pub(super) fn requests(&self) -> impl Iterator<Item = (PeerKey, u32)> + '_ {
        let n = usize::from(self.n);
        self.peers[..n]
            .iter()
            .copied()
            .zip(self.at[..n].iter().copied())
    }

    /// Where the block is in `peer`'s request list, if it is requested from `peer`.
    pub(super) fn at_of(&self, peer: PeerKey) -> Option<u32> {
        let n = usize::from(self.n);
        let i = self.peers[..n].iter().position(|&p| p == peer)?;
        Some(self.at[i])
    }

    /// Adds a requester whose list holds the block at `at`; the caller checked there is room
    /// and that `peer` is not one already.
    pub(super) fn add(&mut self, peer: PeerKey, at: u32) {
        let n = usize::from(self.n);
        self.peers[n] = peer;
        self.at[n] = at;
        self.n += 1;
    }

    /// Removes a requester; whether it was one.
    pub(super) fn remove(&mut self, peer: PeerKey) -> bool {
        let n = usize::from(self.n);
        match self.peers[..n].iter().position(|&p| p == peer) {
            Some(i) => {
                self.peers[i] = self.peers[n - 1];
                self.at[i] = self.at[n - 1];
                self.n -= 1;
                true
            }
            None => false,
        }
    }

    /// `peer`'s list now holds the block at `at` (another entry was swapped into its place).
    pub(super) fn set_at(&mut self, peer: PeerKey, at: u32) {
        let n = usize::from(self.n);
        if let Some(i) = self.peers[..n].iter().position(|&p| p == peer) {
            self.at[i] = at;
        }
    }

    /// Clears the requesters, returning the state as it was.
    pub(super) fn take_requests(&mut self) -> BlockState {
        let was = *self;
        self.n = 0;
        was
    }
}

/// The block state of one piece in progress.
#[derive(Debug)]
pub(super) struct PieceState {
    /// The piece.
    pub(super) piece: u32,
    /// One entry per block of the piece.
    pub(super) blocks: Box<[BlockState]>,
    /// Blocks received.
    pub(super) received: u32,
    /// Blocks neither requested nor received.
    pub(super) free: u32,
    /// Peers that sent data for this piece, to blame if its hash fails.
    pub(super) contributors: Vec<PeerKey>,
    /// For a piece that failed before: the one peer allowed to fetch it, so that a second
    /// failure has a single contributor to blame. Cleared when that peer gives up a block.
    pub(super) owner: Option<PeerKey>,
    /// This piece's index in `InProgress::partial`, or [`NOT_PARTIAL`].
    partial_idx: u32,
}

impl PieceState {
    /// Whether `peer` may fetch blocks of this piece.
    pub(super) fn open_to(&self, peer: PeerKey) -> bool {
        self.owner.is_none_or(|o| o == peer)
    }

    /// Whether every block has arrived.
    pub(super) fn is_complete(&self) -> bool {
        self.received as usize == self.blocks.len()
    }
}

/// Every piece in progress, and those with a free block.
#[derive(Debug)]
pub(super) struct InProgress {
    /// Each piece's index in `states`, or [`NO_SLOT`].
    slot: Vec<u32>,
    /// The pieces with a slot, as a bitfield: rarest-first scans ask "in progress?" of many
    /// pieces, and a bit per piece stays in cache where `slot` would not.
    started: Bitfield,
    /// The pieces in progress, in no particular order.
    states: Vec<PieceState>,
    /// Pieces marked partial: in progress, wanted, with a free block (invariant 3).
    partial: Vec<u32>,
    /// Block-state arrays of finished pieces, for reuse.
    spare: Vec<Box<[BlockState]>>,
}

impl InProgress {
    /// No piece in progress, out of `pieces`.
    pub(super) fn new(pieces: u32) -> Self {
        Self {
            slot: vec![NO_SLOT; pieces as usize],
            started: Bitfield::new(pieces),
            states: Vec::new(),
            partial: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// How many pieces are in progress.
    pub(super) fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether `piece` is in progress (false out of range).
    pub(super) fn contains(&self, piece: u32) -> bool {
        self.started.get(piece)
    }

    /// The state of `piece`, if it is in progress.
    pub(super) fn get(&self, piece: u32) -> Option<&PieceState> {
        let s = *self.slot.get(piece as usize)?;
        self.states.get(s as usize)
    }

    /// The state of `piece`, if it is in progress.
    pub(super) fn get_mut(&mut self, piece: u32) -> Option<&mut PieceState> {
        let s = *self.slot.get(piece as usize)?;
        self.states.get_mut(s as usize)
    }

    /// The piece at index `i` of the states (`i < len()`), for walking every piece in
    /// progress while changing them.
    pub(super) fn piece_at(&self, i: usize) -> u32 {
        self.states[i].piece
    }

    /// Every piece in progress, in no particular order; for tests.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &PieceState> {
        self.states.iter()
    }

    /// The pieces marked partial, in no particular order.
    pub(super) fn partial(&self) -> &[u32] {
        &self.partial
    }

    /// Puts `piece` (not in progress, in range) in progress with `blocks` free blocks, reserved
    /// for `owner` if given. It is not partial until [`InProgress::sync_partial`] says so.
    pub(super) fn start(&mut self, piece: u32, blocks: u32, owner: Option<PeerKey>) {
        debug_assert!(!self.contains(piece));
        let n = blocks as usize;
        let blocks = match self.spare.iter().position(|b| b.len() == n) {
            Some(i) => self.spare.swap_remove(i),
            None => vec![BlockState::FREE; n].into_boxed_slice(),
        };
        self.slot[piece as usize] = self.states.len() as u32;
        self.started.set(piece);
        self.states.push(PieceState {
            piece,
            blocks,
            received: 0,
            free: n as u32,
            contributors: Vec::new(),
            owner,
            partial_idx: NOT_PARTIAL,
        });
    }

    /// Takes `piece` out of progress (and out of `partial`); `None` if it was not in progress.
    /// Give its block array back with [`InProgress::recycle`].
    pub(super) fn finish(&mut self, piece: u32) -> Option<PieceState> {
        self.set_partial(piece, false);
        let s = *self.slot.get(piece as usize)?;
        if s == NO_SLOT {
            return None;
        }
        self.slot[piece as usize] = NO_SLOT;
        self.started.clear(piece);
        let st = self.states.swap_remove(s as usize);
        if let Some(moved) = self.states.get(s as usize) {
            self.slot[moved.piece as usize] = s;
        }
        Some(st)
    }

    /// Keeps a finished piece's block array for a later piece.
    pub(super) fn recycle(&mut self, mut blocks: Box<[BlockState]>) {
        if self.spare.len() < SPARE_BLOCK_LISTS {
            blocks.fill(BlockState::FREE);
            self.spare.push(blocks);
        }
    }

    /// Marks `piece` partial iff it is in progress, `wanted`, and has a free block.
    pub(super) fn sync_partial(&mut self, piece: u32, wanted: bool) {
        let partial = wanted && self.get(piece).is_some_and(|st| st.free > 0);
        self.set_partial(piece, partial);
    }

    /// Puts `piece` in or out of `partial` (only pieces in progress can be in it).
    fn set_partial(&mut self, piece: u32, partial: bool) {
        let Some(&s) = self.slot.get(piece as usize) else {
            return;
        };
        let Some(st) = self.states.get_mut(s as usize) else {
            return;
        };
        let idx = st.partial_idx;
        if partial && idx == NOT_PARTIAL {
            st.partial_idx = self.partial.len() as u32;
            self.partial.push(piece);
        } else if !partial && idx != NOT_PARTIAL {
            st.partial_idx = NOT_PARTIAL;
            self.partial.swap_remove(idx as usize);
            if let Some(&moved) = self.partial.get(idx as usize) {
                if let Some(m) = self.get_mut(moved) {
                    m.partial_idx = idx;
                }
            }
        }
    }

    /// Whether `piece` is marked partial; for tests.
    #[cfg(test)]
    pub(super) fn is_partial(&self, piece: u32) -> bool {
        self.get(piece)
            .is_some_and(|st| st.partial_idx != NOT_PARTIAL)
    }

    /// Checks invariants 1 to 3; for tests.
    #[cfg(test)]
    pub(super) fn check(&self) {
        for (i, st) in self.states.iter().enumerate() {
            assert_eq!(self.slot[st.piece as usize], i as u32);
            let free = st.blocks.iter().filter(|b| b.is_free()).count() as u32;
            let recv = st.blocks.iter().filter(|b| b.received).count() as u32;
            assert_eq!((st.free, st.received), (free, recv));
            for b in st.blocks.iter() {
                assert!(!(b.received && b.n > 0));
                let peers = &b.peers[..usize::from(b.n)];
                for (k, p) in peers.iter().enumerate() {
                    assert!(!peers[..k].contains(p), "a requester twice");
                }
            }
            if st.partial_idx != NOT_PARTIAL {
                assert_eq!(self.partial[st.partial_idx as usize], st.piece);
            }
        }
        assert_eq!(
            self.slot.iter().filter(|&&s| s != NO_SLOT).count(),
            self.states.len()
        );
        for (p, &s) in self.slot.iter().enumerate() {
            assert_eq!(self.started.get(p as u32), s != NO_SLOT);
        }
        for &p in &self.partial {
            assert!(self.is_partial(p));
        }
        assert_eq!(
            self.partial.len(),
            self.states
                .iter()
                .filter(|s| s.partial_idx != NOT_PARTIAL)
                .count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerKey = PeerKey(1);
    const B: PeerKey = PeerKey(2);
    const C: PeerKey = PeerKey(3);

    #[test]
    fn block_requesters_keep_their_places() {
        let mut b = BlockState::FREE;
        assert!(b.is_free());
        b.add(A, 7);
        b.add(B, 0);
        b.add(C, 3);
        assert_eq!(b.requesters(), 3);
        assert!(!b.is_free());
        assert_eq!(b.at_of(B), Some(0));
        assert!(b.remove(A));
        assert!(!b.remove(A));
        assert_eq!(b.at_of(A), None);
        // C took A's slot and kept its own index.
        assert_eq!(b.at_of(C), Some(3));
        b.set_at(C, 1);
        b.set_at(A, 9); // not a requester: ignored
        let mut got: Vec<_> = b.requests().collect();
        got.sort();
        assert_eq!(got, [(B, 0), (C, 1)]);
        let was = b.take_requests();
        assert_eq!(was.requesters(), 2);
        assert!(b.is_free());
    }

    #[test]
    fn slots_follow_swaps_and_arrays_are_reused() {
        let mut ip = InProgress::new(10);
        for p in [3, 5, 7] {
            ip.start(p, 4, None);
        }
        assert_eq!(ip.len(), 3);
        assert!(ip.contains(5) && !ip.contains(4) && !ip.contains(99));
        let st = ip.finish(3).unwrap();
        assert_eq!(st.piece, 3);
        assert!(ip.finish(3).is_none());
        // 7 moved into 3's slot.
        assert_eq!(ip.get(7).unwrap().piece, 7);
        ip.check();
        let mut blocks = st.blocks;
        blocks[0].received = true;
        let ptr = blocks.as_ptr();
        ip.recycle(blocks);
        ip.start(2, 4, Some(A));
        let st = ip.get(2).unwrap();
        assert_eq!(st.blocks.as_ptr(), ptr, "the spare array is reused");
        assert!(st.blocks.iter().all(BlockState::is_free), "and reset");
        assert!(st.open_to(A) && !st.open_to(B));
        let mut pieces: Vec<u32> = ip.iter().map(|s| s.piece).collect();
        pieces.sort();
        assert_eq!(pieces, [2, 5, 7]);
        ip.check();
    }

    #[test]
    fn partial_tracks_free_and_wanted() {
        let mut ip = InProgress::new(10);
        ip.start(1, 2, None);
        ip.start(2, 2, None);
        ip.sync_partial(1, true);
        ip.sync_partial(2, true);
        ip.sync_partial(9, true); // not in progress: ignored
        assert_eq!(ip.partial().len(), 2);
        // Piece 1 loses its free blocks; piece 2 stops being wanted.
        let st = ip.get_mut(1).unwrap();
        st.blocks[0].add(A, 0);
        st.blocks[1].add(A, 1);
        st.free = 0;
        ip.sync_partial(1, true);
        ip.sync_partial(2, false);
        assert!(ip.partial().is_empty());
        ip.check();
        ip.sync_partial(2, true);
        assert_eq!(ip.partial(), [2]);
        ip.finish(2);
        assert!(ip.partial().is_empty());
        ip.check();
    }
}
