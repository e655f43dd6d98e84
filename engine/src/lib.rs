//! Pure BitTorrent logic for shoal: no async runtime, no I/O beyond what a function is asked to do.
//!
//! # Layout
//! - [`bencode`]: a borrowing bencode decoder that keeps byte spans.
//! - [`metainfo`]: `.torrent` parsing, info hash over the raw bytes.
//! - [`create`]: torrent creation from a file or a directory, hashing on every core.
//! - [`lengths`]: piece and block arithmetic, validated indices.
//! - [`bitfield`]: which pieces a peer (or we) have.
//! - [`wire`]: the peer wire protocol of BEP 3: handshake, messages, a partial-buffer codec.
//! - [`storage`]: the map from pieces and blocks to the file spans they cover.
//! - [`picker`]: piece selection policy (random first, rarest first, endgame).
//! - [`pipeline`]: how many requests to keep outstanding with a peer (slow start, then rate).
//! - [`tracker`]: tracker announce requests and replies (HTTP and UDP), as pure data.
//! - [`mse`]: message stream encryption (the Diffie-Hellman and RC4 handshake), both sides.
//!
//! # Examples
//! ```
//! use shoal_engine::InfoHash;
//! let h = InfoHash::from_hex("0123456789abcdef0123456789abcdef01234567").unwrap();
//! assert_eq!(h.to_string(), "0123456789abcdef0123456789abcdef01234567");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod bencode;
pub mod bitfield;
pub mod create;
mod ids;
pub mod lengths;
pub mod metainfo;
pub mod mse;
pub mod picker;
pub mod pipeline;
pub mod storage;
pub mod tracker;
pub mod wire;

pub use ids::{InfoHash, PeerId};
