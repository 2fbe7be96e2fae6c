//! Distances between sample sets built on pairwise distances: energy distance, MMD, and the
//! nearest-neighbour distance to a reference set.

use crate::error::{Error, Result};

/// Checks that `set` is a non-empty, finite `[n, dim]` array and returns `n`.
pub(crate) fn rows(context: &'static str, set: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 || set.is_empty() || !set.len().is_multiple_of(dim) {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("a non-empty multiple of dim = {dim} values"),
            found: format!("{} values", set.len()),
        });
    }
    if let Some(v) = set.iter().find(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            context,
            value: f64::from(*v),
        });
    }
    Ok(set.len() / dim)
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

/// Mean of `f(|x − y|²)` over pairs `x ∈ a`, `y ∈ b`; with `same`, over `x ≠ y` of one set.
fn mean_pairwise(a: &[f32], b: &[f32], dim: usize, same: bool, f: impl Fn(f64) -> f64) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    for (i, x) in a.chunks_exact(dim).enumerate() {
        for (j, y) in b.chunks_exact(dim).enumerate() {
            if same && i == j {
                continue;
            }
            sum += f(squared_distance(x, y));
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// Energy distance `2·E|X − Y| − E|X − X'| − E|Y − Y'|` (the squared form, ≥ 0 in
/// expectation; 0 for identical laws), with the within-set means over distinct pairs.
///
/// ```
/// use integration_flow::metrics::energy_distance;
/// // Point masses at distance d: 2·d.
/// let e = energy_distance(&[0.0, 0.0], &[3.0, 4.0], 2)?;
/// assert!((e - 10.0).abs() < 1e-9);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn energy_distance(a: &[f32], b: &[f32], dim: usize) -> Result<f64> {
    rows("energy_distance (a)", a, dim)?;
    rows("energy_distance (b)", b, dim)?;
    let cross = mean_pairwise(a, b, dim, false, f64::sqrt);
    let within_a = mean_pairwise(a, a, dim, true, f64::sqrt);
    let within_b = mean_pairwise(b, b, dim, true, f64::sqrt);
    Ok(2.0 * cross - within_a - within_b)
}

/// Default RBF bandwidths of [`mmd`], in data units.
pub const MMD_BANDWIDTHS: [f64; 5] = [0.1, 0.3, 1.0, 3.0, 10.0];

/// Squared maximum mean discrepancy with the kernel `Σ_h exp(−|x − y|²/(2h²))` over the
/// `bandwidths` (unbiased: within-set means over distinct pairs).
///
/// ```
/// use integration_flow::metrics::{mmd, MMD_BANDWIDTHS};
/// let a = [0.0f32, 0.0, 1.0, 1.0, 2.0, 0.5];
/// let near = [0.1f32, 0.0, 1.0, 1.1, 2.0, 0.4];
/// let far = [5.0f32, 5.0, 6.0, 6.0, 7.0, 5.5];
/// assert!(mmd(&a, &far, 2, &MMD_BANDWIDTHS)? > mmd(&a, &near, 2, &MMD_BANDWIDTHS)?);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn mmd(a: &[f32], b: &[f32], dim: usize, bandwidths: &[f64]) -> Result<f64> {
    rows("mmd (a)", a, dim)?;
    rows("mmd (b)", b, dim)?;
    if bandwidths.is_empty() || bandwidths.iter().any(|h| !(h.is_finite() && *h > 0.0)) {
        return Err(Error::InvalidArgument {
            name: "bandwidths",
            reason: format!("need at least one finite, positive bandwidth, got {bandwidths:?}"),
        });
    }
    let kernel = |d2: f64| {
        bandwidths
            .iter()
            .map(|h| (-d2 / (2.0 * h * h)).exp())
            .sum::<f64>()
    };
    let kaa = mean_pairwise(a, a, dim, true, kernel);
    let kbb = mean_pairwise(b, b, dim, true, kernel);
    let kab = mean_pairwise(a, b, dim, false, kernel);
    Ok(kaa + kbb - 2.0 * kab)
}

/// Mean Euclidean distance from each sample to its nearest point of `reference` (e.g. the
/// training set). Compare with the same number for fresh data: samples much closer to the
/// training set than fresh data are memorised.
///
/// ```
/// use integration_flow::metrics::nearest_neighbour_distance;
/// let d = nearest_neighbour_distance(&[0.0, 0.0, 5.0, 0.0], &[1.0, 0.0, 4.0, 0.0], 2)?;
/// assert!((d - 1.0).abs() < 1e-12);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn nearest_neighbour_distance(samples: &[f32], reference: &[f32], dim: usize) -> Result<f64> {
    let n = rows("nearest_neighbour_distance (samples)", samples, dim)?;
    rows("nearest_neighbour_distance (reference)", reference, dim)?;
    let total: f64 = samples
        .chunks_exact(dim)
        .map(|x| {
            reference
                .chunks_exact(dim)
                .map(|y| squared_distance(x, y))
                .fold(f64::INFINITY, f64::min)
                .sqrt()
        })
        .sum();
    Ok(total / n as f64)
}
