//! BEP 9 metadata exchange: `MetadataMessage::parse` never panics and re-encodes what it
//! accepts to a payload that parses the same; `serve` answers any piece index; and a
//! `MetadataFetch` driven by a hostile script (sizes, data, rejects, timeouts, departures from
//! four peers) never panics, never holds more than its bound, and never hands out a
//! dictionary whose hash is wrong.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use shoal_engine::metadata::{serve, MetadataFetch, MetadataMessage, Progress};
use shoal_engine::InfoHash;

/// The bound of the fuzzed fetch: small, so the fuzzer reaches completion.
const MAX: usize = 40_000;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = MetadataMessage::parse(data) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(MetadataMessage::parse(&out), Ok(m));
    }
    if let Some((&first, rest)) = data.split_first() {
        let mut out = Vec::new();
        let piece = u32::from(first) % 8;
        if serve(rest, piece, &mut out) {
            let Ok(MetadataMessage::Data { total_size, .. }) = MetadataMessage::parse(&out)
            else {
                panic!("serve wrote a data message that does not parse");
            };
            assert_eq!(total_size, rest.len() as i64);
        }
    }
    fetch(data);
});

/// Runs a fetch for a dictionary made of the input's first bytes, scripted by the rest.
fn fetch(data: &[u8]) {
    let Some((&len, script)) = data.split_first() else {
        return;
    };
    // A dictionary of 1 to ~40 KB: up to three pieces.
    let info: Vec<u8> = (0..(usize::from(len) * 157 + 1)).map(|i| i as u8).collect();
    let hash = InfoHash(Sha1::digest(&info).into());
    let mut f = MetadataFetch::new(hash, MAX);
    let mut now = Instant::now();
    for op in script.chunks(4) {
        let [kind, a, b, c] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        let peer = a % 4;
        let piece = u32::from(b % 4);
        match kind % 7 {
            0 => {
                let size = match c % 4 {
                    0 => info.len() as i64,
                    1 => -(i64::from(c)),
                    2 => i64::MAX - i64::from(c),
                    _ => i64::from(c) * 300,
                };
                let _ = f.add_peer(peer, size);
            }
            1 => {
                let _ = f.next_request(peer, now);
            }
            2 | 3 => {
                // An honest piece (kind 2) or a corrupted one (kind 3).
                let start = piece as usize * 16_384;
                let end = info.len().min(start + 16_384);
                let mut bytes = info.get(start..end).unwrap_or_default().to_vec();
                if kind % 7 == 3 {
                    if let Some(x) = bytes.get_mut(usize::from(c)) {
                        *x ^= 1;
                    } else {
                        bytes.push(c);
                    }
                }
                if let Ok(Progress::Done(got)) =
                    f.handle_data(peer, piece, info.len() as i64, &bytes)
                {
                    assert_eq!(got, info, "a dictionary handed out matches the hash");
                }
            }
            4 => f.handle_reject(peer, piece, now),
            5 => {
                now += Duration::from_secs(u64::from(c));
                f.handle_timeout(now);
                if let Some(t) = f.poll_timeout() {
                    assert!(t + Duration::from_secs(3600) > now);
                }
            }
            _ => f.remove_peer(peer),
        }
        assert!(f.allocated_bytes() <= MAX);
    }
}
