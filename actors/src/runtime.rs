//! A small actor runtime on smol: executor threads, bounded mailboxes, handles, replies and
//! supervision.
//!
//! An actor is a free `async fn` that owns its state and loops over a [`Mailbox`]. The only way
//! in is an [`Addr`], a cloneable handle over a bounded channel. A request carries a [`ReplyTo`]
//! that is consumed when used, so it is answered at most once; a requester whose reply never
//! comes learns that the actor is gone ([`Gone`]). Backpressure comes from the bounded
//! mailboxes: a sender waits when the actor is behind.
//!
//! ```
//! use shoal_actors::runtime::{mailbox, ReplyTo, Runtime};
//!
//! enum Msg {
//!     Add(u64),
//!     Total(ReplyTo<u64>),
//! }
//!
//! let rt = Runtime::new(2);
//! let (addr, mut inbox) = mailbox::<Msg>(16);
//! let actor = rt.spawn(async move {
//!     let mut total = 0;
//!     while let Some(msg) = inbox.recv().await {
//!         match msg {
//!             Msg::Add(n) => total += n,
//!             Msg::Total(reply) => reply.send(total),
//!         }
//!     }
//! });
//! let total = rt.block_on(async {
//!     addr.send(Msg::Add(2)).await.unwrap();
//!     addr.send(Msg::Add(40)).await.unwrap();
//!     addr.call(Msg::Total).await.unwrap()
//! });
//! assert_eq!(total, 42);
//! drop(addr); // the actor ends when every handle is gone
//! rt.block_on(actor);
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_channel::{Receiver, Sender};
use futures_lite::FutureExt;

pub use smol::Task;

/// The actor is gone: its mailbox is closed, or it dropped a request without answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actor is gone")
    }
}

impl std::error::Error for Gone {}

/// Why [`Addr::try_send`] failed.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<M> {
    /// The mailbox is full: the actor is behind. The message is handed back.
    Full(M),
    /// The actor is gone. The message is handed back.
    Closed(M),
}

impl<M> fmt::Display for TrySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => write!(f, "mailbox is full"),
            Self::Closed(_) => write!(f, "actor is gone"),
        }
    }
}

impl<M: fmt::Debug> std::error::Error for TrySendError<M> {}

/// A cloneable handle to an actor: sends it messages of type `M`.
pub struct Addr<M> {
    /// The sending side of the actor's bounded mailbox.
    tx: Sender<M>,
}

impl<M> Clone for Addr<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<M> fmt::Debug for Addr<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Addr")
            .field("queued", &self.tx.len())
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl<M> Addr<M> {
    /// Sends a message, waiting while the mailbox is full.
    pub async fn send(&self, msg: M) -> Result<(), Gone> {
        self.tx.send(msg).await.map_err(|_| Gone)
    }

    /// Sends a message from a thread outside the executor, blocking while the mailbox is full.
    pub fn send_blocking(&self, msg: M) -> Result<(), Gone> {
        self.tx.send_blocking(msg).map_err(|_| Gone)
    }

    /// Sends a message if there is room now.
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.tx.try_send(msg).map_err(|e| match e {
            async_channel::TrySendError::Full(m) => TrySendError::Full(m),
            async_channel::TrySendError::Closed(m) => TrySendError::Closed(m),
        })
    }

    /// Sends without waiting: when the mailbox is full, a task on `spawner` waits to deliver
    /// it (so a caller that must not block, such as the session adding a torrent, never does).
    /// A message to an ended actor is dropped.
    pub fn tell(&self, msg: M, spawner: &Spawner)
    where
        M: Send + 'static,
    {
        if let Err(TrySendError::Full(msg)) = self.try_send(msg) {
            let addr = self.clone();
            spawner
                .spawn(async move {
                    let _ = addr.send(msg).await;
                })
                .detach();
        }
    }

    /// Sends a request built by `make` around a fresh reply port and waits for the answer.
    pub async fn call<R>(&self, make: impl FnOnce(ReplyTo<R>) -> M) -> Result<R, Gone> {
        let (reply, answer) = reply_port();
        self.send(make(reply)).await?;
        answer.recv().await
    }

    /// Whether the actor's mailbox is closed (the actor has ended).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Closes the mailbox: the actor sees the end of its messages once it has read those queued.
    pub fn close(&self) {
        self.tx.close();
    }
}

/// The receiving side of an actor's mailbox, owned by the actor.
pub struct Mailbox<M> {
    /// The receiving side of the bounded channel.
    rx: Receiver<M>,
}

impl<M> fmt::Debug for Mailbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl<M> Mailbox<M> {
    /// The next message, or `None` once every [`Addr`] is dropped (or the mailbox closed) and the
    /// queue is empty.
    pub async fn recv(&mut self) -> Option<M> {
        self.rx.recv().await.ok()
    }

    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Option<M> {
        self.rx.try_recv().ok()
    }

    /// The next message, blocking the thread: for actors that run on a thread of their own.
    pub fn recv_blocking(&mut self) -> Option<M> {
        self.rx.recv_blocking().ok()
    }

    /// The underlying channel, for polling it as a stream inside a hand-written event loop.
    pub fn receiver(&mut self) -> &mut Receiver<M> {
        &mut self.rx
    }
}

/// An actor that has ended drops its mailbox: the channel closes, so later sends fail at once,
/// and requests still queued are dropped with their reply ports, so every caller waiting on
/// one learns that the actor is gone ([`Gone`]) instead of waiting for ever. (A closed channel
/// alone would keep queued messages as long as any [`Addr`] lives.)
impl<M> Drop for Mailbox<M> {
    fn drop(&mut self) {
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

/// Creates a mailbox holding at most `capacity` messages, and its first handle.
pub fn mailbox<M>(capacity: usize) -> (Addr<M>, Mailbox<M>) {
    let (tx, rx) = async_channel::bounded(capacity.max(1));
    (Addr { tx }, Mailbox { rx })
}

/// A one-shot reply port: travels inside a request and is consumed by the answer.
pub struct ReplyTo<R> {
    /// A channel of capacity one; only one value is ever sent on it.
    tx: Sender<R>,
}

impl<R> fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyTo")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

impl<R> ReplyTo<R> {
    /// Answers the request. If the requester has gone, the answer is dropped.
    pub fn send(self, value: R) {
        // Capacity one and used once: this can only fail when the requester is gone.
        let _ = self.tx.try_send(value);
    }

    /// Whether the requester has stopped waiting.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The requester's side of a [`ReplyTo`].
pub struct Answer<R> {
    /// The receiving side of the one-value channel.
    rx: Receiver<R>,
}

impl<R> fmt::Debug for Answer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

impl<R> Answer<R> {
    /// Waits for the answer; [`Gone`] if the port was dropped unanswered.
    pub async fn recv(self) -> Result<R, Gone> {
        self.rx.recv().await.map_err(|_| Gone)
    }
}

/// A reply port and the answer to wait on.
pub fn reply_port<R>() -> (ReplyTo<R>, Answer<R>) {
    let (tx, rx) = async_channel::bounded(1);
    (ReplyTo { tx }, Answer { rx })
}

/// A multi-threaded executor shared by every actor, run by a fixed number of threads.
///
/// Dropping the runtime stops its threads; tasks still on it are dropped (and so cancelled).
pub struct Runtime {
    /// The executor every task is spawned on.
    executor: Arc<smol::Executor<'static>>,
    /// Closed on drop, which tells every executor thread to stop.
    stop: Sender<()>,
    /// The executor threads, joined on drop.
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Runtime {
    /// Starts `threads` executor threads (at least one); 0 means one per core.
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let executor = Arc::new(smol::Executor::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let threads = (0..threads)
            .map(|i| {
                let ex = executor.clone();
                let stopped = stopped.clone();
                std::thread::Builder::new()
                    .name(format!("shoal-exec-{i}"))
                    .spawn(move || {
                        smol::block_on(ex.run(async {
                            let _ = stopped.recv().await;
                        }))
                    })
                    .expect("spawn an executor thread")
            })
            .collect();
        Self {
            executor,
            stop,
            threads,
        }
    }

    /// A cheap handle for spawning tasks from anywhere.
    pub fn handle(&self) -> Spawner {
        Spawner {
            executor: self.executor.clone(),
        }
    }

    /// Spawns a task on the executor. Dropping the returned task cancels it; `detach` it to let
    /// it run on its own.
    pub fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        self.executor.spawn(fut)
    }

    /// Runs `fut` on the calling thread until it completes, while the executor threads run
    /// every spawned task.
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        smol::block_on(self.executor.run(fut))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A cloneable handle to a [`Runtime`]'s executor.
#[derive(Clone)]
pub struct Spawner {
    /// The shared executor.
    executor: Arc<smol::Executor<'static>>,
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawner").finish_non_exhaustive()
    }
}

impl Spawner {
    /// Spawns a task on the shared executor.
    pub fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Task<T> {
        self.executor.spawn(fut)
    }
}

/// How a supervised child ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// It returned this value.
    Finished(T),
    /// It panicked, with this message.
    Panicked(String),
}

/// A supervised child has ended: which one (its key in the supervisor) and how.
#[derive(Debug)]
pub struct Exit<T> {
    /// The key [`Supervisor::spawn`] returned for the child.
    pub key: usize,
    /// How it ended.
    pub outcome: Outcome<T>,
}

/// Owns a parent's child tasks and tells the parent when each one ends, whether it returned or
/// panicked. Dropping the supervisor cancels every child still running.
pub struct Supervisor<T> {
    /// The running children, by key. Dropping a task cancels it.
    children: slab::Slab<Task<()>>,
    /// Where children report their end; the capacity bounds nothing since a child sends once,
    /// and every child has a slot reserved (see `spawn`).
    exits_tx: Sender<Exit<T>>,
    /// The parent's side of `exits_tx`.
    exits_rx: Receiver<Exit<T>>,
    /// Where children run.
    spawner: Spawner,
}

impl<T> fmt::Debug for Supervisor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("children", &self.children.len())
            .finish()
    }
}

impl<T: Send + 'static> Supervisor<T> {
    /// A supervisor whose children run on `spawner`.
    pub fn new(spawner: Spawner) -> Self {
        // Unbounded in type only: at most one exit per live child is ever queued, and the number
        // of children is bounded by the parent's own limits (peer limits for a torrent).
        let (exits_tx, exits_rx) = async_channel::unbounded();
        Self {
            children: slab::Slab::new(),
            exits_tx,
            exits_rx,
            spawner,
        }
    }

    /// Spawns a supervised child and returns its key.
    pub fn spawn(&mut self, fut: impl Future<Output = T> + Send + 'static) -> usize {
        let entry = self.children.vacant_entry();
        let key = entry.key();
        let exits = self.exits_tx.clone();
        let task = self.spawner.spawn(async move {
            let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(v) => Outcome::Finished(v),
                Err(panic) => Outcome::Panicked(panic_message(&*panic)),
            };
            let _ = exits.try_send(Exit { key, outcome });
        });
        entry.insert(task);
        key
    }

    /// Waits for the next child to end and forgets it. Pending forever when there are none.
    pub async fn next_exit(&mut self) -> Exit<T> {
        let exit = self
            .exits_rx
            .recv()
            .await
            .expect("the supervisor holds a sender");
        if let Some(task) = self.children.try_remove(exit.key) {
            // Already finished: detaching just drops the finished handle.
            task.detach();
        }
        exit
    }

    /// How many children are running.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether no child is running.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Cancels a child now (no exit is reported for it).
    pub fn cancel(&mut self, key: usize) {
        self.children.try_remove(key);
    }

    /// Waits until every child has ended, collecting their exits.
    pub async fn join_all(&mut self) -> Vec<Exit<T>> {
        let mut exits = Vec::new();
        while !self.children.is_empty() {
            exits.push(self.next_exit().await);
        }
        exits
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_request_queued_when_the_actor_ends_is_gone_not_lost() {
        let (addr, inbox) = mailbox::<ReplyTo<u32>>(4);
        // Queued while the actor is still there, never read: the actor ends with it queued.
        let (reply, answer) = reply_port();
        smol::block_on(addr.send(reply)).unwrap();
        drop(inbox);
        assert_eq!(smol::block_on(answer.recv()), Err(Gone));
        // And a request after the end fails at once, though a handle is alive.
        assert_eq!(smol::block_on(addr.call(|r| r)), Err(Gone));
    }

    #[test]
    fn call_is_answered_and_gone_when_dropped() {
        let rt = Runtime::new(2);
        let (addr, mut inbox) = mailbox::<ReplyTo<u32>>(4);
        let t = rt.spawn(async move {
            let first = inbox.recv().await.unwrap();
            first.send(7);
            let second = inbox.recv().await.unwrap();
            drop(second); // never answered
        });
        rt.block_on(async {
            assert_eq!(addr.call(|r| r).await, Ok(7));
            assert_eq!(addr.call(|r| r).await, Err(Gone));
        });
        rt.block_on(t);
        assert!(rt
            .block_on(addr.send(ReplyTo {
                tx: async_channel::bounded(1).0
            }))
            .is_err());
    }

    #[test]
    fn bounded_mailbox_applies_backpressure() {
        let (addr, mut inbox) = mailbox::<u32>(2);
        addr.try_send(1).unwrap();
        addr.try_send(2).unwrap();
        assert_eq!(addr.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(inbox.try_recv(), Some(1));
        addr.try_send(3).unwrap();
        drop(inbox);
        assert_eq!(addr.try_send(4), Err(TrySendError::Closed(4)));
    }

    #[test]
    fn supervisor_sees_finish_and_panic() {
        let rt = Runtime::new(1);
        let mut sup = Supervisor::<u32>::new(rt.handle());
        let a = sup.spawn(async { 5 });
        let b = sup.spawn(async {
            smol::Timer::after(Duration::from_millis(10)).await;
            panic!("child failed on purpose")
        });
        let exits = rt.block_on(sup.join_all());
        assert_eq!(exits.len(), 2);
        for exit in exits {
            match exit.outcome {
                Outcome::Finished(v) => {
                    assert_eq!(exit.key, a);
                    assert_eq!(v, 5);
                }
                Outcome::Panicked(msg) => {
                    assert_eq!(exit.key, b);
                    assert!(msg.contains("on purpose"), "{msg}");
                }
            }
        }
        assert!(sup.is_empty());
    }

    #[test]
    fn dropping_supervisor_cancels_children() {
        let rt = Runtime::new(1);
        let (addr, mut inbox) = mailbox::<()>(1);
        let mut sup = Supervisor::<()>::new(rt.handle());
        sup.spawn(async move {
            // Holds `addr` until cancelled.
            let _keep = addr;
            futures_lite::future::pending::<()>().await;
        });
        drop(sup);
        // Once the child is cancelled its handle is dropped and the mailbox ends.
        let end = rt.block_on(async {
            async {
                smol::Timer::after(Duration::from_secs(5)).await;
                "timeout"
            }
            .or(async {
                inbox.recv().await;
                "closed"
            })
            .await
        });
        assert_eq!(end, "closed");
    }
}
