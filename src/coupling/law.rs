//! The anchor law: what the network receives as its first anchor at sampling.

use super::SubspaceLaw;
use crate::error::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the network receives as its anchor when nothing better is known (at sampling): a
/// draw from the anchor law the model was trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AnchorLaw {
    /// `N(0, scale²·I)`: random and optimal-transport anchors.
    Gaussian {
        /// Standard deviation.
        scale: f64,
    },
    /// A Gaussian fitted to the data in its top principal directions: anchors are smooth
    /// sketches of examples (see [`SubspaceLaw`]).
    Subspace {
        /// The law.
        law: Arc<SubspaceLaw>,
    },
    /// Zeros: the anchor input is switched off (the plain denoiser).
    Zero,
}

impl AnchorLaw {
    /// `n` draws of `dim` values, on the host. A subspace law of another dimension is an
    /// error.
    pub fn sample(&self, rng: &mut dyn Rng, n: usize, dim: usize) -> Result<Vec<f32>> {
        if let AnchorLaw::Subspace { law } = self {
            if law.dim() != dim {
                return Err(Error::ShapeMismatch {
                    context: "AnchorLaw::sample",
                    expected: format!("{dim} values per anchor"),
                    found: format!("a subspace law of {} values", law.dim()),
                });
            }
        }
        Ok(match self {
            AnchorLaw::Gaussian { scale } => (0..n * dim)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    (z * scale) as f32
                })
                .collect(),
            AnchorLaw::Subspace { law } => (0..n)
                .flat_map(|_| law.compose_unchecked(&law.draw(rng)))
                .collect(),
            AnchorLaw::Zero => vec![0.0; n * dim],
        })
    }
}
