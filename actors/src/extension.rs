//! The extension protocol handshake (BEP 10): the one we send and what we read from a peer's.
//!
//! We speak no extension message yet, so our `m` dictionary is empty: a peer must not send us
//! any. From a peer's handshake we read only `reqq` (how many requests it queues), `v` (its
//! client, for logs) and `p` (its listening port); every other key is skipped. The reader is a
//! few lines of bencode walking over the borrowed payload: it allocates nothing but the client
//! name, bounds nesting, and answers `None` for anything malformed (the caller then ignores the
//! message instead of dropping the peer).

/// Our client name and version, sent as `v`.
pub const CLIENT_VERSION: &str = concat!("shoal ", env!("CARGO_PKG_VERSION"));

/// How deeply values inside a peer's handshake may nest before we call it malformed.
const MAX_DEPTH: usize = 16;

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
        if payload.first() != Some(&b'd') {
            return None;
        }
        let mut out = PeerExtensions::default();
        let mut pos = 1;
        loop {
            match payload.get(pos)? {
                b'e' => return Some(out),
                _ => {
                    let (key, after_key) = bytes_at(payload, pos)?;
                    let end = skip(payload, after_key, 1)?;
                    let value = &payload[after_key..end];
                    match key {
                        b"reqq" => out.reqq = int(value).and_then(|n| u32::try_from(n).ok()),
                        b"p" => out.listen_port = int(value).and_then(|n| u16::try_from(n).ok()),
                        b"v" => {
                            out.client = bytes_at(value, 0).map(|(s, _)| {
                                let s = &s[..s.len().min(MAX_CLIENT_LEN)];
                                String::from_utf8_lossy(s).into_owned()
                            })
                        }
                        _ => {}
                    }
                    out.reqq = out.reqq.filter(|&n| n > 0);
                    out.listen_port = out.listen_port.filter(|&p| p > 0);
                    pos = end;
                }
            }
        }
    }
}

/// A whole bencoded integer value (`i42e`), or `None`.
fn int(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"i")?.strip_suffix(b"e")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The byte string at `pos` (`4:spam`) and the position after it.
fn bytes_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let colon = pos + buf.get(pos..)?.iter().position(|&c| c == b':')?;
    let digits = std::str::from_utf8(&buf[pos..colon]).ok()?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let len: usize = digits.parse().ok()?;
    let start = colon + 1;
    let end = start.checked_add(len)?;
    Some((buf.get(start..end)?, end))
}

/// The position just after the value starting at `pos`.
fn skip(buf: &[u8], pos: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match buf.get(pos)? {
        b'i' => {
            let end = pos + buf.get(pos..)?.iter().position(|&c| c == b'e')?;
            int(&buf[pos..=end])?;
            Some(end + 1)
        }
        b'l' | b'd' => {
            let dict = buf[pos] == b'd';
            let mut p = pos + 1;
            while *buf.get(p)? != b'e' {
                if dict {
                    p = bytes_at(buf, p)?.1;
                }
                p = skip(buf, p, depth + 1)?;
            }
            Some(p + 1)
        }
        b'0'..=b'9' => Some(bytes_at(buf, pos)?.1),
        _ => None,
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
