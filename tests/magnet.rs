//! Magnet links and metadata exchange (BEP 9/10) on 127.0.0.1: shoal fetches the metadata from a
//! libtorrent seeder named by `x.pe` and downloads byte-exact; finds its seeder through a `tr=`
//! tracker; a libtorrent downloader holding only the magnet fetches the metadata from shoal;
//! scripted hostile peers (huge or negative `metadata_size`, pieces out of range, metadata that
//! fails the hash) change nothing but their own fate. The magnet-to-metadata bench is the
//! ignored test `magnet_to_metadata_bench` (see BENCHMARKS.md).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;
use futures_lite::future;
use shoal::{AddMagnet, AddTorrent, Magnet, Metainfo, Session, SessionSettings, TorrentEvent};

/// Bound for each transfer.
const LIMIT: Duration = Duration::from_secs(90);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Content and its torrent in a fresh folder.
struct Setup {
    dir: tempfile::TempDir,
    content: std::path::PathBuf,
    torrent: std::path::PathBuf,
}

impl Setup {
    fn new(name: &str, total: u64, piece: &str, tracker: Option<&str>, seed: u64) -> Self {
        let dir = tempdir();
        let content = make_content(&dir.path().join("src"), name, Shape::Single, total, seed);
        let torrent = dir.path().join(format!("{name}.torrent"));
        create_torrent(&content, &torrent, piece, tracker);
        Setup {
            dir,
            content,
            torrent,
        }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    fn magnet(&self) -> String {
        let out = shoal(&["magnet", s(&self.torrent)]);
        assert!(out.status.success(), "shoal magnet");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn metainfo(&self) -> Metainfo {
        Metainfo::from_bytes(&std::fs::read(&self.torrent).unwrap()).unwrap()
    }
}

/// Starts a libtorrent seeder of `setup` and waits until it listens.
fn lt_seeder(setup: &Setup) -> (ChildGuard, u16, std::path::PathBuf) {
    let log = setup.path("libtorrent-seed.log");
    let port = free_port();
    let child = Libtorrent {
        seed: true,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &setup.path("src"), port, &log);
    wait_until(LIMIT, "libtorrent to check its data", &[&log], || {
        libtorrent_finished(&log)
    });
    wait_listening(port, LIMIT, "libtorrent", &[&log]);
    (child, port, log)
}

#[test]
fn a_magnet_with_x_pe_fetches_the_metadata_from_libtorrent_and_downloads() {
    let setup = Setup::new("xpe.bin", 3 * 1024 * 1024 + 4321, "32768", None, 11);
    let (_lt, port, lt_log) = lt_seeder(&setup);
    let magnet = format!("{}&x.pe=127.0.0.1:{port}", setup.magnet());
    let out = setup.path("out");
    let log = setup.path("shoal.log");
    let mut dl = spawn_shoal(
        &[
            "download",
            &magnet,
            "-o",
            s(&out),
            "--listen",
            "127.0.0.1:0",
        ],
        &log,
    );
    wait_success(
        &mut dl,
        LIMIT,
        "shoal download of a magnet",
        &[&log, &lt_log],
    );
    assert_same_content(&setup.content, &out.join("xpe.bin"));
    // The metadata is kept next to the resume record: a second run fetches nothing.
    let hash = setup.metainfo().info_hash.to_string();
    let kept = out.join(".shoal").join(format!("{hash}.torrent"));
    let back = Metainfo::from_bytes(&std::fs::read(&kept).expect("kept .torrent")).unwrap();
    assert_eq!(back.info_hash.to_string(), hash);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("fetching the metadata"), "{text}");
    // Restart without any peer: the kept metadata and the resume record say it is complete.
    let log2 = setup.path("shoal2.log");
    let mut again = spawn_shoal(
        &[
            "download",
            &setup.magnet(),
            "-o",
            s(&out),
            "--listen",
            "127.0.0.1:0",
        ],
        &log2,
    );
    wait_success(&mut again, LIMIT, "a second shoal download", &[&log2]);
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(!text.contains("fetching the metadata"), "{text}");
}

#[test]
fn a_magnet_with_tr_finds_the_seeder_through_the_tracker() {
    let tracker_port = free_port();
    let tracker_log = tempdir();
    let tlog = tracker_log.path().join("tracker.log");
    let _tracker = spawn_shoal(
        &["tracker", "--listen", &format!("127.0.0.1:{tracker_port}")],
        &tlog,
    );
    wait_listening(tracker_port, LIMIT, "shoal tracker", &[&tlog]);
    let url = format!("http://127.0.0.1:{tracker_port}/announce");
    let setup = Setup::new("tr.bin", 2 * 1024 * 1024 + 77, "65536", Some(&url), 12);
    let seed_port = free_port();
    let seed_log = setup.path("seed.log");
    let _seed = spawn_shoal(
        &[
            "seed",
            s(&setup.torrent),
            s(&setup.content),
            "--listen",
            &format!("127.0.0.1:{seed_port}"),
        ],
        &seed_log,
    );
    wait_listening(seed_port, LIMIT, "shoal seed", &[&seed_log]);
    // The magnet names the tracker only.
    let magnet = setup.magnet();
    assert!(magnet.contains("tr="), "{magnet}");
    assert!(!magnet.contains("x.pe"), "{magnet}");
    let out = setup.path("out");
    let log = setup.path("shoal.log");
    let mut dl = spawn_shoal(
        &[
            "download",
            &magnet,
            "-o",
            s(&out),
            "--listen",
            "127.0.0.1:0",
        ],
        &log,
    );
    wait_success(
        &mut dl,
        LIMIT,
        "shoal download via tr=",
        &[&log, &seed_log, &tlog],
    );
    assert_same_content(&setup.content, &out.join("tr.bin"));
}

#[test]
fn libtorrent_holding_only_the_magnet_fetches_the_metadata_from_shoal() {
    let setup = Setup::new("ltmag.bin", 3 * 1024 * 1024 + 99, "16384", None, 13);
    let shoal_port = free_port();
    let listen = format!("127.0.0.1:{shoal_port}");
    let shoal_log = setup.path("shoal.log");
    let _seed = spawn_shoal(
        &[
            "seed",
            s(&setup.torrent),
            s(&setup.content),
            "--listen",
            &listen,
        ],
        &shoal_log,
    );
    wait_listening(shoal_port, LIMIT, "shoal seed", &[&shoal_log]);
    let out = setup.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let lt_log = setup.path("libtorrent.log");
    let mut lt = Libtorrent {
        peers: std::slice::from_ref(&listen),
        ..Libtorrent::default()
    }
    .spawn(Path::new(&setup.magnet()), &out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        LIMIT,
        "libtorrent magnet download",
        &[&lt_log, &shoal_log],
    );
    let text = std::fs::read_to_string(&lt_log).unwrap();
    assert!(text.contains("\"event\": \"metadata\""), "{text}");
    assert_same_content(&setup.content, &out.join("ltmag.bin"));
}

// ---------------------------------------------------------------------------------------------
// Scripted hostile peers over raw TCP, against the library

/// What a hostile peer does with metadata.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Advertises this `metadata_size` and answers nothing.
    Size(i64),
    /// Advertises the true size and answers every request with a piece index far out of range.
    OutOfRange,
    /// Advertises the true size and answers with garbage of the right lengths.
    BadHash,
}

/// Serves one hostile peer on a fresh port; returns its address.
fn hostile_peer(kind: Hostile, info_hash: [u8; 20], size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = hostile_conn(&mut stream, kind, info_hash, size);
            });
        }
    });
    addr
}

fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn extended(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![20, id];
    body.extend_from_slice(payload);
    let mut out = Vec::new();
    frame(&mut out, &body);
    out
}

fn hostile_conn(
    stream: &mut TcpStream,
    kind: Hostile,
    info_hash: [u8; 20],
    size: usize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut hs = [0u8; 68];
    stream.read_exact(&mut hs)?;
    let mut ours = Vec::with_capacity(68);
    ours.push(19);
    ours.extend_from_slice(b"BitTorrent protocol");
    ours.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
    ours.extend_from_slice(&info_hash);
    ours.extend_from_slice(b"-XX0001-hostilepeer!");
    stream.write_all(&ours)?;
    let advertised = match kind {
        Hostile::Size(n) => n,
        _ => size as i64,
    };
    let hs = format!("d1:md11:ut_metadatai3ee13:metadata_sizei{advertised}ee");
    stream.write_all(&extended(0, hs.as_bytes()))?;
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
            // A ut_metadata request, sent with our id 3: d8:msg_typei0e5:piecei<N>ee
            if len > 2 && body[0] == 20 && body[1] == 3 {
                let text = String::from_utf8_lossy(&body[2..]).to_string();
                let piece: usize = text
                    .split("5:piecei")
                    .nth(1)
                    .and_then(|r| r.split('e').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let (index, len) = match kind {
                    Hostile::OutOfRange => (piece + 1000, 16384.min(size)),
                    _ => (piece, (size - piece * 16384).min(16384)),
                };
                let mut payload =
                    format!("d8:msg_typei1e5:piecei{index}e10:total_sizei{size}ee").into_bytes();
                payload.extend(std::iter::repeat_n(0xAB, len));
                stream.write_all(&extended(2, &payload))?;
            }
        }
    }
}

/// A library session on loopback.
fn session() -> Session {
    Session::new(SessionSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        hasher_threads: 1,
        disk_threads: 1,
        ..SessionSettings::default()
    })
    .unwrap()
}

/// Runs a magnet download with `hostile` named first; when `wait_ban`, the good seeder is given
/// only after the hostile peer was banned. The download must complete byte-exact.
fn against_hostile(kind: Hostile, wait_ban: bool) {
    let setup = Setup::new("hostile.bin", 600_000, "16384", None, 20 + wait_ban as u64);
    let meta = Arc::new(setup.metainfo());
    let seeder = session();
    let seed = seeder
        .add(AddTorrent::seed(meta.clone(), setup.path("src")))
        .unwrap();
    let bad = hostile_peer(kind, meta.info_hash.0, meta.raw_info.len());
    let leecher = session();
    let mut add = AddMagnet::new(Magnet::from_metainfo(&meta), setup.path("out"));
    add.peers = vec![bad];
    let t = leecher.add_magnet_with(add).unwrap();
    let events = t.subscribe();
    leecher.block_on(async {
        let good = seeder.local_addr();
        let run = async {
            seed.wait_checked().await.unwrap();
            if wait_ban {
                loop {
                    match events.recv().await {
                        Ok(TorrentEvent::PeerBanned(a)) if a == bad => break,
                        Ok(_) => {}
                        Err(_) => panic!("events ended"),
                    }
                }
            } else {
                smol::Timer::after(Duration::from_millis(500)).await;
                assert_eq!(t.state(), shoal::TorrentState::Metadata);
                assert_eq!(t.progress().total_pieces, 0);
            }
            t.add_peers(vec![good]).await;
            t.wait_complete().await.unwrap();
        };
        future::or(run, async {
            smol::Timer::after(LIMIT).await;
            panic!("{kind:?}: timed out in state {}", t.state());
        })
        .await;
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
    assert_same_content(&setup.content, &setup.path("out").join("hostile.bin"));
}

#[test]
fn a_huge_metadata_size_is_refused_and_the_download_completes() {
    against_hostile(Hostile::Size(1 << 40), false);
}

#[test]
fn a_negative_metadata_size_is_refused_and_the_download_completes() {
    against_hostile(Hostile::Size(-5), false);
}

#[test]
fn metadata_pieces_out_of_range_get_the_peer_banned() {
    against_hostile(Hostile::OutOfRange, true);
}

#[test]
fn metadata_that_fails_the_hash_gets_its_sole_sender_banned() {
    against_hostile(Hostile::BadHash, true);
}

/// Magnet to metadata from one loopback libtorrent seeder: shoal (the library) against a
/// libtorrent downloader, side by side. Prints the figures; run with
/// `cargo test --release --test magnet -- --ignored --nocapture magnet_to_metadata_bench`.
#[test]
#[ignore]
fn magnet_to_metadata_bench() {
    // 8 MiB in 16 KiB pieces: 512 hashes, a 10 KiB info dictionary (one metadata piece);
    // 64 MiB in 16 KiB pieces: 4,096 hashes, 80 KiB (five metadata pieces).
    for (total, name) in [(8u64 << 20, "small.bin"), (64u64 << 20, "large.bin")] {
        let setup = Setup::new(name, total, "16384", None, 30);
        let (_lt, port, lt_log) = lt_seeder(&setup);
        let peer: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let meta = setup.metainfo();
        let mut shoal_times = Vec::new();
        for round in 0..5 {
            let leecher = session();
            let mut add = AddMagnet::new(
                Magnet::from_metainfo(&meta),
                setup.path(&format!("out{round}")),
            );
            add.peers = vec![peer];
            add.paused = true;
            let start = Instant::now();
            let t = leecher.add_magnet_with(add).unwrap();
            let events = t.subscribe();
            leecher.block_on(async {
                loop {
                    match events.recv().await {
                        Ok(TorrentEvent::MetadataReceived) => break,
                        Ok(_) => {}
                        Err(_) => panic!("events ended"),
                    }
                }
            });
            shoal_times.push(start.elapsed().as_secs_f64());
            leecher.block_on(leecher.shutdown());
        }
        let mut lt_times = Vec::new();
        for round in 0..5 {
            let out = setup.path(&format!("lt{round}"));
            std::fs::create_dir_all(&out).unwrap();
            let log = setup.path(&format!("lt{round}.log"));
            let peers = [peer.to_string()];
            let _lt = Libtorrent {
                peers: &peers,
                ..Libtorrent::default()
            }
            .spawn(Path::new(&setup.magnet()), &out, free_port(), &log);
            let mut secs = None;
            wait_until(
                LIMIT,
                "libtorrent to get the metadata",
                &[&log, &lt_log],
                || {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    secs = text
                        .lines()
                        .find(|l| l.contains("\"event\": \"metadata\""))
                        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .and_then(|v| v["seconds"].as_f64());
                    secs.is_some()
                },
            );
            lt_times.push(secs.unwrap());
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        println!(
            "magnet to metadata, {} KiB info dictionary, from a loopback libtorrent seeder: \
             shoal median {:.3} s (min {:.3}), libtorrent median {:.3} s (min {:.3})",
            meta.raw_info.len() / 1024,
            med(&mut shoal_times),
            shoal_times[0],
            med(&mut lt_times),
            lt_times[0]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Peer exchange (BEP 11)

/// libtorrent sends PEX about once a minute: two minutes and a half leave room for one message.
const PEX_LIMIT: Duration = Duration::from_secs(150);

#[test]
fn shoal_learns_the_seeder_from_a_peer_that_has_nothing() {
    let setup = Setup::new("pex-in.bin", 2 * 1024 * 1024 + 5, "32768", None, 40);
    let (_seed, seed_port, seed_log) = lt_seeder(&setup);
    // A libtorrent peer that downloads next to nothing (1 KiB/s) but stays connected to the
    // seeder. (Upload mode would not do: libtorrent never connects an upload-only peer to a
    // seed.)
    let empty = setup.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let b_log = setup.path("libtorrent-empty.log");
    let b_port = free_port();
    let seed_addr = [format!("127.0.0.1:{seed_port}")];
    let _b = Libtorrent {
        peers: &seed_addr,
        download_limit: 1024,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &empty, b_port, &b_log);
    wait_listening(b_port, LIMIT, "libtorrent (empty)", &[&b_log]);
    wait_until(
        LIMIT,
        "the empty peer to connect to the seeder",
        &[&b_log],
        || {
            std::fs::read_to_string(&b_log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("\"peers\": 1"))
        },
    );
    // shoal is told of the empty peer only.
    let out = setup.path("out");
    let log = setup.path("shoal.log");
    let mut dl = spawn_shoal(
        &[
            "download",
            s(&setup.torrent),
            "-o",
            s(&out),
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &format!("127.0.0.1:{b_port}"),
        ],
        &log,
    );
    wait_success(
        &mut dl,
        PEX_LIMIT,
        "shoal download via PEX",
        &[&log, &b_log, &seed_log],
    );
    assert_same_content(&setup.content, &out.join("pex-in.bin"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("peers (PEX)"), "no PEX message in the log");
}

#[test]
fn libtorrent_learns_the_seeder_from_shoals_pex() {
    let setup = Setup::new("pex-out.bin", 6 * 1024 * 1024 + 5, "65536", None, 41);
    // The seeder is slow, so the downloads overlap long enough for PEX to matter.
    let seed_log = setup.path("libtorrent-seed.log");
    let seed_port = free_port();
    let _seed = Libtorrent {
        seed: true,
        upload_limit: 400 * 1024,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &setup.path("src"), seed_port, &seed_log);
    wait_until(LIMIT, "libtorrent to check its data", &[&seed_log], || {
        libtorrent_finished(&seed_log)
    });
    wait_listening(seed_port, LIMIT, "libtorrent", &[&seed_log]);
    let shoal_port = free_port();
    let listen = format!("127.0.0.1:{shoal_port}");
    let out = setup.path("out");
    let log = setup.path("shoal.log");
    let _dl = spawn_shoal(
        &[
            "download",
            s(&setup.torrent),
            "-o",
            s(&out),
            "--listen",
            &listen,
            "--peer",
            &format!("127.0.0.1:{seed_port}"),
            "--seed",
        ],
        &log,
    );
    wait_listening(shoal_port, LIMIT, "shoal", &[&log]);
    // A libtorrent downloader told only of shoal.
    let lt_out = setup.path("lt-out");
    std::fs::create_dir_all(&lt_out).unwrap();
    let lt_log = setup.path("libtorrent.log");
    let mut lt = Libtorrent {
        peers: std::slice::from_ref(&listen),
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &lt_out, free_port(), &lt_log);
    wait_success(
        &mut lt,
        PEX_LIMIT,
        "libtorrent download",
        &[&lt_log, &log, &seed_log],
    );
    let text = std::fs::read_to_string(&lt_log).unwrap();
    let finished: serde_json::Value = text
        .lines()
        .find(|l| l.contains("\"event\": \"finished\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("finished line");
    assert!(
        finished["pex_seen"].as_u64().unwrap_or(0) >= 1,
        "libtorrent never connected to a peer it learned through PEX: {finished}"
    );
    assert_same_content(&setup.content, &lt_out.join("pex-out.bin"));
}

/// A peer whose PEX message lists 10,000 peers: bounded (at most 200 taken), nothing panics,
/// the download completes.
#[test]
fn a_pex_message_of_ten_thousand_peers_is_bounded() {
    let setup = Setup::new("pexflood.bin", 600_000, "16384", None, 42);
    let meta = Arc::new(setup.metainfo());
    let seeder = session();
    let seed = seeder
        .add(AddTorrent::seed(meta.clone(), setup.path("src")))
        .unwrap();
    // The flooder: handshake, extension handshake with ut_pex, then one huge ut_pex message.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = listener.local_addr().unwrap();
    let hash = meta.info_hash.0;
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = (|| -> std::io::Result<()> {
            let mut hs = [0u8; 68];
            stream.read_exact(&mut hs)?;
            let mut ours = vec![19];
            ours.extend_from_slice(b"BitTorrent protocol");
            ours.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
            ours.extend_from_slice(&hash);
            ours.extend_from_slice(b"-XX0001-pexflooder!!");
            stream.write_all(&ours)?;
            stream.write_all(&extended(0, b"d1:md6:ut_pexi7eee"))?;
            let mut added = Vec::new();
            for i in 0..10_000u32 {
                added.extend_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                added.extend_from_slice(&6881u16.to_be_bytes());
            }
            let mut payload = format!("d5:added{}:", added.len()).into_bytes();
            payload.extend_from_slice(&added);
            payload.extend_from_slice(b"e");
            // Our ut_pex id is 1.
            stream.write_all(&extended(1, &payload))?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink)? > 0 {}
            Ok(())
        })();
    });
    let leecher = session();
    let mut add = AddTorrent::download(meta.clone(), setup.path("out"));
    add.peers = vec![bad, seeder.local_addr()];
    leecher.block_on(async {
        seed.wait_checked().await.unwrap();
        let t = leecher.add(add).unwrap();
        future::or(async { t.wait_complete().await.unwrap() }, async {
            smol::Timer::after(LIMIT).await;
            panic!("timed out");
        })
        .await;
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
    assert_same_content(&setup.content, &setup.path("out").join("pexflood.bin"));
}
