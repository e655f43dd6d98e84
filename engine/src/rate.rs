//! Transfer rates: bytes per second over a sliding window of one-second samples.
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

#[cfg(test)]
mod tests {
    use super::*;

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
