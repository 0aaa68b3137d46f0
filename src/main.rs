//! The `left` binary: parse the command line, run it, map the outcome to an exit code.
//!
//! Exit codes (also in `left --help`): 0 success, 1 error, 2 usage error, 3 finished but some files
//! were skipped. Errors print as one line, `left: <what failed>: <cause>`, followed where useful by a
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
            ExitCode::from(cli::EXIT_ERROR)
        }
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
