//! Super-seeding (BEP 16) end to end on loopback: a shoal super-seeder serving shoal
//! downloaders (against a normal seeder in the same scenario) and libtorrent downloaders, and
//! a raw TCP peer that checks what a super-seeder tells it, byte by byte.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::{assert_same_content, free_port, tails, wait_success, Libtorrent};
use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Session, SessionSettings};
use shoal_actors::shared::TorrentEvent;
use shoal_actors::torrent::{AddTorrent, Torrent};
use shoal_actors::tracker_server::{TrackerServer, TrackerServerOptions};
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::lengths::BlockInfo;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::wire::{decode, Decoded, Handshake, Message, HANDSHAKE_LEN};
use shoal_engine::PeerId;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn session(rt: &Runtime) -> Session {
    let _ = env_logger::builder().is_test(true).try_init();
    Session::with_spawner(
        SessionSettings {
            listen: loopback(),
            ..SessionSettings::default()
        },
        rt.handle(),
    )
    .expect("listen on loopback")
}

/// One random file of `len` bytes, in `dir`, as a torrent of `piece` byte pieces announcing
/// to `tracker` (if any), written beside it as `t.torrent`.
fn make(dir: &Path, len: usize, piece: u32, tracker: Option<String>) -> (PathBuf, Arc<Metainfo>) {
    let content = dir.join("data.bin");
    common::write_random_file(&content, len, 16);
    let opts = CreateOptions {
        piece_length: Some(piece),
        trackers: tracker.into_iter().map(|t| vec![t]).collect(),
        ..CreateOptions::default()
    };
    let bytes = create_torrent(&content, &opts).expect("create torrent");
    std::fs::write(dir.join("t.torrent"), &bytes).expect("write torrent");
    (
        content,
        Arc::new(Metainfo::from_bytes(&bytes).expect("parse")),
    )
}

/// A tracker that tells its clients to come back soon, so peers find each other quickly.
fn tracker() -> TrackerServer {
    TrackerServer::bind_with(
        loopback(),
        TrackerServerOptions {
            interval: Duration::from_secs(2),
            ..TrackerServerOptions::default()
        },
    )
    .expect("tracker")
}

/// What a swarm run measured.
#[derive(Debug)]
struct Run {
    /// Bytes the seeder uploaded before the downloaders between them held every piece.
    before_full_copy: u64,
    /// Bytes the seeder uploaded until every downloader completed.
    total: u64,
    /// Seconds until every downloader completed.
    seconds: f64,
}

/// One seeder (super-seeding or not) and `n` shoal downloaders through the embedded tracker;
/// every download is checked byte for byte.
fn swarm(super_seed: bool, n: usize) -> Run {
    let dir = common::tempdir();
    let tracker = tracker();
    let (content, meta) = make(
        dir.path(),
        8 * 1024 * 1024 + 4321,
        64 * 1024,
        Some(tracker.announce_url()),
    );
    let pieces = meta.info.lengths.num_pieces() as usize;
    let rt = Runtime::new(2);
    let seeder_session = session(&rt);
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(content.clone());
    add.settings.super_seed = super_seed;
    let seeder = rt.block_on(seeder_session.add_torrent(add)).expect("seed");
    assert_eq!(seeder.is_super_seeding(), super_seed);
    let sessions: Vec<Session> = (0..n).map(|_| session(&rt)).collect();
    let started = Instant::now();
    let mut downloads: Vec<(Torrent, _)> = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let t = rt
            .block_on(s.add_torrent(AddTorrent::download(
                meta.clone(),
                dir.path().join(format!("dl{i}")),
            )))
            .expect("add download");
        let events = t.subscribe();
        downloads.push((t, events));
    }
    let mut union = vec![false; pieces];
    let mut covered = 0;
    let mut full_copy = None;
    let limit = Duration::from_secs(120);
    loop {
        for (_, events) in &downloads {
            while let Ok(ev) = events.try_recv() {
                if let TorrentEvent::PieceVerified(i) = ev {
                    if let Some(u) = union.get_mut(i as usize) {
                        if !*u {
                            *u = true;
                            covered += 1;
                        }
                    }
                }
            }
        }
        if covered == pieces && full_copy.is_none() {
            full_copy = Some(seeder.progress().uploaded);
        }
        if downloads.iter().all(|(t, _)| t.progress().complete) {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "swarm (super-seeding {super_seed}) did not complete within {limit:?}: {:#?}",
            downloads
                .iter()
                .map(|(t, _)| t.progress())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    let before_full_copy = full_copy.unwrap_or(seeder.progress().uploaded);
    let total = seeder.progress().uploaded;
    for i in 0..n {
        assert_same_content(&content, &dir.path().join(format!("dl{i}/data.bin")));
    }
    rt.block_on(async {
        for s in &sessions {
            s.shutdown().await;
        }
        seeder_session.shutdown().await;
    });
    tracker.shutdown();
    Run {
        before_full_copy,
        total,
        seconds,
    }
}

#[test]
fn a_super_seeder_gives_a_swarm_its_first_copy_for_less_than_a_normal_seeder() {
    let n = 6;
    let size = (8 * 1024 * 1024 + 4321) as f64;
    let normal = swarm(false, n);
    let sup = swarm(true, n);
    eprintln!(
        "normal seeder: {:.2} copies before the swarm held one, {:.2} in all, {:.1} s; \
         super-seeder: {:.2} copies before, {:.2} in all, {:.1} s",
        normal.before_full_copy as f64 / size,
        normal.total as f64 / size,
        normal.seconds,
        sup.before_full_copy as f64 / size,
        sup.total as f64 / size,
        sup.seconds
    );
    assert!(
        (sup.before_full_copy as f64) < 1.5 * size,
        "super-seeder uploaded {:.2} copies before the swarm held one",
        sup.before_full_copy as f64 / size
    );
    assert!(
        sup.before_full_copy < normal.before_full_copy,
        "super-seeding uploaded {} bytes before the full copy, normal seeding {}",
        sup.before_full_copy,
        normal.before_full_copy
    );
    assert!(
        sup.total < normal.total,
        "super-seeding uploaded {} bytes in all, normal seeding {}",
        sup.total,
        normal.total
    );
}

/// A raw peer: sends its handshake (fast extension on) and reads messages.
struct RawPeer {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl RawPeer {
    fn connect(addr: SocketAddr, meta: &Metainfo) -> Self {
        let mut sock = TcpStream::connect(addr).expect("connect");
        let mut hs = Handshake::new(meta.info_hash, PeerId::generate());
        hs.reserved[7] |= 0x04;
        sock.write_all(&hs.to_bytes()).expect("handshake");
        let mut theirs = [0u8; HANDSHAKE_LEN];
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.read_exact(&mut theirs).expect("their handshake");
        Self {
            sock,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, m: Message<'_>) {
        let mut out = Vec::new();
        m.encode(&mut out);
        self.sock.write_all(&out).expect("send");
    }

    /// Every message within `wait`, as (id, piece index for HAVE/REJECT/PIECE).
    fn read_for(&mut self, wait: Duration) -> Vec<(Option<u8>, Option<u32>)> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            loop {
                match decode(&self.buf, 1 << 20) {
                    Ok(Decoded::Message { message, consumed }) => {
                        let piece = match message {
                            Message::Have(p) => Some(p),
                            Message::Reject(b) => Some(b.piece),
                            Message::Piece { piece, .. } => Some(piece),
                            _ => None,
                        };
                        got.push((message.id(), piece));
                        self.buf.drain(..consumed);
                    }
                    Ok(Decoded::NeedMore(_)) => break,
                    Err(e) => panic!("bad message from the seeder: {e}"),
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return got,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(_) => {}
            }
        }
    }
}

const HAVE: Option<u8> = Some(4);
const BITFIELD: Option<u8> = Some(5);
const PIECE: Option<u8> = Some(7);
const HAVE_ALL: Option<u8> = Some(14);
const HAVE_NONE: Option<u8> = Some(15);
const REJECT: Option<u8> = Some(16);

#[test]
fn a_super_seeder_tells_a_peer_only_what_it_offers_and_serves_only_that() {
    let dir = common::tempdir();
    let (content, meta) = make(dir.path(), 1024 * 1024, 32 * 1024, None);
    let pieces = meta.info.lengths.num_pieces();
    let rt = Runtime::new(2);
    let s = session(&rt);
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(content);
    add.settings.super_seed = true;
    add.settings.use_trackers = false;
    let seeder = rt.block_on(s.add_torrent(add)).expect("seed");
    let mut a = RawPeer::connect(s.local_addr(), &meta);
    a.send(Message::HaveNone);
    a.send(Message::Interested);
    let first = a.read_for(Duration::from_secs(3));
    let ids: Vec<_> = first.iter().map(|m| m.0).collect();
    assert_eq!(ids.first(), Some(&HAVE_NONE), "HAVE NONE first: {ids:?}");
    assert!(
        !ids.contains(&BITFIELD) && !ids.contains(&HAVE_ALL),
        "no bitfield: {ids:?}"
    );
    let offered: Vec<u32> = first
        .iter()
        .filter(|m| m.0 == HAVE)
        .filter_map(|m| m.1)
        .collect();
    assert_eq!(offered.len(), 1, "one piece offered: {ids:?}");
    let p = offered[0];
    // A request for another piece is rejected, one for the offered piece served.
    let other = (p + 1) % pieces;
    a.send(Message::Request(BlockInfo {
        piece: other,
        begin: 0,
        len: 16384,
    }));
    a.send(Message::Request(BlockInfo {
        piece: p,
        begin: 0,
        len: 16384,
    }));
    let answers = a.read_for(Duration::from_secs(3));
    assert!(
        answers.contains(&(REJECT, Some(other))),
        "rejected: {answers:?}"
    );
    assert!(answers.contains(&(PIECE, Some(p))), "served: {answers:?}");
    assert!(
        answers.iter().all(|m| m.0 != HAVE),
        "no second offer before the first spread: {answers:?}"
    );
    // A second peer is offered another piece.
    let mut b = RawPeer::connect(s.local_addr(), &meta);
    b.send(Message::HaveNone);
    let got_b = b.read_for(Duration::from_secs(2));
    let offered_b: Vec<u32> = got_b
        .iter()
        .filter(|m| m.0 == HAVE)
        .filter_map(|m| m.1)
        .collect();
    assert_eq!(offered_b.len(), 1, "{got_b:?}");
    assert_ne!(offered_b[0], p, "a different piece for the second peer");
    // A announces its piece: its next offer follows (`superseed::AHEAD` completed offers may
    // wait to be seen spreading), one at a time.
    a.send(Message::Have(p));
    let next: Vec<u32> = a
        .read_for(Duration::from_secs(2))
        .iter()
        .filter(|m| m.0 == HAVE)
        .filter_map(|m| m.1)
        .collect();
    assert_eq!(next.len(), 1, "next offer on its own HAVE");
    assert!(next[0] != p && next[0] != offered_b[0]);
    // B announces A's piece (it spread): nothing more for A, whose next is not completed.
    b.send(Message::Have(p));
    assert!(
        a.read_for(Duration::from_millis(500))
            .iter()
            .all(|m| m.0 != HAVE),
        "one offer not completed at a time"
    );
    // Turned off: every piece is told (but the one A has).
    assert!(seeder.is_super_seeding());
    rt.block_on(seeder.set_super_seed(false)).unwrap();
    let rest = a.read_for(Duration::from_secs(2));
    let haves = rest.iter().filter(|m| m.0 == HAVE).count();
    assert_eq!(haves as u32, pieces - 2, "the rest revealed: {rest:?}");
    assert!(!seeder.is_super_seeding());
    drop((a, b));
    rt.block_on(s.shutdown());
}

#[test]
fn a_shoal_super_seeder_serves_libtorrent_downloaders() {
    let dir = common::tempdir();
    let tracker = tracker();
    let (content, meta) = make(
        dir.path(),
        6 * 1024 * 1024 + 99,
        64 * 1024,
        Some(tracker.announce_url()),
    );
    let rt = Runtime::new(2);
    let s = session(&rt);
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(content.clone());
    add.settings.super_seed = true;
    let seeder = rt.block_on(s.add_torrent(add)).expect("seed");
    let seeder_addr = s.local_addr().to_string();
    let peers = [seeder_addr];
    let torrent = dir.path().join("t.torrent");
    let n = 3;
    let mut lts = Vec::new();
    let mut logs = Vec::new();
    for i in 0..n {
        let out = dir.path().join(format!("lt{i}"));
        std::fs::create_dir_all(&out).unwrap();
        let log = dir.path().join(format!("lt{i}.log"));
        let child = Libtorrent {
            peers: &peers,
            trackers: true,
            ..Libtorrent::default()
        }
        .spawn(&torrent, &out, free_port(), &log);
        lts.push((child, out));
        logs.push(log);
    }
    let log_refs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    for (child, out) in &mut lts {
        wait_success(
            child,
            Duration::from_secs(120),
            "libtorrent download",
            &log_refs,
        );
        assert_same_content(&content, &out.join("data.bin"));
    }
    let copies = seeder.progress().uploaded as f64 / meta.total_length() as f64;
    eprintln!("super-seeder uploaded {copies:.2} copies to {n} libtorrent downloaders");
    assert!(
        copies < 1.5,
        "uploaded {copies:.2} copies to {n} downloaders\n{}",
        tails(&log_refs)
    );
    rt.block_on(s.shutdown());
    tracker.shutdown();
}
