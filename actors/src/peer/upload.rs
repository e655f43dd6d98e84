//! Uploads to one peer: the queue of its requests (bounded), cancels, and reading the blocks
//! into the write buffer.
//!
//! While the write buffer is below its high-water mark, queued requests are served straight
//! from the page cache when the data is there (`preadv2(RWF_NOWAIT)`, several consecutive
//! blocks with one call, each read in place behind its PIECE header: no copy, no thread hop),
//! else by the disk threads, a few at a time. The mark grows with the peer's upload rate, so a
//! fast peer gets fewer, larger writes. Where the bytes come from is a [`BlockSource`], so the
//! tests below serve from memory.

use std::collections::{HashSet, VecDeque};
use std::io;

use shoal_engine::lengths::{BlockInfo, BLOCK_LEN};
use shoal_engine::picker::PeerKey;
use shoal_engine::wire::{piece_header, Message};

use super::conn::WriteBuf;
use super::{ServeFilter, Stop};
use crate::disk::ReadDone;

/// Requests from the peer we queue before refusing more, and the `reqq` we advertise. A
/// libtorrent downloader takes the `reqq` it is told as its limit of requests outstanding:
/// 2,000, what libtorrent's own seeder says, lets it keep 32 MiB on the way, so its socket
/// does not run dry while either side waits for a CPU on a busy machine. With 512 (8 MiB) its
/// receive queue was nearly empty in 26-84% of samples during a transfer from `shoal seed`,
/// against 5-37% from a libtorrent seeder, and 11-18% with 2,000. The queue holds only block
/// coordinates (12 bytes each: 24 KiB at most per peer); blocks are read as the write buffer
/// drains. A cancel is one lookup in `Upload::live`.
pub(super) const MAX_SERVE_QUEUE: usize = 2000;

/// Requests for blocks already queued, received while the peer leaves our write buffer full
/// (it is not reading what it asked for), beyond which it is dropped. An honest peer repeats a
/// request only when it timed out, at most once per outstanding request; twice the queue
/// leaves room for that.
const MAX_REPEATS: usize = 2 * MAX_SERVE_QUEUE;

/// Disk reads in flight for one peer's uploads.
pub(super) const MAX_READS: usize = 8;

/// Most consecutive requested blocks read from the page cache with one system call.
const MAX_READ_RUN: usize = 64;

/// Bytes before a block's data in a PIECE message (`piece_header`): length, id, index, begin.
const PIECE_HEADER_LEN: usize = 13;

/// Stop reading blocks for this peer while this many bytes wait to be sent: this much until
/// its upload rate is measured...
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// ...at least this once it is (a quarter second of a slow peer's rate is less): four blocks,
/// enough for one vectored read and one write per wake-up. Thousands of unchoked connections
/// each holding 256 KiB (and a doubled `Vec` of 512 KiB) were most of the swarm bench's memory.
const MIN_WRITE_HIGH_WATER: usize = 64 * 1024;

/// ...and up to this for a fast peer (a quarter second of its upload rate): fewer, larger
/// writes and wake-ups per byte (5% less CPU on both sides at 600 MB/s), while slow peers keep
/// small buffers.
const MAX_WRITE_HIGH_WATER: usize = 1024 * 1024;

/// A peer whose unsent bytes pass this mark while it keeps sending requests is not reading
/// what it asks for (each refused request costs a reject): it is dropped.
const MAX_UNSENT: usize = 4 * 1024 * 1024;

/// Where uploaded blocks come from: the torrent's files through the page cache, or a disk
/// thread.
pub(super) trait BlockSource {
    /// Reads the consecutive blocks starting at `first` into `bufs` (one per block) if all of
    /// it is in the page cache; `Ok(false)` if not.
    fn read_run_cached(
        &self,
        first: &BlockInfo,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> io::Result<bool>;
    /// Reads `block` into `buf` if it is in the page cache; `Ok(false)` if not.
    fn read_block_cached(&self, block: &BlockInfo, buf: &mut [u8]) -> io::Result<bool>;
    /// Asks a disk thread to read `block` (the answer comes back as a [`ReadDone`]); false if
    /// the disk queue is full.
    fn read_at_disk(&self, block: BlockInfo) -> bool;
}

/// The upload side of one connection.
#[derive(Debug)]
pub(super) struct Upload {
    /// The peer's requests, waiting to be read (at most [`MAX_SERVE_QUEUE`]), in order; an
    /// entry not in `live` was cancelled and is dropped when it reaches the head.
    queue: VecDeque<BlockInfo>,
    /// The requests in `queue` still wanted, so that a cancel costs one hash lookup, not a
    /// search of up to [`MAX_SERVE_QUEUE`] entries (a flood of 17-byte cancels would make that
    /// search a way to burn our CPU: over a hundred comparisons per byte received).
    live: HashSet<BlockInfo>,
    /// Blocks being read by the disk threads (at most [`MAX_READS`]).
    reads_at_disk: Vec<BlockInfo>,
    /// Those of them the peer cancelled meanwhile: dropped when they come back.
    cancelled_in_flight: Vec<BlockInfo>,
    /// Whether the request at the head of the queue missed the page cache: it waits for a
    /// disk thread, and is not tried in the cache again meanwhile.
    head_missed: bool,
    /// Bytes queued for sending beyond which no more blocks are read for the peer.
    write_high_water: usize,
    /// Repeated requests since the write buffer was last below the mark (see
    /// [`MAX_REPEATS`]).
    repeats: usize,
}

impl Upload {
    /// Nothing queued.
    pub(super) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            live: HashSet::new(),
            reads_at_disk: Vec::with_capacity(MAX_READS),
            cancelled_in_flight: Vec::new(),
            head_missed: false,
            write_high_water: WRITE_HIGH_WATER,
            repeats: 0,
        }
    }

    /// Whether another request fits in the queue.
    pub(super) fn has_room(&self) -> bool {
        self.queue.len() < MAX_SERVE_QUEUE
    }

    /// Whether nothing is queued or being read.
    pub(super) fn is_idle(&self) -> bool {
        self.live.is_empty() && self.reads_at_disk.is_empty()
    }

    /// A valid request from the peer: queued if `allowed` (we unchoke it, have the piece, the
    /// queue has room and any serve filter agrees), else rejected with the fast extension. A
    /// peer that keeps requesting while our rejects pile up unread is dropped.
    pub(super) fn handle_request(
        &mut self,
        block: BlockInfo,
        allowed: bool,
        fast: bool,
        out: &mut WriteBuf,
    ) -> Result<(), Stop> {
        if out.unsent() < self.write_high_water {
            self.repeats = 0;
        }
        if allowed {
            // A request for a block already queued is answered once.
            if self.live.insert(block) {
                self.queue.push_back(block);
            } else if out.unsent() >= self.write_high_water {
                self.repeats += 1;
                if self.repeats > MAX_REPEATS {
                    return Err(Stop::Local(
                        "request flood: it repeats its requests and does not read".into(),
                    ));
                }
            }
        } else if fast {
            if out.unsent() > MAX_UNSENT {
                return Err(Stop::Local(
                    "request flood: it does not read our rejects".into(),
                ));
            }
            out.push(Message::Reject(block));
        }
        Ok(())
    }

    /// The peer cancelled a request: dropped from the queue, or dropped when its disk read
    /// comes back. (A block already in the write buffer is sent; BEP 3 allows that.)
    pub(super) fn handle_cancel(&mut self, block: BlockInfo) {
        if self.live.remove(&block) {
            // Left in the queue until it reaches the head.
            self.drop_cancelled_head();
        } else if self.reads_at_disk.contains(&block) && !self.cancelled_in_flight.contains(&block)
        {
            self.cancelled_in_flight.push(block);
        }
    }

    /// We choked the peer: its queued requests will not be answered, and with the fast
    /// extension they must be rejected. (Reads at the disk are dropped when they come back.)
    pub(super) fn choked(&mut self, fast: bool, out: &mut WriteBuf) {
        self.head_missed = false;
        for b in self.queue.drain(..) {
            if self.live.remove(&b) && fast {
                out.push(Message::Reject(b));
            }
        }
        self.live.clear();
    }

    /// The upload rate measured at a tick: the high-water mark holds a quarter second of it,
    /// within bounds.
    pub(super) fn handle_rate(&mut self, up_rate: u64) {
        self.write_high_water = usize::try_from(up_rate / 4)
            .unwrap_or(usize::MAX)
            .clamp(MIN_WRITE_HIGH_WATER, MAX_WRITE_HIGH_WATER);
    }

    /// The most the write buffer holds once filled to the mark: the mark, the last block read
    /// past it, and a header per block.
    fn write_capacity(&self) -> usize {
        let block = BLOCK_LEN as usize;
        let blocks = self.write_high_water / block + 2;
        self.write_high_water + block + blocks * PIECE_HEADER_LEN
    }

    /// Serves queued requests while the write buffer is below the mark: straight from the page
    /// cache when the block is there, else through a disk thread. `uploaded` is called for each
    /// block put in the write buffer.
    pub(super) fn serve(
        &mut self,
        src: &impl BlockSource,
        out: &mut WriteBuf,
        mut uploaded: impl FnMut(BlockInfo),
    ) {
        self.drop_cancelled_head();
        if self.queue.is_empty() || out.unsent() >= self.write_high_water {
            return;
        }
        // Room for what the mark allows, exactly (see `WriteBuf::make_room`).
        out.make_room(self.write_capacity());
        while out.unsent() < self.write_high_water {
            let Some(&block) = self.queue.front() else {
                break;
            };
            if !self.head_missed {
                let served = self.read_cached_run(src, out, &mut uploaded);
                if served > 0 {
                    for b in self.queue.drain(..served) {
                        self.live.remove(&b);
                    }
                    self.drop_cancelled_head();
                    continue;
                }
            }
            self.head_missed = true;
            if self.reads_at_disk.len() == MAX_READS {
                break;
            }
            if !src.read_at_disk(block) {
                // The disk queue is full: try again after the next event.
                break;
            }
            self.queue.pop_front();
            self.live.remove(&block);
            self.reads_at_disk.push(block);
            self.head_missed = false;
            self.drop_cancelled_head();
        }
    }

    /// Drops cancelled requests from the head of the queue.
    fn drop_cancelled_head(&mut self) {
        while let Some(b) = self.queue.front() {
            if self.live.contains(b) {
                break;
            }
            self.queue.pop_front();
            self.head_missed = false;
        }
    }

    /// Appends the longest run of consecutive blocks at the head of the queue (same piece,
    /// each starting where the last ended, within the write buffer's room) to the write buffer,
    /// each behind its header, with one read if the data is in the page cache; falls back to
    /// the first block alone. Returns how many blocks it queued for sending.
    fn read_cached_run(
        &mut self,
        src: &impl BlockSource,
        out: &mut WriteBuf,
        uploaded: &mut impl FnMut(BlockInfo),
    ) -> usize {
        let Some(&first) = self.queue.front() else {
            return 0;
        };
        let room = self.write_high_water.saturating_sub(out.unsent());
        let mut run = 1;
        let mut bytes = first.len as usize;
        let mut end = first.begin + first.len;
        for b in self.queue.iter().skip(1).take(MAX_READ_RUN - 1) {
            if b.piece != first.piece
                || b.begin != end
                || bytes + b.len as usize > room
                || !self.live.contains(b)
            {
                break;
            }
            run += 1;
            bytes += b.len as usize;
            end += b.len;
        }
        if run > 1 {
            let start = out.len();
            let slots = out.slots(bytes + run * PIECE_HEADER_LEN);
            // Each block's header, and its data slot behind it, for one vectored read.
            let mut reads = Vec::with_capacity(run);
            let mut rest = slots;
            for b in self.queue.iter().take(run) {
                let (header, after_header) = rest.split_at_mut(PIECE_HEADER_LEN);
                header.copy_from_slice(&piece_header(b.piece, b.begin, b.len));
                let (data, after) = after_header.split_at_mut(b.len as usize);
                reads.push(io::IoSliceMut::new(data));
                rest = after;
            }
            if let Ok(true) = src.read_run_cached(&first, &mut reads) {
                for b in self.queue.iter().take(run) {
                    uploaded(*b);
                }
                return run;
            }
            out.truncate(start);
        }
        usize::from(read_cached(src, first, out, uploaded))
    }

    /// A disk read came back: its block goes out unless the peer cancelled it meanwhile or we
    /// choke the peer now. A failed read ends the connection.
    pub(super) fn handle_read_done(
        &mut self,
        done: ReadDone,
        am_choking: bool,
        out: &mut WriteBuf,
        mut uploaded: impl FnMut(BlockInfo),
    ) -> Result<(), Stop> {
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
        if am_choking {
            return Ok(());
        }
        match done.data {
            Ok(data) => {
                let b = done.block;
                out.extend(&piece_header(b.piece, b.begin, b.len));
                out.extend(&data);
                uploaded(b);
                Ok(())
            }
            Err(e) => Err(Stop::Local(format!("cannot read block for upload: {e}"))),
        }
    }
}

/// Appends the block to the write buffer if it can be read without waiting for the disk.
fn read_cached(
    src: &impl BlockSource,
    b: BlockInfo,
    out: &mut WriteBuf,
    uploaded: &mut impl FnMut(BlockInfo),
) -> bool {
    let start = out.len();
    let slots = out.slots(PIECE_HEADER_LEN + b.len as usize);
    let (header, data) = slots.split_at_mut(PIECE_HEADER_LEN);
    header.copy_from_slice(&piece_header(b.piece, b.begin, b.len));
    match src.read_block_cached(&b, data) {
        Ok(true) => {
            uploaded(b);
            true
        }
        // Not cached, or an error: a disk thread reads it (and reports any error).
        Ok(false) | Err(_) => {
            out.truncate(start);
            false
        }
    }
}

/// Whether a request may be queued: asks the serve filter last, and only if everything else
/// allows it (the filter may reserve the piece for this peer).
pub(super) fn allowed(
    upload: &Upload,
    may_serve: bool,
    filter: Option<&dyn ServeFilter>,
    peer: PeerKey,
    block: &BlockInfo,
) -> bool {
    may_serve && upload.has_room() && filter.is_none_or(|f| f.allow(peer, block))
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::buffers::BlockPool;
    use shoal_engine::wire::{decode, Decoded};

    /// Blocks whose bytes are all `piece + begin / 16384`; those of `cold` pieces are not in
    /// the page cache. Disk reads are recorded.
    #[derive(Default)]
    struct Memory {
        cold: Vec<u32>,
        disk_full: Cell<bool>,
        at_disk: RefCell<Vec<BlockInfo>>,
        run_reads: Cell<usize>,
    }

    fn fill(b: &BlockInfo) -> u8 {
        (b.piece + b.begin / 16384) as u8
    }

    impl BlockSource for Memory {
        fn read_run_cached(
            &self,
            first: &BlockInfo,
            bufs: &mut [io::IoSliceMut<'_>],
        ) -> io::Result<bool> {
            if self.cold.contains(&first.piece) {
                return Ok(false);
            }
            self.run_reads.set(self.run_reads.get() + 1);
            let mut begin = first.begin;
            for buf in bufs {
                let b = BlockInfo {
                    piece: first.piece,
                    begin,
                    len: buf.len() as u32,
                };
                buf.fill(fill(&b));
                begin += b.len;
            }
            Ok(true)
        }
        fn read_block_cached(&self, block: &BlockInfo, buf: &mut [u8]) -> io::Result<bool> {
            if self.cold.contains(&block.piece) {
                return Ok(false);
            }
            buf.fill(fill(block));
            Ok(true)
        }
        fn read_at_disk(&self, block: BlockInfo) -> bool {
            if self.disk_full.get() {
                return false;
            }
            self.at_disk.borrow_mut().push(block);
            true
        }
    }

    fn block(piece: u32, i: u32) -> BlockInfo {
        BlockInfo {
            piece,
            begin: i * 16384,
            len: 16384,
        }
    }

    /// The PIECE messages in the write buffer: (piece, begin, whether the data is right).
    fn pieces(out: &WriteBuf) -> Vec<(u32, u32, bool)> {
        let mut rest = out.pending();
        let mut got = Vec::new();
        while let Ok(Decoded::Message { message, consumed }) = decode(rest, 1 << 20) {
            if let Message::Piece { piece, begin, data } = message {
                let b = BlockInfo {
                    piece,
                    begin,
                    len: data.len() as u32,
                };
                got.push((piece, begin, data.iter().all(|&x| x == fill(&b))));
            }
            rest = &rest[consumed..];
        }
        got
    }

    #[test]
    fn cached_blocks_go_straight_into_the_write_buffer_in_runs() {
        let src = Memory::default();
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        for i in 0..4 {
            up.handle_request(block(1, i), true, true, &mut out)
                .unwrap();
        }
        up.handle_request(block(2, 0), true, true, &mut out)
            .unwrap();
        let mut sent = Vec::new();
        up.serve(&src, &mut out, |b| sent.push(b));
        assert_eq!(sent.len(), 5);
        assert_eq!(src.run_reads.get(), 1, "piece 1's four blocks in one read");
        let got = pieces(&out);
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|&(_, _, ok)| ok), "{got:?}");
        assert!(up.is_idle());
    }

    #[test]
    fn the_high_water_mark_holds_reads_back_and_grows_with_the_rate() {
        let src = Memory::default();
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        for i in 0..128 {
            up.handle_request(block(i / 16, i % 16), true, true, &mut out)
                .unwrap();
        }
        up.serve(&src, &mut out, |_| {});
        assert_eq!(out.unsent(), 16 * (16384 + 13), "256 KiB queued, no more");
        out.advance(out.unsent());
        up.handle_rate(100 << 20);
        up.serve(&src, &mut out, |_| {});
        assert_eq!(out.unsent(), 64 * (16384 + 13), "a fast peer: 1 MiB queued");
        assert!(!up.is_idle());
    }

    #[test]
    fn a_slow_peer_gets_a_small_mark_and_the_buffer_never_doubles() {
        let src = Memory::default();
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        for i in 0..128 {
            up.handle_request(block(i / 16, i % 16), true, true, &mut out)
                .unwrap();
        }
        up.serve(&src, &mut out, |_| {});
        let cap = out.capacity();
        assert!(
            cap < 256 * 1024 + 32 * 1024,
            "no doubling past the mark: {cap}"
        );
        out.advance(out.unsent());
        // 100 KiB/s: a quarter second is less than the floor.
        up.handle_rate(100 << 10);
        up.serve(&src, &mut out, |_| {});
        assert_eq!(out.unsent(), 4 * (16384 + 13), "64 KiB queued");
        let cap = out.capacity();
        assert!(cap < 96 * 1024, "the bigger buffer was given back: {cap}");
    }

    #[test]
    fn misses_go_to_the_disk_a_few_at_a_time() {
        let src = Memory {
            cold: vec![3],
            ..Memory::default()
        };
        let pool = BlockPool::new();
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        for i in 0..12 {
            up.handle_request(block(3, i), true, false, &mut out)
                .unwrap();
        }
        up.serve(&src, &mut out, |_| panic!("nothing is cached"));
        assert_eq!(src.at_disk.borrow().len(), MAX_READS);
        // One comes back: it is sent, and the next miss goes to the disk.
        let first = src.at_disk.borrow()[0];
        let done = ReadDone {
            block: first,
            data: Ok(pool.take_copy(&[fill(&first); 16384])),
        };
        let mut sent = 0;
        up.handle_read_done(done, false, &mut out, |_| sent += 1)
            .unwrap();
        assert_eq!(sent, 1);
        assert_eq!(pieces(&out), vec![(3, 0, true)]);
        up.serve(&src, &mut out, |_| {});
        assert_eq!(src.at_disk.borrow().len(), MAX_READS + 1);
        // A full disk queue: the request waits in the queue.
        src.disk_full.set(true);
        let second = src.at_disk.borrow()[1];
        up.handle_read_done(
            ReadDone {
                block: second,
                data: Err(io::Error::other("gone")),
            },
            true,
            &mut out,
            |_| panic!("choked: not sent"),
        )
        .unwrap();
        up.serve(&src, &mut out, |_| {});
        assert_eq!(src.at_disk.borrow().len(), MAX_READS + 1);
        assert!(!up.is_idle());
    }

    #[test]
    fn a_failed_disk_read_ends_the_connection() {
        let src = Memory {
            cold: vec![0],
            ..Memory::default()
        };
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        up.handle_request(block(0, 0), true, false, &mut out)
            .unwrap();
        up.serve(&src, &mut out, |_| {});
        let done = ReadDone {
            block: block(0, 0),
            data: Err(io::Error::other("bad sector")),
        };
        assert!(matches!(
            up.handle_read_done(done, false, &mut out, |_| {}),
            Err(Stop::Local(_))
        ));
    }

    #[test]
    fn cancels_drop_queued_requests_and_reads_in_flight() {
        let src = Memory {
            cold: vec![0],
            ..Memory::default()
        };
        let pool = BlockPool::new();
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        up.handle_request(block(0, 0), true, false, &mut out)
            .unwrap();
        up.serve(&src, &mut out, |_| {});
        assert_eq!(src.at_disk.borrow().len(), 1);
        up.handle_request(block(5, 0), true, false, &mut out)
            .unwrap();
        up.handle_cancel(block(5, 0));
        up.handle_cancel(block(0, 0));
        up.handle_cancel(block(0, 0));
        // The cancelled read comes back: dropped, and nothing is left.
        let done = ReadDone {
            block: block(0, 0),
            data: Ok(pool.take_copy(&[0; 16384])),
        };
        up.handle_read_done(done, false, &mut out, |_| panic!("cancelled"))
            .unwrap();
        up.serve(&src, &mut out, |_| panic!("cancelled"));
        assert!(out.is_empty());
        assert!(up.is_idle());
        assert!(up.cancelled_in_flight.is_empty());
    }

    #[test]
    fn cancelled_requests_are_skipped_where_they_stand_and_duplicates_answered_once() {
        let src = Memory::default();
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        for i in 0..4 {
            up.handle_request(block(1, i), true, true, &mut out)
                .unwrap();
        }
        // A duplicate of a queued request, a cancel in the middle, one at the head, and a
        // cancelled block asked for again: it goes out once (in its first place, where the
        // cancelled entry still stood).
        up.handle_request(block(1, 3), true, true, &mut out)
            .unwrap();
        up.handle_cancel(block(1, 2));
        up.handle_cancel(block(1, 0));
        up.handle_request(block(1, 2), true, true, &mut out)
            .unwrap();
        let mut sent = Vec::new();
        up.serve(&src, &mut out, |b| sent.push(b));
        assert_eq!(sent, vec![block(1, 1), block(1, 2), block(1, 3)]);
        assert_eq!(
            pieces(&out),
            vec![(1, 16384, true), (1, 2 * 16384, true), (1, 3 * 16384, true)]
        );
        assert!(up.is_idle());
        // Choking rejects what is still wanted, not what was cancelled.
        out.clear();
        for i in 0..3 {
            up.handle_request(block(2, i), true, true, &mut out)
                .unwrap();
        }
        up.handle_cancel(block(2, 1));
        up.choked(true, &mut out);
        assert_eq!(out.unsent(), 2 * 17, "two rejects");
        assert!(up.is_idle());
        assert!(up.queue.is_empty());
    }

    #[test]
    fn the_queue_is_bounded_and_refusals_are_rejected_with_the_fast_extension() {
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        for i in 0..MAX_SERVE_QUEUE as u32 {
            let ok = allowed(&up, true, None, PeerKey(1), &block(i, 0));
            up.handle_request(block(i, 0), ok, true, &mut out).unwrap();
        }
        assert!(out.is_empty());
        assert!(!allowed(&up, true, None, PeerKey(1), &block(0, 1)));
        up.handle_request(block(0, 1), false, true, &mut out)
            .unwrap();
        assert_eq!(out.unsent(), 17, "a REJECT");
        up.handle_request(block(0, 1), false, false, &mut out)
            .unwrap();
        assert_eq!(out.unsent(), 17, "without the fast extension: ignored");
        // Choking rejects the whole queue.
        out.clear();
        up.choked(true, &mut out);
        assert_eq!(out.unsent(), MAX_SERVE_QUEUE * 17);
        assert!(up.is_idle());
    }

    #[test]
    fn a_peer_that_repeats_requests_and_does_not_read_is_dropped() {
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        up.handle_request(block(0, 0), true, true, &mut out)
            .unwrap();
        // Repeats while we have nothing unsent are harmless (a timed-out request asked again).
        for _ in 0..3 * MAX_REPEATS {
            up.handle_request(block(0, 0), true, true, &mut out)
                .unwrap();
        }
        // The write buffer at the mark: the peer is not reading.
        out.extend(&vec![0u8; WRITE_HIGH_WATER]);
        let mut stop = None;
        for i in 0..=MAX_REPEATS {
            if let Err(e) = up.handle_request(block(0, 0), true, true, &mut out) {
                stop = Some((i, e));
                break;
            }
        }
        let (i, e) = stop.expect("dropped");
        assert_eq!(i, MAX_REPEATS);
        assert!(
            matches!(e, Stop::Local(ref m) if m.contains("repeats")),
            "{e:?}"
        );
        assert_eq!(up.queue.len(), 1, "answered once");
    }

    #[test]
    fn a_peer_that_does_not_read_its_rejects_is_dropped() {
        let mut up = Upload::new();
        let mut out = WriteBuf::default();
        let mut refused = 0;
        let stop = loop {
            match up.handle_request(block(0, 0), false, true, &mut out) {
                Ok(()) => refused += 1,
                Err(stop) => break stop,
            }
        };
        assert!(matches!(stop, Stop::Local(_)));
        assert_eq!(refused, MAX_UNSENT / 17 + 1);
    }
}
