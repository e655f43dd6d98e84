//! uTP throughput and the cost of MSE/PE encryption, on loopback. Run with
//! `cargo bench --bench utp_mse`.
//!
//! Part uTP (256 MiB, 1 MiB pieces), in one run, `shoal download --encryption off` (the
//! seeders speak plaintext only, and the MSE part measures encryption):
//! - shoal → shoal over uTP: `shoal seed` and `shoal download` in a network namespace of their
//!   own (made with `ip netns`, needs root) whose loopback drops TCP to the seeder's port
//!   (nftables), so the download's dial, which tries TCP and uTP at once, gets through over uTP
//!   only. Without root, `ip` or `nft` the row says why it is missing;
//! - libtorrent → shoal: a libtorrent seeder with TCP off (`benches/helpers/lt_utp_mse.py seed
//!   --utp-only`), `shoal download` with default settings;
//! - libtorrent → libtorrent, both with TCP off.
//!
//! Part MSE (1 GiB, 1 MiB pieces), plaintext against RC4, each pair alternating run by run:
//! - from one libtorrent seeder with `high_performance_seed()` settings over TCP that accepts
//!   both (`--encryption enabled`): `shoal download --encryption off` and `require`, and a
//!   libtorrent downloader (`lt_utp_mse.py download`, default settings plus the loopback ones)
//!   `off` and `forced-rc4`. libtorrent's own RC4/plaintext rate ratio, against its own seeder,
//!   is the reference for shoal's (libtorrent's seeder encrypts on one thread with a byte loop,
//!   which caps both);
//! - shoal → shoal: `shoal seed --encryption prefer` (accepts both) and `shoal download
//!   --encryption off` and `require`: our RC4 on both ends, where the cost is ours alone.
//!
//! After each table, a line per pair: the RC4/plaintext rate ratio (wall and from the first
//! connection) and the CPU s/GiB RC4 adds to each side.
//!
//! Every downloader is its own process: its CPU time (user + system, all threads) comes from
//! `wait4`, the seeder's from `/proc/<pid>/stat` before and after, and the seeder's busiest
//! thread's from `/proc/<pid>/task/*/stat` (libtorrent encrypts on its one network thread, so
//! that thread's CPU per GiB bounds the rate it can send at). Time runs from spawning the
//! downloader to its completion line, so it includes start-up. Figures are medians of the runs;
//! the load average is printed before and after.
//!
//! Knobs: `SHOAL_BENCH_MIB` (uTP part, 256), `SHOAL_BENCH_MSE_MIB` (MSE part, 1024),
//! `SHOAL_BENCH_RUNS` (3), `SHOAL_BENCH_PART` (`utp` or `mse`: one part only),
//! `SHOAL_BENCH_BASELINE=/path/to/shoal` (MSE part: that build's downloads alternate with this
//! one's against the same seeder, a row each, for an A/B in one run), `SHOAL_BENCH_VERBOSE=1`
//! echoes the children's output.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{median, Proc};

/// The longest one download may take before the run counts as failed.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(300);
/// The longest a seeder may take to check its data and start.
const SEEDER_LIMIT: Duration = Duration::from_secs(120);
/// The debug line of shoal's first established peer connection (its extended handshake).
const CONNECTED: &str = "extended handshake from";
/// shoal download's completion line.
const SHOAL_DONE: &str = "is complete";
/// Piece size of both parts.
const PIECE: u32 = 1 << 20;

/// One variant of a case: its label, the download command for an output folder, and the
/// downloader's completion line (`SHOAL_DONE`, or libtorrent's "complete ").
type Variant<'a> = (String, &'a dyn Fn(&Path) -> Command, &'static str);

/// One measured download.
struct Sample {
    secs: f64,
    /// From the first peer connection's extended handshake (shoal) or the first dial
    /// (libtorrent's own count) to completion: the transfer without start-up and redials.
    connected_secs: Option<f64>,
    cpu_down: f64,
    cpu_seed: f64,
    /// CPU of the seeder's busiest thread.
    cpu_seed_top: f64,
}

/// A case's medians over its runs.
struct Medians {
    /// Wall MB/s, from spawning the downloader.
    rate: f64,
    /// MB/s from the first connection, when known.
    connected: Option<f64>,
    /// The downloader's CPU s/GiB.
    cpu_down: f64,
    /// The seeder's CPU s/GiB.
    cpu_seed: f64,
}

/// Prints what RC4 costs against plaintext, from two cases' medians of one run.
fn rc4_cost(what: &str, plain: &Option<Medians>, rc4: &Option<Medians>) {
    let (Some(p), Some(r)) = (plain, rc4) else {
        println!("- {what}: a case failed, no ratio");
        return;
    };
    let connected = match (p.connected, r.connected) {
        (Some(p), Some(r)) => format!(
            ", connected {:.2} ({:.0}% slower)",
            r / p,
            100.0 * (1.0 - r / p)
        ),
        _ => String::new(),
    };
    println!(
        "- {what}: RC4/plaintext rate {:.2} ({:.0}% slower){connected}; RC4 adds {:.2} CPU s/GiB \
         to the downloader, {:.2} to the seeder",
        r.rate / p.rate,
        100.0 * (1.0 - r.rate / p.rate),
        r.cpu_down - p.cpu_down,
        r.cpu_seed - p.cpu_seed,
    );
}

/// The bench's shared state.
struct Bench {
    shoal: PathBuf,
    dir: PathBuf,
}

impl Bench {
    /// Runs one download into `out` (which it deletes after) and measures it; `None` (said on
    /// stderr) when it fails, times out or the output has the wrong size.
    #[allow(clippy::too_many_arguments)]
    fn download(
        &self,
        label: &str,
        cmd: Command,
        marker: &str,
        out: &Path,
        file_name: &str,
        bytes: u64,
        seeder_pid: u32,
    ) -> Option<Sample> {
        let seed_before = support::proc_cpu(seeder_pid)?;
        let threads_before = thread_cpu(seeder_pid);
        let mut p = Proc::spawn(cmd);
        // Only shoal prints the CONNECTED line (libtorrent counts from its dial itself).
        let connected = if marker == SHOAL_DONE {
            p.wait_line(CONNECTED, DOWNLOAD_LIMIT).map(|(t, _)| t)
        } else {
            None
        };
        let finished = p.wait_line(marker, DOWNLOAD_LIMIT);
        let started = p.started();
        // libtorrent's line is "complete SECONDS", counted from its dial.
        let connected_secs = match (&finished, connected) {
            (Some((t, _)), Some(c)) => Some(t.duration_since(c).as_secs_f64()),
            (Some((_, line)), None) => line
                .strip_prefix("complete ")
                .and_then(|s| s.trim().parse().ok()),
            _ => None,
        };
        let finished = finished.map(|(t, _)| t);
        let cpu_down = p.wait_rusage(Duration::from_secs(60));
        let seed_after = support::proc_cpu(seeder_pid)?;
        let threads_after = thread_cpu(seeder_pid);
        let got = std::fs::metadata(out.join(file_name)).map(|m| m.len()).ok();
        let _ = std::fs::remove_dir_all(out);
        let Some(finished) = finished else {
            eprintln!("  {label}: did not complete within {DOWNLOAD_LIMIT:?}");
            return None;
        };
        if got != Some(bytes) {
            eprintln!("  {label}: output has {got:?} bytes, expected {bytes}");
            return None;
        }
        Some(Sample {
            secs: finished.duration_since(started).as_secs_f64(),
            connected_secs,
            cpu_down: cpu_down?,
            cpu_seed: (seed_after.0 + seed_after.1) - (seed_before.0 + seed_before.1),
            cpu_seed_top: threads_after
                .iter()
                .map(|(tid, after)| {
                    let before = threads_before.iter().find(|(t, _)| t == tid);
                    after - before.map_or(0.0, |(_, b)| *b)
                })
                .fold(0.0, f64::max),
        })
    }

    /// A fresh, empty output folder, with earlier runs' dirty pages written back.
    fn fresh_out(&self, case: &str) -> PathBuf {
        let out = self.dir.join(format!("out-{case}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("create output folder");
        let _ = Command::new("sync").status();
        out
    }

    /// `shoal download` (the build at `bin`) from 127.0.0.1:`seeder`, default transport
    /// settings, inside namespace `ns` when given.
    #[allow(clippy::too_many_arguments)]
    fn shoal_download(
        &self,
        bin: &Path,
        ns: Option<&str>,
        torrent: &Path,
        out: &Path,
        seeder: u16,
        encryption: &str,
    ) -> Command {
        let mut cmd = in_ns(ns, bin);
        // For the CONNECTED line.
        cmd.env("RUST_LOG", "shoal_actors::peer::run=debug");
        cmd.arg("download")
            .arg(torrent)
            .arg("-o")
            .arg(out)
            .args(["--peer", &format!("127.0.0.1:{seeder}")])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-trackers",
                "--no-dht",
                "--no-lsd",
            ])
            .args(["--encryption", encryption]);
        cmd
    }

    /// Runs `runs` downloads of one case and prints its row.
    #[allow(clippy::too_many_arguments)]
    fn case(
        &self,
        label: &str,
        runs: usize,
        bytes: u64,
        file_name: &str,
        seeder_pid: u32,
        marker: &'static str,
        make: impl Fn(&Path) -> Command,
    ) {
        self.cases(
            &[(label.to_string(), &make, marker)],
            runs,
            bytes,
            file_name,
            seeder_pid,
        );
    }

    /// Runs `runs` downloads of each variant against one seeder, the variants alternating run
    /// by run (so load drifts touch them alike), and prints a row per variant.
    #[allow(clippy::too_many_arguments)]
    fn cases(
        &self,
        variants: &[Variant<'_>],
        runs: usize,
        bytes: u64,
        file_name: &str,
        seeder_pid: u32,
    ) -> Vec<Option<Medians>> {
        let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
        for run in 0..runs {
            for ((label, make, marker), got) in variants.iter().zip(&mut samples) {
                let out = self.fresh_out(&format!("{}-{run}", label.replace(' ', "_")));
                let cmd = make(&out);
                let s = self.download(label, cmd, marker, &out, file_name, bytes, seeder_pid);
                got.extend(s);
            }
        }
        variants
            .iter()
            .zip(samples)
            .map(|((label, _, _), samples)| self.row(label, runs, bytes, samples))
            .collect()
    }

    /// Prints one case's row from its samples, and returns its medians (`None` if every run
    /// failed).
    fn row(&self, label: &str, runs: usize, bytes: u64, samples: Vec<Sample>) -> Option<Medians> {
        if samples.is_empty() {
            println!("| {label} | failed | | | | | |");
            return None;
        }
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let rates: Vec<f64> = samples
            .iter()
            .map(|s| bytes as f64 / 1e6 / s.secs)
            .collect();
        let rate_list = rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let connected: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.connected_secs)
            .map(|c| bytes as f64 / 1e6 / c.max(1e-3))
            .collect();
        let connected = (!connected.is_empty()).then(|| median(connected));
        let m = Medians {
            rate: median(rates),
            connected,
            cpu_down: median(samples.iter().map(|s| s.cpu_down / gib).collect()),
            cpu_seed: median(samples.iter().map(|s| s.cpu_seed / gib).collect()),
        };
        println!(
            "| {label} | {:.0} ({rate_list}) | {} | {:.2} | {:.2} | {:.2} | {}/{runs} |",
            m.rate,
            connected.map_or("?".to_string(), |c| format!("{c:.0}")),
            m.cpu_down,
            m.cpu_seed,
            median(samples.iter().map(|s| s.cpu_seed_top / gib).collect()),
            samples.len(),
        );
        Some(m)
    }
}

/// CPU seconds (user + system) of each thread of `pid`, by thread id; empty if unreadable.
fn thread_cpu(pid: u32) -> Vec<(u32, f64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let (user, sys) = support::proc_cpu_path(&format!("/proc/{pid}/task/{tid}/stat"))?;
        Some((tid, user + sys))
    })
    .collect()
}

/// `PROGRAM`, or `ip netns exec NS PROGRAM` (which execs it: same pid, so `wait4` and `/proc`
/// see the program itself).
fn in_ns(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
    }
}

/// A libtorrent seeder (`lt_utp_mse.py seed`) on 127.0.0.1:`port`, started.
fn lt_seed(torrent: &Path, save: &Path, port: u16, extra: &[&str]) -> Proc {
    let mut c = Command::new("/usr/bin/python3");
    c.arg(support::helpers_dir().join("lt_utp_mse.py"))
        .arg("seed")
        .arg(torrent)
        .arg(save)
        .arg(port.to_string())
        .args(extra);
    let mut p = Proc::spawn(c);
    p.wait_line("ready", SEEDER_LIMIT)
        .expect("libtorrent seeder started");
    p
}

/// A namespace whose loopback drops TCP to `port`; deleted on drop.
struct UtpOnlyNs(String);

impl UtpOnlyNs {
    fn create(port: u16) -> Result<Self, String> {
        let name = format!("shoal-bench-utp-{}", std::process::id());
        let run = |args: &[&str], input: Option<&str>| -> Result<(), String> {
            use std::io::Write;
            let mut c = Command::new(args[0]);
            c.args(&args[1..])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            let mut child = c
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
            if let Some(i) = input {
                let _ = child.stdin.take().expect("stdin").write_all(i.as_bytes());
            }
            drop(child.stdin.take());
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`{}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(&["ip", "netns", "add", &name], None)?;
        let ns = UtpOnlyNs(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"], None)?;
        let rules = format!(
            "table inet shoalbench {{\n chain input {{\n  type filter hook input priority 0; \
             policy accept;\n  tcp dport {port} drop\n }}\n}}\n"
        );
        run(
            &["ip", "netns", "exec", &name, "nft", "-f", "-"],
            Some(&rules),
        )?;
        Ok(ns)
    }
}

impl Drop for UtpOnlyNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn header() {
    println!(
        "| case | wall MB/s median (runs) | connected MB/s | down CPU s/GiB | seed CPU s/GiB | \
         seed busiest thread CPU s/GiB | ok |"
    );
    println!("|---|---|---|---|---|---|---|");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let part = std::env::var("SHOAL_BENCH_PART").unwrap_or_default();
    let runs = support::runs(3);
    let bench = Bench {
        shoal: support::shoal_bin(),
        dir: support::bench_dir("utp-mse"),
    };
    assert!(
        support::have_libtorrent(),
        "python3-libtorrent is missing: this bench needs it"
    );
    println!("{}; load {}", support::machine(), support::load());

    if part.is_empty() || part == "utp" {
        let mib = support::size_mib(256);
        let bytes = mib << 20;
        let data = support::data_file(&bench.dir, mib);
        let torrent = support::torrent_for(&data, PIECE);
        let name = data.file_name().unwrap().to_str().unwrap().to_string();
        support::warm(&data);
        println!("\nuTP: {mib} MiB, 1 MiB pieces, {runs} runs");
        header();

        // shoal → shoal, in a namespace whose loopback drops TCP to the seeder.
        let port = support::free_port();
        match UtpOnlyNs::create(port) {
            Err(why) => println!("| shoal → shoal | skipped: {why} | | | | | |"),
            Ok(ns) => {
                let mut c = in_ns(Some(&ns.0), &bench.shoal);
                c.arg("seed").arg(&torrent).arg(&data).args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--no-trackers",
                    "--no-dht",
                    "--no-lsd",
                ]);
                let mut seed = Proc::spawn(c);
                seed.wait_line("shoal: seeding", SEEDER_LIMIT)
                    .expect("shoal seeder started");
                bench.case(
                    "shoal → shoal",
                    runs,
                    bytes,
                    &name,
                    seed.pid(),
                    SHOAL_DONE,
                    |out| {
                        bench.shoal_download(&bench.shoal, Some(&ns.0), &torrent, out, port, "off")
                    },
                );
                drop(seed);
            }
        }

        let port = support::free_port();
        let seed = lt_seed(&torrent, &bench.dir, port, &["--utp-only"]);
        bench.case(
            "libtorrent → shoal",
            runs,
            bytes,
            &name,
            seed.pid(),
            SHOAL_DONE,
            |out| bench.shoal_download(&bench.shoal, None, &torrent, out, port, "off"),
        );
        bench.case(
            "libtorrent → libtorrent",
            runs,
            bytes,
            &name,
            seed.pid(),
            "complete ",
            |out| {
                let mut c = Command::new("/usr/bin/python3");
                c.arg(support::helpers_dir().join("lt_utp_mse.py"))
                    .arg("download")
                    .arg(&torrent)
                    .arg(out)
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--utp-only");
                c
            },
        );
        drop(seed);
        println!("load {}", support::load());
    }

    if part.is_empty() || part == "mse" {
        let mib = std::env::var("SHOAL_BENCH_MSE_MIB")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n: &u64| n > 0)
            .unwrap_or(1024);
        let bytes = mib << 20;
        let baseline = std::env::var_os("SHOAL_BENCH_BASELINE").map(PathBuf::from);
        if let Some(b) = &baseline {
            assert!(
                b.is_file(),
                "SHOAL_BENCH_BASELINE {} is not a file",
                b.display()
            );
            println!("baseline build: {}", b.display());
        }
        let data = support::data_file(&bench.dir, mib);
        let torrent = support::torrent_for(&data, PIECE);
        let name = data.file_name().unwrap().to_str().unwrap().to_string();
        support::warm(&data);
        println!(
            "\nMSE: {mib} MiB, 1 MiB pieces, {runs} runs, libtorrent high_performance_seed \
             seeder over TCP accepting plaintext and RC4 (--encryption enabled); its downloaders \
             alternate run by run: shoal download --encryption off / require, libtorrent \
             downloader (lt_utp_mse.py download, default settings) off / forced-rc4"
        );
        header();
        let port = support::free_port();
        let seed = lt_seed(
            &torrent,
            &bench.dir,
            port,
            &["--high-performance", "--encryption", "enabled"],
        );
        let bench = &bench;
        let shoal_with = |bin: PathBuf, enc: &'static str| {
            let torrent = torrent.clone();
            move |out: &Path| bench.shoal_download(&bin, None, &torrent, out, port, enc)
        };
        let lt_with = |enc: &'static str| {
            let torrent = torrent.clone();
            move |out: &Path| {
                let mut c = Command::new("/usr/bin/python3");
                c.arg(support::helpers_dir().join("lt_utp_mse.py"))
                    .arg("download")
                    .arg(&torrent)
                    .arg(out)
                    .arg(format!("127.0.0.1:{port}"))
                    .args(["--encryption", enc]);
                c
            }
        };
        let shoal_off = shoal_with(bench.shoal.clone(), "off");
        let shoal_rc4 = shoal_with(bench.shoal.clone(), "require");
        let lt_off = lt_with("off");
        let lt_rc4 = lt_with("forced-rc4");
        let base_bin = baseline.clone().unwrap_or_default();
        let base_off = shoal_with(base_bin.clone(), "off");
        let base_rc4 = shoal_with(base_bin, "require");
        let mut variants: Vec<Variant<'_>> = vec![
            ("libtorrent → shoal off".into(), &shoal_off, SHOAL_DONE),
            ("libtorrent → shoal RC4".into(), &shoal_rc4, SHOAL_DONE),
            ("libtorrent → libtorrent off".into(), &lt_off, "complete "),
            ("libtorrent → libtorrent RC4".into(), &lt_rc4, "complete "),
        ];
        if baseline.is_some() {
            variants.push(("libtorrent → baseline off".into(), &base_off, SHOAL_DONE));
            variants.push(("libtorrent → baseline RC4".into(), &base_rc4, SHOAL_DONE));
        }
        // shoal prints SHOAL_DONE, libtorrent "complete SECONDS": the marker is per variant.
        let m = bench.cases(&variants, runs, bytes, &name, seed.pid());
        drop(seed);
        rc4_cost("libtorrent → shoal", &m[0], &m[1]);
        rc4_cost("libtorrent → libtorrent (the reference)", &m[2], &m[3]);
        if baseline.is_some() {
            rc4_cost("libtorrent → baseline", &m[4], &m[5]);
        }
        println!("load {}", support::load());

        // shoal → shoal: our RC4 on both ends.
        println!(
            "\nMSE: {mib} MiB, shoal seed (--encryption prefer: accepts both) over TCP → shoal \
             download --encryption off / require, alternating"
        );
        header();
        let port = support::free_port();
        let mut c = Command::new(&bench.shoal);
        c.arg("seed").arg(&torrent).arg(&data).args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-trackers",
            "--no-dht",
            "--no-lsd",
            "--encryption",
            "prefer",
        ]);
        let mut seed = Proc::spawn(c);
        seed.wait_line("shoal: seeding", SEEDER_LIMIT)
            .expect("shoal seeder started");
        let off = |out: &Path| bench.shoal_download(&bench.shoal, None, &torrent, out, port, "off");
        let rc4 =
            |out: &Path| bench.shoal_download(&bench.shoal, None, &torrent, out, port, "require");
        let variants: Vec<Variant<'_>> = vec![
            ("shoal → shoal off".into(), &off, SHOAL_DONE),
            ("shoal → shoal RC4".into(), &rc4, SHOAL_DONE),
        ];
        let m = bench.cases(&variants, runs, bytes, &name, seed.pid());
        drop(seed);
        rc4_cost("shoal → shoal", &m[0], &m[1]);
        println!("load {}", support::load());
    }
}
