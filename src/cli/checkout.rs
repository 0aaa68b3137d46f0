//! `left checkout`: finish a checkout that was cut short, or (`--abort`) drop it.

use anyhow::Context;
use clap::Args;
use left_store::CheckoutOptions;
use serde_json::json;

use super::{open_store_exclusive, share_root, Global, Output, EXIT_OK};

/// Arguments of `left checkout`.
#[derive(Debug, Args)]
#[command(
    after_help = "Without --abort, a checkout that was cut short (a crash, a full disk) is \
finished. With --abort it is dropped instead: the folder keeps what it has, the head stays at the \
snapshot the folder held before, and the next `left add` records what is on disk."
)]
pub struct CheckoutArgs {
    /// Drop the interrupted checkout instead of finishing it
    #[arg(long)]
    pub(crate) abort: bool,
}

pub(crate) fn run(global: &Global, out: &Output, args: CheckoutArgs) -> anyhow::Result<u8> {
    let (dir, store) = open_store_exclusive(global, "check out", "checkout")?;
    if args.abort {
        let dropped = store
            .abort_checkout()
            .context("cannot drop the interrupted checkout")?;
        out.json(&json!({
            "aborted": dropped.map(|(_, to)| to.to_string()),
            "head": store.head().ok().flatten().map(|h| h.to_string()),
        }))?;
        out.human(match dropped {
            Some((_, to)) => format!(
                "dropped the interrupted checkout to {}; the folder keeps what it has; run `left add` to record it",
                to.fmt_short()
            ),
            None => "no interrupted checkout".to_string(),
        })?;
        return Ok(EXIT_OK);
    }
    let share = share_root(&dir, &store)?;
    let progress = out.progress();
    let r = store
        .resume_checkout(&share, &CheckoutOptions::default(), &progress)
        .context("cannot finish the interrupted checkout")?;
    drop(progress);
    out.json(&json!({
        "finished": r.is_some(),
        "head": store.head().ok().flatten().map(|h| h.to_string()),
    }))?;
    out.human(if r.is_some() {
        "finished the interrupted checkout"
    } else {
        "no interrupted checkout"
    })?;
    Ok(EXIT_OK)
}
