//! The crate's one error type.
//!
//! Every public function that can be handed something it cannot work with returns
//! [`Result<T>`](Result) with an [`Error`] that says what was wrong, instead of panicking.

/// Shorthand for `std::result::Result<T, integration_flow::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is impossible (NaN, out of range, or inconsistent with another).
    #[error("invalid {config}: `{field}` {reason}")]
    InvalidConfig {
        /// The configuration type, e.g. `VeConfig`.
        config: &'static str,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument is out of its allowed range (a count of zero, a time outside the flow's range).
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Tensors or slices whose shapes do not fit together.
    #[error("shape mismatch in {context}: expected {expected}, found {found}")]
    ShapeMismatch {
        /// Where the mismatch was found.
        context: &'static str,
        /// The shape that was required.
        expected: String,
        /// The shape that was given.
        found: String,
    },

    /// A value that must be finite is NaN or infinite.
    #[error("non-finite value in {context}: {value}")]
    NonFinite {
        /// Where the value was found.
        context: &'static str,
        /// The value itself.
        value: f64,
    },

    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A data file is corrupt, truncated, or not in the format it was read as.
    #[error("{path}: {reason}")]
    Format {
        /// The file (`(in memory)` for bytes parsed directly).
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A checkpoint is corrupt, truncated, or does not belong to this model or dataset.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Training produced a non-finite loss or gradient.
    #[error("training diverged at step {step}: {reason}")]
    Diverged {
        /// The step (0-based) whose loss or gradient was not finite.
        step: usize,
        /// What was not finite.
        reason: String,
    },

    /// Training was stopped by Ctrl-C ([`train::interrupt`](crate::train::interrupt)) after a
    /// complete step; the state was checkpointed where `checkpoint` says.
    #[error("{}", interrupted_message(*step, checkpoint.as_deref()))]
    Interrupted {
        /// The steps done.
        step: usize,
        /// The checkpoint directory the state was written to (`None`: the trainer had none, so
        /// nothing was saved).
        checkpoint: Option<std::path::PathBuf>,
    },

    /// The Ctrl-C handler could not be installed.
    #[error("cannot install the Ctrl-C handler: {reason}")]
    SignalHandler {
        /// Why.
        reason: String,
    },

    /// A formula of the flow has no finite value at this time (e.g. the EDM form where α = 0,
    /// or the ODE velocity where σ = 0).
    #[error("{what} is singular at t = {t}: {reason}")]
    Singular {
        /// The quantity that cannot be evaluated.
        what: &'static str,
        /// The time at which it was asked for.
        t: f64,
        /// Why it has no finite value there.
        reason: &'static str,
    },
    /// A flow of your own failed its self-check ([`flow::check`](crate::flow::check)) when a
    /// model was built with it.
    #[error(
        "flow {flow:?} fails its self-check at `{item}`: relative error {relative_error:.3e} \
         above the tolerance {tolerance:.1e} ({detail}); fix the flow, or build the model with \
         IntegrationFlowConfig::init_unchecked"
    )]
    FlowCheck {
        /// The flow's name.
        flow: String,
        /// The failed item (`alpha_dot`, `velocity`, `prior_variance`, …).
        item: String,
        /// Its measured relative error.
        relative_error: f64,
        /// The largest error that passes.
        tolerance: f64,
        /// Where it failed, or what.
        detail: String,
    },

    /// A worker of a data-parallel run ([`DataParallelConfig`](crate::train::DataParallelConfig))
    /// failed, panicked or did not answer in time; the step's update was not applied and the
    /// run stops (resume it from its last checkpoint).
    #[error("data-parallel worker {worker} failed at step {step}: {reason}")]
    Worker {
        /// The worker (0-based).
        worker: usize,
        /// The step it failed in.
        step: usize,
        /// What happened.
        reason: String,
    },

    /// A time budget too small for the stages it has to pay for (the distillation pipeline's
    /// teacher, pairs and student).
    #[error("time budget too small: {reason}")]
    Budget {
        /// What the budget would have to cover, with the estimates.
        reason: String,
    },

    /// A configuration's JSON could not be read: malformed, an unknown field, or a value of
    /// the wrong type.
    #[error("{config} JSON, at `{field}`: {reason}")]
    ConfigJson {
        /// The configuration type, e.g. `TrainConfig`.
        config: &'static str,
        /// The path of the offending field (`anchor.ot_chunk`; `.` for the whole document).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn interrupted_message(step: usize, checkpoint: Option<&std::path::Path>) -> String {
    match checkpoint {
        Some(dir) => format!(
            "interrupted after step {step}; the checkpoint in {} resumes it",
            dir.display()
        ),
        None => format!("interrupted after step {step}; no checkpoint directory, nothing saved"),
    }
}

/// Reads a configuration of type `T` from JSON; errors name the field's path.
pub(crate) fn config_from_json<T: serde::de::DeserializeOwned>(
    config: &'static str,
    json: &str,
) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| Error::ConfigJson {
        config,
        field: e.path().to_string(),
        reason: e.inner().to_string(),
    })
}

/// Checks that a configuration value is finite.
pub(crate) fn require_finite(config: &'static str, field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            config,
            field,
            reason: format!("must be finite, got {value}"),
        })
    }
}

/// An image term's weight and learning rate: finite and positive (a weight of zero is the
/// term left out, said so).
pub(crate) fn require_term_rates(
    config: &'static str,
    field: &'static str,
    weight: f64,
    lr: f64,
) -> Result<()> {
    require_finite(config, field, weight)?;
    require_finite(config, field, lr)?;
    if weight <= 0.0 {
        return Err(invalid_config(
            config,
            field,
            format!("weight must be positive (leave the term out for none), got {weight}"),
        ));
    }
    if lr <= 0.0 {
        return Err(invalid_config(
            config,
            field,
            format!("lr must be positive, got {lr}"),
        ));
    }
    Ok(())
}

/// Builds an [`Error::InvalidConfig`].
pub(crate) fn invalid_config(
    config: &'static str,
    field: &'static str,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidConfig {
        config,
        field,
        reason: reason.into(),
    }
}

/// `Error::ShapeMismatch` unless rows of `dim` values are images of shape `[c, h, w]`.
pub(crate) fn require_image_rows(
    context: &'static str,
    [c, h, w]: [usize; 3],
    dim: usize,
) -> Result<()> {
    if c * h * w == dim {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        context,
        expected: format!("{} values per example ({c}×{h}×{w} images)", c * h * w),
        found: format!("{dim} values per example"),
    })
}

/// `Error::ShapeMismatch` unless a `what` has `expected` values.
pub(crate) fn check_len(
    context: &'static str,
    what: &str,
    found: usize,
    expected: usize,
) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        context,
        expected: format!("a {what} of {expected} values"),
        found: format!("{found} values"),
    })
}
