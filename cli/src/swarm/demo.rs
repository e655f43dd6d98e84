//! `shoal demo`: a whole swarm in one process on loopback: the embedded tracker, one seeder and
//! several downloaders sharing one runtime, each with its own session, listening port and
//! folder. Ends with every copy compared byte for byte with the original.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Session, SessionSettings};
use shoal_actors::torrent::{AddTorrent, Torrent};
use shoal_actors::tracker_server::TrackerServer;
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::metainfo::Metainfo;

use super::DemoArgs;
use crate::info::human_size;
use crate::CliResult;

/// The demo gives up after this long.
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the demo.
pub fn run(args: DemoArgs) -> CliResult {
    // Clap has checked the ranges (1 to 64 downloaders, 1 to 4096 MiB).
    let downloaders = args.downloaders;
    let size = args.size_mib * 1024 * 1024;
    let root = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    let result = run_in(&root, downloaders, size).map_err(Into::into);
    if args.keep {
        crate::display::say(&format!("demo: files kept in {}", root.display()));
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn run_in(root: &Path, downloaders: usize, size: u64) -> Result<(), String> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let tracker =
        TrackerServer::bind(loopback).map_err(|e| format!("cannot start the tracker: {e}"))?;
    crate::display::say(&format!("demo: tracker at {}", tracker.announce_url()));

    let content = root.join("seed").join("shoal-demo");
    make_content(&content, size).map_err(|e| format!("cannot write demo files: {e}"))?;
    let opts = CreateOptions {
        piece_length: Some(256 * 1024),
        trackers: vec![vec![tracker.announce_url()]],
        comment: Some("shoal demo".into()),
        ..CreateOptions::default()
    };
    let bytes = create_torrent(&content, &opts).map_err(|e| e.to_string())?;
    let torrent_path = root.join("shoal-demo.torrent");
    std::fs::write(&torrent_path, &bytes).map_err(|e| e.to_string())?;
    let meta = Arc::new(Metainfo::from_bytes(&bytes).map_err(|e| e.to_string())?);
    crate::display::say(&format!(
        "demo: {} in {} files, {} pieces of {}, info hash {}",
        human_size(meta.total_length()),
        meta.info.files.len(),
        meta.info.pieces.len(),
        human_size(u64::from(meta.info.piece_length)),
        meta.info_hash
    ));

    let runtime = Runtime::new(0);
    let session = |_| {
        Session::with_spawner(
            SessionSettings {
                listen: loopback,
                ..SessionSettings::default()
            },
            runtime.handle(),
        )
        .map_err(|e| format!("cannot listen on loopback: {e}"))
    };
    let seeder = session(0)?;
    let leechers: Vec<Session> = (0..downloaders).map(session).collect::<Result<_, _>>()?;
    let started = Instant::now();
    runtime.block_on(async {
        let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
        add.content = Some(content.clone());
        seeder.add_torrent(add).await.map_err(|e| e.to_string())?;
        crate::display::say(&format!("demo: seeder on {}", seeder.local_addr()));
        let mut torrents: Vec<Torrent> = Vec::new();
        for (i, s) in leechers.iter().enumerate() {
            let t = s
                .add_torrent(AddTorrent::download(
                    meta.clone(),
                    root.join(format!("peer-{i}")),
                ))
                .await
                .map_err(|e| e.to_string())?;
            torrents.push(t);
        }
        show_progress(&torrents, &leechers).await?;
        Ok::<(), String>(())
    })?;
    let secs = started.elapsed().as_secs_f64();

    // Compare every copy with the original, byte for byte.
    for i in 0..downloaders {
        let copy = root.join(format!("peer-{i}")).join("shoal-demo");
        compare_trees(&content, &copy).map_err(|e| format!("peer {i}: {e}"))?;
    }
    runtime.block_on(async {
        for s in leechers.iter().chain(std::iter::once(&seeder)) {
            s.shutdown().await;
        }
    });
    tracker.shutdown();
    let total = meta.total_length() as f64 * downloaders as f64;
    crate::display::say(&format!(
        "demo: {} finished in {secs:.1} s ({:.0} MB/s in all); every copy is byte-exact",
        crate::display::count(downloaders as u64, "downloader", "downloaders"),
        total / 1e6 / secs
    ));
    Ok(())
}

/// Writes the demo content: a folder of a few files of pseudo-random bytes (one empty, one in
/// a subfolder), so pieces cross file boundaries.
fn make_content(dir: &Path, size: u64) -> std::io::Result<()> {
    let mut rng = fastrand::Rng::with_seed(0x5_40a1);
    let sizes = [
        size / 2 + 12_345,
        size / 4 - 12_345,
        0,
        size - size / 2 - size / 4,
    ];
    let names = ["big.bin", "docs/medium.bin", "empty.txt", "small.bin"];
    let mut buf = vec![0u8; 1 << 20];
    for (name, &len) in names.iter().zip(&sizes) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.flush()?;
    }
    Ok(())
}

async fn show_progress(torrents: &[Torrent], sessions: &[Session]) -> Result<(), String> {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let bars: Vec<ProgressBar> = if tty {
        sessions
            .iter()
            .zip(torrents)
            .map(|(s, t)| {
                let bar = multi.add(ProgressBar::new(u64::from(t.progress().total_pieces)));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(s.local_addr().to_string());
                bar
            })
            .collect()
    } else {
        Vec::new()
    };
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let mut last_line = Instant::now();
    loop {
        smol::Timer::after(Duration::from_millis(200)).await;
        let progress: Vec<_> = torrents.iter().map(Torrent::progress).collect();
        for (bar, p) in bars.iter().zip(&progress) {
            bar.set_position(u64::from(p.verified_pieces));
            bar.set_message(format!("peers {} up {}", p.peers, human_size(p.uploaded)));
        }
        if !tty && last_line.elapsed() >= Duration::from_secs(1) {
            let line: Vec<String> = progress
                .iter()
                .map(|p| format!("{}/{}", p.verified_pieces, p.total_pieces))
                .collect();
            crate::display::say(&format!("demo: pieces {}", line.join(" ")));
            last_line = Instant::now();
        }
        if progress.iter().all(|p| p.complete) {
            for bar in &bars {
                bar.finish();
            }
            return Ok(());
        }
        if let Some(t) = torrents.iter().find(|t| t.is_stopped()) {
            return Err(t.error().unwrap_or_else(|| "a downloader stopped".into()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the swarm did not finish within {} s",
                DEMO_TIMEOUT.as_secs()
            ));
        }
    }
}

/// Checks that every file under `a` is under `b` with the same bytes.
fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(a).map_err(|e| e.to_string())?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let pa = entry.path();
        let pb = b.join(entry.file_name());
        if pa.is_dir() {
            compare_trees(&pa, &pb)?;
        } else {
            let da = std::fs::read(&pa).map_err(|e| e.to_string())?;
            let db = std::fs::read(&pb).map_err(|e| format!("{}: {e}", pb.display()))?;
            if da != db {
                return Err(format!("{} differs from the original", pb.display()));
            }
        }
    }
    Ok(())
}
