//! An embedded HTTP tracker: an open tracker for local swarms, tests and demos.
//!
//! One thread runs a small single-threaded executor: it accepts connections, reads each
//! request (parsed by `httparse`, bounded in size and time), answers from the swarm table it
//! owns, and closes the connection. Many slow or idle clients cost a task each, never a thread,
//! and running out of file descriptors only pauses accepting. Announce replies are compact
//! (BEP 23, with `peers6` from BEP 7) unless the client sends `compact=0`. Any info hash is
//! accepted, within bounds on torrents and peers per torrent so a flood cannot exhaust memory.
//!
//! ```no_run
//! use shoal_actors::tracker_server::TrackerServer;
//! let server = TrackerServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
//! println!("announce to {}", server.announce_url());
//! server.shutdown();
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt, FutureExt};
use shoal_engine::tracker::{
    encode_announce_reply, encode_failure, encode_scrape_reply, parse_announce_query,
    parse_scrape_query, AnnounceQuery, Event, ScrapeStats,
};
use shoal_engine::{InfoHash, PeerId};
use smol::net::TcpStream;
use smol::Timer;

/// Peers returned when the client does not say how many it wants.
pub const DEFAULT_NUMWANT: u32 = 50;
/// The most peers returned in one reply, whatever the client asks.
pub const MAX_NUMWANT: u32 = 200;
/// The longest a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read; a longer one is refused.
const MAX_REQUEST: usize = 16 * 1024;
/// Connections served at once; more are closed as soon as they are accepted.
const MAX_CLIENTS: usize = 1024;
/// How long accepting pauses after it fails (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    /// The address it listens on.
    addr: SocketAddr,
    /// Closed to ask the serving thread to end.
    stop: Sender<()>,
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
        let listener = smol::net::TcpListener::try_from(listener)?;
        let (stop, stopped) = async_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("shoal-tracker".into())
            .spawn(move || smol::block_on(serve(listener, stopped, Swarms::new(options))))?;
        log::info!("tracker listening on http://{addr}/announce");
        Ok(TrackerServer {
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
        self.stop.close();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("tracker thread panicked");
            }
        }
    }
}

/// The serving loop: accepts and answers until asked to stop. Every client is a task on one
/// thread, so the swarm table needs no lock.
async fn serve(listener: smol::net::TcpListener, stop: Receiver<()>, swarms: Swarms) {
    let swarms = Rc::new(RefCell::new(swarms));
    let clients = Rc::new(Cell::new(0usize));
    let ex = smol::LocalExecutor::new();
    let accept = async {
        // Whether the last accept failed: a streak of failures is logged once.
        let mut failing = false;
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    failing = false;
                    if clients.get() >= MAX_CLIENTS {
                        log::debug!("tracker: {MAX_CLIENTS} clients already, closing {remote}");
                        continue;
                    }
                    clients.set(clients.get() + 1);
                    let (swarms, clients) = (swarms.clone(), clients.clone());
                    ex.spawn(async move {
                        let served = answer(stream, remote, &swarms)
                            .or(async {
                                Timer::after(CLIENT_TIMEOUT).await;
                                Err(io::ErrorKind::TimedOut.into())
                            })
                            .await;
                        if let Err(e) = served {
                            log::debug!("tracker: client {remote}: {e}");
                        }
                        clients.set(clients.get() - 1);
                    })
                    .detach();
                }
                Err(e) => {
                    // Out of file descriptors, say: wait for some to be closed.
                    if !failing {
                        log::warn!("tracker: cannot accept connections: {e}; retrying");
                    }
                    failing = true;
                    Timer::after(ACCEPT_BACKOFF).await;
                }
            }
        }
    };
    ex.run(future::or(accept, async {
        let _ = stop.recv().await;
    }))
    .await;
}

/// Reads one request from `stream`, answers it and closes the connection.
async fn answer(
    mut stream: TcpStream,
    remote: SocketAddr,
    swarms: &RefCell<Swarms>,
) -> io::Result<()> {
    let mut head = vec![0u8; 2048];
    let mut len = 0;
    let target = loop {
        if len == head.len() {
            if head.len() >= MAX_REQUEST {
                return respond(&mut stream, 431, &encode_failure("request too large")).await;
            }
            head.resize(head.len() * 2, 0);
        }
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return respond(&mut stream, 405, &encode_failure("use GET")).await;
                }
                break origin_form(req.path.unwrap_or("/")).to_string();
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return respond(&mut stream, 431, &encode_failure("too many headers")).await;
            }
            Err(e) => {
                let reason = format!("malformed request: {e}");
                return respond(&mut stream, 400, &encode_failure(&reason)).await;
            }
        }
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let now = Instant::now();
    let (status, body) = {
        let mut swarms = swarms.borrow_mut();
        swarms.expire_if_due(now);
        match path {
            "/announce" => (200, swarms.announce(query, remote.ip().to_canonical(), now)),
            "/scrape" => (200, swarms.scrape(query)),
            _ => (404, encode_failure("not found: use /announce or /scrape")),
        }
    };
    respond(&mut stream, status, &body).await
}

/// The path and query of a request target, also from the absolute form
/// (`http://host/announce?...`, which proxies send).
fn origin_form(target: &str) -> &str {
    match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    }
}

/// Writes a whole response, closes our side, then reads (and drops) what the client still
/// sends until it closes, for at most a second: closing with unread input would reset the
/// connection and could destroy the response in flight.
async fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    stream.close().await?;
    let mut sink = [0u8; 4096];
    let drain = async {
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    drain
        .or(async {
            Timer::after(Duration::from_secs(1)).await;
            Ok(())
        })
        .await
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
    /// When silent peers were last dropped from every swarm.
    last_expiry: Instant,
}

impl Swarms {
    fn new(options: TrackerServerOptions) -> Self {
        let interval = options.interval.max(Duration::from_secs(1));
        Self {
            swarms: HashMap::new(),
            interval,
            options,
            last_expiry: Instant::now(),
        }
    }

    /// Drops silent peers from every swarm, once an interval.
    fn expire_if_due(&mut self, now: Instant) {
        if now.duration_since(self.last_expiry) >= self.interval {
            self.expire_all(now);
            self.last_expiry = now;
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

#[cfg(test)]
mod tests {
    use super::origin_form;

    #[test]
    fn request_targets_in_origin_and_absolute_form() {
        assert_eq!(origin_form("/announce?x=1"), "/announce?x=1");
        assert_eq!(
            origin_form("http://t.example:6969/announce?x=1"),
            "/announce?x=1"
        );
        assert_eq!(origin_form("http://t.example"), "/");
        assert_eq!(origin_form("/a?u=http://x/y"), "/a?u=http://x/y");
    }
}
