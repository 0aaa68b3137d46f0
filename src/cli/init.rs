//! `left init` and `left id`.
//!
//! `left init --join KEY` makes a share that syncs with an existing one: the device key is new, the
//! share key is the one given (checked before anything is created). `--join -` reads the key from
//! stdin, so it never shows in the process list.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use left::ecp::ShareId;
use left::identity::{self, Identity};
use left_store::{Store, StoreConfig};
use serde_json::json;

use super::{absolute, fmt, store_dir, CliError, Global, Output, EXIT_OK};

/// Arguments of `left init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The share folder (created if missing; default: the current folder)
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Join an existing share: use its share key (as `left share-key` prints it there) instead of
    /// a new one; `-` reads the key from stdin
    #[arg(long, value_name = "KEY")]
    join: Option<String>,
    /// This device's folder type (`left folder-type` changes it later): send-receive publishes
    /// and takes changes, receive-only takes and never publishes, send-only publishes and never
    /// takes
    #[arg(long, value_enum, value_name = "TYPE", default_value = "send-receive")]
    folder_type: left::app::folder::FolderType,
}

/// Longest stdin read for `--join -` (a key is 52 characters; allow white space around it).
const MAX_KEY_INPUT: u64 = 4096;

/// The share key given to `--join`, parsed.
fn join_key(given: &str) -> anyhow::Result<[u8; 32]> {
    let text = if given == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .lock()
            .take(MAX_KEY_INPUT)
            .read_to_string(&mut buf)
            .context("cannot read the share key from stdin")?;
        buf
    } else {
        given.to_owned()
    };
    identity::parse_share_key(&text).map_err(|e| CliError::BadShareKey(e).into())
}

/// Creates the share's store (DIR/.left unless --store/LEFT_STORE says otherwise) and the device keys.
pub(crate) fn run(global: &Global, out: &Output, args: InitArgs) -> anyhow::Result<u8> {
    // A bad key must not leave a half-made share behind: check it first.
    let joined = args.join.as_deref().map(join_key).transpose()?;
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
    let created = Store::create(&store, cfg)
        .with_context(|| format!("cannot create a store at {}", store.display()))?;
    args.folder_type
        .set(&created)
        .context("cannot set the folder type")?;
    drop(created);
    let id = Identity::generate()?;
    id.save(&store).context("cannot save the device key")?;
    match &joined {
        Some(key) => identity::save_share_key(&store, key),
        None => identity::create_share_key(&store),
    }
    .context("cannot save the share key")?;
    let share_id = ShareId::from_key(&identity::load_share_key(&store)?);

    let device = id.device_id();
    out.json(&json!({
        "share": fmt::json_path(&share),
        "store": fmt::json_path(&store),
        "device": device.to_string(),
        "share_id": share_id.0.to_string(),
        "joined": joined.is_some(),
        "folder_type": args.folder_type.name(),
    }))?;
    out.human(format!(
        "initialised share {} (store {}), device {}{}",
        share.display(),
        store.display(),
        device,
        if joined.is_some() {
            ", joining the share of the given key"
        } else {
            ""
        }
    ))?;
    Ok(EXIT_OK)
}

/// Prints this device's id (with --json also the share id, a hash of the share key that is the
/// same on every device of the share).
pub(crate) fn id(global: &Global, out: &Output) -> anyhow::Result<u8> {
    let store = store_dir(global)?;
    let device = Identity::load(&store)
        .context("cannot read the device key")?
        .device_id();
    let share = identity::load_share_key(&store)
        .ok()
        .map(|k| ShareId::from_key(&k).0.to_string());
    out.json(&json!({ "device": device.to_string(), "share": share }))?;
    out.data(device.to_string())?;
    Ok(EXIT_OK)
}
