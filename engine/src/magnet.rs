//! Magnet links (BEP 9): parsing `magnet:?xt=urn:btih:...` URIs, and writing one for a torrent.
//!
//! # Reading
//! [`Magnet::parse`] takes the info hash from `xt=urn:btih:` as 40 hexadecimal or 32 base32
//! characters (either case), the display name from `dn`, every tracker from `tr` (and the
//! numbered `tr.1`, `tr.2`... some sites write), and every peer from `x.pe`. Values are
//! percent-decoded strictly: a `%` not followed by two hexadecimal digits is an error rather
//! than a guess. `+` becomes a space in `dn` only: it is how forms encode spaces in names, but
//! a literal `+` in a tracker URL (a passkey, say) must survive. Trackers keep their order and
//! lose duplicates; unknown keys are ignored. A `urn:btmh:` (BitTorrent v2, BEP 52) hash is a
//! multihash: `1220` (SHA-256, 32 bytes) then 64 hexadecimal digits. Next to a `urn:btih:` (a
//! hybrid torrent's magnet) a well-formed one is kept in [`Magnet::info_hash_v2`] (a malformed
//! one is ignored: the v1 hash is enough to fetch the torrent, and the metadata is checked
//! against both when both are given). As the only hash (a v2-only torrent) it must be
//! well-formed; [`Magnet::info_hash`] is then its first 20 bytes, the hash the swarm knows the
//! torrent by on the wire, at trackers and in the DHT ([`Magnet::is_v2_only`]).
//!
//! Everything is bounded: the URI length ([`MAX_MAGNET_LEN`]), and the trackers and peers kept
//! ([`MAX_TRACKERS`], [`MAX_PEERS`]; the rest are ignored).
//!
//! # Writing
//! [`Magnet::from_metainfo`] and the [`fmt::Display`] impl write `xt`, `dn`, one `tr` per
//! tracker and one `x.pe` per peer, each value percent-encoded so that only RFC 3986's
//! unreserved characters stay as they are (and `:`, `[`, `]` in `x.pe`, which libtorrent reads
//! without decoding).
//!
//! # Examples
//! ```
//! use shoal_engine::magnet::Magnet;
//! let m = Magnet::parse(
//!     "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=a%20b&tr=udp%3A%2F%2Ft%3A1",
//! )
//! .unwrap();
//! assert_eq!(m.name.as_deref(), Some("a b"));
//! assert_eq!(m.trackers, ["udp://t:1"]);
//! assert_eq!(Magnet::parse(&m.to_string()).unwrap(), m);
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::metainfo::Metainfo;
use crate::InfoHash;

/// The bytes written as they are in a value: RFC 3986's unreserved characters. Everything else,
/// `:`, `/`, `&`, `=`, `+` and `%` included, is percent-encoded, so any URL survives the trip.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The bytes written as they are in an `x.pe` value: as [`QUERY_VALUE`], plus `:`, `[` and
/// `]`. libtorrent does not percent-decode `x.pe`, so a `%3A` there would lose the peer.
const PEER_VALUE: &AsciiSet = &QUERY_VALUE.remove(b':').remove(b'[').remove(b']');

/// The longest magnet URI we read: 64 KiB. Real ones are under 2 KiB even with dozens of
/// trackers; the bound keeps a pasted or received blob from costing more than a glance.
pub const MAX_MAGNET_LEN: usize = 64 * 1024;

/// The most trackers kept from one magnet; later `tr` values are ignored. Popular links carry
/// 10 to 30; announcing to more is wasted traffic.
pub const MAX_TRACKERS: usize = 64;

/// The most `x.pe` peers kept from one magnet; later ones are ignored. A link names a handful
/// of seeds at most; the DHT and trackers find the rest.
pub const MAX_PEERS: usize = 64;

/// Longest display name kept from `dn`, in bytes (longer names are cut at a character
/// boundary); a file name longer than this cannot be created on common file systems anyway.
pub const MAX_NAME_LEN: usize = 1024;

/// The RFC 4648 base32 alphabet, in which some magnets write the info hash.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A peer named by `x.pe`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MagnetPeer {
    /// A numeric address: `1.2.3.4:6881` or `[::1]:6881`.
    Addr(SocketAddr),
    /// A host name to resolve later, and its port.
    Host {
        /// The host name, as written.
        host: String,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for MagnetPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A parsed magnet link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    /// The torrent's v1 info hash, from `xt=urn:btih:`; for a v2-only magnet, the first 20
    /// bytes of [`Magnet::info_hash_v2`].
    pub info_hash: InfoHash,
    /// The v2 info hash (SHA-256) from `xt=urn:btmh:1220...`, if given.
    pub info_hash_v2: Option<[u8; 32]>,
    /// The display name from `dn`, if any: a hint until the metadata arrives.
    pub name: Option<String>,
    /// The tracker URLs from `tr`, in order, without duplicates.
    pub trackers: Vec<String>,
    /// The peers from `x.pe`, in order, without duplicates.
    pub peers: Vec<MagnetPeer>,
}

/// Why a magnet URI was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MagnetError {
    /// The text does not start with `magnet:?`.
    NotMagnet,
    /// The URI is longer than [`MAX_MAGNET_LEN`].
    TooLong(usize),
    /// There is no `xt=urn:btih:` parameter.
    MissingXt,
    /// The only hash is a BitTorrent v2 `urn:btmh:` one that is not a SHA-256 multihash.
    BadMultihash,
    /// The hash after `urn:btih:` is neither 40 nor 32 characters long.
    BadHashLength(usize),
    /// A 40-character hash holds a character that is not a hexadecimal digit.
    BadHexChar(char),
    /// A 32-character hash holds a character outside the base32 alphabet.
    BadBase32Char(char),
    /// Two `xt=urn:btih:` parameters name different torrents.
    ConflictingHashes,
    /// A `%` in the value of this key is not followed by two hexadecimal digits.
    BadPercentEncoding(String),
    /// The value of this key is not UTF-8 once percent-decoded.
    NotUtf8(String),
    /// An `x.pe` value is not `host:port` or `[v6]:port` (the value, escaped).
    BadPeer(String),
}

impl fmt::Display for MagnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMagnet => write!(f, "not a magnet uri: it must start with \"magnet:?\""),
            Self::TooLong(n) => write!(
                f,
                "magnet uri is {n} bytes, more than the maximum of {MAX_MAGNET_LEN}"
            ),
            Self::MissingXt => write!(f, "magnet uri has no \"xt=urn:btih:\" info hash"),
            Self::BadMultihash => write!(
                f,
                "magnet uri's v2 hash (urn:btmh) is not \"1220\" and 64 hex digits (sha-256)"
            ),
            Self::BadHashLength(n) => write!(
                f,
                "info hash is {n} characters long, expected 40 hex or 32 base32 characters"
            ),
            Self::BadHexChar(c) => write!(
                f,
                "info hash has '{}', which is not a hexadecimal digit",
                c.escape_debug()
            ),
            Self::BadBase32Char(c) => write!(
                f,
                "info hash has '{}', which is not a base32 character",
                c.escape_debug()
            ),
            Self::ConflictingHashes => write!(f, "magnet uri has two different info hashes"),
            Self::BadPercentEncoding(key) => {
                write!(f, "bad percent-encoding in the value of \"{key}\"")
            }
            Self::NotUtf8(key) => write!(f, "the value of \"{key}\" is not valid utf-8"),
            Self::BadPeer(v) => write!(
                f,
                "x.pe value \"{v}\" is not host:port or [ipv6]:port with a port from 1 to 65535"
            ),
        }
    }
}

impl std::error::Error for MagnetError {}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); `None` on a bad escape.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = (*b.get(i + 1)? as char).to_digit(16)?;
                let lo = (*b.get(i + 2)? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Percent-decodes the value of `key` into UTF-8.
fn decode_text(key: &str, value: &str, plus_is_space: bool) -> Result<String, MagnetError> {
    let bytes = percent_decode(value, plus_is_space)
        .ok_or_else(|| MagnetError::BadPercentEncoding(key.into()))?;
    String::from_utf8(bytes).map_err(|_| MagnetError::NotUtf8(key.into()))
}

/// Reads an info hash written as 40 hex or 32 base32 characters.
/// A SHA-256 multihash as magnets write it: `1220` then 64 hexadecimal digits (either case).
fn parse_multihash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("1220")?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn parse_hash(s: &str) -> Result<InfoHash, MagnetError> {
    let n = s.chars().count();
    match n {
        40 => {
            if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
                return Err(MagnetError::BadHexChar(c));
            }
            InfoHash::from_hex(s).ok_or(MagnetError::BadHashLength(n))
        }
        32 => {
            let mut out = [0u8; 20];
            let mut acc: u64 = 0;
            let mut bits = 0;
            let mut at = 0;
            for c in s.chars() {
                let up = c.to_ascii_uppercase();
                let v = BASE32
                    .iter()
                    .position(|&b| char::from(b) == up)
                    .ok_or(MagnetError::BadBase32Char(c))?;
                acc = (acc << 5) | v as u64;
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    // 32 characters are exactly 160 bits, so `at` stays below 20.
                    if let Some(slot) = out.get_mut(at) {
                        *slot = (acc >> bits) as u8;
                    }
                    at += 1;
                }
            }
            Ok(InfoHash(out))
        }
        _ => Err(MagnetError::BadHashLength(n)),
    }
}

/// Reads `host:port`, `1.2.3.4:port` or `[v6]:port`.
fn parse_peer(s: &str) -> Result<MagnetPeer, MagnetError> {
    let bad = || MagnetError::BadPeer(s.escape_debug().to_string());
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(bad());
        }
        return Ok(MagnetPeer::Addr(addr));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
    // A numeric address the socket-address parser refused for its port's form (`06881`).
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if bare.len() == host.len() && ip.is_ipv6() {
            return Err(bad()); // an IPv6 address needs its brackets
        }
        return Ok(MagnetPeer::Addr(SocketAddr::new(ip, port)));
    }
    // A host name: letters, digits, `-`, `.`, `_`; anything else (a bracket, a second colon,
    // a space) means a mistyped address rather than a name worth a DNS lookup.
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err(bad());
    }
    Ok(MagnetPeer::Host {
        host: host.to_string(),
        port,
    })
}

/// Whether `key` is `base` or `base.<digits>` (the numbered form some sites write).
fn key_is(key: &str, base: &str) -> bool {
    match key.strip_prefix(base) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Strips a case-insensitive ASCII `prefix`.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Magnet {
    /// Parses a magnet URI. Surrounding whitespace is ignored; a `#fragment` is dropped.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        let uri = uri.trim();
        if uri.len() > MAX_MAGNET_LEN {
            return Err(MagnetError::TooLong(uri.len()));
        }
        let query = strip_prefix_ci(uri, "magnet:?").ok_or(MagnetError::NotMagnet)?;
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        let mut hash: Option<InfoHash> = None;
        let mut saw_v2 = false;
        let mut hash_v2: Option<[u8; 32]> = None;
        let mut name = None;
        let mut trackers: Vec<String> = Vec::new();
        let mut peers: Vec<MagnetPeer> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key_is(key, "xt") {
                let xt = decode_text(key, value, false)?;
                if let Some(h) = strip_prefix_ci(&xt, "urn:btih:") {
                    let h = parse_hash(h)?;
                    if hash.is_some_and(|old| old != h) {
                        return Err(MagnetError::ConflictingHashes);
                    }
                    hash = Some(h);
                } else if let Some(h) = strip_prefix_ci(&xt, "urn:btmh:") {
                    saw_v2 = true;
                    if let Some(h) = parse_multihash(h) {
                        if hash_v2.is_some_and(|old| old != h) {
                            return Err(MagnetError::ConflictingHashes);
                        }
                        hash_v2 = Some(h);
                    }
                }
                // Other namespaces (urn:sha1:, urn:ed2k:...) name other networks: ignored.
            } else if key == "dn" {
                let dn = decode_text(key, value, true)?;
                name = Some(truncate_utf8(dn, MAX_NAME_LEN)).filter(|n| !n.is_empty());
            } else if key_is(key, "tr") {
                let tr = decode_text(key, value, false)?;
                if !tr.is_empty() && trackers.len() < MAX_TRACKERS && !trackers.contains(&tr) {
                    trackers.push(tr);
                }
            } else if key == "x.pe" {
                let pe = decode_text(key, value, false)?;
                let peer = parse_peer(&pe)?;
                if peers.len() < MAX_PEERS && !peers.contains(&peer) {
                    peers.push(peer);
                }
            }
        }
        let info_hash = match (hash, hash_v2) {
            (Some(h), _) => h,
            (None, Some(v2)) => InfoHash(v2[..20].try_into().expect("20 of 32 bytes")),
            (None, None) if saw_v2 => return Err(MagnetError::BadMultihash),
            (None, None) => return Err(MagnetError::MissingXt),
        };
        Ok(Magnet {
            info_hash,
            info_hash_v2: hash_v2,
            name,
            trackers,
            peers,
        })
    }

    /// The magnet of a torrent: its info hash, name and every tracker of every tier.
    pub fn from_metainfo(m: &Metainfo) -> Magnet {
        let mut trackers: Vec<String> = Vec::new();
        for url in m.tiers().into_iter().flatten() {
            if !trackers.contains(&url) {
                trackers.push(url);
            }
        }
        Magnet {
            info_hash: m.info_hash,
            info_hash_v2: m.info_hash_v2,
            name: Some(m.info.name.clone()),
            trackers,
            peers: Vec::new(),
        }
    }

    /// Whether the magnet names a v2-only torrent: a `urn:btmh` hash and no `urn:btih` one
    /// ([`Magnet::info_hash`] is then the v2 hash cut to 20 bytes).
    pub fn is_v2_only(&self) -> bool {
        self.info_hash_v2
            .is_some_and(|h| h[..20] == self.info_hash.0[..])
    }

    /// The trackers as BEP 12 tiers: one tier each, so every one of them is announced to.
    pub fn tiers(&self) -> Vec<Vec<String>> {
        self.trackers.iter().map(|t| vec![t.clone()]).collect()
    }
}

impl fmt::Display for Magnet {
    /// The URI: `magnet:?xt=urn:btih:<hex>` (and `xt=urn:btmh:1220<hex>` for a hybrid, or that
    /// alone for a v2-only torrent), then `dn`, `tr` and `x.pe`, values percent-encoded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "magnet:?")?;
        if !self.is_v2_only() {
            write!(f, "xt=urn:btih:{}", self.info_hash)?;
        }
        if let Some(h) = &self.info_hash_v2 {
            if !self.is_v2_only() {
                write!(f, "&")?;
            }
            write!(f, "xt=urn:btmh:1220")?;
            for b in h {
                write!(f, "{b:02x}")?;
            }
        }
        if let Some(n) = &self.name {
            write!(f, "&dn={}", percent_encode(n.as_bytes(), QUERY_VALUE))?;
        }
        for t in &self.trackers {
            write!(f, "&tr={}", percent_encode(t.as_bytes(), QUERY_VALUE))?;
        }
        for p in &self.peers {
            let p = p.to_string();
            write!(f, "&x.pe={}", percent_encode(p.as_bytes(), PEER_VALUE))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    /// The same hash in base32.
    const B32: &str = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";

    fn hash() -> InfoHash {
        InfoHash::from_hex(HEX).unwrap()
    }

    fn err(uri: &str) -> MagnetError {
        Magnet::parse(uri).unwrap_err()
    }

    #[test]
    fn hex_and_base32_give_the_same_hash() {
        let a = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
        let b = Magnet::parse(&format!("magnet:?xt=urn:btih:{B32}")).unwrap();
        let c =
            Magnet::parse(&format!("MAGNET:?xt=URN:BTIH:{}", B32.to_ascii_lowercase())).unwrap();
        let d = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", HEX.to_uppercase())).unwrap();
        assert_eq!(a.info_hash, hash());
        assert_eq!(b.info_hash, hash());
        assert_eq!(c.info_hash, hash());
        assert_eq!(d.info_hash, hash());
        assert_eq!(a.name, None);
        assert!(a.trackers.is_empty() && a.peers.is_empty());
    }

    #[test]
    fn reads_dn_trackers_peers_and_skips_unknown_keys() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Big+Buck%20Bunny%C3%A9&tr=udp%3A%2F%2Ftracker.example%3A80&\
             tr=http://t.example/announce?pass=a+b&tr.1=udp%3A%2F%2Ftracker.example%3A80&\
             tr.2=wss%3A%2F%2Fw.example&x.pe=10.0.0.1:6881&x.pe=%5B%3A%3A1%5D%3A51413&\
             x.pe=seed.example:7000&x.pe=10.0.0.1:06881&x.pe=[::1]:051413&ws=http%3A%2F%2Fweb&xl=1234&so=0-3&\
             kt=a+b&&=&xt=urn:sha1:XYZ&xt=urn:btmh:1220abcd&noequals"
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.info_hash, hash());
        assert_eq!(m.name.as_deref(), Some("Big Buck Bunnyé"));
        assert_eq!(
            m.trackers,
            [
                "udp://tracker.example:80",
                "http://t.example/announce?pass=a+b",
                "wss://w.example"
            ]
        );
        assert_eq!(
            m.peers,
            [
                MagnetPeer::Addr("10.0.0.1:6881".parse().unwrap()),
                MagnetPeer::Addr("[::1]:51413".parse().unwrap()),
                MagnetPeer::Host {
                    host: "seed.example".into(),
                    port: 7000
                },
            ]
        );
        assert_eq!(m.tiers().len(), 3);
        // The same hash twice is fine; a fragment is dropped.
        let m = Magnet::parse(&format!(
            "  magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{B32}#frag  "
        ))
        .unwrap();
        assert_eq!(m.info_hash, hash());
    }

    #[test]
    fn every_error_names_the_problem() {
        let cases: Vec<(String, MagnetError, &str)> = vec![
            (
                "http://example.com/?xt=urn:btih:x".into(),
                MagnetError::NotMagnet,
                "not a magnet uri",
            ),
            ("magnet:xt=urn".into(), MagnetError::NotMagnet, "magnet:?"),
            ("".into(), MagnetError::NotMagnet, "not a magnet uri"),
            (
                format!("magnet:?{}", "a".repeat(MAX_MAGNET_LEN)),
                MagnetError::TooLong(MAX_MAGNET_LEN + 8),
                "more than the maximum",
            ),
            (
                "magnet:?dn=x&tr=udp%3A%2F%2Fa".into(),
                MagnetError::MissingXt,
                "no \"xt=urn:btih:\"",
            ),
            (
                "magnet:?xt=urn:btmh:1220cafe".into(),
                MagnetError::BadMultihash,
                "v2 hash",
            ),
            (
                "magnet:?xt=urn:btih:abc".into(),
                MagnetError::BadHashLength(3),
                "3 characters long",
            ),
            (
                format!("magnet:?xt=urn:btih:{}g", &HEX[..39]),
                MagnetError::BadHexChar('g'),
                "'g', which is not a hexadecimal digit",
            ),
            (
                format!("magnet:?xt=urn:btih:{}1", &B32[..31]),
                MagnetError::BadBase32Char('1'),
                "'1', which is not a base32 character",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{}", "0".repeat(40)),
                MagnetError::ConflictingHashes,
                "two different info hashes",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&tr=udp%3"),
                MagnetError::BadPercentEncoding("tr".into()),
                "bad percent-encoding in the value of \"tr\"",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&dn=%zz"),
                MagnetError::BadPercentEncoding("dn".into()),
                "\"dn\"",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&dn=%ff%fe"),
                MagnetError::NotUtf8("dn".into()),
                "not valid utf-8",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4"),
                MagnetError::BadPeer("1.2.3.4".into()),
                "x.pe value \"1.2.3.4\"",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4:0"),
                MagnetError::BadPeer("1.2.3.4:0".into()),
                "port from 1",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&x.pe=[::1:80"),
                MagnetError::BadPeer("[::1:80".into()),
                "x.pe",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&x.pe=::1:80"),
                MagnetError::BadPeer("::1:80".into()),
                "x.pe",
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&x.pe=host:99999"),
                MagnetError::BadPeer("host:99999".into()),
                "x.pe",
            ),
        ];
        for (uri, want, text) in cases {
            let got = err(&uri);
            assert_eq!(got, want, "{uri}");
            let shown = got.to_string();
            assert!(shown.contains(text), "{shown:?} lacks {text:?}");
            assert!(!shown.starts_with(char::is_uppercase), "{shown}");
        }
    }

    #[test]
    fn trackers_and_peers_are_capped() {
        let mut uri = format!("magnet:?xt=urn:btih:{HEX}");
        for i in 0..MAX_TRACKERS + 50 {
            uri.push_str(&format!("&tr=http%3A%2F%2Ft{i}&x.pe=10.0.0.1:{}", i + 1));
        }
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.trackers.len(), MAX_TRACKERS);
        assert_eq!(m.peers.len(), MAX_PEERS);
        assert_eq!(m.trackers[0], "http://t0");
        let long = format!("magnet:?xt=urn:btih:{HEX}&dn={}", "é".repeat(MAX_NAME_LEN));
        let m = Magnet::parse(&long).unwrap();
        assert!(m.name.unwrap().len() <= MAX_NAME_LEN);
    }

    #[test]
    fn reads_and_writes_a_hybrids_v2_hash() {
        let v2 = "0baee78725a11fc7c21b68d742f3d91ed426f13c0ece3ead866446bc80676332";
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btmh:1220{v2}")).unwrap();
        let want: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&v2[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(m.info_hash_v2.unwrap()[..], want[..]);
        assert!(m.to_string().contains(&format!("xt=urn:btmh:1220{v2}")));
        assert_eq!(Magnet::parse(&m.to_string()).unwrap(), m);
        let upper = Magnet::parse(&format!(
            "magnet:?xt=urn:btmh:1220{}&xt=urn:btih:{HEX}",
            v2.to_uppercase()
        ))
        .unwrap();
        assert_eq!(upper.info_hash_v2, m.info_hash_v2);
        // Two different v2 hashes name two torrents.
        let other = format!("{}0", &v2[..63]);
        assert_eq!(
            err(&format!(
                "magnet:?xt=urn:btih:{HEX}&xt=urn:btmh:1220{v2}&xt=urn:btmh:1220{other}"
            )),
            MagnetError::ConflictingHashes
        );
        // Only a v2 hash: a v2-only torrent, known on the wire by the hash's first 20 bytes.
        let only = Magnet::parse(&format!("magnet:?xt=urn:btmh:1220{v2}&dn=x")).unwrap();
        assert!(only.is_v2_only() && !m.is_v2_only());
        assert_eq!(only.info_hash.to_string(), v2[..40]);
        assert_eq!(
            only.to_string(),
            format!("magnet:?xt=urn:btmh:1220{v2}&dn=x")
        );
        assert_eq!(Magnet::parse(&only.to_string()).unwrap(), only);
        let v2_only = format!(
            "{}/../fuzz/corpus/metainfo_v2/seed-lt-v2-single.torrent",
            env!("CARGO_MANIFEST_DIR")
        );
        let meta = Metainfo::from_bytes(&std::fs::read(v2_only).unwrap()).unwrap();
        let link = Magnet::from_metainfo(&meta);
        assert!(link.is_v2_only(), "{link}");
        assert!(!link.to_string().contains("btih"), "{link}");
        assert_eq!(Magnet::parse(&link.to_string()).unwrap(), link);
        // A hybrid torrent's magnet carries both hashes.
        let path = format!(
            "{}/../fuzz/corpus/metainfo_v2/seed-lt-hybrid-multi.torrent",
            env!("CARGO_MANIFEST_DIR")
        );
        let meta = Metainfo::from_bytes(&std::fs::read(path).unwrap()).unwrap();
        let link = Magnet::from_metainfo(&meta).to_string();
        assert!(link.contains(&format!("xt=urn:btmh:1220{v2}")), "{link}");
    }

    #[test]
    fn writes_what_it_reads() {
        let m = Magnet {
            info_hash: hash(),
            info_hash_v2: None,
            name: Some("a b&c=d/é+%".into()),
            trackers: vec![
                "udp://t.example:80/announce".into(),
                "http://t/a?x=1&y=2".into(),
            ],
            peers: vec![
                MagnetPeer::Addr("[2001:db8::1]:6881".parse().unwrap()),
                MagnetPeer::Host {
                    host: "h.example".into(),
                    port: 1,
                },
            ],
        };
        let uri = m.to_string();
        assert!(uri.starts_with(&format!("magnet:?xt=urn:btih:{HEX}&dn=a%20b%26c%3Dd%2F")));
        assert!(uri.contains("&tr=udp%3A%2F%2Ft.example%3A80%2Fannounce&"));
        assert!(uri.ends_with("&x.pe=[2001:db8::1]:6881&x.pe=h.example:1"));
        assert_eq!(Magnet::parse(&uri).unwrap(), m);
    }

    #[test]
    fn from_a_fixture_torrent_and_back() {
        let bytes = include_bytes!("../../fuzz/corpus/metainfo/seed-multi.torrent");
        let meta = Metainfo::from_bytes(bytes).unwrap();
        let m = Magnet::from_metainfo(&meta);
        assert_eq!(m.info_hash, meta.info_hash);
        assert_eq!(m.name.as_deref(), Some(meta.info.name.as_str()));
        // Three tiers with the first URL twice: deduplicated, order kept.
        assert_eq!(
            m.trackers,
            [
                "http://a.invalid/announce",
                "udp://b.invalid:80",
                "http://c.invalid/announce"
            ]
        );
        let uri = m.to_string();
        assert_eq!(
            uri,
            format!(
                "magnet:?xt=urn:btih:{}&dn={}&tr=http%3A%2F%2Fa.invalid%2Fannounce\
                 &tr=udp%3A%2F%2Fb.invalid%3A80&tr=http%3A%2F%2Fc.invalid%2Fannounce",
                meta.info_hash, meta.info.name
            )
        );
        assert_eq!(Magnet::parse(&uri).unwrap(), m);
    }

    #[test]
    fn reads_the_magnet_libtorrent_writes_for_the_fixture() {
        // `lt.make_magnet_uri` of python3-libtorrent 2.0.8 for seed-multi.torrent: lowercase
        // escapes, same parameters as ours.
        let lt = "magnet:?xt=urn:btih:e3bd6542d37838513795d3316fce4c33f79bd869&dn=multi\
                  &tr=http%3a%2f%2fa.invalid%2fannounce&tr=udp%3a%2f%2fb.invalid%3a80\
                  &tr=http%3a%2f%2fc.invalid%2fannounce";
        let bytes = include_bytes!("../../fuzz/corpus/metainfo/seed-multi.torrent");
        let meta = Metainfo::from_bytes(bytes).unwrap();
        assert_eq!(Magnet::parse(lt).unwrap(), Magnet::from_metainfo(&meta));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = Magnet::parse(&s);
            let _ = Magnet::parse(&format!("magnet:?{s}"));
            let _ = Magnet::parse(&format!("magnet:?xt=urn:btih:{s}"));
        }

        #[test]
        fn round_trips(
            h in any::<[u8; 20]>(),
            name in prop::option::of(".{1,30}"),
            trackers in prop::collection::vec("[a-z]{1,5}://[ -~]{1,20}", 0..5),
            ports in prop::collection::vec(1u16.., 0..4),
        ) {
            let mut dedup: Vec<String> = Vec::new();
            for t in trackers {
                if !dedup.contains(&t) { dedup.push(t); }
            }
            let peers: Vec<MagnetPeer> = ports
                .iter()
                .enumerate()
                .map(|(i, &p)| MagnetPeer::Addr(SocketAddr::from(([10, 0, 0, i as u8], p))))
                .collect();
            let m = Magnet { info_hash: InfoHash(h), info_hash_v2: None, name, trackers: dedup, peers };
            prop_assert_eq!(Magnet::parse(&m.to_string()).unwrap(), m);
        }
    }
}
