//! Two feature maps joined along the channels (a UNet's skip connection), with contiguous
//! gradients on the default CPU backend.
//!
//! burn's `Tensor::cat` gives each input its gradient as a slice of the output's gradient: a
//! strided view, which flex then adds to the input's other gradient (every skip is also the
//! next stage's input) element by element through its strided iterator. Here the backward step
//! copies each input's channels out per image (channels-first: one contiguous run each) or per
//! pixel (channels-last), so that every later operation sees plain buffers. Other backends take
//! `Tensor::cat`.

use super::layout::Layout;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `a` and `b` joined along the channels, both in `layout` with the same batch and pixels
/// (`Tensor::cat(vec![a, b], 1)` for channels-first maps, along dimension 3 for channels-last).
pub(crate) fn concat_channels<B: Backend>(
    a: Tensor<B, 4>,
    b: Tensor<B, 4>,
    layout: Layout,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let (a, b) = if super::fused_kernels() {
        match flex::concat(a, b, layout) {
            Ok(y) => return y,
            Err(ab) => ab,
        }
    } else {
        (a, b)
    };
    Tensor::cat(vec![a, b], layout.channel_dim())
}

/// The kernels: per image, `a`'s run of values then `b`'s.
#[cfg(feature = "flex")]
mod kernels {
    use super::super::flex_ops::par_vec_map;
    use rayon::prelude::*;

    /// Runs per rayon task: about 64K values.
    fn per_task(run: usize) -> usize {
        ((1 << 16) / run.max(1)).max(1)
    }

    pub(super) fn join(a: &[f32], b: &[f32], (len_a, len_b): (usize, usize)) -> Vec<f32> {
        let len = len_a + len_b;
        let k = per_task(len);
        let inputs = a
            .par_chunks(k * len_a.max(1))
            .zip(b.par_chunks(k * len_b.max(1)));
        par_vec_map(a.len() + b.len(), k * len, inputs, |out, (a, b)| {
            for (i, image) in out.chunks_exact_mut(len).enumerate() {
                image[..len_a].copy_from_slice(&a[i * len_a..][..len_a]);
                image[len_a..].copy_from_slice(&b[i * len_b..][..len_b]);
            }
        })
        .0
    }

    /// The inverse of [`join`]: `(a's values, b's values)`.
    pub(super) fn split(out: &[f32], (len_a, len_b): (usize, usize)) -> (Vec<f32>, Vec<f32>) {
        let len = len_a + len_b;
        let images = out.len() / len.max(1);
        let (mut a, mut b) = (vec![0.0f32; images * len_a], vec![0.0f32; images * len_b]);
        let k = per_task(len);
        out.par_chunks(k * len)
            .zip(a.par_chunks_mut(k * len_a.max(1)))
            .zip(b.par_chunks_mut(k * len_b.max(1)))
            .for_each(|((out, a), b)| {
                for (i, image) in out.chunks_exact(len).enumerate() {
                    a[i * len_a..][..len_a].copy_from_slice(&image[..len_a]);
                    b[i * len_b..][..len_b].copy_from_slice(&image[len_a..]);
                }
            });
        (a, b)
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{on_flex_pair, record, values, FlexAutodiff};
    use super::kernels;
    use super::Layout;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;

    type Pair<B> = (Tensor<B, 4>, Tensor<B, 4>);

    /// The op where both maps are `f32` on `Flex`/`Autodiff<Flex>` with matching batch and
    /// pixels; the pair back otherwise.
    pub(super) fn concat<B: Backend>(
        a: Tensor<B, 4>,
        b: Tensor<B, 4>,
        layout: Layout,
    ) -> Result<Tensor<B, 4>, Pair<B>> {
        let ([n, ca, h, w], [nb, cb, hb, wb]) = (layout.nchw(a.dims()), layout.nchw(b.dims()));
        let empty = ca == 0 || cb == 0 || h * w == 0;
        if [a.dtype(), b.dtype()] != [DType::F32; 2] || (n, h, w) != (nb, hb, wb) || empty {
            return Err((a, b));
        }
        let shape = Shape {
            channels: [ca, cb],
            nchw: [n, ca + cb, h, w],
            layout,
        };
        on_flex_pair(
            (a, b),
            |a, b| autodiff(a, b, shape),
            |a, b| forward(&a, &b, &shape),
        )
    }

    /// The shapes of one concatenation: the two inputs' channels, the output's `[n, c, h, w]`
    /// and the layout of all three.
    #[derive(Clone, Copy, Debug)]
    struct Shape {
        channels: [usize; 2],
        nchw: [usize; 4],
        layout: Layout,
    }

    impl Shape {
        /// Values per run (an image channels-first, a pixel channels-last) of each input.
        fn lens(&self) -> (usize, usize) {
            let run = match self.layout {
                Layout::ChannelsFirst => self.nchw[2] * self.nchw[3],
                Layout::ChannelsLast => 1,
            };
            (self.channels[0] * run, self.channels[1] * run)
        }

        /// The dimensions of input `i`.
        fn input(&self, i: usize) -> [usize; 4] {
            let [n, _, h, w] = self.nchw;
            self.layout.dims([n, self.channels[i], h, w])
        }
    }

    fn forward(a: &FlexTensor, b: &FlexTensor, s: &Shape) -> FlexTensor {
        let out = kernels::join(&values(a), &values(b), s.lens());
        FlexTensor::from_data(TensorData::new(out, s.layout.dims(s.nchw)))
    }

    #[derive(Debug)]
    struct ConcatBackward;

    impl Backward<Flex, 2> for ConcatBackward {
        type State = Shape;

        fn backward(self, ops: Ops<Shape, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let s = ops.state;
            let grad = grads.consume::<Flex>(&ops.node);
            let (ga, gb) = kernels::split(&values(&grad), s.lens());
            for (i, (node, g)) in ops.parents.into_iter().zip([ga, gb]).enumerate() {
                if let Some(node) = node {
                    let g = FlexTensor::from_data(TensorData::new(g, s.input(i)));
                    grads.register::<Flex>(node.id, g);
                }
            }
        }
    }

    fn autodiff(
        a: Tensor<FlexAutodiff, 4>,
        b: Tensor<FlexAutodiff, 4>,
        shape: Shape,
    ) -> Tensor<FlexAutodiff, 4> {
        let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
        let y = forward(&a.primitive, &b.primitive, &shape);
        record(ConcatBackward, [&a, &b], || shape, y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::super::layout::relayout;
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type Ad = Autodiff<Flex>;

    #[test]
    fn joins_like_cat_and_splits_the_gradient() {
        let device = Default::default();
        for (n, ca, cb, h, w) in [(3, 2, 5, 4, 3), (70, 64, 32, 14, 14), (2, 0, 3, 2, 2)] {
            let a = Tensor::<Ad, 4>::random([n, ca, h, w], Distribution::Default, &device)
                .require_grad();
            // A strided input (a transposed view) on one side.
            let b = Tensor::<Ad, 4>::random([n, cb, w, h], Distribution::Default, &device)
                .require_grad();
            let probe = Tensor::<Ad, 4>::random([n, ca + cb, h, w], Distribution::Default, &device);
            let ours = concat_channels(a.clone(), b.clone().swap_dims(2, 3), Layout::ChannelsFirst);
            let theirs = Tensor::cat(vec![a.clone(), b.clone().swap_dims(2, 3)], 1);
            assert_eq!(ours.to_data(), theirs.to_data());
            let g_ours = (ours * probe.clone()).sum().backward();
            let g_theirs = (theirs * probe).sum().backward();
            for t in [&a, &b] {
                // An input without channels gets no gradient either way.
                match (t.grad(&g_ours), t.grad(&g_theirs)) {
                    (Some(ours), Some(theirs)) => ours.into_data().assert_approx_eq::<f32>(
                        &theirs.into_data(),
                        Tolerance::rel_abs(1e-6, 1e-7),
                    ),
                    (None, None) => assert_eq!(t.dims()[1], 0),
                    _ => panic!("a gradient on one side only"),
                }
            }
        }
    }

    /// Channels-last maps joined along their last dimension, against `Tensor::cat` there.
    #[test]
    fn joins_channels_last_maps_and_splits_the_gradient() {
        let device = Default::default();
        let last = Layout::ChannelsLast;
        for (n, ca, cb, h, w) in [(3, 2, 5, 4, 3), (70, 64, 32, 7, 7)] {
            let a = Tensor::<Ad, 4>::random([n, h, w, ca], Distribution::Default, &device)
                .require_grad();
            // A strided input (a channels-first map seen channels-last) on one side.
            let b = Tensor::<Ad, 4>::random([n, cb, h, w], Distribution::Default, &device)
                .require_grad();
            // (one view per graph: a backward pass consumes the steps it runs)
            let b_last = || b.clone().permute([0, 2, 3, 1]);
            let probe = Tensor::<Ad, 4>::random([n, h, w, ca + cb], Distribution::Default, &device);
            let ours = concat_channels(a.clone(), b_last(), last);
            let theirs = Tensor::cat(vec![a.clone(), b_last()], 3);
            assert_eq!(ours.to_data(), theirs.to_data());
            // The same maps as a channels-first concatenation, transposed.
            let first = Layout::ChannelsFirst;
            // (on the inference backend, off the graph whose gradients are compared below)
            let via_first = concat_channels(
                relayout(a.clone().inner(), last, first),
                b.clone().inner(),
                first,
            );
            assert_eq!(relayout(via_first, first, last).to_data(), ours.to_data());
            let g_ours = (ours * probe.clone()).sum().backward();
            let g_theirs = (theirs * probe).sum().backward();
            for t in [&a, &b] {
                t.grad(&g_ours)
                    .expect("grad")
                    .into_data()
                    .assert_approx_eq::<f32>(
                        &t.grad(&g_theirs).expect("grad").into_data(),
                        Tolerance::rel_abs(1e-6, 1e-7),
                    );
            }
        }
    }
}
