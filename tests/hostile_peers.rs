//! Hostile peers over real TCP on 127.0.0.1: a raw `TcpStream` in the test writes what a broken
//! or malicious client would (encoded with `shoal_engine::wire`), against a shoal seeder or a
//! shoal downloader. Each case checks that shoal drops the peer (and bans it where it lied),
//! stays within its memory, and that honest peers still complete a byte-exact download.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::Receiver;
use futures_lite::future;
use sha1::{Digest, Sha1};
use shoal_actors::session::{Encryption, Session, SessionSettings};
use shoal_actors::shared::TorrentEvent;
use shoal_actors::torrent::{AddTorrent, Torrent, TorrentSettings};
use shoal_engine::create::{create_torrent, CreateOptions};
use shoal_engine::lengths::BlockInfo;
use shoal_engine::metainfo::Metainfo;
use shoal_engine::wire::{decode, Decoded, Handshake, Message, DEFAULT_MAX_MESSAGE_LEN};
use shoal_engine::{InfoHash, PeerId};

// ---------------------------------------------------------------------------------------------
// Fixtures: content, seeders and downloaders

/// A file, its torrent, and its bytes.
struct Content {
    _dir: tempfile::TempDir,
    /// The folder holding the file (seed from here).
    folder: PathBuf,
    meta: Arc<Metainfo>,
    data: Vec<u8>,
}

fn content(len: usize, piece_length: u32, seed: u64) -> Content {
    let dir = common::tempdir();
    let folder = dir.path().join("seed");
    let file = folder.join("payload.bin");
    common::write_random_file(&file, len, seed);
    let opts = CreateOptions {
        piece_length: Some(piece_length),
        threads: 1,
        ..Default::default()
    };
    let bytes = create_torrent(&file, &opts).expect("create torrent");
    let meta = Arc::new(Metainfo::from_bytes(&bytes).expect("parse our torrent"));
    let data = std::fs::read(&file).expect("read payload");
    Content {
        _dir: dir,
        folder,
        meta,
        data,
    }
}

fn new_session() -> Session {
    Session::new(SessionSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        // The scripted peers speak plain BitTorrent and most accept one connection only, so
        // `prefer`'s MSE dial would use up the script and its plaintext redial find nobody.
        // Hostile MSE openings are tested in tests/mse_actors.rs.
        encryption: Encryption::Off,
        threads: 2,
        hasher_threads: 1,
        ..SessionSettings::default()
    })
    .expect("session")
}

fn settings() -> TorrentSettings {
    TorrentSettings {
        use_trackers: false,
        hasher_threads: 1,
        ..Default::default()
    }
}

/// Runs `fut` on the session's runtime, failing the test if it outlives `secs`.
fn bounded<T>(
    session: &Session,
    secs: u64,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    session.block_on(future::or(fut, async {
        smol::Timer::after(Duration::from_secs(secs)).await;
        panic!("{what}: still running after {secs} s");
    }))
}

struct Seeder {
    session: Session,
    torrent: Torrent,
}

impl Seeder {
    fn start(c: &Content) -> Self {
        let session = new_session();
        let mut add = AddTorrent::seed(c.meta.clone(), &c.folder);
        add.settings = settings();
        let torrent = bounded(&session, 30, "add seed", session.add_torrent(add)).expect("seed");
        assert!(torrent.progress().complete, "the seeder has every piece");
        Self { session, torrent }
    }

    fn addr(&self) -> SocketAddr {
        self.session.local_addr()
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        bounded(
            &self.session,
            20,
            "seeder shutdown",
            self.session.shutdown(),
        );
    }
}

struct Downloader {
    session: Session,
    torrent: Torrent,
    dir: tempfile::TempDir,
}

impl Downloader {
    fn start(c: &Content, peers: Vec<SocketAddr>) -> Self {
        let session = new_session();
        let dir = common::tempdir();
        let mut add = AddTorrent::download(c.meta.clone(), dir.path());
        add.settings = settings();
        add.peers = peers;
        let torrent = bounded(&session, 30, "add download", session.add_torrent(add)).expect("add");
        Self {
            session,
            torrent,
            dir,
        }
    }

    /// Waits for the download and checks it byte for byte.
    fn complete(&self, c: &Content, secs: u64) {
        bounded(
            &self.session,
            secs,
            "download",
            self.torrent.wait_complete(),
        )
        .expect("download completes");
        let got = std::fs::read(self.dir.path().join(&c.meta.info.name)).expect("read download");
        assert!(got == c.data, "the download is byte-exact");
    }
}

impl Drop for Downloader {
    fn drop(&mut self) {
        bounded(
            &self.session,
            20,
            "downloader shutdown",
            self.session.shutdown(),
        );
    }
}

/// An honest download from `peers`, start to finish, byte-exact.
fn honest_download(c: &Content, peers: Vec<SocketAddr>) {
    Downloader::start(c, peers).complete(c, 60);
}

/// Waits up to `limit` for an event matching `want`.
fn wait_event(
    rx: &Receiver<TorrentEvent>,
    limit: Duration,
    mut want: impl FnMut(&TorrentEvent) -> bool,
) -> Option<TorrentEvent> {
    smol::block_on(future::or(
        async {
            while let Ok(e) = rx.recv().await {
                if want(&e) {
                    return Some(e);
                }
            }
            None
        },
        async {
            smol::Timer::after(limit).await;
            None
        },
    ))
}

/// Every event received so far.
fn drain(rx: &Receiver<TorrentEvent>) -> Vec<TorrentEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Resident memory of a process, in KiB.
fn vm_rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

// ---------------------------------------------------------------------------------------------
// The raw peer

/// What a raw peer read, owned.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    Have(u32),
    Bitfield(Vec<u8>),
    HaveAll,
    HaveNone,
    Request(BlockInfo),
    Piece {
        piece: u32,
        begin: u32,
        data: Vec<u8>,
    },
    Other(Option<u8>),
}

impl From<Message<'_>> for Got {
    fn from(m: Message<'_>) -> Self {
        match m {
            Message::KeepAlive => Got::KeepAlive,
            Message::Choke => Got::Choke,
            Message::Unchoke => Got::Unchoke,
            Message::Interested => Got::Interested,
            Message::Have(p) => Got::Have(p),
            Message::Bitfield(b) => Got::Bitfield(b.to_vec()),
            Message::HaveAll => Got::HaveAll,
            Message::HaveNone => Got::HaveNone,
            Message::Request(b) => Got::Request(b),
            Message::Piece { piece, begin, data } => Got::Piece {
                piece,
                begin,
                data: data.to_vec(),
            },
            other => Got::Other(other.id()),
        }
    }
}

/// A scripted peer: a plain socket, messages encoded with the engine's codec.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// Reserved bytes with the fast extension bit (BEP 6), or none.
fn reserved(fast: bool) -> [u8; 8] {
    let mut r = [0u8; 8];
    if fast {
        r[7] |= 0x04;
    }
    r
}

fn handshake_bytes(info_hash: InfoHash, peer_id: PeerId, fast: bool) -> Vec<u8> {
    let mut h = Handshake::new(info_hash, peer_id);
    h.reserved = reserved(fast);
    h.to_bytes().to_vec()
}

impl Raw {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_nodelay(true).unwrap();
        Self::from_stream(s)
    }

    fn from_stream(s: TcpStream) -> Self {
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Self { s, buf: Vec::new() }
    }

    fn local_addr(&self) -> SocketAddr {
        self.s.local_addr().unwrap()
    }

    /// Connects, greets with `info_hash`, and reads the answer.
    fn greet(addr: SocketAddr, info_hash: InfoHash, fast: bool) -> (Self, Handshake) {
        let mut raw = Self::connect(addr);
        raw.write(&handshake_bytes(info_hash, PeerId::generate(), fast))
            .expect("send handshake");
        let remote = raw
            .read_handshake(Duration::from_secs(5))
            .expect("handshake back");
        (raw, remote)
    }

    fn read_handshake(&mut self, limit: Duration) -> io::Result<Handshake> {
        let deadline = Instant::now() + limit;
        loop {
            match Handshake::decode(&self.buf) {
                Ok(Some(h)) => {
                    self.buf.drain(..68);
                    return Ok(h);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            if self.fill(deadline)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    fn send(&mut self, m: Message<'_>) -> io::Result<()> {
        let mut out = Vec::new();
        m.encode(&mut out);
        self.write(&out)
    }

    /// Reads once, waiting until `deadline`; `Ok(0)` is end of stream, `TimedOut` the deadline.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.s.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 64 * 1024];
        match self.s.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => Err(e),
        }
    }

    /// The next message, waiting up to `limit`.
    fn next(&mut self, limit: Duration) -> io::Result<Got> {
        let deadline = Instant::now() + limit;
        loop {
            match decode(&self.buf, DEFAULT_MAX_MESSAGE_LEN) {
                Ok(Decoded::Message { message, consumed }) => {
                    let got = Got::from(message);
                    self.buf.drain(..consumed);
                    return Ok(got);
                }
                Ok(Decoded::NeedMore(_)) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            if self.fill(deadline)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads messages until one matches, or `limit` passes.
    fn wait_for(&mut self, limit: Duration, mut want: impl FnMut(&Got) -> bool) -> Option<Got> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Ok(g) if want(&g) => return Some(g),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the other side closes the connection within `limit` (whatever it sends first
    /// is read and ignored). Returns how long it took.
    fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let deadline = start + limit;
        loop {
            match self.fill(deadline) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => self.buf.clear(),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return None,
                // Reset by the peer: closed too.
                Err(_) => return Some(start.elapsed()),
            }
        }
    }
}

/// Asserts that shoal closes `raw` within a few seconds.
fn assert_dropped(raw: &mut Raw, case: &str) {
    let took = raw.closed_within(Duration::from_secs(5));
    assert!(took.is_some(), "{case}: connection still open after 5 s");
}

/// Asserts that `rx` reports `addr` banned within a few seconds.
fn assert_banned(rx: &Receiver<TorrentEvent>, addr: SocketAddr, case: &str) {
    let got = wait_event(rx, Duration::from_secs(5), |e| {
        *e == TorrentEvent::PeerBanned(addr)
    });
    assert!(got.is_some(), "{case}: {addr} was not banned");
}

// ---------------------------------------------------------------------------------------------
// Broken framing and lies, against a seeder

#[test]
fn length_prefix_of_4_gib_is_dropped() {
    let c = content(256 * 1024, 16 * 1024, 1);
    let seeder = Seeder::start(&c);
    let (mut raw, remote) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
    assert_eq!(remote.info_hash, c.meta.info_hash);
    // 4 GiB - 1, then the start of a piece message that would follow it.
    raw.write(&[0xff, 0xff, 0xff, 0xff, 7, 0, 0, 0, 0]).unwrap();
    assert_dropped(&mut raw, "4 GiB length prefix");
    // Just above the limit is refused the same way, before its payload arrives.
    let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
    raw.write(&(DEFAULT_MAX_MESSAGE_LEN + 1).to_be_bytes())
        .unwrap();
    assert_dropped(&mut raw, "length prefix one above the limit");
    honest_download(&c, vec![seeder.addr()]);
}

#[test]
fn bad_bitfields_are_dropped_and_banned() {
    // 13 pieces: a bitfield is 2 bytes, the last 3 bits spare.
    let c = content(13 * 16 * 1024 - 100, 16 * 1024, 2);
    assert_eq!(c.meta.info.lengths.num_pieces(), 13);
    let seeder = Seeder::start(&c);
    let events = seeder.torrent.subscribe();
    let cases: [(&str, &[u8]); 4] = [
        ("bitfield one byte short", &[0xff]),
        ("bitfield one byte long", &[0xff, 0xf8, 0x00]),
        ("bitfield with a spare bit set", &[0x00, 0x01]),
        ("empty bitfield", &[]),
    ];
    for (case, bits) in cases {
        let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
        let addr = raw.local_addr();
        raw.send(Message::Bitfield(bits)).unwrap();
        assert_dropped(&mut raw, case);
        assert_banned(&events, addr, case);
    }
    // A good bitfield after other messages is not a lie: aria2 sends its extended handshake
    // and allowed-fast set before its bitfield, and later a whole bitfield in place of 20 or
    // more haves. It replaces what we knew; the connection stays.
    let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
    raw.send(Message::Interested).unwrap();
    raw.send(Message::Bitfield(&[0x80, 0x00])).unwrap();
    raw.send(Message::Have(1)).unwrap();
    raw.send(Message::Bitfield(&[0xe0, 0x00])).unwrap();
    assert_eq!(
        raw.closed_within(Duration::from_secs(2)),
        None,
        "a late bitfield cost the connection"
    );
    honest_download(&c, vec![seeder.addr()]);
}

#[test]
fn have_or_request_out_of_range_is_banned() {
    let c = content(10 * 32 * 1024, 32 * 1024, 3);
    let n = c.meta.info.lengths.num_pieces();
    let last_len = c.meta.info.lengths.piece_len(n - 1);
    let seeder = Seeder::start(&c);
    let events = seeder.torrent.subscribe();
    let block = |piece, begin, len| BlockInfo { piece, begin, len };
    let cases: Vec<(&str, Message<'static>)> = vec![
        ("have for the piece past the last", Message::Have(n)),
        ("have for piece u32::MAX", Message::Have(u32::MAX)),
        (
            "request for the piece past the last",
            Message::Request(block(n, 0, 16384)),
        ),
        (
            "request for piece u32::MAX",
            Message::Request(block(u32::MAX, 0, 16384)),
        ),
        (
            "request past the piece end",
            Message::Request(block(0, 32 * 1024 - 8192, 16384)),
        ),
        (
            "request past the last piece's end",
            Message::Request(block(n - 1, last_len, 1)),
        ),
        (
            "request with offset overflow",
            Message::Request(block(0, u32::MAX, 16384)),
        ),
        ("request of zero bytes", Message::Request(block(0, 0, 0))),
    ];
    for (case, m) in cases {
        let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
        let addr = raw.local_addr();
        raw.send(Message::Interested).unwrap();
        raw.send(m).unwrap();
        assert_dropped(&mut raw, case);
        assert_banned(&events, addr, case);
    }
    honest_download(&c, vec![seeder.addr()]);
}

#[test]
fn request_larger_than_128_kib_is_banned() {
    // 256 KiB pieces, so a 128 KiB + 1 block fits inside a piece and only its size is wrong.
    let c = content(512 * 1024, 256 * 1024, 4);
    let seeder = Seeder::start(&c);
    let events = seeder.torrent.subscribe();
    let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
    let addr = raw.local_addr();
    raw.send(Message::Interested).unwrap();
    raw.send(Message::Request(BlockInfo {
        piece: 0,
        begin: 0,
        len: 128 * 1024 + 1,
    }))
    .unwrap();
    assert_dropped(&mut raw, "request of 128 KiB + 1");
    assert_banned(&events, addr, "request of 128 KiB + 1");
    // Exactly 128 KiB is allowed: once unchoked, the peer gets its block.
    let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
    raw.send(Message::Interested).unwrap();
    assert!(
        raw.wait_for(Duration::from_secs(5), |g| *g == Got::Unchoke)
            .is_some(),
        "an interested peer is unchoked"
    );
    raw.send(Message::Request(BlockInfo {
        piece: 1,
        begin: 64 * 1024,
        len: 128 * 1024,
    }))
    .unwrap();
    let got = raw.wait_for(Duration::from_secs(5), |g| matches!(g, Got::Piece { .. }));
    let Some(Got::Piece { piece, begin, data }) = got else {
        panic!("no block for a 128 KiB request")
    };
    assert_eq!((piece, begin), (1, 64 * 1024));
    assert!(data == c.data[(256 + 64) * 1024..(256 + 192) * 1024]);
}

#[test]
fn piece_never_asked_for_is_banned() {
    let c = content(8 * 16 * 1024, 16 * 1024, 5);
    let seeder = Seeder::start(&c);
    let events = seeder.torrent.subscribe();
    let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
    let addr = raw.local_addr();
    let junk = vec![0x5a; 16 * 1024];
    raw.send(Message::Piece {
        piece: 0,
        begin: 0,
        data: &junk,
    })
    .unwrap();
    assert_dropped(&mut raw, "piece never asked for");
    assert_banned(&events, addr, "piece never asked for");
    let p = seeder.torrent.progress();
    assert!(
        p.complete && p.verified_pieces == 8,
        "the seeder's pieces are untouched"
    );
    honest_download(&c, vec![seeder.addr()]);
}

#[test]
fn garbage_after_a_good_handshake_is_dropped() {
    let c = content(8 * 16 * 1024, 16 * 1024, 6);
    let seeder = Seeder::start(&c);
    let mut rng = fastrand::Rng::with_seed(6);
    let mut noise = vec![0u8; 64 * 1024];
    rng.fill(&mut noise);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an HTTP request",
            b"GET /announce HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("64 KiB of noise", noise),
        ("a have of 3 bytes", vec![0, 0, 0, 4, 4, 1, 2, 3]),
        (
            "a request of 11 bytes",
            vec![0, 0, 0, 12, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64],
        ),
        (
            "a piece without its header",
            vec![0, 0, 0, 5, 7, 0, 0, 0, 0],
        ),
        (
            "a second handshake",
            handshake_bytes(c.meta.info_hash, PeerId::generate(), false),
        ),
    ];
    for (case, bytes) in cases {
        let (mut raw, _) = Raw::greet(seeder.addr(), c.meta.info_hash, false);
        // The peer may already have closed while we write: that is the point.
        let _ = raw.write(&bytes);
        assert_dropped(&mut raw, case);
    }
    honest_download(&c, vec![seeder.addr()]);
}

// ---------------------------------------------------------------------------------------------
// Handshakes

#[test]
fn wrong_info_hash_or_our_own_peer_id_is_refused() {
    let c = content(8 * 16 * 1024, 16 * 1024, 7);
    let seeder = Seeder::start(&c);
    // Incoming, a torrent the seeder does not have: closed without a handshake back.
    let mut raw = Raw::connect(seeder.addr());
    raw.write(&handshake_bytes(
        InfoHash([0x11; 20]),
        PeerId::generate(),
        true,
    ))
    .unwrap();
    assert_dropped(&mut raw, "unknown info hash");
    assert!(
        raw.buf.is_empty(),
        "no handshake is sent back for an unknown torrent"
    );
    // Incoming, with the seeder's own peer id.
    let mut raw = Raw::connect(seeder.addr());
    raw.write(&handshake_bytes(
        c.meta.info_hash,
        seeder.session.peer_id(),
        true,
    ))
    .unwrap();
    assert_dropped(&mut raw, "our own peer id");
    // Not a BitTorrent handshake at all.
    let mut raw = Raw::connect(seeder.addr());
    raw.write(b"\x13BitTorrent protocoX").unwrap();
    assert_dropped(&mut raw, "wrong protocol string");

    // Dialled: a peer that answers with another torrent's info hash, or with our own id.
    let liar = TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_addr = liar.local_addr().unwrap();
    let downloader = Downloader::start(&c, vec![liar_addr]);
    let our_id = downloader.session.peer_id();
    let answers = [
        handshake_bytes(InfoHash([0x22; 20]), PeerId::generate(), true),
        handshake_bytes(c.meta.info_hash, our_id, true),
    ];
    let (first, rest) = answers.split_first().unwrap();
    let mut hangups = Vec::new();
    for (i, answer) in std::iter::once(first).chain(rest).enumerate() {
        if i > 0 {
            // The first failure holds the address back for a while: dial it again from
            // another listener.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            bounded(
                &downloader.session,
                5,
                "add peer",
                downloader.torrent.add_peers(vec![a]),
            );
            hangups.push(serve_one(l, answer.clone()));
        } else {
            hangups.push(serve_one(liar.try_clone().unwrap(), answer.clone()));
        }
    }
    for (i, h) in hangups.into_iter().enumerate() {
        let took = h.join().expect("liar thread");
        assert!(
            took.is_some(),
            "dialled liar {i}: the downloader kept the connection"
        );
    }
    // The torrent learns of the ended connections a moment after the liars see them close.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !bounded(&downloader.session, 5, "peers", downloader.torrent.peers()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no connection to a liar survives"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The downloader is still fine: an honest seeder completes it.
    bounded(
        &downloader.session,
        5,
        "add peer",
        downloader.torrent.add_peers(vec![seeder.addr()]),
    );
    downloader.complete(&c, 60);
}

/// Accepts one connection, reads its handshake, answers `answer`, and returns how long the
/// dialler took to hang up (`None`: it did not within 5 s).
fn serve_one(listener: TcpListener, answer: Vec<u8>) -> JoinHandle<Option<Duration>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (s, _) = listener.accept().expect("accept");
        let mut raw = Raw::from_stream(s);
        raw.read_handshake(Duration::from_secs(5))
            .expect("the downloader greets");
        raw.write(&answer).ok()?;
        raw.closed_within(Duration::from_secs(5))
    })
}

#[test]
fn silent_connections_are_closed_within_the_handshake_timeout() {
    let c = content(8 * 16 * 1024, 16 * 1024, 8);
    let seeder = Seeder::start(&c);
    let start = Instant::now();
    let mut silent: Vec<Raw> = (0..4).map(|_| Raw::connect(seeder.addr())).collect();
    // Half a handshake, then nothing.
    let mut partial = Raw::connect(seeder.addr());
    partial
        .write(&handshake_bytes(c.meta.info_hash, PeerId::generate(), false)[..40])
        .unwrap();
    // Meanwhile an honest peer downloads everything.
    honest_download(&c, vec![seeder.addr()]);
    silent.push(partial);
    for (i, raw) in silent.iter_mut().enumerate() {
        let left = Duration::from_secs(14).saturating_sub(start.elapsed());
        assert!(
            raw.closed_within(left).is_some(),
            "slow connection {i} still open after 14 s (the handshake timeout is 10 s)"
        );
    }
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "closed for a reason other than time"
    );
}

// ---------------------------------------------------------------------------------------------
// Floods and memory

#[test]
fn request_flood_keeps_memory_bounded() {
    let c = content(4 * 1024 * 1024, 64 * 1024, 9);
    let torrent_path = c.folder.parent().unwrap().join("t.torrent");
    std::fs::write(&torrent_path, c.meta.to_bytes()).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(common::shoal_bin());
    cmd.args(["seed"])
        .arg(&torrent_path)
        .arg(c.folder.join(&c.meta.info.name))
        .args(["--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = common::ChildGuard::spawn(cmd);
    let pid = child.id().to_string();
    let addr: SocketAddr = listen.parse().unwrap();
    // Wait for "shoal: seeding ...": before it, the torrent is not registered yet.
    let stderr = child.child().stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("shoal: seeding") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("shoal seed did not start seeding");
    let before = vm_rss_kib(&pid);

    // Two flooders, with and without the fast extension (which answers refused requests with
    // a reject each): they ask for every block many times over and never read.
    let flooders: Vec<JoinHandle<u64>> = [true, false]
        .into_iter()
        .map(|fast| {
            let info_hash = c.meta.info_hash;
            let lengths = c.meta.info.lengths;
            std::thread::spawn(move || {
                let (mut raw, _) = Raw::greet(addr, info_hash, fast);
                raw.send(Message::Interested).unwrap();
                raw.wait_for(Duration::from_secs(5), |g| *g == Got::Unchoke);
                let mut batch = Vec::new();
                for p in 0..lengths.num_pieces() {
                    for b in lengths.blocks(p) {
                        Message::Request(b).encode(&mut batch);
                    }
                }
                // 64 MiB of requests, about four million, or until shoal hangs up.
                let mut sent = 0u64;
                let end = Instant::now() + Duration::from_secs(20);
                while sent < 64 * 1024 * 1024 && Instant::now() < end {
                    if raw.write(&batch).is_err() {
                        break;
                    }
                    sent += batch.len() as u64;
                }
                sent
            })
        })
        .collect();
    // An honest downloader alongside.
    honest_download(&c, vec![addr]);
    let sent: Vec<u64> = flooders.into_iter().map(|f| f.join().unwrap()).collect();
    let after = vm_rss_kib(&pid);
    eprintln!(
        "request flood: sent {sent:?} bytes of requests; seeder RSS {before} KiB -> {after} KiB"
    );
    assert!(
        sent[0] < 64 * 1024 * 1024,
        "the flooder that never reads its rejects is dropped"
    );
    assert!(
        after < before + 32 * 1024,
        "seeder memory grew from {before} KiB to {after} KiB under a request flood"
    );
    assert!(
        child.child().try_wait().unwrap().is_none(),
        "the seeder survived"
    );
}

// ---------------------------------------------------------------------------------------------
// Corrupt data

/// A peer that claims every piece and answers every request with wrong bytes, counting the
/// blocks it sent in `served`. A `mixer` answers only the first block of each piece (wrong) and
/// rejects the others, so that every piece it touches is finished by someone else.
fn corrupt_seeder(
    listener: TcpListener,
    info_hash: InfoHash,
    served: Arc<AtomicUsize>,
    mixer: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok((s, _)) = listener.accept() else {
            return;
        };
        let mut raw = Raw::from_stream(s);
        if raw.read_handshake(Duration::from_secs(10)).is_err() {
            return;
        }
        if raw
            .write(&handshake_bytes(info_hash, PeerId::generate(), true))
            .is_err()
        {
            return;
        }
        let _ = raw.send(Message::HaveAll);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match raw.next(Duration::from_secs(1)) {
                Ok(Got::Interested) => {
                    let _ = raw.send(Message::Unchoke);
                }
                Ok(Got::Request(b)) if mixer && b.begin > 0 => {
                    if raw.send(Message::Reject(b)).is_err() {
                        return;
                    }
                }
                Ok(Got::Request(b)) => {
                    let junk = vec![0xa5; b.len as usize];
                    let ok = raw.send(Message::Piece {
                        piece: b.piece,
                        begin: b.begin,
                        data: &junk,
                    });
                    if ok.is_err() {
                        return;
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    })
}

/// A peer that downloads from shoal every piece shoal announces, and checks each against the
/// torrent's hashes. Returns (pieces checked, pieces that were wrong).
fn watcher(
    addr: SocketAddr,
    meta: Arc<Metainfo>,
    stop: Arc<AtomicUsize>,
) -> JoinHandle<(u32, u32)> {
    std::thread::spawn(move || {
        let lengths = meta.info.lengths;
        let (mut raw, _) = Raw::greet(addr, meta.info_hash, false);
        raw.send(Message::Interested).unwrap();
        let mut announced = Vec::new();
        let mut unchoked = false;
        let mut requested = 0;
        let mut pieces: std::collections::HashMap<u32, (Vec<u8>, u32)> = Default::default();
        let (mut checked, mut wrong) = (0, 0);
        while stop.load(Ordering::Relaxed) == 0 && checked < lengths.num_pieces() {
            match raw.next(Duration::from_millis(200)) {
                Ok(Got::Unchoke) => unchoked = true,
                Ok(Got::Choke) => unchoked = false,
                Ok(Got::Have(p)) => announced.push(p),
                Ok(Got::Bitfield(b)) => {
                    for p in 0..lengths.num_pieces() {
                        if b[(p / 8) as usize] & (0x80 >> (p % 8)) != 0 {
                            announced.push(p);
                        }
                    }
                }
                Ok(Got::Piece { piece, begin, data }) => {
                    let (buf, got) = pieces
                        .entry(piece)
                        .or_insert_with(|| (vec![0; lengths.piece_len(piece) as usize], 0));
                    buf[begin as usize..begin as usize + data.len()].copy_from_slice(&data);
                    *got += 1;
                    if *got == lengths.blocks_in_piece(piece) {
                        let (buf, _) = pieces.remove(&piece).unwrap();
                        checked += 1;
                        if <[u8; 20]>::from(Sha1::digest(&buf)) != meta.info.pieces[piece as usize]
                        {
                            wrong += 1;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
            if unchoked {
                for &p in &announced[requested..] {
                    for b in lengths.blocks(p) {
                        let _ = raw.send(Message::Request(b));
                    }
                }
                requested = announced.len();
            }
        }
        (checked, wrong)
    })
}

/// A downloader fed by a liar (alone at first when `liar_first`, else together with an honest
/// seeder) and watched by a peer that checks everything the downloader uploads.
fn corrupt_data_case(piece_length: u32, seed: u64, liar_first: bool, mixer: bool) {
    let c = content(64 * 16 * 1024, piece_length, seed);
    let seeder = Seeder::start(&c);
    let liar = TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_addr = liar.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let liar_thread = corrupt_seeder(liar, c.meta.info_hash, served.clone(), mixer);
    // The mixer's wrong first blocks fail a piece only once an honest peer fills in the rest.
    // It starts alone and the honest seeder joins once it has sent a block: on a loaded machine
    // the seeder, given at once, could serve the whole torrent before the liar took part.
    let first = if liar_first || mixer {
        vec![liar_addr]
    } else {
        vec![liar_addr, seeder.addr()]
    };
    let downloader = Downloader::start(&c, first);
    let events = downloader.torrent.subscribe();
    if mixer && !liar_first {
        let deadline = Instant::now() + Duration::from_secs(10);
        while served.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            served.load(Ordering::Relaxed) > 0,
            "the liar served no block within 10 s"
        );
        bounded(
            &downloader.session,
            5,
            "add peer",
            downloader.torrent.add_peers(vec![seeder.addr()]),
        );
    }
    let stop = Arc::new(AtomicUsize::new(0));
    let watch = watcher(
        downloader.session.local_addr(),
        c.meta.clone(),
        stop.clone(),
    );
    let failed = wait_event(&events, Duration::from_secs(10), |e| {
        matches!(e, TorrentEvent::PieceFailed { .. })
    });
    assert!(
        failed.is_some(),
        "no piece failed its hash while the liar served"
    );
    if liar_first {
        bounded(
            &downloader.session,
            5,
            "add peer",
            downloader.torrent.add_peers(vec![seeder.addr()]),
        );
    }
    downloader.complete(&c, 60);
    let mut seen = vec![failed.unwrap()];
    seen.extend(drain(&events));
    // The watcher reads everything the finished downloader now seeds, or gives up.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !watch.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(1, Ordering::Relaxed);
    let (checked, wrong) = watch.join().expect("watcher");
    liar_thread.join().expect("liar");
    let banned: Vec<SocketAddr> = seen
        .iter()
        .filter_map(|e| match e {
            TorrentEvent::PeerBanned(a) => Some(*a),
            _ => None,
        })
        .collect();
    let failed: Vec<&TorrentEvent> = seen
        .iter()
        .filter(|e| matches!(e, TorrentEvent::PieceFailed { .. }))
        .collect();
    eprintln!(
        "corrupt data ({piece_length} B pieces): liar served {} blocks, {} pieces failed, banned {banned:?}; watcher checked {checked} pieces",
        served.load(Ordering::Relaxed),
        failed.len()
    );
    // Even the mixer, never the sole sender of a failed piece, is caught: the blocks of each
    // failed piece are compared with those of the attempt that verifies (smart ban).
    let _ = mixer;
    assert_eq!(
        banned,
        vec![liar_addr],
        "the liar, and only the liar, is banned"
    );
    eprintln!("failed pieces: {failed:?}");
    // A failed piece names the contributors still connected: the first names the liar. Later
    // ones may name only honest peers (the liar's blocks were in them, but it is gone), which
    // must not count against them: the honest seeder is never banned (checked above).
    assert!(
        matches!(failed[0], TorrentEvent::PieceFailed { peers, .. } if peers.contains(&liar_addr)),
        "the first failed piece names the liar"
    );
    assert!(
        checked == c.meta.info.lengths.num_pieces(),
        "the watcher got every piece"
    );
    assert_eq!(
        wrong, 0,
        "shoal uploaded a piece that does not match its hash"
    );
    let p = downloader.torrent.progress();
    assert!(p.wasted > 0, "the liar's bytes count as wasted");
}

#[test]
fn corrupt_data_is_banned_never_verified_nor_uploaded() {
    // One block per piece: the blame is exact. The liar serves alone until it is caught.
    corrupt_data_case(16 * 1024, 10, true, false);
}

#[test]
fn corrupt_data_in_shared_pieces_bans_only_the_liar() {
    // Four blocks per piece, liar and honest seeder at once: a piece can mix their blocks.
    corrupt_data_case(64 * 1024, 11, false, false);
}

#[test]
fn corrupt_first_blocks_mixed_with_honest_ones_ban_only_the_liar() {
    // The liar sends a wrong first block of each piece and rejects the rest, which the honest
    // seeder then sends: every failed piece has both as contributors.
    corrupt_data_case(64 * 1024, 12, false, true);
}

/// A liar that listens at one address and, on each connection, sends one wrong piece and
/// hangs up. Counts its connections.
fn one_lie_per_connection(
    listener: TcpListener,
    info_hash: InfoHash,
    connections: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => return,
            };
            s.set_nonblocking(false).unwrap();
            connections.fetch_add(1, Ordering::Relaxed);
            let mut raw = Raw::from_stream(s);
            if raw.read_handshake(Duration::from_secs(10)).is_err()
                || raw
                    .write(&handshake_bytes(info_hash, PeerId::generate(), true))
                    .is_err()
            {
                continue;
            }
            let _ = raw.send(Message::HaveAll);
            let mut lied_about = None;
            let mut sent = 0;
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                match raw.next(Duration::from_millis(200)) {
                    Ok(Got::Interested) => {
                        let _ = raw.send(Message::Unchoke);
                    }
                    // Every block of the first piece asked for, wrong; nothing else.
                    Ok(Got::Request(b)) if *lied_about.get_or_insert(b.piece) == b.piece => {
                        let junk = vec![0x5a; b.len as usize];
                        let _ = raw.send(Message::Piece {
                            piece: b.piece,
                            begin: b.begin,
                            data: &junk,
                        });
                        sent += 1;
                        if sent == 4 {
                            // The whole piece (64 KiB) is out: hang up.
                            std::thread::sleep(Duration::from_millis(200));
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        }
    })
}

#[test]
fn a_liar_that_reconnects_from_the_same_address_is_banned() {
    let c = content(64 * 64 * 1024, 64 * 1024, 77);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let liar = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let _lies = one_lie_per_connection(listener, c.meta.info_hash, connections.clone());
    let d = Downloader::start(&c, vec![liar]);
    let rx = d.torrent.subscribe();
    // One failed piece per connection, one strike each: the second connection's lie bans the
    // host, although no single connection ever lied twice.
    let banned = wait_event(&rx, Duration::from_secs(30), |e| {
        *e == TorrentEvent::PeerBanned(liar)
    });
    let n = connections.load(Ordering::Relaxed);
    assert!(
        banned.is_some(),
        "the liar was not banned after {n} connections"
    );
    assert!(
        n >= 2,
        "banned after {n} connection: one lie each cannot do that"
    );
    // Banned: never dialled again.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        connections.load(Ordering::Relaxed),
        n,
        "a banned host was dialled again"
    );
    assert_eq!(d.torrent.progress().verified_pieces, 0, "no lie was kept");
}
