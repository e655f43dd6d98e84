//! The KRPC messages of BEP 5: bencoded dictionaries in single UDP datagrams.
//!
//! [`Message::decode`] reads any bytes without panicking and allocates at most
//! [`MAX_NODES_PER_REPLY`] nodes and [`MAX_VALUES_PER_REPLY`] peers whatever the packet says;
//! transaction ids and tokens are kept inline with fixed bounds. [`Message::encode`] writes
//! dictionaries with sorted keys, so our messages are canonical bencode (the examples of BEP 5
//! come out byte for byte).
//!
//! Only IPv4 nodes are read from `nodes` (BEP 5); `nodes6` (BEP 32) is ignored. Peers in
//! `values` may be IPv4 (6 bytes) or IPv6 (18 bytes).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::id::NodeId;
use crate::bencode::{self, BencodeError, Dict, Value};
use crate::InfoHash;

/// The longest transaction id we accept or echo. Implementations use 2 to 4 bytes; 16 leaves
/// room for odd ones while keeping [`Tid`] a small inline value.
pub const MAX_TID_LEN: usize = 16;

/// The longest announce token we keep. libtorrent sends 4 bytes, others 8 or 20; 32 leaves
/// room and keeps [`Token`] inline.
pub const MAX_TOKEN_LEN: usize = 32;

/// How many nodes of one reply's `nodes` we read. An honest node sends at most 8 (k), a few
/// send 16; a hostile reply carrying thousands must not grow our memory or our lookup.
pub const MAX_NODES_PER_REPLY: usize = 16;

/// How many peers of one reply's `values` we read. libtorrent sends at most 100 and a reply
/// must fit a datagram; anything past this is ignored.
pub const MAX_VALUES_PER_REPLY: usize = 200;

/// How many bytes of an error message we keep, for logs.
pub const MAX_ERROR_MESSAGE_LEN: usize = 128;

/// The size of a compact node: 20-byte id, IPv4 address, port.
pub const COMPACT_NODE_LEN: usize = 26;

/// KRPC error codes (BEP 5).
pub mod code {
    /// A generic error.
    pub const GENERIC: i64 = 201;
    /// A server error.
    pub const SERVER: i64 = 202;
    /// A protocol error: malformed packet, invalid arguments, bad token.
    pub const PROTOCOL: i64 = 203;
    /// A method we do not know.
    pub const METHOD_UNKNOWN: i64 = 204;
}

/// Why bytes are not a KRPC message we can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KrpcError {
    /// Not bencode at all.
    Bencode(BencodeError),
    /// Bencode, but not a KRPC message (no dictionary, no transaction id, no type).
    NotKrpc(&'static str),
    /// A query with a transaction id whose arguments are wrong: answer with error 203.
    BadQuery {
        /// The query's transaction id, to answer it.
        tid: Tid,
        /// What is wrong.
        problem: &'static str,
    },
    /// A query for a method we do not know: answer with error 204.
    UnknownMethod {
        /// The query's transaction id, to answer it.
        tid: Tid,
    },
    /// A response or error that does not follow BEP 5.
    BadReply {
        /// The transaction id, so the caller may fail the matching query.
        tid: Tid,
        /// What is wrong.
        problem: &'static str,
    },
}

impl fmt::Display for KrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KrpcError::Bencode(e) => write!(f, "krpc packet is not bencode: {e}"),
            KrpcError::NotKrpc(p) => write!(f, "not a krpc message: {p}"),
            KrpcError::BadQuery { problem, .. } => write!(f, "bad krpc query: {problem}"),
            KrpcError::UnknownMethod { .. } => write!(f, "krpc query for an unknown method"),
            KrpcError::BadReply { problem, .. } => write!(f, "bad krpc reply: {problem}"),
        }
    }
}

impl std::error::Error for KrpcError {}

/// Short byte strings kept inline: transaction ids and tokens.
macro_rules! inline_bytes {
    ($name:ident, $max:expr, $what:literal) => {
        #[doc = concat!("A ", $what, " of at most ", stringify!($max), " bytes, kept inline.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name {
            /// How many bytes of `bytes` are used.
            len: u8,
            /// The bytes, zero-padded.
            bytes: [u8; $max],
        }

        impl $name {
            /// `None` when `b` is longer than the bound.
            pub fn new(b: &[u8]) -> Option<Self> {
                if b.len() > $max {
                    return None;
                }
                let mut bytes = [0u8; $max];
                bytes[..b.len()].copy_from_slice(b);
                Some(Self {
                    len: b.len() as u8,
                    bytes,
                })
            }

            /// The bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.bytes[..usize::from(self.len)]
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                for b in self.as_bytes() {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ")")
            }
        }
    };
}

inline_bytes!(Tid, MAX_TID_LEN, "transaction id");
inline_bytes!(Token, MAX_TOKEN_LEN, "announce token");

/// A node's contact: its id and IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompactNode {
    /// The node's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddrV4,
}

impl CompactNode {
    /// Appends the 26-byte compact form.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.addr.ip().octets());
        out.extend_from_slice(&self.addr.port().to_be_bytes());
    }

    /// Reads one 26-byte compact node; `None` for port 0 or a wrong length.
    pub fn read(b: &[u8]) -> Option<Self> {
        if b.len() != COMPACT_NODE_LEN {
            return None;
        }
        let mut id = [0u8; 20];
        id.copy_from_slice(&b[..20]);
        let ip = Ipv4Addr::new(b[20], b[21], b[22], b[23]);
        let port = u16::from_be_bytes([b[24], b[25]]);
        (port != 0).then(|| CompactNode {
            id: NodeId(id),
            addr: SocketAddrV4::new(ip, port),
        })
    }
}

/// Reads compact nodes, at most `max`, skipping entries with port 0 and a trailing partial
/// entry.
pub fn read_compact_nodes(b: &[u8], max: usize) -> Vec<CompactNode> {
    b.chunks_exact(COMPACT_NODE_LEN)
        .filter_map(CompactNode::read)
        .take(max)
        .collect()
}

/// Appends a peer's compact form: 6 bytes for IPv4, 18 for IPv6.
pub fn write_compact_peer(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads a compact peer of 6 or 18 bytes.
pub fn read_compact_peer(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => {
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[4], b[5]]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        18 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[16], b[17]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(o),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// A query's method and arguments (besides the sender's id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// `ping`.
    Ping,
    /// `find_node`: the contacts of the nodes closest to `target`.
    FindNode {
        /// The id sought.
        target: NodeId,
    },
    /// `get_peers`: peers of a torrent, or the closest nodes and a token.
    GetPeers {
        /// The torrent.
        info_hash: InfoHash,
    },
    /// `announce_peer`: the sender downloads the torrent on `port` (or on the UDP source port
    /// when `implied_port`).
    AnnouncePeer {
        /// The torrent.
        info_hash: InfoHash,
        /// The TCP port the sender listens on.
        port: u16,
        /// Use the packet's source port instead of `port` (BEP 5, for peers behind NAT).
        implied_port: bool,
        /// The token from our earlier `get_peers` reply.
        token: Token,
    },
}

impl Query {
    /// The method name on the wire.
    pub fn method(&self) -> &'static str {
        match self {
            Query::Ping => "ping",
            Query::FindNode { .. } => "find_node",
            Query::GetPeers { .. } => "get_peers",
            Query::AnnouncePeer { .. } => "announce_peer",
        }
    }
}

/// A response's arguments. Which keys are set depends on the query it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The responder's id.
    pub id: NodeId,
    /// Contacts of nodes close to the target (`find_node`, `get_peers`).
    pub nodes: Vec<CompactNode>,
    /// Peers of the torrent (`get_peers`).
    pub values: Vec<SocketAddr>,
    /// The token to announce with (`get_peers`).
    pub token: Option<Token>,
}

impl Response {
    /// A response carrying only the responder's id (`ping`, `announce_peer`).
    pub fn id_only(id: NodeId) -> Self {
        Response {
            id,
            nodes: Vec::new(),
            values: Vec::new(),
            token: None,
        }
    }
}

/// What a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A query (`y` = `q`).
    Query {
        /// The querier's id.
        id: NodeId,
        /// The method and arguments.
        query: Query,
        /// BEP 43: the querier cannot answer queries, so it must not enter routing tables.
        read_only: bool,
    },
    /// A response (`y` = `r`).
    Response(Response),
    /// An error (`y` = `e`).
    Error {
        /// The error code (201 to 204 in BEP 5).
        code: i64,
        /// The message, lossily decoded and cut at [`MAX_ERROR_MESSAGE_LEN`] bytes.
        message: String,
    },
}

/// One KRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The transaction id, chosen by the querier and echoed in the reply.
    pub tid: Tid,
    /// The query, response or error.
    pub body: Body,
    /// BEP 42: in a reply, the querier's address as the responder saw it.
    pub ip: Option<SocketAddr>,
}

fn id20(v: Option<Value<'_>>) -> Option<[u8; 20]> {
    match v {
        Some(Value::Bytes(b)) if b.len() == 20 => {
            let mut id = [0u8; 20];
            id.copy_from_slice(b);
            Some(id)
        }
        _ => None,
    }
}

impl Message {
    /// Reads a message from a datagram. Bytes after the top-level dictionary are ignored.
    pub fn decode(buf: &[u8]) -> Result<Message, KrpcError> {
        let (value, _) = bencode::decode_prefix(buf).map_err(KrpcError::Bencode)?;
        let Value::Dict(dict) = value else {
            return Err(KrpcError::NotKrpc("not a dictionary"));
        };
        let tid = match dict.get(b"t") {
            Some(Value::Bytes(t)) => {
                Tid::new(t).ok_or(KrpcError::NotKrpc("transaction id too long"))?
            }
            _ => return Err(KrpcError::NotKrpc("no transaction id")),
        };
        let ip = match dict.get(b"ip") {
            Some(Value::Bytes(b)) => read_compact_peer(b),
            _ => None,
        };
        let body = match dict.get(b"y") {
            Some(Value::Bytes(b"q")) => decode_query(dict, tid)?,
            Some(Value::Bytes(b"r")) => decode_response(dict, tid)?,
            Some(Value::Bytes(b"e")) => decode_error(dict, tid)?,
            _ => return Err(KrpcError::NotKrpc("no message type")),
        };
        Ok(Message { tid, body, ip })
    }

    /// Appends the message as canonical bencode.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'd');
        match &self.body {
            Body::Query {
                id,
                query,
                read_only,
            } => {
                put_bytes(out, b"a");
                out.push(b'd');
                put_bytes(out, b"id");
                put_bytes(out, &id.0);
                match query {
                    Query::Ping => {}
                    Query::FindNode { target } => {
                        put_bytes(out, b"target");
                        put_bytes(out, &target.0);
                    }
                    Query::GetPeers { info_hash } => {
                        put_bytes(out, b"info_hash");
                        put_bytes(out, &info_hash.0);
                    }
                    Query::AnnouncePeer {
                        info_hash,
                        port,
                        implied_port,
                        token,
                    } => {
                        if *implied_port {
                            put_bytes(out, b"implied_port");
                            put_int(out, 1);
                        }
                        put_bytes(out, b"info_hash");
                        put_bytes(out, &info_hash.0);
                        put_bytes(out, b"port");
                        put_int(out, i64::from(*port));
                        put_bytes(out, b"token");
                        put_bytes(out, token.as_bytes());
                    }
                }
                out.push(b'e');
                self.put_ip(out);
                put_bytes(out, b"q");
                put_bytes(out, query.method().as_bytes());
                if *read_only {
                    put_bytes(out, b"ro");
                    put_int(out, 1);
                }
                self.put_tail(out, b"q");
            }
            Body::Response(r) => {
                self.put_ip(out);
                put_bytes(out, b"r");
                out.push(b'd');
                put_bytes(out, b"id");
                put_bytes(out, &r.id.0);
                if !r.nodes.is_empty() {
                    put_bytes(out, b"nodes");
                    put_len(out, r.nodes.len() * COMPACT_NODE_LEN);
                    for n in &r.nodes {
                        n.write(out);
                    }
                }
                if let Some(token) = &r.token {
                    put_bytes(out, b"token");
                    put_bytes(out, token.as_bytes());
                }
                if !r.values.is_empty() {
                    put_bytes(out, b"values");
                    out.push(b'l');
                    for v in &r.values {
                        put_len(out, if v.is_ipv4() { 6 } else { 18 });
                        write_compact_peer(v, out);
                    }
                    out.push(b'e');
                }
                out.push(b'e');
                self.put_tail(out, b"r");
            }
            Body::Error { code, message } => {
                put_bytes(out, b"e");
                out.push(b'l');
                put_int(out, *code);
                put_bytes(out, message.as_bytes());
                out.push(b'e');
                self.put_ip(out);
                self.put_tail(out, b"e");
            }
        }
        out.push(b'e');
    }

    /// The encoded message in a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out);
        out
    }

    fn put_ip(&self, out: &mut Vec<u8>) {
        if let Some(ip) = &self.ip {
            put_bytes(out, b"ip");
            put_len(out, if ip.is_ipv4() { 6 } else { 18 });
            write_compact_peer(ip, out);
        }
    }

    /// `t` and `y`, the last keys in sorted order.
    fn put_tail(&self, out: &mut Vec<u8>, y: &[u8]) {
        put_bytes(out, b"t");
        put_bytes(out, self.tid.as_bytes());
        put_bytes(out, b"y");
        put_bytes(out, y);
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b':');
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

fn decode_query(dict: Dict<'_>, tid: Tid) -> Result<Body, KrpcError> {
    let bad = |problem| KrpcError::BadQuery { tid, problem };
    let method = match dict.get(b"q") {
        Some(Value::Bytes(m)) => m,
        _ => return Err(bad("no method")),
    };
    if !matches!(
        method,
        b"ping" | b"find_node" | b"get_peers" | b"announce_peer"
    ) {
        return Err(KrpcError::UnknownMethod { tid });
    }
    let Some(Value::Dict(args)) = dict.get(b"a") else {
        return Err(bad("no arguments"));
    };
    let id = NodeId(id20(args.get(b"id")).ok_or(bad("no 20-byte id"))?);
    let read_only = matches!(dict.get(b"ro"), Some(Value::Int(n)) if n != 0);
    let query = match method {
        b"ping" => Query::Ping,
        b"find_node" => Query::FindNode {
            target: NodeId(id20(args.get(b"target")).ok_or(bad("no 20-byte target"))?),
        },
        b"get_peers" => Query::GetPeers {
            info_hash: InfoHash(id20(args.get(b"info_hash")).ok_or(bad("no 20-byte info_hash"))?),
        },
        _ => {
            let info_hash =
                InfoHash(id20(args.get(b"info_hash")).ok_or(bad("no 20-byte info_hash"))?);
            let implied_port = matches!(args.get(b"implied_port"), Some(Value::Int(n)) if n != 0);
            let port = match args.get(b"port") {
                Some(Value::Int(p)) => u16::try_from(p).ok().filter(|&p| p != 0),
                _ => None,
            };
            // With implied_port the port argument is ignored, so it may be missing or zero.
            let port = match (port, implied_port) {
                (Some(p), _) => p,
                (None, true) => 0,
                (None, false) => return Err(bad("no valid port")),
            };
            let token = match args.get(b"token") {
                Some(Value::Bytes(t)) => Token::new(t).ok_or(bad("token too long"))?,
                _ => return Err(bad("no token")),
            };
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            }
        }
    };
    Ok(Body::Query {
        id,
        query,
        read_only,
    })
}

fn decode_response(dict: Dict<'_>, tid: Tid) -> Result<Body, KrpcError> {
    let bad = |problem| KrpcError::BadReply { tid, problem };
    let Some(Value::Dict(r)) = dict.get(b"r") else {
        return Err(bad("no response dictionary"));
    };
    let id = NodeId(id20(r.get(b"id")).ok_or(bad("no 20-byte id"))?);
    let nodes = match r.get(b"nodes") {
        Some(Value::Bytes(b)) => read_compact_nodes(b, MAX_NODES_PER_REPLY),
        _ => Vec::new(),
    };
    let values = match r.get(b"values") {
        Some(Value::List(l)) => l
            .items()
            .filter_map(|v| match v {
                Value::Bytes(b) => read_compact_peer(b).filter(|p| p.port() != 0),
                _ => None,
            })
            .take(MAX_VALUES_PER_REPLY)
            .collect(),
        _ => Vec::new(),
    };
    let token = match r.get(b"token") {
        Some(Value::Bytes(t)) => Token::new(t),
        _ => None,
    };
    Ok(Body::Response(Response {
        id,
        nodes,
        values,
        token,
    }))
}

fn decode_error(dict: Dict<'_>, tid: Tid) -> Result<Body, KrpcError> {
    let Some(Value::List(l)) = dict.get(b"e") else {
        return Err(KrpcError::BadReply {
            tid,
            problem: "no error list",
        });
    };
    let mut items = l.items();
    let code = match items.next() {
        Some(Value::Int(c)) => c,
        _ => code::GENERIC,
    };
    let message = match items.next() {
        Some(Value::Bytes(m)) => {
            String::from_utf8_lossy(&m[..m.len().min(MAX_ERROR_MESSAGE_LEN)]).into_owned()
        }
        _ => String::new(),
    };
    Ok(Body::Error { code, message })
}

/// An error reply to the query with transaction id `tid`.
pub fn error_reply(tid: Tid, code: i64, message: &str) -> Message {
    Message {
        tid,
        body: Body::Error {
            code,
            message: message.to_owned(),
        },
        ip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(b: &[u8]) -> Tid {
        Tid::new(b).unwrap()
    }

    fn id(s: &[u8; 20]) -> NodeId {
        NodeId(*s)
    }

    /// Decodes `wire`, checks it equals `msg`, and that `msg` encodes back to `wire`.
    fn both_ways(wire: &[u8], msg: Message) {
        assert_eq!(Message::decode(wire).unwrap(), msg);
        assert_eq!(
            String::from_utf8_lossy(&msg.to_bytes()),
            String::from_utf8_lossy(wire)
        );
    }

    fn query(q: Query, idb: &[u8; 20]) -> Message {
        Message {
            tid: tid(b"aa"),
            body: Body::Query {
                id: id(idb),
                query: q,
                read_only: false,
            },
            ip: None,
        }
    }

    fn response(r: Response) -> Message {
        Message {
            tid: tid(b"aa"),
            body: Body::Response(r),
            ip: None,
        }
    }

    #[test]
    fn bep5_examples_byte_for_byte() {
        both_ways(
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            query(Query::Ping, b"abcdefghij0123456789"),
        );
        both_ways(
            b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
            response(Response::id_only(id(b"mnopqrstuvwxyz123456"))),
        );
        both_ways(
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
            error_reply(tid(b"aa"), 201, "A Generic Error Ocurred"),
        );
        both_ways(
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
            query(
                Query::FindNode {
                    target: id(b"mnopqrstuvwxyz123456"),
                },
                b"abcdefghij0123456789",
            ),
        );
        both_ways(
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
            query(
                Query::GetPeers {
                    info_hash: InfoHash(*b"mnopqrstuvwxyz123456"),
                },
                b"abcdefghij0123456789",
            ),
        );
        both_ways(
            b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
            response(Response {
                id: id(b"abcdefghij0123456789"),
                nodes: vec![],
                values: vec![
                    read_compact_peer(b"axje.u").unwrap(),
                    read_compact_peer(b"idhtnm").unwrap(),
                ],
                token: Token::new(b"aoeusnth"),
            }),
        );
        both_ways(
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
            query(
                Query::AnnouncePeer {
                    info_hash: InfoHash(*b"mnopqrstuvwxyz123456"),
                    port: 6881,
                    implied_port: false,
                    token: Token::new(b"aoeusnth").unwrap(),
                },
                b"abcdefghij0123456789",
            ),
        );
        both_ways(
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
            query(
                Query::AnnouncePeer {
                    info_hash: InfoHash(*b"mnopqrstuvwxyz123456"),
                    port: 6881,
                    implied_port: true,
                    token: Token::new(b"aoeusnth").unwrap(),
                },
                b"abcdefghij0123456789",
            ),
        );
    }

    #[test]
    fn nodes_ip_and_read_only_round_trip() {
        let nodes: Vec<CompactNode> = (0..8u8)
            .map(|i| CompactNode {
                id: NodeId([i; 20]),
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 6881 + u16::from(i)),
            })
            .collect();
        let msg = Message {
            tid: tid(&[0, 1]),
            body: Body::Response(Response {
                id: NodeId([9; 20]),
                nodes: nodes.clone(),
                values: vec!["[2001:db8::1]:51413".parse().unwrap()],
                token: Token::new(&[1, 2, 3, 4]),
            }),
            ip: Some("1.2.3.4:5".parse().unwrap()),
        };
        let bytes = msg.to_bytes();
        assert!(bencode::decode(&bytes).is_ok());
        assert_eq!(Message::decode(&bytes).unwrap(), msg);

        let ro = Message {
            tid: tid(b"xy"),
            body: Body::Query {
                id: NodeId([3; 20]),
                query: Query::Ping,
                read_only: true,
            },
            ip: None,
        };
        let bytes = ro.to_bytes();
        assert!(bencode::decode(&bytes).is_ok());
        assert_eq!(Message::decode(&bytes).unwrap(), ro);
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let not = |b: &[u8]| Message::decode(b).unwrap_err();
        assert!(matches!(not(b""), KrpcError::Bencode(_)));
        assert!(matches!(not(b"i1e"), KrpcError::NotKrpc(_)));
        assert!(matches!(not(b"de"), KrpcError::NotKrpc(_)));
        assert!(matches!(not(b"d1:t2:aae"), KrpcError::NotKrpc(_)));
        assert!(matches!(not(b"d1:t2:aa1:y1:xe"), KrpcError::NotKrpc(_)));
        assert!(matches!(
            not(b"d1:t17:aaaaaaaaaaaaaaaaa1:y1:qe"),
            KrpcError::NotKrpc(_)
        ));
        // A query without arguments, a short id, a bad port, no token: error 203.
        for q in [
            &b"d1:q4:ping1:t2:aa1:y1:qe"[..],
            b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe",
            b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe",
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti0e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti1ee1:q13:announce_peer1:t2:aa1:y1:qe",
        ] {
            assert_eq!(
                not(q),
                KrpcError::BadQuery {
                    tid: tid(b"aa"),
                    problem: match not(q) {
                        KrpcError::BadQuery { problem, .. } => problem,
                        other => panic!("{other:?}"),
                    }
                }
            );
        }
        assert_eq!(
            not(b"d1:ad2:id20:abcdefghij0123456789e1:q4:vote1:t2:aa1:y1:qe"),
            KrpcError::UnknownMethod { tid: tid(b"aa") }
        );
        assert!(matches!(
            not(b"d1:rd2:id2:xxe1:t2:aa1:y1:re"),
            KrpcError::BadReply { .. }
        ));
        assert!(matches!(
            not(b"d1:ei201e1:t2:aa1:y1:ee"),
            KrpcError::BadReply { .. }
        ));
        // Odd but harmless: values of wrong sizes and a partial node are skipped.
        let m = Message::decode(
            b"d1:rd2:id20:abcdefghij01234567895:nodes27:abcdefghij0123456789\x01\x02\x03\x04\x1a\xe1x6:valuesl3:abci5e6:axje.uee1:t2:aa1:y1:re",
        )
        .unwrap();
        let Body::Response(r) = m.body else { panic!() };
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.values.len(), 1);
    }

    #[test]
    fn a_reply_with_ten_thousand_nodes_is_bounded() {
        let mut nodes = Vec::new();
        for i in 0..10_000u32 {
            let mut id = [0u8; 20];
            id[..4].copy_from_slice(&i.to_be_bytes());
            CompactNode {
                id: NodeId(id),
                addr: SocketAddrV4::new(Ipv4Addr::from(i), 1000),
            }
            .write(&mut nodes);
        }
        let mut wire = b"d1:rd2:id20:abcdefghij01234567895:nodes".to_vec();
        put_bytes(&mut wire, &nodes);
        wire.extend_from_slice(b"6:valuesl");
        for i in 0..10_000u32 {
            put_len(&mut wire, 6);
            wire.extend_from_slice(&i.to_be_bytes());
            wire.extend_from_slice(&[0, 80]);
        }
        wire.extend_from_slice(b"ee1:t2:aa1:y1:re");
        let m = Message::decode(&wire).unwrap();
        let Body::Response(r) = m.body else { panic!() };
        assert_eq!(r.nodes.len(), MAX_NODES_PER_REPLY);
        assert_eq!(r.values.len(), MAX_VALUES_PER_REPLY);
        assert!(r.nodes.capacity() <= MAX_NODES_PER_REPLY * 2);
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_messages() {
        let wire = b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
        for n in 0..wire.len() {
            let _ = Message::decode(&wire[..n]);
        }
        let mut flipped = wire.to_vec();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x20;
            let _ = Message::decode(&flipped);
            flipped[i] ^= 0x20;
        }
    }
}
