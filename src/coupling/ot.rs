//! Random Gaussian anchors matched to the examples by optimal transport (the default).

use super::{refresh_due, AnchorLaw, AnchorStore, Coupling, OtSpace, StoreSpec};
use crate::data::Dataset;
use crate::error::Result;
use rand::Rng;

/// `N(0, scale²·I)` anchors assigned to the examples, in random chunks of `chunk`, so that the
/// total squared distance is least ([`AnchorStore::optimal_transport_in`]); then frozen, or
/// matched anew every `refresh_epochs` epochs. Data term only. At sampling a fresh draw is the
/// anchor: a latent code. In a reference experiment it was the only rule that generated in one
/// step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimalTransport {
    /// Standard deviation of the anchors and of the sampling law.
    pub scale: f64,
    /// Examples per assignment.
    pub chunk: usize,
    /// The space the distances are measured in.
    pub space: OtSpace,
    /// Match anew every this many epochs (0: never).
    pub refresh_epochs: usize,
}

impl Coupling for OptimalTransport {
    fn name(&self) -> &str {
        "ot"
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
        AnchorStore::optimal_transport_in(
            data,
            self.scale,
            self.chunk,
            self.space,
            spec.storage,
            spec.backing,
            rng,
        )
        .map(Some)
    }

    fn uses_anchor_term(&self) -> bool {
        false
    }

    fn rebuilds_at(&self, epoch: usize) -> bool {
        refresh_due(self.refresh_epochs, epoch)
    }
}
