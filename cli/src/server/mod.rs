//! `shoal server`: one session holding many torrents, kept across restarts in a state folder,
//! steered over an HTTP JSON API (`api`) and a web page served by the same port.
//!
//! - `state`: the state folder (each torrent's `.torrent`, record and resume record);
//! - `http`: the HTTP/1.1 loop (keep-alive, limits, timeouts, streamed bodies);
//! - `api`: the routes, the JSON objects and file streaming;
//! - `web/`: the page, embedded in the binary at build time.
//!
//! Exit codes: 0 after an ordered shutdown on SIGINT or SIGTERM, 1 an error at start.

mod api;
pub mod http;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::FutureExt;
use shoal_actors::session::Session;
use shoal_actors::torrent::{AddTorrent, Torrent, TorrentSettings};
use shoal_engine::metainfo::Metainfo;
use shoal_engine::InfoHash;

use crate::display::{printable, say};
use crate::swarm::{self, SwarmOptions};
use crate::CliResult;
use state::{Record, SessionRecord, StateDir};

/// The API and page's default address: loopback, on a port of our own.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7878";

/// How often the watch folder is looked at.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The most `.torrent` files looked at in the watch folder per pass (a folder flooded with
/// files is worked through a pass at a time).
const WATCH_BATCH: usize = 64;

/// Arguments of `shoal server`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The API and the web page are served on --http (open http://ADDR/ in a \
browser). Bound to anything but loopback, every request must carry the token (--http-token, or \
one generated and printed at start) as `Authorization: Bearer TOKEN` or `?token=TOKEN`. \
SIGINT or SIGTERM shut down in order: `stopped` announces, files flushed, state saved."
)]
pub struct ServerArgs {
    /// Where downloads land unless a torrent is given its own folder [default:
    /// $XDG_DOWNLOAD_DIR or ~/Downloads].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where torrents, resume records and settings are kept [default: $XDG_STATE_HOME/shoal
    /// or ~/.local/state/shoal].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Address of the HTTP API and web page.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HTTP)]
    pub http: SocketAddr,
    /// The token every API request must carry (required off loopback; generated if not
    /// given). On loopback it is required only when given.
    #[arg(long, value_name = "TOKEN")]
    pub http_token: Option<String>,
    /// A folder watched for `.torrent` files: each one dropped there is added (and renamed
    /// to `.torrent.added`, or `.torrent.invalid` if it is not a torrent).
    #[arg(long, value_name = "DIR")]
    pub watch: Option<PathBuf>,
    #[command(flatten)]
    pub swarm: SwarmOptions,
}

/// One torrent as the server knows it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its metainfo.
    pub meta: Arc<Metainfo>,
    /// What the user chose.
    pub record: Record,
}

/// What every request handler shares.
pub struct Server {
    /// The session.
    pub session: Session,
    /// The state folder.
    pub state: StateDir,
    /// The default download folder.
    pub default_dir: PathBuf,
    /// Settings of every torrent added.
    pub settings: TorrentSettings,
    /// Peers dialled for every torrent (`--peer`).
    pub peers: Vec<SocketAddr>,
    /// The torrents, by info hash.
    pub entries: Mutex<HashMap<InfoHash, Entry>>,
    /// The session's limits.
    pub limits: Mutex<SessionRecord>,
    /// The token every request must carry, if any.
    pub token: Option<String>,
    /// Where the API listens.
    pub http_addr: Mutex<Option<SocketAddr>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Why an add failed.
#[derive(Debug)]
pub enum AddError {
    /// The torrent is already in the session.
    Present(InfoHash),
    /// Bad input: the text says what.
    Bad(String),
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Applies a torrent's limits (bytes per second, 0: none) to its peers, at once.
fn apply_limits(torrent: &Torrent, download: u64, upload: u64) {
    torrent.set_limits(download, upload);
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InfoHash, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of a torrent.
    pub fn entry(&self, h: &InfoHash) -> Option<Entry> {
        self.lock().get(h).cloned()
    }

    /// Every torrent, in the order added.
    pub fn list(&self) -> Vec<(Entry, Torrent)> {
        let entries: Vec<Entry> = self.lock().values().cloned().collect();
        let mut out: Vec<(Entry, Torrent)> = entries
            .into_iter()
            .filter_map(|e| {
                let t = self.session.torrent(&e.meta.info_hash)?;
                Some((e, t))
            })
            .collect();
        out.sort_by(|a, b| {
            (a.0.record.added, &a.0.meta.info.name).cmp(&(b.0.record.added, &b.0.meta.info.name))
        });
        out
    }

    /// Where a download lands: `--dir`, or the folder asked for (absolute, or relative to
    /// `--dir` without `..`).
    pub fn folder(&self, asked: Option<&str>) -> Result<PathBuf, String> {
        let Some(asked) = asked.filter(|a| !a.is_empty()) else {
            return Ok(self.default_dir.clone());
        };
        let p = Path::new(asked);
        if asked.contains('\0') {
            return Err("dir: contains a NUL byte".into());
        }
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        if p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "dir {asked:?}: a relative folder may not hold `..` or `.`; give an absolute path"
            ));
        }
        Ok(self.default_dir.join(p))
    }

    /// Adds a torrent from the bytes of its `.torrent`, saves it, and starts it.
    pub fn add(
        &self,
        bytes: &[u8],
        folder: PathBuf,
        paused: bool,
        wanted_files: Option<&[usize]>,
        sequential: bool,
    ) -> Result<Torrent, AddError> {
        let meta = Metainfo::from_bytes(bytes)
            .map_err(|e| AddError::Bad(format!("not a valid .torrent: {e}")))?;
        let h = meta.info_hash;
        if self.session.torrent(&h).is_some() {
            return Err(AddError::Present(h));
        }
        let wanted = match wanted_files {
            None => None,
            Some(list) => Some(wanted_flags(list, meta.info.files.len()).map_err(AddError::Bad)?),
        };
        let record = Record {
            folder,
            paused,
            wanted,
            sequential,
            download_limit: 0,
            upload_limit: 0,
            added: now_secs(),
        };
        let t = self.start(Arc::new(meta), record.clone())?;
        if let Err(e) = self.state.add(&h, bytes, &record) {
            log::warn!("{e}");
        }
        Ok(t)
    }

    /// Adds a torrent from a magnet link: it starts at once in state `metadata` (fetching the
    /// info dictionary from the magnet's peers and trackers); once the metadata is here it is
    /// saved like an uploaded `.torrent` (so a restart adds it as one) and listed.
    pub fn add_magnet(
        self: &Arc<Self>,
        magnet: shoal_engine::magnet::Magnet,
        folder: PathBuf,
        paused: bool,
        sequential: bool,
    ) -> Result<Torrent, AddError> {
        let h = magnet.info_hash;
        let kept = self.state.root().join("metadata");
        let mut add = shoal_actors::torrent::AddTorrent::magnet(magnet, folder.clone());
        add.resume = Some(self.state.resume_path(&h));
        add.paused = paused;
        add.sequential = sequential;
        add.settings = self.settings.clone();
        add.peers = self.peers.clone();
        add.metadata_dir = Some(kept.clone());
        let t = self.session.start_magnet(add).map_err(|e| match e {
            shoal_actors::error::Error::AlreadyPresent(h) => AddError::Present(h),
            e => AddError::Bad(e.to_string()),
        })?;
        let record = Record {
            folder,
            paused,
            wanted: None,
            sequential,
            download_limit: 0,
            upload_limit: 0,
            added: now_secs(),
        };
        let (server, torrent) = (self.clone(), t.clone());
        self.session
            .spawner()
            .spawn(async move {
                // Over once the metadata is here and the files are checked (or it stopped).
                let _ = torrent.wait_checked().await;
                let path = kept.join(format!("{h}.torrent"));
                let Ok(bytes) = smol::unblock(move || std::fs::read(path)).await else {
                    return;
                };
                let Ok(meta) = Metainfo::from_bytes(&bytes) else {
                    return;
                };
                server.lock().insert(
                    h,
                    Entry {
                        meta: Arc::new(meta),
                        record: record.clone(),
                    },
                );
                if let Err(e) = server.state.add(&h, &bytes, &record) {
                    log::warn!("{e}");
                }
            })
            .detach();
        Ok(t)
    }

    /// Starts a torrent in the session with its record.
    fn start(&self, meta: Arc<Metainfo>, record: Record) -> Result<Torrent, AddError> {
        let h = meta.info_hash;
        let mut add = AddTorrent::download(meta.clone(), record.folder.clone());
        add.resume = Some(self.state.resume_path(&h));
        add.paused = record.paused;
        add.settings = self.settings.clone();
        add.peers = self.peers.clone();
        add.wanted = record.wanted.clone();
        add.sequential = record.sequential;
        let t = self.session.start_torrent(add).map_err(|e| match e {
            shoal_actors::error::Error::AlreadyPresent(h) => AddError::Present(h),
            e => AddError::Bad(e.to_string()),
        })?;
        apply_limits(&t, record.download_limit, record.upload_limit);
        self.lock().insert(h, Entry { meta, record });
        Ok(t)
    }

    /// Changes a torrent's record with `f` and saves it.
    pub fn update(&self, h: &InfoHash, f: impl FnOnce(&mut Record)) -> Option<Record> {
        let record = {
            let mut entries = self.lock();
            let e = entries.get_mut(h)?;
            f(&mut e.record);
            e.record.clone()
        };
        if let Err(e) = self.state.save(h, &record) {
            log::warn!("{e}");
        }
        Some(record)
    }

    /// Pauses a torrent and remembers it.
    pub async fn pause(&self, t: &Torrent) -> shoal_actors::error::Result<()> {
        t.pause().await?;
        self.update(&t.info_hash(), |r| r.paused = true);
        Ok(())
    }

    /// Resumes a torrent and remembers it.
    pub async fn resume(&self, t: &Torrent) -> shoal_actors::error::Result<()> {
        t.resume().await?;
        self.update(&t.info_hash(), |r| r.paused = false);
        Ok(())
    }

    /// Sets the wanted files.
    pub async fn set_wanted(
        &self,
        t: &Torrent,
        wanted: Vec<bool>,
    ) -> shoal_actors::error::Result<()> {
        t.set_wanted_files(wanted.clone()).await?;
        self.update(&t.info_hash(), |r| {
            r.wanted = if wanted.iter().all(|w| *w) {
                None
            } else {
                Some(wanted)
            }
        });
        Ok(())
    }

    /// Sets a torrent's limits (each `None`: unchanged).
    pub fn set_limits(&self, t: &Torrent, download: Option<u64>, upload: Option<u64>) {
        if let Some(r) = self.update(&t.info_hash(), |r| {
            if let Some(d) = download {
                r.download_limit = d;
            }
            if let Some(u) = upload {
                r.upload_limit = u;
            }
        }) {
            apply_limits(t, r.download_limit, r.upload_limit);
        }
    }

    /// Sets sequential download.
    pub async fn set_sequential(&self, t: &Torrent, on: bool) -> shoal_actors::error::Result<()> {
        t.set_sequential(on).await?;
        self.update(&t.info_hash(), |r| r.sequential = on);
        Ok(())
    }

    /// Removes a torrent, with its files if asked.
    pub async fn remove(
        &self,
        h: &InfoHash,
        delete_files: bool,
    ) -> shoal_actors::error::Result<()> {
        self.session.remove_torrent(h, delete_files).await?;
        self.lock().remove(h);
        self.state.remove(h);
        Ok(())
    }

    /// Sets the session's limits (each `None`: unchanged).
    pub fn set_session_limits(&self, download: Option<u64>, upload: Option<u64>) -> SessionRecord {
        let rec = {
            let mut l = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = download {
                l.download_limit = d;
            }
            if let Some(u) = upload {
                l.upload_limit = u;
            }
            *l
        };
        self.session
            .set_limits(rec.download_limit, rec.upload_limit);
        if let Err(e) = self.state.save_session(&rec) {
            log::warn!("{e}");
        }
        rec
    }
}

/// The wanted flags of a list of wanted file indexes, checked against the file count.
pub fn wanted_flags(list: &[usize], files: usize) -> Result<Vec<bool>, String> {
    let mut flags = vec![false; files];
    for &i in list {
        match flags.get_mut(i) {
            Some(f) => *f = true,
            None => {
                return Err(format!(
                    "file index {i} is out of range: the torrent has {files} file(s)"
                ))
            }
        }
    }
    Ok(flags)
}

/// A fresh random token: 32 hex digits from the kernel's random source.
fn generate_token() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs `shoal server`.
pub fn run(args: ServerArgs) -> CliResult {
    let state_root = args.state.clone().unwrap_or_else(state::default_state_dir);
    let (state, _lock) = StateDir::open(state_root)?;
    let default_dir = args.dir.clone().unwrap_or_else(state::default_download_dir);
    std::fs::create_dir_all(&default_dir)
        .map_err(|e| format!("cannot create {}: {e}", default_dir.display()))?;
    let default_dir = default_dir.canonicalize().unwrap_or(default_dir);
    if let Some(w) = &args.watch {
        if !w.is_dir() {
            return Err(format!("--watch {}: not a folder", w.display()).into());
        }
    }
    let token = match (&args.http_token, args.http.ip().is_loopback()) {
        (Some(t), _) if t.trim().is_empty() => {
            return Err("--http-token: empty".to_string().into())
        }
        (Some(t), _) => Some(t.clone()),
        (None, true) => None,
        (None, false) => Some(generate_token()?),
    };
    let peers = swarm::resolve_peers(&args.swarm.peers)?;
    let mut signals = swarm::catch_signals()?;
    let session = swarm::start_session(&args.swarm, Some(state.root().to_path_buf()))?;
    let peers = swarm::without_ourselves(peers, session.local_addr());
    let listener = std::net::TcpListener::bind(args.http)
        .map_err(|e| format!("cannot listen for HTTP on {}: {e}", args.http))?;
    let http_addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen for HTTP: {e}"))?;
    let listener = smol::net::TcpListener::try_from(listener)
        .map_err(|e| format!("cannot listen for HTTP: {e}"))?;
    let limits = state.session();
    // The saved session limits hold from the start.
    session.set_limits(limits.download_limit, limits.upload_limit);
    let server = Arc::new(Server {
        session,
        state,
        default_dir,
        settings: swarm::torrent_settings(&args.swarm),
        peers,
        entries: Mutex::default(),
        limits: Mutex::new(limits),
        token,
        http_addr: Mutex::new(Some(http_addr)),
    });

    let saved = server.state.load();
    let count = saved.len();
    for s in saved {
        let meta = match Metainfo::from_bytes(&s.torrent) {
            Ok(m) if m.info_hash == s.info_hash => Arc::new(m),
            Ok(_) => {
                say(&format!(
                    "shoal: the saved torrent {} does not match its file name; skipped",
                    s.info_hash
                ));
                continue;
            }
            Err(e) => {
                say(&format!(
                    "shoal: the saved torrent {}: {e}; skipped",
                    s.info_hash
                ));
                continue;
            }
        };
        if let Err(AddError::Bad(e)) = server.start(meta, s.record) {
            say(&format!("shoal: cannot start {}: {e}", s.info_hash));
        }
    }

    if let Some(t) = &server.token {
        if args.http_token.is_none() {
            say(&format!(
                "shoal: --http is not loopback: every request needs the token {t} \
                 (Authorization: Bearer {t}, or http://{http_addr}/?token={t})"
            ));
        }
    }
    // Last: tools wait for this line, and find everything above it said.
    say(&format!(
        "shoal: server on http://{http_addr}/ ({count} torrent(s) restored from {}), peers on {}, downloads into {}",
        server.state.root().display(),
        server.session.local_addr(),
        server.default_dir.display()
    ));

    let spawner = server.session.spawner();
    let http_task = spawner.spawn(http::serve(listener, server.clone(), spawner.clone()));
    let watch_task = args
        .watch
        .clone()
        .map(|w| spawner.spawn(watch(server.clone(), w)));
    let signal = server.session.block_on(swarm::next_signal(&mut signals));
    say(&format!(
        "shoal: signal {signal}: stopping (announcing `stopped`, flushing files, saving state)"
    ));
    server.session.block_on(async {
        drop(watch_task);
        http_task.cancel().await;
        let second = async {
            let s = swarm::next_signal(&mut signals).await;
            say("shoal: interrupted again: leaving without waiting for the files to be flushed");
            std::process::exit(128 + s);
        };
        server.session.shutdown().or(second).await;
    });
    say("shoal: stopped");
    Ok(())
}

/// What the watch folder pass remembers of a file: its size and modification time, seen one
/// pass ago, so a file still being written is left until it stops changing.
type Seen = HashMap<PathBuf, (u64, SystemTime)>;

/// Looks at the watch folder every [`WATCH_INTERVAL`] and adds the `.torrent` files dropped
/// there once they stopped changing for one pass.
async fn watch(server: Arc<Server>, dir: PathBuf) {
    let mut seen: Seen = HashMap::new();
    loop {
        smol::Timer::after(WATCH_INTERVAL).await;
        let (d, prev) = (dir.clone(), std::mem::take(&mut seen));
        let (found, ready) = smol::unblock(move || scan(&d, &prev)).await;
        seen = found;
        for (path, bytes) in ready {
            let name = path.display().to_string();
            let outcome = server.add(&bytes, server.default_dir.clone(), false, None, false);
            let suffix = match outcome {
                Ok(t) => {
                    say(&format!(
                        "shoal: added {} from {name}",
                        server
                            .entry(&t.info_hash())
                            .map_or(String::new(), |e| printable(&e.meta.info.name))
                    ));
                    "added"
                }
                Err(AddError::Present(h)) => {
                    say(&format!("shoal: {name}: already added ({h})"));
                    "added"
                }
                Err(AddError::Bad(_)) if recent(&path) => {
                    // Perhaps still being written with pauses: looked at again next passes.
                    continue;
                }
                Err(AddError::Bad(e)) => {
                    say(&format!("shoal: {name}: {e}"));
                    "invalid"
                }
            };
            let mut to = path.clone().into_os_string();
            to.push(format!(".{suffix}"));
            if let Err(e) = std::fs::rename(&path, &to) {
                say(&format!("shoal: cannot rename {name}: {e}"));
            }
        }
    }
}

/// How long a `.torrent` that does not parse is given to be completed by its writer before
/// it is called invalid.
const WATCH_GRACE: Duration = Duration::from_secs(10);

/// Whether the file at `path` changed within [`WATCH_GRACE`].
fn recent(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < WATCH_GRACE)
}

/// One pass over the watch folder: the `.torrent` files with their size and time, and those
/// unchanged since the last pass, read.
fn scan(dir: &Path, prev: &Seen) -> (Seen, Vec<(PathBuf, Vec<u8>)>) {
    let mut found = Seen::new();
    let mut ready = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (found, ready);
    };
    for e in entries.flatten().take(WATCH_BATCH * 4) {
        let path = e.path();
        let is_torrent = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| x.eq_ignore_ascii_case("torrent"));
        let Ok(md) = e.metadata() else { continue };
        if !is_torrent || !md.is_file() {
            continue;
        }
        let stamp = (md.len(), md.modified().unwrap_or(UNIX_EPOCH));
        if prev.get(&path) == Some(&stamp) && ready.len() < WATCH_BATCH {
            if md.len() > http::MAX_BODY as u64 {
                let mut to = path.clone().into_os_string();
                to.push(".invalid");
                let _ = std::fs::rename(&path, to);
                continue;
            }
            if let Ok(bytes) = std::fs::read(&path) {
                ready.push((path, bytes));
                continue;
            }
        }
        found.insert(path, stamp);
    }
    (found, ready)
}
