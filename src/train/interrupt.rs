//! Ctrl-C (SIGINT) during training: the current step finishes, a checkpoint is written and
//! [`fit`](super::Trainer::fit) / [`train_for`](super::Trainer::train_for) return
//! [`Error::Interrupted`], which names the step and the checkpoint directory.
//!
//! The handler is process-wide, so the crate installs it only when asked: a program calls
//! [`install`] once at start (the examples do). While a training loop runs, Ctrl-C asks every
//! running loop to stop after its step; a second Ctrl-C ends the process at once (exit status
//! 130), and so does a Ctrl-C while no loop runs (nothing is half-done then: checkpoints are
//! written atomically). The request is forgotten when the last running loop ends, so it never
//! stops a later run.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Installs the Ctrl-C handler (once per process; later calls return the first call's
/// outcome). Fails with [`Error::SignalHandler`] when another handler was set up by other means.
pub fn install() -> Result<()> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                // Outside training, or a second press: the user does not want to wait.
                if ACTIVE.load(Ordering::SeqCst) == 0 || REQUESTED.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| Error::SignalHandler { reason })
}

/// Asks the running training loops to stop after their current step, as Ctrl-C does (for
/// programs that stop training on another event). Made while no loop runs, it stops the next
/// loop at its first step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for and not yet forgotten.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Marks a training loop as running while it lives; the last one to end forgets the request.
pub(super) struct RunningLoop(());

impl RunningLoop {
    pub(super) fn enter() -> Self {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        RunningLoop(())
    }
}

impl Drop for RunningLoop {
    fn drop(&mut self) {
        if ACTIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
            REQUESTED.store(false, Ordering::SeqCst);
        }
    }
}

/// The command that resumes this program's run: `program` followed by this process's
/// arguments, with `--resume` added once (for the message an interrupted example prints).
pub fn resume_command(program: &str) -> String {
    let mut words = vec![program.to_string()];
    words.extend(std::env::args().skip(1).filter(|a| a != "--resume"));
    words.push("--resume".into());
    words.join(" ")
}

/// The exit status of an example's `main` for `result`: success; 130 after Ctrl-C, with a
/// message naming the command that resumes the run ([`resume_command`] of `program`); 1 with
/// the error otherwise.
pub fn exit_code(
    result: std::result::Result<(), Box<dyn std::error::Error>>,
    program: &str,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(Error::Interrupted { checkpoint, .. }) = e.downcast_ref::<Error>() {
                if checkpoint.is_some() {
                    eprintln!("continue with: {}", resume_command(program));
                }
                return std::process::ExitCode::from(130);
            }
            std::process::ExitCode::FAILURE
        }
    }
}
