//! Block buffers: recycled 16 KiB buffers, and a count of the bytes they hold.
//!
//! Every block of downloaded data lives in a [`Block`] from the time its bytes leave the socket
//! until they are written to disk (or thrown away); an uploaded block, from the disk read until
//! it is queued on the socket. Dropping a block returns its buffer to the pool for the next
//! block, so the steady state allocates nothing, and takes its bytes off the pool's count.
//!
//! The pool does not refuse blocks: what bounds the bytes between the sockets and the disk is
//! the picker, which starts no new piece while the torrent's disk budget is spent, together with
//! the bounded queues behind it (see `DESIGN.md`). The count is there to observe that.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_engine::lengths::BLOCK_LEN;

/// How many idle buffers a pool keeps for reuse: 64 MiB, one torrent's default disk budget, so
/// that a download held up by its disk recycles its buffers instead of returning them to the
/// allocator and faulting them in again (which made a slow disk slower still). The rest are
/// freed. One pool serves a whole session (see `Disk::blocks`).
const RECYCLE_CAPACITY: usize = 4096;

/// A source of recycled block buffers, shared by every torrent using the same disk threads.
pub struct BlockPool {
    /// Bytes held by live blocks.
    used: AtomicUsize,
    /// Idle buffers, ready for reuse, the most recently returned last: it is handed out first
    /// (last in, first out), while its bytes may still be in a CPU cache. Writing a received
    /// block into a buffer idle for longer costs a trip to memory for every cache line.
    idle: Mutex<Vec<Vec<u8>>>,
}

impl fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockPool")
            .field("used", &self.used.load(Ordering::Relaxed))
            .field("idle", &self.idle().len())
            .finish()
    }
}

impl BlockPool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            idle: Mutex::new(Vec::with_capacity(RECYCLE_CAPACITY)),
        })
    }

    /// A block of `len` zeroed bytes.
    pub fn take(self: &Arc<Self>, len: usize) -> Block {
        self.used.fetch_add(len, Ordering::AcqRel);
        self.wrap(len)
    }

    /// A block holding a copy of `src`. Unlike
    /// `take` and then a copy, the buffer is not zeroed first: one pass over the bytes, not two.
    pub fn take_copy(self: &Arc<Self>, src: &[u8]) -> Block {
        self.used.fetch_add(src.len(), Ordering::AcqRel);
        let mut data = self.recycled();
        data.clear();
        data.extend_from_slice(src);
        Block {
            data,
            charged: src.len(),
            pool: self.clone(),
        }
    }

    /// A block of `len` bytes for a caller that
    /// overwrites every byte (a read from disk): a recycled buffer keeps its old bytes instead
    /// of being zeroed first. Drop the block if the overwrite fails.
    pub fn take_for_overwrite(self: &Arc<Self>, len: usize) -> Block {
        self.used.fetch_add(len, Ordering::AcqRel);
        let mut data = self.recycled();
        // Only bytes past the old length are written here (zeros, once per buffer).
        data.resize(len, 0);
        Block {
            data,
            charged: len,
            pool: self.clone(),
        }
    }

    fn wrap(self: &Arc<Self>, len: usize) -> Block {
        let mut data = self.recycled();
        data.clear();
        data.resize(len, 0);
        Block {
            data,
            charged: len,
            pool: self.clone(),
        }
    }

    /// The most recently returned idle buffer, or a new one.
    fn recycled(&self) -> Vec<u8> {
        // The lock is released before a new buffer is allocated.
        let idle = self.idle().pop();
        idle.unwrap_or_else(|| Vec::with_capacity(BLOCK_LEN as usize))
    }

    /// The idle list. Its lock is held for a push or a pop only, so a panic cannot leave it
    /// half changed: a poisoned lock is taken over as it is.
    fn idle(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held by live blocks now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn give_back(&self, data: Vec<u8>, charged: usize) {
        self.used.fetch_sub(charged, Ordering::AcqRel);
        if data.capacity() <= 2 * BLOCK_LEN as usize {
            // The length is kept, so that `take_for_overwrite` need not zero it again; every
            // other taker clears or overwrites it.
            let mut idle = self.idle();
            if idle.len() < RECYCLE_CAPACITY {
                idle.push(data);
            }
        }
    }
}

/// One block's bytes, on loan from a [`BlockPool`]; dropping it returns the buffer.
pub struct Block {
    /// The bytes.
    data: Vec<u8>,
    /// The bytes this block counts for in its pool.
    charged: usize,
    /// Where the buffer goes back to.
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
    fn blocks_are_counted_and_buffers_recycled() {
        let pool = BlockPool::new();
        let mut a = pool.take(BLOCK_LEN as usize);
        let b = pool.take(100);
        assert_eq!(pool.used(), BLOCK_LEN as usize + 100);
        a[0] = 9;
        let ptr = a.as_ptr();
        drop(a);
        let c = pool.take(10);
        assert_eq!(c.as_ptr(), ptr, "the buffer is reused");
        assert_eq!(&c[..], &[0u8; 10], "and zeroed for `take`");
        drop((b, c));
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn the_buffer_returned_last_is_handed_out_first() {
        let pool = BlockPool::new();
        let (a, b) = (pool.take(BLOCK_LEN as usize), pool.take(BLOCK_LEN as usize));
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        drop(a);
        drop(b);
        let c = pool.take_copy(&[1; 16]);
        assert_eq!(
            c.as_ptr(),
            pb,
            "the most recently returned buffer comes back first"
        );
        let d = pool.take_for_overwrite(16);
        assert_eq!(d.as_ptr(), pa);
    }

    #[test]
    fn take_for_overwrite_reuses_without_zeroing_and_is_charged() {
        let pool = BlockPool::new();
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
        let pool = BlockPool::new();
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
