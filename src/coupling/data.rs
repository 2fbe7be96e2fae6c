//! The released code's rule: after each step an example's anchor becomes the example itself.

use super::{gaussian_store, AnchorLaw, AnchorStore, Coupling, StepBatch, StoreSpec};
use crate::data::Dataset;
use crate::error::Result;
use rand::Rng;

/// Anchors start as `N(0, scale²·I)` draws and become their example `x_0` after its first
/// step, so from the second epoch on the target is in the input; the loss has the anchor term.
/// Kept for comparison: it does not generate (docs/evidence.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataAnchors {
    /// Standard deviation of the initial anchors and of the sampling law.
    pub scale: f64,
}

impl Coupling for DataAnchors {
    fn name(&self) -> &str {
        "data"
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
        Ok(Some(batch.examples.to_vec()))
    }
}
