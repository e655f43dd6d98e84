//! BitTorrent v2 and hybrid torrents (BEP 52) against libtorrent 2.0.8 on 127.0.0.1:
//! `shoal create --v2|--hybrid` makes the info dictionary libtorrent makes of the same files
//! (the same v1 and v2 info hashes), and hybrid and v2-only torrents move byte-exact both ways,
//! single-file and multi-file, with their pad files (BEP 47) never written to disk. A v2-only
//! torrent's peers handshake with its truncated v2 info hash, and its pieces are checked
//! against the SHA-256 piece layers of its `.torrent`.
//!
//! Run with `cargo test --release --test v2 -- --test-threads=2`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::clients::*;
use common::*;
use serde_json::Value;

/// Bound for one transfer.
const TRANSFER: Duration = Duration::from_secs(90);

/// Bound for one tool run.
const TOOL: Duration = Duration::from_secs(60);

/// Pieces of 32 KiB: small enough that every file of the multi-file shape ends inside a piece
/// (so the hybrids carry pad files), large enough for piece layers.
const PIECE: u64 = 32 * 1024;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `shoal info --json`.
fn shoal_info(torrent: &Path) -> Value {
    let out = shoal(&["info", "--json", s(torrent)]);
    assert!(
        out.status.success(),
        "shoal info: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `shoal create CONTENT -o OUT -l PIECE --v2|--hybrid`.
fn shoal_create(content: &Path, out: &Path, kind: &str) {
    let piece = PIECE.to_string();
    let flag = format!("--{kind}");
    let got = shoal(&["create", s(content), "-o", s(out), "-l", &piece, &flag]);
    assert!(
        got.status.success(),
        "shoal create: {}",
        String::from_utf8_lossy(&got.stderr)
    );
}

/// tests/helpers/lt_create.py: libtorrent's torrent of `content` and its hashes.
fn lt_create(content: &Path, out: &Path, kind: &str) -> Value {
    require_libtorrent();
    let mut cmd = Command::new(DEBIAN_PYTHON);
    cmd.arg(helpers_dir().join("lt_create.py")).args([
        s(content),
        s(out),
        &PIECE.to_string(),
        kind,
    ]);
    let got = run_bounded(cmd, TOOL);
    assert!(
        got.status.success(),
        "lt_create.py: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    serde_json::from_slice(&got.stdout).expect("json")
}

/// Content of `shape` under `dir/src`, about 1 MiB with files ending inside pieces.
fn content(dir: &Path, name: &str, shape: Shape, seed: u64) -> PathBuf {
    make_content(&dir.join("src"), name, shape, 1024 * 1024 + 4_321, seed)
}

#[test]
fn create_gives_libtorrents_info_hashes() {
    let dir = tempdir();
    for (name, shape) in [("one", Shape::Single), ("many", Shape::Multi)] {
        let src = content(dir.path(), name, shape, 7);
        for kind in ["v2", "hybrid"] {
            let ours = dir.path().join(format!("{name}-{kind}-shoal.torrent"));
            let theirs = dir.path().join(format!("{name}-{kind}-lt.torrent"));
            shoal_create(&src, &ours, kind);
            let lt = lt_create(&src, &theirs, kind);
            let info = shoal_info(&ours);
            assert_eq!(
                info["info_hash_v2"], lt["v2"],
                "{name} {kind}: v2 info hash"
            );
            assert_eq!(info["meta_version"], kind, "{name} {kind}");
            if kind == "hybrid" {
                assert_eq!(info["info_hash"], lt["v1"], "{name} {kind}: v1 info hash");
            }
            // And we read libtorrent's torrent to the same hashes.
            let their_info = shoal_info(&theirs);
            assert_eq!(their_info["info_hash_v2"], lt["v2"]);
            assert_eq!(their_info["info_hash"], info["info_hash"]);
        }
    }
}

/// Asserts no pad file or `.pad` folder was written under `root`.
fn assert_no_pad_files(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        assert!(
            p.file_name().is_none_or(|n| n != ".pad"),
            "a pad folder was written: {}",
            p.display()
        );
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
}

/// libtorrent makes a `kind` (v2 or hybrid) torrent and seeds it; `shoal download` must finish byte-exact.
fn libtorrent_seeds(shape: Shape, name: &str, seed: u64, kind: &str) {
    let dir = tempdir();
    let src = content(dir.path(), name, shape, seed);
    let torrent = dir.path().join(format!("{name}.torrent"));
    lt_create(&src, &torrent, kind);
    let lt_log = dir.path().join("libtorrent.log");
    let lt_port = free_port();
    let _lt = Libtorrent {
        seed: true,
        ..Libtorrent::default()
    }
    .spawn(&torrent, &dir.path().join("src"), lt_port, &lt_log);
    wait_until(TRANSFER, "libtorrent to check its data", &[&lt_log], || {
        libtorrent_finished(&lt_log)
    });
    wait_listening(lt_port, TRANSFER, "libtorrent", &[&lt_log]);
    let out = dir.path().join("out");
    let log = dir.path().join("shoal.log");
    let peer = format!("127.0.0.1:{lt_port}");
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
    wait_success(&mut shoal, TRANSFER, "shoal download", &[&log, &lt_log]);
    assert_same_content(&src, &out.join(name));
    assert_no_pad_files(&out);
}

/// `shoal create --KIND` (v2 or hybrid), `shoal seed`; libtorrent downloads (checking the
/// SHA-256 piece layers, and a hybrid's SHA-1 pieces) and must finish byte-exact.
fn shoal_seeds(shape: Shape, name: &str, seed: u64, kind: &str) {
    let dir = tempdir();
    let src = content(dir.path(), name, shape, seed);
    let torrent = dir.path().join(format!("{name}.torrent"));
    shoal_create(&src, &torrent, kind);
    let log = dir.path().join("shoal.log");
    let lt_log = dir.path().join("libtorrent.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _shoal = spawn_shoal(
        &[
            "seed",
            s(&torrent),
            s(&src),
            "--listen",
            &listen,
            "--no-trackers",
        ],
        &log,
    );
    wait_listening(port, TRANSFER, "shoal", &[&log]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut lt = Libtorrent {
        peers: &[listen],
        ..Libtorrent::default()
    }
    .spawn(&torrent, &out, free_port(), &lt_log);
    wait_success(&mut lt, TRANSFER, "libtorrent download", &[&lt_log, &log]);
    assert_same_content(&src, &out.join(name));
}

#[test]
fn libtorrent_seeds_hybrid_single_file_to_shoal() {
    libtorrent_seeds(Shape::Single, "lt-hybrid-one.bin", 11, "hybrid");
}

#[test]
fn libtorrent_seeds_hybrid_multi_file_to_shoal() {
    libtorrent_seeds(Shape::Multi, "lt-hybrid-many", 12, "hybrid");
}

#[test]
fn shoal_seeds_hybrid_single_file_to_libtorrent() {
    shoal_seeds(Shape::Single, "shoal-hybrid-one.bin", 13, "hybrid");
}

#[test]
fn shoal_seeds_hybrid_multi_file_to_libtorrent() {
    shoal_seeds(Shape::Multi, "shoal-hybrid-many", 14, "hybrid");
}

#[test]
fn libtorrent_seeds_v2_only_single_file_to_shoal() {
    libtorrent_seeds(Shape::Single, "lt-v2-one.bin", 21, "v2");
}

#[test]
fn libtorrent_seeds_v2_only_multi_file_to_shoal() {
    libtorrent_seeds(Shape::Multi, "lt-v2-many", 22, "v2");
}

#[test]
fn shoal_seeds_v2_only_single_file_to_libtorrent() {
    shoal_seeds(Shape::Single, "shoal-v2-one.bin", 23, "v2");
}

#[test]
fn shoal_seeds_v2_only_multi_file_to_libtorrent() {
    shoal_seeds(Shape::Multi, "shoal-v2-many", 24, "v2");
}
