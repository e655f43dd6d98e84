//! The UDP tracker transport (BEP 15): connect, then announce or scrape, with retransmission.
//!
//! Each exchange opens a socket connected to the tracker (so the kernel drops datagrams from
//! anyone else) and sends one request at a time. A reply with another transaction id is
//! dropped and the wait goes on; an error reply, a truncated reply or a reply with the wrong
//! action ends the exchange with an error. Without a reply, the request is sent again after
//! `base * 2^n` (BEP 15 uses a base of 15 s), from `connect` if the connection id has expired
//! meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::future;
use shoal_engine::tracker::{udp, AnnounceRequest, AnnounceResponse, ScrapeResponse, TrackerError};
use shoal_engine::InfoHash;
use smol::net::UdpSocket;
use smol::Timer;

use super::{AnnounceError, Timing};

/// How long a connection id may be used (BEP 15: one minute from the tracker's reply).
pub(super) const CONNECTION_TTL: Duration = Duration::from_secs(60);

/// A connection id and when the tracker gave it.
#[derive(Clone, Copy, Debug)]
pub(super) struct UdpConnection {
    /// The id.
    id: u64,
    /// When the tracker gave it.
    since: Instant,
}

impl UdpConnection {
    /// The id, if it is still valid at `now`.
    fn fresh(&self, now: Instant) -> Option<u64> {
        (now.saturating_duration_since(self.since) < CONNECTION_TTL).then_some(self.id)
    }
}

/// One announce to the UDP tracker at `host_port`, reusing `conn` while it is valid.
pub(super) async fn announce(
    host_port: &str,
    conn: &mut Option<UdpConnection>,
    timing: &Timing,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, AnnounceError> {
    let (socket, ipv6) = open(host_port).await?;
    let result = exchange(
        &socket,
        conn,
        timing,
        |id, tid| udp::announce_request(id, tid, req).to_vec(),
        |buf, tid| udp::parse_announce_response(buf, tid, ipv6),
    )
    .await;
    if result.is_err() {
        // The id may be why it failed; the next exchange asks for a new one.
        *conn = None;
    }
    result
}

/// One scrape of the UDP tracker at `host_port`.
pub(super) async fn scrape(
    host_port: &str,
    conn: &mut Option<UdpConnection>,
    timing: &Timing,
    hashes: &[InfoHash],
) -> Result<ScrapeResponse, AnnounceError> {
    let (socket, _) = open(host_port).await?;
    let hashes = &hashes[..hashes.len().min(udp::MAX_SCRAPE_HASHES)];
    let result = exchange(
        &socket,
        conn,
        timing,
        |id, tid| udp::scrape_request(id, tid, hashes),
        |buf, tid| udp::parse_scrape_response(buf, tid, hashes),
    )
    .await;
    if result.is_err() {
        *conn = None;
    }
    result
}

/// Resolves `host_port` and opens a socket connected to it; says whether it is IPv6.
async fn open(host_port: &str) -> Result<(UdpSocket, bool), AnnounceError> {
    let addrs = smol::net::resolve(host_port)
        .await
        .map_err(|e| AnnounceError::BadUrl(format!("cannot resolve {host_port}: {e}")))?;
    // IPv4 first: the addresses of most trackers, and what every peer can dial.
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| AnnounceError::BadUrl(format!("{host_port} has no address")))?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(AnnounceError::Io)?;
    socket.connect(addr).await.map_err(AnnounceError::Io)?;
    Ok((socket, addr.is_ipv6()))
}

/// The wait before the n-th retransmission: `base * 2^n`.
fn retransmit_wait(timing: &Timing, n: u32) -> Duration {
    timing.udp_retransmit_base.saturating_mul(1u32 << n.min(16))
}

/// Connect (unless `conn` is fresh), then one request and its reply, with retransmission.
async fn exchange<T>(
    socket: &UdpSocket,
    conn: &mut Option<UdpConnection>,
    timing: &Timing,
    request: impl Fn(u64, u32) -> Vec<u8>,
    parse: impl Fn(&[u8], u32) -> Result<T, TrackerError>,
) -> Result<T, AnnounceError> {
    let mut buf = vec![0u8; udp::MAX_PACKET];
    // The last reply with a transaction id that was not ours, reported if nothing else comes.
    let mut stray = None;
    // One transaction id per request, kept across retransmissions, so a late reply to an
    // earlier copy still counts.
    let (connect_tid, request_tid) = (fastrand::u32(..), fastrand::u32(..));
    for n in 0..=timing.udp_max_retransmits {
        let wait = retransmit_wait(timing, n);
        let id = match conn.and_then(|c| c.fresh(Instant::now())) {
            Some(id) => id,
            None => {
                let packet = udp::connect_request(connect_tid);
                socket.send(&packet).await.map_err(AnnounceError::Io)?;
                let parse_connect = |b: &[u8]| udp::parse_connect_response(b, connect_tid);
                match reply(socket, &mut buf, wait, &mut stray, parse_connect).await? {
                    Some(id) => {
                        *conn = Some(UdpConnection {
                            id,
                            since: Instant::now(),
                        });
                        id
                    }
                    None => continue,
                }
            }
        };
        socket
            .send(&request(id, request_tid))
            .await
            .map_err(AnnounceError::Io)?;
        if let Some(r) = reply(socket, &mut buf, wait, &mut stray, |b| {
            parse(b, request_tid)
        })
        .await?
        {
            return Ok(r);
        }
    }
    Err(stray.map_or(AnnounceError::Timeout, AnnounceError::Tracker))
}

/// Waits up to `wait` for the reply that `parse` accepts. `Ok(None)` on timeout; replies to
/// other transactions are dropped (and remembered in `stray`).
async fn reply<T>(
    socket: &UdpSocket,
    buf: &mut [u8],
    wait: Duration,
    stray: &mut Option<TrackerError>,
    parse: impl Fn(&[u8]) -> Result<T, TrackerError>,
) -> Result<Option<T>, AnnounceError> {
    let deadline = Instant::now() + wait;
    loop {
        let received = future::or(async { Some(socket.recv(buf).await) }, async {
            Timer::at(deadline).await;
            None
        })
        .await;
        let len = match received {
            None => return Ok(None),
            Some(Ok(len)) => len,
            Some(Err(e)) => return Err(AnnounceError::Io(e)),
        };
        match parse(&buf[..len]) {
            Ok(r) => return Ok(Some(r)),
            Err(e @ TrackerError::UdpTransaction { .. }) => {
                log::debug!("udp tracker: dropping a stray reply: {e}");
                *stray = Some(e);
            }
            Err(e) => return Err(AnnounceError::Tracker(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_last_a_minute() {
        let now = Instant::now();
        let c = UdpConnection { id: 5, since: now };
        assert_eq!(c.fresh(now), Some(5));
        assert_eq!(c.fresh(now + Duration::from_secs(59)), Some(5));
        assert_eq!(c.fresh(now + CONNECTION_TTL), None);
    }

    #[test]
    fn retransmissions_double() {
        let t = Timing {
            udp_retransmit_base: Duration::from_secs(15),
            ..Timing::default()
        };
        let waits: Vec<u64> = (0..4).map(|n| retransmit_wait(&t, n).as_secs()).collect();
        assert_eq!(waits, vec![15, 30, 60, 120]);
        assert!(retransmit_wait(&t, 100) >= Duration::from_secs(15 * 65536));
    }
}
