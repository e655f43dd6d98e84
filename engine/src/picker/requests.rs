//! Requests: the blocks currently requested from each peer, so a choke or a disconnect releases
//! them without scanning every piece.
//!
//! Each list is unordered and removal is a swap with the last entry: O(1) on the per-block
//! path. The caller learns which block moved into the hole and records its new index (the
//! block states in [`super::progress`] keep, per requester, the block's index in that peer's
//! list), so no search is ever needed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::PeerKey;
use crate::lengths::BlockInfo;

/// A hasher for [`PeerKey`]s, which the picker actor hands out itself (never chosen by a
/// remote peer, so no flooding concern): one multiply instead of SipHash on every block.
#[derive(Debug, Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses for its tags, depend on all
        // the bits of `n`.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by [`PeerKey`] with [`KeyHasher`].
pub(super) type PeerMap<V> = HashMap<PeerKey, V, BuildHasherDefault<KeyHasher>>;

/// The outstanding requests of every peer.
#[derive(Debug, Default)]
pub(super) struct Requests {
    /// Each peer's outstanding blocks, in no particular order.
    by_peer: PeerMap<Vec<BlockInfo>>,
}

impl Requests {
    /// The blocks requested from `peer`, in no particular order; for tests.
    #[cfg(test)]
    pub(super) fn of(&self, peer: PeerKey) -> &[BlockInfo] {
        self.by_peer.get(&peer).map_or(&[], Vec::as_slice)
    }

    /// `peer`'s list, to push blocks to; a block's index is the list's length before its push.
    pub(super) fn list_mut(&mut self, peer: PeerKey) -> &mut Vec<BlockInfo> {
        self.by_peer.entry(peer).or_default()
    }

    /// Removes `block`, which should be at index `at` of `peer`'s list, by moving the last
    /// entry into its place. Returns the block that moved to `at`, whose index the caller must
    /// update; `None` if nothing moved or `block` was not at `at` (then nothing changes).
    pub(super) fn remove_at(
        &mut self,
        peer: PeerKey,
        at: u32,
        block: &BlockInfo,
    ) -> Option<BlockInfo> {
        let list = self.by_peer.get_mut(&peer)?;
        let at = at as usize;
        if list.get(at) != Some(block) {
            debug_assert!(false, "request list out of step with the block states");
            return None;
        }
        list.swap_remove(at);
        list.get(at).copied()
    }

    /// Takes every block requested from `peer`; hand the vector back with
    /// [`Requests::give_back`] to keep its allocation.
    pub(super) fn take(&mut self, peer: PeerKey) -> Vec<BlockInfo> {
        self.by_peer
            .get_mut(&peer)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Returns the allocation of a taken list, if `peer` got no new requests meanwhile.
    pub(super) fn give_back(&mut self, peer: PeerKey, mut list: Vec<BlockInfo>) {
        if let Some(cur) = self.by_peer.get_mut(&peer) {
            if cur.is_empty() {
                list.clear();
                *cur = list;
            }
        }
    }

    /// Forgets `peer` (it has no requests left).
    pub(super) fn remove_peer(&mut self, peer: PeerKey) {
        self.by_peer.remove(&peer);
    }

    /// Every peer's list; for tests.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&PeerKey, &Vec<BlockInfo>)> {
        self.by_peer.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn blk(piece: u32, i: u32) -> BlockInfo {
        BlockInfo {
            piece,
            begin: i * 16_384,
            len: 16_384,
        }
    }

    #[test]
    fn removal_reports_the_moved_block() {
        let mut r = Requests::default();
        let p = PeerKey(1);
        let list = r.list_mut(p);
        list.extend([blk(0, 0), blk(0, 1), blk(0, 2)]);
        // Removing the first moves the last into its place.
        assert_eq!(r.remove_at(p, 0, &blk(0, 0)), Some(blk(0, 2)));
        assert_eq!(r.of(p), [blk(0, 2), blk(0, 1)]);
        // Removing the last moves nothing.
        assert_eq!(r.remove_at(p, 1, &blk(0, 1)), None);
        assert_eq!(r.of(p), [blk(0, 2)]);
        assert_eq!(r.of(PeerKey(9)), []);
        assert_eq!(r.remove_at(PeerKey(9), 0, &blk(0, 2)), None);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn a_stale_index_changes_nothing() {
        let mut r = Requests::default();
        let p = PeerKey(1);
        r.list_mut(p).extend([blk(0, 0), blk(0, 1)]);
        assert_eq!(r.remove_at(p, 0, &blk(0, 1)), None);
        assert_eq!(r.remove_at(p, 5, &blk(0, 1)), None);
        assert_eq!(r.of(p).len(), 2);
    }

    #[test]
    fn take_and_give_back_keep_the_allocation() {
        let mut r = Requests::default();
        let p = PeerKey(1);
        r.list_mut(p).extend((0..100).map(|i| blk(i, 0)));
        let taken = r.take(p);
        assert_eq!(taken.len(), 100);
        assert!(r.of(p).is_empty());
        let cap = taken.capacity();
        r.give_back(p, taken);
        assert!(r.of(p).is_empty());
        assert_eq!(r.list_mut(p).capacity(), cap);
        r.remove_peer(p);
        assert_eq!(r.iter().count(), 0);
        assert!(r.take(p).is_empty());
    }

    #[test]
    fn key_hasher_spreads_sequential_keys() {
        let h = BuildHasherDefault::<KeyHasher>::default();
        let tops: std::collections::HashSet<u64> =
            (0..64u64).map(|k| h.hash_one(PeerKey(k)) >> 57).collect();
        assert!(tops.len() > 32, "{}", tops.len());
    }
}
