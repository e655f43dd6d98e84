//! A soak: a churning swarm in one process for a long time (20 minutes by default), to see that
//! memory, descriptors and threads stay flat, that no download stalls, and that every download
//! is byte-exact.
//!
//! Two seeders (each seeds every torrent) and 100 downloading peers, every one a `Session` on
//! one shared `Runtime` and one set of hasher and disk threads, on 127.0.0.1, finding each other
//! through the embedded tracker; 3 torrents, a third of the peers on each. Every second one peer
//! leaves (shut down, its download checked byte for byte if complete, then deleted) or a fresh
//! one joins, alternately, so the swarm keeps about 100 peers and always has newcomers.
//!
//! Run with `cargo bench --bench soak`; `SHOAL_SOAK_SECS` sets the length (default 1200),
//! `SHOAL_SOAK_PEERS` the peers (100). Every 10 s it prints a line: peers, RSS, open
//! descriptors, threads, downloads completed and checked, downloads running, the longest
//! current stall (an unfinished download without a byte), and the slowest download completed
//! since the last line (join to complete); at the end the first and last figures next to each other, stalls longer than
//! 10 s, and any download that was not byte-exact.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Pools, Session, SessionSettings};
use shoal_actors::torrent::{AddTorrent, Torrent, TorrentSettings};
use shoal_actors::tracker_server::{TrackerServer, TrackerServerOptions};
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::metainfo::Metainfo;

/// Sizes of the three torrents, in MiB: small enough that peers complete and leave many times.
const SIZES_MIB: [u64; 3] = [8, 16, 24];

/// Piece length of every torrent.
const PIECE: u32 = 64 * 1024;

/// A download without a byte for longer than this counts as a stall (the target).
const STALL: Duration = Duration::from_secs(10);

/// How often a line is printed.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The tracker's interval: peers learn of newcomers at least this often.
const TRACKER_INTERVAL: Duration = Duration::from_secs(10);

/// One torrent of the soak.
struct Content {
    meta: Arc<Metainfo>,
    data: PathBuf,
}

/// One downloading peer.
struct Peer {
    session: Session,
    torrent: Torrent,
    which: usize,
    out: PathBuf,
    /// When it joined.
    joined: Instant,
    /// Bytes downloaded when last looked at, and when that changed.
    last_bytes: (u64, Instant),
    /// When it completed (and its files were checked).
    completed: bool,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Raises the limit on open files: both ends of every connection are in this process.
fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            let want = libc::rlimit {
                rlim_cur: 1 << 16,
                rlim_max: r.rlim_max.max(1 << 16),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            return r.rlim_cur;
        }
    }
    0
}

/// Whether `got` holds exactly the bytes of `want`.
fn same_bytes(want: &Path, got: &Path) -> bool {
    match (std::fs::read(want), std::fs::read(got)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let secs = env_u64("SHOAL_SOAK_SECS", 1200);
    let n = env_u64("SHOAL_SOAK_PEERS", 100) as usize;
    let nofile = raise_nofile();
    let dir = support::bench_dir("soak");
    let tracker = TrackerServer::bind_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        TrackerServerOptions {
            interval: TRACKER_INTERVAL,
            ..TrackerServerOptions::default()
        },
    )
    .expect("tracker");
    let contents: Vec<Content> = SIZES_MIB
        .iter()
        .map(|&mib| {
            let data = support::data_file(&dir, mib);
            let bytes = create_torrent(
                &data,
                &CreateOptions {
                    piece_length: Some(PIECE),
                    trackers: vec![vec![tracker.announce_url()]],
                    ..Default::default()
                },
            )
            .expect("create torrent");
            Content {
                meta: Arc::new(Metainfo::from_bytes(&bytes).expect("our torrent")),
                data,
            }
        })
        .collect();
    println!(
        "soak: {secs} s, 2 seeders + {n} peers churning (one leaves or joins every second), \
         torrents of {SIZES_MIB:?} MiB in {} KiB pieces, one runtime and shared pools; \
         {}; load {}; open files limit {nofile}",
        PIECE / 1024,
        support::machine(),
        support::load()
    );

    let rt = Runtime::new(0);
    let pools = Pools::new(0, 2);
    let settings = || SessionSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..SessionSettings::default()
    };
    let session = || Session::with_pools(settings(), rt.handle(), pools.clone());
    let mut seeders = Vec::new();
    for _ in 0..2 {
        let s = session().expect("seeder session");
        for c in &contents {
            let mut add = AddTorrent::seed(c.meta.clone(), PathBuf::new());
            add.content = Some(c.data.clone());
            rt.block_on(s.add_torrent(add)).expect("seeder starts");
        }
        seeders.push(s);
    }
    let seeder_addrs: Vec<SocketAddr> = seeders.iter().map(|s| s.local_addr()).collect();

    let mut next_id = 0usize;
    let join = |next_id: &mut usize| -> Peer {
        let id = *next_id;
        *next_id += 1;
        let which = id % contents.len();
        let out = dir.join(format!("peer-{id}"));
        let _ = std::fs::remove_dir_all(&out);
        let session = session().expect("peer session");
        let mut add = AddTorrent::download(contents[which].meta.clone(), &out);
        add.settings = TorrentSettings {
            max_peers: 50,
            ..TorrentSettings::default()
        };
        add.peers = seeder_addrs.clone();
        let torrent = rt.block_on(session.add_torrent(add)).expect("peer starts");
        let now = Instant::now();
        Peer {
            session,
            torrent,
            which,
            out,
            joined: now,
            last_bytes: (0, now),
            completed: false,
        }
    };
    let mut peers: Vec<Peer> = (0..n).map(|_| join(&mut next_id)).collect();

    let started = Instant::now();
    let (rss0, fds0, threads0) = (status("VmRSS:"), open_fds(), status("Threads:"));
    let mut completed = 0u64;
    let mut not_exact = 0u64;
    let mut stalls = 0u64;
    let mut longest_stall = Duration::ZERO;
    let mut joins = 0u64;
    let mut leaves = 0u64;
    let mut last_report = Instant::now();
    let mut churn_at = Instant::now() + Duration::from_secs(1);
    let mut leave_next = true;
    let mut samples = Vec::new();
    // The slowest download (join to complete) since the last line, and of the whole run.
    let mut slowest_window = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    println!(
        "  {:>6} {:>5} {:>8} {:>6} {:>7} {:>9} {:>7} {:>9} {:>11}",
        "t (s)",
        "peers",
        "RSS MiB",
        "fds",
        "threads",
        "completed",
        "running",
        "stall (s)",
        "slowest (s)"
    );
    let check = |p: &Peer| -> bool {
        let want = &contents[p.which].data;
        let name = &contents[p.which].meta.info.name;
        same_bytes(want, &p.out.join(name))
    };
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        let now = Instant::now();
        // Completions and stalls.
        let mut current_stall = Duration::ZERO;
        for p in peers.iter_mut() {
            let prog = p.torrent.progress();
            if prog.complete {
                if !p.completed {
                    p.completed = true;
                    completed += 1;
                    slowest_window = slowest_window.max(now.duration_since(p.joined));
                    if !check(p) {
                        not_exact += 1;
                        println!("  NOT BYTE-EXACT: {}", p.out.display());
                    }
                }
                continue;
            }
            if prog.downloaded != p.last_bytes.0 {
                let quiet = now.duration_since(p.last_bytes.1);
                if quiet > STALL {
                    stalls += 1;
                }
                longest_stall = longest_stall.max(quiet);
                p.last_bytes = (prog.downloaded, now);
            } else {
                current_stall = current_stall.max(now.duration_since(p.last_bytes.1));
            }
        }
        // Churn: one leaves or one joins, alternately.
        if now >= churn_at {
            churn_at += Duration::from_secs(1);
            if leave_next && !peers.is_empty() {
                let p = peers.swap_remove(fastrand::usize(..peers.len()));
                rt.block_on(p.session.shutdown());
                let prog = p.torrent.progress();
                if prog.complete && !p.completed {
                    completed += 1;
                    if !check(&p) {
                        not_exact += 1;
                        println!("  NOT BYTE-EXACT: {}", p.out.display());
                    }
                }
                drop(p.torrent);
                drop(p.session);
                let _ = std::fs::remove_dir_all(&p.out);
                leaves += 1;
            } else {
                peers.push(join(&mut next_id));
                joins += 1;
            }
            leave_next = !leave_next;
        }
        if now.duration_since(last_report) >= REPORT_EVERY {
            last_report = now;
            let running = peers.iter().filter(|p| !p.completed).count();
            let sample = (
                started.elapsed().as_secs(),
                status("VmRSS:") / 1024,
                open_fds(),
                status("Threads:"),
            );
            samples.push(sample);
            println!(
                "  {:>6} {:>5} {:>8} {:>6} {:>7} {:>9} {:>7} {:>9.1} {:>11.1}",
                sample.0,
                peers.len(),
                sample.1,
                sample.2,
                sample.3,
                completed,
                running,
                current_stall.as_secs_f64(),
                slowest_window.as_secs_f64()
            );
            slowest = slowest.max(slowest_window);
            slowest_window = Duration::ZERO;
            longest_stall = longest_stall.max(current_stall);
        }
    }
    let elapsed = started.elapsed();
    let (rss1, fds1, threads1) = (status("VmRSS:"), open_fds(), status("Threads:"));
    // The second half against the first: flat means the second half's peak is not above.
    let half = samples.len() / 2;
    let peak = |s: &[(u64, u64, usize, u64)]| {
        (
            s.iter().map(|x| x.1).max().unwrap_or(0),
            s.iter().map(|x| x.2).max().unwrap_or(0),
        )
    };
    let (rss_a, fds_a) = peak(&samples[..half]);
    let (rss_b, fds_b) = peak(&samples[half..]);
    println!(
        "soak: {:.0} s, {joins} joins and {leaves} leaves; {completed} downloads completed, \
         {not_exact} not byte-exact; {stalls} stalls over {} s, longest quiet download {:.1} s, \
         slowest download {:.1} s from join to complete",
        elapsed.as_secs_f64(),
        STALL.as_secs(),
        longest_stall.as_secs_f64(),
        slowest.as_secs_f64()
    );
    println!(
        "soak: RSS {} -> {} MiB (peak first half {rss_a}, second half {rss_b}); fds {fds0} -> \
         {fds1} (peak {fds_a}, {fds_b}); threads {threads0} -> {threads1}",
        rss0 / 1024,
        rss1 / 1024
    );
    let ok = not_exact == 0 && longest_stall <= STALL;
    println!(
        "soak: {}",
        if ok {
            "OK: every download byte-exact, no stall over 10 s"
        } else {
            "FAILED"
        }
    );
    for p in peers {
        rt.block_on(p.session.shutdown());
        let _ = std::fs::remove_dir_all(&p.out);
    }
    for s in seeders {
        rt.block_on(s.shutdown());
    }
    rt.block_on(pools.shutdown());
    drop(tracker);
    if !ok {
        std::process::exit(1);
    }
}
