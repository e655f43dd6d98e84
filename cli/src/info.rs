//! `shoal info`.

use crate::CliResult;

/// Arguments of `shoal info`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `shoal info`.
pub fn run(_args: Args) -> CliResult {
    Err("not implemented yet".into())
}
