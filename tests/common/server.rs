//! Helpers of the `shoal server` tests: a server process whose printed address is read from
//! its standard error, a seeder, and a small HTTP/1.1 client over a std `TcpStream`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{shoal_bin, ChildGuard};

/// A running `shoal server`.
pub struct ServerProc {
    /// The process.
    pub guard: ChildGuard,
    /// `127.0.0.1:port` of its HTTP API.
    pub http: String,
    /// Every line it wrote on standard error so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerProc {
    /// Starts `shoal server --dir DIR --state STATE --http 127.0.0.1:0 --listen 127.0.0.1:0
    /// --no-trackers EXTRA...` and waits for its address.
    pub fn start(dir: &Path, state: &Path, extra: &[&str]) -> ServerProc {
        Self::start_on(dir, state, "127.0.0.1:0", extra)
    }

    /// Like [`start`](Self::start), with the HTTP address given.
    pub fn start_on(dir: &Path, state: &Path, http: &str, extra: &[&str]) -> ServerProc {
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("server")
            .arg("--dir")
            .arg(dir)
            .arg("--state")
            .arg(state)
            .args(["--http", http, "--listen", "127.0.0.1:0", "--no-trackers"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn(cmd);
        let stderr = guard.child().stderr.take().expect("server stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line
                    .strip_prefix("shoal: server on http://")
                    .map(|rest| rest.split('/').next().unwrap_or("").to_string());
                // Logged before the address is handed over, so the caller sees the line.
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let http = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server printed no address: {:?}", log.lock().unwrap()));
        ServerProc { guard, http, log }
    }

    /// A GET of `path` answered 200, as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = request(&self.http, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Sends a request.
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(&self.http, method, path, headers, body)
    }

    /// Adds a `.torrent` file and returns its info hash.
    pub fn add(&self, torrent: &Path, query: &str) -> String {
        let bytes = std::fs::read(torrent).expect("read torrent");
        let r = self.req(
            "POST",
            &format!("/api/v1/torrents{query}"),
            &[("Content-Type", "application/x-bittorrent")],
            &bytes,
        );
        assert_eq!(r.status, 201, "add: {}", r.text());
        r.json()["info_hash"]
            .as_str()
            .expect("info_hash")
            .to_string()
    }

    /// Waits until torrent `hash` has `field` equal to `want`.
    pub fn wait_for(&self, hash: &str, field: &str, want: serde_json::Value, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.get_json(&format!("/api/v1/torrents/{hash}"));
            if t[field] == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{field} stayed {} (want {want}): {t}",
                t[field]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for the process to end; its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.guard.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        self.guard
            .wait_timeout(Duration::from_secs(60))
            .expect("the server stops within a minute of SIGTERM")
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    parse_reply(&raw)
        .unwrap_or_else(|| panic!("malformed reply: {:?}", String::from_utf8_lossy(&raw)))
}

/// Parses one whole answer (head and body of `Content-Length` bytes).
pub fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body = raw.get(end + 4..)?;
    Some(Reply {
        status,
        headers,
        body: body[..len.min(body.len())].to_vec(),
    })
}

/// Creates `NAME` of `len` random bytes in `folder` and its `.torrent` next to it (piece
/// length `piece_kib` KiB); returns the torrent's path.
pub fn make_torrent(folder: &Path, name: &str, len: usize, seed: u64, piece_kib: u32) -> PathBuf {
    let data = folder.join(name);
    super::write_random_file(&data, len, seed);
    let torrent = folder.join(format!("{name}.torrent"));
    let out = super::shoal(&[
        "create",
        data.to_str().unwrap(),
        "-o",
        torrent.to_str().unwrap(),
        "--piece-length",
        &format!("{}", piece_kib * 1024),
    ]);
    assert!(
        out.status.success(),
        "create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    torrent
}

/// Starts `shoal seed TORRENT DATA` on loopback with extra arguments; returns it with its
/// address.
pub fn start_seeder(torrent: &Path, data: &Path, extra: &[&str]) -> (ChildGuard, String) {
    let mut cmd = Command::new(shoal_bin());
    cmd.arg("seed")
        .arg(torrent)
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--no-trackers"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd);
    let stderr = guard.child().stderr.take().expect("seeder stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find(" on 127.0.0.1:") {
                let addr = line[i + 4..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the seeder printed its address");
    (guard, addr)
}
