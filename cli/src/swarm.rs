//! `shoal download`, `seed`, `verify` and `demo`: the commands that run the actor system.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use shoal_actors::disk::{Mode, Storage};
use shoal_actors::one_copy::OneCopy;
use shoal_actors::session::{Session, SessionSettings};
use shoal_actors::shared::Progress;
use shoal_actors::torrent::{AddTorrent, Torrent, TorrentSettings};
use shoal_engine::metainfo::Metainfo;
use shoal_engine::storage::Layout;

use crate::info::human_size;
use crate::CliResult;

/// Options shared by the commands that join a swarm.
#[derive(Debug, clap::Args)]
pub struct SwarmOptions {
    /// Address to accept peers on [default: 0.0.0.0:6881, or any free port if taken].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A peer to dial directly (repeatable), with or without trackers.
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<SocketAddr>,
    /// The fewest requests kept outstanding per peer (the queue grows with its rate).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub queue_depth: usize,
    /// Most peer connections for the torrent.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub max_peers: usize,
    /// Do not announce to the torrent's trackers.
    #[arg(long)]
    pub no_trackers: bool,
}

/// Arguments of `shoal download`.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// The .torrent file.
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
pub struct SeedArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The file or folder the torrent was made from (as given to `shoal create`).
    pub path: PathBuf,
    /// Upload each piece exactly once, in all, then exit (proves the swarm can finish without
    /// us; for tests and demonstrations).
    #[arg(long)]
    pub stop_after_one_copy: bool,
    #[command(flatten)]
    pub swarm: SwarmOptions,
}

/// Arguments of `shoal verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The file or folder holding the data.
    pub path: PathBuf,
}

/// Arguments of `shoal demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of downloaders.
    #[arg(long, default_value_t = 5)]
    pub downloaders: usize,
    /// Size of the demo content in MiB.
    #[arg(long, default_value_t = 48)]
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

fn start_session(listen: Option<SocketAddr>) -> Result<Session, String> {
    let settings = |listen| SessionSettings {
        listen,
        ..SessionSettings::default()
    };
    match listen {
        Some(addr) => {
            Session::new(settings(addr)).map_err(|e| format!("cannot listen on {addr}: {e}"))
        }
        None => Session::new(settings(SessionSettings::default().listen))
            .or_else(|_| Session::new(settings(SocketAddr::from(([0, 0, 0, 0], 0)))))
            .map_err(|e| format!("cannot listen: {e}")),
    }
}

fn torrent_settings(o: &SwarmOptions) -> TorrentSettings {
    TorrentSettings {
        queue_depth: o.queue_depth.max(1),
        max_peers: o.max_peers.max(1),
        use_trackers: !o.no_trackers,
        ..TorrentSettings::default()
    }
}

/// Runs `shoal download`.
pub fn download(args: DownloadArgs) -> CliResult {
    let meta = load_torrent(&args.torrent)?;
    std::fs::create_dir_all(&args.output)
        .map_err(|e| format!("cannot create {}: {e}", args.output.display()))?;
    let session = start_session(args.swarm.listen)?;
    let mut add = AddTorrent::download(meta.clone(), &args.output);
    add.resume = Some(
        args.output
            .join(".shoal")
            .join(format!("{}.resume", meta.info_hash)),
    );
    add.peers = args.swarm.peers.clone();
    add.settings = torrent_settings(&args.swarm);
    let interrupted = ctrl_c();
    session.block_on(async {
        let torrent = session.add_torrent(add).await.map_err(|e| e.to_string())?;
        eprintln!(
            "shoal: downloading {} ({}) into {}, listening on {}",
            meta.info.name,
            human_size(meta.total_length()),
            args.output.display(),
            session.local_addr()
        );
        let result = watch(&torrent, &meta.info.name, !args.seed, &interrupted).await;
        session.shutdown().await;
        result
    })
}

/// Runs `shoal seed`.
pub fn seed(args: SeedArgs) -> CliResult {
    let meta = load_torrent(&args.torrent)?;
    if !args.path.exists() {
        return Err(format!("{} does not exist", args.path.display()));
    }
    let session = start_session(args.swarm.listen)?;
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(args.path.clone());
    add.peers = args.swarm.peers.clone();
    add.settings = torrent_settings(&args.swarm);
    let one_copy = args
        .stop_after_one_copy
        .then(|| Arc::new(OneCopy::new(meta.info.lengths)));
    if let Some(f) = &one_copy {
        add.serve_filter = Some(f.clone());
    }
    let interrupted = ctrl_c();
    session.block_on(async {
        eprintln!("shoal: checking {}", args.path.display());
        let torrent = session.add_torrent(add).await.map_err(|e| e.to_string())?;
        let p = torrent.progress();
        if p.verified_pieces == 0 {
            session.shutdown().await;
            return Err(format!(
                "no piece of {} matches the torrent",
                args.path.display()
            ));
        }
        eprintln!(
            "shoal: seeding {} ({} of {} pieces) on {}",
            meta.info.name,
            p.verified_pieces,
            p.total_pieces,
            session.local_addr()
        );
        let done = async {
            match &one_copy {
                Some(f) => {
                    // The shutdown that follows flushes what the peers still have queued.
                    f.wait_done().await;
                    eprintln!("shoal: every piece has been uploaded once; leaving");
                }
                None => futures_lite::future::pending().await,
            }
        };
        let watching = watch(&torrent, &meta.info.name, false, &interrupted);
        let done = async {
            done.await;
            Ok(())
        };
        futures_lite::future::or(done, watching).await?;
        session.shutdown().await;
        Ok(())
    })
}

/// Runs `shoal verify`.
pub fn verify(args: VerifyArgs) -> CliResult {
    let meta = load_torrent(&args.torrent)?;
    let layout = Layout::new(meta.info.files.iter().map(|f| {
        (
            shoal_actors::torrent::content_path(&args.path, &f.path),
            f.length,
        )
    }));
    let storage = Storage::open(Path::new(""), layout, meta.info.lengths, Mode::ReadOnly)
        .map_err(|e| format!("cannot open {}: {e}", args.path.display()))?;
    let started = Instant::now();
    let have = storage.recheck(&meta.info.pieces, 0, &|_| {});
    let n = meta.info.lengths.num_pieces();
    let bad: Vec<u32> = (0..n).filter(|&p| !have.get(p)).collect();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}: {} of {} pieces good ({} in {:.1} s, {:.0} MB/s)",
        meta.info.name,
        n - bad.len() as u32,
        n,
        human_size(meta.total_length()),
        secs,
        meta.total_length() as f64 / 1e6 / secs.max(1e-9)
    );
    if bad.is_empty() {
        return Ok(());
    }
    println!("failed pieces: {}", ranges(&bad));
    Err(format!("{} of {n} pieces failed", bad.len()))
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

/// Set when the user presses Ctrl-C (or the process gets SIGTERM).
type Interrupted = Arc<event_flag::Flag>;

fn ctrl_c() -> Interrupted {
    let flag = Arc::new(event_flag::Flag::default());
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || f.set());
    flag
}

/// Shows progress until the torrent completes (when `exit_on_complete`), stops, or the user
/// interrupts.
async fn watch(
    torrent: &Torrent,
    name: &str,
    exit_on_complete: bool,
    interrupted: &Interrupted,
) -> CliResult {
    let tty = std::io::stderr().is_terminal();
    let total = torrent.progress().total_pieces;
    let bar = tty.then(|| {
        let bar = ProgressBar::new(u64::from(total));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} pieces {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar
    });
    let mut last = (Instant::now(), torrent.progress());
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut announced_complete = false;
    loop {
        let tick = smol::Timer::after(Duration::from_millis(if tty { 250 } else { 1000 }));
        futures_lite::future::or(
            async {
                tick.await;
            },
            async {
                if announced_complete {
                    // wait_complete would return at once: seeding wakes on the tick only.
                    futures_lite::future::pending::<()>().await;
                }
                let _ = torrent.wait_complete().await;
                smol::Timer::after(Duration::from_millis(50)).await;
            },
        )
        .await;
        let now = Instant::now();
        let p = torrent.progress();
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let down = (p.downloaded.saturating_sub(last.1.downloaded)) as f64 / dt;
        let up = (p.uploaded.saturating_sub(last.1.uploaded)) as f64 / dt;
        if dt >= 1.0 {
            last = (now, p.clone());
        }
        let msg = status_line(&p, down, up);
        match &bar {
            Some(bar) => {
                bar.set_position(u64::from(p.verified_pieces));
                bar.set_message(msg);
            }
            None => {
                if now.duration_since(last_line) >= Duration::from_secs(2)
                    || (p.complete && !announced_complete)
                {
                    eprintln!(
                        "{name}: {}/{} pieces {msg}",
                        p.verified_pieces, p.total_pieces
                    );
                    last_line = now;
                }
            }
        }
        if p.complete && !announced_complete {
            announced_complete = true;
            if let Some(bar) = &bar {
                bar.finish_with_message(status_line(&p, 0.0, 0.0));
            }
            eprintln!("shoal: {name} is complete: every piece verified");
            if exit_on_complete {
                return Ok(());
            }
        }
        if interrupted.is_set() {
            eprintln!("shoal: interrupted; stopping");
            return Ok(());
        }
        if torrent.is_stopped() {
            return Err(torrent.error().unwrap_or_else(|| "torrent stopped".into()));
        }
    }
}

fn status_line(p: &Progress, down: f64, up: f64) -> String {
    let left = p.left as f64;
    let eta = if p.complete {
        "done".to_string()
    } else if down > 1.0 {
        format!("ETA {:.0} s", left / down)
    } else {
        "ETA -".to_string()
    };
    format!(
        "down {}/s up {}/s peers {} {}",
        human_size(down as u64),
        human_size(up as u64),
        p.peers,
        eta
    )
}

/// Runs `shoal demo`: a whole swarm in one process, on loopback.
pub fn demo(args: DemoArgs) -> CliResult {
    demo::run(args)
}

mod event_flag {
    //! A flag set from a signal handler and read by the progress loop.
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A flag.
    #[derive(Debug, Default)]
    pub struct Flag(AtomicBool);

    impl Flag {
        /// Raises it.
        pub fn set(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
        /// Whether it is raised.
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}

mod demo;
