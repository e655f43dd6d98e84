//! BEP 11 peer exchange: `PexMessage::parse` never panics, takes no more than its bound of
//! peers from any message, and re-encodes what it took to a payload that parses the same; a
//! `PexState` fed the parsed peers as its connected set sends within the caps.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shoal_engine::pex::{
    PexMessage, PexState, MAX_ADDED_PER_MESSAGE, MAX_DROPPED_PER_MESSAGE, MAX_PEERS_TAKEN,
    PEX_INTERVAL,
};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut state = PexState::new("127.0.0.1:1".parse().unwrap());
    let Ok(Some(m)) = state.handle_message(t0, data) else {
        return;
    };
    assert!(m.added.len() <= MAX_PEERS_TAKEN);
    assert!(m.dropped.len() <= MAX_PEERS_TAKEN);
    let mut out = Vec::new();
    m.encode(&mut out);
    let back = PexMessage::parse(&out).expect("our own message parses");
    // Re-encoding groups IPv4 before IPv6, so compare as sets.
    let mut a = m.added.clone();
    let mut b = back.added.clone();
    a.sort_by_key(|p| p.addr);
    b.sort_by_key(|p| p.addr);
    assert_eq!(a, b);
    assert_eq!(back.dropped.len(), m.dropped.len());
    // Tell another peer about everything this one listed, minute after minute.
    let mut now = t0;
    for _ in 0..6 {
        if let Some(sent) = state.poll_message(now, m.added.iter().copied()) {
            assert!(sent.added.len() <= MAX_ADDED_PER_MESSAGE);
            assert!(sent.dropped.len() <= MAX_DROPPED_PER_MESSAGE);
            // Nothing more within the minute, whatever changed.
            assert_eq!(state.poll_message(now + Duration::from_secs(1), []), None);
        }
        now += PEX_INTERVAL;
    }
});
