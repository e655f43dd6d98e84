//! A lenient, allocation-free bencode reader for tracker replies.
//!
//! Why not bendy's decoder: it rejects dictionaries whose keys are out of order, and trackers in
//! the wild send unsorted keys (libtorrent's `bdecode` and Transmission's parser accept them). A
//! tracker reply is small and read once, so this reader borrows from the input, never
//! allocates, and bounds nesting with a counter instead of a stack. A list or a dictionary is
//! checked whole when it is first met, then read lazily through [`ListIter`] and [`DictIter`].

use super::TrackerError;

/// How deep lists and dictionaries may nest. A tracker reply needs three levels (reply, peer
/// list, peer); anything much deeper is garbage.
const MAX_DEPTH: u32 = 32;

/// One bencoded value, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A byte string.
    Bytes(&'a [u8]),
    /// A list: its raw bytes, from `l` to `e` included, already checked.
    List(&'a [u8]),
    /// A dictionary: its raw bytes, from `d` to `e` included, already checked.
    Dict(&'a [u8]),
}

fn err(pos: usize, what: &'static str) -> TrackerError {
    TrackerError::Bencode { pos, what }
}

/// Parses `input` as exactly one value; trailing ASCII whitespace is tolerated (some trackers
/// end their reply with a newline).
pub(crate) fn parse(input: &[u8]) -> Result<Value<'_>, TrackerError> {
    if input.is_empty() {
        return Err(err(0, "empty input"));
    }
    let (value, end) = value_at(input, 0)?;
    if input[end..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(err(end, "trailing bytes after the value"));
    }
    Ok(value)
}

/// Reads the value starting at `pos`; returns it and the position just after it.
fn value_at(input: &[u8], pos: usize) -> Result<(Value<'_>, usize), TrackerError> {
    match input.get(pos) {
        None => Err(err(pos, "unexpected end of input")),
        Some(b'i') => {
            let (n, end) = int_at(input, pos)?;
            Ok((Value::Int(n), end))
        }
        Some(b'0'..=b'9') => {
            let (s, end) = bytes_at(input, pos)?;
            Ok((Value::Bytes(s), end))
        }
        Some(b'l') => {
            let end = skip_container(input, pos)?;
            Ok((Value::List(&input[pos..end]), end))
        }
        Some(b'd') => {
            let end = skip_container(input, pos)?;
            Ok((Value::Dict(&input[pos..end]), end))
        }
        Some(_) => Err(err(pos, "unexpected byte")),
    }
}

/// Reads `i<digits>e` at `pos`.
fn int_at(input: &[u8], pos: usize) -> Result<(i64, usize), TrackerError> {
    let mut i = pos + 1;
    let negative = input.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let digits_start = i;
    let mut n: i64 = 0;
    while let Some(&b) = input.get(i) {
        if !b.is_ascii_digit() {
            break;
        }
        let d = i64::from(b - b'0');
        n = n
            .checked_mul(10)
            .and_then(|n| {
                if negative {
                    n.checked_sub(d)
                } else {
                    n.checked_add(d)
                }
            })
            .ok_or_else(|| err(pos, "integer out of range"))?;
        i += 1;
    }
    if i == digits_start {
        return Err(err(i, "integer without digits"));
    }
    match input.get(i) {
        Some(b'e') => Ok((n, i + 1)),
        Some(_) => Err(err(i, "integer not ended by 'e'")),
        None => Err(err(i, "unexpected end of input")),
    }
}

/// Reads `<len>:<bytes>` at `pos`.
fn bytes_at(input: &[u8], pos: usize) -> Result<(&[u8], usize), TrackerError> {
    let mut i = pos;
    let mut len: usize = 0;
    while let Some(&b) = input.get(i) {
        if !b.is_ascii_digit() {
            break;
        }
        len = len
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(b - b'0')))
            .ok_or_else(|| err(pos, "string length out of range"))?;
        i += 1;
    }
    match input.get(i) {
        Some(b':') => {}
        Some(_) => return Err(err(i, "string length not followed by ':'")),
        None => return Err(err(i, "unexpected end of input")),
    }
    let start = i + 1;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= input.len())
        .ok_or_else(|| err(pos, "string longer than the input"))?;
    Ok((&input[start..end], end))
}

/// Checks the list or dictionary at `pos` and returns the position just after its `e`.
fn skip_container(input: &[u8], pos: usize) -> Result<usize, TrackerError> {
    let mut depth: u32 = 0;
    let mut i = pos;
    loop {
        match input.get(i) {
            None => return Err(err(i, "unexpected end of input")),
            Some(b'l' | b'd') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(err(i, "nesting too deep"));
                }
                i += 1;
            }
            Some(b'e') => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            Some(b'i') => i = int_at(input, i)?.1,
            Some(b'0'..=b'9') => i = bytes_at(input, i)?.1,
            Some(_) => return Err(err(i, "unexpected byte")),
        }
    }
}

/// The items of a list, from its raw bytes.
#[derive(Debug)]
pub(crate) struct ListIter<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> ListIter<'a> {
    /// Iterates over the raw bytes of a [`Value::List`].
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Self { raw, pos: 1 }
    }
}

impl<'a> Iterator for ListIter<'a> {
    type Item = Result<Value<'a>, TrackerError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.raw.get(self.pos) {
            None | Some(b'e') => None,
            Some(_) => match value_at(self.raw, self.pos) {
                Ok((v, end)) => {
                    self.pos = end;
                    Some(Ok(v))
                }
                Err(e) => {
                    self.pos = self.raw.len();
                    Some(Err(e))
                }
            },
        }
    }
}

/// The entries of a dictionary, in the order they were written, from its raw bytes.
#[derive(Debug)]
pub(crate) struct DictIter<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> DictIter<'a> {
    /// Iterates over the raw bytes of a [`Value::Dict`].
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Self { raw, pos: 1 }
    }
}

impl<'a> Iterator for DictIter<'a> {
    type Item = Result<(&'a [u8], Value<'a>), TrackerError>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = match self.raw.get(self.pos) {
            None | Some(b'e') => return None,
            Some(b'0'..=b'9') => bytes_at(self.raw, self.pos).and_then(|(key, end)| {
                let (value, end) = value_at(self.raw, end)?;
                Ok((key, value, end))
            }),
            Some(_) => Err(err(self.pos, "dictionary key is not a string")),
        };
        match entry {
            Ok((key, value, end)) => {
                self.pos = end;
                Some(Ok((key, value)))
            }
            Err(e) => {
                self.pos = self.raw.len();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(parse(b"i42e").unwrap(), Value::Int(42));
        assert_eq!(parse(b"i-7e").unwrap(), Value::Int(-7));
        assert_eq!(parse(b"4:spam").unwrap(), Value::Bytes(b"spam"));
        assert_eq!(parse(b"0:").unwrap(), Value::Bytes(b""));
        assert_eq!(parse(b"i1e\r\n").unwrap(), Value::Int(1));
    }

    #[test]
    fn bad_scalars() {
        for bad in [
            &b""[..],
            b"i",
            b"ie",
            b"i-e",
            b"i12",
            b"i1x",
            b"i99999999999999999999e",
            b"5:abc",
            b"3abc",
            b"99999999999999999999999:x",
            b"x",
            b"i1ei2e",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn unsorted_dict_is_accepted() {
        let v = parse(b"d1:bi2e1:ai1ee").unwrap();
        let Value::Dict(raw) = v else {
            panic!("not a dict")
        };
        let entries: Vec<_> = DictIter::new(raw).map(Result::unwrap).collect();
        assert_eq!(
            entries,
            vec![(&b"b"[..], Value::Int(2)), (&b"a"[..], Value::Int(1))]
        );
    }

    #[test]
    fn nested_list() {
        let v = parse(b"li1el3:abcee").unwrap();
        let Value::List(raw) = v else {
            panic!("not a list")
        };
        let items: Vec<_> = ListIter::new(raw).map(Result::unwrap).collect();
        assert_eq!(items, vec![Value::Int(1), Value::List(b"l3:abce")]);
    }

    #[test]
    fn structure_errors() {
        assert!(parse(b"l").is_err());
        assert!(parse(b"li1e").is_err());
        assert!(
            parse(b"d3:keye").is_ok(),
            "checked lazily: the dict iterator reports it"
        );
        let Value::Dict(raw) = parse(b"d3:keye").unwrap() else {
            panic!()
        };
        assert!(DictIter::new(raw).next().unwrap().is_err());
        let Value::Dict(raw) = parse(b"di1ei2ee").unwrap() else {
            panic!()
        };
        assert!(DictIter::new(raw).next().unwrap().is_err());
        let deep = format!("{}{}", "l".repeat(100), "e".repeat(100));
        assert!(parse(deep.as_bytes()).is_err());
        let ok = format!("{}{}", "l".repeat(32), "e".repeat(32));
        assert!(parse(ok.as_bytes()).is_ok());
    }
}
