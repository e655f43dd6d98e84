//! The hasher pool: SHA-1 checking of complete pieces, fanned out to worker threads.
//!
//! A piece arrives as the blocks it was received in, straight from memory: it is never read
//! back from disk. A piece that verifies goes on to the disk threads to be written; one that
//! fails is dropped (its blocks return to the pool) and reported at once.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_channel::Sender;
use sha1::{Digest, Sha1};

use crate::buffers::Block;
use crate::disk::{DiskJob, PieceDone, PieceOutcome};

/// How many complete pieces may wait for a hasher thread. The picker waits when it is full,
/// which in turn makes peers wait: hashing sets the pace when it is the bottleneck.
pub const HASH_QUEUE: usize = 16;

/// A complete piece to check.
#[derive(Debug)]
pub struct HashJob {
    /// The piece index.
    pub piece: u32,
    /// Its blocks, in order.
    pub blocks: Vec<Block>,
    /// The SHA-1 the metainfo gives for it.
    pub expected: [u8; 20],
    /// Where the disk threads, or the hasher on failure, report the end of the piece.
    pub done: Sender<PieceDone>,
}

/// The hasher pool's handle.
pub struct Hasher {
    /// The job queue, bounded by [`HASH_QUEUE`].
    jobs: Sender<HashJob>,
    /// The worker threads.
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Hasher {
    /// Starts `threads` hashing threads (0: one per core) that pass verified pieces on to `disk`.
    pub fn spawn(threads: usize, disk: Sender<DiskJob>) -> Self {
        let threads = if threads == 0 {
            crate::disk::default_threads()
        } else {
            threads
        };
        let (jobs, rx) = async_channel::bounded::<HashJob>(HASH_QUEUE);
        let disk = Arc::new(disk);
        let threads = (0..threads)
            .map(|i| {
                let rx = rx.clone();
                let disk = disk.clone();
                std::thread::Builder::new()
                    .name(format!("shoal-hash-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv_blocking() {
                            check(job, &disk);
                        }
                    })
                    .expect("spawn a hasher thread")
            })
            .collect();
        Self { jobs, threads }
    }

    /// Queues a piece, waiting while the queue is full.
    pub async fn submit(&self, job: HashJob) -> Result<(), crate::runtime::Gone> {
        self.jobs.send(job).await.map_err(|_| crate::runtime::Gone)
    }

    /// How many threads hash.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Stops the pool once the queued pieces are done, and waits for it (off the executor).
    pub async fn shutdown(mut self) {
        self.jobs.close();
        let threads = std::mem::take(&mut self.threads);
        smol::unblock(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn check(job: HashJob, disk: &Sender<DiskJob>) {
    let mut sha = Sha1::new();
    for b in &job.blocks {
        sha.update(&b[..]);
    }
    let digest: [u8; 20] = sha.finalize().into();
    if digest == job.expected {
        let write = DiskJob::Write {
            piece: job.piece,
            blocks: job.blocks,
            done: job.done,
        };
        if let Err(async_channel::SendError(DiskJob::Write { piece, done, .. })) =
            disk.send_blocking(write)
        {
            let err = std::io::Error::other("disk threads have stopped");
            let _ = done.send_blocking(PieceDone {
                piece,
                outcome: PieceOutcome::WriteFailed(err),
            });
        }
    } else {
        let HashJob {
            piece,
            blocks,
            done,
            ..
        } = job;
        drop(blocks);
        let _ = done.send_blocking(PieceDone {
            piece,
            outcome: PieceOutcome::HashFailed,
        });
    }
}
