//! uTP (BEP 29): the packet decoder never panics and re-encodes what it accepts, and a socket fed
//! arbitrary datagrams (after one connection of its own and one it accepted) never panics and
//! keeps its table and queues within their bounds, also when MTU probes are refused.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shoal_engine::utp::{Config, Packet, PacketType, UtpSocket};

fuzz_target!(|data: &[u8]| {
    if let Ok((packet, payload)) = Packet::decode(data) {
        assert!(payload.len() <= data.len());
        let mut buf = [0u8; 128];
        let n = packet.encode(&mut buf).expect("a header and a bounded sack fit");
        let (again, rest) = Packet::decode(&buf[..n]).expect("what we encode decodes");
        assert_eq!(again, packet);
        assert!(rest.is_empty());
    }

    // The socket: datagrams are cut from the input by a leading length byte; each goes to one
    // of a few peer addresses, and the clock moves on between them.
    let start = Instant::now();
    let mut now = start;
    let max = 8;
    let mut s = UtpSocket::new(start, Config::default(), max, 1);
    let peers: [SocketAddr; 3] = [
        "10.0.0.1:1".parse().unwrap(),
        "10.0.0.2:2".parse().unwrap(),
        "10.0.0.3:3".parse().unwrap(),
    ];
    let ours = s.connect(now, peers[0]).expect("room for one");
    // A SYN from peers[1] so an accepted connection exists too.
    let mut syn = Packet::new(PacketType::Syn, 500);
    syn.seq_nr = 1;
    let mut out = vec![0u8; 2048];
    let n = syn.encode(&mut out).unwrap();
    s.handle_datagram(now, peers[1], &out[..n]);
    let mut rest = data;
    let mut i = 0usize;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        s.handle_datagram(now, peers[i % peers.len()], datagram);
        i += 1;
        if let Some(c) = s.connection_mut(ours) {
            c.write(datagram);
            let mut sink = [0u8; 512];
            while c.read(&mut sink) > 0 {}
        }
        while let Some((_, n)) = s.poll_transmit(now, &mut out) {
            // Now and then the "kernel" refuses an MTU probe as too big.
            if let Some(h) = s.last_transmit_probe() {
                if n % 2 == 1 {
                    s.handle_probe_refused(now, h);
                }
            }
        }
        now += Duration::from_millis(u64::from(datagram.first().copied().unwrap_or(0)) * 8);
        s.handle_timeout(now);
        assert!(s.len() <= max);
    }
    while let Some(h) = s.accept() {
        s.release(h);
    }
});
