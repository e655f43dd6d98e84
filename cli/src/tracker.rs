//! `shoal tracker`: runs the embedded HTTP tracker until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use shoal_actors::tracker_server::{TrackerServer, TrackerServerOptions};

use crate::CliResult;

/// Arguments of `shoal tracker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the announce URL is printed).
    #[arg(long, default_value = "127.0.0.1:6969")]
    listen: SocketAddr,
    /// Re-announce interval given to clients, in seconds; peers silent for twice as long are
    /// forgotten.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    interval: u64,
}

/// Runs `shoal tracker`: serves until the process is interrupted or killed.
pub fn run(args: Args) -> CliResult {
    let options = TrackerServerOptions {
        interval: Duration::from_secs(args.interval),
        ..TrackerServerOptions::default()
    };
    let server = TrackerServer::bind_with(args.listen, options)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    // The first line of stdout is the announce URL, so scripts (and tests) can read it.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", server.announce_url())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    out.flush()
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(out);
    crate::display::say(&format!(
        "shoal: tracker listening on {}; Ctrl-C stops it",
        server.local_addr()
    ));
    // Serving happens on the server's thread; this one only keeps the process alive. Ctrl-C's
    // default action ends the process, which is all the cleanup a tracker in memory needs.
    loop {
        std::thread::park();
    }
}
