//! The extension protocol handshake (BEP 10): the one we send and what we read from a peer's.
//!
//! We speak no extension message yet, so our `m` dictionary is empty: a peer must not send us
//! any. From a peer's handshake we read only `reqq` (how many requests it queues), `v` (its
//! client, for logs) and `p` (its listening port); every other key is skipped. The payload is
//! read with the engine's borrowing decoder ([`shoal_engine::bencode`]): it allocates nothing
//! but the client name, bounds nesting, and we answer `None` for anything malformed (the caller
//! then ignores the message instead of dropping the peer).

use shoal_engine::bencode::{self, Value};

/// Our client name and version, sent as `v`.
pub const CLIENT_VERSION: &str = concat!("shoal ", env!("CARGO_PKG_VERSION"));

/// Longest client name we keep from `v`.
const MAX_CLIENT_LEN: usize = 64;

/// Our extended handshake payload: `m` (empty), `p` (our listening port, when known), `reqq`
/// (how many requests we queue for a peer) and `v`, keys in sorted order as bencode wants.
pub fn our_handshake(listen_port: Option<u16>, reqq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"d1:mde");
    if let Some(p) = listen_port.filter(|&p| p != 0) {
        out.extend_from_slice(format!("1:pi{p}e").as_bytes());
    }
    out.extend_from_slice(format!("4:reqqi{reqq}e").as_bytes());
    out.extend_from_slice(format!("1:v{}:{CLIENT_VERSION}e", CLIENT_VERSION.len()).as_bytes());
    out
}

/// What we use of a peer's extended handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerExtensions {
    /// `reqq`: how many outstanding requests the peer queues (when it says, and positive).
    pub reqq: Option<u32>,
    /// `v`: the peer's client name and version (lossy UTF-8, truncated).
    pub client: Option<String>,
    /// `p`: the port the peer listens on.
    pub listen_port: Option<u16>,
}

impl PeerExtensions {
    /// Reads a peer's handshake payload; `None` when it is not a well-formed dictionary.
    /// Keys we do not know and values of an unexpected type are skipped.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        // Bytes after the dictionary are ignored, as they always were.
        let (Value::Dict(dict), _) = bencode::decode_prefix(payload).ok()? else {
            return None;
        };
        let mut out = PeerExtensions::default();
        for (key, value) in dict.pairs() {
            match (key, value) {
                (b"reqq", Value::Int(n)) => out.reqq = u32::try_from(n).ok().filter(|&n| n > 0),
                (b"p", Value::Int(n)) => out.listen_port = u16::try_from(n).ok().filter(|&p| p > 0),
                (b"v", Value::Bytes(s)) => {
                    let s = &s[..s.len().min(MAX_CLIENT_LEN)];
                    out.client = Some(String::from_utf8_lossy(s).into_owned());
                }
                (b"reqq", _) => out.reqq = None,
                (b"p", _) => out.listen_port = None,
                (b"v", _) => out.client = None,
                _ => {}
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_is_sorted_bencode_with_an_empty_m() {
        let h = our_handshake(Some(6881), 512);
        let want = format!(
            "d1:mde1:pi6881e4:reqqi512e1:v{}:{}e",
            CLIENT_VERSION.len(),
            CLIENT_VERSION
        );
        assert_eq!(h, want.as_bytes());
        let back = PeerExtensions::parse(&h).expect("parses");
        assert_eq!(back.reqq, Some(512));
        assert_eq!(back.listen_port, Some(6881));
        assert_eq!(back.client.as_deref(), Some(CLIENT_VERSION));
        let no_port = our_handshake(None, 1);
        assert!(!no_port.windows(3).any(|w| w == b"1:p"));
        assert_eq!(PeerExtensions::parse(&no_port).unwrap().listen_port, None);
    }

    #[test]
    fn reads_a_libtorrent_style_handshake_and_skips_the_rest() {
        let h = b"d12:complete_agoi-1e1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:pi51413e4:reqqi500e11:upload_onlyi1e1:v18:libtorrent/2.0.8.06:yourip4:\x7f\x00\x00\x01e";
        let x = PeerExtensions::parse(h).expect("parses");
        assert_eq!(x.reqq, Some(500));
        assert_eq!(x.listen_port, Some(51413));
        assert_eq!(x.client.as_deref(), Some("libtorrent/2.0.8.0"));
    }

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
        // A later duplicate wins; bytes after the dictionary are ignored.
        let x = PeerExtensions::parse(b"d4:reqqi5e4:reqqi6eetrailing").unwrap();
        assert_eq!(x.reqq, Some(6));
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
        // Nesting beyond the bound is refused, not recursed into.
        let mut deep = b"d1:x".to_vec();
        deep.extend(std::iter::repeat_n(b'l', 1000));
        deep.extend(std::iter::repeat_n(b'e', 1001));
        assert_eq!(PeerExtensions::parse(&deep), None);
        // Every prefix of a good handshake is incomplete, hence None.
        let good = our_handshake(Some(1), 2);
        for n in 0..good.len() {
            assert_eq!(PeerExtensions::parse(&good[..n]), None);
        }
    }
}
