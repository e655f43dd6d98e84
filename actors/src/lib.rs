//! A small actor runtime on smol, and the BitTorrent actors of shoal.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
pub mod tracker;
pub mod tracker_server;
