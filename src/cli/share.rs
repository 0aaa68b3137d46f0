//! `left share-key` and `left peers`: the share key and the devices seen (stub).

use clap::Args;

use super::{Global, Output};

/// Arguments of `left peers`.
#[derive(Debug, Args)]
pub struct PeersArgs {}

/// Runs `left share-key`.
pub(crate) fn share_key(_global: &Global, _out: &Output) -> anyhow::Result<u8> {
    anyhow::bail!("`left share-key` is not built yet")
}

/// Runs `left peers`.
pub(crate) fn peers(_global: &Global, _out: &Output, _args: PeersArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`left peers` is not built yet")
}
