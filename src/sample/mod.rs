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

/// The re-noising sampler's settings live with the model, whose `generate` uses them.
pub use crate::model::{RenoiseAnchor, RenoiseSchedule};
pub use diagnostics::{anchor_convergence, straightness};
pub use flow_map::flow_map_jumps;
pub use ode::{encode_ode, solve_ode, solve_ode_from, OdeSolver};
pub use pairs::{encoded_pairs, ode_pairs, OdePairs};

use crate::error::{Error, Result};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::tensor::{backend::Backend, Tensor};
use rand::Rng;

/// Samples and the network evaluations that made them.
#[derive(Clone, Debug)]
pub struct Generated<B: Backend> {
    /// `[n, dim]` samples.
    pub samples: Tensor<B, 2>,
    /// Network evaluations per sample (two per model call under classifier-free guidance,
    /// [`IntegrationFlow::evaluations_per_call`]).
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
        nfe: k * model.evaluations_per_call(),
    })
}

/// Consistency-style multi-step ([`IntegrationFlow::renoise`]): estimate from the prior, then
/// for each `t` in `times` (decreasing, inside the range) perturb the estimate to `t` with fresh
/// noise and estimate again. NFE = 1 + `times.len()`.
pub fn renoise<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
    times: &[f64],
    anchor: RenoiseAnchor,
) -> Result<Generated<B>> {
    Ok(Generated {
        samples: model.renoise(rng, n, times, anchor)?,
        nfe: (1 + times.len()) * model.evaluations_per_call(),
    })
}

/// `steps − 1` re-noising times evenly spaced in t (see [`RenoiseSchedule`] for the default) between the ends (exclusive):
/// `t_max − i·(t_max − t_min)/steps`, i = 1..steps.
pub fn renoise_times(model_range: crate::flow::TimeRange, steps: usize) -> Vec<f64> {
    (1..steps)
        .map(|i| model_range.max - i as f64 * model_range.len() / steps as f64)
        .collect()
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
