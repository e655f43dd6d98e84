//! An embedded HTTP tracker: an open tracker for local swarms, tests and demos.
//!
//! One thread owns the swarm table and answers requests one at a time; `tiny_http` reads
//! requests on its own threads, so a slow client never holds the table. Announce replies are
//! compact (BEP 23, with `peers6` from BEP 7) unless the client sends `compact=0`. Any info
//! hash is accepted, within bounds on torrents and peers per torrent so a flood cannot exhaust
//! memory.
//!
//! ```no_run
//! use shoal_actors::tracker_server::TrackerServer;
//! let server = TrackerServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
//! println!("announce to {}", server.announce_url());
//! server.shutdown();
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_engine::tracker::{
    encode_announce_reply, encode_failure, encode_scrape_reply, parse_announce_query,
    parse_scrape_query, AnnounceQuery, Event, ScrapeStats,
};
use shoal_engine::{InfoHash, PeerId};

/// Peers returned when the client does not say how many it wants.
pub const DEFAULT_NUMWANT: u32 = 50;
/// The most peers returned in one reply, whatever the client asks.
pub const MAX_NUMWANT: u32 = 200;
/// How often the serving thread wakes to expire peers and check for shutdown.
const TICK: Duration = Duration::from_millis(250);

/// How the embedded tracker behaves.
#[derive(Clone, Debug)]
pub struct TrackerServerOptions {
    /// The re-announce interval given to clients; a peer silent for twice this long is
    /// dropped. At least one second.
    pub interval: Duration,
    /// The most torrents tracked at once; announces for new torrents beyond it are refused.
    pub max_torrents: usize,
    /// The most peers tracked per torrent; new peers beyond it are refused.
    pub max_peers_per_torrent: usize,
}

impl Default for TrackerServerOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            max_torrents: 10_000,
            max_peers_per_torrent: 10_000,
        }
    }
}

/// A running embedded tracker. Dropping it (or [`TrackerServer::shutdown`]) stops it.
pub struct TrackerServer {
    /// The HTTP server, shared with the serving thread.
    server: Arc<tiny_http::Server>,
    /// The address it listens on.
    addr: SocketAddr,
    /// Set to ask the serving thread to end.
    stop: Arc<AtomicBool>,
    /// The serving thread, joined at shutdown.
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TrackerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TrackerServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving at once, with default options.
    pub fn bind(addr: SocketAddr) -> io::Result<TrackerServer> {
        Self::bind_with(addr, TrackerServerOptions::default())
    }

    /// Binds `addr` and starts serving with `options`.
    pub fn bind_with(addr: SocketAddr, options: TrackerServerOptions) -> io::Result<TrackerServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| io::Error::other(format!("cannot start http server: {e}")))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("shoal-tracker".into())
            .spawn({
                let server = Arc::clone(&server);
                let stop = Arc::clone(&stop);
                move || serve(&server, &stop, Swarms::new(options))
            })?;
        log::info!("tracker listening on http://{addr}/announce");
        Ok(TrackerServer {
            server,
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the tracker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The announce URL: `http://ADDR/announce`.
    pub fn announce_url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    /// The scrape URL: `http://ADDR/scrape`.
    pub fn scrape_url(&self) -> String {
        format!("http://{}/scrape", self.addr)
    }

    /// Stops serving and waits for the serving thread to end.
    pub fn shutdown(self) {
        // Drop does the work.
    }
}

impl Drop for TrackerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("tracker thread panicked");
            }
        }
    }
}

/// The serving loop: answers requests until asked to stop.
fn serve(server: &tiny_http::Server, stop: &AtomicBool, mut swarms: Swarms) {
    let mut last_expiry = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(TICK) {
            Ok(request) => request,
            Err(e) => {
                log::debug!("tracker: receive failed: {e}");
                None
            }
        };
        let now = Instant::now();
        if now.duration_since(last_expiry) >= swarms.interval {
            swarms.expire_all(now);
            last_expiry = now;
        }
        let Some(request) = request else { continue };
        let remote = request.remote_addr().map(|a| a.ip().to_canonical());
        let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
        let (status, body) = match (path, remote) {
            ("/announce", Some(remote)) => (200, swarms.announce(query, remote, now)),
            ("/announce", None) => (200, encode_failure("no remote address")),
            ("/scrape", _) => (200, swarms.scrape(query)),
            _ => (404, encode_failure("not found: use /announce or /scrape")),
        };
        let response = tiny_http::Response::from_data(body)
            .with_status_code(status)
            .with_header(
                tiny_http::Header::from_bytes("Content-Type", "text/plain").expect("valid header"),
            );
        if let Err(e) = request.respond(response) {
            log::debug!("tracker: reply not sent: {e}");
        }
    }
}

/// One peer of a swarm, as last announced.
#[derive(Clone, Copy, Debug)]
struct Peer {
    /// Where other peers can reach it.
    addr: SocketAddr,
    /// Bytes it still needs; 0 makes it a seeder.
    left: u64,
    /// When it last announced.
    last_seen: Instant,
}

/// One torrent's peers.
#[derive(Debug, Default)]
struct Swarm {
    /// Peers by peer id.
    peers: HashMap<PeerId, Peer>,
    /// `completed` events seen.
    downloaded: u32,
}

impl Swarm {
    fn stats(&self) -> ScrapeStats {
        let complete = self.peers.values().filter(|p| p.left == 0).count();
        ScrapeStats {
            complete: complete as u32,
            incomplete: (self.peers.len() - complete) as u32,
            downloaded: self.downloaded,
        }
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        self.peers
            .retain(|_, p| now.duration_since(p.last_seen) <= ttl);
    }
}

/// Every swarm, owned by the serving thread.
#[derive(Debug)]
struct Swarms {
    /// Torrents by info hash.
    swarms: HashMap<InfoHash, Swarm>,
    /// The interval given to clients.
    interval: Duration,
    /// Bounds.
    options: TrackerServerOptions,
}

impl Swarms {
    fn new(options: TrackerServerOptions) -> Self {
        let interval = options.interval.max(Duration::from_secs(1));
        Self {
            swarms: HashMap::new(),
            interval,
            options,
        }
    }

    /// A peer silent for longer than this is dropped.
    fn ttl(&self) -> Duration {
        self.interval * 2
    }

    fn expire_all(&mut self, now: Instant) {
        let ttl = self.ttl();
        for swarm in self.swarms.values_mut() {
            swarm.expire(now, ttl);
        }
        self.swarms.retain(|_, s| !s.peers.is_empty());
    }

    fn announce(&mut self, query: &str, remote: IpAddr, now: Instant) -> Vec<u8> {
        match parse_announce_query(query) {
            Ok(q) => self.announce_query(q, remote, now),
            Err(e) => encode_failure(&e.to_string()),
        }
    }

    fn announce_query(&mut self, q: AnnounceQuery, remote: IpAddr, now: Instant) -> Vec<u8> {
        let interval = self.interval.as_secs().min(u64::from(u32::MAX)) as u32;
        let ttl = self.ttl();
        if !self.swarms.contains_key(&q.info_hash) && self.swarms.len() >= self.options.max_torrents
        {
            self.expire_all(now);
            if self.swarms.len() >= self.options.max_torrents {
                return encode_failure("tracker is full: too many torrents");
            }
        }
        let swarm = self.swarms.entry(q.info_hash).or_default();
        swarm.expire(now, ttl);
        let addr = SocketAddr::new(q.ip.map_or(remote, |ip| ip.to_canonical()), q.port);
        if q.event == Some(Event::Stopped) {
            swarm.peers.remove(&q.peer_id);
            let s = swarm.stats();
            if swarm.peers.is_empty() {
                self.swarms.remove(&q.info_hash);
            }
            return encode_announce_reply(interval, &[], q.compact, s.complete, s.incomplete);
        }
        if !swarm.peers.contains_key(&q.peer_id)
            && swarm.peers.len() >= self.options.max_peers_per_torrent
        {
            return encode_failure("tracker is full: too many peers in this swarm");
        }
        if q.event == Some(Event::Completed) {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        swarm.peers.insert(
            q.peer_id,
            Peer {
                addr,
                left: q.left,
                last_seen: now,
            },
        );

        let numwant = q.numwant.unwrap_or(DEFAULT_NUMWANT).min(MAX_NUMWANT) as usize;
        let mut others: Vec<(PeerId, SocketAddr)> = swarm
            .peers
            .iter()
            .filter(|(id, p)| **id != q.peer_id && p.addr != addr)
            .map(|(id, p)| (*id, p.addr))
            .collect();
        // A random subset: a partial Fisher-Yates shuffle of the first `numwant` places.
        let n = numwant.min(others.len());
        for i in 0..n {
            let j = fastrand::usize(i..others.len());
            others.swap(i, j);
        }
        others.truncate(n);
        let s = swarm.stats();
        encode_announce_reply(interval, &others, q.compact, s.complete, s.incomplete)
    }

    fn scrape(&self, query: &str) -> Vec<u8> {
        let hashes = match parse_scrape_query(query) {
            Ok(h) => h,
            Err(e) => return encode_failure(&e.to_string()),
        };
        let files: Vec<(InfoHash, ScrapeStats)> = if hashes.is_empty() {
            self.swarms.iter().map(|(h, s)| (*h, s.stats())).collect()
        } else {
            hashes
                .iter()
                .filter_map(|h| self.swarms.get(h).map(|s| (*h, s.stats())))
                .collect()
        };
        encode_scrape_reply(&files)
    }
}
