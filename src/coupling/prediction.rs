//! The papers' rule: after each step an example's anchor becomes the network's estimate.

use super::{gaussian_store, AnchorLaw, AnchorStore, Coupling, StepBatch, StoreSpec};
use crate::data::Dataset;
use crate::error::Result;
use rand::Rng;

/// Anchors start as `N(0, scale²·I)` draws and become the network's estimate `x̂_0` of their
/// example after every step; the loss has the anchor term. In a reference experiment on 2-D
/// data the network learned to copy its anchor, so one-step samples stayed the prior
/// (docs/evidence.md): kept for comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictionAnchors {
    /// Standard deviation of the initial anchors and of the sampling law.
    pub scale: f64,
}

impl Coupling for PredictionAnchors {
    fn name(&self) -> &str {
        "prediction"
    }

    fn law(&self, _data: &Dataset) -> Result<AnchorLaw> {
        Ok(AnchorLaw::Gaussian { scale: self.scale })
    }

    fn build(
        &self,
        data: &Dataset,
        _law: &AnchorLaw,
        spec: StoreSpec<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Option<AnchorStore>> {
        gaussian_store(data, self.scale, spec, rng)
    }

    fn uses_anchor_term(&self) -> bool {
        true
    }

    fn update(&self, batch: &StepBatch<'_>) -> Result<Option<Vec<f32>>> {
        Ok(Some(batch.estimates()))
    }
}
