//! Real BitTorrent clients for the interop tests: opentracker with a whitelist, a Transmission
//! daemon with its own config folder, aria2c, a libtorrent peer (tests/helpers/lt_peer.py) and
//! `shoal` itself, each writing its output to a log file and killed when the test ends.
//!
//! Facts these rely on are in REAL-CLIENTS.md: Transmission never dials loopback peers it
//! learns from a tracker, aria2 bans an address after an empty connection (so readiness is read
//! from /proc/net/tcp, never probed with a connect), opentracker serves only whitelisted hashes.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{helpers_dir, require_libtorrent, require_program, shoal, ChildGuard, DEBIAN_PYTHON};

/// A free port on 127.0.0.1, free for both TCP and UDP.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether some socket listens on TCP `port` (any address), read from /proc/net/tcp{,6}.
pub fn is_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|file| {
        let Ok(text) = fs::read_to_string(file) else {
            return false;
        };
        text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `sl local_address rem_address st ...`; state 0A is LISTEN.
            fields.len() > 3
                && fields[3] == "0A"
                && fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
    })
}

/// Waits until something listens on TCP `port`, without connecting to it.
pub fn wait_listening(port: u16, limit: Duration, what: &str, logs: &[&Path]) {
    wait_until(
        limit,
        &format!("{what} listening on port {port}"),
        logs,
        || is_listening(port),
    );
}

/// Polls `cond` every 50 ms until it holds; panics after `limit` with the tails of `logs`.
pub fn wait_until(limit: Duration, what: &str, logs: &[&Path], mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                tails(logs)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of each log, for a failure message.
pub fn tails(logs: &[&Path]) -> String {
    let mut out = String::new();
    for log in logs {
        let text = fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        out.push_str(&format!(
            "---- {} (last {} lines)\n",
            log.display(),
            lines.len() - from
        ));
        for l in &lines[from..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// A command whose stdout and stderr go to `log` (created or truncated).
fn logged(mut cmd: Command, log: &Path) -> ChildGuard {
    let file = fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = file.try_clone().expect("clone log file");
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    ChildGuard::spawn(cmd)
}

/// Waits up to `limit` for `child` to exit, and asserts it exited with success.
pub fn wait_success(child: &mut ChildGuard, limit: Duration, what: &str, logs: &[&Path]) {
    match child.wait_timeout(limit) {
        Some(status) if status.success() => {}
        Some(status) => panic!("{what} failed ({status})\n{}", tails(logs)),
        None => panic!("{what} did not finish within {limit:?}\n{}", tails(logs)),
    }
}

/// Sends SIGTERM to `child` and waits up to `limit` for it to exit (it is killed otherwise).
pub fn terminate(child: &mut ChildGuard, limit: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if child.wait_timeout(limit).is_none() {
        let _ = child.child().kill();
        let _ = child.child().wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Content and comparison

/// The shape of a torrent's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One file.
    Single,
    /// A folder of several files in subfolders.
    Multi,
}

/// Writes content of `total` bytes named `name` under `dir`; returns its path.
pub fn make_content(dir: &Path, name: &str, shape: Shape, total: u64, seed: u64) -> PathBuf {
    let root = dir.join(name);
    match shape {
        Shape::Single => super::write_random_file(&root, total as usize, seed),
        Shape::Multi => {
            // Uneven sizes so that files start and end inside pieces.
            let a = total / 2 + 1_234;
            let b = total / 3 - 777;
            let c = 5_000;
            let d = total - a - b - c;
            let files = [
                ("a.bin", a),
                ("sub/b.bin", b),
                ("sub/deeper/c.txt", c),
                ("z.bin", d),
            ];
            for (i, (path, len)) in files.iter().enumerate() {
                super::write_random_file(&root.join(path), *len as usize, seed + i as u64);
            }
        }
    }
    root
}

/// Every regular file under `root` (or `root` itself), as paths relative to `root`, sorted.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if meta.is_dir() {
            for entry in fs::read_dir(&path).expect("read_dir") {
                stack.push(rel.join(entry.expect("dir entry").file_name()));
            }
        } else {
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// Asserts that `got` holds exactly the files of `want`, byte for byte.
pub fn assert_same_content(want: &Path, got: &Path) {
    assert!(got.exists(), "{} does not exist", got.display());
    let (a, b) = (files_under(want), files_under(got));
    assert_eq!(
        a,
        b,
        "file lists differ: {} vs {}",
        want.display(),
        got.display()
    );
    for rel in &a {
        let join = |root: &Path| {
            if rel.as_os_str().is_empty() {
                root.to_path_buf()
            } else {
                root.join(rel)
            }
        };
        let (x, y) = (join(want), join(got));
        let (x, y) = (fs::read(&x).expect("read"), fs::read(&y).expect("read"));
        assert_eq!(x.len(), y.len(), "{}: lengths differ", rel.display());
        if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
            panic!("{}: first difference at byte {i}", rel.display());
        }
    }
}

/// `shoal create CONTENT -o TORRENT -l PIECE [-t URL]`; returns the info hash in hex.
pub fn create_torrent(
    content: &Path,
    torrent: &Path,
    piece: &str,
    tracker: Option<&str>,
) -> String {
    let mut args = vec![
        "create",
        content.to_str().expect("utf-8 path"),
        "-o",
        torrent.to_str().expect("utf-8 path"),
        "-l",
        piece,
    ];
    if let Some(t) = tracker {
        args.extend(["-t", t]);
    }
    let out = shoal(&args);
    assert!(
        out.status.success(),
        "shoal create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = shoal(&["info", "--json", torrent.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "shoal info");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["info_hash"].as_str().expect("info_hash").to_string()
}

// ---------------------------------------------------------------------------------------------
// shoal

/// `shoal ARGS` in the background, logging to `log` (with the actors' debug logs).
pub fn spawn_shoal(args: &[&str], log: &Path) -> ChildGuard {
    let mut cmd = Command::new(super::shoal_bin());
    cmd.args(args)
        .env("RUST_LOG", "shoal_actors=debug,shoal=info");
    logged(cmd, log)
}

// ---------------------------------------------------------------------------------------------
// opentracker

/// A fresh opentracker on 127.0.0.1 (HTTP and UDP on one port) serving whitelisted hashes.
pub struct OpenTracker {
    _child: ChildGuard,
    _dir: tempfile::TempDir,
    /// The port of both its TCP and UDP sockets.
    pub port: u16,
}

impl OpenTracker {
    /// Starts one on `port` (from [`free_port`]) serving `hashes` (hex), ready to answer.
    /// The port is chosen first because the torrent names the tracker.
    pub fn start_on(port: u16, hashes: &[&str]) -> Self {
        require_program("opentracker");
        let dir = super::tempdir();
        let list: String = hashes.iter().map(|h| format!("{h}\n")).collect();
        fs::write(dir.path().join("whitelist"), list).expect("write whitelist");
        let mut cmd = Command::new("opentracker");
        // It chroots into `-d` (as root) before reading the whitelist: a relative path.
        cmd.current_dir(dir.path())
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-P",
                &port.to_string(),
            ])
            .arg("-d")
            .arg(dir.path())
            .args(["-w", "./whitelist"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ChildGuard::spawn(cmd);
        wait_listening(port, Duration::from_secs(10), "opentracker", &[]);
        OpenTracker {
            _child: child,
            _dir: dir,
            port,
        }
    }

    /// Its HTTP announce URL.
    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// Scrapes `hash` (hex) over HTTP: (complete, incomplete); (0, 0) when unknown or on error.
    pub fn scrape(&self, hash: &str) -> (u64, u64) {
        let escaped: String = (0..hash.len() / 2)
            .map(|i| format!("%{}", &hash[2 * i..2 * i + 2]))
            .collect();
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, 0);
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!("GET /scrape?info_hash={escaped} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return (0, 0);
        }
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body);
        (
            bencode_int(&body, b"8:completei"),
            bencode_int(&body, b"10:incompletei"),
        )
    }

    /// Waits until the tracker knows at least `seeds` seeders and `leechers` leechers of `hash`.
    pub fn wait_peers(
        &self,
        hash: &str,
        seeds: u64,
        leechers: u64,
        limit: Duration,
        logs: &[&Path],
    ) {
        wait_until(
            limit,
            &format!("{seeds} seeders and {leechers} leechers on the tracker"),
            logs,
            || {
                let (c, i) = self.scrape(hash);
                c >= seeds && i >= leechers
            },
        );
    }
}

/// The integer after `key` in a bencoded text (0 when absent).
fn bencode_int(text: &[u8], key: &[u8]) -> u64 {
    let Some(at) = text.windows(key.len()).position(|w| w == key) else {
        return 0;
    };
    let digits = &text[at + key.len()..];
    let end = digits.iter().position(|&c| c == b'e').unwrap_or(0);
    std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Transmission

/// A transmission-daemon bound to 127.0.0.1 with its own config folder, driven by
/// transmission-remote.
pub struct Transmission {
    child: ChildGuard,
    /// Its RPC port.
    pub rpc_port: u16,
    /// Its peer port.
    pub peer_port: u16,
    /// Its log file.
    pub log: PathBuf,
}

impl Transmission {
    /// Starts a daemon whose config lives in `dir/transmission`; waits for its RPC port.
    pub fn start(dir: &Path) -> Self {
        Self::start_with_encryption(dir, 0)
    }

    /// Like [`Transmission::start`] with Transmission's `encryption` setting: 0 prefers plain
    /// connections, 1 prefers encrypted ones, 2 requires encryption.
    pub fn start_with_encryption(dir: &Path, encryption: u8) -> Self {
        require_program("transmission-daemon");
        require_program("transmission-remote");
        let conf = dir.join("transmission");
        fs::create_dir_all(&conf).expect("create config dir");
        let (rpc_port, peer_port) = (free_port(), free_port());
        let settings = serde_json::json!({
            "bind-address-ipv4": "127.0.0.1",
            "bind-address-ipv6": "::1",
            "peer-port": peer_port,
            "peer-port-random-on-start": false,
            "port-forwarding-enabled": false,
            "rpc-enabled": true,
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": rpc_port,
            "rpc-authentication-required": false,
            "rpc-whitelist-enabled": false,
            "rpc-host-whitelist-enabled": false,
            "dht-enabled": false,
            "lpd-enabled": false,
            "pex-enabled": false,
            "utp-enabled": false,
            // 0 (the interop tests): prefer plain connections.
            "encryption": encryption,
            "download-dir": dir.join("transmission-downloads"),
            "incomplete-dir-enabled": false,
            "ratio-limit-enabled": false,
            "idle-seeding-limit-enabled": false,
            "speed-limit-down-enabled": false,
            "speed-limit-up-enabled": false,
            "alt-speed-enabled": false,
            "start-added-torrents": true,
            "message-level": 2,
        });
        fs::write(
            conf.join("settings.json"),
            serde_json::to_string_pretty(&settings).expect("json"),
        )
        .expect("write settings.json");
        let log = dir.join("transmission.log");
        let mut cmd = Command::new("transmission-daemon");
        cmd.arg("-f").arg("-g").arg(&conf);
        let child = logged(cmd, &log);
        wait_listening(
            rpc_port,
            Duration::from_secs(10),
            "transmission rpc",
            &[&log],
        );
        Self {
            child,
            rpc_port,
            peer_port,
            log,
        }
    }

    /// Runs `transmission-remote 127.0.0.1:RPC ARGS`; returns its stdout.
    pub fn remote(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("transmission-remote");
        cmd.arg(format!("127.0.0.1:{}", self.rpc_port)).args(args);
        let out = super::run_bounded(cmd, Duration::from_secs(20));
        assert!(
            out.status.success(),
            "transmission-remote {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds `torrent` with its data in `download_dir` (torrent id 1 for the first one).
    pub fn add(&self, torrent: &Path, download_dir: &Path) {
        self.remote(&[
            "-a",
            torrent.to_str().expect("utf-8 path"),
            "-w",
            download_dir.to_str().expect("utf-8 path"),
        ]);
    }

    /// (percent done, state) of the first torrent, from `transmission-remote -t 1 -i`.
    pub fn status(&self) -> (f64, String) {
        let text = self.remote(&["-t", "1", "-i"]);
        let mut percent = 0.0;
        let mut state = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(p) = line.strip_prefix("Percent Done:") {
                percent = p.trim().trim_end_matches('%').parse().unwrap_or(0.0);
            } else if let Some(s) = line.strip_prefix("State:") {
                state = s.trim().to_string();
            }
        }
        (percent, state)
    }

    /// Waits until the first torrent is complete (100 %, verified) and seeding or idle.
    pub fn wait_complete(&self, limit: Duration, logs: &[&Path]) {
        let mut all = vec![self.log.as_path()];
        all.extend_from_slice(logs);
        wait_until(limit, "transmission to complete the torrent", &all, || {
            let (p, state) = self.status();
            p >= 100.0 && !state.starts_with("Verifying") && !state.contains("verify")
        });
    }

    /// Stops the daemon (SIGTERM, so that it closes and flushes its files).
    pub fn stop(mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
    }
}

// ---------------------------------------------------------------------------------------------
// aria2

/// aria2c on 127.0.0.1:`port` with DHT, local discovery and PEX off. Downloads `torrent` into
/// `dir` and exits when done, or (`seed`) checks the data in `dir` and seeds until killed.
pub fn spawn_aria2(torrent: &Path, dir: &Path, port: u16, seed: bool, log: &Path) -> ChildGuard {
    spawn_aria2_with(torrent, dir, port, seed, log, &[])
}

/// Like [`spawn_aria2`] with more options (`--bt-require-crypto=true`, say).
pub fn spawn_aria2_with(
    torrent: &Path,
    dir: &Path,
    port: u16,
    seed: bool,
    log: &Path,
    extra: &[&str],
) -> ChildGuard {
    require_program("aria2c");
    let mut cmd = Command::new("aria2c");
    cmd.args([
        "--interface=127.0.0.1",
        &format!("--listen-port={port}"),
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=notice",
        "--bt-max-peers=0",
        "--auto-save-interval=0",
        "--allow-overwrite=true",
    ]);
    if seed {
        // Check the data, then seed with no ratio or time limit.
        cmd.args(["--check-integrity=true", "--seed-ratio=0.0"]);
    } else {
        cmd.arg("--seed-time=0");
    }
    cmd.args(extra);
    cmd.arg(format!("--dir={}", dir.display())).arg(torrent);
    logged(cmd, log)
}

// ---------------------------------------------------------------------------------------------
// libtorrent

/// How to run tests/helpers/lt_peer.py: a libtorrent session on 127.0.0.1:`port`.
#[derive(Debug, Default)]
pub struct Libtorrent<'a> {
    /// Peers to dial.
    pub peers: &'a [String],
    /// Check the data and seed until killed (otherwise download, then exit 0).
    pub seed: bool,
    /// Announce to the torrent's trackers.
    pub trackers: bool,
    /// Upload limit in bytes per second, applied to loopback peers too (0: none).
    pub upload_limit: u64,
    /// Message stream encryption (off by default).
    pub encryption: LtEncryption,
    /// Speak uTP only (TCP off both ways) instead of TCP only.
    pub utp_only: bool,
    /// Download nothing (libtorrent's upload mode), but stay connected: a peer that has
    /// nothing and tells others of its peers (PEX tests).
    pub upload_mode: bool,
    /// Download limit in bytes per second, applied to loopback peers too (0: none).
    pub download_limit: u64,
}

/// libtorrent's message stream encryption settings (`--encryption` of lt_peer.py).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LtEncryption {
    /// Plain BitTorrent only.
    #[default]
    Off,
    /// MSE forced both ways, RC4 only (`pe_forced`, `allowed_enc_level` RC4).
    ForcedRc4,
    /// MSE forced both ways, then plaintext (`allowed_enc_level` plaintext).
    ForcedPlaintext,
    /// MSE and plain both accepted, either level.
    Enabled,
}

impl LtEncryption {
    /// The `--encryption` argument.
    fn arg(self) -> &'static str {
        match self {
            LtEncryption::Off => "off",
            LtEncryption::ForcedRc4 => "forced-rc4",
            LtEncryption::ForcedPlaintext => "forced-plaintext",
            LtEncryption::Enabled => "enabled",
        }
    }
}

impl Libtorrent<'_> {
    /// Starts it with `torrent`, data in `save_path`, listening on `port`, logging to `log`.
    pub fn spawn(&self, torrent: &Path, save_path: &Path, port: u16, log: &Path) -> ChildGuard {
        require_libtorrent();
        let mut cmd = Command::new(DEBIAN_PYTHON);
        cmd.arg(helpers_dir().join("lt_peer.py"))
            .arg(torrent)
            .arg(save_path)
            .args(["--port", &port.to_string(), "--timeout", "300"]);
        for p in self.peers {
            cmd.args(["--peer", p]);
        }
        if self.seed {
            cmd.arg("--seed");
        }
        if !self.trackers {
            cmd.arg("--no-trackers");
        }
        if self.upload_limit > 0 {
            cmd.args(["--upload-limit", &self.upload_limit.to_string()]);
        }
        cmd.args(["--encryption", self.encryption.arg()]);
        if self.utp_only {
            cmd.arg("--utp-only");
        }
        if self.upload_mode {
            cmd.arg("--upload-mode");
        }
        if self.download_limit > 0 {
            cmd.args(["--download-limit", &self.download_limit.to_string()]);
        }
        logged(cmd, log)
    }
}

/// Whether the libtorrent log says the torrent is complete (checked data, for a seeder).
pub fn libtorrent_finished(log: &Path) -> bool {
    fs::read_to_string(log)
        .map(|t| t.contains("\"event\": \"finished\""))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// The timing table

/// Rows recorded by this test binary: (client, direction, content, seconds, result).
static ROWS: std::sync::Mutex<Vec<[String; 5]>> = std::sync::Mutex::new(Vec::new());

/// One row of the table printed at the end of the interop tests, recorded when dropped (as
/// FAILED when the test is panicking). When the last of `expected` rows is in, the whole table
/// is printed and written to target/interop-timings.txt.
pub struct Timing {
    client: &'static str,
    direction: &'static str,
    content: String,
    started: Instant,
    expected: usize,
}

impl Timing {
    /// Starts timing `client` `direction` on `content`; `expected` rows make the full table.
    pub fn start(
        client: &'static str,
        direction: &'static str,
        content: String,
        expected: usize,
    ) -> Self {
        Timing {
            client,
            direction,
            content,
            started: Instant::now(),
            expected,
        }
    }

    /// Restarts the clock (after setup that is not part of the transfer).
    pub fn restart(&mut self) {
        self.started = Instant::now();
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        let result = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        let row = [
            self.client.to_string(),
            self.direction.to_string(),
            self.content.clone(),
            format!("{secs:.1}"),
            result.to_string(),
        ];
        eprintln!("interop: {}", row.join(" | "));
        let mut rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
        rows.push(row);
        if rows.len() == self.expected {
            rows.sort();
            let table = format_table(&rows);
            eprintln!("\n{table}");
            let _ = fs::write(table_path(), table);
        }
    }
}

/// target/interop-timings.txt, next to the test binary's profile folder.
pub fn table_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe.parent().and_then(Path::parent).expect("profile dir");
    profile
        .parent()
        .unwrap_or(profile)
        .join("interop-timings.txt")
}

/// Rows as an aligned table.
pub fn format_table(rows: &[[String; 5]]) -> String {
    let line = |f: [&str; 5]| {
        format!(
            "{:<13} {:<24} {:<34} {:>8}  {}\n",
            f[0], f[1], f[2], f[3], f[4]
        )
    };
    let mut out = line(["client", "direction", "content", "seconds", "result"]);
    for r in rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// rtorrent

/// rtorrent 0.9.8 (Debian's `rtorrent`, libtorrent 0.13 by rakshasa) run headless
/// (`system.daemon.set`) with its own config, session folder and log under `work`, listening on
/// 127.0.0.1:`port` with DHT, PEX and UDP trackers off. It downloads `torrent` into `dir`, or
/// checks the data there and seeds it; a completed download touches `work/done`.
pub struct RTorrent {
    child: ChildGuard,
    /// Its log file (rtorrent's own log plus its stdout and stderr).
    pub log: PathBuf,
    /// Touched by rtorrent when the download completes.
    done: PathBuf,
}

impl RTorrent {
    /// Starts it on `torrent` with the data folder `dir`.
    pub fn spawn(torrent: &Path, dir: &Path, work: &Path, port: u16) -> Self {
        require_program("rtorrent");
        let session = work.join("session");
        fs::create_dir_all(&session).expect("create rtorrent session folder");
        fs::create_dir_all(dir).expect("create rtorrent data folder");
        let log = work.join("rtorrent.log");
        let done = work.join("done");
        let rc = work.join("rtorrent.rc");
        let config = format!(
            "session.path.set = {session}\n\
             directory.default.set = {dir}\n\
             network.bind_address.set = 127.0.0.1\n\
             network.port_range.set = {port}-{port}\n\
             network.port_random.set = no\n\
             dht.mode.set = disable\n\
             protocol.pex.set = no\n\
             trackers.use_udp.set = no\n\
             system.daemon.set = true\n\
             log.open_file = \"main\", {log}\n\
             log.add_output = \"info\", \"main\"\n\
             method.set_key = event.download.finished, shoal_done, \
             \"execute.nothrow = touch, {done}\"\n\
             load.start_verbose = {torrent}\n",
            session = session.display(),
            dir = dir.display(),
            log = log.display(),
            done = done.display(),
            torrent = torrent.display(),
        );
        fs::write(&rc, config).expect("write rtorrent.rc");
        let mut cmd = Command::new("rtorrent");
        cmd.env("HOME", work)
            .arg("-n")
            .arg("-o")
            .arg(format!("import={}", rc.display()));
        let child = logged(cmd, &work.join("rtorrent.out"));
        RTorrent { child, log, done }
    }

    /// Whether its download completed.
    pub fn finished(&self) -> bool {
        self.done.exists()
    }

    /// Stops it (SIGTERM, then SIGKILL after `limit`).
    pub fn stop(mut self, limit: Duration) {
        terminate(&mut self.child, limit);
    }
}

// ---------------------------------------------------------------------------------------------
// libtorrent DHT nodes

/// tests/helpers/lt_dht.py with `args` (a libtorrent DHT node on 127.0.0.1, see the script),
/// logging to `log`.
pub fn spawn_lt_dht(args: &[String], log: &Path) -> ChildGuard {
    require_libtorrent();
    let mut cmd = Command::new(DEBIAN_PYTHON);
    cmd.arg(helpers_dir().join("lt_dht.py")).args(args);
    logged(cmd, log)
}

/// The JSON lines of a helper's log that have `"event": event`.
pub fn json_events(log: &Path, event: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}
