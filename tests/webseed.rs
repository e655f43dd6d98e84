//! Web seeds (BEP 19) end to end on 127.0.0.1: a small HTTP server started by each test (std
//! threads, ranges, keep-alive, counting what it serves) and the torrent's `url-list` pointing
//! at it. The download comes from the web seed alone (single-file and multi-file, through the
//! `shoal` binary and through the library), from a web seed and a libtorrent peer together,
//! and from the peer when the web seed lies (disabled after its first bad piece), ignores
//! ranges, answers 404, or answers 503 with `Retry-After` (honoured, then used).
//!
//! Run with `cargo test --release --test webseed`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;
use futures_lite::FutureExt;
use shoal_actors::runtime::Runtime;
use shoal_actors::session::{Session, SessionSettings};
use shoal_actors::shared::TorrentEvent;
use shoal_actors::torrent::AddTorrent;
use shoal_engine::metainfo::Metainfo;

/// Bound for each download.
const LIMIT: Duration = Duration::from_secs(90);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// How the test server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Ranges served as asked.
    Honest,
    /// Ranges served with one byte flipped in each answer.
    Corrupt,
    /// `Range` ignored: 200 and the whole file.
    IgnoreRange,
    /// 404 to everything.
    NotFound,
    /// 503 with `Retry-After: 1` to the first `n` requests, then honest.
    Unavailable(usize),
}

/// One request the server answered.
#[derive(Clone, Debug)]
struct Hit {
    /// When it came.
    at: Instant,
    /// The status sent.
    status: u16,
    /// Body bytes written in full.
    bytes: u64,
}

/// A web server on 127.0.0.1 serving the files under `root`, recording every request.
struct WebServer {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: Arc<AtomicBool>,
}

impl WebServer {
    /// Starts serving `root`; each answer waits `delay` first (a slow mirror).
    fn start(root: &Path, mode: Mode, delay: Duration) -> WebServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, h, s) = (root.to_path_buf(), hits.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, h) = (root.clone(), h.clone());
                std::thread::spawn(move || serve(conn, &root, mode, delay, &h));
            }
        });
        WebServer { addr, hits, stop }
    }

    /// The URL of `rel` under the root.
    fn url(&self, rel: &str) -> String {
        format!("http://{}/{rel}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Body bytes of successful answers.
    fn bytes_served(&self) -> u64 {
        self.hits()
            .iter()
            .filter(|h| h.status == 206 || h.status == 200)
            .map(|h| h.bytes)
            .sum()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answers the requests of one connection (keep-alive) until it closes.
fn serve(mut conn: TcpStream, root: &Path, mode: Mode, delay: Duration, hits: &Mutex<Vec<Hit>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        // The head of the next request (GET has no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_string();
        let range = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
            .map(|(_, v)| v.trim().to_string());
        std::thread::sleep(delay);
        let before = hits.lock().unwrap().len();
        let (status, headers, body) = answer(root, &path, range.as_deref(), mode, before);
        let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let sent = conn
            .write_all(out.as_bytes())
            .and_then(|()| conn.write_all(&body))
            .is_ok();
        hits.lock().unwrap().push(Hit {
            at: Instant::now(),
            status,
            bytes: if sent { body.len() as u64 } else { 0 },
        });
        if !sent {
            return;
        }
    }
}

/// The status, extra headers and body for a GET of `path` (`before`: requests answered so far).
fn answer(
    root: &Path,
    path: &str,
    range: Option<&str>,
    mode: Mode,
    before: usize,
) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    match mode {
        Mode::NotFound => return (404, vec![], b"not here".to_vec()),
        Mode::Unavailable(n) if before < n => {
            return (503, vec![("Retry-After", "1".into())], vec![]);
        }
        _ => {}
    }
    let rel = percent_decode(path.trim_start_matches('/'));
    if rel.split('/').any(|c| c == ".." || c.is_empty()) {
        return (404, vec![], vec![]);
    }
    let Ok(data) = std::fs::read(root.join(&rel)) else {
        return (404, vec![], vec![]);
    };
    let range = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match range {
        Some((a, b)) if mode != Mode::IgnoreRange && a <= b && b < data.len() => {
            let mut body = data[a..=b].to_vec();
            if mode == Mode::Corrupt {
                let mid = body.len() / 2;
                body[mid] ^= 0x5a;
            }
            let cr = format!("bytes {a}-{b}/{}", data.len());
            (206, vec![("Content-Range", cr)], body)
        }
        Some(_) if mode != Mode::IgnoreRange => (416, vec![], vec![]),
        _ => (200, vec![], data),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A test's content under `dir/src/name`, and its torrent made by `shoal create` with the web
/// seed `url-list` entries; returns (content, torrent).
fn make_torrent(
    dir: &Path,
    name: &str,
    shape: Shape,
    total: u64,
    piece: u64,
    web_seeds: &[String],
) -> (PathBuf, PathBuf) {
    let content = make_content(&dir.join("src"), name, shape, total, total ^ piece);
    let torrent = dir.join(format!("{name}.torrent"));
    let piece = piece.to_string();
    let mut args = vec!["create", s(&content), "-o", s(&torrent), "-l", &piece];
    for url in web_seeds {
        args.extend(["--web-seed", url]);
    }
    let out = shoal(&args);
    assert!(
        out.status.success(),
        "shoal create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = Metainfo::from_bytes(&std::fs::read(&torrent).expect("read")).expect("parse");
    assert_eq!(
        meta.url_list, web_seeds,
        "create --web-seed writes url-list"
    );
    (content, torrent)
}

/// The web seed URL for content `name` served from `dir/src`: the file itself for one file
/// (BEP 19's "the URL is the file"), the folder above for several (name and paths appended).
fn seed_url(server: &WebServer, name: &str, shape: Shape) -> String {
    match shape {
        Shape::Single => server.url(name),
        Shape::Multi => server.url(""),
    }
}

/// `shoal download TORRENT` with `extra` arguments, no trackers; byte-exact at the end.
fn shoal_download(dir: &Path, torrent: &Path, content: &Path, extra: &[&str], logs: &[&Path]) {
    let out = dir.join("out");
    let log = dir.join("shoal.log");
    let mut args = vec![
        "download",
        s(torrent),
        "-o",
        s(&out),
        "--listen",
        "127.0.0.1:0",
        "--no-trackers",
    ];
    args.extend_from_slice(extra);
    let mut child = spawn_shoal(&args, &log);
    let mut all = vec![log.as_path()];
    all.extend_from_slice(logs);
    wait_success(&mut child, LIMIT, "shoal download", &all);
    assert_same_content(content, &out.join(content.file_name().expect("name")));
}

/// The binary, from the web seed alone.
fn web_seed_alone_binary(shape: Shape, tag: &str) {
    let dir = tempdir();
    let server = WebServer::start(&dir.path().join("src"), Mode::Honest, Duration::ZERO);
    let url = seed_url(&server, tag, shape);
    let total = 5 * MIB + 4321;
    let (content, torrent) = make_torrent(dir.path(), tag, shape, total, 64 * KIB, &[url]);
    shoal_download(dir.path(), &torrent, &content, &[], &[]);
    assert!(
        server.bytes_served() >= total,
        "the web seed served {} of {total} bytes",
        server.bytes_served()
    );
    assert!(server.hits().iter().all(|h| h.status == 206), "ranges only");
}

#[test]
fn web_seed_alone_single_file_binary() {
    web_seed_alone_binary(Shape::Single, "ws-single");
}

#[test]
fn web_seed_alone_multi_file_binary() {
    web_seed_alone_binary(Shape::Multi, "ws-multi");
}

/// A web seed that is not on this machine: its URL, and the listener behind it if it is on this
/// host's outward address (so that a contact would be seen).
type Remote = (String, Option<TcpListener>);

/// The library: a session with no peer at all downloads from the web seed. With `remote`, the
/// torrent names first a web seed off this machine, which the session, on loopback, must never
/// contact (the loopback rule): it is never listed, and its listener sees no connection.
fn web_seed_alone_library(shape: Shape, tag: &str, remote: Option<Remote>) {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempdir();
    let server = WebServer::start(&dir.path().join("src"), Mode::Honest, Duration::ZERO);
    let url = seed_url(&server, tag, shape);
    let total = 3 * MIB + 999;
    let mut urls = Vec::new();
    if let Some((remote_url, _)) = &remote {
        urls.push(remote_url.clone());
    }
    urls.push(url.clone());
    let (content, torrent) = make_torrent(dir.path(), tag, shape, total, 32 * KIB, &urls);
    let meta = Arc::new(Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap());
    let rt = Runtime::new(2);
    let session = Session::with_spawner(
        SessionSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..SessionSettings::default()
        },
        rt.handle(),
    )
    .expect("session");
    let out = dir.path().join("out");
    let t = session
        .start_torrent(AddTorrent::download(meta.clone(), &out))
        .expect("add");
    // The web seed shows among the peers while it works.
    let mut seen_web = false;
    let done = rt.block_on(
        async {
            loop {
                let peers = t.peers().await;
                seen_web |= peers
                    .iter()
                    .any(|p| p.transport.as_str() == "web" && p.url.as_deref() == Some(&url));
                if let Some((remote_url, _)) = &remote {
                    assert!(
                        peers.iter().all(|p| p.url.as_deref() != Some(remote_url)),
                        "the web seed off this machine was started: {peers:?}"
                    );
                }
                if t.progress().complete {
                    return true;
                }
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        }
        .or(async {
            smol::Timer::after(LIMIT).await;
            false
        }),
    );
    assert!(done, "not complete within {LIMIT:?}");
    assert_eq!(t.progress().peers, 0, "no peer took part");
    rt.block_on(session.shutdown());
    assert_same_content(&content, &out.join(tag));
    assert!(server.bytes_served() >= total);
    assert!(
        seen_web,
        "the web seed was listed with transport web and its url"
    );
    if let Some((_, Some(l))) = remote {
        l.set_nonblocking(true).unwrap();
        assert!(
            matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the loopback session contacted the web seed at {}",
            l.local_addr().unwrap()
        );
    }
}

#[test]
fn web_seed_alone_single_file_library() {
    web_seed_alone_library(Shape::Single, "lib-single", None);
}

#[test]
fn web_seed_alone_multi_file_library() {
    web_seed_alone_library(Shape::Multi, "lib-multi", None);
}

/// The loopback rule: a session on 127.0.0.1 fetches only web seeds on this machine. The other
/// one listens on this host's outward address (`common::outward_ipv4`), so a contact would be
/// seen.
#[test]
fn a_loopback_session_fetches_only_web_seeds_on_this_machine() {
    let remote = match common::outward_ipv4() {
        Some(ip) => {
            let l = TcpListener::bind((ip, 0)).expect("listen on the outward address");
            (format!("http://{}/", l.local_addr().unwrap()), Some(l))
        }
        None => {
            eprintln!(
                "NOTE: this host has no outward IPv4 address: the web seed off this machine is a \
                 name, checked only for never being started"
            );
            ("http://mirror.example.org/".to_string(), None)
        }
    };
    web_seed_alone_library(Shape::Multi, "lib-local-only", Some(remote));
}

/// A libtorrent seed of `torrent` with its data in `src`, upload-limited; returns it and its
/// log once it listens.
fn libtorrent_seed(dir: &Path, torrent: &Path, upload_limit: u64) -> (ChildGuard, PathBuf, u16) {
    let log = dir.join("libtorrent.log");
    let port = free_port();
    let lt = Libtorrent {
        seed: true,
        upload_limit,
        ..Libtorrent::default()
    }
    .spawn(torrent, &dir.join("src"), port, &log);
    wait_until(LIMIT, "libtorrent to check its data", &[&log], || {
        libtorrent_finished(&log)
    });
    wait_listening(port, LIMIT, "libtorrent", &[&log]);
    (lt, log, port)
}

/// Payload bytes libtorrent says it uploaded, from its last status line.
fn libtorrent_uploaded(log: &Path) -> u64 {
    json_events(log, "status")
        .last()
        .and_then(|v| v["up"].as_u64())
        .unwrap_or(0)
}

#[test]
fn web_seed_and_libtorrent_peer_both_deliver() {
    let dir = tempdir();
    // A slow mirror (a tenth of a second per answer, 64 KiB pieces) and a peer at 2 MiB/s:
    // neither alone is done before the other has sent something.
    let server = WebServer::start(
        &dir.path().join("src"),
        Mode::Honest,
        Duration::from_millis(100),
    );
    let url = seed_url(&server, "both", Shape::Multi);
    let total = 12 * MIB + 77;
    let (content, torrent) =
        make_torrent(dir.path(), "both", Shape::Multi, total, 64 * KIB, &[url]);
    let (_lt, lt_log, port) = libtorrent_seed(dir.path(), &torrent, 2 * MIB);
    let peer = format!("127.0.0.1:{port}");
    shoal_download(
        dir.path(),
        &torrent,
        &content,
        &["--peer", &peer],
        &[&lt_log],
    );
    // libtorrent prints its status every half second.
    std::thread::sleep(Duration::from_millis(700));
    let (web, lt) = (server.bytes_served(), libtorrent_uploaded(&lt_log));
    assert!(web > 0, "the web seed sent nothing");
    assert!(lt > 0, "libtorrent sent nothing");
    assert!(web + lt >= total, "web {web} + peer {lt} < {total}");
}

/// A download from a libtorrent peer (upload-limited so the web seed has time to misbehave)
/// and a web seed in `mode`, through the library; returns the server and the torrent's events.
fn with_bad_web_seed(mode: Mode, tag: &str) -> (WebServer, Vec<TorrentEvent>) {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempdir();
    let server = WebServer::start(&dir.path().join("src"), mode, Duration::ZERO);
    let url = seed_url(&server, tag, Shape::Single);
    let total = 6 * MIB + 5;
    let (content, torrent) = make_torrent(dir.path(), tag, Shape::Single, total, 64 * KIB, &[url]);
    let (_lt, lt_log, port) = libtorrent_seed(dir.path(), &torrent, 2 * MIB);
    let meta = Arc::new(Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap());
    let rt = Runtime::new(2);
    let session = Session::with_spawner(
        SessionSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..SessionSettings::default()
        },
        rt.handle(),
    )
    .expect("session");
    let out = dir.path().join("out");
    let mut add = AddTorrent::download(meta, &out);
    add.peers = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    let t = session.start_torrent(add).expect("add");
    let events = t.subscribe();
    let done = rt.block_on(async { Some(t.wait_complete().await) }.or(async {
        smol::Timer::after(LIMIT).await;
        None
    }));
    assert!(
        matches!(done, Some(Ok(_))),
        "not complete within {LIMIT:?}: {done:?}\n{}",
        tails(&[&lt_log])
    );
    rt.block_on(session.shutdown());
    assert_same_content(&content, &out.join(tag));
    std::thread::sleep(Duration::from_millis(700));
    assert!(libtorrent_uploaded(&lt_log) > 0, "the peer sent nothing");
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    (server, seen)
}

#[test]
fn corrupt_web_seed_is_disabled_and_the_peer_completes() {
    let (server, events) = with_bad_web_seed(Mode::Corrupt, "corrupt");
    let failed: Vec<&TorrentEvent> = events
        .iter()
        .filter(|e| {
            matches!(e, TorrentEvent::PieceFailed { peers, .. }
                if peers.iter().any(shoal_actors::webseed::is_seed_addr))
        })
        .collect();
    assert!(
        !failed.is_empty(),
        "a piece from the web seed failed: {events:?}"
    );
    // Disabled at its first bad piece: at most the grant it was fetching meanwhile follows
    // (a grant is 1 MiB here, one request per run), nothing after.
    let hits = server.hits();
    let after_first = hits.len();
    assert!(
        after_first <= 2 * 16,
        "the corrupt web seed was asked {after_first} times"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.hits().len(), after_first);
}

#[test]
fn web_seed_that_ignores_ranges_is_disabled() {
    let (server, _) = with_bad_web_seed(Mode::IgnoreRange, "norange");
    let hits = server.hits();
    // A range at 0 is the start of the whole body and is used; the first elsewhere ends it.
    assert!(
        !hits.is_empty() && hits.len() <= 2,
        "asked {} times: {hits:?}",
        hits.len()
    );
    // Only what was asked was read: the server could not write whole 6 MiB bodies, or wrote
    // them into socket buffers that were then closed.
    assert!(hits.iter().all(|h| h.status == 200));
}

#[test]
fn web_seed_answering_404_is_disabled() {
    let (server, _) = with_bad_web_seed(Mode::NotFound, "missing");
    let hits = server.hits();
    assert_eq!(hits.len(), 1, "a 404 is not asked again: {hits:?}");
    assert_eq!(hits[0].status, 404);
}

#[test]
fn retry_after_is_honoured_then_the_web_seed_serves() {
    let dir = tempdir();
    let server = WebServer::start(
        &dir.path().join("src"),
        Mode::Unavailable(2),
        Duration::ZERO,
    );
    let url = seed_url(&server, "busy", Shape::Single);
    let total = 2 * MIB + 3;
    let (content, torrent) =
        make_torrent(dir.path(), "busy", Shape::Single, total, 64 * KIB, &[url]);
    // No peer: only the web seed, once it stops answering 503, can finish this.
    shoal_download(dir.path(), &torrent, &content, &[], &[]);
    let hits = server.hits();
    assert_eq!(hits[0].status, 503);
    assert_eq!(hits[1].status, 503);
    assert!(hits[2..].iter().all(|h| h.status == 206));
    for w in hits[..3].windows(2) {
        let gap = w[1].at.duration_since(w[0].at);
        assert!(
            gap >= Duration::from_millis(950),
            "asked again after {gap:?} despite Retry-After: 1"
        );
    }
    assert!(server.bytes_served() >= total);
}
