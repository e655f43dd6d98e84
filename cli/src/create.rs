//! `shoal create`.

use crate::CliResult;

/// Arguments of `shoal create`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `shoal create`.
pub fn run(_args: Args) -> CliResult {
    Err("not implemented yet".into())
}
