//! Availability: how many connected peers have each piece, and the wanted pieces we lack kept in
//! rarest-first order, one order per priority class.
//!
//! Each class's order groups its pieces by availability into buckets (`bucket_start[a]` is the
//! first index with availability `a` or more). A change of availability moves a piece across one
//! bucket boundary with one swap, so a rarest-first scan starts at the rarest bucket and usually
//! stops at once, never sorting.
//!
//! # Invariants
//! 1. A piece is in at most one order; `class[p]` names it and `pos[p]` is its index there (both
//!    [`NOWHERE`] otherwise).
//! 2. Within an order the availabilities are non-decreasing and `bucket_start[a]` is the first
//!    index whose availability is at least `a` (the order's length when there is none).
//! 3. An order's `bucket_start` has an entry for every availability of its pieces.

/// Marks a piece that is in no order.
const NOWHERE: u32 = u32::MAX;

/// The pieces of one priority class, grouped by availability.
#[derive(Debug, Default)]
struct Order {
    /// The pieces, rarest first (invariant 2).
    pieces: Vec<u32>,
    /// `bucket_start[a]`: first index in `pieces` with availability `a` or more.
    bucket_start: Vec<u32>,
}

/// Per-piece peer counts and the rarest-first orders of the wanted pieces we lack.
#[derive(Debug)]
pub(super) struct Availability {
    /// How many connected peers have each piece (kept for every piece, wanted or not).
    avail: Vec<u32>,
    /// Each piece's index in its order, or [`NOWHERE`].
    pos: Vec<u32>,
    /// The order each piece is in, or `u8::MAX`.
    class: Vec<u8>,
    /// One order per class.
    orders: Vec<Order>,
}

impl Availability {
    /// `pieces` pieces, none in any order, nobody having any; `classes` orders.
    pub(super) fn new(pieces: u32, classes: u8) -> Self {
        Self {
            avail: vec![0; pieces as usize],
            pos: vec![NOWHERE; pieces as usize],
            class: vec![u8::MAX; pieces as usize],
            orders: (0..classes)
                .map(|_| Order {
                    pieces: Vec::new(),
                    bucket_start: vec![0],
                })
                .collect(),
        }
    }

    /// How many connected peers have `piece` (0 out of range).
    pub(super) fn count(&self, piece: u32) -> u32 {
        self.avail.get(piece as usize).copied().unwrap_or(0)
    }

    /// How many pieces are in the order of `class`.
    pub(super) fn class_len(&self, class: u8) -> usize {
        self.orders
            .get(usize::from(class))
            .map_or(0, |o| o.pieces.len())
    }

    /// Whether `piece` is in some order.
    #[cfg(test)]
    pub(super) fn contains(&self, piece: u32) -> bool {
        self.pos[piece as usize] != NOWHERE
    }

    /// Adds `piece` (in no order yet) to the order of `class`, in its availability bucket: it
    /// goes to the end and walks down across every higher bucket boundary.
    pub(super) fn insert(&mut self, piece: u32, class: u8) {
        let p = piece as usize;
        debug_assert_eq!(self.pos[p], NOWHERE);
        let a = self.avail[p] as usize;
        let order = &mut self.orders[usize::from(class)];
        while order.bucket_start.len() <= a {
            order.bucket_start.push(order.pieces.len() as u32);
        }
        order.pieces.push(piece);
        self.pos[p] = order.pieces.len() as u32 - 1;
        self.class[p] = class;
        for b in (a + 1..order.bucket_start.len()).rev() {
            let first = order.bucket_start[b] as usize;
            let i = self.pos[p] as usize;
            Self::swap(order, &mut self.pos, i, first);
            order.bucket_start[b] += 1;
        }
    }

    /// Takes `piece` out of its order, if it is in one: it walks up across every higher bucket
    /// boundary to the very end, and is popped. O(distinct availability values).
    pub(super) fn remove(&mut self, piece: u32) {
        let p = piece as usize;
        if self.pos[p] == NOWHERE {
            return;
        }
        let order = &mut self.orders[usize::from(self.class[p])];
        let a = self.avail[p] as usize;
        for b in a + 1..order.bucket_start.len() {
            let last = order.bucket_start[b] as usize - 1;
            let i = self.pos[p] as usize;
            Self::swap(order, &mut self.pos, i, last);
            order.bucket_start[b] -= 1;
        }
        let end = order.pieces.len() - 1;
        let i = self.pos[p] as usize;
        Self::swap(order, &mut self.pos, i, end);
        order.pieces.pop();
        self.pos[p] = NOWHERE;
        self.class[p] = u8::MAX;
    }

    /// One more peer has `piece`: it moves to the front of the next bucket. Saturates.
    pub(super) fn inc(&mut self, piece: u32) {
        let p = piece as usize;
        let a = self.avail[p];
        if a == u32::MAX {
            return;
        }
        if self.pos[p] != NOWHERE {
            let a = a as usize;
            let order = &mut self.orders[usize::from(self.class[p])];
            if order.bucket_start.len() <= a + 1 {
                order.bucket_start.push(order.pieces.len() as u32);
            }
            // The last element of bucket `a`; `piece` is in that bucket, so it is not empty.
            let last = order.bucket_start[a + 1] as usize - 1;
            let i = self.pos[p] as usize;
            Self::swap(order, &mut self.pos, i, last);
            order.bucket_start[a + 1] -= 1;
        }
        self.avail[p] += 1;
    }

    /// One peer fewer has `piece`: it moves to the back of the previous bucket. Never goes
    /// below zero (a caller that removes more than it added is ignored).
    pub(super) fn dec(&mut self, piece: u32) {
        let p = piece as usize;
        let a = self.avail[p];
        if a == 0 {
            return;
        }
        if self.pos[p] != NOWHERE {
            let order = &mut self.orders[usize::from(self.class[p])];
            let first = order.bucket_start[a as usize] as usize;
            let i = self.pos[p] as usize;
            Self::swap(order, &mut self.pos, i, first);
            order.bucket_start[a as usize] += 1;
        }
        self.avail[p] -= 1;
    }

    /// A random piece of `class` that passes `ok`, or `None`.
    pub(super) fn random(
        &self,
        class: u8,
        rng: &mut fastrand::Rng,
        ok: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let order = &self.orders[usize::from(class)].pieces;
        let n = order.len();
        if n == 0 {
            return None;
        }
        let start = rng.usize(0..n);
        (0..n).map(|i| order[(start + i) % n]).find(|&p| ok(p))
    }

    /// The rarest piece of `class` that passes `ok`, ties broken at random. Pieces nobody is
    /// counted as having (bucket 0) are looked at last: a peer's pieces normally count, so they
    /// are only reached if the caller did not register the peer it picks for.
    pub(super) fn rarest(
        &self,
        class: u8,
        rng: &mut fastrand::Rng,
        ok: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let order = &self.orders[usize::from(class)];
        let buckets = order.bucket_start.len();
        for k in (1..buckets).chain(std::iter::once(0)) {
            let s = order.bucket_start[k] as usize;
            let e = order
                .bucket_start
                .get(k + 1)
                .map_or(order.pieces.len(), |&x| x as usize);
            if s >= e {
                continue;
            }
            let len = e - s;
            let start = rng.usize(0..len);
            let found = (0..len)
                .map(|i| order.pieces[s + (start + i) % len])
                .find(|&p| ok(p));
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Swaps two entries of an order, keeping `pos` in step.
    fn swap(order: &mut Order, pos: &mut [u32], i: usize, j: usize) {
        if i != j {
            order.pieces.swap(i, j);
            pos[order.pieces[i] as usize] = i as u32;
            pos[order.pieces[j] as usize] = j as u32;
        }
    }

    /// Checks every invariant; for tests.
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut seen = 0;
        for (c, order) in self.orders.iter().enumerate() {
            for (i, &p) in order.pieces.iter().enumerate() {
                assert_eq!(self.pos[p as usize], i as u32);
                assert_eq!(usize::from(self.class[p as usize]), c);
                if i > 0 {
                    assert!(self.avail[order.pieces[i - 1] as usize] <= self.avail[p as usize]);
                }
                assert!((self.avail[p as usize] as usize) < order.bucket_start.len());
            }
            for (a, &s) in order.bucket_start.iter().enumerate() {
                let s = s as usize;
                assert!(s <= order.pieces.len());
                if s < order.pieces.len() {
                    assert!(self.avail[order.pieces[s] as usize] >= a as u32);
                }
                if s > 0 {
                    assert!(self.avail[order.pieces[s - 1] as usize] < a as u32);
                }
            }
            seen += order.pieces.len();
        }
        assert_eq!(self.pos.iter().filter(|&&p| p != NOWHERE).count(), seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarest_follows_counts() {
        let mut av = Availability::new(6, 1);
        for p in 0..6 {
            av.insert(p, 0);
        }
        for (p, n) in [(0, 3), (1, 1), (2, 2), (3, 5), (4, 1), (5, 4)] {
            for _ in 0..n {
                av.inc(p);
            }
            av.check();
        }
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..20 {
            let r = av.rarest(0, &mut rng, |_| true).unwrap();
            assert!(r == 1 || r == 4, "{r}");
        }
        assert_eq!(av.rarest(0, &mut rng, |p| p != 1 && p != 4), Some(2));
        av.dec(2);
        av.dec(2);
        av.check();
        // Piece 2 now has no peer: looked at last.
        assert_eq!(av.rarest(0, &mut rng, |p| p == 2 || p == 0), Some(0));
        assert_eq!(av.rarest(0, &mut rng, |p| p == 2), Some(2));
        av.dec(2); // below zero: ignored
        assert_eq!(av.count(2), 0);
        assert_eq!(av.count(99), 0);
        av.check();
    }

    #[test]
    fn insert_and_remove_keep_buckets() {
        let mut av = Availability::new(10, 2);
        let mut rng = fastrand::Rng::with_seed(3);
        // Counts first, pieces in no order yet (as pieces we have or skip).
        for p in 0..10 {
            for _ in 0..(p % 4) {
                av.inc(p);
            }
        }
        for p in 0..10 {
            av.insert(p, (p % 2) as u8);
            av.check();
        }
        assert_eq!((av.class_len(0), av.class_len(1)), (5, 5));
        // Pieces nobody has come last: 2 and 6 (two peers) before 0, 4, 8.
        assert!(matches!(av.rarest(0, &mut rng, |_| true), Some(2 | 6)));
        assert!(matches!(av.rarest(1, &mut rng, |_| true), Some(1 | 5 | 9)));
        assert!(matches!(
            av.rarest(0, &mut rng, |p| p % 4 == 0),
            Some(0 | 4 | 8)
        ));
        for p in [4, 0, 9, 5] {
            av.remove(p);
            assert!(!av.contains(p));
            av.check();
        }
        av.remove(4); // twice: ignored
        assert!(matches!(av.rarest(0, &mut rng, |_| true), Some(2 | 6)));
        assert_eq!(av.rarest(0, &mut rng, |p| p == 8), Some(8));
        // Counts keep changing while a piece is out of every order.
        av.inc(4);
        av.inc(4);
        av.inc(4);
        av.inc(4);
        av.insert(4, 1);
        av.check();
        assert_eq!(av.class_len(1), 4);
        let mut got: Vec<u32> = (0..4)
            .map(|_| {
                let p = av.rarest(1, &mut rng, |_| true).unwrap();
                av.remove(p);
                p
            })
            .collect();
        av.check();
        got.sort();
        assert_eq!(got, [1, 3, 4, 7]);
    }

    #[test]
    fn random_visits_the_class_only() {
        let mut av = Availability::new(100, 2);
        for p in 0..100 {
            av.insert(p, u8::from(p >= 50));
        }
        let mut rng = fastrand::Rng::with_seed(9);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = av.random(1, &mut rng, |p| p % 2 == 0).unwrap();
            assert!(p >= 50 && p % 2 == 0);
            seen.insert(p);
        }
        assert!(seen.len() > 15, "{seen:?}");
        assert_eq!(av.random(0, &mut rng, |p| p >= 50), None);
    }
}
