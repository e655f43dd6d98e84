//! Peer exchange (BEP 11): the `ut_pex` message, and what to tell each peer and when.
//!
//! A `ut_pex` message is a bencoded dictionary of compact peer lists: `added` (6 bytes per
//! IPv4 peer) with one flag byte per peer in `added.f`, `dropped`, and the IPv6 forms
//! `added6` / `added6.f` / `dropped6` (18 bytes per peer).
//!
//! [`PexMessage::parse`] never panics and is bounded whatever a peer sends: it looks at no
//! more than [`MAX_PEERS_TAKEN`] added and as many dropped entries of one message (a
//! 10,000-peer list costs what a 200-peer one does), skips port 0 and unspecified addresses,
//! and folds IPv4-mapped IPv6 addresses to IPv4.
//!
//! [`PexState`] is the per-connection sans-IO state: given the peers we are connected to at
//! `now`, [`PexState::poll_message`] produces the next message to send, at most once per
//! [`PEX_INTERVAL`] and with at most [`MAX_ADDED_PER_MESSAGE`] added and
//! [`MAX_DROPPED_PER_MESSAGE`] dropped peers, diffed against what that peer was told before.
//! [`PexState::handle_message`] reads what the peer sends, ignoring messages that come faster
//! than [`MIN_INCOMING_INTERVAL`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::BitOr;
use std::time::{Duration, Instant};

use crate::bencode::{self, Value};

/// How often a message may go to one peer: BEP 11 says at most once a minute.
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);

/// The most added peers in one message we send (BEP 11's limit of 50).
pub const MAX_ADDED_PER_MESSAGE: usize = 50;

/// The most dropped peers in one message we send (BEP 11's limit of 50).
pub const MAX_DROPPED_PER_MESSAGE: usize = 50;

/// The most added entries (IPv4 and IPv6 together) read from one received message, and the
/// most dropped ones; the rest are ignored. Four times what a well-behaved peer sends, so a
/// lenient client's larger message is still useful, while a hostile 10,000-peer list costs no
/// more than this.
pub const MAX_PEERS_TAKEN: usize = 200;

/// Received messages closer together than this are ignored. Peers send one a minute; libtorrent
/// sends its first soon after the handshake, so a little slack is allowed.
pub const MIN_INCOMING_INTERVAL: Duration = Duration::from_secs(20);

/// The most connected peers a [`PexState`] compares against, and so the most it remembers
/// telling one peer. Connection limits keep the real number far lower.
pub const MAX_TOLD: usize = 1000;

/// The flag byte of a peer in `added.f` / `added6.f`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// 0x01: the peer prefers encrypted connections.
    pub const ENCRYPTION: PexFlags = PexFlags(0x01);
    /// 0x02: the peer is a seed (or upload-only).
    pub const SEED: PexFlags = PexFlags(0x02);
    /// 0x04: the peer supports uTP.
    pub const UTP: PexFlags = PexFlags(0x04);
    /// 0x08: the peer supports the `ut_holepunch` extension.
    pub const HOLEPUNCH: PexFlags = PexFlags(0x08);
    /// 0x10: the peer is reachable: the sender connected to it (it accepts connections).
    pub const REACHABLE: PexFlags = PexFlags(0x10);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: PexFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for PexFlags {
    type Output = PexFlags;
    fn bitor(self, rhs: PexFlags) -> PexFlags {
        PexFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for PexFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::ENCRYPTION, "encryption"),
            (Self::SEED, "seed"),
            (Self::UTP, "utp"),
            (Self::HOLEPUNCH, "holepunch"),
            (Self::REACHABLE, "reachable"),
        ];
        write!(f, "PexFlags(")?;
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                write!(f, "{}{name}", if first { "" } else { "|" })?;
                first = false;
            }
        }
        let unknown = self.0 & !0x1f;
        if unknown != 0 {
            write!(f, "{}{unknown:#04x}", if first { "" } else { "|" })?;
        }
        write!(f, ")")
    }
}

/// A peer in an added list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PexPeer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it supports.
    pub flags: PexFlags,
}

/// One `ut_pex` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers the sender connected to since its last message (IPv4 and IPv6).
    pub added: Vec<PexPeer>,
    /// Peers the sender disconnected from since its last message (IPv4 and IPv6).
    pub dropped: Vec<SocketAddr>,
}

/// Why a `ut_pex` message was refused; the caller ignores the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PexError {
    /// The payload is not a bencoded dictionary.
    Malformed,
    /// A compact list whose length is not a multiple of its entry size.
    BadLength {
        /// The key.
        key: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The entry size: 6 or 18.
        entry: usize,
    },
}

impl fmt::Display for PexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => write!(f, "ut_pex message is not a bencoded dictionary"),
            Self::BadLength { key, len, entry } => write!(
                f,
                "ut_pex \"{key}\" of {len} bytes is not a multiple of {entry}"
            ),
        }
    }
}

impl std::error::Error for PexError {}

/// An address worth passing on: a port, a specified address, IPv4-mapped folded to IPv4.
fn usable(addr: SocketAddr) -> Option<SocketAddr> {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    (addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast())
        .then_some(SocketAddr::new(ip, addr.port()))
}

/// Reads compact entries of `entry` bytes (6 or 18) from `s`, at most `room` of them.
fn compact<'a>(
    key: &'static str,
    s: &'a [u8],
    entry: usize,
    room: usize,
) -> Result<impl Iterator<Item = (usize, SocketAddr)> + 'a, PexError> {
    if s.len() % entry != 0 {
        return Err(PexError::BadLength {
            key,
            len: s.len(),
            entry,
        });
    }
    Ok(s.chunks_exact(entry)
        .take(room)
        .enumerate()
        .filter_map(move |(i, c)| {
            let (ip, port) = c.split_at(entry - 2);
            let ip = match <[u8; 4]>::try_from(ip) {
                Ok(b) => IpAddr::V4(Ipv4Addr::from(b)),
                Err(_) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?)),
            };
            let port = u16::from_be_bytes([port[0], port[1]]);
            usable(SocketAddr::new(ip, port)).map(|a| (i, a))
        }))
}

/// Appends a bencoded byte string.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Appends one compact entry.
fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

impl PexMessage {
    /// Whether the message has nothing to say.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Reads a `ut_pex` payload (what follows the extended message id). Keys of the wrong type
    /// and unknown keys are skipped; a flag list shorter than its peer list gives the missing
    /// peers no flags. Duplicates are kept once.
    pub fn parse(payload: &[u8]) -> Result<PexMessage, PexError> {
        let Ok((Value::Dict(dict), _)) = bencode::decode_prefix(payload) else {
            return Err(PexError::Malformed);
        };
        let (mut added, mut added_f, mut added6, mut added6_f) = (None, None, None, None);
        let (mut dropped, mut dropped6) = (None, None);
        for (key, value) in dict.pairs() {
            let Value::Bytes(b) = value else { continue };
            match key {
                b"added" => added = Some(b),
                b"added.f" => added_f = Some(b),
                b"added6" => added6 = Some(b),
                b"added6.f" => added6_f = Some(b),
                b"dropped" => dropped = Some(b),
                b"dropped6" => dropped6 = Some(b),
                _ => {}
            }
        }
        let mut msg = PexMessage::default();
        for (key, list, flags, entry) in [
            ("added", added, added_f, 6),
            ("added6", added6, added6_f, 18),
        ] {
            let room = MAX_PEERS_TAKEN - msg.added.len();
            for (i, addr) in compact(key, list.unwrap_or_default(), entry, room)? {
                let flags = PexFlags(flags.and_then(|f| f.get(i)).copied().unwrap_or(0));
                if !msg.added.iter().any(|p| p.addr == addr) {
                    msg.added.push(PexPeer { addr, flags });
                }
            }
        }
        for (key, list, entry) in [("dropped", dropped, 6), ("dropped6", dropped6, 18)] {
            let room = MAX_PEERS_TAKEN - msg.dropped.len();
            for (_, addr) in compact(key, list.unwrap_or_default(), entry, room)? {
                if !msg.dropped.contains(&addr) {
                    msg.dropped.push(addr);
                }
            }
        }
        Ok(msg)
    }

    /// Appends the payload (what follows the extended message id) to `out`: all six keys,
    /// in sorted order, each list split by address family.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (mut a4, mut f4, mut a6, mut f6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in &self.added {
            if p.addr.is_ipv4() {
                put_addr(&mut a4, p.addr);
                f4.push(p.flags.0);
            } else {
                put_addr(&mut a6, p.addr);
                f6.push(p.flags.0);
            }
        }
        let (mut d4, mut d6) = (Vec::new(), Vec::new());
        for &a in &self.dropped {
            put_addr(if a.is_ipv4() { &mut d4 } else { &mut d6 }, a);
        }
        out.push(b'd');
        for (key, value) in [
            ("added", &a4),
            ("added.f", &f4),
            ("added6", &a6),
            ("added6.f", &f6),
            ("dropped", &d4),
            ("dropped6", &d6),
        ] {
            put_bytes(out, key.as_bytes());
            put_bytes(out, value);
        }
        out.push(b'e');
    }
}

/// What we exchange with one peer over `ut_pex`.
#[derive(Clone, Debug)]
pub struct PexState {
    /// The peer's own listen address: never sent to it.
    remote: SocketAddr,
    /// The peers we told it about (added and not dropped since), with the flags we gave.
    told: BTreeMap<SocketAddr, PexFlags>,
    /// When we last sent a message.
    last_sent: Option<Instant>,
    /// When we last took a message from it.
    last_received: Option<Instant>,
}

impl PexState {
    /// The state for a connection to the peer listening at `remote`.
    pub fn new(remote: SocketAddr) -> Self {
        Self {
            remote,
            told: BTreeMap::new(),
            last_sent: None,
            last_received: None,
        }
    }

    /// How many peers the remote currently knows of from us.
    pub fn told_len(&self) -> usize {
        self.told.len()
    }

    /// The earliest time [`PexState::poll_message`] may produce a message; `None` when it may
    /// already (nothing was sent yet).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.last_sent.map(|t| t + PEX_INTERVAL)
    }

    /// The message to send now, given the peers we are connected to (their listen addresses
    /// and flags, in the order the caller prefers them told), or `None` when a message went
    /// out less than [`PEX_INTERVAL`] ago or nothing changed. Added peers are those new since
    /// the last message or whose flags changed, at most [`MAX_ADDED_PER_MESSAGE`]; dropped
    /// ones are those told before and no longer connected, at most
    /// [`MAX_DROPPED_PER_MESSAGE`]. What does not fit waits for the next message.
    pub fn poll_message(
        &mut self,
        now: Instant,
        connected: impl IntoIterator<Item = PexPeer>,
    ) -> Option<PexMessage> {
        if self.last_sent.is_some_and(|t| now < t + PEX_INTERVAL) {
            return None;
        }
        let mut current: BTreeMap<SocketAddr, PexFlags> = BTreeMap::new();
        let mut order: Vec<PexPeer> = Vec::new();
        for p in connected {
            if current.len() >= MAX_TOLD {
                break;
            }
            let Some(addr) = usable(p.addr) else { continue };
            if addr == self.remote || current.contains_key(&addr) {
                continue;
            }
            current.insert(addr, p.flags);
            order.push(PexPeer {
                addr,
                flags: p.flags,
            });
        }
        let mut msg = PexMessage::default();
        for &addr in self.told.keys() {
            if msg.dropped.len() >= MAX_DROPPED_PER_MESSAGE {
                break;
            }
            if !current.contains_key(&addr) {
                msg.dropped.push(addr);
            }
        }
        for p in order {
            if msg.added.len() >= MAX_ADDED_PER_MESSAGE {
                break;
            }
            if self.told.get(&p.addr) != Some(&p.flags)
                && (self.told.contains_key(&p.addr) || self.told.len() < MAX_TOLD)
            {
                msg.added.push(p);
            }
        }
        if msg.is_empty() {
            return None;
        }
        for a in &msg.dropped {
            self.told.remove(a);
        }
        for p in &msg.added {
            if self.told.contains_key(&p.addr) || self.told.len() < MAX_TOLD {
                self.told.insert(p.addr, p.flags);
            }
        }
        self.last_sent = Some(now);
        Some(msg)
    }

    /// Reads a message from the peer. `Ok(None)` when it came less than
    /// [`MIN_INCOMING_INTERVAL`] after the last one taken (it is ignored, unparsed).
    pub fn handle_message(
        &mut self,
        now: Instant,
        payload: &[u8],
    ) -> Result<Option<PexMessage>, PexError> {
        if self
            .last_received
            .is_some_and(|t| now < t + MIN_INCOMING_INTERVAL)
        {
            return Ok(None);
        }
        self.last_received = Some(now);
        PexMessage::parse(payload).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], port))
    }

    fn peer(n: u16) -> PexPeer {
        PexPeer {
            addr: SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 6881)),
            flags: PexFlags::default(),
        }
    }

    #[test]
    fn round_trips_both_families_with_flags() {
        let msg = PexMessage {
            added: vec![
                PexPeer {
                    addr: v4(1, 6881),
                    flags: PexFlags::ENCRYPTION | PexFlags::SEED,
                },
                PexPeer {
                    addr: "[2001:db8::1]:51413".parse().unwrap(),
                    flags: PexFlags::UTP | PexFlags::HOLEPUNCH | PexFlags::REACHABLE,
                },
                PexPeer {
                    addr: v4(2, 1),
                    flags: PexFlags::default(),
                },
            ],
            dropped: vec![v4(3, 80), "[::2]:7".parse().unwrap()],
        };
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert!(bencode::decode(&out).is_ok(), "canonical bencode");
        let mut want = b"d5:added12:\x0a\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x00\x017:added.f2:\x03\x006:added618:".to_vec();
        want.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(
            b"\xc8\xd58:added6.f1:\x1c7:dropped6:\x0a\x00\x00\x03\x00\x508:dropped618:",
        );
        want.extend_from_slice(&"::2".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(b"\x00\x07e");
        assert_eq!(out, want);
        let back = PexMessage::parse(&out).unwrap();
        // IPv4 peers come first on the way back.
        assert_eq!(back.added, [msg.added[0], msg.added[2], msg.added[1]]);
        assert_eq!(back.dropped, msg.dropped);
        assert!(back.added[1].flags == PexFlags::default());
        assert!(back.added[2]
            .flags
            .contains(PexFlags::REACHABLE | PexFlags::UTP));
        assert!(!back.added[2].flags.contains(PexFlags::SEED));
        assert_eq!(
            format!("{:?}", back.added[2].flags),
            "PexFlags(utp|holepunch|reachable)"
        );
        let mut empty = Vec::new();
        PexMessage::default().encode(&mut empty);
        assert_eq!(PexMessage::parse(&empty), Ok(PexMessage::default()));
    }

    #[test]
    fn reads_leniently_but_bounded() {
        // Short flag list, port 0, unspecified and mapped addresses, duplicates, other keys.
        let mut added = Vec::new();
        for (ip, port) in [
            ([1, 2, 3, 4], 5u16),
            ([0, 0, 0, 0], 9),
            ([1, 1, 1, 1], 0),
            ([1, 2, 3, 4], 5),
            ([5, 6, 7, 8], 9),
        ] {
            added.extend_from_slice(&ip);
            added.extend_from_slice(&port.to_be_bytes());
        }
        let mut mapped = "::ffff:9.9.9.9"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        mapped.extend_from_slice(&[0, 10]);
        let mut p = b"d5:added30:".to_vec();
        p.extend_from_slice(&added);
        p.extend_from_slice(b"7:added.f1:\x026:added618:");
        p.extend_from_slice(&mapped);
        p.extend_from_slice(b"7:dropped0:8:dropped6i3e1:xle1:yi0ee");
        let m = PexMessage::parse(&p).unwrap();
        assert_eq!(
            m.added,
            [
                PexPeer {
                    addr: "1.2.3.4:5".parse().unwrap(),
                    flags: PexFlags::SEED
                },
                PexPeer {
                    addr: "5.6.7.8:9".parse().unwrap(),
                    flags: PexFlags::default()
                },
                PexPeer {
                    addr: "9.9.9.9:10".parse().unwrap(),
                    flags: PexFlags::default()
                },
            ]
        );
        assert!(m.dropped.is_empty());
        // Bad lengths and non-dictionaries are refused.
        let e = PexMessage::parse(b"d5:added7:1234567e").unwrap_err();
        assert_eq!(
            e,
            PexError::BadLength {
                key: "added",
                len: 7,
                entry: 6
            }
        );
        assert_eq!(
            e.to_string(),
            "ut_pex \"added\" of 7 bytes is not a multiple of 6"
        );
        for bad in [&b""[..], b"le", b"d5:added", b"i1e", b"d8:dropped65:12345e"] {
            assert!(PexMessage::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_ten_thousand_peer_message_stays_bounded() {
        let n = 10_000usize;
        let mut added = Vec::with_capacity(n * 6);
        let mut added6 = Vec::with_capacity(n * 18);
        for i in 0..n {
            added.extend_from_slice(&[10, 2, (i >> 8) as u8, i as u8, 0x1a, 0xe1]);
            let mut ip = [0u8; 16];
            ip[0] = 0x20;
            ip[14] = (i >> 8) as u8;
            ip[15] = i as u8;
            added6.extend_from_slice(&ip);
            added6.extend_from_slice(&[0x1a, 0xe1]);
        }
        let mut p = format!("d5:added{}:", added.len()).into_bytes();
        p.extend_from_slice(&added);
        p.extend_from_slice(format!("6:added6{}:", added6.len()).as_bytes());
        p.extend_from_slice(&added6);
        p.extend_from_slice(format!("7:dropped{}:", added.len()).as_bytes());
        p.extend_from_slice(&added);
        p.push(b'e');
        assert!(p.len() < crate::wire::DEFAULT_MAX_MESSAGE_LEN as usize);
        let m = PexMessage::parse(&p).unwrap();
        assert_eq!(m.added.len(), MAX_PEERS_TAKEN);
        assert!(
            m.added.iter().all(|p| p.addr.is_ipv4()),
            "v4 list fills the room first"
        );
        assert_eq!(m.dropped.len(), MAX_PEERS_TAKEN);
    }

    #[test]
    fn one_message_a_minute_at_most() {
        let t0 = Instant::now();
        let mut s = PexState::new(v4(99, 1));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.poll_message(t0, []), None, "nothing to say");
        let m = s.poll_message(t0, [peer(1), peer(2)]).unwrap();
        assert_eq!(m.added, [peer(1), peer(2)]);
        assert_eq!(s.poll_timeout(), Some(t0 + PEX_INTERVAL));
        // Changes within the minute wait.
        let t = t0 + Duration::from_secs(59);
        assert_eq!(s.poll_message(t, [peer(1), peer(3)]), None);
        let t1 = t0 + PEX_INTERVAL;
        let m = s.poll_message(t1, [peer(1), peer(3)]).unwrap();
        assert_eq!(m.added, [peer(3)]);
        assert_eq!(m.dropped, [peer(2).addr]);
        // Nothing changed: no message, and the next change may go at once.
        let t2 = t1 + PEX_INTERVAL * 2;
        assert_eq!(s.poll_message(t2, [peer(3), peer(1)]), None);
        let m = s.poll_message(t2, [peer(1)]).unwrap();
        assert_eq!(m.dropped, [peer(3).addr]);
        assert!(m.added.is_empty());
    }

    #[test]
    fn caps_at_fifty_and_diffs_against_what_was_told() {
        let t0 = Instant::now();
        let remote = peer(7).addr;
        let mut s = PexState::new(remote);
        let all: Vec<PexPeer> = (0..120).map(peer).collect();
        let m = s.poll_message(t0, all.iter().copied()).unwrap();
        assert_eq!(m.added.len(), MAX_ADDED_PER_MESSAGE);
        // The remote itself (peer 7) is never told about.
        let without_remote: Vec<PexPeer> = all[..51]
            .iter()
            .copied()
            .filter(|p| p.addr != remote)
            .collect();
        assert_eq!(m.added, without_remote);
        let m = s
            .poll_message(t0 + PEX_INTERVAL, all.iter().copied())
            .unwrap();
        assert_eq!(m.added, all[51..101]);
        let m = s
            .poll_message(t0 + PEX_INTERVAL * 2, all.iter().copied())
            .unwrap();
        assert_eq!(m.added, all[101..]);
        assert_eq!(s.told_len(), 119);
        // A changed flag is told again; everything gone is dropped 50 at a time.
        let mut seed = peer(3);
        seed.flags = PexFlags::SEED;
        let m = s.poll_message(t0 + PEX_INTERVAL * 3, [seed]).unwrap();
        assert_eq!(m.added, [seed]);
        assert_eq!(m.dropped.len(), MAX_DROPPED_PER_MESSAGE);
        let mut dropped = m.dropped.len();
        for k in 4..10 {
            let Some(m) = s.poll_message(t0 + PEX_INTERVAL * k, [seed]) else {
                break;
            };
            assert!(m.added.is_empty());
            dropped += m.dropped.len();
        }
        assert_eq!(dropped, 118);
        assert_eq!(s.told_len(), 1);
    }

    #[test]
    fn incoming_messages_are_rate_limited() {
        let t0 = Instant::now();
        let mut s = PexState::new(v4(1, 1));
        let mut p = Vec::new();
        PexMessage {
            added: vec![peer(1)],
            dropped: vec![],
        }
        .encode(&mut p);
        assert_eq!(s.handle_message(t0, &p).unwrap().unwrap().added, [peer(1)]);
        assert_eq!(s.handle_message(t0 + Duration::from_secs(5), &p), Ok(None));
        assert!(s
            .handle_message(t0 + MIN_INCOMING_INTERVAL, &p)
            .unwrap()
            .is_some());
        assert_eq!(
            s.handle_message(t0 + MIN_INCOMING_INTERVAL * 3, b"junk"),
            Err(PexError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = PexMessage::parse(&bytes) {
                prop_assert!(m.added.len() <= MAX_PEERS_TAKEN);
                let mut out = Vec::new();
                m.encode(&mut out);
                let back = PexMessage::parse(&out).unwrap();
                prop_assert_eq!(back.added.len(), m.added.len());
            }
        }

        #[test]
        fn state_tracks_the_connected_set(
            rounds in prop::collection::vec(prop::collection::btree_set(0u16..80, 0..70), 1..8),
        ) {
            let t0 = Instant::now();
            let mut s = PexState::new(v4(250, 1));
            // What the remote believes we are connected to, from the messages alone.
            let mut belief = std::collections::BTreeSet::new();
            for (k, set) in rounds.iter().enumerate() {
                let mut now = t0 + PEX_INTERVAL * (k as u32 * 10);
                // Repeat until the caps let everything through.
                for _ in 0..5 {
                    if let Some(m) = s.poll_message(now, set.iter().map(|&n| peer(n))) {
                        prop_assert!(m.added.len() <= MAX_ADDED_PER_MESSAGE);
                        prop_assert!(m.dropped.len() <= MAX_DROPPED_PER_MESSAGE);
                        for a in &m.dropped { prop_assert!(belief.remove(a)); }
                        for p in &m.added { prop_assert!(belief.insert(p.addr)); }
                    }
                    now += PEX_INTERVAL;
                }
                let want: std::collections::BTreeSet<SocketAddr> =
                    set.iter().map(|&n| peer(n).addr).collect();
                prop_assert_eq!(&belief, &want);
            }
        }
    }
}
