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
//! # Where encryption and other transports go
//!
//! [`setup`] turns a connected socket into the stream everything else uses. The MSE/PE layer
//! (message stream encryption, as libtorrent and Transmission speak it) belongs there, chosen at
//! connect time, driving the engine's sans-IO machine (`shoal_engine::mse::Handshake`): as the
//! initiator it runs the Diffie-Hellman exchange right after the connect and before our
//! handshake (which can travel as its initial payload), and returns an RC4 stream wrapper; as
//! the responder ([`accept`]) it looks at the first bytes (`mse::looks_like_plaintext`): the
//! plaintext header (`\x13BitTorrent protocol`) means no encryption, anything else is the
//! peer's public key, and the info hash is found by matching the peer's hashed secret against
//! the session's torrents. Either way it returns a [`BoxStream`] (bytes the handshake read past
//! its end go first in the wrapper), so the handshake exchange and the peer protocol stay as
//! they are. uTP enters the same way, with its own dial and accept in place of TCP's.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use shoal_engine::wire::{Handshake, HANDSHAKE_LEN};
use smol::net::TcpStream;

/// How long a TCP connect plus handshake may take (outgoing), or answering an accepted
/// connection whose handshake we already read (incoming).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("addr", &self.addr)
            .field("info_hash", &self.remote.info_hash)
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

/// Reads the handshake of an accepted TCP connection, within [`INCOMING_HANDSHAKE_TIMEOUT`].
pub(crate) async fn accept(stream: TcpStream, addr: SocketAddr) -> io::Result<Accepted> {
    let _ = stream.set_nodelay(true);
    // The MSE responder goes here: see the module docs.
    let mut stream = setup(stream);
    let remote = read_handshake(&mut stream)
        .or(timeout(INCOMING_HANDSHAKE_TIMEOUT, "no handshake"))
        .await?;
    Ok(Accepted {
        stream,
        addr,
        remote,
    })
}

/// Completes a connection, within [`HANDSHAKE_TIMEOUT`]: dials if asked, then exchanges
/// handshakes. `ours` names the torrent and our peer id; the remote handshake must name the
/// same torrent and another peer id.
pub(crate) async fn establish(start: Start, ours: Handshake) -> io::Result<(BoxStream, Handshake)> {
    async {
        let (mut stream, known) = match start {
            Start::Accepted(a) => (a.stream, Some(a.remote)),
            Start::Dial(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                // The MSE initiator goes here: see the module docs.
                (setup(stream), None)
            }
        };
        let remote = exchange(&mut stream, &ours, known).await?;
        Ok((stream, remote))
    }
    .or(timeout(HANDSHAKE_TIMEOUT, "handshake timed out"))
    .await
}

/// Stream setup: the byte stream the handshake and the peer protocol run over, for a
/// connected TCP socket. Plain TCP for now; this is the seam where an encrypted (MSE/PE)
/// wrapper will be chosen (see the module docs).
fn setup(stream: TcpStream) -> BoxStream {
    Box::new(stream)
}

/// The handshake exchange, the same for both directions: ours goes out, theirs is read (unless
/// the accept already read it) and checked, and ours is flushed.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ours: &Handshake,
    known: Option<Handshake>,
) -> io::Result<Handshake> {
    stream.write_all(&ours.to_bytes()).await?;
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

    /// Dials `ours_out` against an accept that answers with `ours_in` when the routed info hash
    /// matches; returns what each side saw.
    fn pair(
        ours_out: Handshake,
        ours_in: Handshake,
    ) -> (io::Result<Handshake>, io::Result<Handshake>) {
        smol::block_on(async {
            let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = async {
                let (tcp, from) = listener.accept().await?;
                let accepted = accept(tcp, from).await?;
                assert_eq!(accepted.addr(), from);
                let (_stream, remote) = establish(Start::Accepted(accepted), ours_in).await?;
                Ok(remote)
            };
            let client = async {
                let (_stream, remote) = establish(Start::Dial(addr), ours_out).await?;
                Ok(remote)
            };
            futures_lite::future::zip(client, server).await
        })
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
