//! A per-image, per-channel shift of feature maps (a residual block's noise embedding), with
//! a contiguous backward step on the default CPU backend.
//!
//! Composed from burn's operations, the shift is a broadcast add of `[n, c, 1, 1]` (or
//! `[n, 1, 1, c]`), whose gradient flex sums over the broadcast dimensions through its strided
//! iterator. Here the forward step adds in place where the maps' buffer is not shared (a
//! convolution's fresh output), and the backward step passes the incoming gradient on as it is
//! and sums it per image and channel in one pass. Other backends take the composition.

use super::layout::Layout;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x + shift` with `shift[i, k]` added to every pixel of channel `k` of image `i`: `x` in
/// `layout`, `shift` `[n, c]`.
///
/// # Panics
/// Like burn's broadcast, where `shift` is not `[n, c]` for `x`'s batch and channels.
pub(crate) fn shift_channels<B: Backend>(
    x: Tensor<B, 4>,
    shift: Tensor<B, 2>,
    layout: Layout,
) -> Tensor<B, 4> {
    let [n, c, _, _] = layout.nchw(x.dims());
    assert_eq!(
        shift.dims(),
        [n, c],
        "shift_channels: a shift per image and channel"
    );
    #[cfg(feature = "flex")]
    let (x, shift) = if super::fused_kernels() {
        match flex::shift(x, shift, layout) {
            Ok(y) => return y,
            Err(pair) => pair,
        }
    } else {
        (x, shift)
    };
    x + shift.reshape(layout.dims([n, c, 1, 1]))
}

/// The kernels on one image's values: `[c, pixels]` channels-first, `[pixels, c]` channels-last.
#[cfg(feature = "flex")]
mod kernels {
    use super::super::flex_ops::sum;
    use super::Layout;

    /// `image += shift` per channel.
    pub(super) fn add(image: &mut [f32], shift: &[f32], layout: Layout) {
        let c = shift.len().max(1);
        match layout {
            Layout::ChannelsFirst => {
                let pixels = image.len() / c;
                for (plane, s) in image.chunks_exact_mut(pixels.max(1)).zip(shift) {
                    plane.iter_mut().for_each(|v| *v += s);
                }
            }
            Layout::ChannelsLast => {
                for pixel in image.chunks_exact_mut(c) {
                    pixel.iter_mut().zip(shift).for_each(|(v, s)| *v += s);
                }
            }
        }
    }

    /// `sums[k] = Σ_pixels image[k]`.
    pub(super) fn channel_sums(image: &[f32], sums: &mut [f32], layout: Layout) {
        let c = sums.len().max(1);
        match layout {
            Layout::ChannelsFirst => {
                let pixels = image.len() / c;
                for (s, plane) in sums.iter_mut().zip(image.chunks_exact(pixels.max(1))) {
                    *s = sum(plane);
                }
            }
            Layout::ChannelsLast => {
                sums.fill(0.0);
                for pixel in image.chunks_exact(c) {
                    sums.iter_mut().zip(pixel).for_each(|(s, v)| *s += v);
                }
            }
        }
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{on_flex_pair, record, update_values, values, FlexAutodiff};
    use super::kernels;
    use super::Layout;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    type Pair<B> = (Tensor<B, 4>, Tensor<B, 2>);

    /// The op where both are `f32` on `Flex`/`Autodiff<Flex>`; the pair back otherwise.
    pub(super) fn shift<B: Backend>(
        x: Tensor<B, 4>,
        shift: Tensor<B, 2>,
        layout: Layout,
    ) -> Result<Tensor<B, 4>, Pair<B>> {
        let [_, c, h, w] = layout.nchw(x.dims());
        if [x.dtype(), shift.dtype()] != [DType::F32; 2] || c * h * w == 0 {
            return Err((x, shift));
        }
        on_flex_pair(
            (x, shift),
            |x, shift| autodiff(x, shift, layout),
            |x, shift| forward(x, &shift, layout),
        )
    }

    fn forward(x: FlexTensor, shift: &FlexTensor, layout: Layout) -> FlexTensor {
        let shift = values(shift);
        let c = shift.len() / x.layout().shape()[0].max(1);
        update_values(x, |values| {
            let image = values.len() / (shift.len() / c.max(1)).max(1);
            values
                .par_chunks_mut(image.max(1))
                .zip(shift.par_chunks(c.max(1)))
                .for_each(|(image, shift)| kernels::add(image, shift, layout));
        })
    }

    #[derive(Debug)]
    struct ShiftBackward;

    impl Backward<Flex, 2> for ShiftBackward {
        /// The layout and `[n, c]`.
        type State = (Layout, [usize; 2]);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (layout, [n, c]) = ops.state;
            let [x_node, shift_node] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            if let Some(node) = shift_node {
                let values = values(&grad);
                let mut sums = vec![0.0f32; n * c];
                let image = values.len() / n.max(1);
                sums.par_chunks_mut(c.max(1))
                    .zip(values.par_chunks(image.max(1)))
                    .for_each(|(sums, image)| kernels::channel_sums(image, sums, layout));
                grads.register::<Flex>(
                    node.id,
                    FlexTensor::from_data(TensorData::new(sums, [n, c])),
                );
            }
            if let Some(node) = x_node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }

    fn autodiff(
        x: Tensor<FlexAutodiff, 4>,
        shift: Tensor<FlexAutodiff, 2>,
        layout: Layout,
    ) -> Tensor<FlexAutodiff, 4> {
        let dims = shift.dims();
        let (mut x, shift) = (x.into_primitive().tensor(), shift.into_primitive().tensor());
        // The maps are moved out (the graph needs only `x`'s node), so that their buffer is
        // updated in place where nothing else holds it.
        let empty = FlexTensor::from_data(TensorData::new(Vec::<f32>::new(), [0]));
        let maps = std::mem::replace(&mut x.primitive, empty);
        let y = forward(maps, &shift.primitive, layout);
        record(ShiftBackward, [&x, &shift], || (layout, dims), y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type Ad = Autodiff<Flex>;

    /// Both layouts against the broadcast add, with the gradients of a random probe; the input
    /// is kept and read after the op (so it must not be changed in place).
    #[test]
    fn matches_the_broadcast_add_and_its_gradients() {
        let device = Default::default();
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            for nchw in [[3, 5, 4, 7], [2, 32, 14, 14], [1, 1, 1, 1]] {
                let [n, c, _, _] = nchw;
                let dims = layout.dims(nchw);
                let x =
                    Tensor::<Ad, 4>::random(dims, Distribution::Default, &device).require_grad();
                let s =
                    Tensor::<Ad, 2>::random([n, c], Distribution::Default, &device).require_grad();
                let before = x.to_data();
                let ours = shift_channels(x.clone(), s.clone(), layout);
                let theirs = x.clone() + s.clone().reshape(layout.dims([n, c, 1, 1]));
                assert_eq!(x.to_data(), before, "the input is unchanged");
                let tolerance = Tolerance::rel_abs(1e-6, 1e-6);
                ours.to_data()
                    .assert_approx_eq::<f32>(&theirs.to_data(), tolerance);
                let probe = Tensor::<Ad, 4>::random(dims, Distribution::Default, &device);
                let g_ours = (ours * probe.clone()).sum().backward();
                let g_theirs = (theirs * probe).sum().backward();
                let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
                x.grad(&g_ours)
                    .expect("dx")
                    .into_data()
                    .assert_approx_eq::<f32>(
                        &x.grad(&g_theirs).expect("dx").into_data(),
                        tolerance,
                    );
                s.grad(&g_ours)
                    .expect("ds")
                    .into_data()
                    .assert_approx_eq::<f32>(
                        &s.grad(&g_theirs).expect("ds").into_data(),
                        tolerance,
                    );
            }
        }
    }
}
