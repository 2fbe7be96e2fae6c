//! Distances and the two-term Integration Flow loss.

use super::config::Distance;
use burn::tensor::{backend::Backend, Tensor};

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
