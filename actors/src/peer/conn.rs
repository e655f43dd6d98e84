//! The connection's bytes: the read buffer and its decode loop, the write buffer, the traffic
//! timers (idle timeout, keep-alive, shrinking idle buffers) and the rate meter.
//!
//! Nothing here touches a socket: the run loop reads into [`ReadBuf::spare`] and writes from
//! [`WriteBuf::pending`], so the tests below drive it byte by byte.

use std::time::{Duration, Instant};

use shoal_engine::wire::{decode, Decoded, Message, WireError};

/// The read buffer a connection starts with: small, so that idle peers cost little memory.
pub(super) const MIN_READ_BUF: usize = 4 * 1024;

/// After this long without traffic in one direction, that direction's buffer shrinks back.
pub(super) const SHRINK_AFTER: Duration = Duration::from_secs(2);

/// The read buffer of a busy connection: a read that fills the buffer doubles it up to this,
/// and it shrinks back after [`SHRINK_AFTER`] without traffic. (A single message may still grow
/// it up to the largest message allowed.)
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// The read buffer of a fast peer (one that sent [`FAST_PEER_RATE`] in the last second): fewer
/// reads and wake-ups per byte (half of a 7% CPU saving at 600 MB/s). Only fast peers get it:
/// in a swarm of thousands of ordinary connections it would cost a quarter MiB each.
pub(super) const FAST_READ_CHUNK: usize = 256 * 1024;

/// Bytes per second from which a peer counts as fast, for [`FAST_READ_CHUNK`].
pub(super) const FAST_PEER_RATE: u64 = 32 * 1024 * 1024;

/// A keep-alive goes out after this long without sending anything.
pub(super) const KEEPALIVE_AFTER: Duration = Duration::from_secs(60);

/// A peer that sends nothing (not even a keep-alive) for this long is dropped.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(150);

/// Rates measured over less than this wait for the next tick (see [`RateMeter`]).
const MIN_RATE_INTERVAL: Duration = Duration::from_millis(500);

/// Bytes read from the peer and not yet decoded, and the decoder's state.
///
/// A message is decoded in place and borrows the buffer; a partial one waits at the front of
/// the buffer, which grows to fit it (a length prefix above the maximum is refused by the
/// decoder before anything grows). A read that fills the buffer doubles it, up to the chunk.
#[derive(Debug, Default)]
pub(super) struct ReadBuf {
    /// The buffer: `buf[start..end]` is read and not yet decoded.
    buf: Vec<u8>,
    /// Where the next message starts.
    start: usize,
    /// Where the read bytes end.
    end: usize,
    /// Decoding waits until `end` reaches this (the decoder said how many bytes the partial
    /// message needs); 0 when nothing is partial.
    need: usize,
    /// The most the buffer grows to for ordinary traffic (more for a fast peer).
    chunk: usize,
}

impl ReadBuf {
    /// An empty buffer of [`MIN_READ_BUF`].
    pub(super) fn new() -> Self {
        Self {
            buf: vec![0u8; MIN_READ_BUF],
            start: 0,
            end: 0,
            need: 0,
            chunk: READ_CHUNK,
        }
    }

    /// Where the next read goes; `None` while the buffer is full (which it never is once
    /// [`next_message`](Self::next_message) has returned `None`). A partial message is moved
    /// to the front, and the buffer grown to fit it, first.
    pub(super) fn spare(&mut self) -> Option<&mut [u8]> {
        if self.need > 0 && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.need -= self.start;
            self.start = 0;
        }
        if self.need > self.buf.len() {
            self.buf.resize(self.need, 0);
        }
        (self.end < self.buf.len()).then(|| &mut self.buf[self.end..])
    }

    /// `n` bytes were read into [`spare`](Self::spare).
    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
        if self.end == self.buf.len() && self.buf.len() < self.chunk {
            // A busy connection: read more per call.
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
    }

    /// The next whole message, or `None` until more bytes arrive. A message borrows the buffer
    /// until the next call. Call it until it returns `None` before reading again.
    pub(super) fn next_message(&mut self, max_len: u32) -> Result<Option<Message<'_>>, WireError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.need = 0;
            // Shrink a buffer that a large message (a bitfield) made big.
            if self.buf.len() > 4 * READ_CHUNK {
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to_fit();
            }
            return Ok(None);
        }
        if self.end < self.need {
            return Ok(None);
        }
        // The partial message is moved to the front later, in `spare`: a message returned
        // from here keeps the buffer borrowed, so this branch may only note what is needed.
        match decode(&self.buf[self.start..self.end], max_len)? {
            Decoded::Message { message, consumed } => {
                self.start += consumed;
                Ok(Some(message))
            }
            Decoded::NeedMore(more) => {
                self.need = self.end + more;
                Ok(None)
            }
        }
    }

    /// Lets the buffer grow to [`FAST_READ_CHUNK`] for a fast peer, else [`READ_CHUNK`].
    pub(super) fn set_fast(&mut self, fast: bool) {
        self.chunk = if fast { FAST_READ_CHUNK } else { READ_CHUNK };
    }

    /// Gives back a big buffer's memory if it holds nothing.
    fn shrink_if_empty(&mut self) {
        if self.end == 0 && self.buf.len() > MIN_READ_BUF {
            self.buf = vec![0u8; MIN_READ_BUF];
            self.need = 0;
        }
    }

    /// The buffer's size now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }
}

/// Bytes waiting to be sent: messages are encoded into it, uploaded blocks read straight into
/// it (see `upload`).
///
/// `buf[pos..end]` is not yet written. The bytes of `buf` past `end` are left from earlier
/// sends: initialized memory that [`slots`](Self::slots) hands out again without zeroing it
/// first (a seeder reads every block into such slots: zeroing them cost 3% of its CPU).
#[derive(Debug, Default)]
pub(super) struct WriteBuf {
    /// The bytes; `buf[pos..end]` is not yet written, `buf[end..]` is free.
    buf: Vec<u8>,
    /// How much of `buf` is written.
    pos: usize,
    /// Where the queued bytes end.
    end: usize,
}

impl WriteBuf {
    /// Queues a message.
    pub(super) fn push(&mut self, msg: Message<'_>) {
        // Encoding appends to the `Vec`: the free bytes past `end` go (they are rarely there
        // when a control message is queued, and are remade by the next block read).
        self.buf.truncate(self.end);
        msg.encode(&mut self.buf);
        self.end = self.buf.len();
    }

    /// Appends `bytes`.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        self.slots(bytes.len()).copy_from_slice(bytes);
    }

    /// Appends `n` bytes for the caller to fill (their content is whatever was there before)
    /// and returns them; [`truncate`](Self::truncate) takes them back.
    pub(super) fn slots(&mut self, n: usize) -> &mut [u8] {
        let start = self.end;
        self.end += n;
        if self.buf.len() < self.end {
            self.buf.resize(self.end, 0);
        }
        &mut self.buf[start..self.end]
    }

    /// Drops the queued bytes from `len` on (a length from [`len`](Self::len) taken before
    /// appending them).
    pub(super) fn truncate(&mut self, len: usize) {
        self.end = self.end.min(len.max(self.pos));
        if self.pos == self.end {
            self.clear();
        }
    }

    /// Where the queued bytes end, for [`truncate`](Self::truncate).
    pub(super) fn len(&self) -> usize {
        self.end
    }

    /// The bytes to write next.
    pub(super) fn pending(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// `n` bytes of [`pending`](Self::pending) were written.
    pub(super) fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Bytes queued and not yet written.
    pub(super) fn unsent(&self) -> usize {
        self.end - self.pos
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// The memory the buffer holds.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Makes room to fill the buffer up to `cap` bytes without the `Vec` growing past `cap`
    /// (doubling, it would hold up to twice what is needed, for as long as the connection
    /// stays busy): bytes already sent are dropped from the front when the rest would not fit
    /// (each move copies fewer bytes than were sent since the last one), and an empty buffer
    /// bigger than `cap` (the mark fell with the rate) is given back.
    pub(super) fn make_room(&mut self, cap: usize) {
        if self.end == 0 {
            if self.buf.capacity() > cap {
                self.buf = Vec::with_capacity(cap);
            }
        } else if self.pos > 0 && self.buf.capacity() < cap + self.pos {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        // The free bytes stay initialized; the `Vec` only grows to `cap`.
        self.buf.truncate(self.buf.len().min(cap.max(self.end)));
        self.buf.reserve_exact(cap.saturating_sub(self.buf.len()));
    }

    /// Forgets everything queued.
    pub(super) fn clear(&mut self) {
        self.pos = 0;
        self.end = 0;
    }

    /// Gives back a big buffer's memory if it holds nothing.
    fn shrink_if_empty(&mut self) {
        if self.end == 0 && self.buf.capacity() > MIN_READ_BUF {
            self.buf = Vec::new();
        }
    }
}

/// Why the traffic timers end a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Silent;

/// When the peer last sent, and we last sent, anything: the idle timeout, keep-alives and
/// shrinking quiet buffers.
#[derive(Debug)]
pub(super) struct Traffic {
    /// When bytes last arrived.
    last_recv: Instant,
    /// When bytes last went out.
    last_send: Instant,
}

impl Traffic {
    /// Both directions active as of `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            last_recv: now,
            last_send: now,
        }
    }

    /// Bytes arrived.
    pub(super) fn received(&mut self, now: Instant) {
        self.last_recv = now;
    }

    /// Bytes went out.
    pub(super) fn sent(&mut self, now: Instant) {
        self.last_send = now;
    }

    /// The once-a-second check: `Err` if the peer has been silent for [`IDLE_TIMEOUT`];
    /// otherwise queues a keep-alive after [`KEEPALIVE_AFTER`] without sending.
    pub(super) fn handle_tick(&mut self, now: Instant, out: &mut WriteBuf) -> Result<(), Silent> {
        if now.duration_since(self.last_recv) > IDLE_TIMEOUT {
            return Err(Silent);
        }
        if out.is_empty() && now.duration_since(self.last_send) > KEEPALIVE_AFTER {
            out.push(Message::KeepAlive);
        }
        Ok(())
    }

    /// Gives back the memory of buffers a burst made big once the connection is quiet, so that
    /// thousands of connections that were busy once cost what idle ones do. The write buffer
    /// stays while `uploads_idle` is false (blocks are on their way into it).
    pub(super) fn shrink_idle(
        &self,
        now: Instant,
        input: &mut ReadBuf,
        out: &mut WriteBuf,
        uploads_idle: bool,
    ) {
        if now.duration_since(self.last_recv) > SHRINK_AFTER {
            input.shrink_if_empty();
        }
        if uploads_idle && now.duration_since(self.last_send) > SHRINK_AFTER {
            out.shrink_if_empty();
        }
    }
}

/// Measures the payload rates both ways once a tick, per second of the time that really
/// passed: a busy connection can delay its tick, and the interval timer then fires again at
/// once to catch up. A measurement over less than half a second waits for the next tick
/// instead of reading a sliver of traffic as a collapsed rate.
#[derive(Debug)]
pub(super) struct RateMeter {
    /// When the rates were last measured.
    at: Instant,
    /// Payload received as of then.
    down: u64,
    /// Payload sent as of then.
    up: u64,
}

/// The rates of one measurement, in bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rates {
    /// Payload from the peer.
    pub(super) down: u64,
    /// Payload to the peer.
    pub(super) up: u64,
}

impl RateMeter {
    /// Starts measuring at `now`, from zero bytes.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            at: now,
            down: 0,
            up: 0,
        }
    }

    /// The rates since the last measurement, given the byte counts now; `None` if that was
    /// less than half a second ago.
    pub(super) fn measure(&mut self, now: Instant, down: u64, up: u64) -> Option<Rates> {
        let elapsed = now.duration_since(self.at);
        if elapsed < MIN_RATE_INTERVAL {
            return None;
        }
        let ms = elapsed.as_millis();
        self.at = now;
        let per_second =
            |bytes: u64| u64::try_from(u128::from(bytes) * 1000 / ms).unwrap_or(u64::MAX);
        let rates = Rates {
            down: per_second(down.saturating_sub(self.down)),
            up: per_second(up.saturating_sub(self.up)),
        };
        self.down = down;
        self.up = up;
        Some(rates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_engine::lengths::BlockInfo;

    const MAX: u32 = 1 << 20;

    /// Feeds `bytes` `step` at a time; returns every message decoded (re-encoded, since a
    /// message borrows the buffer) and the largest the buffer grew.
    fn feed(input: &mut ReadBuf, bytes: &[u8], step: usize) -> (Vec<Vec<u8>>, usize) {
        let mut out = Vec::new();
        let mut biggest = input.len();
        let mut rest = bytes;
        while !rest.is_empty() {
            let spare = input.spare().expect("room after decoding");
            let n = spare.len().min(step).min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            input.filled(n);
            biggest = biggest.max(input.len());
            while let Some(m) = input.next_message(MAX).unwrap() {
                let mut enc = Vec::new();
                m.encode(&mut enc);
                out.push(enc);
            }
        }
        (out, biggest)
    }

    fn messages() -> Vec<Vec<u8>> {
        let data = vec![7u8; 16 * 1024];
        let block = BlockInfo {
            piece: 3,
            begin: 16384,
            len: 16384,
        };
        [
            Message::KeepAlive,
            Message::Unchoke,
            Message::Have(9),
            Message::Request(block),
            Message::Piece {
                piece: 3,
                begin: 16384,
                data: &data,
            },
            Message::Bitfield(&[0xff; 300]),
            Message::Cancel(block),
        ]
        .iter()
        .map(|m| {
            let mut v = Vec::new();
            m.encode(&mut v);
            v
        })
        .collect()
    }

    #[test]
    fn decodes_the_same_messages_whatever_the_read_sizes() {
        let msgs = messages();
        let stream: Vec<u8> = msgs.concat();
        for step in [1, 2, 3, 5, 13, 4096, 100_000] {
            let mut input = ReadBuf::new();
            let (got, biggest) = feed(&mut input, &stream, step);
            assert_eq!(got, msgs, "read {step} bytes at a time");
            // The largest message is a PIECE of 16 KiB and 13 bytes; the buffer only grows
            // by doubling on full reads, up to the chunk.
            assert!(biggest <= READ_CHUNK, "{step}: grew to {biggest}");
            assert!(input.next_message(MAX).unwrap().is_none());
        }
    }

    #[test]
    fn a_message_bigger_than_the_chunk_grows_the_buffer_once_then_it_shrinks() {
        let mut big = Vec::new();
        Message::Bitfield(&[0x55; 5 * READ_CHUNK]).encode(&mut big);
        let mut stream = big.clone();
        Message::Have(2).encode(&mut stream);
        let mut input = ReadBuf::new();
        let (got, biggest) = feed(&mut input, &stream, 1);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], big);
        // Grown to the message (and doubled once by the read that completed it), no more.
        assert!(biggest <= 2 * big.len(), "{biggest}");
        assert!(input.len() <= READ_CHUNK, "shrunk back once decoded");
    }

    #[test]
    fn a_length_prefix_over_the_maximum_is_refused_before_growing() {
        let mut input = ReadBuf::new();
        let spare = input.spare().unwrap();
        spare[..5].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 7]);
        input.filled(5);
        assert!(input.next_message(MAX).is_err());
        assert_eq!(input.len(), MIN_READ_BUF);
    }

    /// Reads that fill the whole buffer with keep-alives, decoded at once.
    fn full_reads(input: &mut ReadBuf, count: usize) {
        for _ in 0..count {
            let spare = input.spare().unwrap();
            spare.fill(0);
            let n = spare.len();
            input.filled(n);
            while input.next_message(MAX).unwrap().is_some() {}
        }
    }

    #[test]
    fn a_full_read_doubles_the_buffer_up_to_the_chunk_and_a_quiet_one_shrinks() {
        let mut input = ReadBuf::new();
        full_reads(&mut input, 10);
        assert_eq!(input.len(), READ_CHUNK);
        input.set_fast(true);
        full_reads(&mut input, 10);
        assert_eq!(input.len(), FAST_READ_CHUNK);
        // Quiet, and empty: the memory goes back.
        let now = Instant::now();
        let traffic = Traffic::new(now);
        let mut out = WriteBuf::default();
        traffic.shrink_idle(now + SHRINK_AFTER / 2, &mut input, &mut out, true);
        assert_eq!(input.len(), FAST_READ_CHUNK, "not quiet yet");
        traffic.shrink_idle(now + SHRINK_AFTER * 2, &mut input, &mut out, true);
        assert_eq!(input.len(), MIN_READ_BUF);
    }

    #[test]
    fn the_write_buffer_advances_and_resets() {
        let mut out = WriteBuf::default();
        out.push(Message::Have(1));
        out.push(Message::Interested);
        assert_eq!(out.unsent(), 9 + 5);
        out.advance(9);
        assert_eq!(out.pending(), &[0, 0, 0, 1, 2]);
        out.advance(5);
        assert!(out.is_empty());
        assert_eq!(out.unsent(), 0);
    }

    #[test]
    fn the_write_buffer_stays_within_its_room_while_partly_sent() {
        let mut out = WriteBuf::default();
        let cap = 64 * 1024;
        for round in 0..100 {
            out.make_room(cap);
            // Fill up to the mark, as uploads do, then the socket takes a part of it.
            while out.unsent() < cap - 20_000 {
                out.extend(&[round as u8; 16_397]);
            }
            assert!(out.capacity() <= cap, "round {round}");
            out.advance(out.unsent() / 3);
        }
        let left = out.unsent();
        out.advance(left);
        assert!(out.is_empty());
        out.make_room(cap / 4);
        assert!(out.capacity() <= cap / 4, "given back");
    }

    #[test]
    fn sent_bytes_are_handed_out_again_as_slots_without_zeroing() {
        let mut out = WriteBuf::default();
        out.extend(&[7; 100]);
        out.advance(100);
        assert!(out.is_empty());
        // The next slots are the old bytes, not zeroes: nothing was written over them.
        let start = out.len();
        assert_eq!(out.slots(60), &[7; 60][..]);
        out.truncate(start);
        assert!(out.is_empty(), "taken back");
        // Slots filled, a message behind them, then slots past the old end (zeroed once).
        out.slots(10).fill(1);
        out.push(Message::Have(2));
        assert_eq!(out.slots(200).len(), 200);
        let pending = out.pending();
        assert_eq!(pending.len(), 10 + 9 + 200);
        assert_eq!(&pending[..10], &[1; 10]);
        assert_eq!(&pending[10..19], &[0, 0, 0, 5, 4, 0, 0, 0, 2]);
        // A truncate never reaches below what is already written.
        out.advance(15);
        out.truncate(3);
        assert_eq!(out.unsent(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn keepalives_and_the_idle_timeout() {
        let t0 = Instant::now();
        let mut traffic = Traffic::new(t0);
        let mut out = WriteBuf::default();
        traffic
            .handle_tick(t0 + KEEPALIVE_AFTER / 2, &mut out)
            .unwrap();
        assert!(out.is_empty());
        traffic
            .handle_tick(t0 + KEEPALIVE_AFTER + Duration::from_secs(1), &mut out)
            .unwrap();
        assert_eq!(out.pending(), &[0, 0, 0, 0], "a keep-alive");
        // Not a second one while the first is unsent.
        traffic
            .handle_tick(t0 + KEEPALIVE_AFTER + Duration::from_secs(2), &mut out)
            .unwrap();
        assert_eq!(out.unsent(), 4);
        traffic.received(t0 + Duration::from_secs(100));
        assert!(traffic
            .handle_tick(t0 + Duration::from_secs(100) + IDLE_TIMEOUT, &mut out)
            .is_ok());
        assert_eq!(
            traffic.handle_tick(t0 + Duration::from_secs(101) + IDLE_TIMEOUT, &mut out),
            Err(Silent)
        );
    }

    #[test]
    fn rates_are_per_second_of_real_time_and_short_intervals_wait() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(t0);
        assert_eq!(
            meter.measure(t0 + Duration::from_millis(100), 1000, 0),
            None
        );
        assert_eq!(
            meter.measure(t0 + Duration::from_secs(2), 4000, 1000),
            Some(Rates {
                down: 2000,
                up: 500
            })
        );
        assert_eq!(
            meter.measure(t0 + Duration::from_secs(3), 5000, 1000),
            Some(Rates { down: 1000, up: 0 })
        );
    }
}
