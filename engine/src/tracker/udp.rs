//! The packets of the UDP tracker protocol (BEP 15), encoded and decoded as pure functions.
//!
//! A client first sends [`connect_request`] and gets a connection id (valid for a minute),
//! then sends [`announce_request`] or [`scrape_request`] with it. Every reply carries the
//! transaction id of its request; a reply with another id is [`TrackerError::UdpTransaction`]
//! (the caller drops it and keeps waiting), and an error reply (action 3) is
//! [`TrackerError::Failure`]. All integers are big-endian.
//!
//! ```
//! use shoal_engine::tracker::udp;
//! let packet = udp::connect_request(7);
//! assert_eq!(packet.len(), 16);
//! let mut reply = [0u8; 16];
//! reply[4..8].copy_from_slice(&7u32.to_be_bytes());
//! reply[8..].copy_from_slice(&42u64.to_be_bytes());
//! assert_eq!(udp::parse_connect_response(&reply, 7), Ok(42));
//! ```

use super::http::{clamp_interval, compact_v4, compact_v6, count};
use super::{
    lossy_bounded, AnnounceRequest, AnnounceResponse, Event, ScrapeResponse, ScrapeStats,
    TrackerError,
};
use crate::InfoHash;

/// The magic constant that opens a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
/// Action: connect.
pub const ACTION_CONNECT: u32 = 0;
/// Action: announce.
pub const ACTION_ANNOUNCE: u32 = 1;
/// Action: scrape.
pub const ACTION_SCRAPE: u32 = 2;
/// Action: error (replies only).
pub const ACTION_ERROR: u32 = 3;
/// The most info hashes one scrape may carry (BEP 15: "up to about 74"), so the request fits
/// in a small datagram. Extra hashes are left out.
pub const MAX_SCRAPE_HASHES: usize = 74;
/// The size of an announce request without extensions.
pub const ANNOUNCE_REQUEST_LEN: usize = 98;
/// The largest reply worth reading: a datagram cannot be larger than 64 KiB.
pub const MAX_PACKET: usize = 65_536;

/// A connect request: protocol id, action 0, transaction id.
pub fn connect_request(transaction_id: u32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    p[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    p[12..].copy_from_slice(&transaction_id.to_be_bytes());
    p
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Checks the 8-byte header of a reply (action, transaction id) and its length; an error
/// reply for our transaction becomes [`TrackerError::Failure`] with its message.
fn check_header(
    buf: &[u8],
    transaction_id: u32,
    action: u32,
    min: usize,
) -> Result<(), TrackerError> {
    if buf.len() < 8 {
        return Err(TrackerError::UdpTruncated {
            len: buf.len(),
            min: 8,
        });
    }
    let got_tid = u32_at(buf, 4);
    if got_tid != transaction_id {
        return Err(TrackerError::UdpTransaction {
            expected: transaction_id,
            got: got_tid,
        });
    }
    match u32_at(buf, 0) {
        ACTION_ERROR => Err(TrackerError::Failure(lossy_bounded(&buf[8..]))),
        a if a != action => Err(TrackerError::UdpAction {
            expected: action,
            got: a,
        }),
        _ if buf.len() < min => Err(TrackerError::UdpTruncated {
            len: buf.len(),
            min,
        }),
        _ => Ok(()),
    }
}

/// Reads a connect reply; returns the connection id.
pub fn parse_connect_response(buf: &[u8], transaction_id: u32) -> Result<u64, TrackerError> {
    check_header(buf, transaction_id, ACTION_CONNECT, 16)?;
    Ok(u64_at(buf, 8))
}

/// The BEP 15 code of an event.
fn event_code(event: Option<Event>) -> u32 {
    match event {
        None => 0,
        Some(Event::Completed) => 1,
        Some(Event::Started) => 2,
        Some(Event::Stopped) => 3,
    }
}

/// An announce request. The IP field is 0 (the tracker uses the packet's source address);
/// `numwant` is -1 ("tracker's default") when `None`. `tracker_id` has no place in BEP 15.
pub fn announce_request(
    connection_id: u64,
    transaction_id: u32,
    req: &AnnounceRequest,
) -> [u8; ANNOUNCE_REQUEST_LEN] {
    let mut p = [0u8; ANNOUNCE_REQUEST_LEN];
    p[..8].copy_from_slice(&connection_id.to_be_bytes());
    p[8..12].copy_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    p[12..16].copy_from_slice(&transaction_id.to_be_bytes());
    p[16..36].copy_from_slice(&req.info_hash.0);
    p[36..56].copy_from_slice(&req.peer_id.0);
    p[56..64].copy_from_slice(&req.downloaded.to_be_bytes());
    p[64..72].copy_from_slice(&req.left.to_be_bytes());
    p[72..80].copy_from_slice(&req.uploaded.to_be_bytes());
    p[80..84].copy_from_slice(&event_code(req.event).to_be_bytes());
    // 84..88: IP address, 0 = the sender's.
    p[88..92].copy_from_slice(&req.key.to_be_bytes());
    let numwant = req
        .numwant
        .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX));
    p[92..96].copy_from_slice(&numwant.to_be_bytes());
    p[96..98].copy_from_slice(&req.port.to_be_bytes());
    p
}

/// Reads an announce reply. `ipv6` says whether the request went over IPv6, in which case the
/// peers are 18 bytes each instead of 6.
pub fn parse_announce_response(
    buf: &[u8],
    transaction_id: u32,
    ipv6: bool,
) -> Result<AnnounceResponse, TrackerError> {
    check_header(buf, transaction_id, ACTION_ANNOUNCE, 20)?;
    let mut resp = AnnounceResponse {
        interval: clamp_interval(i64::from(u32_at(buf, 8))),
        incomplete: Some(count(i64::from(u32_at(buf, 12)))),
        complete: Some(count(i64::from(u32_at(buf, 16)))),
        ..Default::default()
    };
    if ipv6 {
        compact_v6(&buf[20..], &mut resp.peers)?;
    } else {
        compact_v4(&buf[20..], &mut resp.peers)?;
    }
    Ok(resp)
}

/// A scrape request for at most [`MAX_SCRAPE_HASHES`] torrents.
pub fn scrape_request(connection_id: u64, transaction_id: u32, hashes: &[InfoHash]) -> Vec<u8> {
    let hashes = &hashes[..hashes.len().min(MAX_SCRAPE_HASHES)];
    let mut p = Vec::with_capacity(16 + 20 * hashes.len());
    p.extend_from_slice(&connection_id.to_be_bytes());
    p.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    p.extend_from_slice(&transaction_id.to_be_bytes());
    for h in hashes {
        p.extend_from_slice(&h.0);
    }
    p
}

/// Reads a scrape reply: 12 bytes (seeders, completed, leechers) per hash of the request, in
/// the request's order. A shorter reply is an error; extra bytes are ignored.
pub fn parse_scrape_response(
    buf: &[u8],
    transaction_id: u32,
    hashes: &[InfoHash],
) -> Result<ScrapeResponse, TrackerError> {
    let hashes = &hashes[..hashes.len().min(MAX_SCRAPE_HASHES)];
    check_header(buf, transaction_id, ACTION_SCRAPE, 8 + 12 * hashes.len())?;
    let files = hashes
        .iter()
        .zip(buf[8..].chunks_exact(12))
        .map(|(h, c)| {
            let stats = ScrapeStats {
                complete: u32_at(c, 0),
                downloaded: u32_at(c, 4),
                incomplete: u32_at(c, 8),
            };
            (*h, stats)
        })
        .collect();
    Ok(ScrapeResponse { files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerId;

    fn header(action: u32, tid: u32) -> Vec<u8> {
        let mut p = action.to_be_bytes().to_vec();
        p.extend_from_slice(&tid.to_be_bytes());
        p
    }

    #[test]
    fn connect() {
        let p = connect_request(0x0102_0304);
        assert_eq!(
            p,
            *b"\x00\x00\x04\x17\x27\x10\x19\x80\x00\x00\x00\x00\x01\x02\x03\x04"
        );
        let mut r = header(0, 9);
        r.extend_from_slice(&0xfeed_u64.to_be_bytes());
        assert_eq!(parse_connect_response(&r, 9), Ok(0xfeed));
        assert_eq!(
            parse_connect_response(&r, 8),
            Err(TrackerError::UdpTransaction {
                expected: 8,
                got: 9
            })
        );
        assert_eq!(
            parse_connect_response(&r[..15], 9),
            Err(TrackerError::UdpTruncated { len: 15, min: 16 })
        );
        assert_eq!(
            parse_connect_response(&r[..3], 9),
            Err(TrackerError::UdpTruncated { len: 3, min: 8 })
        );
        let mut wrong = header(1, 9);
        wrong.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse_connect_response(&wrong, 9),
            Err(TrackerError::UdpAction {
                expected: 0,
                got: 1
            })
        );
    }

    #[test]
    fn error_action() {
        let mut r = header(3, 5);
        r.extend_from_slice(b"unknown torrent");
        assert_eq!(
            parse_connect_response(&r, 5),
            Err(TrackerError::Failure("unknown torrent".into()))
        );
        assert_eq!(
            parse_announce_response(&r, 5, false),
            Err(TrackerError::Failure("unknown torrent".into()))
        );
        // An error for another transaction is not ours.
        assert!(matches!(
            parse_announce_response(&r, 6, false),
            Err(TrackerError::UdpTransaction { .. })
        ));
    }

    #[test]
    fn announce() {
        let req = AnnounceRequest {
            info_hash: InfoHash([0xaa; 20]),
            peer_id: PeerId([0xbb; 20]),
            port: 0x1ae1,
            uploaded: 3,
            downloaded: 1,
            left: 2,
            event: Some(Event::Started),
            numwant: None,
            key: 0x1234_5678,
            tracker_id: None,
        };
        let p = announce_request(0x1122_3344_5566_7788, 77, &req);
        assert_eq!(&p[..8], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(u32_at(&p, 8), 1);
        assert_eq!(u32_at(&p, 12), 77);
        assert_eq!(&p[16..36], &[0xaa; 20]);
        assert_eq!(&p[36..56], &[0xbb; 20]);
        assert_eq!(u64_at(&p, 56), 1);
        assert_eq!(u64_at(&p, 64), 2);
        assert_eq!(u64_at(&p, 72), 3);
        assert_eq!(u32_at(&p, 80), 2);
        assert_eq!(u32_at(&p, 84), 0);
        assert_eq!(u32_at(&p, 88), 0x1234_5678);
        assert_eq!(u32_at(&p, 92), u32::MAX, "numwant -1");
        assert_eq!(&p[96..], &[0x1a, 0xe1]);
        let p = announce_request(
            0,
            0,
            &AnnounceRequest {
                numwant: Some(u32::MAX),
                event: None,
                ..req
            },
        );
        assert_eq!(u32_at(&p, 92), i32::MAX as u32);
        assert_eq!(u32_at(&p, 80), 0);

        let mut r = header(1, 77);
        for n in [900u32, 3, 4] {
            r.extend_from_slice(&n.to_be_bytes());
        }
        r.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 1, 0, 0]);
        let a = parse_announce_response(&r, 77, false).unwrap();
        assert_eq!(a.interval, 900);
        assert_eq!((a.incomplete, a.complete), (Some(3), Some(4)));
        assert_eq!(a.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
        // The same 12 bytes are not a whole IPv6 peer.
        assert!(matches!(
            parse_announce_response(&r, 77, true),
            Err(TrackerError::CompactPeers { .. })
        ));
        assert!(matches!(
            parse_announce_response(&r[..19], 77, false),
            Err(TrackerError::UdpTruncated { .. })
        ));
        assert!(matches!(
            parse_announce_response(&r[..25], 77, false),
            Err(TrackerError::CompactPeers { .. })
        ));
    }

    #[test]
    fn scrape() {
        let hashes = [InfoHash([1; 20]), InfoHash([2; 20])];
        let p = scrape_request(5, 6, &hashes);
        assert_eq!(p.len(), 16 + 40);
        assert_eq!(u32_at(&p, 8), 2);
        assert_eq!(&p[36..], &[2; 20]);
        assert_eq!(
            scrape_request(5, 6, &[InfoHash([0; 20]); 100]).len(),
            16 + 20 * MAX_SCRAPE_HASHES
        );

        let mut r = header(2, 6);
        for n in [1u32, 2, 3, 4, 5, 6] {
            r.extend_from_slice(&n.to_be_bytes());
        }
        let s = parse_scrape_response(&r, 6, &hashes).unwrap();
        assert_eq!(
            s.get(&hashes[0]),
            Some(ScrapeStats {
                complete: 1,
                downloaded: 2,
                incomplete: 3
            })
        );
        assert_eq!(
            s.get(&hashes[1]),
            Some(ScrapeStats {
                complete: 4,
                downloaded: 5,
                incomplete: 6
            })
        );
        assert!(matches!(
            parse_scrape_response(&r[..30], 6, &hashes),
            Err(TrackerError::UdpTruncated { .. })
        ));
    }
}
