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
