//! Given anchors: every example paired with an anchor computed before training, such as the
//! latent a teacher's probability-flow ODE maps it to (generated pairs: prior draws integrated
//! to examples; encoded pairs: examples integrated back to the prior). The pairing is exact and
//! deterministic, so the one-step map it defines is a function of the anchor: the kind of
//! coupling under which a one-step estimate can be sharp (docs/evidence.md).

use super::{AnchorLaw, AnchorRole, AnchorStore, Coupling, StoreSpec};
use crate::data::Dataset;
use crate::error::{Error, Result};
use rand::Rng;
use std::sync::Arc;

/// One given anchor per example, never changed; the loss has the data term only.
///
/// ```
/// use integration_flow::coupling::{AnchorLaw, AnchorRole, Coupling, PairedAnchors};
/// use integration_flow::data::Dataset;
///
/// // Two examples and the latents an ODE mapped them to.
/// let latents = Dataset::new(vec![0.3, -1.2, 0.8, 0.1], 2)?;
/// let coupling = PairedAnchors::generated(latents);
/// assert_eq!(coupling.name(), "generated");
/// assert_eq!(coupling.anchor_role(), AnchorRole::Noise);
/// let data = Dataset::new(vec![1.0, 0.0, 0.0, 1.0], 2)?;
/// assert_eq!(coupling.law(&data)?, AnchorLaw::Zero);
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PairedAnchors {
    name: String,
    anchors: Arc<Dataset>,
    role: AnchorRole,
    law: AnchorLaw,
}

impl PairedAnchors {
    /// Example `i` gets row `i` of `anchors`; `role` says how a step uses it and `law` is what
    /// sampling feeds as the anchor (with [`AnchorRole::Noise`] always [`AnchorLaw::Zero`]: the
    /// network's anchor input is zero in training). `name` is recorded in checkpoints (a run resumes only
    /// with a coupling of the same name).
    pub fn new(
        name: impl Into<String>,
        anchors: Dataset,
        role: AnchorRole,
        law: AnchorLaw,
    ) -> Self {
        PairedAnchors {
            name: name.into(),
            anchors: Arc::new(anchors),
            role,
            law,
        }
    }

    /// Generated pairs: the examples are a teacher's ODE solutions and `latents` the path noise
    /// each started from ([`sample::ode_pairs`](crate::sample::ode_pairs)). The latent is the
    /// path's noise ([`AnchorRole::Noise`]), so at `t_max` the network sees it as `x_T` and
    /// sampling from the prior needs no anchor.
    pub fn generated(latents: Dataset) -> Self {
        Self::new("generated", latents, AnchorRole::Noise, AnchorLaw::Zero)
    }

    /// Encoded pairs: the examples are training data and `latents` the path noise a teacher's
    /// ODE, integrated backwards, maps each to ([`sample::encoded_pairs`](crate::sample::encoded_pairs));
    /// as the path's noise, like [`generated`](Self::generated).
    pub fn encoded(latents: Dataset) -> Self {
        Self::new("encoded", latents, AnchorRole::Noise, AnchorLaw::Zero)
    }

    /// A mixture of the two: the examples are generated samples followed by training data,
    /// `latents` their path noise (each sample's prior draw, then each example's encoding).
    pub fn mixed(latents: Dataset) -> Self {
        Self::new("mixed", latents, AnchorRole::Noise, AnchorLaw::Zero)
    }

    /// The anchors, one row per example.
    pub fn anchors(&self) -> &Dataset {
        &self.anchors
    }
}

impl Coupling for PairedAnchors {
    fn name(&self) -> &str {
        &self.name
    }

    fn law(&self, _data: &Dataset) -> Result<AnchorLaw> {
        // With the anchor as the path's noise the network never sees an anchor input.
        Ok(match self.role {
            AnchorRole::Noise => AnchorLaw::Zero,
            AnchorRole::Input => self.law.clone(),
        })
    }

    fn build(
        &self,
        data: &Dataset,
        _law: &AnchorLaw,
        spec: StoreSpec<'_>,
        _rng: &mut dyn Rng,
    ) -> Result<Option<AnchorStore>> {
        let (given, wanted) = (
            [self.anchors.len(), self.anchors.dim()],
            [data.len(), data.dim()],
        );
        if given != wanted {
            return Err(Error::ShapeMismatch {
                context: "PairedAnchors: one anchor per example",
                expected: format!("{}×{} anchors", wanted[0], wanted[1]),
                found: format!("{}×{}", given[0], given[1]),
            });
        }
        let store =
            AnchorStore::from_values(self.anchors.values().to_vec(), data.dim(), spec.storage)?;
        store.into_backing(spec.backing).map(Some)
    }

    fn uses_anchor_term(&self) -> bool {
        false
    }

    fn anchor_role(&self) -> AnchorRole {
        self.role
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coupling::{AnchorBacking, AnchorStorage};
    use rand::SeedableRng;

    /// `coupling.build` on `data`, in memory, f32.
    fn build(coupling: &PairedAnchors, data: &Dataset) -> Result<Option<AnchorStore>> {
        let spec = StoreSpec {
            storage: AnchorStorage::F32,
            backing: &AnchorBacking::Memory,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        coupling.build(data, &AnchorLaw::Zero, spec, &mut rng)
    }

    #[test]
    fn the_store_holds_the_given_anchors_in_order() {
        let latents = Dataset::new((0..12).map(|v| v as f32).collect(), 3).unwrap();
        let data = Dataset::new(vec![0.5; 12], 3).unwrap();
        let coupling = PairedAnchors::generated(latents);
        let store = build(&coupling, &data).unwrap().unwrap();
        assert_eq!(
            store.get(&[2, 0]).unwrap(),
            vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0]
        );
        assert!(!coupling.uses_anchor_term());
    }

    #[test]
    fn anchors_of_another_shape_are_refused() {
        let latents = Dataset::new(vec![0.0; 8], 2).unwrap();
        let data = Dataset::new(vec![0.0; 9], 3).unwrap();
        let coupling = PairedAnchors::new("x", latents, AnchorRole::Input, AnchorLaw::Zero);
        let err = build(&coupling, &data).unwrap_err();
        assert!(err.to_string().contains("3×3 anchors"), "{err}");
    }
}
