//! The HTTP/1.1 side of `shoal server`: an `httparse` loop on smol, as the embedded tracker
//! has, extended with keep-alive, request bodies and streamed answers.
//!
//! Why our own loop and not hyper through smol-hyper: the API is a dozen routes with small
//! JSON bodies and one streamed body; `httparse` is already built for the tracker, and the
//! whole server stays a page of code whose limits (head size, body size, time per request,
//! idle keep-alive, connections) are named constants here rather than builder options spread
//! over three crates. What we give up (chunked request bodies, HTTP/2) no API client needs:
//! every request body here has a `Content-Length`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use smol::net::{TcpListener, TcpStream};
use smol::Timer;

/// The largest request head (request line and headers); a longer one gets 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request (a browser sends about 15).
const MAX_HEADERS: usize = 64;
/// The largest request body: a `.torrent` of a huge torrent is a few MiB (20 bytes per
/// piece); anything bigger is not one of ours, and gets 413 without being read.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// A body over this size is "large": only [`MAX_LARGE_BODIES`] are read at once, so that many
/// connections together hold at most `MAX_CONNECTIONS * LARGE_BODY + MAX_LARGE_BODIES *
/// MAX_BODY` bytes of bodies (16 MiB + 64 MiB), not `MAX_CONNECTIONS * MAX_BODY` (4 GiB).
const LARGE_BODY: usize = 64 * 1024;
/// Large bodies read at once; more get 503 (a client retries).
const MAX_LARGE_BODIES: usize = 4;
/// Large bodies being read now, by every connection.
static LARGE_BODIES: AtomicUsize = AtomicUsize::new(0);

/// A slot for a large body, given back when dropped.
struct LargeBody;

impl LargeBody {
    fn take() -> Option<LargeBody> {
        LARGE_BODIES
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < MAX_LARGE_BODIES).then_some(n + 1)
            })
            .ok()
            .map(|_| LargeBody)
    }
}

impl Drop for LargeBody {
    fn drop(&mut self) {
        LARGE_BODIES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a client may take to send a whole request once it started one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle keep-alive connection stays open between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one write of an answer may wait for the client to read (a paused video player
/// holds a streaming connection open without reading; it is closed after this).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests served on one connection before it is closed (a client reconnects).
const MAX_REQUESTS_PER_CONNECTION: usize = 10_000;
/// Connections served at once; more are closed as soon as they are accepted (each holds a
/// buffer of at most `MAX_HEAD + MAX_BODY` bytes while it reads).
const MAX_CONNECTIONS: usize = 256;
/// How long accepting pauses after it fails (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, percent-encoded as sent, without the query.
    pub path: String,
    /// The query string (after `?`), as sent.
    pub query: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
    /// The client's address.
    pub remote: SocketAddr,
}

impl Request {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded query parameters.
    pub fn params(&self) -> Vec<(String, String)> {
        parse_query(&self.query)
    }

    /// The decoded value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// Splits and percent-decodes `a=b&c=d` (`+` is a space, as forms send it).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decodes one component (invalid UTF-8 is replaced, so it never fails).
pub fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// What an answer carries.
pub enum Body {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// Bytes produced by a writer that sends them itself (a file being streamed). The
    /// `Content-Length` given in the response is what it must write.
    Stream(Box<dyn Streamer>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Bytes({})", b.len()),
            Body::Stream(_) => write!(f, "Stream"),
        }
    }
}

/// A body written piece by piece (see [`Body::Stream`]).
pub trait Streamer: Send {
    /// Writes the whole body to `out`; an error closes the connection.
    fn write_to<'a>(
        self: Box<Self>,
        out: &'a mut TcpStream,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + 'a>>;
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// More headers.
    pub headers: Vec<(&'static str, String)>,
    /// The length of the body (for a stream, what it will write).
    pub length: u64,
    /// The body.
    pub body: Body,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        Self::bytes(status, "application/json", bytes)
    }

    /// `{"error": "..."}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// Bytes of the given type.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            length: body.len() as u64,
            body: Body::Bytes(body),
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The reason phrase of the status codes we send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// What answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Looks at a request's head before its body is read: `Some` refuses it (a missing token,
    /// say) without reading the body, and closes the connection.
    fn admit(&self, _head: &Request) -> Option<Response> {
        None
    }

    /// Answers one request.
    fn handle(
        self: Arc<Self>,
        req: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;
}

/// Accepts connections on `listener` and serves each on the executor of `spawner` until the
/// returned task is dropped.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    spawner: shoal_actors::runtime::Spawner,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut failing = false;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => {
                failing = false;
                c
            }
            Err(e) => {
                if !failing {
                    log::warn!("http: cannot accept connections: {e}; retrying");
                }
                failing = true;
                Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            log::debug!("http: {MAX_CONNECTIONS} connections already, closing {remote}");
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (handler, open) = (handler.clone(), open.clone());
        spawner
            .spawn(async move {
                if let Err(e) = connection(stream, remote, handler).await {
                    log::debug!("http: {remote}: {e}");
                }
                open.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
    }
}

/// What reading a request gave.
enum Read {
    /// A whole request.
    Request(Request, bool),
    /// The client closed the connection between requests.
    Closed,
    /// A request we refuse before reading all of it; the connection closes after.
    Refuse(Response),
}

/// Serves one connection: requests one after the other (keep-alive), until the client closes,
/// asks to close, goes idle, or breaks a limit.
async fn connection<H: Handler>(
    mut stream: TcpStream,
    remote: SocketAddr,
    handler: Arc<H>,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let read = read_request(&mut stream, &mut buf, remote, &*handler).await?;
        let (req, keep_alive) = match read {
            Read::Request(r, k) => (r, k),
            Read::Closed => return Ok(()),
            Read::Refuse(resp) => {
                write_response(&mut stream, resp, false, false).await?;
                return linger(&mut stream).await;
            }
        };
        let head_only = req.method == "HEAD";
        let resp = handler.clone().handle(req).await;
        write_response(&mut stream, resp, keep_alive, head_only).await?;
        if !keep_alive {
            return linger(&mut stream).await;
        }
    }
    Ok(())
}

/// Reads the next request into `buf` (which keeps bytes a pipelining client sent ahead).
async fn read_request<H: Handler>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    remote: SocketAddr,
    handler: &H,
) -> io::Result<Read> {
    // Idle until the first byte, then the whole request within REQUEST_TIMEOUT.
    if buf.is_empty() {
        let mut first = [0u8; 2048];
        let n = timeout(IDLE_TIMEOUT, stream.read(&mut first)).await?;
        if n == 0 {
            return Ok(Read::Closed);
        }
        buf.extend_from_slice(&first[..n]);
    }
    timeout(REQUEST_TIMEOUT, read_rest(stream, buf, remote, handler)).await
}

async fn read_rest<H: Handler>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    remote: SocketAddr,
    handler: &H,
) -> io::Result<Read> {
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("GET").to_string();
                let target = req.path.unwrap_or("/").to_string();
                let version = req.version.unwrap_or(1);
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let get = |n: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.trim().to_ascii_lowercase())
                };
                if get("transfer-encoding").is_some() {
                    return Ok(Read::Refuse(Response::error(
                        411,
                        "send the body with a Content-Length, not chunked",
                    )));
                }
                let length = match get("content-length") {
                    None => 0,
                    Some(v) => match v.parse::<u64>() {
                        Ok(n) => n,
                        Err(_) => {
                            return Ok(Read::Refuse(Response::error(
                                400,
                                "malformed Content-Length",
                            )))
                        }
                    },
                };
                if length > MAX_BODY as u64 {
                    return Ok(Read::Refuse(Response::error(
                        413,
                        format!("the body is over the limit of {MAX_BODY} bytes"),
                    )));
                }
                let length = length as usize;
                let connection = get("connection").unwrap_or_default();
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), q.to_string()),
                    None => (target, String::new()),
                };
                let mut request = Request {
                    method,
                    path,
                    query,
                    headers,
                    body: Vec::new(),
                    remote,
                };
                if let Some(refused) = handler.admit(&request) {
                    return Ok(Read::Refuse(refused));
                }
                let _slot = if length > LARGE_BODY {
                    match LargeBody::take() {
                        Some(slot) => Some(slot),
                        None => {
                            return Ok(Read::Refuse(Response::error(
                                503,
                                "too many large requests at once: try again",
                            )))
                        }
                    }
                } else {
                    None
                };
                while buf.len() < head_len + length {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                request.body = buf[head_len..head_len + length].to_vec();
                buf.drain(..head_len + length);
                let keep_alive = if version == 0 {
                    connection.contains("keep-alive")
                } else {
                    !connection.contains("close")
                };
                return Ok(Read::Request(request, keep_alive));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Ok(Read::Refuse(Response::error(431, "request head too large")));
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(Read::Refuse(Response::error(431, "too many headers")));
            }
            Err(e) => {
                return Ok(Read::Refuse(Response::error(
                    400,
                    format!("malformed request: {e}"),
                )));
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes the head and the body of `resp`.
async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.length
    );
    for (n, v) in &resp.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    match resp.body {
        Body::Bytes(b) => {
            let mut out = head.into_bytes();
            if !head_only {
                out.extend_from_slice(&b);
            }
            timeout(WRITE_TIMEOUT, stream.write_all(&out)).await?;
        }
        Body::Stream(s) => {
            timeout(WRITE_TIMEOUT, stream.write_all(head.as_bytes())).await?;
            if !head_only {
                s.write_to(stream).await?;
            }
        }
    }
    timeout(WRITE_TIMEOUT, stream.flush()).await
}

/// Closes our side, then reads (and drops) what the client still sends for at most a second:
/// closing with unread input would reset the connection and could destroy the answer in
/// flight.
async fn linger(stream: &mut TcpStream) -> io::Result<()> {
    stream.close().await?;
    let mut sink = [0u8; 4096];
    let drain = async {
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    drain
        .or(async {
            Timer::after(Duration::from_secs(1)).await;
            Ok(())
        })
        .await
}

/// Runs `fut`, or fails with `TimedOut` after `limit`.
pub async fn timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    fut.or(async {
        Timer::after(limit).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}
