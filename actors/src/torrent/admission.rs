//! Who makes room when connections are scarce: the admission policy (pure, time passed in).
//!
//! Connections are a scarce resource (a torrent's `max_peers`, the session's
//! `max_connections`), and a stranger can take them for free: connect, send a valid handshake,
//! then nothing. Without a policy, 500 such connections keep every honest peer out until they
//! time out. So:
//!
//! - **At the limit, a newcomer evicts the least useful connection**, if there is one:
//!   1. *silent* connections first: those that never sent a bitfield, have, interest or
//!      request (`PeerStats::spoke`), the longest connected first. An honest peer speaks
//!      within a round trip of its handshake, so the oldest silent connection is never an
//!      honest one that has not had time to talk;
//!   2. then *idle* ones: neither interested nor interesting, and no piece either way for at
//!      least [`IDLE_MIN`], the longest without a piece first.
//!
//!   A connection that is interested, interesting, or exchanged a piece in the last
//!   [`IDLE_MIN`] is never evicted: no honest connection is dropped to make room. When there
//!   is no victim the newcomer is refused, as before.
//! - **Silent for [`SILENT_GRACE`] after the handshake, dropped when scarce**: once a torrent
//!   or the session is at nine tenths of its limit ([`scarce`]), every connection silent that
//!   long is closed at the next tick, so room is made before anyone has to ask for it.
//! - Evictions in progress are bounded ([`MAX_EVICTING`]): an evicted connection holds its slot
//!   until it has closed (at most the peer's close timeout), and a flood of newcomers cannot
//!   push the number of sockets past the limit by more than that.

use std::time::{Duration, Instant};

use shoal_engine::picker::PeerKey;

/// A connection that sent nothing useful for this long after its handshake is closed when
/// connections are scarce (the 30 s: a peer has no reason to stay silent that long).
pub(crate) const SILENT_GRACE: Duration = Duration::from_secs(30);

/// A connection that spoke but is neither interested nor interesting is evictable once it has
/// exchanged no piece for this long (interest follows the bitfields within a round trip or two;
/// 10 s leaves room for a slow link and a choke round).
pub(crate) const IDLE_MIN: Duration = Duration::from_secs(10);

/// The most evictions of one torrent in progress at once: each evicted connection keeps its
/// slot until it closes (a couple of seconds at most), so this bounds how far past its limit a
/// flood of newcomers can push the torrent's sockets.
pub(crate) const MAX_EVICTING: usize = 32;

/// What the policy knows of one connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conn {
    /// Its key.
    pub key: PeerKey,
    /// Whether its handshake is done (one still connecting is half-open: never a victim, it is
    /// bounded by the dialling and handshake limits instead).
    pub connected: bool,
    /// When it was admitted.
    pub since: Instant,
    /// Whether it ever sent a bitfield, have, interest or request.
    pub spoke: bool,
    /// Whether it is interested in our pieces.
    pub interested: bool,
    /// Whether we are interested in its pieces.
    pub interesting: bool,
    /// When a piece last went either way, if ever.
    pub last_piece: Option<Instant>,
}

/// How useful a connection is, least useful first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Usefulness {
    /// Never sent a bitfield, have, interest or request.
    Silent,
    /// Neither interested nor interesting, and no piece for [`IDLE_MIN`].
    Idle,
    /// Anything else: never evicted.
    Useful,
}

impl Conn {
    /// How useful the connection is at `now`.
    pub(crate) fn usefulness(&self, now: Instant) -> Usefulness {
        if !self.connected {
            return Usefulness::Useful;
        }
        if !self.spoke {
            return Usefulness::Silent;
        }
        let quiet_since = self.last_piece.unwrap_or(self.since);
        if !self.interested
            && !self.interesting
            && now.saturating_duration_since(quiet_since) >= IDLE_MIN
        {
            return Usefulness::Idle;
        }
        Usefulness::Useful
    }

    /// Since when it has been without a piece.
    fn quiet_since(&self) -> Instant {
        self.last_piece.unwrap_or(self.since)
    }
}

/// The connection a newcomer evicts at the limit: the silent one connected longest, else the
/// idle one longest without a piece; `None` when every connection is useful.
pub(crate) fn victim<'a>(
    conns: impl IntoIterator<Item = &'a Conn>,
    now: Instant,
) -> Option<PeerKey> {
    conns
        .into_iter()
        .filter_map(|c| match c.usefulness(now) {
            Usefulness::Silent => Some(((Usefulness::Silent, c.since), c.key)),
            Usefulness::Idle => Some(((Usefulness::Idle, c.quiet_since()), c.key)),
            Usefulness::Useful => None,
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, key)| key)
}

/// Connections silent for [`SILENT_GRACE`] since they were admitted: closed when [`scarce`].
pub(crate) fn silent_too_long<'a>(
    conns: impl IntoIterator<Item = &'a Conn>,
    now: Instant,
) -> Vec<PeerKey> {
    conns
        .into_iter()
        .filter(|c| {
            c.usefulness(now) == Usefulness::Silent
                && now.saturating_duration_since(c.since) >= SILENT_GRACE
        })
        .map(|c| c.key)
        .collect()
}

/// Whether `used` of `limit` connections makes them scarce: nine tenths or more.
pub(crate) fn scarce(used: usize, limit: usize) -> bool {
    used.saturating_mul(10) >= limit.saturating_mul(9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(key: u64, since: Instant) -> Conn {
        Conn {
            key: PeerKey(key),
            connected: true,
            since,
            spoke: false,
            interested: false,
            interesting: false,
            last_piece: None,
        }
    }

    #[test]
    fn the_oldest_silent_connection_goes_first() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(5);
        let old = conn(1, t0);
        let young = conn(2, t0 + Duration::from_secs(3));
        let honest = Conn {
            spoke: true,
            interested: true,
            ..conn(3, t0 - Duration::from_secs(60))
        };
        assert_eq!(victim([&young, &honest, &old], now), Some(PeerKey(1)));
        // Even one that connected a moment ago is a victim when it is the only silent one: an
        // honest peer speaks within a round trip.
        assert_eq!(victim([&young, &honest], now), Some(PeerKey(2)));
    }

    #[test]
    fn useful_connections_are_never_evicted() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(600);
        let interested = Conn {
            spoke: true,
            interested: true,
            ..conn(1, t0)
        };
        let interesting = Conn {
            spoke: true,
            interesting: true,
            ..conn(2, t0)
        };
        let recent_piece = Conn {
            spoke: true,
            last_piece: Some(now - Duration::from_secs(2)),
            ..conn(3, t0)
        };
        let connecting = Conn {
            connected: false,
            ..conn(4, t0)
        };
        let all = [interested, interesting, recent_piece, connecting];
        assert_eq!(victim(&all, now), None);
        assert!(silent_too_long(&all, now).is_empty());
    }

    #[test]
    fn idle_connections_go_after_silent_ones_longest_without_a_piece_first() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(100);
        let idle_long = Conn {
            spoke: true,
            last_piece: Some(t0 + Duration::from_secs(10)),
            ..conn(1, t0)
        };
        let idle_longer = Conn {
            spoke: true,
            ..conn(2, t0 + Duration::from_secs(20))
        };
        let just_spoke = Conn {
            spoke: true,
            ..conn(3, now - Duration::from_secs(1))
        };
        // Connected later, but without any piece since t0 + 20 s, against t0 + 10 s: no wait.
        assert_eq!(
            victim([&idle_longer, &idle_long, &just_spoke], now),
            Some(PeerKey(1))
        );
        let silent = conn(4, now - Duration::from_millis(50));
        assert_eq!(
            victim([&idle_long, &idle_longer, &silent], now),
            Some(PeerKey(4))
        );
        // Neither interested nor interesting, but it only just spoke: not yet idle.
        assert_eq!(victim([&just_spoke], now), None);
    }

    #[test]
    fn silence_past_the_grace_is_found() {
        let t0 = Instant::now();
        let now = t0 + SILENT_GRACE + Duration::from_secs(1);
        let silent_old = conn(1, t0);
        let silent_young = conn(2, now - Duration::from_secs(5));
        let spoke_old = Conn {
            spoke: true,
            ..conn(3, t0)
        };
        assert_eq!(
            silent_too_long([&silent_old, &silent_young, &spoke_old], now),
            vec![PeerKey(1)]
        );
    }

    #[test]
    fn scarcity_starts_at_nine_tenths() {
        assert!(!scarce(0, 200));
        assert!(!scarce(179, 200));
        assert!(scarce(180, 200));
        assert!(scarce(200, 200));
        assert!(scarce(1, 1));
        assert!(!scarce(0, 1));
    }
}
