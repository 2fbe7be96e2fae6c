//! A fixed random coupling: every example keeps its initial random anchor.

use super::{gaussian_store, AnchorLaw, AnchorStore, Coupling, StoreSpec};
use crate::data::Dataset;
use crate::error::Result;
use rand::Rng;

/// One `N(0, scale²·I)` anchor per example, drawn once and never changed; the loss has the
/// anchor term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrozenAnchors {
    /// Standard deviation of the anchors and of the sampling law.
    pub scale: f64,
}

impl Coupling for FrozenAnchors {
    fn name(&self) -> &str {
        "frozen"
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
}
