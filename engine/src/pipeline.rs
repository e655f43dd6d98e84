//! How many block requests to keep outstanding with one peer.
//!
//! A new connection starts in *slow start*, as in libtorrent: each block that arrives adds one
//! request, so the queue doubles every round trip instead of sitting at the minimum until the
//! first rate measurement. Growth stops at the ceiling; slow start itself ends at a tick once the
//! measured rate grows by less than a tenth from the tick before (or the queue has reached its
//! ceiling by then), and at once on a request timeout, which also cuts the queue to the minimum.
//! From then on the queue holds [`QUEUE_SECONDS`] of the rate measured at each tick, within
//! bounds. A queue that fell to the minimum (the peer choked us for a while) starts a new slow
//! start when the peer unchokes us.
//!
//! # Examples
//! ```
//! use shoal_engine::pipeline::RequestDepth;
//! let mut d = RequestDepth::new(5);
//! assert_eq!(d.depth(), 5);
//! for _ in 0..5 {
//!     d.block_arrived(); // slow start: one more request per block
//! }
//! assert_eq!(d.depth(), 10);
//! d.tick(1 << 20); // 1 MiB/s since the last tick
//! d.tick(1 << 20); // no growth: slow start ends, 3 s of 1 MiB/s in 16 KiB blocks
//! assert!(!d.in_slow_start());
//! assert_eq!(d.depth(), 192);
//! ```

use crate::lengths::BLOCK_LEN;

/// Requests kept outstanding cover this many seconds of the peer's recent rate (libtorrent's
/// `request_queue_time`), so that a peer answering in batches still has a full pipe:
/// Transmission fills its output every 500 ms, and with 5 requests outstanding it sent
/// 160 KiB/s.
pub const QUEUE_SECONDS: u64 = 3;

/// Most requests kept outstanding with one peer, whatever its rate (libtorrent's default).
pub const MAX_QUEUE_DEPTH: usize = 500;

/// The request queue depth of one peer connection. Call [`block_arrived`](Self::block_arrived)
/// for each requested block received, [`tick`](Self::tick) about once a second with the rate
/// since the last tick (bytes per second), and [`unchoked`](Self::unchoked) and
/// [`timed_out`](Self::timed_out) when those happen.
#[derive(Debug, Clone)]
pub struct RequestDepth {
    depth: usize,
    min: usize,
    max: usize,
    slow_start: bool,
    last_rate: u64,
}

impl RequestDepth {
    /// A queue of `min` requests (at least 1) that may grow to [`MAX_QUEUE_DEPTH`].
    pub fn new(min: usize) -> Self {
        let min = min.max(1);
        RequestDepth {
            depth: min,
            min,
            max: MAX_QUEUE_DEPTH.max(min),
            slow_start: true,
            last_rate: 0,
        }
    }

    /// Requests to keep outstanding now.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Whether the queue is still growing by one request per block.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// Caps the queue at what the peer says it queues (`reqq` of its extended handshake), or
    /// lifts that cap with `None`; never below the minimum.
    pub fn set_peer_limit(&mut self, reqq: Option<u32>) {
        let limit = reqq.map_or(MAX_QUEUE_DEPTH, |r| {
            MAX_QUEUE_DEPTH.min(usize::try_from(r).unwrap_or(usize::MAX))
        });
        self.max = limit.max(self.min);
        self.depth = self.depth.min(self.max);
    }

    /// A requested block arrived.
    pub fn block_arrived(&mut self) {
        if self.slow_start {
            self.depth = self.depth.saturating_add(1).min(self.max);
        }
    }

    /// A request timed out: the peer is slower than the queue assumed, so slow start ends and
    /// the queue drops to the minimum (the next ticks size it from what the peer delivers).
    pub fn timed_out(&mut self) {
        self.slow_start = false;
        self.depth = self.min;
    }

    /// The peer unchoked us. A queue that fell to the minimum while nothing came (choked for a
    /// second or more) grows in slow start again, instead of a second at the minimum.
    pub fn unchoked(&mut self) {
        if !self.slow_start && self.depth == self.min {
            self.slow_start = true;
            self.last_rate = 0;
        }
    }

    /// Once a second or so: `rate` bytes per second arrived since the last tick.
    pub fn tick(&mut self, rate: u64) {
        if self.slow_start
            && rate > 0
            && self.last_rate > 0
            && (rate < self.last_rate.saturating_add(self.last_rate / 10) || self.depth >= self.max)
        {
            self.slow_start = false;
        }
        if rate > 0 {
            self.last_rate = rate;
        }
        let want = usize::try_from(rate.saturating_mul(QUEUE_SECONDS) / u64::from(BLOCK_LEN))
            .unwrap_or(usize::MAX);
        self.depth = if self.slow_start {
            self.depth.max(want).min(self.max)
        } else {
            want.clamp(self.min, self.max)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A queue of minimum 5 (capped at `limit` requests) after `blocks` blocks arrived.
    fn grown(limit: Option<u32>, blocks: usize) -> RequestDepth {
        let mut d = RequestDepth::new(5);
        d.set_peer_limit(limit);
        for _ in 0..blocks {
            d.block_arrived();
        }
        d
    }

    #[test]
    fn slow_start_doubles_per_round_trip_up_to_the_ceiling() {
        let mut d = RequestDepth::new(5);
        // A round trip delivers the whole queue; each block adds one request.
        for _ in 0..6 {
            let n = d.depth();
            for _ in 0..n {
                d.block_arrived();
            }
            assert_eq!(d.depth(), (2 * n).min(MAX_QUEUE_DEPTH));
        }
        for _ in 0..1000 {
            d.block_arrived();
        }
        assert_eq!(d.depth(), MAX_QUEUE_DEPTH);
    }

    #[test]
    fn slow_start_lasts_while_the_rate_grows_by_a_tenth() {
        let mut d = RequestDepth::new(5);
        d.tick(0); // nothing yet (choked, or not interested): no decision
        assert!(d.in_slow_start());
        d.tick(MIB);
        d.tick(2 * MIB);
        d.tick(2 * MIB + 2 * MIB / 10);
        assert!(d.in_slow_start());
        d.tick(2 * MIB + 2 * MIB / 10 + 1);
        assert!(!d.in_slow_start());
        // Then the queue follows the rate: 3 s of it in 16 KiB blocks, both ways.
        assert_eq!(
            d.depth(),
            3 * (2 * MIB + 2 * MIB / 10 + 1) as usize / BLOCK_LEN as usize
        );
        d.tick(MIB / 4);
        assert_eq!(d.depth(), 48);
        d.tick(1000);
        assert_eq!(d.depth(), 5);
    }

    #[test]
    fn slow_start_never_shrinks_the_queue_and_a_timeout_ends_it_at_the_minimum() {
        let mut d = grown(None, 100);
        d.tick(MIB / 16); // measured 12 blocks' worth: the grown queue stays
        assert_eq!(d.depth(), 105);
        d.timed_out();
        d.block_arrived();
        assert_eq!(d.depth(), 5);
        d.tick(MIB / 16);
        assert_eq!(d.depth(), 12);
    }

    #[test]
    fn slow_start_ends_at_the_ceiling_even_while_the_rate_still_grows() {
        let mut d = grown(Some(50), 100);
        assert_eq!(d.depth(), 50);
        d.tick(MIB);
        d.tick(2 * MIB);
        assert!(!d.in_slow_start());
        assert_eq!(d.depth(), 50);
    }

    #[test]
    fn a_timeout_cuts_the_queue_and_an_unchoke_after_a_quiet_spell_restarts_slow_start() {
        let mut d = grown(None, 200);
        d.timed_out();
        assert_eq!(d.depth(), 5);
        assert!(!d.in_slow_start());
        // Unchoked while the queue is still deep: nothing changes.
        let mut deep = RequestDepth::new(5);
        deep.tick(MIB);
        deep.tick(MIB);
        assert_eq!(deep.depth(), 192);
        deep.unchoked();
        assert!(!deep.in_slow_start());
        // Choked for a second: the queue falls to the minimum; the unchoke restarts slow start.
        deep.tick(0);
        assert_eq!(deep.depth(), 5);
        deep.unchoked();
        assert!(deep.in_slow_start());
        deep.block_arrived();
        assert_eq!(deep.depth(), 6);
        // With no rate remembered, the first tick after the restart decides nothing.
        deep.tick(MIB / 2);
        assert!(deep.in_slow_start());
    }

    #[test]
    fn a_huge_minimum_does_not_overflow() {
        let mut d = RequestDepth::new(usize::MAX);
        d.block_arrived();
        assert_eq!(d.depth(), usize::MAX);
        d.tick(u64::MAX);
        d.tick(u64::MAX);
        assert_eq!(d.depth(), usize::MAX);
    }

    #[test]
    fn the_peer_limit_caps_the_queue_but_not_below_the_minimum() {
        let mut d = RequestDepth::new(8);
        for _ in 0..100 {
            d.block_arrived();
        }
        d.set_peer_limit(Some(50));
        assert_eq!(d.depth(), 50);
        d.tick(100 * MIB);
        assert_eq!(d.depth(), 50);
        d.set_peer_limit(Some(2));
        assert_eq!(d.depth(), 8);
        d.set_peer_limit(None);
        d.tick(100 * MIB);
        assert_eq!(d.depth(), MAX_QUEUE_DEPTH);
        // A minimum above the ceiling wins.
        let d = RequestDepth::new(900);
        assert_eq!(d.depth(), 900);
    }
}
