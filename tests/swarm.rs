//! End-to-end swarms on loopback, built from the library: a seeder and downloaders, each with
//! its own session and port, sharing one runtime; trackers are the embedded one.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use shoal_actors::one_copy::OneCopy;
use shoal_actors::peer::ServeFilter;
use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Session, SessionSettings};
use shoal_actors::shared::TorrentEvent;
use shoal_actors::torrent::{AddTorrent, Torrent};
use shoal_actors::tracker_server::{TrackerServer, TrackerServerOptions};
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::lengths::BlockInfo;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::picker::PeerKey;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn session(rt: &Runtime) -> Session {
    // Logs (RUST_LOG) show with a failing test's output.
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

/// A folder `name` under `root` with several files whose sizes make pieces cross file
/// boundaries, one empty file and a subfolder. Returns its path.
fn make_content(root: &Path, name: &str, total: usize) -> PathBuf {
    let dir = root.join(name);
    let sizes = [
        total / 2 + 777,
        total / 3,
        0,
        total - total / 2 - 777 - total / 3,
    ];
    let names = ["a.bin", "sub/b.bin", "sub/empty", "c.bin"];
    for (i, (n, &len)) in names.iter().zip(&sizes).enumerate() {
        common::write_random_file(&dir.join(n), len, 1000 + i as u64);
    }
    dir
}

fn make_torrent(content: &Path, piece_length: u32, trackers: Vec<String>) -> Arc<Metainfo> {
    let opts = CreateOptions {
        piece_length: Some(piece_length),
        trackers: trackers.into_iter().map(|t| vec![t]).collect(),
        ..CreateOptions::default()
    };
    let bytes = create_torrent(content, &opts).expect("create torrent");
    Arc::new(Metainfo::from_bytes(&bytes).expect("parse our own torrent"))
}

/// Asserts every file of `original` is byte-identical under `copy`.
fn assert_same_tree(original: &Path, copy: &Path) {
    for entry in std::fs::read_dir(original).expect("read original") {
        let entry = entry.expect("entry");
        let a = entry.path();
        let b = copy.join(entry.file_name());
        if a.is_dir() {
            assert_same_tree(&a, &b);
        } else {
            let da = std::fs::read(&a).expect("read original file");
            let db = std::fs::read(&b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
            assert!(da == db, "{} differs from {}", b.display(), a.display());
        }
    }
}

/// Waits for every torrent to complete, failing the test after `limit`.
fn wait_all(rt: &Runtime, torrents: &[Torrent], limit: Duration) {
    let done = rt.block_on(
        async {
            for t in torrents {
                t.wait_complete().await.expect("torrent completes");
            }
            true
        }
        .or(async {
            smol::Timer::after(limit).await;
            false
        }),
    );
    if !done {
        let progress: Vec<_> = torrents.iter().map(|t| t.progress()).collect();
        panic!("swarm did not complete within {limit:?}: {progress:#?}");
    }
}

fn shutdown_all(rt: &Runtime, sessions: &[&Session]) {
    rt.block_on(async {
        for s in sessions {
            s.shutdown().await;
        }
    });
}

#[test]
fn one_seeder_five_downloaders_through_the_embedded_tracker() {
    let dir = common::tempdir();
    let content = make_content(dir.path(), "content", 40 * 1024 * 1024 + 12_345);
    let tracker = TrackerServer::bind(loopback()).expect("tracker");
    let meta = make_torrent(&content, 256 * 1024, vec![tracker.announce_url()]);
    let rt = Runtime::new(2);
    let seeder = session(&rt);
    let leechers: Vec<Session> = (0..5).map(|_| session(&rt)).collect();
    let torrents: Vec<Torrent> = rt.block_on(async {
        let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
        add.content = Some(content.clone());
        let seed = seeder.add_torrent(add).await.expect("seed");
        assert!(seed.progress().complete, "the seeder has every piece");
        let mut out = Vec::new();
        for (i, s) in leechers.iter().enumerate() {
            let t = s
                .add_torrent(AddTorrent::download(
                    meta.clone(),
                    dir.path().join(format!("dl{i}")),
                ))
                .await;
            out.push(t.expect("add download"));
        }
        out
    });
    wait_all(&rt, &torrents, Duration::from_secs(120));
    for i in 0..5 {
        assert_same_tree(&content, &dir.path().join(format!("dl{i}")).join("content"));
        assert!(
            dir.path().join(format!("dl{i}/content/sub/empty")).exists(),
            "zero-length file created"
        );
    }
    let refs: Vec<&Session> = leechers.iter().chain(std::iter::once(&seeder)).collect();
    shutdown_all(&rt, &refs);
    tracker.shutdown();
}

#[test]
fn swarm_completes_after_the_seeder_uploads_one_copy_and_leaves() {
    let dir = common::tempdir();
    let content = make_content(dir.path(), "content", 24 * 1024 * 1024);
    // A short interval so that downloaders learn of each other quickly.
    let tracker = TrackerServer::bind_with(
        loopback(),
        TrackerServerOptions {
            interval: Duration::from_secs(2),
            ..TrackerServerOptions::default()
        },
    )
    .expect("tracker");
    let meta = make_torrent(&content, 128 * 1024, vec![tracker.announce_url()]);
    let rt = Runtime::new(2);
    let seeder = session(&rt);
    let leechers: Vec<Session> = (0..4).map(|_| session(&rt)).collect();
    let one_copy = Arc::new(OneCopy::new(meta.info.lengths));
    let torrents: Vec<Torrent> = rt.block_on(async {
        // Downloaders first, so that they all know each other before the seeder appears.
        let mut out = Vec::new();
        for (i, s) in leechers.iter().enumerate() {
            let t = s
                .add_torrent(AddTorrent::download(
                    meta.clone(),
                    dir.path().join(format!("dl{i}")),
                ))
                .await;
            out.push(t.expect("add download"));
        }
        let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
        add.content = Some(content.clone());
        add.serve_filter = Some(one_copy.clone());
        add.peers = leechers.iter().map(Session::local_addr).collect();
        seeder.add_torrent(add).await.expect("seed");
        out
    });
    // The seeder leaves as soon as every piece has gone out once.
    let served = rt.block_on(
        async {
            one_copy.wait_done().await;
            true
        }
        .or(async {
            smol::Timer::after(Duration::from_secs(120)).await;
            false
        }),
    );
    assert!(served, "the seeder uploaded every piece once");
    rt.block_on(seeder.shutdown());
    let uploaded_once: u64 = meta.total_length();
    wait_all(&rt, &torrents, Duration::from_secs(120));
    for i in 0..4 {
        assert_same_tree(&content, &dir.path().join(format!("dl{i}")).join("content"));
    }
    // The downloaders got from each other everything the seeder sent only once.
    let from_peers: u64 = torrents.iter().map(|t| t.progress().uploaded).sum();
    assert!(
        from_peers >= 3 * uploaded_once - uploaded_once / 10,
        "downloaders uploaded {from_peers} bytes to each other, expected about {}",
        3 * uploaded_once
    );
    let refs: Vec<&Session> = leechers.iter().collect();
    shutdown_all(&rt, &refs);
    tracker.shutdown();
}

/// Serves only the pieces below `limit`.
#[derive(Debug)]
struct FirstPieces {
    limit: u32,
}

impl ServeFilter for FirstPieces {
    fn allow(&self, _peer: PeerKey, block: &BlockInfo) -> bool {
        block.piece < self.limit
    }
    fn served(&self, _peer: PeerKey, _block: &BlockInfo) {}
}

#[test]
fn a_restarted_download_keeps_its_verified_pieces() {
    let dir = common::tempdir();
    let content = make_content(dir.path(), "content", 12 * 1024 * 1024);
    let meta = make_torrent(&content, 64 * 1024, Vec::new());
    let n = meta.info.lengths.num_pieces();
    let rt = Runtime::new(2);
    let folder = dir.path().join("dl");

    // First run: the seeder serves only the first half, then the download stops.
    let half = n / 2;
    let seeder = session(&rt);
    let leecher = session(&rt);
    rt.block_on(async {
        let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
        add.content = Some(content.clone());
        add.serve_filter = Some(Arc::new(FirstPieces { limit: half }));
        seeder.add_torrent(add).await.expect("seed");
        let mut add = AddTorrent::download(meta.clone(), &folder);
        add.peers = vec![seeder.local_addr()];
        let t = leecher.add_torrent(add).await.expect("download");
        let deadline = Instant::now() + Duration::from_secs(60);
        while t.progress().verified_pieces < half {
            assert!(
                Instant::now() < deadline,
                "first half not downloaded: {:?}",
                t.progress()
            );
            smol::Timer::after(Duration::from_millis(50)).await;
        }
        assert_eq!(
            t.progress().verified_pieces,
            half,
            "only the first half is served"
        );
    });
    shutdown_all(&rt, &[&leecher, &seeder]);

    // Second run: the verified pieces are found on disk, the rest comes from a full seeder.
    let seeder = session(&rt);
    let leecher = session(&rt);
    let t = rt.block_on(async {
        let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
        add.content = Some(content.clone());
        seeder.add_torrent(add).await.expect("seed");
        // No peer until the check is looked at: the download would start at once.
        let add = AddTorrent::download(meta.clone(), &folder);
        let t = leecher.add_torrent(add).await.expect("download");
        let p = t.progress();
        assert_eq!(
            p.verified_pieces, half,
            "every piece verified before the restart is kept"
        );
        assert_eq!(p.downloaded, 0);
        t.add_peers(vec![seeder.local_addr()]).await;
        t
    });
    wait_all(&rt, std::slice::from_ref(&t), Duration::from_secs(60));
    let p = t.progress();
    let second_half: u64 = (half..n)
        .map(|i| u64::from(meta.info.lengths.piece_len(i)))
        .sum();
    assert!(
        p.downloaded < second_half + second_half / 4,
        "the restart fetched {} bytes, the missing part is {second_half}",
        p.downloaded
    );
    assert_same_tree(&content, &folder.join("content"));
    shutdown_all(&rt, &[&leecher, &seeder]);
}

/// A peer that has every piece, unchokes at once and answers every request with wrong bytes.
/// Counts the connections it accepts.
fn spawn_corrupt_peer(meta: Arc<Metainfo>, connections: Arc<AtomicUsize>) -> SocketAddr {
    use shoal_engine::wire::{
        decode, Decoded, Handshake, Message, DEFAULT_MAX_MESSAGE_LEN, HANDSHAKE_LEN,
    };
    use shoal_engine::PeerId;
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind corrupt peer");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            connections.fetch_add(1, Ordering::SeqCst);
            let meta = meta.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut hs = [0u8; HANDSHAKE_LEN];
                if stream.read_exact(&mut hs).is_err() {
                    return;
                }
                let ours = Handshake {
                    reserved: [0; 8],
                    info_hash: meta.info_hash,
                    peer_id: PeerId(*b"-XX0001-corruptpeer!"),
                };
                let mut out = ours.to_bytes().to_vec();
                let n = meta.info.lengths.num_pieces();
                let mut bf = shoal_engine::bitfield::Bitfield::full(n);
                bf.set(0);
                Message::Bitfield(bf.as_bytes()).encode(&mut out);
                Message::Unchoke.encode(&mut out);
                if stream.write_all(&out).is_err() {
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let mut rng = fastrand::Rng::with_seed(7);
                loop {
                    let Ok(k) = stream.read(&mut chunk) else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let mut reply = Vec::new();
                    loop {
                        match decode(&buf, DEFAULT_MAX_MESSAGE_LEN) {
                            Ok(Decoded::Message { message, consumed }) => {
                                if let Message::Request(b) = message {
                                    let mut junk = vec![0u8; b.len as usize];
                                    rng.fill(&mut junk);
                                    Message::Piece {
                                        piece: b.piece,
                                        begin: b.begin,
                                        data: &junk,
                                    }
                                    .encode(&mut reply);
                                }
                                buf.drain(..consumed);
                            }
                            Ok(Decoded::NeedMore(_)) => break,
                            Err(_) => return,
                        }
                    }
                    if stream.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_peer_sending_corrupt_blocks_is_banned_and_the_download_completes() {
    let dir = common::tempdir();
    let content = make_content(dir.path(), "content", 8 * 1024 * 1024);
    let meta = make_torrent(&content, 64 * 1024, Vec::new());
    let rt = Runtime::new(2);
    let seeder = session(&rt);
    let leecher = session(&rt);
    let connections = Arc::new(AtomicUsize::new(0));
    let corrupt = spawn_corrupt_peer(meta.clone(), connections.clone());
    let (t, events) = rt.block_on(async {
        let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
        add.content = Some(content.clone());
        seeder.add_torrent(add).await.expect("seed");
        // At first the liar is the only peer: every piece that fails is its alone.
        let mut add = AddTorrent::download(meta.clone(), dir.path().join("dl"));
        add.peers = vec![corrupt];
        let t = leecher.add_torrent(add).await.expect("download");
        let events = t.subscribe();
        let mut failed = 0;
        let banned = loop {
            let ev = async { events.recv().await.ok() }
                .or(async {
                    smol::Timer::after(Duration::from_secs(30)).await;
                    None
                })
                .await;
            match ev.expect("the liar is banned within 30 s") {
                TorrentEvent::PieceFailed { peers, .. } => {
                    assert_eq!(peers, vec![corrupt]);
                    failed += 1;
                }
                TorrentEvent::PeerBanned(addr) => break addr,
                TorrentEvent::PieceVerified(p) => panic!("piece {p} verified from corrupt data"),
                _ => {}
            }
        };
        assert_eq!(banned, corrupt);
        assert!(failed >= 2, "banned after {failed} failed pieces");
        assert_eq!(t.progress().verified_pieces, 0);
        // Now the honest seeder: the download completes from it.
        t.add_peers(vec![seeder.local_addr()]).await;
        (t, events)
    });
    wait_all(&rt, std::slice::from_ref(&t), Duration::from_secs(60));
    while let Ok(ev) = events.try_recv() {
        assert!(
            !matches!(ev, TorrentEvent::PeerBanned(_)),
            "only the liar is banned: {ev:?}"
        );
    }
    assert_same_tree(&content, &dir.path().join("dl").join("content"));
    // Once banned, never dialled again.
    let seen = connections.load(Ordering::SeqCst);
    rt.block_on(t.add_peers(vec![corrupt]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        seen,
        "a banned peer is not dialled again"
    );
    shutdown_all(&rt, &[&leecher, &seeder]);
}

/// Collects a torrent's connect and disconnect events so far: (connected, disconnected).
fn connection_events(events: &async_channel::Receiver<TorrentEvent>) -> (usize, usize) {
    let (mut up, mut down) = (0, 0);
    while let Ok(ev) = events.try_recv() {
        match ev {
            TorrentEvent::PeerConnected(_) => up += 1,
            TorrentEvent::PeerDisconnected { .. } => down += 1,
            _ => {}
        }
    }
    (up, down)
}

/// Waits until none of `torrents` has a connection, failing the test after `limit`.
fn wait_no_peers(torrents: &[&Torrent], limit: Duration, what: &str) {
    let start = Instant::now();
    while torrents.iter().any(|t| t.progress().peers > 0) {
        assert!(
            start.elapsed() < limit,
            "{what}: still connected after {limit:?}: {:?}",
            torrents
                .iter()
                .map(|t| t.progress().peers)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn seeds_part_are_not_redialled_and_still_serve_a_downloader() {
    let dir = common::tempdir();
    let content = make_content(dir.path(), "content", 4 * 1024 * 1024 + 999);
    let meta = make_torrent(&content, 64 * 1024, vec![]);
    let rt = Runtime::new(2);
    let (sa, sb, sc) = (session(&rt), session(&rt), session(&rt));
    let seed = |s: &Session, peers: Vec<SocketAddr>| {
        let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
        add.content = Some(content.clone());
        add.peers = peers;
        rt.block_on(s.add_torrent(add)).expect("seed")
    };
    // Then A is told of B (after subscribing, so no event is missed): A dials it.
    let b = seed(&sb, vec![]);
    let b_events = b.subscribe();
    let a = seed(&sa, vec![]);
    let a_events = a.subscribe();
    rt.block_on(a.add_peers(vec![sb.local_addr()]));
    // They meet (each side sees the connection), find each other complete, and part.
    let start = Instant::now();
    let (mut a_up, mut b_up) = (0, 0);
    while a_up == 0 || b_up == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the seeds never connected: {a_up} {b_up}"
        );
        std::thread::sleep(Duration::from_millis(20));
        a_up += connection_events(&a_events).0;
        b_up += connection_events(&b_events).0;
    }
    wait_no_peers(&[&a, &b], Duration::from_secs(5), "two seeds");
    let parted = start.elapsed();
    // A dialled once (B may have seen both transports of that dial before A dropped one).
    a_up += connection_events(&a_events).0;
    connection_events(&b_events);
    assert_eq!(a_up, 1, "A dialled once");
    // A keeps B's address but does not dial it again while both seed (a redial would come
    // after 2 s otherwise).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        connection_events(&a_events).0,
        0,
        "A dialled the other seed again"
    );
    assert_eq!(
        connection_events(&b_events).0,
        0,
        "B saw a second connection"
    );
    assert_eq!((a.progress().peers, b.progress().peers), (0, 0));

    // Two downloaders told of both seeds and of each other are served, then part from the
    // seeds and from each other: each finishes with pieces the other already had, so neither
    // hears the other's last HAVEs, and only their lack of interest tells.
    let sd = session(&rt);
    let download = |s: &Session, name: &str, peers: Vec<SocketAddr>| {
        let mut add = AddTorrent::download(meta.clone(), dir.path().join(name));
        add.peers = peers;
        rt.block_on(s.add_torrent(add)).expect("download")
    };
    let c = download(&sc, "dl-c", vec![sa.local_addr(), sb.local_addr()]);
    let d = download(
        &sd,
        "dl-d",
        vec![sa.local_addr(), sb.local_addr(), sc.local_addr()],
    );
    wait_all(&rt, &[c.clone(), d.clone()], Duration::from_secs(60));
    for name in ["dl-c", "dl-d"] {
        assert_same_tree(&content, &dir.path().join(name).join("content"));
    }
    assert!(
        a.progress().uploaded + b.progress().uploaded >= meta.total_length(),
        "the seeds served the downloads"
    );
    let done = Instant::now();
    wait_no_peers(
        &[&a, &b, &c, &d],
        REDUNDANT_GRACE_BOUND,
        "after the downloads",
    );
    eprintln!(
        "two seeds parted {parted:?} after they first met; every connection closed {:?} after \
         both downloads completed",
        done.elapsed()
    );
    shutdown_all(&rt, &[&sa, &sb, &sc, &sd]);
}

/// How long connections between peers that all completed may take to close: the peer's 5 s
/// grace for a lack of interest, its 1 s tick, and slack for a loaded machine.
const REDUNDANT_GRACE_BOUND: Duration = Duration::from_secs(15);
