//! `shoal server` as a service: many idle seeding torrents in one process (memory per torrent,
//! wake-ups while idle, API list latency), and a streaming seek far into a file not yet
//! downloaded, next to the time a plain sequential download takes to get there.
//!
//! Runs the real binary (`target/release/shoal server`), talks to it over its HTTP API on
//! 127.0.0.1, and reads its memory and context switches from `/proc`.
//!
//! Run with `cargo bench --bench server`. Knobs:
//! - `SHOAL_BENCH_TORRENTS` (default 1000): idle seeding torrents, 64 KiB of random data each;
//! - `SHOAL_BENCH_IDLE_SECS` (default 10): how long the idle server is watched;
//! - `SHOAL_BENCH_MIB` (default 256): size of the streamed file;
//! - `SHOAL_BENCH_RATE_MIB` (default 16): the seeder's upload limit in MiB/s, so the far
//!   region is not there yet when the seek is asked for;
//! - `SHOAL_BENCH_RUNS` (default 5): seeks timed (the median is reported);
//! - `SHOAL_BENCH_PART` = `idle` or `stream`: only one of the two parts.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_engine::create::{create_torrent, CreateOptions};
use support::Proc;

/// Size of each idle torrent's one file: one piece, so the startup check is one hash.
const SMALL_LEN: usize = 64 * 1024;

/// Piece length of the streamed file: a usual choice for a file of a few hundred MiB.
const STREAM_PIECE: u32 = 256 * 1024;

/// Bytes asked for by the seek.
const SEEK_LEN: u64 = 100_000;

/// API list requests timed.
const LIST_REQUESTS: usize = 50;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bin = support::shoal_bin();
    let part = std::env::var("SHOAL_BENCH_PART").unwrap_or_default();
    println!("machine: {}", support::machine());
    println!("load before: {}", support::load());
    let idle = (part.is_empty() || part == "idle").then(|| idle_bench(&bin));
    println!("load after idle part: {}", support::load());
    let stream = (part.is_empty() || part == "stream").then(|| stream_bench(&bin));
    println!("load after: {}", support::load());
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    if let Some(r) = idle {
        r.print();
    }
    if let Some(r) = stream {
        r.print();
    }
}

// ---------------------------------------------------------------------------------------------
// The server process and a keep-alive HTTP client.

/// Starts `shoal server` on loopback with no trackers; returns it and its HTTP address.
fn start_server(bin: &Path, dir: &Path, state: &Path) -> (Proc, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("server")
        .arg("--dir")
        .arg(dir)
        .arg("--state")
        .arg(state)
        .args([
            "--http",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--no-trackers",
        ]);
    let mut p = Proc::spawn(cmd);
    let (_, line) = p
        .wait_line("shoal: server on http://", Duration::from_secs(60))
        .expect("the server printed its address");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("address")
        .to_string();
    (p, addr)
}

/// One HTTP/1.1 connection kept alive across requests.
struct Conn {
    s: TcpStream,
    addr: String,
}

/// An answer: status and body.
struct Reply {
    status: u16,
    body: Vec<u8>,
    /// When the first byte of the body arrived (or the head, with no body).
    first_body_byte: Instant,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            s,
            addr: addr.to_string(),
        }
    }

    fn req(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        self.s.write_all(&msg).expect("send request");
        // The head, byte chunks at a time; whatever follows it is the start of the body.
        let mut raw = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let end = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = self.s.read(&mut buf).expect("read reply head");
            assert!(n > 0, "the server closed the connection");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = raw[end + 4..].to_vec();
        if len > 0 && body.is_empty() {
            let n = self.s.read(&mut buf).expect("read reply body");
            assert!(n > 0, "the server closed the connection");
            body.extend_from_slice(&buf[..n]);
        }
        let first_body_byte = Instant::now();
        while body.len() < len {
            let n = self.s.read(&mut buf).expect("read reply body");
            assert!(n > 0, "the server closed the connection");
            body.extend_from_slice(&buf[..n]);
        }
        body.truncate(len);
        Reply {
            status,
            body,
            first_body_byte,
        }
    }

    fn get_json(&mut self, path: &str) -> serde_json::Value {
        let r = self.req("GET", path, &[], b"");
        assert_eq!(
            r.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    fn add(&mut self, torrent: &[u8]) -> String {
        let r = self.req(
            "POST",
            "/api/v1/torrents",
            &[("Content-Type", "application/x-bittorrent")],
            torrent,
        );
        assert_eq!(r.status, 201, "add: {}", String::from_utf8_lossy(&r.body));
        r.json()["info_hash"]
            .as_str()
            .expect("info_hash")
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Context switches (voluntary + involuntary) of every thread of a process, by thread id,
/// with the thread's name.
fn switches(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let mut name = String::new();
        let mut n = 0;
        for l in s.lines() {
            if let Some(v) = l.strip_prefix("Name:") {
                name = v.trim().to_string();
            } else if let Some(v) = l
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        out.insert(tid, (name, n));
    }
    out
}

/// Wake-ups per second over `secs` seconds of idleness: the total, and by thread name
/// (threads of the same name summed, with their count).
fn idle_wakeups(pid: u32, secs: u64) -> (f64, Vec<(String, usize, f64)>) {
    let before = switches(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after = switches(pid);
    let took = t0.elapsed().as_secs_f64();
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut total = 0;
    for (tid, (name, n)) in &after {
        let d = n - before.get(tid).map_or(0, |b| b.1);
        total += d;
        let e = by_name.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += d;
    }
    let mut threads: Vec<(String, usize, f64)> = by_name
        .into_iter()
        .map(|(name, (count, d))| (name, count, d as f64 / took))
        .collect();
    threads.sort_by(|a, b| b.2.total_cmp(&a.2));
    (total as f64 / took, threads)
}

fn fmt_threads(threads: &[(String, usize, f64)]) -> String {
    threads
        .iter()
        .filter(|t| t.2 > 0.0)
        .map(|(n, c, r)| format!("{n}×{c}: {r:.1}/s"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Part 1: idle seeding torrents.

struct IdleResult {
    torrents: usize,
    rss0_kib: u64,
    rss_kib: u64,
    add_secs: f64,
    seeding_secs: f64,
    wake0: f64,
    threads0: Vec<(String, usize, f64)>,
    wake: f64,
    threads: Vec<(String, usize, f64)>,
    idle_secs: u64,
    list_median_ms: f64,
    list_p99_ms: f64,
    list_bytes: usize,
}

impl IdleResult {
    fn print(&self) {
        let n = self.torrents;
        let per = (self.rss_kib as f64 - self.rss0_kib as f64) / n as f64;
        println!(
            "| RSS, 0 torrents | {:.1} MiB |",
            self.rss0_kib as f64 / 1024.0
        );
        println!(
            "| RSS, {n} seeding torrents | {:.1} MiB |",
            self.rss_kib as f64 / 1024.0
        );
        println!("| RSS per torrent | {per:.1} KiB |");
        println!(
            "| adding {n} (POST, one keep-alive connection) | {:.2} s |",
            self.add_secs
        );
        println!("| added to all seeding | {:.2} s |", self.seeding_secs);
        println!(
            "| idle wake-ups, 0 torrents ({} s) | {:.1}/s ({}) |",
            self.idle_secs,
            self.wake0,
            fmt_threads(&self.threads0)
        );
        println!(
            "| idle wake-ups, {n} torrents ({} s) | {:.1}/s ({}) |",
            self.idle_secs,
            self.wake,
            fmt_threads(&self.threads)
        );
        println!(
            "| idle wake-ups per torrent | {:.3}/s |",
            (self.wake - self.wake0) / n as f64
        );
        println!(
            "| GET /api/v1/torrents, {n} torrents ({} KiB), median / p99 of {LIST_REQUESTS} | {:.2} / {:.2} ms |",
            self.list_bytes / 1024,
            self.list_median_ms,
            self.list_p99_ms
        );
    }
}

fn idle_bench(bin: &Path) -> IdleResult {
    let n = env_num("SHOAL_BENCH_TORRENTS", 1000) as usize;
    let idle_secs = env_num("SHOAL_BENCH_IDLE_SECS", 10);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("dl");
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("making {n} torrents of {} KiB ...", SMALL_LEN >> 10);
    let mut rng = fastrand::Rng::with_seed(14);
    let mut buf = vec![0u8; SMALL_LEN];
    let opts = CreateOptions {
        piece_length: Some(SMALL_LEN as u32),
        creation_date: Some(0),
        ..Default::default()
    };
    let torrents: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            rng.fill(&mut buf);
            let path = dir.join(format!("small-{i:05}.bin"));
            std::fs::write(&path, &buf).expect("write data");
            create_torrent(&path, &opts).expect("create torrent")
        })
        .collect();

    let (server, http) = start_server(bin, &dir, &tmp.path().join("state"));
    let pid = server.pid();
    // Settled: the runtime's threads started, the first ticks past.
    std::thread::sleep(Duration::from_secs(2));
    let rss0_kib = rss_kib(pid);
    eprintln!("idle with 0 torrents for {idle_secs} s ...");
    let (wake0, threads0) = idle_wakeups(pid, idle_secs);

    eprintln!("adding {n} torrents ...");
    let mut c = Conn::open(&http);
    let t0 = Instant::now();
    for t in &torrents {
        c.add(t);
    }
    let add_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    loop {
        let list = c.get_json("/api/v1/torrents");
        let arr = list.as_array().expect("array");
        let seeding = arr.iter().filter(|t| t["state"] == "seeding").count();
        if arr.len() == n && seeding == n {
            break;
        }
        if let Some(bad) = arr.iter().find(|t| t["state"] == "error") {
            panic!("a torrent failed: {bad}");
        }
        assert!(
            t1.elapsed() < Duration::from_secs(600),
            "only {seeding} of {n} seeding after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let seeding_secs = t1.elapsed().as_secs_f64();
    drop(c);
    // Settled again: the checks' buffers returned, the idle keep-alive connection gone.
    std::thread::sleep(Duration::from_secs(3));
    let rss_kib = rss_kib(pid);
    eprintln!("idle with {n} torrents for {idle_secs} s ...");
    let (wake, threads) = idle_wakeups(pid, idle_secs);

    let mut c = Conn::open(&http);
    let mut times = Vec::with_capacity(LIST_REQUESTS);
    let mut list_bytes = 0;
    for _ in 0..LIST_REQUESTS {
        let t = Instant::now();
        let r = c.req("GET", "/api/v1/torrents", &[], b"");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.status, 200);
        list_bytes = r.body.len();
    }
    times.sort_by(f64::total_cmp);
    let p99 = times[((times.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
    drop(server);
    IdleResult {
        torrents: n,
        rss0_kib,
        rss_kib,
        add_secs,
        seeding_secs,
        wake0,
        threads0,
        wake,
        threads,
        idle_secs,
        list_median_ms: support::median(times),
        list_p99_ms: p99,
        list_bytes,
    }
}

// ---------------------------------------------------------------------------------------------
// Part 2: a streaming seek.

struct StreamResult {
    mib: u64,
    rate_mib: u64,
    far: u64,
    seeks_ms: Vec<f64>,
    progress_at_answer: Vec<f64>,
    sequential_ms: Option<f64>,
}

impl StreamResult {
    fn print(&self) {
        let mut s = self.seeks_ms.clone();
        s.sort_by(f64::total_cmp);
        let runs = s.len();
        println!(
            "| seek to {} MiB of {} MiB (seeder at {} MiB/s, sequential mode): first body byte, median of {runs} | {:.0} ms (all: {}) |",
            self.far >> 20,
            self.mib,
            self.rate_mib,
            support::median(s.clone()),
            s.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ")
        );
        println!(
            "| download progress when the seek was answered | {} |",
            self.progress_at_answer
                .iter()
                .map(|p| format!("{:.0}%", p * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match self.sequential_ms {
            Some(t) => println!(
                "| same download, no seek: time to reach {} MiB | {t:.0} ms |",
                self.far >> 20
            ),
            None => println!("| same download, no seek | did not get there |"),
        }
    }
}

/// A server downloading the streamed torrent in sequential mode from a libtorrent seeder
/// held to `rate` bytes/s, already receiving data.
struct Streaming {
    server: Proc,
    _seeder: Proc,
    _tmp: tempfile::TempDir,
    http: String,
    hash: String,
}

fn start_streaming(bin: &Path, torrent: &Path, seed_dir: &Path, rate: u64) -> Streaming {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, http) = start_server(bin, &tmp.path().join("dl"), &tmp.path().join("state"));
    let mut c = Conn::open(&http);
    let hash = c.add(&std::fs::read(torrent).expect("read torrent"));
    let r = c.req(
        "PATCH",
        &format!("/api/v1/torrents/{hash}"),
        &[("Content-Type", "application/json")],
        br#"{"sequential": true}"#,
    );
    assert_eq!(r.status, 200, "PATCH sequential");
    let listen = c.get_json("/api/v1/session")["listen"][0]
        .as_str()
        .expect("listen address")
        .to_string();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/lt_peer.py"))
        .arg(torrent)
        .arg(seed_dir)
        .args(["--port", &support::free_port().to_string()])
        .args(["--seed", "--no-trackers", "--timeout", "600"])
        .args(["--upload-limit", &rate.to_string()])
        .args(["--peer", &listen]);
    let seeder = Proc::spawn(cmd);
    // Data flowing: the seeder has checked its copy and connected.
    let t0 = Instant::now();
    loop {
        let t = c.get_json(&format!("/api/v1/torrents/{hash}"));
        if t["downloaded"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no data from the seeder after 2 minutes: {t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Streaming {
        server,
        _seeder: seeder,
        _tmp: tmp,
        http,
        hash,
    }
}

/// Decodes standard base64 with padding (the API's `pieces`).
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for q in s.as_bytes().chunks(4) {
        let n = q.iter().fold(0u32, |n, &c| (n << 6) | val(c)) << (6 * (4 - q.len() as u32));
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

fn have_piece(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

fn stream_bench(bin: &Path) -> StreamResult {
    assert!(
        support::have_libtorrent(),
        "the streaming part needs Debian's python3-libtorrent (scripts/test installs it)"
    );
    let mib = support::size_mib(256);
    let rate_mib = env_num("SHOAL_BENCH_RATE_MIB", 16);
    let rate = rate_mib << 20;
    let runs = support::runs(5);
    let dir = support::bench_dir("server");
    let data = support::data_file(&dir, mib);
    let torrent: PathBuf = support::torrent_for(&data, STREAM_PIECE);
    let size = mib << 20;
    // Far: 15/16 of the way in, on no piece boundary.
    let far = size / 16 * 15 + 12_345;
    let expected = {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&data).unwrap();
        f.seek(SeekFrom::Start(far)).unwrap();
        let mut b = vec![0u8; SEEK_LEN as usize];
        f.read_exact(&mut b).unwrap();
        b
    };

    let mut seeks_ms = Vec::new();
    let mut progress_at_answer = Vec::new();
    for run in 0..runs {
        eprintln!("seek run {} of {runs} ...", run + 1);
        let s = start_streaming(bin, &torrent, &dir, rate);
        let mut c = Conn::open(&s.http);
        let t0 = Instant::now();
        let r = c.req(
            "GET",
            &format!("/api/v1/torrents/{}/files/0", s.hash),
            &[("Range", &format!("bytes={far}-{}", far + SEEK_LEN - 1))],
            b"",
        );
        let ttfb = r.first_body_byte - t0;
        assert_eq!(r.status, 206, "seek");
        assert!(r.body == expected, "the seek's bytes are not the file's");
        let mut c2 = Conn::open(&s.http);
        let t = c2.get_json(&format!("/api/v1/torrents/{}", s.hash));
        seeks_ms.push(ttfb.as_secs_f64() * 1e3);
        progress_at_answer.push(t["progress"].as_f64().unwrap_or(f64::NAN));
        drop(s.server);
    }

    eprintln!("sequential download to the same offset ...");
    let s = start_streaming(bin, &torrent, &dir, rate);
    let mut c = Conn::open(&s.http);
    let first = (far / u64::from(STREAM_PIECE)) as usize;
    let last = ((far + SEEK_LEN - 1) / u64::from(STREAM_PIECE)) as usize;
    let t0 = Instant::now();
    let limit = Duration::from_secs(size / rate * 4 + 120);
    let sequential_ms = loop {
        let t = c.get_json(&format!("/api/v1/torrents/{}", s.hash));
        let bits = unbase64(t["pieces"].as_str().unwrap_or(""));
        if (first..=last).all(|i| have_piece(&bits, i)) {
            break Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        if t0.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    StreamResult {
        mib,
        rate_mib,
        far,
        seeks_ms,
        progress_at_answer,
        sequential_ms,
    }
}
