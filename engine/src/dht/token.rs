//! Announce tokens: a `get_peers` reply hands the querier a token bound to its IP address,
//! and only an `announce_peer` from that address carrying that token is stored.
//!
//! A token is the first [`TOKEN_LEN`] bytes of SHA-1(key, epoch, ip). The epoch is a counter
//! bumped every [`ROTATE_EVERY`], which rotates the secret without drawing new randomness:
//! the key is secret (the caller fills it from the OS), so the next epoch's tokens are as
//! unguessable as fresh random secrets would be. Tokens of the current and the previous epoch
//! are accepted, so a token lives between 5 and 10 minutes, as BEP 5 asks.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

/// How often the secret rotates (BEP 5: every five minutes).
pub const ROTATE_EVERY: Duration = Duration::from_secs(5 * 60);

/// The length of our tokens. 8 bytes make a blind guess hopeless (2^64) and keep replies short.
pub const TOKEN_LEN: usize = 8;

/// The token secret and its rotation clock.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The secret key, from the caller's randomness.
    key: [u8; 32],
    /// The current epoch; the previous one's tokens are still accepted.
    epoch: u64,
    /// When the epoch next advances.
    next_rotation: Instant,
}

impl Tokens {
    /// Tokens under `key` (secret, random), with the first rotation due [`ROTATE_EVERY`]
    /// after `now`.
    pub fn new(key: [u8; 32], now: Instant) -> Self {
        Tokens {
            key,
            epoch: 0,
            next_rotation: now + ROTATE_EVERY,
        }
    }

    fn make(&self, epoch: u64, ip: IpAddr) -> [u8; TOKEN_LEN] {
        let mut h = Sha1::new();
        h.update(self.key);
        h.update(epoch.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        let digest = h.finalize();
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&digest[..TOKEN_LEN]);
        t
    }

    /// The token to give a querier at `ip` now.
    pub fn token(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        self.make(self.epoch, ip)
    }

    /// Whether `token` is one we gave `ip` in this epoch or the previous one.
    pub fn check(&self, ip: IpAddr, token: &[u8]) -> bool {
        if token.len() != TOKEN_LEN {
            return false;
        }
        token == self.make(self.epoch, ip)
            || (self.epoch > 0 && token == self.make(self.epoch - 1, ip))
    }

    /// Rotates the secret if its time has come (once per elapsed period, so a long sleep
    /// invalidates every token).
    pub fn handle_timeout(&mut self, now: Instant) {
        while now >= self.next_rotation {
            self.epoch += 1;
            self.next_rotation += ROTATE_EVERY;
        }
    }

    /// When the next rotation is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_rotation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_across_one_rotation_refused_after_two() {
        let t0 = Instant::now();
        let mut tokens = Tokens::new([7; 32], t0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let tok = tokens.token(ip);
        assert!(tokens.check(ip, &tok));
        tokens.handle_timeout(t0 + ROTATE_EVERY - Duration::from_secs(1));
        assert!(tokens.check(ip, &tok));
        tokens.handle_timeout(t0 + ROTATE_EVERY);
        assert!(
            tokens.check(ip, &tok),
            "the previous secret is still accepted"
        );
        assert_ne!(tokens.token(ip), tok, "a new secret makes new tokens");
        tokens.handle_timeout(t0 + ROTATE_EVERY * 2);
        assert!(!tokens.check(ip, &tok), "two rotations later it is refused");
    }

    #[test]
    fn forged_or_misaddressed_tokens_are_refused() {
        let t0 = Instant::now();
        let tokens = Tokens::new([7; 32], t0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let tok = tokens.token(ip);
        assert!(!tokens.check(other, &tok));
        assert!(!tokens.check(ip, &[0; TOKEN_LEN]));
        assert!(!tokens.check(ip, &tok[..4]));
        assert!(!tokens.check(ip, b""));
        let other_key = Tokens::new([8; 32], t0);
        assert!(!other_key.check(ip, &tok));
        let mut long = tok.to_vec();
        long.push(0);
        assert!(!tokens.check(ip, &long));
    }

    #[test]
    fn a_long_sleep_invalidates_everything() {
        let t0 = Instant::now();
        let mut tokens = Tokens::new([1; 32], t0);
        let ip: IpAddr = "::1".parse().unwrap();
        let tok = tokens.token(ip);
        tokens.handle_timeout(t0 + ROTATE_EVERY * 10);
        assert!(!tokens.check(ip, &tok));
        assert!(tokens.poll_timeout() > t0 + ROTATE_EVERY * 10);
    }
}
