//! The `left` binary: parse the command line, run it, map the outcome to an exit code.
//!
//! Exit codes (also in `left --help`): 0 success, 1 error, 2 usage error, 3 finished but some files
//! were skipped, 4 sync fetched but could not merge, 5 sync fetched a snapshot the deletion guard held, 130 interrupted by Ctrl-C. Errors print as one line, `left: <what failed>: <cause>`, followed where useful by a
//! `hint:` line saying what to do next. A closed stdout (`left log | head`) ends the program quietly
//! with 0, as other Unix tools do.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // --help and --version come here too: they print on stdout and succeed.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_OK
            });
        }
    };
    // `left serve` stops gracefully on Ctrl-C by itself; every other command ends at once.
    if !matches!(args.command, cli::Command::Serve(_)) {
        exit_on_interrupt();
    }
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::from(cli::EXIT_OK),
        Err(err) => {
            let mut stderr = std::io::stderr().lock();
            // The error may quote a peer: one safe line.
            let _ = writeln!(stderr, "left: {}", left::sanitize::line(&one_line(&err)));
            if let Some(hint) = cli::hint(&err) {
                let _ = writeln!(stderr, "hint: {hint}");
            }
            ExitCode::from(if cli::is_usage(&err) {
                cli::EXIT_USAGE
            } else {
                cli::EXIT_ERROR
            })
        }
    }
}

/// Whether stderr was a terminal when [`exit_on_interrupt`] ran (the message then starts on a
/// fresh line, below the `^C` and any progress bar).
static STDERR_IS_TTY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// On SIGINT (Ctrl-C): print `left: interrupted; run the same command to resume` and exit 130
/// at once. Stopping there is safe at any point, exactly as a crash or SIGKILL is: every store
/// change is one atomic RocksDB batch with the ref moved last, a fetch resumes from what the
/// store holds, a checkout is journaled and finished by the next run, and files are written to a
/// temp name and renamed. The handler only calls `write(2)` and `_exit(2)` (async-signal-safe),
/// so no destructor, lock or buffered state of the interrupted threads is touched.
fn exit_on_interrupt() {
    use std::io::IsTerminal;
    extern "C" fn on_sigint(_: libc::c_int) {
        const LINE: &[u8] = b"left: interrupted; run the same command to resume\n";
        const TTY: &[u8] = b"\nleft: interrupted; run the same command to resume\n";
        let msg = if STDERR_IS_TTY.load(std::sync::atomic::Ordering::Relaxed) {
            TTY
        } else {
            LINE
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is a static buffer.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(cli::EXIT_INTERRUPTED as libc::c_int);
        }
    }
    STDERR_IS_TTY.store(
        std::io::stderr().is_terminal(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// The error and its causes on one line, outermost first, skipping causes already quoted by the
/// message before them (many error types print their source inline).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn one_line_skips_repeated_causes() {
        let io = std::io::Error::other("disk on fire");
        let err = Err::<(), _>(io)
            .context("writing x: disk on fire")
            .context("cannot add")
            .unwrap_err();
        assert_eq!(one_line(&err), "cannot add: writing x: disk on fire");
    }

    #[test]
    fn broken_pipe_is_recognised_through_context() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("printing");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
