//! Downloads from one peer: the request pipeline, the outstanding list and its timeouts, and the
//! blocks of a read on their way to the picker.
//!
//! The depth of the pipeline is [`RequestDepth`]: slow start (one more request per block
//! received), then a few seconds of the peer's rate. While the pipeline has room, one pick is
//! in flight at a time and a grant carries several blocks; a deep queue is topped up a quarter
//! at a time. The blocks of one socket read go to the picker together, with the next pick
//! folded in. Requests we gave up on (cancelled, timed out, dropped by a choke) are remembered
//! for a while, so a block arriving late for one of them still counts instead of looking like
//! data we never asked for.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_engine::lengths::BlockInfo;
use shoal_engine::pipeline::RequestDepth;
use shoal_engine::wire::Message;

use super::conn::WriteBuf;
use super::Stop;
use crate::buffers::{Block, BlockPool};
use crate::picker::PickRequest;

/// A request unanswered for this long is given back to the picker for others.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many recently cancelled or timed-out requests we remember, so that a block arriving
/// late for one of them is not taken for data we never asked for.
pub(super) const RECENT_RELEASED: usize = 256;

/// The grant vector's first capacity: grants reuse it, so it grows to the deepest grant once.
const GRANT_CAPACITY: usize = 64;

/// The arrived-blocks vector's capacity: it goes to the picker with each read's blocks.
const ARRIVED_CAPACITY: usize = 8;

/// The download side of one connection.
#[derive(Debug)]
pub(super) struct Download {
    /// Requests to keep outstanding: slow start, then a few seconds of the peer's rate.
    depth: RequestDepth,
    /// Requests we sent and await, oldest first, with when they went out.
    outstanding: VecDeque<(BlockInfo, Instant)>,
    /// Requests we gave up on recently (cancelled or timed out), oldest first; at most
    /// [`RECENT_RELEASED`].
    released: VecDeque<BlockInfo>,
    /// Whether a `Pick` is in flight.
    pick_pending: bool,
    /// The grant vector when it is home.
    grant_buf: Option<Vec<BlockInfo>>,
    /// Blocks decoded from the current read, not yet handed to the picker.
    arrived: Vec<(BlockInfo, Block)>,
    /// Whether the picker had nothing for us; wait for a wake-up.
    starved: bool,
}

impl Download {
    /// A pipeline of at least `queue_depth` requests, nothing outstanding.
    pub(super) fn new(queue_depth: usize) -> Self {
        Self {
            depth: RequestDepth::new(queue_depth),
            outstanding: VecDeque::new(),
            released: VecDeque::new(),
            pick_pending: false,
            grant_buf: Some(Vec::with_capacity(GRANT_CAPACITY)),
            arrived: Vec::new(),
            starved: false,
        }
    }

    /// The peer choked us. Without the fast extension that drops every pending request: they
    /// are returned, to give back to the picker (and remembered, should they arrive anyway).
    pub(super) fn handle_choke(&mut self, fast: bool) -> Option<Vec<BlockInfo>> {
        if fast || self.outstanding.is_empty() {
            return None;
        }
        let blocks: Vec<BlockInfo> = self.outstanding.drain(..).map(|(b, _)| b).collect();
        for &b in &blocks {
            self.remember_released(b);
        }
        Some(blocks)
    }

    /// The peer unchoked us.
    pub(super) fn handle_unchoke(&mut self) {
        self.starved = false;
        self.depth.unchoked();
    }

    /// The peer's extended handshake said how many requests it queues.
    pub(super) fn set_peer_limit(&mut self, reqq: Option<u32>) {
        self.depth.set_peer_limit(reqq);
    }

    /// A PIECE arrived: it must answer a request of ours (or one we gave up on recently). Its
    /// data is copied into a pooled block, handed on by [`take_arrived`](Self::take_arrived).
    pub(super) fn handle_piece(
        &mut self,
        block: BlockInfo,
        data: &[u8],
        pool: &Arc<BlockPool>,
    ) -> Result<(), Stop> {
        if let Some(i) = self.outstanding.iter().position(|(b, _)| *b == block) {
            self.outstanding.remove(i);
        } else if let Some(i) = self.released.iter().position(|b| *b == block) {
            // Late, after a cancel or a timeout: still useful if nobody else delivered it.
            self.released.remove(i);
        } else {
            return Err(Stop::Misbehaved(format!(
                "sent piece {} offset {} length {} that we never asked for",
                block.piece, block.begin, block.len
            )));
        }
        self.depth.block_arrived();
        // Handed on after the whole read is decoded (or before any other message to the
        // picker, which keeps the order): see `take_arrived`.
        self.arrived.push((block, pool.take_copy(data)));
        Ok(())
    }

    /// The peer rejected a request (fast extension): whether it was one we await, which the
    /// picker must then hear about.
    pub(super) fn handle_reject(&mut self, block: BlockInfo) -> bool {
        match self.outstanding.iter().position(|(b, _)| *b == block) {
            Some(i) => {
                self.outstanding.remove(i);
                true
            }
            None => false,
        }
    }

    /// The picker granted blocks: one REQUEST each, unless the situation changed while the
    /// pick was in flight (`may_request` false: the peer choked us or we lost interest); the
    /// grant is then returned, to give back to the picker.
    pub(super) fn handle_grant(
        &mut self,
        mut blocks: Vec<BlockInfo>,
        may_request: bool,
        now: Instant,
        out: &mut WriteBuf,
    ) -> Option<Vec<BlockInfo>> {
        self.pick_pending = false;
        self.starved = blocks.is_empty();
        let mut back = None;
        if !may_request {
            if !blocks.is_empty() {
                back = Some(std::mem::take(&mut blocks));
            }
        } else {
            for &b in &blocks {
                out.push(Message::Request(b));
                self.outstanding.push_back((b, now));
            }
        }
        blocks.clear();
        self.grant_buf = Some(blocks);
        back
    }

    /// The picker took a request back (another peer delivered it in endgame): CANCEL it.
    pub(super) fn handle_cancel(&mut self, block: BlockInfo, out: &mut WriteBuf) {
        if let Some(i) = self.outstanding.iter().position(|(b, _)| *b == block) {
            self.outstanding.remove(i);
            self.remember_released(block);
            out.push(Message::Cancel(block));
        }
    }

    /// The picker has work again after a grant of nothing.
    pub(super) fn handle_wake(&mut self) {
        self.starved = false;
    }

    /// The once-a-second check: if the oldest request has waited [`REQUEST_TIMEOUT`], the peer
    /// stalled: every outstanding request is returned, to give to others (the connection
    /// stays), CANCELled with the fast extension, and the pipeline restarts at its minimum.
    pub(super) fn poll_timeout(
        &mut self,
        now: Instant,
        fast: bool,
        out: &mut WriteBuf,
    ) -> Option<Vec<BlockInfo>> {
        let (_, sent) = self.outstanding.front()?;
        if now.duration_since(*sent) <= REQUEST_TIMEOUT {
            return None;
        }
        let blocks: Vec<BlockInfo> = self.outstanding.drain(..).map(|(b, _)| b).collect();
        self.depth.timed_out();
        for &b in &blocks {
            self.remember_released(b);
            if fast {
                out.push(Message::Cancel(b));
            }
        }
        Some(blocks)
    }

    /// The download rate measured at a tick, which sets the depth after slow start.
    pub(super) fn handle_rate(&mut self, rate: u64) {
        self.depth.tick(rate);
    }

    /// A request for more blocks, if the pipeline has room and none is pending, and we may
    /// request (`may_request`: unchoked and interested).
    pub(super) fn pick_request(&mut self, may_request: bool) -> Option<PickRequest> {
        if self.pick_pending || self.starved || !may_request {
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

    /// The blocks that arrived since the last call, if any, to hand to the picker in one
    /// message.
    pub(super) fn take_arrived(&mut self) -> Option<Vec<(BlockInfo, Block)>> {
        if self.arrived.is_empty() {
            return None;
        }
        Some(std::mem::replace(
            &mut self.arrived,
            Vec::with_capacity(ARRIVED_CAPACITY),
        ))
    }

    fn remember_released(&mut self, block: BlockInfo) {
        if self.released.len() == RECENT_RELEASED {
            self.released.pop_front();
        }
        self.released.push_back(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(piece: u32, i: u32) -> BlockInfo {
        BlockInfo {
            piece,
            begin: i * 16384,
            len: 16384,
        }
    }

    /// Grants `n` blocks of piece 0 at `now`.
    fn grant(d: &mut Download, n: u32, now: Instant, out: &mut WriteBuf) {
        let pick = d.pick_request(true).expect("room for a pick");
        assert!(pick.max >= n as usize);
        let mut buf = pick.buf;
        buf.extend((0..n).map(|i| block(0, i)));
        assert_eq!(d.handle_grant(buf, true, now, out), None);
    }

    #[test]
    fn a_grant_becomes_requests_and_one_pick_is_in_flight_at_a_time() {
        let mut d = Download::new(5);
        let mut out = WriteBuf::default();
        assert!(d.pick_request(false).is_none(), "choked or not interested");
        let pick = d.pick_request(true).unwrap();
        assert_eq!(pick.max, 5);
        assert!(d.pick_request(true).is_none(), "one pick at a time");
        let mut buf = pick.buf;
        buf.extend([block(0, 0), block(0, 1)]);
        assert_eq!(d.handle_grant(buf, true, Instant::now(), &mut out), None);
        assert_eq!(out.unsent(), 2 * 17, "two REQUESTs");
        // 3 of 5 free: more than a quarter, so another pick goes out.
        assert_eq!(d.pick_request(true).unwrap().max, 3);
    }

    #[test]
    fn an_empty_grant_waits_for_a_wake_and_a_stale_grant_goes_back() {
        let mut d = Download::new(5);
        let mut out = WriteBuf::default();
        let pick = d.pick_request(true).unwrap();
        d.handle_grant(pick.buf, true, Instant::now(), &mut out);
        assert!(d.pick_request(true).is_none(), "starved");
        d.handle_wake();
        let pick = d.pick_request(true).unwrap();
        let mut buf = pick.buf;
        buf.push(block(1, 0));
        let back = d.handle_grant(buf, false, Instant::now(), &mut out);
        assert_eq!(
            back,
            Some(vec![block(1, 0)]),
            "choked meanwhile: given back"
        );
        assert!(out.is_empty());
        assert!(
            d.pick_request(true).is_some(),
            "the pipeline is still empty"
        );
    }

    #[test]
    fn pieces_must_answer_a_request_and_late_ones_of_cancelled_requests_count() {
        let pool = BlockPool::new();
        let mut d = Download::new(5);
        let mut out = WriteBuf::default();
        grant(&mut d, 3, Instant::now(), &mut out);
        let data = [1u8; 16384];
        d.handle_piece(block(0, 0), &data, &pool).unwrap();
        // The picker cancels block 1 (endgame): it is CANCELled, but may still come.
        out.clear();
        d.handle_cancel(block(0, 1), &mut out);
        assert_eq!(out.unsent(), 17);
        d.handle_piece(block(0, 1), &data, &pool).unwrap();
        // Once only: a second copy was never asked for.
        assert!(matches!(
            d.handle_piece(block(0, 1), &data, &pool),
            Err(Stop::Misbehaved(_))
        ));
        assert!(matches!(
            d.handle_piece(block(5, 0), &data, &pool),
            Err(Stop::Misbehaved(_))
        ));
        let arrived = d.take_arrived().unwrap();
        assert_eq!(arrived.len(), 2);
        assert_eq!(&arrived[0].1[..], &data[..]);
        assert!(d.take_arrived().is_none());
        assert_eq!(pool.used(), 2 * 16384);
    }

    #[test]
    fn slow_start_adds_a_request_per_block() {
        let pool = BlockPool::new();
        let mut d = Download::new(4);
        let mut out = WriteBuf::default();
        grant(&mut d, 4, Instant::now(), &mut out);
        for i in 0..4 {
            d.handle_piece(block(0, i), &[0; 16384], &pool).unwrap();
        }
        assert_eq!(d.pick_request(true).unwrap().max, 8);
    }

    #[test]
    fn requests_time_out_together_and_late_blocks_still_count() {
        let pool = BlockPool::new();
        let t0 = Instant::now();
        let mut d = Download::new(8);
        let mut out = WriteBuf::default();
        grant(&mut d, 4, t0, &mut out);
        out.clear();
        assert_eq!(d.poll_timeout(t0 + REQUEST_TIMEOUT, true, &mut out), None);
        let back = d
            .poll_timeout(
                t0 + REQUEST_TIMEOUT + Duration::from_secs(1),
                true,
                &mut out,
            )
            .unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(
            out.unsent(),
            4 * 17,
            "a CANCEL each with the fast extension"
        );
        assert_eq!(
            d.poll_timeout(t0 + REQUEST_TIMEOUT * 2, true, &mut out),
            None,
            "nothing left"
        );
        d.handle_piece(block(0, 2), &[0; 16384], &pool).unwrap();
        // The pipeline fell back to its minimum.
        assert_eq!(d.pick_request(true).unwrap().max, 8);
    }

    #[test]
    fn a_choke_drops_requests_only_without_the_fast_extension() {
        let pool = BlockPool::new();
        let mut d = Download::new(5);
        let mut out = WriteBuf::default();
        grant(&mut d, 2, Instant::now(), &mut out);
        assert_eq!(d.handle_choke(true), None, "fast: they stay outstanding");
        assert_eq!(d.handle_choke(false), Some(vec![block(0, 0), block(0, 1)]));
        assert_eq!(d.handle_choke(false), None);
        // Arriving anyway, they still count.
        d.handle_piece(block(0, 1), &[0; 16384], &pool).unwrap();
    }

    #[test]
    fn rejects_of_outstanding_requests_reach_the_picker_once() {
        let mut d = Download::new(5);
        let mut out = WriteBuf::default();
        grant(&mut d, 2, Instant::now(), &mut out);
        assert!(d.handle_reject(block(0, 1)));
        assert!(!d.handle_reject(block(0, 1)));
        assert!(!d.handle_reject(block(3, 0)));
    }

    #[test]
    fn the_released_list_is_bounded() {
        let pool = BlockPool::new();
        let mut d = Download::new(RECENT_RELEASED + 10);
        let mut out = WriteBuf::default();
        let n = RECENT_RELEASED as u32 + 10;
        grant(&mut d, n, Instant::now(), &mut out);
        for i in 0..n {
            d.handle_cancel(block(0, i), &mut out);
        }
        assert_eq!(d.released.len(), RECENT_RELEASED);
        // The oldest were forgotten: such a block is now unasked for.
        assert!(d.handle_piece(block(0, 0), &[0; 16384], &pool).is_err());
        assert!(d.handle_piece(block(0, n - 1), &[0; 16384], &pool).is_ok());
    }

    #[test]
    fn a_deep_queue_is_topped_up_a_quarter_at_a_time() {
        let pool = BlockPool::new();
        let mut d = Download::new(40);
        let mut out = WriteBuf::default();
        grant(&mut d, 40, Instant::now(), &mut out);
        // Slow start grows the depth by one per block: after 5 blocks, depth 45 with 35 out:
        // 10 free, not a quarter of 45.
        for i in 0..5 {
            d.handle_piece(block(0, i), &[0; 16384], &pool).unwrap();
        }
        assert!(d.pick_request(true).is_none());
        for i in 5..10 {
            d.handle_piece(block(0, i), &[0; 16384], &pool).unwrap();
        }
        assert_eq!(d.pick_request(true).unwrap().max, 20);
    }
}
