//! Group normalisation laid out for the CPU backend's fast paths.
//!
//! burn's `GroupNorm` multiplies by `γ` shaped `[1, c, 1, …]`; broadcasting over the batch
//! dimension makes the flex backend fall back to a scalar strided loop (the top entry of a
//! `perf` profile of the UNet step). Repeating `γ` and `β` over the batch first (`[n, c, 1, 1]`,
//! contiguous) keeps every operation on a SIMD path: the same arithmetic, and in one
//! measurement of the default UNet at batch 64 the forward pass went from 0.34 to 0.18 s and
//! the training step from 1.17 to 0.93 s.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

/// GroupNorm over `[n, c, h, w]` with a learned per-channel scale and shift.
#[derive(Module, Debug)]
pub(crate) struct GroupNorm<B: Backend> {
    gamma: Param<Tensor<B, 1>>,
    beta: Param<Tensor<B, 1>>,
    #[module(skip)]
    groups: usize,
}

impl<B: Backend> GroupNorm<B> {
    /// `groups` groups over `channels` channels (the caller checks divisibility), `γ = 1`,
    /// `β = 0`.
    pub(crate) fn new(groups: usize, channels: usize, device: &B::Device) -> Self {
        GroupNorm {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            groups,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        const EPSILON: f64 = 1e-5;
        let [n, c, h, w] = x.dims();
        let len = c / self.groups * h * w;
        let x = x.reshape([n, self.groups, len]);
        let centred = x.clone() - x.mean_dim(2);
        let var = centred.clone().square().mean_dim(2);
        let normed = (centred / var.add_scalar(EPSILON).sqrt()).reshape([n, c, h, w]);
        let per_example = |p: &Param<Tensor<B, 1>>| p.val().reshape([1, c, 1, 1]).repeat_dim(0, n);
        normed * per_example(&self.gamma) + per_example(&self.beta)
    }
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn matches_burns_group_norm() {
        let device = Default::default();
        let x = Tensor::<Cpu, 4>::random([3, 8, 5, 4], Distribution::Normal(1.0, 2.0), &device);
        let ours = GroupNorm::<Cpu>::new(4, 8, &device);
        let theirs = GroupNormConfig::new(4, 8).init::<Cpu>(&device);
        ours.forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&theirs.forward(x).into_data(), Tolerance::default());
    }
}
