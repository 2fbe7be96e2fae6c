//! Diagnostics of the method's open questions (docs/evidence.md).

use crate::error::{Error, Result};
use crate::flow::ProbabilityFlowExt;
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::tensor::{backend::Backend, ElementConversion, Tensor};
use rand::Rng;

fn mean_row_norm<B: Backend>(diff: Tensor<B, 2>) -> f64 {
    diff.powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .mean()
        .into_scalar()
        .elem()
}

/// Does the anchor iteration converge? Runs `a ← f(x_T, T, a)` `iterations` times from one
/// prior draw and returns the mean `‖a_{n+1} − a_n‖` for n = 1..iterations−1 (over `n` samples).
pub fn anchor_convergence<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
    iterations: usize,
) -> Result<Vec<f64>> {
    if iterations < 2 {
        return Err(Error::InvalidArgument {
            name: "iterations",
            reason: "convergence needs at least two iterations".into(),
        });
    }
    let x_t = model.sample_prior(rng, n)?;
    let t_max = [model.flow().time_range().max];
    let mut anchor = model.estimate(x_t.clone(), &t_max, model.sample_anchor(rng, n)?)?;
    let mut changes = Vec::with_capacity(iterations - 1);
    for _ in 1..iterations {
        let next = model.estimate(x_t.clone(), &t_max, anchor.clone())?;
        changes.push(mean_row_norm(next.clone() - anchor));
        anchor = next;
    }
    Ok(changes)
}

/// How straight is the learned map? For `lines` pairs (x_T, x̂_0 = f(x_T, T, a)) it predicts
/// `f(x_t, t, a)` at `points` times along the flow's path between them
/// (`x_t = α(t)·x̂_0 + σ(t)·x_T/σ(T)`) and returns the mean over lines of the per-line variance
/// of the prediction across t (summed over coordinates). 0 for a perfectly consistent model.
pub fn straightness<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    lines: usize,
    points: usize,
) -> Result<f64> {
    if points < 2 {
        return Err(Error::InvalidArgument {
            name: "points",
            reason: "a variance along the line needs at least two times".into(),
        });
    }
    let flow = model.flow().clone();
    let range = flow.time_range();
    let x_max = model.sample_prior(rng, lines)?;
    let anchor = model.sample_anchor(rng, lines)?;
    let x0 = model.estimate(x_max.clone(), &[range.max], anchor.clone())?;
    let noise = x_max.div_scalar(flow.sigma(range.max));
    let mut predictions: Vec<Tensor<B, 2>> = Vec::with_capacity(points);
    for k in 0..points {
        let t = range.min + range.len() * (k as f64 + 0.5) / points as f64;
        let x_t = flow.interpolate(x0.clone(), noise.clone(), &[t])?;
        predictions.push(model.estimate(x_t, &[t], anchor.clone())?);
    }
    let stacked = Tensor::stack::<3>(predictions, 0); // [points, lines, dim]
    let mean = stacked.clone().mean_dim(0);
    let variance: f64 = (stacked - mean)
        .powi_scalar(2)
        .mean_dim(0)
        .sum_dim(2)
        .mean()
        .into_scalar()
        .elem();
    Ok(variance)
}
