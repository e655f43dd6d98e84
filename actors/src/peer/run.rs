//! The peer's run loop: one task per connection that polls its sources in a fixed order and
//! hands each event to the part that owns it ([`super::conn`], [`super::remote`],
//! [`super::download`], [`super::upload`]), then sends the picker what they ask for.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use event_listener::EventListener;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt, Stream};
use shoal_engine::lengths::{BlockInfo, Lengths};
use shoal_engine::picker::PeerKey;
use shoal_engine::wire::{Handshake, Message};

use super::conn::{RateMeter, ReadBuf, Silent, Traffic, WriteBuf, FAST_PEER_RATE, IDLE_TIMEOUT};
use super::download::Download;
use super::remote::{Redundancy, Remote};
use super::upload::{self, BlockSource, Upload, MAX_READS, MAX_SERVE_QUEUE};
use super::{PeerControl, PeerExit, PeerSettings, PeerSetup, PeerStats, ServeFilter, Stop};
use crate::buffers::BlockPool;
use crate::disk::{DiskJob, ReadDone, Storage};
use crate::extension::CLIENT_VERSION;
use crate::picker::{PeerNote, PickRequest, PickerMsg, PEER_NOTES};
use crate::runtime::Addr;
use crate::shared::Shared;
use shoal_engine::extension::{OurHandshake, PeerExtensions, OUR_UT_METADATA_ID, OUR_UT_PEX_ID};
use shoal_engine::metadata::{self, MetadataMessage};
use shoal_engine::metainfo::Metainfo;
use shoal_engine::pex::{PexState, MAX_PEERS_TAKEN};

/// How long a graceful close may take to send what is queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes queued for the peer above which its metadata requests are rejected instead of
/// answered: four answers' worth, so a request flood cannot grow the write buffer.
const MAX_METADATA_BACKLOG: usize = 4 * metadata::METADATA_PIECE_LEN;

/// The most addresses one peer may add to our swarm over PEX in a connection's life: four
/// full messages' worth of BEP 11's 50, so a peer cannot fill the swarm table (1,000 entries)
/// with addresses of its choosing.
const MAX_PEX_FROM_ONE_PEER: usize = 200;

/// How often the tick runs: rates, timeouts, keep-alives.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// What woke the event loop.
enum Wake {
    /// An order from the torrent (`None`: the torrent is gone).
    Control(Option<PeerControl>),
    /// A note from the picker (`None`: the picker is gone).
    Note(Option<PeerNote>),
    /// A disk read for an upload came back.
    Read(ReadDone),
    /// The have-log grew.
    Haves,
    /// A write to the socket finished.
    Wrote(io::Result<usize>),
    /// A read from the socket finished.
    Received(io::Result<usize>),
    /// A second passed.
    Tick,
}

/// One connection: its parts, and the handles that tie it to the rest of the torrent.
struct Peer {
    /// Its key, unique for the torrent's life.
    key: PeerKey,
    /// The remote address.
    addr: SocketAddr,
    /// The torrent's lengths, to check requests.
    lengths: Lengths,
    /// The picker.
    picker: Addr<PickerMsg>,
    /// The disk job queue, for upload reads.
    disk: Sender<DiskJob>,
    /// The torrent's files, read for uploads.
    storage: Arc<Storage>,
    /// Shared torrent state: counters, events, the have-log.
    shared: Arc<Shared>,
    /// Where received blocks get their buffers.
    pool: Arc<BlockPool>,
    /// Counters for the torrent.
    stats: Arc<PeerStats>,
    /// Settings.
    settings: Arc<PeerSettings>,
    /// Optional limit on what we serve.
    serve_filter: Option<Arc<dyn ServeFilter>>,
    /// Whether both sides support the fast extension (BEP 6).
    fast: bool,
    /// Whether both sides support the extension protocol (BEP 10).
    extended: bool,
    /// Our listening port, for our extended handshake.
    listen_port: Option<u16>,
    /// The torrent, whose info dictionary we serve to peers that ask (BEP 9).
    metainfo: Arc<Metainfo>,
    /// The trees of its piece layers, whose hashes we serve to peers that ask (BEP 52).
    hash_trees: Option<Arc<shoal_engine::hash_picker::PieceTrees>>,
    /// What the peer's extended handshakes said (its `m` map among it).
    extensions: PeerExtensions,
    /// Scratch for metadata messages we send.
    scratch: Vec<u8>,
    /// Peer exchange with this peer, when on: what we told it, and where its peers go.
    pex: Option<(PexState, Sender<Vec<SocketAddr>>)>,
    /// Addresses this peer gave us over PEX so far, bounded by [`MAX_PEX_FROM_ONE_PEER`].
    pex_taken: usize,
    /// Where disk reads come back.
    reads_tx: Sender<ReadDone>,
    /// Position in the shared have-log.
    have_cursor: usize,
    /// Scratch for new have-log entries.
    new_haves: Vec<u32>,

    /// Bytes read and not yet decoded.
    input: ReadBuf,
    /// Bytes waiting to be written.
    out: WriteBuf,
    /// When each direction last carried bytes.
    traffic: Traffic,
    /// The payload rates, measured at each tick.
    rates: RateMeter,
    /// Both sides' pieces, choke and interest.
    remote: Remote,
    /// When the connection has become useless to both sides.
    redundancy: Redundancy,
    /// The request pipeline.
    download: Download,
    /// The peer's requests.
    upload: Upload,
}

/// Where uploads read blocks: the page cache, or a disk thread.
struct DiskSource<'a> {
    /// The torrent's files.
    storage: &'a Arc<Storage>,
    /// The disk threads' queue.
    disk: &'a Sender<DiskJob>,
    /// Where their reads come back.
    reply: &'a Sender<ReadDone>,
}

impl BlockSource for DiskSource<'_> {
    fn read_run_cached(
        &self,
        first: &BlockInfo,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> io::Result<bool> {
        self.storage.read_run_cached(first, bufs)
    }

    fn read_block_cached(&self, block: &BlockInfo, buf: &mut [u8]) -> io::Result<bool> {
        self.storage.read_block_cached(block, buf)
    }

    fn read_at_disk(&self, block: BlockInfo) -> bool {
        self.disk
            .try_send(DiskJob::Read {
                storage: self.storage.clone(),
                block,
                reply: self.reply.clone(),
            })
            .is_ok()
    }
}

/// Runs a peer connection over `stream` (set up by [`super::connect`], our handshake sent and
/// the remote's read) until it ends; always tells the picker the peer left.
pub(crate) async fn run<S>(setup: PeerSetup, stream: S, remote: Handshake) -> PeerExit
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let PeerSetup {
        key,
        addr,
        our_reserved,
        listen_port,
        metainfo,
        hash_trees,
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
        pex,
    } = setup;
    let (notes_tx, notes_rx) = async_channel::bounded(PEER_NOTES);
    let (reads_tx, reads_rx) = async_channel::bounded(MAX_READS);
    let fast = remote.supports_fast() && (our_reserved[7] & 0x04) != 0;
    let extended = remote.supports_extended() && (our_reserved[5] & 0x10) != 0;
    let now = Instant::now();
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
        download: Download::new(settings.queue_depth),
        settings,
        serve_filter,
        fast,
        extended,
        listen_port,
        metainfo,
        hash_trees,
        extensions: PeerExtensions::default(),
        scratch: Vec::new(),
        pex: pex.map(|found| (PexState::new(addr), found)),
        pex_taken: 0,
        reads_tx,
        have_cursor: 0,
        new_haves: Vec::new(),
        input: ReadBuf::new(),
        out: WriteBuf::default(),
        traffic: Traffic::new(now),
        rates: RateMeter::new(now),
        remote: Remote::new((*initial_have).clone()),
        redundancy: Redundancy::new(now),
        upload: Upload::new(),
    };
    // Our pieces so far; a super-seeding seed hides them before its first message.
    peer.catch_up_haves(false);
    let super_seeded = peer.shared.is_super_seeding() && peer.remote.we_are_seed();
    if super_seeded {
        peer.remote.hide();
    }
    let stop = if picker
        .send(PickerMsg::Join {
            peer: key,
            addr,
            notes: notes_tx,
            super_seeded,
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
    async fn event_loop<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        control: Receiver<PeerControl>,
        notes: Receiver<PeerNote>,
        reads: Receiver<ReadDone>,
    ) -> Stop {
        // async-channel receivers are not `Unpin`: pin them once for polling by hand.
        let (mut control, mut notes, mut reads) =
            (Box::pin(control), Box::pin(notes), Box::pin(reads));
        let mut haves: Option<EventListener> = None;
        let mut tick = smol::Timer::interval(TICK_EVERY);
        self.catch_up_haves(false);
        self.remote.send_our_pieces(self.fast, &mut self.out);
        if self.extended {
            // After the bitfield, which strict peers want first.
            let payload = OurHandshake {
                ut_metadata: Some(OUR_UT_METADATA_ID),
                ut_pex: self.pex.is_some().then_some(OUR_UT_PEX_ID),
                metadata_size: Some(self.metainfo.raw_info.len() as u64),
                listen_port: self.listen_port,
                reqq: Some(MAX_SERVE_QUEUE as u32),
                client: Some(CLIENT_VERSION),
                yourip: Some(self.addr.ip()),
            }
            .encode();
            self.out.push(Message::Extended {
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
            let wake = futures_lite::future::poll_fn(|cx| {
                poll_sources(
                    cx,
                    &mut control,
                    &mut notes,
                    &mut reads,
                    &mut haves,
                    &mut stream,
                    self.out.pending(),
                    self.input.spare(),
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
                    self.out.advance(n);
                    self.traffic.sent(Instant::now());
                    Ok(())
                }
                Wake::Wrote(Err(e)) => Err(e.into()),
                Wake::Received(Ok(0)) => Err(Stop::Io(io::ErrorKind::UnexpectedEof.into())),
                Wake::Received(Ok(n)) => {
                    self.input.filled(n);
                    self.traffic.received(Instant::now());
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
    async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut S) {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        let flush = async {
            stream.write_all(self.out.pending()).await?;
            // Closing a TCP stream shuts down its write side only (a wrapper passes the close
            // on to the socket it wraps).
            stream.close().await?;
            // Read (and drop) until the peer closes, so unread input does not turn into a reset.
            // On the heap: an array here would be part of every peer task's state, for the
            // whole life of the connection (4 KiB each, two per connection in one process).
            let mut sink = vec![0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), io::Error>(())
        };
        let _ = flush
            .or(async {
                smol::Timer::after(CLOSE_TIMEOUT).await;
                Ok(())
            })
            .await;
        self.out.clear();
    }

    /// Work that follows any event: keep the request pipeline and the uploads moving.
    async fn after_event(&mut self) -> Result<(), Stop> {
        self.remote.update_interest(&mut self.out);
        let interested = self.remote.am_interested();
        self.stats
            .we_interested
            .store(interested, Ordering::Relaxed);
        self.maybe_pick().await?;
        self.serve();
        Ok(())
    }

    fn control(&mut self, c: PeerControl) {
        match c {
            PeerControl::Choke => {
                if self.remote.choke(&mut self.out) {
                    // Requests we will not answer: with the fast extension they are rejected.
                    self.upload.choked(self.fast, &mut self.out);
                }
            }
            PeerControl::Unchoke => self.remote.unchoke(&mut self.out),
            PeerControl::Stop | PeerControl::Evict => {}
        }
    }

    async fn note(&mut self, note: PeerNote) -> Result<(), Stop> {
        match note {
            PeerNote::Grant(blocks) => {
                let may = self.remote.may_request();
                let now = Instant::now();
                if let Some(back) = self.download.handle_grant(blocks, may, now, &mut self.out) {
                    // The situation changed while the pick was in flight: give them back.
                    self.release(back).await?;
                }
            }
            PeerNote::Cancel(block) => self.download.handle_cancel(block, &mut self.out),
            PeerNote::Wake => self.download.handle_wake(),
            PeerNote::Ban => return Err(Stop::Banned),
            PeerNote::Offer(piece) => self.remote.offer(piece, &mut self.out),
            PeerNote::Reveal => self.remote.reveal(&mut self.out),
        }
        Ok(())
    }

    /// Reads new entries of the have-log into what the peer is told (see
    /// [`Remote::add_our_pieces`]).
    fn catch_up_haves(&mut self, announce: bool) {
        let mut fresh = std::mem::take(&mut self.new_haves);
        fresh.clear();
        self.shared.new_haves(&mut self.have_cursor, &mut fresh);
        self.remote.add_our_pieces(&fresh, announce, &mut self.out);
        self.new_haves = fresh;
    }

    async fn maybe_pick(&mut self) -> Result<(), Stop> {
        let Some(PickRequest { max, buf }) = self.download.pick_request(self.remote.may_request())
        else {
            return Ok(());
        };
        self.tell_picker(PickerMsg::Pick {
            peer: self.key,
            max,
            buf,
        })
        .await
    }

    /// Hands the blocks of the last read to the picker in one message, with the next pick if
    /// `pick` (a single wake-up of the picker per read, not per block).
    async fn flush_arrived(&mut self, pick: bool) -> Result<(), Stop> {
        let Some(blocks) = self.download.take_arrived() else {
            return Ok(());
        };
        let pick = if pick {
            self.download.pick_request(self.remote.may_request())
        } else {
            None
        };
        self.picker
            .send(PickerMsg::Blocks {
                peer: self.key,
                blocks,
                pick,
            })
            .await
            .map_err(gone)
    }

    /// Sends the picker a message, waiting while its mailbox is full (backpressure); the
    /// picker gone means the torrent is stopping. Blocks waiting to be handed on go first.
    async fn tell_picker(&mut self, msg: PickerMsg) -> Result<(), Stop> {
        self.flush_arrived(false).await?;
        self.picker.send(msg).await.map_err(gone)
    }

    /// Gives requests back to the picker, for others.
    async fn release(&mut self, blocks: Vec<BlockInfo>) -> Result<(), Stop> {
        self.tell_picker(PickerMsg::Release {
            peer: self.key,
            blocks,
        })
        .await
    }

    /// Serves the peer's queued requests while the write buffer has room.
    fn serve(&mut self) {
        let src = DiskSource {
            storage: &self.storage,
            disk: &self.disk,
            reply: &self.reads_tx,
        };
        let counters = Counters {
            key: self.key,
            stats: &self.stats,
            shared: &self.shared,
            filter: self.serve_filter.as_deref(),
        };
        self.upload
            .serve(&src, &mut self.out, |b| counters.uploaded(b));
    }

    fn read_done(&mut self, done: ReadDone) -> Result<(), Stop> {
        let counters = Counters {
            key: self.key,
            stats: &self.stats,
            shared: &self.shared,
            filter: self.serve_filter.as_deref(),
        };
        let choking = self.remote.am_choking();
        self.upload
            .handle_read_done(done, choking, &mut self.out, |b| counters.uploaded(b))
    }

    /// Decodes and handles every whole message in the read buffer, then hands the blocks among
    /// them to the picker.
    async fn process_input(&mut self) -> Result<(), Stop> {
        // The buffer leaves `self` while messages borrowing from it are handled.
        let mut input = std::mem::take(&mut self.input);
        let max = self.settings.max_message_len;
        let result = loop {
            match input.next_message(max) {
                Ok(Some(msg)) => {
                    if let Err(stop) = self.handle(msg).await {
                        break Err(stop);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Stop::from(e)),
            }
        };
        self.input = input;
        if let Err(stop) = result {
            // The good blocks before the bad message still count.
            let _ = self.flush_arrived(false).await;
            return Err(stop);
        }
        self.flush_arrived(true).await
    }

    async fn handle(&mut self, msg: Message<'_>) -> Result<(), Stop> {
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
                self.remote.handle_choke();
                if let Some(blocks) = self.download.handle_choke(self.fast) {
                    self.release(blocks).await?;
                }
            }
            Message::Unchoke => {
                self.remote.handle_unchoke();
                self.download.handle_unchoke();
            }
            Message::Interested => {
                let news = self.remote.handle_interested();
                self.stats.peer_interested.store(true, Ordering::Relaxed);
                if news {
                    self.shared.peer_interested();
                }
            }
            Message::NotInterested => {
                self.remote.handle_not_interested();
                self.stats.peer_interested.store(false, Ordering::Relaxed);
            }
            Message::Have(piece) => {
                if self.remote.handle_have(piece)? {
                    self.note_seed();
                    self.tell_picker(PickerMsg::Have {
                        peer: self.key,
                        piece,
                    })
                    .await?;
                }
            }
            Message::Bitfield(bytes) => {
                let r = self.remote.handle_bitfield(bytes);
                self.remote_has_changed(r).await?;
            }
            Message::HaveAll => {
                let r = self.remote.handle_have_all();
                self.remote_has_changed(r).await?;
            }
            Message::HaveNone => {
                let r = self.remote.handle_have_none();
                self.remote_has_changed(r).await?;
            }
            Message::Request(block) => self.request(block)?,
            Message::Cancel(block) => self.upload.handle_cancel(block),
            Message::Piece { piece, begin, data } => {
                let block = BlockInfo {
                    piece,
                    begin,
                    len: data.len() as u32,
                };
                self.download.handle_piece(block, data, &self.pool)?;
                let len = data.len() as u64;
                self.stats.downloaded.fetch_add(len, Ordering::Relaxed);
                self.shared.add_downloaded(len);
            }
            Message::Reject(block) => {
                if self.download.handle_reject(block) {
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
                    self.download.set_peer_limit(x.reqq);
                    if let Some(c) = &x.client {
                        let _ = self.stats.client.set(c.clone());
                    }
                    self.extensions.merge(x);
                }
                // Not worth a disconnect: we use nothing from it that we cannot do without.
                None => log::debug!(
                    "peer {}: ignoring a malformed extended handshake",
                    self.addr
                ),
            },
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => self.metadata_message(payload)?,
            Message::Extended {
                id: OUR_UT_PEX_ID,
                payload,
            } => self.pex_message(payload),
            Message::HashRequest(req) => self.hash_request(&req),
            // We never ask (a torrent runs with its piece layers, fetched before it starts
            // when it came from a v2 magnet): answers are dropped.
            Message::Hashes { .. } | Message::HashReject(_) => {}
            // Suggestions and allowed-fast sets are hints we do not act on yet; DHT ports,
            // extension messages we did not offer and unknown ids are ignored.
            Message::Suggest(_)
            | Message::AllowedFast(_)
            | Message::Port(_)
            | Message::Extended { .. }
            | Message::Unknown { .. } => {}
        }
        Ok(())
    }

    /// A `ut_metadata` message (BEP 9): requests are answered from our info dictionary while
    /// the write buffer has room (else rejected, so a peer cannot queue megabytes of answers);
    /// data and rejects are not expected once we have the metadata, and are dropped.
    fn metadata_message(&mut self, payload: &[u8]) -> Result<(), Stop> {
        let Some(their_id) = self.extensions.ut_metadata() else {
            // It never said it speaks ut_metadata: nowhere to answer.
            return Ok(());
        };
        match MetadataMessage::parse(payload) {
            Ok(MetadataMessage::Request { piece }) => {
                self.scratch.clear();
                if self.out.pending().len() > MAX_METADATA_BACKLOG {
                    MetadataMessage::Reject { piece }.encode(&mut self.scratch);
                } else {
                    metadata::serve(&self.metainfo.raw_info, piece, &mut self.scratch);
                }
                self.out.push(Message::Extended {
                    id: their_id,
                    payload: &self.scratch,
                });
            }
            Ok(_) => {}
            Err(e) => log::debug!(
                "peer {}: ignoring a bad ut_metadata message: {e}",
                self.addr
            ),
        }
        Ok(())
    }

    /// A `hash request` (BEP 52): answered from our piece layers with the proof asked for, or
    /// refused (`hash reject`): a layer other than the piece layer, a run out of range or of
    /// more than 512 hashes, an unknown root, or while the write buffer holds more than
    /// [`MAX_METADATA_BACKLOG`] (so a flood of requests cannot grow it); past four times
    /// that, a peer that does not read is not even answered.
    fn hash_request(&mut self, req: &shoal_engine::wire::HashRequest) {
        if self.out.pending().len() > 4 * MAX_METADATA_BACKLOG {
            return;
        }
        let answer = match &self.hash_trees {
            Some(_) if self.out.pending().len() > MAX_METADATA_BACKLOG => None,
            Some(t) => match t.answer(req) {
                Ok(h) => Some(h),
                Err(e) => {
                    log::debug!("peer {}: hash request refused: {e}", self.addr);
                    None
                }
            },
            None => None,
        };
        match answer {
            Some(hashes) => {
                log::debug!(
                    "peer {}: answered a hash request: {} hashes from {} of layer {}",
                    self.addr,
                    hashes.len(),
                    req.index,
                    req.base_layer
                );
                self.scratch.clear();
                for h in &hashes {
                    self.scratch.extend_from_slice(h);
                }
                self.out.push(Message::Hashes {
                    request: *req,
                    hashes: &self.scratch,
                });
            }
            None => self.out.push(Message::HashReject(*req)),
        }
    }

    /// A `ut_pex` message (BEP 11): the peers it lists go to the torrent to dial, at most
    /// [`MAX_PEERS_TAKEN`] per message (the engine's bound), one message per 20 s, and
    /// [`MAX_PEX_FROM_ONE_PEER`] over the connection's life.
    fn pex_message(&mut self, payload: &[u8]) {
        let Some((state, found)) = self.pex.as_mut() else {
            return;
        };
        let msg = match state.handle_message(Instant::now(), payload) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                log::debug!("peer {}: ignoring a bad ut_pex message: {e}", self.addr);
                return;
            }
        };
        let room = MAX_PEX_FROM_ONE_PEER.saturating_sub(self.pex_taken);
        let peers: Vec<SocketAddr> = msg
            .added
            .iter()
            .map(|p| p.addr)
            .take(room.min(MAX_PEERS_TAKEN))
            .collect();
        if peers.is_empty() {
            return;
        }
        log::debug!("peer {}: told us of {} peers (PEX)", self.addr, peers.len());
        self.pex_taken += peers.len();
        // A full queue drops them: PEX repeats itself a minute later.
        let _ = found.try_send(peers);
    }

    /// Sends a `ut_pex` message when one is due: peers we are connected to, diffed against
    /// what this peer was told (at most once a minute, 50 added).
    fn poll_pex(&mut self, now: Instant) {
        let Some(their_id) = self.extensions.ut_pex() else {
            return;
        };
        let Some((state, _)) = self.pex.as_mut() else {
            return;
        };
        if state.poll_timeout().is_some_and(|t| now < t) {
            return;
        }
        let view = self.shared.pex_view();
        if let Some(msg) = state.poll_message(now, view.iter().copied()) {
            self.scratch.clear();
            msg.encode(&mut self.scratch);
            self.out.push(Message::Extended {
                id: their_id,
                payload: &self.scratch,
            });
        }
    }

    /// After a bitfield, HAVE ALL or HAVE NONE (`result` of the transition): the torrent sees
    /// whether the peer is a seed (even when two seeds part), and the picker gets the pieces.
    async fn remote_has_changed(&mut self, result: Result<(), Stop>) -> Result<(), Stop> {
        self.note_seed();
        result?;
        self.tell_picker(PickerMsg::Bitfield {
            peer: self.key,
            bitfield: self.remote.has().clone(),
        })
        .await
    }

    fn note_seed(&mut self) {
        self.stats
            .peer_is_seed
            .store(self.remote.is_seed(), Ordering::Relaxed);
        self.stats
            .pieces
            .store(self.remote.has().count_ones(), Ordering::Relaxed);
    }

    fn request(&mut self, block: BlockInfo) -> Result<(), Stop> {
        if !self.lengths.is_valid_request(&block) {
            return Err(Stop::Misbehaved(format!(
                "invalid request: piece {} offset {} length {}",
                block.piece, block.begin, block.len
            )));
        }
        let allowed = upload::allowed(
            &self.upload,
            self.remote.may_serve(block.piece),
            self.serve_filter.as_deref(),
            self.key,
            &block,
        );
        self.upload
            .handle_request(block, allowed, self.fast, &mut self.out)
    }

    async fn tick(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        self.adapt_to_rates(now);
        self.poll_pex(now);
        self.traffic
            .handle_tick(now, &mut self.out)
            .map_err(|Silent| Stop::Local(format!("silent for {} s", IDLE_TIMEOUT.as_secs())))?;
        self.traffic
            .shrink_idle(now, &mut self.input, &mut self.out, self.upload.is_idle());
        if let Some(blocks) = self.download.poll_timeout(now, self.fast, &mut self.out) {
            // A stalled peer: give its requests to others, keep the connection.
            log::debug!("peer {}: {} requests timed out", self.addr, blocks.len());
            self.release(blocks).await?;
        }
        self.close_if_redundant(now)
    }

    /// Ends a connection that is of no use to either side any more (see [`Redundancy`]).
    fn close_if_redundant(&mut self, now: Instant) -> Result<(), Stop> {
        let complete = self.shared.is_complete();
        if complete {
            // The peer is judged against every piece we have.
            self.catch_up_haves(true);
        }
        match self.redundancy.check(now, complete, &self.remote) {
            Some(why) => {
                self.stats.redundant.store(true, Ordering::Relaxed);
                Err(Stop::Local(why.into()))
            }
            None => Ok(()),
        }
    }

    /// Sets the request queue depth and the read buffer's size from the download rate since
    /// the last measurement, and the write buffer's mark from the upload rate.
    fn adapt_to_rates(&mut self, now: Instant) {
        let down = self.stats.downloaded.load(Ordering::Relaxed);
        let up = self.stats.uploaded.load(Ordering::Relaxed);
        let Some(rates) = self.rates.measure(now, down, up) else {
            return;
        };
        self.download.handle_rate(rates.down);
        self.input.set_fast(rates.down >= FAST_PEER_RATE);
        self.upload.handle_rate(rates.up);
    }
}

/// What counts an uploaded block: the peer's and the torrent's counters, and the serve filter.
struct Counters<'a> {
    /// The peer.
    key: PeerKey,
    /// Its counters.
    stats: &'a PeerStats,
    /// The torrent's.
    shared: &'a Shared,
    /// The serve filter, told what went out.
    filter: Option<&'a dyn ServeFilter>,
}

impl Counters<'_> {
    /// Counts a block queued for sending as uploaded.
    fn uploaded(&self, b: BlockInfo) {
        self.stats
            .uploaded
            .fetch_add(u64::from(b.len), Ordering::Relaxed);
        self.shared.add_uploaded(u64::from(b.len));
        if let Some(f) = self.filter {
            f.served(self.key, &b);
        }
    }
}

fn gone(_: crate::runtime::Gone) -> Stop {
    Stop::Local("torrent is stopping".into())
}

#[allow(clippy::too_many_arguments)]
fn poll_sources<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    control: &mut Pin<Box<Receiver<PeerControl>>>,
    notes: &mut Pin<Box<Receiver<PeerNote>>>,
    reads: &mut Pin<Box<Receiver<ReadDone>>>,
    haves: &mut Option<EventListener>,
    stream: &mut S,
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
