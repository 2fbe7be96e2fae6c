//! The Fréchet distance between Gaussians fitted to two sets of feature vectors (FID's
//! formula): `|μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2(Σ₁^½ Σ₂ Σ₁^½)^½)`.

use crate::error::{Error, Result};

/// The Fréchet distance between the Gaussians fitted to `a` and `b`, row-major sets of
/// `dim`-vectors with at least two rows each.
///
/// ```
/// use integration_flow::metrics::frechet_distance;
/// // Unit variance along x in both; means 3 apart: distance 9.
/// let a = [-1.0, 0.0, 1.0, 0.0];
/// let b = [2.0, 0.0, 4.0, 0.0];
/// assert!((frechet_distance(&a, &b, 2)? - 9.0).abs() < 1e-9);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> Result<f64> {
    let (mu_a, cov_a) = moments(a, dim, "frechet_distance (a)")?;
    let (mu_b, cov_b) = moments(b, dim, "frechet_distance (b)")?;
    frechet_from_moments(&mu_a, &cov_a, &mu_b, &cov_b)
}

/// Mean and covariance (unbiased, `n − 1`) of `dim`-vectors, the covariance row-major.
pub fn moments(values: &[f32], dim: usize, context: &'static str) -> Result<(Vec<f64>, Vec<f64>)> {
    if dim == 0 || !values.len().is_multiple_of(dim) || values.len() < 2 * dim {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("at least two rows of {dim} values"),
            found: format!("{} values", values.len()),
        });
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            context,
            value: f64::from(*v),
        });
    }
    let n = values.len() / dim;
    let mut mean = vec![0.0; dim];
    for row in values.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0.0; dim * dim];
    let mut centred = vec![0.0; dim];
    for row in values.chunks_exact(dim) {
        for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
            *c = f64::from(v) - m;
        }
        for i in 0..dim {
            let ci = centred[i];
            for j in i..dim {
                cov[i * dim + j] += ci * centred[j];
            }
        }
    }
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] / (n - 1) as f64;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    Ok((mean, cov))
}

/// The Fréchet distance from the moments (covariances row-major, symmetric); the means must
/// have one length `d ≥ 1` and the covariances `d²` values.
pub fn frechet_from_moments(
    mu_a: &[f64],
    cov_a: &[f64],
    mu_b: &[f64],
    cov_b: &[f64],
) -> Result<f64> {
    let dim = mu_a.len();
    if dim == 0 || mu_b.len() != dim || cov_a.len() != dim * dim || cov_b.len() != dim * dim {
        return Err(Error::ShapeMismatch {
            context: "frechet_from_moments",
            expected: format!("means of {dim} ≥ 1 values and covariances of {}", dim * dim),
            found: format!(
                "means of {} and {}, covariances of {} and {}",
                dim,
                mu_b.len(),
                cov_a.len(),
                cov_b.len()
            ),
        });
    }
    let mean_term: f64 = mu_a.iter().zip(mu_b).map(|(x, y)| (x - y).powi(2)).sum();
    let trace = |m: &[f64]| (0..dim).map(|i| m[i * dim + i]).sum::<f64>();
    // tr((Σa^½ Σb Σa^½)^½): the product is symmetric positive semi-definite, so its square root's
    // trace is the sum of the square roots of its eigenvalues.
    let root_a = sqrt_psd(cov_a, dim);
    let product = matmul(&matmul(&root_a, cov_b, dim), &root_a, dim);
    let cross: f64 = symmetric_eigen(&product, dim)
        .0
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum();
    Ok((mean_term + trace(cov_a) + trace(cov_b) - 2.0 * cross).max(0.0))
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues from
/// rounding are taken as zero).
fn sqrt_psd(m: &[f64], n: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(m, n);
    let mut out = vec![0.0; n * n];
    for (k, &l) in values.iter().enumerate() {
        let s = l.max(0.0).sqrt();
        for i in 0..n {
            let vik = vectors[i * n + k] * s;
            for j in 0..n {
                out[i * n + j] += vik * vectors[j * n + k];
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (columns, row-major) of a symmetric matrix by cyclic Jacobi
/// rotations: slow for large `n` but exact to rounding and free of dependencies; FD features
/// have at most a few hundred dimensions.
fn symmetric_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    // Symmetrise against rounding in the inputs.
    for i in 0..n {
        for j in 0..i {
            let v = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = v;
            a[j * n + i] = v;
        }
    }
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let m = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let (values, vectors) = symmetric_eigen(&m, 3);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3)
                    .map(|k| vectors[i * 3 + k] * values[k] * vectors[j * 3 + k])
                    .sum();
                assert!((r - m[i * 3 + j]).abs() < 1e-10);
            }
        }
        let root = sqrt_psd(&m, 3);
        let square = matmul(&root, &root, 3);
        for (x, y) in square.iter().zip(&m) {
            assert!((x - y).abs() < 1e-10);
        }
    }

    #[test]
    fn diagonal_covariances_give_the_closed_form() {
        // N(μa, diag(a)) vs N(μb, diag(b)): |Δμ|² + Σ(√a − √b)².
        let (mu_a, mu_b) = ([0.0, 1.0, 2.0], [1.0, 1.0, 0.0]);
        let (da, db) = ([1.0, 4.0, 9.0], [4.0, 4.0, 1.0]);
        let diag = |d: &[f64; 3]| {
            let mut m = vec![0.0; 9];
            (0..3).for_each(|i| m[i * 3 + i] = d[i]);
            m
        };
        let fd = frechet_from_moments(&mu_a, &diag(&da), &mu_b, &diag(&db)).unwrap();
        assert!(frechet_from_moments(&mu_a, &diag(&da), &mu_b[..2], &diag(&db)).is_err());
        let expected = 1.0 + 4.0 + (1.0 + 0.0 + 4.0);
        assert!((fd - expected).abs() < 1e-9, "{fd} vs {expected}");
    }
}
