//! The serde configuration of the built-in couplings, and the registry that builds them.

use super::{
    AnchorBacking, AnchorStorage, Coupling, DataAnchors, FrozenAnchors, NoAnchors,
    OptimalTransport, OptimalTransportSubspace, PredictionAnchors,
};
use crate::error::{invalid_config, require_finite, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where the anchor of each training example comes from and how it evolves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorPolicy {
    /// The papers' rule: after each step an example's anchor becomes the model's prediction.
    Prediction,
    /// The released DDDM code's rule: the anchor becomes the example itself (the target leaks
    /// into the input).
    Data,
    /// Anchors keep their random initial value: a fixed random coupling.
    Frozen,
    /// Random anchors matched to the examples by optimal transport, then frozen; trained with
    /// the data term only. At sampling a fresh draw is the anchor: a latent code. The default:
    /// in a reference experiment it was the only rule that generated in one step.
    #[default]
    Ot,
    /// No anchor (input zero), data term only: a plain x̂_0 denoiser, the classical baseline.
    Off,
}

/// Where policy `ot` measures the distance between anchors and examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OtSpace {
    /// Squared distance in the data space.
    #[default]
    Data,
    /// Squared distance between projections on the data's top `dims` principal directions
    /// (for high-dimensional data, where pairings in the full space are close to random).
    Pca {
        /// The number of directions, 1 ≤ dims ≤ the data's dimension.
        dims: usize,
    },
}

/// Anchor settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnchorConfig {
    /// The policy.
    pub policy: AnchorPolicy,
    /// Standard deviation of the random anchors, `N(0, scale²·I)`.
    pub scale: f64,
    /// Examples per optimal-transport assignment (policy `ot`); 4096 by default: larger
    /// chunks generate better (docs/evidence.md) and cost O(chunk²) memory, O(chunk³) time.
    pub ot_chunk: usize,
    /// Policy `ot`: draw fresh anchors and match them again every this many epochs (0: never,
    /// the matching stays frozen), so that training sees more of the anchor law sampling feeds.
    pub ot_refresh_epochs: usize,
    /// Policy `ot`: the space of the matching.
    pub ot_space: OtSpace,
    /// Storage of the anchor values.
    pub storage: AnchorStorage,
    /// Where the anchor values live: RAM, or a memory-mapped file for datasets whose anchors
    /// exceed RAM.
    pub backing: AnchorBacking,
    /// Policy `ot`: draw anchors in the data's top `subspace` principal directions (a
    /// [`SubspaceLaw`](super::SubspaceLaw) fitted to the data, matched on its
    /// coordinates; `scale` and `ot_space` are then unused); 0 (the default) draws isotropic
    /// `N(0, scale²·I)` anchors. For images, where isotropic anchors pair almost at random.
    pub subspace: usize,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        AnchorConfig {
            policy: AnchorPolicy::default(),
            scale: 1.0,
            ot_chunk: 4096,
            ot_refresh_epochs: 0,
            ot_space: OtSpace::Data,
            storage: AnchorStorage::F32,
            backing: AnchorBacking::Memory,
            subspace: 0,
        }
    }
}

impl AnchorConfig {
    /// The coupling these settings name. Adding a built-in coupling adds its arm here.
    pub fn coupling(&self) -> Arc<dyn Coupling> {
        match self.policy {
            AnchorPolicy::Prediction => Arc::new(PredictionAnchors { scale: self.scale }),
            AnchorPolicy::Data => Arc::new(DataAnchors { scale: self.scale }),
            AnchorPolicy::Frozen => Arc::new(FrozenAnchors { scale: self.scale }),
            AnchorPolicy::Ot if self.subspace > 0 => Arc::new(OptimalTransportSubspace {
                dims: self.subspace,
                chunk: self.ot_chunk,
                refresh_epochs: self.ot_refresh_epochs,
            }),
            AnchorPolicy::Ot => Arc::new(OptimalTransport {
                scale: self.scale,
                chunk: self.ot_chunk,
                space: self.ot_space,
                refresh_epochs: self.ot_refresh_epochs,
            }),
            AnchorPolicy::Off => Arc::new(NoAnchors),
        }
    }

    /// Checks every value; errors name the field as inside a
    /// [`TrainConfig`](crate::train::TrainConfig) (`anchor.scale`).
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "TrainConfig";
        require_finite(NAME, "anchor.scale", self.scale)?;
        if self.scale <= 0.0 {
            return Err(invalid_config(NAME, "anchor.scale", "must be positive"));
        }
        if self.ot_chunk == 0 {
            return Err(invalid_config(
                NAME,
                "anchor.ot_chunk",
                "must be at least 1",
            ));
        }
        let subspace_allowed = match self.policy {
            AnchorPolicy::Ot | AnchorPolicy::Off => true,
            AnchorPolicy::Prediction | AnchorPolicy::Data | AnchorPolicy::Frozen => false,
        };
        if self.subspace > 0 && !subspace_allowed {
            return Err(invalid_config(
                NAME,
                "anchor.subspace",
                "subspace anchors are matched by optimal transport: use policy `ot`",
            ));
        }
        if let OtSpace::Pca { dims: 0 } = self.ot_space {
            return Err(invalid_config(
                NAME,
                "anchor.ot_space.dims",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
