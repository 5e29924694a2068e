//! Progress of long work (rebuild, bench, dead-letter replay): a bar on a terminal (indicatif),
//! and a plain line every few seconds otherwise, so logs and CI output stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// One piece of long work. Its variants are how it shows; use its methods.
#[allow(missing_docs)]
pub enum Progress {
    /// A bar on the terminal.
    Bar(ProgressBar),
    /// Lines on a pipe or file.
    Plain { label: String, total: u64, position: u64, message: String, last: Option<Instant> },
}

impl Progress {
    /// Starts showing `label`, with `total` steps (grows with [`Progress::set_total`]).
    pub fn new(label: &str, total: u64) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix:>12.bold} [{bar:40.cyan/blue}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar(bar)
        } else {
            Progress::Plain { label: label.to_string(), total, position: 0, message: String::new(), last: None }
        }
    }

    /// The total grew (or became known).
    pub fn set_total(&mut self, new_total: u64) {
        match self {
            Progress::Bar(bar) => bar.set_length(new_total),
            Progress::Plain { total, .. } => *total = new_total,
        }
    }

    /// Where the work is, and what it is doing.
    pub fn update(&mut self, new_position: u64, new_message: &str) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(new_position);
                bar.set_message(new_message.to_string());
            }
            Progress::Plain { label, total, position, message, last } => {
                *position = new_position;
                *message = new_message.to_string();
                if last.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
                    eprintln!("{label}: {position}/{total} {message}");
                    *last = Some(Instant::now());
                }
            }
        }
    }

    /// Prints a line of results to stdout without tearing the bar.
    pub fn println(&self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.suspend(|| println!("{line}")),
            Progress::Plain { .. } => println!("{line}"),
        }
    }

    /// Done: the bar stays with `message`; a plain line says it.
    pub fn finish(self, message: &str) {
        match self {
            Progress::Bar(bar) => bar.finish_with_message(message.to_string()),
            Progress::Plain { label, total, position, .. } => eprintln!("{label}: {position}/{total} {message}"),
        }
    }
}
