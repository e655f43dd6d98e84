//! `shoal download`, `seed`, `verify` and `demo`: the commands that run the actor system.
//!
//! Paths: `download` takes the folder the content lands in (`-o DIR`, the content is then
//! `DIR/<torrent name>`); `seed` and `verify` take the content itself, or that folder (the
//! torrent's name inside it is then used, and said). `download` keeps its state in
//! `DIR/.shoal/`: the fast-resume record and a lock file per torrent.
//!
//! Exit codes: 0 done (a download complete, seeding stopped by Ctrl-C, a closed standard
//! output), 1 an error, 2 a bad argument, 130 / 143 a download stopped unfinished by SIGINT /
//! SIGTERM.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_signal::{Signal, Signals};
use futures_lite::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_actors::disk::{Mode, Storage};
use shoal_actors::one_copy::OneCopy;
use shoal_actors::session::{Encryption, Session, SessionSettings};
use shoal_actors::shared::{Progress, TorrentEvent, TorrentState};
use shoal_actors::torrent::{content_path, AddTorrent, Torrent, TorrentSettings};
use shoal_engine::magnet::Magnet;
use shoal_engine::metainfo::Metainfo;

use crate::display::{count, printable, say, Failure};
use crate::info::human_size;
use crate::{outln, CliResult};

/// Options shared by the commands that join a swarm.
#[derive(Debug, clap::Args)]
pub struct SwarmOptions {
    /// Address to accept peers on [default: 0.0.0.0:6881, or any free port if taken].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A peer to dial directly (repeatable), with or without trackers: an address or a host
    /// name with a port (192.0.2.7:6881, localhost:6881, [::1]:6881).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// The fewest requests kept outstanding per peer (the queue grows with its rate).
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = at_least_one())]
    pub queue_depth: usize,
    /// Most peer connections for the torrent.
    #[arg(long, default_value_t = 200, value_name = "N", value_parser = at_least_one())]
    pub max_peers: usize,
    /// Do not announce to the torrent's trackers.
    #[arg(long)]
    pub no_trackers: bool,
    /// A DHT node to join through (repeatable), instead of the well-known public routers.
    /// A shoal listening on loopback contacts only these, and resolves no host name.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    pub dht_bootstrap: Vec<String>,
    /// Do not use the DHT (BEP 5) to find peers.
    #[arg(long)]
    pub no_dht: bool,
    /// Do not exchange peers with peers (BEP 11).
    #[arg(long)]
    pub no_pex: bool,
    /// Do not use local service discovery (BEP 14) on the local network.
    #[arg(long)]
    pub no_lsd: bool,
    /// Announce again every SECS seconds, whatever interval the tracker asks for (by default
    /// the tracker's interval, never under its min interval); each announce's new peers are
    /// dialled.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub announce_interval: Option<u64>,
    /// Message stream encryption (MSE/PE): prefer (dial encrypted, fall back to plaintext,
    /// accept both, choose RC4 when offered), allow (as prefer, but choose plaintext when
    /// offered both, as libtorrent does: an obfuscated handshake, no RC4 cost), require
    /// (encrypted only, both ways) or off (plaintext only).
    #[arg(long, default_value = "prefer", value_name = "POLICY")]
    pub encryption: Encryption,
}

/// A count that must be at least one (zero would be refused, not silently raised).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// Arguments of `shoal download`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The content lands in DIR/<torrent name>; DIR/.shoal/ keeps the \
fast-resume record and a lock file, so a second download of the same torrent into DIR is \
refused. Interrupted (Ctrl-C: exit code 130, SIGTERM: 143), it keeps every verified piece: run \
the same command again to resume."
)]
pub struct DownloadArgs {
    /// The .torrent file, or a magnet link (`magnet:?xt=urn:btih:...`): its metadata is
    /// fetched from peers first and kept in DIR/.shoal/, so a restart needs no second fetch.
    #[arg(value_name = "SOURCE")]
    pub torrent: PathBuf,
    /// The folder the content lands in (as `DIR/<torrent name>`).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Keep seeding once the download is complete, until interrupted.
    #[arg(long)]
    pub seed: bool,
    #[command(flatten)]
    pub swarm: SwarmOptions,
}

/// Arguments of `shoal seed`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "PATH is the file or folder the torrent was made from, or the folder \
holding it under the torrent's name (a `download -o DIR` folder). The data is only read, never \
changed. If some pieces are missing or wrong, seed says how many and seeds the others; it never \
downloads (use `shoal download` to complete the data). Seeding runs until Ctrl-C (exit code 0)."
)]
pub struct SeedArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The file or folder the torrent was made from (as given to `shoal create`), or the
    /// folder holding it.
    pub path: PathBuf,
    /// Upload each piece exactly once, in all, then exit (proves the swarm can finish without
    /// us; for tests and demonstrations).
    #[arg(long)]
    pub stop_after_one_copy: bool,
    /// Super-seed (BEP 16): hide our pieces and offer each downloader one piece nobody has
    /// yet, the next once the last has been seen at another peer, so the swarm gets a whole
    /// copy from about one copy uploaded. Ends by itself once every piece is at two peers.
    #[arg(long)]
    pub super_seed: bool,
    #[command(flatten)]
    pub swarm: SwarmOptions,
}

/// Arguments of `shoal verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The file or folder holding the data, or the folder holding it under the torrent's name.
    pub path: PathBuf,
}

/// Arguments of `shoal demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of downloaders (1 to 64).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub downloaders: usize,
    /// Size of the demo content in MiB (1 to 4096).
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub size_mib: u64,
    /// Keep the demo folder instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// Reads and parses a .torrent file.
pub fn load_torrent(path: &Path) -> Result<Arc<Metainfo>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta = Metainfo::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Arc::new(meta))
}

pub(crate) fn start_session(
    o: &SwarmOptions,
    state_dir: Option<PathBuf>,
) -> Result<Session, String> {
    let settings = |listen| SessionSettings {
        listen,
        dht: !o.no_dht,
        dht_bootstrap: o.dht_bootstrap.clone(),
        lsd: !o.no_lsd,
        pex: !o.no_pex,
        state_dir: state_dir.clone(),
        encryption: o.encryption,
        ..SessionSettings::default()
    };
    match o.listen {
        Some(addr) => {
            Session::new(settings(addr)).map_err(|e| format!("cannot listen on {addr}: {e}"))
        }
        None => Session::new(settings(SessionSettings::default().listen))
            .or_else(|_| Session::new(settings(SocketAddr::from(([0, 0, 0, 0], 0)))))
            .map_err(|e| format!("cannot listen: {e}")),
    }
}

pub(crate) fn torrent_settings(o: &SwarmOptions) -> TorrentSettings {
    TorrentSettings {
        queue_depth: o.queue_depth,
        max_peers: o.max_peers,
        use_trackers: !o.no_trackers,
        announce_interval: o.announce_interval.map(std::time::Duration::from_secs),
        pex: !o.no_pex,
        ..TorrentSettings::default()
    }
}

/// The addresses of the `--peer` arguments, host names resolved. A name with IPv4 addresses
/// gives those only (shoal listens on IPv4 by default, so `localhost` means 127.0.0.1 and not
/// also a `::1` that would only be refused); a name with none gives its IPv6 addresses.
pub(crate) fn resolve_peers(given: &[String]) -> Result<Vec<(String, SocketAddr)>, String> {
    let mut out = Vec::new();
    for g in given {
        let all: Vec<SocketAddr> = g
            .to_socket_addrs()
            .map_err(|e| format!("--peer {g}: {e} (expected HOST:PORT)"))?
            .collect();
        let v4: Vec<SocketAddr> = all.iter().filter(|a| a.is_ipv4()).copied().collect();
        let chosen = if v4.is_empty() { all } else { v4 };
        if chosen.is_empty() {
            return Err(format!("--peer {g}: no address found"));
        }
        out.extend(chosen.into_iter().map(|a| (g.clone(), a)));
    }
    Ok(out)
}

/// Drops (and says so) the `--peer` addresses that are this process itself.
pub(crate) fn without_ourselves(
    peers: Vec<(String, SocketAddr)>,
    us: SocketAddr,
) -> Vec<SocketAddr> {
    peers
        .into_iter()
        .filter(|(given, a)| {
            let ours = a.port() == us.port()
                && (a.ip().is_loopback() || a.ip().is_unspecified() || a.ip() == us.ip());
            if ours {
                say(&format!(
                    "shoal: --peer {given} ({a}) is ourselves: this shoal listens on {us}; ignored"
                ));
            }
            !ours
        })
        .map(|(_, a)| a)
        .collect()
}

/// SIGINT and SIGTERM, caught from now on.
pub(crate) fn catch_signals() -> Result<Signals, String> {
    Signals::new([Signal::Int, Signal::Term]).map_err(|e| format!("cannot catch signals: {e}"))
}

/// Waits for the next SIGINT or SIGTERM and returns its number.
pub(crate) async fn next_signal(signals: &mut Signals) -> i32 {
    loop {
        match signals.next().await {
            Some(Ok(s)) => return s as i32,
            Some(Err(_)) => continue,
            None => futures_lite::future::pending::<()>().await,
        }
    }
}

/// Says how the peers will be found when the torrent has no way to find any by itself.
fn say_how_peers_come(meta: &Metainfo, o: &SwarmOptions, peers: &[SocketAddr], us: SocketAddr) {
    if !peers.is_empty() || (!o.no_trackers && !meta.tiers().is_empty()) {
        return;
    }
    let why = if o.no_trackers {
        "--no-trackers"
    } else {
        "the torrent lists none"
    };
    let found_by = match (o.no_dht || meta.info.private, o.no_lsd || meta.info.private) {
        (false, false) => "the DHT, local discovery and ",
        (false, true) => "the DHT and ",
        (true, false) => "local discovery and ",
        (true, true) => "",
    };
    say(&format!(
        "shoal: no trackers ({why}) and no --peer: waiting for peers found by {found_by}peers connecting to {us}"
    ));
}

/// The lock on `DIR/.shoal/<info hash>.lock`, held while a download runs. The kernel lets go
/// of it when the process ends, however it ends; the file itself stays (removing it would let
/// a second process lock a new file while a third still holds the old one).
fn lock_folder(
    state: &Path,
    info_hash: &shoal_engine::InfoHash,
    name: &str,
    output: &Path,
) -> Result<std::fs::File, String> {
    let path = state.join(format!("{info_hash}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(format!(
            "{} is already being downloaded into {} by another shoal (it holds {})",
            name,
            output.display(),
            path.display()
        )),
        Err(e) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Runs `shoal magnet`: prints the torrent's magnet link.
pub fn magnet(args: MagnetArgs) -> CliResult {
    let meta = load_torrent(&args.torrent)?;
    println!("{}", Magnet::from_metainfo(&meta));
    Ok(())
}

/// Arguments of `shoal magnet`.
#[derive(Debug, clap::Args)]
pub struct MagnetArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
}

/// Runs `shoal download`.
pub fn download(args: DownloadArgs) -> CliResult {
    let source = args.torrent.to_string_lossy().into_owned();
    let magnet = if source.starts_with("magnet:") {
        Some(Magnet::parse(&source).map_err(|e| format!("invalid magnet link: {e}"))?)
    } else {
        None
    };
    let given = match &magnet {
        Some(_) => None,
        None => Some(load_torrent(&args.torrent)?),
    };
    let (info_hash, hint) = match (&given, &magnet) {
        (Some(meta), _) => (meta.info_hash, printable(&meta.info.name)),
        (None, Some(m)) => (
            m.info_hash,
            printable(m.name.as_deref().unwrap_or("the torrent")),
        ),
        (None, None) => unreachable!("a source is a torrent or a magnet"),
    };
    let peers = resolve_peers(&args.swarm.peers)?;
    if args.output.exists() && !args.output.is_dir() {
        return Err(format!(
            "{} is not a folder: -o takes the folder the content lands in",
            args.output.display()
        )
        .into());
    }
    let state = args.output.join(".shoal");
    std::fs::create_dir_all(&state)
        .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let _lock = lock_folder(&state, &info_hash, &hint, &args.output)?;
    // A magnet whose metadata was fetched before: the kept .torrent, no second fetch.
    let kept = state.join(format!("{info_hash}.torrent"));
    let given = given.or_else(|| {
        load_torrent(&kept)
            .ok()
            .filter(|m| m.info_hash == info_hash)
    });
    let mut signals = catch_signals()?;
    let session = start_session(&args.swarm, Some(state.clone()))?;
    let peers = without_ourselves(peers, session.local_addr());
    let resume = Some(state.join(format!("{info_hash}.resume")));
    session.block_on(async {
        let added = match (&given, magnet) {
            (Some(meta), _) => {
                let mut add = AddTorrent::download(meta.clone(), &args.output);
                add.resume = resume;
                add.peers = peers.clone();
                add.settings = torrent_settings(&args.swarm);
                async { Ok(session.add_torrent(add).await) }
                    .or(async { Err(next_signal(&mut signals).await) })
                    .await
            }
            (None, Some(magnet)) => {
                let mut add = AddTorrent::magnet(magnet, &args.output);
                add.resume = resume;
                add.peers = peers.clone();
                add.settings = torrent_settings(&args.swarm);
                add.metadata_dir = Some(state.clone());
                say(&format!(
                    "shoal: fetching the metadata of {hint} from peers, listening on {}",
                    session.local_addr()
                ));
                let torrent = session.start_magnet(add)?;
                let waited = async { Ok(torrent.wait_checked().await.map(|()| torrent.clone())) }
                    .or(async { Err(next_signal(&mut signals).await) })
                    .await;
                if waited.is_err() && torrent.state() == TorrentState::Metadata {
                    say("shoal: interrupted while fetching the metadata from peers; nothing was downloaded");
                    return Err(Failure::Signal(waited.err().unwrap_or_default()));
                }
                waited
            }
            (None, None) => unreachable!("a source is a torrent or a magnet"),
        };
        let torrent = match added {
            Ok(t) => t?,
            Err(signal) => {
                say("shoal: interrupted while checking the data on disk; run the same command again to start over");
                return Err(Failure::Signal(signal));
            }
        };
        let meta = match given {
            Some(meta) => meta,
            None => load_torrent(&kept)?,
        };
        let name = printable(&meta.info.name);
        let start = torrent.progress();
        say(&format!(
            "shoal: downloading {name} ({}) into {}, listening on {}",
            human_size(meta.total_length()),
            args.output.display(),
            session.local_addr()
        ));
        // Pieces may already be arriving (a magnet's torrent starts as soon as its metadata
        // is checked): what was on disk is what the check found.
        let found = torrent.found_at_start();
        if torrent.resumed_from_record() {
            say(&format!(
                "shoal: {} from the resume record (no file changed since it was written); {} to fetch",
                count(found, "piece", "pieces"),
                start.total_pieces.saturating_sub(found)
            ));
        } else if found > 0 {
            say(&format!(
                "shoal: {} of {} already on disk (read and verified)",
                found,
                count(start.total_pieces, "piece", "pieces")
            ));
        }
        if !start.complete && !source.starts_with("magnet:") {
            say_how_peers_come(&meta, &args.swarm, &peers, session.local_addr());
        }
        let goal = if args.seed {
            Goal::DownloadThenSeed
        } else {
            Goal::Download
        };
        let end = watch(&torrent, &name, goal, &mut signals).await;
        stop(&session, &mut signals).await;
        let p = torrent.progress();
        match end? {
            End::Complete => Ok(()),
            End::Signal(signal) if !p.complete => {
                say(&format!(
                    "shoal: interrupted: {} of {} pieces ({}) are verified and kept in {}; run the \
                     same command again to resume",
                    p.verified_pieces,
                    p.total_pieces,
                    human_size(meta.total_length() - p.left),
                    args.output.display()
                ));
                Err(Failure::Signal(signal))
            }
            End::Signal(_) => {
                say("shoal: stopped seeding; the download is complete");
                Ok(())
            }
        }
    })
}

/// Shuts the session down (flushing files, saving the resume record); a second signal meanwhile
/// ends the process at once, with what is on disk.
async fn stop(session: &Session, signals: &mut Signals) {
    let second = async {
        let s = next_signal(signals).await;
        say("shoal: interrupted again: leaving without waiting for the files to be flushed");
        std::process::exit(128 + s);
    };
    session.shutdown().or(second).await;
}

/// Where the content is, given the path the user typed: the content itself, or the folder
/// holding it under the torrent's name (said when taken). Errors name what is wrong.
fn locate_content(meta: &Metainfo, given: &Path) -> Result<PathBuf, String> {
    let Ok(md) = std::fs::metadata(given) else {
        return Err(format!("{} does not exist", given.display()));
    };
    let inner = given.join(&meta.info.name);
    let taking = |inner: &Path| {
        say(&format!(
            "shoal: taking {} (the torrent's {} inside the folder given)",
            inner.display(),
            if meta.info.multi_file {
                "folder"
            } else {
                "file"
            }
        ));
    };
    if !meta.info.multi_file {
        if !md.is_dir() {
            return Ok(given.to_path_buf());
        }
        if inner.is_file() {
            taking(&inner);
            return Ok(inner);
        }
        return Err(format!(
            "{} is a folder with no {} in it: give the torrent's file itself",
            given.display(),
            printable(&meta.info.name)
        ));
    }
    if !md.is_dir() {
        return Err(format!(
            "{} is a file, but this torrent is a folder of {}",
            given.display(),
            count(meta.info.files.len() as u64, "file", "files")
        ));
    }
    let present = |root: &Path| {
        meta.info
            .files
            .iter()
            .filter(|f| content_path(root, &f.path).exists())
            .count()
    };
    if inner.is_dir() && present(&inner) > present(given) {
        taking(&inner);
        return Ok(inner);
    }
    Ok(given.to_path_buf())
}

/// The content's files opened read-only.
fn open_content(meta: &Metainfo, content: &Path) -> Result<Storage, String> {
    let layout = shoal_actors::torrent::layout_of(meta, Path::new(""), Some(content));
    Storage::open(Path::new(""), layout, meta.info.lengths, Mode::ReadOnly)
        .map_err(|e| format!("cannot open {}: {e}", content.display()))
}

/// File `i` of the torrent as the user sees it inside the content: its path below the
/// content folder, or the file's name for a single-file torrent.
fn shown(meta: &Metainfo, i: usize) -> String {
    let f = &meta.info.files[i];
    let parts = if meta.info.multi_file {
        &f.path[1..]
    } else {
        &f.path[..]
    };
    printable(&parts.join("/"))
}

/// Runs `shoal seed`.
pub fn seed(args: SeedArgs) -> CliResult {
    let meta = load_torrent(&args.torrent)?;
    let name = printable(&meta.info.name);
    let content = locate_content(&meta, &args.path)?;
    let peers = resolve_peers(&args.swarm.peers)?;
    let wrong = open_content(&meta, &content)?.wrong_lengths();
    let mut signals = catch_signals()?;
    let session = start_session(&args.swarm, None)?;
    let peers = without_ourselves(peers, session.local_addr());
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(content.clone());
    add.peers = peers.clone();
    add.settings = torrent_settings(&args.swarm);
    add.settings.super_seed = args.super_seed;
    let one_copy = args
        .stop_after_one_copy
        .then(|| Arc::new(OneCopy::new(meta.info.lengths)));
    if let Some(f) = &one_copy {
        add.serve_filter = Some(f.clone());
    }
    session.block_on(async {
        say(&format!("shoal: checking {}", content.display()));
        let added = async { Ok(session.add_torrent(add).await) }
            .or(async { Err(next_signal(&mut signals).await) })
            .await;
        let torrent = match added {
            Ok(t) => t?,
            Err(_) => {
                say("shoal: interrupted while checking the data");
                return Ok(());
            }
        };
        let p = torrent.progress();
        if p.verified_pieces == 0 {
            session.shutdown().await;
            return Err(format!(
                "no piece of {} matches the torrent (is it the data {} was made from?)",
                content.display(),
                args.torrent.display()
            )
            .into());
        }
        for w in &wrong {
            let i = meta
                .info
                .files
                .iter()
                .position(|f| content_path(&content, &f.path) == w.path)
                .unwrap_or(0);
            say(&match w.found {
                None => format!("shoal: warning: {} is missing", shown(&meta, i)),
                Some(n) => format!(
                    "shoal: warning: {} is {n} bytes; the torrent says {}",
                    shown(&meta, i),
                    w.expected
                ),
            });
        }
        if !p.complete {
            say(&format!(
                "shoal: {} of {} pieces are missing or wrong in {}; seeding the other {} (seed \
                 never downloads: `shoal download` completes the data)",
                p.total_pieces - p.verified_pieces,
                p.total_pieces,
                content.display(),
                p.verified_pieces
            ));
        }
        say(&format!(
            "shoal: seeding {name} ({} of {} pieces) on {}",
            p.verified_pieces,
            p.total_pieces,
            session.local_addr()
        ));
        say_how_peers_come(&meta, &args.swarm, &peers, session.local_addr());
        let done = async {
            match &one_copy {
                Some(f) => {
                    // The shutdown that follows flushes what the peers still have queued.
                    f.wait_done().await;
                    say("shoal: every piece has been uploaded once; leaving");
                    Ok(End::Complete)
                }
                None => futures_lite::future::pending().await,
            }
        };
        let end = done
            .or(watch(&torrent, &name, Goal::Seed, &mut signals))
            .await;
        stop(&session, &mut signals).await;
        end?;
        Ok(())
    })
}

/// Runs `shoal verify`.
pub fn verify(args: VerifyArgs) -> CliResult {
    let meta = load_torrent(&args.torrent)?;
    let content = locate_content(&meta, &args.path)?;
    let storage = open_content(&meta, &content)?;
    let wrong = storage.wrong_lengths();
    let started = Instant::now();
    let have = storage.recheck(&meta.info.pieces, 0, &|_| {});
    let n = meta.info.lengths.num_pieces();
    let bad: Vec<u32> = (0..n).filter(|&p| !have.get(p)).collect();
    let secs = started.elapsed().as_secs_f64();
    outln!(
        "{}: {} of {} good ({} in {:.1} s, {:.0} MB/s)",
        printable(&meta.info.name),
        n - bad.len() as u32,
        count(n, "piece", "pieces"),
        human_size(meta.total_length()),
        secs,
        meta.total_length() as f64 / 1e6 / secs.max(1e-9)
    )?;
    let index_of = |path: &Path| {
        storage
            .layout()
            .files()
            .iter()
            .position(|f| f.path == path)
            .unwrap_or(0)
    };
    let mut missing = 0;
    for w in &wrong {
        let i = index_of(&w.path);
        match w.found {
            None => {
                missing += 1;
                outln!("missing: {}", shown(&meta, i))?;
            }
            Some(len) => outln!(
                "wrong length: {} is {len} bytes; the torrent says {}",
                shown(&meta, i),
                w.expected
            )?,
        }
    }
    if !bad.is_empty() {
        outln!("failed pieces: {}", ranges(&bad))?;
        // Which files the failed pieces fall in, and how many in each.
        let mut per_file: Vec<u32> = vec![0; meta.info.files.len()];
        for &p in &bad {
            let mut last = usize::MAX;
            for span in storage.layout().piece_spans(&meta.info.lengths, p) {
                if span.file != last {
                    per_file[span.file] += 1;
                    last = span.file;
                }
            }
        }
        /// The most files named; a torrent of thousands would otherwise print them all.
        const MAX_NAMED: usize = 20;
        let hit: Vec<String> = per_file
            .iter()
            .enumerate()
            .filter(|(_, &k)| k > 0)
            .map(|(i, &k)| format!("{} ({})", shown(&meta, i), count(k, "piece", "pieces")))
            .collect();
        let more = hit.len().saturating_sub(MAX_NAMED);
        let mut line = hit
            .into_iter()
            .take(MAX_NAMED)
            .collect::<Vec<_>>()
            .join(", ");
        if more > 0 {
            line.push_str(&format!(" and {more} more"));
        }
        outln!("files with failed pieces: {line}")?;
    }
    if bad.is_empty() && wrong.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !bad.is_empty() {
        problems.push(format!("{} of {n} pieces failed", bad.len()));
    }
    if missing > 0 {
        problems.push(format!(
            "{} missing",
            count(missing as u64, "file", "files")
        ));
    }
    if wrong.len() > missing {
        problems.push(format!(
            "{} of the wrong length",
            count((wrong.len() - missing) as u64, "file", "files")
        ));
    }
    Err(problems.join("; ").into())
}

/// `[1,2,3,7]` → `1-3, 7`.
fn ranges(pieces: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let mut j = i;
        while j + 1 < pieces.len() && pieces[j + 1] == pieces[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            pieces[i].to_string()
        } else {
            format!("{}-{}", pieces[i], pieces[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// What a watched torrent is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    /// Download, then return.
    Download,
    /// Download, then seed until interrupted.
    DownloadThenSeed,
    /// Seed what is there until interrupted.
    Seed,
}

/// How watching ended, errors aside.
#[derive(Debug)]
enum End {
    /// The download completed (or the one-copy seeding is done).
    Complete,
    /// A signal came: SIGINT or SIGTERM, by number.
    Signal(i32),
}

/// How long with no peer at all before saying so.
const NO_PEERS_FIRST: Duration = Duration::from_secs(10);

/// How often to say it again while it lasts.
const NO_PEERS_AGAIN: Duration = Duration::from_secs(60);

/// The most addresses whose last connection failure is remembered, so that each reason is said
/// once per address rather than at every retry; beyond it the table starts afresh (a tracker
/// can hand out thousands of dead addresses).
const FAILURES_REMEMBERED: usize = 256;

/// The longest a finished download stays to hand over pieces that only it holds.
const HAND_OVER_MAX: Duration = Duration::from_secs(10);

/// The hand-over ends early once nothing has been uploaded for this long: the peers that
/// lack those pieces are not asking for them (they skip those files, or choke us).
const HAND_OVER_IDLE: Duration = Duration::from_secs(2);

/// Before a finished download exits: while some of our pieces are held by none of the
/// connected peers, stay (up to [`HAND_OVER_MAX`]) and serve them. Without it, a downloader
/// that took a piece from a seeder that has since left would take the swarm's only copy with
/// it. Ends at once when no such piece exists (a download from a seed), and on a signal
/// (the download is complete either way).
async fn hand_over(torrent: &Torrent, signals: &mut Signals) {
    let start = Instant::now();
    let mut said = false;
    let mut uploaded = (torrent.progress().uploaded, start);
    loop {
        let sole = torrent.sole_copies().await;
        let now = Instant::now();
        let up = torrent.progress().uploaded;
        if up != uploaded.0 {
            uploaded = (up, now);
        }
        if sole == 0
            || now.duration_since(start) >= HAND_OVER_MAX
            || now.duration_since(uploaded.1) >= HAND_OVER_IDLE
        {
            if said {
                say(&format!(
                    "shoal: leaving after {:.1} s{}",
                    now.duration_since(start).as_secs_f64(),
                    if sole == 0 {
                        String::new()
                    } else {
                        format!(
                            ", {} still held only here",
                            count(u64::from(sole), "piece", "pieces")
                        )
                    }
                ));
            }
            return;
        }
        if !said {
            say(&format!(
                "shoal: {} held by none of the connected peers; staying up to {} s to pass \
                 them on (Ctrl-C leaves now)",
                count(u64::from(sole), "piece", "pieces"),
                HAND_OVER_MAX.as_secs()
            ));
            said = true;
        }
        let signal = async {
            smol::Timer::after(Duration::from_millis(50)).await;
            false
        }
        .or(async {
            next_signal(signals).await;
            true
        })
        .await;
        if signal {
            return;
        }
    }
}

/// Shows progress until the torrent completes (for [`Goal::Download`]), stops, or a signal
/// comes; says which peers cannot be reached and why, and when there are none.
async fn watch(
    torrent: &Torrent,
    name: &str,
    goal: Goal,
    signals: &mut Signals,
) -> Result<End, Failure> {
    let tty = std::io::stderr().is_terminal();
    let events = torrent.subscribe();
    let start = torrent.progress();
    let mut bar = tty.then(new_bar);
    crate::display::set_bar(bar.clone());
    let mut last = (Instant::now(), start.clone());
    let mut rates = (0.0, 0.0);
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut announced_complete = false;
    let mut failures: HashMap<SocketAddr, String> = HashMap::new();
    let mut next_no_peers = Instant::now() + NO_PEERS_FIRST;
    let end = loop {
        let tick = Duration::from_millis(if tty { 250 } else { 1000 });
        let wait_complete = announced_complete || goal == Goal::Seed;
        let signal = async {
            smol::Timer::after(tick).await;
            None
        }
        .or(async {
            if wait_complete {
                futures_lite::future::pending::<()>().await;
            }
            // The counters are published before the completion (see `Shared`): no need to
            // wait for them to settle, and every millisecond here delays the exit.
            let _ = torrent.wait_complete().await;
            None
        })
        .or(async { Some(next_signal(signals).await) })
        .await;
        if let Some(signal) = signal {
            break Ok(End::Signal(signal));
        }
        while let Ok(event) = events.try_recv() {
            if let TorrentEvent::ConnectFailed { addr, reason } = event {
                let why = explain(&reason);
                if failures.get(&addr) != Some(&why) {
                    if failures.len() >= FAILURES_REMEMBERED && !failures.contains_key(&addr) {
                        failures.clear();
                    }
                    say(&format!(
                        "shoal: cannot connect to {addr}: {why}; will try again"
                    ));
                    failures.insert(addr, why);
                }
            }
        }
        let now = Instant::now();
        let p = torrent.progress();
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt >= 1.0 {
            rates = (
                p.downloaded.saturating_sub(last.1.downloaded) as f64 / dt,
                p.uploaded.saturating_sub(last.1.uploaded) as f64 / dt,
            );
            last = (now, p.clone());
        }
        if p.peers > 0 {
            next_no_peers = now + NO_PEERS_FIRST;
        } else if now >= next_no_peers {
            let tried = if failures.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} tried, none reachable)",
                    count(failures.len() as u64, "address", "addresses")
                )
            };
            say(&format!("shoal: no peers yet{tried}"));
            next_no_peers = now + NO_PEERS_AGAIN;
        }
        let seeding = goal == Goal::Seed || announced_complete;
        let status = status_line(&p, rates.0, rates.1, seeding);
        match &bar {
            Some(bar) => {
                let width = crate::display::terminal_width().unwrap_or(80);
                bar.set_message(bar_line(name, &p, &status, width));
            }
            None => {
                if now.duration_since(last_line) >= Duration::from_secs(2)
                    || (p.complete && !announced_complete && goal != Goal::Seed)
                {
                    say(&format!(
                        "{name}: {}/{} pieces {status}",
                        p.verified_pieces, p.total_pieces
                    ));
                    last_line = now;
                }
            }
        }
        if p.complete && !announced_complete && goal != Goal::Seed {
            announced_complete = true;
            if let Some(b) = bar.take() {
                b.finish_and_clear();
                crate::display::set_bar(None);
            }
            say(&complete_line(torrent, name, &start, &p));
            if goal == Goal::Download {
                hand_over(torrent, signals).await;
                break Ok(End::Complete);
            }
            say("shoal: seeding until interrupted (Ctrl-C)");
            bar = tty.then(new_bar);
            crate::display::set_bar(bar.clone());
        }
        if torrent.is_stopped() {
            break Err(torrent
                .error()
                .unwrap_or_else(|| "torrent stopped".into())
                .into());
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    crate::display::set_bar(None);
    end
}

/// What was checked, said truthfully: pieces read and hashed in this run are verified; pieces
/// taken from the resume record were trusted, not reread.
fn complete_line(torrent: &Torrent, name: &str, start: &Progress, p: &Progress) -> String {
    let fetched = p.verified_pieces.saturating_sub(start.verified_pieces);
    if !torrent.resumed_from_record() || start.verified_pieces == 0 {
        format!("shoal: {name} is complete: every piece verified")
    } else if fetched == 0 {
        format!(
            "shoal: {name} is complete according to its resume record (no file changed size or \
             time since it was written); `shoal verify` rereads every piece"
        )
    } else {
        format!(
            "shoal: {name} is complete: {} downloaded and verified, {} taken from the resume \
             record; `shoal verify` rereads every piece",
            count(fetched, "piece", "pieces"),
            start.verified_pieces
        )
    }
}

/// A connection failure in the user's words.
fn explain(reason: &str) -> String {
    let r = reason.strip_prefix("connect: ").unwrap_or(reason);
    if r.contains("handshake protocol") {
        format!("not a BitTorrent peer ({r})")
    } else if r.contains("handshake timed out") {
        "no BitTorrent handshake within 10 s (not a BitTorrent peer, or overloaded)".into()
    } else if r.contains("wrong info hash") {
        "it does not share this torrent".into()
    } else if r.contains("connected to ourselves") {
        "that is ourselves".into()
    } else if r.contains("early eof") || r.contains("end of file") {
        "it closed the connection during the handshake (it may not share this torrent)".into()
    } else {
        r.to_string()
    }
}

/// A progress bar drawn as one line of our own making (see [`bar_line`]), so it never wraps.
fn new_bar() -> ProgressBar {
    let bar = ProgressBar::new(1);
    bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
    bar
}

/// `name [=====     ] 12/40 down ...`, at most `width - 1` columns: the name is shortened and
/// the bar narrowed (or left out) to fit.
fn bar_line(name: &str, p: &Progress, status: &str, width: usize) -> String {
    let width = width.saturating_sub(1).max(20);
    let stats = format!(" {}/{} {status}", p.verified_pieces, p.total_pieces);
    let name = shorten(name, (width / 4).max(8));
    let used = name.chars().count() + stats.chars().count();
    let room = width.saturating_sub(used + 3).min(40);
    let line = if room >= 5 {
        let filled = (room as u64 * u64::from(p.verified_pieces) / u64::from(p.total_pieces.max(1)))
            as usize;
        format!(
            "{name} [{}{}]{stats}",
            "=".repeat(filled),
            " ".repeat(room - filled)
        )
    } else {
        format!("{name}{stats}")
    };
    shorten(&line, width)
}

/// `s` cut to `max` characters, the last one an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Rates, peers and time left; seeding, only what goes up.
fn status_line(p: &Progress, down: f64, up: f64, seeding: bool) -> String {
    if seeding {
        return format!(
            "seeding, up {}/s {}",
            human_size(up as u64),
            count(p.peers, "peer", "peers")
        );
    }
    let eta = if p.complete {
        "done".to_string()
    } else if down > 1.0 {
        let secs = (p.left as f64 / down) as u64;
        if secs >= 3600 {
            format!("ETA {}h{:02}m", secs / 3600, secs / 60 % 60)
        } else if secs >= 60 {
            format!("ETA {}m{:02}s", secs / 60, secs % 60)
        } else {
            format!("ETA {secs} s")
        }
    } else {
        "ETA -".to_string()
    };
    format!(
        "down {}/s up {}/s {} {}",
        human_size(down as u64),
        human_size(up as u64),
        count(p.peers, "peer", "peers"),
        eta
    )
}

/// Runs `shoal demo`: a whole swarm in one process, on loopback.
pub fn demo(args: DemoArgs) -> CliResult {
    demo::run(args)
}

mod demo;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_line_fits() {
        let p = Progress {
            verified_pieces: 12_345,
            total_pieces: 16_000_000,
            peers: 200,
            ..Progress::default()
        };
        let status = status_line(&p, 1.5e9, 1.5e9, false);
        for width in [20, 40, 80, 200] {
            let line = bar_line(&"x".repeat(300), &p, &status, width);
            assert!(line.chars().count() < width.max(21), "{width}: {line}");
        }
        assert!(bar_line("a", &p, &status, 200).contains('['));
        assert_eq!(ranges(&[1, 2, 3, 7]), "1-3, 7");
        assert!(
            explain("connect: handshake protocol length is 72, expected 19")
                .starts_with("not a BitTorrent peer")
        );
    }
}
