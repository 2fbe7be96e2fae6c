//! No anchors: the plain `x̂_0` denoiser that the classical ODE samplers integrate.

use super::{AnchorLaw, AnchorStore, Coupling, StoreSpec};
use crate::data::Dataset;
use crate::error::Result;
use rand::Rng;

/// No store: the network's anchor input is zero in training and at sampling, and the loss is
/// the data term alone. The baseline of the comparisons.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NoAnchors;

impl Coupling for NoAnchors {
    fn name(&self) -> &str {
        "off"
    }

    fn law(&self, _data: &Dataset) -> Result<AnchorLaw> {
        Ok(AnchorLaw::Zero)
    }

    fn build(
        &self,
        _data: &Dataset,
        _law: &AnchorLaw,
        _spec: StoreSpec<'_>,
        _rng: &mut dyn Rng,
    ) -> Result<Option<AnchorStore>> {
        Ok(None)
    }

    fn uses_anchor_term(&self) -> bool {
        false
    }
}
