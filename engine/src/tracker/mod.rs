//! Tracker announce and scrape requests and replies, HTTP and UDP, as pure data.
//!
//! # Layout
//! - [`AnnounceRequest`], [`parse_announce_response`], [`scrape_url`],
//!   [`parse_scrape_response`]: the client side of the HTTP tracker protocol (BEP 3, the
//!   compact peer lists of BEP 23 and BEP 7, the scrape convention of BEP 48).
//! - [`parse_announce_query`], [`encode_announce_reply`], [`encode_failure`],
//!   [`parse_scrape_query`], [`encode_scrape_reply`]: the server side, for an embedded tracker.
//! - [`udp`]: the packets of the UDP tracker protocol (BEP 15).
//!
//! Nothing here touches a socket: the actors crate does the I/O. Every parser takes bytes
//! from the network and returns an error, never panics, and allocates at most in proportion to
//! its input.
//!
//! # Examples
//! ```
//! use shoal_engine::tracker::{parse_announce_response, AnnounceRequest, Event};
//! use shoal_engine::{InfoHash, PeerId};
//!
//! let req = AnnounceRequest {
//!     info_hash: InfoHash([0xab; 20]),
//!     peer_id: PeerId([b'x'; 20]),
//!     port: 6881,
//!     uploaded: 0,
//!     downloaded: 0,
//!     left: 1000,
//!     event: Some(Event::Started),
//!     numwant: Some(50),
//!     key: 7,
//!     tracker_id: None,
//! };
//! let url = req.http_url("http://tracker.invalid/announce");
//! assert!(url.starts_with("http://tracker.invalid/announce?info_hash=%AB%AB"));
//!
//! let reply = parse_announce_response(b"d8:intervali900e5:peers6:\x7f\x00\x00\x01\x1a\xe1e").unwrap();
//! assert_eq!(reply.interval, 900);
//! assert_eq!(reply.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
//! ```

mod http;
mod server;
pub mod udp;

use std::fmt;

pub use http::{
    parse_announce_response, parse_scrape_response, scrape_request_url, scrape_url,
    AnnounceRequest, AnnounceResponse, ScrapeResponse, ScrapeStats, DEFAULT_INTERVAL, MAX_INTERVAL,
    MAX_PEERS_PER_REPLY, MIN_INTERVAL,
};
pub use server::{
    encode_announce_reply, encode_failure, encode_scrape_reply, parse_announce_query,
    parse_scrape_query, AnnounceQuery, MAX_SCRAPE_HASHES,
};

/// What an announce tells the tracker beyond "still here" (which is `None` in an
/// `Option<Event>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The first announce of a session with this tracker.
    Started,
    /// The download just finished (sent once; not sent when the torrent was complete at start).
    Completed,
    /// The client is leaving the swarm.
    Stopped,
}

impl Event {
    /// The value of the `event` parameter of an HTTP announce.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Completed => "completed",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tracker exchange failed: the tracker refused, or its reply (or a client's query, on
/// the server side) does not follow the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerError {
    /// The tracker refused the request: its `failure reason` (HTTP) or error message (UDP).
    Failure(String),
    /// The reply is not valid bencode.
    Bencode {
        /// The byte offset where reading failed.
        pos: usize,
        /// What was wrong there.
        what: &'static str,
    },
    /// The reply is valid bencode but not a tracker reply: a key is missing or has the wrong
    /// type or value.
    Reply(String),
    /// A compact peer list whose length is not a multiple of its entry size.
    CompactPeers {
        /// The length of the list in bytes.
        len: usize,
        /// The size of one entry: 6 for IPv4 (`peers`), 18 for IPv6 (`peers6`).
        entry: usize,
    },
    /// An announce or scrape query that the embedded tracker cannot serve.
    Query(String),
    /// The announce URL does not follow the scrape convention of BEP 48.
    NoScrape,
    /// A UDP tracker packet shorter than its fixed part.
    UdpTruncated {
        /// The packet's length.
        len: usize,
        /// The least length its action needs.
        min: usize,
    },
    /// A UDP tracker reply to another request than ours.
    UdpTransaction {
        /// The transaction id we sent.
        expected: u32,
        /// The one in the reply.
        got: u32,
    },
    /// A UDP tracker reply with another action than the one we asked for.
    UdpAction {
        /// The action we sent.
        expected: u32,
        /// The one in the reply.
        got: u32,
    },
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failure(reason) => write!(f, "tracker refused: {reason}"),
            Self::Bencode { pos, what } => write!(f, "malformed bencode at byte {pos}: {what}"),
            Self::Reply(what) => write!(f, "bad tracker reply: {what}"),
            Self::CompactPeers { len, entry } => {
                write!(
                    f,
                    "compact peer list of {len} bytes is not a multiple of {entry}"
                )
            }
            Self::Query(what) => write!(f, "bad tracker query: {what}"),
            Self::NoScrape => write!(f, "announce url does not support scrape"),
            Self::UdpTruncated { len, min } => {
                write!(f, "udp tracker packet of {len} bytes is shorter than {min}")
            }
            Self::UdpTransaction { expected, got } => {
                write!(
                    f,
                    "udp tracker reply has transaction id {got:#x}, expected {expected:#x}"
                )
            }
            Self::UdpAction { expected, got } => {
                write!(f, "udp tracker reply has action {got}, expected {expected}")
            }
        }
    }
}

impl std::error::Error for TrackerError {}

impl From<crate::bencode::BencodeError> for TrackerError {
    fn from(e: crate::bencode::BencodeError) -> Self {
        Self::Bencode {
            pos: e.offset,
            what: e.problem,
        }
    }
}

/// Turns bytes from the network into a string for a message, bounded in length so a hostile
/// tracker cannot fill our logs.
fn lossy_bounded(bytes: &[u8]) -> String {
    const MAX_MESSAGE: usize = 512;
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_MESSAGE)]);
    let mut s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if bytes.len() > MAX_MESSAGE {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        assert_eq!(Event::Started.to_string(), "started");
        assert_eq!(Event::Completed.as_str(), "completed");
        assert_eq!(Event::Stopped.as_str(), "stopped");
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            TrackerError::Failure("no".into()).to_string(),
            "tracker refused: no"
        );
        assert_eq!(
            TrackerError::CompactPeers { len: 7, entry: 6 }.to_string(),
            "compact peer list of 7 bytes is not a multiple of 6"
        );
        let e: Box<dyn std::error::Error> = Box::new(TrackerError::NoScrape);
        assert_eq!(e.to_string(), "announce url does not support scrape");
    }

    #[test]
    fn lossy_bounded_strips_controls_and_bounds() {
        assert_eq!(lossy_bounded(b"a\nb"), "a b");
        assert_eq!(lossy_bounded(&[b'x'; 1000]).len(), 515);
        assert_eq!(lossy_bounded(&[0xff, b'a']), "\u{fffd}a");
    }

    mod never_panic {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_announce_response(&bytes);
                let _ = parse_scrape_response(&bytes);
                let _ = udp::parse_connect_response(&bytes, 1);
                let _ = udp::parse_announce_response(&bytes, 1, false);
                let _ = udp::parse_announce_response(&bytes, 1, true);
                let _ = udp::parse_scrape_response(&bytes, 1, &[crate::InfoHash([0; 20]); 3]);
                let s = String::from_utf8_lossy(&bytes);
                let _ = parse_announce_query(&s);
                let _ = parse_scrape_query(&s);
                let _ = scrape_url(&s);
            }

            #[test]
            fn parsers_take_bencode_like_bytes(
                bytes in proptest::collection::vec(
                    prop_oneof![
                        Just(b'd'), Just(b'l'), Just(b'e'), Just(b'i'), Just(b':'), Just(b'-'),
                        (b'0'..=b'9'),
                        any::<u8>(),
                    ],
                    0..256,
                ),
            ) {
                let _ = parse_announce_response(&bytes);
                let _ = parse_scrape_response(&bytes);
            }

            #[test]
            fn reply_peers_survive_a_round_trip(
                peers in proptest::collection::vec((any::<[u8; 4]>(), 1u16..), 0..50),
                compact in any::<bool>(),
            ) {
                let peers: Vec<(crate::PeerId, std::net::SocketAddr)> = peers
                    .into_iter()
                    .map(|(ip, port)| (crate::PeerId([7; 20]), (std::net::Ipv4Addr::from(ip), port).into()))
                    .collect();
                let body = encode_announce_reply(60, &peers, compact, 1, 2);
                let got = parse_announce_response(&body).unwrap().peers;
                prop_assert_eq!(got, peers.iter().map(|p| p.1).collect::<Vec<_>>());
            }
        }
    }
}
