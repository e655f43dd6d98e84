//! `shoal server` across restarts, and its watch folder: the binary end to end.

mod common;

use std::time::{Duration, Instant};

use common::server::{make_torrent, ServerProc};
use serde_json::json;

#[test]
fn a_restart_brings_every_torrent_back_in_its_state_without_a_recheck() {
    let tmp = common::tempdir();
    let dl = tmp.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let state = tmp.path().join("state");
    let mut torrents = Vec::new();
    for (i, name) in ["one.bin", "two.bin", "three.bin"].iter().enumerate() {
        let t = make_torrent(tmp.path(), name, 300_000 + i * 1000, i as u64, 16);
        // The data is already in the download folder: the first start checks it.
        std::fs::copy(tmp.path().join(name), dl.join(name)).unwrap();
        torrents.push(t);
    }

    let server = ServerProc::start(&dl, &state, &[]);
    let hashes: Vec<String> = torrents.iter().map(|t| server.add(t, "")).collect();
    for h in &hashes {
        server.wait_for(h, "state", json!("seeding"), Duration::from_secs(60));
        assert_eq!(
            server.get_json(&format!("/api/v1/torrents/{h}"))["resumed"],
            false
        );
    }
    let r = server.req(
        "POST",
        &format!("/api/v1/torrents/{}/pause", hashes[1]),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = server.req(
        "PATCH",
        &format!("/api/v1/torrents/{}", hashes[2]),
        &[("Content-Type", "application/json")],
        br#"{"upload_limit": 12345}"#,
    );
    assert_eq!(r.status, 200);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");

    let server = ServerProc::start(&dl, &state, &[]);
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("3 torrent(s) restored"), "{log}");
    let list = server.get_json("/api/v1/torrents");
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    for (i, h) in hashes.iter().enumerate() {
        let want = if i == 1 { "paused" } else { "seeding" };
        server.wait_for(h, "state", json!(want), Duration::from_secs(30));
        let t = server.get_json(&format!("/api/v1/torrents/{h}"));
        assert_eq!(t["progress"], 1.0);
        assert_eq!(
            t["resumed"], true,
            "no recheck: the resume record was trusted: {t}"
        );
    }
    let t = server.get_json(&format!("/api/v1/torrents/{}", hashes[2]));
    assert_eq!(t["upload_limit"], 12345);
    // A second server on the same state folder is refused.
    let second = common::shoal(&[
        "server",
        "--dir",
        dl.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another shoal server"));
    assert!(server.terminate().success());
}

#[test]
fn the_watch_folder_adds_what_is_dropped_there() {
    let tmp = common::tempdir();
    let dl = tmp.path().join("dl");
    let watch = tmp.path().join("watch");
    std::fs::create_dir_all(&dl).unwrap();
    std::fs::create_dir_all(&watch).unwrap();
    let torrent = make_torrent(tmp.path(), "w.bin", 200_000, 5, 16);
    std::fs::copy(tmp.path().join("w.bin"), dl.join("w.bin")).unwrap();
    let server = ServerProc::start(
        &dl,
        &tmp.path().join("state"),
        &["--watch", watch.to_str().unwrap()],
    );
    // Half a file first, as a slow copy leaves it; then the rest.
    let bytes = std::fs::read(&torrent).unwrap();
    let dropped = watch.join("w.torrent");
    std::fs::write(&dropped, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(dropped.exists(), "a half-written file is left alone");
    assert_eq!(server.get_json("/api/v1/torrents"), json!([]));
    std::fs::write(&dropped, &bytes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !watch.join("w.torrent.added").exists() {
        assert!(
            Instant::now() < deadline,
            "the dropped torrent was not added"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = server.get_json("/api/v1/torrents");
    assert_eq!(list[0]["name"], "w.bin");
    let h = list[0]["info_hash"].as_str().unwrap().to_string();
    server.wait_for(&h, "state", json!("seeding"), Duration::from_secs(30));

    // Not a torrent: renamed .invalid once it stopped changing for a while; nothing added.
    std::fs::write(watch.join("junk.torrent"), b"this is not bencode").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !watch.join("junk.torrent.invalid").exists() {
        assert!(Instant::now() < deadline, "the junk was not set aside");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        server
            .get_json("/api/v1/torrents")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(server.terminate().success());
}
