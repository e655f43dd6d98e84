//! The client side of HTTP trackers: announce URLs, announce and scrape replies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{lossy_bounded, Event, TrackerError};
use crate::bencode::{self, Dict, List, Value};
use crate::{InfoHash, PeerId};

/// The bytes left as they are in a query value: RFC 3986's unreserved characters. Everything
/// else, including every byte of a binary info hash above 0x7f, is percent-encoded.
pub(crate) const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The interval used when a reply has none (libtorrent does the same): 30 minutes.
pub const DEFAULT_INTERVAL: u32 = 30 * 60;

/// The shortest interval we accept from a tracker, in seconds; shorter ones are raised to it.
/// The client actor applies its own, larger floor between regular announces.
pub const MIN_INTERVAL: u32 = 1;

/// The longest interval we accept from a tracker: one day; longer ones are lowered to it, so a
/// hostile reply cannot silence us for years.
pub const MAX_INTERVAL: u32 = 24 * 60 * 60;

/// The most peers taken from one reply; the rest are ignored. A reply of 2 MiB could list about
/// 350,000 compact peers, far more than a torrent can use.
pub const MAX_PEERS_PER_REPLY: usize = 10_000;

/// One announce to a tracker: who we are and how far along we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: PeerId,
    /// The port we accept peer connections on.
    pub port: u16,
    /// Bytes uploaded since the `started` event.
    pub uploaded: u64,
    /// Bytes downloaded since the `started` event.
    pub downloaded: u64,
    /// Bytes still to download (0 for a seeder).
    pub left: u64,
    /// The event, if any.
    pub event: Option<Event>,
    /// How many peers we would like; `None` lets the tracker choose.
    pub numwant: Option<u32>,
    /// A random number fixed for the session, which lets the tracker recognise us when our
    /// address changes.
    pub key: u32,
    /// The `tracker id` the tracker gave in an earlier reply, sent back as it asks.
    pub tracker_id: Option<String>,
}

impl AnnounceRequest {
    /// The full announce URL for an HTTP tracker: `announce_url` with the query parameters
    /// appended (after `&` when it already has a query). Peers are asked for in compact form
    /// (BEP 23). Binary values are percent-encoded byte by byte.
    pub fn http_url(&self, announce_url: &str) -> String {
        // A fragment is never sent to the server; parameters go before it.
        let base = announce_url.split('#').next().unwrap_or(announce_url);
        let mut url = String::with_capacity(base.len() + 256);
        url.push_str(base);
        push_separator(&mut url);
        url.push_str("info_hash=");
        url.extend(percent_encode(&self.info_hash.0, QUERY_VALUE));
        url.push_str("&peer_id=");
        url.extend(percent_encode(&self.peer_id.0, QUERY_VALUE));
        url.push_str(&format!(
            "&port={}&uploaded={}&downloaded={}&left={}&compact=1",
            self.port, self.uploaded, self.downloaded, self.left
        ));
        if let Some(event) = self.event {
            url.push_str("&event=");
            url.push_str(event.as_str());
        }
        if let Some(n) = self.numwant {
            url.push_str(&format!("&numwant={n}"));
        }
        url.push_str(&format!("&key={:08x}", self.key));
        if let Some(id) = &self.tracker_id {
            url.push_str("&trackerid=");
            url.extend(percent_encode(id.as_bytes(), QUERY_VALUE));
        }
        url
    }
}

/// Appends `?` or `&` as the URL needs before another parameter.
fn push_separator(url: &mut String) {
    if !url.contains('?') {
        url.push('?');
    } else if !url.ends_with('?') && !url.ends_with('&') {
        url.push('&');
    }
}

/// What a tracker answered to an announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Seconds to wait before the next regular announce, within
    /// [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
    pub interval: u32,
    /// Seconds the tracker wants at least between announces, if it says.
    pub min_interval: Option<u32>,
    /// Peers in the swarm (IPv4 and IPv6), without those on port 0.
    pub peers: Vec<SocketAddr>,
    /// Seeders in the swarm, if the tracker says.
    pub complete: Option<u32>,
    /// Leechers in the swarm, if the tracker says.
    pub incomplete: Option<u32>,
    /// A warning to show, the announce having succeeded anyway.
    pub warning: Option<String>,
    /// An id to send back in later announces to this tracker.
    pub tracker_id: Option<String>,
}

/// Clamps a count from the network into a `u32`.
pub(super) fn count(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

pub(super) fn clamp_interval(n: i64) -> u32 {
    n.clamp(i64::from(MIN_INTERVAL), i64::from(MAX_INTERVAL)) as u32
}

/// Reads the top-level dictionary of a reply, or says why it is not one.
fn top_dict(body: &[u8]) -> Result<Dict<'_>, TrackerError> {
    let (value, end) = bencode::decode_prefix(body)?;
    // Some trackers end their reply with a newline: trailing ASCII whitespace is tolerated.
    if body[end..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(TrackerError::Bencode {
            pos: end,
            what: "trailing bytes after the top-level value",
        });
    }
    match value {
        Value::Dict(dict) => Ok(dict),
        _ => Err(TrackerError::Reply("reply is not a dictionary".into())),
    }
}

/// Returns the tracker's `failure reason`, if the reply has one.
fn failure(dict: Dict<'_>) -> Option<TrackerError> {
    let reason = match dict.get(b"failure reason")? {
        Value::Bytes(s) => lossy_bounded(s),
        _ => "(no reason given)".into(),
    };
    Some(TrackerError::Failure(reason))
}

/// Parses the bencoded body of an HTTP announce reply.
///
/// A `failure reason` becomes [`TrackerError::Failure`]. Peers may come as a compact string
/// (BEP 23, 6 bytes each), a compact `peers6` string (BEP 7, 18 bytes each) or a list of
/// dictionaries with `ip` and `port`; peers on port 0 and `ip` values that are not IP
/// addresses are dropped, and at most [`MAX_PEERS_PER_REPLY`] are kept. A missing interval is
/// [`DEFAULT_INTERVAL`]; keys may come in any order.
pub fn parse_announce_response(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let dict = top_dict(body)?;
    if let Some(e) = failure(dict) {
        return Err(e);
    }
    let mut resp = AnnounceResponse {
        interval: DEFAULT_INTERVAL,
        ..Default::default()
    };
    for (key, value) in dict.pairs() {
        match (key, value) {
            (b"interval", Value::Int(n)) => resp.interval = clamp_interval(n),
            (b"min interval", Value::Int(n)) => resp.min_interval = Some(clamp_interval(n)),
            (b"complete", Value::Int(n)) => resp.complete = Some(count(n)),
            (b"incomplete", Value::Int(n)) => resp.incomplete = Some(count(n)),
            (b"warning message", Value::Bytes(s)) => resp.warning = Some(lossy_bounded(s)),
            (b"tracker id", Value::Bytes(s)) => resp.tracker_id = Some(lossy_bounded(s)),
            (b"peers", Value::Bytes(s)) => compact_v4(s, &mut resp.peers)?,
            (b"peers", Value::List(list)) => dict_peers(list, &mut resp.peers),
            (b"peers6", Value::Bytes(s)) => compact_v6(s, &mut resp.peers)?,
            (b"interval" | b"peers" | b"peers6", _) => {
                let key = String::from_utf8_lossy(key);
                return Err(TrackerError::Reply(format!("`{key}` has the wrong type")));
            }
            _ => {}
        }
    }
    Ok(resp)
}

fn room(peers: &[SocketAddr]) -> usize {
    MAX_PEERS_PER_REPLY.saturating_sub(peers.len())
}

/// Appends the peers of a BEP 23 compact string: 4 address bytes and 2 port bytes each.
pub(super) fn compact_v4(s: &[u8], peers: &mut Vec<SocketAddr>) -> Result<(), TrackerError> {
    if s.len() % 6 != 0 {
        return Err(TrackerError::CompactPeers {
            len: s.len(),
            entry: 6,
        });
    }
    peers.reserve((s.len() / 6).min(room(peers)));
    for c in s.chunks_exact(6).take(room(peers)) {
        let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
        let port = u16::from_be_bytes([c[4], c[5]]);
        if port != 0 {
            peers.push(SocketAddr::V4(SocketAddrV4::new(ip, port)));
        }
    }
    Ok(())
}

/// Appends the peers of a BEP 7 compact string: 16 address bytes and 2 port bytes each.
pub(super) fn compact_v6(s: &[u8], peers: &mut Vec<SocketAddr>) -> Result<(), TrackerError> {
    if s.len() % 18 != 0 {
        return Err(TrackerError::CompactPeers {
            len: s.len(),
            entry: 18,
        });
    }
    peers.reserve((s.len() / 18).min(room(peers)));
    for c in s.chunks_exact(18).take(room(peers)) {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&c[..16]);
        let port = u16::from_be_bytes([c[16], c[17]]);
        if port != 0 {
            peers.push(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                0,
                0,
            )));
        }
    }
    Ok(())
}

/// Appends the peers of the original list form: `[{ip, port, peer id}, ...]`. Entries that
/// are not dictionaries, or whose `ip` is a host name, are skipped.
fn dict_peers(list: List<'_>, peers: &mut Vec<SocketAddr>) {
    for item in list.items() {
        if room(peers) == 0 {
            break;
        }
        let Value::Dict(d) = item else { continue };
        let (mut ip, mut port) = (None, None);
        for entry in d.pairs() {
            match entry {
                (b"ip", Value::Bytes(s)) => {
                    ip = std::str::from_utf8(s)
                        .ok()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                }
                (b"port", Value::Int(n)) => port = u16::try_from(n).ok().filter(|&p| p != 0),
                _ => {}
            }
        }
        if let (Some(ip), Some(port)) = (ip, port) {
            peers.push(SocketAddr::new(ip, port));
        }
    }
}

/// The scrape URL of an announce URL, by the convention of BEP 48: the last path component
/// must begin with `announce`, which becomes `scrape` (`/announce.php?k=v` becomes
/// `/scrape.php?k=v`). `None` when the tracker does not follow the convention.
pub fn scrape_url(announce_url: &str) -> Option<String> {
    let path_end = announce_url.find(['?', '#']).unwrap_or(announce_url.len());
    let (path, rest) = announce_url.split_at(path_end);
    let slash = path.rfind('/')?;
    let last = &path[slash + 1..];
    let tail = last.strip_prefix("announce")?;
    Some(format!("{}scrape{tail}{rest}", &path[..=slash]))
}

/// The full scrape URL asking for `hashes` (all the tracker's torrents when empty).
pub fn scrape_request_url(scrape_url: &str, hashes: &[InfoHash]) -> String {
    let base = scrape_url.split('#').next().unwrap_or(scrape_url);
    let mut url = base.to_string();
    for h in hashes {
        push_separator(&mut url);
        url.push_str("info_hash=");
        url.extend(percent_encode(&h.0, QUERY_VALUE));
    }
    url
}

/// The counts a tracker keeps for one torrent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    /// Seeders.
    pub complete: u32,
    /// Leechers.
    pub incomplete: u32,
    /// How many times a download completed (`completed` events seen).
    pub downloaded: u32,
}

/// What a tracker answered to a scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrapeResponse {
    /// The counts of each torrent in the reply, in the reply's order.
    pub files: Vec<(InfoHash, ScrapeStats)>,
}

impl ScrapeResponse {
    /// The counts for one torrent, if the reply has it.
    pub fn get(&self, info_hash: &InfoHash) -> Option<ScrapeStats> {
        self.files
            .iter()
            .find(|(h, _)| h == info_hash)
            .map(|&(_, s)| s)
    }
}

/// Parses the bencoded body of an HTTP scrape reply: `files` maps each 20-byte info hash to
/// `complete`, `incomplete` and `downloaded`. Keys of another length are skipped.
pub fn parse_scrape_response(body: &[u8]) -> Result<ScrapeResponse, TrackerError> {
    let dict = top_dict(body)?;
    if let Some(e) = failure(dict) {
        return Err(e);
    }
    let mut resp = ScrapeResponse::default();
    for entry in dict.pairs() {
        match entry {
            (b"files", Value::Dict(files)) => {
                for (key, value) in files.pairs() {
                    let (Ok(hash), Value::Dict(stats)) = (<[u8; 20]>::try_from(key), value) else {
                        continue;
                    };
                    let mut s = ScrapeStats::default();
                    for stat in stats.pairs() {
                        match stat {
                            (b"complete", Value::Int(n)) => s.complete = count(n),
                            (b"incomplete", Value::Int(n)) => s.incomplete = count(n),
                            (b"downloaded", Value::Int(n)) => s.downloaded = count(n),
                            _ => {}
                        }
                    }
                    resp.files.push((InfoHash(hash), s));
                }
            }
            (b"files", _) => return Err(TrackerError::Reply("`files` is not a dictionary".into())),
            _ => {}
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AnnounceRequest {
        let mut hash = [0u8; 20];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0x7d);
        }
        AnnounceRequest {
            info_hash: InfoHash(hash),
            peer_id: PeerId(*b"-SH0100-abc~_.-%+ /z"),
            port: 51413,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Some(Event::Started),
            numwant: Some(80),
            key: 0xdead_beef,
            tracker_id: Some("id 1".into()),
        }
    }

    #[test]
    fn http_url_encodes_every_parameter() {
        let req = request();
        let url = req.http_url("http://t.invalid:8080/announce");
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "http://t.invalid:8080/announce");
        let params: Vec<(&str, &str)> = query
            .split('&')
            .map(|kv| kv.split_once('=').unwrap())
            .collect();
        let get = |k: &str| params.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let decoded =
            |k: &str| percent_encoding::percent_decode_str(get(k).unwrap()).collect::<Vec<u8>>();
        assert_eq!(decoded("info_hash"), req.info_hash.0);
        assert_eq!(decoded("peer_id"), req.peer_id.0);
        // Unreserved characters stay, reserved ones are encoded.
        assert_eq!(get("peer_id").unwrap(), "-SH0100-abc~_.-%25%2B%20%2Fz");
        assert_eq!(get("port"), Some("51413"));
        assert_eq!(get("uploaded"), Some("1"));
        assert_eq!(get("downloaded"), Some("2"));
        assert_eq!(get("left"), Some("3"));
        assert_eq!(get("compact"), Some("1"));
        assert_eq!(get("event"), Some("started"));
        assert_eq!(get("numwant"), Some("80"));
        assert_eq!(get("key"), Some("deadbeef"));
        assert_eq!(get("trackerid"), Some("id%201"));
        // Nothing outside the unreserved set or `%`, `=`, `&` is left in the query.
        assert!(query
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%=&".contains(&b)));
    }

    #[test]
    fn http_url_appends_to_an_existing_query() {
        let mut req = request();
        req.event = None;
        req.numwant = None;
        req.tracker_id = None;
        let url = req.http_url("http://t.invalid/announce.php?passkey=abc");
        assert!(
            url.starts_with("http://t.invalid/announce.php?passkey=abc&info_hash="),
            "{url}"
        );
        assert!(!url.contains("event="));
        assert!(!url.contains("numwant="));
        assert_eq!(url.matches('?').count(), 1);
        let url = req.http_url("http://t.invalid/a?");
        assert!(url.starts_with("http://t.invalid/a?info_hash="), "{url}");
        let url = req.http_url("http://t.invalid/a#frag");
        assert!(url.starts_with("http://t.invalid/a?info_hash="), "{url}");
    }

    #[test]
    fn compact_reply() {
        let body = b"d8:completei5e10:incompletei3e8:intervali1800e12:min intervali60e5:peers12:\x0a\x00\x00\x01\x1a\xe1\xc0\xa8\x01\x02\x00\x50e";
        let r = parse_announce_response(body).unwrap();
        assert_eq!(r.interval, 1800);
        assert_eq!(r.min_interval, Some(60));
        assert_eq!(r.complete, Some(5));
        assert_eq!(r.incomplete, Some(3));
        assert_eq!(
            r.peers,
            vec![
                "10.0.0.1:6881".parse().unwrap(),
                "192.168.1.2:80".parse().unwrap()
            ]
        );
    }

    #[test]
    fn compact_ipv6_and_port_zero() {
        let mut body = b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x00\x006:peers636:".to_vec();
        let mut one = [0u8; 18];
        one[15] = 1;
        one[16..].copy_from_slice(&6881u16.to_be_bytes());
        body.extend_from_slice(&one);
        body.extend_from_slice(&[0u8; 18]); // port 0: dropped
        body.push(b'e');
        let r = parse_announce_response(&body).unwrap();
        assert_eq!(r.peers, vec!["[::1]:6881".parse().unwrap()]);
    }

    #[test]
    fn dictionary_peers_in_any_key_order() {
        let body = b"d5:peersld4:porti6881e2:ip9:127.0.0.17:peer id20:aaaaaaaaaaaaaaaaaaaaed2:ip11:example.com4:porti1eed2:ip3:::14:porti7eei5ee8:intervali30ee";
        let r = parse_announce_response(body).unwrap();
        assert_eq!(r.interval, 30);
        assert_eq!(
            r.peers,
            vec![
                "127.0.0.1:6881".parse().unwrap(),
                "[::1]:7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn failure_reason_wins() {
        let body = b"d8:intervali60e14:failure reason12:unregisterede";
        assert_eq!(
            parse_announce_response(body),
            Err(TrackerError::Failure("unregistered".into()))
        );
        assert_eq!(
            parse_scrape_response(b"d14:failure reason3:no!e"),
            Err(TrackerError::Failure("no!".into()))
        );
    }

    #[test]
    fn warning_tracker_id_and_defaults() {
        let r = parse_announce_response(b"d10:tracker id3:xyz15:warning message4:slowe").unwrap();
        assert_eq!(r.interval, DEFAULT_INTERVAL);
        assert_eq!(r.tracker_id.as_deref(), Some("xyz"));
        assert_eq!(r.warning.as_deref(), Some("slow"));
        assert!(r.peers.is_empty());
    }

    #[test]
    fn interval_is_clamped() {
        assert_eq!(
            parse_announce_response(b"d8:intervali0ee")
                .unwrap()
                .interval,
            MIN_INTERVAL
        );
        assert_eq!(
            parse_announce_response(b"d8:intervali-5ee")
                .unwrap()
                .interval,
            MIN_INTERVAL
        );
        assert_eq!(
            parse_announce_response(b"d8:intervali999999999999ee")
                .unwrap()
                .interval,
            MAX_INTERVAL
        );
        let r = parse_announce_response(b"d8:completei-1e10:incompletei99999999999ee").unwrap();
        assert_eq!((r.complete, r.incomplete), (Some(0), Some(u32::MAX)));
    }

    #[test]
    fn bad_replies() {
        assert!(matches!(
            parse_announce_response(b"d5:peers7:abcdefge"),
            Err(TrackerError::CompactPeers { len: 7, entry: 6 })
        ));
        assert!(matches!(
            parse_announce_response(b"d6:peers65:abcdee"),
            Err(TrackerError::CompactPeers { len: 5, entry: 18 })
        ));
        assert!(matches!(
            parse_announce_response(b"le"),
            Err(TrackerError::Reply(_))
        ));
        assert!(matches!(
            parse_announce_response(b"d8:interval2:60e"),
            Err(TrackerError::Reply(_))
        ));
        assert!(matches!(
            parse_announce_response(b"<html>502 Bad Gateway</html>"),
            Err(TrackerError::Bencode { .. })
        ));
        assert!(parse_announce_response(b"").is_err());
        assert!(parse_announce_response(b"d8:intervali60e5:peers").is_err());
    }

    #[test]
    fn trailing_whitespace_is_tolerated_and_other_bytes_refused() {
        let r = parse_announce_response(b"d8:intervali60ee\r\n").unwrap();
        assert_eq!(r.interval, 60);
        assert_eq!(
            parse_announce_response(b"d8:intervali60eex"),
            Err(TrackerError::Bencode {
                pos: 16,
                what: "trailing bytes after the top-level value"
            })
        );
        // Unsorted keys are accepted.
        let r = parse_announce_response(b"d8:intervali60e8:completei3e5:peers0:e").unwrap();
        assert_eq!((r.complete, r.interval), (Some(3), 60));
    }

    #[test]
    fn peers_are_bounded() {
        let n = MAX_PEERS_PER_REPLY + 10;
        let mut body = format!("d5:peers{}:", n * 6).into_bytes();
        for i in 0..n {
            body.extend_from_slice(&[10, 0, (i >> 8) as u8, i as u8, 0, 1]);
        }
        body.push(b'e');
        assert_eq!(
            parse_announce_response(&body).unwrap().peers.len(),
            MAX_PEERS_PER_REPLY
        );
    }

    #[test]
    fn scrape_urls() {
        let cases = [
            ("http://t.invalid/announce", Some("http://t.invalid/scrape")),
            (
                "http://t.invalid/x/announce",
                Some("http://t.invalid/x/scrape"),
            ),
            (
                "http://t.invalid/announce.php",
                Some("http://t.invalid/scrape.php"),
            ),
            (
                "http://t.invalid/announce?x2%0644",
                Some("http://t.invalid/scrape?x2%0644"),
            ),
            (
                "http://t.invalid/announce?x=2/4",
                Some("http://t.invalid/scrape?x=2/4"),
            ),
            ("http://t.invalid/x%064announce", None),
            ("http://t.invalid/a", None),
            ("http://t.invalid/announce/x", None),
            (
                "http://t.invalid/announce?x=/announce",
                Some("http://t.invalid/scrape?x=/announce"),
            ),
            ("announce", None),
        ];
        for (announce, scrape) in cases {
            assert_eq!(scrape_url(announce).as_deref(), scrape, "{announce}");
        }
    }

    #[test]
    fn scrape_request_urls() {
        let a = InfoHash([0x11; 20]);
        let b = InfoHash([b'a'; 20]);
        let url = scrape_request_url("http://t.invalid/scrape", &[a, b]);
        assert_eq!(
            url,
            format!(
                "http://t.invalid/scrape?info_hash={}&info_hash={}",
                "%11".repeat(20),
                "a".repeat(20)
            )
        );
        assert_eq!(
            scrape_request_url("http://t.invalid/scrape?k=1", &[]),
            "http://t.invalid/scrape?k=1"
        );
    }

    #[test]
    fn scrape_reply() {
        let mut body = b"d5:filesd20:".to_vec();
        body.extend_from_slice(&[7u8; 20]);
        body.extend_from_slice(b"d8:completei4e10:downloadedi9e10:incompletei2ee3:bad");
        body.extend_from_slice(b"d8:completei1eee");
        body.push(b'e');
        let r = parse_scrape_response(&body).unwrap();
        assert_eq!(r.files.len(), 1);
        assert_eq!(
            r.get(&InfoHash([7; 20])),
            Some(ScrapeStats {
                complete: 4,
                incomplete: 2,
                downloaded: 9
            })
        );
        assert_eq!(r.get(&InfoHash([8; 20])), None);
        assert!(parse_scrape_response(b"d5:filesi1ee").is_err());
        assert_eq!(
            parse_scrape_response(b"de").unwrap(),
            ScrapeResponse::default()
        );
    }
}
