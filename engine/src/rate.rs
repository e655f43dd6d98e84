//! Transfer rates: bytes per second over a sliding window of one-second samples ([`Rate`]),
//! and the token bucket that enforces a rate limit ([`TokenBucket`]).
//!
//! ```
//! use shoal_engine::rate::Rate;
//! let mut r = Rate::default();
//! for total in [0, 1_000, 3_000, 6_000] {
//!     r.sample(total);
//! }
//! assert_eq!(r.per_second(), 2_000);
//! ```

/// Seconds the window covers: long enough to smooth bursts, short enough to follow a change.
pub const WINDOW: usize = 5;

/// A byte counter's rate, fed the counter's total once a second.
#[derive(Clone, Debug, Default)]
pub struct Rate {
    /// Counter totals, one per second, oldest first; at most `WINDOW + 1`.
    totals: std::collections::VecDeque<u64>,
}

impl Rate {
    /// Records the counter's total now; call once a second. A counter that went backwards
    /// (reset) starts the window again.
    pub fn sample(&mut self, total: u64) {
        if self.totals.back().is_some_and(|&last| total < last) {
            self.totals.clear();
        }
        self.totals.push_back(total);
        while self.totals.len() > WINDOW + 1 {
            self.totals.pop_front();
        }
    }

    /// Bytes per second over the window (0 before two samples).
    pub fn per_second(&self) -> u64 {
        match (self.totals.front(), self.totals.back()) {
            (Some(first), Some(last)) if self.totals.len() > 1 => {
                (last - first) / (self.totals.len() as u64 - 1)
            }
            _ => 0,
        }
    }

    /// Seconds to move `left` bytes at this rate; `None` while nothing moves.
    pub fn eta(&self, left: u64) -> Option<u64> {
        match self.per_second() {
            0 => None,
            r => Some(left.div_ceil(r)),
        }
    }
}

/// How many seconds of the rate a bucket may hold: the burst a limited transfer may make
/// after a pause. A tenth of a second keeps every 10 s window within 1% of the limit while
/// letting a 16 KiB block through at any limit of 160 KiB/s or more in one go.
const BURST_SECONDS: f64 = 0.1;

/// The least a bucket holds, so that one block (16 KiB) always fits in it, whatever the limit.
const MIN_BURST: u64 = 16 * 1024;

/// A token bucket: `rate` bytes per second, taken as they are sent or received. Time is passed
/// in, so it is pure; a rate of 0 means no limit.
///
/// ```
/// use std::time::{Duration, Instant};
/// use shoal_engine::rate::TokenBucket;
/// let t0 = Instant::now();
/// let mut b = TokenBucket::new(100_000, t0);
/// assert_eq!(b.take(t0, 50_000), 16_384); // at first, one burst
/// assert_eq!(b.take(t0, 50_000), 0);
/// assert_eq!(b.take(t0 + Duration::from_millis(100), 50_000), 10_000);
/// ```
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Bytes per second; 0: unlimited.
    rate: u64,
    /// Bytes available now (may be fractional between refills).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: std::time::Instant,
}

impl TokenBucket {
    /// A bucket for `rate` bytes per second (0: unlimited), holding one burst at `now`.
    pub fn new(rate: u64, now: std::time::Instant) -> Self {
        let mut b = Self {
            rate,
            tokens: 0.0,
            last: now,
        };
        b.tokens = b.capacity();
        b
    }

    /// The limit in bytes per second; 0 when there is none.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Changes the limit (0: none) from `now` on.
    pub fn set_rate(&mut self, rate: u64, now: std::time::Instant) {
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(self.capacity());
    }

    /// The most the bucket holds.
    fn capacity(&self) -> f64 {
        ((self.rate as f64) * BURST_SECONDS).max(MIN_BURST as f64)
    }

    fn refill(&mut self, now: std::time::Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.capacity());
    }

    /// Takes up to `want` bytes at `now`: what may be sent or received now (all of it without
    /// a limit; 0 when the bucket is empty).
    pub fn take(&mut self, now: std::time::Instant, want: u64) -> u64 {
        if self.rate == 0 {
            return want;
        }
        self.refill(now);
        let got = (self.tokens.floor() as u64).min(want);
        self.tokens -= got as f64;
        got
    }

    /// Gives back bytes taken but not used (a read that returned less than it was allowed).
    pub fn give_back(&mut self, bytes: u64) {
        if self.rate != 0 {
            self.tokens = (self.tokens + bytes as f64).min(self.capacity());
        }
    }

    /// How long from `now` until `want` bytes (at most one burst) are available.
    pub fn wait(&self, now: std::time::Instant, want: u64) -> std::time::Duration {
        if self.rate == 0 {
            return std::time::Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let have = (self.tokens + elapsed * self.rate as f64).min(self.capacity());
        let need = (want as f64).min(self.capacity()) - have;
        if need <= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(need / self.rate as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_bucket_holds_its_rate_over_ten_seconds_within_one_percent() {
        for rate in [20_000u64, 100_000, 1_000_000, 50_000_000] {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, t0);
            let mut moved = 0u64;
            let mut now = t0;
            // A greedy taker, asking every millisecond for 10 s for more than the limit allows.
            let want = (rate / 100).max(16 * 1024);
            while now < t0 + Duration::from_secs(10) {
                moved += b.take(now, want);
                now += Duration::from_millis(1);
            }
            let expected = rate * 10;
            let burst = (rate / 10).max(MIN_BURST);
            assert!(
                moved <= expected + burst && moved + expected / 100 >= expected,
                "rate {rate}: moved {moved} in 10 s"
            );
        }
    }

    #[test]
    fn unlimited_gives_all_and_a_new_rate_applies_at_once() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, t0);
        assert_eq!(b.take(t0, u64::MAX), u64::MAX);
        assert_eq!(b.wait(t0, 1 << 40), Duration::ZERO);
        b.set_rate(10_000, t0);
        b.take(t0, u64::MAX);
        assert_eq!(b.take(t0, 1), 0);
        assert_eq!(b.wait(t0, 5_000), Duration::from_millis(500));
        // Asking for more than a burst waits for one burst only.
        assert_eq!(
            b.wait(t0, 1 << 30),
            Duration::from_secs_f64(16_384.0 / 10_000.0)
        );
        b.give_back(1_000);
        assert_eq!(b.take(t0, 5_000), 1_000);
        b.set_rate(0, t0);
        assert_eq!(b.take(t0, 7), 7);
    }

    #[test]
    fn follows_a_steady_counter_and_forgets_old_seconds() {
        let mut r = Rate::default();
        assert_eq!(r.per_second(), 0);
        r.sample(100);
        assert_eq!(r.per_second(), 0, "one sample says nothing");
        let mut total = 100;
        for _ in 0..10 {
            total += 500;
            r.sample(total);
        }
        assert_eq!(r.per_second(), 500);
        // It stops: after a whole window the rate is 0.
        for _ in 0..WINDOW {
            r.sample(total);
        }
        assert_eq!(r.per_second(), 0);
        assert_eq!(r.eta(1), None);
    }

    #[test]
    fn eta_rounds_up_and_a_reset_starts_again() {
        let mut r = Rate::default();
        r.sample(0);
        r.sample(300);
        assert_eq!(r.eta(1_000), Some(4));
        assert_eq!(r.eta(0), Some(0));
        r.sample(10);
        assert_eq!(r.per_second(), 0);
        r.sample(110);
        assert_eq!(r.per_second(), 100);
    }
}
