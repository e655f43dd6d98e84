//! `shoal download`, `seed`, `verify` and `demo`: the commands that run the actor system.

use crate::CliResult;

/// Arguments of `shoal download`.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {}
/// Arguments of `shoal seed`.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {}
/// Arguments of `shoal verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {}
/// Arguments of `shoal demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs `shoal download`.
pub fn download(_args: DownloadArgs) -> CliResult {
    Err("not implemented yet".into())
}
/// Runs `shoal seed`.
pub fn seed(_args: SeedArgs) -> CliResult {
    Err("not implemented yet".into())
}
/// Runs `shoal verify`.
pub fn verify(_args: VerifyArgs) -> CliResult {
    Err("not implemented yet".into())
}
/// Runs `shoal demo`.
pub fn demo(_args: DemoArgs) -> CliResult {
    Err("not implemented yet".into())
}
