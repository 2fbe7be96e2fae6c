//! Anchors drawn in the data's principal subspace and matched to the examples by optimal
//! transport on their whitened principal coordinates.

use super::{refresh_due, AnchorLaw, AnchorStore, Coupling, StoreSpec, SubspaceLaw};
use crate::data::Dataset;
use crate::error::{Error, Result};
use rand::Rng;
use std::sync::Arc;

/// Anchors from a [`SubspaceLaw`] fitted to the data along its top `dims` principal
/// directions, assigned to the examples in random chunks of `chunk` by optimal transport on
/// their codes ([`AnchorStore::optimal_transport_subspace`]); frozen, or matched anew every
/// `refresh_epochs` epochs. Data term only. For images, where isotropic anchors pair almost at
/// random.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimalTransportSubspace {
    /// Principal directions of the law.
    pub dims: usize,
    /// Examples per assignment.
    pub chunk: usize,
    /// Match anew every this many epochs (0: never).
    pub refresh_epochs: usize,
}

impl Coupling for OptimalTransportSubspace {
    fn name(&self) -> &str {
        "ot_subspace"
    }

    fn law(&self, data: &Dataset) -> Result<AnchorLaw> {
        Ok(AnchorLaw::Subspace {
            law: Arc::new(SubspaceLaw::fit(data, self.dims)?),
        })
    }

    fn build(
        &self,
        data: &Dataset,
        law: &AnchorLaw,
        spec: StoreSpec<'_>,
        rng: &mut dyn Rng,
    ) -> Result<Option<AnchorStore>> {
        let law = match law {
            AnchorLaw::Subspace { law } => law,
            AnchorLaw::Gaussian { .. } | AnchorLaw::Zero => {
                return Err(Error::InvalidArgument {
                    name: "law",
                    reason: format!(
                        "the ot_subspace coupling draws from a subspace law, not {law:?}"
                    ),
                })
            }
        };
        AnchorStore::optimal_transport_subspace(
            data,
            law,
            self.chunk,
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
