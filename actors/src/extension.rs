//! Our side of the extension protocol (BEP 10): the client name we send. The handshake itself
//! (encoding ours with `ut_metadata`, `metadata_size` and `ut_pex`; reading a peer's `m` map)
//! is pure code in [`shoal_engine::extension`].

/// Our client name and version, sent as `v`.
pub const CLIENT_VERSION: &str = concat!("shoal ", env!("CARGO_PKG_VERSION"));
