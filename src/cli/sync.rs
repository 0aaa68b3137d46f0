//! `left sync PEER...`: pull what peers have and check it out (stub until the session layer lands).

use clap::Args;

use super::{Global, Output};

/// Arguments of `left sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {}

/// Runs `left sync`.
pub(crate) fn run(_global: &Global, _out: &Output, _args: SyncArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`left sync` is not built yet")
}
