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
        Distance::AdaptiveL2 { power, c } => {
            let e = diff.powi_scalar(2).mean_dim(1);
            // The weight is a constant of the step: only e carries the gradient.
            let weight = e.clone().detach().add_scalar(c).powf_scalar(-power);
            e * weight
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};
    use burn::tensor::TensorData;

    /// The adaptive weight divides the squared error by a constant of the step: the value is
    /// `e/(e + c)^p` and the gradient `∇e/(e + c)^p`, not the gradient of the quotient.
    #[test]
    fn adaptive_l2_weighs_the_error_without_differentiating_the_weight() {
        let device = Default::default();
        let x = Tensor::<CpuAutodiff, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0], [1, 2]),
            &device,
        )
        .require_grad();
        let y = Tensor::<CpuAutodiff, 2>::zeros([1, 2], &device);
        let d = Distance::AdaptiveL2 { power: 1.0, c: 0.5 };
        let value = distance(d, x.clone(), y).sum();
        // e = (1 + 4)/2 = 2.5, e/(e + c) = 2.5/3.
        let v: f32 = value.clone().into_scalar();
        assert!((v - 2.5 / 3.0).abs() < 1e-6, "{v}");
        let grads = value.backward();
        let g = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        // ∇e = x (the mean of two squares), over e + c = 3.
        assert!(
            (g[0] - 1.0 / 3.0).abs() < 1e-6 && (g[1] - 2.0 / 3.0).abs() < 1e-6,
            "{g:?}"
        );
        // Power 0 is the squared L2.
        let plain = distance::<Cpu>(
            Distance::AdaptiveL2 { power: 0.0, c: 0.5 },
            Tensor::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &device),
            Tensor::zeros([1, 2], &device),
        );
        assert_eq!(plain.into_scalar(), 2.5);
    }

    #[test]
    fn adaptive_l2_settings_are_checked() {
        for (power, c) in [
            (1.0, 0.0),
            (1.0, f64::NAN),
            (-0.5, 1e-3),
            (2.5, 1e-3),
            (f64::NAN, 1e-3),
        ] {
            let d = Distance::AdaptiveL2 { power, c };
            assert!(d.check("TrainConfig", "distance").is_err(), "{power} {c}");
        }
        assert!(Distance::AdaptiveL2 {
            power: 1.0,
            c: 1e-3
        }
        .check("TrainConfig", "distance")
        .is_ok());
    }
}
