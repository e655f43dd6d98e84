//! The picker actor: the single owner of piece availability, of who fetches which block, and of
//! the pieces being assembled in memory.
//!
//! Peers send it what they learn (bitfields, haves), ask it for blocks in batches (`Pick`, the
//! answer is a [`PeerNote::Grant`] of several blocks, so the single owner is not a round trip per
//! block), and hand it every block they receive. When a piece is whole its blocks go to the
//! hasher pool; the end of the piece (written, or failed and blamed) comes back on a results
//! channel whose capacity covers every piece in flight, so the hasher and disk threads never
//! wait on the picker while the picker waits on them.
//!
//! Memory: the bytes of pieces in progress plus those queued for hashing and writing are kept
//! under the disk budget. Once it is spent, no new piece is started; pieces already started
//! still finish, so the budget can never wedge the download.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use shoal_engine::bitfield::Bitfield;
use shoal_engine::lengths::{BlockInfo, Lengths};
use shoal_engine::merkle::PieceHash;
use shoal_engine::picker::{PeerKey, Picker, Priority, Received};
use shoal_engine::superseed::{self, SuperSeed};

use crate::buffers::Block;
use crate::disk::{PieceDone, PieceOutcome, Storage};
use crate::hasher::{HashJob, Hasher};
use crate::runtime::{Mailbox, ReplyTo};
use crate::shared::{Shared, TorrentEvent};
use crate::torrent::BanKey;

/// Capacity of the picker's mailbox. Peers wait when it is full (backpressure on the sockets).
pub const PICKER_MAILBOX: usize = 256;

/// Capacity of a peer's note channel (grants, cancels, wake-ups). Only one grant is ever
/// outstanding per peer; cancels beyond the capacity are dropped (the duplicate block is then
/// simply thrown away when it arrives).
pub const PEER_NOTES: usize = 64;

/// After a write fails (disk full, permission denied), how long to start no new piece before
/// trying again.
pub const PAUSE_AFTER_WRITE_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);

/// Places always left free in a peer's note channel by cancels, for the one grant and the one
/// wake-up that may be queued besides, and for a ban, which therefore is never lost.
const NOTES_RESERVED: usize = 4;

/// Hosts whose strikes are remembered (a few bytes each).
const MAX_STRUCK: usize = 4096;

/// How many departed peers' addresses are remembered for events.
const DEPARTED_REMEMBERED: usize = 256;

/// The most failed pieces remembered block by block for blame (each holds 20 bytes a block).
const MAX_SUSPECTS: usize = 1024;

/// Pieces offered to a super-seeded peer at a time, not counting those it completed (BEP 16;
/// libtorrent offers two). One: the peer fetches one piece at a time, and its next follows as
/// soon as it completed the last (up to `superseed::AHEAD` completed ones not yet seen
/// spreading), so the seeder uploads each piece about once.
const SUPER_SEED_OFFERS: usize = 1;

/// The super-seeding policy for a torrent of these lengths, its random choices seeded from
/// the clock (they need only differ between runs, not be secret).
fn new_superseed(lengths: &Lengths) -> SuperSeed {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    SuperSeed::new(lengths.num_pieces(), SUPER_SEED_OFFERS, seed)
}

/// How many pieces a peer may corrupt before it is banned.
pub const BAN_STRIKES: u32 = 2;

/// Strikes that ban `addr`: [`BAN_STRIKES`] for a peer, one for a web seed (BEP 19), whose
/// server sends the same bytes every time: one corrupt piece surely caused by it is enough.
fn strikes_to_ban(addr: &SocketAddr) -> u32 {
    if crate::webseed::is_seed_addr(addr) {
        1
    } else {
        BAN_STRIKES
    }
}

/// What the picker tells one peer.
#[derive(Debug)]
pub enum PeerNote {
    /// Blocks to request (possibly none: wait for a [`PeerNote::Wake`]). The vector is the one
    /// the peer lent in its `Pick`, handed back.
    Grant(Vec<BlockInfo>),
    /// Another peer delivered this block first (endgame): send CANCEL.
    Cancel(BlockInfo),
    /// Blocks may be available now: ask again.
    Wake,
    /// The peer sent data for too many failed pieces: disconnect and ban it.
    Ban,
    /// Super-seeding (BEP 16): tell the peer we have this piece (a HAVE) and serve it.
    Offer(u32),
    /// Super-seeding is over: tell the peer every piece we have, and serve them all.
    Reveal,
}

/// Messages to the picker.
#[derive(Debug)]
pub enum PickerMsg {
    /// A peer finished its handshake.
    Join {
        /// The peer.
        peer: PeerKey,
        /// Its address, for blame.
        addr: SocketAddr,
        /// Where notes for it go.
        notes: Sender<PeerNote>,
        /// Whether it was told none of our pieces because the torrent super-seeds: it then
        /// gets [`PeerNote::Offer`]s, and a [`PeerNote::Reveal`] when super-seeding ends.
        super_seeded: bool,
    },
    /// The peer's bitfield (or have-all / have-none turned into one).
    Bitfield {
        /// The peer.
        peer: PeerKey,
        /// What it has.
        bitfield: Bitfield,
    },
    /// The peer has a new piece.
    Have {
        /// The peer.
        peer: PeerKey,
        /// The piece.
        piece: u32,
    },
    /// The peer wants up to `max` blocks; answered with [`PeerNote::Grant`].
    Pick {
        /// The peer.
        peer: PeerKey,
        /// How many blocks at most.
        max: usize,
        /// An empty vector to fill (lent back and forth, so a grant allocates nothing).
        buf: Vec<BlockInfo>,
    },
    /// Blocks arrived: those of one read from the peer's socket, in one message so that the
    /// picker wakes once per read rather than once per block. The peer's next pick rides along.
    Blocks {
        /// The peer that sent them.
        peer: PeerKey,
        /// Which blocks, and their bytes.
        blocks: Vec<(BlockInfo, Block)>,
        /// The peer wants more blocks: answered with [`PeerNote::Grant`] after these are taken.
        pick: Option<PickRequest>,
    },
    /// These requests will not be answered (choke, timeout, cancel): give them to others.
    Release {
        /// The peer.
        peer: PeerKey,
        /// The blocks.
        blocks: Vec<BlockInfo>,
    },
    /// The peer rejected a request (BEP 6): it will not give us this piece, so stop asking it.
    Rejected {
        /// The peer.
        peer: PeerKey,
        /// The block.
        block: BlockInfo,
    },
    /// The peer's connection ended.
    Leave {
        /// The peer.
        peer: PeerKey,
    },
    /// A second has passed: starved peers ask again once a pause has run out.
    Tick,
    /// New piece priorities (from file selection): one per piece, from piece 0; pieces past
    /// the vector keep theirs. A skipped piece is never requested.
    SetPriorities {
        /// The priority of each piece.
        priorities: Vec<Priority>,
    },
    /// Sequential mode on or off: new pieces lowest index first instead of rarest first.
    SetSequential {
        /// Whether it is on.
        on: bool,
    },
    /// Pieces to fetch before any other, in order (streaming), or `None` to clear them.
    SetDeadline {
        /// The pieces, cut to `shoal_engine::picker::MAX_DEADLINE_PIECES`.
        pieces: Option<std::ops::RangeInclusive<u32>>,
    },
    /// Super-seeding (BEP 16) on or off. Turning it on affects the peers that connect from
    /// then on (the others already know our pieces); it only takes while we have every piece.
    SetSuperSeed {
        /// Whether it is on.
        on: bool,
    },
    /// How many of our verified pieces no connected peer has, while some peer is connected
    /// (0 when none is): a finished download stays while this is above 0, to hand them over.
    SoleCopies {
        /// The answer.
        reply: ReplyTo<u32>,
    },
    /// Which pieces are verified now.
    Verified {
        /// The answer.
        reply: ReplyTo<Bitfield>,
    },
    /// Stop: wait for pieces in flight, then answer with the pieces verified in the end.
    Shutdown {
        /// Answered once everything in flight has landed.
        reply: ReplyTo<Bitfield>,
    },
}

/// A peer's request for blocks, folded into [`PickerMsg::Blocks`].
#[derive(Debug)]
pub struct PickRequest {
    /// How many blocks at most.
    pub max: usize,
    /// An empty vector to fill, lent as in [`PickerMsg::Pick`].
    pub buf: Vec<BlockInfo>,
}

/// Everything the picker actor needs at start.
#[derive(Debug)]
pub struct PickerSetup {
    /// The torrent's lengths.
    pub lengths: Lengths,
    /// The pieces already verified on disk.
    pub have: Bitfield,
    /// What every piece must hash to (SHA-1, or v2 merkle).
    pub hashes: Arc<Vec<PieceHash>>,
    /// Bytes allowed between the sockets and the disk (pieces in progress and in flight).
    pub disk_budget: u64,
    /// The hasher pool (shared by the session's torrents).
    pub hasher: Hasher,
    /// The torrent's files, where verified pieces are written.
    pub storage: Arc<Storage>,
    /// Results of pieces in flight; capacity covers every piece that can be in flight.
    pub done_tx: Sender<PieceDone>,
    /// The picker's side of `done_tx`.
    pub done_rx: Receiver<PieceDone>,
    /// Shared progress and events.
    pub shared: Arc<Shared>,
    /// Whether to fetch missing pieces at all. Seeding data the user gave us read-only does not:
    /// there is nowhere to write them, so every pick is answered with nothing.
    pub download: bool,
    /// Whether to super-seed (BEP 16); the caller has set `Shared`'s flag to match. Only
    /// honoured when `have` is every piece.
    pub super_seed: bool,
}

/// One peer as the picker sees it.
#[derive(Debug)]
struct PeerSlot {
    /// Its address, for events.
    addr: SocketAddr,
    /// The pieces it has and will give us (rejected pieces are cleared).
    has: Bitfield,
    /// Where notes for it go.
    notes: Sender<PeerNote>,
    /// Whether its last grant was empty: it waits for a wake-up.
    starved: bool,
    /// Whether it was told none of our pieces (super-seeding): it needs a
    /// [`PeerNote::Reveal`] when super-seeding ends.
    super_seeded: bool,
}

/// The picker actor's state.
struct State {
    /// The policy.
    policy: Picker,
    /// The torrent's files, handed on with each complete piece.
    storage: Arc<Storage>,
    /// Lengths.
    lengths: Lengths,
    /// Expected hashes.
    hashes: Arc<Vec<PieceHash>>,
    /// Connected peers.
    peers: HashMap<PeerKey, PeerSlot>,
    /// Blocks received for pieces in progress, by piece, in block order.
    partial: HashMap<u32, Vec<Option<(PeerKey, Block)>>>,
    /// Who sent each block of the pieces in flight, by piece.
    senders: HashMap<u32, Vec<PeerKey>>,
    /// Pieces that failed with several senders: who sent each block and its SHA-1, to compare
    /// with the blocks of the attempt that verifies (so the liar, and only the liar, is struck).
    suspects: HashMap<u32, Vec<(PeerKey, [u8; 20])>>,
    /// Strikes by host (IP, or address and port on loopback: `BanKey`), kept across
    /// reconnections, so a liar that comes back is banned; at most [`MAX_STRUCK`] hosts.
    strikes: HashMap<BanKey, u32>,
    /// Peers that left recently, with their addresses, to name them in events about pieces
    /// they sent that were still being hashed.
    departed: std::collections::VecDeque<(PeerKey, SocketAddr)>,
    /// Bytes of pieces handed to the hasher and not yet done.
    in_flight: u64,
    /// Pieces handed to the hasher and not yet done.
    in_flight_pieces: usize,
    /// The disk budget.
    budget: u64,
    /// Shared progress.
    shared: Arc<Shared>,
    /// Where results come back.
    done_tx: Sender<PieceDone>,
    /// When writing last failed: no new piece is started for [`PAUSE_AFTER_WRITE_FAILURE`]
    /// after it, or until a write succeeds.
    paused: Option<std::time::Instant>,
    /// Whether missing pieces are fetched (see [`PickerSetup::download`]).
    download: bool,
    /// The super-seeding policy while we super-seed (BEP 16).
    superseed: Option<SuperSeed>,
}

/// Runs the picker actor until shutdown or until every handle is dropped.
pub async fn run(setup: PickerSetup, mut inbox: Mailbox<PickerMsg>) {
    let PickerSetup {
        lengths,
        have,
        hashes,
        disk_budget,
        hasher,
        done_tx,
        done_rx,
        shared,
        storage,
        download,
        super_seed,
    } = setup;
    let superseed = (super_seed && have.all()).then(|| new_superseed(&lengths));
    shared.set_super_seeding(superseed.is_some());
    let mut st = State {
        policy: Picker::new(lengths, have),
        lengths,
        hashes,
        peers: HashMap::new(),
        partial: HashMap::new(),
        senders: HashMap::new(),
        suspects: HashMap::new(),
        departed: std::collections::VecDeque::new(),
        strikes: HashMap::new(),
        in_flight: 0,
        in_flight_pieces: 0,
        budget: disk_budget.max(u64::from(lengths.piece_length())),
        shared,
        done_tx,
        paused: None,
        storage,
        download,
        superseed,
    };
    let mut shutdown: Option<ReplyTo<Bitfield>> = None;
    // Complete pieces from the message at hand, to hand to the hasher.
    let mut jobs: Vec<HashJob> = Vec::new();
    loop {
        enum Ev {
            Msg(Option<PickerMsg>),
            Done(PieceDone),
        }
        let ev = if shutdown.is_some() {
            if st.in_flight_pieces == 0 {
                break;
            }
            match done_rx.recv().await {
                Ok(d) => Ev::Done(d),
                Err(_) => break,
            }
        } else {
            // Results first: they free budget and keep the hasher and disk threads moving.
            future::or(
                async { Ev::Done(done_rx.recv().await.expect("picker holds a sender")) },
                async { Ev::Msg(inbox.recv().await) },
            )
            .await
        };
        match ev {
            Ev::Done(done) => st.piece_done(done),
            Ev::Msg(None) => break,
            Ev::Msg(Some(PickerMsg::Shutdown { reply })) => shutdown = Some(reply),
            Ev::Msg(Some(msg)) => {
                st.handle(msg, &mut jobs);
                let mut stopped = false;
                for job in jobs.drain(..) {
                    stopped = stopped || hasher.submit(job).await.is_err();
                }
                if stopped {
                    break;
                }
            }
        }
    }
    if let Some(reply) = shutdown {
        reply.send(st.policy.have().clone());
    }
}

impl State {
    /// Handles one message; pieces it completes go to `jobs`, to be hashed.
    fn handle(&mut self, msg: PickerMsg, jobs: &mut Vec<HashJob>) {
        match msg {
            PickerMsg::Join {
                peer,
                addr,
                notes,
                super_seeded,
            } => {
                let struck_out = self
                    .strikes
                    .get(&BanKey::of(addr))
                    .is_some_and(|&n| n >= strikes_to_ban(&addr));
                let has = Bitfield::new(self.lengths.num_pieces());
                self.peers.insert(
                    peer,
                    PeerSlot {
                        addr,
                        has,
                        notes,
                        starved: false,
                        super_seeded,
                    },
                );
                match self.superseed.as_mut() {
                    Some(ss) => ss.handle_join(peer, super_seeded, Instant::now()),
                    None if super_seeded => {
                        // Super-seeding ended between its start and its joining.
                        if let Some(slot) = self.peers.get_mut(&peer) {
                            slot.super_seeded = false;
                            let _ = slot.notes.try_send(PeerNote::Reveal);
                        }
                    }
                    None => {}
                }
                self.drive_superseed();
                if struck_out {
                    // A host banned while away, back under a new connection.
                    self.ban(peer);
                }
            }
            PickerMsg::Bitfield { peer, bitfield } => {
                if let Some(slot) = self.peers.get_mut(&peer) {
                    // A second bitfield replaces the first (have-all after a bitfield, say).
                    self.policy.peer_lost(&slot.has);
                    self.policy.peer_bitfield(&bitfield);
                    if let Some(ss) = self.superseed.as_mut() {
                        ss.handle_bitfield(peer, &bitfield, Instant::now());
                    }
                    slot.has = bitfield;
                    self.wake(Some(peer));
                    self.drive_superseed();
                }
            }
            PickerMsg::Have { peer, piece } => {
                if let Some(slot) = self.peers.get_mut(&peer) {
                    if self.lengths.contains(piece) && !slot.has.get(piece) {
                        slot.has.set(piece);
                        self.policy.peer_have(piece);
                        if let Some(ss) = self.superseed.as_mut() {
                            ss.handle_have(peer, piece, Instant::now());
                        }
                        self.wake(Some(peer));
                        self.drive_superseed();
                    }
                }
            }
            PickerMsg::Pick { peer, max, buf } => self.pick(peer, max, buf),
            PickerMsg::Blocks { peer, blocks, pick } => {
                jobs.extend(
                    blocks
                        .into_iter()
                        .filter_map(|(block, data)| self.block(peer, block, data)),
                );
                if let Some(PickRequest { max, buf }) = pick {
                    self.pick(peer, max, buf);
                }
            }
            PickerMsg::Release { peer, blocks } => {
                for b in blocks {
                    self.policy.block_released(peer, b);
                }
                self.wake(Some(peer));
            }
            PickerMsg::Rejected { peer, block } => {
                self.policy.block_released(peer, block);
                if let Some(slot) = self.peers.get_mut(&peer) {
                    if slot.has.get(block.piece) {
                        // It will not give us this piece: as far as picking goes, it lacks it.
                        slot.has.clear(block.piece);
                        self.policy.peer_lost_piece(block.piece);
                    }
                }
                self.wake(Some(peer));
            }
            PickerMsg::Leave { peer } => {
                if let Some(slot) = self.peers.remove(&peer) {
                    self.policy.peer_gone(peer, &slot.has);
                    // Its blocks may still be hashing: keep its address to name it.
                    if self.departed.len() == DEPARTED_REMEMBERED {
                        self.departed.pop_front();
                    }
                    self.departed.push_back((peer, slot.addr));
                    if let Some(ss) = self.superseed.as_mut() {
                        log::debug!(
                            "super-seeding: {} left holding offers {:?}",
                            slot.addr,
                            ss.offers(peer)
                        );
                        ss.handle_leave(peer, Instant::now());
                    }
                    self.wake(None);
                    self.drive_superseed();
                }
            }
            PickerMsg::Tick => {
                if let Some(ss) = self.superseed.as_mut() {
                    ss.handle_tick(Instant::now());
                    self.drive_superseed();
                }
                if self
                    .paused
                    .is_some_and(|t| t.elapsed() >= PAUSE_AFTER_WRITE_FAILURE)
                {
                    self.paused = None;
                    self.wake(None);
                }
            }
            PickerMsg::SetPriorities { priorities } => {
                self.policy.set_piece_priorities(&priorities);
                let left = (0..self.lengths.num_pieces())
                    .filter(|&p| {
                        !self.policy.have().get(p) && self.policy.piece_priority(p).is_wanted()
                    })
                    .map(|p| u64::from(self.lengths.piece_len(p)))
                    .sum();
                self.shared.set_left(left);
                self.shared.set_complete(self.policy.is_complete_wanted());
                self.wake(None);
            }
            PickerMsg::SetSequential { on } => {
                self.policy.set_sequential(on);
                self.wake(None);
            }
            PickerMsg::SetDeadline { pieces } => {
                self.policy.set_deadline(pieces);
                self.wake(None);
            }
            PickerMsg::SetSuperSeed { on } => {
                if !on {
                    if self.superseed.take().is_some() {
                        self.reveal_all();
                    }
                } else if self.superseed.is_none() && self.policy.have().all() {
                    // Peers connected before know every piece already: they only count for
                    // availability, from what they tell us next.
                    let mut ss = new_superseed(&self.lengths);
                    let now = Instant::now();
                    for (&k, slot) in &self.peers {
                        ss.handle_join(k, false, now);
                        ss.handle_bitfield(k, &slot.has, now);
                    }
                    self.superseed = Some(ss);
                    self.shared.set_super_seeding(true);
                }
            }
            PickerMsg::Verified { reply } => reply.send(self.policy.have().clone()),
            PickerMsg::SoleCopies { reply } => reply.send(if self.peers.is_empty() {
                0
            } else {
                self.policy.sole_copies()
            }),
            PickerMsg::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    /// Carries out what the super-seeding policy asks: HAVEs to offer, or its end.
    fn drive_superseed(&mut self) {
        let Some(ss) = self.superseed.as_mut() else {
            return;
        };
        let mut ended = false;
        while let Some(ev) = ss.poll_event() {
            match ev {
                superseed::Event::Offer { peer, piece } => {
                    if let Some(slot) = self.peers.get(&peer) {
                        log::debug!("super-seeding: piece {piece} offered to {}", slot.addr);
                        // Cannot be full in practice (a seed's peer gets no grants or cancels);
                        // a lost offer is replaced after `superseed::STALL`.
                        if slot.notes.try_send(PeerNote::Offer(piece)).is_err() {
                            log::debug!("peer {}: super-seeding offer lost", slot.addr);
                        }
                    }
                }
                superseed::Event::End(why) => {
                    log::info!("super-seeding ends: {why:?}");
                    ended = true;
                }
            }
        }
        if ended {
            self.superseed = None;
            self.reveal_all();
        }
    }

    /// Ends super-seeding: peers that connect from now on see every piece, and those told
    /// none get every one now.
    fn reveal_all(&mut self) {
        self.shared.set_super_seeding(false);
        for slot in self.peers.values_mut().filter(|s| s.super_seeded) {
            slot.super_seeded = false;
            let _ = slot.notes.try_send(PeerNote::Reveal);
        }
    }

    /// Answers a peer's pick with a grant of up to `max` blocks, in `buf`.
    fn pick(&mut self, peer: PeerKey, max: usize, mut buf: Vec<BlockInfo>) {
        buf.clear();
        let paused = self
            .paused
            .is_some_and(|t| t.elapsed() < PAUSE_AFTER_WRITE_FAILURE);
        let allow_new = !paused && self.reserved_bytes() < self.budget;
        if let Some(slot) = self.peers.get_mut(&peer) {
            self.policy.set_new_pieces_allowed(allow_new);
            if self.download {
                self.policy.pick(peer, &slot.has, max, &mut buf);
            }
            slot.starved = buf.is_empty();
            let _ = slot.notes.try_send(PeerNote::Grant(buf));
        }
    }

    /// Bytes held by pieces in progress (counted whole) and pieces in flight.
    fn reserved_bytes(&self) -> u64 {
        let partial: u64 = self
            .partial
            .keys()
            .map(|&p| u64::from(self.lengths.piece_len(p)))
            .sum();
        partial + self.in_flight
    }

    fn block(&mut self, peer: PeerKey, block: BlockInfo, data: Block) -> Option<HashJob> {
        if !self.lengths.is_our_block(&block) || data.len() != block.len as usize {
            self.shared.add_wasted(data.len() as u64);
            return None;
        }
        match self.policy.block_received(peer, block) {
            Received::New {
                piece_complete,
                cancel,
            } => {
                for other in cancel {
                    if let Some(slot) = self.peers.get(&other) {
                        // Cancels never take the last slots: the grant (one at a time) and a
                        // wake-up must always fit, or the peer would never ask again.
                        if slot.notes.len() + NOTES_RESERVED < PEER_NOTES {
                            let _ = slot.notes.try_send(PeerNote::Cancel(block));
                        }
                    }
                }
                let blocks = self.lengths.blocks_in_piece(block.piece) as usize;
                let slots = self
                    .partial
                    .entry(block.piece)
                    .or_insert_with(|| (0..blocks).map(|_| None).collect());
                slots[block.index() as usize] = Some((peer, data));
                if piece_complete {
                    let slots = self.partial.remove(&block.piece).unwrap_or_default();
                    if slots.iter().any(Option::is_none) {
                        // The policy and our buffers disagree: refetch the piece rather than
                        // hash a hole. (Never expected; kept safe.)
                        log::error!("piece {} complete without all its blocks", block.piece);
                        self.policy.piece_failed(block.piece);
                        return None;
                    }
                    let (senders, blocks): (Vec<PeerKey>, Vec<Block>) =
                        slots.into_iter().flatten().unzip();
                    self.senders.insert(block.piece, senders);
                    self.in_flight += u64::from(self.lengths.piece_len(block.piece));
                    self.in_flight_pieces += 1;
                    return Some(HashJob {
                        piece: block.piece,
                        blocks,
                        expected: self.hashes[block.piece as usize],
                        storage: self.storage.clone(),
                        done: self.done_tx.clone(),
                        want_block_digests: self.suspects.contains_key(&block.piece),
                    });
                }
            }
            Received::Duplicate | Received::NotRequested => {
                self.shared.add_wasted(data.len() as u64)
            }
        }
        None
    }

    fn piece_done(&mut self, done: PieceDone) {
        let len = u64::from(self.lengths.piece_len(done.piece));
        self.in_flight -= len.min(self.in_flight);
        self.in_flight_pieces = self.in_flight_pieces.saturating_sub(1);
        let senders = self.senders.remove(&done.piece).unwrap_or_default();
        match done.outcome {
            PieceOutcome::Written => {
                self.paused = None;
                self.policy.piece_verified(done.piece);
                let wanted = self.policy.piece_priority(done.piece).is_wanted();
                let all = self.policy.is_complete_wanted();
                self.shared.piece_verified(done.piece, len, wanted, all);
                // Smart ban: the blocks of an earlier failure that differ from the good ones
                // name their senders for certain.
                if let Some(earlier) = self.suspects.remove(&done.piece) {
                    if earlier.len() == done.block_digests.len() {
                        let mut liars: Vec<PeerKey> = earlier
                            .iter()
                            .zip(&done.block_digests)
                            .filter(|((_, bad), good)| bad != *good)
                            .map(|((peer, _), _)| *peer)
                            .collect();
                        liars.sort_unstable();
                        liars.dedup();
                        for peer in liars {
                            self.strike(peer);
                        }
                    }
                }
            }
            PieceOutcome::HashFailed => {
                self.shared.add_wasted(len);
                let contributors = self.policy.piece_failed(done.piece);
                // The event first: a ban that follows is reported after it.
                let addrs: Vec<SocketAddr> = contributors
                    .iter()
                    .filter_map(|p| self.addr_of(*p))
                    .collect();
                log::warn!(
                    "piece {} failed its hash check (from {:?})",
                    done.piece,
                    addrs
                );
                self.shared.emit(TorrentEvent::PieceFailed {
                    piece: done.piece,
                    peers: addrs,
                });
                // A sole contributor is surely guilty. A piece that mixed several peers' data
                // is remembered block by block and refetched from one peer only (the policy
                // sees to it); when it verifies, the senders of the blocks that differed are
                // struck. An honest peer is never blamed.
                if contributors.len() == 1 {
                    self.strike(contributors[0]);
                } else if senders.len() == done.block_digests.len()
                    && self.suspects.len() < MAX_SUSPECTS
                {
                    self.suspects.insert(
                        done.piece,
                        senders.into_iter().zip(done.block_digests).collect(),
                    );
                }
            }
            PieceOutcome::WriteFailed(e) => {
                // The data was good but could not be stored: fetch it again later, and start
                // nothing new until a write succeeds (disk full, permission denied).
                log::error!("writing piece {} failed: {e}", done.piece);
                self.policy.piece_failed(done.piece);
                self.paused = Some(std::time::Instant::now());
                let msg = e.to_string();
                self.shared.set_error(msg.clone());
                self.shared.emit(TorrentEvent::DiskError(msg));
            }
        }
        self.wake(None);
    }

    /// The address of a peer, connected or recently gone.
    fn addr_of(&self, peer: PeerKey) -> Option<SocketAddr> {
        self.peers.get(&peer).map(|slot| slot.addr).or_else(|| {
            self.departed
                .iter()
                .find(|(k, _)| *k == peer)
                .map(|(_, a)| *a)
        })
    }

    /// One more failure that `peer` surely caused, counted against its host (connected or
    /// recently gone); banned at [`BAN_STRIKES`]. A host struck out while away is banned when it
    /// joins again.
    fn strike(&mut self, peer: PeerKey) {
        let Some(addr) = self.addr_of(peer) else {
            return;
        };
        let key = BanKey::of(addr);
        if !self.strikes.contains_key(&key) && self.strikes.len() >= MAX_STRUCK {
            // A flood of liars from many hosts: forget a host with the fewest strikes.
            let fewest = self
                .strikes
                .iter()
                .min_by_key(|(_, n)| **n)
                .map(|(k, _)| *k);
            if let Some(k) = fewest {
                self.strikes.remove(&k);
            }
        }
        let n = self.strikes.entry(key).or_insert(0);
        *n += 1;
        if *n >= strikes_to_ban(&addr) {
            log::warn!("banning {addr}: sent corrupt data for {n} pieces");
            let struck: Vec<PeerKey> = self
                .peers
                .iter()
                .filter(|(_, slot)| BanKey::of(slot.addr) == key)
                .map(|(k, _)| *k)
                .collect();
            for k in struck {
                self.ban(k);
            }
        }
    }

    /// Tells a peer it is banned. Never lost: other notes leave [`NOTES_RESERVED`] places free
    /// in its channel.
    fn ban(&mut self, peer: PeerKey) {
        if let Some(slot) = self.peers.get(&peer) {
            if slot.notes.try_send(PeerNote::Ban).is_err() {
                log::error!("peer {}: its note channel refused a ban", slot.addr);
            }
        }
    }

    /// Tells starved peers (other than `except`) to ask again; `None` wakes every starved peer.
    fn wake(&mut self, only: Option<PeerKey>) {
        match only {
            Some(peer) => {
                if let Some(slot) = self.peers.get_mut(&peer) {
                    if slot.starved {
                        slot.starved = false;
                        let _ = slot.notes.try_send(PeerNote::Wake);
                    }
                }
            }
            None => {
                for slot in self.peers.values_mut().filter(|s| s.starved) {
                    slot.starved = false;
                    let _ = slot.notes.try_send(PeerNote::Wake);
                }
            }
        }
    }
}
