//! shoal: a BitTorrent engine built from small actors on smol. This crate is what an embedder
//! depends on: a [`Session`] holds torrents; each [`Torrent`] handle reports its progress and
//! events and takes orders (pause, resume, peers, shutdown).
//!
//! # Examples
//!
//! Download a torrent and wait for it (see `examples/download.rs` for one with a progress
//! bar):
//!
//! ```no_run
//! let session = shoal::Session::new(shoal::SessionSettings::default())?;
//! let torrent = session.add_file("photos.torrent", "downloads")?;
//! session.block_on(torrent.wait_complete())?;
//! session.block_on(session.shutdown()); // announces `stopped`, flushes the files
//! # Ok::<(), shoal::Error>(())
//! ```
//!
//! # Layout
//! - [`Session`]: the listening socket, the threads that hash and write, the torrents.
//! - [`AddTorrent`]: what to add and how (folder, peers, paused, settings).
//! - [`Torrent`]: a handle to one torrent: [`Progress`], [`TorrentState`], [`TorrentEvent`]s
//!   (a subscriber more than [`EVENT_QUEUE`] events behind loses the newest ones; the counters
//!   in [`Progress`] never lose anything).
//! - [`Metainfo`], [`create_torrent`]: reading and making `.torrent` files.
//! - [`Error`]: every failure, typed.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use shoal_actors::disk::Mode;
pub use shoal_actors::error::{Error, Result};
pub use shoal_actors::session::{Encryption, SessionSettings};
pub use shoal_actors::shared::{Progress, TorrentEvent, TorrentState, EVENT_QUEUE};
pub use shoal_actors::torrent::{AddMagnet, AddTorrent, PeerInfo, Torrent, TorrentSettings};
pub use shoal_engine::bitfield::Bitfield;
pub use shoal_engine::create::{create_torrent, CreateError, CreateOptions};
pub use shoal_engine::magnet::{Magnet, MagnetError};
pub use shoal_engine::metainfo::{Metainfo, MetainfoError};
pub use shoal_engine::{InfoHash, PeerId};

/// A running BitTorrent session: one listening socket, one set of executor, hashing and disk
/// threads, and any number of torrents.
#[derive(Debug)]
pub struct Session {
    /// The actor system's session.
    inner: shoal_actors::session::Session,
}

impl Session {
    /// Starts the threads and listens for peers on `settings.listen`.
    pub fn new(settings: SessionSettings) -> Result<Self> {
        let listen = settings.listen;
        let inner = shoal_actors::session::Session::new(settings)
            .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
        Ok(Self { inner })
    }

    /// The address peers reach us on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Adds a torrent and returns at once, in [`TorrentState::Checking`] while it checks the
    /// data already on disk ([`Progress::checked_pieces`]). A torrent already in the session is
    /// refused with [`Error::AlreadyPresent`].
    pub fn add(&self, add: AddTorrent) -> Result<Torrent> {
        self.inner.start_torrent(add)
    }

    /// Adds the `.torrent` file at `path`, to download into `folder` (see [`add`](Self::add)).
    pub fn add_file(&self, path: impl AsRef<Path>, folder: impl Into<PathBuf>) -> Result<Torrent> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        self.add_bytes(&bytes, folder)
    }

    /// Adds a torrent from the bytes of a `.torrent` file, to download into `folder`.
    pub fn add_bytes(&self, bytes: &[u8], folder: impl Into<PathBuf>) -> Result<Torrent> {
        let meta = Arc::new(Metainfo::from_bytes(bytes)?);
        self.add(AddTorrent::download(meta, folder))
    }

    /// Sets the session's rate limits in bytes per second (0: none), shared by every peer of
    /// every torrent, at once. Each torrent may have its own too ([`Torrent::set_limits`]).
    pub fn set_limits(&self, download: u64, upload: u64) {
        self.inner.set_limits(download, upload)
    }

    /// The session's rate limits in bytes per second (download, upload; 0: none).
    pub fn limits(&self) -> (u64, u64) {
        self.inner.limits()
    }

    /// Adds a torrent from a magnet link, to download into `folder`. It returns at once, in
    /// [`TorrentState::Metadata`] while the info dictionary is fetched from peers (the
    /// magnet's `x.pe` peers and trackers); a malformed link is [`Error::InvalidMagnet`].
    pub fn add_magnet(&self, uri: &str, folder: impl Into<PathBuf>) -> Result<Torrent> {
        let magnet = Magnet::parse(uri).map_err(Error::InvalidMagnet)?;
        self.add_magnet_with(AddMagnet::new(magnet, folder))
    }

    /// Adds a torrent from a magnet link with every option of [`AddMagnet`].
    pub fn add_magnet_with(&self, add: AddMagnet) -> Result<Torrent> {
        self.inner.start_magnet(add)
    }

    /// The torrent with this info hash.
    pub fn torrent(&self, info_hash: &InfoHash) -> Option<Torrent> {
        self.inner.torrent(info_hash)
    }

    /// Every torrent of the session.
    pub fn torrents(&self) -> Vec<Torrent> {
        self.inner.torrents()
    }

    /// Stops a torrent and forgets it; with `delete_files`, its files are deleted too (never
    /// anything outside the torrent's own files and folder).
    pub async fn remove(&self, info_hash: &InfoHash, delete_files: bool) -> Result<()> {
        self.inner.remove_torrent(info_hash, delete_files).await
    }

    /// Stops every torrent in order (`stopped` announces, files flushed, resume records saved),
    /// then the threads.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await
    }

    /// Runs a future on the calling thread while the session's actors run on theirs.
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        self.inner.block_on(fut)
    }
}

/// The README's code blocks, compiled as doc tests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
