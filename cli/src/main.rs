//! The `shoal` command: a thin front end over the shoal library.
#![forbid(unsafe_code)]

mod create;
mod ctl;
mod display;
mod info;
mod server;
mod swarm;
mod tracker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shoal: create, inspect, download and seed BitTorrent torrents.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, long_about = None)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a .torrent file from a file or a directory.
    Create(create::Args),
    /// Show what a .torrent file holds.
    Info(info::Args),
    /// Download a torrent (a .torrent file or a magnet link) into a folder.
    Download(swarm::DownloadArgs),
    /// Print the magnet link of a .torrent file.
    Magnet(swarm::MagnetArgs),
    /// Seed a torrent from the file or folder it was made from.
    Seed(swarm::SeedArgs),
    /// Check data on disk against a torrent and report the pieces that fail.
    Verify(swarm::VerifyArgs),
    /// Run a small HTTP tracker.
    Tracker(tracker::Args),
    /// Run many torrents in one long-lived session, steered over HTTP (API and web page).
    Server(server::ServerArgs),
    /// Talk to a running `shoal server`: add, list, pause, resume, remove, files, limits.
    Ctl(ctl::Args),
    /// Run a complete local swarm on loopback: tracker, one seeder, several downloaders.
    Demo(swarm::DemoArgs),
}

/// How a command ends: see [`display::Failure`] for the exit codes.
pub type CliResult = Result<(), display::Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    display::init_logging();
    let result = match cli.command {
        Command::Create(args) => create::run(args),
        Command::Info(args) => info::run(args),
        Command::Download(args) => swarm::download(args),
        Command::Magnet(args) => swarm::magnet(args),
        Command::Seed(args) => swarm::seed(args),
        Command::Verify(args) => swarm::verify(args),
        Command::Tracker(args) => tracker::run(args),
        Command::Demo(args) => swarm::demo(args),
        Command::Server(args) => server::run(args),
        Command::Ctl(args) => ctl::run(args),
    };
    match result {
        Ok(()) | Err(display::Failure::ClosedPipe) => ExitCode::SUCCESS,
        Err(display::Failure::Signal(n)) => ExitCode::from((128 + n).clamp(0, 255) as u8),
        Err(display::Failure::Error(msg)) => {
            display::say(&format!("shoal: error: {msg}"));
            ExitCode::FAILURE
        }
    }
}
