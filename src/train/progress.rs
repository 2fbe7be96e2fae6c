//! Progress on a terminal and the metrics log (one JSON line per logged step or event).

use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// A progress bar over `count` steps, drawn only when `visible` and stderr is a terminal.
pub(super) fn progress_bar(visible: bool, count: usize) -> ProgressBar {
    let target = if visible && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(count as u64), target);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
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
