//! Trackers end to end over real sockets on 127.0.0.1: the embedded tracker with the client
//! actor, the client against hostile trackers, against Debian's opentracker, and the
//! `shoal tracker` binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::Receiver;
use futures_lite::future;
use shoal_actors::tracker::{
    announce_once, scrape, AnnounceError, Timing, TrackerClient, TrackerConfig, TrackerStatus,
    TransferStats,
};
use shoal_actors::tracker_server::{TrackerServer, TrackerServerOptions};
use shoal_engine::tracker::{parse_announce_response, AnnounceRequest, Event, TrackerError};
use shoal_engine::{InfoHash, PeerId};
use smol::Timer;

use common::ChildGuard;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs an async test on smol, failing it if it outlives `secs`.
fn run_bounded<T>(secs: u64, test: impl std::future::Future<Output = T>) -> T {
    smol::block_on(future::or(test, async {
        Timer::after(Duration::from_secs(secs)).await;
        panic!("test ran longer than {secs} s");
    }))
}

/// Timing short enough for tests.
fn fast_timing() -> Timing {
    Timing {
        min_announce_interval: Duration::from_millis(200),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        request_timeout: Duration::from_secs(1),
        udp_retransmit_base: Duration::from_millis(200),
        udp_max_retransmits: 2,
        stop_timeout: Duration::from_secs(1),
        announce_interval: None,
    }
}

fn hash(n: u8) -> InfoHash {
    InfoHash([n; 20])
}

fn config(tiers: Vec<Vec<String>>, info_hash: InfoHash, port: u16) -> TrackerConfig {
    let mut c = TrackerConfig::new(tiers, info_hash, PeerId::generate(), port);
    c.timing = fast_timing();
    c
}

struct Client {
    client: TrackerClient,
    peers: Receiver<Vec<SocketAddr>>,
    stats: Arc<TransferStats>,
}

fn spawn_client(tiers: Vec<Vec<String>>, info_hash: InfoHash, port: u16, left: u64) -> Client {
    let stats = Arc::new(TransferStats::new(left));
    let (tx, rx) = async_channel::bounded(16);
    let client = TrackerClient::spawn(config(tiers, info_hash, port), Arc::clone(&stats), tx);
    Client {
        client,
        peers: rx,
        stats,
    }
}

fn one(url: &str) -> Vec<Vec<String>> {
    vec![vec![url.to_string()]]
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits for a batch of peers that holds `addr`.
async fn learn(peers: &Receiver<Vec<SocketAddr>>, addr: SocketAddr) {
    loop {
        let batch = peers.recv().await.expect("tracker actor ended");
        if batch.contains(&addr) {
            return;
        }
    }
}

/// Polls `cond` every 20 ms until it holds.
async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        Timer::after(Duration::from_millis(20)).await;
    }
}

fn status_of<'a>(status: &'a [TrackerStatus], url: &str) -> &'a TrackerStatus {
    status
        .iter()
        .find(|s| s.url == url)
        .expect("tracker in status")
}

fn request(info_hash: InfoHash, port: u16, left: u64, event: Option<Event>) -> AnnounceRequest {
    AnnounceRequest {
        info_hash,
        peer_id: PeerId::generate(),
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        numwant: None,
        key: fastrand::u32(..),
        tracker_id: None,
    }
}

fn server(interval_secs: u64) -> TrackerServer {
    let options = TrackerServerOptions {
        interval: Duration::from_secs(interval_secs),
        ..TrackerServerOptions::default()
    };
    TrackerServer::bind_with("127.0.0.1:0".parse().unwrap(), options).expect("bind tracker")
}

/// A raw HTTP/1.0 GET over a TcpStream, returning the body (for queries our client never
/// sends, such as `compact=0`).
fn raw_get(addr: SocketAddr, path_and_query: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("read reply");
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    reply[split + 4..].to_vec()
}

fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The embedded tracker and the client actor together

#[test]
fn two_clients_learn_each_other_and_stopped_removes() {
    let server = server(1);
    let url = server.announce_url();
    let h = hash(1);
    run_bounded(30, async {
        let a = spawn_client(one(&url), h, 40001, 1000);
        until(|| a.client.status()[0].announces >= 1).await;
        let b = spawn_client(one(&url), h, 40002, 1000);
        // B learns A from its first reply; A learns B when it announces again (1 s interval).
        learn(&b.peers, local(40001)).await;
        learn(&a.peers, local(40002)).await;
        let st = a.client.status();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].last_error, None);
        assert!(st[0].last_success.is_some());
        assert_eq!(st[0].leechers, Some(2));

        let counts = scrape(&url, &[h], &fast_timing()).await.unwrap();
        assert_eq!(
            counts.get(&h).map(|s| (s.complete, s.incomplete)),
            Some((0, 2))
        );

        // `stopped` takes B out of the swarm at once.
        b.client.stop().await;
        let counts = scrape(&url, &[h], &fast_timing()).await.unwrap();
        assert_eq!(counts.get(&h).map(|s| s.incomplete), Some(1));
        // ... so A stops hearing of it. Replies already on their way may still name B: let
        // them through, then A keeps announcing and hears of nobody.
        Timer::after(Duration::from_millis(1500)).await;
        while a.peers.try_recv().is_ok() {}
        let n = a.client.status()[0].announces;
        let batch = future::or(async { Some(a.peers.recv().await.unwrap()) }, async {
            Timer::after(Duration::from_millis(2500)).await;
            None
        })
        .await;
        assert_eq!(batch, None, "a swarm of A alone has no peers for A");
        assert!(a.client.status()[0].announces > n, "A kept announcing");
        a.client.stop().await;
        let counts = scrape(&url, &[h], &fast_timing()).await.unwrap();
        assert_eq!(counts.get(&h), None, "an empty swarm is forgotten");
    });
}

/// A session listening on loopback never leaves the machine: of a torrent's trackers it
/// contacts only those on this machine. The "remote" one here is a listener on this host's own
/// outward address, so a contact would be seen; the others are names and a documentation
/// address that must not even be resolved.
#[test]
fn a_loopback_session_announces_only_to_trackers_on_this_machine() {
    use shoal_actors::session::{Session, SessionSettings};
    use shoal_actors::torrent::AddTorrent;
    use shoal_engine::create::{create_torrent, CreateOptions};
    use shoal_engine::metainfo::Metainfo;

    let local = server(3600);
    let outward = common::outward_ipv4();
    let watch =
        outward.map(|ip| TcpListener::bind((ip, 0)).expect("listen on the outward address"));
    let remote = match &watch {
        Some(l) => format!("http://{}/announce", l.local_addr().unwrap()),
        None => {
            eprintln!(
                "NOTE: this host has no outward IPv4 address; the contact check uses a name only"
            );
            "http://tracker.example.org/announce".to_string()
        }
    };
    let dir = common::tempdir();
    let data = dir.path().join("data.bin");
    common::write_random_file(&data, 100_000, 17);
    let bytes = create_torrent(
        &data,
        &CreateOptions {
            piece_length: Some(16384),
            trackers: vec![
                vec![remote.clone()],
                vec!["udp://tracker.example.org:1337/announce".to_string()],
                vec![local.announce_url()],
            ],
            ..Default::default()
        },
    )
    .expect("create torrent");
    let meta = Arc::new(Metainfo::from_bytes(&bytes).expect("metainfo"));
    let session = Session::new(SessionSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        ..SessionSettings::default()
    })
    .expect("session");
    let torrent = session
        .block_on(session.add_torrent(AddTorrent::seed(meta, dir.path())))
        .expect("seeder starts");
    let waited = Instant::now();
    let st = loop {
        let st = session.block_on(torrent.trackers());
        if st
            .iter()
            .any(|t| t.url == local.announce_url() && t.announces >= 1)
        {
            break st;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the local tracker was never announced to: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for t in st.iter().filter(|t| t.url != local.announce_url()) {
        assert_eq!(t.announces, 0, "{t:?}");
        assert!(
            t.last_error
                .as_deref()
                .is_some_and(|e| e.contains("not contacted")),
            "{t:?}"
        );
    }
    if let Some(l) = watch {
        l.set_nonblocking(true).unwrap();
        // Give a wrong announce time to arrive: tiers are tried in order, so it would have been
        // made before the local tracker's.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the loopback session contacted the tracker at {remote}"
        );
    }
    session.block_on(session.shutdown());
}

/// A seeder with its own short re-announce period (`announce_interval`, the CLI's
/// `--announce-interval`) learns a downloader that announced after it, from its next announce,
/// and dials it, although the tracker asks for one announce an hour. The downloader is a raw
/// listener that never dials anyone (as rtorrent on loopback, which may take 127.0.0.1 for
/// itself): only the seeder's dial can reach it.
#[test]
fn a_seeder_dials_the_downloaders_it_learns_from_each_announce() {
    use shoal_actors::session::{Session, SessionSettings};
    use shoal_actors::torrent::AddTorrent;
    use shoal_engine::create::{create_torrent, CreateOptions};
    use shoal_engine::metainfo::Metainfo;

    let tracker = server(3600);
    let dir = common::tempdir();
    let data = dir.path().join("data.bin");
    common::write_random_file(&data, 300_000, 16);
    let bytes = create_torrent(
        &data,
        &CreateOptions {
            piece_length: Some(16384),
            trackers: vec![vec![tracker.announce_url()]],
            ..Default::default()
        },
    )
    .expect("create torrent");
    let meta = Arc::new(Metainfo::from_bytes(&bytes).expect("metainfo"));
    let info_hash = meta.info_hash;
    let session = Session::new(SessionSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        // A plain handshake to read below (by default the dial opens with MSE).
        encryption: shoal_actors::session::Encryption::Off,
        ..SessionSettings::default()
    })
    .expect("session");
    let mut add = AddTorrent::seed(meta, dir.path());
    add.settings.announce_interval = Some(Duration::from_secs(1));
    session
        .block_on(session.add_torrent(add))
        .expect("seeder starts");
    // The seeder's first announce: the tracker counts one seeder.
    let url = tracker.announce_url();
    let seen = Instant::now();
    loop {
        let counts = run_bounded(10, scrape(&url, &[info_hash], &fast_timing()));
        if counts.is_ok_and(|c| c.get(&info_hash).is_some_and(|s| s.complete == 1)) {
            break;
        }
        assert!(
            seen.elapsed() < Duration::from_secs(10),
            "the seeder never announced"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Now a downloader announces; it listens and never dials.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let resp = run_bounded(
        10,
        announce_once(
            &url,
            &request(info_hash, port, 1000, Some(Event::Started)),
            &fast_timing(),
        ),
    )
    .expect("downloader announces");
    assert_eq!(
        resp.interval, 3600,
        "the tracker asks for one announce an hour"
    );
    listener.set_nonblocking(true).unwrap();
    let waited = Instant::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    waited.elapsed() < Duration::from_secs(5),
                    "the seeder did not dial the downloader it could learn from its next announce"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut hs = [0u8; 68];
    stream.read_exact(&mut hs).expect("the seeder's handshake");
    assert_eq!(&hs[28..48], &info_hash.0, "the handshake names the torrent");
    eprintln!(
        "tracker: the seeder dialled the new downloader {:.1} s after it announced",
        waited.elapsed().as_secs_f64()
    );
    drop(stream);
    session.block_on(session.shutdown());
}

#[test]
fn completed_is_sent_once_and_counts_as_seeder() {
    let server = server(1);
    let url = server.announce_url();
    let h = hash(2);
    run_bounded(20, async {
        let a = spawn_client(one(&url), h, 40011, 500);
        until(|| a.client.status()[0].announces >= 1).await;
        a.stats.left.store(0, Ordering::Relaxed);
        a.stats.downloaded.store(500, Ordering::Relaxed);
        a.client.completed().await;
        a.client.completed().await; // a second call is ignored
        let t = &fast_timing();
        let mut counts = scrape(&url, &[h], t).await.unwrap();
        while counts.get(&h).map(|s| s.complete) != Some(1) {
            Timer::after(Duration::from_millis(50)).await;
            counts = scrape(&url, &[h], t).await.unwrap();
        }
        // Let a few regular announces go by: `completed` is not repeated.
        let n = a.client.status()[0].announces;
        until(|| a.client.status()[0].announces >= n + 2).await;
        let s = scrape(&url, &[h], t).await.unwrap().get(&h).unwrap();
        assert_eq!((s.complete, s.incomplete, s.downloaded), (1, 0, 1));
        a.client.stop().await;
    });
}

#[test]
fn compact_and_dictionary_replies() {
    let server = server(60);
    let h = hash(3);
    let t = fast_timing();
    let ids: Vec<PeerId> = (0..3).map(|_| PeerId::generate()).collect();
    run_bounded(20, async {
        for (i, id) in ids.iter().enumerate() {
            let mut req = request(h, 41000 + i as u16, 10, Some(Event::Started));
            req.peer_id = *id;
            announce_once(&server.announce_url(), &req, &t)
                .await
                .unwrap();
        }
    });
    let query = |compact: u8| {
        format!(
            "/announce?info_hash={}&peer_id={}&port=41999&left=5&compact={compact}",
            encode(&h.0),
            encode(&[b'q'; 20])
        )
    };
    let compact = raw_get(server.local_addr(), &query(1));
    let dict = raw_get(server.local_addr(), &query(0));
    assert!(
        dict.windows(7).any(|w| w == b"peer id"),
        "dictionary form names peer ids"
    );
    assert!(!compact.windows(7).any(|w| w == b"peer id"));
    for body in [compact, dict] {
        let r = parse_announce_response(&body).unwrap();
        let mut ports: Vec<u16> = r.peers.iter().map(|p| p.port()).collect();
        ports.sort();
        assert_eq!(ports, vec![41000, 41001, 41002]);
        assert!(r.peers.iter().all(|p| p.ip() == local(0).ip()));
        assert_eq!(r.interval, 60);
        assert_eq!((r.complete, r.incomplete), (Some(0), Some(4)));
    }
    // The dictionary form carries each peer's id.
    let dict = raw_get(server.local_addr(), &query(0));
    for id in &ids {
        assert!(
            dict.windows(20).any(|w| w == id.0),
            "peer id {id:?} in the reply"
        );
    }
}

#[test]
fn numwant_is_honoured_and_the_requester_is_never_returned() {
    let server = server(60);
    let h = hash(4);
    let t = fast_timing();
    run_bounded(30, async {
        for i in 0..30u16 {
            announce_once(&server.announce_url(), &request(h, 42000 + i, 1, None), &t)
                .await
                .unwrap();
        }
        let mut me = request(h, 42000, 1, None); // same address as an existing peer
        me.numwant = Some(10);
        let r = announce_once(&server.announce_url(), &me, &t)
            .await
            .unwrap();
        assert_eq!(r.peers.len(), 10);
        assert!(!r.peers.contains(&local(42000)));
        me.numwant = Some(1000);
        let r = announce_once(&server.announce_url(), &me, &t)
            .await
            .unwrap();
        assert_eq!(r.peers.len(), 29, "all the others, capped at 200");
        me.numwant = None;
        let r = announce_once(&server.announce_url(), &me, &t)
            .await
            .unwrap();
        assert_eq!(r.peers.len(), 29);
    });
}

#[test]
fn silent_peers_expire_after_two_intervals() {
    let server = server(1);
    let h = hash(5);
    let t = fast_timing();
    run_bounded(20, async {
        let url = server.announce_url();
        announce_once(&url, &request(h, 43000, 1, None), &t)
            .await
            .unwrap();
        let r = announce_once(&url, &request(h, 43001, 1, None), &t)
            .await
            .unwrap();
        assert_eq!(r.peers, vec![local(43000)]);
        Timer::after(Duration::from_millis(2600)).await;
        let r = announce_once(&url, &request(h, 43002, 1, None), &t)
            .await
            .unwrap();
        assert!(r.peers.is_empty(), "{:?}", r.peers);
        assert_eq!(r.incomplete, Some(1));
    });
}

#[test]
fn scrape_counts_and_scrape_all() {
    let server = server(60);
    let t = fast_timing();
    let url = server.announce_url();
    run_bounded(20, async {
        announce_once(&url, &request(hash(6), 44000, 0, Some(Event::Started)), &t)
            .await
            .unwrap();
        announce_once(&url, &request(hash(6), 44001, 9, Some(Event::Started)), &t)
            .await
            .unwrap();
        announce_once(
            &url,
            &request(hash(6), 44002, 0, Some(Event::Completed)),
            &t,
        )
        .await
        .unwrap();
        announce_once(&url, &request(hash(7), 44003, 9, None), &t)
            .await
            .unwrap();
        let s = scrape(&url, &[hash(6), hash(8)], &t).await.unwrap();
        assert_eq!(s.files.len(), 1, "unknown torrents are left out");
        let s6 = s.get(&hash(6)).unwrap();
        assert_eq!((s6.complete, s6.incomplete, s6.downloaded), (2, 1, 1));
        let all = scrape(&url, &[], &t).await.unwrap();
        assert_eq!(all.files.len(), 2);
        assert_eq!(all.get(&hash(7)).unwrap().incomplete, 1);
    });
}

#[test]
fn tiers_fall_through_and_a_working_tracker_moves_to_the_front() {
    let server = server(1);
    let good = server.announce_url();
    let refused = format!("http://{}/announce", refused_addr());
    let skipped = "wss://tracker.invalid/announce".to_string();
    let h = hash(9);
    run_bounded(30, async {
        // Tier 0 only fails; tier 1 has a failing and a working tracker, in random order.
        let tiers = vec![
            vec![refused.clone(), skipped.clone()],
            vec![refused.clone() + "?x=1", good.clone()],
        ];
        let c = spawn_client(tiers, h, 45000, 1);
        until(|| status_of(&c.client.status(), &good).announces >= 3).await;
        let st = c.client.status();
        assert_eq!(st.len(), 4);
        assert!(
            status_of(&st, &skipped)
                .last_error
                .as_deref()
                .unwrap()
                .contains("only http:// and udp://"),
            "{st:?}"
        );
        let first = status_of(&st, &refused);
        assert!(
            first.consecutive_failures >= 3,
            "tier 0 is tried every round: {first:?}"
        );
        assert!(
            first.last_error.as_deref().unwrap().contains("refused"),
            "{first:?}"
        );
        // The failing tracker of tier 1 was tried at most once, before the good one moved to
        // the front of the tier.
        let second = status_of(&st, &(refused.clone() + "?x=1"));
        assert!(second.consecutive_failures <= 1, "{second:?}");
        assert_eq!(status_of(&st, &good).tier, 1);
        c.client.stop().await;
    });
}

#[test]
fn closing_the_peer_channel_ends_the_actor_which_says_stopped() {
    let server = server(1);
    let url = server.announce_url();
    let h = hash(10);
    let t = fast_timing();
    run_bounded(20, async {
        announce_once(&url, &request(h, 46000, 1, None), &t)
            .await
            .unwrap();
        let c = spawn_client(one(&url), h, 46001, 1);
        learn(&c.peers, local(46000)).await;
        drop(c.peers);
        // The next reply has a peer to pass on; the send fails, the actor says `stopped`.
        loop {
            let s = scrape(&url, &[h], &t).await.unwrap();
            if s.get(&h).unwrap().incomplete == 1 {
                break;
            }
            Timer::after(Duration::from_millis(50)).await;
        }
        let start = Instant::now();
        c.client.stop().await;
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "the actor had ended already"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Hostile trackers: a raw TcpListener answering what the test says

/// What the hostile server does with the n-th request.
#[derive(Clone)]
enum Act {
    /// Write these bytes and close.
    Write(Vec<u8>),
    /// Say nothing, hold the connection this long, then close.
    Hang(Duration),
    /// Write a 200 head without length, then stream this many bytes.
    Stream(usize),
}

struct Hostile {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hostile {
    fn start(act: impl Fn(usize) -> Act + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (hits, stop) = (Arc::clone(&hits), Arc::clone(&stop));
            move || {
                let mut workers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let n = hits.fetch_add(1, Ordering::Relaxed);
                    let act = act(n);
                    let stop = Arc::clone(&stop);
                    workers.push(std::thread::spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        read_head(&mut s);
                        match act {
                            Act::Write(bytes) => {
                                let _ = s.write_all(&bytes);
                            }
                            Act::Hang(d) => {
                                let end = Instant::now() + d;
                                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                                    std::thread::sleep(Duration::from_millis(10));
                                }
                            }
                            Act::Stream(n) => {
                                let _ =
                                    s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                                let chunk = vec![b'x'; 64 * 1024];
                                let mut sent = 0;
                                while sent < n {
                                    if s.write_all(&chunk).is_err() {
                                        break;
                                    }
                                    sent += chunk.len();
                                }
                            }
                        }
                    }));
                }
                for w in workers {
                    let _ = w.join();
                }
            }
        });
        Hostile {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads an HTTP request head (bounded) and returns it.
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head.len() < 16 * 1024 && !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

fn http_200(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A port nothing listens on.
fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Runs a client against `url` until its tracker failed `failures` times; returns the last
/// error. Also checks that `stop` is prompt.
fn failures_against(url: &str, failures: u32, limit_secs: u64) -> String {
    run_bounded(limit_secs, async {
        let c = spawn_client(one(url), hash(20), 47000, 1);
        until(|| c.client.status()[0].consecutive_failures >= failures).await;
        let st = c.client.status();
        assert_eq!(st[0].announces, 0);
        let start = Instant::now();
        c.client.stop().await;
        assert!(start.elapsed() < Duration::from_secs(2));
        st[0].last_error.clone().expect("an error")
    })
}

#[test]
fn garbage_reply_is_a_clear_error_and_retried() {
    let h = Hostile::start(|_| Act::Write(http_200(b"<html>hello</html>")));
    let e = failures_against(&h.url(), 3, 20);
    assert!(e.contains("malformed bencode at byte 0"), "{e}");
    assert!(h.hits() >= 3);
}

#[test]
fn failure_reason_is_reported() {
    let h = Hostile::start(|_| Act::Write(http_200(b"d14:failure reason17:torrent not founde")));
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "tracker refused: torrent not found");
}

#[test]
fn error_status_with_and_without_a_reason() {
    let h = Hostile::start(|n| {
        let body: &[u8] = if n == 0 {
            b"d14:failure reason6:bannede"
        } else {
            b"oops"
        };
        let mut r = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        Act::Write(r)
    });
    let t = fast_timing();
    run_bounded(20, async {
        let e = announce_once(&h.url(), &request(hash(21), 1, 1, None), &t)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "http status 403: tracker refused: banned");
        let e = announce_once(&h.url(), &request(hash(21), 1, 1, None), &t)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "http status 403");
    });
}

#[test]
fn huge_replies_are_refused_without_reading_them_whole() {
    // A length above the limit, announced in the head...
    let h = Hostile::start(|_| {
        Act::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\nd8:interval".to_vec())
    });
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "reply larger than 2097152 bytes");
    // ... or a body that just keeps coming.
    let h = Hostile::start(|_| Act::Stream(4 * 1024 * 1024));
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "reply larger than 2097152 bytes");
}

#[test]
fn a_tracker_that_never_answers_times_out() {
    let h = Hostile::start(|_| Act::Hang(Duration::from_secs(30)));
    let start = Instant::now();
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "no answer in time");
    // Two timeouts of 1 s and a backoff of about 0.1 s.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let e = failures_against(&format!("http://{}/announce", refused_addr()), 2, 20);
    assert!(
        e.starts_with("http request failed: connection refused"),
        "{e}"
    );
}

#[test]
fn stop_is_bounded_when_the_tracker_hangs_on_stopped() {
    let good = encode_reply(1);
    let h = Hostile::start(move |n| {
        if n == 0 {
            Act::Write(http_200(&good))
        } else {
            Act::Hang(Duration::from_secs(30))
        }
    });
    run_bounded(20, async {
        let mut cfg = config(one(&h.url()), hash(22), 47100);
        cfg.timing.min_announce_interval = Duration::from_secs(60);
        let (tx, _rx) = async_channel::bounded(4);
        let c = TrackerClient::spawn(cfg, Arc::new(TransferStats::new(1)), tx);
        until(|| c.status()[0].announces == 1).await;
        let start = Instant::now();
        c.stop().await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "stopped was sent and waited for: {took:?}"
        );
        assert!(took < Duration::from_millis(2500), "{took:?}");
        assert_eq!(h.hits(), 2, "one started, one stopped");
    });
}

fn encode_reply(interval: u32) -> Vec<u8> {
    shoal_engine::tracker::encode_announce_reply(interval, &[], true, 0, 1)
}

/// Each announce asks for its connection to be closed, so that clients do not hold a
/// tracker's workers between announces (with tiny_http, our embedded tracker then queued a new
/// connection behind idle ones, and an announce waited for the whole request timeout). The
/// header is checked on the wire; then twenty torrents announcing one after the other to the
/// embedded tracker (which now closes every connection itself) are each answered at once.
#[test]
fn announces_close_their_connection_and_many_clients_are_answered_at_once() {
    // What our client sends, seen by a raw listener.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let head = read_head(&mut s);
        let _ = s.write_all(&http_200(&encode_reply(60)));
        String::from_utf8_lossy(&head).to_ascii_lowercase()
    });
    run_bounded(10, async {
        let url = format!("http://{addr}/announce");
        announce_once(&url, &request(hash(24), 1, 1, None), &fast_timing())
            .await
            .expect("announce");
    });
    let head = seen.join().unwrap();
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");

    // The embedded tracker and twenty clients, each one's first announce bounded.
    let tracker = server(60);
    run_bounded(60, async {
        let mut clients = Vec::new();
        for i in 0..20u16 {
            let c = spawn_client(one(&tracker.announce_url()), hash(25), 48000 + i, 1);
            let start = Instant::now();
            until(|| c.client.status()[0].announces >= 1).await;
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "client {i} waited {:?} for its first answer",
                start.elapsed()
            );
            clients.push(c);
        }
        for c in clients {
            c.client.stop().await;
        }
    });
}

/// Idle and misbehaving clients of the embedded tracker cost it nothing that others notice:
/// 200 connections that never send a byte, one sending a huge head, one sending junk, one
/// POST; an announce meanwhile is answered at once, and each bad request gets its status.
#[test]
fn the_embedded_tracker_answers_while_clients_idle_or_misbehave() {
    let tracker = server(60);
    let addr = tracker.local_addr();
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let status_of_reply = |request: &[u8]| -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(request);
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let mut huge = b"GET /announce?".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    assert!(status_of_reply(&huge).contains(" 431 "));
    assert!(status_of_reply(b"\x00\x01junk\r\n\r\n").contains(" 400 "));
    assert!(status_of_reply(b"POST /announce HTTP/1.1\r\n\r\n").contains(" 405 "));
    assert!(status_of_reply(b"GET /nothing HTTP/1.1\r\n\r\n").contains(" 404 "));
    let start = Instant::now();
    let reply = run_bounded(10, async {
        announce_once(
            &tracker.announce_url(),
            &request(hash(26), 6881, 1, Some(Event::Started)),
            &fast_timing(),
        )
        .await
        .expect("announce")
    });
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(reply.incomplete, Some(1));
    drop(idle);
}

#[test]
fn announce_once_rejects_unusable_urls() {
    run_bounded(5, async {
        let t = fast_timing();
        let e = announce_once(
            "https://t.invalid/announce",
            &request(hash(23), 1, 1, None),
            &t,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AnnounceError::BadUrl(_)));
        let e = scrape("http://127.0.0.1:1/a", &[], &t).await.unwrap_err();
        assert!(
            matches!(e, AnnounceError::Tracker(TrackerError::NoScrape)),
            "{e}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Debian's opentracker

/// A free port on 127.0.0.1 for both TCP and UDP (opentracker binds both).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct OpenTracker {
    _child: ChildGuard,
    _dir: tempfile::TempDir,
    port: u16,
}

impl OpenTracker {
    /// A fresh opentracker serving the whitelisted `hashes`, ready to answer.
    fn start(hashes: &[InfoHash]) -> Self {
        common::require_program("opentracker");
        let dir = common::tempdir();
        let list: String = hashes.iter().map(|h| format!("{h}\n")).collect();
        std::fs::write(dir.path().join("whitelist"), list).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let child = start_opentracker(dir.path(), port);
            // Ready when it accepts TCP connections (a bare connect is harmless to it).
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return OpenTracker {
                        _child: child,
                        _dir: dir,
                        port,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("opentracker did not start");
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    fn udp_url(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }
}

fn start_opentracker(dir: &Path, port: u16) -> ChildGuard {
    let mut cmd = Command::new("opentracker");
    // It chroots into `-d` (when it can) before reading the whitelist, so the whitelist path
    // is relative to that folder.
    cmd.current_dir(dir)
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &port.to_string(),
        ])
        .arg("-d")
        .arg(dir)
        .args(["-w", "./whitelist"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ChildGuard::spawn(cmd)
}

#[test]
fn opentracker_http_two_clients() {
    let h = hash(0x31);
    let ot = OpenTracker::start(&[h]);
    let url = ot.http_url();
    run_bounded(40, async {
        let a = spawn_client(one(&url), h, 48001, 100);
        until(|| a.client.status()[0].announces >= 1).await;
        let b = spawn_client(one(&url), h, 48002, 100);
        learn(&b.peers, local(48001)).await;
        // opentracker asks for a 30-minute interval: `completed` makes A announce at once.
        a.stats.left.store(0, Ordering::Relaxed);
        a.client.completed().await;
        learn(&a.peers, local(48002)).await;
        let t = fast_timing();
        let mut s = scrape(&url, &[h], &t).await.unwrap().get(&h).unwrap();
        while s.downloaded == 0 {
            Timer::after(Duration::from_millis(50)).await;
            s = scrape(&url, &[h], &t).await.unwrap().get(&h).unwrap();
        }
        assert_eq!((s.complete, s.incomplete, s.downloaded), (1, 1, 1));
        let st = b.client.status();
        assert_eq!(st[0].last_error, None);
        assert!(st[0].seeders.is_some());
        b.client.stop().await;
        let s = scrape(&url, &[h], &t).await.unwrap().get(&h).unwrap();
        assert_eq!((s.complete, s.incomplete), (1, 0), "stopped removed B");
        a.client.stop().await;
    });
}

#[test]
fn opentracker_refuses_an_unlisted_torrent() {
    let ot = OpenTracker::start(&[hash(0x32)]);
    let e = failures_against(&ot.http_url(), 1, 20);
    assert!(
        e.starts_with("tracker refused: Requested download is not authorized"),
        "{e}"
    );
}

#[test]
fn opentracker_udp_two_clients_and_scrape() {
    let h = hash(0x33);
    let ot = OpenTracker::start(&[h]);
    let url = ot.udp_url();
    run_bounded(40, async {
        let a = spawn_client(one(&url), h, 48101, 100);
        until(|| a.client.status()[0].announces >= 1).await;
        let b = spawn_client(one(&url), h, 48102, 100);
        learn(&b.peers, local(48101)).await;
        a.stats.left.store(0, Ordering::Relaxed);
        a.client.completed().await;
        learn(&a.peers, local(48102)).await;
        let st = b.client.status();
        assert_eq!(st[0].last_error, None, "{st:?}");
        let t = fast_timing();
        let mut s = scrape(&url, &[h, hash(0x34)], &t).await.unwrap();
        while s.get(&h).unwrap().downloaded == 0 {
            Timer::after(Duration::from_millis(50)).await;
            s = scrape(&url, &[h, hash(0x34)], &t).await.unwrap();
        }
        let sh = s.get(&h).unwrap();
        assert_eq!((sh.complete, sh.incomplete, sh.downloaded), (1, 1, 1));
        assert_eq!(
            s.get(&hash(0x34)).map(|s| s.complete + s.incomplete),
            Some(0)
        );
        b.client.stop().await;
        let s = scrape(&url, &[h], &t).await.unwrap().get(&h).unwrap();
        assert_eq!((s.complete, s.incomplete), (1, 0), "stopped removed B");
        a.client.stop().await;
    });
}

#[test]
fn opentracker_udp_and_http_share_the_swarm() {
    let h = hash(0x35);
    let ot = OpenTracker::start(&[h]);
    let t = fast_timing();
    run_bounded(20, async {
        announce_once(
            &ot.udp_url(),
            &request(h, 48201, 1, Some(Event::Started)),
            &t,
        )
        .await
        .unwrap();
        let r = announce_once(
            &ot.http_url(),
            &request(h, 48202, 1, Some(Event::Started)),
            &t,
        )
        .await
        .unwrap();
        assert!(r.peers.contains(&local(48201)), "{:?}", r.peers);
        let r = announce_once(
            &ot.udp_url(),
            &request(h, 48203, 1, Some(Event::Started)),
            &t,
        )
        .await
        .unwrap();
        assert!(r.peers.contains(&local(48202)), "{:?}", r.peers);
        assert_eq!(r.incomplete, Some(3));
    });
}

// ---------------------------------------------------------------------------------------------
// Hostile UDP trackers: a raw UdpSocket answering what the test says

/// What the hostile UDP tracker saw.
#[derive(Default)]
struct UdpLog {
    connects: usize,
    announces: usize,
    other: usize,
}

struct HostileUdp {
    addr: SocketAddr,
    log: Arc<std::sync::Mutex<UdpLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A request as the hostile tracker reads it.
struct UdpRequest {
    action: u32,
    tid: u32,
    connection_id: u64,
}

const CONNECTION_ID: u64 = 0x5eed_0000_0000_0001;

fn udp_reply(action: u32, tid: u32, body: &[u8]) -> Vec<u8> {
    let mut p = action.to_be_bytes().to_vec();
    p.extend_from_slice(&tid.to_be_bytes());
    p.extend_from_slice(body);
    p
}

fn connect_ok(tid: u32) -> Vec<u8> {
    udp_reply(0, tid, &CONNECTION_ID.to_be_bytes())
}

fn announce_ok(tid: u32, peers: &[SocketAddr]) -> Vec<u8> {
    let mut body = Vec::new();
    for n in [1u32, 2, 3] {
        body.extend_from_slice(&n.to_be_bytes()); // interval, leechers, seeders
    }
    for p in peers {
        match p {
            SocketAddr::V4(p) => body.extend_from_slice(&p.ip().octets()),
            SocketAddr::V6(p) => body.extend_from_slice(&p.ip().octets()),
        }
        body.extend_from_slice(&p.port().to_be_bytes());
    }
    udp_reply(1, tid, &body)
}

impl HostileUdp {
    /// `answer` gets each request and how many of its action came before; returns the
    /// datagrams to send back.
    fn start(answer: impl Fn(&UdpRequest, usize) -> Vec<Vec<u8>> + Send + 'static) -> Self {
        Self::start_on("127.0.0.1:0", answer)
    }

    fn start_on(
        bind: &str,
        answer: impl Fn(&UdpRequest, usize) -> Vec<Vec<u8>> + Send + 'static,
    ) -> Self {
        let socket = std::net::UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let log = Arc::new(std::sync::Mutex::new(UdpLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let p = &buf[..len];
                    if len < 16 {
                        log.lock().unwrap().other += 1;
                        continue;
                    }
                    let req = UdpRequest {
                        connection_id: u64::from_be_bytes(p[..8].try_into().unwrap()),
                        action: u32::from_be_bytes(p[8..12].try_into().unwrap()),
                        tid: u32::from_be_bytes(p[12..16].try_into().unwrap()),
                    };
                    let seen = {
                        let mut log = log.lock().unwrap();
                        match req.action {
                            0 if req.connection_id == 0x0417_2710_1980 && len == 16 => {
                                log.connects += 1;
                                log.connects - 1
                            }
                            1 if req.connection_id == CONNECTION_ID && len == 98 => {
                                log.announces += 1;
                                log.announces - 1
                            }
                            _ => {
                                log.other += 1;
                                continue;
                            }
                        }
                    };
                    for reply in answer(&req, seen) {
                        let _ = socket.send_to(&reply, from);
                    }
                }
            }
        });
        HostileUdp {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("udp://{}/announce", self.addr)
    }

    fn counts(&self) -> (usize, usize, usize) {
        let l = self.log.lock().unwrap();
        (l.connects, l.announces, l.other)
    }
}

impl Drop for HostileUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn udp_stray_replies_are_dropped_and_the_right_one_taken() {
    let h = HostileUdp::start(|req, _| match req.action {
        // A reply to someone else first, then ours.
        0 => vec![connect_ok(req.tid ^ 1), connect_ok(req.tid)],
        _ => vec![
            announce_ok(req.tid.wrapping_add(7), &[]),
            announce_ok(req.tid, &[local(50001)]),
        ],
    });
    run_bounded(10, async {
        let r = announce_once(&h.url(), &request(hash(50), 1, 1, None), &fast_timing())
            .await
            .unwrap();
        assert_eq!(r.peers, vec![local(50001)]);
        assert_eq!(
            (r.interval, r.incomplete, r.complete),
            (1, Some(2), Some(3))
        );
    });
    assert_eq!(h.counts(), (1, 1, 0), "no retransmission was needed");
}

#[test]
fn udp_only_stray_replies_is_a_clear_error_after_retransmissions() {
    let h = HostileUdp::start(|req, _| vec![connect_ok(req.tid.wrapping_add(1))]);
    let start = Instant::now();
    let e = failures_against(&h.url(), 1, 20);
    assert!(e.starts_with("udp tracker reply has transaction id"), "{e}");
    // 0.2 + 0.4 + 0.8 s of waiting: three connects, then the round fails.
    assert!(start.elapsed() >= Duration::from_millis(1400));
    assert!(h.counts().0 >= 3, "{:?}", (h.counts().0, h.counts().1));
}

#[test]
fn udp_silence_is_retransmitted_with_backoff_then_times_out() {
    let h = HostileUdp::start(|_, _| vec![]);
    run_bounded(20, async {
        let start = Instant::now();
        let e = announce_once(&h.url(), &request(hash(51), 1, 1, None), &fast_timing())
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.to_string(), "no answer in time");
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
            "{took:?}"
        );
    });
    assert_eq!(h.counts().0, 3, "the first connect and two retransmissions");
}

#[test]
fn udp_lost_reply_is_retransmitted_and_the_connection_id_reused() {
    // The first announce gets no answer; its retransmission does.
    let h = HostileUdp::start(|req, seen| match (req.action, seen) {
        (0, _) => vec![connect_ok(req.tid)],
        (_, 0) => vec![],
        _ => vec![announce_ok(req.tid, &[local(50002)])],
    });
    run_bounded(10, async {
        let r = announce_once(&h.url(), &request(hash(52), 1, 1, None), &fast_timing())
            .await
            .unwrap();
        assert_eq!(r.peers, vec![local(50002)]);
    });
    assert_eq!(
        h.counts(),
        (1, 2, 0),
        "one connect, an announce and its retransmission"
    );
}

#[test]
fn udp_actor_reuses_its_connection_id_within_a_minute() {
    let h = HostileUdp::start(|req, _| match req.action {
        0 => vec![connect_ok(req.tid)],
        _ => vec![announce_ok(req.tid, &[])],
    });
    run_bounded(20, async {
        let c = spawn_client(one(&h.url()), hash(53), 50003, 1);
        until(|| c.client.status()[0].announces >= 3).await;
        c.client.stop().await;
    });
    let (connects, announces, other) = h.counts();
    assert_eq!(connects, 1);
    assert!(announces >= 4, "three announces and a stopped: {announces}");
    assert_eq!(other, 0);
}

#[test]
fn udp_truncated_replies_are_clear_errors() {
    let h = HostileUdp::start(|req, _| vec![connect_ok(req.tid)[..12].to_vec()]);
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "udp tracker packet of 12 bytes is shorter than 16");
    let h = HostileUdp::start(|req, _| match req.action {
        0 => vec![connect_ok(req.tid)],
        _ => vec![announce_ok(req.tid, &[local(1)])[..23].to_vec()],
    });
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "compact peer list of 3 bytes is not a multiple of 6");
    let h = HostileUdp::start(|_, _| vec![vec![1, 2, 3]]);
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "udp tracker packet of 3 bytes is shorter than 8");
}

#[test]
fn udp_error_action_is_the_trackers_refusal() {
    let h = HostileUdp::start(|req, _| match req.action {
        0 => vec![connect_ok(req.tid)],
        _ => vec![udp_reply(3, req.tid, b"torrent not registered")],
    });
    let e = failures_against(&h.url(), 2, 20);
    assert_eq!(e, "tracker refused: torrent not registered");
    // The connection id is dropped after a failure: each round connects again.
    assert!(h.counts().0 >= 2);
}

#[test]
fn udp_wrong_action_is_an_error() {
    let h = HostileUdp::start(|req, _| vec![udp_reply(2, req.tid, &[0; 8])]);
    let e = failures_against(&h.url(), 1, 20);
    assert_eq!(e, "udp tracker reply has action 2, expected 0");
}

#[test]
fn udp_over_ipv6_reads_18_byte_peers() {
    let peer: SocketAddr = "[::1]:50005".parse().unwrap();
    let h = HostileUdp::start_on("[::1]:0", move |req, _| match req.action {
        0 => vec![connect_ok(req.tid)],
        _ => vec![announce_ok(req.tid, &[peer])],
    });
    run_bounded(10, async {
        let r = announce_once(&h.url(), &request(hash(55), 1, 1, None), &fast_timing())
            .await
            .unwrap();
        assert_eq!(r.peers, vec![peer]);
    });
}

#[test]
fn embedded_tracker_over_ipv6_answers_in_peers6() {
    let server = TrackerServer::bind("[::1]:0".parse().unwrap()).unwrap();
    let url = server.announce_url();
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let t = fast_timing();
    run_bounded(10, async {
        announce_once(&url, &request(hash(56), 50006, 1, None), &t)
            .await
            .unwrap();
        let r = announce_once(&url, &request(hash(56), 50007, 1, None), &t)
            .await
            .unwrap();
        assert_eq!(r.peers, vec!["[::1]:50006".parse().unwrap()]);
    });
}

#[test]
fn udp_port_unreachable_fails_fast() {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    run_bounded(10, async {
        let start = Instant::now();
        let e = announce_once(
            &format!("udp://127.0.0.1:{port}"),
            &request(hash(54), 1, 1, None),
            &fast_timing(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("socket error: connection refused"),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_millis(500));
    });
}

// ---------------------------------------------------------------------------------------------
// The `shoal tracker` binary

#[test]
fn shoal_tracker_binary_serves_until_killed() {
    let mut cmd = Command::new(common::shoal_bin());
    cmd.args(["tracker", "--listen", "127.0.0.1:0", "--interval", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = ChildGuard::spawn(cmd);
    let stdout = child.child().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("announce url on stdout");
    let url = url.trim();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/announce"),
        "{url}"
    );
    run_bounded(20, async {
        let t = fast_timing();
        let h = hash(0x40);
        announce_once(url, &request(h, 49000, 1, None), &t)
            .await
            .unwrap();
        let r = announce_once(url, &request(h, 49001, 1, None), &t)
            .await
            .unwrap();
        assert_eq!(r.interval, 7);
        assert_eq!(r.peers, vec![local(49000)]);
    });
    assert!(child.child().try_wait().unwrap().is_none(), "still serving");
}

#[test]
fn shoal_tracker_binary_reports_a_busy_port() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = common::shoal(&["tracker", "--listen", &addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}
