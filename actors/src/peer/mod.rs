//! The peer actor: one per connection, after the handshake.
//!
//! One task drives the connection with a hand-written event loop that polls, in order: control
//! messages from the torrent (choke, unchoke, stop), notes from the picker (grants, cancels),
//! disk reads for uploads, our new pieces (the have-log), the socket for writing, the socket for
//! reading, and a one-second tick. Reading and writing are both always possible, so two peers
//! that upload to each other can never wedge on full TCP buffers.
//!
//! Downloads: the blocks of each socket read go to the picker in one message, with a request for
//! more while the pipeline has room (one pick in flight at a time; a grant carries several
//! blocks; the depth grows in slow start, then follows the peer's rate). Uploads: requests from
//! the peer are queued (bounded) and, while the write buffer is below its mark, read straight
//! into it when the data is in the page cache, else by the disk threads, a few at a time.
//!
//! # Layout
//!
//! Each job has its own file. `conn`, `remote`, `download` and `upload` are synchronous state
//! machines, unit-tested without a socket (time is passed in as `now`); `run` is the async loop
//! that drives them, and `connect` sets the connection up before it:
//!
//! | file | job |
//! |---|---|
//! | `connect` | dialling, accepting, the handshake exchange, the byte stream (TCP now; the place for uTP and MSE/PE) |
//! | `run` | the event loop: polls the sources, dispatches each event to a part below, talks to the picker |
//! | `conn` | the read buffer and its decode loop, the write buffer, idle timeout, keep-alives, the rate meter |
//! | `remote` | both sides' pieces, choke and interest; HAVE, BITFIELD, INTERESTED... |
//! | `download` | the request pipeline (slow start via [`shoal_engine::pipeline::RequestDepth`]), outstanding requests, timeouts, late blocks |
//! | `upload` | the serve queue, cancels, cached `preadv2` reads into the write buffer, disk reads, the write high-water mark |
//!
//! The protocol runs over any byte stream (`connect::PeerStream`), so nothing here knows the
//! transport.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use shoal_engine::bitfield::Bitfield;
use shoal_engine::lengths::{BlockInfo, Lengths};
use shoal_engine::picker::PeerKey;
use shoal_engine::wire::WireError;
use shoal_engine::PeerId;

use crate::buffers::BlockPool;
use crate::disk::{DiskJob, Storage};
use crate::picker::PickerMsg;
use crate::runtime::Addr;
use crate::shared::Shared;

mod conn;
pub(crate) mod connect;
mod download;
pub(crate) mod encrypt;
mod remote;
mod run;
mod upload;

pub(crate) use run::run;

/// Capacity of a peer's control channel (from the torrent).
pub(crate) const PEER_CONTROL: usize = 16;

/// Settings for every peer of a torrent.
#[derive(Clone, Debug)]
pub(crate) struct PeerSettings {
    /// The fewest requests kept outstanding per peer (BEP 3 clients use 5 or more); the queue
    /// grows in slow start, then holds a few seconds of the peer's rate (see
    /// [`shoal_engine::pipeline`]).
    pub(crate) queue_depth: usize,
    /// Largest message accepted from a peer.
    pub(crate) max_message_len: u32,
}

impl Default for PeerSettings {
    fn default() -> Self {
        Self {
            queue_depth: 5,
            max_message_len: shoal_engine::wire::DEFAULT_MAX_MESSAGE_LEN,
        }
    }
}

/// Orders from the torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerControl {
    /// Stop answering the peer's requests.
    Choke,
    /// Answer the peer's requests.
    Unchoke,
    /// Close the connection.
    Stop,
    /// Close the connection at once, without waiting for the peer to close its side (an
    /// eviction to make room: the peer said nothing worth a polite close).
    Evict,
}

/// Counters the torrent reads for choking and display; written only by the peer.
#[derive(Debug, Default)]
pub(crate) struct PeerStats {
    /// Payload bytes received from this peer.
    pub(crate) downloaded: AtomicU64,
    /// Payload bytes sent to this peer.
    pub(crate) uploaded: AtomicU64,
    /// Whether the peer is interested in our pieces.
    pub(crate) peer_interested: AtomicBool,
    /// Whether the peer has every piece.
    pub(crate) peer_is_seed: AtomicBool,
    /// Whether we closed the connection as useless to both sides (see `remote::Redundancy`):
    /// like a seed's, the address is not dialled again while we want nothing more.
    pub(crate) redundant: AtomicBool,
    /// Whether the handshake is done (the connection is up).
    pub(crate) connected: AtomicBool,
    /// Whether the peer ever sent a bitfield, have, interest or request (the admission policy
    /// evicts silent connections first, see `torrent::admission`).
    pub(crate) spoke: AtomicBool,
    /// Whether we are interested in the peer's pieces.
    pub(crate) we_interested: AtomicBool,
    /// Whether the connection is RC4-encrypted (MSE/PE).
    pub(crate) encrypted: AtomicBool,
    /// Whether the connection runs over uTP (else TCP).
    pub(crate) utp: AtomicBool,
    /// Pieces the peer has, as its bitfield and HAVEs say.
    pub(crate) pieces: std::sync::atomic::AtomicU32,
    /// The peer's client name and version (`v` of its extension handshake), set once.
    pub(crate) client: std::sync::OnceLock<String>,
}

/// Decides, for the `stop after one copy` seeding mode, whether a request may be served.
pub trait ServeFilter: Send + Sync + fmt::Debug {
    /// Whether `peer` may have `block` now. Called once per request that we would otherwise
    /// serve.
    fn allow(&self, peer: PeerKey, block: &BlockInfo) -> bool;
    /// `block` went out to `peer`.
    fn served(&self, peer: PeerKey, block: &BlockInfo);
}

/// Everything a peer actor starts with, besides its stream.
#[derive(Debug)]
pub(crate) struct PeerSetup {
    /// Its key, unique for the torrent's life.
    pub(crate) key: PeerKey,
    /// The remote address.
    pub(crate) addr: SocketAddr,
    /// Our handshake's reserved bits (what we advertised).
    pub(crate) our_reserved: [u8; 8],
    /// The port we accept peers on, told to peers in the extended handshake (BEP 10).
    pub(crate) listen_port: Option<u16>,
    /// The torrent, whose info dictionary is served to peers that ask (BEP 9).
    pub(crate) metainfo: Arc<shoal_engine::metainfo::Metainfo>,
    /// The trees of the torrent's piece layers, answering BEP 52 hash requests (`None`: a v1
    /// torrent, or no file larger than a piece).
    pub(crate) hash_trees: Option<Arc<shoal_engine::hash_picker::PieceTrees>>,
    /// The torrent's lengths.
    pub(crate) lengths: Lengths,
    /// The pieces we had when the torrent started (later ones come from the have-log).
    pub(crate) initial_have: Arc<Bitfield>,
    /// The picker.
    pub(crate) picker: Addr<PickerMsg>,
    /// The disk job queue, for upload reads.
    pub(crate) disk: Sender<DiskJob>,
    /// The torrent's files, read for uploads.
    pub(crate) storage: Arc<Storage>,
    /// Shared torrent state.
    pub(crate) shared: Arc<Shared>,
    /// Where received blocks get their buffers.
    pub(crate) pool: Arc<BlockPool>,
    /// Orders from the torrent.
    pub(crate) control: Receiver<PeerControl>,
    /// Counters for the torrent.
    pub(crate) stats: Arc<PeerStats>,
    /// Settings.
    pub(crate) settings: Arc<PeerSettings>,
    /// Optional limit on what we serve.
    pub(crate) serve_filter: Option<Arc<dyn ServeFilter>>,
    /// Peer exchange (BEP 11), unless the torrent is private or PEX is off: where the peers
    /// this peer tells us of go (the torrent's queue of addresses to dial).
    pub(crate) pex: Option<Sender<Vec<SocketAddr>>>,
}

/// Why a peer actor ended.
#[derive(Debug)]
pub(crate) struct PeerExit {
    /// In words.
    pub(crate) reason: String,
    /// Whether the peer should be banned (it sent corrupt data or lied).
    pub(crate) ban: bool,
    /// The peer's id, once its handshake was read.
    pub(crate) peer_id: Option<PeerId>,
}

/// What ends a connection, as the parts report it.
#[derive(Debug)]
enum Stop {
    /// The peer broke the protocol.
    Wire(WireError),
    /// The peer lied or misbehaved in another way: it is banned.
    Misbehaved(String),
    /// The stream failed or closed.
    Io(io::Error),
    /// We decided to close.
    Local(String),
    /// The picker banned the peer.
    Banned,
}

impl From<WireError> for Stop {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
