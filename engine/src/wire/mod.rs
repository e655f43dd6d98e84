//! The peer wire protocol of BEP 3 (with the message ids of BEP 6, BEP 10 and BEP 52) as pure
//! code.
//!
//! - [`handshake`]: the 68-byte greeting that opens every connection.
//! - [`message`]: the length-prefixed messages that follow it, a decoder that borrows from a
//!   partial read buffer, and an encoder that appends to a reusable one.
//!
//! Nothing here does I/O or allocates while decoding: the peer actor owns the socket and the
//! buffer, calls [`decode`] on what it has read, and either handles a [`Message`] and drops
//! `consumed` bytes, or reads at least the [`Decoded::NeedMore`] count before trying again.
//! Anything a peer sends that breaks the protocol is a [`WireError`]: drop that peer.
//!
//! # Examples
//! ```
//! use shoal_engine::wire::{decode, Decoded, Message, DEFAULT_MAX_MESSAGE_LEN};
//! let mut buf = Vec::new();
//! Message::Have(7).encode(&mut buf);
//! Message::Unchoke.encode(&mut buf);
//! let Decoded::Message { message, consumed } = decode(&buf, DEFAULT_MAX_MESSAGE_LEN).unwrap()
//! else { panic!("whole message is there") };
//! assert_eq!((message, consumed), (Message::Have(7), 9));
//! assert!(matches!(decode(&buf[9..11], DEFAULT_MAX_MESSAGE_LEN), Ok(Decoded::NeedMore(2))));
//! ```

use std::fmt;

pub mod handshake;
pub mod message;

pub use handshake::{Handshake, HANDSHAKE_LEN, PROTOCOL};
pub use message::{
    decode, piece_header, Decoded, HashRequest, Message, DEFAULT_MAX_MESSAGE_LEN, HASH_HEADER_LEN,
};

/// A peer broke the wire protocol: the connection to it should be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The handshake's first byte is not 19, the length of [`PROTOCOL`].
    BadProtocolLength(u8),
    /// The handshake's protocol string is not [`PROTOCOL`].
    BadProtocol,
    /// A message's length prefix is above the limit the caller set.
    MessageTooLong {
        /// The length prefix received (id byte plus payload).
        len: u32,
        /// The largest length prefix accepted.
        max: u32,
    },
    /// A fixed-size message has a payload of the wrong size.
    WrongPayloadLength {
        /// The message's name, such as `"have"`.
        message: &'static str,
        /// Payload bytes received.
        got: u32,
        /// Payload bytes that message always has.
        expected: u32,
    },
    /// A message whose payload starts with a fixed header is shorter than that header.
    PayloadTooShort {
        /// The message's name, such as `"piece"`.
        message: &'static str,
        /// Payload bytes received.
        got: u32,
        /// The fewest payload bytes that message can have.
        min: u32,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadProtocolLength(n) => write!(
                f,
                "handshake protocol length is {n}, expected {}",
                PROTOCOL.len()
            ),
            Self::BadProtocol => write!(f, "handshake protocol string is not BitTorrent protocol"),
            Self::MessageTooLong { len, max } => {
                write!(f, "message length {len} is above the maximum of {max}")
            }
            Self::WrongPayloadLength {
                message,
                got,
                expected,
            } => write!(
                f,
                "{message} message has {got} bytes of payload, expected {expected}"
            ),
            Self::PayloadTooShort { message, got, min } => write!(
                f,
                "{message} message has {got} bytes of payload, expected at least {min}"
            ),
        }
    }
}

impl std::error::Error for WireError {}
