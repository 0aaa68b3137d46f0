//! The `left` command line: argument parsing, store discovery, output and exit codes.
//!
//! Each subcommand lives in its own file and does three things: turn its arguments into store options,
//! call one [`left_store::Store`] operation, and print the result either as a one-line human summary
//! or (with `--json`) as exactly one JSON object on stdout. Progress bars go to stderr, only on a
//! terminal, and only once an operation has run for about a second ([`progress`]).
//!
//! This module is part of the binary, not the library: it is the one place (with `main.rs`) that uses
//! `anyhow`. Errors that need a hint for the user are [`CliError`] values or store errors, which
//! [`hint`] recognises anywhere in an error chain.
//!
//! While `left serve` runs it holds the store's lock. Then `add` and `gc` send their work to it
//! through the control socket ([`left::control`], see [`open_or_served`]) and print its reply as
//! they print a local result; `log`, `ls`, `restore` and `verify` open the store read-only
//! ([`open_store_read`]); `status` asks the server for its status. `sync`, `verify --repair` and
//! `restore --from` fetch from peers and need the store to themselves ([`open_store_exclusive`]):
//! beside a serve they say so in one line, with what to do.

mod add;
mod args;
mod checkout;
mod fmt;
mod folder;
mod hold;
mod init;
mod inspect;
mod maintain;
mod peer_hints;
mod progress;
mod remote;
mod serve;
mod share;
mod sync;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use left::control;
use left_store::Store;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: an error (message on stderr).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad usage (unknown option, missing argument), reported by clap.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the command finished but some files were skipped (listed on stderr and in --json).
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code: `left sync` fetched a snapshot but did not check it out, because both sides changed
/// since they last agreed and the history needed to merge them could not be fetched.
pub const EXIT_DIVERGED: u8 = 4;
/// Exit code: `left sync` fetched a snapshot but the deletion guard held it (it would delete or
/// replace too many files here); nothing was checked out. `left hold` decides, `--yes` skips.
pub const EXIT_HELD: u8 = 5;
/// Exit code: interrupted by Ctrl-C (SIGINT), 128 + 2 as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "\
Store discovery: --store PATH, else $LEFT_STORE, else the nearest folder named .left in the current
folder or one of its parents.

Exit codes:
  0  success
  1  error (the cause is printed on stderr as `left: ...`)
  2  usage error (bad option or argument, a malformed peer address, no peer to talk to)
  3  finished, but some files were skipped or could not be written (listed on stderr, and in --json)
  4  fetched, but not checked out: both sides changed and their merge base is on no peer reached
  5  fetched, but held by the deletion guard: it would delete or replace many files here
     (`left hold` shows it and decides; `left sync --yes` checks it out)
  130  interrupted (Ctrl-C): nothing is lost; run the same command to resume";

/// left: peer-to-peer file sync on a content-addressed store.
#[derive(Debug, Parser)]
#[command(name = "left", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct Global {
    /// Store folder to use (default: $LEFT_STORE, else .left in the current folder or a parent)
    #[arg(long, global = true, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Print exactly one JSON object on stdout instead of the human summary
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing on success except --json output; no progress bars
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make DIR (default: the current folder) a share: create its store and this device's keys
    Init(init::InitArgs),
    /// Snapshot the share (or only the given paths inside it) as the new head
    Add(add::AddArgs),
    /// Drop frozen paths (tracked, now covered by .leftignore) from the snapshot on purpose:
    /// peers delete them, the files here stay, history keeps their old versions
    Forget(add::ForgetArgs),
    /// Show the history of snapshots, newest first
    Log(inspect::LogArgs),
    /// List a folder (or one file) of a snapshot
    Ls(inspect::LsArgs),
    /// Write a snapshot (or one path of it) into a folder, exactly as it was
    Restore(inspect::RestoreArgs),
    /// Re-hash every chunk and node the snapshots use; name what is missing or corrupt
    /// (with --repair, fetch those objects again from peers)
    Verify(maintain::VerifyArgs),
    /// Drop chunks and nodes no snapshot needs and shrink the store on disk
    Gc(maintain::GcArgs),
    /// Print this device's id (its public key)
    Id,
    /// Print the share key, for `left init --join` on another device (whoever holds it can join)
    ///
    /// Whoever holds the share key can join the share and read everything in it: pass it only over
    /// a channel you trust, and prefer `left init --join -` (key on stdin) on the other device so it
    /// does not show in the process list or the shell history.
    ShareKey,
    /// List the devices seen; pin or revoke them
    Peers(share::PeersArgs),
    /// Show the head, the share folder, and whether a `left serve` is running (and its status)
    Status,
    /// Serve this share to peers over rdt until stopped (Ctrl-C)
    Serve(serve::ServeArgs),
    /// Fetch what peers have, then check it out into the share folder
    Sync(sync::SyncArgs),
    /// Finish a checkout that was cut short, or drop it (--abort)
    Checkout(checkout::CheckoutArgs),
    /// List the snapshots the deletion guard holds (a peer's change that would delete or
    /// replace many files here), accept or reject one, or set the guard's thresholds
    Hold(hold::HoldArgs),
    /// Show or set this device's folder type: send-receive (default), receive-only (local
    /// changes are never published) or send-only (the peers' changes are never taken)
    FolderType(folder::FolderTypeArgs),
    /// Bring a receive-only folder back to the share's version (local changes stay in history)
    Revert(folder::RevertArgs),
    /// Make the share match this send-only device: a snapshot of this folder on top of the
    /// peers' heads, which they fast-forward to
    Override(folder::OverrideArgs),
}

/// Errors of the command line itself; each carries the hint shown under it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No store found by discovery.
    #[error("not inside a left share: no .left folder in {} or above", cwd.display())]
    NotInShare {
        /// Where discovery started.
        cwd: PathBuf,
    },
    /// A path given on the command line does not exist.
    #[error("{} does not exist", path.display())]
    PathMissing {
        /// The path as given.
        path: PathBuf,
    },
    /// A path given to `add` lies outside the share.
    #[error("{} is outside the share {}", path.display(), share.display())]
    PathOutsideShare {
        /// The path as given.
        path: PathBuf,
        /// The share root.
        share: PathBuf,
    },
    /// A path given to `add` lies inside the store folder.
    #[error("{} is inside the store folder, which is never snapshot", path.display())]
    PathInStore {
        /// The path as given.
        path: PathBuf,
    },
    /// The store's config has no share folder.
    #[error("the store at {} records no share folder", store.display())]
    NoShareRoot {
        /// The store folder.
        store: PathBuf,
    },
    /// The store has no snapshot yet.
    #[error("the store has no snapshot yet")]
    NoSnapshot,
    /// `verify` found problems (already printed).
    #[error("verify found {count} problem(s)")]
    VerifyFailed {
        /// Number of problems.
        count: usize,
    },
    /// `verify --repair` left problems unrepaired (already printed).
    #[error("repair left {left} of {found} problem(s) unrepaired{why}")]
    RepairIncomplete {
        /// Problems still there.
        left: usize,
        /// Problems found before the repair.
        found: usize,
        /// Why, starting with `: ` (empty when nothing more is known).
        why: String,
    },
    /// Talking to peers failed in a way the command cannot go on from.
    #[error("{message}")]
    Peers {
        /// What failed, one line.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },
    /// The serving process answered a request with an error.
    #[error("{message}")]
    Served {
        /// Its message.
        message: String,
        /// Its hint.
        hint: Option<String>,
    },
    /// The serving process gave an answer that does not fit the request.
    #[error("the serving process gave an unexpected answer to {request}")]
    UnexpectedAnswer {
        /// The request, by name.
        request: &'static str,
    },
    /// A share key given on the command line does not parse.
    #[error("bad share key given to --join: {0}")]
    BadShareKey(left::identity::ParseShareKeyError),
    /// A command line clap accepts but that makes no sense (a malformed peer address, no peer
    /// to talk to): exit 2, like clap's own usage errors.
    #[error("{message}")]
    Usage {
        /// What is wrong, one line.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },
}

/// Runs the parsed command line; returns the process exit code on success.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let out = Output {
        json: cli.global.json,
        quiet: cli.global.quiet,
    };
    match cli.command {
        Command::Init(args) => init::run(&cli.global, &out, args),
        Command::Add(args) => add::run(&cli.global, &out, args),
        Command::Forget(args) => add::forget(&cli.global, &out, args),
        Command::Log(args) => inspect::log(&cli.global, &out, args),
        Command::Ls(args) => inspect::ls(&cli.global, &out, args),
        Command::Restore(args) if args.from.is_some() => {
            remote::restore_from(&cli.global, &out, args)
        }
        Command::Restore(args) => inspect::restore(&cli.global, &out, args),
        Command::Verify(args) if args.repair => remote::verify_repair(&cli.global, &out, args),
        Command::Verify(_) => maintain::verify(&cli.global, &out),
        Command::Gc(args) => maintain::gc(&cli.global, &out, args),
        Command::Id => init::id(&cli.global, &out),
        Command::ShareKey => share::share_key(&cli.global, &out),
        Command::Peers(args) => share::peers(&cli.global, &out, args),
        Command::Status => share::status(&cli.global, &out),
        Command::Serve(args) => serve::run(&cli.global, &out, args),
        Command::Sync(args) => sync::run(&cli.global, &out, args),
        Command::Checkout(args) => checkout::run(&cli.global, &out, args),
        Command::Hold(args) => hold::run(&cli.global, &out, args),
        Command::FolderType(args) => folder::run_type(&cli.global, &out, args),
        Command::Revert(args) => folder::run_revert(&cli.global, &out, args),
        Command::Override(args) => folder::run_override(&cli.global, &out, args),
    }
}

/// Whether the error is a usage error (exit 2) rather than a failure (exit 1).
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(c.downcast_ref::<CliError>(), Some(CliError::Usage { .. }))
            || matches!(
                c.downcast_ref::<left::app::Error>(),
                Some(left::app::Error::Usage { .. })
            )
            || matches!(
                c.downcast_ref::<left::app::Error>(),
                Some(left::app::Error::BadAddress { why, .. }) if !why.starts_with("cannot resolve")
            )
    })
}

/// A hint on what to do next for the error, if one is known.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::NotInShare { .. } => Some(
                    "run `left init` in the share folder, or pass --store PATH (or set LEFT_STORE)"
                        .into(),
                ),
                CliError::PathOutsideShare { share, .. } => Some(format!(
                    "paths given to `left add` must lie inside {}",
                    share.display()
                )),
                CliError::NoSnapshot => Some("run `left add` first".into()),
                CliError::VerifyFailed { .. } => Some(
                    "the paths listed above cannot be restored from this store; \
                     keep a copy of the store for inspection and add the files again if you still have them"
                        .into(),
                ),
                CliError::RepairIncomplete { .. } => Some(
                    "the objects listed above are still damaged: name a peer that holds them \
                     (`left verify --repair HOST:PORT`), or add the files again if you still have them"
                        .into(),
                ),
                CliError::Served { hint, .. }
                | CliError::Peers { hint, .. }
                | CliError::Usage { hint, .. } => hint.clone(),
                CliError::BadShareKey(_) => Some(
                    "copy the key exactly as `left share-key` prints it on a device of the share"
                        .into(),
                ),
                _ => None,
            };
        }
        if let Some(e) = cause.downcast_ref::<left::app::Error>() {
            match e {
                left::app::Error::BadAddress { why, .. } => {
                    // A well-formed name the resolver cannot answer for (it may be the network)
                    // is an error, not a usage error.
                    return Some(if why.starts_with("cannot resolve") {
                        "check the host name, or give its IP address".into()
                    } else {
                        "give HOST:PORT, a host (port 22001), or an IP address ([::1]:22001, ::1)"
                            .into()
                    });
                }
                left::app::Error::Peers { hint, .. } | left::app::Error::Usage { hint, .. } => {
                    return hint.clone()
                }
                left::app::Error::PeersFailed { peers, .. } => {
                    return peer_hints::failure_hint(peers)
                }
                // The cause (a store or identity error) may have a hint: read on.
                _ => continue,
            }
        }
        if let Some(e) = cause.downcast_ref::<left_store::Error>() {
            return match e {
                left_store::Error::Locked { .. } => Some(
                    "another left command is using this store: wait for it to finish (or stop it)"
                        .into(),
                ),
                other => left::control::store_error_hint(other),
            };
        }
        if let Some(left::identity::Error::Missing { .. }) =
            cause.downcast_ref::<left::identity::Error>()
        {
            return Some("this store has no device key; was it made by `left init`?".into());
        }
    }
    None
}

/// Where results go: stdout, human or JSON.
pub(crate) struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    /// Prints a human summary line (unless --json or -q).
    pub fn human(&self, line: impl AsRef<[u8]>) -> io::Result<()> {
        if self.json || self.quiet {
            return Ok(());
        }
        let mut stdout = io::stdout().lock();
        stdout.write_all(line.as_ref())?;
        stdout.write_all(b"\n")?;
        stdout.flush()
    }

    /// Prints a line of the command's result, such as a listing (unless --json; -q does not hide it).
    pub fn data(&self, line: impl AsRef<[u8]>) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let mut stdout = io::stdout().lock();
        stdout.write_all(line.as_ref())?;
        stdout.write_all(b"\n")
    }

    /// Prints the JSON object (only with --json).
    pub fn json(&self, value: &serde_json::Value) -> io::Result<()> {
        if !self.json {
            return Ok(());
        }
        let mut stdout = io::stdout().lock();
        serde_json::to_writer(&mut stdout, value)?;
        stdout.write_all(b"\n")?;
        stdout.flush()
    }

    /// A progress sink: a bar on a terminal, nothing otherwise or with -q.
    pub fn progress(&self) -> progress::Bar {
        progress::Bar::new(!self.quiet)
    }
}

/// The store folder chosen by --store, LEFT_STORE, or discovery from the current folder.
pub(crate) fn store_dir(global: &Global) -> anyhow::Result<PathBuf> {
    if let Some(p) = global.store.clone().or_else(|| {
        std::env::var_os("LEFT_STORE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }) {
        return absolute(&p);
    }
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(".left");
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    Err(CliError::NotInShare { cwd }.into())
}

/// Opens the store for reading: normally, or read-only when another process (a running
/// `left serve`, or another command) holds its lock.
pub(crate) fn open_store_read(global: &Global) -> anyhow::Result<(PathBuf, Store)> {
    let dir = store_dir(global)?;
    let context = || format!("cannot open the store at {}", dir.display());
    let store = match Store::open(&dir) {
        Ok(store) => store,
        Err(left_store::Error::Locked { pid }) => Store::open_read_only(&dir)
            .with_context(|| format!("{} read-only (pid {pid} holds it)", context()))?,
        Err(e) => return Err(anyhow::Error::new(e).context(context())),
    };
    Ok((dir, store))
}

/// Opens the store for writing, for a command that fetches from peers (`sync`, `verify --repair`,
/// `restore --from`). When a `left serve` holds it, says so and what to do instead of "in use"
/// (`verb` says what cannot be done, `what` is the command to run instead, e.g. `verify --repair`).
pub(crate) fn open_store_exclusive(
    global: &Global,
    verb: &str,
    what: &str,
) -> anyhow::Result<(PathBuf, Store)> {
    let dir = store_dir(global)?;
    match Store::open(&dir) {
        Ok(store) => Ok((dir, store)),
        Err(left_store::Error::Locked { pid })
            if matches!(control::call(&dir, &control::Request::Status), Ok(Some(_))) =>
        {
            // A serving process owns the store: say so, and what to do, instead of "in use".
            Err(CliError::Served {
                message: format!(
                    "cannot {verb}: a `left serve` (pid {pid}) owns the store at {}",
                    dir.display()
                ),
                hint: Some(format!(
                    "stop that serve (Ctrl-C, or `kill {pid}`), run `left {what}`, then start `left serve` again"
                )),
            }
            .into())
        }
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("cannot open the store at {}", dir.display())))
        }
    }
}

/// A store opened here, or the `left serve` process that holds it.
// One value per command run: boxing the store would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Opened {
    /// Opened by this process.
    Local(PathBuf, Store),
    /// Held by a serving process, which answered on the control socket with this status.
    Served(PathBuf, serde_json::Value),
}

/// Opens the store found by [`store_dir`]; when it is locked and a `left serve` answers on its
/// control socket, returns that server instead. Locked with no server answering: the lock error,
/// as before.
pub(crate) fn open_or_served(global: &Global) -> anyhow::Result<Opened> {
    let dir = store_dir(global)?;
    let context = || format!("cannot open the store at {}", dir.display());
    match Store::open(&dir) {
        Ok(store) => Ok(Opened::Local(dir, store)),
        Err(locked @ left_store::Error::Locked { .. }) => {
            match control::call(&dir, &control::Request::Status) {
                Ok(Some(control::Response::Status(status))) => Ok(Opened::Served(dir, status)),
                Ok(Some(other)) => Err(answer_error(other, "Status")),
                Ok(None) => Err(anyhow::Error::new(locked).context(context())),
                Err(e) => Err(anyhow::Error::new(e).context(format!(
                    "{}: it is locked, and its server's control socket failed",
                    context()
                ))),
            }
        }
        Err(e) => Err(anyhow::Error::new(e).context(context())),
    }
}

/// Sends `req` to the serving process holding the store at `dir`.
pub(crate) fn call_served(dir: &Path, req: &control::Request) -> anyhow::Result<control::Response> {
    control::call(dir, req)
        .context("cannot reach the serving process")?
        .ok_or_else(|| anyhow::anyhow!("the serving process stopped before answering"))
}

/// The error for an answer that is an error, or not the one `request` expects.
pub(crate) fn answer_error(answer: control::Response, request: &'static str) -> anyhow::Error {
    match answer {
        control::Response::Error { message, hint } => CliError::Served { message, hint }.into(),
        _ => CliError::UnexpectedAnswer { request }.into(),
    }
}

/// The share folder recorded in the store, canonicalised.
pub(crate) fn share_root(store_dir: &Path, store: &Store) -> anyhow::Result<PathBuf> {
    let root = store
        .config()
        .share_root
        .clone()
        .ok_or_else(|| CliError::NoShareRoot {
            store: store_dir.to_owned(),
        })?;
    std::fs::canonicalize(&root)
        .with_context(|| format!("cannot open the share folder {}", root.display()))
}

/// The head snapshot, or [`CliError::NoSnapshot`].
pub(crate) fn head(store: &Store) -> anyhow::Result<left_store::NodeId> {
    store
        .head()
        .context("cannot read the head")?
        .ok_or_else(|| CliError::NoSnapshot.into())
}

/// `p` made absolute against the current folder (without resolving links).
pub(crate) fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "0  success",
            "1  error",
            "2  usage",
            "3  finished",
            "4  fetched",
            "5  fetched, but held",
            "130  interrupted",
        ] {
            assert!(help.contains(code), "missing {code:?} in help:\n{help}");
        }
    }

    #[test]
    fn hints_are_found_through_context() {
        let err = anyhow::Error::from(left_store::Error::Locked { pid: 42 }).context("opening");
        assert!(hint(&err).unwrap().contains("wait"));
        let err = anyhow::Error::from(CliError::NotInShare { cwd: "/x".into() });
        assert!(hint(&err).unwrap().contains("left init"));
        assert!(hint(&anyhow::anyhow!("plain")).is_none());
        let err = anyhow::Error::from(CliError::Served {
            message: "m".into(),
            hint: Some("do this".into()),
        });
        assert_eq!(hint(&err).as_deref(), Some("do this"));
        let err = anyhow::Error::from(left_store::Error::DiskFull { path: "/x".into() });
        assert!(hint(&err).unwrap().contains("free some disk space"));
    }
}
