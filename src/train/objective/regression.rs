//! The regression objective: the estimate's target is the training example `x_0`.

use burn::tensor::{backend::Backend, Tensor};

/// The target of the estimate: `x_0` as it is.
pub(crate) fn target<B: Backend>(x0: Tensor<B, 2>) -> Tensor<B, 2> {
    x0
}
