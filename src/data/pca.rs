//! Principal directions of a dataset: the feature space in which anchors can be matched to
//! high-dimensional data (policy `ot` with [`OtSpace::Pca`](crate::coupling::OtSpace)).

use super::Dataset;
use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// The top `k` principal directions of a dataset, orthonormal rows of `dim` values.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    components: Vec<f64>,
    dim: usize,
    k: usize,
}

impl Pca {
    /// Fits the top `k` directions (1 ≤ k ≤ dim) by subspace iteration on the covariance.
    pub fn fit(data: &Dataset, k: usize) -> Result<Self> {
        let dim = data.dim();
        if k == 0 || k > dim {
            return Err(Error::InvalidArgument {
                name: "dims",
                reason: format!("need 1 ≤ dims ≤ {dim} (the data's dimension), got {k}"),
            });
        }
        let n = data.len() as f64;
        let mut mean = vec![0.0f64; dim];
        for row in data.values().chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v) / n;
            }
        }
        // Covariance, dim × dim (symmetric; both halves filled).
        let mut cov = vec![0.0f64; dim * dim];
        let mut centred = vec![0.0f64; dim];
        for row in data.values().chunks_exact(dim) {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = f64::from(v) - m;
            }
            for i in 0..dim {
                let ci = centred[i] / n;
                if ci == 0.0 {
                    continue;
                }
                let out = &mut cov[i * dim..(i + 1) * dim];
                for (o, &cj) in out.iter_mut().zip(&centred) {
                    *o += ci * cj;
                }
            }
        }
        // Subspace iteration from a seeded random start; 200 rounds converge the leading
        // directions far beyond what matching needs.
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut q: Vec<f64> = (0..k * dim)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        orthonormalise(&mut q, dim);
        let mut next = vec![0.0f64; k * dim];
        for _ in 0..200 {
            for (qi, out) in q.chunks_exact(dim).zip(next.chunks_exact_mut(dim)) {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = cov[r * dim..(r + 1) * dim]
                        .iter()
                        .zip(qi)
                        .map(|(a, b)| a * b)
                        .sum();
                }
            }
            std::mem::swap(&mut q, &mut next);
            orthonormalise(&mut q, dim);
        }
        Ok(Pca {
            components: q,
            dim,
            k,
        })
    }

    /// The number of directions.
    pub fn dims(&self) -> usize {
        self.k
    }

    /// Direction `i` (unit length, `dim` values).
    pub fn component(&self, i: usize) -> Option<&[f64]> {
        self.components.get(i * self.dim..(i + 1) * self.dim)
    }

    /// The coordinates of `x` (length `dim`) along the directions (no centring, so that
    /// distances between projections are distances within the subspace).
    pub fn project(&self, x: &[f32]) -> Result<Vec<f64>> {
        crate::error::check_len("Pca::project", "point", x.len(), self.dim)?;
        Ok(self.project_unchecked(x))
    }

    pub(crate) fn project_unchecked(&self, x: &[f32]) -> Vec<f64> {
        self.components
            .chunks_exact(self.dim)
            .map(|c| c.iter().zip(x).map(|(a, &b)| a * f64::from(b)).sum())
            .collect()
    }
}

/// Gram–Schmidt on the rows of `q` (each `dim` long), twice for stability; a row that
/// vanishes is replaced by a unit vector not yet spanned.
fn orthonormalise(q: &mut [f64], dim: usize) {
    let k = q.len() / dim;
    for _ in 0..2 {
        for i in 0..k {
            for j in 0..i {
                let (head, tail) = q.split_at_mut(i * dim);
                let qj = &head[j * dim..(j + 1) * dim];
                let qi = &mut tail[..dim];
                let dot: f64 = qi.iter().zip(qj).map(|(a, b)| a * b).sum();
                for (a, b) in qi.iter_mut().zip(qj) {
                    *a -= dot * b;
                }
            }
            let row = &mut q[i * dim..(i + 1) * dim];
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 1e-300 {
                row.iter_mut().for_each(|v| *v /= norm);
            } else {
                row.iter_mut().for_each(|v| *v = 0.0);
                row[i % dim] = 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stretched_direction_of_an_elongated_cloud() {
        // Points along (3, 4)/5 with spread 10, small noise across it.
        let mut rng = StdRng::seed_from_u64(1);
        let mut values = Vec::new();
        for _ in 0..4000 {
            let a: f64 = StandardNormal.sample(&mut rng);
            let b: f64 = StandardNormal.sample(&mut rng);
            let (u, v) = (10.0 * a, 0.5 * b);
            values.push((0.6 * u - 0.8 * v) as f32);
            values.push((0.8 * u + 0.6 * v) as f32);
        }
        let data = Dataset::new(values, 2).unwrap();
        let pca = Pca::fit(&data, 2).unwrap();
        let c0 = pca.component(0).unwrap();
        assert!((c0[0].abs() - 0.6).abs() < 0.01 && (c0[1].abs() - 0.8).abs() < 0.01);
        let c1 = pca.component(1).unwrap();
        assert!(pca.component(2).is_none());
        assert!(c0.iter().zip(c1).map(|(a, b)| a * b).sum::<f64>().abs() < 1e-9);
        // With every direction, projection keeps distances.
        let (x, y) = ([1.0f32, 2.0], [-3.0f32, 0.5]);
        let (px, py) = (pca.project(&x).unwrap(), pca.project(&y).unwrap());
        assert!(pca.project(&[1.0]).is_err());
        let d2: f64 = px.iter().zip(&py).map(|(a, b)| (a - b).powi(2)).sum();
        assert!((d2 - (16.0 + 2.25)).abs() < 1e-9);
    }

    #[test]
    fn rejects_impossible_dimensions() {
        let data = Dataset::new(vec![0.0, 1.0, 2.0, 3.0], 2).unwrap();
        assert!(Pca::fit(&data, 0).is_err());
        assert!(Pca::fit(&data, 3).is_err());
    }
}
