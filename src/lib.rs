#![doc = include_str!("../README.md")]
//!
//! This crate is the facade embedders depend on: it re-exports the pure engine ([`engine`])
//! and the actor system ([`actors`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub use shoal_actors as actors;
pub use shoal_engine as engine;
