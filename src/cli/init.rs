//! `left init` and `left id`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use left::identity::{self, Identity};
use left_store::{Store, StoreConfig};
use serde_json::json;

use super::{absolute, fmt, store_dir, Global, Output, EXIT_OK};

/// Arguments of `left init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The share folder (created if missing; default: the current folder)
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Creates the share's store (DIR/.left unless --store/LEFT_STORE says otherwise) and the device keys.
pub(crate) fn run(global: &Global, out: &Output, args: InitArgs) -> anyhow::Result<u8> {
    let dir = absolute(&args.dir.unwrap_or_else(|| PathBuf::from(".")))?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the share folder {}", dir.display()))?;
    let share = std::fs::canonicalize(&dir)
        .with_context(|| format!("cannot open the share folder {}", dir.display()))?;
    if !share.is_dir() {
        anyhow::bail!("{} is not a folder", share.display());
    }
    let explicit =
        global.store.is_some() || std::env::var_os("LEFT_STORE").is_some_and(|v| !v.is_empty());
    let store = if explicit {
        store_dir(global)?
    } else {
        share.join(".left")
    };

    let cfg = StoreConfig {
        share_root: Some(share.clone()),
        ..StoreConfig::default()
    };
    drop(
        Store::create(&store, cfg)
            .with_context(|| format!("cannot create a store at {}", store.display()))?,
    );
    let id = Identity::generate()?;
    id.save(&store).context("cannot save the device key")?;
    identity::create_share_key(&store).context("cannot save the share key")?;

    let device = id.device_id();
    out.json(&json!({
        "share": fmt::json_path(&share),
        "store": fmt::json_path(&store),
        "device": device.to_string(),
    }))?;
    out.human(format!(
        "initialised share {} (store {}), device {}",
        share.display(),
        store.display(),
        device
    ))?;
    Ok(EXIT_OK)
}

/// Prints this device's id.
pub(crate) fn id(global: &Global, out: &Output) -> anyhow::Result<u8> {
    let store = store_dir(global)?;
    let device = Identity::load(&store)
        .context("cannot read the device key")?
        .device_id();
    out.json(&json!({ "device": device.to_string() }))?;
    out.data(device.to_string())?;
    Ok(EXIT_OK)
}
