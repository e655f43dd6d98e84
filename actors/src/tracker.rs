//! The tracker client actor: announces one torrent to its trackers and hands the peers it
//! learns to the torrent.
//!
//! # Behaviour
//! - Tiers follow BEP 12: each tier is shuffled once at start; a round tries the trackers of
//!   the first tier in order, then the next tier, and stops at the first that answers, which
//!   moves to the front of its tier.
//! - The first announce to a tracker carries `started`; later ones carry nothing, or
//!   `completed` once after [`TrackerClient::completed`]; [`TrackerClient::stop`] sends
//!   `stopped` to every tracker that saw `started`, within [`Timing::stop_timeout`].
//! - After a successful round the next comes after the tracker's interval (at least its
//!   `min interval` and [`Timing::min_announce_interval`]), or after the user's own
//!   [`Timing::announce_interval`] when set, whatever the tracker asks (as aria2's
//!   `--bt-tracker-interval` and rqbit's `-i`). After a failed round the next
//!   comes after an exponential, jittered backoff from [`Timing::retry_base`] up to
//!   [`Timing::retry_max`]. Every failure is logged with `log` and kept for
//!   [`TrackerClient::status`].
//! - HTTP and HTTPS go through `ureq` (blocking; rustls) on smol's
//!   blocking pool, bounded by [`Timing::request_timeout`] and [`MAX_BODY`]. UDP (BEP 15)
//!   goes through a smol `UdpSocket`, with retransmission after `udp_retransmit_base * 2^n`.
//!   Other schemes are logged and skipped.
//! - Peers from each reply are sent on the torrent's bounded channel; when the torrent drops
//!   its receiver, the actor ends.
//!
//! # Examples
//! ```no_run
//! use std::sync::Arc;
//! use shoal_actors::tracker::{TrackerClient, TrackerConfig, TransferStats};
//! use shoal_engine::{InfoHash, PeerId};
//!
//! smol::block_on(async {
//!     let config = TrackerConfig::new(
//!         vec![vec!["http://127.0.0.1:6969/announce".into()]],
//!         InfoHash([1; 20]),
//!         PeerId::generate(),
//!         6881,
//!     );
//!     let stats = Arc::new(TransferStats::new(1 << 20));
//!     let (tx, rx) = async_channel::bounded(4);
//!     let client = TrackerClient::spawn(config, stats, tx);
//!     let peers = rx.recv().await.unwrap();
//!     println!("{} peers", peers.len());
//!     client.stop().await;
//! });
//! ```

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::future;
use shoal_engine::tracker::{
    parse_announce_response, parse_scrape_response, scrape_request_url, scrape_url,
    AnnounceRequest, AnnounceResponse, Event, ScrapeResponse, TrackerError,
};
use shoal_engine::{InfoHash, PeerId};
use smol::Timer;

mod udp;

/// The command mailbox holds a few messages: only `completed` and `stop` travel on it, and the
/// actor listens to it even while an announce is in flight.
const COMMAND_CAPACITY: usize = 4;

/// The largest HTTP tracker reply read, so a hostile tracker cannot make us allocate without
/// bound: 2 MiB, room for 350,000 compact peers.
pub const MAX_BODY: u64 = 2 * 1024 * 1024;

/// Transfer counters shared with the torrent, read at each announce. Plain atomics: the
/// torrent adds, the tracker actor reads, nobody waits.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Bytes uploaded since the session started.
    pub uploaded: AtomicU64,
    /// Bytes downloaded since the session started.
    pub downloaded: AtomicU64,
    /// Bytes still needed; 0 for a seeder.
    pub left: AtomicU64,
}

impl TransferStats {
    /// Counters at zero, with `left` bytes still needed.
    pub fn new(left: u64) -> Self {
        Self {
            left: AtomicU64::new(left),
            ..Default::default()
        }
    }
}

/// The timing of the actor. The defaults suit the internet; tests shorten them.
#[derive(Clone, Debug)]
pub struct Timing {
    /// The least time between regular announces, whatever interval a tracker asks for.
    pub min_announce_interval: Duration,
    /// The user's own re-announce period: when set, it replaces the tracker's `interval` and
    /// `min interval` and [`min_announce_interval`](Self::min_announce_interval) (the user
    /// asked for it); `None` honours the tracker.
    pub announce_interval: Option<Duration>,
    /// The first wait after a failed round; it doubles with each further failure.
    pub retry_base: Duration,
    /// The longest wait after failed rounds.
    pub retry_max: Duration,
    /// The bound on one HTTP request, from connecting to the last byte of the body.
    pub request_timeout: Duration,
    /// The first UDP retransmission comes after this; each next one after twice as long.
    pub udp_retransmit_base: Duration,
    /// Retransmissions of one UDP request before the tracker counts as failed.
    pub udp_max_retransmits: u32,
    /// The bound on sending `stopped` to every tracker at shutdown.
    pub stop_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            min_announce_interval: Duration::from_secs(30),
            announce_interval: None,
            retry_base: Duration::from_secs(15),
            retry_max: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(15),
            // BEP 15 retransmits after 15 * 2^n s for n up to 8 (over an hour); after three
            // (15 + 30 + 60 + 120 s) we call the tracker failed and the round backoff takes
            // over, so another tier gets its chance sooner.
            udp_retransmit_base: Duration::from_secs(15),
            udp_max_retransmits: 3,
            stop_timeout: Duration::from_secs(5),
        }
    }
}

/// What the actor needs to know about the torrent and about us.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Announce URLs in tiers (the `announce-list` of BEP 12, or one tier of `announce`).
    pub tiers: Vec<Vec<String>>,
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: PeerId,
    /// The port we accept peers on.
    pub port: u16,
    /// How many peers to ask for.
    pub numwant: u32,
    /// Intervals, timeouts and backoff.
    pub timing: Timing,
    /// Contact only trackers on this machine (a loopback IP address or `localhost`); the others
    /// are listed with an error and never contacted, not even resolved. A session listening on
    /// a loopback address sets it: such a session never leaves the machine.
    pub local_only: bool,
}

impl TrackerConfig {
    /// A configuration asking for 50 peers, with the default [`Timing`].
    pub fn new(tiers: Vec<Vec<String>>, info_hash: InfoHash, peer_id: PeerId, port: u16) -> Self {
        Self {
            tiers,
            info_hash,
            peer_id,
            port,
            numwant: 50,
            timing: Timing::default(),
            local_only: false,
        }
    }
}

/// Whether `url` names this machine: its host is a loopback IP address or `localhost`. Nothing
/// is resolved: any other name counts as remote.
pub(crate) fn url_is_local(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the actor knows of one tracker, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerStatus {
    /// The announce URL.
    pub url: String,
    /// Its tier (0 is the first).
    pub tier: usize,
    /// When it last answered an announce.
    pub last_success: Option<Instant>,
    /// Why its last announce failed, if it did.
    pub last_error: Option<String>,
    /// Failed announces since its last success.
    pub consecutive_failures: u32,
    /// Successful announces.
    pub announces: u32,
    /// Seeders in its last reply.
    pub seeders: Option<u32>,
    /// Leechers in its last reply.
    pub leechers: Option<u32>,
}

/// Why one announce (or scrape) failed.
#[derive(Debug)]
pub enum AnnounceError {
    /// The URL's scheme is neither `http` nor `udp`, or the URL cannot be used.
    BadUrl(String),
    /// The HTTP exchange failed before a status came back: refused, reset, DNS, ...
    Http(String),
    /// The tracker answered with an HTTP error status (and, maybe, a failure reason).
    Status(u16, Option<String>),
    /// The reply is larger than [`MAX_BODY`].
    BodyTooLarge,
    /// No answer in time.
    Timeout,
    /// A socket error (UDP).
    Io(std::io::Error),
    /// The tracker refused, or its reply is malformed.
    Tracker(TrackerError),
}

impl fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUrl(why) => write!(f, "unusable tracker url: {why}"),
            Self::Http(why) => write!(f, "http request failed: {why}"),
            Self::Status(code, None) => write!(f, "http status {code}"),
            Self::Status(code, Some(reason)) => {
                write!(f, "http status {code}: tracker refused: {reason}")
            }
            Self::BodyTooLarge => write!(f, "reply larger than {MAX_BODY} bytes"),
            Self::Timeout => write!(f, "no answer in time"),
            Self::Io(e) => write!(f, "socket error: {}", e.to_string().to_lowercase()),
            Self::Tracker(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AnnounceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Tracker(e) => Some(e),
            _ => None,
        }
    }
}

impl From<TrackerError> for AnnounceError {
    fn from(e: TrackerError) -> Self {
        Self::Tracker(e)
    }
}

/// The messages of the actor's mailbox.
#[derive(Debug)]
enum Command {
    /// The download finished: announce `completed` now.
    Completed,
    /// Announce `stopped` and end.
    Stop,
}

/// The handle of a tracker client actor. Dropping it cancels the actor without announcing
/// `stopped`; call [`TrackerClient::stop`] for a clean exit.
#[derive(Debug)]
pub struct TrackerClient {
    /// The actor's task, kept so that it lives as long as the handle.
    task: smol::Task<()>,
    /// The actor's mailbox.
    commands: Sender<Command>,
    /// The status of each tracker, written by the actor, read by [`TrackerClient::status`].
    status: Arc<Mutex<Vec<TrackerStatus>>>,
    /// How long `stop` may take.
    stop_timeout: Duration,
}

impl TrackerClient {
    /// Starts the actor on smol's global executor; it announces `started` at once. A session's
    /// torrents use [`spawn_on`](Self::spawn_on), so that their work runs on the session's
    /// threads.
    pub fn spawn(
        config: TrackerConfig,
        stats: Arc<TransferStats>,
        peers: Sender<Vec<SocketAddr>>,
    ) -> TrackerClient {
        Self::start(config, stats, peers, smol::spawn)
    }

    /// Starts the actor on `spawner`'s executor; it announces `started` at once.
    pub fn spawn_on(
        spawner: &crate::runtime::Spawner,
        config: TrackerConfig,
        stats: Arc<TransferStats>,
        peers: Sender<Vec<SocketAddr>>,
    ) -> TrackerClient {
        Self::start(config, stats, peers, |fut| spawner.spawn(fut))
    }

    fn start(
        config: TrackerConfig,
        stats: Arc<TransferStats>,
        peers: Sender<Vec<SocketAddr>>,
        spawn: impl FnOnce(futures_lite::future::Boxed<()>) -> smol::Task<()>,
    ) -> TrackerClient {
        let (commands, mailbox) = async_channel::bounded(COMMAND_CAPACITY);
        let stop_timeout = config.timing.stop_timeout;
        let actor = Actor::new(config, stats, peers);
        let status = Arc::clone(&actor.status);
        let task = spawn(Box::pin(actor.run(mailbox)));
        TrackerClient {
            task,
            commands,
            status,
            stop_timeout,
        }
    }

    /// Tells the trackers the download completed (sent once, at once).
    pub async fn completed(&self) {
        // An error means the actor already ended: nobody is left to tell.
        let _ = self.commands.send(Command::Completed).await;
    }

    /// Announces `stopped` (within the stop timeout) and ends the actor.
    pub async fn stop(self) {
        let _ = self.commands.send(Command::Stop).await;
        let bound = async {
            // The actor bounds its own `stopped` round; this is a last resort.
            Timer::after(self.stop_timeout + Duration::from_secs(1)).await;
            log::warn!("tracker actor did not stop in time; cancelling it");
        };
        future::or(self.task, bound).await;
    }

    /// A snapshot of what the actor knows of each tracker, in the order of the configuration.
    pub fn status(&self) -> Vec<TrackerStatus> {
        lock(&self.status).clone()
    }
}

/// Locks a mutex, carrying on after a panic elsewhere (the status is display data).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How to reach a tracker.
#[derive(Clone, Debug)]
enum Proto {
    /// An `http://` URL.
    Http,
    /// A `udp://host:port` URL; holds `host:port`.
    Udp(String),
}

/// One tracker as the actor sees it.
#[derive(Debug)]
struct Tracker {
    /// The announce URL.
    url: String,
    /// How to reach it.
    proto: Proto,
    /// Whether it acknowledged our `started`.
    started: bool,
    /// The `tracker id` it gave, sent back.
    tracker_id: Option<String>,
    /// Its UDP connection id, if any.
    udp: Option<udp::UdpConnection>,
}

/// Reads a URL's scheme; an error for schemes we cannot announce to, or a udp URL without a port.
fn proto_of(url: &str) -> Result<Proto, AnnounceError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") {
        Ok(Proto::Http)
    } else if lower.starts_with("udp://") {
        let rest = &url["udp://".len()..];
        let host_port = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
                Ok(Proto::Udp(host_port.to_string()))
            }
            _ => Err(AnnounceError::BadUrl(format!(
                "{url}: udp url needs host:port"
            ))),
        }
    } else {
        Err(AnnounceError::BadUrl(format!(
            "{url}: only http:// and udp:// are supported"
        )))
    }
}

/// How a round of announces ended.
enum RoundEnd {
    /// Announce again after this long.
    Next(Duration),
    /// The torrent dropped its peer receiver: end.
    PeersClosed,
}

/// The actor's state.
struct Actor {
    /// Trackers by tier, each tier in the order to try.
    tiers: Vec<Vec<Tracker>>,
    /// The torrent.
    info_hash: InfoHash,
    /// Our peer id.
    peer_id: PeerId,
    /// Our listening port.
    port: u16,
    /// Peers asked for.
    numwant: u32,
    /// Our announce key, fixed for the session.
    key: u32,
    /// Timeouts and intervals.
    timing: Timing,
    /// The torrent's counters.
    stats: Arc<TransferStats>,
    /// Where learned peers go.
    peers: Sender<Vec<SocketAddr>>,
    /// Per-tracker status for display.
    status: Arc<Mutex<Vec<TrackerStatus>>>,
    /// The HTTP client.
    agent: ureq::Agent,
    /// `completed` was asked for and not yet acknowledged.
    completed_pending: bool,
    /// `completed` was asked for once already.
    completed_asked: bool,
    /// Failed rounds in a row, for the backoff.
    failures: u32,
}

impl Actor {
    fn new(
        config: TrackerConfig,
        stats: Arc<TransferStats>,
        peers: Sender<Vec<SocketAddr>>,
    ) -> Self {
        let mut status = Vec::new();
        let mut tiers = Vec::new();
        for (tier_index, urls) in config.tiers.iter().enumerate() {
            let mut tier = Vec::new();
            for url in urls {
                let url = url.trim().to_string();
                let mut st = TrackerStatus {
                    url: url.clone(),
                    tier: tier_index,
                    last_success: None,
                    last_error: None,
                    consecutive_failures: 0,
                    announces: 0,
                    seeders: None,
                    leechers: None,
                };
                if config.local_only && !url_is_local(&url) {
                    log::info!("not contacting tracker {url}: this session stays on loopback");
                    st.last_error = Some(
                        "not contacted: this session listens on loopback and stays on this machine"
                            .to_string(),
                    );
                    status.push(st);
                    continue;
                }
                match proto_of(&url) {
                    Ok(proto) => tier.push(Tracker {
                        url,
                        proto,
                        started: false,
                        tracker_id: None,
                        udp: None,
                    }),
                    Err(e) => {
                        log::warn!("skipping tracker: {e}");
                        st.last_error = Some(e.to_string());
                    }
                }
                status.push(st);
            }
            // BEP 12: shuffle each tier once, at start.
            fastrand::shuffle(&mut tier);
            if !tier.is_empty() {
                tiers.push(tier);
            }
        }
        let timeout = config.timing.request_timeout;
        let agent = http_agent(timeout);
        Actor {
            tiers,
            info_hash: config.info_hash,
            peer_id: config.peer_id,
            port: config.port,
            numwant: config.numwant,
            key: fastrand::u32(..),
            timing: config.timing,
            stats,
            peers,
            status: Arc::new(Mutex::new(status)),
            agent,
            completed_pending: false,
            completed_asked: false,
            failures: 0,
        }
    }

    /// The actor's loop: announce when due or asked, until stopped or orphaned.
    async fn run(mut self, mailbox: Receiver<Command>) {
        if self.tiers.is_empty() {
            log::warn!("torrent {}: no usable tracker", self.info_hash);
        }
        let mut next = Instant::now();
        'actor: loop {
            // Wait until the next announce is due, or a command comes.
            let woken = future::or(
                async {
                    Timer::at(next).await;
                    None
                },
                async { Some(mailbox.recv().await) },
            )
            .await;
            let announce_now = match woken {
                None => true,
                Some(Ok(Command::Completed)) => self.mark_completed(),
                Some(Ok(Command::Stop)) | Some(Err(_)) => break,
            };
            if !announce_now {
                continue;
            }
            if self.tiers.is_empty() {
                next = Instant::now() + Duration::from_secs(24 * 3600);
                continue;
            }
            // A round of announces, still listening to the mailbox: `stop` cuts it short.
            let mut completed = false;
            let mut stop = false;
            let end = {
                let round = self.round();
                futures_lite::pin!(round);
                loop {
                    let step = future::or(async { Ok(round.as_mut().await) }, async {
                        Err(mailbox.recv().await)
                    });
                    match step.await {
                        Ok(end) => break Some(end),
                        Err(Ok(Command::Completed)) => completed = true,
                        Err(Ok(Command::Stop)) | Err(Err(_)) => {
                            stop = true;
                            break None;
                        }
                    }
                }
            };
            match end {
                Some(RoundEnd::Next(wait)) => next = Instant::now() + wait,
                Some(RoundEnd::PeersClosed) => {
                    log::debug!(
                        "torrent {}: peer channel closed, tracker actor ends",
                        self.info_hash
                    );
                    break 'actor;
                }
                None => {}
            }
            if stop {
                break;
            }
            if completed && self.mark_completed() {
                next = Instant::now();
            }
        }
        self.announce_stopped().await;
    }

    /// Records a `completed` request; false if one was asked for before.
    fn mark_completed(&mut self) -> bool {
        if self.completed_asked {
            return false;
        }
        self.completed_asked = true;
        self.completed_pending = true;
        true
    }

    fn request(&self, event: Option<Event>, tracker_id: Option<String>) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            port: self.port,
            uploaded: self.stats.uploaded.load(Ordering::Relaxed),
            downloaded: self.stats.downloaded.load(Ordering::Relaxed),
            left: self.stats.left.load(Ordering::Relaxed),
            event,
            numwant: Some(self.numwant),
            key: self.key,
            tracker_id,
        }
    }

    /// One round: the first tracker (by tier, then by order) that answers wins.
    async fn round(&mut self) -> RoundEnd {
        for t in 0..self.tiers.len() {
            for i in 0..self.tiers[t].len() {
                let tracker = &self.tiers[t][i];
                let event = if !tracker.started {
                    Some(Event::Started)
                } else if self.completed_pending {
                    Some(Event::Completed)
                } else {
                    None
                };
                let req = self.request(event, tracker.tracker_id.clone());
                let tracker = &mut self.tiers[t][i];
                match announce_to(&self.agent, &self.timing, tracker, &req).await {
                    Ok(resp) => {
                        log::debug!(
                            "tracker {}: {} peers, interval {} s{}",
                            tracker.url,
                            resp.peers.len(),
                            resp.interval,
                            event.map(|e| format!(", event {e}")).unwrap_or_default()
                        );
                        if let Some(w) = &resp.warning {
                            log::warn!("tracker {}: warning: {w}", tracker.url);
                        }
                        if event == Some(Event::Started) {
                            tracker.started = true;
                        }
                        if resp.tracker_id.is_some() {
                            tracker.tracker_id.clone_from(&resp.tracker_id);
                        }
                        if event == Some(Event::Completed)
                            || (event == Some(Event::Started) && req.left == 0)
                        {
                            self.completed_pending = false;
                        }
                        self.record(&self.tiers[t][i].url, Ok(&resp));
                        // BEP 12: a tracker that answers moves to the front of its tier.
                        let winner = self.tiers[t].remove(i);
                        self.tiers[t].insert(0, winner);
                        self.failures = 0;
                        let wait = next_announce(&self.timing, &resp);
                        if !resp.peers.is_empty() && self.peers.send(resp.peers).await.is_err() {
                            return RoundEnd::PeersClosed;
                        }
                        return RoundEnd::Next(wait);
                    }
                    Err(e) => {
                        log::warn!("tracker {}: announce failed: {e}", tracker.url);
                        let url = tracker.url.clone();
                        self.record(&url, Err(&e));
                    }
                }
            }
        }
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(&self.timing, self.failures);
        log::info!(
            "torrent {}: no tracker answered; next try in {:.1} s",
            self.info_hash,
            wait.as_secs_f64()
        );
        RoundEnd::Next(wait)
    }

    /// Updates the status of the tracker at `url` after an announce.
    fn record(&self, url: &str, result: Result<&AnnounceResponse, &AnnounceError>) {
        let mut status = lock(&self.status);
        let Some(st) = status.iter_mut().find(|s| s.url == url) else {
            return;
        };
        match result {
            Ok(resp) => {
                st.last_success = Some(Instant::now());
                st.last_error = None;
                st.consecutive_failures = 0;
                st.announces = st.announces.saturating_add(1);
                st.seeders = resp.complete;
                st.leechers = resp.incomplete;
            }
            Err(e) => {
                st.last_error = Some(e.to_string());
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
            }
        }
    }

    /// Sends `stopped` to every tracker that saw `started`, all within the stop timeout.
    async fn announce_stopped(&mut self) {
        let (info_hash, stop_timeout) = (self.info_hash, self.timing.stop_timeout);
        let work = async {
            for t in 0..self.tiers.len() {
                for i in 0..self.tiers[t].len() {
                    if !self.tiers[t][i].started {
                        continue;
                    }
                    let req =
                        self.request(Some(Event::Stopped), self.tiers[t][i].tracker_id.clone());
                    let tracker = &mut self.tiers[t][i];
                    match announce_to(&self.agent, &self.timing, tracker, &req).await {
                        Ok(_) => log::debug!("tracker {}: stopped", tracker.url),
                        Err(e) => {
                            log::warn!("tracker {}: stopped announce failed: {e}", tracker.url)
                        }
                    }
                    tracker.started = false;
                }
            }
        };
        let bound = async {
            Timer::after(stop_timeout).await;
            log::warn!("torrent {info_hash}: stopped announces cut short after {stop_timeout:?}");
        };
        future::or(work, bound).await;
    }
}

/// The wait after `failures` failed rounds in a row: doubling from the base, capped, with
/// +/- 25 % of jitter so that many clients do not retry in step.
/// The wait before the next regular announce after `resp`: the user's period when set,
/// otherwise the tracker's interval, never under its `min interval` nor
/// [`Timing::min_announce_interval`].
fn next_announce(timing: &Timing, resp: &AnnounceResponse) -> Duration {
    if let Some(user) = timing.announce_interval {
        return user;
    }
    let interval = resp.interval.max(resp.min_interval.unwrap_or(0));
    Duration::from_secs(u64::from(interval)).max(timing.min_announce_interval)
}

fn backoff(timing: &Timing, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    let wait = timing
        .retry_base
        .saturating_mul(1u32 << doublings)
        .min(timing.retry_max);
    wait.mul_f64(0.75 + fastrand::f64() * 0.5)
}

/// One announce to one tracker.
async fn announce_to(
    agent: &ureq::Agent,
    timing: &Timing,
    tracker: &mut Tracker,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, AnnounceError> {
    match tracker.proto.clone() {
        Proto::Http => {
            let body = http_get(agent, req.http_url(&tracker.url), timing.request_timeout).await?;
            Ok(parse_announce_response(&body)?)
        }
        Proto::Udp(host_port) => udp::announce(&host_port, &mut tracker.udp, timing, req).await,
    }
}

/// One announce to `url`, outside any actor: HTTP or UDP by the URL's scheme.
pub async fn announce_once(
    url: &str,
    req: &AnnounceRequest,
    timing: &Timing,
) -> Result<AnnounceResponse, AnnounceError> {
    let mut tracker = Tracker {
        url: url.to_string(),
        proto: proto_of(url)?,
        started: false,
        tracker_id: None,
        udp: None,
    };
    let agent = http_agent(timing.request_timeout);
    announce_to(&agent, timing, &mut tracker, req).await
}

/// Asks the tracker at `announce_url` for the counts of `info_hashes` (BEP 48 for HTTP, the
/// scrape action of BEP 15 for UDP).
pub async fn scrape(
    announce_url: &str,
    info_hashes: &[InfoHash],
    timing: &Timing,
) -> Result<ScrapeResponse, AnnounceError> {
    match proto_of(announce_url)? {
        Proto::Http => {
            let url =
                scrape_url(announce_url).ok_or(AnnounceError::Tracker(TrackerError::NoScrape))?;
            let agent = http_agent(timing.request_timeout);
            let body = http_get(
                &agent,
                scrape_request_url(&url, info_hashes),
                timing.request_timeout,
            )
            .await?;
            Ok(parse_scrape_response(&body)?)
        }
        Proto::Udp(host_port) => udp::scrape(&host_port, &mut None, timing, info_hashes).await,
    }
}

/// The HTTP client for trackers: no idle connections kept (a tracker is asked once per
/// interval), every step bounded by `timeout`.
fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .max_idle_connections(0)
        .timeout_connect(timeout)
        .timeout(timeout)
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A GET on smol's blocking pool, bounded in time and in body size.
async fn http_get(
    agent: &ureq::Agent,
    url: String,
    timeout: Duration,
) -> Result<Vec<u8>, AnnounceError> {
    let agent = agent.clone();
    let fetch = smol::unblock(move || fetch_blocking(&agent, &url));
    // ureq enforces the timeout itself, except during name resolution; this is the backstop.
    let backstop = async {
        Timer::after(timeout + Duration::from_secs(2)).await;
        Err(AnnounceError::Timeout)
    };
    future::or(fetch, backstop).await
}

fn fetch_blocking(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, AnnounceError> {
    // One request per interval: keeping the connection open would only hold one of the
    // tracker's workers (the embedded tracker's among them) for nothing.
    match agent.get(url).set("Connection", "close").call() {
        Ok(resp) => read_body(resp),
        Err(ureq::Error::Status(code, resp)) => {
            // Some trackers give their failure reason with an error status.
            let reason = match read_body(resp).map(|b| parse_announce_response(&b)) {
                Ok(Err(TrackerError::Failure(reason))) => Some(reason),
                _ => None,
            };
            Err(AnnounceError::Status(code, reason))
        }
        Err(ureq::Error::Transport(t)) => Err(transport_error(&t)),
    }
}

/// A short, lowercase description of a transport error (ureq's own names the whole URL).
fn transport_error(t: &ureq::Transport) -> AnnounceError {
    use std::error::Error as _;
    let mut source = t.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) {
                return AnnounceError::Timeout;
            }
            return AnnounceError::Http(io.to_string().to_lowercase());
        }
        source = e.source();
    }
    let kind = t.kind().to_string().to_lowercase();
    match t.message() {
        Some(m) => AnnounceError::Http(format!("{kind}: {}", m.to_lowercase())),
        None => AnnounceError::Http(kind),
    }
}

fn read_body(resp: ureq::Response) -> Result<Vec<u8>, AnnounceError> {
    if let Some(len) = resp
        .header("Content-Length")
        .and_then(|l| l.trim().parse::<u64>().ok())
    {
        if len > MAX_BODY {
            return Err(AnnounceError::BodyTooLarge);
        }
    }
    let mut body = Vec::new();
    let read = resp.into_reader().take(MAX_BODY + 1).read_to_end(&mut body);
    match read {
        Ok(_) if body.len() as u64 > MAX_BODY => Err(AnnounceError::BodyTooLarge),
        Ok(_) => Ok(body),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Err(AnnounceError::Timeout)
        }
        Err(e) => Err(AnnounceError::Http(format!("reading the reply: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_urls() {
        for url in [
            "http://127.0.0.1:6969/announce",
            "udp://127.0.0.2:80",
            "http://localhost/announce",
            "HTTP://LocalHost:8080/a?b=c",
            "http://[::1]:6969/announce",
            "http://user@127.0.0.1/announce",
        ] {
            assert!(url_is_local(url), "{url}");
        }
        for url in [
            "http://tracker.example.org:6969/announce",
            "udp://10.0.0.1:80",
            "http://[2001:db8::1]/announce",
            "http://127.0.0.1.example.org/announce",
            "http://localhost.example.org/announce",
            "http://127.0.0.1@evil.example/announce",
            "127.0.0.1:80",
        ] {
            assert!(!url_is_local(url), "{url}");
        }
    }

    #[test]
    fn schemes() {
        assert!(matches!(
            proto_of("http://t.invalid/announce"),
            Ok(Proto::Http)
        ));
        assert!(matches!(
            proto_of("HTTP://t.invalid/announce"),
            Ok(Proto::Http)
        ));
        assert!(
            matches!(proto_of("udp://t.invalid:80/announce"), Ok(Proto::Udp(h)) if h == "t.invalid:80")
        );
        assert!(matches!(proto_of("udp://[::1]:80"), Ok(Proto::Udp(h)) if h == "[::1]:80"));
        assert!(proto_of("udp://t.invalid").is_err());
        assert!(proto_of("udp://t.invalid:0").is_err());
        assert!(proto_of("https://t.invalid/announce").is_err());
        assert!(proto_of("wss://t.invalid/announce").is_err());
    }

    #[test]
    fn the_user_interval_overrides_the_tracker_and_the_default_honours_it() {
        let resp = |interval, min_interval| AnnounceResponse {
            interval,
            min_interval,
            peers: Vec::new(),
            complete: None,
            incomplete: None,
            warning: None,
            tracker_id: None,
        };
        let default = Timing::default();
        // The tracker's interval, never under its own min interval nor our floor.
        assert_eq!(
            next_announce(&default, &resp(1800, None)),
            Duration::from_secs(1800)
        );
        assert_eq!(
            next_announce(&default, &resp(60, Some(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            next_announce(&default, &resp(5, None)),
            default.min_announce_interval
        );
        // The user's period wins both ways, even under the tracker's min interval.
        let user = Timing {
            announce_interval: Some(Duration::from_secs(2)),
            ..Timing::default()
        };
        assert_eq!(
            next_announce(&user, &resp(1800, Some(900))),
            Duration::from_secs(2)
        );
        let slow = Timing {
            announce_interval: Some(Duration::from_secs(7200)),
            ..Timing::default()
        };
        assert_eq!(
            next_announce(&slow, &resp(60, None)),
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let timing = Timing {
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(100),
            ..Timing::default()
        };
        for (failures, base) in [
            (1, 10.0),
            (2, 20.0),
            (3, 40.0),
            (4, 80.0),
            (5, 100.0),
            (50, 100.0),
        ] {
            let w = backoff(&timing, failures).as_secs_f64();
            assert!(w >= base * 0.75 && w <= base * 1.25, "{failures}: {w}");
        }
    }
}
