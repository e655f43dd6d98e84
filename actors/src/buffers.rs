//! Block buffers: recycled 16 KiB buffers whose total is bounded by a byte budget.
//!
//! Every block of downloaded data lives in a [`Block`] from the time its bytes leave the socket
//! until they are written to disk (or thrown away). A block holds a share of its pool's budget
//! and gives it back when dropped, so the bytes between the sockets and the disk can never
//! exceed the budget, whatever path a block takes. When the budget is spent, peers stop reading
//! their sockets (see [`BlockPool::try_take`] and [`BlockPool::listen`]) and TCP flow control
//! slows the senders down.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use event_listener::{Event, EventListener};
use shoal_engine::lengths::BLOCK_LEN;

/// How many idle buffers a pool keeps for reuse; the rest are freed.
const RECYCLE_CAPACITY: usize = 4096;

/// A budgeted source of block buffers, shared by every peer of a torrent (or a session).
pub struct BlockPool {
    /// The most bytes that blocks of this pool may hold at once.
    limit: usize,
    /// Bytes held by live blocks.
    used: AtomicUsize,
    /// Notified whenever bytes are given back.
    freed: Event,
    /// Idle buffers, ready for reuse.
    idle_tx: Sender<Vec<u8>>,
    /// The other end of `idle_tx`.
    idle_rx: Receiver<Vec<u8>>,
}

impl fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockPool")
            .field("limit", &self.limit)
            .field("used", &self.used.load(Ordering::Relaxed))
            .field("idle", &self.idle_rx.len())
            .finish()
    }
}

impl BlockPool {
    /// A pool whose blocks hold at most `limit` bytes at once (at least one block's worth).
    pub fn new(limit: usize) -> Arc<Self> {
        let (idle_tx, idle_rx) = async_channel::bounded(RECYCLE_CAPACITY);
        Arc::new(Self {
            limit: limit.max(BLOCK_LEN as usize),
            used: AtomicUsize::new(0),
            freed: Event::new(),
            idle_tx,
            idle_rx,
        })
    }

    /// A block of `len` bytes (zeroed length, ready to be filled) if the budget allows it now.
    pub fn try_take(self: &Arc<Self>, len: usize) -> Option<Block> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + len > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + len,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        Some(self.wrap(len))
    }

    /// A block of `len` bytes whatever the budget (for uploads, whose queue is bounded
    /// elsewhere); it still counts against the budget while it lives.
    pub fn take(self: &Arc<Self>, len: usize) -> Block {
        self.used.fetch_add(len, Ordering::AcqRel);
        self.wrap(len)
    }

    /// A block holding a copy of `src` whatever the budget (see [`BlockPool::take`]). Unlike
    /// `take` and then a copy, the buffer is not zeroed first: one pass over the bytes, not two.
    pub fn take_copy(self: &Arc<Self>, src: &[u8]) -> Block {
        self.used.fetch_add(src.len(), Ordering::AcqRel);
        let mut data = self
            .idle_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK_LEN as usize));
        data.clear();
        data.extend_from_slice(src);
        Block {
            data,
            charged: src.len(),
            pool: self.clone(),
        }
    }

    /// A block of `len` bytes whatever the budget (see [`BlockPool::take`]), for a caller that
    /// overwrites every byte (a read from disk): a recycled buffer keeps its old bytes instead
    /// of being zeroed first. Drop the block if the overwrite fails.
    pub fn take_for_overwrite(self: &Arc<Self>, len: usize) -> Block {
        self.used.fetch_add(len, Ordering::AcqRel);
        let mut data = self
            .idle_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK_LEN as usize));
        // Only bytes past the old length are written here (zeros, once per buffer).
        data.resize(len, 0);
        Block {
            data,
            charged: len,
            pool: self.clone(),
        }
    }

    fn wrap(self: &Arc<Self>, len: usize) -> Block {
        let mut data = self
            .idle_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK_LEN as usize));
        data.clear();
        data.resize(len, 0);
        Block {
            data,
            charged: len,
            pool: self.clone(),
        }
    }

    /// A listener notified when bytes are given back. Register it, then call
    /// [`BlockPool::try_take`] again, then wait on it: that order loses no wake-up.
    pub fn listen(&self) -> EventListener {
        self.freed.listen()
    }

    /// Bytes held by live blocks now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn give_back(&self, data: Vec<u8>, charged: usize) {
        self.used.fetch_sub(charged, Ordering::AcqRel);
        self.freed.notify(usize::MAX);
        if data.capacity() <= 2 * BLOCK_LEN as usize {
            // The length is kept, so that `take_for_overwrite` need not zero it again; every
            // other taker clears or overwrites it.
            let _ = self.idle_tx.try_send(data);
        }
    }
}

/// One block's bytes, on loan from a [`BlockPool`]; dropping it returns the buffer and the budget.
pub struct Block {
    /// The bytes.
    data: Vec<u8>,
    /// The budget this block holds.
    charged: usize,
    /// Where the buffer and budget go back to.
    pool: Arc<BlockPool>,
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("len", &self.data.len())
            .finish()
    }
}

impl Deref for Block {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl DerefMut for Block {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        self.pool.give_back(data, self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_enforced_and_returned_on_drop() {
        let pool = BlockPool::new(3 * BLOCK_LEN as usize);
        let a = pool.try_take(BLOCK_LEN as usize).unwrap();
        let b = pool.try_take(BLOCK_LEN as usize).unwrap();
        let c = pool.try_take(BLOCK_LEN as usize).unwrap();
        assert!(pool.try_take(1).is_none());
        assert_eq!(pool.used(), 3 * BLOCK_LEN as usize);
        let listener = pool.listen();
        drop(b);
        // The listener registered before the drop is notified.
        smol::block_on(listener);
        let d = pool.try_take(100).unwrap();
        assert_eq!(d.len(), 100);
        assert!(d.iter().all(|&x| x == 0));
        drop((a, c, d));
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn buffers_are_recycled() {
        let pool = BlockPool::new(1 << 20);
        let mut a = pool.try_take(BLOCK_LEN as usize).unwrap();
        a[0] = 9;
        let ptr = a.as_ptr();
        drop(a);
        let b = pool.try_take(10).unwrap();
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(&b[..], &[0u8; 10]);
    }

    #[test]
    fn take_for_overwrite_reuses_without_zeroing_and_is_charged() {
        let pool = BlockPool::new(1 << 20);
        let mut a = pool.take(BLOCK_LEN as usize);
        a.fill(7);
        drop(a);
        let b = pool.take_for_overwrite(100);
        assert_eq!(b.len(), 100);
        assert_eq!(pool.used(), 100);
        drop(b);
        // `take` still hands out zeros, whatever the buffer held.
        let c = pool.take(BLOCK_LEN as usize);
        assert!(c.iter().all(|&x| x == 0));
        drop(c);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn take_copy_copies_and_is_charged() {
        let pool = BlockPool::new(1 << 20);
        let mut a = pool.take(BLOCK_LEN as usize);
        a.fill(9);
        drop(a);
        // A recycled buffer holds old bytes: the copy must replace all of them.
        let b = pool.take_copy(&[1, 2, 3]);
        assert_eq!(&b[..], &[1, 2, 3]);
        assert_eq!(pool.used(), 3);
        drop(b);
        assert_eq!(pool.used(), 0);
    }
}
