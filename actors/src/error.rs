//! The errors a session and its torrents report to their caller.

use std::fmt;
use std::io;

use shoal_engine::metainfo::MetainfoError;
use shoal_engine::InfoHash;

/// Why a session or torrent call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The torrent is already in the session; nothing was started a second time.
    AlreadyPresent(InfoHash),
    /// No torrent with this info hash is in the session.
    UnknownTorrent(InfoHash),
    /// The torrent (or the session) has stopped and takes no more orders.
    Stopped,
    /// The torrent stopped without completing; the text says why (a disk error, say).
    Failed(String),
    /// The `.torrent` is malformed.
    InvalidTorrent(MetainfoError),
    /// The magnet link is malformed.
    InvalidMagnet(shoal_engine::magnet::MagnetError),
    /// A file or socket operation failed.
    Io {
        /// What we were doing, e.g. "opening downloads/a.iso".
        context: String,
        /// The cause.
        source: io::Error,
    },
}

impl Error {
    /// An I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyPresent(h) => write!(f, "torrent {h} is already in this session"),
            Self::UnknownTorrent(h) => write!(f, "no torrent {h} in this session"),
            Self::Stopped => f.write_str("the torrent has stopped"),
            Self::Failed(why) => f.write_str(why),
            Self::InvalidTorrent(e) => write!(f, "invalid torrent: {e}"),
            Self::InvalidMagnet(e) => write!(f, "invalid magnet link: {e}"),
            Self::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::InvalidTorrent(e) => Some(e),
            Self::InvalidMagnet(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MetainfoError> for Error {
    fn from(e: MetainfoError) -> Self {
        Self::InvalidTorrent(e)
    }
}

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
