//! `left serve`: serve this share's store to peers over rdt (stub until the session layer lands).

use clap::Args;

use super::{Global, Output};

/// Arguments of `left serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {}

/// Runs `left serve`.
pub(crate) fn run(_global: &Global, _out: &Output, _args: ServeArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`left serve` is not built yet")
}
