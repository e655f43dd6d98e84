//! Connections under pressure: 500 raw connections that send a valid handshake for the torrent
//! and then nothing must not lock an honest peer out of a seeding `shoal` (issue 16). The honest
//! peer is a real libtorrent downloader (python3-libtorrent) that arrives 3 s after the attack.
//! And no useful connection is dropped to make room: silent ones are.
//!
//! Run with `cargo test --release --test pressure -- --nocapture`; it prints the honest peer's
//! time and the seeder's memory and descriptors under the attack.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;

/// Silent connections in the attack.
const SILENT: usize = 500;

/// How long after the attack the honest downloader arrives.
const HONEST_AFTER: Duration = Duration::from_secs(3);

/// The honest downloader must be done within this: the target. Before the admission
/// policy it was not done after 120 s (the issue measured 57.7 s); with it, about 1 s.
const HONEST_BOUND: Duration = Duration::from_secs(5);

/// The seeder's resident memory must stay under this while it holds the attack.
const RSS_BOUND_KIB: u64 = 256 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The 68-byte handshake for `hash` (hex) with peer id `n`, as a stranger would send it.
fn handshake(hash: &str, n: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(68);
    h.push(19);
    h.extend_from_slice(b"BitTorrent protocol");
    h.extend_from_slice(&[0u8; 8]);
    for i in 0..20 {
        h.push(u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).expect("hex info hash"));
    }
    let id = format!("-XX0001-{n:012}");
    h.extend_from_slice(&id.as_bytes()[..20]);
    h
}

/// `(VmRSS in KiB, open descriptors)` of process `pid`.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

#[test]
fn silent_connections_do_not_lock_out_an_honest_downloader() {
    let dir = tempdir();
    let content = make_content(
        &dir.path().join("src"),
        "pressure.bin",
        Shape::Single,
        16 * 1024 * 1024 + 12_345,
        16,
    );
    let torrent = dir.path().join("pressure.torrent");
    let hash = create_torrent(&content, &torrent, "262144", None);
    let shoal_log = dir.path().join("shoal.log");
    let lt_log = dir.path().join("libtorrent.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let seeder = spawn_shoal(
        &[
            "seed",
            s(&torrent),
            s(&content),
            "--listen",
            &listen,
            "--no-trackers",
        ],
        &shoal_log,
    );
    wait_listening(port, Duration::from_secs(30), "shoal", &[&shoal_log]);
    // The check of 16 MiB is quick; give it a moment so the attack meets a seeding torrent.
    wait_until(
        Duration::from_secs(30),
        "shoal to seed",
        &[&shoal_log],
        || std::fs::read_to_string(&shoal_log).is_ok_and(|t| t.contains("seeding")),
    );

    // The attack: every connection sends a valid handshake for the torrent, then nothing. The
    // streams are held open (and never read) until the test ends.
    let attack_started = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    for n in 0..SILENT {
        match TcpStream::connect(&listen) {
            Ok(mut c) => {
                let _ = c.write_all(&handshake(&hash, n));
                silent.push(c);
            }
            Err(e) => panic!("attack connection {n}: {e}"),
        }
    }
    eprintln!(
        "pressure: {SILENT} silent connections opened in {:.2} s",
        attack_started.elapsed().as_secs_f64()
    );
    std::thread::sleep(HONEST_AFTER.saturating_sub(attack_started.elapsed()));

    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let started = Instant::now();
    let mut lt = Libtorrent {
        peers: std::slice::from_ref(&listen),
        ..Libtorrent::default()
    }
    .spawn(&torrent, &out, free_port(), &lt_log);
    let status = lt.wait_timeout(Duration::from_secs(120));
    let took = started.elapsed();
    let (rss, fds) = rss_and_fds(seeder.id());
    eprintln!(
        "pressure: honest libtorrent downloader done in {:.1} s (bound {:.0} s); seeder RSS \
         {} MiB, {fds} descriptors",
        took.as_secs_f64(),
        HONEST_BOUND.as_secs_f64(),
        rss / 1024
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "libtorrent did not finish ({status:?})\n{}",
        tails(&[&lt_log, &shoal_log])
    );
    assert_same_content(&content, &out.join("pressure.bin"));
    assert!(
        took < HONEST_BOUND,
        "the honest downloader took {took:?} (bound {HONEST_BOUND:?})\n{}",
        tails(&[&lt_log])
    );
    assert!(
        rss < RSS_BOUND_KIB,
        "seeder RSS {rss} KiB under the attack (bound {RSS_BOUND_KIB} KiB)"
    );
    drop(silent);
}

/// Whether the peer closed `c` (EOF or reset), reading and dropping whatever it sent first.
fn closed_by_peer(mut c: &TcpStream) -> bool {
    use std::io::Read;
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16384];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// No useful connection is dropped to make room: a seeder full of interested peers refuses a
/// flood of silent newcomers rather than evict any of them; once one of them leaves, a
/// newcomer takes its place; and a silent connection is the one evicted for a useful newcomer.
#[test]
fn interested_peers_are_never_evicted_for_silent_ones() {
    const LIMIT: usize = 10;
    let dir = tempdir();
    let content = make_content(
        &dir.path().join("src"),
        "useful.bin",
        Shape::Single,
        1024 * 1024 + 7,
        17,
    );
    let torrent = dir.path().join("useful.torrent");
    let hash = create_torrent(&content, &torrent, "16384", None);
    let shoal_log = dir.path().join("shoal.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _seeder = spawn_shoal(
        &[
            "seed",
            s(&torrent),
            s(&content),
            "--listen",
            &listen,
            "--no-trackers",
            "--max-peers",
            &LIMIT.to_string(),
        ],
        &shoal_log,
    );
    wait_listening(port, Duration::from_secs(30), "shoal", &[&shoal_log]);
    wait_until(
        Duration::from_secs(30),
        "shoal to seed",
        &[&shoal_log],
        || std::fs::read_to_string(&shoal_log).is_ok_and(|t| t.contains("seeding")),
    );
    // INTERESTED: length 1, id 2.
    let interested = [0u8, 0, 0, 1, 2];
    let mut honest: Vec<TcpStream> = (0..LIMIT)
        .map(|n| {
            let mut c = TcpStream::connect(&listen).expect("connect");
            c.write_all(&handshake(&hash, 10_000 + n)).unwrap();
            c.write_all(&interested).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let silent: Vec<TcpStream> = (0..200)
        .map(|n| {
            let mut c = TcpStream::connect(&listen).expect("connect");
            c.write_all(&handshake(&hash, n)).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let honest_closed = honest.iter().filter(|c| closed_by_peer(c)).count();
    let silent_closed = silent.iter().filter(|c| closed_by_peer(c)).count();
    assert_eq!(
        honest_closed,
        0,
        "interested peers were dropped\n{}",
        tails(&[&shoal_log])
    );
    assert_eq!(
        silent_closed, 200,
        "silent newcomers at a full torrent are refused"
    );

    // One interested peer leaves: a silent newcomer takes its place, and is itself the one
    // evicted when a useful newcomer comes next.
    drop(honest.pop());
    std::thread::sleep(Duration::from_millis(500));
    let mut quiet = TcpStream::connect(&listen).expect("connect");
    quiet.write_all(&handshake(&hash, 500)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!closed_by_peer(&quiet), "a free slot is taken");
    let mut useful = TcpStream::connect(&listen).expect("connect");
    useful.write_all(&handshake(&hash, 501)).unwrap();
    useful.write_all(&interested).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(closed_by_peer(&quiet), "the silent peer made room");
    assert!(!closed_by_peer(&useful), "the useful newcomer stays");
    let honest_closed = honest.iter().filter(|c| closed_by_peer(c)).count();
    assert_eq!(honest_closed, 0, "interested peers were dropped");
}

/// A connection silent for 30 s after its handshake is dropped when connections are scarce
/// (nine tenths of the limit used), and kept when they are not.
#[test]
fn silence_past_30_s_is_dropped_only_when_connections_are_scarce() {
    let dir = tempdir();
    let content = make_content(
        &dir.path().join("src"),
        "quiet.bin",
        Shape::Single,
        300_000,
        18,
    );
    let torrent = dir.path().join("quiet.torrent");
    let hash = create_torrent(&content, &torrent, "16384", None);
    // Two seeders with 9 silent connections each: 9 of 10 is scarce, 9 of 20 is not.
    let mut seeders = Vec::new();
    let mut conns = Vec::new();
    for (i, max_peers) in ["10", "20"].iter().enumerate() {
        let log = dir.path().join(format!("shoal-{max_peers}.log"));
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        seeders.push(spawn_shoal(
            &[
                "seed",
                s(&torrent),
                s(&content),
                "--listen",
                &listen,
                "--no-trackers",
                "--max-peers",
                max_peers,
            ],
            &log,
        ));
        wait_listening(port, Duration::from_secs(30), "shoal", &[&log]);
        wait_until(Duration::from_secs(30), "shoal to seed", &[&log], || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("seeding"))
        });
        let silent: Vec<TcpStream> = (0..9)
            .map(|n| {
                let mut c = TcpStream::connect(&listen).expect("connect");
                c.write_all(&handshake(&hash, 100 * i + n)).unwrap();
                c
            })
            .collect();
        conns.push(silent);
    }
    std::thread::sleep(Duration::from_secs(2));
    for silent in &conns {
        assert_eq!(
            silent.iter().filter(|c| closed_by_peer(c)).count(),
            0,
            "silent connections are kept before the grace"
        );
    }
    // The grace is 30 s from the handshake; the check runs every second.
    std::thread::sleep(Duration::from_secs(31));
    let scarce = conns[0].iter().filter(|c| closed_by_peer(c)).count();
    let plenty = conns[1].iter().filter(|c| closed_by_peer(c)).count();
    assert_eq!(
        scarce, 9,
        "silent past 30 s at 9 of 10 connections: dropped"
    );
    assert_eq!(plenty, 0, "silent past 30 s at 9 of 20 connections: kept");
}
