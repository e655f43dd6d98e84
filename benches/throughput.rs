//! One seeder, one downloader, one file on loopback: shoal against libtorrent and aria2c.
//! Run with `cargo bench --bench throughput`.
//!
//! Cases, for 1 MiB and 256 KiB pieces:
//! - (a) a `shoal seed` process, a `shoal download` process, at each request depth given
//!   (`--queue-depth`, the floor of the adaptive queue; by default only 5, the default);
//! - (b) a libtorrent seeder (benches/helpers/lt_bench.py) with libtorrent's
//!   `high_performance_seed()` settings, what a well-run seedbox uses, and `shoal download`,
//!   at each depth;
//! - (c) the same tuned libtorrent seeder with a libtorrent downloader (the reference), and
//!   with aria2c (which finds the seeder through an embedded tracker: it cannot be given a
//!   peer on its command line);
//! - (d) `shoal seed --encryption allow` with the same libtorrent downloader: shoal's seeding
//!   against (c)'s, both answering the downloader's MSE offer with plaintext, as libtorrent's
//!   seeder does by default; (d-prefer, only when asked for) the same under shoal's default
//!   `prefer`, which answers RC4;
//! - (untuned, only when asked for) a second libtorrent seeder with libtorrent's default
//!   settings, with `shoal download` and with the libtorrent downloader: what this bench
//!   measured before, when the seeder was the bottleneck for both downloaders;
//! - (floor) what the machine can do for the same job without any protocol: in this process, a
//!   sender thread reads the file piece by piece (`read_exact_at`) into a socket on loopback, a
//!   receiver thread reads each piece, checks its SHA-1 against the torrent and `write_all_at`s
//!   it to a fresh file. Its time runs from starting the threads (connected already) to the
//!   last write; "down CPU" is the receiver thread's, "seed CPU" the sender's.
//!
//! Once per run it also prints SHA-1 on one core in memory (a 64 MiB buffer, median of five):
//! the ceiling for a downloader that hashes on one core.
//!
//! What is measured for each download:
//! - wall: from spawning the downloader to its exit, which is when a user's script can go on.
//!   It includes start-up (process start, the check of the empty file, connecting) and the
//!   tail after the last piece (flushing, saving resume data, shutting down);
//! - tail: from the downloader's "complete" line (aria2c: its on-bt-download-complete hook)
//!   to its exit;
//! - transfer: at the seeder, from its first to its last payload byte, the same way for every
//!   seeder: sampling its bytes written (`wchar` in `/proc/<pid>/io`) every 2 ms, see
//!   `support::UploadWatch`; accurate to a few milliseconds;
//! - CPU: every downloader is its own process, so its CPU time (user + system, all threads)
//!   comes from `wait4`, its peak RSS from sampling `VmHWM` (see `support::PeakRss`); the
//!   seeder's CPU per download is read from `/proc/<pid>/stat` before and after.
//!
//! The source file lives in the temp folder between runs and is read before timing, so it is
//! hot in the page cache; downloads land in the page cache too (the machine has far more RAM
//! than the file); each output is deleted right after its run, and everything dirty written
//! back (`sync`) before the next.
//!
//! Knobs: `SHOAL_BENCH_MIB` (default 1024), `SHOAL_BENCH_RUNS` (5), `SHOAL_BENCH_DEPTHS`
//! (`5`; `5,16,64` compares floors), `SHOAL_BENCH_PIECES` (KiB, `1024,256`), `SHOAL_BENCH_CASES`
//! (a subset of `floor,a,b,lt,aria2,d,d-prefer,untuned`; all but `d-prefer` and `untuned` by
//! default),
//! `SHOAL_BENCH_VERBOSE=1` echoes the children's output.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use shoal_actors::tracker_server::TrackerServer;
use shoal_engine::metainfo::Metainfo;
use support::{median, Proc};

/// The longest a single download may take before the run is given up.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(300);

/// The longest a seeder may take to check its data and start.
const SEEDER_LIMIT: Duration = Duration::from_secs(120);

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Width of the case column.
const LABEL: usize = 38;

/// One measured download.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// From spawning the downloader to its exit (the floor: to its last write).
    secs: f64,
    /// From its "complete" line to its exit.
    tail: f64,
    /// At the seeder, from the first to the last payload byte.
    transfer: Option<f64>,
    cpu_down: f64,
    cpu_seed: f64,
    /// The downloader's peak RSS, MiB (none for the floor, which runs in this process).
    rss_mib: Option<f64>,
}

/// One case's label, samples and the load at each run.
type Case = (String, Vec<Sample>, Vec<String>);

/// How to tell that a downloader is done.
enum Done {
    /// A line of its output contains this.
    Line(&'static str),
    /// This file appears (aria2c's hook writes it).
    File(PathBuf),
}

/// The seeder of a download, and how its upload is timed.
enum Seeder<'a> {
    /// A `shoal seed` process: from its `rchar` (see `support::UploadWatch`).
    Shoal(u32),
    /// A libtorrent seeder (lt_bench.py): from the "upload" line it prints after each upload.
    Lt(&'a mut Proc),
}

impl Seeder<'_> {
    fn pid(&self) -> u32 {
        match self {
            Seeder::Shoal(pid) => *pid,
            Seeder::Lt(p) => p.pid(),
        }
    }
}

struct Bench {
    shoal: PathBuf,
    dir: PathBuf,
    bytes: u64,
    tracker_url: String,
}

impl Bench {
    /// Runs one download into a fresh folder and measures it.
    fn download(
        &self,
        label: &str,
        cmd: Command,
        done: Done,
        out: &Path,
        file_name: &str,
        seeder: &mut Seeder<'_>,
    ) -> Option<Sample> {
        let seeder_pid = seeder.pid();
        let seed_before = support::proc_cpu(seeder_pid)?;
        let upload = match seeder {
            Seeder::Shoal(pid) => Some(support::UploadWatch::start(*pid, "rchar")),
            Seeder::Lt(p) => {
                p.drain_lines();
                None
            }
        };
        let mut p = Proc::spawn(cmd);
        let rss = support::PeakRss::start(p.pid());
        let finished = match &done {
            Done::Line(marker) => p.wait_line(marker, DOWNLOAD_LIMIT).map(|(t, _)| t),
            Done::File(mark) => {
                let deadline = Instant::now() + DOWNLOAD_LIMIT;
                loop {
                    if mark.exists() {
                        break Some(Instant::now());
                    }
                    if Instant::now() > deadline {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        let started = p.started();
        let exit = p.wait_exit(Duration::from_secs(60));
        let rss = rss.finish();
        let transfer = match (upload, seeder) {
            (Some(watch), _) => watch.finish(),
            (None, Seeder::Lt(p)) => {
                p.wait_line("upload ", Duration::from_secs(5))
                    .and_then(|(_, line)| {
                        let f: Vec<f64> = line
                            .split_whitespace()
                            .skip(1)
                            .filter_map(|x| x.parse().ok())
                            .collect();
                        (f.len() == 3).then(|| (f[1] - f[0], f[2] as u64))
                    })
            }
            (None, Seeder::Shoal(_)) => None,
        };
        let seed_after = support::proc_cpu(seeder_pid)?;
        let Some(finished) = finished else {
            eprintln!("  {label}: did not complete within {DOWNLOAD_LIMIT:?}");
            return None;
        };
        let Some(exit) = exit else {
            eprintln!("  {label}: did not exit");
            return None;
        };
        let got = std::fs::metadata(out.join(file_name)).map(|m| m.len()).ok();
        // Gone at once, not before this case's next run: here a gigabyte of page cache written
        // just before makes the next writer's page-cache writes cost up to 3x (seen with dd).
        let _ = std::fs::remove_dir_all(out);
        if got != Some(self.bytes) {
            eprintln!(
                "  {label}: output has {got:?} bytes, expected {}",
                self.bytes
            );
            return None;
        }
        let transfer = match transfer {
            // The seeder wrote at least the file: otherwise what was seen is not the upload.
            Some((secs, bytes)) if bytes >= self.bytes => Some(secs),
            seen => {
                eprintln!(
                    "  {label}: the seeder's upload was not seen whole ({seen:?}: seconds, bytes)"
                );
                None
            }
        };
        Some(Sample {
            secs: exit.at.duration_since(started).as_secs_f64(),
            tail: exit.at.saturating_duration_since(finished).as_secs_f64(),
            transfer,
            cpu_down: exit.cpu,
            cpu_seed: (seed_after.0 + seed_after.1) - (seed_before.0 + seed_before.1),
            rss_mib: rss.map(|kib| kib as f64 / 1024.0),
        })
    }

    fn fresh_out(&self, case: &str) -> PathBuf {
        let out = self.dir.join(format!("out-{case}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("create output folder");
        // Write back what earlier runs left dirty, so that no run pays for another's writeback.
        let _ = Command::new("sync").status();
        out
    }

    fn shoal_download(&self, torrent: &Path, out: &Path, seeder: u16, depth: usize) -> Command {
        let mut cmd = Command::new(&self.shoal);
        cmd.arg("download")
            .arg(torrent)
            .arg("-o")
            .arg(out)
            .args(["--peer", &format!("127.0.0.1:{seeder}")])
            .args(["--listen", "127.0.0.1:0", "--no-trackers"])
            .args(["--queue-depth", &depth.to_string()]);
        cmd
    }

    fn lt_download(&self, torrent: &Path, out: &Path, seeder: u16) -> Command {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(support::helpers_dir().join("lt_bench.py"))
            .arg("download")
            .arg(torrent)
            .arg(out)
            .arg(format!("127.0.0.1:{seeder}"));
        cmd
    }

    fn aria2_download(&self, torrent: &Path, out: &Path) -> (Command, PathBuf) {
        let mark = out.join("aria2-complete.mark");
        let hook = self.dir.join("aria2-hook.sh");
        std::fs::write(
            &hook,
            "#!/bin/sh\ntouch \"$(dirname \"$3\")/aria2-complete.mark\"\n",
        )
        .expect("write aria2 hook");
        let _ = Command::new("chmod").arg("+x").arg(&hook).status();
        let mut cmd = Command::new("aria2c");
        cmd.arg("--dir")
            .arg(out)
            .args([
                "--interface=127.0.0.1",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--seed-time=0",
                "--file-allocation=falloc",
                "--summary-interval=0",
                "--console-log-level=warn",
                "--listen-port=49152-65000",
            ])
            .arg(format!("--bt-tracker={}", self.tracker_url))
            .arg(format!("--on-bt-download-complete={}", hook.display()))
            .arg(torrent);
        (cmd, mark)
    }
}

/// The floor case: `data` sent as `meta`'s pieces over loopback TCP from one thread to another,
/// which checks each piece's SHA-1 and writes it at its offset into a new file in `out`.
fn floor(data: &Path, meta: &Metainfo, out: &Path) -> Result<Sample, String> {
    let lengths = meta.info.lengths;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local addr: {e}"))?;
    // Connected before the clock starts, so that a side failing early cannot leave the other
    // waiting in accept: dropping its stream wakes the other with an error.
    let mut tx = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let (mut rx, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let target = out.join(&meta.info.name);
    let piece_len = lengths.piece_length() as usize;
    let started = Instant::now();
    let (sent, received) = std::thread::scope(|s| {
        let sender = s.spawn(move || -> std::io::Result<f64> {
            let cpu = support::thread_cpu();
            let file = File::open(data)?;
            let mut buf = vec![0u8; piece_len];
            for piece in 0..lengths.num_pieces() {
                let buf = &mut buf[..lengths.piece_len(piece) as usize];
                file.read_exact_at(buf, lengths.piece_offset(piece))?;
                tx.write_all(buf)?;
            }
            Ok(support::thread_cpu() - cpu)
        });
        let receiver = s.spawn(move || -> std::io::Result<(Instant, f64, u32)> {
            let cpu = support::thread_cpu();
            let file = File::create(&target)?;
            let mut buf = vec![0u8; piece_len];
            let mut bad = 0;
            for piece in 0..lengths.num_pieces() {
                let buf = &mut buf[..lengths.piece_len(piece) as usize];
                rx.read_exact(buf)?;
                let digest = Sha1::digest(&*buf);
                match meta.info.pieces.get(piece as usize) {
                    Some(hash) if hash[..] == digest[..] => {}
                    _ => bad += 1,
                }
                file.write_all_at(buf, lengths.piece_offset(piece))?;
            }
            Ok((Instant::now(), support::thread_cpu() - cpu, bad))
        });
        (sender.join(), receiver.join())
    });
    let cpu_seed = sent
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("sender: {e}"))?;
    let (finished, cpu_down, bad) = received
        .map_err(|_| "receiver panicked".to_string())?
        .map_err(|e| format!("receiver: {e}"))?;
    if bad > 0 {
        return Err(format!("{bad} pieces failed their hash check"));
    }
    let got = std::fs::metadata(out.join(&meta.info.name)).map(|m| m.len());
    if got.as_ref().ok() != Some(&lengths.total_length()) {
        return Err(format!(
            "output has {got:?} bytes, expected {}",
            lengths.total_length()
        ));
    }
    let secs = finished.duration_since(started).as_secs_f64();
    Ok(Sample {
        secs,
        tail: 0.0,
        transfer: Some(secs),
        cpu_down,
        cpu_seed,
        rss_mib: None,
    })
}

/// SHA-1 on one core in memory, MB/s: the median of five passes over a 64 MiB buffer.
fn sha1_one_core() -> f64 {
    let mut buf = vec![0u8; 64 << 20];
    fastrand::Rng::with_seed(1).fill(&mut buf);
    let rates = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(Sha1::digest(std::hint::black_box(&buf)));
            support::mb_per_s(buf.len() as u64, t.elapsed())
        })
        .collect();
    median(rates)
}

/// Starts a libtorrent seeder of `torrent` (its data in `dir`) on `port`, announcing to
/// `tracker` when given; `tuned`: with `high_performance_seed()` settings.
fn lt_seeder(torrent: &Path, dir: &Path, port: u16, tracker: Option<&str>, tuned: bool) -> Proc {
    let mut c = Command::new("/usr/bin/python3");
    c.arg(support::helpers_dir().join("lt_bench.py"))
        .arg("seed")
        .arg(torrent)
        .arg(dir)
        .arg(port.to_string())
        .arg(tracker.unwrap_or("-"))
        .arg(if tuned { "tuned" } else { "untuned" });
    let mut p = Proc::spawn(c);
    p.wait_line("ready", SEEDER_LIMIT)
        .expect("libtorrent seeder started");
    p
}

fn main() {
    let bench_started = Instant::now();
    let mib = support::size_mib(1024);
    let runs = support::runs(5);
    let depths: Vec<usize> = env_list("SHOAL_BENCH_DEPTHS", "5");
    let pieces: Vec<u32> = env_list("SHOAL_BENCH_PIECES", "1024,256");
    let cases: Vec<String> = env_list("SHOAL_BENCH_CASES", "floor,a,b,lt,aria2,d");
    let has = |c: &str| cases.iter().any(|x| x == c);
    let lt = support::have_libtorrent();
    let aria2 = support::have_program("aria2c");
    if !lt {
        eprintln!("python3-libtorrent is missing: cases (b), (c), (d) and untuned are skipped");
    }
    if !aria2 {
        eprintln!("aria2c is missing: its case is skipped");
    }
    println!(
        "machine: {}; load at start: {}",
        support::machine(),
        support::load()
    );
    let sha1_mbs = sha1_one_core();
    println!("sha1 on one core, in memory: {sha1_mbs:.0} MB/s");

    let dir = support::bench_dir("throughput");
    let data = support::data_file(&dir, mib);
    let file_name = data.file_name().unwrap().to_string_lossy().to_string();
    support::warm(&data);
    let tracker = TrackerServer::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("tracker");
    let bench = Bench {
        shoal: support::shoal_bin(),
        dir: dir.clone(),
        bytes: mib << 20,
        tracker_url: tracker.announce_url(),
    };
    let gib = (mib as f64) / 1024.0;
    // (piece KiB, case number) -> (label, samples, loads), cases in the order they ran.
    let mut results: BTreeMap<(u32, usize), Case> = BTreeMap::new();

    for &piece_kib in &pieces {
        let torrent = support::torrent_for(&data, piece_kib << 10);
        let meta = std::fs::read(&torrent)
            .map_err(|e| e.to_string())
            .and_then(|b| Metainfo::from_bytes(&b).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("read {}: {e}", torrent.display()));
        println!("\n{mib} MiB, {piece_kib} KiB pieces, {runs} runs");

        // `--encryption allow`: a libtorrent downloader (cases d) offers MSE with both levels,
        // and the tuned libtorrent seeder answers plaintext; so does this one. Under the
        // default `prefer` it would answer RC4 (case d-prefer, a seeder of its own).
        let shoal_port = support::free_port();
        let spawn_shoal_seed = |port: u16, encryption: &str| {
            let mut seed = Proc::spawn({
                let mut c = Command::new(&bench.shoal);
                c.arg("seed").arg(&torrent).arg(&data).args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--no-trackers",
                    "--encryption",
                    encryption,
                ]);
                c
            });
            seed.wait_line("shoal: seeding", SEEDER_LIMIT)
                .expect("shoal seeder started");
            seed
        };
        let shoal_seed = spawn_shoal_seed(shoal_port, "allow");
        let prefer_port = support::free_port();
        let prefer_seed = (lt && has("d-prefer")).then(|| spawn_shoal_seed(prefer_port, "prefer"));
        let lt_port = support::free_port();
        // Only the tuned seeder announces: aria2c, which finds its seeder there, is compared
        // against the tuned one.
        let mut lt_seed =
            lt.then(|| lt_seeder(&torrent, &dir, lt_port, Some(&bench.tracker_url), true));
        let untuned_port = support::free_port();
        let mut untuned_seed =
            (lt && has("untuned")).then(|| lt_seeder(&torrent, &dir, untuned_port, None, false));

        // One untimed download first: here the first download after start-up is often two to
        // three times as costly (fresh page-cache memory in this VM: the copy into the page
        // cache dominates its profile), and that would fall on whichever case runs first.
        {
            let out = bench.fresh_out("warm-up");
            let cmd = bench.shoal_download(
                &torrent,
                &out,
                shoal_port,
                depths.first().copied().unwrap_or(5),
            );
            let warm = Done::Line("is complete");
            let mut seeder = Seeder::Shoal(shoal_seed.pid());
            let _ = bench.download("warm-up", cmd, warm, &out, &file_name, &mut seeder);
            let _ = std::fs::remove_dir_all(&out);
        }

        for run in 0..runs {
            let mut case_no = 0;
            let mut record = |label: String, s: Option<Sample>| {
                let load = support::load();
                match s {
                    Some(s) => println!(
                        "  run {} {label:<LABEL$} {:>6.1} MB/s {:>6.2} s  tail {:>4.0} ms  \
                         transfer {:>6} MB/s  down CPU {:>5.2} s/GiB  seed CPU {:>5.2} s/GiB  \
                         RSS {:>5} MiB  load {load}",
                        run + 1,
                        bench.bytes as f64 / 1e6 / s.secs,
                        s.secs,
                        s.tail * 1e3,
                        s.transfer.map_or("?".into(), |t| format!(
                            "{:.1}",
                            bench.bytes as f64 / 1e6 / t
                        )),
                        s.cpu_down / gib,
                        s.cpu_seed / gib,
                        s.rss_mib.map_or("-".into(), |r| format!("{r:.0}")),
                    ),
                    None => println!("  run {} {label:<LABEL$} failed  load {load}", run + 1),
                }
                let e = results
                    .entry((piece_kib, case_no))
                    .or_insert_with(|| (label, Vec::new(), Vec::new()));
                e.1.extend(s);
                e.2.push(load);
                case_no += 1;
            };
            if has("floor") {
                let out = bench.fresh_out("floor");
                let s = floor(&data, &meta, &out)
                    .inspect_err(|e| eprintln!("  floor: {e}"))
                    .ok();
                let _ = std::fs::remove_dir_all(&out);
                record("(floor) TCP + SHA-1 + pwrite".into(), s);
            }
            let shoal_down = |case: &str, port: u16, seeder: &mut Seeder<'_>, d: usize| {
                let out = bench.fresh_out(case);
                let cmd = bench.shoal_download(&torrent, &out, port, d);
                let done = Done::Line("is complete");
                bench.download(case, cmd, done, &out, &file_name, seeder)
            };
            let lt_down = |case: &str, port: u16, seeder: &mut Seeder<'_>| {
                let out = bench.fresh_out(case);
                let cmd = bench.lt_download(&torrent, &out, port);
                let done = Done::Line("complete ");
                bench.download(case, cmd, done, &out, &file_name, seeder)
            };
            if has("a") {
                for &d in &depths {
                    let s = shoal_down("a", shoal_port, &mut Seeder::Shoal(shoal_seed.pid()), d);
                    record(format!("(a) shoal -> shoal, depth {d}"), s);
                }
            }
            if let Some(seed) = lt_seed.as_mut() {
                if has("b") {
                    for &d in &depths {
                        let s = shoal_down("b", lt_port, &mut Seeder::Lt(seed), d);
                        record(format!("(b) lt tuned -> shoal, depth {d}"), s);
                    }
                }
                if has("lt") {
                    let s = lt_down("lt", lt_port, &mut Seeder::Lt(seed));
                    record("(c) lt tuned -> lt".into(), s);
                }
                if has("aria2") && aria2 {
                    let out = bench.fresh_out("aria2");
                    let (cmd, mark) = bench.aria2_download(&torrent, &out);
                    let s = bench.download(
                        "aria2",
                        cmd,
                        Done::File(mark),
                        &out,
                        &file_name,
                        &mut Seeder::Lt(seed),
                    );
                    record("(c) lt tuned -> aria2c".into(), s);
                }
                if has("d") {
                    let s = lt_down("d", shoal_port, &mut Seeder::Shoal(shoal_seed.pid()));
                    record("(d) shoal (allow) -> lt".into(), s);
                }
                if let Some(seed) = prefer_seed.as_ref() {
                    let s = lt_down("d-prefer", prefer_port, &mut Seeder::Shoal(seed.pid()));
                    record("(d-prefer) shoal (RC4) -> lt".into(), s);
                }
            }
            if let Some(seed) = untuned_seed.as_mut() {
                let d = depths.first().copied().unwrap_or(5);
                let s = shoal_down("untuned", untuned_port, &mut Seeder::Lt(seed), d);
                record(format!("(untuned) lt default -> shoal, depth {d}"), s);
                let s = lt_down("untuned", untuned_port, &mut Seeder::Lt(seed));
                record("(untuned) lt default -> lt".into(), s);
            }
        }
        drop(shoal_seed);
        drop(prefer_seed);
        drop(lt_seed);
        drop(untuned_seed);
    }
    for case in ["floor", "a", "b", "lt", "aria2", "d", "d-prefer", "untuned"] {
        let _ = std::fs::remove_dir_all(dir.join(format!("out-{case}")));
    }

    println!(
        "\nmedians ({mib} MiB file hot in page cache, loopback; wall: downloader spawn to exit; \
         transfer: first to last payload byte at the seeder; tail: \"complete\" to exit):"
    );
    println!(
        "{:>6}  {:<LABEL$} {:>7} {:>9} {:>8} {:>9} {:>9} {:>8}  loads during runs",
        "pieces", "case", "wall", "transfer", "tail", "down CPU", "seed CPU", "down RSS"
    );
    println!(
        "{:>6}  {:<LABEL$} {:>7} {:>9} {:>8} {:>9} {:>9} {:>8}",
        "", "", "MB/s", "MB/s", "ms", "s/GiB", "s/GiB", "MiB"
    );
    for ((piece_kib, _), (label, samples, loads)) in &results {
        let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let show = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
        let mb = |secs: f64| bench.bytes as f64 / 1e6 / secs;
        let wall = of(&|s| Some(mb(s.secs)));
        let transfer = of(&|s| s.transfer.map(mb));
        let tail = of(&|s| Some(s.tail * 1e3));
        let cd = of(&|s| Some(s.cpu_down / gib));
        let cs = of(&|s| Some(s.cpu_seed / gib));
        let rss = of(&|s| s.rss_mib);
        let loads: Vec<&str> = loads
            .iter()
            .map(|l| l.split(' ').next().unwrap_or("?"))
            .collect();
        println!(
            "{:>5}K  {label:<LABEL$} {:>7} {:>9} {:>8} {:>9} {:>9} {:>8}  {} ({} of {} ok)",
            piece_kib,
            show(wall, 1),
            show(transfer, 1),
            show(tail, 0),
            show(cd, 2),
            show(cs, 2),
            show(rss, 0),
            loads.join(" "),
            samples.len(),
            loads.len()
        );
    }
    println!(
        "{:>6}  {:<LABEL$} {sha1_mbs:>7.0}",
        "-", "sha1 on one core, in memory, MB/s"
    );
    println!(
        "\nthe whole bench took {:.0} s",
        bench_started.elapsed().as_secs_f64()
    );
    tracker.shutdown();
}
