//! Sliced Wasserstein-2: the root mean squared 1-D Wasserstein-2 distance over random
//! directions, each computed exactly by sorting.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Exact Wasserstein-2 distance between two 1-D empirical distributions (equal weights within
/// each, any sizes): `sqrt(∫₀¹ (F_a⁻¹(u) − F_b⁻¹(u))² du)`. Sorts its inputs in place. An
/// empty set or a value that is not finite is an error.
///
/// ```
/// use integration_flow::metrics::wasserstein2_1d;
/// let w = wasserstein2_1d(&mut [0.0, 1.0], &mut [2.0, 3.0])?;
/// assert!((w - 2.0).abs() < 1e-12);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn wasserstein2_1d(a: &mut [f64], b: &mut [f64]) -> Result<f64> {
    for (name, set) in [("a", &*a), ("b", &*b)] {
        if set.is_empty() {
            return Err(Error::InvalidArgument {
                name,
                reason: "the set is empty".into(),
            });
        }
        if let Some(&value) = set.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                context: "wasserstein2_1d",
                value,
            });
        }
    }
    Ok(w2_sorted(a, b))
}

/// [`wasserstein2_1d`] of two non-empty finite sets (sorts them).
fn w2_sorted(a: &mut [f64], b: &mut [f64]) -> f64 {
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    // Walk the merged breakpoints of both quantile step functions.
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut u, mut total) = (0.0f64, 0.0f64);
    while i < a.len() && j < b.len() {
        let next_a = (i + 1) as f64 / na;
        let next_b = (j + 1) as f64 / nb;
        let next = next_a.min(next_b);
        total += (next - u) * (a[i] - b[j]).powi(2);
        u = next;
        if next_a <= next {
            i += 1;
        }
        if next_b <= next {
            j += 1;
        }
    }
    total.max(0.0).sqrt()
}

/// Sliced Wasserstein-2 distance between two sample sets (`[n, dim]` row-major, any sizes)
/// over `projections` random unit directions drawn with `seed`:
/// `sqrt(mean_θ W2²(θ·a, θ·b))`.
///
/// For two point masses at distance `d` in `dim` dimensions it is `d/sqrt(dim)`.
///
/// ```
/// use integration_flow::metrics::sliced_wasserstein2;
/// let a = vec![0.0f32, 0.0, 1.0, 1.0];
/// assert!(sliced_wasserstein2(&a, &a, 2, 64, 0)?.abs() < 1e-12);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn sliced_wasserstein2(
    a: &[f32],
    b: &[f32],
    dim: usize,
    projections: usize,
    seed: u64,
) -> Result<f64> {
    super::kernel::rows("sliced_wasserstein2 (a)", a, dim)?;
    super::kernel::rows("sliced_wasserstein2 (b)", b, dim)?;
    if projections == 0 {
        return Err(Error::InvalidArgument {
            name: "projections",
            reason: "must be at least 1".into(),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let project = |set: &[f32], theta: &[f64]| -> Vec<f64> {
        set.chunks(dim)
            .map(|x| x.iter().zip(theta).map(|(&v, t)| f64::from(v) * t).sum())
            .collect()
    };
    let mut sum = 0.0;
    for _ in 0..projections {
        let mut theta: Vec<f64> = (0..dim).map(|_| StandardNormal.sample(&mut rng)).collect();
        let norm = theta
            .iter()
            .map(|t| t * t)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        theta.iter_mut().for_each(|t| *t /= norm);
        // The sets were checked non-empty and finite above.
        sum += w2_sorted(&mut project(a, &theta), &mut project(b, &theta)).powi(2);
    }
    Ok((sum / projections as f64).sqrt())
}
