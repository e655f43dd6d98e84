//! Streaming a file of a torrent still being downloaded through `shoal server`, with `Range`.

mod common;

use std::time::Duration;

use common::server::{make_torrent, request, start_seeder, ServerProc};

#[test]
fn ranges_at_the_start_middle_and_end_come_back_byte_exact_once_their_pieces_arrive() {
    let tmp = common::tempdir();
    let torrent = make_torrent(tmp.path(), "video.mp4", 4_000_000, 77, 64);
    let data = std::fs::read(tmp.path().join("video.mp4")).unwrap();
    let server = ServerProc::start(&tmp.path().join("dl"), &tmp.path().join("state"), &[]);
    let hash = server.add(&torrent, "");
    let file = format!("/api/v1/torrents/{hash}/files/0");

    // No peer yet: a read of the end waits for its piece.
    let http = server.http.clone();
    let path = file.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(request(
            &http,
            "GET",
            &path,
            &[("Range", "bytes=-1000")],
            b"",
        ));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "answered before any piece arrived"
    );

    // The seeder dials the server.
    let listen = server.get_json("/api/v1/session")["listen"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (_seeder, _) = start_seeder(
        &torrent,
        &tmp.path().join("video.mp4"),
        &["--peer", &listen],
    );

    let end = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the end arrives");
    assert_eq!(end.status, 206);
    assert_eq!(
        end.header("content-range"),
        Some("bytes 3999000-3999999/4000000")
    );
    assert_eq!(end.header("accept-ranges"), Some("bytes"));
    assert_eq!(end.header("content-type"), Some("video/mp4"));
    assert_eq!(end.body, &data[3_999_000..]);

    let start = server.req("GET", &file, &[("Range", "bytes=0-999")], b"");
    assert_eq!(start.status, 206);
    assert_eq!(start.header("content-range"), Some("bytes 0-999/4000000"));
    assert_eq!(start.body, &data[..1000]);

    // Across piece boundaries (64 KiB pieces).
    let middle = server.req("GET", &file, &[("Range", "bytes=2000000-2299999")], b"");
    assert_eq!(middle.status, 206);
    assert_eq!(middle.header("content-length"), Some("300000"));
    assert_eq!(middle.body, &data[2_000_000..2_300_000]);

    let open_ended = server.req("GET", &file, &[("Range", "bytes=3900000-")], b"");
    assert_eq!(open_ended.status, 206);
    assert_eq!(open_ended.body, &data[3_900_000..]);

    let whole = server.req("GET", &file, &[], b"");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body.len(), data.len());
    assert!(whole.body == data, "the whole file is byte-exact");

    let head = server.req("HEAD", &file, &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("4000000"));
    assert!(head.body.is_empty());
    assert!(server.terminate().success());
}

/// A seek far ahead is answered long before the download gets there: the stream gives the
/// picker a deadline on the pieces at the read position. The seeder is libtorrent held to
/// 2 MiB/s, and the torrent is in sequential mode, so without the deadline the end of the file
/// would come last, after about 8 seconds.
#[test]
fn a_seek_far_ahead_is_answered_before_the_download_reaches_it() {
    common::require_libtorrent();
    let tmp = common::tempdir();
    let seed_dir = tmp.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let torrent = make_torrent(&seed_dir, "film.mp4", 16 * 1024 * 1024, 8, 64);
    let data = std::fs::read(seed_dir.join("film.mp4")).unwrap();
    let server = ServerProc::start(&tmp.path().join("dl"), &tmp.path().join("state"), &[]);
    let hash = server.add(&torrent, "");
    let r = server.req(
        "PATCH",
        &format!("/api/v1/torrents/{hash}"),
        &[("Content-Type", "application/json")],
        br#"{"sequential": true}"#,
    );
    assert_eq!(r.status, 200);
    let listen = server.get_json("/api/v1/session")["listen"][0]
        .as_str()
        .unwrap()
        .to_string();

    let port = common::clients::free_port();
    let mut cmd = std::process::Command::new(common::DEBIAN_PYTHON);
    cmd.arg(common::helpers_dir().join("lt_peer.py"))
        .arg(&torrent)
        .arg(&seed_dir)
        .args(["--port", &port.to_string(), "--seed", "--no-trackers"])
        .args(["--upload-limit", &(2 * 1024 * 1024).to_string()])
        .args(["--peer", &listen, "--timeout", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _seeder = common::ChildGuard::spawn(cmd);

    let file = format!("/api/v1/torrents/{hash}/files/0");
    let started = std::time::Instant::now();
    let far = 15 * 1024 * 1024;
    let end = server.req(
        "GET",
        &file,
        &[("Range", &format!("bytes={far}-{}", far + 99_999))],
        b"",
    );
    let took = started.elapsed();
    assert_eq!(end.status, 206);
    assert_eq!(end.body, &data[far..far + 100_000]);
    let t = server.get_json(&format!("/api/v1/torrents/{hash}"));
    let progress = t["progress"].as_f64().unwrap();
    // The seeder as the API shows it, mid-download: its client, transport and progress.
    let peer = &t["peers"][0];
    assert!(
        peer["client"]
            .as_str()
            .is_some_and(|c| c.to_lowercase().contains("libtorrent")),
        "{peer}"
    );
    assert_eq!(peer["transport"], "tcp", "{peer}");
    assert_eq!(peer["progress"], 1.0, "{peer}");
    assert!(peer["encrypted"].is_boolean(), "{peer}");
    let session = server.get_json("/api/v1/session");
    assert!(
        session["dht_nodes"].is_u64(),
        "a running DHT counts its nodes: {session}"
    );
    eprintln!("seek answered after {took:?} at {:.0}%", progress * 100.0);
    assert!(
        progress < 0.6,
        "answered after {took:?}, at {:.0}% of the download: the seek waited for the download",
        progress * 100.0
    );
    assert!(server.terminate().success());
}
