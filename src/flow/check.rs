//! A self-check for flows, for the crate's families and for the ones users write.
//!
//! It evaluates the flow the way training and sampling use it and compares against what must
//! hold for any family of the form `x_t = α·x_0 + σ·n`:
//!
//! | item | what it measures |
//! |---|---|
//! | `finite` | α, σ, α', σ' are finite on the range, σ ≥ 0 |
//! | `alpha_dot`, `sigma_dot` | the derivatives against central finite differences (host, f64) |
//! | `velocity` | the tensor ODE velocity given the true `x_0` against central finite differences of the tensor `x_t` along a fixed `(x_0, noise)` path, on the chosen backend |
//! | `data_end` | `E‖x_{t_min} − x_0‖² / E‖x_0‖²`: how far the data end is from the data |
//! | `prior_end` | the marginal variance at `t_max` against [`prior_variance`](ProbabilityFlowExt::prior_variance) |
//! | `noise_to_signal` | σ/α increases strictly with t (training-time sampling needs it) |
//! | `time_inverse` | [`time_at_noise_to_signal`](ProbabilityFlow::time_at_noise_to_signal) inverts σ/α |
//! | `prior_variance` | sampled prior variance against the declared one (statistical: its tolerance is 5 standard errors) |

use super::{ProbabilityFlow, ProbabilityFlowExt};
use crate::error::{Error, Result};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Tolerance on the relative error of every deterministic item when the backend computes in
/// f64 (and for the host-side items always).
pub const F64_TOLERANCE: f64 = 1e-3;
/// Tolerance on the tensor `velocity` item when the backend has only f32: central differences
/// with step 1e-3 of the range lose about 1e-4 to rounding and truncation.
pub const F32_TOLERANCE: f64 = 1e-2;

/// Settings of [`check`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckConfig {
    /// Coordinates per example.
    pub dim: usize,
    /// Examples on the fixed `(x_0, noise)` path.
    pub batch: usize,
    /// Interior times at which derivatives are compared (evenly spaced, endpoints excluded).
    pub points: usize,
    /// Standard deviation of the synthetic data `x_0 ~ N(0, data_std²)`.
    pub data_std: f64,
    /// Prior draws for the sampled prior variance.
    pub prior_samples: usize,
    /// Seed of every random draw in the check.
    pub seed: u64,
    /// Run the tensor items in f64 where the backend supports it (else in f32).
    pub allow_f64: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            dim: 16,
            batch: 8,
            points: 33,
            data_std: 1.0,
            prior_samples: 8192,
            seed: 0,
            allow_f64: true,
        }
    }
}

/// One measured item of a [`CheckReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckItem {
    /// Short name (see the module docs).
    pub name: String,
    /// The measured relative error.
    pub relative_error: f64,
    /// The largest error that passes.
    pub tolerance: f64,
    /// Whether the error is statistical (a sampled estimate) rather than numerical.
    pub statistical: bool,
    /// Where the worst error occurred, or what failed.
    pub detail: String,
}

impl CheckItem {
    /// Whether the item is within its tolerance (NaN fails).
    pub fn passed(&self) -> bool {
        self.relative_error <= self.tolerance
    }
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The flow's name.
    pub flow: String,
    /// The float type the tensor items ran in (`"f64"` or `"f32"`).
    pub precision: String,
    /// Every item measured.
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// Whether every item passed.
    pub fn passed(&self) -> bool {
        self.items.iter().all(CheckItem::passed)
    }

    /// The worst relative error among the numerical (non-statistical) items, and its item.
    pub fn worst(&self) -> Option<&CheckItem> {
        self.items
            .iter()
            .filter(|i| !i.statistical)
            .max_by(|a, b| a.relative_error.total_cmp(&b.relative_error))
    }

    /// The worst relative error among the numerical items (infinite if one is NaN).
    pub fn worst_relative_error(&self) -> f64 {
        self.worst().map_or(0.0, |i| {
            if i.relative_error.is_nan() {
                f64::INFINITY
            } else {
                i.relative_error
            }
        })
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "flow check: {} ({} tensors)", self.flow, self.precision)?;
        for item in &self.items {
            writeln!(
                f,
                "  {:<16} {:>10.3e}  (tolerance {:.0e}{})  {}  {}",
                item.name,
                item.relative_error,
                item.tolerance,
                if item.statistical { ", sampled" } else { "" },
                if item.passed() { "ok  " } else { "FAIL" },
                item.detail
            )?;
        }
        let worst = self.worst();
        write!(
            f,
            "  worst relative error {:.3e} ({}): {}",
            self.worst_relative_error(),
            worst.map_or("-", |i| i.name.as_str()),
            if self.passed() { "passed" } else { "FAILED" }
        )
    }
}

/// Checks a flow's math (see the module docs for the items) and returns the report; the
/// tensor items run on backend `B`, in f64 where `B` supports it.
///
/// Errors only on an unusable configuration or a flow whose methods fail outright; numerical
/// disagreement is reported in the items, not as an error.
///
/// ```
/// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
/// use integration_flow::backend::Cpu;
/// use integration_flow::flow::{check, CheckConfig, VeConfig};
///
/// let ve = VeConfig::default().init()?;
/// let report = check::<Cpu, _>(&ve, &Default::default(), &CheckConfig::default())?;
/// println!("{report}");
/// assert!(report.passed());
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn check<B: Backend, F: ProbabilityFlow + ?Sized>(
    flow: &F,
    device: &B::Device,
    config: &CheckConfig,
) -> Result<CheckReport> {
    validate(config)?;
    let range = flow.time_range();
    if !(range.min.is_finite() && range.max.is_finite() && range.min < range.max) {
        return Err(Error::InvalidArgument {
            name: "flow",
            reason: format!(
                "time range [{}, {}] is not a finite, non-empty interval",
                range.min, range.max
            ),
        });
    }
    let f64_tensors = config.allow_f64 && B::supports_dtype(device, DType::F64);
    let dtype = if f64_tensors { DType::F64 } else { DType::F32 };
    let grid: Vec<f64> = (1..=config.points)
        .map(|k| range.min + range.len() * k as f64 / (config.points + 1) as f64)
        .collect();
    let s = config.data_std;
    let nv = flow.noise_variance();

    let mut items = vec![finite(flow, &grid)];

    // Derivatives against central differences, scaled by the rms velocity at each time.
    let h = 1e-5 * range.len();
    let velocity_scale =
        |t: f64| (flow.alpha_dot(t).powi(2) * s * s + flow.sigma_dot(t).powi(2) * nv).sqrt();
    let derivative_item =
        |name: &str, value: &dyn Fn(f64) -> f64, derivative: &dyn Fn(f64) -> f64| {
            let (err, at) = worst_over(&grid, |k| {
                let t = grid[k];
                let fd = (value(t + h) - value(t - h)) / (2.0 * h);
                (derivative(t) - fd).abs() / velocity_scale(t).max(f64::MIN_POSITIVE)
            });
            item(
                name,
                err,
                F64_TOLERANCE,
                false,
                format!("worst at t = {at:.4}"),
            )
        };
    items.push(derivative_item("alpha_dot", &|t| flow.alpha(t), &|t| {
        flow.alpha_dot(t)
    }));
    items.push(derivative_item("sigma_dot", &|t| flow.sigma(t), &|t| {
        flow.sigma_dot(t)
    }));

    items.push(tensor_velocity::<B, F>(flow, device, config, &grid, dtype)?);

    let (a0, s0) = (flow.alpha(range.min), flow.sigma(range.min));
    let data_end = ((a0 - 1.0).powi(2) * s * s + s0 * s0 * nv) / (s * s);
    items.push(item(
        "data_end",
        data_end,
        F64_TOLERANCE,
        false,
        format!("α(t_min) = {a0:.6}, σ(t_min) = {s0:.3e}"),
    ));

    let (a1, s1) = (flow.alpha(range.max), flow.sigma(range.max));
    let prior_var = flow.prior_variance();
    let marginal = a1 * a1 * s * s + s1 * s1 * nv;
    items.push(item(
        "prior_end",
        (marginal - prior_var).abs() / prior_var,
        F64_TOLERANCE,
        false,
        format!("α(t_max) = {a1:.3e}, σ(t_max) = {s1:.4}, prior variance {prior_var:.4}"),
    ));

    let mut times = vec![range.min];
    times.extend(&grid);
    times.push(range.max);
    let ratios: Vec<f64> = times.iter().map(|&t| flow.noise_to_signal(t)).collect();
    let not_increasing = ratios
        .windows(2)
        .position(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater));
    items.push(match not_increasing {
        None => item("noise_to_signal", 0.0, 0.0, false, "increasing".into()),
        Some(i) => item(
            "noise_to_signal",
            f64::INFINITY,
            0.0,
            false,
            format!(
                "σ/α = {} at t = {} is not above {} at t = {}",
                ratios[i + 1],
                times[i + 1],
                ratios[i],
                times[i]
            ),
        ),
    });

    let (err, at) = worst_over(&grid, |k| {
        let t = grid[k];
        (flow.time_at_noise_to_signal(flow.noise_to_signal(t)) - t).abs() / range.len()
    });
    items.push(item(
        "time_inverse",
        err,
        F64_TOLERANCE,
        false,
        format!("worst at t = {at:.4}"),
    ));

    items.push(sampled_prior_variance(flow, config)?);

    Ok(CheckReport {
        flow: flow.name().to_string(),
        precision: if f64_tensors { "f64" } else { "f32" }.into(),
        items,
    })
}

pub(crate) fn validate(config: &CheckConfig) -> Result<()> {
    const NAME: &str = "CheckConfig";
    for (field, value) in [
        ("dim", config.dim),
        ("batch", config.batch),
        ("points", config.points),
        ("prior_samples", config.prior_samples),
    ] {
        if value == 0 {
            return Err(crate::error::invalid_config(
                NAME,
                field,
                "must be at least 1",
            ));
        }
    }
    if !(config.data_std.is_finite() && config.data_std > 0.0) {
        return Err(crate::error::invalid_config(
            NAME,
            "data_std",
            format!("must be finite and positive, got {}", config.data_std),
        ));
    }
    Ok(())
}

fn item(
    name: &str,
    relative_error: f64,
    tolerance: f64,
    statistical: bool,
    detail: String,
) -> CheckItem {
    CheckItem {
        name: name.into(),
        relative_error,
        tolerance,
        statistical,
        detail,
    }
}

/// The largest value of `error(k)` over the grid times `grid[k]` and the time where it
/// occurred; a NaN error is the largest.
fn worst_over(grid: &[f64], error: impl Fn(usize) -> f64) -> (f64, f64) {
    let mut worst = (0.0, grid[0]);
    for (k, &t) in grid.iter().enumerate() {
        let e = error(k);
        if e.is_nan() {
            return (f64::NAN, t);
        }
        if e > worst.0 {
            worst = (e, t);
        }
    }
    worst
}

fn finite<F: ProbabilityFlow + ?Sized>(flow: &F, grid: &[f64]) -> CheckItem {
    let range = flow.time_range();
    let mut bad = None;
    for &t in [range.min, range.max].iter().chain(grid) {
        let (a, s) = (flow.alpha(t), flow.sigma(t));
        if !(a.is_finite() && s.is_finite() && s >= 0.0) {
            bad = Some(format!("α = {a}, σ = {s} at t = {t}"));
            break;
        }
    }
    for &t in grid {
        if bad.is_some() {
            break;
        }
        let (a, s) = (flow.alpha_dot(t), flow.sigma_dot(t));
        if !(a.is_finite() && s.is_finite()) {
            bad = Some(format!("α' = {a}, σ' = {s} at t = {t}"));
        }
    }
    match bad {
        None => item("finite", 0.0, 0.0, false, "all coefficients finite".into()),
        Some(detail) => item("finite", f64::INFINITY, 0.0, false, detail),
    }
}

/// The tensor velocity given the true `x_0` against central differences of the tensor `x_t`,
/// for all grid times in one batch of `points × batch` rows.
fn tensor_velocity<B: Backend, F: ProbabilityFlow + ?Sized>(
    flow: &F,
    device: &B::Device,
    config: &CheckConfig,
    grid: &[f64],
    dtype: DType,
) -> Result<CheckItem> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let (rows_per_t, dim) = (config.batch, config.dim);
    let normal = Normal::new(0.0, config.data_std).map_err(|e| Error::InvalidArgument {
        name: "data_std",
        reason: e.to_string(),
    })?;
    let x0: Vec<f64> = (0..rows_per_t * dim)
        .map(|_| normal.sample(&mut rng))
        .collect();
    let noise = flow.sample_noise(&mut rng, rows_per_t, dim)?;
    let rows = grid.len() * rows_per_t;
    let tile = |values: Vec<f64>| -> Tensor<B, 2> {
        let all: Vec<f64> = (0..grid.len())
            .flat_map(|_| values.iter().copied())
            .collect();
        Tensor::from_data(TensorData::new(all, [rows, dim]), (device, dtype))
    };
    let x0 = tile(x0);
    let noise = tile(noise.into_iter().map(f64::from).collect());
    let f64_tensors = dtype == DType::F64;
    let h = if f64_tensors { 1e-5 } else { 1e-3 } * flow.time_range().len();
    let per_row = |shift: f64| -> Vec<f64> {
        grid.iter()
            .flat_map(|&t| std::iter::repeat_n(t + shift, rows_per_t))
            .collect()
    };
    let x_plus = flow.interpolate(x0.clone(), noise.clone(), &per_row(h))?;
    let x_minus = flow.interpolate(x0.clone(), noise.clone(), &per_row(-h))?;
    let x_t = flow.interpolate(x0.clone(), noise, &per_row(0.0))?;
    let v = flow.velocity(x_t, x0, &per_row(0.0))?;
    let fd = (x_plus - x_minus).div_scalar(2.0 * h);
    let v: Vec<f64> = v.into_data().iter::<f64>().collect();
    let fd: Vec<f64> = fd.into_data().iter::<f64>().collect();
    let block = rows_per_t * dim;
    let (err, at) = worst_over(grid, |k| {
        let (vk, fk) = (
            &v[k * block..(k + 1) * block],
            &fd[k * block..(k + 1) * block],
        );
        let diff = vk
            .iter()
            .zip(fk)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = vk.iter().map(|a| a.abs()).fold(0.0, f64::max);
        diff / scale.max(f64::MIN_POSITIVE)
    });
    let tolerance = if f64_tensors {
        F64_TOLERANCE
    } else {
        F32_TOLERANCE
    };
    Ok(item(
        "velocity",
        err,
        tolerance,
        false,
        format!("worst at t = {at:.4}"),
    ))
}

fn sampled_prior_variance<F: ProbabilityFlow + ?Sized>(
    flow: &F,
    config: &CheckConfig,
) -> Result<CheckItem> {
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(1));
    let prior = flow.sample_prior(&mut rng, config.prior_samples, config.dim)?;
    let m = prior.len() as f64;
    let squares = prior.iter().map(|&x| f64::from(x) * f64::from(x));
    let mean_sq = squares.clone().sum::<f64>() / m;
    let var_sq = squares.map(|q| (q - mean_sq).powi(2)).sum::<f64>() / (m - 1.0).max(1.0);
    let declared = flow.prior_variance();
    let standard_error = (var_sq / m).sqrt() / declared;
    Ok(item(
        "prior_variance",
        (mean_sq - declared).abs() / declared,
        5.0 * standard_error,
        true,
        format!(
            "sampled {mean_sq:.5} vs declared {declared:.5} over {} values",
            prior.len()
        ),
    ))
}
