//! uTP (BEP 29), the uTorrent transport protocol, as sans-IO state machines: reliable ordered
//! byte streams over UDP with LEDBAT congestion control, so a bulk transfer yields to TCP.
//!
//! - [`packet`]: the header, the extension chain and the selective ACK; a bounded, panic-free
//!   decoder and an encoder into a caller's buffer.
//! - [`conn`]: one connection (handshake, sequence numbers, reassembly, ACKs and selective ACKs,
//!   RTT and retransmission timeouts, fast retransmit, windows, LEDBAT, path MTU discovery,
//!   FIN and RESET).
//! - [`socket`]: a demultiplexer for one UDP socket: routes datagrams to connections, accepts new
//!   ones within a bounded table, answers strays with RESET.
//!
//! Nothing here touches a socket or reads the clock. The caller passes `now: Instant` to every
//! call, and the microsecond timestamps in the header are measured from an `epoch` the caller
//! picks once per UDP socket ([`socket::UtpSocket::new`]). A driver loop reads a datagram and
//! calls `handle_datagram`, calls `handle_timeout` when `poll_timeout` is due, and sends
//! whatever `poll_transmit` hands out until it says `None`.
//!
//! # Sharing the UDP socket with the DHT
//! One UDP port carries both uTP and the DHT's KRPC messages; [`classify`] tells them apart by
//! the first byte alone. A KRPC message is a bencoded dictionary, so it starts with `d`
//! (0x64). A uTP packet's first byte is `type << 4 | version`, with version 1 in the low nibble
//! and a type from 0 to 4 in the high one: 0x01, 0x11, 0x21, 0x31 or 0x41, none of which is
//! `d`. A datagram that is neither (too short, another version, another first byte) is
//! [`DatagramKind::Other`] and is dropped.
//!
//! # Connection ids (BEP 29)
//! The side that connects picks a random id `r`, receives on `r` and sends on `r + 1`; its SYN
//! carries `r`. The side that accepts receives on `r + 1` and sends on `r`. Every packet carries
//! the receiver's id, so a connection is found by (peer address, id).
//!
//! # Examples
//! ```
//! use shoal_engine::utp::{classify, DatagramKind};
//! assert_eq!(classify(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"), DatagramKind::Krpc);
//! let syn = [0x41, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
//! assert_eq!(classify(&syn), DatagramKind::Utp);
//! assert_eq!(classify(b"\x13BitTorrent protocol"), DatagramKind::Other);
//! ```

use std::fmt;

pub mod conn;
pub mod packet;
pub mod socket;

#[cfg(test)]
mod sim_tests;

pub use conn::{Config, Connection, State, Stats};
pub use packet::{Packet, PacketType, SelectiveAck};
pub use socket::{path_ceiling, ConnectionHandle, Routed, UtpSocket};

/// What a datagram on the shared UDP socket is, judged from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramKind {
    /// A uTP packet: at least a header long, version 1, a known type.
    Utp,
    /// A KRPC (DHT) message: a bencoded dictionary, starting with `d`.
    Krpc,
    /// Neither: drop it.
    Other,
}

/// Tells a uTP packet from a KRPC message (see the module documentation).
pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(b'd') => DatagramKind::Krpc,
        Some(&b) if b & 0x0f == packet::VERSION && b >> 4 <= 4 => {
            if datagram.len() >= packet::HEADER_LEN {
                DatagramKind::Utp
            } else {
                DatagramKind::Other
            }
        }
        _ => DatagramKind::Other,
    }
}

/// What went wrong with a uTP packet or connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UtpError {
    /// A datagram shorter than the 20-byte header.
    Truncated {
        /// The datagram's length.
        len: usize,
    },
    /// The version nibble is not 1.
    BadVersion(u8),
    /// The type nibble is not one of the five types.
    BadType(u8),
    /// An extension header or body runs past the end of the datagram.
    BadExtension {
        /// The offset of the extension header.
        at: usize,
    },
    /// More extensions than [`packet::MAX_EXTENSIONS`].
    TooManyExtensions,
    /// The peer reset the connection.
    Reset,
    /// The peer stopped acknowledging: too many retransmission timeouts in a row.
    TimedOut,
    /// The connection table is full ([`socket::UtpSocket`]'s limit).
    TableFull,
}

impl fmt::Display for UtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len } => {
                write!(f, "utp packet of {len} bytes is shorter than its header")
            }
            Self::BadVersion(v) => write!(f, "utp packet has version {v}, not 1"),
            Self::BadType(t) => write!(f, "utp packet has unknown type {t}"),
            Self::BadExtension { at } => {
                write!(f, "utp extension at byte {at} runs past the packet")
            }
            Self::TooManyExtensions => write!(f, "utp packet has too many extensions"),
            Self::Reset => write!(f, "utp connection reset by peer"),
            Self::TimedOut => write!(f, "utp connection timed out"),
            Self::TableFull => write!(f, "utp connection table is full"),
        }
    }
}

impl std::error::Error for UtpError {}

/// Whether sequence number `a` comes before `b`, modulo 2^16 (half the space either way).
pub(crate) fn seq_less(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_first_bytes() {
        for ty in 0..5u8 {
            let mut p = [0u8; 20];
            p[0] = ty << 4 | 1;
            assert_eq!(classify(&p), DatagramKind::Utp);
            assert_eq!(classify(&p[..19]), DatagramKind::Other);
        }
        assert_eq!(classify(&[0x51; 20]), DatagramKind::Other);
        assert_eq!(classify(&[0x42; 20]), DatagramKind::Other);
        assert_eq!(classify(b"d1:y1:re"), DatagramKind::Krpc);
        assert_eq!(classify(b""), DatagramKind::Other);
    }

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert!(seq_less(1, 2));
        assert!(seq_less(0xffff, 0));
        assert!(seq_less(0xfff0, 5));
        assert!(!seq_less(5, 0xfff0));
        assert!(!seq_less(3, 3));
    }
}
