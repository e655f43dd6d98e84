//! Encrypted connections (MSE/PE) end to end, on 127.0.0.1: the `shoal` binary against
//! libtorrent (python3-libtorrent 2.0.8), Transmission (`encryption: 2`, required) and aria2
//! (`--bt-require-crypto=true`) both ways, the `--encryption require` policy, and hostile MSE
//! openings (too much padding, a wrong verification constant, an unknown SKEY, garbage, and a
//! flood) against a running seeder whose honest transfer must still finish.
//!
//! Run with `cargo test --release --test mse_actors -- --test-threads=2`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;
use shoal_engine::mse::{Handshake, Policy, Secrets};
use shoal_engine::wire;
use shoal_engine::{InfoHash, PeerId};

/// Bound for transfers with libtorrent and aria2.
const FAST_CLIENT: Duration = Duration::from_secs(90);
/// Bound for transfers with Transmission (it unchokes every 10 s).
const TRANSMISSION: Duration = Duration::from_secs(120);
/// How long shoal may take to close a hostile opening (its handshake timeout is 10 s; every
/// case here is refused on its bytes, well before).
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A test's folder with content and a torrent of it.
struct Setup {
    dir: tempfile::TempDir,
    content: PathBuf,
    torrent: PathBuf,
    hash: String,
}

impl Setup {
    fn new(name: &str, total: u64, piece: u64, seed: u64, tracker: Option<&str>) -> Self {
        let dir = tempdir();
        let content = make_content(&dir.path().join("src"), name, Shape::Single, total, seed);
        let torrent = dir.path().join(format!("{name}.torrent"));
        let hash = create_torrent(&content, &torrent, &piece.to_string(), tracker);
        Setup {
            dir,
            content,
            torrent,
            hash,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn src(&self) -> PathBuf {
        self.path("src")
    }

    fn out(&self) -> PathBuf {
        let out = self.path("out");
        std::fs::create_dir_all(&out).unwrap();
        out
    }

    fn name(&self) -> &std::ffi::OsStr {
        self.content.file_name().unwrap()
    }

    fn info_hash(&self) -> InfoHash {
        let mut h = [0u8; 20];
        for (i, b) in h.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.hash[2 * i..2 * i + 2], 16).unwrap();
        }
        InfoHash(h)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `shoal seed` of `setup` on a free port with `extra` arguments; returns it and its address.
fn shoal_seeder(setup: &Setup, extra: &[&str]) -> (ChildGuard, String, PathBuf) {
    let log = setup.path("shoal-seed.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "seed",
        s(&setup.torrent),
        s(&setup.content),
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    let child = spawn_shoal(&args, &log);
    wait_listening(port, FAST_CLIENT, "shoal", &[&log]);
    (child, listen, log)
}

/// Runs `shoal download` of `setup` with `extra` arguments until it exits, byte-exact.
fn shoal_download(setup: &Setup, extra: &[&str], limit: Duration, logs: &[&Path]) {
    let log = setup.path("shoal-download.log");
    let out = setup.out();
    let mut args = vec![
        "download",
        s(&setup.torrent),
        "-o",
        s(&out),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut shoal = spawn_shoal(&args, &log);
    let mut all = vec![log.as_path()];
    all.extend_from_slice(logs);
    wait_success(&mut shoal, limit, "shoal download", &all);
    assert_same_content(&setup.content, &out.join(setup.name()));
}

/// A checked, listening libtorrent seeder of `setup`.
fn lt_seeder(setup: &Setup, encryption: LtEncryption, upload_limit: u64) -> (ChildGuard, u16) {
    let log = setup.path("libtorrent-seed.log");
    let port = free_port();
    let child = Libtorrent {
        seed: true,
        encryption,
        upload_limit,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &setup.src(), port, &log);
    wait_until(FAST_CLIENT, "libtorrent to check its data", &[&log], || {
        libtorrent_finished(&log)
    });
    wait_listening(port, FAST_CLIENT, "libtorrent", &[&log]);
    (child, port)
}

// ---------------------------------------------------------------------------------------------
// libtorrent

/// A libtorrent seeder that accepts only RC4 → `shoal download` with default settings
/// (`prefer`): byte-exact, and libtorrent saw an RC4 peer.
#[test]
fn forced_rc4_libtorrent_seeds_to_default_shoal() {
    let setup = Setup::new("lt-rc4", 6 * MIB + 4_321, 64 * KIB, 21, None);
    // 3 MiB/s: the transfer lasts long enough for libtorrent to sample its peers.
    let (_lt, port) = lt_seeder(&setup, LtEncryption::ForcedRc4, 3 * MIB);
    let lt_log = setup.path("libtorrent-seed.log");
    let peer = format!("127.0.0.1:{port}");
    shoal_download(
        &setup,
        &["--no-trackers", "--peer", &peer],
        FAST_CLIENT,
        &[&lt_log],
    );
    let text = std::fs::read_to_string(&lt_log).unwrap();
    assert!(
        text.contains("\"rc4_seen\": 1"),
        "libtorrent never reported an RC4 peer:\n{}",
        tails(&[&lt_log])
    );
}

/// `shoal seed --encryption require`: a plaintext-only libtorrent gets nothing, an RC4-forced
/// one downloads byte-exact.
#[test]
fn shoal_requiring_encryption_serves_only_rc4_libtorrent() {
    let setup = Setup::new("lt-require", 3 * MIB + 777, 32 * KIB, 22, None);
    let (_shoal, listen, shoal_log) =
        shoal_seeder(&setup, &["--no-trackers", "--encryption", "require"]);
    let peers = [listen];

    // Plain: it dials (and redials) for 8 s and gets nothing.
    let plain_out = setup.path("plain");
    std::fs::create_dir_all(&plain_out).unwrap();
    let plain_log = setup.path("libtorrent-plain.log");
    let mut plain = Libtorrent {
        peers: &peers,
        encryption: LtEncryption::Off,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &plain_out, free_port(), &plain_log);
    std::thread::sleep(Duration::from_secs(8));
    terminate(&mut plain, Duration::from_secs(10));
    let text = std::fs::read_to_string(&plain_log).unwrap_or_default();
    assert!(
        !text.contains("\"event\": \"finished\""),
        "a plaintext libtorrent finished against --encryption require"
    );
    let got = std::fs::read(plain_out.join(setup.name())).unwrap_or_default();
    assert!(
        got.iter().all(|&b| b == 0),
        "a plaintext libtorrent got data from --encryption require"
    );

    // RC4: downloads byte-exact.
    let out = setup.out();
    let lt_log = setup.path("libtorrent-rc4.log");
    let mut lt = Libtorrent {
        peers: &peers,
        encryption: LtEncryption::ForcedRc4,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        FAST_CLIENT,
        "rc4 libtorrent download",
        &[&lt_log, &shoal_log],
    );
    assert_same_content(&setup.content, &out.join(setup.name()));
}

/// A libtorrent downloader with its default policy (MSE offered with both levels) against
/// `shoal seed` under `policy`: byte-exact, and whether libtorrent saw an RC4 peer, a peer
/// whose MSE handshake chose plaintext, or neither.
fn lt_enabled_from_shoal(name: &str, policy: &str, seed: u64) -> (u64, u64) {
    let setup = Setup::new(name, 3 * MIB + 99, 32 * KIB, seed, None);
    let (_shoal, listen, shoal_log) =
        shoal_seeder(&setup, &["--no-trackers", "--encryption", policy]);
    let peers = [listen];
    let out = setup.out();
    let lt_log = setup.path("libtorrent-enabled.log");
    let mut lt = Libtorrent {
        peers: &peers,
        encryption: LtEncryption::Enabled,
        // 3 MiB/s: the transfer lasts long enough for libtorrent to sample its peers.
        download_limit: 3 * MIB,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        FAST_CLIENT,
        "libtorrent download",
        &[&lt_log, &shoal_log],
    );
    assert_same_content(&setup.content, &out.join(setup.name()));
    let text = std::fs::read_to_string(&lt_log).unwrap();
    let seen = |key: &str| {
        let at = text
            .rfind(&format!("\"{key}\": "))
            .unwrap_or_else(|| panic!("no {key} in the libtorrent log:\n{text}"));
        text[at + key.len() + 4..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{key} is not a number in:\n{text}"))
    };
    (seen("rc4_seen"), seen("obfuscated_seen"))
}

/// `prefer` (the default) chooses RC4 when a default libtorrent offers both; `allow` chooses
/// plaintext after the MSE handshake, as libtorrent itself does.
#[test]
fn prefer_answers_a_default_libtorrent_with_rc4_and_allow_with_plaintext() {
    let (rc4, obfuscated) = lt_enabled_from_shoal("lt-prefer", "prefer", 23);
    assert!(
        rc4 >= 1 && obfuscated == 0,
        "prefer: rc4_seen {rc4}, obfuscated_seen {obfuscated}"
    );
    let (rc4, obfuscated) = lt_enabled_from_shoal("lt-allow", "allow", 24);
    assert!(
        rc4 == 0 && obfuscated >= 1,
        "allow: rc4_seen {rc4}, obfuscated_seen {obfuscated}"
    );
}

// ---------------------------------------------------------------------------------------------
// Transmission and aria2, through opentracker

/// A tracker on a port chosen before the torrent names it.
fn tracker_port() -> (u16, String) {
    let port = free_port();
    (port, format!("http://127.0.0.1:{port}/announce"))
}

#[test]
fn transmission_requiring_encryption_seeds_to_shoal() {
    let (port, url) = tracker_port();
    let setup = Setup::new("tr-seed", 4 * MIB + 99, 256 * KIB, 23, Some(&url));
    let tracker = OpenTracker::start_on(port, &[&setup.hash]);
    let tr = Transmission::start_with_encryption(setup.dir.path(), 2);
    tr.add(&setup.torrent, &setup.src());
    tr.wait_complete(TRANSMISSION, &[]);
    tracker.wait_peers(&setup.hash, 1, 0, TRANSMISSION, &[&tr.log]);
    shoal_download(&setup, &[], TRANSMISSION, &[&tr.log]);
    tr.stop();
}

#[test]
fn shoal_requiring_encryption_seeds_to_transmission() {
    let (port, url) = tracker_port();
    let setup = Setup::new("tr-down", 4 * MIB + 1_234, 256 * KIB, 24, Some(&url));
    let tracker = OpenTracker::start_on(port, &[&setup.hash]);
    // Transmission never dials loopback peers from a tracker: it announces first, and shoal
    // dials it after learning it from the tracker.
    let out = setup.out();
    let tr = Transmission::start_with_encryption(setup.dir.path(), 2);
    tr.add(&setup.torrent, &out);
    tracker.wait_peers(&setup.hash, 0, 1, TRANSMISSION, &[&tr.log]);
    let (_shoal, _, shoal_log) = shoal_seeder(&setup, &["--encryption", "require"]);
    tr.wait_complete(TRANSMISSION, &[&shoal_log]);
    tr.stop();
    assert_same_content(&setup.content, &out.join(setup.name()));
}

#[test]
fn aria2_requiring_encryption_seeds_to_shoal() {
    let (port, url) = tracker_port();
    let setup = Setup::new("aria-seed", 5 * MIB + 4_321, 64 * KIB, 25, Some(&url));
    let tracker = OpenTracker::start_on(port, &[&setup.hash]);
    let aria_log = setup.path("aria2.log");
    let aria_port = free_port();
    let _aria = spawn_aria2_with(
        &setup.torrent,
        &setup.src(),
        aria_port,
        true,
        &aria_log,
        &["--bt-require-crypto=true"],
    );
    tracker.wait_peers(&setup.hash, 1, 0, FAST_CLIENT, &[&aria_log]);
    wait_listening(aria_port, FAST_CLIENT, "aria2", &[&aria_log]);
    shoal_download(&setup, &[], FAST_CLIENT, &[&aria_log]);
}

#[test]
fn shoal_requiring_encryption_seeds_to_aria2() {
    let (port, url) = tracker_port();
    let setup = Setup::new("aria-down", 5 * MIB + 12_345, 32 * KIB, 26, Some(&url));
    let tracker = OpenTracker::start_on(port, &[&setup.hash]);
    let (_shoal, _, shoal_log) = shoal_seeder(&setup, &["--encryption", "require"]);
    tracker.wait_peers(&setup.hash, 1, 0, FAST_CLIENT, &[&shoal_log]);
    let out = setup.out();
    let aria_log = setup.path("aria2.log");
    let mut aria = spawn_aria2_with(
        &setup.torrent,
        &out,
        free_port(),
        false,
        &aria_log,
        &["--bt-require-crypto=true"],
    );
    wait_success(
        &mut aria,
        FAST_CLIENT,
        "aria2 download",
        &[&aria_log, &shoal_log],
    );
    assert_same_content(&setup.content, &out.join(setup.name()));
}

// ---------------------------------------------------------------------------------------------
// Hostile openings

/// Whether shoal closes `stream` within `limit` (end of stream or reset), reading and dropping
/// what it sends meanwhile.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Secrets for a scripted initiator.
fn secrets(seed: u8, pad: usize) -> Secrets {
    Secrets {
        private_key: [seed | 1; 20],
        pad: vec![seed; pad],
        crypto_pad_len: 0,
    }
}

/// An honest MSE initiator for `hash` up to its message 3, which it returns (not sent).
fn initiator_until_message_3(stream: &mut TcpStream, hash: InfoHash) -> Vec<u8> {
    let ia = wire::Handshake::new(hash, PeerId([7; 20])).to_bytes();
    let mut hs = Handshake::initiator(hash, Policy::PreferRc4, secrets(3, 0), &ia).unwrap();
    while let Some(out) = hs.poll_output() {
        stream.write_all(&out).unwrap();
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).expect("shoal's public key");
        assert!(n > 0, "shoal hung up before sending its public key");
        hs.handle_input(&buf[..n]).expect("shoal's public key");
        if let Some(m3) = hs.poll_output() {
            return m3;
        }
    }
}

#[test]
fn hostile_mse_openings_are_closed_and_a_flood_is_bounded() {
    let setup = Setup::new("hostile", 4 * MIB + 5, 64 * KIB, 27, None);
    let (_shoal, listen, shoal_log) = shoal_seeder(&setup, &["--no-trackers"]);
    let hash = setup.info_hash();
    let connect = || TcpStream::connect(&listen).expect("connect to shoal");

    // Garbage: no req1 hash within the padding bound.
    let mut c = connect();
    let garbage: Vec<u8> = (0..1200u32).map(|i| (i * 31 + 7) as u8).collect();
    c.write_all(&garbage).unwrap();
    assert!(closed_within(&mut c, CLOSE_LIMIT), "garbage: still open");

    // Too much padding: an honest key and message 3, with 600 bytes of PadA between them.
    let mut c = connect();
    let m3 = initiator_until_message_3(&mut c, hash);
    c.write_all(&[0u8; 600]).unwrap();
    let _ = c.write_all(&m3);
    assert!(closed_within(&mut c, CLOSE_LIMIT), "too much padding");

    // A wrong verification constant: message 3 with its encrypted VC altered.
    let mut c = connect();
    let mut m3 = initiator_until_message_3(&mut c, hash);
    m3[40] ^= 0x55;
    c.write_all(&m3).unwrap();
    assert!(closed_within(&mut c, CLOSE_LIMIT), "wrong vc");

    // An unknown SKEY: an honest handshake about a torrent the seeder does not have.
    let mut c = connect();
    let m3 = initiator_until_message_3(&mut c, InfoHash([0x42; 20]));
    c.write_all(&m3).unwrap();
    assert!(closed_within(&mut c, CLOSE_LIMIT), "unknown skey");

    // A flood: 200 openings of one public key each, held open. Beyond the bound on handshakes
    // in progress they are closed at once.
    let started = Instant::now();
    let mut flood: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut c = connect();
            let key: Vec<u8> = (0..96u32).map(|j| (j * 13 + i * 7 + 1) as u8).collect();
            let _ = c.write_all(&key);
            c
        })
        .collect();
    let mut closed = 0;
    for c in flood.iter_mut() {
        if closed_within(c, Duration::from_millis(50)) {
            closed += 1;
        }
    }
    eprintln!(
        "flood: {closed} of 200 MSE openings closed within {:?}",
        started.elapsed()
    );
    assert!(
        closed >= 150,
        "only {closed} of 200 flooding openings were closed at once"
    );

    // An honest RC4 download while the flood's connections are still held.
    let out = setup.out();
    let lt_log = setup.path("libtorrent.log");
    let peers = [listen.clone()];
    let mut lt = Libtorrent {
        peers: &peers,
        encryption: LtEncryption::ForcedRc4,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        FAST_CLIENT,
        "libtorrent download during a flood",
        &[&lt_log, &shoal_log],
    );
    drop(flood);
    assert_same_content(&setup.content, &out.join(setup.name()));
}
