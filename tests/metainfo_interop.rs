//! Metainfo interop with real tools: torrents made by mktorrent and transmission-create read by
//! `shoal info` with libtorrent's info hash, and torrents made by `shoal create` loaded and
//! verified by libtorrent.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A bound on each external tool run.
const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// `shoal info --json FILE`, parsed.
fn shoal_info(torrent: &Path) -> Value {
    let out = shoal(&["info", "--json", torrent.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "shoal info {}: {}",
        torrent.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("shoal info --json prints JSON")
}

/// Runs tests/helpers/lt_torrent.py with `args`, parsed.
fn libtorrent(args: &[&str]) -> Value {
    let mut cmd = Command::new(DEBIAN_PYTHON);
    cmd.arg(helpers_dir().join("lt_torrent.py")).args(args);
    let out = run_bounded(cmd, TOOL_LIMIT);
    assert!(
        out.status.success(),
        "lt_torrent.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lt_torrent.py prints JSON")
}

/// Runs an external program to completion and asserts it succeeded.
fn run_tool(program: &str, args: &[&str]) {
    require_program(program);
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_bounded(cmd, TOOL_LIMIT);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file list: (path under the torrent name, length).
type Files = Vec<(String, u64)>;

/// The (path, length) list in `json["files"]`, the length under `length_key`.
fn files_of(json: &Value, length_key: &str) -> Files {
    json["files"]
        .as_array()
        .expect("a files list")
        .iter()
        .map(|f| {
            let path = f["path"].as_str().expect("a path").to_string();
            (path, f[length_key].as_u64().expect("a length"))
        })
        .collect()
}

/// The (path, length) list of shoal's JSON.
fn our_files(ours: &Value) -> Files {
    files_of(ours, "length")
}

/// The (path, length) list of shoal's JSON and of libtorrent's.
fn file_lists(ours: &Value, lt: &Value) -> (Files, Files) {
    (our_files(ours), files_of(lt, "size"))
}

/// Asserts shoal and libtorrent read `torrent` alike: info hash, pieces, lengths, files.
fn assert_same_view(torrent: &Path) -> (Value, Value) {
    require_libtorrent();
    let ours = shoal_info(torrent);
    let lt = libtorrent(&["info", torrent.to_str().unwrap()]);
    assert_eq!(ours["info_hash"], lt["info_hash"], "{}", torrent.display());
    assert_eq!(ours["piece_count"], lt["num_pieces"]);
    assert_eq!(ours["piece_length"], lt["piece_length"]);
    assert_eq!(ours["total_length"], lt["total_size"]);
    assert_eq!(ours["name"], lt["name"]);
    let (a, b) = file_lists(&ours, &lt);
    assert_eq!(a, b, "file lists of {}", torrent.display());
    (ours, lt)
}

/// A folder of files whose pieces cross file boundaries, with a zero-length file and nested
/// folders; returns the expected file list (paths under the folder's name, in sorted order).
fn make_folder(root: &Path) -> Files {
    let files: [(&str, usize); 6] = [
        ("a.bin", 1_000_000),
        ("b/c.txt", 0),
        ("b/d/e.bin", 70_001),
        ("b/f.bin", 1_500_000),
        ("g.bin", 16_384),
        ("h", 3),
    ];
    for (i, (p, len)) in files.iter().enumerate() {
        write_random_file(&root.join(p), *len, i as u64 + 1);
    }
    let name = root.file_name().unwrap().to_str().unwrap();
    files
        .iter()
        .map(|(p, len)| (format!("{name}/{p}"), *len as u64))
        .collect()
}

#[test]
fn mktorrent_torrents_read_like_libtorrent() {
    require_program("mktorrent");
    let dir = tempdir();
    let folder = dir.path().join("folder");
    let expected = make_folder(&folder);
    let single = dir.path().join("single.iso");
    write_random_file(&single, 300_001, 42);

    // A folder with 32 KiB pieces, private, and a `source` key (unknown to us) in the info.
    let t1 = dir.path().join("m1.torrent");
    run_tool(
        "mktorrent",
        &[
            "-a",
            "http://127.0.0.1:1/announce",
            "-a",
            "http://127.0.0.1:2/announce",
            "-l",
            "15",
            "-p",
            "-s",
            "SRC",
            "-c",
            "made by mktorrent",
            "-o",
            t1.to_str().unwrap(),
            folder.to_str().unwrap(),
        ],
    );
    let (ours, _) = assert_same_view(&t1);
    assert_eq!(our_files(&ours), expected);
    assert_eq!(ours["private"], true);
    assert_eq!(ours["comment"], "made by mktorrent");
    assert_eq!(ours["trackers"].as_array().unwrap().len(), 2);

    // A single file with 32 KiB pieces (mktorrent's smallest) and a short last piece.
    let t2 = dir.path().join("m2.torrent");
    run_tool(
        "mktorrent",
        &[
            "-a",
            "http://127.0.0.1:1/announce",
            "-l",
            "15",
            "-o",
            t2.to_str().unwrap(),
            single.to_str().unwrap(),
        ],
    );
    let (ours, _) = assert_same_view(&t2);
    assert_eq!(ours["multi_file"], false);
    assert_eq!(ours["piece_count"], 10);
}

#[test]
fn transmission_create_torrents_read_like_libtorrent() {
    require_program("transmission-create");
    let dir = tempdir();
    let folder = dir.path().join("tfolder");
    make_folder(&folder);
    let single = dir.path().join("one.bin");
    write_random_file(&single, 1_234_567, 7);

    for (i, (src, kib)) in [(&folder, "32"), (&single, "64"), (&folder, "1024")]
        .iter()
        .enumerate()
    {
        let t = dir.path().join(format!("t{i}.torrent"));
        run_tool(
            "transmission-create",
            &[
                "-o",
                t.to_str().unwrap(),
                "-s",
                kib,
                "-t",
                "http://127.0.0.1:1/announce",
                "-c",
                "made by transmission",
                src.to_str().unwrap(),
            ],
        );
        let (ours, _) = assert_same_view(&t);
        assert_eq!(
            ours["piece_length"].as_u64(),
            Some(kib.parse::<u64>().unwrap() * 1024)
        );
        assert_eq!(ours["comment"], "made by transmission");
    }
}

/// Makes a torrent of `path` with `shoal create`, checks libtorrent reads it as we do with the
/// expected file list and piece length, and that libtorrent verifies the data on disk.
fn check_shoal_torrent(path: &Path, piece_length: &str, expected_pl: u64) {
    require_libtorrent();
    let dir = tempdir();
    let torrent = dir.path().join("out.torrent");
    let out = shoal(&[
        "create",
        path.to_str().unwrap(),
        "-o",
        torrent.to_str().unwrap(),
        "--piece-length",
        piece_length,
        "--tracker",
        "http://127.0.0.1:1/announce",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (ours, lt) = assert_same_view(&torrent);
    assert_eq!(ours["piece_length"].as_u64(), Some(expected_pl));
    let hash = ours["info_hash"].as_str().unwrap();
    assert!(
        stdout.contains(hash),
        "shoal create prints the info hash: {stdout}"
    );
    let total = ours["total_length"].as_u64().unwrap();
    assert_eq!(
        ours["piece_count"].as_u64(),
        Some(total.div_ceil(expected_pl))
    );
    assert_eq!(
        lt["piece_hashes"].as_array().unwrap().len() as u64,
        total.div_ceil(expected_pl)
    );

    // libtorrent hashes the data itself and must find every piece.
    let save = path.parent().unwrap();
    let checked = libtorrent(&[
        "check",
        torrent.to_str().unwrap(),
        save.to_str().unwrap(),
        "60",
    ]);
    assert_eq!(checked["info_hash"], ours["info_hash"]);
    assert_eq!(
        checked["have"], ours["piece_count"],
        "libtorrent verified {checked}"
    );
    assert_eq!(checked["is_seeding"], true);
}

#[test]
fn shoal_folder_torrents_load_and_verify_in_libtorrent() {
    let dir = tempdir();
    let folder = dir.path().join("data");
    let expected = make_folder(&folder);
    for (size, bytes) in [
        ("16KiB", 16_384),
        ("32k", 32_768),
        ("1MiB", 1 << 20),
        ("20000", 20_000),
    ] {
        check_shoal_torrent(&folder, size, bytes);
    }
    // The file list, in sorted order, with the zero-length file kept.
    let torrent = dir.path().join("list.torrent");
    let out = shoal(&[
        "create",
        folder.to_str().unwrap(),
        "-o",
        torrent.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(our_files(&shoal_info(&torrent)), expected);
}

#[test]
fn shoal_single_file_torrents_load_and_verify_in_libtorrent() {
    let dir = tempdir();
    let file = dir.path().join("movie.bin");
    // 2.5 MiB + 1: the last piece is shorter than the rest at every size below.
    write_random_file(&file, 5 * 512 * 1024 + 1, 99);
    for (size, bytes) in [("16k", 16_384), ("1m", 1 << 20), ("20000", 20_000)] {
        check_shoal_torrent(&file, size, bytes);
    }
}

#[test]
fn shoal_create_skips_hidden_and_links_and_refuses_overwrite() {
    let dir = tempdir();
    let folder = dir.path().join("d");
    write_random_file(&folder.join("kept"), 1000, 1);
    write_random_file(&folder.join(".hidden"), 1000, 2);
    write_random_file(&folder.join(".git/config"), 1000, 3);
    std::fs::create_dir_all(folder.join("empty")).unwrap();
    std::os::unix::fs::symlink(folder.join("kept"), folder.join("link")).unwrap();
    let torrent = dir.path().join("d.torrent");
    let t = torrent.to_str().unwrap();
    let out = shoal(&["create", folder.to_str().unwrap(), "-o", t]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ours, lt) = assert_same_view(&torrent);
    let (files, _) = file_lists(&ours, &lt);
    assert_eq!(files, [("d/kept".to_string(), 1000)]);

    let before = std::fs::read(&torrent).unwrap();
    let out = shoal(&["create", folder.to_str().unwrap(), "-o", t]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&torrent).unwrap(), before);
    let out = shoal(&[
        "create",
        folder.to_str().unwrap(),
        "-o",
        t,
        "--force",
        "--include-hidden",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ours, _) = assert_same_view(&torrent);
    assert_eq!(ours["files"].as_array().unwrap().len(), 3);
}
