//! The memory order of a batch of feature maps, and the op that changes it.
//!
//! burn's convolutions take `[n, c, h, w]` (channels first), but the fused kernels compute with
//! each pixel's channels contiguous: every product has the channels as its contiguous
//! dimension. With channels-first maps between the layers, every convolution transposed its
//! input to channels-last and its result back, in the forward step and again in the backward
//! step, and zero-filled a channels-last copy of its input to keep for the backward step:
//! transposes and `memset` were 15% of the UNet training step (docs/benchmarks.md). The UNet
//! therefore keeps its feature maps channels-last (`[n, h, w, c]`) wherever the fused kernels
//! run, and channels-first elsewhere; every op that sees a feature map is told which.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// How a batch of feature maps lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `[n, c, h, w]`: burn's order, each channel a contiguous plane.
    ChannelsFirst,
    /// `[n, h, w, c]`: each pixel's channels contiguous, the order the fused kernels compute in.
    ChannelsLast,
}

impl Layout {
    /// The layout a network on backend `B` keeps its feature maps in: channels-last where the
    /// fused kernels run (`Flex` or `Autodiff<Flex>` with [`super::fused_kernels`] on),
    /// channels-first elsewhere, where burn's own convolutions read that.
    pub(crate) fn for_backend<B: Backend>() -> Self {
        #[cfg(feature = "flex")]
        if super::fused_kernels() && super::flex_ops::is_flex::<B>() {
            return Layout::ChannelsLast;
        }
        Layout::ChannelsFirst
    }

    /// The dimensions in this layout of a map of `[n, c, h, w]`.
    pub(crate) fn dims(self, [n, c, h, w]: [usize; 4]) -> [usize; 4] {
        match self {
            Layout::ChannelsFirst => [n, c, h, w],
            Layout::ChannelsLast => [n, h, w, c],
        }
    }

    /// `[n, c, h, w]` of a map whose dimensions in this layout are `dims`.
    pub(crate) fn nchw(self, dims: [usize; 4]) -> [usize; 4] {
        match self {
            Layout::ChannelsFirst => dims,
            Layout::ChannelsLast => [dims[0], dims[3], dims[1], dims[2]],
        }
    }

    /// The dimension that counts the channels.
    pub(crate) fn channel_dim(self) -> usize {
        match self {
            Layout::ChannelsFirst => 1,
            Layout::ChannelsLast => 3,
        }
    }

    /// The permutation that takes a map from `self` to `to`.
    fn permutation(self, to: Layout) -> [isize; 4] {
        match (self, to) {
            (Layout::ChannelsFirst, Layout::ChannelsLast) => [0, 2, 3, 1],
            (Layout::ChannelsLast, Layout::ChannelsFirst) => [0, 3, 1, 2],
            (Layout::ChannelsFirst, Layout::ChannelsFirst)
            | (Layout::ChannelsLast, Layout::ChannelsLast) => [0, 1, 2, 3],
        }
    }
}

/// `x` (in layout `from`) in layout `to`: the same maps, their values reordered. On the flex
/// backend one transpose per image forwards and backwards, with contiguous results; elsewhere
/// burn's `permute`.
pub(crate) fn relayout<B: Backend>(x: Tensor<B, 4>, from: Layout, to: Layout) -> Tensor<B, 4> {
    if from == to {
        return x;
    }
    #[cfg(feature = "flex")]
    let x = if super::fused_kernels() {
        match flex::relayout(x, from, to) {
            Ok(y) => return y,
            Err(x) => x,
        }
    } else {
        x
    };
    x.permute(from.permutation(to))
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{on_flex_unary, par_vec_map, record, values, FlexAutodiff};
    use super::super::transpose::transpose;
    use super::Layout;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    /// A change of layout: the `[n, c, h, w]` of the maps and the two layouts.
    #[derive(Clone, Copy, Debug)]
    struct Change {
        nchw: [usize; 4],
        from: Layout,
        to: Layout,
    }

    /// The op for `f32` on `Flex`/`Autodiff<Flex>`; `x` back otherwise.
    pub(super) fn relayout<B: Backend>(
        x: Tensor<B, 4>,
        from: Layout,
        to: Layout,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        let change = Change {
            nchw: from.nchw(x.dims()),
            from,
            to,
        };
        on_flex_unary(x, |x| autodiff(x, change), |x| forward(&x, change))
    }

    /// The values of maps `[n, c, h, w]` from layout `from` to `to`, one transpose per image.
    fn reorder(x: &[f32], [_, c, h, w]: [usize; 4], from: Layout, to: Layout) -> Vec<f32> {
        let (pixels, image) = (h * w, c * h * w);
        let (rows, cols) = match (from, to) {
            (Layout::ChannelsFirst, Layout::ChannelsLast) => (c, pixels),
            (Layout::ChannelsLast, Layout::ChannelsFirst) => (pixels, c),
            (Layout::ChannelsFirst, Layout::ChannelsFirst)
            | (Layout::ChannelsLast, Layout::ChannelsLast) => return x.to_vec(),
        };
        if image == 0 {
            return vec![0.0f32; x.len()];
        }
        let images = x.par_chunks(image);
        par_vec_map(x.len(), image, images, |dst, src| {
            transpose(src, rows, cols, dst)
        })
        .0
    }

    fn forward(x: &FlexTensor, change: Change) -> FlexTensor {
        let Change { nchw, from, to } = change;
        let y = reorder(&values(x), nchw, from, to);
        FlexTensor::from_data(TensorData::new(y, to.dims(nchw)))
    }

    #[derive(Debug)]
    struct RelayoutBackward;

    impl Backward<Flex, 1> for RelayoutBackward {
        type State = Change;

        fn backward(self, ops: Ops<Change, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let Change { nchw, from, to } = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let dx = reorder(&values(&grad), nchw, to, from);
                FlexTensor::from_data(TensorData::new(dx, from.dims(nchw)))
            });
        }
    }

    fn autodiff(x: Tensor<FlexAutodiff, 4>, change: Change) -> Tensor<FlexAutodiff, 4> {
        let x = x.into_primitive().tensor();
        let y = forward(&x.primitive, change);
        record(RelayoutBackward, [&x], || change, y)
    }
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use super::*;
    use crate::backend::CpuAutodiff;
    use burn::tensor::{Distribution, Tolerance};

    type Ad = CpuAutodiff;

    #[test]
    fn dims_and_their_inverse() {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let nchw = [2, 3, 5, 7];
            assert_eq!(layout.nchw(layout.dims(nchw)), nchw);
            assert_eq!(layout.dims(nchw)[layout.channel_dim()], 3);
        }
        assert_eq!(Layout::ChannelsLast.dims([2, 3, 5, 7]), [2, 5, 7, 3]);
    }

    /// Both ways, against burn's permute, with the gradient of a random probe.
    #[test]
    fn matches_burns_permute_and_its_gradient() {
        let device = Default::default();
        for (from, to) in [
            (Layout::ChannelsFirst, Layout::ChannelsLast),
            (Layout::ChannelsLast, Layout::ChannelsFirst),
        ] {
            for nchw in [[3, 5, 7, 6], [2, 16, 8, 8], [1, 9, 1, 3]] {
                let x = Tensor::<Ad, 4>::random(from.dims(nchw), Distribution::Default, &device)
                    .require_grad();
                let ours = relayout(x.clone(), from, to);
                let theirs = x.clone().permute(from.permutation(to));
                assert_eq!(ours.dims(), to.dims(nchw));
                assert_eq!(ours.to_data(), theirs.to_data());
                let probe = Tensor::<Ad, 4>::random(to.dims(nchw), Distribution::Default, &device);
                let g_ours = (ours * probe.clone()).sum().backward();
                let g_theirs = (theirs * probe).sum().backward();
                x.grad(&g_ours)
                    .expect("grad")
                    .into_data()
                    .assert_approx_eq::<f32>(
                        &x.grad(&g_theirs).expect("grad").into_data(),
                        Tolerance::rel_abs(1e-6, 1e-6),
                    );
            }
        }
    }
}
