//! Training (DESIGN.md §3): [`Trainer`], [`TrainConfig`], the [`AnchorStore`], checkpoints.

mod anchors;
pub mod assignment;
mod checkpoint;
mod config;
mod ema;
mod loss;
mod trainer;

pub use anchors::{AnchorBacking, AnchorStorage, AnchorStore};
pub use checkpoint::{checkpoint_path, CHECKPOINT_FILE};
pub use config::{
    AnchorConfig, AnchorPolicy, Distance, DivergencePolicy, EmaConfig, LossWeight, OptimizerConfig,
    OptimizerKind, OtSpace, TrainConfig, Weighting,
};
pub use trainer::{CheckpointInfo, StepStats, Trainer};
