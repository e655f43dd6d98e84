//! What real clients send that shoal does not use is ignored, never a reason to disconnect: a
//! raw peer on a `TcpStream` speaks to `shoal seed` with the extension protocol (BEP 10) and the
//! fast extension (BEP 6), sends everything a real client might (a malformed and a foreign
//! extended handshake, extension messages we never advertised, suggest, allowed-fast, a DHT
//! port, an unknown message id), and still gets its data. shoal's side is checked too: it
//! advertises both bits, sends have-all and an extended handshake with an empty `m`, and
//! rejects a request while choking.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;

/// Bound on every read from shoal.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// One length-prefixed message: `None` for a keep-alive, else (id, payload).
fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .expect("read a message length from shoal");
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return None;
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read a message from shoal");
    let id = body[0];
    Some((id, body[1..].to_vec()))
}

/// Reads messages until one with `id`; panics on a deadline.
fn wait_for(s: &mut TcpStream, id: u8, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + READ_LIMIT;
    loop {
        assert!(Instant::now() < deadline, "no {what} from shoal");
        if let Some((got, payload)) = read_msg(s) {
            if got == id {
                return payload;
            }
        }
    }
}

fn msg(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(id);
    out.extend_from_slice(payload);
    out
}

fn block(piece: u32, begin: u32, len: u32) -> Vec<u8> {
    [piece, begin, len]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn unsupported_messages_are_ignored_and_fast_extension_understood() {
    let dir = tempdir();
    let piece = 32 * 1024u32;
    let total = 3 * piece as usize + 4_101;
    let content = dir.path().join("src").join("raw.bin");
    write_random_file(&content, total, 42);
    let torrent = dir.path().join("raw.torrent");
    let hash = create_torrent(&content, &torrent, &piece.to_string(), None);
    let log = dir.path().join("shoal.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _shoal = spawn_shoal(
        &[
            "seed",
            torrent.to_str().unwrap(),
            content.to_str().unwrap(),
            "--listen",
            &listen,
            "--no-trackers",
        ],
        &log,
    );
    wait_listening(port, Duration::from_secs(30), "shoal", &[&log]);

    let mut s = TcpStream::connect(&listen).expect("connect to shoal");
    s.set_read_timeout(Some(READ_LIMIT)).unwrap();
    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
    hs.extend_from_slice(&hex_bytes(&hash));
    hs.extend_from_slice(b"-XX0001-rawpeer12345");
    s.write_all(&hs).unwrap();
    let mut theirs = [0u8; 68];
    s.read_exact(&mut theirs).expect("shoal's handshake");
    assert_eq!(&theirs[28..48], &hs[28..48], "info hash");
    assert_eq!(theirs[25] & 0x10, 0x10, "shoal advertises BEP 10");
    assert_eq!(theirs[27] & 0x04, 0x04, "shoal advertises BEP 6");

    // A seed with the fast extension says have-all (0x0E), then its extended handshake (20).
    let (first, _) = read_msg(&mut s).expect("a first message");
    assert_eq!(first, 0x0E, "have-all first");
    let ext = wait_for(&mut s, 20, "extended handshake");
    assert_eq!(ext[0], 0, "extended handshake id");
    let ext = String::from_utf8_lossy(&ext[1..]).into_owned();
    // `m` names ut_metadata (BEP 9, we serve our metadata) and ut_pex (BEP 11), with the
    // metadata's size.
    assert!(
        ext.starts_with("d1:md11:ut_metadatai"),
        "m names ut_metadata: {ext}"
    );
    assert!(ext.contains("6:ut_pexi"), "m names ut_pex: {ext}");
    assert!(ext.contains("13:metadata_sizei"), "metadata_size: {ext}");
    assert!(ext.contains(":shoal "), "v names shoal: {ext}");
    assert!(ext.contains("4:reqqi"), "reqq: {ext}");

    // Everything below is ignored; none of it may cost the connection.
    let mut junk = Vec::new();
    junk.extend(msg(20, b"\x00d4:reqq")); // a malformed extended handshake
    junk.extend(msg(
        20,
        b"\x00d1:md6:ut_pexi1e11:ut_metadatai2ee1:v9:other 1.04:reqqi250ee",
    ));
    junk.extend(msg(20, b"\x01d5:added0:e")); // ut_pex, which we never advertised
    junk.extend(msg(20, b"\x02d8:msg_typei0e5:piecei0ee")); // ut_metadata request
    junk.extend(msg(0x0D, &1u32.to_be_bytes())); // suggest piece 1
    junk.extend(msg(0x11, &2u32.to_be_bytes())); // allowed fast piece 2
    junk.extend(msg(9, &6881u16.to_be_bytes())); // DHT port
    junk.extend(msg(0x63, b"???")); // an id nobody assigned
    junk.extend(msg(0x0F, b"")); // have-none
    junk.extend([0, 0, 0, 0]); // keep-alive
    s.write_all(&junk).unwrap();

    // Choked, a request is rejected (BEP 6), with the same block.
    s.write_all(&msg(6, &block(0, 0, 16384))).unwrap();
    let rejected = wait_for(&mut s, 0x10, "reject");
    assert_eq!(rejected, block(0, 0, 16384));

    // Interested: shoal unchokes us and serves the short last piece byte-exact.
    s.write_all(&msg(2, b"")).unwrap();
    wait_for(&mut s, 1, "unchoke");
    let last_len = (total - 3 * piece as usize) as u32;
    s.write_all(&msg(6, &block(3, 0, last_len))).unwrap();
    let got = wait_for(&mut s, 7, "piece");
    assert_eq!(&got[..8], &block(3, 0, 0)[..8]);
    let data = std::fs::read(&content).unwrap();
    assert_eq!(&got[8..], &data[3 * piece as usize..], "last piece bytes");
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("protocol error"),
        "{}",
        tails(&[&log])
    );
}
