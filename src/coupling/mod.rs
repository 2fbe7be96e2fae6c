//! Couplings: how each training example gets its anchor, how the anchor evolves during
//! training, and what sampling feeds as the first anchor (docs/design.md, "Couplings").
//!
//! A [`Coupling`] is stateless: it fits its [`AnchorLaw`] to the data, builds the
//! [`AnchorStore`] (one anchor per example), says whether the loss has an anchor term, proposes
//! new anchors after each step and says at which epochs the store is built anew. The trainer
//! owns the store and the law, checkpoints them, and calls the coupling. The built-ins, one file
//! each, are named by [`AnchorConfig`]'s policy; a coupling of your own goes to
//! [`Trainer::with_coupling`](crate::train::Trainer::with_coupling).
//!
//! ```
//! use integration_flow::coupling::{AnchorConfig, AnchorLaw, AnchorPolicy, Coupling};
//! use integration_flow::data::Toy;
//!
//! let coupling = AnchorConfig { policy: AnchorPolicy::Frozen, ..Default::default() }.coupling();
//! assert_eq!(coupling.name(), "frozen");
//! assert!(coupling.uses_anchor_term());
//! let data = Toy::Moons.sample(64, 0)?;
//! assert_eq!(coupling.law(&data)?, AnchorLaw::Gaussian { scale: 1.0 });
//! # Ok::<(), integration_flow::Error>(())
//! ```

pub mod assignment;
mod config;
mod data;
mod frozen;
mod law;
mod off;
mod ot;
mod ot_subspace;
mod paired;
mod prediction;
mod store;
mod subspace;

pub use config::{AnchorConfig, AnchorPolicy, OtSpace};
pub use data::DataAnchors;
pub use frozen::FrozenAnchors;
pub use law::AnchorLaw;
pub use off::NoAnchors;
pub use ot::OptimalTransport;
pub use ot_subspace::OptimalTransportSubspace;
pub use paired::PairedAnchors;
pub use prediction::PredictionAnchors;
pub use store::{AnchorBacking, AnchorStorage, AnchorStore};
pub use subspace::SubspaceLaw;

use crate::data::Dataset;
use crate::error::Result;
use rand::Rng;

/// Where a coupling keeps the anchors it builds: the run's storage type and backing
/// ([`AnchorConfig::storage`], [`AnchorConfig::backing`]).
#[derive(Clone, Copy, Debug)]
pub struct StoreSpec<'a> {
    /// `f32` or `f16` values.
    pub storage: AnchorStorage,
    /// RAM or a memory-mapped file.
    pub backing: &'a AnchorBacking,
}

impl<'a> From<&'a AnchorConfig> for StoreSpec<'a> {
    fn from(config: &'a AnchorConfig) -> Self {
        StoreSpec {
            storage: config.storage,
            backing: &config.backing,
        }
    }
}

/// How a step uses an example's anchor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorRole {
    /// The network's anchor input; the path's noise is drawn fresh every step
    /// (`x_t = α·x_0 + σ·n`, `n` new).
    #[default]
    Input,
    /// The path's noise: `x_t = α·x_0 + σ·a`, the network's anchor input zero. For a coupling
    /// that pairs each example with the latent an ODE maps to it (generated or encoded pairs):
    /// at `t_max` the network then sees that latent as `x_T`, and sampling needs no anchor (its
    /// law is [`AnchorLaw::Zero`]; the prior draw is the latent).
    Noise,
}

/// One training step's batch, as [`Coupling::update`] sees it (row-major values, `dim` per
/// example, in the order of `indices`).
pub struct StepBatch<'a> {
    /// The examples' dataset indices.
    pub indices: &'a [usize],
    /// The examples `x_0`.
    pub examples: &'a [f32],
    /// The anchors the step trained with.
    pub anchors: &'a [f32],
    estimates: &'a dyn Fn() -> Vec<f32>,
}

impl<'a> StepBatch<'a> {
    /// A batch whose network estimates `x̂_0` are read by `estimates` (called only by a
    /// coupling that needs them, since reading them may copy from the device).
    pub fn new(
        indices: &'a [usize],
        examples: &'a [f32],
        anchors: &'a [f32],
        estimates: &'a dyn Fn() -> Vec<f32>,
    ) -> Self {
        StepBatch {
            indices,
            examples,
            anchors,
            estimates,
        }
    }

    /// The network's estimates `x̂_0` of the examples at this step (before its update).
    pub fn estimates(&self) -> Vec<f32> {
        (self.estimates)()
    }
}

/// How each training example gets its anchor, how it evolves and what sampling feeds.
///
/// The trainer calls [`law`](Self::law) and [`build`](Self::build) once when a run starts,
/// [`update`](Self::update) after every step (its anchors, if any, replace the batch's in the
/// store), and at the start of every epoch for which [`rebuilds_at`](Self::rebuilds_at) holds,
/// `build` again from a random stream of that epoch. Everything a coupling decides is a function
/// of its arguments, so a resumed run repeats an uninterrupted one exactly.
///
/// `examples/custom_coupling.rs` implements one outside the crate.
pub trait Coupling: Send + Sync + std::fmt::Debug {
    /// A short name, recorded in checkpoints: a run resumes only with a coupling of its name.
    fn name(&self) -> &str;

    /// The law of the anchors, fitted to `data` if it depends on it: what [`build`](Self::build)
    /// draws from and what sampling feeds as the first anchor.
    fn law(&self, data: &Dataset) -> Result<AnchorLaw>;

    /// The store of one anchor per example of `data`, kept where `spec` says; `None` when the
    /// coupling has no anchors (the network's anchor input is then zero). `law` is what
    /// [`law`](Self::law) returned for this run.
    fn build(
        &self,
        data: &Dataset,
        law: &AnchorLaw,
        spec: StoreSpec<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Option<AnchorStore>>;

    /// Whether the loss has the anchor term `d(x̂, a)`, weighted by `1 − w`
    /// ([`Weighting`](crate::train::Weighting)); without it the data term has weight 1.
    fn uses_anchor_term(&self) -> bool;

    /// The batch's new anchors after a step (`None`: they stay). Default: they stay.
    fn update(&self, batch: &StepBatch<'_>) -> Result<Option<Vec<f32>>> {
        let _ = batch;
        Ok(None)
    }

    /// How a step uses the anchors. Default: [`AnchorRole::Input`].
    fn anchor_role(&self) -> AnchorRole {
        AnchorRole::Input
    }

    /// Whether the store is built anew at the start of `epoch` (≥ 1). Default: never.
    fn rebuilds_at(&self, epoch: usize) -> bool {
        let _ = epoch;
        false
    }
}

/// Whether a store matched anew every `refresh_epochs` epochs (0: never) is rebuilt at `epoch`.
fn refresh_due(refresh_epochs: usize, epoch: usize) -> bool {
    refresh_epochs > 0 && epoch.is_multiple_of(refresh_epochs)
}

/// `N(0, scale²·I)` anchors for every example: the start of the Gaussian couplings.
fn gaussian_store(
    data: &Dataset,
    scale: f64,
    spec: StoreSpec<'_>,
    rng: &mut dyn Rng,
) -> Result<Option<AnchorStore>> {
    AnchorStore::gaussian_in(
        data.len(),
        data.dim(),
        scale,
        spec.storage,
        spec.backing,
        rng,
    )
    .map(Some)
}
