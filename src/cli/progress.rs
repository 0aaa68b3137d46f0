//! A [`left_store::Progress`] sink drawing an indicatif bar on stderr.
//!
//! The bar exists from the start of each phase but stays hidden until the phase has run for
//! [`SHOW_AFTER`]; a fast command therefore prints nothing at all. It is never drawn when stderr is
//! not a terminal (pipes, files, tests), so scripts see only the command's own output.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a phase runs before its bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// The progress bar of one command.
pub(crate) struct Bar {
    /// `None` when progress is off (not a terminal, or -q).
    bar: Option<ProgressBar>,
    /// Whether the current phase's bar is drawn.
    shown: AtomicBool,
}

impl Bar {
    /// A bar that draws only if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Bar {
        let bar = (enabled && std::io::stderr().is_terminal())
            .then(|| ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()));
        Bar {
            bar,
            shown: AtomicBool::new(false),
        }
    }

    fn maybe_show(&self, bar: &ProgressBar) {
        if !self.shown.load(Ordering::Relaxed)
            && bar.elapsed() >= SHOW_AFTER
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }
}

impl left_store::Progress for Bar {
    fn start(&self, what: &str, total_bytes: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        // Hide again: each phase gets its own grace second.
        bar.disable_steady_tick();
        bar.set_draw_target(ProgressDrawTarget::hidden());
        self.shown.store(false, Ordering::Relaxed);
        let template = match total_bytes {
            Some(total) => {
                bar.set_length(total);
                "{msg:>8} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
            }
            None => {
                bar.unset_length();
                "{msg:>8} {spinner} {bytes} {binary_bytes_per_sec}"
            }
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar.reset();
    }

    fn advance(&self, bytes: u64) {
        let Some(bar) = &self.bar else { return };
        bar.inc(bytes);
        self.maybe_show(bar);
    }

    fn finish(&self) {
        let Some(bar) = &self.bar else { return };
        bar.disable_steady_tick();
        if self.shown.load(Ordering::Relaxed) {
            bar.finish_and_clear();
        }
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // An error may end a phase without finish(): never leave a half-drawn bar behind.
        if let Some(bar) = &self.bar {
            if self.shown.load(Ordering::Relaxed) {
                bar.finish_and_clear();
            }
        }
    }
}

/// The fetch's progress bar on stderr: chunk bytes fetched against those found missing so far
/// (the total grows while the walk goes on), with rate and ETA. Drawn only on a terminal, without
/// -q, and only once the fetch has run for a second.
pub(crate) struct FetchBar {
    bar: Option<indicatif::ProgressBar>,
    shown: AtomicBool,
}

impl FetchBar {
    pub(crate) fn new(enabled: bool) -> FetchBar {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
            if let Ok(style) = ProgressStyle::with_template(
                "   fetch [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        FetchBar {
            bar,
            shown: AtomicBool::new(false),
        }
    }

    /// A maker of one bar per fetch, for the use cases ([`left::app::Meters`]).
    pub(crate) fn maker(enabled: bool) -> impl Fn() -> Box<dyn left::app::Meter> + Sync {
        move || Box::new(FetchBar::new(enabled))
    }
}

impl left::app::Meter for FetchBar {
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            if self.shown.load(Ordering::Relaxed) {
                bar.finish_and_clear();
            }
        }
    }
}

impl left::app::FetchProgress for FetchBar {
    fn update(&self, discovered: u64, fetched: u64) {
        let Some(bar) = &self.bar else { return };
        bar.set_length(discovered.max(fetched));
        bar.set_position(fetched);
        if !self.shown.load(Ordering::Relaxed)
            && bar.elapsed() >= SHOW_AFTER
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }
}
