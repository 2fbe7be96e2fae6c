//! A linear layer followed by SiLU, `silu(x·W + b)`, fused on the default CPU backend.
//!
//! Composed from burn's operations, one hidden layer of the MLP costs, besides its matrix
//! products, a zero-fill of the output, a broadcast bias add, the SiLU pass, and in the
//! backward pass the SiLU gradient, a column sum for the bias and fresh buffers for each: at
//! batch 4096 these memory passes took as long as the products themselves (docs/benchmarks.md).
//! Here the output starts as the bias rows and the product accumulates into it (gemm's
//! `dst := dst + x·W`), the SiLU runs in the same buffer's cache-warm rows, and the backward
//! pass is one SiLU-gradient pass (in place), one column sum and two products. Other backends
//! take `silu(layer.forward(x))`.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `silu(x·W + b)` for a burn [`Linear`] layer and `x` of shape `[n, d_input]`. The same
/// function as `silu(layer.forward(x))`; on `Flex`/`Autodiff<Flex>` with `f32` data and a bias
/// it is one fused op with its own backward step.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use integration_flow::backend::Cpu;
/// use integration_flow::nn::{linear_silu, silu};
/// let device = Default::default();
/// let layer = LinearConfig::new(3, 4).init::<Cpu>(&device);
/// let x = Tensor::<Cpu, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
/// let fused = linear_silu(&layer, x.clone());
/// let plain = silu(layer.forward(x));
/// assert!((fused - plain).abs().max().into_scalar() < 1e-5);
/// # }
/// ```
pub fn linear_silu<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let x = if super::fused_kernels() {
        match flex::linear_silu(layer, x) {
            Ok(y) => return y,
            Err(x) => x,
        }
    } else {
        x
    };
    super::silu(layer.forward(x))
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{
        l2_cache_bytes, on_flex, par_vec_map, par_vecs_map, product, record, update_values, values,
        FlexAutodiff,
    };
    use super::super::silu::{backward_block, forward_block, forward_slice};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::Flex;
    use burn::nn::Linear;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    /// The fused op where it applies (flex, f32, a bias, consistent shapes); `x` back
    /// otherwise.
    pub(super) fn linear_silu<B: Backend>(
        layer: &Linear<B>,
        x: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let Some(bias) = &layer.bias else {
            return Err(x);
        };
        let weight = layer.weight.val();
        let bias = bias.val();
        let [_, d_in] = x.dims();
        let [w_in, w_out] = weight.dims();
        let f32s = [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3];
        if !f32s || w_in != d_in || d_in == 0 || w_out == 0 || bias.dims() != [w_out] {
            return Err(x);
        }
        on_flex((x, weight, bias), autodiff, |x, w, b| {
            let (_, y) = forward(&x, &w, &b);
            output(y, x.layout().shape()[0], w.layout().shape()[1])
        })
    }

    fn output(values: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, [rows, cols]))
    }

    /// Rows per block of the blocked passes over `rows` rows of `width` values: about two
    /// blocks per rayon thread, each at most half a core's L2 cache so that it stays there
    /// between the product and the SiLU pass (fewer, larger blocks repack the weight less
    /// often: on a 2 MiB L2, 1 MiB blocks took 1.5% off the batch-4096 MLP step against 512
    /// KiB).
    fn block_rows(rows: usize, width: usize) -> usize {
        let fits = l2_cache_bytes() / 2 / (4 * width.max(1));
        (rows / (2 * rayon::current_num_threads().max(1))).clamp(8, fits.max(8))
    }

    /// `(h, y)`: the pre-activation `h = x·W + b` and `y = silu(h)` (`[n, d_out]`, row-major).
    /// With at least two blocks of rows, each rayon task takes whole blocks (the bias rows get
    /// the product added, then SiLU while they are in cache); a smaller batch
    /// takes one product split over the threads, then the SiLU pass.
    fn forward(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> (Vec<f32>, Vec<f32>) {
        let (xs, ws, bs) = (values(x), values(w), values(b));
        let rows = x.layout().shape()[0];
        let [d_in, d_out] = [w.layout().shape()[0], w.layout().shape()[1]];
        // h starts as the bias rows; the product adds x·W.
        let block = block_rows(rows, d_out);
        let run = |h: &mut [f32], y: &mut [f32], x: &[f32], threads: bool| {
            let m = h.len() / d_out.max(1);
            let shape = (m, d_out, d_in);
            product(h, (true, threads), shape, x, (d_in, 1), &ws, (d_out, 1));
            if threads {
                forward_slice(h, y);
            } else {
                forward_block(h, y);
            }
        };
        if rows >= 2 * block && d_out > 0 && d_in > 0 {
            // Each block's h (starting as the bias rows) and y made by the thread that computes
            // them (no serial fill).
            let len = rows * d_out;
            let blocks = xs.par_chunks(block * d_in);
            let specs = [(len, block * d_out, &bs[..]), (len, block * d_out, &[][..])];
            let ([h, y], _) = par_vecs_map(specs, blocks, |[h, y], x| run(h, y, x, false));
            (h, y)
        } else {
            let (mut h, mut y) = (bs.repeat(rows), vec![0.0f32; rows * d_out]);
            run(&mut h, &mut y, &xs, true);
            (h, y)
        }
    }

    /// What the backward step keeps: the input, the weight and the pre-activation.
    #[derive(Clone, Debug)]
    struct Saved {
        x: FlexTensor,
        w: FlexTensor,
        h: FlexTensor,
    }

    /// One block's share of the bias gradient and of the weight gradient.
    type Partial = (Vec<f32>, Vec<f32>);

    #[derive(Debug)]
    struct LinearSiluBackward;

    impl Backward<Flex, 3> for LinearSiluBackward {
        type State = Saved;

        fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let Saved { x, w, h } = ops.state;
            let [x_node, w_node, b_node] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let rows = x.layout().shape()[0];
            let [d_in, d_out] = [w.layout().shape()[0], w.layout().shape()[1]];
            // Per block of rows (in parallel), while the block is in cache: g ← g·silu'(h),
            // the block's share of the bias gradient and of dW = xᵀ·g, and dx = g·Wᵀ for its
            // rows. The shares are summed after (one partial dW per block: a few hundred KiB).
            let (hs, ws, xs) = (values(&h), values(&w), values(&x));
            let dx_len = if x_node.is_some() { rows * d_in } else { 0 };
            let block = block_rows(rows, d_out.max(d_in));
            let want_dw = w_node.is_some();
            let mut partials: Vec<Partial> = Vec::new();
            let mut dx = Vec::new();
            // g ← g·silu'(h), the gradient with respect to the pre-activation, in the incoming
            // gradient's own buffer where nobody else holds it; each block's dx made by the
            // thread that computes it.
            update_values(grad, |g| {
                let blocks = g
                    .par_chunks_mut(block * d_out.max(1))
                    .zip(hs.par_chunks(block * d_out.max(1)))
                    .zip(xs.par_chunks(block * d_in.max(1)));
                (dx, partials) = par_vec_map(dx_len, block * d_in, blocks, |dx, ((g, h), x)| {
                    backward_block(h, g);
                    let m = g.len() / d_out.max(1);
                    let mut sums = vec![0.0f32; d_out];
                    for row in g.chunks_exact(d_out.max(1)) {
                        for (s, v) in sums.iter_mut().zip(row) {
                            *s += v;
                        }
                    }
                    let mut dw = Vec::new();
                    if want_dw {
                        dw = vec![0.0f32; d_in * d_out];
                        let shape = (d_in, d_out, m);
                        product(&mut dw, (false, false), shape, x, (1, d_in), g, (d_out, 1));
                    }
                    if !dx.is_empty() {
                        let shape = (m, d_in, d_out);
                        product(dx, (false, false), shape, g, (d_out, 1), &ws, (1, d_out));
                    }
                    (sums, dw)
                });
            });
            let total = |len: usize, part: fn(&Partial) -> &Vec<f32>| {
                let mut sum = vec![0.0f32; len];
                for p in &partials {
                    for (s, v) in sum.iter_mut().zip(part(p)) {
                        *s += v;
                    }
                }
                sum
            };
            if let Some(node) = b_node {
                let db = total(d_out, |p| &p.0);
                grads
                    .register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(db, [d_out])));
            }
            if let Some(node) = w_node {
                grads.register::<Flex>(node.id, output(total(d_in * d_out, |p| &p.1), d_in, d_out));
            }
            if let Some(node) = x_node {
                grads.register::<Flex>(node.id, output(dx, rows, d_in));
            }
        }
    }

    fn autodiff(
        x: Tensor<FlexAutodiff, 2>,
        weight: Tensor<FlexAutodiff, 2>,
        bias: Tensor<FlexAutodiff, 1>,
    ) -> Tensor<FlexAutodiff, 2> {
        let (x, w, b) = (
            x.into_primitive().tensor(),
            weight.into_primitive().tensor(),
            bias.into_primitive().tensor(),
        );
        let rows = x.primitive.layout().shape()[0];
        let d_out = w.primitive.layout().shape()[1];
        let (h, y) = forward(&x.primitive, &w.primitive, &b.primitive);
        let y = output(y, rows, d_out);
        let state = || Saved {
            x: x.primitive.clone(),
            w: w.primitive.clone(),
            h: output(h, rows, d_out),
        };
        record(LinearSiluBackward, [&x, &w, &b], state, y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, Tolerance};

    type Ad = Autodiff<Flex>;

    /// Forward values and all three gradients against burn's composition, at a size that
    /// runs single-threaded and one that runs the parallel product and SiLU paths.
    #[test]
    fn matches_the_composed_layer_and_its_gradients() {
        for (rows, d_in, d_out) in [(7, 5, 3), (600, 96, 256)] {
            let device = Default::default();
            let layer = LinearConfig::new(d_in, d_out).init::<Ad>(&device);
            // A transposed input exercises the copy path for non-contiguous data.
            let x = Tensor::<Ad, 2>::random([d_in, rows], Distribution::Normal(0.0, 2.0), &device)
                .transpose()
                .require_grad();
            let probe = Tensor::<Ad, 2>::random([rows, d_out], Distribution::Default, &device);
            let fused = linear_silu(&layer, x.clone());
            let plain = crate::nn::silu(layer.forward(x.clone()));
            let tolerance = Tolerance::rel_abs(1e-4, 1e-5);
            fused
                .clone()
                .into_data()
                .assert_approx_eq::<f32>(&plain.clone().into_data(), tolerance);
            let fused_grads = (fused * probe.clone()).sum().backward();
            let plain_grads = (plain * probe).sum().backward();
            let grad_of = |t: &Tensor<Ad, 2>, g: &_| t.grad(g).expect("gradient").into_data();
            grad_of(&x, &fused_grads)
                .assert_approx_eq::<f32>(&grad_of(&x, &plain_grads), tolerance);
            // dW and db sum `rows` terms in another order (per block, then across blocks):
            // rounding of about eps·√rows times the terms' size (order 1), not of the sum.
            let summed = Tolerance::rel_abs(1e-4, 1e-4);
            let w = layer.weight.val();
            grad_of(&w, &fused_grads).assert_approx_eq::<f32>(&grad_of(&w, &plain_grads), summed);
            let b = layer.bias.as_ref().expect("bias").val();
            b.grad(&fused_grads)
                .expect("gradient")
                .into_data()
                .assert_approx_eq::<f32>(
                    &b.grad(&plain_grads).expect("gradient").into_data(),
                    summed,
                );
        }
    }

    #[test]
    fn inference_backend_takes_the_fused_forward_pass() {
        let device = Default::default();
        let layer = LinearConfig::new(4, 6).init::<Flex>(&device);
        let x = Tensor::<Flex, 2>::random([9, 4], Distribution::Normal(0.0, 1.0), &device);
        linear_silu(&layer, x.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &crate::nn::silu(layer.forward(x)).into_data(),
                Tolerance::rel_abs(1e-5, 1e-6),
            );
    }
}
