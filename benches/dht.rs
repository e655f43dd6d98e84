//! A loopback DHT of 200 shoal nodes (one process, one runtime) and 4 libtorrent nodes: one
//! shoal node seeds a torrent (so announces it), then `get_peers` lookups from shoal nodes and
//! from the libtorrent nodes, in the same run: latency, queries per lookup, and whether the
//! lookup found the announcer. Then memory: the engine's per-entry sizes for 1,000 routing
//! entries and 1,000 stored peers, and RSS measured around filling them.
//!
//! Run with `cargo bench --bench dht` (or `cargo bench --bench dht -- 50` for 50 shoal nodes).

#[path = "support/mod.rs"]
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Pools, Session, SessionSettings};
use shoal_actors::torrent::AddTorrent;
use shoal_engine::dht::krpc::{Body, Message, Query, Tid};
use shoal_engine::dht::{memory_estimate, NodeId};
use shoal_engine::metainfo::Metainfo;
use shoal_engine::InfoHash;
use support::*;

/// libtorrent nodes in the DHT.
const LT_NODES: usize = 4;

/// Lookups measured from shoal nodes.
const SHOAL_LOOKUPS: usize = 100;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn settings(bootstrap: Vec<String>) -> SessionSettings {
    SessionSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        dht_bootstrap: bootstrap,
        lsd: false,
        ..SessionSettings::default()
    }
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    println!(
        "dht bench: {n} shoal nodes, {LT_NODES} libtorrent nodes; {}",
        machine()
    );
    let dir = bench_dir("dht");
    let data = data_file(&dir, 1);
    let torrent = torrent_for(&data, 16 << 10);
    let meta = Arc::new(Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap());

    let rt = Runtime::new(2);
    let pools = Pools::new(1, 1);
    let rss_start = rss_kib();
    let first = Session::with_pools(settings(vec![]), rt.handle(), pools.clone()).unwrap();
    let first_udp = first.udp_addr().unwrap().to_string();
    let mut sessions = vec![first];
    for _ in 1..n {
        sessions.push(
            Session::with_pools(
                settings(vec![first_udp.clone()]),
                rt.handle(),
                pools.clone(),
            )
            .unwrap(),
        );
    }
    let lt = have_libtorrent();
    let hex: String = meta
        .info_hash
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut lt_procs = Vec::new();
    if lt {
        for _ in 0..LT_NODES {
            let mut cmd = Command::new("/usr/bin/python3");
            cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/lt_dht.py"))
                .args([
                    "--port",
                    &free_port().to_string(),
                    "--bootstrap",
                    &first_udp,
                ])
                .args(["--lookup", &hex, "--timeout", "120"]);
            lt_procs.push(Proc::spawn(cmd));
        }
    } else {
        println!("  (python3-libtorrent missing: shoal figures only)");
    }

    // Tables fill (bootstrap plus the queries of the others).
    let started = Instant::now();
    let sizes = || -> Vec<usize> {
        rt.block_on(async {
            let mut v = Vec::new();
            for s in &sessions {
                v.push(s.dht_stats().await.map_or(0, |st| st.nodes));
            }
            v
        })
    };
    while sizes().iter().any(|&s| s < 8) && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = sizes();
    let entries: usize = table.iter().sum();
    let rss_tables = rss_kib();
    println!(
        "  routing tables after {:.1}s: {} entries in all, {}..{} per node",
        started.elapsed().as_secs_f64(),
        entries,
        table.iter().min().unwrap(),
        table.iter().max().unwrap()
    );

    // One node seeds, and so announces.
    let announcer = n / 2;
    let mut add = AddTorrent::seed(meta.clone(), PathBuf::new());
    add.content = Some(data.clone());
    add.settings.use_trackers = false;
    let want = sessions[announcer].local_addr();
    rt.block_on(sessions[announcer].add_torrent(add)).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let mut rng = fastrand::Rng::with_seed(7);
    let mut latency = Vec::new();
    let mut queries = Vec::new();
    let mut found = 0;
    for _ in 0..SHOAL_LOOKUPS {
        let i = loop {
            let i = rng.usize(..n);
            if i != announcer {
                break i;
            }
        };
        let t = Instant::now();
        let r = rt.block_on(sessions[i].dht_lookup(meta.info_hash));
        latency.push(t.elapsed().as_secs_f64() * 1000.0);
        if let Some(r) = r {
            queries.push(r.queries as f64);
            found += usize::from(r.peers.contains(&want));
        }
    }
    println!(
        "  shoal lookups: {found}/{SHOAL_LOOKUPS} found the announcer; latency median {:.1} ms, p90 {:.1} ms; queries per lookup median {:.0}, p90 {:.0}",
        percentile(&mut latency, 0.5),
        percentile(&mut latency, 0.9),
        percentile(&mut queries, 0.5),
        percentile(&mut queries, 0.9)
    );

    if lt {
        let mut lt_latency = Vec::new();
        let mut lt_found = 0;
        let mut lt_total = 0;
        let want = want.to_string();
        for p in &mut lt_procs {
            // Each node looks up every 2 s; take its first 5 answers.
            for _ in 0..5 {
                let Some((_, line)) = p.wait_line("\"event\": \"lookup\"", Duration::from_secs(20))
                else {
                    break;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                lt_total += 1;
                lt_latency.push(v["seconds"].as_f64().unwrap_or(0.0) * 1000.0);
                if v["peers"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p.as_str() == Some(want.as_str())))
                {
                    lt_found += 1;
                }
            }
        }
        if lt_latency.is_empty() {
            println!("  libtorrent lookups: none answered");
        } else {
            println!(
                "  libtorrent lookups: {lt_found}/{lt_total} found the announcer; latency median {:.1} ms, p90 {:.1} ms (timed by the helper's 2 ms loop; its query count is not exposed)",
                percentile(&mut lt_latency, 0.5),
                percentile(&mut lt_latency, 0.9)
            );
        }
    }

    // Memory.
    let est = memory_estimate();
    println!(
        "  engine sizes: {} B per routing entry ({:.1} KiB per 1,000); {} B per stored peer ({:.1} KiB per 1,000) + {} B per stored torrent",
        est.bytes_per_routing_entry,
        est.bytes_per_routing_entry as f64 * 1000.0 / 1024.0,
        est.bytes_per_stored_peer,
        est.bytes_per_stored_peer as f64 * 1000.0 / 1024.0,
        est.bytes_per_stored_info_hash
    );
    println!(
        "  RSS: {:.1} MiB for {n} sessions with {entries} routing entries ({:.0} KiB per session, sessions' sockets, tasks and tables together)",
        (rss_tables.saturating_sub(rss_start)) as f64 / 1024.0,
        (rss_tables.saturating_sub(rss_start)) as f64 / n as f64
    );

    // 1,000 stored peers (then 10,000) in one node, announced over UDP by 500 sockets.
    let target = sessions[0].udp_addr().unwrap();
    let before = rss_kib();
    let mut stored_rounds = Vec::new();
    for round in 0..2u16 {
        // 10 torrents per socket keeps each socket within the rate limit's burst of 20
        // queries; 50 sockets share each torrent (50 peers per torrent, under its 100).
        let sockets: u16 = if round == 0 { 100 } else { 900 };
        for s in 0..sockets {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            for k in 0..10u8 {
                let mut h = [0u8; 20];
                h[0] = k;
                h[1] = round as u8;
                h[2..4].copy_from_slice(&(s / 50).to_be_bytes());
                let ih = InfoHash(h);
                let get = msg(1, Query::GetPeers { info_hash: ih });
                sock.send_to(&get, target).unwrap();
                let mut buf = [0u8; 2048];
                let Ok((len, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(Message {
                    body: Body::Response(r),
                    ..
                }) = Message::decode(&buf[..len])
                else {
                    continue;
                };
                let Some(token) = r.token else { continue };
                let port = 10_000 + s + round * 2000;
                let ann = msg(
                    2,
                    Query::AnnouncePeer {
                        info_hash: ih,
                        port,
                        implied_port: false,
                        token,
                    },
                );
                sock.send_to(&ann, target).unwrap();
                let _ = sock.recv_from(&mut buf);
            }
        }
        let st = rt.block_on(sessions[0].dht_stats()).unwrap();
        stored_rounds.push((st.stored_peers, rss_kib()));
    }
    for (peers, rss) in &stored_rounds {
        println!(
            "  stored peers: {peers} in one node; RSS +{} KiB since before the first (allocator noise is about 100 KiB)",
            rss.saturating_sub(before)
        );
    }

    rt.block_on(async {
        for s in &sessions {
            s.shutdown().await;
        }
        pools.shutdown().await;
    });
}

fn msg(tid: u16, q: Query) -> Vec<u8> {
    Message {
        tid: Tid::new(&tid.to_be_bytes()).unwrap(),
        body: Body::Query {
            id: NodeId([0x55; 20]),
            query: q,
            read_only: false,
        },
        ip: None,
    }
    .to_bytes()
}
