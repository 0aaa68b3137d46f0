//! `left verify` and `left gc`: checking and shrinking the store.

use std::os::unix::ffi::OsStrExt;

use anyhow::Context;
use clap::Args;
use left::control;
use left_store::{GcOptions, GcReport, ObjectKind, ProblemKind};
use serde_json::json;

use super::{
    answer_error, call_served, fmt, open_or_served, open_store_read, CliError, Global, Opened,
    Output, EXIT_OK,
};

/// Arguments of `left gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep the files of only the last N snapshots of the head's history (the history itself stays)
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
}

/// Runs `left verify`: exit 0 when clean, else every problem on stdout and exit 1.
pub(crate) fn verify(global: &Global, out: &Output) -> anyhow::Result<u8> {
    let (_, store) = open_store_read(global)?;
    let progress = out.progress();
    let report = store.verify(&progress).context("cannot verify the store")?;
    drop(progress);
    let object = |k: ObjectKind| match k {
        ObjectKind::Chunk => "chunk",
        ObjectKind::Node => "node",
    };
    let kind = |k: ProblemKind| match k {
        ProblemKind::Missing => "missing",
        ProblemKind::Corrupt => "corrupt",
    };
    out.json(&json!({
        "ok": report.problems.is_empty(),
        "chunks_checked": report.chunks_checked,
        "nodes_checked": report.nodes_checked,
        "bytes_checked": report.bytes_checked,
        "problems": report.problems.iter().map(|p| json!({
            "object": object(p.object),
            "id": p.id.to_string(),
            "kind": kind(p.kind),
            "paths": p.paths.iter().map(|x| fmt::json_path(x)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    }))?;
    for p in &report.problems {
        let mut line = format!("{} {} {}", kind(p.kind), object(p.object), p.id).into_bytes();
        if !p.paths.is_empty() {
            line.extend_from_slice(b", used by:");
            for path in &p.paths {
                line.push(b' ');
                line.extend_from_slice(path.as_os_str().as_bytes());
            }
        }
        out.data(line)?;
    }
    if !report.problems.is_empty() {
        return Err(CliError::VerifyFailed {
            count: report.problems.len(),
        }
        .into());
    }
    out.human(format!(
        "verify: ok, {} chunks ({}) and {} nodes checked",
        report.chunks_checked,
        fmt::bytes(report.bytes_checked),
        report.nodes_checked
    ))?;
    Ok(EXIT_OK)
}

/// Runs `left gc`.
/// Beside a running `left serve`, the serving process collects the garbage.
pub(crate) fn gc(global: &Global, out: &Output, args: GcArgs) -> anyhow::Result<u8> {
    let report = match open_or_served(global)? {
        Opened::Local(_, store) => {
            let progress = out.progress();
            let report = store
                .gc(
                    &GcOptions {
                        keep_last: args.keep_last,
                    },
                    &progress,
                )
                .context("cannot collect garbage")?;
            drop(progress);
            report
        }
        Opened::Served(dir, _) => {
            let req = control::Request::Gc {
                keep_last: args.keep_last,
            };
            match call_served(&dir, &req)? {
                control::Response::Gc(reply) => reply.into(),
                other => return Err(answer_error(other, "Gc")),
            }
        }
    };
    print_gc(out, &report)?;
    Ok(EXIT_OK)
}

fn print_gc(out: &Output, report: &GcReport) -> anyhow::Result<()> {
    out.json(&json!({
        "chunks_removed": report.chunks_removed,
        "nodes_removed": report.nodes_removed,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
    }))?;
    out.human(format!(
        "gc: removed {} chunks and {} nodes; store {} -> {}",
        report.chunks_removed,
        report.nodes_removed,
        fmt::bytes(report.bytes_before),
        fmt::bytes(report.bytes_after)
    ))?;
    Ok(())
}
