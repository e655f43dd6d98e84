//! Message stream encryption (MSE/PE) over a peer's byte stream: the policy, the RC4 stream
//! wrapper, and the loops that drive the engine's sans-IO handshake (`shoal_engine::mse`) on a
//! socket, as the dialling side and as the answering side.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shoal_engine::mse::{self, Cipher, Done, Policy, Secrets};
use shoal_engine::InfoHash;

/// Whether a session's peer connections are encrypted (MSE/PE), both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Dial encrypted and fall back to plaintext (one plain redial) when the peer refuses;
    /// accept both. RC4 is chosen whenever the other side offers it.
    #[default]
    Prefer,
    /// Only RC4-encrypted connections, both ways: plaintext peers are neither dialled nor
    /// accepted.
    Require,
    /// Plain BitTorrent only: we never dial encrypted, and incoming MSE openings are closed.
    Off,
}

impl Encryption {
    /// The engine's policy for a handshake under this setting (`None`: no MSE at all).
    pub(crate) fn policy(self) -> Option<Policy> {
        match self {
            Encryption::Prefer => Some(Policy::Either),
            Encryption::Require => Some(Policy::RequireRc4),
            Encryption::Off => None,
        }
    }
}

impl std::str::FromStr for Encryption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prefer" => Ok(Encryption::Prefer),
            "require" => Ok(Encryption::Require),
            "off" => Ok(Encryption::Off),
            other => Err(format!(
                "unknown encryption policy {other:?} (prefer, require or off)"
            )),
        }
    }
}

/// Incoming MSE handshakes in progress at once, per session; openings beyond it are closed at
/// once. Each costs two 768-bit modular exponentiations (about a millisecond of CPU together)
/// and up to ~2 KiB of buffers, so 32 at a time bounds what a flood of openings can take (a
/// few tens of milliseconds of CPU per round of them, each held at most the handshake
/// timeout), while honest peers, which finish in one round trip, rarely overlap that much.
pub(crate) const MAX_MSE_HANDSHAKES: usize = 32;

/// Bytes encrypted per write call: the peer loop writes its whole queue at once, and one
/// chunk at a time keeps the wrapper's buffer small (and it is freed once sent, see
/// [`KEEP_OUT`]).
const WRITE_CHUNK: usize = 64 * 1024;

/// An encryption buffer up to this size is kept between writes (the HAVEs and requests of a
/// quiet connection); a bigger one is freed once all of it is sent.
const KEEP_OUT: usize = 4 * 1024;

/// Bytes read from the socket per step of the handshake (the handshake itself buffers at most
/// `mse::MAX_BUFFERED`).
const HANDSHAKE_READ: usize = 2048;

/// The count of incoming MSE handshakes in progress, against [`MAX_MSE_HANDSHAKES`].
#[derive(Debug, Default)]
pub(crate) struct HandshakeSlots {
    /// Handshakes in progress.
    used: AtomicUsize,
}

/// One incoming handshake's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct HandshakeSlot(Arc<HandshakeSlots>);

impl HandshakeSlots {
    /// Takes a slot, unless [`MAX_MSE_HANDSHAKES`] are in use.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<HandshakeSlot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_MSE_HANDSHAKES).then_some(n + 1)
            })
            .ok()
            .map(|_| HandshakeSlot(self.clone()))
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Finds a torrent of ours by `HASH('req2', info_hash)`.
pub(crate) type SkeyLookup = Arc<dyn Fn(&[u8; 20]) -> Option<InfoHash> + Send + Sync>;

/// A stream after an MSE handshake: RC4 both ways when RC4 was selected, plain otherwise, with
/// the bytes the handshake read past its end (decrypted) served first.
///
/// Writing encrypts the caller's bytes into one reused buffer and sends from it. Bytes
/// encrypted but not yet taken by the socket stay there and are reported as not written, so
/// the caller's next write must begin with those same bytes (as `write_all` and the peer loop
/// do: they retry with what is left); the wrapper then sends them from its buffer, already
/// encrypted, and encrypts only what follows. Reading decrypts in place in the caller's buffer.
pub(crate) struct MseStream<S> {
    /// The socket (TCP or uTP).
    inner: S,
    /// The keystreams; `None` when the peers chose plaintext.
    cipher: Option<Cipher>,
    /// Clear bytes read before the stream began (the initial payload and what the handshake
    /// read past its end), served before the socket's.
    prefix: Vec<u8>,
    /// How much of `prefix` was served.
    prefix_at: usize,
    /// Encrypted bytes not yet taken by the socket: they are the first bytes of the caller's
    /// next write.
    out: Vec<u8>,
    /// How much of `out` the socket took.
    out_at: usize,
}

impl<S> MseStream<S> {
    /// Wraps `inner` with `cipher` (if any), serving `prefix` (clear) first.
    pub(crate) fn new(inner: S, cipher: Option<Cipher>, prefix: Vec<u8>) -> Self {
        Self {
            inner,
            cipher,
            prefix,
            prefix_at: 0,
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Whether the stream is RC4-encrypted.
    pub(crate) fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.prefix_at < this.prefix.len() {
            let left = &this.prefix[this.prefix_at..];
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            this.prefix_at += n;
            if this.prefix_at == this.prefix.len() {
                this.prefix = Vec::new();
                this.prefix_at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(c) = this.cipher.as_mut() {
            c.decrypt(&mut buf[..n]);
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(cipher) = this.cipher.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if this.out_at == this.out.len() {
            // Nothing held back: encrypt the next chunk of the caller's bytes.
            let n = buf.len().min(WRITE_CHUNK);
            this.out.clear();
            this.out.extend_from_slice(&buf[..n]);
            cipher.encrypt(&mut this.out);
            this.out_at = 0;
        } else if buf.len() < this.out.len() - this.out_at {
            // The caller did not come back with the bytes we encrypted for it: the keystream
            // has moved past them, so the stream cannot go on.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "encrypted write retried with fewer bytes",
            )));
        }
        if this.out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.out[this.out_at..]))?;
        this.out_at += n;
        if this.out_at == this.out.len() && this.out.capacity() > KEEP_OUT {
            // All of it went out: give the memory back. Thousands of connections that once
            // sent a burst would otherwise each keep a whole chunk (8 KiB each in the swarm
            // bench); allocating it again costs far less than encrypting it.
            this.out = Vec::new();
            this.out_at = 0;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// Fresh secrets for one handshake from the operating system's generator.
fn secrets() -> io::Result<Secrets> {
    let mut random = [0u8; Secrets::RANDOM_LEN];
    getrandom::fill(&mut random)
        .map_err(|e| io::Error::other(format!("no randomness for mse: {e}")))?;
    Ok(Secrets::from_random(&random))
}

/// Runs the initiator's side over `stream`: asks for `info_hash` under `policy`, carrying
/// `payload` (our BitTorrent handshake) as the initial payload.
pub(crate) async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    info_hash: InfoHash,
    policy: Policy,
    payload: &[u8],
) -> io::Result<MseStream<S>> {
    let hs = mse::Handshake::initiator(info_hash, policy, secrets()?, payload).map_err(invalid)?;
    let (done, rest) = drive(&mut stream, hs, &[]).await?;
    Ok(finish(stream, done, rest))
}

/// Runs the responder's side over `stream`, whose first bytes (`first`, already read) are not
/// a plain BitTorrent handshake. Returns the stream and the torrent the initiator asked for.
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    first: &[u8],
    policy: Policy,
    lookup: SkeyLookup,
) -> io::Result<(MseStream<S>, InfoHash)> {
    let hs = mse::Handshake::responder(policy, secrets()?, Box::new(move |h| lookup(h)));
    let (done, rest) = drive(&mut stream, hs, first).await?;
    let info_hash = done.info_hash;
    Ok((finish(stream, done, rest), info_hash))
}

/// The stream after a handshake: its initial payload, then the rest it read, decrypted.
fn finish<S>(stream: S, mut done: Done, mut rest: Vec<u8>) -> MseStream<S> {
    if let Some(c) = done.cipher.as_mut() {
        c.decrypt(&mut rest);
    }
    let mut prefix = std::mem::take(&mut done.initial_payload);
    prefix.extend_from_slice(&rest);
    MseStream::new(stream, done.cipher, prefix)
}

/// Shuttles bytes between the socket and the machine until it is done; returns its outcome and
/// the bytes read past the handshake's end (still as they came off the wire).
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut hs: mse::Handshake,
    first: &[u8],
) -> io::Result<(Done, Vec<u8>)> {
    let mut rest = feed(&mut hs, first)?;
    let mut buf = [0u8; HANDSHAKE_READ];
    loop {
        let mut wrote = false;
        while let Some(out) = hs.poll_output() {
            stream.write_all(&out).await?;
            wrote = true;
        }
        if wrote {
            stream.flush().await?;
        }
        if let Some(done) = hs.poll_done() {
            return Ok((done, rest));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed during the mse handshake",
            ));
        }
        rest = feed(&mut hs, &buf[..n])?;
    }
}

/// Feeds `input` to the machine; returns what it did not take (only once it is done).
fn feed(hs: &mut mse::Handshake, mut input: &[u8]) -> io::Result<Vec<u8>> {
    while !input.is_empty() && !hs.is_done() {
        let used = hs.handle_input(input).map_err(invalid)?;
        if used == 0 && !hs.is_done() {
            break;
        }
        input = &input[used..];
    }
    Ok(input.to_vec())
}

fn invalid(e: mse::MseError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes per call and says `Pending` every other call.
    struct Choppy {
        /// What it took.
        got: Vec<u8>,
        /// Most bytes per call.
        max: usize,
        /// Whether the next call is refused.
        refuse: bool,
    }

    impl AsyncWrite for Choppy {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.refuse = !this.refuse;
            if this.refuse {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(this.max);
            this.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Choppy {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.got.len()).min(this.max);
            buf[..n].copy_from_slice(&this.got[..n]);
            this.got.drain(..n);
            Poll::Ready(Ok(n))
        }
    }

    /// Two ciphers of one connection, from a handshake run in memory.
    fn ciphers() -> (Cipher, Cipher) {
        let hash = InfoHash([3; 20]);
        let s = |k: u8| Secrets {
            private_key: [k; 20],
            pad: vec![k; 5],
            crypto_pad_len: 7,
        };
        let mut a = mse::Handshake::initiator(hash, Policy::RequireRc4, s(1), b"ia").unwrap();
        let mut b = mse::Handshake::responder_for(Policy::PreferRc4, s(2), &[hash]);
        while !(a.is_done() && b.is_done()) {
            while let Some(o) = a.poll_output() {
                b.handle_input(&o).unwrap();
            }
            while let Some(o) = b.poll_output() {
                a.handle_input(&o).unwrap();
            }
        }
        let (a, b) = (a.poll_done().unwrap(), b.poll_done().unwrap());
        (a.cipher.unwrap(), b.cipher.unwrap())
    }

    #[test]
    fn partial_writes_keep_the_keystream_in_step() {
        let (ca, cb) = ciphers();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let sink = Choppy {
            got: Vec::new(),
            max: 1000,
            refuse: false,
        };
        let mut w = MseStream::new(sink, Some(ca), Vec::new());
        smol::block_on(w.write_all(&data)).unwrap();
        assert!(w.encrypted());
        assert_ne!(
            &w.inner.got[..64],
            &data[..64],
            "the wire is not the clear text"
        );
        // Read it back through the other side's cipher, after a clear prefix.
        let wire = std::mem::take(&mut w.inner.got);
        let src = Choppy {
            got: wire,
            max: 777,
            refuse: false,
        };
        let mut r = MseStream::new(src, Some(cb), b"clear".to_vec());
        let mut back = Vec::new();
        smol::block_on(r.read_to_end(&mut back)).unwrap();
        assert_eq!(&back[..5], b"clear");
        assert_eq!(&back[5..], &data[..]);
    }

    #[test]
    fn a_retry_with_fewer_bytes_is_refused() {
        let (ca, _) = ciphers();
        let sink = Choppy {
            got: Vec::new(),
            max: 10,
            refuse: false,
        };
        let mut w = MseStream::new(sink, Some(ca), Vec::new());
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        // First call is refused by the socket (after encrypting), so 100 bytes are held.
        assert!(Pin::new(&mut w).poll_write(&mut cx, &[1; 100]).is_pending());
        let r = Pin::new(&mut w).poll_write(&mut cx, &[1; 50]);
        assert!(matches!(r, Poll::Ready(Err(_))));
    }

    #[test]
    fn handshake_slots_are_bounded_and_given_back() {
        let slots = Arc::new(HandshakeSlots::default());
        let held: Vec<_> = (0..MAX_MSE_HANDSHAKES)
            .map(|_| slots.try_take().unwrap())
            .collect();
        assert!(slots.try_take().is_none());
        drop(held);
        assert!(slots.try_take().is_some());
    }

    #[test]
    fn policies_parse() {
        assert_eq!("prefer".parse::<Encryption>(), Ok(Encryption::Prefer));
        assert_eq!("require".parse::<Encryption>(), Ok(Encryption::Require));
        assert_eq!("off".parse::<Encryption>(), Ok(Encryption::Off));
        assert!("rc4".parse::<Encryption>().is_err());
        assert_eq!(Encryption::Off.policy(), None);
    }
}
