//! Group normalisation as a module: the learned scale and shift of [`group_norm`].

use super::{normalise, Layout};
use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

/// GroupNorm over feature maps (`[n, c, h, w]` or channels-last) with a learned per-channel
/// scale and shift.
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

    /// The normalised maps of `x`, in `x`'s `layout`.
    pub(crate) fn forward(&self, x: Tensor<B, 4>, layout: Layout) -> Tensor<B, 4> {
        let params = (self.gamma.val(), self.beta.val());
        normalise(x, params, self.groups, false, layout)
    }

    /// `silu(self.forward(x, layout))`, fused on the CPU backend.
    pub(crate) fn forward_silu(&self, x: Tensor<B, 4>, layout: Layout) -> Tensor<B, 4> {
        let params = (self.gamma.val(), self.beta.val());
        normalise(x, params, self.groups, true, layout)
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
        ours.forward(x.clone(), Layout::ChannelsFirst)
            .into_data()
            .assert_approx_eq::<f32>(&theirs.forward(x).into_data(), Tolerance::default());
    }
}
