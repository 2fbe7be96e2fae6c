//! A Gaussian anchor law in the data's top principal directions.

use crate::error::{check_len, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// `mean + Σᵢ zᵢ·sᵢ·pᵢ` with `z ~ N(0, I_k)`: the Gaussian that fits the data along its top `k`
/// principal directions `pᵢ` (standard deviations `sᵢ`), and nothing outside them.
///
/// In high dimension, random isotropic anchors matched to images by optimal transport pair
/// almost at random (most of an anchor is noise no image shares). Anchors drawn in the data's
/// principal subspace are matched on what they carry, and at sampling a fresh draw is a
/// plausible sketch for the network to complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubspaceLaw {
    mean: Vec<f32>,
    basis: Vec<f32>,
    scales: Vec<f64>,
}

impl SubspaceLaw {
    /// Fits the law to `data` along its top `k` principal directions.
    pub fn fit(data: &crate::data::Dataset, k: usize) -> Result<Self> {
        let pca = crate::data::Pca::fit(data, k)?;
        let (mean, _) = data.mean_and_std();
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let centre = pca.project(&mean)?;
        let n = data.len() as f64;
        let mut var = vec![0.0; k];
        for i in 0..data.len() {
            for ((v, c), m) in var.iter_mut().zip(pca.project(data.row(i))?).zip(&centre) {
                *v += (c - m).powi(2) / n;
            }
        }
        let basis = (0..k)
            .flat_map(|i| pca.component(i).unwrap_or_default().to_vec())
            .map(|v| v as f32)
            .collect();
        Ok(SubspaceLaw {
            mean,
            basis,
            scales: var.iter().map(|v| v.sqrt().max(1e-12)).collect(),
        })
    }

    /// Directions.
    pub fn dims(&self) -> usize {
        self.scales.len()
    }

    /// Values per anchor.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// A standard-normal code `z` of `k` values.
    pub fn draw(&self, rng: &mut dyn Rng) -> Vec<f64> {
        (0..self.dims())
            .map(|_| StandardNormal.sample(rng))
            .collect()
    }

    /// The anchor of code `z` (`dims()` values): `mean + Σᵢ zᵢ·sᵢ·pᵢ`.
    pub fn compose(&self, z: &[f64]) -> Result<Vec<f32>> {
        check_len("SubspaceLaw::compose", "code", z.len(), self.dims())?;
        Ok(self.compose_unchecked(z))
    }

    pub(crate) fn compose_unchecked(&self, z: &[f64]) -> Vec<f32> {
        let mut out = self.mean.clone();
        for ((p, &zi), &s) in self.basis.chunks_exact(self.dim()).zip(z).zip(&self.scales) {
            let w = (zi * s) as f32;
            for (o, &pv) in out.iter_mut().zip(p) {
                *o += w * pv;
            }
        }
        out
    }

    /// The whitened coordinates of `x` (`dim()` values): `(pᵢ·(x − mean))/sᵢ`, comparable
    /// with codes `z`.
    pub fn code(&self, x: &[f32]) -> Result<Vec<f64>> {
        check_len("SubspaceLaw::code", "point", x.len(), self.dim())?;
        Ok(self.code_unchecked(x))
    }

    pub(crate) fn code_unchecked(&self, x: &[f32]) -> Vec<f64> {
        self.basis
            .chunks_exact(self.dim())
            .zip(&self.scales)
            .map(|(p, &s)| {
                p.iter()
                    .zip(x)
                    .zip(&self.mean)
                    .map(|((&pv, &xv), &m)| f64::from(pv) * f64::from(xv - m))
                    .sum::<f64>()
                    / s
            })
            .collect()
    }
}
