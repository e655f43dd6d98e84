//! Helpers shared by the process-level benches: data files kept in the temp folder, torrents,
//! child processes with their CPU time, medians and the machine's load.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal_engine::create::{create_torrent, CreateOptions};

/// Median of a non-empty list (the upper one of the two middle values).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// MB/s (10^6 bytes per second).
pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The CPU model and core count, for the report.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores, {model}")
}

/// Size of the bench data in MiB: `SHOAL_BENCH_MIB`, or `default`.
pub fn size_mib(default: u64) -> u64 {
    std::env::var("SHOAL_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Runs per figure: `SHOAL_BENCH_RUNS`, or `default`.
pub fn runs(default: usize) -> usize {
    std::env::var("SHOAL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The bench's folder in the temp folder, kept between runs.
pub fn bench_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-bench-{name}"));
    std::fs::create_dir_all(&dir).expect("create bench dir");
    dir
}

/// A file of `mib` MiB of pseudo-random bytes in `dir`, written once and reused.
pub fn data_file(dir: &Path, mib: u64) -> PathBuf {
    let path = dir.join(format!("data-{mib}MiB.bin"));
    let len = mib << 20;
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(len) {
        eprintln!("writing {} ...", path.display());
        let mut rng = fastrand::Rng::with_seed(0x5ea1 ^ mib);
        let mut buf = vec![0u8; 1 << 20];
        let mut f = std::fs::File::create(&path).expect("create data file");
        for _ in 0..mib {
            rng.fill(&mut buf);
            std::io::Write::write_all(&mut f, &buf).expect("write data file");
        }
    }
    path
}

/// Puts a file in the page cache in a known state: written back, dropped from the cache, then
/// read once in large sequential reads, as if it came from disk.
///
/// The state matters here. The same 1 GiB, cached by read-ahead, copied out at 9.6-11.6 GB/s
/// per thread; cached by an older history of writes and partial evictions, at 5.4-5.7 GB/s.
/// Read-ahead fills the cache with large folios (ext4, Linux 6.18), and the cost of copying out
/// of it is per folio as much as per byte. Every bench that reads the source file would
/// otherwise depend on how that file got into the cache.
pub fn warm(path: &Path) {
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path).expect("open data file");
    f.sync_all().expect("write back data file");
    // SAFETY: a plain system call on a descriptor we own; no memory is passed.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        eprintln!("posix_fadvise(DONTNEED) failed ({r}): the page cache state is not reset");
    }
    let mut buf = vec![0u8; 4 << 20];
    while f.read(&mut buf).expect("read data file") > 0 {}
}

/// A torrent for `data` with `piece_len` pieces and no tracker, written next to it once.
pub fn torrent_for(data: &Path, piece_len: u32) -> PathBuf {
    let path = data.with_extension(format!("{}k.torrent", piece_len >> 10));
    if !path.exists() {
        let opts = CreateOptions {
            piece_length: Some(piece_len),
            creation_date: Some(0),
            ..Default::default()
        };
        let bytes = create_torrent(data, &opts).expect("create torrent");
        std::fs::write(&path, bytes).expect("write torrent");
    }
    path
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a bench).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The `shoal` binary next to the bench executable (built by `cargo build --release -p
/// shoal-cli`, or here on demand), or the one `SHOAL_BENCH_BIN` names (a reference build to
/// compare against, used as it is).
pub fn shoal_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SHOAL_BENCH_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = profile_dir.join("shoal");
    // Always rebuild: a stale binary would measure old code. Cheap when up to date.
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "shoal-cli"]);
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p shoal-cli failed");
    bin
}

/// Whether `program` runs (`--version` or `-h` exits at all).
pub fn have_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether Debian's python3 can import libtorrent.
pub fn have_libtorrent() -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The folder of the bench helper scripts.
pub fn helpers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/helpers")
}

/// CPU seconds (user, system) used so far by a running process, from `/proc/<pid>/stat`.
pub fn proc_cpu(pid: u32) -> Option<(f64, f64)> {
    proc_cpu_path(&format!("/proc/{pid}/stat"))
}

/// CPU seconds (user, system) from a `stat` file of `/proc`: a process's or, under
/// `/proc/<pid>/task/<tid>/stat`, one thread's.
pub fn proc_cpu_path(path: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = clock_ticks();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime / tick, stime / tick))
}

/// CPU seconds (user + system) used so far by the calling thread.
pub fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the pointer is to a live local; this clock exists on every Linux.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A child process that is killed and reaped when dropped; reaping it with
/// [`Proc::wait_rusage`] gives its CPU time, threads included.
pub struct Proc {
    child: Option<Child>,
    name: String,
    started: Instant,
    /// Lines of its stdout and stderr, with the time each arrived.
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Proc {
    /// Spawns `cmd` with its stdout and stderr read line by line.
    pub fn spawn(mut cmd: Command) -> Self {
        let name = format!("{cmd:?}");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("SHOAL_BENCH_VERBOSE").is_some() {
                        eprintln!("    | {line}");
                    }
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child: Some(child),
            name,
            started,
            lines: rx,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child taken").id()
    }

    /// When it was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Forgets the output lines received so far.
    pub fn drain_lines(&mut self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Waits for an output line containing `marker`; returns when it arrived, or `None` after
    /// `limit` or when the process closed its output.
    pub fn wait_line(&mut self, marker: &str, limit: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok((t, line)) if line.contains(marker) => return Some((t, line)),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits (at most `limit`, then kills it) for the process to exit and returns its CPU
    /// seconds, user plus system, of all its threads.
    pub fn wait_rusage(self, limit: Duration) -> Option<f64> {
        self.wait_exit(limit).map(|e| e.cpu)
    }

    /// Waits (at most `limit`, then kills it) for the process to exit: when it did (to within
    /// a millisecond), its CPU seconds and its peak RSS.
    pub fn wait_exit(mut self, limit: Duration) -> Option<Exit> {
        let mut child = self.child.take()?;
        let pid = child.id() as libc::pid_t;
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: a zeroed rusage is a valid value to be overwritten.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: pid is our child; the pointers are to live locals.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                let at = Instant::now();
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                return Some(Exit {
                    at,
                    cpu: secs(ru.ru_utime) + secs(ru.ru_stime),
                    max_rss_kib: ru.ru_maxrss as u64,
                });
            }
            if r < 0 {
                return None;
            }
            if Instant::now() > deadline {
                eprintln!("{} outlived {limit:?}; killing it", self.name);
                let _ = child.kill();
                // SAFETY: as above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// How a child process ended.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// When the parent saw it exit.
    pub at: Instant,
    /// CPU seconds, user plus system, of all its threads.
    pub cpu: f64,
    /// Its peak resident set, KiB (`ru_maxrss`): beware, this includes the parent's peak
    /// before the `exec` (see [`PeakRss`]).
    pub max_rss_kib: u64,
}

/// Watches one counter of `/proc/<pid>/io` (`rchar`: bytes read through `read`-family calls,
/// `pread`/`preadv2` of files included, `recv` on sockets not) to time a seeder's upload from
/// outside: a seeder that reads each block from the file with such a call just before sending
/// it (shoal does; libtorrent 2 maps the file instead) shows its upload there. The span runs
/// from the last sample before the first step of at least [`PAYLOAD_STEP`] bytes to the last
/// sample that saw such a step; smaller steps are not payload. The resolution is the sampling
/// period, [`SAMPLE_EVERY`].
pub struct UploadWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<(Instant, Instant, u64)>>,
}

/// Follows a process's peak resident set (`VmHWM` of `/proc/<pid>/status`, which starts afresh
/// at `exec`), sampled every 5 ms until [`PeakRss::finish`]: growth in its last 5 ms is missed.
/// `ru_maxrss` from `wait4` cannot serve: it keeps the parent's peak from before the `exec`.
pub struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl PeakRss {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            let mut peak = None;
            while !flag.load(Ordering::Relaxed) {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    break;
                };
                let kib = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
                if kib.is_some() {
                    peak = peak.max(kib);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        Self { stop, thread }
    }

    /// Stops sampling: the largest peak seen, KiB.
    pub fn finish(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().ok()?
    }
}

/// How often [`UploadWatch`] samples: a few reads of a small proc file per millisecond cost
/// little next to a download; the error on a transfer time is at most twice this.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// The smallest growth of `wchar` between two samples that [`UploadWatch`] counts as payload:
/// a block is 16 KiB, and what a seeder writes besides (status lines, messages) is smaller.
pub const PAYLOAD_STEP: u64 = 4096;

impl UploadWatch {
    /// Starts sampling `counter` (`rchar`, `wchar`...) of `pid`.
    pub fn start(pid: u32, counter: &'static str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/io");
            let read = || -> Option<u64> {
                let text = std::fs::read_to_string(&path).ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix(counter)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse().ok())
            };
            let mut prev = (Instant::now(), read()?);
            let base = prev.1;
            let mut span: Option<(Instant, Instant)> = None;
            let mut payload_end = base;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(SAMPLE_EVERY);
                let now = Instant::now();
                let Some(w) = read() else { break };
                if w.saturating_sub(prev.1) >= PAYLOAD_STEP {
                    span = Some((span.map_or(prev.0, |s| s.0), now));
                    payload_end = w;
                }
                prev = (now, w);
            }
            span.map(|(a, b)| (a, b, payload_end - base))
        });
        Self { stop, thread }
    }

    /// Stops sampling: the seconds from the first to the last payload byte, and the bytes
    /// written meanwhile; `None` if no payload was seen.
    pub fn finish(self) -> Option<(f64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (a, b, bytes) = self.thread.join().ok()??;
        Some((b.duration_since(a).as_secs_f64(), bytes))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
