//! The DHT on loopback, against python3-libtorrent 2.0.8 nodes (tests/helpers/lt_dht.py) and
//! scripted hostile nodes over real UDP:
//! - a trackerless torrent: `shoal download` finds a libtorrent seeder through the DHT alone;
//! - `shoal seed` announces into the DHT; a libtorrent downloader bootstrapped at shoal's node
//!   finds it there and downloads from it;
//! - 50 shoal nodes (one process, one runtime) and 2 libtorrent nodes: a torrent announced by
//!   one shoal node is found from every other node;
//! - hostile datagrams: a `get_peers` flood, a reply carrying thousands of nodes, forged
//!   tokens, malformed packets: no panic, every table bounded, the node still answers.
//!
//! Run with `cargo test --release --test dht -- --test-threads=2`.

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;
use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Pools, Session, SessionSettings};
use shoal_actors::torrent::AddTorrent;
use shoal_engine::dht::krpc::{Body, CompactNode, Message, Query, Response, Tid, Token};
use shoal_engine::dht::NodeId;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::InfoHash;

const MIB: u64 = 1024 * 1024;

/// Bound for a whole DHT transfer test.
const TRANSFER: Duration = Duration::from_secs(90);

/// `n` bare libtorrent DHT nodes bootstrapped from each other (node 0 from node 1, the others
/// from node 0); their ports.
fn lt_nodes(dir: &Path, n: usize, extra_bootstrap: &[String]) -> (Vec<u16>, Vec<ChildGuard>) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut children = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let boot = if i == 0 && n > 1 { ports[1] } else { ports[0] };
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--timeout".into(),
            "300".into(),
        ];
        if boot != *port {
            args.extend(["--bootstrap".into(), format!("127.0.0.1:{boot}")]);
        }
        for b in extra_bootstrap {
            args.extend(["--bootstrap".into(), b.clone()]);
        }
        children.push(spawn_lt_dht(&args, &dir.join(format!("lt-node-{i}.log"))));
    }
    (ports, children)
}

#[test]
fn shoal_finds_a_libtorrent_seeder_through_the_dht_alone() {
    let dir = tempdir();
    let d = dir.path();
    let content = make_content(d, "dht-a", Shape::Multi, 3 * MIB + 12_345, 7);
    let torrent = d.join("a.torrent");
    create_torrent(&content, &torrent, "65536", None);
    let (nodes, _lt) = lt_nodes(d, 3, &[]);
    let seed_log = d.join("lt-seeder.log");
    let seed_port = free_port();
    let _seeder = spawn_lt_dht(
        &[
            "--port".into(),
            seed_port.to_string(),
            "--bootstrap".into(),
            format!("127.0.0.1:{}", nodes[0]),
            "--torrent".into(),
            torrent.display().to_string(),
            "--save-path".into(),
            d.display().to_string(),
            "--seed".into(),
            "--timeout".into(),
            "300".into(),
        ],
        &seed_log,
    );
    let out = d.join("out");
    let shoal_log = d.join("shoal.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let boot = format!("127.0.0.1:{}", nodes[1]);
    let mut shoal = spawn_shoal(
        &[
            "download",
            torrent.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--listen",
            &listen,
            "--dht-bootstrap",
            &boot,
            "--no-lsd",
        ],
        &shoal_log,
    );
    wait_success(
        &mut shoal,
        TRANSFER,
        "shoal download through the dht",
        &[&shoal_log, &seed_log],
    );
    assert_same_content(&content, &out.join("dht-a"));
    let log = std::fs::read_to_string(&shoal_log).unwrap();
    assert!(log.contains("dht: "), "no dht activity logged:\n{log}");
}

#[test]
fn a_magnet_alone_finds_a_libtorrent_seeder_through_the_dht() {
    let dir = tempdir();
    let d = dir.path();
    let content = make_content(d, "dht-m", Shape::Single, 2 * MIB + 4_321, 9);
    let torrent = d.join("m.torrent");
    let info_hash = create_torrent(&content, &torrent, "32768", None);
    let (nodes, _lt) = lt_nodes(d, 3, &[]);
    let seed_log = d.join("lt-seeder.log");
    let _seeder = spawn_lt_dht(
        &[
            "--port".into(),
            free_port().to_string(),
            "--bootstrap".into(),
            format!("127.0.0.1:{}", nodes[0]),
            "--torrent".into(),
            torrent.display().to_string(),
            "--save-path".into(),
            d.display().to_string(),
            "--seed".into(),
            "--timeout".into(),
            "300".into(),
        ],
        &seed_log,
    );
    // No tracker, no peer: the info hash alone, found through the DHT, metadata and all.
    let magnet = format!("magnet:?xt=urn:btih:{info_hash}&dn=dht-m");
    let out = d.join("out");
    let shoal_log = d.join("shoal.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let boot = format!("127.0.0.1:{}", nodes[1]);
    let mut shoal = spawn_shoal(
        &[
            "download",
            &magnet,
            "-o",
            out.to_str().unwrap(),
            "--listen",
            &listen,
            "--dht-bootstrap",
            &boot,
            "--no-lsd",
        ],
        &shoal_log,
    );
    wait_success(
        &mut shoal,
        TRANSFER,
        "shoal download of a magnet through the dht",
        &[&shoal_log, &seed_log],
    );
    assert_same_content(&content, &out.join("dht-m"));
}

#[test]
fn libtorrent_finds_shoal_seeding_in_the_dht() {
    let dir = tempdir();
    let d = dir.path();
    let content = make_content(d, "dht-b", Shape::Single, 2 * MIB + 999, 8);
    let torrent = d.join("b.torrent");
    let info_hash = create_torrent(&content, &torrent, "32768", None);
    let (nodes, _lt) = lt_nodes(d, 2, &[]);
    let shoal_log = d.join("shoal.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let boot = format!("127.0.0.1:{}", nodes[0]);
    let _shoal = spawn_shoal(
        &[
            "seed",
            torrent.to_str().unwrap(),
            content.to_str().unwrap(),
            "--listen",
            &listen,
            "--dht-bootstrap",
            &boot,
            "--no-lsd",
        ],
        &shoal_log,
    );
    wait_listening(port, Duration::from_secs(20), "shoal", &[&shoal_log]);
    // The downloader knows nothing but shoal's DHT node.
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lt_log = d.join("lt-downloader.log");
    // It also looks the torrent up itself (--lookup), to show the DHT lists shoal: the
    // transfer alone could also come from shoal dialling it, once shoal finds its announce.
    let _lt = spawn_lt_dht(
        &[
            "--port".into(),
            free_port().to_string(),
            "--bootstrap".into(),
            listen.clone(),
            "--torrent".into(),
            torrent.display().to_string(),
            "--save-path".into(),
            out.display().to_string(),
            "--seed".into(),
            "--lookup".into(),
            info_hash.clone(),
            "--timeout".into(),
            "85".into(),
        ],
        &lt_log,
    );
    wait_until(
        TRANSFER,
        "libtorrent downloads from shoal and finds it in the dht",
        &[&lt_log, &shoal_log],
        || {
            !json_events(&lt_log, "finished").is_empty()
                && json_events(&lt_log, "lookup").iter().any(|e| {
                    e["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p.as_str() == Some(listen.as_str())))
                })
        },
    );
    assert_same_content(&content, &out.join("dht-b"));
}

/// The info hash as 40 hex digits.
fn hex(h: &InfoHash) -> String {
    h.0.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_torrent_announced_by_one_of_50_shoal_nodes_is_found_from_every_node() {
    const SHOAL_NODES: usize = 50;
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempdir();
    let d = dir.path();
    let content = make_content(d, "dht-c", Shape::Single, 300_000, 9);
    let torrent = d.join("c.torrent");
    create_torrent(&content, &torrent, "16384", None);
    let meta = Arc::new(Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap());

    let rt = Runtime::new(2);
    let pools = Pools::new(1, 1);
    let settings = |bootstrap: Vec<String>| SessionSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        dht_bootstrap: bootstrap,
        lsd: false,
        ..SessionSettings::default()
    };
    let first = Session::with_pools(settings(vec![]), rt.handle(), pools.clone()).unwrap();
    let first_udp = first.udp_addr().expect("dht socket").to_string();
    let (lt_ports, _lt) = lt_nodes(d, 2, std::slice::from_ref(&first_udp));
    let lt0 = format!("127.0.0.1:{}", lt_ports[0]);
    // The libtorrent nodes are up (they joined through the first shoal node) before anyone
    // bootstraps from them.
    for i in 0..2 {
        let log = d.join(format!("lt-node-{i}.log"));
        wait_until(
            Duration::from_secs(20),
            "libtorrent node joined",
            &[&log],
            || {
                json_events(&log, "status")
                    .iter()
                    .any(|e| e["dht_nodes"].as_u64().unwrap_or(0) > 0)
            },
        );
    }
    let mut sessions = vec![first];
    for i in 1..SHOAL_NODES {
        // Most join through the first shoal node and a libtorrent node; every fifth through
        // a libtorrent node alone.
        let boot = if i % 5 == 0 {
            vec![lt0.clone()]
        } else {
            vec![first_udp.clone(), lt0.clone()]
        };
        sessions.push(Session::with_pools(settings(boot), rt.handle(), pools.clone()).unwrap());
    }

    // Wait until every routing table holds a few nodes.
    let started = Instant::now();
    let table_sizes = |sessions: &[Session]| -> Vec<usize> {
        rt.block_on(async {
            let mut v = Vec::new();
            for s in sessions {
                v.push(s.dht_stats().await.map_or(0, |st| st.nodes));
            }
            v
        })
    };
    while table_sizes(&sessions).iter().any(|&n| n < 4) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "routing tables: {:?}",
            table_sizes(&sessions)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("routing tables: {:?}", table_sizes(&sessions));
    eprintln!("tables filled in {:?}", started.elapsed());

    // One node seeds (and so announces) the torrent.
    let announcer = 17;
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(content.clone());
    add.settings.use_trackers = false;
    let seeder_addr = sessions[announcer].local_addr();
    rt.block_on(sessions[announcer].add_torrent(add)).unwrap();

    // libtorrent nodes look it up too.
    let lt_logs: Vec<PathBuf> = (0..2)
        .map(|i| d.join(format!("lt-lookup-{i}.log")))
        .collect();
    let _lookers: Vec<ChildGuard> = lt_logs
        .iter()
        .map(|log| {
            spawn_lt_dht(
                &[
                    "--port".into(),
                    free_port().to_string(),
                    "--bootstrap".into(),
                    first_udp.clone(),
                    "--lookup".into(),
                    hex(&meta.info_hash),
                    "--timeout".into(),
                    "120".into(),
                ],
                log,
            )
        })
        .collect();

    let want = seeder_addr;
    let mut queries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, s) in sessions.iter().enumerate() {
        if i == announcer {
            continue;
        }
        loop {
            let found = rt.block_on(s.dht_lookup(meta.info_hash));
            if let Some(r) = &found {
                if r.peers.contains(&want) {
                    queries.push(r.queries);
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never found {want} (last lookup: {found:?})"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("every shoal node found it after {:?}", started.elapsed());
    let want = want.to_string();
    for log in &lt_logs {
        wait_until(
            Duration::from_secs(60),
            "libtorrent lookup finds the shoal announcer",
            &[log],
            || {
                json_events(log, "lookup").iter().any(|e| {
                    e["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p.as_str() == Some(want.as_str())))
                })
            },
        );
    }
    eprintln!(
        "the libtorrent nodes found it after {:?}",
        started.elapsed()
    );
    queries.sort_unstable();
    eprintln!(
        "{} shoal lookups found it; queries per lookup: median {}, max {}",
        queries.len(),
        queries[queries.len() / 2],
        queries[queries.len() - 1]
    );
    let stored: usize = rt.block_on(async {
        let mut n = 0;
        for s in &sessions {
            n += s.dht_stats().await.map_or(0, |st| st.stored_peers);
        }
        n
    });
    assert!(stored >= 1, "no node stored the announce");
    rt.block_on(async {
        for s in &sessions {
            s.shutdown().await;
        }
        pools.shutdown().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Hostile nodes

/// A session with a DHT node on loopback and no bootstrap; its UDP address.
fn lone_node(rt: &Runtime, bootstrap: Vec<String>) -> (Session, SocketAddr) {
    let _ = env_logger::builder().is_test(true).try_init();
    let s = Session::with_spawner(
        SessionSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dht_bootstrap: bootstrap,
            lsd: false,
            ..SessionSettings::default()
        },
        rt.handle(),
    )
    .unwrap();
    let udp = s.udp_addr().expect("dht socket");
    (s, udp)
}

fn query(tid: u16, id: NodeId, q: Query) -> Vec<u8> {
    Message {
        tid: Tid::new(&tid.to_be_bytes()).unwrap(),
        body: Body::Query {
            id,
            query: q,
            read_only: false,
        },
        ip: None,
    }
    .to_bytes()
}

/// Reads datagrams until `quiet` passes with none; returns them decoded.
fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<Message> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if let Ok(m) = Message::decode(&buf[..n]) {
            out.push(m);
        }
    }
    out
}

/// A ping answered by `node` within a second.
fn answers_ping(sock: &UdpSocket, node: SocketAddr) -> bool {
    let _ = drain(sock, Duration::from_millis(50));
    sock.send_to(&query(0xbeef, NodeId([9; 20]), Query::Ping), node)
        .unwrap();
    drain(sock, Duration::from_millis(1000))
        .iter()
        .any(|m| m.tid.as_bytes() == [0xbe, 0xef] && matches!(m.body, Body::Response(_)))
}

#[test]
fn a_get_peers_flood_is_rate_limited() {
    let rt = Runtime::new(1);
    let (session, node) = lone_node(&rt, vec![]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let sent = 5_000u16;
    for i in 0..sent {
        let q = Query::GetPeers {
            info_hash: InfoHash([(i % 251) as u8; 20]),
        };
        let _ = sock.send_to(&query(i, NodeId([1; 20]), q), node);
    }
    let replies = drain(&sock, Duration::from_millis(700)).len();
    let secs = started.elapsed().as_secs_f64();
    // Burst of 20, then 5 a second (shoal_engine::dht::QUERY_BURST and QUERY_RATE_PER_SEC).
    let bound = 20.0 + 5.0 * secs + 5.0;
    assert!(
        (replies as f64) <= bound,
        "{replies} replies to a flood of {sent} in {secs:.1}s"
    );
    assert!(replies >= 10, "not even the burst was answered: {replies}");
    let stats = rt.block_on(session.dht_stats()).unwrap();
    assert!(stats.rate_limited > 0, "{stats:?}");
    assert_eq!(stats.stored_peers, 0);
    // Another address is still served.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(answers_ping(&other, node));
    rt.block_on(session.shutdown());
}

#[test]
fn forged_tokens_are_refused_and_malformed_packets_ignored() {
    let rt = Runtime::new(1);
    let (session, node) = lone_node(&rt, vec![]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let info_hash = InfoHash([0x42; 20]);
    // A token we never got.
    for (i, forged) in [&b"forged!!"[..], &[0u8; 4][..], &[0xff; 20][..]]
        .iter()
        .enumerate()
    {
        let q = Query::AnnouncePeer {
            info_hash,
            port: 6881,
            implied_port: false,
            token: Token::new(forged).unwrap(),
        };
        sock.send_to(&query(i as u16, NodeId([3; 20]), q), node)
            .unwrap();
    }
    let replies = drain(&sock, Duration::from_millis(500));
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(
        replies.iter().all(|m| matches!(m.body, Body::Error { .. })),
        "{replies:?}"
    );
    // The control: a token the node gave (tokens are bound to the IP, as BEP 5 says) is
    // accepted, so the refusals above were the tokens' fault.
    sock.send_to(
        &query(7, NodeId([3; 20]), Query::GetPeers { info_hash }),
        node,
    )
    .unwrap();
    let token = drain(&sock, Duration::from_millis(500))
        .into_iter()
        .find_map(|m| match m.body {
            Body::Response(r) => r.token,
            _ => None,
        })
        .expect("a token");
    let q = Query::AnnouncePeer {
        info_hash,
        port: 6881,
        implied_port: false,
        token,
    };
    sock.send_to(&query(8, NodeId([3; 20]), q), node).unwrap();
    let replies = drain(&sock, Duration::from_millis(500));
    assert!(
        replies
            .iter()
            .any(|m| m.tid.as_bytes() == [0, 8] && matches!(m.body, Body::Response(_))),
        "{replies:?}"
    );
    let stats = rt.block_on(session.dht_stats()).unwrap();
    assert_eq!(stats.stored_peers, 1, "{stats:?}");
    assert_eq!(stats.bad_tokens, 3, "{stats:?}");

    // Malformed datagrams: truncated, wrong types, huge lengths, deep nesting, binary noise.
    let mut junk: Vec<Vec<u8>> = vec![
        b"d".to_vec(),
        b"de".to_vec(),
        b"d1:y1:q1:q4:pinge".to_vec(),
        b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe".to_vec(),
        b"d1:ad2:id20:abcdefghij0123456789e1:q9:get_peers1:t2:aa1:y1:qe".to_vec(),
        b"d1:rd2:id20:abcdefghij01234567895:nodes99999:xe1:t2:aa1:y1:re".to_vec(),
        b"d1:y1:e1:eli201e23:aaaaaaaaaaaaaaaaaaaaaaaee".to_vec(),
        b"d1:t2:aa1:y1:qi99999999999999999999999999999ee".to_vec(),
        [b'd'; 1500].to_vec(),
        b"d9999999999999999999:x".to_vec(),
    ];
    let mut nested = b"d1:ad2:id20:abcdefghij01234567891:x".to_vec();
    nested.extend(std::iter::repeat_n(b'l', 1000));
    junk.push(nested);
    let mut rng = fastrand::Rng::with_seed(12);
    for _ in 0..300 {
        let mut b = vec![b'd'];
        b.extend((0..rng.usize(0..600)).map(|_| rng.u8(..)));
        junk.push(b);
    }
    for j in &junk {
        sock.send_to(j, node).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let fresh = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(answers_ping(&fresh, node), "the node stopped answering");
    let stats = rt.block_on(session.dht_stats()).unwrap();
    assert!(stats.nodes <= 8, "{stats:?}");
    rt.block_on(session.shutdown());
}

#[test]
fn replies_carrying_thousands_of_nodes_are_bounded() {
    let rt = Runtime::new(1);
    // We are shoal's only bootstrap node: it asks us, and we answer with floods of nodes.
    let hostile = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hostile_addr = hostile.local_addr().unwrap();
    let (session, node) = lone_node(&rt, vec![hostile_addr.to_string()]);
    hostile
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok((n, from)) = hostile.recv_from(&mut buf) else {
            continue;
        };
        let Ok(m) = Message::decode(&buf[..n]) else {
            continue;
        };
        if !matches!(m.body, Body::Query { .. }) {
            continue;
        }
        // Thousands of nodes: the most one datagram can carry (2,500), and as many as fit in
        // the 2 KiB shoal reads (78), all pointing at loopback ports nobody listens on.
        for count in [2_500usize, 78] {
            let nodes: Vec<CompactNode> = (0..count)
                .map(|_| CompactNode {
                    id: NodeId(std::array::from_fn(|_| rng.u8(..))),
                    addr: SocketAddrV4::new([127, 0, 0, 1].into(), rng.u16(1024..)),
                })
                .collect();
            let reply = Message {
                tid: m.tid,
                body: Body::Response(Response {
                    id: NodeId([0x77; 20]),
                    nodes,
                    values: Vec::new(),
                    token: None,
                }),
                ip: None,
            };
            let _ = hostile.send_to(&reply.to_bytes(), from);
        }
        answered += 1;
    }
    assert!(answered >= 1, "shoal never queried its bootstrap node");
    let stats = rt.block_on(session.dht_stats()).unwrap();
    // A routing table holds at most 8 nodes per bucket; all these are strangers that never
    // answer, and one reply is cut at MAX_NODES_PER_REPLY (16) contacts.
    assert!(stats.nodes <= 8 * 160, "{stats:?}");
    assert!(
        stats.in_flight <= shoal_engine::dht::MAX_TRANSACTIONS,
        "{stats:?}"
    );
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(answers_ping(&probe, node), "the node stopped answering");
    rt.block_on(session.shutdown());
}

#[test]
fn the_routing_table_is_saved_and_reloaded() {
    let rt = Runtime::new(1);
    let dir = tempdir();
    let state = dir.path().join("state");
    let (other, other_udp) = lone_node(&rt, vec![]);
    let with_state = |bootstrap: Vec<String>| {
        Session::with_spawner(
            SessionSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                dht_bootstrap: bootstrap,
                lsd: false,
                state_dir: Some(state.clone()),
                ..SessionSettings::default()
            },
            rt.handle(),
        )
        .unwrap()
    };
    let first = with_state(vec![other_udp.to_string()]);
    wait_until(Duration::from_secs(10), "bootstrapped", &[], || {
        rt.block_on(first.dht_stats()).is_some_and(|s| s.nodes >= 1)
    });
    rt.block_on(first.shutdown());
    let saved = state.join("dht.dat");
    assert!(saved.exists(), "no routing table saved");
    // No bootstrap node this time: the table comes from the file.
    let second = with_state(vec![]);
    wait_until(Duration::from_secs(5), "table reloaded", &[], || {
        rt.block_on(second.dht_stats())
            .is_some_and(|s| s.nodes >= 1)
    });
    // A corrupt file is ignored, never fatal.
    rt.block_on(second.shutdown());
    std::fs::write(&saved, b"d2:id3:abce").unwrap();
    let third = with_state(vec![]);
    assert!(rt.block_on(third.dht_stats()).is_some());
    rt.block_on(third.shutdown());
    rt.block_on(other.shutdown());
}
