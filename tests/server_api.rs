//! `shoal server`'s HTTP JSON API end to end: every route and its errors, over real HTTP on
//! 127.0.0.1, against the binary, with a local seeder; and `shoal ctl` against it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::server::{make_torrent, parse_reply, start_seeder, ServerProc};
use common::{run_bounded, shoal_bin};
use serde_json::json;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const TORRENT: (&str, &str) = ("Content-Type", "application/x-bittorrent");

#[test]
fn every_route_answers_and_bad_input_changes_nothing() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Two files in a folder: file selection and per-file progress have something to show.
    common::write_random_file(&src.join("pack/a.bin"), 700_000, 1);
    common::write_random_file(&src.join("pack/b.bin"), 300_000, 2);
    let torrent = tmp.path().join("pack.torrent");
    let out = common::shoal(&[
        "create",
        src.join("pack").to_str().unwrap(),
        "-o",
        torrent.to_str().unwrap(),
        "-l",
        "32k",
    ]);
    assert!(out.status.success());
    let (_seeder, peer) = start_seeder(&torrent, &src.join("pack"), &[]);
    let dl = tmp.path().join("dl");
    let server = ServerProc::start(&dl, &tmp.path().join("state"), &["--peer", &peer]);

    // The page.
    let page = server.req("GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("<title>shoal</title>"));

    // Empty list, session.
    assert_eq!(server.get_json("/api/v1/torrents"), json!([]));
    let s = server.get_json("/api/v1/session");
    assert_eq!(s["torrents"], 0);
    assert!(s["listen"][0].as_str().unwrap().starts_with("127.0.0.1:"));

    // Adding: bad bodies first, each a clear 4xx, none adding anything.
    let bad = server.req("POST", "/api/v1/torrents", &[TORRENT], b"d4:spam");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .contains("not a valid .torrent"));
    let empty = server.req("POST", "/api/v1/torrents", &[TORRENT], b"");
    assert_eq!(empty.status, 400);
    let untyped = server.req("POST", "/api/v1/torrents", &[], b"x");
    assert_eq!(untyped.status, 415);
    let form = server.req(
        "POST",
        "/api/v1/torrents",
        &[("Content-Type", "text/plain")],
        b"x",
    );
    assert_eq!(form.status, 415);
    let malformed = server.req("POST", "/api/v1/torrents", &[JSON], b"{\"magnet\": ");
    assert_eq!(malformed.status, 400);
    assert!(malformed.json()["error"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let magnet = server.req(
        "POST",
        "/api/v1/torrents",
        &[JSON],
        br#"{"magnet": "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"}"#,
    );
    // A magnet is added at once, in state `metadata` (no peer has it here: it stays there).
    assert_eq!(magnet.status, 202, "{}", magnet.text());
    assert_eq!(magnet.json()["state"], "metadata");
    assert_eq!(
        magnet.json()["info_hash"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    let not_magnet = server.req(
        "POST",
        "/api/v1/torrents",
        &[JSON],
        br#"{"magnet": "http://x"}"#,
    );
    assert_eq!(not_magnet.status, 400);
    let unknown_field = server.req("POST", "/api/v1/torrents", &[JSON], br#"{"magnit": "x"}"#);
    assert_eq!(unknown_field.status, 400);
    let bytes = std::fs::read(&torrent).unwrap();
    let bad_dir = server.req("POST", "/api/v1/torrents?dir=..%2Fx", &[TORRENT], &bytes);
    assert_eq!(bad_dir.status, 400, "{}", bad_dir.text());
    let bad_flag = server.req("POST", "/api/v1/torrents?paused=maybe", &[TORRENT], &bytes);
    assert_eq!(bad_flag.status, 400);
    assert_eq!(
        server.get_json("/api/v1/torrents"),
        json!([]),
        "nothing was added"
    );

    // The body limit: refused from its Content-Length, before it is sent.
    let mut s = TcpStream::connect(&server.http).unwrap();
    write!(
        s,
        "POST /api/v1/torrents HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-bittorrent\r\n\
         Content-Length: 999999999\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut raw);
    assert_eq!(parse_reply(&raw).unwrap().status, 413);
    // A head over the limit.
    let big = "x".repeat(20_000);
    let r = server.req("GET", "/api/v1/torrents", &[("X-Big", &big)], b"");
    assert_eq!(r.status, 431);

    // Adding for real.
    let added = server.req("POST", "/api/v1/torrents", &[TORRENT], &bytes);
    assert_eq!(added.status, 201, "{}", added.text());
    let t = added.json();
    let hash = t["info_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 40);
    assert_eq!(t["name"], "pack");
    assert_eq!(t["size"], 1_000_000);
    for field in [
        "state",
        "progress",
        "downloaded",
        "uploaded",
        "download_rate",
        "upload_rate",
        "peers",
        "eta",
        "error",
    ] {
        assert!(t.get(field).is_some(), "{field} missing from {t}");
    }
    let again = server.req("POST", "/api/v1/torrents", &[TORRENT], &bytes);
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["info_hash"], hash.as_str());

    server.wait_for(&hash, "progress", json!(1.0), Duration::from_secs(60));
    server.wait_for(&hash, "state", json!("seeding"), Duration::from_secs(10));
    for f in ["a.bin", "b.bin"] {
        assert_eq!(
            std::fs::read(dl.join("pack").join(f)).unwrap(),
            std::fs::read(src.join("pack").join(f)).unwrap()
        );
    }

    // One torrent in full.
    let one = server.get_json(&format!("/api/v1/torrents/{hash}"));
    let files = one["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["index"], 0);
    assert_eq!(files[0]["path"], "pack/a.bin");
    assert_eq!(files[0]["size"], 700_000);
    assert_eq!(files[0]["downloaded"], 700_000);
    assert_eq!(files[1]["wanted"], true);
    assert!(one["trackers"].is_array());
    assert!(one["peers"].is_array());
    // 1,000,000 bytes in 32 KiB pieces: 31 pieces, every one had: 0xff x3, then 0b1111_1110.
    assert_eq!(one["pieces"], "/////g==");
    let list = server.get_json("/api/v1/torrents");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["info_hash"], hash.as_str());

    // Unknown and malformed hashes, wrong methods, unknown routes.
    let unknown = "0".repeat(40);
    assert_eq!(
        server
            .req("GET", &format!("/api/v1/torrents/{unknown}"), &[], b"")
            .status,
        404
    );
    assert_eq!(
        server
            .req(
                "POST",
                &format!("/api/v1/torrents/{unknown}/pause"),
                &[],
                b""
            )
            .status,
        404
    );
    assert_eq!(
        server.req("GET", "/api/v1/torrents/xyz", &[], b"").status,
        400
    );
    assert_eq!(
        server
            .req("GET", "/api/v1/torrents/..%2f..%2fetc", &[], b"")
            .status,
        400
    );
    let put = server.req("PUT", "/api/v1/torrents", &[], b"");
    assert_eq!(put.status, 405);
    assert!(put.header("allow").is_some());
    assert_eq!(
        server
            .req("GET", &format!("/api/v1/torrents/{hash}/pause"), &[], b"")
            .status,
        405
    );
    assert_eq!(server.req("GET", "/api/v2/torrents", &[], b"").status, 404);
    assert_eq!(
        server
            .req("GET", &format!("/api/v1/torrents/{hash}/nothing"), &[], b"")
            .status,
        404
    );

    // PATCH: bad input changes nothing.
    let path = format!("/api/v1/torrents/{hash}");
    let out_of_range = server.req(
        "PATCH",
        &path,
        &[JSON],
        br#"{"files": [0, 5], "download_limit": 7}"#,
    );
    assert_eq!(out_of_range.status, 400, "{}", out_of_range.text());
    assert!(out_of_range.json()["error"]
        .as_str()
        .unwrap()
        .contains("out of range"));
    let typo = server.req("PATCH", &path, &[JSON], br#"{"download_limt": 7}"#);
    assert_eq!(typo.status, 400);
    let negative = server.req("PATCH", &path, &[JSON], br#"{"upload_limit": -1}"#);
    assert_eq!(negative.status, 400);
    let t = server.get_json(&path);
    assert_eq!(t["download_limit"], 0);
    assert_eq!(t["files"][1]["wanted"], true);
    let ok = server.req(
        "PATCH",
        &path,
        &[JSON],
        br#"{"files": [0], "sequential": true, "download_limit": 100000, "upload_limit": 5000}"#,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let t = server.get_json(&path);
    assert_eq!(t["download_limit"], 100_000);
    assert_eq!(t["upload_limit"], 5000);
    assert_eq!(t["sequential"], true);
    assert_eq!(t["files"][0]["wanted"], true);
    assert_eq!(t["files"][1]["wanted"], false);

    // A magnet of a torrent already added: 409 with its hash; a malformed one: 400.
    let magnet = format!("{{\"magnet\": \"magnet:?xt=urn:btih:{hash}&dn=pack\"}}");
    let dup = server.req("POST", "/api/v1/torrents", &[JSON], magnet.as_bytes());
    assert_eq!(dup.status, 409, "{}", dup.text());
    assert_eq!(dup.json()["info_hash"], hash.as_str());
    let bad = server.req(
        "POST",
        "/api/v1/torrents",
        &[JSON],
        br#"{"magnet": "magnet:?xt=urn:btih:zz"}"#,
    );
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("bad magnet link"));

    // Pause and resume.
    let paused = server.req("POST", &format!("{path}/pause"), &[], b"");
    assert_eq!(paused.status, 200);
    assert_eq!(paused.json()["state"], "paused");
    assert_eq!(server.get_json(&path)["state"], "paused");
    let resumed = server.req("POST", &format!("{path}/resume"), &[], b"");
    assert_eq!(resumed.status, 200);
    server.wait_for(&hash, "state", json!("seeding"), Duration::from_secs(10));

    // The session.
    let s = server.req(
        "PATCH",
        "/api/v1/session",
        &[JSON],
        br#"{"download_limit": 1000}"#,
    );
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["download_limit"], 1000);
    assert_eq!(
        server.req("PATCH", "/api/v1/session", &[JSON], b"[").status,
        400
    );
    assert_eq!(
        server
            .req("PATCH", "/api/v1/session", &[JSON], br#"{"dht": 1}"#)
            .status,
        400
    );
    let s = server.get_json("/api/v1/session");
    assert_eq!(s["download_limit"], 1000);
    assert_eq!(s["upload_limit"], 0);
    assert_eq!(s["torrents"], 1);

    // Files: out of range, not a number.
    assert_eq!(
        server
            .req("GET", &format!("{path}/files/2"), &[], b"")
            .status,
        404
    );
    assert_eq!(
        server
            .req("GET", &format!("{path}/files/-1"), &[], b"")
            .status,
        400
    );
    assert_eq!(
        server
            .req(
                "GET",
                &format!("{path}/files/..%2F..%2Fetc%2Fpasswd"),
                &[],
                b""
            )
            .status,
        400
    );
    let whole = server.req("GET", &format!("{path}/files/1"), &[], b"");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.body, std::fs::read(src.join("pack/b.bin")).unwrap());
    let past = server.req(
        "GET",
        &format!("{path}/files/1"),
        &[("Range", "bytes=300000-")],
        b"",
    );
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */300000"));

    // Keep-alive: two requests on one connection, pipelined.
    let mut s = TcpStream::connect(&server.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/session HTTP/1.1\r\nHost: localhost\r\n\r\nGET /api/v1/torrents HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");

    // A page of another site cannot steer the server through the user's browser.
    let cross = server.req(
        "POST",
        &format!("{path}/pause"),
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(cross.status, 403);
    assert_eq!(server.get_json(&path)["state"], "seeding");

    // Removing: a bad flag changes nothing; then removed with its files.
    assert_eq!(
        server
            .req("DELETE", &format!("{path}?delete_files=maybe"), &[], b"")
            .status,
        400
    );
    assert_eq!(
        server
            .get_json("/api/v1/torrents")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let rm = server.req("DELETE", &format!("{path}?delete_files=true"), &[], b"");
    assert_eq!(rm.status, 200, "{}", rm.text());
    assert_eq!(server.req("GET", &path, &[], b"").status, 404);
    assert!(!dl.join("pack").exists(), "the files were deleted");
    assert_eq!(server.get_json("/api/v1/torrents"), json!([]));

    let status = server.terminate();
    assert!(
        status.success(),
        "the server ends with 0 after SIGTERM: {status:?}"
    );
}

/// Runs `shoal ctl --server URL ARGS...`.
fn ctl(url: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(shoal_bin());
    cmd.args(["ctl", "--server", url]).args(args);
    run_bounded(cmd, Duration::from_secs(60))
}

#[test]
fn ctl_adds_lists_pauses_and_removes() {
    let tmp = common::tempdir();
    let torrent = make_torrent(tmp.path(), "movie.bin", 400_000, 9, 16);
    let dl = tmp.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    // The data is already in the download folder: the check finds every piece.
    std::fs::copy(tmp.path().join("movie.bin"), dl.join("movie.bin")).unwrap();
    let server = ServerProc::start(&dl, &tmp.path().join("state"), &[]);
    let url = format!("http://{}", server.http);

    let out = ctl(&url, &["add", torrent.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hash = added["info_hash"].as_str().unwrap().to_string();
    let again = ctl(&url, &["add", torrent.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
    server.wait_for(&hash, "state", json!("seeding"), Duration::from_secs(30));

    let list = ctl(&url, &["list"]);
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("movie.bin") && text.contains("seeding") && text.contains("100.0%"),
        "{text}"
    );

    let pause = ctl(&url, &["pause", &hash[..8]]);
    assert!(
        pause.status.success(),
        "{}",
        String::from_utf8_lossy(&pause.stderr)
    );
    let list: serde_json::Value =
        serde_json::from_slice(&ctl(&url, &["list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["state"], "paused");
    assert!(ctl(&url, &["resume", &hash]).status.success());

    let files = ctl(&url, &["files", &hash]);
    assert!(String::from_utf8_lossy(&files.stdout).contains("movie.bin"));
    let bad = ctl(&url, &["files", &hash, "--want", "3"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("out of range"));

    let limit = ctl(&url, &["limit", &hash, "--down", "2048", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&limit.stdout).unwrap();
    assert_eq!(v["download_limit"], 2048);
    let session = ctl(&url, &["limit", "--up", "4096"]);
    assert!(String::from_utf8_lossy(&session.stdout).contains("upload limit 4.0 KiB/s"));

    let unknown = ctl(&url, &["pause", "abcdef"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(ctl(&url, &["frobnicate"]).status.code(), Some(2));
    assert!(ctl(&url, &["rm", &hash]).status.success());
    assert!(
        dl.join("movie.bin").exists(),
        "rm without --delete-files keeps the data"
    );
    let empty: serde_json::Value =
        serde_json::from_slice(&ctl(&url, &["list", "--json"]).stdout).unwrap();
    assert_eq!(empty, json!([]));
    let down = ctl("http://127.0.0.1:9", &["list"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach"));
}

#[test]
fn a_skipped_file_is_never_fetched_and_progress_is_of_the_wanted_ones() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    common::write_random_file(&src.join("album/one.flac"), 600_000, 11);
    common::write_random_file(&src.join("album/two.flac"), 600_000, 12);
    let torrent = tmp.path().join("album.torrent");
    let out = common::shoal(&[
        "create",
        src.join("album").to_str().unwrap(),
        "-o",
        torrent.to_str().unwrap(),
        "-l",
        "16k",
    ]);
    assert!(out.status.success());
    let (_seeder, peer) = start_seeder(&torrent, &src.join("album"), &[]);
    let dl = tmp.path().join("dl");
    let server = ServerProc::start(&dl, &tmp.path().join("state"), &["--peer", &peer]);
    let bytes = std::fs::read(&torrent).unwrap();
    let bad = server.req("POST", "/api/v1/torrents?files=1,x", &[TORRENT], &bytes);
    assert_eq!(bad.status, 400);
    let bad = server.req("POST", "/api/v1/torrents?files=2", &[TORRENT], &bytes);
    assert_eq!(bad.status, 400);
    let hash = server.add(&torrent, "?files=1");
    let path = format!("/api/v1/torrents/{hash}");
    server.wait_for(&hash, "progress", json!(1.0), Duration::from_secs(60));
    let t = server.get_json(&path);
    assert_eq!(t["files"][0]["wanted"], false);
    assert_eq!(t["files"][1]["wanted"], true);
    assert_eq!(t["files"][1]["downloaded"], 600_000);
    assert_eq!(
        std::fs::read(dl.join("album/two.flac")).unwrap(),
        std::fs::read(src.join("album/two.flac")).unwrap()
    );
    assert!(
        !dl.join("album/one.flac").exists(),
        "a skipped file is never created"
    );

    // Wanted later: created and fetched.
    let r = server.req("PATCH", &path, &[JSON], br#"{"files": [0, 1]}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    server.wait_for(&hash, "state", json!("seeding"), Duration::from_secs(60));
    server.wait_for(&hash, "progress", json!(1.0), Duration::from_secs(10));
    assert_eq!(
        std::fs::read(dl.join("album/one.flac")).unwrap(),
        std::fs::read(src.join("album/one.flac")).unwrap()
    );
    assert!(server.terminate().success());
}
