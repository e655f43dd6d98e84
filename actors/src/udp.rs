//! The session's UDP socket: one per listen port, beside the TCP listener, shared by the DHT
//! and (next) uTP.
//!
//! One task owns the socket. It reads every datagram and sorts it by its first byte
//! ([`shoal_engine::utp::classify`]): a KRPC message goes to the DHT actor's bounded queue, a
//! uTP packet to the uTP hook (which drops it until the uTP actor exists), anything else is
//! dropped. The same task sends what its users queue in [`Udp::outgoing`]. Both queues are
//! bounded; when one is full the datagram is dropped and counted, never waited for: UDP may
//! lose packets anyway, and every protocol on this socket retries, while a reader that waited
//! on a slow consumer would let the kernel's buffer overflow for everyone.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_channel::{Receiver, Sender, TrySendError};
use futures_lite::future;
use shoal_engine::utp::{classify, DatagramKind};
use smol::net::UdpSocket;

use crate::runtime::{Spawner, Task};

/// The largest datagram read. KRPC messages fit in one Ethernet frame (about 1,500 bytes); uTP
/// packets are at most the path MTU. A longer one is cut here and then fails to decode.
pub const MAX_DATAGRAM: usize = 2048;

/// KRPC datagrams waiting for the DHT actor. It handles one in microseconds; this only fills
/// under a flood, whose excess is then dropped here before any decoding.
pub const KRPC_QUEUE: usize = 512;

/// Datagrams waiting to be sent. The DHT queues at most its own outgoing queue's worth at
/// once (`shoal_engine::dht::MAX_OUTGOING`, 512).
pub const OUTGOING_QUEUE: usize = 1024;

/// A datagram and its peer address (the sender when received, the destination when sent).
pub type Datagram = (SocketAddr, Vec<u8>);

/// Counters of the socket, read by stats and tests.
#[derive(Debug, Default)]
pub struct UdpStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Received datagrams dropped: a full queue, no consumer, or neither KRPC nor uTP.
    pub dropped_in: AtomicU64,
    /// Datagrams dropped because the outgoing queue was full or the send failed.
    pub dropped_out: AtomicU64,
    /// uTP packets seen (dropped until the uTP actor exists).
    pub utp_in: AtomicU64,
}

/// Where the socket task hands what it reads.
#[derive(Debug, Default)]
pub struct Consumers {
    /// The DHT actor's queue of KRPC datagrams (`None`: the DHT is off; KRPC is dropped).
    pub krpc: Option<Sender<Datagram>>,
}

/// The running socket: its address, its outgoing queue and its task.
pub struct Udp {
    /// The address it is bound to.
    local_addr: SocketAddr,
    /// Datagrams to send.
    outgoing: Sender<Datagram>,
    /// Counters.
    stats: Arc<UdpStats>,
    /// The task owning the socket; cancelled on drop.
    task: Option<Task<()>>,
}

impl fmt::Debug for Udp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Udp")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Udp {
    /// Binds `addr` (the TCP listener's address and port) and starts its task.
    pub fn bind(
        addr: SocketAddr,
        consumers: Consumers,
        spawner: &Spawner,
    ) -> std::io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)?;
        let local_addr = socket.local_addr()?;
        let socket = UdpSocket::try_from(socket)?;
        let (outgoing, to_send) = async_channel::bounded(OUTGOING_QUEUE);
        let stats = Arc::new(UdpStats::default());
        let task = spawner.spawn(run(socket, consumers, to_send, stats.clone()));
        Ok(Self {
            local_addr,
            outgoing,
            stats,
            task: Some(task),
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The queue of datagrams to send; a sender uses `try_send` and drops on `Full`.
    pub fn outgoing(&self) -> Sender<Datagram> {
        self.outgoing.clone()
    }

    /// The counters.
    pub fn stats(&self) -> &UdpStats {
        &self.stats
    }

    /// Stops the task and closes the socket.
    pub async fn shutdown(&mut self) {
        if let Some(task) = self.task.take() {
            task.cancel().await;
        }
    }
}

/// What the task does next.
enum Step {
    /// A datagram arrived (or reading failed).
    Received(std::io::Result<(usize, SocketAddr)>),
    /// A datagram to send (`None`: every sender is gone).
    Send(Option<Datagram>),
}

/// The socket task: read and sort, send what is queued.
async fn run(
    socket: UdpSocket,
    consumers: Consumers,
    to_send: Receiver<Datagram>,
    stats: Arc<UdpStats>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sending = true;
    loop {
        let step = {
            let recv = async { Step::Received(socket.recv_from(&mut buf).await) };
            if sending {
                // `race` picks the first to poll at random, so a flood of arrivals cannot
                // starve sending (nor the other way round).
                future::race(recv, async { Step::Send(to_send.recv().await.ok()) }).await
            } else {
                recv.await
            }
        };
        match step {
            Step::Received(Ok((n, from))) => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                deliver(&consumers, &stats, from, &buf[..n]);
            }
            Step::Received(Err(e)) => {
                // ICMP port unreachable from an earlier send shows up here as
                // ConnectionRefused on Linux; it says nothing about this socket.
                log::trace!("udp receive: {e}");
            }
            Step::Send(Some((to, bytes))) => match socket.send_to(&bytes, to).await {
                Ok(_) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                    log::trace!("udp send to {to}: {e}");
                }
            },
            Step::Send(None) => sending = false,
        }
    }
}

/// Hands one datagram to whoever it is for.
fn deliver(consumers: &Consumers, stats: &UdpStats, from: SocketAddr, bytes: &[u8]) {
    match classify(bytes) {
        DatagramKind::Krpc => {
            let Some(krpc) = &consumers.krpc else {
                stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                return;
            };
            match krpc.try_send((from, bytes.to_vec())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                    stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        DatagramKind::Utp => {
            // uTP hook: the uTP actor (next issue) takes these from here, through a queue like
            // `krpc`. Until it exists a uTP SYN simply goes unanswered, and the peer falls back
            // to TCP, as it would against any TCP-only client.
            stats.utp_in.fetch_add(1, Ordering::Relaxed);
            stats.dropped_in.fetch_add(1, Ordering::Relaxed);
        }
        DatagramKind::Other => {
            stats.dropped_in.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;
    use std::time::Duration;

    #[test]
    fn datagrams_are_sorted_by_their_first_byte() {
        let rt = Runtime::new(1);
        let (krpc, packets) = async_channel::bounded(KRPC_QUEUE);
        let consumers = Consumers { krpc: Some(krpc) };
        let mut udp = Udp::bind("127.0.0.1:0".parse().unwrap(), consumers, &rt.handle()).unwrap();
        let to = udp.local_addr();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = peer.local_addr().unwrap();
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let syn = [0x41u8; 20];
        peer.send_to(&syn, to).unwrap();
        peer.send_to(b"\x13BitTorrent protocol", to).unwrap();
        peer.send_to(ping, to).unwrap();
        let got = rt.block_on(async {
            futures_lite::future::or(async { packets.recv().await.ok() }, async {
                smol::Timer::after(Duration::from_secs(5)).await;
                None
            })
            .await
        });
        assert_eq!(got, Some((me, ping.to_vec())));
        assert_eq!(udp.stats().utp_in.load(Ordering::Relaxed), 1);
        assert_eq!(udp.stats().dropped_in.load(Ordering::Relaxed), 2);
        // And what is queued goes out.
        udp.outgoing().try_send((me, b"d1:y1:re".to_vec())).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"d1:y1:re"[..], to));
        rt.block_on(udp.shutdown());
    }
}
