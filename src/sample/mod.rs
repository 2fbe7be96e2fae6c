//! Samplers (docs/design.md, "One-step sampling"): stateless functions of a model, a count and an RNG.
//!
//! - [`one_step`]: `f(x_T, T, a)`, 1 network call;
//! - [`anchor_iteration`]: the papers' multi-step, `a ← f(x_T, T, a)` k times;
//! - [`renoise`]: consistency-style multi-step, re-noising each estimate to a smaller t;
//! - [`flow_map_jumps`]: deterministic jumps along the ODE by a flow-map network;
//! - [`solve_ode`]: the classical probability-flow ODE solvers (module [`ode`]);
//! - [`ode_pairs`]: prior draws and the samples the ODE maps them to, for distillation.
//!
//! Each returns a [`Generated`] with the number of network evaluations (NFE) it used;
//! [`generate_batched`] makes any count in batches.

pub mod diagnostics;
mod flow_map;
pub mod ode;
mod pairs;

pub use diagnostics::{anchor_convergence, straightness};
pub use flow_map::flow_map_jumps;
pub use ode::{encode_ode, solve_ode, solve_ode_from, OdeSolver};
pub use pairs::{encoded_pairs, ode_pairs, OdePairs};

use crate::error::{Error, Result};
use crate::flow::ProbabilityFlowExt;
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::tensor::{backend::Backend, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Samples and the network evaluations that made them.
#[derive(Clone, Debug)]
pub struct Generated<B: Backend> {
    /// `[n, dim]` samples.
    pub samples: Tensor<B, 2>,
    /// Network evaluations per sample.
    pub nfe: usize,
}

/// One network call from the prior: `f(x_T, T, a)` with `a` from the model's anchor law.
pub fn one_step<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
) -> Result<Generated<B>> {
    anchor_iteration(model, rng, n, 1)
}

/// The papers' multi-step sampler: `a ← f(x_T, T, a)` repeated `k` times (`k` NFE).
pub fn anchor_iteration<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
    k: usize,
) -> Result<Generated<B>> {
    Ok(Generated {
        samples: model.anchor_iteration(rng, n, k)?,
        nfe: k,
    })
}

/// Which anchor the re-noising sampler feeds after the first estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenoiseAnchor {
    /// Keep the first anchor (a latent code, as trained with `ot` anchors).
    #[default]
    Fixed,
    /// Feed the previous estimate.
    Previous,
}

/// Consistency-style multi-step: estimate from the prior, then for each `t` in `times`
/// (decreasing, inside the range) perturb the estimate to `t` with fresh noise and estimate
/// again. NFE = 1 + `times.len()`.
pub fn renoise<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
    times: &[f64],
    anchor: RenoiseAnchor,
) -> Result<Generated<B>> {
    let flow = model.flow().clone();
    let t_max = flow.time_range().max;
    let mut last = t_max;
    for &t in times {
        if !(t < last && flow.time_range().contains(t)) {
            return Err(Error::InvalidArgument {
                name: "times",
                reason: format!(
                    "re-noising times must decrease inside the range and below t_max; {t} does not"
                ),
            });
        }
        last = t;
    }
    let x_t = model.sample_prior(rng, n)?;
    let first_anchor = model.sample_anchor(rng, n)?;
    let mut estimate = model.estimate(x_t, &[t_max], first_anchor.clone())?;
    for &t in times {
        let noise = flow.noise::<B, 2>(rng, [n, model.dim()], &estimate.device())?;
        let x_t = flow.interpolate(estimate.clone(), noise, &[t])?;
        let a = match anchor {
            RenoiseAnchor::Fixed => first_anchor.clone(),
            RenoiseAnchor::Previous => estimate,
        };
        estimate = model.estimate(x_t, &[t], a)?;
    }
    Ok(Generated {
        samples: estimate,
        nfe: 1 + times.len(),
    })
}

/// `steps − 1` re-noising times evenly spaced in t (see [`RenoiseSchedule`] for the default) between the ends (exclusive):
/// `t_max − i·(t_max − t_min)/steps`, i = 1..steps.
pub fn renoise_times(model_range: crate::flow::TimeRange, steps: usize) -> Vec<f64> {
    (1..steps)
        .map(|i| model_range.max - i as f64 * model_range.len() / steps as f64)
        .collect()
}

/// Where the re-noising sampler puts its intermediate steps, as noise-to-signal ratios σ/α
/// (EDM's σ), which mean the same on every flow: `steps − 1` ratios spaced geometrically from
/// `first` down to `last` (just `first` for 2 steps).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenoiseSchedule {
    /// The ratio of the first re-noising (the largest).
    pub first: f64,
    /// The ratio of the last re-noising (the smallest).
    pub last: f64,
}

impl Default for RenoiseSchedule {
    /// `first` 0.5, `last` 0.05: chosen by the re-noising sweep in docs/evidence.md.
    fn default() -> Self {
        RenoiseSchedule {
            first: 0.5,
            last: 0.05,
        }
    }
}

impl RenoiseSchedule {
    /// The `steps − 1` re-noising times of a `steps`-step sampler on `flow`.
    pub fn times(&self, flow: &dyn crate::flow::ProbabilityFlow, steps: usize) -> Result<Vec<f64>> {
        if !(self.first.is_finite() && self.last > 0.0 && self.last <= self.first) {
            return Err(Error::InvalidArgument {
                name: "schedule",
                reason: format!(
                    "need 0 < last ≤ first < ∞, got first {} and last {}",
                    self.first, self.last
                ),
            });
        }
        if steps == 0 {
            return Err(Error::InvalidArgument {
                name: "steps",
                reason: "a sampler needs at least one step".into(),
            });
        }
        let k = steps - 1;
        let mut times: Vec<f64> = (0..k)
            .map(|i| {
                let frac = if k > 1 {
                    i as f64 / (k - 1) as f64
                } else {
                    0.0
                };
                let ratio = self.first * (self.last / self.first).powf(frac);
                flow.time_at_noise_to_signal(ratio)
            })
            .collect();
        // Ratios beyond the flow's range clamp to its ends; keep the times strictly
        // decreasing and below t_max, as `renoise` requires.
        let range = flow.time_range();
        let mut last = range.max;
        for t in &mut times {
            if *t >= last {
                *t = last - 1e-6 * range.len();
            }
            last = *t;
        }
        Ok(times)
    }
}

/// Generates `count` samples in batches of at most `batch` with `sampler(n)`, returning the
/// values (row-major) and the NFE per sample.
pub fn generate_batched<B: Backend>(
    count: usize,
    batch: usize,
    mut sampler: impl FnMut(usize) -> Result<Generated<B>>,
) -> Result<(Vec<f32>, usize)> {
    if count == 0 || batch == 0 {
        return Err(Error::InvalidArgument {
            name: if count == 0 { "count" } else { "batch" },
            reason: "must be at least 1".into(),
        });
    }
    let mut values = Vec::new();
    let mut nfe = 0;
    let mut done = 0;
    while done < count {
        let n = batch.min(count - done);
        let generated = sampler(n)?;
        nfe = generated.nfe;
        values.extend(generated.samples.into_data().iter::<f32>());
        done += n;
    }
    Ok((values, nfe))
}

/// Clamps every value to `[lo, hi]` (e.g. the data range); `lo > hi` or a bound that is not
/// finite is an error.
pub fn clamp<B: Backend>(samples: Tensor<B, 2>, lo: f64, hi: f64) -> Result<Tensor<B, 2>> {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(Error::InvalidArgument {
            name: "lo, hi",
            reason: format!("need finite bounds with lo ≤ hi, got [{lo}, {hi}]"),
        });
    }
    Ok(samples.clamp(lo, hi))
}
