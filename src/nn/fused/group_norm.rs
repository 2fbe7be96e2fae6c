//! Group normalisation with an optional SiLU after it, fused on the default CPU backend.
//!
//! Composed from burn's operations, one GroupNorm is a dozen passes over the activations in the
//! forward step (two means, a subtraction, a square, a square root, a division, the scale and
//! shift repeated over the batch) and as many in the backward step, each with a fresh buffer, and
//! the SiLU after it two more. Here the forward step is one pass per image (the group statistics,
//! then the normalised, scaled, shifted and activated values while the group is in cache) and the
//! backward step one more, with the scale and shift gradients summed per image and then over
//! images in order. Other backends take burn's composition.

use super::layout::{relayout, Layout};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Added to the variance before its square root, as burn's `GroupNorm` does.
const EPSILON: f32 = 1e-5;

/// GroupNorm of `x` (`[n, c, h, w]`) over `groups` groups of channels, scaled by `gamma` and
/// shifted by `beta` (both `[c]`); `groups` must divide `c`.
///
/// # Panics
/// Like burn's tensor operations, on shapes that do not fit: `groups` zero or not dividing `c`,
/// `gamma` or `beta` not of length `c`. (The UNet checks its configuration before it builds
/// anything, so its layers never do.)
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Distribution, Tensor};
/// use integration_flow::backend::Cpu;
/// use integration_flow::nn::group_norm;
/// let device = Default::default();
/// let x = Tensor::<Cpu, 4>::random([2, 4, 3, 3], Distribution::Normal(5.0, 2.0), &device);
/// let y = group_norm(x, Tensor::ones([4], &device), Tensor::zeros([4], &device), 2);
/// // Each group of 2 channels of each image has mean 0 and variance 1.
/// let mean = y.reshape([4, 18]).mean_dim(1).abs().max().into_scalar();
/// assert!(mean < 1e-5);
/// # }
/// ```
pub fn group_norm<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    groups: usize,
) -> Tensor<B, 4> {
    normalise(x, (gamma, beta), groups, false, Layout::ChannelsFirst)
}

/// `silu(group_norm(x, gamma, beta, groups))`, the pre-activation of a residual block, as one op
/// on the flex backend.
///
/// # Panics
/// As [`group_norm`].
pub fn group_norm_silu<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    groups: usize,
) -> Tensor<B, 4> {
    normalise(x, (gamma, beta), groups, true, Layout::ChannelsFirst)
}

/// [`group_norm`] (`activate` false) or [`group_norm_silu`] (true) of feature maps in `layout`.
///
/// # Panics
/// As [`group_norm`].
pub(crate) fn normalise<B: Backend>(
    x: Tensor<B, 4>,
    (gamma, beta): (Tensor<B, 1>, Tensor<B, 1>),
    groups: usize,
    activate: bool,
    layout: Layout,
) -> Tensor<B, 4> {
    let c = x.dims()[layout.channel_dim()];
    assert!(
        groups > 0 && c.is_multiple_of(groups) && gamma.dims() == [c] && beta.dims() == [c],
        "group_norm: {groups} groups of {c} channels with a scale of {:?} and a shift of {:?}",
        gamma.dims(),
        beta.dims()
    );
    #[cfg(feature = "flex")]
    let x = if super::fused_kernels() {
        match flex::normalise(x, gamma.clone(), beta.clone(), groups, activate, layout) {
            Ok(y) => return y,
            Err(x) => x,
        }
    } else {
        x
    };
    let x = relayout(x, layout, Layout::ChannelsFirst);
    let y = composed(x, gamma, beta, groups);
    let y = if activate { super::silu(y) } else { y };
    relayout(y, Layout::ChannelsFirst, layout)
}

/// burn's composition. The scale and shift are repeated over the batch (`[n, c, 1, 1]`,
/// contiguous) rather than broadcast from `[1, c, 1, 1]`, which flex runs as a scalar strided
/// loop.
fn composed<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    groups: usize,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let len = c / groups * h * w;
    let x = x.reshape([n, groups, len]);
    let centred = x.clone() - x.mean_dim(2);
    let var = centred.clone().square().mean_dim(2);
    let normed = (centred / var.add_scalar(EPSILON as f64).sqrt()).reshape([n, c, h, w]);
    let per_example = |p: Tensor<B, 1>| p.reshape([1, c, 1, 1]).repeat_dim(0, n);
    normed * per_example(gamma) + per_example(beta)
}

/// The kernels on one image's values.
#[cfg(feature = "flex")]
mod kernels {
    use super::super::flex_ops::{dot_product, sum, sum_sq_dev};
    use super::super::silu::{backward_block, forward_block};
    use super::EPSILON;

    /// The shapes: `groups` groups of `per_group` channels of `pixels` values.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Shape {
        pub groups: usize,
        pub per_group: usize,
        pub pixels: usize,
    }

    impl Shape {
        pub fn channels(&self) -> usize {
            self.groups * self.per_group
        }

        pub fn image(&self) -> usize {
            self.channels() * self.pixels
        }
    }

    /// One image: `out` ← the normalised, scaled, shifted (and activated) values; returns the
    /// mean and the reciprocal standard deviation of each group (what the backward step needs
    /// besides the input).
    pub(super) fn forward(
        x: &[f32],
        (gamma, beta): (&[f32], &[f32]),
        s: Shape,
        activate: bool,
        out: &mut [f32],
    ) -> Vec<[f32; 2]> {
        let len = s.per_group * s.pixels;
        let mut stats = Vec::with_capacity(s.groups);
        let mut pre = vec![0.0f32; if activate { len } else { 0 }];
        for (g, (x, out)) in x
            .chunks_exact(len)
            .zip(out.chunks_exact_mut(len))
            .enumerate()
        {
            // Two passes: the mean, then the centred squares (no cancellation).
            let mean = sum(x) / len as f32;
            let r = 1.0 / (sum_sq_dev(x, mean) / len as f32 + EPSILON).sqrt();
            stats.push([mean, r]);
            // The scaled and shifted values go to `out`, or first to `pre` for the SiLU.
            let target: &mut [f32] = if activate { &mut pre } else { &mut *out };
            for (c, (x, t)) in x
                .chunks_exact(s.pixels)
                .zip(target.chunks_exact_mut(s.pixels))
                .enumerate()
            {
                let (scale, shift) = (gamma[g * s.per_group + c], beta[g * s.per_group + c]);
                let (scale, shift) = (r * scale, shift - mean * r * scale);
                for (x, t) in x.iter().zip(t.iter_mut()) {
                    *t = x * scale + shift;
                }
            }
            if activate {
                forward_block(&pre, out);
            }
        }
        stats
    }

    /// One image's gradients from its input `x` and the group statistics of [`forward`]:
    /// `grad` (the incoming gradient) becomes the input gradient; returns the image's shares of
    /// the scale and shift gradients.
    pub(super) fn backward(
        x: &[f32],
        stats: &[[f32; 2]],
        (gamma, beta): (&[f32], &[f32]),
        s: Shape,
        activate: bool,
        grad: &mut [f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let len = s.per_group * s.pixels;
        let (mut dgamma, mut dbeta) = (vec![0.0f32; s.channels()], vec![0.0f32; s.channels()]);
        let mut normed = vec![0.0f32; len];
        let mut pre = vec![0.0f32; if activate { len } else { 0 }];
        for (g, (x, grad)) in x
            .chunks_exact(len)
            .zip(grad.chunks_exact_mut(len))
            .enumerate()
        {
            let [mean, r] = stats[g];
            normed
                .iter_mut()
                .zip(x)
                .for_each(|(n, x)| *n = (x - mean) * r);
            let channels = g * s.per_group..(g + 1) * s.per_group;
            if activate {
                for ((p, n), c) in pre
                    .chunks_exact_mut(s.pixels)
                    .zip(normed.chunks_exact(s.pixels))
                    .zip(channels.clone())
                {
                    for (p, n) in p.iter_mut().zip(n) {
                        *p = n * gamma[c] + beta[c];
                    }
                }
                backward_block(&pre, grad);
            }
            // grad is now dL/d(pre-activation); dL/d(normed) = grad·γ.
            let (mut total, mut dot) = (0.0f64, 0.0f64);
            for ((n, d), c) in normed
                .chunks_exact(s.pixels)
                .zip(grad.chunks_exact(s.pixels))
                .zip(channels.clone())
            {
                let (ds, dn) = (sum(d), dot_product(d, n));
                dbeta[c] += ds;
                dgamma[c] += dn;
                total += (ds * gamma[c]) as f64;
                dot += (dn * gamma[c]) as f64;
            }
            // dx = rstd·(dn − mean(dn) − normed·mean(dn·normed)), dn = grad·γ.
            let (mean, mean_dot) = ((total / len as f64) as f32, (dot / len as f64) as f32);
            for ((n, d), c) in normed
                .chunks_exact(s.pixels)
                .zip(grad.chunks_exact_mut(s.pixels))
                .zip(channels)
            {
                let scale = gamma[c];
                for (n, d) in n.iter().zip(d.iter_mut()) {
                    *d = r * (*d * scale - mean - n * mean_dot);
                }
            }
        }
        (dgamma, dbeta)
    }

    /// Per channel, the value of its group: `per_group` copies of each of `groups`.
    fn per_channel(groups: impl Iterator<Item = f32>, s: Shape) -> Vec<f32> {
        groups
            .flat_map(|v| std::iter::repeat_n(v, s.per_group))
            .collect()
    }

    /// Per group, the sum of `per_channel`'s values over its channels.
    fn group_sums(per_channel: &[f32], s: Shape) -> impl Iterator<Item = f32> + '_ {
        per_channel
            .chunks_exact(s.per_group)
            .map(|c| c.iter().sum::<f32>())
    }

    /// Values of a block of rows that stays in L1 (the SiLU's pre-activations).
    const BLOCK: usize = 1024;

    /// `out[p, k] = x[p, k]·a[k] + b[k]` for the channels-last rows of `x`.
    #[inline(always)]
    fn affine(x: &[f32], (a, b): (&[f32], &[f32]), out: &mut [f32]) {
        for (x, out) in x.chunks_exact(a.len()).zip(out.chunks_exact_mut(a.len())) {
            for (((o, x), a), b) in out.iter_mut().zip(x).zip(a).zip(b) {
                *o = x * a + b;
            }
        }
    }

    /// [`forward`] for one channels-last image (`[pixels, c]`): per channel sums over the
    /// pixels, combined per group, so that every pass runs along the contiguous channels.
    pub(super) fn forward_last(
        x: &[f32],
        (gamma, beta): (&[f32], &[f32]),
        s: Shape,
        activate: bool,
        out: &mut [f32],
    ) -> Vec<[f32; 2]> {
        let (c, len) = (s.channels(), (s.per_group * s.pixels) as f32);
        let mut sums = vec![0.0f32; c];
        for row in x.chunks_exact(c) {
            sums.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
        let means: Vec<f32> = group_sums(&sums, s).map(|total| total / len).collect();
        // The centred squares (two passes: no cancellation).
        let centre = per_channel(means.iter().copied(), s);
        sums.fill(0.0);
        for row in x.chunks_exact(c) {
            for ((a, v), m) in sums.iter_mut().zip(row).zip(&centre) {
                *a += (v - m) * (v - m);
            }
        }
        let stats: Vec<[f32; 2]> = means
            .iter()
            .zip(group_sums(&sums, s))
            .map(|(&mean, squares)| [mean, 1.0 / (squares / len + EPSILON).sqrt()])
            .collect();
        // y = (x − mean)·r·γ + β = x·scale + shift.
        let r = per_channel(stats.iter().map(|st| st[1]), s);
        let scale: Vec<f32> = r.iter().zip(gamma).map(|(r, g)| r * g).collect();
        let shift: Vec<f32> = (0..c).map(|k| beta[k] - centre[k] * scale[k]).collect();
        if !activate {
            affine(x, (&scale, &shift), out);
            return stats;
        }
        let rows = (BLOCK / c).max(1);
        let mut pre = [0.0f32; BLOCK];
        for (x, out) in x.chunks(rows * c).zip(out.chunks_mut(rows * c)) {
            let pre = &mut pre[..x.len().min(BLOCK)];
            match pre.len() == x.len() {
                true => {
                    affine(x, (&scale, &shift), pre);
                    forward_block(pre, out);
                }
                // A row longer than a block: no L1 staging.
                false => {
                    affine(x, (&scale, &shift), out);
                    let staged = out.to_vec();
                    forward_block(&staged, out);
                }
            }
        }
        stats
    }

    /// [`backward`] for one channels-last image (`[pixels, c]`).
    pub(super) fn backward_last(
        x: &[f32],
        stats: &[[f32; 2]],
        (gamma, beta): (&[f32], &[f32]),
        s: Shape,
        activate: bool,
        grad: &mut [f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (c, len) = (s.channels(), (s.per_group * s.pixels) as f32);
        let mean = per_channel(stats.iter().map(|st| st[0]), s);
        let r = per_channel(stats.iter().map(|st| st[1]), s);
        // Σ_p g and Σ_p g·x per channel (g: the gradient of the pre-activation).
        let (mut sum_g, mut sum_gx) = (vec![0.0f32; c], vec![0.0f32; c]);
        let accumulate = |x: &[f32], g: &[f32], sum_g: &mut [f32], sum_gx: &mut [f32]| {
            for (x, g) in x.chunks_exact(c).zip(g.chunks_exact(c)) {
                for (((sg, sgx), x), g) in sum_g.iter_mut().zip(sum_gx.iter_mut()).zip(x).zip(g) {
                    *sg += g;
                    *sgx += g * x;
                }
            }
        };
        if activate {
            let scale: Vec<f32> = r.iter().zip(gamma).map(|(r, g)| r * g).collect();
            let shift: Vec<f32> = (0..c).map(|k| beta[k] - mean[k] * scale[k]).collect();
            let rows = (BLOCK / c).max(1);
            let mut pre = [0.0f32; BLOCK];
            for (x, grad) in x.chunks(rows * c).zip(grad.chunks_mut(rows * c)) {
                match x.len() <= BLOCK {
                    true => {
                        let pre = &mut pre[..x.len()];
                        affine(x, (&scale, &shift), pre);
                        backward_block(pre, grad);
                    }
                    false => {
                        let mut staged = vec![0.0f32; x.len()];
                        affine(x, (&scale, &shift), &mut staged);
                        backward_block(&staged, grad);
                    }
                }
                accumulate(x, grad, &mut sum_g, &mut sum_gx);
            }
        } else {
            accumulate(x, grad, &mut sum_g, &mut sum_gx);
        }
        // dβ = Σ g; dγ = Σ g·normed = r·(Σ g·x − mean·Σ g).
        let dbeta = sum_g;
        let dgamma: Vec<f32> = (0..c)
            .map(|k| r[k] * (sum_gx[k] - mean[k] * dbeta[k]))
            .collect();
        // dx = r·(g·γ − mean(g·γ) − normed·mean(g·γ·normed)) per group, which is
        // g·a + x·b + e per channel.
        let weigh = |d: &[f32]| -> Vec<f32> { d.iter().zip(gamma).map(|(d, g)| d * g).collect() };
        let mean_d = per_channel(group_sums(&weigh(&dbeta), s).map(|v| v / len), s);
        let mean_dot = per_channel(group_sums(&weigh(&dgamma), s).map(|v| v / len), s);
        let a: Vec<f32> = (0..c).map(|k| r[k] * gamma[k]).collect();
        let b: Vec<f32> = (0..c).map(|k| -r[k] * r[k] * mean_dot[k]).collect();
        let e: Vec<f32> = (0..c)
            .map(|k| r[k] * (r[k] * mean[k] * mean_dot[k] - mean_d[k]))
            .collect();
        for (x, g) in x.chunks_exact(c).zip(grad.chunks_exact_mut(c)) {
            for ((((g, x), a), b), e) in g.iter_mut().zip(x).zip(&a).zip(&b).zip(&e) {
                *g = *g * a + x * b + e;
            }
        }
        (dgamma, dbeta)
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{
        on_flex, par_vec_map, record, update_values, values, FlexAutodiff,
    };
    use super::kernels::{self, Shape};
    use super::Layout;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    /// The fused op where it applies (flex, f32, consistent shapes); `x` back otherwise.
    pub(super) fn normalise<B: Backend>(
        x: Tensor<B, 4>,
        gamma: Tensor<B, 1>,
        beta: Tensor<B, 1>,
        groups: usize,
        activate: bool,
        layout: Layout,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let dims = x.dims();
        let [_, c, h, w] = layout.nchw(dims);
        let f32s = [x.dtype(), gamma.dtype(), beta.dtype()] == [DType::F32; 3];
        let fits = groups > 0 && c > 0 && c.is_multiple_of(groups) && h * w > 0;
        if !f32s || !fits || gamma.dims() != [c] || beta.dims() != [c] {
            return Err(x);
        }
        let s = Shape {
            groups,
            per_group: c / groups,
            pixels: h * w,
        };
        let op = Op {
            shape: s,
            activate,
            layout,
        };
        let autodiff = |x, gamma, beta| autodiff(x, gamma, beta, op, dims);
        on_flex((x, gamma, beta), autodiff, |x, gamma, beta| {
            let (_, y) = forward(&x, &gamma, &beta, op);
            FlexTensor::from_data(TensorData::new(y, dims))
        })
    }

    /// One normalisation: the shapes, whether the SiLU follows, the layout of the maps.
    #[derive(Clone, Copy, Debug)]
    struct Op {
        shape: Shape,
        activate: bool,
        layout: Layout,
    }

    /// `(stats, out)` over all images, one rayon task per image: per image and group, the
    /// mean and the reciprocal standard deviation.
    fn forward(
        x: &FlexTensor,
        gamma: &FlexTensor,
        beta: &FlexTensor,
        op: Op,
    ) -> (Vec<[f32; 2]>, Vec<f32>) {
        let (x, gamma, beta) = (values(x), values(gamma), values(beta));
        let (s, activate) = (op.shape, op.activate);
        let images = x.par_chunks(s.image());
        let (out, stats) = par_vec_map(x.len(), s.image(), images, |out, x| match op.layout {
            Layout::ChannelsFirst => kernels::forward(x, (&gamma, &beta), s, activate, out),
            Layout::ChannelsLast => kernels::forward_last(x, (&gamma, &beta), s, activate, out),
        });
        (stats.concat(), out)
    }

    /// What the backward step keeps: the input (shared, not copied) and the group statistics.
    #[derive(Clone, Debug)]
    struct Saved {
        x: FlexTensor,
        stats: Vec<[f32; 2]>,
        gamma: FlexTensor,
        beta: FlexTensor,
        op: Op,
    }

    #[derive(Debug)]
    struct GroupNormBackward;

    impl Backward<Flex, 3> for GroupNormBackward {
        type State = Saved;

        fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let state = ops.state;
            let Op {
                shape: s,
                activate,
                layout,
            } = state.op;
            let [x_node, gamma_node, beta_node] = ops.parents;
            let (gamma, beta) = (values(&state.gamma), values(&state.beta));
            let x = values(&state.x);
            let mut partials: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
            // The incoming gradient becomes the input gradient, in its own buffer if it can.
            let grad = update_values(grads.consume::<Flex>(&ops.node), |grad| {
                partials = grad
                    .par_chunks_mut(s.image())
                    .zip(x.par_chunks(s.image()))
                    .zip(state.stats.par_chunks(s.groups))
                    .map(|((grad, x), stats)| {
                        let params = (&*gamma, &*beta);
                        match layout {
                            Layout::ChannelsFirst => {
                                kernels::backward(x, stats, params, s, activate, grad)
                            }
                            Layout::ChannelsLast => {
                                kernels::backward_last(x, stats, params, s, activate, grad)
                            }
                        }
                    })
                    .collect();
            });
            let c = s.channels();
            let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
            for (pg, pb) in &partials {
                dgamma.iter_mut().zip(pg).for_each(|(a, v)| *a += v);
                dbeta.iter_mut().zip(pb).for_each(|(a, v)| *a += v);
            }
            let vector = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, [c]));
            if let Some(node) = gamma_node {
                grads.register::<Flex>(node.id, vector(dgamma));
            }
            if let Some(node) = beta_node {
                grads.register::<Flex>(node.id, vector(dbeta));
            }
            if let Some(node) = x_node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }

    fn autodiff(
        x: Tensor<FlexAutodiff, 4>,
        gamma: Tensor<FlexAutodiff, 1>,
        beta: Tensor<FlexAutodiff, 1>,
        op: Op,
        dims: [usize; 4],
    ) -> Tensor<FlexAutodiff, 4> {
        let (x, gamma, beta) = (
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            beta.into_primitive().tensor(),
        );
        let (stats, y) = forward(&x.primitive, &gamma.primitive, &beta.primitive, op);
        let y = FlexTensor::from_data(TensorData::new(y, dims));
        let state = || Saved {
            x: x.primitive.clone(),
            stats,
            gamma: gamma.primitive.clone(),
            beta: beta.primitive.clone(),
            op,
        };
        record(GroupNormBackward, [&x, &gamma, &beta], state, y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    type Ad = Autodiff<Flex>;

    /// Outputs and all three gradients against burn's composition (with and without the SiLU,
    /// channels-first and channels-last), on random shapes including the UNet's, with
    /// non-trivial scale and shift.
    #[test]
    fn matches_the_composition_and_its_gradients() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut cases: Vec<([usize; 4], usize)> = (0..12)
            .map(|_| {
                let groups = rng.random_range(1..4);
                let c = groups * rng.random_range(1..4);
                let dims = [
                    rng.random_range(1..5),
                    c,
                    rng.random_range(1..8),
                    rng.random_range(1..8),
                ];
                (dims, groups)
            })
            .collect();
        // A channels-last pixel longer than the kernels' L1 block too.
        cases.extend([
            ([6, 32, 14, 14], 8),
            ([5, 64, 4, 4], 8),
            ([2, 1040, 2, 1], 8),
        ]);
        let device = Default::default();
        for (i, (dims, groups)) in cases.into_iter().enumerate() {
            let variants = [false, true].into_iter().flat_map(|activate| {
                [Layout::ChannelsFirst, Layout::ChannelsLast].map(|layout| (activate, layout))
            });
            for (activate, layout) in variants {
                Ad::seed(&device, i as u64);
                let c = dims[1];
                let x = Tensor::<Ad, 4>::random(dims, Distribution::Normal(1.0, 3.0), &device)
                    .require_grad();
                let gamma = Tensor::<Ad, 1>::random([c], Distribution::Normal(1.0, 0.5), &device)
                    .require_grad();
                let beta = Tensor::<Ad, 1>::random([c], Distribution::Normal(0.0, 0.5), &device)
                    .require_grad();
                let probe = Tensor::<Ad, 4>::random(dims, Distribution::Default, &device);
                let params = (gamma.clone(), beta.clone());
                // Channels-last maps go in transposed and come out transposed back.
                let input = relayout(x.clone(), Layout::ChannelsFirst, layout);
                let fused = normalise(input, params, groups, activate, layout);
                let fused = relayout(fused, layout, Layout::ChannelsFirst);
                let plain = composed(x.clone(), gamma.clone(), beta.clone(), groups);
                let plain = if activate {
                    crate::nn::silu(plain)
                } else {
                    plain
                };
                let tolerance = Tolerance::rel_abs(1e-4, 1e-4);
                let case = format!("{dims:?}, {groups} groups, silu {activate}, {layout:?}");
                fused
                    .clone()
                    .into_data()
                    .assert_approx_eq::<f32>(&plain.clone().into_data(), tolerance);
                let gf = (fused * probe.clone()).sum().backward();
                let gp = (plain * probe).sum().backward();
                x.grad(&gf)
                    .expect("dx")
                    .into_data()
                    .assert_approx_eq::<f32>(&x.grad(&gp).expect("dx").into_data(), tolerance);
                for (name, p) in [("gamma", &gamma), ("beta", &beta)] {
                    let (f, r) = (p.grad(&gf).expect("grad"), p.grad(&gp).expect("grad"));
                    assert_eq!(f.dims(), r.dims(), "{name} of {case}");
                    f.into_data()
                        .assert_approx_eq::<f32>(&r.into_data(), tolerance);
                }
            }
        }
    }
}
