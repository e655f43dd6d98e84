//! A borrowing bencode decoder that keeps byte spans, shared by `.torrent` files, tracker
//! replies and extension handshakes.
//!
//! Why not `bendy`'s decoder: it refuses dictionaries whose keys are not sorted, and real
//! `.torrent` files and tracker replies with unsorted keys exist (libtorrent and Transmission
//! accept them). A torrent's info hash must be taken over the info dictionary's bytes *exactly
//! as they appear*, so every list and dictionary is kept as its byte span ([`List::raw`],
//! [`Dict::raw`]).
//!
//! [`decode`] checks the whole value once: integers in canonical form (no `i03e`, no `i-0e`,
//! no `ie`) and within 64 bits, string lengths checked against the input before slicing,
//! dictionary keys that are strings, nesting at most [`MAX_DEPTH`] levels, and no trailing
//! bytes ([`decode_prefix`] allows them). Lists and dictionaries are then walked again lazily
//! by [`List::items`] and [`Dict::pairs`], which allocate nothing. Keys may come in any order;
//! a key written twice is yielded twice by [`Dict::pairs`], so the caller decides whether that
//! is an error.
//!
//! # Examples
//! ```
//! use shoal_engine::bencode::{decode, Value};
//! let Value::Dict(d) = decode(b"d1:bi2e1:a3:xyze").unwrap() else { panic!() };
//! let keys: Vec<&[u8]> = d.pairs().map(|(k, _)| k).collect();
//! assert_eq!(keys, [&b"b"[..], b"a"]);
//! assert_eq!(d.get(b"a"), Some(Value::Bytes(b"xyz")));
//! assert!(decode(b"i03e").is_err());
//! ```

use std::fmt;

/// How deeply lists and dictionaries may nest. A real torrent nests 5 levels
/// (top > info > files > file > path), a tracker reply 3; the margin is for unknown keys.
pub const MAX_DEPTH: usize = 64;

/// The [`BencodeError::problem`] of a value nested deeper than [`MAX_DEPTH`].
const TOO_DEEP: &str = "lists and dictionaries nest too deep";

/// Why bytes are not well-formed bencode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BencodeError {
    /// Byte offset of the problem in the input.
    pub offset: usize,
    /// What is wrong there, in lowercase words.
    pub problem: &'static str,
}

impl BencodeError {
    /// Whether the input was refused only for nesting deeper than [`MAX_DEPTH`].
    pub fn is_too_deep(&self) -> bool {
        self.problem == TOO_DEEP
    }
}

impl fmt::Display for BencodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed bencode at byte {}: {}",
            self.offset, self.problem
        )
    }
}

impl std::error::Error for BencodeError {}

type Result<T, E = BencodeError> = std::result::Result<T, E>;

fn malformed(offset: usize, problem: &'static str) -> BencodeError {
    BencodeError { offset, problem }
}

/// One bencode value, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(&'a [u8]),
    /// A list, already checked well-formed.
    List(List<'a>),
    /// A dictionary, already checked well-formed.
    Dict(Dict<'a>),
}

/// A checked list: its bytes from `l` to `e` inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct List<'a>(&'a [u8]);

/// A checked dictionary: its bytes from `d` to `e` inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dict<'a>(&'a [u8]);

impl<'a> List<'a> {
    /// The list's bytes exactly as in the input, from `l` to `e` inclusive.
    pub fn raw(self) -> &'a [u8] {
        self.0
    }

    /// The items, in order.
    pub fn items(self) -> impl Iterator<Item = Value<'a>> {
        let span = self.0;
        let mut at = 1;
        std::iter::from_fn(move || {
            if at + 1 >= span.len() {
                return None;
            }
            let (value, next) = reparse(span, at)?;
            at = next;
            Some(value)
        })
    }
}

impl<'a> Dict<'a> {
    /// The dictionary's bytes exactly as in the input, from `d` to `e` inclusive.
    pub fn raw(self) -> &'a [u8] {
        self.0
    }

    /// The key/value pairs in the order they were written, duplicates included.
    pub fn pairs(self) -> impl Iterator<Item = (&'a [u8], Value<'a>)> {
        let span = self.0;
        let mut at = 1;
        std::iter::from_fn(move || {
            if at + 1 >= span.len() {
                return None;
            }
            let (Value::Bytes(key), next) = reparse(span, at)? else {
                debug_assert!(false, "a checked dictionary has a key that is not a string");
                return None;
            };
            let (value, next) = reparse(span, next)?;
            at = next;
            Some((key, value))
        })
    }

    /// The value of the first pair whose key is `key`.
    pub fn get(self, key: &[u8]) -> Option<Value<'a>> {
        self.pairs().find(|&(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Parses an item of a span that was checked when it was first parsed, so this cannot fail;
/// were it to, the walk ends instead of panicking.
fn reparse(span: &[u8], at: usize) -> Option<(Value<'_>, usize)> {
    let parsed = parse_value(span, at, 1);
    debug_assert!(
        parsed.is_ok(),
        "a checked span no longer parses: {parsed:?}"
    );
    parsed.ok()
}

/// Parses the decimal digits of `buf[start..end]` (no sign) as a u64, refusing leading zeros.
fn parse_digits(buf: &[u8], start: usize, end: usize) -> Result<u64> {
    let digits = buf.get(start..end).unwrap_or_default();
    if digits.is_empty() {
        return Err(malformed(start, "expected a digit"));
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return Err(malformed(start, "number with a leading zero"));
    }
    let mut n: u64 = 0;
    for (i, &d) in digits.iter().enumerate() {
        if !d.is_ascii_digit() {
            return Err(malformed(start + i, "expected a digit"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| malformed(start, "number out of range"))?;
    }
    Ok(n)
}

/// Finds `byte` at or after `from`, or reports the input as truncated.
fn find(buf: &[u8], from: usize, byte: u8) -> Result<usize> {
    buf.get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == byte))
        .map(|i| from + i)
        .ok_or_else(|| malformed(buf.len(), "input ends inside a value"))
}

/// Parses the value starting at `pos`, returning it and the offset just past it. `depth` is the
/// number of containers already open around it.
fn parse_value(buf: &[u8], pos: usize, depth: usize) -> Result<(Value<'_>, usize)> {
    let Some(&first) = buf.get(pos) else {
        return Err(malformed(pos, "input ends where a value was expected"));
    };
    match first {
        b'i' => {
            let end = find(buf, pos + 1, b'e')?;
            let (negative, start) = if buf.get(pos + 1) == Some(&b'-') {
                (true, pos + 2)
            } else {
                (false, pos + 1)
            };
            let magnitude = parse_digits(buf, start, end)?;
            let value = if negative {
                if magnitude == 0 {
                    return Err(malformed(pos, "negative zero"));
                }
                0i64.checked_sub_unsigned(magnitude)
            } else {
                i64::try_from(magnitude).ok()
            };
            let value = value.ok_or_else(|| malformed(pos, "integer out of 64-bit range"))?;
            Ok((Value::Int(value), end + 1))
        }
        b'0'..=b'9' => {
            let colon = find(buf, pos, b':')?;
            let len = parse_digits(buf, pos, colon)?;
            let start = colon + 1;
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| start.checked_add(len))
                .filter(|&end| end <= buf.len())
                .ok_or_else(|| malformed(pos, "string longer than the input"))?;
            Ok((Value::Bytes(&buf[start..end]), end))
        }
        b'l' | b'd' => {
            if depth >= MAX_DEPTH {
                return Err(malformed(pos, TOO_DEEP));
            }
            let is_dict = first == b'd';
            let mut at = pos + 1;
            loop {
                match buf.get(at) {
                    None => return Err(malformed(at, "input ends inside a list or dictionary")),
                    Some(b'e') => break,
                    Some(_) => {}
                }
                if is_dict {
                    match parse_value(buf, at, depth + 1)? {
                        (Value::Bytes(_), next) => at = next,
                        _ => return Err(malformed(at, "dictionary key is not a string")),
                    }
                    if buf.get(at) == Some(&b'e') {
                        return Err(malformed(at, "dictionary key without a value"));
                    }
                }
                at = parse_value(buf, at, depth + 1)?.1;
            }
            let span = &buf[pos..=at];
            let value = if is_dict {
                Value::Dict(Dict(span))
            } else {
                Value::List(List(span))
            };
            Ok((value, at + 1))
        }
        _ => Err(malformed(pos, "unexpected byte where a value should start")),
    }
}

/// Decodes a buffer holding exactly one value; bytes after it are an error.
pub fn decode(buf: &[u8]) -> Result<Value<'_>> {
    let (value, end) = decode_prefix(buf)?;
    if end != buf.len() {
        return Err(malformed(end, "trailing bytes after the top-level value"));
    }
    Ok(value)
}

/// Decodes the value at the start of `buf`, returning it and the offset just past it; what
/// follows is left to the caller.
pub fn decode_prefix(buf: &[u8]) -> Result<(Value<'_>, usize)> {
    parse_value(buf, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem(buf: &[u8]) -> &'static str {
        decode(buf).unwrap_err().problem
    }

    #[test]
    fn scalars() {
        assert_eq!(decode(b"i42e"), Ok(Value::Int(42)));
        assert_eq!(decode(b"i-7e"), Ok(Value::Int(-7)));
        assert_eq!(decode(b"i0e"), Ok(Value::Int(0)));
        assert_eq!(decode(b"i-9223372036854775808e"), Ok(Value::Int(i64::MIN)));
        assert_eq!(decode(b"4:spam"), Ok(Value::Bytes(b"spam")));
        assert_eq!(decode(b"0:"), Ok(Value::Bytes(b"")));
    }

    #[test]
    fn refuses_non_canonical_and_malformed_scalars() {
        assert_eq!(problem(b"i03e"), "number with a leading zero");
        assert_eq!(problem(b"i-0e"), "negative zero");
        assert_eq!(problem(b"ie"), "expected a digit");
        assert_eq!(problem(b"i-e"), "expected a digit");
        assert_eq!(problem(b"i1x2e"), "expected a digit");
        assert_eq!(problem(b"i12"), "input ends inside a value");
        assert_eq!(
            problem(b"i9223372036854775808e"),
            "integer out of 64-bit range"
        );
        assert_eq!(problem(b"i99999999999999999999e"), "number out of range");
        assert_eq!(problem(b"05:abcde"), "number with a leading zero");
        assert_eq!(problem(b"5:abc"), "string longer than the input");
        assert_eq!(problem(b"3abc"), "input ends inside a value");
        assert_eq!(problem(b"99999999999999999999999:x"), "number out of range");
        assert_eq!(problem(b"x"), "unexpected byte where a value should start");
        assert_eq!(problem(b""), "input ends where a value was expected");
        let e = decode(b"i1ei2e").unwrap_err();
        assert_eq!(e.offset, 3);
        assert_eq!(
            e.to_string(),
            "malformed bencode at byte 3: trailing bytes after the top-level value"
        );
        assert_eq!(decode_prefix(b"i1ei2e"), Ok((Value::Int(1), 3)));
    }

    #[test]
    fn containers_keep_spans_and_accept_unsorted_and_duplicate_keys() {
        let Ok(Value::Dict(d)) = decode(b"d1:bi2e1:ali1el3:abcee1:bi3ee") else {
            panic!("not a dict")
        };
        assert_eq!(d.raw(), b"d1:bi2e1:ali1el3:abcee1:bi3ee");
        let pairs: Vec<_> = d.pairs().collect();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0], (&b"b"[..], Value::Int(2)));
        assert_eq!(pairs[2], (&b"b"[..], Value::Int(3)));
        assert_eq!(d.get(b"b"), Some(Value::Int(2)));
        assert_eq!(d.get(b"z"), None);
        let Some(Value::List(l)) = d.get(b"a") else {
            panic!("not a list")
        };
        assert_eq!(l.raw(), b"li1el3:abcee");
        let items: Vec<_> = l.items().collect();
        assert_eq!(items[0], Value::Int(1));
        let Value::List(inner) = items[1] else {
            panic!("not a list")
        };
        assert_eq!(inner.items().collect::<Vec<_>>(), [Value::Bytes(b"abc")]);
        let Ok(Value::List(empty)) = decode(b"le") else {
            panic!()
        };
        assert_eq!(empty.items().count(), 0);
    }

    #[test]
    fn refuses_malformed_containers() {
        assert_eq!(problem(b"l"), "input ends inside a list or dictionary");
        assert_eq!(problem(b"li1e"), "input ends inside a list or dictionary");
        assert_eq!(problem(b"d3:keye"), "dictionary key without a value");
        assert_eq!(problem(b"di1ei2ee"), "dictionary key is not a string");
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        let e = decode(&deep).unwrap_err();
        assert!(e.is_too_deep());
        assert_eq!(e.offset, MAX_DEPTH);
        let huge = [vec![b'l'; 100_000], vec![b'e'; 100_000]].concat();
        assert!(decode(&huge).unwrap_err().is_too_deep());
        assert!(!decode(b"l").unwrap_err().is_too_deep());
    }

    /// Walks every value, as a caller would.
    fn walk(v: Value<'_>) -> usize {
        match v {
            Value::Int(_) | Value::Bytes(_) => 1,
            Value::List(l) => 1 + l.items().map(walk).sum::<usize>(),
            Value::Dict(d) => 1 + d.pairs().map(|(_, v)| walk(v)).sum::<usize>(),
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok((v, end)) = decode_prefix(&bytes) {
                prop_assert!(end <= bytes.len());
                walk(v);
            }
        }

        #[test]
        fn never_panics_on_bencode_like_bytes(
            bytes in prop::collection::vec(
                prop::sample::select(b"ilde0123456789:-x".to_vec()), 0..128),
        ) {
            if let Ok(v) = decode(&bytes) {
                walk(v);
            }
        }
    }
}
