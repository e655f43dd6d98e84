//! The peer actor: one per TCP connection, after the handshake.
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

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use event_listener::EventListener;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt, Stream};
use shoal_engine::bitfield::Bitfield;
use shoal_engine::lengths::{BlockInfo, Lengths};
use shoal_engine::picker::PeerKey;
use shoal_engine::pipeline::RequestDepth;
use shoal_engine::wire::{decode, piece_header, Decoded, Handshake, Message, WireError};
use shoal_engine::PeerId;
use smol::net::TcpStream;

use crate::buffers::{Block, BlockPool};
use crate::disk::{DiskJob, ReadDone, Storage};
use crate::extension::{our_handshake, PeerExtensions};
use crate::picker::{PeerNote, PickRequest, PickerMsg, PEER_NOTES};
use crate::runtime::Addr;
use crate::shared::Shared;

/// Capacity of a peer's control channel (from the torrent).
pub const PEER_CONTROL: usize = 16;

/// Requests from the peer we queue before refusing more.
const MAX_SERVE_QUEUE: usize = 512;

/// Disk reads in flight for one peer's uploads.
const MAX_READS: usize = 8;

/// Most consecutive requested blocks read from the page cache with one system call.
const MAX_READ_RUN: usize = 64;

/// Bytes before a block's data in a PIECE message (`piece_header`): length, id, index, begin.
const PIECE_HEADER_LEN: usize = 13;

/// Stop reading blocks for this peer while this many bytes wait to be sent: at least this...
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// ...and up to this for a fast peer (a quarter second of its upload rate): fewer, larger
/// writes and wake-ups per byte (5% less CPU on both sides at 600 MB/s), while slow peers keep
/// small buffers.
const MAX_WRITE_HIGH_WATER: usize = 1024 * 1024;

/// A peer whose unsent bytes pass this mark while it keeps sending requests is not reading
/// what it asks for (each refused request costs a reject): it is dropped.
const MAX_UNSENT: usize = 4 * 1024 * 1024;

/// A keep-alive goes out after this long without sending anything.
const KEEPALIVE_AFTER: Duration = Duration::from_secs(60);

/// A peer that sends nothing (not even a keep-alive) for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(150);

/// A request unanswered for this long is given back to the picker for others.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many recently cancelled or timed-out requests we remember, so that a block arriving
/// late for one of them is not taken for data we never asked for.
const RECENT_RELEASED: usize = 256;

/// How long a graceful close may take to send what is queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The read buffer a connection starts with: small, so that idle peers cost little memory.
const MIN_READ_BUF: usize = 4 * 1024;

/// After this long without traffic in one direction, that direction's buffer shrinks back.
const SHRINK_AFTER: Duration = Duration::from_secs(2);

/// The read buffer of a busy connection: a read that fills the buffer doubles it up to this,
/// and it shrinks back after [`SHRINK_AFTER`] without traffic. (A single message may still grow
/// it up to the largest message allowed.)
const READ_CHUNK: usize = 64 * 1024;

/// The read buffer of a fast peer (one that sent [`FAST_PEER_RATE`] in the last second): fewer
/// reads and wake-ups per byte (half of a 7% CPU saving at 600 MB/s). Only fast peers get it:
/// in a swarm of thousands of ordinary connections it would cost a quarter MiB each.
const FAST_READ_CHUNK: usize = 256 * 1024;

/// Bytes per second from which a peer counts as fast, for [`FAST_READ_CHUNK`].
const FAST_PEER_RATE: u64 = 32 * 1024 * 1024;

/// Settings for every peer of a torrent.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// The fewest requests kept outstanding per peer (BEP 3 clients use 5 or more); the queue
    /// grows in slow start, then holds a few seconds of the peer's rate (see
    /// [`shoal_engine::pipeline`]).
    pub queue_depth: usize,
    /// Largest message accepted from a peer.
    pub max_message_len: u32,
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
pub enum PeerControl {
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
pub struct PeerStats {
    /// Payload bytes received from this peer.
    pub downloaded: AtomicU64,
    /// Payload bytes sent to this peer.
    pub uploaded: AtomicU64,
    /// Whether the peer is interested in our pieces.
    pub peer_interested: AtomicBool,
    /// Whether the peer has every piece.
    pub peer_is_seed: AtomicBool,
    /// Whether the handshake is done (the connection is up).
    pub connected: AtomicBool,
    /// Whether the peer ever sent a bitfield, have, interest or request (the admission policy
    /// evicts silent connections first, see `torrent::admission`).
    pub spoke: AtomicBool,
    /// Whether we are interested in the peer's pieces.
    pub we_interested: AtomicBool,
}

/// Decides, for the `stop after one copy` seeding mode, whether a request may be served.
pub trait ServeFilter: Send + Sync + fmt::Debug {
    /// Whether `peer` may have `block` now. Called once per request.
    fn allow(&self, peer: PeerKey, block: &BlockInfo) -> bool;
    /// `block` went out to `peer`.
    fn served(&self, peer: PeerKey, block: &BlockInfo);
}

/// Everything a peer actor starts with, besides its socket.
#[derive(Debug)]
pub struct PeerSetup {
    /// Its key, unique for the torrent's life.
    pub key: PeerKey,
    /// The remote address.
    pub addr: SocketAddr,
    /// Our handshake's reserved bits (what we advertised).
    pub our_reserved: [u8; 8],
    /// The port we accept peers on, told to peers in the extended handshake (BEP 10).
    pub listen_port: Option<u16>,
    /// The torrent's lengths.
    pub lengths: Lengths,
    /// The pieces we had when the torrent started (later ones come from the have-log).
    pub initial_have: Arc<Bitfield>,
    /// The picker.
    pub picker: Addr<PickerMsg>,
    /// The disk job queue, for upload reads.
    pub disk: Sender<DiskJob>,
    /// The torrent's files, read for uploads.
    pub storage: Arc<Storage>,
    /// Shared torrent state.
    pub shared: Arc<Shared>,
    /// Where received blocks get their buffers.
    pub pool: Arc<BlockPool>,
    /// Orders from the torrent.
    pub control: Receiver<PeerControl>,
    /// Counters for the torrent.
    pub stats: Arc<PeerStats>,
    /// Settings.
    pub settings: Arc<PeerSettings>,
    /// Optional limit on what we serve.
    pub serve_filter: Option<Arc<dyn ServeFilter>>,
}

/// Why a peer actor ended.
#[derive(Debug)]
pub struct PeerExit {
    /// In words.
    pub reason: String,
    /// Whether the peer should be banned (it sent corrupt data or lied).
    pub ban: bool,
    /// The peer's id, once its handshake was read.
    pub peer_id: Option<PeerId>,
}

/// What ended the event loop.
enum Stop {
    /// The peer broke the protocol.
    Wire(WireError),
    /// The peer misbehaved in another way.
    Misbehaved(String),
    /// The socket failed or closed.
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

/// What woke the event loop.
enum Wake {
    Control(Option<PeerControl>),
    Note(Option<PeerNote>),
    Read(ReadDone),
    Haves,
    Wrote(io::Result<usize>),
    Received(io::Result<usize>),
    Tick,
}

struct Peer {
    key: PeerKey,
    addr: SocketAddr,
    lengths: Lengths,
    picker: Addr<PickerMsg>,
    disk: Sender<DiskJob>,
    storage: Arc<Storage>,
    shared: Arc<Shared>,
    pool: Arc<BlockPool>,
    stats: Arc<PeerStats>,
    settings: Arc<PeerSettings>,
    serve_filter: Option<Arc<dyn ServeFilter>>,
    /// Whether both sides support the fast extension (BEP 6).
    fast: bool,
    /// Whether both sides support the extension protocol (BEP 10).
    extended: bool,
    /// Our listening port, for our extended handshake.
    listen_port: Option<u16>,
    /// Requests to keep outstanding: slow start, then a few seconds of the peer's rate.
    depth: RequestDepth,
    /// Payload received from the peer as of the last tick, to measure its rate.
    down_at_tick: u64,
    /// Payload uploaded to the peer as of the last tick, to measure that rate.
    up_at_tick: u64,
    /// When the rates were last measured.
    rates_at: Instant,
    /// Bytes queued for sending beyond which no more blocks are read for the peer.
    write_high_water: usize,
    /// The most the read buffer grows to for ordinary traffic (more for a fast peer).
    read_chunk: usize,

    /// Our pieces, as this peer has been told about them.
    our_have: Bitfield,
    /// Position in the shared have-log.
    have_cursor: usize,
    /// Scratch for new have-log entries.
    new_haves: Vec<u32>,
    /// The peer's pieces.
    remote_has: Bitfield,

    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,

    /// Requests we sent and await, oldest first.
    outstanding: VecDeque<(BlockInfo, Instant)>,
    /// Requests we gave up on recently (cancelled or timed out).
    released: VecDeque<BlockInfo>,
    /// Whether a `Pick` is in flight.
    pick_pending: bool,
    /// The grant vector when it is home.
    grant_buf: Option<Vec<BlockInfo>>,
    /// Blocks decoded from the current read, not yet handed to the picker.
    arrived: Vec<(BlockInfo, Block)>,
    /// Whether the picker had nothing for us; wait for a wake-up.
    starved: bool,

    /// The peer's requests, waiting for a disk read.
    serve_queue: VecDeque<BlockInfo>,
    /// Blocks being read by the disk threads (at most [`MAX_READS`]).
    reads_at_disk: Vec<BlockInfo>,
    /// Those of them the peer cancelled meanwhile: dropped when they come back.
    cancelled_in_flight: Vec<BlockInfo>,
    /// Whether the request at the head of the serve queue missed the page cache: it waits for
    /// a disk thread, and is not tried in the cache again meanwhile.
    head_missed: bool,
    /// Where disk reads come back.
    reads_tx: Sender<ReadDone>,

    /// Bytes waiting to be written.
    wbuf: Vec<u8>,
    /// How much of `wbuf` is written.
    wpos: usize,
    /// Bytes read and not yet decoded: `rbuf[rstart..rend]`.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// The decoder asked for this many bytes in all before trying again.
    rneed: usize,

    last_recv: Instant,
    last_send: Instant,
}

/// Runs a peer connection until it ends; always tells the picker the peer left.
pub async fn run(setup: PeerSetup, stream: TcpStream, remote: Handshake) -> PeerExit {
    let PeerSetup {
        key,
        addr,
        our_reserved,
        listen_port,
        lengths,
        initial_have,
        picker,
        disk,
        storage,
        shared,
        pool,
        control,
        stats,
        settings,
        serve_filter,
    } = setup;
    let (notes_tx, notes_rx) = async_channel::bounded(PEER_NOTES);
    let (reads_tx, reads_rx) = async_channel::bounded(MAX_READS);
    let fast = remote.supports_fast() && (our_reserved[7] & 0x04) != 0;
    let extended = remote.supports_extended() && (our_reserved[5] & 0x10) != 0;
    let depth = RequestDepth::new(settings.queue_depth);
    let n = lengths.num_pieces();
    let mut peer = Peer {
        key,
        addr,
        lengths,
        picker: picker.clone(),
        disk,
        storage,
        shared,
        pool,
        stats,
        settings,
        serve_filter,
        fast,
        extended,
        listen_port,
        depth,
        down_at_tick: 0,
        up_at_tick: 0,
        rates_at: Instant::now(),
        write_high_water: WRITE_HIGH_WATER,
        read_chunk: READ_CHUNK,
        our_have: (*initial_have).clone(),
        have_cursor: 0,
        new_haves: Vec::new(),
        remote_has: Bitfield::new(n),
        am_choking: true,
        am_interested: false,
        peer_choking: true,
        peer_interested: false,
        outstanding: VecDeque::new(),
        released: VecDeque::new(),
        pick_pending: false,
        grant_buf: Some(Vec::with_capacity(64)),
        arrived: Vec::new(),
        starved: false,
        serve_queue: VecDeque::new(),
        reads_at_disk: Vec::with_capacity(MAX_READS),
        cancelled_in_flight: Vec::new(),
        head_missed: false,
        reads_tx,
        wbuf: Vec::new(),
        wpos: 0,
        rbuf: vec![0u8; MIN_READ_BUF],
        rstart: 0,
        rend: 0,
        rneed: 0,
        last_recv: Instant::now(),
        last_send: Instant::now(),
    };
    let stop = if picker
        .send(PickerMsg::Join {
            peer: key,
            addr,
            notes: notes_tx,
        })
        .await
        .is_err()
    {
        Stop::Local("torrent is stopping".into())
    } else {
        peer.shared.peer_count_add(1);
        peer.shared
            .emit(crate::shared::TorrentEvent::PeerConnected(addr));
        peer.stats.connected.store(true, Ordering::Relaxed);
        let stop = peer.event_loop(stream, control, notes_rx, reads_rx).await;
        peer.shared.peer_count_add(-1);
        stop
    };
    let _ = picker.send(PickerMsg::Leave { peer: key }).await;
    let (reason, ban) = match stop {
        Stop::Wire(e) => (format!("protocol error: {e}"), false),
        Stop::Misbehaved(m) => (m, true),
        Stop::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            ("connection closed by peer".into(), false)
        }
        Stop::Io(e) => (format!("connection error: {e}"), false),
        Stop::Local(m) => (m, false),
        Stop::Banned => ("banned: sent corrupt data".into(), true),
    };
    log::debug!("peer {addr}: {reason}");
    PeerExit {
        reason,
        ban,
        peer_id: Some(remote.peer_id),
    }
}

impl Peer {
    async fn event_loop(
        &mut self,
        mut stream: TcpStream,
        control: Receiver<PeerControl>,
        notes: Receiver<PeerNote>,
        reads: Receiver<ReadDone>,
    ) -> Stop {
        // async-channel receivers are not `Unpin`: pin them once for polling by hand.
        let (mut control, mut notes, mut reads) =
            (Box::pin(control), Box::pin(notes), Box::pin(reads));
        let mut haves: Option<EventListener> = None;
        let mut tick = smol::Timer::interval(Duration::from_secs(1));
        self.catch_up_haves(false);
        self.send_our_pieces();
        if self.extended {
            // After the bitfield, which strict peers want first.
            let payload = our_handshake(self.listen_port, MAX_SERVE_QUEUE as u32);
            self.send(Message::Extended {
                id: 0,
                payload: &payload,
            });
        }
        loop {
            if haves.is_none() {
                haves = Some(self.shared.listen_haves());
                // Entries appended before the listener was registered are read now.
                self.catch_up_haves(true);
            }
            let want_read = self.rend < self.rbuf.len();
            let wake = futures_lite::future::poll_fn(|cx| {
                poll_sources(
                    cx,
                    &mut control,
                    &mut notes,
                    &mut reads,
                    &mut haves,
                    &mut stream,
                    &self.wbuf[self.wpos..],
                    if want_read {
                        Some(&mut self.rbuf[self.rend..])
                    } else {
                        None
                    },
                    &mut tick,
                )
            })
            .await;
            let result = match wake {
                Wake::Control(None) | Wake::Control(Some(PeerControl::Stop)) => {
                    self.close_gracefully(&mut stream).await;
                    return Stop::Local("torrent closed the connection".into());
                }
                Wake::Control(Some(PeerControl::Evict)) => {
                    return Stop::Local("evicted to make room for a newcomer".into());
                }
                Wake::Control(Some(c)) => {
                    self.control(c);
                    Ok(())
                }
                Wake::Note(None) => return Stop::Local("picker has stopped".into()),
                Wake::Note(Some(note)) => self.note(note).await,
                Wake::Read(done) => self.read_done(done),
                Wake::Haves => {
                    haves = None;
                    self.catch_up_haves(true);
                    Ok(())
                }
                Wake::Wrote(Ok(0)) => Err(Stop::Io(io::ErrorKind::WriteZero.into())),
                Wake::Wrote(Ok(n)) => {
                    self.wpos += n;
                    self.last_send = Instant::now();
                    if self.wpos == self.wbuf.len() {
                        self.wbuf.clear();
                        self.wpos = 0;
                    }
                    Ok(())
                }
                Wake::Wrote(Err(e)) => Err(e.into()),
                Wake::Received(Ok(0)) => Err(Stop::Io(io::ErrorKind::UnexpectedEof.into())),
                Wake::Received(Ok(n)) => {
                    self.rend += n;
                    if self.rend == self.rbuf.len() && self.rbuf.len() < self.read_chunk {
                        // A busy connection: read more per call.
                        let len = self.rbuf.len() * 2;
                        self.rbuf.resize(len, 0);
                    }
                    self.last_recv = Instant::now();
                    self.process_input().await
                }
                Wake::Received(Err(e)) => Err(e.into()),
                Wake::Tick => self.tick().await,
            };
            if let Err(stop) = result {
                // Best effort: whatever is queued (a final have, say) is not worth waiting for.
                return stop;
            }
            if let Err(stop) = self.after_event().await {
                return stop;
            }
        }
    }

    /// Sends what is queued (blocks we already counted as uploaded, a last HAVE), then closes
    /// our side and waits briefly for the peer to close its side, so that no queued byte is
    /// lost to a reset. Bounded in time.
    async fn close_gracefully(&mut self, stream: &mut TcpStream) {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        let flush = async {
            stream.write_all(&self.wbuf[self.wpos..]).await?;
            // Closing a TCP stream shuts down its write side only.
            stream.close().await?;
            // Read (and drop) until the peer closes, so unread input does not turn into a reset.
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        };
        let _ = flush
            .or(async {
                smol::Timer::after(CLOSE_TIMEOUT).await;
                Ok(())
            })
            .await;
        self.wbuf.clear();
        self.wpos = 0;
    }

    /// Work that follows any event: keep the request pipeline and the uploads moving.
    async fn after_event(&mut self) -> Result<(), Stop> {
        self.update_interest();
        self.maybe_pick().await?;
        self.start_reads();
        Ok(())
    }

    fn send(&mut self, msg: Message<'_>) {
        msg.encode(&mut self.wbuf);
    }

    fn control(&mut self, c: PeerControl) {
        match c {
            PeerControl::Choke if !self.am_choking => {
                self.am_choking = true;
                self.send(Message::Choke);
                // Requests we will not answer: with the fast extension they must be rejected.
                let dropped: Vec<BlockInfo> = self.serve_queue.drain(..).collect();
                self.head_missed = false;
                if self.fast {
                    for b in dropped {
                        self.send(Message::Reject(b));
                    }
                }
            }
            PeerControl::Unchoke if self.am_choking => {
                self.am_choking = false;
                self.send(Message::Unchoke);
            }
            _ => {}
        }
    }

    async fn note(&mut self, note: PeerNote) -> Result<(), Stop> {
        match note {
            PeerNote::Grant(mut blocks) => {
                self.pick_pending = false;
                self.starved = blocks.is_empty();
                let now = Instant::now();
                if self.peer_choking || !self.am_interested {
                    // The situation changed while the pick was in flight: give them back.
                    if !blocks.is_empty() {
                        let back = std::mem::take(&mut blocks);
                        self.tell_picker(PickerMsg::Release {
                            peer: self.key,
                            blocks: back,
                        })
                        .await?;
                    }
                } else {
                    for &b in &blocks {
                        self.send(Message::Request(b));
                        self.outstanding.push_back((b, now));
                    }
                }
                blocks.clear();
                self.grant_buf = Some(blocks);
            }
            PeerNote::Cancel(block) => {
                if let Some(i) = self.outstanding.iter().position(|(b, _)| *b == block) {
                    self.outstanding.remove(i);
                    self.remember_released(block);
                    self.send(Message::Cancel(block));
                }
            }
            PeerNote::Wake => self.starved = false,
            PeerNote::Ban => return Err(Stop::Banned),
        }
        Ok(())
    }

    fn remember_released(&mut self, block: BlockInfo) {
        if self.released.len() == RECENT_RELEASED {
            self.released.pop_front();
        }
        self.released.push_back(block);
    }

    /// Sends our pieces right after the handshake.
    fn send_our_pieces(&mut self) {
        let n = self.our_have.count_ones();
        if self.fast && n == self.lengths.num_pieces() {
            self.send(Message::HaveAll);
        } else if self.fast && n == 0 {
            self.send(Message::HaveNone);
        } else if n > 0 {
            let bytes = self.our_have.as_bytes().to_vec();
            self.send(Message::Bitfield(&bytes));
        }
    }

    /// Reads new entries of the have-log; sends HAVE for each piece the peer has not been told.
    /// With `announce` false (before our bitfield goes out), the pieces only join `our_have`,
    /// since the bitfield will carry them and nothing may precede it.
    fn catch_up_haves(&mut self, announce: bool) {
        let mut fresh = std::mem::take(&mut self.new_haves);
        fresh.clear();
        self.shared.new_haves(&mut self.have_cursor, &mut fresh);
        for &piece in &fresh {
            if !self.our_have.get(piece) {
                self.our_have.set(piece);
                // Skip the HAVE when the peer has the piece already: it will not want it.
                if announce && !self.remote_has.get(piece) {
                    self.send(Message::Have(piece));
                }
            }
        }
        self.new_haves = fresh;
    }

    fn update_interest(&mut self) {
        let want = self.remote_has.has_any_not_in(&self.our_have);
        if want != self.am_interested {
            self.am_interested = want;
            self.stats.we_interested.store(want, Ordering::Relaxed);
            self.send(if want {
                Message::Interested
            } else {
                Message::NotInterested
            });
        }
    }

    async fn maybe_pick(&mut self) -> Result<(), Stop> {
        let Some(PickRequest { max, buf }) = self.pick_request() else {
            return Ok(());
        };
        self.tell_picker(PickerMsg::Pick {
            peer: self.key,
            max,
            buf,
        })
        .await
    }

    /// A request for more blocks, if the pipeline has room and none is pending.
    fn pick_request(&mut self) -> Option<PickRequest> {
        if self.pick_pending || self.starved || self.peer_choking || !self.am_interested {
            return None;
        }
        let depth = self.depth.depth();
        let max = depth.checked_sub(self.outstanding.len())?;
        // A deep queue is topped up in batches of a quarter of it, not block by block: one
        // round trip to the picker per batch.
        if max == 0 || max < depth / 4 {
            return None;
        }
        let buf = self.grant_buf.take()?;
        self.pick_pending = true;
        Some(PickRequest { max, buf })
    }

    /// Hands the blocks of the last read to the picker in one message, with the next pick if
    /// `pick` (a single wake-up of the picker per read, not per block).
    async fn flush_arrived(&mut self, pick: bool) -> Result<(), Stop> {
        if self.arrived.is_empty() {
            return Ok(());
        }
        let blocks = std::mem::replace(&mut self.arrived, Vec::with_capacity(8));
        let pick = if pick { self.pick_request() } else { None };
        self.picker
            .send(PickerMsg::Blocks {
                peer: self.key,
                blocks,
                pick,
            })
            .await
            .map_err(gone)
    }

    /// Serves queued requests while the write buffer has room: straight from the page cache
    /// when the block is there (no thread hop), else through a disk thread.
    fn start_reads(&mut self) {
        while self.wbuf.len() - self.wpos < self.write_high_water {
            let Some(&block) = self.serve_queue.front() else {
                break;
            };
            if !self.head_missed {
                let served = self.read_cached_run();
                if served > 0 {
                    self.serve_queue.drain(..served);
                    continue;
                }
            }
            self.head_missed = true;
            if self.reads_at_disk.len() == MAX_READS {
                break;
            }
            match self.disk.try_send(DiskJob::Read {
                storage: self.storage.clone(),
                block,
                reply: self.reads_tx.clone(),
            }) {
                Ok(()) => {
                    self.serve_queue.pop_front();
                    self.reads_at_disk.push(block);
                    self.head_missed = false;
                }
                // The disk queue is full: try again after the next event.
                Err(_) => break,
            }
        }
    }

    /// Appends the longest run of consecutive blocks at the head of the serve queue (same
    /// piece, each starting where the last ended, within the write buffer's room) to the write
    /// buffer, each behind its header, with one read if the data is in the page cache; falls
    /// back to the first block alone. Returns how many blocks it queued for sending.
    fn read_cached_run(&mut self) -> usize {
        let Some(&first) = self.serve_queue.front() else {
            return 0;
        };
        let room = self
            .write_high_water
            .saturating_sub(self.wbuf.len() - self.wpos);
        let mut run = 1;
        let mut bytes = first.len as usize;
        let mut end = first.begin + first.len;
        for b in self.serve_queue.iter().skip(1).take(MAX_READ_RUN - 1) {
            if b.piece != first.piece || b.begin != end || bytes + b.len as usize > room {
                break;
            }
            run += 1;
            bytes += b.len as usize;
            end += b.len;
        }
        if run > 1 {
            let start = self.wbuf.len();
            for b in self.serve_queue.iter().take(run) {
                self.wbuf
                    .extend_from_slice(&piece_header(b.piece, b.begin, b.len));
                let data = self.wbuf.len();
                self.wbuf.resize(data + b.len as usize, 0);
            }
            // The data slots between the headers, as one vectored read.
            let mut slots = Vec::with_capacity(run);
            let mut rest = &mut self.wbuf[start..];
            for b in self.serve_queue.iter().take(run) {
                let (_, after_header) = rest.split_at_mut(PIECE_HEADER_LEN);
                let (data, after) = after_header.split_at_mut(b.len as usize);
                slots.push(io::IoSliceMut::new(data));
                rest = after;
            }
            if let Ok(true) = self.storage.read_run_cached(&first, &mut slots) {
                for i in 0..run {
                    let b = self.serve_queue[i];
                    self.uploaded(b);
                }
                return run;
            }
            self.wbuf.truncate(start);
        }
        usize::from(self.read_cached(first))
    }

    /// Appends the block to the write buffer if it can be read without waiting for the disk.
    fn read_cached(&mut self, b: BlockInfo) -> bool {
        let start = self.wbuf.len();
        self.wbuf
            .extend_from_slice(&piece_header(b.piece, b.begin, b.len));
        let data = self.wbuf.len();
        self.wbuf.resize(data + b.len as usize, 0);
        match self.storage.read_block_cached(&b, &mut self.wbuf[data..]) {
            Ok(true) => {
                self.uploaded(b);
                true
            }
            // Not cached, or an error: a disk thread reads it (and reports any error).
            Ok(false) | Err(_) => {
                self.wbuf.truncate(start);
                false
            }
        }
    }

    /// Counts a block queued for sending as uploaded.
    fn uploaded(&mut self, b: BlockInfo) {
        self.stats
            .uploaded
            .fetch_add(u64::from(b.len), Ordering::Relaxed);
        self.shared.add_uploaded(u64::from(b.len));
        if let Some(f) = &self.serve_filter {
            f.served(self.key, &b);
        }
    }

    fn read_done(&mut self, done: ReadDone) -> Result<(), Stop> {
        if let Some(i) = self.reads_at_disk.iter().position(|b| *b == done.block) {
            self.reads_at_disk.swap_remove(i);
        }
        if let Some(i) = self
            .cancelled_in_flight
            .iter()
            .position(|b| *b == done.block)
        {
            self.cancelled_in_flight.swap_remove(i);
            return Ok(());
        }
        if self.am_choking {
            return Ok(());
        }
        match done.data {
            Ok(data) => {
                let b = done.block;
                self.wbuf
                    .extend_from_slice(&piece_header(b.piece, b.begin, b.len));
                self.wbuf.extend_from_slice(&data);
                self.uploaded(b);
                Ok(())
            }
            Err(e) => Err(Stop::Local(format!("cannot read block for upload: {e}"))),
        }
    }

    /// Decodes and handles every whole message in the read buffer.
    async fn process_input(&mut self) -> Result<(), Stop> {
        if self.rend < self.rneed {
            return Ok(());
        }
        // The buffer leaves `self` while messages borrowing from it are handled.
        let mut buf = std::mem::take(&mut self.rbuf);
        let result = self.process_buffer(&mut buf).await;
        self.rbuf = buf;
        if let Err(stop) = result {
            // The good blocks before the bad message still count.
            let _ = self.flush_arrived(false).await;
            return Err(stop);
        }
        self.flush_arrived(true).await
    }

    async fn process_buffer(&mut self, buf: &mut Vec<u8>) -> Result<(), Stop> {
        loop {
            match decode(&buf[self.rstart..self.rend], self.settings.max_message_len)? {
                Decoded::Message { message, consumed } => {
                    self.handle(message).await?;
                    self.rstart += consumed;
                    if self.rstart == self.rend {
                        self.rstart = 0;
                        self.rend = 0;
                        self.rneed = 0;
                        // Shrink a buffer that a large bitfield made big.
                        if buf.len() > 4 * READ_CHUNK {
                            buf.truncate(READ_CHUNK);
                            buf.shrink_to_fit();
                        }
                        return Ok(());
                    }
                }
                Decoded::NeedMore(more) => {
                    // Move the partial message to the front; grow if it cannot fit.
                    if self.rstart > 0 {
                        buf.copy_within(self.rstart..self.rend, 0);
                        self.rend -= self.rstart;
                        self.rstart = 0;
                    }
                    let need = self.rend + more;
                    if need > buf.len() {
                        buf.resize(need, 0);
                    }
                    self.rneed = need;
                    return Ok(());
                }
            }
        }
    }

    async fn handle(&mut self, msg: Message<'_>) -> Result<(), Stop> {
        let n = self.lengths.num_pieces();
        if matches!(
            msg,
            Message::Bitfield(_)
                | Message::Have(_)
                | Message::HaveAll
                | Message::HaveNone
                | Message::Interested
                | Message::NotInterested
                | Message::Request(_)
        ) {
            self.stats.spoke.store(true, Ordering::Relaxed);
        }
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                self.peer_choking = true;
                if !self.fast && !self.outstanding.is_empty() {
                    // Without the fast extension a choke drops every pending request.
                    let blocks: Vec<BlockInfo> =
                        self.outstanding.drain(..).map(|(b, _)| b).collect();
                    for &b in &blocks {
                        self.remember_released(b);
                    }
                    self.tell_picker(PickerMsg::Release {
                        peer: self.key,
                        blocks,
                    })
                    .await?;
                }
            }
            Message::Unchoke => {
                self.peer_choking = false;
                self.starved = false;
                self.depth.unchoked();
            }
            Message::Interested => {
                let was = std::mem::replace(&mut self.peer_interested, true);
                self.stats.peer_interested.store(true, Ordering::Relaxed);
                if !was {
                    self.shared.peer_interested();
                }
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.stats.peer_interested.store(false, Ordering::Relaxed);
            }
            Message::Have(piece) => {
                if piece >= n {
                    return Err(Stop::Misbehaved(format!("have for piece {piece} of {n}")));
                }
                if !self.remote_has.get(piece) {
                    self.remote_has.set(piece);
                    self.note_seed();
                    self.tell_picker(PickerMsg::Have {
                        peer: self.key,
                        piece,
                    })
                    .await?;
                }
            }
            Message::Bitfield(bytes) => {
                // A bitfield is meant to come first, but aria2 sends its extended handshake and
                // allowed-fast set before it, and later sends a whole bitfield in place of 20 or
                // more haves: a later one replaces what we knew, as have-all does.
                let bf = Bitfield::from_bytes(bytes, n)
                    .map_err(|e| Stop::Misbehaved(format!("bad bitfield: {e}")))?;
                self.set_remote_has(bf).await?;
            }
            Message::HaveAll => self.set_remote_has(Bitfield::full(n)).await?,
            Message::HaveNone => self.set_remote_has(Bitfield::new(n)).await?,
            Message::Request(block) => self.request(block)?,
            Message::Cancel(block) => {
                if let Some(i) = self.serve_queue.iter().position(|b| *b == block) {
                    self.serve_queue.remove(i);
                    if i == 0 {
                        self.head_missed = false;
                    }
                } else if self.reads_at_disk.contains(&block)
                    && !self.cancelled_in_flight.contains(&block)
                {
                    // Its read is at a disk thread: drop it when it comes back. (A block
                    // already in the write buffer is sent; BEP 3 allows that.)
                    self.cancelled_in_flight.push(block);
                }
            }
            Message::Piece { piece, begin, data } => self.piece(piece, begin, data)?,
            Message::Reject(block) => {
                if let Some(i) = self.outstanding.iter().position(|(b, _)| *b == block) {
                    self.outstanding.remove(i);
                    self.tell_picker(PickerMsg::Rejected {
                        peer: self.key,
                        block,
                    })
                    .await?;
                }
            }
            Message::Extended { id: 0, payload } => match PeerExtensions::parse(payload) {
                Some(x) => {
                    log::debug!(
                        "peer {}: extended handshake from {}, reqq {:?}, port {:?}",
                        self.addr,
                        x.client.as_deref().unwrap_or("an unnamed client"),
                        x.reqq,
                        x.listen_port
                    );
                    self.depth.set_peer_limit(x.reqq);
                }
                // Not worth a disconnect: we use nothing from it that we cannot do without.
                None => log::debug!(
                    "peer {}: ignoring a malformed extended handshake",
                    self.addr
                ),
            },
            // Suggestions and allowed-fast sets are hints we do not act on yet; DHT ports,
            // extension messages (our `m` is empty, so none should come) and unknown ids are
            // ignored.
            Message::Suggest(_)
            | Message::AllowedFast(_)
            | Message::Port(_)
            | Message::Extended { .. }
            | Message::Unknown { .. } => {}
        }
        Ok(())
    }

    async fn set_remote_has(&mut self, bf: Bitfield) -> Result<(), Stop> {
        self.remote_has = bf.clone();
        self.note_seed();
        if self.our_have.all() && self.remote_has.all() {
            return Err(Stop::Local("both sides are seeds".into()));
        }
        self.tell_picker(PickerMsg::Bitfield {
            peer: self.key,
            bitfield: bf,
        })
        .await
    }

    fn note_seed(&mut self) {
        self.stats
            .peer_is_seed
            .store(self.remote_has.all(), Ordering::Relaxed);
    }

    fn request(&mut self, block: BlockInfo) -> Result<(), Stop> {
        if !self.lengths.is_valid_request(&block) {
            return Err(Stop::Misbehaved(format!(
                "invalid request: piece {} offset {} length {}",
                block.piece, block.begin, block.len
            )));
        }
        let allowed = !self.am_choking
            && self.our_have.get(block.piece)
            && self.serve_queue.len() < MAX_SERVE_QUEUE
            && self
                .serve_filter
                .as_ref()
                .is_none_or(|f| f.allow(self.key, &block));
        if allowed {
            self.serve_queue.push_back(block);
        } else if self.fast {
            if self.wbuf.len() - self.wpos > MAX_UNSENT {
                return Err(Stop::Local(
                    "request flood: it does not read our rejects".into(),
                ));
            }
            self.send(Message::Reject(block));
        }
        Ok(())
    }

    fn piece(&mut self, piece: u32, begin: u32, data: &[u8]) -> Result<(), Stop> {
        let block = BlockInfo {
            piece,
            begin,
            len: data.len() as u32,
        };
        if let Some(i) = self.outstanding.iter().position(|(b, _)| *b == block) {
            self.outstanding.remove(i);
        } else if let Some(i) = self.released.iter().position(|b| *b == block) {
            // Late, after a cancel or a timeout: still useful if nobody else delivered it.
            self.released.remove(i);
        } else {
            return Err(Stop::Misbehaved(format!(
                "sent piece {piece} offset {begin} length {} that we never asked for",
                data.len()
            )));
        }
        self.depth.block_arrived();
        let len = data.len() as u64;
        self.stats.downloaded.fetch_add(len, Ordering::Relaxed);
        self.shared.add_downloaded(len);
        let buf = self.pool.take_copy(data);
        // Handed on after the whole read is decoded (or before any other message to the
        // picker, which keeps the order): see `flush_arrived`.
        self.arrived.push((block, buf));
        Ok(())
    }

    /// Sends the picker a message, waiting while its mailbox is full (backpressure); the
    /// picker gone means the torrent is stopping. Blocks waiting to be handed on go first.
    async fn tell_picker(&mut self, msg: PickerMsg) -> Result<(), Stop> {
        self.flush_arrived(false).await?;
        self.picker.send(msg).await.map_err(gone)
    }

    /// Gives back the memory of buffers a burst made big once the connection is quiet, so that
    /// thousands of connections that were busy once cost what idle ones do.
    fn shrink_idle_buffers(&mut self, now: Instant) {
        if self.rend == 0
            && self.rbuf.len() > MIN_READ_BUF
            && now.duration_since(self.last_recv) > SHRINK_AFTER
        {
            self.rbuf = vec![0u8; MIN_READ_BUF];
            self.rneed = 0;
        }
        if self.wbuf.is_empty()
            && self.wbuf.capacity() > MIN_READ_BUF
            && self.serve_queue.is_empty()
            && self.reads_at_disk.is_empty()
            && now.duration_since(self.last_send) > SHRINK_AFTER
        {
            self.wbuf = Vec::new();
        }
    }

    async fn tick(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        self.adapt_depth();
        if now.duration_since(self.last_recv) > IDLE_TIMEOUT {
            return Err(Stop::Local(format!(
                "silent for {} s",
                IDLE_TIMEOUT.as_secs()
            )));
        }
        if self.wbuf.is_empty() && now.duration_since(self.last_send) > KEEPALIVE_AFTER {
            self.send(Message::KeepAlive);
        }
        self.shrink_idle_buffers(now);
        if let Some((_, sent)) = self.outstanding.front() {
            if now.duration_since(*sent) > REQUEST_TIMEOUT {
                // A stalled peer: give its requests to others, keep the connection.
                let blocks: Vec<BlockInfo> = self.outstanding.drain(..).map(|(b, _)| b).collect();
                log::debug!("peer {}: {} requests timed out", self.addr, blocks.len());
                self.depth.timed_out();
                for &b in &blocks {
                    self.remember_released(b);
                    if self.fast {
                        self.send(Message::Cancel(b));
                    }
                }
                self.tell_picker(PickerMsg::Release {
                    peer: self.key,
                    blocks,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Sets the request queue depth from the download rate since the last measurement, and the
    /// write buffer's mark from the upload rate (called on the one-second tick).
    ///
    /// Rates are per second of the time that really passed: a busy connection can delay its
    /// tick, and the interval timer then fires again at once to catch up. A measurement over
    /// less than half a second waits for the next tick instead of reading a sliver of traffic
    /// as a collapsed rate.
    fn adapt_depth(&mut self) {
        let now = Instant::now();
        let ms = now.duration_since(self.rates_at).as_millis();
        if ms < 500 {
            return;
        }
        self.rates_at = now;
        let per_second =
            |bytes: u64| u64::try_from(u128::from(bytes) * 1000 / ms).unwrap_or(u64::MAX);
        let down = self.stats.downloaded.load(Ordering::Relaxed);
        let rate = per_second(down.saturating_sub(self.down_at_tick));
        self.down_at_tick = down;
        self.depth.tick(rate);
        self.read_chunk = if rate >= FAST_PEER_RATE {
            FAST_READ_CHUNK
        } else {
            READ_CHUNK
        };
        let up = self.stats.uploaded.load(Ordering::Relaxed);
        let up_rate = per_second(up.saturating_sub(self.up_at_tick));
        self.up_at_tick = up;
        self.write_high_water = usize::try_from(up_rate / 4)
            .unwrap_or(usize::MAX)
            .clamp(WRITE_HIGH_WATER, MAX_WRITE_HIGH_WATER);
    }
}

fn gone(_: crate::runtime::Gone) -> Stop {
    Stop::Local("torrent is stopping".into())
}

#[allow(clippy::too_many_arguments)]
fn poll_sources(
    cx: &mut Context<'_>,
    control: &mut Pin<Box<Receiver<PeerControl>>>,
    notes: &mut Pin<Box<Receiver<PeerNote>>>,
    reads: &mut Pin<Box<Receiver<ReadDone>>>,
    haves: &mut Option<EventListener>,
    stream: &mut TcpStream,
    out: &[u8],
    read_into: Option<&mut [u8]>,
    tick: &mut smol::Timer,
) -> Poll<Wake> {
    if let Poll::Ready(c) = control.as_mut().poll_next(cx) {
        return Poll::Ready(Wake::Control(c));
    }
    if let Poll::Ready(n) = notes.as_mut().poll_next(cx) {
        return Poll::Ready(Wake::Note(n));
    }
    if let Poll::Ready(Some(r)) = reads.as_mut().poll_next(cx) {
        return Poll::Ready(Wake::Read(r));
    }
    if let Some(l) = haves.as_mut() {
        if Pin::new(l).poll(cx).is_ready() {
            return Poll::Ready(Wake::Haves);
        }
    }
    if !out.is_empty() {
        if let Poll::Ready(r) = Pin::new(&mut *stream).poll_write(cx, out) {
            return Poll::Ready(Wake::Wrote(r));
        }
    }
    if let Some(buf) = read_into {
        if let Poll::Ready(r) = Pin::new(&mut *stream).poll_read(cx, buf) {
            return Poll::Ready(Wake::Received(r));
        }
    }
    if Pin::new(&mut *tick).poll_next(cx).is_ready() {
        return Poll::Ready(Wake::Tick);
    }
    Poll::Pending
}
