//! The embedding API end to end on loopback: adding returns at once and shows the check,
//! adding twice is refused, pause keeps pieces and closes peers, resume goes on without a
//! recheck, and remove deletes what it should and nothing else.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use shoal_actors::error::Error;
use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Session, SessionSettings};
use shoal_actors::shared::TorrentState;
use shoal_actors::torrent::{AddTorrent, Torrent};
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::metainfo::Metainfo;

fn session(rt: &Runtime) -> Session {
    let _ = env_logger::builder().is_test(true).try_init();
    Session::with_spawner(
        SessionSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..SessionSettings::default()
        },
        rt.handle(),
    )
    .expect("listen on loopback")
}

/// A two-file folder torrent of about `total` bytes under `root/name`.
fn content(root: &Path, name: &str, total: usize) -> (PathBuf, Arc<Metainfo>) {
    let dir = root.join(name);
    common::write_random_file(&dir.join("a.bin"), total / 3, 1);
    common::write_random_file(&dir.join("sub/b.bin"), total - total / 3, 2);
    let opts = CreateOptions {
        piece_length: Some(256 * 1024),
        ..CreateOptions::default()
    };
    let bytes = create_torrent(&dir, &opts).expect("create");
    (dir, Arc::new(Metainfo::from_bytes(&bytes).expect("parse")))
}

fn seed(meta: &Arc<Metainfo>, content: &Path) -> AddTorrent {
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(content.to_path_buf());
    add
}

/// Polls `cond` every 20 ms until it holds, failing after `limit`.
fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bounded<T>(rt: &Runtime, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    rt.block_on(async { Some(fut.await) }.or(async {
        smol::Timer::after(Duration::from_secs(60)).await;
        None
    }))
    .unwrap_or_else(|| panic!("{what}: no answer within 60 s"))
}

#[test]
fn adding_returns_at_once_in_checking_and_adding_twice_is_refused() {
    let dir = common::tempdir();
    let (data, meta) = content(dir.path(), "big", 192 * 1024 * 1024);
    let rt = Runtime::new(2);
    let s = session(&rt);
    let t = s.start_torrent(seed(&meta, &data)).expect("add");
    // 192 MiB take far longer to hash than this call takes to return.
    assert_eq!(t.state(), TorrentState::Checking);
    match s.start_torrent(seed(&meta, &data)) {
        Err(Error::AlreadyPresent(h)) => assert_eq!(h, meta.info_hash),
        other => panic!("a second add must be refused, got {other:?}"),
    }
    assert_eq!(s.torrents().len(), 1, "one copy of the torrent runs");
    bounded(&rt, "check", t.wait_checked()).expect("checked");
    let p = t.progress();
    assert_eq!(p.checked_pieces, p.total_pieces);
    assert!(p.complete);
    assert_eq!(t.state(), TorrentState::Seeding);
    // Still refused once it runs.
    assert!(matches!(
        bounded(&rt, "add again", s.add_torrent(seed(&meta, &data))),
        Err(Error::AlreadyPresent(_))
    ));
    bounded(&rt, "shutdown", s.shutdown());
}

#[test]
fn pause_resume_and_remove() {
    let dir = common::tempdir();
    let (data, meta) = content(dir.path(), "c", 24 * 1024 * 1024);
    let rt = Runtime::new(2);
    let seeder = session(&rt);
    let leecher = session(&rt);
    let seeding = bounded(&rt, "seed", seeder.add_torrent(seed(&meta, &data))).expect("seed");

    // Added paused: checked, then nothing moves, and the seeder is not dialled.
    let out = dir.path().join("out");
    let mut add = AddTorrent::download(meta.clone(), &out);
    add.peers = vec![seeder.local_addr()];
    add.paused = true;
    let t: Torrent = bounded(&rt, "add", leecher.add_torrent(add)).expect("add");
    assert_eq!(t.state(), TorrentState::Paused);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        t.progress().verified_pieces,
        0,
        "a paused torrent fetches nothing"
    );
    assert_eq!(seeding.progress().peers, 0, "a paused torrent dials nobody");

    // Resumed: it dials the seeder it was given and completes.
    bounded(&rt, "resume", t.resume()).expect("resume");
    assert_eq!(t.state(), TorrentState::Downloading);
    bounded(&rt, "complete", t.wait_complete()).expect("complete");
    eventually("seeding state", Duration::from_secs(5), || {
        t.state() == TorrentState::Seeding
    });
    for f in ["c/a.bin", "c/sub/b.bin"] {
        let a = std::fs::read(dir.path().join(f)).expect("original");
        let b = std::fs::read(out.join(f)).expect("copy");
        assert!(a == b, "{f} differs");
    }

    // Paused while seeding: the connection closes on both sides, every piece is kept.
    bounded(&rt, "pause", t.pause()).expect("pause");
    assert_eq!(t.state(), TorrentState::Paused);
    eventually("peers gone", Duration::from_secs(10), || {
        t.progress().peers == 0 && seeding.progress().peers == 0
    });
    assert!(t.progress().complete, "pausing keeps every piece");
    bounded(&rt, "resume", t.resume()).expect("resume");
    assert_eq!(
        t.state(),
        TorrentState::Seeding,
        "resuming does not recheck"
    );

    // Removing without deleting keeps the files; removing an unknown torrent is an error.
    let h = meta.info_hash;
    bounded(&rt, "remove", leecher.remove_torrent(&h, false)).expect("remove");
    assert!(out.join("c/a.bin").exists(), "files are kept");
    assert!(leecher.torrent(&h).is_none());
    assert!(matches!(
        bounded(&rt, "remove again", leecher.remove_torrent(&h, false)),
        Err(Error::UnknownTorrent(_))
    ));
    assert!(matches!(
        bounded(&rt, "pause a removed torrent", t.pause()),
        Err(Error::Stopped)
    ));

    // Added again and removed with its files: the torrent's folder goes, the user's stays.
    std::fs::write(out.join("mine.txt"), b"the user's own file").expect("write");
    let t2 = bounded(
        &rt,
        "re-add",
        leecher.add_torrent(AddTorrent::download(meta.clone(), &out)),
    )
    .expect("re-add");
    assert!(t2.progress().complete, "the data on disk checks");
    bounded(&rt, "remove with files", leecher.remove_torrent(&h, true)).expect("remove");
    assert!(!out.join("c").exists(), "the torrent's folder is deleted");
    assert!(out.join("mine.txt").exists(), "nothing else is touched");

    bounded(&rt, "shutdown", async {
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
}

/// Three files whose pieces cross their boundaries: `a` (1.5 pieces), `b` (3 pieces), `c`.
fn three_files(root: &Path) -> (PathBuf, Arc<Metainfo>, Vec<u8>) {
    let dir = root.join("three");
    let piece = 256 * 1024u64;
    let sizes = vec![piece + piece / 2, 3 * piece, 2 * piece + 12_345];
    for (i, (name, len)) in ["a.bin", "b.bin", "c.bin"].iter().zip(&sizes).enumerate() {
        common::write_random_file(&dir.join(name), *len as usize, 40 + i as u64);
    }
    let opts = CreateOptions {
        piece_length: Some(piece as u32),
        ..CreateOptions::default()
    };
    let bytes = create_torrent(&dir, &opts).expect("create");
    let meta = Arc::new(Metainfo::from_bytes(&bytes).expect("parse"));
    (dir, meta, bytes)
}

#[test]
fn only_the_selected_files_are_fetched_and_a_file_wanted_later_is_completed() {
    let dir = common::tempdir();
    let (data, meta, _) = three_files(dir.path());
    let rt = Runtime::new(2);
    let seeder = session(&rt);
    let leecher = session(&rt);
    bounded(&rt, "seed", seeder.add_torrent(seed(&meta, &data))).expect("seed");
    let out = dir.path().join("out");
    let mut add = AddTorrent::download(meta.clone(), &out);
    add.wanted = Some(vec![false, true, false]);
    add.peers = vec![seeder.local_addr()];
    let t = bounded(&rt, "add", leecher.add_torrent(add)).expect("add");
    bounded(&rt, "the selected file", t.wait_complete()).expect("complete");
    let b = std::fs::read(out.join("three/b.bin")).expect("b.bin");
    assert!(
        b == std::fs::read(data.join("b.bin")).unwrap(),
        "b.bin is byte-exact"
    );
    for skipped in ["a.bin", "c.bin"] {
        assert!(
            !out.join("three").join(skipped).exists(),
            "{skipped} must not exist"
        );
    }
    let p = t.progress();
    assert_eq!(p.left, 0);
    // b's pieces: it starts half-way into piece 1 and ends half-way into piece 4.
    assert_eq!(
        p.verified_pieces, 4,
        "only the pieces that touch b.bin: {p:?}"
    );
    eventually("seeding state", Duration::from_secs(5), || {
        t.state() == TorrentState::Seeding
    });

    // Wanted after all: created from the part file's bytes plus the missing pieces.
    bounded(&rt, "want all", t.set_wanted_files(vec![true; 3])).expect("set wanted");
    eventually("all pieces", Duration::from_secs(60), || {
        t.progress().verified_pieces == p.total_pieces
    });
    bounded(&rt, "complete", t.wait_complete()).expect("complete");
    for f in ["a.bin", "b.bin", "c.bin"] {
        let want = std::fs::read(data.join(f)).unwrap();
        let got = std::fs::read(out.join("three").join(f)).expect(f);
        assert!(want == got, "{f} differs after it became wanted");
    }
    bounded(&rt, "wrong count", t.set_wanted_files(vec![true]))
        .expect_err("one flag for three files");
    bounded(&rt, "shutdown", async {
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
}

#[test]
fn a_libtorrent_peer_gets_the_pieces_a_partial_download_holds() {
    use common::clients::{free_port, wait_until, Libtorrent};
    common::require_libtorrent();
    let dir = common::tempdir();
    let (data, meta, bytes) = three_files(dir.path());
    let torrent_file = dir.path().join("three.torrent");
    std::fs::write(&torrent_file, bytes).expect("write torrent");
    let rt = Runtime::new(2);
    let seeder = session(&rt);
    let partial = session(&rt);
    bounded(&rt, "seed", seeder.add_torrent(seed(&meta, &data))).expect("seed");
    let out = dir.path().join("partial");
    let mut add = AddTorrent::download(meta.clone(), &out);
    add.wanted = Some(vec![false, true, false]);
    add.peers = vec![seeder.local_addr()];
    let t = bounded(&rt, "add", partial.add_torrent(add)).expect("add");
    bounded(&rt, "partial", t.wait_complete()).expect("complete");
    // The full seeder leaves: the partial download is the only source.
    bounded(&rt, "seeder leaves", seeder.shutdown());
    let have = t.progress().verified_pieces;
    let lt_dir = dir.path().join("lt");
    let log = dir.path().join("lt.log");
    let peer = [partial.local_addr().to_string()];
    let mut lt = Libtorrent {
        peers: &peer,
        trackers: false,
        ..Libtorrent::default()
    }
    .spawn(&torrent_file, &lt_dir, free_port(), &log);
    let want = format!("\"pieces\": {have},");
    wait_until(
        Duration::from_secs(60),
        "libtorrent holds our pieces",
        &[&log],
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&want)),
    );
    let _ = lt.child().kill();
    bounded(&rt, "shutdown", partial.shutdown());
}

/// Bytes downloaded by `t` over `secs` seconds, after a second to settle.
fn measure(t: &Torrent, secs: u64) -> f64 {
    std::thread::sleep(Duration::from_secs(1));
    let start = (Instant::now(), t.progress().downloaded);
    std::thread::sleep(Duration::from_secs(secs));
    let end = (Instant::now(), t.progress().downloaded);
    (end.1 - start.1) as f64 / (end.0 - start.0).as_secs_f64()
}

#[test]
fn rate_limits_hold_within_a_tenth_over_ten_seconds_and_change_live() {
    let dir = common::tempdir();
    let (data, meta) = content(dir.path(), "slow", 64 * 1024 * 1024);
    let rt = Runtime::new(2);
    let seeder = session(&rt);
    let leecher = session(&rt);
    bounded(&rt, "seed", seeder.add_torrent(seed(&meta, &data))).expect("seed");
    // The seeding session's upload limit.
    seeder.set_limits(0, 1_000_000);
    let mut add = AddTorrent::download(meta.clone(), dir.path().join("out"));
    add.peers = vec![seeder.local_addr()];
    let t = bounded(&rt, "add", leecher.add_torrent(add)).expect("add");
    let rate = measure(&t, 10);
    eprintln!("measured {rate:.0} B/s");
    assert!(
        (900_000.0..=1_100_000.0).contains(&rate),
        "session upload limit 1,000,000 B/s: measured {rate:.0}"
    );
    // The downloading torrent's own limit, lower, set while it runs.
    t.set_limits(400_000, 0);
    assert_eq!(t.limits(), (400_000, 0));
    let rate = measure(&t, 10);
    eprintln!("measured {rate:.0} B/s");
    assert!(
        (360_000.0..=440_000.0).contains(&rate),
        "torrent download limit 400,000 B/s: measured {rate:.0}"
    );
    // Lifted: it goes much faster.
    t.set_limits(0, 0);
    seeder.set_limits(0, 0);
    bounded(&rt, "complete", t.wait_complete()).expect("complete");
    bounded(&rt, "shutdown", async {
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
}
