//! The extension protocol handshake (BEP 10): encoding ours, reading a peer's.
//!
//! The handshake is the extended message with id 0, a bencoded dictionary. Its `m` maps the
//! names of the extension messages the sender understands to the ids it wants them sent with
//! (0 disables one). We advertise `ut_metadata` (BEP 9, with `metadata_size` once we have the
//! info dictionary) and `ut_pex` (BEP 11, left out for private torrents); a caller turns either
//! off by passing no id.
//!
//! From a peer's handshake we read `m` (at most [`MAX_EXTENSIONS`] names of at most
//! [`MAX_EXTENSION_NAME_LEN`] bytes), `metadata_size` (kept as the raw integer: the metadata
//! fetch validates it), `reqq`, `v`, `p` and `yourip`. The payload is read with the borrowing
//! decoder of [`crate::bencode`], which allocates nothing and bounds nesting. As in the peer
//! actor's first version: anything malformed is `None` (the caller ignores the message instead
//! of dropping the peer), bytes after the dictionary are ignored, unknown keys and values of an
//! unexpected type are skipped, and a later duplicate key wins.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bencode::{self, Value};

/// The name of the metadata exchange extension (BEP 9).
pub const UT_METADATA: &str = "ut_metadata";

/// The name of the peer exchange extension (BEP 11).
pub const UT_PEX: &str = "ut_pex";

/// The id we ask peers to send `ut_metadata` messages with. Any non-zero byte works; libtorrent
/// uses 2 and 1, and matching it makes captures easier to compare.
pub const OUR_UT_METADATA_ID: u8 = 2;

/// The id we ask peers to send `ut_pex` messages with.
pub const OUR_UT_PEX_ID: u8 = 1;

/// The most `m` entries kept from one handshake; later ones are ignored. libtorrent sends
/// 6, and no client knows dozens of extensions, so 32 leaves room without letting a peer make
/// us keep thousands of names.
pub const MAX_EXTENSIONS: usize = 32;

/// Longest extension name kept; longer ones are skipped. Real names are under 16 bytes.
pub const MAX_EXTENSION_NAME_LEN: usize = 32;

/// Longest client name kept from `v` (the rest is cut).
pub const MAX_CLIENT_LEN: usize = 64;

/// Our extended handshake: what [`OurHandshake::encode`] writes. `None` leaves a key out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OurHandshake<'a> {
    /// The id for `ut_metadata` in `m`; `None` to not offer metadata exchange.
    pub ut_metadata: Option<u8>,
    /// The id for `ut_pex` in `m`; `None` for private torrents or with PEX turned off.
    pub ut_pex: Option<u8>,
    /// The size of our info dictionary, once we have it (BEP 9).
    pub metadata_size: Option<u64>,
    /// `p`: the port we listen on.
    pub listen_port: Option<u16>,
    /// `reqq`: how many requests we queue for a peer.
    pub reqq: Option<u32>,
    /// `v`: our client name and version.
    pub client: Option<&'a str>,
    /// `yourip`: the peer's address as we see it, which helps it learn its public address.
    pub yourip: Option<IpAddr>,
}

/// Appends a bencoded byte string.
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Appends a bencoded integer.
fn put_int(out: &mut Vec<u8>, n: impl std::fmt::Display) {
    out.extend_from_slice(format!("i{n}e").as_bytes());
}

impl OurHandshake<'_> {
    /// The payload of the extended handshake (extended id 0), keys in sorted order as bencode
    /// wants: `m`, `metadata_size`, `p`, `reqq`, `v`, `yourip`. An id of 0 is left out of `m`,
    /// as is a port of 0.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(b'd');
        put_bytes(&mut out, b"m");
        out.push(b'd');
        // Sorted: "ut_metadata" < "ut_pex".
        if let Some(id) = self.ut_metadata.filter(|&id| id != 0) {
            put_bytes(&mut out, UT_METADATA.as_bytes());
            put_int(&mut out, id);
        }
        if let Some(id) = self.ut_pex.filter(|&id| id != 0) {
            put_bytes(&mut out, UT_PEX.as_bytes());
            put_int(&mut out, id);
        }
        out.push(b'e');
        if let Some(n) = self.metadata_size {
            put_bytes(&mut out, b"metadata_size");
            put_int(&mut out, n);
        }
        if let Some(p) = self.listen_port.filter(|&p| p != 0) {
            put_bytes(&mut out, b"p");
            put_int(&mut out, p);
        }
        if let Some(n) = self.reqq {
            put_bytes(&mut out, b"reqq");
            put_int(&mut out, n);
        }
        if let Some(v) = self.client {
            put_bytes(&mut out, b"v");
            put_bytes(&mut out, v.as_bytes());
        }
        if let Some(ip) = self.yourip {
            put_bytes(&mut out, b"yourip");
            match ip {
                IpAddr::V4(a) => put_bytes(&mut out, &a.octets()),
                IpAddr::V6(a) => put_bytes(&mut out, &a.octets()),
            }
        }
        out.push(b'e');
        out
    }
}

/// What we use of a peer's extended handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerExtensions {
    /// `m`: extension names and the ids the peer wants them sent with, in the order written,
    /// one entry per name. An id of 0 means the peer turned that extension off.
    pub messages: Vec<(String, u8)>,
    /// `metadata_size`: the size of the peer's info dictionary, unchecked (BEP 9).
    pub metadata_size: Option<i64>,
    /// `reqq`: how many outstanding requests the peer queues (when it says, and positive).
    pub reqq: Option<u32>,
    /// `v`: the peer's client name and version (lossy UTF-8, truncated).
    pub client: Option<String>,
    /// `p`: the port the peer listens on.
    pub listen_port: Option<u16>,
    /// `yourip`: our address as the peer sees it.
    pub yourip: Option<IpAddr>,
}

impl PeerExtensions {
    /// Reads a peer's handshake payload; `None` when it is not a well-formed dictionary.
    /// Keys we do not know and values of an unexpected type are skipped.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        // Bytes after the dictionary are ignored, as the peer actor always did.
        let (Value::Dict(dict), _) = bencode::decode_prefix(payload).ok()? else {
            return None;
        };
        let mut out = PeerExtensions::default();
        for (key, value) in dict.pairs() {
            match (key, value) {
                (b"m", Value::Dict(m)) => {
                    out.messages.clear();
                    for (name, id) in m.pairs() {
                        let Value::Int(id) = id else { continue };
                        let Ok(id) = u8::try_from(id) else { continue };
                        let Ok(name) = std::str::from_utf8(name) else {
                            continue;
                        };
                        if name.is_empty() || name.len() > MAX_EXTENSION_NAME_LEN {
                            continue;
                        }
                        set_message(&mut out.messages, name, id);
                    }
                }
                (b"metadata_size", Value::Int(n)) => out.metadata_size = Some(n),
                (b"reqq", Value::Int(n)) => out.reqq = u32::try_from(n).ok().filter(|&n| n > 0),
                (b"p", Value::Int(n)) => out.listen_port = u16::try_from(n).ok().filter(|&p| p > 0),
                (b"v", Value::Bytes(s)) => {
                    let s = &s[..s.len().min(MAX_CLIENT_LEN)];
                    out.client = Some(String::from_utf8_lossy(s).into_owned());
                }
                (b"yourip", Value::Bytes(s)) => out.yourip = ip_of(s),
                (b"m", _) => out.messages.clear(),
                (b"metadata_size", _) => out.metadata_size = None,
                (b"reqq", _) => out.reqq = None,
                (b"p", _) => out.listen_port = None,
                (b"v", _) => out.client = None,
                (b"yourip", _) => out.yourip = None,
                _ => {}
            }
        }
        Some(out)
    }

    /// The id the peer wants extension `name` sent with; `None` if it does not speak it (or
    /// turned it off with id 0).
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.messages
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
            .filter(|&id| id != 0)
    }

    /// The peer's id for `ut_metadata`, if it speaks it.
    pub fn ut_metadata(&self) -> Option<u8> {
        self.id_of(UT_METADATA)
    }

    /// The peer's id for `ut_pex`, if it speaks it.
    pub fn ut_pex(&self) -> Option<u8> {
        self.id_of(UT_PEX)
    }

    /// Folds in a later handshake from the same peer. BEP 10 lets a peer send the handshake
    /// again to turn extensions on or off: names it mentions take their new id (0 turns one
    /// off), names it leaves out keep theirs; every other key it sends replaces ours.
    pub fn merge(&mut self, later: PeerExtensions) {
        for (name, id) in later.messages {
            set_message(&mut self.messages, &name, id);
        }
        if later.metadata_size.is_some() {
            self.metadata_size = later.metadata_size;
        }
        if later.reqq.is_some() {
            self.reqq = later.reqq;
        }
        if later.client.is_some() {
            self.client = later.client;
        }
        if later.listen_port.is_some() {
            self.listen_port = later.listen_port;
        }
        if later.yourip.is_some() {
            self.yourip = later.yourip;
        }
    }
}

/// Sets `name`'s id, adding it when there is room for [`MAX_EXTENSIONS`].
fn set_message(messages: &mut Vec<(String, u8)>, name: &str, id: u8) {
    if let Some(slot) = messages.iter_mut().find(|(n, _)| n == name) {
        slot.1 = id;
    } else if messages.len() < MAX_EXTENSIONS {
        messages.push((name.to_string(), id));
    }
}

/// A `yourip` value: 4 or 16 address bytes.
fn ip_of(s: &[u8]) -> Option<IpAddr> {
    if let Ok(b) = <[u8; 4]>::try_from(s) {
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(s) {
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The handshake python3-libtorrent 2.0.8 sent to a raw socket that dialled it on loopback
    /// (a seeding torrent with a 259-byte info dictionary). It leaves `p` out on connections
    /// it did not open.
    const LIBTORRENT: &[u8] = b"d12:complete_agoi-1e1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei259e4:reqqi2000e11:upload_onlyi1e1:v18:libtorrent/2.0.8.06:yourip4:\x7f\x00\x00\x01e";

    fn full() -> OurHandshake<'static> {
        OurHandshake {
            ut_metadata: Some(OUR_UT_METADATA_ID),
            ut_pex: Some(OUR_UT_PEX_ID),
            metadata_size: Some(31_235),
            listen_port: Some(6881),
            reqq: Some(512),
            client: Some("shoal 0.1.0"),
            yourip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        }
    }

    #[test]
    fn ours_is_sorted_bencode() {
        let h = full().encode();
        assert_eq!(
            h,
            &b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi512e1:v11:shoal 0.1.06:yourip4:\x0a\x01\x02\x03e"[..]
        );
        // The whole payload is canonical bencode that the strict decoder accepts.
        assert!(bencode::decode(&h).is_ok());
        // Private torrent, no metadata yet, no port: `m` has ut_metadata alone.
        let h = OurHandshake {
            ut_metadata: Some(3),
            reqq: Some(250),
            ..Default::default()
        }
        .encode();
        assert_eq!(h, b"d1:md11:ut_metadatai3ee4:reqqi250ee");
        assert_eq!(OurHandshake::default().encode(), b"d1:mdee");
        // The actor's original handshake is one setting of ours.
        let h = OurHandshake {
            listen_port: Some(6881),
            reqq: Some(512),
            client: Some("x"),
            ..Default::default()
        }
        .encode();
        assert_eq!(h, b"d1:mde1:pi6881e4:reqqi512e1:v1:xe");
    }

    #[test]
    fn round_trips() {
        let h = full();
        let back = PeerExtensions::parse(&h.encode()).expect("parses");
        assert_eq!(back.ut_metadata(), Some(OUR_UT_METADATA_ID));
        assert_eq!(back.ut_pex(), Some(OUR_UT_PEX_ID));
        assert_eq!(back.metadata_size, Some(31_235));
        assert_eq!(back.listen_port, Some(6881));
        assert_eq!(back.reqq, Some(512));
        assert_eq!(back.client.as_deref(), Some("shoal 0.1.0"));
        assert_eq!(back.yourip, h.yourip);
        let v6 = OurHandshake {
            yourip: Some("2001:db8::7".parse().unwrap()),
            ut_pex: Some(0),
            ..Default::default()
        };
        let back = PeerExtensions::parse(&v6.encode()).unwrap();
        assert_eq!(back.yourip, v6.yourip);
        assert_eq!(back.ut_pex(), None);
        assert!(back.messages.is_empty());
    }

    #[test]
    fn reads_a_real_libtorrent_handshake() {
        let x = PeerExtensions::parse(LIBTORRENT).expect("parses");
        assert_eq!(x.ut_metadata(), Some(2));
        assert_eq!(x.ut_pex(), Some(1));
        assert_eq!(x.id_of("ut_holepunch"), Some(4));
        assert_eq!(x.id_of("lt_donthave"), Some(7));
        assert_eq!(x.id_of("nope"), None);
        assert_eq!(x.messages.len(), 6);
        assert_eq!(x.metadata_size, Some(259));
        assert_eq!(x.reqq, Some(2000));
        assert_eq!(x.listen_port, None);
        assert_eq!(x.client.as_deref(), Some("libtorrent/2.0.8.0"));
        assert_eq!(x.yourip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn m_is_bounded_and_odd_entries_skipped() {
        let mut h = b"d1:md".to_vec();
        for i in 0..1000 {
            let name = format!("x{i:04}");
            h.extend_from_slice(format!("{}:{name}i{}e", name.len(), i % 255 + 1).as_bytes());
        }
        let long = "y".repeat(MAX_EXTENSION_NAME_LEN + 1);
        h.extend_from_slice(format!("{}:{long}i1e", long.len()).as_bytes());
        h.extend_from_slice(b"ee");
        let x = PeerExtensions::parse(&h).unwrap();
        assert_eq!(x.messages.len(), MAX_EXTENSIONS);
        assert_eq!(x.id_of("x0000"), Some(1));
        let x = PeerExtensions::parse(
            b"d1:md11:ut_metadatai256e6:ut_pexi-1e1:a3:abc1:bli1ee0:i1e2:\xff\xfei3e1:ci0eee",
        )
        .unwrap();
        assert_eq!(x.ut_metadata(), None);
        assert_eq!(x.ut_pex(), None);
        assert_eq!(x.messages, [("c".to_string(), 0)]);
        assert_eq!(x.id_of("c"), None);
        // An `m` that is not a dictionary is skipped; the rest is still read.
        let x = PeerExtensions::parse(b"d1:m3:abc13:metadata_sizei-5ee").unwrap();
        assert!(x.messages.is_empty());
        assert_eq!(x.metadata_size, Some(-5));
    }

    #[test]
    fn a_later_handshake_updates_the_earlier_one() {
        let mut x = PeerExtensions::parse(LIBTORRENT).unwrap();
        let later =
            PeerExtensions::parse(b"d1:md6:ut_pexi0e5:new_xi9ee13:metadata_sizei7ee").unwrap();
        x.merge(later);
        assert_eq!(x.ut_pex(), None);
        assert_eq!(x.ut_metadata(), Some(2));
        assert_eq!(x.id_of("new_x"), Some(9));
        assert_eq!(x.metadata_size, Some(7));
        assert_eq!(x.reqq, Some(2000));
    }

    // The peer actor's tests (actors/src/extension.rs), kept so it can switch to this parser.

    #[test]
    fn wrong_types_and_ranges_are_ignored() {
        let x = PeerExtensions::parse(b"d1:p5:hello4:reqqi-3e1:vi7ee").unwrap();
        assert_eq!(x, PeerExtensions::default());
        let x = PeerExtensions::parse(b"d1:pi70000e4:reqqi99999999999ee").unwrap();
        assert_eq!(x, PeerExtensions::default());
        assert_eq!(
            PeerExtensions::parse(b"de"),
            Some(PeerExtensions::default())
        );
        let x = PeerExtensions::parse(b"d4:reqqi5e4:reqqi6eetrailing").unwrap();
        assert_eq!(x.reqq, Some(6));
        let x = PeerExtensions::parse(b"d6:yourip3:abce").unwrap();
        assert_eq!(x.yourip, None);
    }

    #[test]
    fn malformed_payloads_are_none_and_never_panic() {
        for bad in [
            &b""[..],
            b"l1:ae",
            b"d",
            b"d4:reqq",
            b"d4:reqqi5",
            b"d4:reqqi5e",
            b"d4:reqqixe",
            b"d3:abc99:xe",
            b"d1:md1:ae",
            b"di1ei2ee",
            b"d18446744073709551616:ae",
            b"d1:x-1:e",
            b"d4:reqqi05ee",
            b"d1:pi-0ee",
        ] {
            assert_eq!(PeerExtensions::parse(bad), None, "{bad:?}");
        }
        let mut deep = b"d1:x".to_vec();
        deep.extend(std::iter::repeat_n(b'l', 1000));
        deep.extend(std::iter::repeat_n(b'e', 1001));
        assert_eq!(PeerExtensions::parse(&deep), None);
        let good = full().encode();
        for n in 0..good.len() {
            assert_eq!(PeerExtensions::parse(&good[..n]), None);
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = PeerExtensions::parse(&bytes);
        }

        #[test]
        fn round_trips_any(
            md in prop::option::of(1u8..),
            pex in prop::option::of(1u8..),
            size in prop::option::of(0u64..1 << 40),
            port in prop::option::of(1u16..),
            reqq in prop::option::of(1u32..),
            v in prop::option::of("[ -~]{0,40}"),
        ) {
            let h = OurHandshake {
                ut_metadata: md, ut_pex: pex, metadata_size: size, listen_port: port, reqq,
                client: v.as_deref(), yourip: None,
            };
            let x = PeerExtensions::parse(&h.encode()).unwrap();
            prop_assert_eq!(x.ut_metadata(), md);
            prop_assert_eq!(x.ut_pex(), pex);
            prop_assert_eq!(x.metadata_size, size.map(|s| s as i64));
            prop_assert_eq!(x.listen_port, port);
            prop_assert_eq!(x.reqq, reqq);
            prop_assert_eq!(x.client, v);
        }
    }
}
