//! `softmax(scale·x)` over the last dimension, fused on the default CPU backend.
//!
//! burn composes softmax from a max, a subtraction, `exp`, a sum and a division, each a pass
//! with its own buffer, and the division's gradient broadcasts the sums back over strided views
//! (in a profile of the UNet step the attention's softmax gradient was the largest user of
//! flex's element-by-element strided iterator). Here the forward pass is one pass per row and
//! the gradient, `scale·y·(dy − ⟨dy, y⟩)`, one more. Other backends take burn's softmax.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `softmax(scale·x)` along the last dimension (the attention weights of scores `x` with the
/// `1/√d` scale folded in).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Tensor;
/// use integration_flow::backend::Cpu;
/// use integration_flow::nn::scaled_softmax;
/// let x = Tensor::<Cpu, 2>::from_floats([[0.0, 2.0], [1.0, 1.0]], &Default::default());
/// let y: Vec<f32> = scaled_softmax(x, 0.5).into_data().to_vec().unwrap();
/// let e = 1.0f32.exp();
/// assert!((y[0] - 1.0 / (1.0 + e)).abs() < 1e-6 && (y[2] - 0.5).abs() < 1e-6);
/// # }
/// ```
pub fn scaled_softmax<B: Backend, const D: usize>(x: Tensor<B, D>, scale: f64) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = if super::fused_kernels() {
        match flex::scaled_softmax(x, scale as f32) {
            Ok(y) => return y,
            Err(x) => x,
        }
    } else {
        x
    };
    softmax(x.mul_scalar(scale), D - 1)
}

/// The kernels on rows of `len` values.
#[cfg(feature = "flex")]
pub(super) mod kernels {
    use super::super::exp::exp;
    use rayon::prelude::*;

    /// Rows per rayon task: about 16K values.
    fn rows_per_task(len: usize) -> usize {
        ((1 << 14) / len.max(1)).max(1)
    }

    /// One row: `y = softmax(scale·x)`.
    pub(in super::super) fn forward_row(x: &[f32], scale: f32, y: &mut [f32]) {
        // The largest scaled score (the smallest score if the scale is negative).
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
        let mut sum = 0.0f32;
        for (y, &x) in y.iter_mut().zip(x) {
            *y = exp(x * scale - max);
            sum += *y;
        }
        let inv = 1.0 / sum;
        y.iter_mut().for_each(|y| *y *= inv);
    }

    /// One row: `g ← scale·y·(g − ⟨g, y⟩)`, the gradient with respect to the unscaled scores.
    pub(in super::super) fn backward_row(y: &[f32], scale: f32, g: &mut [f32]) {
        let dot: f32 = g.iter().zip(y).map(|(g, y)| g * y).sum();
        for (g, y) in g.iter_mut().zip(y) {
            *g = scale * y * (*g - dot);
        }
    }

    pub(super) fn forward(x: &[f32], len: usize, scale: f32) -> Vec<f32> {
        let mut y = vec![0.0f32; x.len()];
        let chunk = rows_per_task(len) * len;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(len).zip(x.chunks_exact(len)) {
                    forward_row(x, scale, y);
                }
            });
        y
    }

    /// `grad ← scale·y·(grad − ⟨grad, y⟩)` per row.
    pub(super) fn backward(y: &[f32], len: usize, scale: f32, grad: &mut [f32]) {
        let chunk = rows_per_task(len) * len;
        grad.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk))
            .for_each(|(g, y)| {
                for (g, y) in g.chunks_exact_mut(len).zip(y.chunks_exact(len)) {
                    backward_row(y, scale, g);
                }
            });
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{on_flex_unary, record, update_values, values, FlexAutodiff};
    use super::kernels;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::FlexTensor;

    /// The fused op if `B` is `Flex` or `Autodiff<Flex>` with `f32` data; the input back
    /// otherwise.
    pub(super) fn scaled_softmax<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        scale: f32,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if x.dtype() != DType::F32 || D == 0 || x.dims()[D - 1] == 0 {
            return Err(x);
        }
        on_flex_unary(x, |x| autodiff(x, scale), |x| forward(&x, scale))
    }

    fn last(t: &FlexTensor) -> usize {
        let shape = t.layout().shape();
        shape[shape.num_dims() - 1]
    }

    fn forward(x: &FlexTensor, scale: f32) -> FlexTensor {
        let y = kernels::forward(&values(x), last(x), scale);
        FlexTensor::from_data(TensorData::new(y, x.layout().shape().clone()))
    }

    /// The backward step, with the output `y` kept from the forward pass.
    #[derive(Debug)]
    struct SoftmaxBackward;

    impl Backward<Flex, 1> for SoftmaxBackward {
        type State = (FlexTensor, f32);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (y, scale) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                update_values(grad, |g| kernels::backward(&values(&y), last(&y), scale, g))
            });
        }
    }

    fn autodiff<const D: usize>(x: Tensor<FlexAutodiff, D>, scale: f32) -> Tensor<FlexAutodiff, D> {
        let x = x.into_primitive().tensor();
        let y = forward(&x.primitive, scale);
        let state = (y.clone(), scale);
        record(SoftmaxBackward, [&x], || state, y)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type Ad = Autodiff<Flex>;

    /// Values and gradients against burn's softmax, on a strided input (scores are products of
    /// transposed views) and rows of several lengths, large scores included.
    #[test]
    fn matches_burns_softmax_and_its_gradient() {
        let device = Default::default();
        <Ad as burn::tensor::backend::Backend>::seed(&device, 7);
        for (dims, scale) in [
            ([2, 3, 7, 5], 0.25),
            ([4, 2, 49, 49], 1.0),
            ([1, 1, 3, 16], 30.0),
        ] {
            let [a, b, rows, len] = dims;
            let x =
                Tensor::<Ad, 4>::random([a, b, len, rows], Distribution::Normal(0.0, 3.0), &device)
                    .require_grad();
            // A backward pass consumes the graph it runs, so each side gets its own view.
            let view = || x.clone().swap_dims(2, 3);
            let probe = Tensor::<Ad, 4>::random(dims, Distribution::Default, &device);
            let fused = scaled_softmax(view(), scale);
            let plain = softmax(view().mul_scalar(scale), 3);
            let tolerance = Tolerance::rel_abs(1e-4, 1e-6);
            fused
                .to_data()
                .assert_approx_eq::<f32>(&plain.to_data(), tolerance);
            let gf = (fused * probe.clone()).sum().backward();
            let gp = (plain * probe).sum().backward();
            // The gradient is `scale·y·(dy − ⟨dy, y⟩)`: a difference of order-1 terms times the
            // scale, so its rounding is absolute, in units of the scale.
            let tolerance = Tolerance::rel_abs(1e-4, 1e-5 * f64::abs(scale).max(1.0));
            x.grad(&gf)
                .expect("dx")
                .into_data()
                .assert_approx_eq::<f32>(&x.grad(&gp).expect("dx").into_data(), tolerance);
        }
    }

    /// A negative scale turns the largest score into the smallest: the shift that keeps `exp`
    /// in range must come from the scaled scores.
    #[test]
    fn a_negative_scale_over_a_wide_range() {
        let x = Tensor::<Flex, 2>::from_floats([[0.0, 1.0, 100.0]], &Default::default());
        let y: Vec<f32> = scaled_softmax(x, -1.0).into_data().to_vec().expect("f32");
        let e = 1.0f32.exp();
        let want = [e / (1.0 + e), 1.0 / (1.0 + e), 0.0];
        for (y, w) in y.iter().zip(want) {
            assert!((y - w).abs() < 1e-6, "{y} against {w}");
        }
    }
}
