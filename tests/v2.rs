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
    if kind == "hybrid" {
        // libtorrent dials a hybrid by its v1 hash with the v2 bit: shoal upgrades it.
        let ours = std::fs::read_to_string(&log).unwrap();
        assert!(ours.contains("answering with the v2 info hash"), "{ours}");
    }
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

// ---------------------------------------------------------------------------------------------
// v2-only magnets (`urn:btmh`): the metadata by the v2 hash, then the piece layers by hash
// requests (BEP 52)

/// `shoal magnet TORRENT`: for a v2-only torrent, a `urn:btmh` magnet and no `urn:btih`.
fn v2_magnet(torrent: &Path) -> String {
    let out = shoal(&["magnet", s(torrent)]);
    assert!(out.status.success(), "shoal magnet");
    let link = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(link.starts_with("magnet:?xt=urn:btmh:1220"), "{link}");
    assert!(!link.contains("btih"), "{link}");
    link
}

/// libtorrent seeds a v2-only torrent; shoal, given only its btmh magnet and the seeder's
/// address, fetches the metadata, then the piece layers, then the files, byte-exact.
fn shoal_downloads_v2_magnet(shape: Shape, name: &str, seed: u64) {
    let dir = tempdir();
    let src = content(dir.path(), name, shape, seed);
    let torrent = dir.path().join(format!("{name}.torrent"));
    lt_create(&src, &torrent, "v2");
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
    let magnet = format!("{}&x.pe=127.0.0.1:{lt_port}", v2_magnet(&torrent));
    let out = dir.path().join("out");
    let log = dir.path().join("shoal.log");
    let mut shoal = spawn_shoal(
        &[
            "download",
            &magnet,
            "-o",
            s(&out),
            "--listen",
            "127.0.0.1:0",
            "--no-trackers",
        ],
        &log,
    );
    wait_success(
        &mut shoal,
        TRANSFER,
        "shoal download of a v2 magnet",
        &[&log, &lt_log],
    );
    assert_same_content(&src, &out.join(name));
    assert_no_pad_files(&out);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("fetching the piece layers"), "{text}");
    // The kept .torrent has the layers: it equals libtorrent's but for the trackers.
    let info = shoal_info(&torrent);
    let hash = info["info_hash"].as_str().unwrap().to_string();
    let kept = out.join(".shoal").join(format!("{hash}.torrent"));
    let kept = shoal::Metainfo::from_bytes(&std::fs::read(&kept).expect("kept .torrent")).unwrap();
    let theirs = shoal::Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    assert_eq!(kept.piece_layers, theirs.piece_layers);
    assert!(!kept.piece_layers.is_empty());
}

#[test]
fn shoal_downloads_a_v2_only_single_file_magnet_from_libtorrent() {
    shoal_downloads_v2_magnet(Shape::Single, "btmh-one.bin", 31);
}

#[test]
fn shoal_downloads_a_v2_only_multi_file_magnet_from_libtorrent() {
    shoal_downloads_v2_magnet(Shape::Multi, "btmh-many", 32);
}

/// shoal seeds a v2-only torrent; libtorrent holds only the btmh magnet, so it fetches the
/// metadata and then the piece layers from shoal (hash requests shoal answers).
fn libtorrent_downloads_v2_magnet(shape: Shape, name: &str, seed: u64) {
    let dir = tempdir();
    let src = content(dir.path(), name, shape, seed);
    let torrent = dir.path().join(format!("{name}.torrent"));
    shoal_create(&src, &torrent, "v2");
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
        peers: std::slice::from_ref(&listen),
        ..Libtorrent::default()
    }
    .spawn(Path::new(&v2_magnet(&torrent)), &out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        TRANSFER,
        "libtorrent v2 magnet download",
        &[&lt_log, &log],
    );
    let text = std::fs::read_to_string(&lt_log).unwrap();
    assert!(text.contains("\"event\": \"metadata\""), "{text}");
    assert_same_content(&src, &out.join(name));
    // libtorrent had no piece layers: it asked shoal for them, and shoal answered.
    let ours = std::fs::read_to_string(&log).unwrap();
    assert!(ours.contains("answered a hash request"), "{ours}");
}

#[test]
fn libtorrent_downloads_a_v2_only_single_file_magnet_from_shoal() {
    libtorrent_downloads_v2_magnet(Shape::Single, "lt-btmh-one.bin", 33);
}

#[test]
fn libtorrent_downloads_a_v2_only_multi_file_magnet_from_shoal() {
    libtorrent_downloads_v2_magnet(Shape::Multi, "lt-btmh-many", 34);
}

/// A peer that serves the true metadata of a v2 torrent, then answers every hash request with
/// the right number of hashes, all wrong. Returns its address.
fn lying_hash_peer(info_hash: [u8; 20], raw_info: Vec<u8>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let raw_info = raw_info.clone();
            std::thread::spawn(move || {
                let _ = (|| -> std::io::Result<()> {
                    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
                    let mut hs = [0u8; 68];
                    stream.read_exact(&mut hs)?;
                    let mut ours = vec![19];
                    ours.extend_from_slice(b"BitTorrent protocol");
                    ours.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x10]);
                    ours.extend_from_slice(&info_hash);
                    ours.extend_from_slice(b"-XX0001-liarliarliar");
                    stream.write_all(&ours)?;
                    let frame = |body: &[u8]| {
                        let mut out = (body.len() as u32).to_be_bytes().to_vec();
                        out.extend_from_slice(body);
                        out
                    };
                    let size = raw_info.len();
                    let hs = format!("d1:md11:ut_metadatai3ee13:metadata_sizei{size}ee");
                    let mut body = vec![20, 0];
                    body.extend_from_slice(hs.as_bytes());
                    stream.write_all(&frame(&body))?;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = stream.read(&mut chunk)?;
                        if n == 0 {
                            return Ok(());
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while buf.len() >= 4 {
                            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                            if buf.len() < 4 + len {
                                break;
                            }
                            let body: Vec<u8> = buf[4..4 + len].to_vec();
                            buf.drain(..4 + len);
                            if len > 2 && body[0] == 20 && body[1] == 3 {
                                let text = String::from_utf8_lossy(&body[2..]).to_string();
                                let piece: usize = text
                                    .split("5:piecei")
                                    .nth(1)
                                    .and_then(|r| r.split('e').next())
                                    .and_then(|n| n.parse().ok())
                                    .unwrap_or(0);
                                let start = (piece * 16384).min(size);
                                let end = (start + 16384).min(size);
                                let mut payload =
                                    format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{size}ee")
                                        .into_bytes();
                                payload.extend_from_slice(&raw_info[start..end]);
                                let mut body = vec![20, 2];
                                body.extend_from_slice(&payload);
                                stream.write_all(&frame(&body))?;
                            } else if len == 49 && body[0] == 21 {
                                // hash request: answer with hashes of the right count.
                                let length = u32::from_be_bytes(body[41..45].try_into().unwrap());
                                let proof = u32::from_be_bytes(body[45..49].try_into().unwrap());
                                let uncles = (proof + 1).saturating_sub(length.trailing_zeros());
                                let mut answer = vec![22];
                                answer.extend_from_slice(&body[1..49]);
                                answer.extend(std::iter::repeat_n(
                                    0xAB,
                                    32 * (length + uncles) as usize,
                                ));
                                stream.write_all(&frame(&answer))?;
                            }
                        }
                    }
                })();
            });
        }
    });
    addr
}

/// A v2 magnet whose only peer serves the true metadata and lying piece-layer hashes: the
/// liar is banned, and the download completes from an honest shoal seeder given afterwards
/// (which answers hash requests from its piece layers).
#[test]
fn lying_piece_layer_hashes_get_the_peer_banned_and_the_download_completes() {
    use futures_lite::future;
    use shoal::{AddMagnet, AddTorrent, Magnet, Metainfo, Session, SessionSettings, TorrentEvent};
    use std::sync::Arc;
    let dir = tempdir();
    let name = "liar.bin";
    let src = content(dir.path(), name, Shape::Single, 41);
    let torrent = dir.path().join("liar.torrent");
    shoal_create(&src, &torrent, "v2");
    let meta = Arc::new(Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap());
    assert!(meta.piece_layers.len() == 1);
    let session = || {
        Session::new(SessionSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            hasher_threads: 1,
            disk_threads: 1,
            ..SessionSettings::default()
        })
        .unwrap()
    };
    let seeder = session();
    let seed = seeder
        .add(AddTorrent::seed(meta.clone(), dir.path().join("src")))
        .unwrap();
    let liar = lying_hash_peer(meta.info_hash.0, meta.raw_info.clone());
    let leecher = session();
    let magnet = Magnet::from_metainfo(&meta);
    assert!(magnet.is_v2_only());
    let mut add = AddMagnet::new(magnet, dir.path().join("out"));
    add.peers = vec![liar];
    let t = leecher.add_magnet_with(add).unwrap();
    let events = t.subscribe();
    leecher.block_on(async {
        let good = seeder.local_addr();
        let run = async {
            seed.wait_checked().await.unwrap();
            loop {
                match events.recv().await {
                    Ok(TorrentEvent::PeerBanned(a)) if a == liar => break,
                    Ok(_) => {}
                    Err(_) => panic!("events ended"),
                }
            }
            // Banned while the piece layers were fetched: nothing started yet.
            assert_eq!(t.state(), shoal::TorrentState::Metadata);
            t.add_peers(vec![good]).await;
            t.wait_complete().await.unwrap();
        };
        future::or(run, async {
            smol::Timer::after(TRANSFER).await;
            panic!("timed out in state {}", t.state());
        })
        .await;
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
    assert_same_content(&src, &dir.path().join("out").join(name));
}

/// A hybrid magnet (btih and btmh) whose btmh hash is not the torrent's: the metadata the
/// seeder sends matches the btih hash only, so the magnet is wrong, and the torrent says so in
/// state `error` rather than starting. With the right btmh hash the same magnet downloads.
#[test]
fn a_hybrid_magnet_is_checked_against_both_hashes() {
    use futures_lite::future;
    use shoal::{AddMagnet, AddTorrent, Magnet, Metainfo, Session, SessionSettings, TorrentState};
    use std::sync::Arc;
    let dir = tempdir();
    let name = "both.bin";
    let src = content(dir.path(), name, Shape::Single, 42);
    let torrent = dir.path().join("both.torrent");
    shoal_create(&src, &torrent, "hybrid");
    let meta = Arc::new(Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap());
    let session = || {
        Session::new(SessionSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            hasher_threads: 1,
            disk_threads: 1,
            ..SessionSettings::default()
        })
        .unwrap()
    };
    let seeder = session();
    let seed = seeder
        .add(AddTorrent::seed(meta.clone(), dir.path().join("src")))
        .unwrap();
    let good = Magnet::from_metainfo(&meta);
    assert!(good.info_hash_v2.is_some() && !good.is_v2_only());
    let mut wrong = good.clone();
    wrong.info_hash_v2.as_mut().unwrap()[5] ^= 0x40;
    let leecher = session();
    let mut add = AddMagnet::new(wrong, dir.path().join("bad"));
    add.peers = vec![seeder.local_addr()];
    let t = leecher.add_magnet_with(add).unwrap();
    leecher.block_on(async {
        let run = async {
            seed.wait_checked().await.unwrap();
            while t.state() != TorrentState::Error {
                smol::Timer::after(Duration::from_millis(50)).await;
            }
        };
        future::or(run, async {
            smol::Timer::after(TRANSFER).await;
            panic!("timed out in state {}", t.state());
        })
        .await;
    });
    let err = t.error().expect("an error");
    assert!(
        err.contains("urn:btmh") && err.contains("magnet is wrong"),
        "{err}"
    );
    assert!(!dir.path().join("bad").join(name).exists());
    // The right pair of hashes downloads.
    let other = session();
    let mut add = AddMagnet::new(good, dir.path().join("out"));
    add.peers = vec![seeder.local_addr()];
    let t = other.add_magnet_with(add).unwrap();
    other.block_on(async {
        future::or(async { t.wait_complete().await.unwrap() }, async {
            smol::Timer::after(TRANSFER).await;
            panic!("timed out in state {}", t.state());
        })
        .await;
        other.shutdown().await;
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
    assert_same_content(&src, &dir.path().join("out").join(name));
}
