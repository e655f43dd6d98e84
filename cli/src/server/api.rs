//! The routes of the HTTP JSON API (`/api/v1/...`), the page at `/`, and file streaming.
//!
//! Every answer is JSON (`{"error": "..."}` with a 4xx for bad input, which changes nothing),
//! except the page and the streamed files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncWriteExt, FutureExt};
use serde::Deserialize;
use serde_json::{json, Value};
use shoal_actors::shared::TorrentState;
use shoal_actors::torrent::Torrent;
use shoal_engine::InfoHash;
use smol::net::TcpStream;

use super::http::{timeout, Body, Handler, Request, Response, Streamer, WRITE_TIMEOUT};
use super::{wanted_flags, AddError, Entry, Server};

/// The web page, embedded at build time.
const PAGE: &str = include_str!("web/index.html");

/// The most bytes read from disk and written to the client at once when streaming.
const STREAM_CHUNK: u64 = 256 * 1024;

/// How far ahead of the read position a stream asks the picker for pieces first: a few
/// seconds of high-bitrate video, as players buffer.
const READAHEAD: u64 = 8 * 1024 * 1024;

/// How long a streaming answer waits for the next piece to arrive before it gives up (and
/// closes the connection; a player reconnects with a `Range`).
const STREAM_WAIT: Duration = Duration::from_secs(300);

impl Handler for Server {
    fn admit(&self, head: &Request) -> Option<Response> {
        refuse(self, head)
    }

    fn handle(
        self: Arc<Self>,
        req: Request,
    ) -> Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
        Box::pin(async move { route(&self, req).await })
    }
}

/// The answer to a request refused whatever it asks (checked on its head, before its body is
/// read): no token, a foreign `Host` on loopback, another site's `Origin`.
fn refuse(server: &Server, req: &Request) -> Option<Response> {
    if !authorized(server, req) {
        return Some(
            Response::error(
                401,
                "this server needs its token: `Authorization: Bearer TOKEN` or `?token=TOKEN`",
            )
            .with("WWW-Authenticate", "Bearer"),
        );
    }
    if !host_allowed(server, req) {
        return Some(Response::error(
            403,
            "the Host header must name this machine (127.0.0.1, localhost or [::1])",
        ));
    }
    if cross_site(req) {
        return Some(Response::error(
            403,
            "requests from other sites are refused",
        ));
    }
    None
}

/// Whether the request carries the server's token, when it has one.
fn authorized(server: &Server, req: &Request) -> bool {
    let Some(token) = &server.token else {
        return true;
    };
    let given = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string())
        .or_else(|| req.param("token"));
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Without a token (loopback only), the `Host` must be a loopback name: a page of another site
/// whose name was made to point at 127.0.0.1 (DNS rebinding) sends its own name, and is
/// refused. A request without `Host` (HTTP/1.0 tools) is let through.
fn host_allowed(server: &Server, req: &Request) -> bool {
    if server.token.is_some() {
        return true;
    }
    let Some(host) = req.header("host") else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses requests a web page of another site could make the user's browser send: an
/// `Origin` that is not this server. Scripts and `shoal ctl` send no `Origin`.
fn cross_site(req: &Request) -> bool {
    let (Some(origin), Some(host)) = (req.header("origin"), req.header("host")) else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    origin_host != host
}

async fn route(server: &Arc<Server>, req: Request) -> Response {
    log::debug!("http: {} {} {}", req.remote, req.method, req.path);
    if let Some(refused) = refuse(server, &req) {
        return refused;
    }
    let path = req.path.clone();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method.as_str();
    match parts.as_slice() {
        [""] | ["index.html"] => match m {
            "GET" | "HEAD" => Response::bytes(200, "text/html; charset=utf-8", PAGE.into()),
            _ => method_not_allowed("GET"),
        },
        ["api", "v1", "torrents"] => match m {
            "GET" | "HEAD" => list(server),
            "POST" => add(server, req).await,
            _ => method_not_allowed("GET, POST"),
        },
        ["api", "v1", "session"] => match m {
            "GET" | "HEAD" => session(server).await,
            "PATCH" => patch_session(server, &req).await,
            _ => method_not_allowed("GET, PATCH"),
        },
        ["api", "v1", "torrents", hash, rest @ ..] => {
            let (entry, torrent) = match find(server, hash) {
                Ok(f) => f,
                Err(r) => return r,
            };
            match (rest, m) {
                ([], "GET" | "HEAD") => {
                    Response::json(200, &detail(server, &entry, &torrent).await)
                }
                ([], "PATCH") => patch(server, &entry, &torrent, &req).await,
                ([], "DELETE") => remove(server, &torrent, &req).await,
                ([], _) => method_not_allowed("GET, PATCH, DELETE"),
                (["pause"], "POST") => match server.pause(&torrent).await {
                    Ok(()) => object(server, &torrent),
                    Err(e) => Response::error(409, e.to_string()),
                },
                (["resume"], "POST") => match server.resume(&torrent).await {
                    Ok(()) => object(server, &torrent),
                    Err(e) => Response::error(409, e.to_string()),
                },
                (["pause"] | ["resume"], _) => method_not_allowed("POST"),
                (["files", index], "GET" | "HEAD") => stream(&entry, &torrent, index, &req),
                (["files", _], _) => method_not_allowed("GET, HEAD"),
                _ => Response::error(404, format!("no such route: {}", req.path)),
            }
        }
        _ => Response::error(404, format!("no such route: {}", req.path)),
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(405, format!("method not allowed here: use {allow}")).with("Allow", allow)
}

/// The torrent named by a path segment, or the 400 / 404 to answer.
fn find(server: &Server, hash: &str) -> Result<(Entry, Torrent), Response> {
    let h = InfoHash::from_hex(hash).ok_or_else(|| {
        Response::error(
            400,
            format!("malformed info hash {hash:?}: expected 40 hexadecimal digits"),
        )
    })?;
    let entry = server.entry(&h);
    let torrent = server.session.torrent(&h);
    match (entry, torrent) {
        (Some(e), Some(t)) => Ok((e, t)),
        _ => Err(Response::error(404, format!("no torrent {h}"))),
    }
}

fn state_name(s: TorrentState) -> &'static str {
    s.as_str()
}

/// The object of the list.
fn summary(entry: &Entry, t: &Torrent) -> Value {
    let p = t.progress();
    let size = entry.meta.total_length();
    // `left` counts the wanted pieces only: progress is of what was asked for.
    let wanted_size: u64 = match &entry.record.wanted {
        None => size,
        Some(w) => entry
            .meta
            .info
            .files
            .iter()
            .zip(w)
            .filter(|(_, w)| **w)
            .map(|(f, _)| f.length)
            .sum(),
    };
    let have = wanted_size - p.left.min(wanted_size);
    let size_done = wanted_size;
    let progress = if p.complete {
        1.0
    } else if size_done == 0 {
        0.0
    } else {
        have as f64 / size_done as f64
    };
    let r = &entry.record;
    json!({
        "info_hash": entry.meta.info_hash.to_string(),
        "name": entry.meta.info.name,
        "state": state_name(p.state),
        "progress": progress,
        "size": size,
        "wanted_size": wanted_size,
        "downloaded": have,
        "uploaded": p.uploaded,
        "download_rate": p.download_rate,
        "upload_rate": p.upload_rate,
        "peers": p.peers,
        "eta": if p.state == TorrentState::Downloading { p.eta() } else if p.complete { Some(0) } else { None },
        "error": t.error(),
        // More than the issue asks for: what the page and `ctl` show besides.
        "received": p.downloaded,
        "wasted": p.wasted,
        "pieces_total": p.total_pieces,
        "pieces_verified": p.verified_pieces,
        "pieces_checked": p.checked_pieces,
        "resumed": t.resumed_from_record(),
        "folder": r.folder,
        "paused": r.paused,
        "sequential": r.sequential,
        "download_limit": r.download_limit,
        "upload_limit": r.upload_limit,
    })
}

fn object(server: &Server, t: &Torrent) -> Response {
    match server.entry(&t.info_hash()) {
        Some(e) => Response::json(200, &summary(&e, t)),
        None => Response::error(404, format!("no torrent {}", t.info_hash())),
    }
}

fn list(server: &Server) -> Response {
    let all: Vec<Value> = server.list().iter().map(|(e, t)| summary(e, t)).collect();
    Response::json(200, &Value::Array(all))
}

/// The byte offset of each file in the torrent.
fn file_starts(entry: &Entry) -> Vec<u64> {
    let mut at = 0;
    entry
        .meta
        .info
        .files
        .iter()
        .map(|f| {
            let s = at;
            at += f.length;
            s
        })
        .collect()
}

/// The one-torrent object: the summary plus files, trackers, peers and pieces.
async fn detail(server: &Server, entry: &Entry, t: &Torrent) -> Value {
    let mut v = summary(entry, t);
    let have = t.have();
    let piece_len = u64::from(entry.meta.info.piece_length.max(1));
    let total = entry.meta.total_length();
    let starts = file_starts(entry);
    let files: Vec<Value> = entry
        .meta
        .info
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (start, end) = (starts[i], starts[i] + f.length);
            let mut got = 0u64;
            if f.length > 0 {
                let (first, last) = (start / piece_len, (end - 1) / piece_len);
                for p in first..=last {
                    if have.get(p as u32) {
                        let (ps, pe) = (p * piece_len, ((p + 1) * piece_len).min(total));
                        got += pe.min(end) - ps.max(start);
                    }
                }
            }
            let wanted = entry
                .record
                .wanted
                .as_ref()
                .is_none_or(|w| w.get(i).copied().unwrap_or(true));
            json!({
                "index": i,
                "path": f.path.join("/"),
                "size": f.length,
                "downloaded": got,
                "wanted": wanted,
            })
        })
        .collect();
    // The tracker client's own view while it runs; the torrent's list otherwise.
    let live = t.trackers().await;
    let trackers: Vec<Value> = if live.is_empty() {
        let status = if !server.settings.use_trackers {
            "disabled"
        } else if t.state() == shoal_actors::shared::TorrentState::Paused {
            "paused"
        } else {
            "not contacted"
        };
        entry
            .meta
            .tiers()
            .into_iter()
            .flatten()
            .map(|url| json!({ "url": url, "status": status, "peers": Value::Null }))
            .collect()
    } else {
        live.iter()
            .map(|tr| {
                let status = match (&tr.last_error, tr.last_success) {
                    (Some(e), _) => format!("error: {e}"),
                    (None, Some(_)) => "working".to_string(),
                    (None, None) => "not contacted".to_string(),
                };
                let peers = match (tr.seeders, tr.leechers) {
                    (Some(s), Some(l)) => json!(s + l),
                    (Some(n), None) | (None, Some(n)) => json!(n),
                    (None, None) => Value::Null,
                };
                json!({ "url": tr.url, "status": status, "peers": peers })
            })
            .collect()
    };
    let num_pieces = f64::from(entry.meta.info.lengths.num_pieces().max(1));
    let peers: Vec<Value> = t
        .peers()
        .await
        .into_iter()
        .map(|p| {
            json!({
                // A web seed (transport "web") is named by its URL.
                "addr": p.url.clone().unwrap_or_else(|| p.addr.to_string()),
                "client": p.client,
                "transport": p.transport.as_str(),
                "encrypted": p.encrypted,
                "download_rate": p.download_rate,
                "upload_rate": p.upload_rate,
                "progress": if p.is_seed { 1.0 } else { f64::from(p.pieces) / num_pieces },
                "downloaded": p.downloaded,
                "uploaded": p.uploaded,
            })
        })
        .collect();
    v["files"] = Value::Array(files);
    v["trackers"] = Value::Array(trackers);
    // The list's `peers` is a count; here it is the peers themselves, as the API says.
    v["peer_count"] = v["peers"].take();
    v["peers"] = Value::Array(peers);
    v["pieces"] = Value::String(base64(have.as_bytes()));
    v
}

/// Standard base64 with padding (RFC 4648), for the piece bitfield.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// The JSON body of an add.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddJson {
    /// A magnet link.
    magnet: Option<String>,
    /// The download folder.
    dir: Option<String>,
    /// Start paused.
    #[serde(default)]
    paused: bool,
    /// The wanted files.
    files: Option<Vec<usize>>,
    /// Fetch in order.
    #[serde(default)]
    sequential: bool,
}

/// Parses a query flag: absent is `default`, else `true`/`false` (or 1/0).
fn flag(req: &Request, name: &str, default: bool) -> Result<bool, Response> {
    match req.param(name).as_deref() {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(v) => Err(Response::error(
            400,
            format!("{name}={v:?}: expected true or false"),
        )),
    }
}

async fn add(server: &Arc<Server>, req: Request) -> Response {
    let req = &req;
    let ctype = req
        .header("content-type")
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let added = match ctype.as_str() {
        "application/x-bittorrent" => {
            let paused = match flag(req, "paused", false) {
                Ok(p) => p,
                Err(r) => return r,
            };
            let folder = match server.folder(req.param("dir").as_deref()) {
                Ok(f) => f,
                Err(e) => return Response::error(400, e),
            };
            if req.body.is_empty() {
                return Response::error(400, "the body is empty: send the .torrent file's bytes");
            }
            // Beyond the issue's `dir` and `paused`: `files=0,2` (the wanted files) and
            // `sequential`, as the JSON add has them.
            let files: Option<Vec<usize>> = match req.param("files") {
                None => None,
                Some(list) => match list
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(v) => Some(v),
                    Err(_) => {
                        return Response::error(
                            400,
                            format!("files={list:?}: expected file indexes like 0,2"),
                        )
                    }
                },
            };
            let sequential = match flag(req, "sequential", false) {
                Ok(s) => s,
                Err(r) => return r,
            };
            // Parsing (SHA-1 of the info dictionary) and saving (fsync) off the executor.
            let (server, body) = (server.clone(), req.body.clone());
            smol::unblock(move || {
                server.add(&body, folder, paused, files.as_deref(), sequential)
            })
            .await
        }
        "application/json" => {
            let body: AddJson = match serde_json::from_slice(&req.body) {
                Ok(b) => b,
                Err(e) => return Response::error(400, format!("malformed JSON: {e}")),
            };
            let Some(magnet) = body.magnet else {
                return Response::error(
                    400,
                    "a JSON add needs \"magnet\"; send a .torrent as application/x-bittorrent",
                );
            };
            let magnet = match shoal_engine::magnet::Magnet::parse(&magnet) {
                Ok(m) => m,
                Err(e) => return Response::error(400, format!("bad magnet link: {e}")),
            };
            let folder = match server.folder(body.dir.as_deref()) {
                Ok(f) => f,
                Err(e) => return Response::error(400, e),
            };
            if body.files.is_some() {
                return Response::error(
                    400,
                    "files: the files of a magnet are not known before its metadata; choose them with PATCH once it is listed",
                );
            }
            let h = magnet.info_hash;
            return match server.add_magnet(magnet, folder, body.paused, body.sequential) {
                // Listed once the metadata is here: until then it is fetched from peers.
                Ok(_) => Response::json(
                    202,
                    &json!({ "info_hash": h.to_string(), "state": "metadata" }),
                ),
                Err(AddError::Present(h)) => Response::json(
                    409,
                    &json!({ "error": "the torrent is already added", "info_hash": h.to_string() }),
                ),
                Err(AddError::Bad(e)) => Response::error(400, e),
            };
        }
        "" => {
            return Response::error(
                415,
                "say what the body is: Content-Type application/x-bittorrent or application/json",
            )
        }
        other => {
            return Response::error(
                415,
                format!("unsupported Content-Type {other}: use application/x-bittorrent or application/json"),
            )
        }
    };
    match added {
        Ok(t) => match server.entry(&t.info_hash()) {
            Some(e) => Response::json(201, &summary(&e, &t)),
            None => Response::error(500, "the torrent vanished while being added"),
        },
        Err(AddError::Present(h)) => Response::json(
            409,
            &json!({ "error": "the torrent is already added", "info_hash": h.to_string() }),
        ),
        Err(AddError::Bad(e)) => Response::error(400, e),
    }
}

/// The JSON body of a torrent's PATCH.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchJson {
    files: Option<Vec<usize>>,
    sequential: Option<bool>,
    download_limit: Option<u64>,
    upload_limit: Option<u64>,
}

fn parse_json<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, format!("malformed JSON: {e}")))
}

async fn patch(server: &Server, entry: &Entry, t: &Torrent, req: &Request) -> Response {
    let body: PatchJson = match parse_json(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Everything is checked before anything changes.
    let wanted = match &body.files {
        Some(list) => match wanted_flags(list, entry.meta.info.files.len()) {
            Ok(w) => Some(w),
            Err(e) => return Response::error(400, e),
        },
        None => None,
    };
    if let Some(w) = wanted {
        if let Err(e) = server.set_wanted(t, w).await {
            return Response::error(409, e.to_string());
        }
    }
    if let Some(s) = body.sequential {
        if let Err(e) = server.set_sequential(t, s).await {
            return Response::error(409, e.to_string());
        }
    }
    if body.download_limit.is_some() || body.upload_limit.is_some() {
        server.set_limits(t, body.download_limit, body.upload_limit);
    }
    object(server, t)
}

async fn remove(server: &Server, t: &Torrent, req: &Request) -> Response {
    let delete_files = match flag(req, "delete_files", false) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let h = t.info_hash();
    match server.remove(&h, delete_files).await {
        Ok(()) => Response::json(
            200,
            &json!({ "info_hash": h.to_string(), "removed": true, "deleted_files": delete_files }),
        ),
        Err(e) => Response::error(409, e.to_string()),
    }
}

async fn session(server: &Server) -> Response {
    let (mut down, mut up, mut downloaded, mut uploaded, mut peers) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let list = server.list();
    for (_, t) in &list {
        let p = t.progress();
        down += p.download_rate;
        up += p.upload_rate;
        downloaded += p.downloaded;
        uploaded += p.uploaded;
        peers += u64::from(p.peers);
    }
    let limits = *server.limits.lock().unwrap_or_else(|e| e.into_inner());
    let http = *server.http_addr.lock().unwrap_or_else(|e| e.into_inner());
    Response::json(
        200,
        &json!({
            "torrents": list.len(),
            "download_rate": down,
            "upload_rate": up,
            "downloaded": downloaded,
            "uploaded": uploaded,
            "peers": peers,
            "dht_nodes": server.session.dht_stats().await.map(|s| s.nodes),
            "listen": [server.session.local_addr().to_string()],
            "http": http.map(|a| a.to_string()),
            "download_limit": limits.download_limit,
            "upload_limit": limits.upload_limit,
            "download_dir": server.default_dir,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

/// The JSON body of the session's PATCH.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionPatch {
    download_limit: Option<u64>,
    upload_limit: Option<u64>,
}

async fn patch_session(server: &Server, req: &Request) -> Response {
    let body: SessionPatch = match parse_json(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    server.set_session_limits(body.download_limit, body.upload_limit);
    session(server).await
}

/// A `Range: bytes=...` header against a file of `size` bytes: `Ok(None)` for the whole
/// file, `Ok(Some((start, len)))` for one range, `Err(())` when it cannot be satisfied.
/// Several ranges are answered with the whole file, as RFC 9110 allows.
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = header else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = a.parse().map_err(|_| ())?;
        let e: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        (s, e)
    };
    if start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end - start + 1)))
}

/// The MIME type a player needs, from the file's extension.
fn mime(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "flac" => "audio/flac",
        "txt" | "nfo" => "text/plain; charset=utf-8",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

fn stream(entry: &Entry, t: &Torrent, index: &str, req: &Request) -> Response {
    let files = &entry.meta.info.files;
    let Ok(i) = index.parse::<usize>() else {
        return Response::error(400, format!("file index {index:?}: expected a number"));
    };
    let Some(f) = files.get(i) else {
        return Response::error(
            404,
            format!(
                "file index {i} is out of range: the torrent has {} file(s)",
                files.len()
            ),
        );
    };
    // The path comes from the session's own layout (validated metainfo paths under the
    // torrent's folder), never from the request.
    let Some(path) = t.files().get(i).cloned() else {
        return Response::error(404, format!("file {i} has no path on disk"));
    };
    let size = f.length;
    let name = f.path.last().cloned().unwrap_or_default();
    let (status, start, len) = match parse_range(req.header("range"), size) {
        Ok(None) => (200, 0, size),
        Ok(Some((s, l))) => (206, s, l),
        Err(()) => {
            return Response::error(416, format!("the range is outside the file's {size} bytes"))
                .with("Content-Range", format!("bytes */{size}"))
        }
    };
    let mut resp = Response {
        status,
        content_type: mime(&name),
        headers: vec![
            ("Accept-Ranges", "bytes".to_string()),
            (
                "Content-Disposition",
                format!(
                    "inline; filename=\"{}\"",
                    name.replace(['"', '\\', '\r', '\n'], "_")
                ),
            ),
        ],
        length: len,
        body: Body::Stream(Box::new(FileStream {
            torrent: t.clone(),
            path,
            file_start: file_starts(entry)[i],
            piece_len: u64::from(entry.meta.info.piece_length.max(1)),
            start,
            len,
        })),
    };
    if status == 206 {
        resp = resp.with(
            "Content-Range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    resp
}

/// A file being streamed: each chunk is sent once the piece holding it is verified.
struct FileStream {
    /// Its torrent.
    torrent: Torrent,
    /// The file on disk.
    path: PathBuf,
    /// Where the file starts in the torrent.
    file_start: u64,
    /// The torrent's piece length.
    piece_len: u64,
    /// The first byte to send, in the file.
    start: u64,
    /// How many bytes to send.
    len: u64,
}

impl Streamer for FileStream {
    fn write_to<'a>(
        self: Box<Self>,
        out: &'a mut TcpStream,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let torrent = self.torrent.clone();
            let mut asked = false;
            let sent = self.send(out, &mut asked).await;
            if asked {
                // Our deadline is over (another reader's later one would have replaced it).
                let _ = torrent.set_deadline(None).await;
            }
            sent
        })
    }
}

impl FileStream {
    /// The last piece of the read-ahead from `piece`: [`READAHEAD`] bytes, at least two
    /// pieces, never past the range asked for.
    fn readahead_end(&self, piece: u64) -> u32 {
        let last_of_range = (self.file_start + self.start + self.len - 1) / self.piece_len;
        let n = (READAHEAD / self.piece_len).max(2);
        (piece + n - 1).min(last_of_range) as u32
    }

    /// Sends the range; `asked` is set once a deadline was given to the picker.
    async fn send(&self, out: &mut TcpStream, asked: &mut bool) -> std::io::Result<()> {
        {
            let mut file: Option<Arc<File>> = None;
            let (mut pos, end) = (self.start, self.start + self.len);
            while pos < end {
                let abs = self.file_start + pos;
                let piece = abs / self.piece_len;
                let piece_end = (piece + 1) * self.piece_len;
                let n = (end - pos).min(piece_end - abs).min(STREAM_CHUNK);
                // A piece not here yet: the picker fetches it and the read-ahead first.
                if !self.torrent.have_piece(piece as u32) {
                    let end = self.readahead_end(piece);
                    if self
                        .torrent
                        .set_deadline(Some(piece as u32..=end))
                        .await
                        .is_ok()
                    {
                        *asked = true;
                    }
                }
                let got = self
                    .torrent
                    .wait_piece(piece as u32)
                    .or(async {
                        smol::Timer::after(STREAM_WAIT).await;
                        false
                    })
                    .await;
                if !got {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the piece did not arrive",
                    ));
                }
                let f = match &file {
                    Some(f) => f.clone(),
                    None => {
                        let p = self.path.clone();
                        let f = Arc::new(smol::unblock(move || File::open(p)).await?);
                        file = Some(f.clone());
                        f
                    }
                };
                let buf = smol::unblock(move || {
                    let mut buf = vec![0u8; n as usize];
                    f.read_exact_at(&mut buf, pos).map(|()| buf)
                })
                .await?;
                timeout(WRITE_TIMEOUT, out.write_all(&buf)).await?;
                pos += n;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-"), 10), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("bytes=2-4"), 10), Ok(Some((2, 3))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 3))));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Ok(Some((5, 5))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=x-2"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(None));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
