//! `shoal tracker`.

use crate::CliResult;

/// Arguments of `shoal tracker`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `shoal tracker`.
pub fn run(_args: Args) -> CliResult {
    Err("not implemented yet".into())
}
