//! The `shoal` binary end to end: `tracker`, `seed --stop-after-one-copy`, `download`,
//! `verify` and `demo` as separate processes on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{shoal, shoal_bin, ChildGuard};

/// Starts `shoal tracker` on a free port and returns it with its announce URL.
fn start_tracker() -> (ChildGuard, String) {
    start_tracker_with(Command::new(shoal_bin()), Stdio::null())
}

/// Starts `cmd` (which runs the shoal binary) as `shoal tracker` on a free port, its standard
/// error going to `stderr`.
fn start_tracker_with(mut cmd: Command, stderr: Stdio) -> (ChildGuard, String) {
    cmd.args(["tracker", "--listen", "127.0.0.1:0", "--interval", "2"])
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut guard = ChildGuard::spawn(cmd);
    let stdout = guard.child().stdout.take().expect("tracker stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("tracker prints its announce URL");
    let url = line.trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/announce"),
        "announce URL: {url:?}"
    );
    (guard, url)
}

/// The tracker runs out of file descriptors (a limit of 32, 60 idle clients), keeps running,
/// and answers again once clients leave.
#[test]
fn the_tracker_survives_running_out_of_file_descriptors() {
    common::require_program("prlimit");
    let dir = common::tempdir();
    let log_path = dir.path().join("tracker.log");
    let log = std::fs::File::create(&log_path).expect("create log");
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=32", "--"]).arg(shoal_bin());
    let (mut tracker, url) = start_tracker_with(cmd, Stdio::from(log));
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/announce")
        .to_string();
    let announce = |addr: &str| -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let q = "info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port=6881&left=1";
        write!(s, "GET /announce?{q} HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    };
    // Connections the kernel completes but the tracker cannot accept (no descriptor left).
    let idle: Vec<std::net::TcpStream> = (0..60)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(idle);
    // The tracker closes the idle ones it accepted after its client timeout (10 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reply = loop {
        if let Some(r) = announce(&addr).filter(|r| r.starts_with("HTTP/1.1 200")) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tracker did not answer again within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(reply.contains("8:intervali2e"), "{reply}");
    assert!(
        tracker.child().try_wait().expect("poll tracker").is_none(),
        "the tracker exited"
    );
    // It did run out: it said so (once for the streak).
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        log.contains("cannot accept connections: Too many open files"),
        "{log}"
    );
}

#[test]
fn downloaders_finish_after_a_one_copy_seeder_leaves() {
    let (dir, torrent) = one_copy_swarm("prefer");
    verify_finds_a_damaged_piece(&dir, &torrent);
}

/// The same swarm with every connection MSE-handshaken, then plaintext (`--encryption allow`
/// on all four).
#[test]
fn downloaders_finish_after_a_one_copy_seeder_leaves_with_plaintext_after_mse() {
    one_copy_swarm("allow");
}

/// Three downloaders, then a `--stop-after-one-copy` seeder, all under `--encryption
/// encryption`; each downloader finishes byte-exact. Returns the folder and the torrent.
fn one_copy_swarm(encryption: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = common::tempdir();
    let content = dir.path().join("album");
    common::write_random_file(&content.join("one.bin"), 5 * 1024 * 1024 + 3, 11);
    common::write_random_file(&content.join("two/two.bin"), 3 * 1024 * 1024, 12);
    let (_tracker, url) = start_tracker();
    let torrent = dir.path().join("album.torrent");
    let out = shoal(&[
        "create",
        content.to_str().unwrap(),
        "-o",
        torrent.to_str().unwrap(),
        "--piece-length",
        "64KiB",
        "--tracker",
        &url,
    ]);
    assert!(
        out.status.success(),
        "create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Three downloaders first, so they know each other; then the seeder, which uploads every
    // piece once and exits.
    let downloaders: Vec<ChildGuard> = (0..3)
        .map(|i| {
            let mut cmd = Command::new(shoal_bin());
            cmd.args(["download", torrent.to_str().unwrap(), "-o"])
                .arg(dir.path().join(format!("dl{i}")))
                .args(["--listen", "127.0.0.1:0", "--encryption", encryption])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            ChildGuard::spawn(cmd)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut seed = Command::new(shoal_bin());
    seed.args([
        "seed",
        torrent.to_str().unwrap(),
        content.to_str().unwrap(),
        "--stop-after-one-copy",
    ])
    .args(["--listen", "127.0.0.1:0", "--encryption", encryption])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut seeder = ChildGuard::spawn(seed);
    let status = seeder
        .wait_timeout(Duration::from_secs(90))
        .expect("the one-copy seeder exits by itself");
    assert!(status.success(), "seeder failed");

    for (i, mut d) in downloaders.into_iter().enumerate() {
        let status = d
            .wait_timeout(Duration::from_secs(90))
            .unwrap_or_else(|| panic!("downloader {i} finished"));
        assert!(status.success(), "downloader {i} exit status {status}");
        for f in ["one.bin", "two/two.bin"] {
            let a = std::fs::read(content.join(f)).unwrap();
            let b = std::fs::read(dir.path().join(format!("dl{i}/album/{f}"))).unwrap();
            assert!(a == b, "downloader {i}: {f} differs");
        }
    }
    (dir, torrent)
}

/// `verify` agrees with a finished download of [`one_copy_swarm`], and points at a piece we
/// damage.
fn verify_finds_a_damaged_piece(dir: &tempfile::TempDir, torrent: &Path) {
    let copy = dir.path().join("dl0/album");
    let ok = shoal(&["verify", torrent.to_str().unwrap(), copy.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let damaged = copy.join("two/two.bin");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[100_000] ^= 0xff; // in the file's second 64 KiB, i.e. some piece past "one.bin"
    std::fs::write(&damaged, &bytes).unwrap();
    let bad = shoal(&["verify", torrent.to_str().unwrap(), copy.to_str().unwrap()]);
    assert!(!bad.status.success(), "verify must fail on damaged data");
    let stdout = String::from_utf8_lossy(&bad.stdout);
    // one.bin is 5 MiB + 3 bytes: byte 100000 of two.bin is at torrent offset 5242883 + 100000,
    // in piece (5242883 + 100000) / 65536 = 81.
    assert!(
        stdout.contains("failed pieces: 81"),
        "verify output: {stdout}"
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "one-line error: {stderr}");
}

#[test]
fn demo_runs_a_whole_swarm_with_no_arguments() {
    let out = common::run_bounded(
        {
            let mut c = Command::new(shoal_bin());
            c.args(["demo", "--size-mib", "16", "--downloaders", "3"]);
            c
        },
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    assert!(stderr.contains("every copy is byte-exact"), "{stderr}");
}

#[test]
fn errors_are_one_line_and_exit_nonzero() {
    let dir = common::tempdir();
    let missing = dir.path().join("nope.torrent");
    for args in [
        vec![
            "download",
            missing.to_str().unwrap(),
            "-o",
            dir.path().to_str().unwrap(),
        ],
        vec![
            "seed",
            missing.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
        vec![
            "verify",
            missing.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
    ] {
        let out = shoal(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("shoal: error: "), "{stderr}");
    }
    let v = shoal(&["--version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("shoal "));
}
