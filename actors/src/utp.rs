//! The uTP actor: one UDP socket, the engine's sans-IO uTP demultiplexer
//! (`shoal_engine::utp::UtpSocket`) driven with the real clock, and each connection exposed as
//! an `AsyncRead + AsyncWrite` stream ([`UtpStream`]) that the peer's connect module can run
//! the handshake, MSE and the peer protocol over.
//!
//! One driver task owns the receiving side of the socket and the timers: it routes each
//! datagram ([`route_datagram`], the one place that tells uTP from other traffic, so that the
//! session's shared UDP socket can fold it in next to the DHT's KRPC), sends what the machine
//! has to send, and wakes the streams. Streams lock the machine briefly to read or write their
//! connection's buffers and poke the driver. Sends are non-blocking `send_to` calls made under
//! the lock; a datagram the kernel refuses is dropped like one lost on the path, and uTP's
//! retransmission takes care of it.
//!
//! Packet sizes are found per connection by the engine's path MTU discovery: from 1400 bytes up
//! to what the route and the peer take (16 KiB between shoal peers on loopback, at most 1472
//! bytes to a peer that does not announce it reads more, such as libtorrent). The socket sends
//! with `IP_MTU_DISCOVER` at `IP_PMTUDISC_DONT` (a packet cut for a path that has since shrunk
//! is fragmented on the way, as libtorrent's are), and an MTU probe alone with
//! `IP_PMTUDISC_DO`: don't-fragment, so a probe too big for the path is dropped rather than
//! fragmented, and one larger than the path MTU the kernel knows is refused at once
//! (`EMSGSIZE`), which counts as a lost probe and never fails the connection or the socket.
//! Two `setsockopt` calls per probe; probes go out a few times per search, and a search runs
//! when a connection starts and every two minutes.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use event_listener::Event;
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use shoal_engine::utp::{Config, ConnectionHandle, Routed, UtpSocket};
use smol::Async;

/// The transport a peer connection runs over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// TCP.
    #[default]
    Tcp,
    /// uTP (BEP 29) over UDP.
    Utp,
    /// Not a peer: a web seed (BEP 19), fetched from over HTTP.
    Web,
}

impl Transport {
    /// `tcp`, `utp` or `web`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Utp => "utp",
            Transport::Web => "web",
        }
    }
}

/// Most uTP connections of one socket (connecting, open and closing), so a SYN flood costs at
/// most this many table entries (each with buffers of up to 1 MiB a side, allocated as data
/// arrives): above a session's default connection limit (500), which TCP shares.
pub const MAX_UTP_CONNECTIONS: usize = 512;

/// The largest datagram we read (anything longer is cut and fails to decode); the engine
/// announces 65,535 to peers, so they may send up to that.
const MAX_DATAGRAM: usize = 64 * 1024;

/// Datagrams read in one go before sending and waking again, so a busy socket still gets its
/// acknowledgements out.
const READ_BATCH: usize = 64;

/// Everything the driver and the streams share.
struct Inner {
    /// The machine and who waits on it.
    state: Mutex<State>,
    /// The socket.
    socket: Async<UdpSocket>,
    /// Pokes the driver: a stream wrote, read or closed, or a dial started.
    poke: Event,
    /// The socket is an IPv6 one (for its don't-fragment option).
    v6: bool,
}

/// The machine and the wakers of tasks waiting on it.
struct State {
    /// The uTP demultiplexer and its connections.
    utp: UtpSocket,
    /// Streams waiting to read or write (the flag: write), woken after every change.
    waiting: HashMap<(ConnectionHandle, bool), Waker>,
    /// The task waiting in [`UtpEndpoint::accept`].
    accepting: Option<Waker>,
    /// Set when the driver stopped: every stream then fails.
    stopped: bool,
    /// Where KRPC datagrams go (the DHT actor's queue), when the DHT shares this socket.
    krpc: Option<async_channel::Sender<crate::udp::Datagram>>,
}

impl State {
    /// Wakes every waiting task (they check their own connection).
    fn wake_all(&mut self) {
        for (_, w) in self.waiting.drain() {
            w.wake();
        }
    }
}

/// A uTP endpoint: a UDP socket with its driver. Cloning gives another handle to the same one.
#[derive(Clone)]
pub struct UtpEndpoint {
    /// The shared state.
    inner: Arc<Inner>,
}

impl fmt::Debug for UtpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UtpEndpoint")
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

impl UtpEndpoint {
    /// Binds a UDP socket at `addr`. The driver ([`UtpEndpoint::run`]) must be spawned.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = Async::<UdpSocket>::bind(addr)?;
        let v6 = addr.is_ipv6();
        if let Err(e) = set_dont_fragment(socket.get_ref(), v6, false) {
            log::debug!("utp: cannot set the socket's fragmentation policy: {e}");
        }
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
        let utp = UtpSocket::new(
            Instant::now(),
            Config::default(),
            MAX_UTP_CONNECTIONS,
            u64::from_le_bytes(seed),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    utp,
                    waiting: HashMap::new(),
                    accepting: None,
                    stopped: false,
                    krpc: None,
                }),
                socket,
                poke: Event::new(),
                v6,
            }),
        })
    }

    /// Shares the socket with the DHT: KRPC datagrams go to `krpc`, and every datagram from
    /// `outgoing` is sent from this socket (by a task this returns, to keep with the driver).
    pub fn share_with_dht(
        &self,
        krpc: async_channel::Sender<crate::udp::Datagram>,
        outgoing: async_channel::Receiver<crate::udp::Datagram>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.inner.lock().krpc = Some(krpc);
        let inner = self.inner.clone();
        async move {
            while let Ok((to, bytes)) = outgoing.recv().await {
                let _ = inner.socket.send_to(&bytes, to).await;
            }
        }
    }

    /// The socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.get_ref().local_addr()
    }

    /// The driver: reads datagrams, runs timers, sends, wakes streams. Runs until cancelled
    /// (its task dropped); streams fail after that.
    pub async fn run(self) {
        let _stop = StopOnDrop(self.inner.clone());
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // Reused for every datagram sent: zeroing a 16 KiB array per wake-up cost more than
        // the rest of an ACK's send.
        let mut out = vec![0u8; shoal_engine::utp::conn::LOOPBACK_PACKET_SIZE];
        loop {
            let listener = self.inner.poke.listen();
            let deadline = {
                let mut st = self.inner.lock();
                let now = Instant::now();
                if st.utp.poll_timeout().is_some_and(|t| t <= now) {
                    st.utp.handle_timeout(now);
                }
                self.inner.transmit(&mut st, now, &mut out);
                st.wake_all();
                st.utp.poll_timeout()
            };
            let got = async { Some(self.inner.socket.recv_from(&mut buf).await) }
                .or(async {
                    listener.await;
                    None
                })
                .or(async {
                    match deadline {
                        Some(t) => {
                            smol::Timer::at(t).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                    None
                })
                .await;
            let Some(first) = got else { continue };
            let mut st = self.inner.lock();
            let now = Instant::now();
            let mut next = first;
            for _ in 0..READ_BATCH {
                match next {
                    Ok((n, from)) => route_datagram(&mut st, now, from, &buf[..n]),
                    Err(e) => log::debug!("utp: receive failed: {e}"),
                }
                next = match self.inner.socket.get_ref().recv_from(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    other => other,
                };
            }
        }
    }

    /// Dials `addr`; resolves once the connection is open (SYN answered) or failed.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UtpStream> {
        let handle = {
            let mut st = self.inner.lock();
            st.utp
                .connect(Instant::now(), addr)
                .map_err(|e| io::Error::other(e.to_string()))?
        };
        self.inner.poke.notify(1);
        let stream = UtpStream {
            inner: self.inner.clone(),
            handle,
        };
        std::future::poll_fn(|cx| {
            let mut st = self.inner.lock();
            if st.stopped {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected)));
            }
            match st.utp.connection(handle) {
                Some(c) if c.is_connected() => Poll::Ready(Ok(())),
                Some(c) if !c.is_closed() => {
                    st.waiting.insert((handle, true), cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "utp connection refused or timed out",
                ))),
            }
        })
        .await?;
        Ok(stream)
    }

    /// The next connection a peer opened, and its address.
    pub async fn accept(&self) -> io::Result<(UtpStream, SocketAddr)> {
        std::future::poll_fn(|cx| {
            let mut st = self.inner.lock();
            if st.stopped {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected)));
            }
            match st.utp.accept() {
                Some(handle) => {
                    let addr = st.utp.peer_addr(handle).expect("an accepted connection");
                    Poll::Ready(Ok((
                        UtpStream {
                            inner: self.inner.clone(),
                            handle,
                        },
                        addr,
                    )))
                }
                None => {
                    st.accepting = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// Marks the state stopped (and wakes everyone) when the driver ends.
struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.stopped = true;
        st.wake_all();
        if let Some(w) = st.accepting.take() {
            w.wake();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends everything the machine has to send, each datagram written into `out` first.
    fn transmit(&self, st: &mut State, now: Instant, out: &mut [u8]) {
        let socket = self.socket.get_ref();
        while let Some((addr, n)) = st.utp.poll_transmit(now, out) {
            let Some(probe) = st.utp.last_transmit_probe() else {
                // Non-blocking; a refused datagram counts as lost (see the module docs).
                let _ = socket.send_to(&out[..n], addr);
                continue;
            };
            // An MTU probe: don't-fragment for this datagram alone.
            let df = set_dont_fragment(socket, self.v6, true).is_ok();
            let sent = socket.send_to(&out[..n], addr);
            if df {
                let _ = set_dont_fragment(socket, self.v6, false);
            }
            if let Err(e) = sent {
                if is_too_big(&e) {
                    log::trace!("utp: {n}-byte probe to {addr} refused as too big");
                    st.utp.handle_probe_refused(now, probe);
                }
            }
        }
    }
}

/// Sets whether datagrams leave `socket` with don't-fragment (`IP_PMTUDISC_DO`: too big for
/// the known path MTU is `EMSGSIZE`) or may be fragmented (`IP_PMTUDISC_DONT`), for IPv4 and,
/// on an IPv6 socket (`v6`), IPv6.
#[cfg(target_os = "linux")]
fn set_dont_fragment(socket: &UdpSocket, v6: bool, on: bool) -> io::Result<()> {
    use rustix::net::sockopt::{self, Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery};
    let r4 = sockopt::set_ip_mtu_discover(
        socket,
        if on {
            Ipv4PathMtuDiscovery::DO
        } else {
            Ipv4PathMtuDiscovery::DONT
        },
    );
    if v6 {
        sockopt::set_ipv6_mtu_discover(
            socket,
            if on {
                Ipv6PathMtuDiscovery::DO
            } else {
                Ipv6PathMtuDiscovery::DONT
            },
        )?;
        return Ok(()); // IPv4 is only for v4-mapped peers there; it may be refused
    }
    Ok(r4?)
}

#[cfg(not(target_os = "linux"))]
fn set_dont_fragment(_socket: &UdpSocket, _v6: bool, _on: bool) -> io::Result<()> {
    Ok(()) // probes may then be fragmented: a larger floor than ideal, nothing worse
}

/// Whether a send failed because the datagram is larger than the path MTU the kernel knows.
fn is_too_big(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        e.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}

/// Routes one datagram of the socket: uTP to the machine (waking an accept), anything else
/// (a KRPC message for the DHT, junk) is dropped here. The one place a shared UDP socket
/// tells its protocols apart.
fn route_datagram(st: &mut State, now: Instant, from: SocketAddr, data: &[u8]) {
    match st.utp.handle_datagram(now, from, data) {
        Routed::Accepted(_) => {
            if let Some(w) = st.accepting.take() {
                w.wake();
            }
        }
        Routed::NotUtp(shoal_engine::utp::DatagramKind::Krpc) if st.krpc.is_some() => {
            // The DHT's: into its bounded queue; a full queue drops it, as a busy node would.
            if let Some(krpc) = &st.krpc {
                let _ = krpc.try_send((from, data.to_vec()));
            }
        }
        Routed::NotUtp(kind) => {
            log::trace!("udp: {kind:?} datagram from {from} dropped");
        }
        Routed::Connection(_) | Routed::Dropped => {}
    }
}

/// One uTP connection as a byte stream. Dropping it closes the connection gracefully.
pub struct UtpStream {
    /// The endpoint.
    inner: Arc<Inner>,
    /// Its connection.
    handle: ConnectionHandle,
}

impl fmt::Debug for UtpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UtpStream")
            .field("handle", &self.handle)
            .finish()
    }
}

impl UtpStream {
    /// Runs `f` on the connection; an error when it is gone or the driver stopped.
    fn with<T>(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        f: impl FnOnce(&mut shoal_engine::utp::Connection) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut st = self.inner.lock();
        if st.stopped {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected)));
        }
        let Some(conn) = st.utp.connection_mut(self.handle) else {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)));
        };
        let r = f(conn);
        if r.is_pending() {
            st.waiting.insert((self.handle, write), cx.waker().clone());
        } else {
            drop(st);
            self.inner.poke.notify(1);
        }
        r
    }
}

fn closed_error(conn: &shoal_engine::utp::Connection) -> io::Error {
    match conn.error() {
        Some(e) => io::Error::new(io::ErrorKind::ConnectionReset, e.to_string()),
        None => io::Error::from(io::ErrorKind::BrokenPipe),
    }
}

impl AsyncRead for UtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.with(cx, false, |conn| {
            let n = conn.read(buf);
            if n > 0 || buf.is_empty() || conn.is_eof() {
                Poll::Ready(Ok(n))
            } else if conn.is_closed() {
                match conn.error() {
                    Some(_) => Poll::Ready(Err(closed_error(conn))),
                    None => Poll::Ready(Ok(0)),
                }
            } else {
                Poll::Pending
            }
        })
    }
}

impl AsyncWrite for UtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(cx, true, |conn| {
            if conn.is_closed() {
                return Poll::Ready(Err(closed_error(conn)));
            }
            let n = conn.write(buf);
            if n > 0 || buf.is_empty() {
                Poll::Ready(Ok(n))
            } else {
                Poll::Pending
            }
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Everything written is in the connection's send buffer; the driver sends it.
        self.inner.poke.notify(1);
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(c) = self.inner.lock().utp.connection_mut(self.handle) {
            c.close();
        }
        self.inner.poke.notify(1);
        Poll::Ready(Ok(()))
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.utp.release(self.handle);
        st.waiting.remove(&(self.handle, false));
        st.waiting.remove(&(self.handle, true));
        drop(st);
        self.inner.poke.notify(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use std::time::Duration;

    #[test]
    fn two_endpoints_move_a_megabyte_each_way() {
        smol::block_on(async {
            let a = UtpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let b = UtpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let b_addr = b.local_addr().unwrap();
            let _da = smol::spawn(a.clone().run());
            let _db = smol::spawn(b.clone().run());
            let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            let server = async {
                let (mut s, _) = b.accept().await.unwrap();
                let mut got = vec![0u8; data.len()];
                s.read_exact(&mut got).await.unwrap();
                s.write_all(&got).await.unwrap();
                s.flush().await.unwrap();
                got
            };
            let client = async {
                let mut c = a.connect(b_addr).await.unwrap();
                c.write_all(&data).await.unwrap();
                c.flush().await.unwrap();
                let mut back = vec![0u8; data.len()];
                c.read_exact(&mut back).await.unwrap();
                back
            };
            let both = futures_lite::future::zip(client, server).or(async {
                smol::Timer::after(Duration::from_secs(30)).await;
                panic!("utp transfer timed out");
            });
            let (back, got) = both.await;
            assert!(got == data, "server got other bytes");
            assert!(back == data, "client got other bytes back");
        });
    }

    /// Two shoal endpoints on loopback announce 64 KiB reads to each other: the MTU search
    /// takes the sender to the 16 KiB ceiling, probes going out with don't-fragment.
    #[test]
    fn loopback_endpoints_reach_large_packets() {
        smol::block_on(async {
            let a = UtpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let b = UtpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let b_addr = b.local_addr().unwrap();
            let _da = smol::spawn(a.clone().run());
            let _db = smol::spawn(b.clone().run());
            let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
            let server = async {
                let (mut s, _) = b.accept().await.unwrap();
                let mut got = vec![0u8; data.len()];
                s.read_exact(&mut got).await.unwrap();
                (s, got)
            };
            let client = async {
                let mut c = a.connect(b_addr).await.unwrap();
                c.write_all(&data).await.unwrap();
                c.flush().await.unwrap();
                c
            };
            let both = futures_lite::future::zip(client, server).or(async {
                smol::Timer::after(Duration::from_secs(30)).await;
                panic!("utp transfer timed out");
            });
            let (c, (_s, got)) = both.await;
            assert!(got == data, "byte-exact");
            let st = c.inner.lock();
            let conn = st.utp.connection(c.handle).unwrap();
            assert!(
                conn.packet_size() > 16_000,
                "packets of {} bytes, {:?}",
                conn.packet_size(),
                conn.stats()
            );
            assert!(conn.stats().mtu_probes > 0);
        });
    }

    #[test]
    fn dialling_nobody_fails_in_bounded_time() {
        smol::block_on(async {
            let a = UtpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let _da = smol::spawn(a.clone().run());
            // A bound UDP socket that never answers.
            let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
            let r = a
                .connect(silent.local_addr().unwrap())
                .or(async {
                    smol::Timer::after(Duration::from_secs(20)).await;
                    panic!("no failure within 20 s");
                })
                .await;
            assert!(r.is_err());
        });
    }
}
