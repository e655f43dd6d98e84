//! uTP end to end, on 127.0.0.1: the `shoal` binary against a libtorrent (python3-libtorrent
//! 2.0.8) that speaks uTP only (TCP off both ways), in both directions, byte-exact, with
//! libtorrent reporting the connection as uTP. shoal dials TCP and uTP at once and keeps the
//! first to connect, so a uTP-only peer must be reached within 5 s of the dial.
//!
//! Run with `cargo test --release --test utp_actors`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;

/// Bound for a transfer.
const LIMIT: Duration = Duration::from_secs(90);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Content and a torrent of it in a temporary folder.
fn setup(name: &str, total: u64, seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempdir();
    let content = make_content(&dir.path().join("src"), name, Shape::Single, total, seed);
    let torrent = dir.path().join(format!("{name}.torrent"));
    create_torrent(&content, &torrent, &(64 * KIB).to_string(), None);
    (dir, content, torrent)
}

/// Waits for libtorrent's log to show a uTP peer.
fn assert_utp_seen(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        text.contains("\"utp_seen\": 1"),
        "libtorrent never reported a uTP peer:\n{}",
        tails(&[log])
    );
}

#[test]
fn utp_only_libtorrent_seeds_to_shoal() {
    let (dir, content, torrent) = setup("utp-seed", 8 * MIB + 1_234, 31);
    let lt_log = dir.path().join("libtorrent.log");
    let port = free_port();
    // 4 MiB/s: the transfer lasts long enough for libtorrent to sample its peers.
    let _lt = Libtorrent {
        seed: true,
        utp_only: true,
        upload_limit: 4 * MIB,
        ..Libtorrent::default()
    }
    .spawn(&torrent, &dir.path().join("src"), port, &lt_log);
    wait_until(LIMIT, "libtorrent to check its data", &[&lt_log], || {
        libtorrent_finished(&lt_log)
    });
    // No TCP listener to wait for: give its UDP socket a moment.
    std::thread::sleep(Duration::from_millis(500));
    let out = dir.path().join("out");
    let log = dir.path().join("shoal.log");
    let peer = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut shoal = spawn_shoal(
        &[
            "download",
            s(&torrent),
            "-o",
            s(&out),
            "--listen",
            "127.0.0.1:0",
            "--no-trackers",
            "--peer",
            &peer,
        ],
        &log,
    );
    wait_success(
        &mut shoal,
        LIMIT,
        "shoal download over utp",
        &[&log, &lt_log],
    );
    eprintln!(
        "utp: libtorrent -> shoal, 8 MiB at a 4 MiB/s cap in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_same_content(&content, &out.join("utp-seed"));
    assert_utp_seen(&lt_log);
}

#[test]
fn shoal_seeds_to_utp_only_libtorrent() {
    let (dir, content, torrent) = setup("utp-down", 8 * MIB + 4_321, 32);
    let shoal_log = dir.path().join("shoal.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _shoal = spawn_shoal(
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
    wait_listening(port, LIMIT, "shoal", &[&shoal_log]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lt_log = dir.path().join("libtorrent.log");
    let peers = [listen];
    let started = Instant::now();
    let mut lt = Libtorrent {
        peers: &peers,
        utp_only: true,
        ..Libtorrent::default()
    }
    .spawn(&torrent, &out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        LIMIT,
        "utp-only libtorrent download",
        &[&lt_log, &shoal_log],
    );
    eprintln!(
        "utp: shoal -> libtorrent, 8 MiB in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_same_content(&content, &out.join("utp-down"));
    assert_utp_seen(&lt_log);
}

/// A SYN flood (3,000 SYNs, each a new connection id, from several sockets) and data, STATE
/// and FIN packets on connection ids shoal never gave out, against a running seeder; then a
/// uTP-only libtorrent downloads byte-exact, and shoal is still alive and answering.
#[test]
fn syn_flood_and_stray_packets_leave_an_honest_utp_transfer_alone() {
    use shoal_engine::utp::{Packet, PacketType};
    use std::net::UdpSocket;

    let (dir, content, torrent) = setup("utp-hostile", 6 * MIB + 99, 33);
    let shoal_log = dir.path().join("shoal.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _shoal = spawn_shoal(
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
    wait_listening(port, LIMIT, "shoal", &[&shoal_log]);

    let mut buf = [0u8; 64];
    let mut send = |sock: &UdpSocket, ty: PacketType, id: u16, seq: u16| {
        let mut p = Packet::new(ty, id);
        p.seq_nr = seq;
        p.wnd_size = 1 << 20;
        let n = p.encode(&mut buf).expect("encode");
        let _ = sock.send_to(&buf[..n], &listen);
    };
    let flooders: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for (i, sock) in flooders.iter().enumerate() {
        for j in 0..750u16 {
            send(
                sock,
                PacketType::Syn,
                j.wrapping_mul(7).wrapping_add(i as u16),
                j,
            );
        }
        // Packets on ids never given out.
        for j in 0..500u16 {
            let ty = [PacketType::Data, PacketType::State, PacketType::Fin][usize::from(j % 3)];
            send(sock, ty, 40_000 + j, j);
        }
    }
    // The replies (STATEs, RESETs) are bounded: count what came back within a second.
    let mut replies = 0usize;
    for sock in &flooders {
        sock.set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        let mut r = [0u8; 2048];
        while sock.recv_from(&mut r).is_ok() {
            replies += 1;
        }
    }
    eprintln!("utp flood: 5,000 datagrams sent, {replies} replies");
    assert!(replies <= 5_000, "more replies than datagrams");

    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lt_log = dir.path().join("libtorrent.log");
    let peers = [listen.clone()];
    let mut lt = Libtorrent {
        peers: &peers,
        utp_only: true,
        ..Libtorrent::default()
    }
    .spawn(&torrent, &out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        LIMIT,
        "utp-only libtorrent download after a flood",
        &[&lt_log, &shoal_log],
    );
    assert_same_content(&content, &out.join("utp-hostile"));
    assert!(is_listening(port), "shoal died");
}
