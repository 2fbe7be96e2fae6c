//! Nearest-neighbour ×2 upsampling, cropped to a size, on the default CPU backend.
//!
//! Composed from burn's operations (a reshape, an `expand` to the doubled size and a reshape
//! back) the forward step is a copy through flex's element-by-element strided iterator, and
//! the backward step a reshape of a strided view followed by sums over the expanded
//! dimensions. Here each is one pass over the planes. Other backends take the composition.

use super::layout::{relayout, Layout};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Each pixel of `x` (`[n, c, h_in, w_in]`, or `[n, h_in, w_in, c]` channels-last) repeated
/// 2×2, then cropped to `[h, w]` (at most twice the input's sides); the output in `x`'s layout.
pub(crate) fn upsample_nearest<B: Backend>(
    x: Tensor<B, 4>,
    h: usize,
    w: usize,
    layout: Layout,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = if super::fused_kernels() {
        match flex::upsample(x, [h, w], layout) {
            Ok(y) => return y,
            Err(x) => x,
        }
    } else {
        x
    };
    let x = relayout(x, layout, Layout::ChannelsFirst);
    relayout(composed(x, h, w), Layout::ChannelsFirst, layout)
}

fn composed<B: Backend>(x: Tensor<B, 4>, h: usize, w: usize) -> Tensor<B, 4> {
    let [n, c, hi, wi] = x.dims();
    let up = x
        .reshape([n, c, hi, 1, wi, 1])
        .expand([n, c, hi, 2, wi, 2])
        .reshape([n, c, 2 * hi, 2 * wi]);
    if 2 * hi == h && 2 * wi == w {
        up
    } else {
        up.slice([0..n, 0..c, 0..h, 0..w])
    }
}

/// The kernels over planes (`[h_in, w_in]` to `[h, w]` and back), or over channels-last images
/// (`[h_in, w_in, c]` to `[h, w, c]`: each pixel's channels copied whole).
#[cfg(feature = "flex")]
mod kernels {
    use super::super::flex_ops::par_vec_map;
    use rayon::prelude::*;

    pub(super) fn forward_last(
        x: &[f32],
        [hi, wi]: [usize; 2],
        [h, w]: [usize; 2],
        c: usize,
    ) -> Vec<f32> {
        let images = x.len() / (hi * wi * c).max(1);
        let inputs = x.par_chunks(hi * wi * c);
        par_vec_map(images * h * w * c, h * w * c, inputs, |out, x| {
            for (y, row) in out.chunks_exact_mut(w * c).enumerate() {
                let src = &x[(y / 2) * wi * c..][..wi * c];
                for (col, pixel) in row.chunks_exact_mut(c).enumerate() {
                    pixel.copy_from_slice(&src[(col / 2) * c..][..c]);
                }
            }
        })
        .0
    }

    pub(super) fn backward_last(
        grad: &[f32],
        [hi, wi]: [usize; 2],
        [h, w]: [usize; 2],
        c: usize,
    ) -> Vec<f32> {
        let images = grad.len() / (h * w * c).max(1);
        let inputs = grad.par_chunks(h * w * c);
        par_vec_map(images * hi * wi * c, hi * wi * c, inputs, |out, grad| {
            for (y, row) in grad.chunks_exact(w * c).enumerate() {
                let dst = &mut out[(y / 2) * wi * c..][..wi * c];
                for (col, pixel) in row.chunks_exact(c).enumerate() {
                    let d = &mut dst[(col / 2) * c..][..c];
                    d.iter_mut().zip(pixel).for_each(|(d, v)| *d += v);
                }
            }
        })
        .0
    }

    pub(super) fn forward(x: &[f32], [hi, wi]: [usize; 2], [h, w]: [usize; 2]) -> Vec<f32> {
        let planes = x.len() / (hi * wi).max(1);
        let mut out = vec![0.0f32; planes * h * w];
        out.par_chunks_mut(h * w)
            .zip(x.par_chunks(hi * wi))
            .for_each(|(out, x)| {
                for (y, row) in out.chunks_exact_mut(w).enumerate() {
                    let src = &x[(y / 2) * wi..][..wi];
                    for (col, v) in row.iter_mut().enumerate() {
                        *v = src[col / 2];
                    }
                }
            });
        out
    }

    pub(super) fn backward(grad: &[f32], [hi, wi]: [usize; 2], [h, w]: [usize; 2]) -> Vec<f32> {
        let planes = grad.len() / (h * w).max(1);
        let mut out = vec![0.0f32; planes * hi * wi];
        out.par_chunks_mut(hi * wi)
            .zip(grad.par_chunks(h * w))
            .for_each(|(out, grad)| {
                for (y, row) in grad.chunks_exact(w).enumerate() {
                    let dst = &mut out[(y / 2) * wi..][..wi];
                    for (col, v) in row.iter().enumerate() {
                        dst[col / 2] += v;
                    }
                }
            });
        out
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{on_flex_unary, record, values, FlexAutodiff};
    use super::kernels;
    use super::Layout;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;

    /// `[n, c]`, the input sides, the output sides and the layout.
    type Sizes = ([usize; 2], [usize; 2], [usize; 2], Layout);

    /// The op for `f32` on `Flex`/`Autodiff<Flex>` and a crop within the doubled size; the input
    /// back otherwise.
    pub(super) fn upsample<B: Backend>(
        x: Tensor<B, 4>,
        out: [usize; 2],
        layout: Layout,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let [n, c, hi, wi] = layout.nchw(x.dims());
        let fits = out[0] <= 2 * hi && out[1] <= 2 * wi && out[0] > 0 && out[1] > 0;
        if x.dtype() != DType::F32 || !fits || hi * wi * c == 0 {
            return Err(x);
        }
        let sizes = ([n, c], [hi, wi], out, layout);
        on_flex_unary(x, |x| autodiff(x, sizes), |x| forward(&x, sizes))
    }

    fn forward(x: &FlexTensor, ([n, c], input, out, layout): Sizes) -> FlexTensor {
        let y = match layout {
            Layout::ChannelsFirst => kernels::forward(&values(x), input, out),
            Layout::ChannelsLast => kernels::forward_last(&values(x), input, out, c),
        };
        FlexTensor::from_data(TensorData::new(y, layout.dims([n, c, out[0], out[1]])))
    }

    #[derive(Debug)]
    struct UpsampleBackward;

    impl Backward<Flex, 1> for UpsampleBackward {
        type State = Sizes;

        fn backward(self, ops: Ops<Sizes, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let ([n, c], input, out, layout) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let dx = match layout {
                    Layout::ChannelsFirst => kernels::backward(&values(&grad), input, out),
                    Layout::ChannelsLast => kernels::backward_last(&values(&grad), input, out, c),
                };
                FlexTensor::from_data(TensorData::new(dx, layout.dims([n, c, input[0], input[1]])))
            });
        }
    }

    fn autodiff(x: Tensor<FlexAutodiff, 4>, sizes: Sizes) -> Tensor<FlexAutodiff, 4> {
        let x = x.into_primitive().tensor();
        let y = forward(&x.primitive, sizes);
        record(UpsampleBackward, [&x], || sizes, y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type Ad = Autodiff<Flex>;

    #[test]
    fn matches_the_composition_cropped_or_not() {
        let device = Default::default();
        for ([hi, wi], [h, w]) in [([4, 4], [7, 7]), ([3, 5], [6, 10]), ([7, 7], [14, 13])] {
            let x = Tensor::<Ad, 4>::random([3, 2, hi, wi], Distribution::Default, &device)
                .require_grad();
            let probe = Tensor::<Ad, 4>::random([3, 2, h, w], Distribution::Default, &device);
            let ours = upsample_nearest(x.clone(), h, w, Layout::ChannelsFirst);
            let theirs = composed(x.clone(), h, w);
            assert_eq!(ours.to_data(), theirs.to_data());
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

    /// Channels-last maps against the channels-first op on the transposed maps.
    #[test]
    fn channels_last_matches_the_transposed_channels_first_op() {
        use super::super::layout::relayout;
        let device = Default::default();
        let (first, last) = (Layout::ChannelsFirst, Layout::ChannelsLast);
        for ([hi, wi], [h, w], c) in [([4, 4], [7, 7], 3), ([3, 5], [6, 10], 16)] {
            let x = Tensor::<Ad, 4>::random([2, hi, wi, c], Distribution::Default, &device)
                .require_grad();
            let probe = Tensor::<Ad, 4>::random([2, h, w, c], Distribution::Default, &device);
            let ours = upsample_nearest(x.clone(), h, w, last);
            let theirs = relayout(
                composed(relayout(x.clone(), last, first), h, w),
                first,
                last,
            );
            assert_eq!(ours.to_data(), theirs.to_data());
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
