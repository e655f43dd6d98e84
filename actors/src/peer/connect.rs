//! Establishing a peer connection: dialling, accepting, the handshake exchange, and the byte
//! stream the peer protocol then runs over.
//!
//! Both directions go through here and end the same way, as a [`PeerStream`] (boxed) and the
//! remote handshake, which [`super::run`] takes. Nothing after this module knows whether the
//! bytes travel over TCP, uTP or an encrypted layer.
//!
//! - Incoming: the session's accept loop calls [`accept`], which reads the remote handshake
//!   (bounded in time) so the session can route the connection by its info hash. The torrent
//!   then decides whether to take it and calls [`establish`] with [`Start::Accepted`], which
//!   answers with our handshake.
//! - Outgoing: the torrent calls [`establish`] with [`Start::Dial`]: TCP connect, our handshake
//!   out, theirs in and checked, all bounded by [`HANDSHAKE_TIMEOUT`].
//!
//! The exchange itself ([`exchange`]) is written once, for both directions.
//!
//! # Encryption (MSE/PE)
//!
//! [`establish`] dials encrypted unless the policy ([`Encryption`]) is off: the engine's MSE
//! machine runs right after the TCP connect, with our BitTorrent handshake as its initial
//! payload, and the stream becomes an [`encrypt::MseStream`] (RC4 both ways, or plain if the
//! peers chose plaintext inside MSE). Under `prefer`, a peer that hangs up on MSE is dialled
//! once more in plaintext. [`accept`] reads the first 20 bytes: the plaintext header
//! (`\x13BitTorrent protocol`, `mse::looks_like_plaintext`) means a plain handshake; anything
//! else is taken as an MSE opening, answered by the responder, which finds the torrent by the
//! peer's hashed SKEY over the session's torrents ([`Responder`]). Either way the handshake
//! exchange and the peer protocol run over a [`BoxStream`] and know nothing of it. uTP enters
//! the same way, with its own dial and accept in place of TCP's.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use shoal_engine::mse;
use shoal_engine::wire::{Handshake, HANDSHAKE_LEN};
use smol::net::TcpStream;

use super::encrypt::{self, Encryption, HandshakeSlots, SkeyLookup};
use crate::utp::{Transport, UtpEndpoint};

/// How long a TCP connect plus handshake may take (outgoing), or answering an accepted
/// connection whose handshake we already read (incoming).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the MSE handshake of a dial may take (after the TCP connect), so that under
/// `prefer` a peer that neither speaks MSE nor hangs up on it leaves time, within
/// [`HANDSHAKE_TIMEOUT`], for the plaintext redial.
const MSE_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes at the start of a connection that, equal to the start of the plaintext header
/// (`\x13Bit`), make it a plain handshake (to be checked whole) rather than an MSE opening: an
/// honest 768-bit public key starts so once in 2^32, and a broken plain handshake is refused at
/// once instead of waiting for an MSE key that never comes.
const PLAINTEXT_SIGN: usize = 4;

/// How long an incoming connection may take to send its handshake.
pub(crate) const INCOMING_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the handshake's protocol header (length byte and name), read on their own first so
/// that garbage is refused before we wait for a whole handshake.
const HEADER_LEN: usize = 20;

/// A connected, ordered, reliable byte stream a peer runs over: TCP today; uTP or an encrypted
/// wrapper around either later.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T> PeerStream for T where T: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

/// A peer stream whatever its transport. One virtual call per read or write system call (not
/// per block or message): the peer loop reads and writes in large chunks.
pub type BoxStream = Box<dyn PeerStream>;

/// An incoming connection whose handshake we have read, waiting for its torrent to answer it.
pub(crate) struct Accepted {
    /// The stream, our handshake not yet sent.
    stream: BoxStream,
    /// The remote address.
    addr: SocketAddr,
    /// The remote handshake.
    remote: Handshake,
    /// Whether the stream is RC4-encrypted.
    encrypted: bool,
    /// TCP or uTP.
    transport: Transport,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("addr", &self.addr)
            .field("info_hash", &self.remote.info_hash)
            .field("encrypted", &self.encrypted)
            .finish()
    }
}

impl Accepted {
    /// The remote address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The remote handshake.
    pub(crate) fn remote(&self) -> &Handshake {
        &self.remote
    }
}

/// How a connection starts.
#[derive(Debug)]
pub(crate) enum Start {
    /// We dial this address.
    Dial(SocketAddr),
    /// The peer dialled us and sent its handshake.
    Accepted(Accepted),
}

/// A connection whose handshakes are done, ready for the peer protocol.
pub(crate) struct Established {
    /// The byte stream.
    pub(crate) stream: BoxStream,
    /// The remote handshake.
    pub(crate) remote: Handshake,
    /// Whether the stream is RC4-encrypted (MSE/PE).
    pub(crate) encrypted: bool,
    /// TCP or uTP.
    pub(crate) transport: Transport,
}

/// What the session's accept loop needs to answer incoming connections: its encryption policy,
/// a way to find its torrents by their MSE SKEY hash, and its count of MSE handshakes in
/// progress.
#[derive(Clone)]
pub(crate) struct Responder {
    /// Which connections we accept.
    pub(crate) encryption: Encryption,
    /// Finds a torrent by `HASH('req2', info_hash)`.
    pub(crate) lookup: SkeyLookup,
    /// Incoming MSE handshakes in progress, bounded.
    pub(crate) slots: Arc<HandshakeSlots>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("encryption", &self.encryption)
            .finish_non_exhaustive()
    }
}

/// Reads the handshake of an accepted TCP connection, within [`INCOMING_HANDSHAKE_TIMEOUT`]:
/// a plain one, or an MSE handshake and then the BitTorrent handshake inside it, as the policy
/// allows. Beyond [`MAX_MSE_HANDSHAKES`](super::encrypt::MAX_MSE_HANDSHAKES) MSE handshakes in
/// progress, an MSE opening is closed at once.
pub(crate) async fn accept<S: PeerStream>(
    stream: S,
    addr: SocketAddr,
    transport: Transport,
    responder: &Responder,
) -> io::Result<Accepted> {
    async {
        let mut stream = stream;
        let mut first = [0u8; HEADER_LEN];
        stream.read_exact(&mut first).await?;
        if mse::looks_like_plaintext(&first[..PLAINTEXT_SIGN]).is_none() {
            if responder.encryption == Encryption::Require {
                return Err(invalid("plaintext peer refused (encryption required)"));
            }
            let remote = read_handshake(&mut (&first[..]).chain(&mut stream)).await?;
            return Ok(Accepted {
                stream: Box::new(stream),
                addr,
                remote,
                encrypted: false,
                transport,
            });
        }
        let Some(policy) = responder.encryption.policy() else {
            return Err(invalid("not a bittorrent handshake (encryption off)"));
        };
        let Some(_slot) = responder.slots.try_take() else {
            return Err(invalid("too many mse handshakes in progress"));
        };
        let (mut stream, hash) =
            encrypt::respond(stream, &first, policy, responder.lookup.clone()).await?;
        let remote = read_handshake(&mut stream).await?;
        if remote.info_hash != hash {
            return Err(invalid("handshake names another torrent than the mse skey"));
        }
        let encrypted = stream.encrypted();
        Ok(Accepted {
            stream: Box::new(stream),
            addr,
            remote,
            encrypted,
            transport,
        })
    }
    .or(timeout(INCOMING_HANDSHAKE_TIMEOUT, "no handshake"))
    .await
}

/// Completes a connection, within [`HANDSHAKE_TIMEOUT`]: dials if asked (encrypted as
/// `encryption` says), then exchanges handshakes. `ours` names the torrent and our peer id; the
/// remote handshake must name the same torrent and another peer id.
///
/// Under [`Encryption::Prefer`] a dial that connects but whose MSE handshake fails (the peer
/// hangs up on it, or speaks no MSE) is tried once more in plaintext.
pub(crate) async fn establish(
    start: Start,
    ours: Handshake,
    encryption: Encryption,
    utp: Option<&UtpEndpoint>,
) -> io::Result<Established> {
    async {
        match start {
            Start::Accepted(a) => {
                let mut stream = a.stream;
                let remote = exchange(&mut stream, &ours, Some(a.remote), false).await?;
                Ok(Established {
                    stream,
                    remote,
                    encrypted: a.encrypted,
                    transport: a.transport,
                })
            }
            Start::Dial(addr) => {
                // Over TCP and uTP at once, each through its whole handshake: the first to be
                // established wins. A peer that accepts TCP and closes it (TCP turned off, say)
                // must not keep its uTP side from being reached.
                let tcp = dial_and_greet(addr, None, &ours, encryption);
                match utp {
                    None => tcp.await,
                    Some(u) => {
                        first_ok(tcp, dial_and_greet(addr, Some(u), &ours, encryption)).await
                    }
                }
            }
        }
    }
    .or(timeout(HANDSHAKE_TIMEOUT, "handshake timed out"))
    .await
}

/// Dials `addr` over one transport (uTP with `utp`, else TCP) and greets it: MSE per the
/// policy (under `prefer`, a refusal is redialled in plaintext), then the BitTorrent handshake.
async fn dial_and_greet(
    addr: SocketAddr,
    utp: Option<&UtpEndpoint>,
    ours: &Handshake,
    encryption: Encryption,
) -> io::Result<Established> {
    let connect = || async {
        match utp {
            None => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok::<_, io::Error>((Box::new(stream) as BoxStream, Transport::Tcp))
            }
            Some(u) => Ok((
                Box::new(u.connect(addr).await?) as BoxStream,
                Transport::Utp,
            )),
        }
    };
    if let Some(policy) = encryption.policy() {
        let (stream, transport) = connect().await?;
        let payload = ours.to_bytes();
        let mse = encrypt::initiate(stream, ours.info_hash, policy, &payload)
            .or(timeout(MSE_DIAL_TIMEOUT, "mse handshake timed out"));
        match mse.await {
            Ok(mut stream) => {
                let remote = exchange(&mut stream, ours, None, true).await?;
                let encrypted = stream.encrypted();
                return Ok(Established {
                    stream: Box::new(stream),
                    remote,
                    encrypted,
                    transport,
                });
            }
            Err(e) if encryption == Encryption::Prefer => {
                log::debug!(
                    "{addr}: mse over {} failed ({e}); redialling in plaintext",
                    transport.as_str()
                );
            }
            Err(e) => return Err(e),
        }
    }
    let (mut stream, transport) = connect().await?;
    let remote = exchange(&mut stream, ours, None, false).await?;
    Ok(Established {
        stream,
        remote,
        encrypted: false,
        transport,
    })
}

/// The first of two fallible futures to succeed; the first error if both fail. An
/// `InvalidData` error (the peer answered, and answered wrong: another torrent, our own id, not
/// BitTorrent) ends the race at once: the same peer over the other transport is no better.
async fn first_ok<T>(
    a: impl Future<Output = io::Result<T>>,
    b: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut a_err, mut b_err) = (None, None);
    std::future::poll_fn(|cx| {
        if a_err.is_none() {
            if let Poll::Ready(r) = a.as_mut().poll(cx) {
                match r {
                    Ok(v) => return Poll::Ready(Ok(v)),
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => return Poll::Ready(Err(e)),
                    Err(e) => a_err = Some(e),
                }
            }
        }
        if b_err.is_none() {
            if let Poll::Ready(r) = b.as_mut().poll(cx) {
                match r {
                    Ok(v) => return Poll::Ready(Ok(v)),
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => return Poll::Ready(Err(e)),
                    Err(e) => b_err = Some(e),
                }
            }
        }
        match (a_err.take(), b_err.take()) {
            (Some(e), Some(_)) => Poll::Ready(Err(e)),
            (a2, b2) => {
                a_err = a2;
                b_err = b2;
                Poll::Pending
            }
        }
    })
    .await
}

/// The handshake exchange, the same for both directions: ours goes out, theirs is read (unless
/// the accept already read it) and checked, and ours is flushed.
///
/// `sent`: ours already went out (as an MSE initial payload).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ours: &Handshake,
    known: Option<Handshake>,
    sent: bool,
) -> io::Result<Handshake> {
    if !sent {
        stream.write_all(&ours.to_bytes()).await?;
    }
    let remote = match known {
        Some(h) => h,
        None => read_handshake(stream).await?,
    };
    if remote.info_hash != ours.info_hash {
        return Err(invalid("wrong info hash"));
    }
    if remote.peer_id == ours.peer_id {
        return Err(invalid("connected to ourselves"));
    }
    stream.flush().await?;
    Ok(remote)
}

/// Reads a handshake: the protocol header first, so that garbage is refused at once.
async fn read_handshake<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Handshake> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut buf[..HEADER_LEN]).await?;
    Handshake::decode(&buf[..HEADER_LEN]).map_err(|e| invalid(e.to_string()))?;
    stream.read_exact(&mut buf[HEADER_LEN..]).await?;
    Handshake::decode(&buf)
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

async fn timeout<T>(after: Duration, what: &'static str) -> io::Result<T> {
    smol::Timer::after(after).await;
    Err(io::Error::new(io::ErrorKind::TimedOut, what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_engine::{InfoHash, PeerId};

    fn hs(hash: u8, id: u8) -> Handshake {
        Handshake::new(InfoHash([hash; 20]), PeerId([id; 20]))
    }

    /// A responder knowing the torrents `hashes`.
    fn responder(encryption: Encryption, hashes: &[InfoHash]) -> Responder {
        let hashes = hashes.to_vec();
        Responder {
            encryption,
            lookup: Arc::new(move |req2| {
                hashes.iter().find(|h| mse::req2_hash(h) == *req2).copied()
            }),
            slots: Arc::default(),
        }
    }

    /// Dials `ours_out` against an accept that answers with `ours_in` when the routed info hash
    /// matches; returns what each side saw.
    fn pair(
        ours_out: Handshake,
        ours_in: Handshake,
    ) -> (io::Result<Handshake>, io::Result<Handshake>) {
        let (out, inc) = pair_with(ours_out, ours_in, Encryption::Off, Encryption::Prefer);
        (out.map(|e| e.1), inc.map(|e| e.1))
    }

    /// Like [`pair`], with an encryption policy on each side; each side also says whether its
    /// stream was encrypted, after moving a message each way over it.
    fn pair_with(
        ours_out: Handshake,
        ours_in: Handshake,
        dial: Encryption,
        answer: Encryption,
    ) -> (io::Result<(bool, Handshake)>, io::Result<(bool, Handshake)>) {
        smol::block_on(async {
            let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let known = responder(answer, &[ours_in.info_hash]);
            let server = async {
                // A refused plaintext redial comes as a second connection.
                loop {
                    let (tcp, from) = listener.accept().await?;
                    let accepted = match accept(tcp, from, Transport::Tcp, &known).await {
                        Ok(a) => a,
                        Err(e) if dial == Encryption::Prefer => {
                            let _ = e;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    assert_eq!(accepted.addr(), from);
                    let mut e = establish(Start::Accepted(accepted), ours_in, answer, None).await?;
                    e.stream.write_all(b"ping").await?;
                    e.stream.flush().await?;
                    let mut got = [0u8; 4];
                    e.stream.read_exact(&mut got).await?;
                    assert_eq!(&got, b"pong");
                    return Ok((e.encrypted, e.remote));
                }
            };
            let client = async {
                let mut e = establish(Start::Dial(addr), ours_out, dial, None).await?;
                let mut got = [0u8; 4];
                e.stream.read_exact(&mut got).await?;
                assert_eq!(&got, b"ping");
                e.stream.write_all(b"pong").await?;
                e.stream.flush().await?;
                Ok((e.encrypted, e.remote))
            };
            let server = server.or(async {
                smol::Timer::after(Duration::from_secs(15)).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "test server"))
            });
            futures_lite::future::zip(client, server).await
        })
    }

    #[test]
    fn encrypted_both_ways_when_either_side_requires_it() {
        for (dial, answer, rc4) in [
            // seedperf only: `prefer` answers plaintext when offered both (Policy::Either).
            (Encryption::Prefer, Encryption::Prefer, false),
            (Encryption::Require, Encryption::Prefer, true),
            (Encryption::Prefer, Encryption::Require, true),
            (Encryption::Require, Encryption::Require, true),
        ] {
            let (out, inc) = pair_with(hs(1, 2), hs(1, 3), dial, answer);
            let (out, inc) = (out.unwrap(), inc.unwrap());
            assert_eq!((out.0, inc.0), (rc4, rc4), "{dial:?} -> {answer:?}");
            assert_eq!(out.1.peer_id, PeerId([3; 20]));
            assert_eq!(inc.1.peer_id, PeerId([2; 20]));
        }
    }

    #[test]
    fn prefer_falls_back_to_plaintext_and_require_refuses_it() {
        // A plaintext-only peer: prefer redials in plaintext.
        let (out, inc) = pair_with(hs(1, 2), hs(1, 3), Encryption::Prefer, Encryption::Off);
        assert!(!out.unwrap().0);
        assert!(!inc.unwrap().0);
        // Require never speaks plaintext, either way.
        let (out, _) = pair_with(hs(1, 2), hs(1, 3), Encryption::Require, Encryption::Off);
        assert!(out.is_err());
        let (out, inc) = pair_with(hs(1, 2), hs(1, 3), Encryption::Off, Encryption::Require);
        assert!(out.is_err());
        assert!(inc.unwrap_err().to_string().contains("plaintext"));
    }

    #[test]
    fn an_unknown_torrent_is_refused_under_mse() {
        let (out, inc) = pair_with(hs(1, 2), hs(9, 3), Encryption::Require, Encryption::Prefer);
        assert!(out.is_err());
        assert!(inc.unwrap_err().to_string().contains("skey"));
    }

    #[test]
    fn both_directions_exchange_handshakes() {
        let (out, inc) = pair(hs(1, 2), hs(1, 3));
        assert_eq!(out.unwrap().peer_id, PeerId([3; 20]));
        assert_eq!(inc.unwrap().peer_id, PeerId([2; 20]));
    }

    #[test]
    fn a_wrong_info_hash_or_our_own_id_is_refused() {
        let (out, _) = pair(hs(1, 2), hs(9, 3));
        let e = out.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("info hash"), "{e}");
        let (out, inc) = pair(hs(1, 2), hs(1, 2));
        assert!(out.unwrap_err().to_string().contains("ourselves"));
        assert!(inc.unwrap_err().to_string().contains("ourselves"));
    }

    #[test]
    fn garbage_is_refused_after_the_header_and_a_handshake_decodes() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let e = smol::block_on(read_handshake(&mut input)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let bytes = hs(4, 5).to_bytes();
        let h = smol::block_on(read_handshake(&mut &bytes[..])).unwrap();
        assert_eq!(h, hs(4, 5));
    }
}
