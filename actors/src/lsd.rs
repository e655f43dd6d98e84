//! Local service discovery (BEP 14): announce our torrents on the local network by multicast,
//! and hand the peers others announce to our torrents.
//!
//! A message is an HTTP-like request sent to 239.192.152.143:6771:
//! ```text
//! BT-SEARCH * HTTP/1.1\r\n
//! Host: 239.192.152.143:6771\r\n
//! Port: 6881\r\n
//! Infohash: 0123456789abcdef0123456789abcdef01234567\r\n
//! cookie: 5f3a...\r\n
//! \r\n\r\n
//! ```
//! The peer is the sender's IP with the `Port` header. The `cookie` (random per session)
//! lets us ignore our own messages, which multicast loops back to us.
//!
//! # Rate
//! Each torrent is announced when it is added (unless it was announced less than
//! [`MIN_INTERVAL`] ago), then every [`ANNOUNCE_EVERY`]; never more than once per
//! [`MIN_INTERVAL`]. What we receive is bounded too: [`MAX_MESSAGE`] bytes and
//! [`MAX_HASHES_PER_MESSAGE`] info hashes per message, [`RECEIVE_BURST`] messages at most
//! per second from the whole network.
//!
//! # Interfaces and the loopback rule
//! We announce only on the interface of the listen address: the sending socket is bound to
//! it and `IP_MULTICAST_IF` names it, and the group is joined there only. A session listening
//! on `0.0.0.0` uses the system's default multicast interface. A session listening on a
//! loopback address runs no LSD at all: nothing would reach another machine, and tests that
//! run many sessions on 127.0.0.1 must send nothing off the box (nor hear each other by
//! surprise). LSD between two hosts is tested across two network namespaces.
//!
//! Linux only (it needs `SO_REUSEADDR` so several clients on one host share port 6771, which
//! std cannot set); elsewhere LSD is off with a note in the log.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_lite::future;
use shoal_engine::InfoHash;
use smol::net::UdpSocket;

use crate::runtime::{mailbox, Addr, Mailbox, Spawner, Task, TrySendError};
use crate::torrent::{Torrent, TorrentMsg};

/// The BEP 14 multicast group and port.
pub const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 192, 152, 143), 6771);

/// How often each torrent is announced again (libtorrent: every 5 minutes).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5 * 60);

/// The least time between two announces of one torrent.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// The longest message read; an announce of a few info hashes is about 200 bytes, and BEP 14
/// messages are meant to fit one small datagram. Longer ones are cut and then parse to
/// nothing useful.
pub const MAX_MESSAGE: usize = 1400;

/// Info hashes taken from one message; the rest are ignored.
pub const MAX_HASHES_PER_MESSAGE: usize = 16;

/// Messages handled per second from the whole network, a token bucket of this size refilled
/// at this rate: a LAN of a hundred clients each announcing a few torrents every 5 minutes
/// stays far below it; a flood is cut without growing anything.
pub const RECEIVE_BURST: f64 = 50.0;

/// Requests waiting for the actor (adds and removes).
pub const LSD_MAILBOX: usize = 256;

/// What the actor is asked.
enum LsdMsg {
    /// Announce this torrent and feed it what we hear.
    AddTorrent(Torrent),
    /// Forget a torrent.
    RemoveTorrent(InfoHash),
}

impl fmt::Debug for LsdMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddTorrent(t) => write!(f, "AddTorrent({})", t.info_hash()),
            Self::RemoveTorrent(h) => write!(f, "RemoveTorrent({h})"),
        }
    }
}

/// The running LSD actor.
pub struct Lsd {
    /// Its mailbox.
    addr: Addr<LsdMsg>,
    /// Its task, cancelled at shutdown.
    task: Mutex<Option<Task<()>>>,
    /// For sends that must wait.
    spawner: Spawner,
}

impl fmt::Debug for Lsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lsd").finish_non_exhaustive()
    }
}

impl Lsd {
    /// Starts LSD for a session listening on `listen`, announcing TCP `port`. `Ok(None)` on
    /// loopback (see the module doc) and off Linux.
    pub fn start(
        listen: SocketAddr,
        port: u16,
        spawner: &Spawner,
    ) -> std::io::Result<Option<Self>> {
        let IpAddr::V4(ip) = listen.ip() else {
            log::debug!("lsd: off (IPv6 listen address)");
            return Ok(None);
        };
        if ip.is_loopback() {
            log::debug!("lsd: off (listening on loopback)");
            return Ok(None);
        }
        let Some((recv, send)) = sockets(ip)? else {
            return Ok(None);
        };
        let (addr, inbox) = mailbox(LSD_MAILBOX);
        let mut cookie = [0u8; 8];
        if getrandom::fill(&mut cookie).is_err() {
            cookie = fastrand::u64(..).to_le_bytes();
        }
        let cookie = cookie.iter().map(|b| format!("{b:02x}")).collect();
        let task = spawner.spawn(run(recv, send, port, cookie, inbox));
        Ok(Some(Self {
            addr,
            task: Mutex::new(Some(task)),
            spawner: spawner.clone(),
        }))
    }

    /// Announces a torrent and feeds it the peers heard of.
    pub fn add_torrent(&self, torrent: Torrent) {
        self.tell(LsdMsg::AddTorrent(torrent));
    }

    /// Forgets a torrent.
    pub fn remove_torrent(&self, info_hash: InfoHash) {
        self.tell(LsdMsg::RemoveTorrent(info_hash));
    }

    fn tell(&self, msg: LsdMsg) {
        self.addr.tell(msg, &self.spawner);
    }

    /// Stops the actor.
    pub async fn shutdown(&self) {
        self.addr.close();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            t.cancel().await;
        }
    }
}

/// The receiving socket (port 6771, shared, joined to the group on `ip`'s interface) and
/// the sending one (bound to `ip`, multicast out of its interface only, TTL 1).
#[cfg(target_os = "linux")]
fn sockets(ip: Ipv4Addr) -> std::io::Result<Option<(UdpSocket, UdpSocket)>> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddr::from(([0, 0, 0, 0], GROUP.port())))?;
    let recv = std::net::UdpSocket::from(fd);
    recv.join_multicast_v4(GROUP.ip(), &ip)?;
    recv.set_nonblocking(true)?;
    let send = std::net::UdpSocket::bind(SocketAddr::from((ip, 0)))?;
    if !ip.is_unspecified() {
        sockopt::set_ip_multicast_if(&send, &ip)?;
    }
    send.set_multicast_ttl_v4(1)?;
    // Other clients on this host hear us too; our own cookie filters us out.
    send.set_multicast_loop_v4(true)?;
    send.set_nonblocking(true)?;
    Ok(Some((
        UdpSocket::try_from(recv)?,
        UdpSocket::try_from(send)?,
    )))
}

#[cfg(not(target_os = "linux"))]
fn sockets(_ip: Ipv4Addr) -> std::io::Result<Option<(UdpSocket, UdpSocket)>> {
    log::info!("lsd: off (only supported on Linux)");
    Ok(None)
}

/// The announce of one torrent.
pub fn announce_message(info_hash: &InfoHash, port: u16, cookie: &str) -> Vec<u8> {
    format!(
        "BT-SEARCH * HTTP/1.1\r\nHost: {GROUP}\r\nPort: {port}\r\nInfohash: {}\r\ncookie: {cookie}\r\n\r\n\r\n",
        hex(info_hash)
    )
    .into_bytes()
}

fn hex(h: &InfoHash) -> String {
    h.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// An announce heard.
#[derive(Debug, PartialEq, Eq)]
pub struct Announce {
    /// The TCP port of the announcer.
    pub port: u16,
    /// The torrents, at most [`MAX_HASHES_PER_MESSAGE`].
    pub info_hashes: Vec<InfoHash>,
    /// Its cookie, if any.
    pub cookie: Option<String>,
}

/// Parses a BEP 14 message; `None` when it is not one (never panics).
pub fn parse_announce(msg: &[u8]) -> Option<Announce> {
    let text = std::str::from_utf8(msg).ok()?;
    let mut lines = text.split("\r\n");
    if lines.next()? != "BT-SEARCH * HTTP/1.1" {
        return None;
    }
    let mut port = None;
    let mut info_hashes = Vec::new();
    let mut cookie = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "port" => port = value.parse::<u16>().ok().filter(|&p| p != 0),
            "infohash" if info_hashes.len() < MAX_HASHES_PER_MESSAGE => {
                if let Some(h) = parse_hex(value) {
                    info_hashes.push(h);
                }
            }
            "cookie" => cookie = Some(value.chars().take(64).collect()),
            _ => {}
        }
    }
    Some(Announce {
        port: port?,
        info_hashes,
        cookie,
    })
}

fn parse_hex(s: &str) -> Option<InfoHash> {
    if s.len() != 40 || !s.is_ascii() {
        return None;
    }
    let mut h = [0u8; 20];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(InfoHash(h))
}

/// A torrent the actor works for.
struct Entry {
    /// Its handle.
    torrent: Torrent,
    /// When it is next announced.
    next: Instant,
    /// When it was last announced.
    last: Option<Instant>,
}

/// What woke the actor.
enum Wake {
    /// A request (`None`: closed).
    Msg(Option<LsdMsg>),
    /// A datagram.
    Received(std::io::Result<(usize, SocketAddr)>),
    /// The timer.
    Timer,
}

/// The actor.
async fn run(
    recv: UdpSocket,
    send: UdpSocket,
    port: u16,
    cookie: String,
    mut inbox: Mailbox<LsdMsg>,
) {
    let mut torrents: HashMap<InfoHash, Entry> = HashMap::new();
    // Forgotten torrents keep their last announce for a while, so a remove and re-add cannot
    // beat the per-torrent limit.
    let mut recent: HashMap<InfoHash, Instant> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut tokens = RECEIVE_BURST;
    let mut counted = Instant::now();
    loop {
        let now = Instant::now();
        for (h, e) in torrents.iter_mut() {
            if e.next > now {
                continue;
            }
            if e.torrent.is_stopped() {
                e.next = now + ANNOUNCE_EVERY;
                continue;
            }
            let msg = announce_message(h, port, &cookie);
            if let Err(e) = send.send_to(&msg, GROUP).await {
                log::debug!("lsd: announce failed: {e}");
            }
            e.last = Some(now);
            e.next = now + ANNOUNCE_EVERY;
        }
        let deadline = torrents
            .values()
            .map(|e| e.next)
            .min()
            .unwrap_or(now + ANNOUNCE_EVERY);
        let wake = future::or(
            async { Wake::Msg(inbox.recv().await) },
            future::or(
                async {
                    smol::Timer::at(deadline).await;
                    Wake::Timer
                },
                async { Wake::Received(recv.recv_from(&mut buf).await) },
            ),
        )
        .await;
        let now = Instant::now();
        match wake {
            Wake::Msg(None) => return,
            Wake::Msg(Some(LsdMsg::AddTorrent(t))) => {
                let h = t.info_hash();
                let last = recent.remove(&h);
                let next = match last {
                    Some(l) => (l + MIN_INTERVAL).max(now),
                    None => now,
                };
                torrents.insert(
                    h,
                    Entry {
                        torrent: t,
                        next,
                        last,
                    },
                );
            }
            Wake::Msg(Some(LsdMsg::RemoveTorrent(h))) => {
                if let Some(Entry { last: Some(l), .. }) = torrents.remove(&h) {
                    recent.retain(|_, at| now.saturating_duration_since(*at) < MIN_INTERVAL);
                    if recent.len() < LSD_MAILBOX * 4 {
                        recent.insert(h, l);
                    }
                }
            }
            Wake::Timer => {}
            Wake::Received(Err(e)) => log::trace!("lsd: receive: {e}"),
            Wake::Received(Ok((n, from))) => {
                tokens = (tokens
                    + now.saturating_duration_since(counted).as_secs_f64() * RECEIVE_BURST)
                    .min(RECEIVE_BURST);
                counted = now;
                if tokens < 1.0 {
                    continue;
                }
                tokens -= 1.0;
                let Some(a) = parse_announce(&buf[..n]) else {
                    continue;
                };
                if a.cookie.as_deref() == Some(cookie.as_str()) {
                    continue;
                }
                let peer = SocketAddr::new(from.ip(), a.port);
                for h in &a.info_hashes {
                    let Some(e) = torrents.get(h) else {
                        continue;
                    };
                    log::debug!("lsd: {peer} has {h}");
                    match e.torrent.addr().try_send(TorrentMsg::AddPeers(vec![peer])) {
                        Ok(()) | Err(TrySendError::Closed(_)) => {}
                        Err(TrySendError::Full(_)) => log::debug!("lsd: {h} is busy"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_round_trips() {
        let h = InfoHash([0xab; 20]);
        let msg = announce_message(&h, 6881, "c00k1e");
        let a = parse_announce(&msg).unwrap();
        assert_eq!(a.port, 6881);
        assert_eq!(a.info_hashes, vec![h]);
        assert_eq!(a.cookie.as_deref(), Some("c00k1e"));
    }

    #[test]
    fn libtorrent_style_announce_parses() {
        let msg = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 51413\r\nInfohash: 0123456789ABCDEF0123456789abcdef01234567\r\n\r\n\r\n";
        let a = parse_announce(msg).unwrap();
        assert_eq!(a.port, 51413);
        assert_eq!(a.info_hashes.len(), 1);
        assert_eq!(a.cookie, None);
    }

    #[test]
    fn garbage_and_floods_are_bounded() {
        assert_eq!(parse_announce(b""), None);
        assert_eq!(parse_announce(b"\xff\xfe"), None);
        assert_eq!(parse_announce(b"BT-SEARCH * HTTP/1.1\r\nPort: 0\r\n"), None);
        assert_eq!(
            parse_announce(b"BT-SEARCH * HTTP/1.1\r\nPort: 99999\r\n"),
            None
        );
        let mut m = String::from("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n");
        for i in 0..100 {
            m.push_str(&format!("Infohash: {i:040x}\r\n"));
        }
        m.push_str("Infohash: é123456789abcdef0123456789abcdef0123456\r\n");
        assert_eq!(
            parse_announce(m.as_bytes()).unwrap().info_hashes.len(),
            MAX_HASHES_PER_MESSAGE
        );
    }
}
