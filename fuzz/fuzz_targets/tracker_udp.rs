//! UDP tracker replies (BEP 15): the connect, announce and scrape decoders never panic, refuse
//! a reply for another transaction, and read announce replies in proportion to their size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_engine::tracker::udp;
use shoal_engine::InfoHash;

fuzz_target!(|data: &[u8]| {
    // Use the packet's own transaction id (when it has one) so the header check passes and the
    // body is reached; then once more with another id, which must be refused.
    let tid = match data.get(4..8) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    };
    let _ = udp::parse_connect_response(data, tid);
    for ipv6 in [false, true] {
        if let Ok(reply) = udp::parse_announce_response(data, tid, ipv6) {
            let entry = if ipv6 { 18 } else { 6 };
            assert!(reply.peers.len() <= data.len().saturating_sub(20) / entry);
            assert!(reply.peers.iter().all(|p| p.port() != 0));
        }
    }
    // The last byte says how many hashes the scrape asked for (more than the cap, at times).
    let n = data.last().map_or(0, |&b| usize::from(b) % 100);
    let hashes: Vec<InfoHash> = (0..n).map(|i| InfoHash([i as u8; 20])).collect();
    if let Ok(reply) = udp::parse_scrape_response(data, tid, &hashes) {
        assert_eq!(reply.files.len(), n.min(udp::MAX_SCRAPE_HASHES));
    }
    if data.len() >= 8 {
        let other = tid.wrapping_add(1);
        assert!(udp::parse_connect_response(data, other).is_err());
        assert!(udp::parse_announce_response(data, other, false).is_err());
        assert!(udp::parse_scrape_response(data, other, &hashes).is_err());
    }
});
