//! The swarm as one torrent knows it: the addresses it may dial and when (backoff), and who is
//! banned. Pure bookkeeping, driven by the torrent actor with the time passed in.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use shoal_engine::PeerId;

/// The longest wait before dialling again an address that keeps failing.
const MAX_REDIAL_WAIT: Duration = Duration::from_secs(60);

/// The wait before dialling again a peer whose connection worked and then dropped (a seeder
/// that restarts, say).
const REDIAL_AFTER_DROP: Duration = Duration::from_secs(2);

/// The most addresses remembered for dialling; beyond it, those that failed most are dropped.
const MAX_KNOWN: usize = 2000;

/// Who a ban or a strike applies to: the IP address, except on loopback, where every local peer
/// shares 127.0.0.1 (tests, several clients on one machine): there the address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BanKey {
    /// A remote host.
    Ip(IpAddr),
    /// A loopback peer.
    Local(SocketAddr),
}

impl BanKey {
    /// The key for a peer at `addr`.
    pub fn of(addr: SocketAddr) -> Self {
        if addr.ip().is_loopback() {
            Self::Local(addr)
        } else {
            Self::Ip(addr.ip())
        }
    }
}

/// An address we may dial.
#[derive(Debug)]
struct Known {
    /// Connection attempts that failed in a row.
    failures: u32,
    /// Not before this.
    next_try: Instant,
    /// Whether it had every piece when we last saw it (seeds have no use for seeds).
    seed: bool,
}

/// The addresses a torrent may dial and the bans it keeps.
#[derive(Debug)]
pub(super) struct Swarm {
    /// Addresses we may dial (from trackers and the user), and when.
    known: HashMap<SocketAddr, Known>,
    /// Banned hosts (see [`BanKey`]).
    banned: HashSet<BanKey>,
    /// Banned peer ids: a banned peer that reconnects from a new port without changing its id.
    banned_ids: HashSet<PeerId>,
    /// Our own listening port: a loopback or unspecified address with it is ourselves.
    our_port: u16,
}

impl Swarm {
    /// An empty swarm for a session listening on `our_port`.
    pub(super) fn new(our_port: u16) -> Self {
        Self {
            known: HashMap::new(),
            banned: HashSet::new(),
            banned_ids: HashSet::new(),
            our_port,
        }
    }

    /// Addresses worth dialling, from a tracker reply or the user. A fresh mention makes an
    /// address that failed before worth a try soon (after at most 3 s).
    pub(super) fn add(&mut self, peers: impl IntoIterator<Item = SocketAddr>, now: Instant) {
        for p in peers {
            if p.port() == 0 || self.is_banned(&p, None) {
                continue;
            }
            if (p.ip().is_loopback() || p.ip().is_unspecified()) && p.port() == self.our_port {
                // Ourselves, as the tracker sees us.
                continue;
            }
            if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&p) {
                // Forget the address that failed most, if it failed at all.
                let worst = self
                    .known
                    .iter()
                    .max_by_key(|(_, k)| k.failures)
                    .map(|(a, k)| (*a, k.failures));
                match worst {
                    Some((a, f)) if f > 0 => {
                        self.known.remove(&a);
                    }
                    _ => continue,
                }
            }
            let k = self.known.entry(p).or_insert(Known {
                failures: 0,
                next_try: now,
                seed: false,
            });
            k.next_try = k
                .next_try
                .min(now + Duration::from_secs(u64::from(k.failures.min(3))));
        }
    }

    /// Up to `budget` addresses to dial now, those that failed least first. `busy` says whether
    /// an address is already connected or being dialled; a complete torrent skips known seeds.
    pub(super) fn to_dial(
        &self,
        now: Instant,
        budget: usize,
        complete: bool,
        busy: impl Fn(&SocketAddr) -> bool,
    ) -> Vec<SocketAddr> {
        if budget == 0 {
            return Vec::new();
        }
        let mut ready: Vec<(u32, SocketAddr)> = self
            .known
            .iter()
            .filter(|(a, k)| {
                k.next_try <= now && (!complete || !k.seed) && !busy(a) && !self.is_banned(a, None)
            })
            .map(|(a, k)| (k.failures, *a))
            .collect();
        ready.sort_unstable();
        ready.into_iter().take(budget).map(|(_, a)| a).collect()
    }

    /// A dial to `addr` failed: wait longer before the next, doubling up to a minute.
    pub(super) fn connect_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(k) = self.known.get_mut(&addr) {
            k.failures = k.failures.saturating_add(1);
            let wait = Duration::from_secs(1u64 << k.failures.min(6)).min(MAX_REDIAL_WAIT);
            k.next_try = now + wait;
        }
    }

    /// A connection to `addr` that worked has ended; `seed` says whether the peer had every
    /// piece.
    pub(super) fn disconnected(&mut self, addr: SocketAddr, now: Instant, seed: bool) {
        if let Some(k) = self.known.get_mut(&addr) {
            k.failures = 0;
            k.next_try = now + REDIAL_AFTER_DROP;
            k.seed = seed;
        }
    }

    /// Bans the host of `addr` (see [`BanKey`]) and `peer_id`, and forgets the address.
    pub(super) fn ban(&mut self, addr: SocketAddr, peer_id: Option<PeerId>) {
        self.known.remove(&addr);
        self.banned.insert(BanKey::of(addr));
        if let Some(id) = peer_id {
            self.banned_ids.insert(id);
        }
    }

    /// Whether `addr` (or `peer_id`, when known) is banned.
    pub(super) fn is_banned(&self, addr: &SocketAddr, peer_id: Option<&PeerId>) -> bool {
        self.banned.contains(&BanKey::of(*addr))
            || peer_id.is_some_and(|id| self.banned_ids.contains(id))
    }

    /// How many addresses are known.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ourselves_and_port_zero_are_never_dialled() {
        let now = Instant::now();
        let mut s = Swarm::new(6881);
        s.add(
            [
                addr("127.0.0.1:6881"),
                addr("0.0.0.0:6881"),
                addr("10.0.0.1:0"),
                addr("10.0.0.1:6881"),
            ],
            now,
        );
        assert_eq!(
            s.to_dial(now, 10, false, |_| false),
            [addr("10.0.0.1:6881")]
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_minute() {
        let t0 = Instant::now();
        let a = addr("10.0.0.1:1");
        let mut s = Swarm::new(1000);
        s.add([a], t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert_eq!(s.to_dial(now, 1, false, |_| false), [a]);
            s.connect_failed(a, now);
            // Not a moment before its time.
            let mut wait = 1;
            while s
                .to_dial(now + Duration::from_secs(wait), 1, false, |_| false)
                .is_empty()
            {
                wait += 1;
            }
            waits.push(wait);
            now += Duration::from_secs(wait);
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_fresh_mention_brings_a_failing_address_forward() {
        let t0 = Instant::now();
        let a = addr("10.0.0.1:1");
        let mut s = Swarm::new(1000);
        s.add([a], t0);
        for _ in 0..6 {
            s.connect_failed(a, t0);
        }
        assert!(s
            .to_dial(t0 + Duration::from_secs(10), 1, false, |_| false)
            .is_empty());
        s.add([a], t0);
        assert_eq!(
            s.to_dial(t0 + Duration::from_secs(3), 1, false, |_| false),
            [a]
        );
    }

    #[test]
    fn least_failed_first_and_busy_and_budget_respected() {
        let t0 = Instant::now();
        let (a, b, c) = (addr("10.0.0.1:1"), addr("10.0.0.2:1"), addr("10.0.0.3:1"));
        let mut s = Swarm::new(1000);
        s.add([a, b, c], t0);
        s.connect_failed(a, t0);
        let later = t0 + Duration::from_secs(100);
        let order = s.to_dial(later, 3, false, |_| false);
        assert_eq!(order.last(), Some(&a));
        assert_eq!(s.to_dial(later, 3, false, |x| *x == b).len(), 2);
        assert_eq!(s.to_dial(later, 1, false, |_| false).len(), 1);
        assert!(s.to_dial(later, 0, false, |_| false).is_empty());
    }

    #[test]
    fn a_complete_torrent_does_not_dial_known_seeds() {
        let t0 = Instant::now();
        let (seed, leech) = (addr("10.0.0.1:1"), addr("10.0.0.2:1"));
        let mut s = Swarm::new(1000);
        s.add([seed, leech], t0);
        s.disconnected(seed, t0, true);
        s.disconnected(leech, t0, false);
        let later = t0 + REDIAL_AFTER_DROP;
        assert_eq!(s.to_dial(later, 5, true, |_| false), [leech]);
        assert_eq!(s.to_dial(later, 5, false, |_| false).len(), 2);
    }

    #[test]
    fn bans_hold_by_ip_remotely_by_port_on_loopback_and_by_peer_id() {
        let t0 = Instant::now();
        let mut s = Swarm::new(1000);
        let id = PeerId([7; 20]);
        s.ban(addr("10.0.0.1:5000"), Some(id));
        // The same host from another port stays banned, and is never added again.
        assert!(s.is_banned(&addr("10.0.0.1:6000"), None));
        s.add([addr("10.0.0.1:6000")], t0);
        assert_eq!(s.len(), 0);
        // The same id from another host is banned too.
        assert!(s.is_banned(&addr("10.9.9.9:1"), Some(&id)));
        // On loopback only that port is.
        s.ban(addr("127.0.0.1:5000"), None);
        assert!(s.is_banned(&addr("127.0.0.1:5000"), None));
        assert!(!s.is_banned(&addr("127.0.0.1:5001"), None));
    }

    #[test]
    fn the_table_is_bounded_and_drops_those_that_failed_most() {
        let t0 = Instant::now();
        let mut s = Swarm::new(1);
        let many =
            (0..MAX_KNOWN as u32).map(|i| SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16)));
        s.add(many, t0);
        assert_eq!(s.len(), MAX_KNOWN);
        // None failed: a newcomer is not taken.
        s.add([addr("10.0.0.2:1")], t0);
        assert_eq!(s.len(), MAX_KNOWN);
        assert!(s
            .to_dial(t0, MAX_KNOWN + 1, false, |_| false)
            .iter()
            .all(|a| a.ip() != addr("10.0.0.2:1").ip()));
        // One failed: it makes room.
        s.connect_failed(SocketAddr::from(([10, 0, 0, 1], 1000)), t0);
        s.add([addr("10.0.0.2:1")], t0);
        assert_eq!(s.len(), MAX_KNOWN);
        assert!(s
            .to_dial(t0, MAX_KNOWN, false, |_| false)
            .contains(&addr("10.0.0.2:1")));
    }
}
