//! The peer store: peers announced to us with `announce_peer`, per info hash, bounded and aging.
//!
//! Strangers fill this table, so it is bounded twice: at most [`MAX_INFO_HASHES`] torrents and
//! at most [`MAX_PEERS_PER_HASH`] peers each. A full torrent replaces its oldest peer; a full
//! table drops the torrent whose last announce is oldest. Every entry expires [`PEER_TTL`]
//! after its last announce.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::InfoHash;

/// How many torrents we store peers for. 2,048 torrents of up to 100 peers is about 200,000
/// peers, some 10 MiB at most: more than a home node is ever asked to hold (announces for a
/// torrent go to the 8 nodes closest to its hash), small enough for any machine.
pub const MAX_INFO_HASHES: usize = 2048;

/// How many peers we keep per torrent. A `get_peers` reply carries at most
/// [`MAX_VALUES_IN_REPLY`] of them, and libtorrent keeps 100 per torrent too.
pub const MAX_PEERS_PER_HASH: usize = 100;

/// How many peers a `get_peers` reply carries: 50 compact IPv4 peers are 400 bytes, which keeps
/// the reply well under a 1,280-byte datagram even with IPv6 peers mixed in.
pub const MAX_VALUES_IN_REPLY: usize = 50;

/// How long an announced peer is kept without a new announce (BEP 5 suggests 30 minutes;
/// announcers re-announce every 15).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);

/// Bytes one torrent's entry takes in the store besides its peers: a hash-map slot (key and
/// value) and its control byte; the map keeps up to an eighth of its slots empty on top.
pub fn bytes_per_info_hash() -> usize {
    (std::mem::size_of::<(InfoHash, Swarm)>() + 1) * 8 / 7
}

/// One stored peer.
#[derive(Debug, Clone, Copy)]
pub struct StoredPeer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// When it last announced.
    pub seen: Instant,
}

/// The peers of one torrent.
#[derive(Debug, Default, Clone)]
struct Swarm {
    /// At most [`MAX_PEERS_PER_HASH`] peers, in no order.
    peers: Vec<StoredPeer>,
    /// The newest announce, for evicting whole torrents.
    newest: Option<Instant>,
}

/// The peer store.
#[derive(Debug, Default, Clone)]
pub struct PeerStore {
    /// Swarms by info hash, at most [`MAX_INFO_HASHES`].
    swarms: HashMap<InfoHash, Swarm>,
    /// Total peers across swarms.
    peers: usize,
}

impl PeerStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `addr` announced `info_hash` at `now`.
    pub fn announce(&mut self, now: Instant, info_hash: InfoHash, addr: SocketAddr) {
        if !self.swarms.contains_key(&info_hash) && self.swarms.len() >= MAX_INFO_HASHES {
            // Drop the torrent announced least recently. A scan of 2,048 entries, only when
            // a new torrent arrives at a full table.
            if let Some(oldest) = self
                .swarms
                .iter()
                .min_by_key(|(_, s)| s.newest)
                .map(|(h, _)| *h)
            {
                if let Some(s) = self.swarms.remove(&oldest) {
                    self.peers -= s.peers.len();
                }
            }
        }
        let swarm = self.swarms.entry(info_hash).or_default();
        swarm.newest = Some(now);
        if let Some(p) = swarm.peers.iter_mut().find(|p| p.addr == addr) {
            p.seen = now;
            return;
        }
        let entry = StoredPeer { addr, seen: now };
        if swarm.peers.len() < MAX_PEERS_PER_HASH {
            swarm.peers.push(entry);
            self.peers += 1;
        } else if let Some(oldest) = swarm.peers.iter_mut().min_by_key(|p| p.seen) {
            *oldest = entry;
        }
    }

    /// Up to `max` peers of `info_hash`, newest first.
    pub fn peers(&self, info_hash: &InfoHash, max: usize) -> Vec<SocketAddr> {
        let Some(swarm) = self.swarms.get(info_hash) else {
            return Vec::new();
        };
        let mut peers: Vec<&StoredPeer> = swarm.peers.iter().collect();
        peers.sort_by_key(|p| std::cmp::Reverse(p.seen));
        peers.iter().take(max).map(|p| p.addr).collect()
    }

    /// Drops every peer not announced within [`PEER_TTL`] of `now`, and empty torrents.
    pub fn expire(&mut self, now: Instant) {
        let mut removed = 0;
        self.swarms.retain(|_, s| {
            let before = s.peers.len();
            s.peers
                .retain(|p| now.saturating_duration_since(p.seen) < PEER_TTL);
            removed += before - s.peers.len();
            !s.peers.is_empty()
        });
        self.peers -= removed;
    }

    /// How many peers are stored, across torrents.
    pub fn len(&self) -> usize {
        self.peers
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.peers == 0
    }

    /// How many torrents have stored peers.
    pub fn info_hashes(&self) -> usize {
        self.swarms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(i), 6881))
    }

    #[test]
    fn stores_dedups_and_expires() {
        let t0 = Instant::now();
        let mut s = PeerStore::new();
        let h = InfoHash([1; 20]);
        s.announce(t0, h, addr(1));
        s.announce(t0, h, addr(2));
        s.announce(t0 + Duration::from_secs(60), h, addr(1));
        assert_eq!(s.len(), 2);
        assert_eq!(s.peers(&h, 10), vec![addr(1), addr(2)]);
        assert_eq!(s.peers(&h, 1), vec![addr(1)]);
        s.expire(t0 + PEER_TTL);
        assert_eq!(s.peers(&h, 10), vec![addr(1)]);
        assert_eq!(s.len(), 1);
        s.expire(t0 + PEER_TTL + Duration::from_secs(60));
        assert!(s.is_empty());
        assert_eq!(s.info_hashes(), 0);
    }

    #[test]
    fn bounded_in_peers_and_torrents_evicting_the_oldest() {
        let t0 = Instant::now();
        let mut s = PeerStore::new();
        let h = InfoHash([1; 20]);
        for i in 0..(MAX_PEERS_PER_HASH as u32 + 50) {
            s.announce(t0 + Duration::from_millis(u64::from(i)), h, addr(i));
        }
        assert_eq!(s.len(), MAX_PEERS_PER_HASH);
        let kept = s.peers(&h, usize::MAX);
        assert!(!kept.contains(&addr(0)), "the oldest was replaced");
        assert!(kept.contains(&addr(MAX_PEERS_PER_HASH as u32 + 49)));

        for i in 0..(MAX_INFO_HASHES as u32 + 10) {
            let mut hash = [0u8; 20];
            hash[..4].copy_from_slice(&(i + 100).to_be_bytes());
            s.announce(
                t0 + Duration::from_secs(10 + u64::from(i)),
                InfoHash(hash),
                addr(i),
            );
        }
        assert_eq!(s.info_hashes(), MAX_INFO_HASHES);
        assert!(s.peers(&h, 1).is_empty(), "the oldest torrent went first");
        assert_eq!(s.len(), MAX_INFO_HASHES);
    }
}
