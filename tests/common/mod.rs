//! Helpers shared by the end-to-end tests: the `shoal` binary, temporary folders, child processes
//! that are killed when the test ends, and deterministic test data.
#![allow(dead_code)]

pub mod clients;
pub mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `shoal` binary of this build. `cargo test --workspace` builds it; when a single test
/// file runs, the binary may be missing or older than the sources, and it is built here (once
/// per test process).
///
/// `SHOAL_TEST_BIN=/path/to/shoal` runs another build instead (to measure main's binary
/// against a test written later, say).
pub fn shoal_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SHOAL_TEST_BIN") {
        return PathBuf::from(bin);
    }
    static BUILT: std::sync::Once = std::sync::Once::new();
    // The test executable lives in target/<profile>/deps/; the binary in target/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = profile_dir.join("shoal");
    BUILT.call_once(|| {
        if bin.exists() && !sources_newer_than(&bin) {
            return;
        }
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "shoal-cli"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p shoal-cli failed");
    });
    bin
}

/// Whether any source of the binary changed after it was built.
fn sources_newer_than(bin: &Path) -> bool {
    fn newest(dir: &Path) -> std::time::SystemTime {
        let mut t = std::time::UNIX_EPOCH;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            let m = if p.is_dir() {
                newest(&p)
            } else {
                entry.metadata().and_then(|m| m.modified()).unwrap_or(t)
            };
            t = t.max(m);
        }
        t
    }
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["cli/src", "actors/src", "engine/src"]
        .iter()
        .any(|d| newest(&root.join(d)) > built)
}

/// Runs `shoal ARGS...` to completion, with a time bound.
pub fn shoal(args: &[&str]) -> Output {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(args);
    run_bounded(cmd, Duration::from_secs(120))
}

/// Runs a command to completion, killing it if it outlives `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut guard = ChildGuard::new(child, &format!("{cmd:?}"));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(_status) = guard.child().try_wait().expect("try_wait") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} ran longer than {limit:?}",
            guard.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let child = guard.take();
    child.wait_with_output().expect("wait_with_output")
}

/// A child process killed (and reaped) when dropped, so no test leaves a process behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Takes ownership of `child`.
    pub fn new(child: Child, name: &str) -> Self {
        Self {
            child: Some(child),
            name: name.to_string(),
        }
    }

    /// Spawns `cmd` and guards it.
    pub fn spawn(mut cmd: Command) -> Self {
        let name = format!("{cmd:?}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self::new(child, &name)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("child already taken").id()
    }

    /// The child, for waiting on it.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child already taken")
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn take(mut self) -> Child {
        self.child.take().expect("child already taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// This host's outward IPv4 address, if it has one: the source address of a route to a
/// documentation address (a UDP connect sends nothing). A listener there stands for a remote
/// host that a loopback session must never contact: a contact would be seen.
pub fn outward_ipv4() -> Option<std::net::IpAddr> {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").map(|()| u))
        .and_then(|u| u.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// A fresh temporary folder, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shoal-test-")
        .tempdir()
        .expect("tempdir")
}

/// Writes `len` deterministic pseudo-random bytes (seeded by `seed`) to `path`.
pub fn write_random_file(path: &Path, len: usize, seed: u64) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent");
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create file"));
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}

/// Debian's Python, the only one that can import libtorrent.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Panics with a clear message when a real client the test needs is missing: interop tests
/// never skip (scripts/test installs the clients).
pub fn require_program(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/test, which installs the real clients"
    );
}

/// Panics unless Debian's python3 can import libtorrent.
pub fn require_libtorrent() {
    let ok = Command::new(DEBIAN_PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3-libtorrent is missing: run scripts/test, which installs it"
    );
}

/// The folder holding the Python helpers of the tests.
pub fn helpers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("helpers")
}
