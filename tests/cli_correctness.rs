//! The `shoal` binary where a new user found it wrong (issue 18): stale longer files, `seed` on
//! partial data, interrupted downloads, claims about what was checked, closed pipes, silent
//! waits, host names, path forms, concurrent downloads, messages. Each test runs the binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{shoal, shoal_bin, ChildGuard};

/// A `shoal` process whose standard error is collected line by line by a thread.
struct Running {
    guard: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `shoal ARGS...`, standard output discarded.
    fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(shoal_bin());
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn(cmd);
        let stderr = guard.child().stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            // Progress lines end in \r on a terminal; here they end in \n.
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self { guard, lines }
    }

    /// Everything written to standard error so far.
    fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits up to `limit` for a line of standard error containing `needle`, and returns it.
    fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (a name such as `INT`) to the process.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.guard.id().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{signal}");
    }

    /// Waits up to `limit` for the process to exit.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let status = self.guard.wait_timeout(limit);
        // Let the reader thread drain the pipe.
        std::thread::sleep(Duration::from_millis(100));
        status
            .unwrap_or_else(|| panic!("still running after {limit:?}; stderr:\n{}", self.stderr()))
    }

    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        self.guard.child().try_wait().expect("try_wait").is_none()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `shoal create PATH -o TORRENT --piece-length 16KiB EXTRA...`, which must succeed.
fn create(content: &Path, torrent: &Path, extra: &[&str]) {
    let mut args = vec![
        "create",
        s(content),
        "-o",
        s(torrent),
        "--piece-length",
        "16KiB",
    ];
    args.extend_from_slice(extra);
    let out = shoal(&args);
    assert!(out.status.success(), "create: {}", stderr_of(&out));
}

/// A full seeder of `torrent` from `content` on loopback, and its address.
fn seeder(torrent: &Path, content: &Path) -> (Running, String) {
    let seed = Running::start(&[
        "seed",
        s(torrent),
        s(content),
        "--no-trackers",
        "--listen",
        "127.0.0.1:0",
    ]);
    let line = seed.wait_for("shoal: seeding", Duration::from_secs(30));
    let addr = line
        .rsplit(' ')
        .next()
        .expect("address at the end")
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    (seed, addr)
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// 1. A file longer than the torrent says.

#[test]
fn a_longer_stale_file_is_cut_to_length_and_verify_names_it() {
    let dir = common::tempdir();
    let content = dir.path().join("single.bin");
    common::write_random_file(&content, 200_000, 1);
    let torrent = dir.path().join("single.torrent");
    create(&content, &torrent, &[]);
    let out = dir.path().join("out");
    let copy = out.join("single.bin");
    let mut stale = read(&content);
    stale.extend_from_slice(&[0x55; 50_000]);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&copy, &stale).unwrap();

    let v = shoal(&["verify", s(&torrent), s(&copy)]);
    assert_eq!(v.status.code(), Some(1), "verify must fail on a long file");
    let text = stdout_of(&v) + &stderr_of(&v);
    assert!(
        text.contains("single.bin") && text.contains("250000") && text.contains("200000"),
        "verify names the file and both lengths: {text}"
    );

    let d = shoal(&["download", s(&torrent), "-o", s(&out), "--no-trackers"]);
    assert!(d.status.success(), "download: {}", stderr_of(&d));
    assert_eq!(
        read(&copy),
        read(&content),
        "cut back to the torrent's length"
    );
    let v = shoal(&["verify", s(&torrent), s(&copy)]);
    assert!(v.status.success(), "verify: {}", stdout_of(&v));

    // Inside a folder torrent too.
    let tree = dir.path().join("tree");
    common::write_random_file(&tree.join("a.bin"), 100_000, 2);
    common::write_random_file(&tree.join("d/z.txt"), 77, 3);
    let tt = dir.path().join("tree.torrent");
    create(&tree, &tt, &[]);
    let out2 = dir.path().join("out2");
    common::write_random_file(&out2.join("tree/a.bin"), 100_000, 2);
    let mut z = read(&tree.join("d/z.txt"));
    z.extend_from_slice(&[b'x'; 5000 - 77]);
    std::fs::create_dir_all(out2.join("tree/d")).unwrap();
    std::fs::write(out2.join("tree/d/z.txt"), &z).unwrap();
    let v = shoal(&["verify", s(&tt), s(&out2.join("tree"))]);
    assert_eq!(v.status.code(), Some(1));
    let text = stdout_of(&v) + &stderr_of(&v);
    assert!(text.contains("z.txt"), "{text}");
    let d = shoal(&["download", s(&tt), "-o", s(&out2), "--no-trackers"]);
    assert!(d.status.success(), "download: {}", stderr_of(&d));
    assert_eq!(
        std::fs::metadata(out2.join("tree/d/z.txt")).unwrap().len(),
        77
    );
}

// 2. `seed` with partial data.

#[test]
fn seed_with_partial_data_never_requests_and_says_what_is_missing() {
    let dir = common::tempdir();
    let content = dir.path().join("big.bin");
    common::write_random_file(&content, 40 * 16384, 4);
    let torrent = dir.path().join("big.torrent");
    create(&content, &torrent, &[]);
    let (_full, addr) = seeder(&torrent, &content);
    // The first 18 pieces and a bit: pieces 0-17 verify.
    let trunc = dir.path().join("wrong/trunc.bin");
    std::fs::create_dir_all(trunc.parent().unwrap()).unwrap();
    std::fs::write(&trunc, &read(&content)[..18 * 16384 + 100]).unwrap();
    let mut partial = Running::start(&[
        "seed",
        s(&torrent),
        s(&trunc),
        "--no-trackers",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &addr,
    ]);
    let line = partial.wait_for("missing", Duration::from_secs(30));
    assert!(line.contains("22"), "says how many are missing: {line}");
    partial.wait_for("shoal: seeding", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(4));
    assert!(partial.running(), "exited: {}", partial.stderr());
    let text = partial.stderr();
    assert!(
        !text.contains("writing piece") && !text.contains("Bad file descriptor"),
        "never writes: {text}"
    );
    assert_eq!(
        read(&trunc).len(),
        18 * 16384 + 100,
        "the data is untouched"
    );
    partial.signal("INT");
    let status = partial.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "seeding ends with Ctrl-C");
}

// 3. Interrupted downloads; 4. what "verified" means.

#[test]
fn an_interrupted_download_exits_130_or_143_and_the_next_run_resumes() {
    let dir = common::tempdir();
    let content = dir.path().join("half.bin");
    common::write_random_file(&content, 64 * 16384, 5);
    let torrent = dir.path().join("half.torrent");
    create(&content, &torrent, &[]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("half.bin"), &read(&content)[..32 * 16384]).unwrap();

    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let mut d = Running::start(&[
            "download",
            s(&torrent),
            "-o",
            s(&out),
            "--no-trackers",
            "--listen",
            "127.0.0.1:0",
        ]);
        d.wait_for("shoal: downloading", Duration::from_secs(30));
        d.signal(signal);
        let status = d.wait(Duration::from_secs(15));
        assert_eq!(status.code(), Some(code), "SIGTERM/SIGINT: {}", d.stderr());
        let text = d.stderr();
        assert!(
            text.contains("32 of 64 pieces"),
            "says how much is kept: {text}"
        );
        assert!(
            text.contains("resume"),
            "says that rerunning resumes: {text}"
        );
    }

    let (_seed, addr) = seeder(&torrent, &content);
    let mut d = Running::start(&[
        "download",
        s(&torrent),
        "-o",
        s(&out),
        "--no-trackers",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &addr,
    ]);
    let status = d.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", d.stderr());
    assert!(
        d.stderr().contains("32 pieces from the resume record"),
        "the second run resumed: {}",
        d.stderr()
    );
    assert_eq!(read(&out.join("half.bin")), read(&content));
}

#[test]
fn a_trusted_resume_record_is_not_called_a_full_check() {
    let dir = common::tempdir();
    let content = dir.path().join("r.bin");
    common::write_random_file(&content, 20 * 16384, 6);
    let torrent = dir.path().join("r.torrent");
    create(&content, &torrent, &[]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(&content, out.join("r.bin")).unwrap();
    // First run: no record, so every piece is read and checked.
    let first = shoal(&["download", s(&torrent), "-o", s(&out), "--no-trackers"]);
    assert!(first.status.success(), "{}", stderr_of(&first));
    assert!(
        stderr_of(&first).contains("every piece verified"),
        "{}",
        stderr_of(&first)
    );
    // One byte changed, its modification time put back.
    let path = out.join("r.bin");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut b = [0u8; 1];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut b, 1000)
            .unwrap();
        f.write_all_at(&[b[0] ^ 1], 1000).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let second = shoal(&["download", s(&torrent), "-o", s(&out), "--no-trackers"]);
    assert!(second.status.success(), "{}", stderr_of(&second));
    let text = stderr_of(&second);
    assert!(!text.contains("every piece verified"), "{text}");
    assert!(text.contains("resume record"), "{text}");
    assert!(text.contains("shoal verify"), "points at verify: {text}");
    let v = shoal(&["verify", s(&torrent), s(&path)]);
    assert_eq!(v.status.code(), Some(1), "verify reads every byte");
}

// 5. A closed pipe.

#[test]
fn info_and_verify_into_a_closed_pipe_exit_quietly() {
    let dir = common::tempdir();
    let content = dir.path().join("many");
    for i in 0..1500 {
        let p = content.join(format!("a-rather-long-file-name-number-{i:05}.txt"));
        if i == 0 {
            std::fs::create_dir_all(&content).unwrap();
        }
        std::fs::write(p, [i as u8]).unwrap();
    }
    let torrent = dir.path().join("many.torrent");
    create(&content, &torrent, &[]);
    for args in [
        vec!["info", s(&torrent)],
        vec!["info", "--json", s(&torrent)],
    ] {
        let mut cmd = Command::new(shoal_bin());
        cmd.args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(cmd);
        // Read one line (as `head -1` would), then close the pipe.
        let stdout = child.child().stdout.take().unwrap();
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        let status = child.wait_timeout(Duration::from_secs(30)).expect("exits");
        let mut err = String::new();
        std::io::Read::read_to_string(child.child().stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: quiet, but: {err}");
    }
}

// 6. Silence when no peer can be found.

#[test]
fn with_no_way_to_find_peers_shoal_says_so() {
    let dir = common::tempdir();
    let content = dir.path().join("lonely.bin");
    common::write_random_file(&content, 4 * 16384, 7);
    let torrent = dir.path().join("lonely.torrent");
    create(&content, &torrent, &[]);
    // Each case downloads into its own folder: one folder takes one download at a time.
    let outs: Vec<_> = (0..5).map(|i| dir.path().join(format!("out{i}"))).collect();
    let base = |i: usize| ["download", s(&torrent), "-o", s(&outs[i]), "--no-trackers"];

    // Neither trackers nor peers.
    let d = Running::start(&[&base(0)[..], &["--listen", "127.0.0.1:0"]].concat());
    d.wait_for("no trackers", Duration::from_secs(10));

    // A peer that refuses.
    let refused = format!("127.0.0.1:{}", free_port());
    let d = Running::start(
        &[
            &base(1)[..],
            &["--listen", "127.0.0.1:0", "--peer", &refused],
        ]
        .concat(),
    );
    let line = d.wait_for(&refused, Duration::from_secs(10));
    assert!(line.to_lowercase().contains("refused"), "{line}");

    // A peer that is not a BitTorrent peer: it answers in HTTP.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in http.incoming().flatten() {
            let _ = s.write_all(&[b'H'; 68]);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let d = Running::start(
        &[
            &base(2)[..],
            &["--listen", "127.0.0.1:0", "--peer", &http_addr],
        ]
        .concat(),
    );
    let line = d.wait_for(&http_addr, Duration::from_secs(15));
    assert!(line.contains("not a BitTorrent peer"), "{line}");

    // Ourselves.
    let port = free_port();
    let me = format!("127.0.0.1:{port}");
    let d = Running::start(&[&base(3)[..], &["--listen", &me, "--peer", &me]].concat());
    let line = d.wait_for(&me, Duration::from_secs(10));
    assert!(line.contains("ourselves"), "{line}");

    // And after a while with no peer at all, it says so again.
    let d = Running::start(&[&base(4)[..], &["--listen", "127.0.0.1:0"]].concat());
    d.wait_for("no peers yet", Duration::from_secs(20));
}

// 7. Host names.

#[test]
fn host_names_work_in_peer() {
    let dir = common::tempdir();
    let content = dir.path().join("named.bin");
    common::write_random_file(&content, 8 * 16384, 8);
    let torrent = dir.path().join("named.torrent");
    create(&content, &torrent, &[]);
    let (_seed, addr) = seeder(&torrent, &content);
    let port = addr.rsplit(':').next().unwrap();
    let out = dir.path().join("out");
    let d = shoal(&[
        "download",
        s(&torrent),
        "-o",
        s(&out),
        "--no-trackers",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &format!("localhost:{port}"),
    ]);
    assert!(d.status.success(), "{}", stderr_of(&d));
    assert_eq!(read(&out.join("named.bin")), read(&content));
    let bad = shoal(&[
        "download",
        s(&torrent),
        "-o",
        s(&out),
        "--peer",
        "no-such-host.invalid:1",
    ]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        stderr_of(&bad).contains("no-such-host.invalid"),
        "{}",
        stderr_of(&bad)
    );
}

// 8. `verify` on a missing path; the files of failed pieces.

#[test]
fn verify_says_a_path_is_missing_and_names_damaged_files() {
    let dir = common::tempdir();
    let tree = dir.path().join("album");
    common::write_random_file(&tree.join("one.bin"), 100_000, 9);
    common::write_random_file(&tree.join("sub/two.bin"), 100_000, 10);
    let torrent = dir.path().join("album.torrent");
    create(&tree, &torrent, &[]);
    let missing = dir.path().join("nowhere");
    let v = shoal(&["verify", s(&torrent), s(&missing)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        stderr_of(&v).contains("does not exist"),
        "{}",
        stderr_of(&v)
    );
    assert!(!stdout_of(&v).contains("pieces good"), "{}", stdout_of(&v));

    let mut bytes = read(&tree.join("sub/two.bin"));
    bytes[50_000] ^= 1;
    std::fs::write(tree.join("sub/two.bin"), &bytes).unwrap();
    std::fs::remove_file(tree.join("one.bin")).unwrap();
    let v = shoal(&["verify", s(&torrent), s(&tree)]);
    assert_eq!(v.status.code(), Some(1));
    let text = stdout_of(&v);
    assert!(text.contains("sub/two.bin"), "{text}");
    assert!(
        text.contains("one.bin") && text.contains("missing"),
        "{text}"
    );
}

// 9. Path forms.

#[test]
fn seed_and_verify_take_the_download_folder_too() {
    let dir = common::tempdir();
    let file = dir.path().join("solo.bin");
    common::write_random_file(&file, 50_000, 11);
    let tree = dir.path().join("pack");
    common::write_random_file(&tree.join("x.bin"), 50_000, 12);
    common::write_random_file(&tree.join("y/z.bin"), 30_000, 13);
    for (content, name) in [(&file, "solo"), (&tree, "pack")] {
        let torrent = dir.path().join(format!("{name}.torrent"));
        create(content, &torrent, &[]);
        let dl = dir.path().join(format!("dl-{name}"));
        // The download folder, made by hand: DIR/<torrent name>.
        std::fs::create_dir_all(&dl).unwrap();
        let cp = Command::new("cp")
            .arg("-r")
            .arg(content)
            .arg(&dl)
            .status()
            .unwrap();
        assert!(cp.success());
        let v = shoal(&["verify", s(&torrent), s(&dl)]);
        assert!(
            v.status.success(),
            "verify of the download folder: {}{}",
            stdout_of(&v),
            stderr_of(&v)
        );
        let mut seed = Running::start(&[
            "seed",
            s(&torrent),
            s(&dl),
            "--no-trackers",
            "--listen",
            "127.0.0.1:0",
        ]);
        seed.wait_for("shoal: seeding", Duration::from_secs(20));
        assert!(seed.running());
    }
    // A download folder that is a file.
    let d = shoal(&[
        "download",
        s(&dir.path().join("solo.torrent")),
        "-o",
        s(&file),
    ]);
    assert_eq!(d.status.code(), Some(1));
    assert!(stderr_of(&d).contains("not a folder"), "{}", stderr_of(&d));
}

// 10. Two downloads into one folder.

#[test]
fn a_second_download_into_the_same_folder_is_refused() {
    let dir = common::tempdir();
    let content = dir.path().join("twice.bin");
    common::write_random_file(&content, 4 * 16384, 14);
    let torrent = dir.path().join("twice.torrent");
    create(&content, &torrent, &[]);
    let out = dir.path().join("out");
    let args = [
        "download",
        s(&torrent),
        "-o",
        s(&out),
        "--no-trackers",
        "--listen",
        "127.0.0.1:0",
    ];
    let mut first = Running::start(&args);
    first.wait_for("shoal: downloading", Duration::from_secs(20));
    let mut second = Running::start(&args);
    let status = second.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", second.stderr());
    assert!(
        second.stderr().contains("already being downloaded"),
        "{}",
        second.stderr()
    );
    assert!(first.running());
    first.signal("INT");
    first.wait(Duration::from_secs(15));
    // The lock goes with the process.
    let third = Running::start(&args);
    third.wait_for("shoal: downloading", Duration::from_secs(20));
}

// 11. Logger lines and contradictions.

#[test]
fn library_warnings_come_out_as_tidy_lines() {
    let dir = common::tempdir();
    let content = dir.path().join("warn.bin");
    common::write_random_file(&content, 4 * 16384, 15);
    let torrent = dir.path().join("warn.torrent");
    let dead = format!("http://127.0.0.1:{}/announce", free_port());
    create(&content, &torrent, &["--tracker", &dead]);
    let out = dir.path().join("out");
    let d = Running::start(&[
        "download",
        s(&torrent),
        "-o",
        s(&out),
        "--listen",
        "127.0.0.1:0",
    ]);
    d.wait_for("announce failed", Duration::from_secs(20));
    for line in d.stderr().lines() {
        assert!(
            line.starts_with("shoal: ") || line.starts_with("warn.bin: "),
            "untidy line: {line:?}"
        );
    }

    // Data that matches nothing: one clear error, no "seeding the rest".
    let wrong = dir.path().join("wrong.bin");
    common::write_random_file(&wrong, 4 * 16384, 16);
    let out = shoal(&[
        "seed",
        s(&torrent),
        s(&wrong),
        "--no-trackers",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr_of(&out);
    assert!(!text.contains("seeding the rest"), "{text}");
    assert!(text.contains("no piece"), "{text}");

    // Too large a piece length is too large, whatever the suffix.
    for size in ["1GiB", "1TiB"] {
        let o = shoal(&[
            "create",
            s(&content),
            "-o",
            s(&dir.path().join("x.torrent")),
            "--piece-length",
            size,
        ]);
        assert_ne!(o.status.code(), Some(0));
        let e = stderr_of(&o);
        assert!(e.contains("largest"), "{size}: {e}");
    }
}

// 12. Smaller things.

#[test]
fn counts_are_plural_only_when_they_should_be() {
    let dir = common::tempdir();
    let content = dir.path().join("one.bin");
    common::write_random_file(&content, 1000, 17);
    let torrent = dir.path().join("one.torrent");
    let out = shoal(&["create", s(&content), "-o", s(&torrent)]);
    assert!(out.status.success());
    assert!(
        stdout_of(&out).contains("in 1 piece of"),
        "{}",
        stdout_of(&out)
    );
    let v = shoal(&["verify", s(&torrent), s(&content)]);
    assert!(v.status.success());
    assert!(!stdout_of(&v).contains("1 pieces"), "{}", stdout_of(&v));
    let demo = common::run_bounded(
        {
            let mut c = Command::new(shoal_bin());
            c.args(["demo", "--size-mib", "1", "--downloaders", "1"]);
            c
        },
        Duration::from_secs(120),
    );
    assert!(demo.status.success(), "{}", stderr_of(&demo));
    assert!(
        stderr_of(&demo).contains("1 downloader finished"),
        "{}",
        stderr_of(&demo)
    );
}

#[test]
fn zero_counts_and_odd_values_are_refused_or_warned_about() {
    let dir = common::tempdir();
    let content = dir.path().join("odd.bin");
    common::write_random_file(&content, 100_000, 18);
    let torrent = dir.path().join("odd.torrent");
    create(&content, &torrent, &[]);
    let out = dir.path().join("out");
    for args in [
        vec!["download", s(&torrent), "-o", s(&out), "--max-peers", "0"],
        vec!["download", s(&torrent), "-o", s(&out), "--queue-depth", "0"],
        vec!["demo", "--downloaders", "0"],
        vec!["demo", "--size-mib", "0"],
    ] {
        let o = shoal(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?} is refused");
        assert!(stderr_of(&o).contains("0"), "{args:?}: {}", stderr_of(&o));
    }
    let o = shoal(&[
        "create",
        s(&content),
        "-o",
        s(&dir.path().join("odd2.torrent")),
        "--piece-length",
        "3000",
        "--tracker",
        "not a url",
    ]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let e = stderr_of(&o);
    assert!(e.contains("power of two"), "{e}");
    assert!(e.contains("not a url") && e.contains("URL"), "{e}");
}

#[test]
fn info_escapes_control_characters_in_names() {
    let dir = common::tempdir();
    let tree = dir.path().join("ctl");
    common::write_random_file(&tree.join("red\u{1b}[31mtext"), 10, 19);
    common::write_random_file(&tree.join("bell\u{7}.txt"), 10, 20);
    let torrent = dir.path().join("ctl.torrent");
    create(&tree, &torrent, &["--comment", "a\u{1b}]0;title\u{7}b"]);
    let o = shoal(&["info", s(&torrent)]);
    assert!(o.status.success());
    assert!(
        !o.stdout.iter().any(|&b| b < 0x20 && b != b'\n'),
        "raw control characters: {:?}",
        stdout_of(&o)
    );
    assert!(
        stdout_of(&o).contains("red\\u{1b}[31mtext"),
        "{}",
        stdout_of(&o)
    );
}

#[test]
fn the_progress_bar_fits_80_columns_and_the_last_line_is_its_own() {
    common::require_program("script");
    let dir = common::tempdir();
    let content = dir
        .path()
        .join("a-name-long-enough-to-push-a-progress-bar-past-eighty-columns.bin");
    common::write_random_file(&content, 30 * 16384, 21);
    let torrent = dir.path().join("bar.torrent");
    create(&content, &torrent, &[]);
    let (_seed, addr) = seeder(&torrent, &content);
    let out = dir.path().join("out");
    let cmd = format!(
        "stty cols 80 rows 24; {} download {} -o {} --no-trackers --listen 127.0.0.1:0 --peer {}",
        shoal_bin().display(),
        torrent.display(),
        out.display(),
        addr
    );
    let mut c = Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"]);
    let o = common::run_bounded(c, Duration::from_secs(60));
    assert!(o.status.success(), "{}", stdout_of(&o));
    // The terminal's bytes: strip escape sequences, split at \r and \n.
    let raw = stdout_of(&o);
    let mut plain = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    // The bar's lines (other lines are messages, wrapped by the terminal like any text).
    for line in plain.split(['\r', '\n']).filter(|l| l.contains("/s up ")) {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
    }
    let complete = plain
        .split(['\r', '\n'])
        .find(|l| l.contains("is complete"))
        .unwrap_or_else(|| panic!("no complete line: {plain:?}"));
    assert!(
        complete.starts_with("shoal: "),
        "on its own line: {complete:?}"
    );
}
