//! Training (docs/training.md): [`Trainer`], [`TrainConfig`], checkpoints and resume.
//!
//! One concern per file: the loop (`trainer.rs`), one step (`step.rs`), the loss and its
//! weighting (`loss.rs`), the divergence guard (`guard.rs`), the optimizer and learning-rate
//! schedule (`optimizer.rs`), the EMA (`ema.rs`), the seeded random streams (`streams.rs`),
//! what the estimate is pulled towards ([`objective`], one file per objective), the
//! perceptual and adversarial terms for images ([`perceptual`], [`adversarial`]), distribution
//! matching against a teacher ([`distribution_matching`]), data-parallel workers ([`parallel`]),
//! the run's position and step statistics (`position.rs`),
//! progress and the metrics log (`progress.rs`), checkpoints (`checkpoint/`) and Ctrl-C
//! ([`interrupt`]). How each example gets its anchor is the [`coupling`](crate::coupling)'s.

pub mod adversarial;
mod batch;
mod checkpoint;
mod config;
pub mod distribution_matching;
mod ema;
mod guard;
pub mod interrupt;
mod loss;
pub mod objective;
mod optimizer;
pub mod parallel;
pub mod perceptual;
mod position;
mod progress;
mod step;
mod streams;
mod trainer;

pub use crate::coupling::{
    assignment, AnchorBacking, AnchorConfig, AnchorPolicy, AnchorStorage, AnchorStore, OtSpace,
};
pub use adversarial::{AdversarialConfig, Critic};
pub use checkpoint::{checkpoint_path, CheckpointInfo, CHECKPOINT_FILE};
pub(crate) use checkpoint::{param_shapes, read_ema, CheckpointModel, RecordBytes};
pub use config::{
    Distance, DivergencePolicy, EmaConfig, LossWeight, LrDecay, OptimizerConfig, OptimizerKind,
    TrainConfig, Weighting,
};
pub use distribution_matching::DistributionMatchingConfig;
pub use objective::{
    ConsistencyConfig, ConsistencyTarget, FlowMapConfig, FlowMapVelocity, ObjectiveConfig,
    OneStepTarget,
};
pub use optimizer::FusedAdam;
pub use parallel::DataParallelConfig;
pub use perceptual::{perceptual_distance, ImageFeatures, PerceptualConfig};
pub use trainer::{StepStats, Trainer};
