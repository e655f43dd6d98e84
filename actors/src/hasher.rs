//! The hasher pool: SHA-1 (or v2 merkle, BEP 52) checking of complete pieces, fanned out to worker threads shared by
//! every torrent of a session.
//!
//! A piece arrives as the blocks it was received in, straight from memory: it is never read
//! back from disk. A piece that verifies goes on to the disk threads to be written; one that
//! fails is dropped (its blocks return to the pool) and reported at once.

use std::sync::Arc;

use async_channel::Sender;
use sha1::{Digest, Sha1};

use shoal_engine::merkle::PieceHash;

use crate::buffers::Block;
use crate::disk::{DiskJob, PieceDone, PieceOutcome, Storage};
use crate::workers::Workers;

/// How many complete pieces may wait for a hasher thread. Pickers wait when it is full, which
/// in turn makes peers wait: hashing sets the pace when it is the bottleneck.
pub const HASH_QUEUE: usize = 16;

/// A complete piece to check.
#[derive(Debug)]
pub struct HashJob {
    /// The piece index.
    pub piece: u32,
    /// Its blocks, in order.
    pub blocks: Vec<Block>,
    /// What the metainfo says it hashes to (SHA-1, or a v2 merkle subtree root).
    pub expected: PieceHash,
    /// The torrent's files, where the piece is written once verified.
    pub storage: Arc<Storage>,
    /// Where the disk threads, or the hasher on failure, report the end of the piece.
    pub done: Sender<PieceDone>,
    /// Whether to report each block's SHA-1 even if the piece is good (a failed piece's are
    /// always reported).
    pub want_block_digests: bool,
}

/// The hasher pool's handle, cloned by every torrent's picker.
#[derive(Clone, Debug)]
pub struct Hasher {
    /// The threads and their job queue, bounded by [`HASH_QUEUE`].
    workers: Workers<HashJob>,
}

impl Hasher {
    /// Starts `threads` hashing threads (0: one per core) that pass verified pieces on to `disk`.
    pub fn spawn(threads: usize, disk: Sender<DiskJob>) -> Self {
        let count = if threads == 0 {
            crate::disk::default_threads()
        } else {
            threads
        };
        Self {
            workers: Workers::spawn("shoal-hash", count, HASH_QUEUE, move |job| {
                check(job, &disk)
            }),
        }
    }

    /// Queues a piece, waiting while the queue is full.
    pub async fn submit(&self, job: HashJob) -> Result<(), crate::runtime::Gone> {
        self.workers
            .jobs()
            .send(job)
            .await
            .map_err(|_| crate::runtime::Gone)
    }

    /// How many threads hash.
    pub fn threads(&self) -> usize {
        self.workers.threads()
    }

    /// Stops the pool once the queued pieces are done, and waits for it (off the executor).
    /// Call it after every torrent using the pool has stopped.
    pub async fn shutdown(&self) {
        self.workers.shutdown().await;
    }
}

fn check(job: HashJob, disk: &Sender<DiskJob>) {
    let good = job.expected.verify(job.blocks.iter().map(|b| &b[..]));
    let HashJob {
        piece,
        blocks,
        storage,
        done,
        expected: _,
        want_block_digests,
    } = job;
    let block_digests = |blocks: &[Block]| -> Vec<[u8; 20]> {
        blocks.iter().map(|b| Sha1::digest(&b[..]).into()).collect()
    };
    if good {
        let write = DiskJob::Write {
            storage,
            piece,
            block_digests: if want_block_digests {
                block_digests(&blocks)
            } else {
                Vec::new()
            },
            blocks,
            done,
        };
        if let Err(async_channel::SendError(DiskJob::Write { piece, done, .. })) =
            disk.send_blocking(write)
        {
            let err = std::io::Error::other("disk threads have stopped");
            let _ = done.send_blocking(PieceDone {
                piece,
                outcome: PieceOutcome::WriteFailed(err),
                block_digests: Vec::new(),
            });
        }
    } else {
        // Only on failure: which block was wrong is found when the piece later verifies.
        let digests = block_digests(&blocks);
        drop(blocks);
        let _ = done.send_blocking(PieceDone {
            piece,
            outcome: PieceOutcome::HashFailed,
            block_digests: digests,
        });
    }
}
