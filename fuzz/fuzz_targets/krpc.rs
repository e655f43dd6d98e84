//! KRPC (the DHT's messages): `Message::decode` never panics, what it accepts re-encodes to
//! bytes that decode to the same message, and a `Dht` node fed the bytes (as a stranger's
//! query, and as the reply to a lookup it has in flight) never panics and stays bounded.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shoal_engine::dht::krpc::{Body, Message, MAX_NODES_PER_REPLY, MAX_VALUES_PER_REPLY};
use shoal_engine::dht::{Config, Dht, NodeId, MAX_OUTGOING};
use shoal_engine::InfoHash;

fuzz_target!(|data: &[u8]| {
    let decoded = Message::decode(data);
    if let Ok(msg) = &decoded {
        if let Body::Response(r) = &msg.body {
            assert!(r.nodes.len() <= MAX_NODES_PER_REPLY);
            assert!(r.values.len() <= MAX_VALUES_PER_REPLY);
        }
        // Error messages are cut and decoded lossily, so only their second trip is exact.
        let again = Message::decode(&msg.to_bytes()).expect("our encoding decodes");
        if !matches!(msg.body, Body::Error { .. }) {
            assert_eq!(&again, msg, "round trip");
        }
    }

    let now = Instant::now();
    let mut dht = Dht::new(Config::new(NodeId([0x11; 20]), [7; 32], 1), now);
    let boot: SocketAddr = "10.0.0.1:6881".parse().unwrap();
    let stranger: SocketAddr = "10.0.0.2:6881".parse().unwrap();
    let _ = dht.bootstrap(now, &[boot]);
    let _ = dht.get_peers(now, InfoHash([0x22; 20]));
    let mut tids = Vec::new();
    while let Some((_, packet)) = dht.poll_transmit() {
        if let Ok(m) = Message::decode(&packet) {
            tids.push(m.tid);
        }
    }
    dht.handle_packet(now, stranger, data);
    dht.handle_packet(now, boot, data);
    // The same message as the reply to each query in flight, so reply handling is reached.
    if let Ok(mut msg) = decoded {
        if !matches!(msg.body, Body::Query { .. }) {
            for tid in tids {
                msg.tid = tid;
                dht.handle_packet(now, boot, &msg.to_bytes());
            }
        }
    }
    let mut sent = 0;
    while dht.poll_transmit().is_some() {
        sent += 1;
    }
    assert!(sent <= MAX_OUTGOING);
    while dht.poll_event().is_some() {}
    dht.handle_timeout(now + Duration::from_secs(3600));
    let _ = dht.stats(now);
    let _ = dht.save(now);
});
