//! Tests of whole nodes: a simulated network of `Dht`s wired in memory with a fake clock, and
//! hostile input against one node.

use super::*;
use krpc::CompactNode;
use std::net::Ipv4Addr;

/// Node `i`'s address: all on 127.0.0.1, one port each, as in the loopback integration
/// tests and benches.
fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10_000 + i as u16))
}

fn config(i: usize, rng: &mut fastrand::Rng) -> Config {
    Config::new(NodeId::random(rng), [i as u8; 32], i as u64)
}

/// Many nodes and a fake clock; datagrams are delivered at once, in order.
struct Net {
    nodes: Vec<Dht>,
    index: HashMap<SocketAddr, usize>,
    events: Vec<Vec<Event>>,
    now: Instant,
    /// Datagrams delivered so far.
    delivered: usize,
    /// Addresses whose datagrams vanish (nodes that went away).
    dead: Vec<SocketAddr>,
}

impl Net {
    fn new(n: usize, seed: u64) -> Net {
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(seed);
        let nodes: Vec<Dht> = (0..n).map(|i| Dht::new(config(i, &mut rng), now)).collect();
        Net {
            index: (0..n).map(|i| (addr(i), i)).collect(),
            events: vec![Vec::new(); n],
            nodes,
            now,
            delivered: 0,
            dead: Vec::new(),
        }
    }

    /// Moves datagrams until none is left at this instant.
    fn deliver(&mut self) {
        loop {
            let mut packets = Vec::new();
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while let Some((to, bytes)) = node.poll_transmit() {
                    packets.push((addr(i), to, bytes));
                }
                while let Some(e) = node.poll_event() {
                    self.events[i].push(e);
                }
            }
            if packets.is_empty() {
                return;
            }
            for (from, to, bytes) in packets {
                if self.dead.contains(&to) || self.dead.contains(&from) {
                    continue;
                }
                if let Some(&j) = self.index.get(&to) {
                    self.delivered += 1;
                    self.nodes[j].handle_packet(self.now, from, &bytes);
                }
            }
        }
    }

    /// Delivers, then jumps the clock to the next timer, until `done` or `limit` passes.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.deliver();
            if done(self) {
                return true;
            }
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.poll_timeout())
                .min()
                .expect("every node has a timer");
            if next > end {
                return false;
            }
            self.now = self.now.max(next);
            for n in &mut self.nodes {
                if n.poll_timeout().is_some_and(|t| t <= self.now) {
                    n.handle_timeout(self.now);
                }
            }
        }
    }

    fn has_event(&self, i: usize, f: impl Fn(&Event) -> bool) -> bool {
        self.events[i].iter().any(f)
    }
}

/// Joins `n` nodes one after the other through node 0, as nodes join a real network.
fn joined(n: usize, seed: u64) -> Net {
    let mut net = Net::new(n, seed);
    for i in 1..n {
        let now = net.now;
        net.nodes[i].bootstrap(now, &[addr(0)]).unwrap();
        let ok = net.run_until(Duration::from_secs(60), |net| {
            net.has_event(i, |e| matches!(e, Event::Bootstrapped { .. }))
        });
        assert!(ok, "node {i} bootstrapped");
    }
    net
}

#[test]
fn a_simulated_network_converges_and_finds_an_announced_torrent_from_every_node() {
    converges(200, 42);
}

/// The same on other networks: `cargo test -p shoal-engine dht::tests::many -- --ignored`.
#[test]
#[ignore = "slow: ten networks of 200 nodes"]
fn many_simulated_networks_converge() {
    for seed in 1..=10 {
        converges(200, seed);
    }
}

fn converges(n: usize, seed: u64) {
    let mut net = joined(n, seed);
    // Let refreshes and queries spread knowledge a little.
    net.run_until(Duration::from_secs(30), |_| false);
    for (i, node) in net.nodes.iter().enumerate() {
        assert!(
            node.routing_table_len() >= 8,
            "node {i} knows {} nodes",
            node.routing_table_len()
        );
    }

    // Node 7 announces a torrent.
    let info_hash = InfoHash([0x5a; 20]);
    let now = net.now;
    let l = net.nodes[7].announce(now, info_hash, 7007).unwrap();
    let ok = net.run_until(Duration::from_secs(60), |net| {
        net.has_event(
            7,
            |e| matches!(e, Event::AnnounceDone { lookup, .. } if *lookup == l),
        )
    });
    assert!(ok, "the announce finished");
    let accepted = net.events[7]
        .iter()
        .find_map(|e| match e {
            Event::AnnounceDone { nodes, .. } => Some(*nodes),
            _ => None,
        })
        .unwrap();
    assert!(accepted >= K - 1, "{accepted} nodes took the announce");

    // The lookup converged: the true 8 closest nodes to the hash store the peer.
    let target = NodeId(info_hash.0);
    let mut by_distance: Vec<usize> = (0..n).filter(|&i| i != 7).collect();
    by_distance.sort_by_key(|&i| net.nodes[i].id().distance(&target));
    let storing = by_distance[..K]
        .iter()
        .filter(|&&i| !net.nodes[i].store.peers(&info_hash, 10).is_empty())
        .count();
    assert!(
        storing >= K - 1,
        "{storing} of the 8 closest store the peer"
    );

    // Every other node finds it.
    let peer = SocketAddr::new(addr(7).ip(), 7007);
    let now = net.now;
    let mut lookups = Vec::new();
    for i in 0..n {
        if i != 7 {
            lookups.push((i, net.nodes[i].get_peers(now, info_hash).unwrap()));
        }
    }
    let ok = net.run_until(Duration::from_secs(120), |net| {
        lookups.iter().all(|&(i, l)| {
            net.has_event(
                i,
                |e| matches!(e, Event::LookupDone { lookup, .. } if *lookup == l),
            )
        })
    });
    assert!(ok, "every lookup finished");
    let mut queries = Vec::new();
    for &(i, l) in &lookups {
        let found = net.events[i].iter().any(|e| {
            matches!(e, Event::PeersFound { lookup, peers, .. } if *lookup == l && peers.contains(&peer))
        });
        assert!(found, "node {i} found the peer");
        for e in &net.events[i] {
            if let Event::LookupDone {
                lookup,
                queries: q,
                peers,
                ..
            } = e
            {
                if *lookup == l {
                    assert_eq!(*peers, 1);
                    queries.push(*q);
                }
            }
        }
    }
    queries.sort_unstable();
    let median = queries[queries.len() / 2];
    assert!(median <= 25, "median queries per lookup {median}");

    // Nothing grew past its bound, and a saved table comes back whole.
    for node in &net.nodes {
        assert!(node.transactions.len() <= MAX_TRANSACTIONS);
        assert!(node.outgoing.is_empty());
    }
    let bytes = net.nodes[3].save(net.now);
    let saved = SavedTable::load(&bytes).unwrap();
    assert_eq!(saved.id, net.nodes[3].id());
    let mut fresh = Dht::new(Config::new(saved.id, [0; 32], 1), net.now);
    fresh.restore(net.now, &saved);
    assert_eq!(fresh.routing_table_len(), net.nodes[3].routing_table_len());

    // Restarted from its saved table alone (no bootstrap address), node 3 rejoins and finds
    // the torrent.
    net.nodes[3] = fresh;
    net.events[3].clear();
    let now = net.now;
    net.nodes[3].bootstrap(now, &[]).unwrap();
    assert!(net.run_until(Duration::from_secs(60), |net| {
        net.has_event(
            3,
            |e| matches!(e, Event::Bootstrapped { nodes } if *nodes >= K),
        )
    }));
    let now = net.now;
    let l = net.nodes[3].get_peers(now, info_hash).unwrap();
    assert!(net.run_until(Duration::from_secs(60), |net| {
        net.has_event(
            3,
            |e| matches!(e, Event::LookupDone { lookup, .. } if *lookup == l),
        )
    }));
    assert!(net.has_event(3, |e| matches!(e,
        Event::PeersFound { lookup, peers, .. } if *lookup == l && peers.contains(&peer))));
}

#[test]
fn nodes_that_vanish_are_dropped_and_lookups_still_finish() {
    const N: usize = 60;
    let mut net = joined(N, 9);
    // A third of the network goes silent.
    for i in (3..N).step_by(3) {
        net.dead.push(addr(i));
    }
    let info_hash = InfoHash([0x11; 20]);
    let now = net.now;
    let l = net.nodes[1].announce(now, info_hash, 6000).unwrap();
    assert!(net.run_until(Duration::from_secs(120), |net| {
        net.has_event(
            1,
            |e| matches!(e, Event::AnnounceDone { lookup, .. } if *lookup == l),
        )
    }));
    let now = net.now;
    let l2 = net.nodes[2].get_peers(now, info_hash).unwrap();
    assert!(net.run_until(Duration::from_secs(120), |net| {
        net.has_event(
            2,
            |e| matches!(e, Event::LookupDone { lookup, .. } if *lookup == l2),
        )
    }));
    assert!(net.events[2].iter().any(|e| matches!(e,
        Event::PeersFound { lookup, peers, .. } if *lookup == l2 && peers.contains(&SocketAddr::new(addr(1).ip(), 6000)))));
    // Refreshes and lookups over 20 minutes push most dead nodes out of the live tables,
    // and the torrent is announced again after 15.
    net.run_until(Duration::from_secs(20 * 60), |_| false);
    let announces = net.events[1]
        .iter()
        .filter(|e| matches!(e, Event::AnnounceDone { info_hash: h, nodes, .. } if *h == info_hash && *nodes > 0))
        .count();
    assert_eq!(announces, 2, "announced, then re-announced");
    let node = &net.nodes[1];
    let now = net.now;
    let (good, _, _) = node.table.state_counts(now);
    assert!(good > 0);
    let dead_kept = node
        .table
        .entries()
        .filter(|e| {
            net.dead.contains(&SocketAddr::V4(e.addr)) && e.state(now) != routing::NodeState::Bad
        })
        .count();
    assert!(
        dead_kept * 4 <= node.routing_table_len(),
        "{dead_kept} silent nodes of {} not yet bad",
        node.routing_table_len()
    );
}

/// A lone node and a scripted stranger.
fn lone() -> (Dht, Instant) {
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(1);
    (Dht::new(config(1, &mut rng), now), now)
}

fn query(tid: &[u8], q: Query) -> Vec<u8> {
    Message {
        tid: Tid::new(tid).unwrap(),
        body: Body::Query {
            id: NodeId([0x42; 20]),
            query: q,
            read_only: false,
        },
        ip: None,
    }
    .to_bytes()
}

fn replies(d: &mut Dht) -> Vec<(SocketAddr, Message)> {
    std::iter::from_fn(|| d.poll_transmit())
        .map(|(to, b)| (to, Message::decode(&b).unwrap()))
        .collect()
}

fn stranger() -> SocketAddr {
    "10.9.9.9:4000".parse().unwrap()
}

#[test]
fn a_get_peers_flood_from_one_address_is_rate_limited_and_bounded() {
    let (mut d, now) = lone();
    let q = query(
        b"ab",
        Query::GetPeers {
            info_hash: InfoHash([1; 20]),
        },
    );
    for _ in 0..1000 {
        d.handle_packet(now, stranger(), &q);
    }
    let out = replies(&mut d);
    let answers = out
        .iter()
        .filter(|(_, m)| matches!(m.body, Body::Response(_)))
        .count();
    assert_eq!(answers, QUERY_BURST as usize);
    assert!(
        out.len() <= QUERY_BURST as usize + 1,
        "at most one verification ping more"
    );
    let s = d.stats(now);
    assert_eq!(s.rate_limited, 1000 - QUERY_BURST as u64);
    // A second later the address has earned 5 more.
    let later = now + Duration::from_secs(1);
    for _ in 0..100 {
        d.handle_packet(later, stranger(), &q);
    }
    let answers = replies(&mut d)
        .iter()
        .filter(|(_, m)| matches!(m.body, Body::Response(_)))
        .count();
    assert_eq!(answers, QUERY_RATE_PER_SEC as usize);

    // Another port of the same IP shares its limit; on loopback each port has its own.
    let other_port = SocketAddr::new(stranger().ip(), 4001);
    d.handle_packet(later, other_port, &q);
    assert!(replies(&mut d).is_empty());
    for port in [5000, 5001] {
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..QUERY_BURST as usize {
            d.handle_packet(later, local, &q);
        }
        let answers = replies(&mut d)
            .iter()
            .filter(|(_, m)| matches!(m.body, Body::Response(_)))
            .count();
        assert_eq!(answers, QUERY_BURST as usize, "loopback port {port}");
    }

    // A flood from thousands of addresses (without draining) stays bounded everywhere.
    for i in 0..20_000u32 {
        let from = SocketAddr::from((Ipv4Addr::from(0x0b00_0000 + i), 1000));
        d.handle_packet(later, from, &q);
    }
    assert!(d.rate.buckets.len() <= MAX_RATE_LIMITED_ADDRESSES);
    assert!(d.outgoing.len() <= MAX_OUTGOING);
    assert!(d.transactions.len() <= MAX_TRANSACTIONS);
    assert!(d.timeout_timers.len() <= MAX_TRANSACTIONS);
    assert!(d.stats(later).dropped_out > 0);
    // The sweep forgets addresses that went quiet.
    d.handle_timeout(later + Duration::from_secs(30));
    assert!(d.rate.buckets.is_empty());
    assert!(d.transactions.is_empty(), "verification pings timed out");
}

#[test]
fn queries_are_answered_and_tokens_checked() {
    let (mut d, now) = lone();
    let from = stranger();
    d.handle_packet(now, from, &query(b"p1", Query::Ping));
    let out = replies(&mut d);
    let (to, m) = out
        .iter()
        .find(|(_, m)| matches!(m.body, Body::Response(_)))
        .expect("a reply");
    assert_eq!(*to, from);
    assert_eq!(m.tid.as_bytes(), b"p1");
    assert_eq!(
        m.ip,
        Some(from),
        "BEP 42: the reply says where we saw the querier"
    );
    assert!(matches!(&m.body, Body::Response(r) if r.id == d.id()));
    // The stranger may get in the table by answering our ping.
    let ping = out
        .iter()
        .find(|(_, m)| matches!(m.body, Body::Query { .. }))
        .expect("verification ping");
    let pong = Message {
        tid: ping.1.tid,
        body: Body::Response(Response::id_only(NodeId([0x42; 20]))),
        ip: None,
    };
    d.handle_packet(now, from, &pong.to_bytes());
    assert_eq!(d.routing_table_len(), 1);

    // get_peers: a token for our address; no values yet, so nodes.
    let ih = InfoHash([7; 20]);
    d.handle_packet(now, from, &query(b"g1", Query::GetPeers { info_hash: ih }));
    let out = replies(&mut d);
    let Body::Response(r) = &out[0].1.body else {
        panic!()
    };
    let token = r.token.expect("a token");
    assert!(r.values.is_empty());
    assert_eq!(r.nodes.len(), 1);

    // A forged token is refused with 203; the real one is accepted.
    let announce = |token: Token, implied_port: bool| {
        query(
            b"a1",
            Query::AnnouncePeer {
                info_hash: ih,
                port: 9999,
                implied_port,
                token,
            },
        )
    };
    d.handle_packet(
        now,
        from,
        &announce(Token::new(b"forged!!").unwrap(), false),
    );
    let out = replies(&mut d);
    assert!(matches!(out[0].1.body, Body::Error { code: 203, .. }));
    assert_eq!(d.stats(now).bad_tokens, 1);
    assert_eq!(d.store.len(), 0);
    // The token is bound to the address that got it.
    d.handle_packet(
        now,
        "10.9.9.8:4000".parse().unwrap(),
        &announce(token, false),
    );
    assert!(matches!(
        replies(&mut d)[0].1.body,
        Body::Error { code: 203, .. }
    ));
    d.handle_packet(now, from, &announce(token, false));
    assert!(matches!(replies(&mut d)[0].1.body, Body::Response(_)));
    assert_eq!(
        d.store.peers(&ih, 10),
        vec![SocketAddr::new(from.ip(), 9999)]
    );
    d.handle_packet(now, from, &announce(token, true));
    replies(&mut d);
    assert_eq!(d.store.len(), 2, "implied_port stores the source port");

    // Now get_peers returns values.
    d.handle_packet(now, from, &query(b"g2", Query::GetPeers { info_hash: ih }));
    let Body::Response(r) = &replies(&mut d)[0].1.body else {
        panic!()
    };
    assert_eq!(r.values.len(), 2);

    // Across one rotation the token works, after two it does not.
    let t1 = now + token::ROTATE_EVERY;
    d.handle_timeout(t1);
    replies(&mut d);
    d.handle_packet(t1, from, &announce(token, false));
    assert!(matches!(replies(&mut d)[0].1.body, Body::Response(_)));
    let t2 = now + token::ROTATE_EVERY * 2;
    d.handle_timeout(t2);
    replies(&mut d);
    d.handle_packet(t2, from, &announce(token, false));
    assert!(matches!(
        replies(&mut d)[0].1.body,
        Body::Error { code: 203, .. }
    ));
}

#[test]
fn malformed_and_unknown_queries() {
    let (mut d, now) = lone();
    let from = stranger();
    d.handle_packet(
        now,
        from,
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:vote1:t2:zz1:y1:qe",
    );
    let out = replies(&mut d);
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0].1.body, Body::Error { code: 204, .. }));
    assert_eq!(out[0].1.tid.as_bytes(), b"zz");
    d.handle_packet(now, from, b"d1:ad2:id3:abce1:q4:ping1:t2:zz1:y1:qe");
    assert!(matches!(
        replies(&mut d)[0].1.body,
        Body::Error { code: 203, .. }
    ));
    for junk in [
        &b""[..],
        b"d",
        b"\x01\x00\x00\x00",
        b"le",
        b"d1:t2:aa1:y1:re",
        b"i5e",
    ] {
        d.handle_packet(now, from, junk);
    }
    assert!(replies(&mut d).is_empty());
    // A reply to nothing we asked is dropped.
    let stray = Message {
        tid: Tid::new(b"\x00\x01").unwrap(),
        body: Body::Response(Response::id_only(NodeId([3; 20]))),
        ip: None,
    };
    d.handle_packet(now, from, &stray.to_bytes());
    assert_eq!(d.routing_table_len(), 0);
    assert_eq!(d.stats(now).dropped_in, 7);
}

#[test]
fn a_reply_with_ten_thousand_nodes_and_peers_is_bounded() {
    let (mut d, now) = lone();
    let boot = stranger();
    let ih = InfoHash([9; 20]);
    d.bootstrap(now, &[boot]).unwrap();
    let mut out = replies(&mut d);
    let l = d.get_peers(now, ih).unwrap();
    out.extend(replies(&mut d));
    let (_, q) = out
        .iter()
        .find(|(_, m)| {
            matches!(
                m.body,
                Body::Query {
                    query: Query::GetPeers { .. },
                    ..
                }
            )
        })
        .expect("the lookup asked the bootstrap node");
    // The reply, written by hand: 10,000 nodes and 10,000 peers.
    let mut nodes = Vec::new();
    let mut values = Vec::new();
    for i in 0..10_000u32 {
        let mut id = [0u8; 20];
        id[..4].copy_from_slice(&i.to_be_bytes());
        CompactNode {
            id: NodeId(id),
            addr: SocketAddrV4::new(Ipv4Addr::from(0x0c00_0000 + i), 1),
        }
        .write(&mut nodes);
        values.push(SocketAddr::from((Ipv4Addr::from(0x0d00_0000 + i), 80)));
    }
    let mut wire = b"d1:rd2:id20:".to_vec();
    wire.extend_from_slice(&[0x77; 20]);
    wire.extend_from_slice(format!("5:nodes{}:", nodes.len()).as_bytes());
    wire.extend_from_slice(&nodes);
    wire.extend_from_slice(b"6:valuesl");
    for v in &values {
        wire.extend_from_slice(b"6:");
        krpc::write_compact_peer(v, &mut wire);
    }
    wire.extend_from_slice(b"e");
    wire.extend_from_slice(b"e1:t2:");
    wire.extend_from_slice(q.tid.as_bytes());
    wire.extend_from_slice(b"1:y1:re");
    d.handle_packet(now, boot, &wire);
    let found: usize = std::iter::from_fn(|| d.poll_event())
        .map(|e| match e {
            Event::PeersFound { lookup, peers, .. } if lookup == l => peers.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(found, krpc::MAX_VALUES_PER_REPLY);
    let run = &d.lookups[&l];
    assert!(run.lookup.queries_sent() <= lookup::ALPHA + 1);
    assert!(d.transactions.len() <= 2 * lookup::ALPHA + 2);
}

#[test]
fn an_announce_nobody_took_is_retried_within_a_minute() {
    let (mut d, now) = lone();
    let ih = InfoHash([4; 20]);
    let l = d.announce(now, ih, 6881).unwrap();
    let events: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
    assert!(events.contains(&Event::AnnounceDone {
        lookup: l,
        info_hash: ih,
        nodes: 0
    }));
    assert!(d.announced[&ih].next <= now + BOOTSTRAP_RETRY);
    // Once due, maintenance starts it again.
    d.handle_timeout(now + BOOTSTRAP_RETRY + MAINTENANCE_EVERY);
    let again = std::iter::from_fn(|| d.poll_event())
        .filter(|e| matches!(e, Event::AnnounceDone { info_hash, .. } if *info_hash == ih))
        .count();
    assert_eq!(again, 1);
    d.stop_announcing(&ih);
    d.handle_timeout(now + BOOTSTRAP_RETRY * 3);
    assert!(d.poll_event().is_none());
}

#[test]
fn lookups_are_bounded_and_an_empty_table_ends_at_once() {
    let (mut d, now) = lone();
    let l = d.get_peers(now, InfoHash([1; 20])).unwrap();
    assert!(
        matches!(d.poll_event(), Some(Event::LookupDone { lookup, peers: 0, .. }) if lookup == l)
    );
    d.bootstrap(now, &[stranger()]).unwrap();
    let mut ok = 0;
    for i in 0..100u8 {
        if d.get_peers(now, InfoHash([i; 20])).is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, MAX_LOOKUPS - 1);
    assert_eq!(
        d.get_peers(now, InfoHash([0; 20])),
        Err(DhtError::TooManyLookups)
    );
    // Silence: every lookup times out and ends; an empty table re-bootstraps a minute later.
    let mut t = now;
    for _ in 0..40 {
        t = d.poll_timeout().unwrap().max(t);
        d.handle_timeout(t);
        while d.poll_transmit().is_some() {}
    }
    let done = std::iter::from_fn(|| d.poll_event())
        .filter(|e| matches!(e, Event::LookupDone { .. }))
        .count();
    assert_eq!(done, MAX_LOOKUPS - 1);
    assert!(d.lookups.len() <= 1, "only a retried bootstrap may run");
    assert!(d.stats(t).timeouts > 0);
}

#[test]
fn bep42_enforcement_keeps_mismatched_public_ids_out() {
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(4);
    let mut config = config(1, &mut rng);
    config.enforce_node_ids = true;
    let mut d = Dht::new(config, now);
    let public: SocketAddr = "124.31.75.21:6881".parse().unwrap();
    let private: SocketAddr = "192.168.1.5:6881".parse().unwrap();
    let good_id = NodeId::for_address(public.ip(), &mut rng);
    let mut bad_id = good_id;
    bad_id.0[0] ^= 0xff;
    // Each answers a ping we sent; only matching or exempt ids get in.
    for (addr, id) in [(public, bad_id), (private, bad_id), (public, good_id)] {
        d.send_query(now, addr, Some(id), Query::Ping, TxKind::Ping);
        let (_, q) = replies(&mut d).pop().unwrap();
        let pong = Message {
            tid: q.tid,
            body: Body::Response(Response::id_only(id)),
            ip: None,
        };
        d.handle_packet(now, addr, &pong.to_bytes());
    }
    let ids: Vec<_> = d.table.entries().map(|e| (e.addr, e.id)).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&(
        SocketAddrV4::new("192.168.1.5".parse().unwrap(), 6881),
        bad_id
    )));
    assert!(ids.contains(&(
        SocketAddrV4::new("124.31.75.21".parse().unwrap(), 6881),
        good_id
    )));
}

#[test]
fn a_node_that_restarted_with_a_new_id_replaces_the_old_one() {
    let (mut d, now) = lone();
    let at = addr(5);
    let (old, new) = (NodeId([0x80; 20]), NodeId([0x81; 20]));
    for id in [old, new, new, new] {
        d.send_query(now, at, Some(old), Query::Ping, TxKind::Ping);
        let (_, q) = replies(&mut d).pop().unwrap();
        let pong = Message {
            tid: q.tid,
            body: Body::Response(Response::id_only(id)),
            ip: None,
        };
        d.handle_packet(now, at, &pong.to_bytes());
    }
    assert!(d.table.get(&new).is_some());
    let old_state = d.table.get(&old).map(|e| e.state(now));
    assert!(
        matches!(old_state, None | Some(routing::NodeState::Bad)),
        "{old_state:?}"
    );
}

#[test]
fn replies_tell_our_outside_address() {
    let (mut d, now) = lone();
    assert_eq!(d.external_ip(), None);
    let outside: IpAddr = "203.0.113.7".parse().unwrap();
    for (i, said) in [outside, "198.51.100.1".parse().unwrap(), outside]
        .into_iter()
        .enumerate()
    {
        let from = addr(100 + i);
        d.send_query(now, from, None, Query::Ping, TxKind::Ping);
        let (_, q) = replies(&mut d).pop().unwrap();
        let pong = Message {
            tid: q.tid,
            body: Body::Response(Response::id_only(NodeId([i as u8 + 1; 20]))),
            ip: Some(SocketAddr::new(said, 6881)),
        };
        d.handle_packet(now, from, &pong.to_bytes());
        if i == 0 {
            assert_eq!(d.external_ip(), None, "one reply is not enough");
        }
    }
    assert_eq!(d.external_ip(), Some(outside));
    // Liars from many addresses cannot grow the table of votes.
    for i in 0..100u32 {
        d.vote_address(IpAddr::from(Ipv4Addr::from(i)));
    }
    assert!(d.address_votes.len() <= MAX_ADDRESS_VOTES);
    assert_eq!(
        d.external_ip(),
        Some(outside),
        "one vote each does not outvote two"
    );
}

#[test]
fn memory_estimate_is_plausible() {
    let m = memory_estimate();
    assert!(
        m.bytes_per_routing_entry >= 26 && m.bytes_per_routing_entry <= 128,
        "{m:?}"
    );
    assert!(
        m.bytes_per_stored_peer >= 6 && m.bytes_per_stored_peer <= 64,
        "{m:?}"
    );
}

mod fuzzish {
    use super::*;
    use proptest::prelude::*;

    /// A node with a lookup in flight to `boot`, and the transaction ids it used.
    fn busy() -> (Dht, Instant, SocketAddr, Vec<Tid>) {
        let (mut d, now) = lone();
        let boot = stranger();
        d.bootstrap(now, &[boot]).unwrap();
        d.get_peers(now, InfoHash([3; 20])).unwrap();
        let tids = replies(&mut d).into_iter().map(|(_, m)| m.tid).collect();
        (d, now, boot, tids)
    }

    fn feed(d: &mut Dht, now: Instant, from: SocketAddr, tids: &[Tid], bytes: &[u8]) {
        d.handle_packet(now, from, bytes);
        if let Ok(mut m) = Message::decode(bytes) {
            if !matches!(m.body, Body::Query { .. }) {
                for &tid in tids {
                    m.tid = tid;
                    d.handle_packet(now, from, &m.to_bytes());
                }
            }
        }
        assert!(d.outgoing.len() <= MAX_OUTGOING);
        while d.poll_transmit().is_some() {}
        while d.poll_event().is_some() {}
    }

    const SEEDS: [&[u8]; 5] = [
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
        b"d1:rd2:id20:abcdefghij01234567895:nodes26:AAAAAAAAAAAAAAAAAAAA\x0a\x00\x00\x03\x1a\xe1e1:t2:aa1:y1:re",
        b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
    ];

    proptest! {
        #[test]
        fn a_node_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let (mut d, now, boot, tids) = busy();
            feed(&mut d, now, boot, &tids, &bytes);
            d.handle_timeout(now + Duration::from_secs(3600));
        }

        #[test]
        fn a_node_takes_mutated_messages(
            which in 0..SEEDS.len(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let (mut d, now, boot, tids) = busy();
            let mut bytes = SEEDS[which].to_vec();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            feed(&mut d, now, boot, &tids, &bytes);
            if let Ok(m) = Message::decode(&bytes) {
                if !matches!(m.body, Body::Error { .. }) {
                    prop_assert_eq!(Message::decode(&m.to_bytes()).unwrap(), m);
                }
            }
            d.handle_timeout(now + Duration::from_secs(3600));
        }
    }
}
