//! The server side of HTTP trackers: announce and scrape queries in, bencoded replies out.

use std::net::{IpAddr, SocketAddr};

use bendy::encoding::{AsString, Encoder, SingleItemEncoder};
use percent_encoding::percent_decode_str;

use super::{Event, ScrapeStats, TrackerError};
use crate::{InfoHash, PeerId};

/// The most info hashes one scrape query may name; the rest are ignored.
pub const MAX_SCRAPE_HASHES: usize = 100;

/// An announce as the tracker receives it, decoded from the query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceQuery {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer's id.
    pub peer_id: PeerId,
    /// The port the peer accepts connections on.
    pub port: u16,
    /// Bytes uploaded since `started` (0 when absent).
    pub uploaded: u64,
    /// Bytes downloaded since `started` (0 when absent).
    pub downloaded: u64,
    /// Bytes still to download.
    pub left: u64,
    /// The event, if any (an empty or unknown `event` is none).
    pub event: Option<Event>,
    /// Whether the peer accepts a compact peer list: true unless it sent `compact=0`.
    pub compact: bool,
    /// How many peers it wants, if it says.
    pub numwant: Option<u32>,
    /// The address it says it has, when `ip` is present and parses as an IP address.
    pub ip: Option<IpAddr>,
}

/// Percent-decodes a query value that must be exactly 20 bytes, without allocating.
fn decode_20(value: &str) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    let mut n = 0;
    for b in percent_decode_str(value) {
        *out.get_mut(n)? = b;
        n += 1;
    }
    (n == 20).then_some(out)
}

/// Splits a query string into raw `(key, value)` pairs; a leading `?` is skipped.
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

fn bad(what: impl Into<String>) -> TrackerError {
    TrackerError::Query(what.into())
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, TrackerError> {
    value
        .parse()
        .map_err(|_| bad(format!("`{key}` is not a number")))
}

/// Decodes the query string of an announce (the part after `?`). `info_hash`, `peer_id`
/// (20 bytes each, percent-encoded), `port` and `left` are required; an `ip` that does not
/// parse is ignored.
pub fn parse_announce_query(query: &str) -> Result<AnnounceQuery, TrackerError> {
    let (mut info_hash, mut peer_id, mut port, mut left) = (None, None, None, None);
    let mut q = AnnounceQuery {
        info_hash: InfoHash::default(),
        peer_id: PeerId::default(),
        port: 0,
        uploaded: 0,
        downloaded: 0,
        left: 0,
        event: None,
        compact: true,
        numwant: None,
        ip: None,
    };
    for (key, value) in pairs(query) {
        match key {
            "info_hash" => {
                info_hash =
                    Some(decode_20(value).ok_or_else(|| bad("`info_hash` is not 20 bytes"))?)
            }
            "peer_id" => {
                peer_id = Some(decode_20(value).ok_or_else(|| bad("`peer_id` is not 20 bytes"))?)
            }
            "port" => port = Some(number::<u16>(key, value)?),
            "uploaded" => q.uploaded = number(key, value)?,
            "downloaded" => q.downloaded = number(key, value)?,
            "left" => left = Some(number::<u64>(key, value)?),
            "event" => {
                q.event = match value {
                    "started" => Some(Event::Started),
                    "completed" => Some(Event::Completed),
                    "stopped" => Some(Event::Stopped),
                    _ => None,
                }
            }
            "compact" => q.compact = value != "0",
            "numwant" => q.numwant = value.parse().ok(),
            "ip" => {
                q.ip = percent_decode_str(value)
                    .decode_utf8()
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            _ => {}
        }
    }
    q.info_hash = InfoHash(info_hash.ok_or_else(|| bad("missing `info_hash`"))?);
    q.peer_id = PeerId(peer_id.ok_or_else(|| bad("missing `peer_id`"))?);
    q.port = port.ok_or_else(|| bad("missing `port`"))?;
    q.left = left.ok_or_else(|| bad("missing `left`"))?;
    Ok(q)
}

/// Decodes the info hashes of a scrape query; none means "every torrent". At most
/// [`MAX_SCRAPE_HASHES`] are kept.
pub fn parse_scrape_query(query: &str) -> Result<Vec<InfoHash>, TrackerError> {
    let mut hashes = Vec::new();
    for (key, value) in pairs(query) {
        if key == "info_hash" {
            let h = decode_20(value).ok_or_else(|| bad("`info_hash` is not 20 bytes"))?;
            if hashes.len() < MAX_SCRAPE_HASHES {
                hashes.push(InfoHash(h));
            }
        }
    }
    Ok(hashes)
}

/// Runs an encoding of our own values. It cannot fail: bendy reports only structure errors
/// (unsorted keys, too deep), and the callers write fixed, sorted structures.
fn encode(f: impl FnOnce(&mut Encoder) -> Result<(), bendy::encoding::Error>) -> Vec<u8> {
    let mut e = Encoder::new();
    f(&mut e)
        .and_then(|()| e.get_output())
        .expect("tracker replies are fixed, sorted structures")
}

/// Encodes an announce reply. `peers` in compact form go to `peers` (IPv4, 6 bytes each) and
/// `peers6` (IPv6, 18 bytes each); otherwise `peers` is a list of `{ip, peer id, port}`.
pub fn encode_announce_reply(
    interval: u32,
    peers: &[(PeerId, SocketAddr)],
    compact: bool,
    complete: u32,
    incomplete: u32,
) -> Vec<u8> {
    encode(|e| {
        e.emit_dict(|mut d| {
            d.emit_pair(b"complete", complete)?;
            d.emit_pair(b"incomplete", incomplete)?;
            d.emit_pair(b"interval", interval)?;
            d.emit_pair(b"min interval", (interval / 2).max(1))?;
            if compact {
                let mut v4 = Vec::new();
                let mut v6 = Vec::new();
                for (_, addr) in peers {
                    match addr {
                        SocketAddr::V4(a) => {
                            v4.extend_from_slice(&a.ip().octets());
                            v4.extend_from_slice(&a.port().to_be_bytes());
                        }
                        SocketAddr::V6(a) => {
                            v6.extend_from_slice(&a.ip().octets());
                            v6.extend_from_slice(&a.port().to_be_bytes());
                        }
                    }
                }
                d.emit_pair(b"peers", AsString(&v4))?;
                if !v6.is_empty() {
                    d.emit_pair(b"peers6", AsString(&v6))?;
                }
            } else {
                d.emit_pair_with(b"peers", |e: SingleItemEncoder<'_>| {
                    e.emit_list(|l| {
                        for (id, addr) in peers {
                            l.emit_dict(|mut p| {
                                p.emit_pair(b"ip", addr.ip().to_string())?;
                                p.emit_pair(b"peer id", AsString(&id.0[..]))?;
                                p.emit_pair(b"port", addr.port())
                            })?;
                        }
                        Ok(())
                    })
                })?;
            }
            Ok(())
        })
    })
}

/// Encodes a refusal: `d14:failure reason...e`.
pub fn encode_failure(reason: &str) -> Vec<u8> {
    encode(|e| e.emit_dict(|mut d| d.emit_pair(b"failure reason", reason)))
}

/// Encodes a scrape reply. Info hashes are sorted here, as bencode wants.
pub fn encode_scrape_reply(files: &[(InfoHash, ScrapeStats)]) -> Vec<u8> {
    let mut files = files.to_vec();
    files.sort_by_key(|f| f.0);
    files.dedup_by(|a, b| a.0 == b.0);
    encode(|e| {
        e.emit_dict(|mut d| {
            d.emit_pair_with(b"files", |e: SingleItemEncoder<'_>| {
                e.emit_dict(|mut f| {
                    for (hash, s) in &files {
                        f.emit_pair_with(&hash.0, |e: SingleItemEncoder<'_>| {
                            e.emit_dict(|mut st| {
                                st.emit_pair(b"complete", s.complete)?;
                                st.emit_pair(b"downloaded", s.downloaded)?;
                                st.emit_pair(b"incomplete", s.incomplete)
                            })
                        })?;
                    }
                    Ok(())
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse_announce_response, parse_scrape_response, AnnounceRequest};
    use super::*;

    #[test]
    fn query_round_trip_through_http_url() {
        let mut hash = [0u8; 20];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = (i * 13) as u8 ^ 0xa5;
        }
        let req = AnnounceRequest {
            info_hash: InfoHash(hash),
            peer_id: PeerId(*b"-SH0100-%&=+?#\x00\xff\x80abc"),
            port: 6881,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event: Some(Event::Completed),
            numwant: Some(12),
            key: 1,
            tracker_id: None,
        };
        let url = req.http_url("http://t.invalid/announce");
        let q = parse_announce_query(url.split_once('?').unwrap().1).unwrap();
        assert_eq!(q.info_hash, req.info_hash);
        assert_eq!(q.peer_id, req.peer_id);
        assert_eq!(
            (q.port, q.uploaded, q.downloaded, q.left),
            (6881, 10, 20, 30)
        );
        assert_eq!(q.event, Some(Event::Completed));
        assert!(q.compact);
        assert_eq!(q.numwant, Some(12));
        assert_eq!(q.ip, None);
    }

    #[test]
    fn query_options() {
        let base = format!(
            "info_hash={}&peer_id={}&port=1&left=0",
            "a".repeat(20),
            "%41".repeat(20)
        );
        let q = parse_announce_query(&format!("?{base}&compact=0&ip=10.1.2.3&event=&numwant=x"))
            .unwrap();
        assert!(!q.compact);
        assert_eq!(q.peer_id, PeerId([b'A'; 20]));
        assert_eq!(q.ip, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(q.event, None);
        assert_eq!(q.numwant, None);
        let q = parse_announce_query(&format!("{base}&ip=%3A%3A1&event=stopped")).unwrap();
        assert_eq!(q.ip, Some("::1".parse().unwrap()));
        assert_eq!(q.event, Some(Event::Stopped));
        assert_eq!(
            parse_announce_query(&format!("{base}&ip=host.invalid"))
                .unwrap()
                .ip,
            None
        );
    }

    #[test]
    fn bad_queries() {
        let hash = "a".repeat(20);
        let cases = [
            String::new(),
            format!("peer_id={hash}&port=1&left=0"),
            format!("info_hash={hash}&port=1&left=0"),
            format!("info_hash={hash}&peer_id={hash}&left=0"),
            format!("info_hash={hash}&peer_id={hash}&port=1"),
            format!("info_hash={}&peer_id={hash}&port=1&left=0", "a".repeat(21)),
            format!("info_hash={}&peer_id={hash}&port=1&left=0", "a".repeat(19)),
            format!("info_hash={hash}&peer_id={hash}&port=65536&left=0"),
            format!("info_hash={hash}&peer_id={hash}&port=1&left=-1"),
            format!("info_hash={hash}&peer_id={hash}&port=1&left=0&uploaded=x"),
        ];
        for q in cases {
            assert!(
                matches!(parse_announce_query(&q), Err(TrackerError::Query(_))),
                "{q}"
            );
        }
    }

    #[test]
    fn scrape_query() {
        let q = format!(
            "info_hash={}&x=1&info_hash={}",
            "%01".repeat(20),
            "b".repeat(20)
        );
        assert_eq!(
            parse_scrape_query(&q).unwrap(),
            vec![InfoHash([1; 20]), InfoHash([b'b'; 20])]
        );
        assert_eq!(parse_scrape_query("").unwrap(), vec![]);
        assert!(parse_scrape_query("info_hash=abc").is_err());
        let many = vec![format!("info_hash={}", "c".repeat(20)); 150].join("&");
        assert_eq!(parse_scrape_query(&many).unwrap().len(), MAX_SCRAPE_HASHES);
    }

    fn peers() -> Vec<(PeerId, SocketAddr)> {
        vec![
            (PeerId([1; 20]), "127.0.0.1:6881".parse().unwrap()),
            (PeerId([2; 20]), "[::1]:6882".parse().unwrap()),
            (PeerId([3; 20]), "10.0.0.2:1".parse().unwrap()),
        ]
    }

    #[test]
    fn compact_reply_round_trip() {
        let body = encode_announce_reply(60, &peers(), true, 4, 5);
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(r.interval, 60);
        assert_eq!(r.min_interval, Some(30));
        assert_eq!((r.complete, r.incomplete), (Some(4), Some(5)));
        let mut want: Vec<SocketAddr> = peers().into_iter().map(|p| p.1).collect();
        want.sort();
        let mut got = r.peers;
        got.sort();
        assert_eq!(got, want);
        assert!(
            body.windows(11).any(|w| w == b"6:peers618:"),
            "ipv6 peers go in peers6"
        );
    }

    #[test]
    fn dictionary_reply_round_trip() {
        let body = encode_announce_reply(60, &peers(), false, 0, 3);
        assert!(body.windows(7).any(|w| w == b"peer id"));
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(
            r.peers,
            peers().into_iter().map(|p| p.1).collect::<Vec<_>>()
        );
        let empty = encode_announce_reply(1, &[], true, 0, 0);
        assert_eq!(
            empty,
            b"d8:completei0e10:incompletei0e8:intervali1e12:min intervali1e5:peers0:e"
        );
    }

    #[test]
    fn failure_round_trip() {
        assert_eq!(encode_failure("go away"), b"d14:failure reason7:go awaye");
        assert_eq!(
            parse_announce_response(&encode_failure("go away")),
            Err(TrackerError::Failure("go away".into()))
        );
    }

    #[test]
    fn scrape_reply_round_trip() {
        let s1 = ScrapeStats {
            complete: 1,
            incomplete: 2,
            downloaded: 3,
        };
        let s2 = ScrapeStats {
            complete: 0,
            incomplete: 9,
            downloaded: 0,
        };
        let files = [(InfoHash([9; 20]), s1), (InfoHash([1; 20]), s2)];
        let r = parse_scrape_response(&encode_scrape_reply(&files)).unwrap();
        assert_eq!(
            r.files,
            vec![(InfoHash([1; 20]), s2), (InfoHash([9; 20]), s1)]
        );
        assert_eq!(encode_scrape_reply(&[]), b"d5:filesdee");
    }
}
