//! Progress (a bar on a terminal, plain lines elsewhere) and the metrics log (one JSON line per
//! logged step or event).

use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Training progress: a bar on a terminal, plain lines (at most one per
/// [`LINE_INTERVAL`]) on stderr otherwise (a log file, CI), nothing when not `visible`.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    last_line: Option<Instant>,
    started: Instant,
    count: usize,
    deadline: Option<Instant>,
}

/// The shortest time between two progress lines off a terminal.
pub(super) const LINE_INTERVAL: Duration = Duration::from_secs(10);

impl Progress {
    /// Progress over `count` steps, or until `deadline` where that comes first.
    pub(super) fn new(visible: bool, count: usize, deadline: Option<Instant>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (visible && terminal).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(count as u64), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            lines: visible && !terminal,
            last_line: None,
            started: Instant::now(),
            count,
            deadline,
        }
    }

    /// `done` of the `count` steps are done.
    pub(super) fn set_position(&self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        }
    }

    /// A logged step: its loss and the examples per second since the last one.
    pub(super) fn logged(&mut self, done: usize, step: usize, loss: f64, rate: f64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.4}"));
        }
        if self.lines && self.last_line.is_none_or(|t| t.elapsed() >= LINE_INTERVAL) {
            self.last_line = Some(Instant::now());
            eprintln!(
                "{}",
                line(
                    done,
                    self.count,
                    step,
                    loss,
                    rate,
                    self.started.elapsed(),
                    self.deadline
                        .map(|d| d.saturating_duration_since(Instant::now())),
                )
            );
        }
    }

    /// Clears the bar.
    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One progress line: `step 1200 (400/2000 of this run) loss 0.0123 2567 examples/s eta 31 s`;
/// the estimate is the time to the run's `deadline` where that comes before its last step.
pub(super) fn line(
    done: usize,
    count: usize,
    step: usize,
    loss: f64,
    rate: f64,
    elapsed: Duration,
    deadline: Option<Duration>,
) -> String {
    let left = count.saturating_sub(done);
    let by_steps = (done > 0).then(|| elapsed.as_secs_f64() * left as f64 / done as f64);
    let seconds = match (by_steps, deadline) {
        (Some(steps), Some(time)) => Some(steps.min(time.as_secs_f64())),
        (Some(steps), None) => Some(steps),
        (None, Some(time)) => Some(time.as_secs_f64()),
        (None, None) => None,
    };
    let eta = seconds
        .map(|s| format!(" eta {s:.0} s"))
        .unwrap_or_default();
    format!("step {step} ({done}/{count} of this run) loss {loss:.4} {rate:.0} examples/s{eta}")
}

/// An append-only JSON-lines file, flushed after every line so that a killed run keeps what
/// it logged.
#[derive(Debug)]
pub(super) struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Opens `path` for appending (created if missing).
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Appends `line` and flushes it.
    pub(super) fn write_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::Io {
                path: self.path.clone(),
                source: e,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_rounds_its_rates_and_estimates_the_rest() {
        let text = line(
            400,
            2000,
            1200,
            0.012345,
            2567.891,
            Duration::from_secs(10),
            None,
        );
        assert_eq!(
            text,
            "step 1200 (400/2000 of this run) loss 0.0123 2568 examples/s eta 40 s"
        );
        assert!(!line(0, 10, 0, 1.0, 0.0, Duration::ZERO, None).contains("eta"));
        // A time budget that ends before the steps do sets the estimate.
        let budget = Some(Duration::from_secs(12));
        let text = line(
            25,
            1_000_000,
            25,
            0.5,
            490.0,
            Duration::from_secs(3),
            budget,
        );
        assert!(text.ends_with("eta 12 s"), "{text}");
    }
}
