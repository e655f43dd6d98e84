//! Web seeds (BEP 19, `url-list`): HTTP servers holding the torrent's files, fetched from with
//! range requests, alongside peers, as if each were a peer that has every piece.
//!
//! # Shape
//!
//! One task per web seed of a torrent, started and stopped by the torrent actor
//! ([`WebSeeds`]). The task talks to the picker exactly as a peer does: `Join` (under an
//! address of its own, [`seed_addr`], in the IPv6 discard prefix, which no peer can have), a full
//! `Bitfield`, then `Pick`, `Blocks` (with the next pick folded in), `Release`, `Leave`. So the
//! picker stays the one owner of who fetches what, and the blocks a web seed brings take the
//! peers' path: assembled by the picker, hashed from memory, written, offered with HAVE.
//!
//! A grant (at most [`GRANT_MAX_BYTES`], one grant in flight per seed, at most [`MAX_RUNNING`]
//! seeds of a torrent at once) is sorted into runs of
//! contiguous torrent bytes ([`plan`]); each run is cut at file boundaries and each piece of it
//! is one `GET` with a `Range` header to that file's URL ([`file_urls`]). The requests run on
//! smol's blocking pool through `ureq`; a response is read up to the bytes asked, never more.
//!
//! # Failures
//!
//! What an answer means is decided by [`classify`] (pure): 206 with the range asked is data; 200
//! is data only for a range starting at 0 (the start of the body is what we asked), else the
//! server ignores ranges and the seed is disabled; 429 and 503 wait for `Retry-After`; other
//! 5xx and network errors back off exponentially ([`Health`]); 4xx (404 and the like) disable
//! the seed. After [`MAX_FAILURES`] failures in a row the seed is disabled too. A failed
//! grant's blocks are released to the picker at once, so peers fetch them meanwhile. A web
//! seed whose data fails the hash is struck by the picker like a peer, but banned at the first
//! strike ([`is_seed_addr`]): a server serves the same bytes every time. Every time a seed is
//! disabled, one warning says why.

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use shoal_engine::bitfield::Bitfield;
use shoal_engine::lengths::{BlockInfo, Lengths, BLOCK_LEN};
use shoal_engine::metainfo::{Info, Metainfo};
use shoal_engine::picker::PeerKey;
use shoal_engine::rate::Rate;
use shoal_engine::storage::Layout;

use crate::buffers::{Block, BlockPool};
use crate::picker::{PeerNote, PickRequest, PickerMsg, PEER_NOTES};
use crate::runtime::{Addr, Spawner};
use crate::shared::Shared;
use crate::torrent::PeerInfo;

/// Bytes asked of the picker at a time, at least: one grant is fetched before the next is
/// asked for, so a grant must be large enough to keep an HTTP connection busy past its round
/// trip (two pieces, or this much for small pieces).
pub const GRANT_MIN_BYTES: u64 = 1024 * 1024;

/// Bytes asked of the picker at a time, at most: they are held in memory while they arrive
/// (twice, briefly, while they are cut into blocks; the picker's disk budget counts them once
/// delivered), so large pieces are fetched a part at a time.
pub const GRANT_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Web seeds of one torrent fetching at once; the others of its `url-list` wait for one to be
/// given up. Bounds what a torrent's web seeds hold in memory (this many grants) and the
/// blocking threads they take, whatever the file lists.
pub const MAX_RUNNING: usize = 4;

/// Failures in a row after which a web seed is given up (with backoff: about a minute).
pub const MAX_FAILURES: u32 = 5;

/// The first wait after a failure; it doubles with each failure in a row.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);

/// The longest wait after a failure without `Retry-After`.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The longest `Retry-After` honoured: a server asking for more is given up.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long connecting to a web seed may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a web seed may send nothing while we wait for its answer or its body.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the torrent waits for its web seeds' tasks to leave the picker when it stops them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Bytes kept as they are in a URL path segment (RFC 3986 unreserved); everything else,
/// `/` included, is percent-encoded, so a file name cannot change the path's structure.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The address a torrent's `index`-th web seed has in the picker (for blame and events): in
/// `100::/64`, the IPv6 discard prefix (RFC 6666), which no peer can connect from.
pub fn seed_addr(index: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, index.wrapping_add(1)),
        0,
        0,
        0,
    ))
}

/// Whether `addr` is a web seed's ([`seed_addr`]).
pub fn is_seed_addr(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(a) if a.ip().segments()[..4] == [0x100, 0, 0, 0])
}

/// The URL of each file of the torrent at the web seed `base` (BEP 19): for a single file, a
/// base ending in `/` gets the torrent's name appended, any other base is the file itself; for
/// several files, the base (with a `/` added when it lacks one) gets the name and the file's
/// path, each component percent-encoded.
pub fn file_urls(base: &str, info: &Info) -> Vec<String> {
    let encode = |c: &String| utf8_percent_encode(c, SEGMENT).to_string();
    if !info.multi_file {
        let url = if base.ends_with('/') {
            format!("{base}{}", encode(&info.name))
        } else {
            base.to_string()
        };
        return vec![url];
    }
    let base = if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    };
    info.files
        .iter()
        .map(|f| {
            let path: Vec<String> = f.path.iter().map(encode).collect();
            format!("{base}{}", path.join("/"))
        })
        .collect()
}

/// Whether a `url-list` entry is one we fetch from: `http://` or `https://` (FTP is not
/// supported).
pub fn is_supported(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// How many blocks one pick of a web seed asks for (see [`GRANT_MIN_BYTES`]).
fn grant_blocks(lengths: &Lengths) -> usize {
    let bytes = (2 * u64::from(lengths.piece_length())).clamp(GRANT_MIN_BYTES, GRANT_MAX_BYTES);
    (bytes / u64::from(BLOCK_LEN)) as usize
}

/// A run of contiguous torrent bytes, fetched with one request per file it touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Where it starts in the torrent.
    pub offset: u64,
    /// Its length.
    pub len: usize,
    /// How many of the (sorted) granted blocks it covers.
    pub blocks: usize,
}

/// Sorts a grant's blocks by their place in the torrent and groups them into runs.
pub fn plan(lengths: &Lengths, blocks: &mut [BlockInfo]) -> Vec<Run> {
    blocks.sort_unstable_by_key(|b| (b.piece, b.begin));
    let mut runs: Vec<Run> = Vec::new();
    for b in blocks.iter() {
        let offset = lengths.piece_offset(b.piece) + u64::from(b.begin);
        match runs.last_mut() {
            Some(r) if r.offset + r.len as u64 == offset => {
                r.len += b.len as usize;
                r.blocks += 1;
            }
            _ => runs.push(Run {
                offset,
                len: b.len as usize,
                blocks: 1,
            }),
        }
    }
    runs
}

/// Why a fetch failed, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// Try again later: after the server's `Retry-After` if it gave one, else after a backoff.
    Retry {
        /// The server's `Retry-After`.
        after: Option<Duration>,
        /// What happened, for the log.
        why: String,
    },
    /// This server will not serve us: disable the seed.
    Fatal(String),
}

/// What to do with a response, from its status and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The body starts with the bytes asked: read exactly that many.
    Data,
    /// It failed.
    Failed(FetchError),
}

/// What a response to `Range: bytes=start-(start+len-1)` means (see the module's doc).
pub fn classify(
    status: u16,
    start: u64,
    len: u64,
    content_range: Option<&str>,
    retry_after: Option<&str>,
) -> Answer {
    let fatal = |why: String| Answer::Failed(FetchError::Fatal(why));
    let retry =
        |after: Option<Duration>, why: String| Answer::Failed(FetchError::Retry { after, why });
    match status {
        206 => {
            let end = start + len - 1;
            match content_range.map(parse_content_range) {
                None => Answer::Data,
                Some(Some((s, e))) if s == start && e == end => Answer::Data,
                Some(_) => fatal(format!(
                    "answered bytes {:?} for {start}-{end}",
                    content_range.unwrap_or_default()
                )),
            }
        }
        200 if start == 0 => Answer::Data,
        200 => fatal("ignores range requests (200 for a range)".into()),
        429 | 503 => {
            let after = retry_after.and_then(|v| v.trim().parse::<u64>().ok());
            match after.map(Duration::from_secs) {
                Some(d) if d > MAX_RETRY_AFTER => {
                    fatal(format!("status {status}, retry after {} s", d.as_secs()))
                }
                after => retry(after, format!("status {status}")),
            }
        }
        500..=599 => retry(None, format!("status {status}")),
        _ => fatal(format!("status {status}")),
    }
}

/// The range of a `Content-Range: bytes a-b/total` header.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, _total) = v.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// A web seed's failures in a row, and how long to wait after each.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Failures since the last success.
    failures: u32,
}

impl Health {
    /// A fetch succeeded.
    pub fn handle_success(&mut self) {
        self.failures = 0;
    }

    /// A fetch failed: how long to wait before the next (the server's `after` when given,
    /// else `BACKOFF_BASE * 2^(n-1)` up to [`BACKOFF_MAX`]), or `None` when the seed should be
    /// given up ([`MAX_FAILURES`] in a row).
    pub fn handle_failure(&mut self, after: Option<Duration>) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return None;
        }
        Some(after.unwrap_or_else(|| {
            BACKOFF_BASE
                .saturating_mul(1 << (self.failures - 1).min(16))
                .min(BACKOFF_MAX)
        }))
    }
}

/// One `GET` of `out.len()` bytes from `start` of `url`; fills `out` or fails.
fn fetch_range(
    agent: &ureq::Agent,
    url: &str,
    start: u64,
    out: &mut [u8],
) -> Result<(), FetchError> {
    let len = out.len() as u64;
    if len == 0 {
        return Ok(());
    }
    let range = format!("bytes={start}-{}", start + len - 1);
    let resp = match agent.get(url).set("Range", &range).call() {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(ureq::Error::Transport(t)) => {
            return Err(FetchError::Retry {
                after: None,
                why: transport_reason(&t),
            })
        }
    };
    let answer = classify(
        resp.status(),
        start,
        len,
        resp.header("Content-Range"),
        resp.header("Retry-After"),
    );
    if let Answer::Failed(e) = answer {
        return Err(e);
    }
    // Exactly the bytes asked, whatever the server sends after them (a 200 with the whole
    // file): the rest is never read, the connection is closed instead.
    resp.into_reader()
        .take(len)
        .read_exact(out)
        .map_err(|e| FetchError::Retry {
            after: None,
            why: format!("reading the body: {}", e.to_string().to_lowercase()),
        })
}

/// A transport error in a few words (ureq's own names the whole URL).
fn transport_reason(t: &ureq::Transport) -> String {
    match t.message() {
        Some(m) => format!("{}: {}", t.kind(), m.to_lowercase()),
        None => t.kind().to_string().to_lowercase(),
    }
}

/// Fetches every run of a grant (blocking: run it off the executor).
fn fetch_runs(
    agent: &ureq::Agent,
    urls: &[String],
    layout: &Layout,
    runs: &[Run],
) -> Result<Vec<Vec<u8>>, FetchError> {
    runs.iter()
        .map(|run| {
            let mut data = vec![0; run.len];
            for span in layout.spans(run.offset, run.len) {
                let url = urls
                    .get(span.file)
                    .ok_or_else(|| FetchError::Fatal("no url for a file".into()))?;
                let out = &mut data[span.buf_offset..span.buf_offset + span.len];
                fetch_range(agent, url, span.file_offset, out)?;
            }
            Ok(data)
        })
        .collect()
}

/// Counters of one web seed, written by its task, read by the torrent.
#[derive(Debug, Default)]
struct SeedStats {
    /// Payload bytes delivered to the picker.
    downloaded: AtomicU64,
    /// Whether the seed was given up (it is not started again).
    disabled: AtomicBool,
}

/// Everything a web seed's task needs.
struct Task {
    /// Its key with the picker.
    key: PeerKey,
    /// Its address with the picker ([`seed_addr`]).
    addr: SocketAddr,
    /// The `url-list` entry, for the log.
    url: String,
    /// The URL of each file.
    urls: Arc<Vec<String>>,
    /// The torrent's files, to cut runs at file boundaries.
    layout: Arc<Layout>,
    /// The torrent's lengths.
    lengths: Lengths,
    /// The picker.
    picker: Addr<PickerMsg>,
    /// Where delivered blocks get their buffers.
    pool: Arc<BlockPool>,
    /// Shared torrent counters.
    shared: Arc<Shared>,
    /// This seed's counters.
    stats: Arc<SeedStats>,
    /// Closed when the torrent stops the seed.
    stop: Receiver<()>,
    /// The HTTP client (keeps the connection to the server alive between requests).
    agent: ureq::Agent,
}

/// How a web seed's loop ended.
enum End {
    /// The torrent stopped it (or the picker is gone).
    Stopped,
    /// Given up, for this reason.
    Disabled(String),
}

impl Task {
    async fn run(self) {
        let (notes_tx, notes_rx) = async_channel::bounded(PEER_NOTES);
        let join = PickerMsg::Join {
            peer: self.key,
            addr: self.addr,
            notes: notes_tx,
            // A web seed only downloads: nothing is ever offered to it.
            super_seeded: false,
        };
        if self.picker.send(join).await.is_err() {
            return;
        }
        let bitfield = Bitfield::full(self.lengths.num_pieces());
        let end = match self
            .picker
            .send(PickerMsg::Bitfield {
                peer: self.key,
                bitfield,
            })
            .await
        {
            Ok(()) => self.event_loop(&notes_rx).await,
            Err(_) => End::Stopped,
        };
        let _ = self.picker.send(PickerMsg::Leave { peer: self.key }).await;
        match end {
            End::Stopped => log::debug!("web seed {}: stopped", self.url),
            End::Disabled(why) => {
                log::warn!("web seed {} disabled: {why}", self.url);
                self.stats.disabled.store(true, Ordering::Relaxed);
            }
        }
    }

    async fn event_loop(&self, notes: &Receiver<PeerNote>) -> End {
        let max = grant_blocks(&self.lengths);
        let mut health = Health::default();
        let mut starved = false;
        if !self.pick(Vec::with_capacity(max), max).await {
            return End::Stopped;
        }
        loop {
            let note = future::or(async { notes.recv().await.ok() }, async {
                let _ = self.stop.recv().await;
                None
            })
            .await;
            let mut blocks = match note {
                None => return End::Stopped,
                Some(PeerNote::Ban) => return End::Disabled(BANNED.into()),
                // Offers and reveals are for peers we upload to; a web seed never downloads.
                Some(PeerNote::Cancel(_) | PeerNote::Offer(_) | PeerNote::Reveal) => continue,
                Some(PeerNote::Wake) => {
                    if starved {
                        starved = false;
                        if !self.pick(Vec::with_capacity(max), max).await {
                            return End::Stopped;
                        }
                    }
                    continue;
                }
                Some(PeerNote::Grant(blocks)) => blocks,
            };
            if blocks.is_empty() {
                // Nothing to fetch now: the picker wakes us when there is.
                starved = true;
                continue;
            }
            let runs = plan(&self.lengths, &mut blocks);
            let fetch = {
                let (agent, urls, layout, runs) = (
                    self.agent.clone(),
                    self.urls.clone(),
                    self.layout.clone(),
                    runs.clone(),
                );
                smol::unblock(move || fetch_runs(&agent, &urls, &layout, &runs))
            };
            let fetched = future::or(async { Some(fetch.await) }, async {
                let _ = self.stop.recv().await;
                None
            })
            .await;
            let Some(fetched) = fetched else {
                let _ = self
                    .picker
                    .send(PickerMsg::Release {
                        peer: self.key,
                        blocks,
                    })
                    .await;
                return End::Stopped;
            };
            // A ban may have come while we fetched (an earlier piece failed its hash).
            while let Ok(note) = notes.try_recv() {
                if matches!(note, PeerNote::Ban) {
                    return End::Disabled(BANNED.into());
                }
            }
            match fetched {
                Ok(data) => {
                    health.handle_success();
                    let delivered = self.blocks_of(&blocks, &runs, &data);
                    let bytes: u64 = delivered.iter().map(|(b, _)| u64::from(b.len)).sum();
                    self.stats.downloaded.fetch_add(bytes, Ordering::Relaxed);
                    self.shared.add_downloaded(bytes);
                    blocks.clear();
                    let msg = PickerMsg::Blocks {
                        peer: self.key,
                        blocks: delivered,
                        pick: Some(PickRequest { max, buf: blocks }),
                    };
                    if self.picker.send(msg).await.is_err() {
                        return End::Stopped;
                    }
                }
                Err(e) => {
                    // Peers may fetch these while we wait.
                    let release = PickerMsg::Release {
                        peer: self.key,
                        blocks,
                    };
                    if self.picker.send(release).await.is_err() {
                        return End::Stopped;
                    }
                    let (after, why) = match e {
                        FetchError::Fatal(why) => return End::Disabled(why),
                        FetchError::Retry { after, why } => (after, why),
                    };
                    let Some(wait) = health.handle_failure(after) else {
                        return End::Disabled(format!(
                            "{MAX_FAILURES} failures in a row, the last: {why}"
                        ));
                    };
                    log::info!(
                        "web seed {}: {why}; trying again in {} s",
                        self.url,
                        wait.as_secs_f32()
                    );
                    let waited = future::or(
                        async {
                            smol::Timer::after(wait).await;
                            true
                        },
                        async {
                            let _ = self.stop.recv().await;
                            false
                        },
                    )
                    .await;
                    if !waited || !self.pick(Vec::with_capacity(max), max).await {
                        return End::Stopped;
                    }
                }
            }
        }
    }

    /// Asks the picker for up to `max` blocks; false when it is gone.
    async fn pick(&self, buf: Vec<BlockInfo>, max: usize) -> bool {
        self.picker
            .send(PickerMsg::Pick {
                peer: self.key,
                max,
                buf,
            })
            .await
            .is_ok()
    }

    /// The fetched bytes cut into the granted blocks (sorted by [`plan`]), in pooled buffers.
    fn blocks_of(
        &self,
        blocks: &[BlockInfo],
        runs: &[Run],
        data: &[Vec<u8>],
    ) -> Vec<(BlockInfo, Block)> {
        let mut out = Vec::with_capacity(blocks.len());
        let mut next = blocks.iter();
        for (run, bytes) in runs.iter().zip(data) {
            let mut at = 0;
            for b in next.by_ref().take(run.blocks) {
                let end = at + b.len as usize;
                out.push((*b, self.pool.take_copy(&bytes[at..end])));
                at = end;
            }
        }
        out
    }
}

/// Why a seed banned by the picker is disabled.
const BANNED: &str = "sent data that failed the hash check";

/// One web seed as the torrent sees it.
#[derive(Debug)]
struct Seed {
    /// The `url-list` entry.
    url: String,
    /// Its address with the picker.
    addr: SocketAddr,
    /// The URL of each file.
    urls: Arc<Vec<String>>,
    /// Its counters.
    stats: Arc<SeedStats>,
    /// While it runs: dropping the sender stops it.
    running: Option<(Sender<()>, smol::Task<()>)>,
    /// Its download rate, sampled every second.
    down_rate: Rate,
}

/// A torrent's web seeds, owned by its actor: started with the torrent's work, stopped on
/// pause, completion and shutdown, never started again once given up.
#[derive(Debug)]
pub struct WebSeeds {
    /// One per usable `url-list` entry.
    seeds: Vec<Seed>,
    /// The torrent's files.
    layout: Arc<Layout>,
    /// The torrent's lengths.
    lengths: Lengths,
    /// The HTTP client, shared by the torrent's seeds.
    agent: ureq::Agent,
}

/// What starting a web seed's task takes from its torrent.
#[derive(Debug)]
pub(crate) struct StartWith<'a> {
    /// Where the task runs.
    pub(crate) spawner: &'a Spawner,
    /// The torrent's picker.
    pub(crate) picker: &'a Addr<PickerMsg>,
    /// The download buffers.
    pub(crate) pool: &'a Arc<BlockPool>,
    /// Shared torrent counters.
    pub(crate) shared: &'a Arc<Shared>,
    /// The torrent's next peer key, taken and advanced for each seed started.
    pub(crate) next_key: &'a mut u64,
}

impl WebSeeds {
    /// The web seeds of `meta` (its `url-list`, http and https only), none running yet. With
    /// `local_only` (a session on loopback, which never leaves the machine), only those whose
    /// URL names this machine (`tracker::url_is_local`); the others are never resolved.
    pub fn new(meta: &Metainfo, local_only: bool) -> Self {
        let seeds = meta
            .url_list
            .iter()
            .filter(|url| {
                let ok = is_supported(url);
                if !ok {
                    log::info!("web seed {url}: not http or https, not used");
                }
                ok
            })
            .filter(|url| {
                let ok = !local_only || crate::tracker::url_is_local(url);
                if !ok {
                    log::info!("web seed {url}: not used, this session stays on loopback");
                }
                ok
            })
            .enumerate()
            .map(|(i, url)| Seed {
                url: url.clone(),
                addr: seed_addr(i as u16),
                urls: Arc::new(file_urls(url, &meta.info)),
                stats: Arc::default(),
                running: None,
                down_rate: Rate::default(),
            })
            .collect();
        let layout = Layout::new(
            meta.info
                .files
                .iter()
                .map(|f| (f.relative_path(), f.length)),
        );
        Self {
            seeds,
            layout: Arc::new(layout),
            lengths: meta.info.lengths,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(READ_TIMEOUT)
                .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
                .build(),
        }
    }

    /// Whether any seed's task is running.
    pub fn any_running(&self) -> bool {
        self.seeds.iter().any(|s| s.running.is_some())
    }

    /// Starts the seeds that are not running and were not given up, [`MAX_RUNNING`] at most
    /// at once, in `url-list` order.
    pub(crate) fn start(&mut self, with: StartWith<'_>) {
        let mut running = self.seeds.iter().filter(|s| s.running.is_some()).count();
        for seed in &mut self.seeds {
            if running >= MAX_RUNNING {
                break;
            }
            if seed.running.is_some() || seed.stats.disabled.load(Ordering::Relaxed) {
                continue;
            }
            running += 1;
            let key = PeerKey(*with.next_key);
            *with.next_key += 1;
            let (stop_tx, stop_rx) = async_channel::bounded(1);
            let task = Task {
                key,
                addr: seed.addr,
                url: seed.url.clone(),
                urls: seed.urls.clone(),
                layout: self.layout.clone(),
                lengths: self.lengths,
                picker: with.picker.clone(),
                pool: with.pool.clone(),
                shared: with.shared.clone(),
                stats: seed.stats.clone(),
                stop: stop_rx,
                agent: self.agent.clone(),
            };
            log::debug!("web seed {}: starting", seed.url);
            seed.running = Some((stop_tx, with.spawner.spawn(task.run())));
        }
    }

    /// Stops every running seed and waits (a few seconds at most) for each to leave the picker.
    pub async fn stop(&mut self) {
        let tasks: Vec<smol::Task<()>> = self
            .seeds
            .iter_mut()
            .filter_map(|s| s.running.take())
            .map(|(stop, task)| {
                drop(stop);
                task
            })
            .collect();
        if tasks.is_empty() {
            return;
        }
        let all = async {
            for t in tasks {
                t.await;
            }
        };
        future::or(all, async {
            smol::Timer::after(STOP_GRACE).await;
        })
        .await;
    }

    /// Once a second: samples the rates, forgets the tasks that ended.
    pub fn tick(&mut self) {
        for seed in &mut self.seeds {
            seed.down_rate
                .sample(seed.stats.downloaded.load(Ordering::Relaxed));
            if seed.running.as_ref().is_some_and(|(_, t)| t.is_finished()) {
                seed.running = None;
            }
        }
    }

    /// The running seeds, as peers (transport `web`, `url` set).
    pub fn infos(&self) -> impl Iterator<Item = PeerInfo> + '_ {
        self.seeds
            .iter()
            .filter(|s| s.running.is_some())
            .map(|s| PeerInfo {
                addr: s.addr,
                downloaded: s.stats.downloaded.load(Ordering::Relaxed),
                uploaded: 0,
                is_seed: true,
                download_rate: s.down_rate.per_second(),
                upload_rate: 0,
                encrypted: s
                    .url
                    .get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("https://")),
                transport: crate::utp::Transport::Web,
                pieces: self.lengths.num_pieces(),
                client: None,
                url: Some(s.url.clone()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_engine::create::{create_torrent, CreateOptions};

    fn info(files: &[(&str, usize)]) -> Info {
        let dir = std::env::temp_dir().join(format!(
            "shoal-webseed-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let root = dir.join("my torrent");
        for (path, len) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, vec![7u8; *len]).unwrap();
        }
        let target = if files.len() == 1 && !files[0].0.contains('/') {
            root.join(files[0].0)
        } else {
            root.clone()
        };
        let opts = CreateOptions {
            piece_length: Some(16384),
            ..CreateOptions::default()
        };
        let bytes = create_torrent(&target, &opts).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Metainfo::from_bytes(&bytes).unwrap().info
    }

    #[test]
    fn maps_files_to_urls() {
        let single = info(&[("a b.iso", 10)]);
        assert_eq!(file_urls("http://h/x/a.iso", &single), ["http://h/x/a.iso"]);
        assert_eq!(file_urls("http://h/x/", &single), ["http://h/x/a%20b.iso"]);
        let multi = info(&[("d/é#?.txt", 10), ("z", 5)]);
        let want = [
            "http://h/m/my%20torrent/d/%C3%A9%23%3F.txt",
            "http://h/m/my%20torrent/z",
        ];
        assert_eq!(file_urls("http://h/m/", &multi), want);
        assert_eq!(file_urls("http://h/m", &multi), want);
    }

    #[test]
    fn plans_contiguous_runs() {
        let lengths = Lengths::new(100_000, 32_768).unwrap();
        let mut blocks = vec![
            lengths.block(1, 0),
            lengths.block(0, 1),
            lengths.block(0, 0),
            lengths.block(2, 1),
            lengths.block(2, 0),
        ];
        let runs = plan(&lengths, &mut blocks);
        assert_eq!(blocks[0], lengths.block(0, 0));
        assert_eq!(
            runs,
            [
                Run {
                    offset: 0,
                    len: 3 * 16384,
                    blocks: 3
                },
                Run {
                    offset: 65_536,
                    len: 2 * 16384,
                    blocks: 2
                }
            ]
        );
    }

    #[test]
    fn classifies_answers() {
        assert_eq!(
            classify(206, 10, 5, Some("bytes 10-14/100"), None),
            Answer::Data
        );
        assert_eq!(classify(206, 10, 5, None, None), Answer::Data);
        assert!(matches!(
            classify(206, 10, 5, Some("bytes 0-99/100"), None),
            Answer::Failed(FetchError::Fatal(_))
        ));
        assert_eq!(classify(200, 0, 5, None, None), Answer::Data);
        assert!(matches!(
            classify(200, 10, 5, None, None),
            Answer::Failed(FetchError::Fatal(_))
        ));
        assert_eq!(
            classify(503, 0, 5, None, Some(" 3 ")),
            Answer::Failed(FetchError::Retry {
                after: Some(Duration::from_secs(3)),
                why: "status 503".into()
            })
        );
        // An HTTP date is not read: the backoff applies.
        assert!(matches!(
            classify(429, 0, 5, None, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Answer::Failed(FetchError::Retry { after: None, .. })
        ));
        assert!(matches!(
            classify(503, 0, 5, None, Some("999999")),
            Answer::Failed(FetchError::Fatal(_))
        ));
        assert!(matches!(
            classify(500, 0, 5, None, None),
            Answer::Failed(FetchError::Retry { after: None, .. })
        ));
        assert_eq!(
            classify(404, 0, 5, None, None),
            Answer::Failed(FetchError::Fatal("status 404".into()))
        );
    }

    #[test]
    fn backs_off_then_gives_up() {
        let mut h = Health::default();
        assert_eq!(h.handle_failure(None), Some(BACKOFF_BASE));
        assert_eq!(h.handle_failure(None), Some(BACKOFF_BASE * 2));
        assert_eq!(
            h.handle_failure(Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        h.handle_success();
        for _ in 1..MAX_FAILURES {
            assert!(h.handle_failure(None).is_some());
        }
        assert_eq!(h.handle_failure(None), None);
    }

    #[test]
    fn seed_addresses_are_told_apart() {
        assert!(is_seed_addr(&seed_addr(0)));
        assert!(is_seed_addr(&seed_addr(u16::MAX)));
        assert!(!is_seed_addr(&"127.0.0.1:80".parse().unwrap()));
        assert!(!is_seed_addr(&"[2001:db8::1]:80".parse().unwrap()));
        assert!(is_supported("HTTPS://x/") && is_supported("http://x"));
        assert!(!is_supported("ftp://x/") && !is_supported("http"));
    }
}
