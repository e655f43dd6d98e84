//! Message stream encryption against a real libtorrent (python3-libtorrent 2.0.8): the engine's
//! MSE state machine over a blocking `TcpStream`, as the dialling side (a libtorrent seeder with
//! encryption forced, from which we fetch a block) and as the answering side (a libtorrent
//! downloader dials us and downloads the whole torrent through our handshake and cipher).

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::clients::{
    free_port, libtorrent_finished, tails, wait_listening, wait_until, Libtorrent, LtEncryption,
};
use shoal_engine::bitfield::Bitfield;
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::lengths::BlockInfo;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::mse::{looks_like_plaintext, Cipher, Done, Handshake, Policy, Secrets};
use shoal_engine::wire::{self, Decoded, Message, DEFAULT_MAX_MESSAGE_LEN};
use shoal_engine::{InfoHash, PeerId};

/// Bytes of content: small, so the whole download through our responder takes a moment.
const CONTENT_LEN: usize = 1024 * 1024 + 12_345;
/// Piece length of the test torrent.
const PIECE_LEN: u32 = 64 * 1024;
/// How long libtorrent may take to start, check its data, dial or finish.
const LT_LIMIT: Duration = Duration::from_secs(30);
/// How long one socket read may wait.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Held by each test for its whole run: one libtorrent at a time, so that a port picked by
/// `free_port` for one cannot be taken by another's listener before it binds (a dial would
/// then reach the wrong libtorrent).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A torrent of random content in a temporary folder.
struct Setup {
    dir: tempfile::TempDir,
    torrent: PathBuf,
    info_hash: InfoHash,
    pieces: u32,
    content: Vec<u8>,
}

impl Setup {
    fn new(seed: u64) -> Self {
        let dir = common::tempdir();
        let src = dir.path().join("src");
        let data = src.join("data.bin");
        common::write_random_file(&data, CONTENT_LEN, seed);
        let opts = CreateOptions {
            piece_length: Some(PIECE_LEN),
            ..CreateOptions::default()
        };
        let bytes = create_torrent(&data, &opts).expect("create torrent");
        let torrent = dir.path().join("t.torrent");
        fs::write(&torrent, &bytes).unwrap();
        let meta = Metainfo::from_bytes(&bytes).expect("parse torrent");
        Setup {
            torrent,
            info_hash: meta.info_hash,
            pieces: meta.info.pieces.len() as u32,
            content: fs::read(&data).unwrap(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn src(&self) -> PathBuf {
        self.path("src")
    }
}

/// Random secrets for one handshake (a test needs no OS randomness, just fresh values).
fn secrets(seed: u64) -> Secrets {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut random = [0u8; Secrets::RANDOM_LEN];
    rng.fill(&mut random);
    Secrets::from_random(&random)
}

/// Our BitTorrent handshake: no extension bits, so libtorrent answers with a plain bitfield.
fn our_handshake(info_hash: InfoHash) -> wire::Handshake {
    wire::Handshake {
        reserved: [0; 8],
        info_hash,
        peer_id: PeerId(*b"-SH0001-mse-interop-"),
    }
}

/// Runs `hs` over `stream` until it completes; `pending` holds bytes already read. Returns the
/// outcome and the bytes read past the handshake (the start of the peer's stream, raw).
fn drive(
    stream: &mut TcpStream,
    hs: &mut Handshake,
    mut pending: Vec<u8>,
) -> Result<(Done, Vec<u8>), String> {
    let deadline = Instant::now() + LT_LIMIT;
    let mut buf = [0u8; 4096];
    loop {
        while let Some(out) = hs.poll_output() {
            stream.write_all(&out).map_err(|e| format!("write: {e}"))?;
        }
        if let Some(done) = hs.poll_done() {
            return Ok((done, pending));
        }
        if !pending.is_empty() {
            let used = hs.handle_input(&pending).map_err(|e| e.to_string())?;
            pending.drain(..used);
            continue;
        }
        if Instant::now() > deadline {
            return Err("handshake timed out".into());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("peer closed the connection".into()),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A connection after the handshake: what we send is encrypted and what we read decrypted
/// when RC4 was selected.
struct Conn {
    stream: TcpStream,
    cipher: Option<Cipher>,
    /// Decrypted bytes not yet parsed.
    plain: Vec<u8>,
    /// Whether libtorrent closed the connection.
    closed: bool,
}

impl Conn {
    fn new(stream: TcpStream, done: Done, mut leftover: Vec<u8>) -> Self {
        let mut cipher = done.cipher;
        if let Some(c) = &mut cipher {
            c.decrypt(&mut leftover);
        }
        // A responder's IA (already decrypted) comes before the stream.
        let mut plain = done.initial_payload;
        plain.extend_from_slice(&leftover);
        Conn {
            stream,
            cipher,
            plain,
            closed: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let mut b = bytes.to_vec();
        if let Some(c) = &mut self.cipher {
            c.encrypt(&mut b);
        }
        self.stream.write_all(&b).expect("write to libtorrent");
    }

    fn send_message(&mut self, m: &Message<'_>) {
        let mut out = Vec::new();
        m.encode(&mut out);
        self.send(&out);
    }

    /// Reads more bytes; false when the read timed out or libtorrent hung up (`closed`).
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 64 * 1024];
        if self.closed {
            return false;
        }
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                if let Some(c) = &mut self.cipher {
                    c.decrypt(&mut buf[..n]);
                }
                self.plain.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                self.closed = true;
                false
            }
            Err(e) => panic!("read from libtorrent: {e}"),
        }
    }

    fn handshake(&mut self) -> wire::Handshake {
        loop {
            match wire::Handshake::decode(&self.plain) {
                Ok(Some(h)) => {
                    self.plain.drain(..wire::HANDSHAKE_LEN);
                    return h;
                }
                Ok(None) => assert!(self.fill(), "no handshake from libtorrent"),
                Err(e) => panic!("bad handshake from libtorrent: {e}"),
            }
        }
    }

    /// Hands the next whole message to `f`, reading as needed; `None` when a read timed out.
    fn next<T>(&mut self, f: impl FnOnce(&Message<'_>) -> T) -> Option<T> {
        loop {
            match wire::decode(&self.plain, DEFAULT_MAX_MESSAGE_LEN) {
                Ok(Decoded::Message { message, consumed }) => {
                    let out = f(&message);
                    self.plain.drain(..consumed);
                    return Some(out);
                }
                Ok(Decoded::NeedMore(_)) => {
                    if !self.fill() {
                        return None;
                    }
                }
                Err(e) => panic!("bad message from libtorrent: {e}"),
            }
        }
    }
}

/// A libtorrent seeder of `setup` with `encryption`, checked and listening.
fn lt_seeder(setup: &Setup, encryption: LtEncryption, log: &Path) -> (common::ChildGuard, u16) {
    let port = free_port();
    let child = Libtorrent {
        seed: true,
        encryption,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &setup.src(), port, log);
    wait_until(LT_LIMIT, "libtorrent to check its data", &[log], || {
        libtorrent_finished(log)
    });
    wait_listening(port, LT_LIMIT, "libtorrent", &[log]);
    (child, port)
}

/// Dials the seeder with MSE under `policy` (our BitTorrent handshake in IA).
fn dial(setup: &Setup, port: u16, policy: Policy, seed: u64) -> Result<Conn, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to libtorrent");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let ia = our_handshake(setup.info_hash).to_bytes();
    let mut hs = Handshake::initiator(setup.info_hash, policy, secrets(seed), &ia).unwrap();
    let (done, leftover) = drive(&mut stream, &mut hs, Vec::new())?;
    assert_eq!(done.info_hash, setup.info_hash);
    assert!(done.initial_payload.is_empty());
    Ok(Conn::new(stream, done, leftover))
}

/// After the handshake with a seeder: its handshake and bitfield arrive readable, and a block
/// we ask for (our request encrypted as negotiated) comes back byte-exact.
fn fetch_a_block(setup: &Setup, conn: &mut Conn) {
    let theirs = conn.handshake();
    assert_eq!(theirs.info_hash, setup.info_hash);
    let bitfield = conn
        .next(|m| match m {
            Message::Bitfield(b) => b.to_vec(),
            other => panic!("expected a bitfield first, got {other:?}"),
        })
        .expect("bitfield from libtorrent");
    let bf = Bitfield::from_bytes(&bitfield, setup.pieces).expect("valid bitfield");
    assert_eq!(bf.count_ones(), setup.pieces, "the seeder has every piece");
    conn.send_message(&Message::Interested);
    let want = BlockInfo {
        piece: 3,
        begin: 16 * 1024,
        len: 16 * 1024,
    };
    let deadline = Instant::now() + LT_LIMIT;
    let mut requested = false;
    loop {
        assert!(Instant::now() < deadline, "no block from libtorrent");
        let got = conn.next(|m| match m {
            Message::Unchoke => Some(None),
            Message::Piece { piece, begin, data } => Some(Some((*piece, *begin, data.to_vec()))),
            _ => None,
        });
        match got {
            Some(Some(None)) if !requested => {
                conn.send_message(&Message::Request(want));
                requested = true;
            }
            Some(Some(Some((piece, begin, data)))) => {
                assert_eq!((piece, begin), (want.piece, want.begin));
                let at = (piece * PIECE_LEN + begin) as usize;
                assert!(
                    data == setup.content[at..at + want.len as usize],
                    "block differs"
                );
                return;
            }
            _ => {}
        }
    }
}

/// Bytes in libtorrent's log so far, to look only at what it writes next.
fn log_len(log: &Path) -> usize {
    fs::read(log).map(|t| t.len()).unwrap_or(0)
}

/// Waits for a libtorrent status line written after byte `since` of its log that reports
/// `peers` connected peers, `rc4` of them RC4-encrypted.
fn wait_rc4_peers(log: &Path, since: usize, rc4: usize, peers: usize) {
    let rc4 = format!("\"rc4\": {rc4},");
    let peers = format!("\"peers\": {peers},");
    wait_until(
        LT_LIMIT,
        &format!("libtorrent to report {rc4} of {peers}"),
        &[log],
        || {
            let text = fs::read(log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text[since.min(text.len())..]);
            text.lines()
                .any(|l| l.contains("\"status\"") && l.contains(&rc4) && l.contains(&peers))
        },
    );
}

/// Waits for libtorrent to log (after byte `since`) that it dropped a peer for want of a common
/// encryption method.
fn wait_refused(log: &Path, since: usize) {
    wait_until(
        LT_LIMIT,
        "libtorrent to refuse the crypto method",
        &[log],
        || {
            let text = fs::read(log).unwrap_or_default();
            String::from_utf8_lossy(&text[since.min(text.len())..])
                .contains("unsupported encryption mode")
        },
    );
}

#[test]
fn we_dial_a_forced_rc4_libtorrent_seeder() {
    let _serial = serial();
    let setup = Setup::new(1);
    let log = setup.path("lt.log");
    let (_lt, port) = lt_seeder(&setup, LtEncryption::ForcedRc4, &log);
    for (i, policy) in [Policy::PreferRc4, Policy::RequireRc4]
        .into_iter()
        .enumerate()
    {
        let since = log_len(&log);
        let mut conn = dial(&setup, port, policy, 10 + i as u64)
            .unwrap_or_else(|e| panic!("{policy:?}: {e}\n{}", tails(&[&log])));
        assert!(conn.cipher.is_some(), "libtorrent allows only RC4");
        fetch_a_block(&setup, &mut conn);
        wait_rc4_peers(&log, since, 1, 1);
    }
    // Plaintext only is refused by a peer that allows only RC4: it hangs up, and says why.
    let since = log_len(&log);
    let err = dial(&setup, port, Policy::PlaintextOnly, 20).err();
    assert!(
        err.is_some(),
        "a plaintext-only handshake must not complete"
    );
    wait_refused(&log, since);
}

#[test]
fn we_dial_a_forced_plaintext_libtorrent_seeder() {
    let _serial = serial();
    let setup = Setup::new(2);
    let log = setup.path("lt.log");
    let (_lt, port) = lt_seeder(&setup, LtEncryption::ForcedPlaintext, &log);
    for (i, policy) in [Policy::PreferRc4, Policy::PlaintextOnly]
        .into_iter()
        .enumerate()
    {
        let since = log_len(&log);
        let mut conn = dial(&setup, port, policy, 30 + i as u64)
            .unwrap_or_else(|e| panic!("{policy:?}: {e}\n{}", tails(&[&log])));
        assert!(conn.cipher.is_none(), "libtorrent allows only plaintext");
        fetch_a_block(&setup, &mut conn);
        wait_rc4_peers(&log, since, 0, 1);
    }
    let since = log_len(&log);
    let err = dial(&setup, port, Policy::RequireRc4, 40).err();
    assert!(err.is_some(), "an RC4-only handshake must not complete");
    wait_refused(&log, since);
}

/// A libtorrent downloader with `encryption` dials our listener; our responder under `policy`
/// completes the handshake and we seed the whole torrent to it through the negotiated stream.
fn libtorrent_dials_us(encryption: LtEncryption, policy: Policy, rc4: bool, seed: u64) {
    let _serial = serial();
    let setup = Setup::new(seed);
    let log = setup.path("lt.log");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let out = setup.path("out");
    fs::create_dir_all(&out).unwrap();
    let _lt = Libtorrent {
        peers: std::slice::from_ref(&addr),
        encryption,
        ..Libtorrent::default()
    }
    .spawn(&setup.torrent, &out, free_port(), &log);

    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + LT_LIMIT;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "libtorrent never dialled\n{}",
                    tails(&[&log])
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();

    // Tell MSE from plain BitTorrent by the first bytes, as a listener does.
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    let plain = loop {
        if let Some(p) = looks_like_plaintext(&first) {
            break p;
        }
        let n = stream.read(&mut buf).expect("read the opening");
        assert!(n > 0, "libtorrent hung up before its first bytes");
        first.extend_from_slice(&buf[..n]);
    };
    assert!(!plain, "libtorrent with encryption forced opens with MSE");

    let mut hs = Handshake::responder_for(policy, secrets(seed + 100), &[setup.info_hash]);
    let (done, leftover) = drive(&mut stream, &mut hs, first)
        .unwrap_or_else(|e| panic!("responder: {e}\n{}", tails(&[&log])));
    assert_eq!(done.info_hash, setup.info_hash);
    assert_eq!(done.cipher.is_some(), rc4);
    assert_eq!(
        done.initial_payload.len(),
        wire::HANDSHAKE_LEN,
        "libtorrent sends its handshake as the initial payload"
    );
    let mut conn = Conn::new(stream, done, leftover);
    let theirs = conn.handshake();
    assert_eq!(theirs.info_hash, setup.info_hash);
    conn.send(&our_handshake(setup.info_hash).to_bytes());
    let full = Bitfield::full(setup.pieces);
    conn.send_message(&Message::Bitfield(full.as_bytes()));
    // Let libtorrent sample the connection before any data moves: 1 MiB is over in
    // milliseconds, quicker than its sampling of its peers' encryption.
    let seen = if rc4 {
        "\"rc4_seen\": 1"
    } else {
        "\"peers\": 1"
    };
    wait_until(
        LT_LIMIT,
        "libtorrent to list the connection",
        &[&log],
        || fs::read_to_string(&log).is_ok_and(|t| t.contains(seen)),
    );

    // Seed: unchoke on interest, answer every request from the content.
    conn.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + LT_LIMIT;
    let mut served = 0u32;
    while !libtorrent_finished(&log) {
        assert!(
            Instant::now() < deadline,
            "libtorrent did not finish ({served} blocks served)\n{}",
            tails(&[&log])
        );
        if conn.closed {
            // A finished downloader drops its connections to seeds; its log says so next.
            wait_until(LT_LIMIT, "libtorrent to finish", &[&log], || {
                libtorrent_finished(&log)
            });
            break;
        }
        let got = conn.next(|m| match m {
            Message::Interested => Some(None),
            Message::Request(b) => Some(Some(*b)),
            _ => None,
        });
        match got.flatten() {
            Some(None) => conn.send_message(&Message::Unchoke),
            Some(Some(b)) => {
                let at = (b.piece * PIECE_LEN + b.begin) as usize;
                let data = &setup.content[at..at + b.len as usize];
                conn.send_message(&Message::Piece {
                    piece: b.piece,
                    begin: b.begin,
                    data,
                });
                served += 1;
            }
            None => {}
        }
    }
    assert!(
        served >= setup.pieces * 4 - 3,
        "served {served} blocks\n{}",
        tails(&[&log])
    );
    let got = fs::read(out.join("data.bin")).expect("libtorrent's copy");
    assert!(got == setup.content, "libtorrent's copy differs");
    // libtorrent samples its peers every 50 ms and reports the most RC4 ones seen at once.
    let text = fs::read_to_string(&log).unwrap();
    let finished = text
        .lines()
        .find(|l| l.contains("\"finished\""))
        .expect("finished line");
    assert!(
        finished.contains(&format!("\"rc4_seen\": {}", u8::from(rc4))),
        "{finished}"
    );
    drop(conn);
}

#[test]
fn forced_rc4_libtorrent_dials_our_responder() {
    libtorrent_dials_us(LtEncryption::ForcedRc4, Policy::PreferRc4, true, 3);
}

#[test]
fn forced_plaintext_libtorrent_dials_our_responder() {
    libtorrent_dials_us(LtEncryption::ForcedPlaintext, Policy::PreferRc4, false, 4);
}

#[test]
fn forced_rc4_libtorrent_dials_our_rc4_only_responder() {
    libtorrent_dials_us(LtEncryption::ForcedRc4, Policy::RequireRc4, true, 5);
}
