//! `shoal ctl`: a thin client of a running `shoal server`, over its HTTP JSON API.
//!
//! Tables for people, `--json` for scripts (the API's own objects). Exit codes: 0 done, 1 an
//! error (the server refused, or cannot be reached), 2 a bad argument.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::display::printable;
use crate::info::human_size;
use crate::{outln, CliResult};

/// How long a request may take (connecting included).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `shoal ctl`.
#[derive(Debug, clap::Args)]
#[command(after_help = "A torrent is named by its info hash, or any unique start of it.")]
pub struct Args {
    /// The server's address [default: $SHOAL_SERVER, or http://127.0.0.1:7878].
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// The server's token, if it needs one [default: $SHOAL_TOKEN].
    #[arg(long, value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `shoal ctl` does.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Add a .torrent file (or a magnet link).
    Add {
        /// The .torrent file, or a magnet link.
        torrent: String,
        /// Where the download lands [default: the server's folder].
        #[arg(long, value_name = "DIR")]
        dir: Option<String>,
        /// Add it paused.
        #[arg(long)]
        paused: bool,
    },
    /// List the torrents.
    List,
    /// Pause a torrent.
    Pause {
        /// Its info hash.
        hash: String,
    },
    /// Resume a torrent.
    Resume {
        /// Its info hash.
        hash: String,
    },
    /// Remove a torrent.
    Rm {
        /// Its info hash.
        hash: String,
        /// Delete its files too.
        #[arg(long)]
        delete_files: bool,
    },
    /// Show a torrent's files, or choose the wanted ones.
    Files {
        /// Its info hash.
        hash: String,
        /// The wanted files' indexes, comma-separated (the others are skipped).
        #[arg(long, value_name = "I,J,...", value_delimiter = ',')]
        want: Option<Vec<usize>>,
    },
    /// Show or set rate limits (bytes/s, 0 = none): a torrent's, or the session's without a
    /// hash.
    Limit {
        /// The torrent's info hash (none: the whole session).
        hash: Option<String>,
        /// Download limit in bytes/s.
        #[arg(long, value_name = "BYTES")]
        down: Option<u64>,
        /// Upload limit in bytes/s.
        #[arg(long, value_name = "BYTES")]
        up: Option<u64>,
    },
    /// Show the session: totals, rates, addresses, limits.
    Session,
}

/// A connection to the server.
struct Client {
    /// `http://host:port`, no trailing slash.
    base: String,
    /// The token, if any.
    token: Option<String>,
    /// The HTTP agent.
    agent: ureq::Agent,
}

impl Client {
    /// Sends a request and returns the JSON answer, or the server's error as the message.
    fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let sent = match body {
            Some((ctype, bytes)) => req.set("Content-Type", ctype).send_bytes(bytes),
            None => req.call(),
        };
        let resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                return Err(format!("the server answered {code}: {msg}"));
            }
            Err(e) => return Err(format!("cannot reach the server at {}: {e}", self.base)),
        };
        let text = resp
            .into_string()
            .map_err(|e| format!("reading the answer: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("the server sent malformed JSON: {e}"))
    }

    /// The full info hash of a torrent named by its hash or a unique start of it.
    fn resolve(&self, given: &str) -> Result<String, String> {
        let given = given.to_ascii_lowercase();
        if given.len() == 40 {
            return Ok(given);
        }
        if given.is_empty() || !given.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{given:?} is not an info hash"));
        }
        let list = self.call("GET", "/api/v1/torrents", None)?;
        let found: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["info_hash"].as_str())
            .filter(|h| h.starts_with(&given))
            .map(str::to_string)
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!("no torrent starts with {given}")),
            _ => Err(format!(
                "{given} names {} torrents: give more digits",
                found.len()
            )),
        }
    }
}

/// Runs `shoal ctl`.
pub fn run(args: Args) -> CliResult {
    let base = args
        .server
        .clone()
        .or_else(|| std::env::var("SHOAL_SERVER").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("http://{}", crate::server::DEFAULT_HTTP));
    let base = if base.contains("://") {
        base
    } else {
        format!("http://{base}")
    };
    let client = Client {
        base: base.trim_end_matches('/').to_string(),
        token: args
            .token
            .clone()
            .or_else(|| std::env::var("SHOAL_TOKEN").ok().filter(|s| !s.is_empty())),
        agent: ureq::AgentBuilder::new().timeout(TIMEOUT).build(),
    };
    let json_out = args.json;
    let print = |v: &Value| -> CliResult {
        outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
    };
    match args.command {
        CtlCommand::Add {
            torrent,
            dir,
            paused,
        } => {
            let v = if torrent.starts_with("magnet:") {
                let body = json!({ "magnet": torrent, "dir": dir, "paused": paused });
                client.call(
                    "POST",
                    "/api/v1/torrents",
                    Some(("application/json", body.to_string().as_bytes())),
                )?
            } else {
                let path = PathBuf::from(&torrent);
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let mut q = format!("?paused={paused}");
                if let Some(d) = &dir {
                    let d = std::path::absolute(d).unwrap_or_else(|_| PathBuf::from(d));
                    q.push_str("&dir=");
                    q.push_str(
                        &percent_encoding::utf8_percent_encode(
                            &d.to_string_lossy(),
                            percent_encoding::NON_ALPHANUMERIC,
                        )
                        .to_string(),
                    );
                }
                client.call(
                    "POST",
                    &format!("/api/v1/torrents{q}"),
                    Some(("application/x-bittorrent", &bytes)),
                )?
            };
            if json_out {
                return print(&v);
            }
            outln!(
                "added {} {}",
                v["info_hash"].as_str().unwrap_or(""),
                printable(v["name"].as_str().unwrap_or(""))
            )
        }
        CtlCommand::List => {
            let v = client.call("GET", "/api/v1/torrents", None)?;
            if json_out {
                return print(&v);
            }
            table(&v)
        }
        CtlCommand::Pause { hash } => {
            let h = client.resolve(&hash)?;
            let v = client.call(
                "POST",
                &format!("/api/v1/torrents/{h}/pause"),
                Some(("application/json", b"")),
            )?;
            if json_out {
                return print(&v);
            }
            outln!(
                "{} {}",
                v["state"].as_str().unwrap_or(""),
                printable(v["name"].as_str().unwrap_or(""))
            )
        }
        CtlCommand::Resume { hash } => {
            let h = client.resolve(&hash)?;
            let v = client.call(
                "POST",
                &format!("/api/v1/torrents/{h}/resume"),
                Some(("application/json", b"")),
            )?;
            if json_out {
                return print(&v);
            }
            outln!(
                "{} {}",
                v["state"].as_str().unwrap_or(""),
                printable(v["name"].as_str().unwrap_or(""))
            )
        }
        CtlCommand::Rm { hash, delete_files } => {
            let h = client.resolve(&hash)?;
            let v = client.call(
                "DELETE",
                &format!("/api/v1/torrents/{h}?delete_files={delete_files}"),
                None,
            )?;
            if json_out {
                return print(&v);
            }
            outln!(
                "removed {h}{}",
                if delete_files { " and its files" } else { "" }
            )
        }
        CtlCommand::Files { hash, want } => {
            let h = client.resolve(&hash)?;
            let v = match want {
                Some(list) => {
                    let body = json!({ "files": list }).to_string();
                    client.call(
                        "PATCH",
                        &format!("/api/v1/torrents/{h}"),
                        Some(("application/json", body.as_bytes())),
                    )?;
                    client.call("GET", &format!("/api/v1/torrents/{h}"), None)?
                }
                None => client.call("GET", &format!("/api/v1/torrents/{h}"), None)?,
            };
            if json_out {
                return print(&v["files"]);
            }
            outln!(
                "{:>5}  {:>6}  {:>10}  {:>6}  PATH",
                "INDEX",
                "WANTED",
                "SIZE",
                "DONE"
            )?;
            for f in v["files"].as_array().into_iter().flatten() {
                let size = f["size"].as_u64().unwrap_or(0);
                let got = f["downloaded"].as_u64().unwrap_or(0);
                let pct = if size == 0 {
                    100.0
                } else {
                    got as f64 * 100.0 / size as f64
                };
                outln!(
                    "{:>5}  {:>6}  {:>10}  {:>5.1}%  {}",
                    f["index"].as_u64().unwrap_or(0),
                    if f["wanted"].as_bool().unwrap_or(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    human_size(size),
                    pct,
                    printable(f["path"].as_str().unwrap_or(""))
                )?;
            }
            Ok(())
        }
        CtlCommand::Limit { hash, down, up } => {
            let path = match &hash {
                Some(h) => format!("/api/v1/torrents/{}", client.resolve(h)?),
                None => "/api/v1/session".to_string(),
            };
            let v = if down.is_some() || up.is_some() {
                let mut body = serde_json::Map::new();
                if let Some(d) = down {
                    body.insert("download_limit".into(), json!(d));
                }
                if let Some(u) = up {
                    body.insert("upload_limit".into(), json!(u));
                }
                let body = Value::Object(body).to_string();
                client.call("PATCH", &path, Some(("application/json", body.as_bytes())))?
            } else {
                client.call("GET", &path, None)?
            };
            if json_out {
                return print(&json!({
                    "download_limit": v["download_limit"],
                    "upload_limit": v["upload_limit"],
                }));
            }
            let show = |n: &Value| match n.as_u64() {
                Some(0) | None => "none".to_string(),
                Some(n) => format!("{}/s", human_size(n)),
            };
            outln!(
                "download limit {}, upload limit {}",
                show(&v["download_limit"]),
                show(&v["upload_limit"])
            )
        }
        CtlCommand::Session => {
            let v = client.call("GET", "/api/v1/session", None)?;
            if json_out {
                return print(&v);
            }
            outln!(
                "{} torrent(s), {} peer(s), down {}/s, up {}/s, listening on {}",
                v["torrents"],
                v["peers"],
                human_size(v["download_rate"].as_u64().unwrap_or(0)),
                human_size(v["upload_rate"].as_u64().unwrap_or(0)),
                v["listen"][0].as_str().unwrap_or("?")
            )
        }
    }
}

/// Prints the list as a table.
fn table(v: &Value) -> CliResult {
    outln!(
        "{:<10}  {:<11}  {:>6}  {:>10}  {:>11}  {:>11}  {:>5}  {:>8}  NAME",
        "HASH",
        "STATE",
        "DONE",
        "SIZE",
        "DOWN",
        "UP",
        "PEERS",
        "ETA"
    )?;
    for t in v.as_array().into_iter().flatten() {
        let eta = match t["eta"].as_u64() {
            None => "-".to_string(),
            Some(0) => "done".to_string(),
            Some(s) if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
            Some(s) => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        };
        outln!(
            "{:<10}  {:<11}  {:>5.1}%  {:>10}  {:>9}/s  {:>9}/s  {:>5}  {:>8}  {}",
            &t["info_hash"].as_str().unwrap_or("")
                [..10.min(t["info_hash"].as_str().unwrap_or("").len())],
            t["state"].as_str().unwrap_or(""),
            t["progress"].as_f64().unwrap_or(0.0) * 100.0,
            human_size(t["size"].as_u64().unwrap_or(0)),
            human_size(t["download_rate"].as_u64().unwrap_or(0)),
            human_size(t["upload_rate"].as_u64().unwrap_or(0)),
            t["peers"].as_u64().unwrap_or(0),
            eta,
            printable(t["name"].as_str().unwrap_or(""))
        )?;
    }
    Ok(())
}
