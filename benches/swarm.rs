//! A whole swarm in one process: one seeder and N downloaders of a 64 MiB torrent, every one a
//! `Session` on one shared `Runtime`, all on 127.0.0.1, finding each other through the embedded
//! tracker. Then the cost of idle peer connections, measured on their own.
//!
//! Run with `cargo bench --bench swarm` (N = 50, 200, 500) or `cargo bench --bench swarm -- 50`.
//! Each N runs in a child process of its own, so peak RSS (VmHWM) belongs to that N alone.
//!
//! Reported per N: time for every downloader to complete (and the start-up part of it), peak
//! RSS, peak heap (a counting allocator), peak threads, file descriptors and connections, and
//! the pieces only the seeder holds over time (rarest first should drive it to 0 early and
//! keep it there: the swarm then no longer needs the seeder).
//!
//! Knobs: `SHOAL_BENCH_MIB` (64), `SHOAL_SWARM_PIECE_KIB` (256), `SHOAL_SWARM_TIMEOUT` (s, 600),
//! `SHOAL_SWARM_IDLE` (idle connections to measure, 500), `SHOAL_SWARM_DIRECT=1` (also give
//! every downloader the seeder's address directly), `SHOAL_SWARM_SUPER_SEED=1` (the seeder
//! super-seeds, BEP 16: compare the copies it uploads before the swarm holds a full copy),
//! `SHOAL_SWARM_SEED_LAST=1` (every downloader is added first, then the seeder: a waiting
//! crowd, and completion times free of the time it takes to add the downloaders),
//! `SHOAL_SWARM_LINGER` (s to watch the
//! connections close once all are complete, 10).

#[path = "support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Pools, Session, SessionSettings};
use shoal_actors::shared::TorrentEvent;
use shoal_actors::torrent::{AddTorrent, Torrent, TorrentSettings};
use shoal_actors::tracker_server::{TrackerServer, TrackerServerOptions};
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::metainfo::Metainfo;
use shoal_engine::wire::{Handshake, HANDSHAKE_LEN};
use shoal_engine::PeerId;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A field of /proc/self/status in kB (VmRSS, VmHWM) or as a count (Threads).
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Raises the limit on open files (as any embedder with many peers must).
fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            // Both ends of every connection are in this process: ask for plenty (allowed when
            // running as root), else take the hard limit.
            let want = libc::rlimit {
                rlim_cur: 1 << 18,
                rlim_max: r.rlim_max.max(1 << 18),
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

fn main() {
    if let Ok(mode) = std::env::var("SHOAL_SWARM_CHILD") {
        // RUST_LOG=shoal_actors::picker=debug, say, to see each super-seeding offer.
        let _ = env_logger::try_init();
        if mode == "idle" {
            idle_connections(env_u64("SHOAL_SWARM_IDLE", 500) as usize);
        } else {
            swarm(mode.parse().expect("N"));
        }
        return;
    }
    let ns: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![50, 200, 500]
    } else {
        ns
    };
    println!(
        "machine: {}; load at start: {}",
        support::machine(),
        support::load()
    );
    let exe = std::env::current_exe().expect("current exe");
    let mut modes: Vec<String> = ns.iter().map(u64::to_string).collect();
    modes.push("idle".into());
    for mode in modes {
        let status = Command::new(&exe)
            .env("SHOAL_SWARM_CHILD", &mode)
            .status()
            .expect("run the bench child");
        if !status.success() {
            println!("swarm {mode}: the child process failed ({status})");
        }
    }
}

/// Per-downloader view for the availability count.
struct Peer {
    torrent: Torrent,
    events: async_channel::Receiver<TorrentEvent>,
    session: Session,
    have: Vec<bool>,
    complete_at: Option<Duration>,
}

fn swarm(n: usize) {
    let nofile = raise_nofile();
    let size_mib = support::size_mib(64);
    let piece_kib = env_u64("SHOAL_SWARM_PIECE_KIB", 256) as u32;
    let limit = Duration::from_secs(env_u64("SHOAL_SWARM_TIMEOUT", 600));
    let direct = std::env::var_os("SHOAL_SWARM_DIRECT").is_some();
    let dir = support::bench_dir("swarm");
    let data = support::data_file(&dir, size_mib);
    support::warm(&data);
    let tracker = TrackerServer::bind_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        TrackerServerOptions {
            interval: Duration::from_secs(30),
            ..TrackerServerOptions::default()
        },
    )
    .expect("tracker");
    let bytes = create_torrent(
        &data,
        &CreateOptions {
            piece_length: Some(piece_kib << 10),
            trackers: vec![vec![tracker.announce_url()]],
            ..Default::default()
        },
    )
    .expect("create torrent");
    let meta = Arc::new(Metainfo::from_bytes(&bytes).expect("our torrent"));
    let pieces = meta.info.lengths.num_pieces() as usize;
    // Both ends of every connection hold a descriptor in this process: cap the peers per
    // torrent so the swarm fits the open files limit (SHOAL_SWARM_MAX_PEERS overrides).
    let fit = (nofile as usize).saturating_sub(4 * n + 1000) / (n + 1);
    let max_peers = env_u64(
        "SHOAL_SWARM_MAX_PEERS",
        TorrentSettings::default().max_peers.min(fit) as u64,
    ) as usize;
    println!(
        "\nswarm: 1 seeder + {n} downloaders, {size_mib} MiB in {pieces} pieces of {piece_kib} KiB, \
         one runtime ({} executor threads), {} hasher and disk pools, tracker{}; open files limit {nofile}, so at most \
         {max_peers} peers per torrent; load {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if std::env::var_os("SHOAL_SWARM_OWN_POOLS").is_some() {
            "per-session"
        } else {
            "shared"
        },
        if direct { " + seeder as direct peer" } else { " only" },
        support::load()
    );

    let rt = Runtime::new(0);
    // One set of hasher and disk threads for every session, as one process embedding many
    // peers would run it (SHOAL_SWARM_OWN_POOLS=1: each session starts its own).
    let pools = std::env::var_os("SHOAL_SWARM_OWN_POOLS")
        .is_none()
        .then(|| Pools::new(0, 2));
    let session = |settings: SessionSettings| match &pools {
        Some(p) => Session::with_pools(settings, rt.handle(), p.clone()),
        None => Session::with_spawner(settings, rt.handle()),
    };
    let rss0 = status("VmRSS:");
    let heap0 = LIVE.load(Ordering::Relaxed);
    let settings = || SessionSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..SessionSettings::default()
    };
    let started = Instant::now();
    let seeder_session = session(settings()).expect("seeder session");
    let mut seed = AddTorrent::seed(meta.clone(), PathBuf::new());
    seed.content = Some(data.clone());
    seed.settings.max_peers = max_peers;
    let seed_super = std::env::var_os("SHOAL_SWARM_SUPER_SEED").is_some();
    seed.settings.super_seed = seed_super;
    // SHOAL_SWARM_SEED_LAST=1: every downloader first, then the seeder (a crowd waiting for
    // the first seed, super-seeding's own case); times then count from the seeder's start.
    let seed_last = std::env::var_os("SHOAL_SWARM_SEED_LAST").is_some();
    let mut seed = Some(seed);
    let mut start_seeder = || {
        rt.block_on(seeder_session.add_torrent(seed.take().expect("once")))
            .expect("seeder starts")
    };
    let early_seeder = (!seed_last).then(&mut start_seeder);
    let seeder_addr = seeder_session.local_addr();

    // The downloaders are added on a thread of their own while this one watches the swarm
    // from the start: under load adding them takes minutes, and the first ones download (and
    // the seeder uploads) meanwhile.
    let (added_tx, added_rx) = std::sync::mpsc::channel::<Peer>();
    // Set when the watch ends (a timeout or a stall) before every downloader was added.
    let stop_adding = std::sync::atomic::AtomicBool::new(false);
    let adder = || {
        let mut count = 0;
        let mut add_error = None;
        for i in 0..n {
            if stop_adding.load(Ordering::Relaxed) {
                add_error = Some(format!("stopped after {i}: the watch ended"));
                break;
            }
            let out = dir.join(format!("dl-{i}"));
            let _ = std::fs::remove_dir_all(&out);
            let session = match session(settings()) {
                Ok(s) => s,
                Err(e) => {
                    add_error = Some(format!("session {i}: {e}"));
                    break;
                }
            };
            let mut add = AddTorrent::download(meta.clone(), &out);
            add.settings = TorrentSettings {
                max_peers,
                ..TorrentSettings::default()
            };
            if direct {
                add.peers = vec![seeder_addr];
            }
            // A panic here (a thread that cannot be spawned, say) is what breaks; report it.
            let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(session.add_torrent(add))
            }));
            match added {
                Ok(Ok(torrent)) => {
                    let events = torrent.subscribe();
                    count += 1;
                    let _ = added_tx.send(Peer {
                        torrent,
                        events,
                        session,
                        have: vec![false; pieces],
                        complete_at: None,
                    });
                }
                Ok(Err(e)) => {
                    add_error = Some(format!("torrent {i}: {e}"));
                    break;
                }
                Err(_) => {
                    add_error = Some(format!("torrent {i}: panicked while starting"));
                    break;
                }
            }
        }
        let setup = started.elapsed();
        println!(
            "  {count} downloaders started in {:.1} s (each checks its empty file first; the \
             swarm downloads meanwhile); threads {}, RSS {:.0} MiB, heap {:.0} MiB, fds {}",
            setup.as_secs_f64(),
            status("Threads:"),
            status("VmRSS:") as f64 / 1024.0,
            mib(LIVE.load(Ordering::Relaxed).saturating_sub(heap0) as u64),
            open_fds()
        );
        if let Some(e) = &add_error {
            println!("  BROKE while starting: {e}");
        }
        setup
    };
    std::thread::scope(|scope| {
        let adding = scope.spawn(adder);
        let mut peers: Vec<Peer> = Vec::with_capacity(n);
        let (seeder, started) = match early_seeder {
            Some(s) => (s, started),
            None => {
                while !adding.is_finished() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let t = Instant::now();
                println!("  the seeder starts now (SHOAL_SWARM_SEED_LAST): times from here");
                (start_seeder(), t)
            }
        };

        // Watch: availability, completion, resources.
        let mut counts = vec![0u32; pieces];
        let mut first_zero: Option<Duration> = None;
        let mut uploaded_at_full_copy = 0u64;
        let mut max_after_zero = 0usize;
        let mut peak_conns = 0u64;
        let mut heap_at_peak_conns = 0usize;
        let mut peak_threads = 0u64;
        let mut peak_fds = 0usize;
        let mut last_progress = (Instant::now(), 0u64);
        let mut last_print = Instant::now() - Duration::from_secs(10);
        let mut stalled = false;
        let mut samples: Vec<(f64, usize, usize, u64)> = Vec::new();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let t = started.elapsed();
            // Whether every downloader was added: checked before taking them in.
            let all_added = adding.is_finished();
            peers.extend(added_rx.try_iter());
            for p in peers.iter_mut() {
                while let Ok(ev) = p.events.try_recv() {
                    match ev {
                        TorrentEvent::PieceVerified(i) => {
                            let i = i as usize;
                            if i < pieces && !p.have[i] {
                                p.have[i] = true;
                                counts[i] += 1;
                            }
                        }
                        TorrentEvent::Complete => {
                            p.complete_at.get_or_insert(t);
                        }
                        _ => {}
                    }
                }
                if p.complete_at.is_none() && p.torrent.progress().complete {
                    p.complete_at = Some(t);
                }
            }
            let only_seeder = counts.iter().filter(|&&c| c == 0).count();
            let done = peers.iter().filter(|p| p.complete_at.is_some()).count();
            let verified: u64 = peers
                .iter()
                .map(|p| u64::from(p.torrent.progress().verified_pieces))
                .sum();
            let conns: u64 = peers
                .iter()
                .map(|p| u64::from(p.torrent.progress().peers))
                .sum::<u64>()
                + u64::from(seeder.progress().peers);
            if conns > peak_conns {
                peak_conns = conns;
                heap_at_peak_conns = LIVE.load(Ordering::Relaxed).saturating_sub(heap0);
            }
            peak_threads = peak_threads.max(status("Threads:"));
            peak_fds = peak_fds.max(open_fds());
            if only_seeder == 0 && first_zero.is_none() {
                first_zero = Some(t);
                // The downloaders between them hold a full copy: what did that cost the seeder?
                uploaded_at_full_copy = seeder.progress().uploaded;
            }
            if first_zero.is_some() {
                max_after_zero = max_after_zero.max(only_seeder);
            }
            samples.push((t.as_secs_f64(), only_seeder, done, verified));
            if verified > last_progress.1 {
                last_progress = (Instant::now(), verified);
            }
            let all_done = all_added && done == peers.len();
            if last_print.elapsed() >= Duration::from_secs(5) || all_done {
                last_print = Instant::now();
                println!(
                "  t {:>6.1} s: complete {done}/{}, pieces {:.1}%, only at seeder {only_seeder}, \
                 seeder: {} peers, {:.2} copies up; connections {conns}, threads {}, RSS {:.0} \
                 MiB, fds {}, load {}",
                t.as_secs_f64(),
                peers.len(),
                100.0 * verified as f64 / (pieces * peers.len().max(1)) as f64,
                seeder.progress().peers,
                seeder.progress().uploaded as f64 / meta.total_length() as f64,
                status("Threads:"),
                status("VmRSS:") as f64 / 1024.0,
                open_fds(),
                support::load()
            );
            }
            if all_done {
                break;
            }
            if last_progress.0.elapsed() > Duration::from_secs(60) {
                stalled = true;
                println!("  STALL: no piece verified anywhere for 60 s");
                break;
            }
            if t > limit {
                println!("  TIMEOUT after {limit:?}");
                break;
            }
        }
        let total = started.elapsed();
        stop_adding.store(true, Ordering::Relaxed);
        let setup = adding.join().expect("the thread adding downloaders");
        peers.extend(added_rx.try_iter());
        // Heap still held once every download is over (recycled buffers, pools, idle connections).
        let heap_end = LIVE.load(Ordering::Relaxed).saturating_sub(heap0);
        let done = peers.iter().filter(|p| p.complete_at.is_some()).count();
        let mut finish: Vec<f64> = peers
            .iter()
            .filter_map(|p| p.complete_at.map(|d| d.as_secs_f64()))
            .collect();
        finish.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            finish
                .get(((finish.len() as f64 * q) as usize).min(finish.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let hwm = status("VmHWM:") * 1024;
        let heap_peak = PEAK.load(Ordering::Relaxed).saturating_sub(heap0);
        let per_conn = if peak_conns > 0 {
            heap_at_peak_conns as f64 / peak_conns as f64
        } else {
            f64::NAN
        };
        // Availability over time, at a few points.
        let series: Vec<String> = [0.1, 0.25, 0.5, 0.75, 0.9]
            .iter()
            .filter_map(|&q| samples.get((samples.len() as f64 * q) as usize))
            .map(|(t, only, _, _)| format!("{t:.0}s:{only}"))
            .collect();
        println!(
        "  RESULT n={n}: {done}/{} complete{} in {:.1} s (start-up {:.1} s; first done {:.1} s, \
         median {:.1} s, last {:.1} s); peak RSS {:.0} MiB ({:.0} KiB per downloader), peak heap \
         {:.0} MiB, {:.0} MiB still held at the end; peak connections {peak_conns} (heap per connection, all-in: {:.0} KiB); \
         peak threads {peak_threads}, peak fds {peak_fds}",
        peers.len(),
        if stalled { " (STALLED)" } else { "" },
        total.as_secs_f64(),
        setup.as_secs_f64(),
        pct(0.0),
        pct(0.5),
        finish.last().copied().unwrap_or(f64::NAN),
        mib(hwm - rss0 * 1024),
        (hwm - rss0 * 1024) as f64 / 1024.0 / (n.max(1) as f64),
        mib(heap_peak as u64),
        mib(heap_end as u64),
        per_conn / 1024.0,
    );
        println!(
        "  availability n={n}: pieces only at the seeder reached 0 at {} and stayed at most {} \
         afterwards; over time (t:count) {}; the seeder uploaded {:.2} copies of the torrent",
        first_zero.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        max_after_zero,
        series.join(" "),
        seeder.progress().uploaded as f64 / meta.total_length() as f64
    );
        println!(
        "  seeder n={n} ({}): uploaded {:.2} copies before the swarm held a full copy, {:.2} in all",
        if seed_super { "super-seeding" } else { "normal seeding" },
        uploaded_at_full_copy as f64 / meta.total_length() as f64,
        seeder.progress().uploaded as f64 / meta.total_length() as f64
    );
        after_completion(&peers, &seeder, heap0);
        let t = Instant::now();
        rt.block_on(async {
            for p in &peers {
                p.session.shutdown().await;
            }
            seeder_session.shutdown().await;
            if let Some(p) = &pools {
                p.shutdown().await;
            }
        });
        println!(
            "  shutdown of every session: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        drop(peers);
        for i in 0..n {
            let _ = std::fs::remove_dir_all(dir.join(format!("dl-{i}")));
        }
        tracker.shutdown();
    });
}

/// What the swarm still holds once every download is over: connections between seeds are of
/// no use and should close within seconds. Reports connections and heap each second for
/// `SHOAL_SWARM_LINGER` seconds (10), or until no connection is left.
fn after_completion(peers: &[Peer], seeder: &Torrent, heap0: usize) {
    let secs = env_u64("SHOAL_SWARM_LINGER", 10);
    let conns = || {
        peers
            .iter()
            .map(|p| u64::from(p.torrent.progress().peers))
            .sum::<u64>()
            + u64::from(seeder.progress().peers)
    };
    let mut series = Vec::new();
    for i in 0..=secs {
        let c = conns();
        let heap = LIVE.load(Ordering::Relaxed).saturating_sub(heap0);
        series.push(format!("{i}s:{c}/{:.0}MiB", mib(heap as u64)));
        if c == 0 || i == secs {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "  after completion: connections/heap each second {}; RSS {:.0} MiB",
        series.join(" "),
        status("VmRSS:") as f64 / 1024.0
    );
}

/// The memory of idle peer connections: one downloading torrent, `k` raw TCP peers that
/// handshake and then say nothing. Heap and RSS growth divided by `k`.
fn idle_connections(k: usize) {
    raise_nofile();
    let dir = support::bench_dir("swarm");
    let data = support::data_file(&dir, support::size_mib(64));
    let bytes = create_torrent(
        &data,
        &CreateOptions {
            piece_length: Some(256 << 10),
            ..Default::default()
        },
    )
    .expect("create torrent");
    let meta = Arc::new(Metainfo::from_bytes(&bytes).expect("our torrent"));
    let rt = Runtime::new(0);
    let session = Session::with_spawner(
        SessionSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..SessionSettings::default()
        },
        rt.handle(),
    )
    .expect("session");
    let out = dir.join("idle");
    let _ = std::fs::remove_dir_all(&out);
    let mut add = AddTorrent::download(meta.clone(), &out);
    add.settings.use_trackers = false;
    add.settings.max_peers = k + 10;
    let torrent = rt.block_on(session.add_torrent(add)).expect("torrent");
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, heap0) = (status("VmRSS:"), LIVE.load(Ordering::Relaxed));
    let mut socks = Vec::with_capacity(k);
    let hs = Handshake::new(meta.info_hash, PeerId::generate());
    let mut refused = 0;
    for _ in 0..k {
        let mut s = TcpStream::connect(session.local_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut hs = hs;
        hs.peer_id = PeerId::generate();
        s.write_all(&hs.to_bytes()).expect("send handshake");
        let mut buf = [0u8; HANDSHAKE_LEN];
        if s.read_exact(&mut buf).is_err() {
            refused += 1;
        }
        socks.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while (torrent.progress().peers as usize) < k - refused && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let connected = torrent.progress().peers as usize;
    let (rss1, heap1) = (status("VmRSS:"), LIVE.load(Ordering::Relaxed));
    let n = connected.max(1) as f64;
    println!(
        "\nidle connections: {connected} of {k} raw peers connected ({refused} refused); per idle \
         connection: heap {:.1} KiB, RSS {:.1} KiB (target: under 64 KiB); load {}",
        heap1.saturating_sub(heap0) as f64 / 1024.0 / n,
        (rss1.saturating_sub(rss0)) as f64 / n,
        support::load()
    );
    drop(socks);
    rt.block_on(session.shutdown());
    let _ = std::fs::remove_dir_all(&out);
}
