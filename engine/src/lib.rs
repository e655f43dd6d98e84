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
//! - [`picker`]: piece selection policy (priorities, deadlines, sequential or rarest first,
//!   endgame).
//! - [`rate`]: transfer rates over a sliding window, and the time left at that rate.
//! - [`pipeline`]: how many requests to keep outstanding with a peer (slow start, then rate).
//! - [`tracker`]: tracker announce requests and replies (HTTP and UDP), as pure data.
//! - [`utp`]: uTP (BEP 29) connections and the demultiplexer of a UDP socket, without I/O.
//! - [`magnet`]: magnet links: parse one, or write one for a torrent.
//! - [`merkle`]: SHA-256 merkle trees of BitTorrent v2: leaves, piece layers, roots.
//! - [`extension`]: the extension protocol handshake of BEP 10, ours and a peer's.
//! - [`hash_picker`]: BEP 52 hash requests: answering them from our piece layers, fetching
//!   the piece layers a v2 magnet lacks, every answer proved against its file root.
//! - [`metadata`]: BEP 9 metadata exchange: the `ut_metadata` codec, fetching the info
//!   dictionary from several peers and checking it against the info hash, serving ours.
//! - [`pex`]: BEP 11 peer exchange: the `ut_pex` codec and what to tell each peer, when.
//! - [`dht`]: a mainline DHT node (BEP 5) as a sans-IO state machine: KRPC, routing table,
//!   lookups, tokens, peer store.
//! - [`mse`]: message stream encryption (the Diffie-Hellman and RC4 handshake), both sides.
//! - [`superseed`]: super-seeding (BEP 16): which piece to offer which peer, and when.
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
pub mod dht;
pub mod extension;
pub mod hash_picker;
mod ids;
pub mod lengths;
pub mod magnet;
pub mod merkle;
pub mod metadata;
pub mod metainfo;
pub mod mse;
pub mod pex;
pub mod picker;
pub mod pipeline;
pub mod rate;
pub mod storage;
pub mod superseed;
pub mod tracker;
pub mod utp;
pub mod wire;

pub use ids::{InfoHash, PeerId};
