//! Rate limits: a [`Limiter`] per direction for the session and one per torrent, shared by their
//! peers, and [`Throttled`], the stream wrapper through which a peer's bytes pass.
//!
//! A limiter is the one piece of state peers share that is not a plain counter: a token bucket
//! ([`shoal_engine::rate::TokenBucket`]) behind a mutex, held for one `take` of the bytes a
//! single read or write may move. A peer that finds the bucket empty waits on a timer for the
//! time the bucket needs to refill, then tries again; a read that is throttled stops reading
//! the socket, so TCP flow control slows the sender. Without a limit (rate 0) no lock is taken.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, Future};
use shoal_engine::rate::TokenBucket;

/// One rate limit, shared by every peer it governs.
#[derive(Debug)]
pub struct Limiter {
    /// The limit in bytes per second (0: none), read without the lock.
    rate: AtomicU64,
    /// The bucket, taken from by every peer.
    bucket: Mutex<TokenBucket>,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Limiter {
    /// A limiter of `rate` bytes per second (0: unlimited).
    pub fn new(rate: u64) -> Self {
        Self {
            rate: AtomicU64::new(rate),
            bucket: Mutex::new(TokenBucket::new(rate, Instant::now())),
        }
    }

    /// The limit in bytes per second (0: none).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Changes the limit (0: none); it applies to every peer at once.
    pub fn set_rate(&self, rate: u64) {
        self.lock().set_rate(rate, Instant::now());
        self.rate.store(rate, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes up to `want` bytes; `Err(wait)` when none are available for `wait`.
    fn take(&self, want: usize) -> Result<usize, Duration> {
        if self.rate() == 0 {
            return Ok(want);
        }
        let now = Instant::now();
        let mut b = self.lock();
        match b.take(now, want as u64) {
            0 => Err(b.wait(now, want as u64).max(Duration::from_millis(1))),
            n => Ok(n as usize),
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 && self.rate() != 0 {
            self.lock().give_back(bytes as u64);
        }
    }
}

/// The limiters one peer's traffic passes through, per direction: its session's, then its
/// torrent's.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Download limiters.
    pub down: Vec<Arc<Limiter>>,
    /// Upload limiters.
    pub up: Vec<Arc<Limiter>>,
}

/// Takes `want` bytes from every limiter in `chain` (the smallest grant wins; the rest is given
/// back), or says how long to wait.
fn take_all(chain: &[Arc<Limiter>], want: usize) -> Result<usize, Duration> {
    let mut granted = want;
    let mut taken: [usize; 4] = [0; 4];
    for (i, l) in chain.iter().enumerate() {
        match l.take(granted) {
            Ok(n) => {
                granted = n;
                if let Some(t) = taken.get_mut(i) {
                    *t = n;
                }
            }
            Err(wait) => {
                for (l, &t) in chain.iter().zip(&taken).take(i) {
                    l.give_back(t);
                }
                return Err(wait);
            }
        }
    }
    // Earlier limiters granted more than a later one allowed: the difference goes back.
    for (l, &t) in chain.iter().zip(&taken) {
        l.give_back(t - granted);
    }
    Ok(granted)
}

/// Gives back what was granted but not moved.
fn give_back_all(chain: &[Arc<Limiter>], bytes: usize) {
    for l in chain {
        l.give_back(bytes);
    }
}

/// A stream whose reads and writes take their bytes from [`Limits`].
pub struct Throttled<S> {
    /// The stream.
    inner: S,
    /// The limiters.
    limits: Limits,
    /// Waiting for the download limiters to refill.
    read_wait: Option<smol::Timer>,
    /// Waiting for the upload limiters to refill.
    write_wait: Option<smol::Timer>,
}

impl<S> std::fmt::Debug for Throttled<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttled")
            .field("limits", &self.limits)
            .finish()
    }
}

impl<S> Throttled<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limits: Limits) -> Self {
        Self {
            inner,
            limits,
            read_wait: None,
            write_wait: None,
        }
    }
}

/// Grants bytes from `chain`, or registers a timer for when there will be some.
fn grant(
    chain: &[Arc<Limiter>],
    want: usize,
    wait: &mut Option<smol::Timer>,
    cx: &mut Context<'_>,
) -> Poll<usize> {
    if let Some(t) = wait {
        if Pin::new(t).poll(cx).is_pending() {
            return Poll::Pending;
        }
        *wait = None;
    }
    loop {
        match take_all(chain, want) {
            Ok(n) => return Poll::Ready(n),
            Err(d) => {
                let mut t = smol::Timer::after(d);
                if Pin::new(&mut t).poll(cx).is_pending() {
                    *wait = Some(t);
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() || this.limits.down.iter().all(|l| l.rate() == 0) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = match grant(&this.limits.down, buf.len(), &mut this.read_wait, cx) {
            Poll::Ready(n) => n,
            Poll::Pending => return Poll::Pending,
        };
        let r = Pin::new(&mut this.inner).poll_read(cx, &mut buf[..n]);
        let used = match &r {
            Poll::Ready(Ok(read)) => *read,
            _ => 0,
        };
        give_back_all(&this.limits.down, n - used);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() || this.limits.up.iter().all(|l| l.rate() == 0) {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let n = match grant(&this.limits.up, buf.len(), &mut this.write_wait, cx) {
            Poll::Ready(n) => n,
            Poll::Pending => return Poll::Pending,
        };
        let r = Pin::new(&mut this.inner).poll_write(cx, &buf[..n]);
        let used = match &r {
            Poll::Ready(Ok(written)) => *written,
            _ => 0,
        };
        give_back_all(&this.limits.up, n - used);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_grants_the_smallest_and_gives_the_rest_back() {
        // Real time passes between the calls: the buckets refill by a few bytes meanwhile.
        let near = |got: Result<usize, Duration>, want: usize| matches!(got, Ok(n) if n >= want && n < want + 2_000);
        let session = Arc::new(Limiter::new(1_000_000));
        let torrent = Arc::new(Limiter::new(20_000));
        let chain = [session.clone(), torrent.clone()];
        // The torrent's bucket holds one burst of 16 KiB (its floor).
        assert!(near(take_all(&chain, 50_000), 16_384));
        // The session's bucket lost only what was granted.
        assert!(near(session.take(1_000_000), 100_000 - 16_384));
        // The torrent's is empty: a wait, and the session loses nothing.
        session.give_back(50_000);
        assert!(take_all(&chain, 1_000).is_err());
        assert!(near(session.take(1_000_000), 50_000));
    }

    #[test]
    fn no_limit_takes_no_lock_and_grants_all() {
        let free = Arc::new(Limiter::default());
        assert_eq!(take_all(&[free.clone()], 1 << 30), Ok(1 << 30));
        free.set_rate(10_000);
        assert_eq!(free.rate(), 10_000);
        assert_eq!(take_all(&[free], 1 << 30), Ok(16_384));
    }
}
