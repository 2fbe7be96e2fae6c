//! The Integration Flow loss: its distances, the two terms and the weighting λ(t).

use super::config::{Distance, LossWeight};
use crate::flow::tensor::column;
use crate::flow::{ProbabilityFlow, ProbabilityFlowExt};
use burn::tensor::{backend::Backend, Tensor};

/// The batch's loss `mean(λ(t)·[w·d(x̂, x_0) + (1 − w)·d(x̂, a)])`; the anchor term is left out
/// when `w = 1`, λ out when `lambda` is `None` (uniform).
pub(super) fn integration_flow_loss<B: Backend>(
    d: Distance,
    w: f64,
    lambda: Option<Vec<f64>>,
    x_hat: Tensor<B, 2>,
    x0: Tensor<B, 2>,
    anchor: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let mut per_example = distance(d, x_hat.clone(), x0).mul_scalar(w);
    if w < 1.0 {
        per_example = per_example + distance(d, x_hat.clone(), anchor).mul_scalar(1.0 - w);
    }
    if let Some(lambda) = lambda {
        per_example = per_example * column(lambda, &x_hat);
    }
    per_example.mean()
}

/// The loss weight λ(t) of each time, `None` for the uniform weight.
pub(super) fn loss_weights(
    weight: LossWeight,
    flow: &dyn ProbabilityFlow,
    sigma_data: f64,
    t: &[f64],
) -> Option<Vec<f64>> {
    match weight {
        LossWeight::Uniform => None,
        LossWeight::Edm => {
            let sd = sigma_data;
            Some(
                t.iter()
                    // (σ̃² + σ_d²)/(σ̃σ_d)² = 1/σ_d² + 1/σ̃², finite where σ̃ = ∞ (α = 0).
                    .map(|&ti| 1.0 / (sd * sd) + flow.noise_to_signal(ti).powi(-2))
                    .collect(),
            )
        }
    }
}

/// Per-example distance `[n, 1]` between `x` and `y` (`[n, dim]`).
pub(crate) fn distance<B: Backend>(
    distance: Distance,
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let dim = x.dims()[1];
    let diff = x - y;
    match distance {
        Distance::SquaredL2 => diff.powi_scalar(2).mean_dim(1),
        Distance::PseudoHuber { c } => {
            let c = c.unwrap_or(0.00054 * (dim as f64).sqrt());
            (diff.powi_scalar(2).sum_dim(1).add_scalar(c * c))
                .sqrt()
                .sub_scalar(c)
        }
        Distance::PseudoHuberElementwise { c } => {
            let c = c.unwrap_or(0.00054);
            (diff.powi_scalar(2).add_scalar(c * c))
                .sqrt()
                .sub_scalar(c)
                .mean_dim(1)
        }
        Distance::L1 => diff.abs().mean_dim(1),
    }
}
