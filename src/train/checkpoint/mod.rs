//! Checkpoints: the container format (`format.rs`) and what a run's checkpoint holds, how it
//! is written and how a run resumes from it (`state.rs`).

mod format;
mod state;

pub use format::{checkpoint_path, CHECKPOINT_FILE};
pub use state::CheckpointInfo;
pub(crate) use state::{param_shapes, read_ema, CheckpointModel};

/// The encoding of burn records (weights, optimizer state) inside a checkpoint.
pub(crate) type RecordBytes =
    burn::record::NamedMpkBytesRecorder<burn::record::FullPrecisionSettings>;
