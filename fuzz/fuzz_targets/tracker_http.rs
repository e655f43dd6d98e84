//! HTTP tracker input: announce and scrape reply bodies (client side) and announce and scrape
//! query strings (embedded tracker side). Nothing panics; an accepted reply, encoded again by
//! our own tracker, parses to the same peers and counts; an accepted announce query, turned
//! into a request URL by our own client, parses to the same query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_engine::tracker::{
    encode_announce_reply, encode_scrape_reply, parse_announce_query, parse_announce_response,
    parse_scrape_query, parse_scrape_response, scrape_url, AnnounceRequest,
};
use shoal_engine::PeerId;

fuzz_target!(|data: &[u8]| {
    announce_reply(data);
    scrape_reply(data);
    let text = String::from_utf8_lossy(data);
    announce_query(&text);
    let _ = parse_scrape_query(&text);
    if let Some(url) = scrape_url(&text) {
        assert!(url.contains("scrape"));
    }
});

fn announce_reply(body: &[u8]) {
    let Ok(reply) = parse_announce_response(body) else {
        return;
    };
    assert!(reply.peers.iter().all(|p| p.port() != 0));
    let peers: Vec<_> = reply.peers.iter().map(|&a| (PeerId([0; 20]), a)).collect();
    for compact in [true, false] {
        let again = encode_announce_reply(
            reply.interval,
            &peers,
            compact,
            reply.complete.unwrap_or(0),
            reply.incomplete.unwrap_or(0),
        );
        let again = parse_announce_response(&again).expect("our own reply parses");
        assert_eq!(again.interval, reply.interval);
        let (mut a, mut b) = (reply.peers.clone(), again.peers.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "compact {compact}");
    }
}

fn scrape_reply(body: &[u8]) {
    let Ok(reply) = parse_scrape_response(body) else {
        return;
    };
    let again = parse_scrape_response(&encode_scrape_reply(&reply.files))
        .expect("our own scrape reply parses");
    for (hash, _) in &reply.files {
        assert_eq!(again.get(hash), reply.get(hash));
    }
}

fn announce_query(text: &str) {
    let Ok(q) = parse_announce_query(text) else {
        return;
    };
    let req = AnnounceRequest {
        info_hash: q.info_hash,
        peer_id: q.peer_id,
        port: q.port,
        uploaded: q.uploaded,
        downloaded: q.downloaded,
        left: q.left,
        event: q.event,
        numwant: q.numwant,
        key: 0,
        tracker_id: None,
    };
    let url = req.http_url("http://tracker.invalid/announce");
    let (_, query) = url.split_once('?').expect("the URL has a query");
    let again = parse_announce_query(query).expect("our own announce URL parses");
    assert_eq!(
        (again.info_hash, again.peer_id, again.port),
        (q.info_hash, q.peer_id, q.port)
    );
    assert_eq!(
        (again.uploaded, again.downloaded, again.left),
        (q.uploaded, q.downloaded, q.left)
    );
    assert_eq!((again.event, again.numwant), (q.event, q.numwant));
}
