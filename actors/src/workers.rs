//! A fixed pool of OS threads serving one bounded job queue: the home of work that must stay
//! off the executor, hashing and file I/O.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_channel::Sender;

/// A cloneable handle to a pool of worker threads.
pub struct Workers<J> {
    /// The job queue; senders wait while it is full.
    jobs: Sender<J>,
    /// The threads, joined by [`Workers::shutdown`].
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// How many threads were started.
    count: usize,
}

impl<J> Clone for Workers<J> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
            threads: self.threads.clone(),
            count: self.count,
        }
    }
}

impl<J> fmt::Debug for Workers<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.count)
            .field("queued", &self.jobs.len())
            .finish()
    }
}

impl<J: Send + 'static> Workers<J> {
    /// Starts `threads` threads (at least one) named `name-N`, each taking jobs from a queue of
    /// `capacity` and handing them to `serve`.
    pub fn spawn(
        name: &str,
        threads: usize,
        capacity: usize,
        serve: impl Fn(J) + Send + Sync + 'static,
    ) -> Self {
        let count = threads.max(1);
        let (jobs, rx) = async_channel::bounded::<J>(capacity.max(1));
        let serve = Arc::new(serve);
        let handles = (0..count)
            .map(|i| {
                let rx = rx.clone();
                let serve = serve.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv_blocking() {
                            serve(job);
                        }
                    })
                    .expect("spawn a worker thread")
            })
            .collect();
        Self {
            jobs,
            threads: Arc::new(Mutex::new(handles)),
            count,
        }
    }

    /// The job queue.
    pub fn jobs(&self) -> &Sender<J> {
        &self.jobs
    }

    /// How many threads serve the queue.
    pub fn threads(&self) -> usize {
        self.count
    }

    /// Stops taking jobs, lets the threads finish what is queued, and waits for them (off the
    /// executor).
    pub async fn shutdown(&self) {
        self.jobs.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        smol::unblock(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
