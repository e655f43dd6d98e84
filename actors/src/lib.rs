//! A small actor runtime on smol, and the BitTorrent actors of shoal.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod buffers;
pub mod dht;
pub mod discovery;
pub mod disk;
pub mod error;
pub mod extension;
pub mod hasher;
pub mod limit;
pub mod lsd;
pub mod one_copy;
pub mod peer;
pub mod picker;
pub mod resume;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod torrent;
pub mod tracker;
pub mod tracker_server;
pub mod udp;
pub mod utp;
pub mod webseed;
pub mod workers;
