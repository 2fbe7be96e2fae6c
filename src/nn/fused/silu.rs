//! SiLU, `x·σ(x)`, with a fused and vectorised kernel on the default CPU backend.
//!
//! burn composes SiLU from `sigmoid` and a product: on flex that is a scalar `libm` call of
//! `exp` per element in the forward pass and again in the backward pass, single-threaded. A
//! `perf` profile of the MLP training step put those calls at a third of the step (`__expf_fma`
//! 19%, the unary loop 14%). Here the forward pass and the gradient are each one pass over the
//! data, with a branch-free `exp` that the compiler vectorises (AVX2 and FMA where the CPU
//! has them, chosen at run time), split over rayon's threads for large tensors. Other
//! backends and other float types take burn's own SiLU.

// The kernels are wired to flex only; without it they are unused (but still compiled and
// unit-tested).
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

use super::exp::exp;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// SiLU (swish), `x·σ(x)`, elementwise. The same function as `burn::tensor::activation::silu`;
/// on `Flex` and `Autodiff<Flex>` with `f32` data it runs a fused kernel (forward and
/// gradient), within a few float rounding steps of burn's (relative error below 1e-6).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Tensor;
/// use integration_flow::backend::Cpu;
/// use integration_flow::nn::silu;
/// let x = Tensor::<Cpu, 1>::from_floats([-1.0, 0.0, 2.0], &Default::default());
/// let y: Vec<f32> = silu(x).into_data().to_vec().unwrap();
/// assert!((y[0] + 0.268_941_4).abs() < 1e-6 && y[1] == 0.0 && (y[2] - 1.761_594_2).abs() < 1e-6);
/// # }
/// ```
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = if super::fused_kernels() {
        match flex::silu(x) {
            Ok(y) => return y,
            Err(x) => x,
        }
    } else {
        x
    };
    burn::tensor::activation::silu(x)
}

/// Elements below which one thread does the whole pass: waking rayon's threads costs more
/// than it saves (at 2¹⁵ thread switches showed in the profile of the batch-512 MLP step).
const PARALLEL_MIN: usize = 1 << 18;
/// Elements per rayon task.
const CHUNK: usize = 1 << 16;

#[inline(always)]
fn forward_portable(x: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = x / (1.0 + exp(-x));
    }
}

/// `grad ← grad·σ(x)·(1 + x·(1 − σ(x)))`, the derivative of `x·σ(x)`.
#[inline(always)]
fn backward_portable(x: &[f32], grad: &mut [f32]) {
    for (g, &x) in grad.iter_mut().zip(x) {
        let s = 1.0 / (1.0 + exp(-x));
        *g *= s * (1.0 + x * (1.0 - s));
    }
}

/// The two passes over a block: `data[i] = silu(x[i])` (forward) or
/// `data[i] *= silu'(x[i])` (backward).
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    Backward,
}

#[inline(always)]
fn run_portable(pass: Pass, x: &[f32], data: &mut [f32]) {
    match pass {
        Pass::Forward => forward_portable(x, data),
        Pass::Backward => backward_portable(x, data),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2(pass: Pass, x: &[f32], data: &mut [f32]) {
    run_portable(pass, x, data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn run_avx512(pass: Pass, x: &[f32], data: &mut [f32]) {
    let whole = x.len().min(data.len()) / 16 * 16;
    // SAFETY: the CPU has AVX-512F (this function's target features, checked by the caller);
    // both slices hold `whole` values.
    unsafe { avx512::run(pass, &x[..whole], &mut data[..whole]) };
    run_portable(pass, &x[whole..], &mut data[whole..])
}

/// SiLU in AVX-512 registers, 16 values at a time. The portable loops, compiled for AVX-512,
/// spent a third of their time waiting on `vdivps` (σ = 1/(1 + e^−x)) and did not fuse the
/// polynomial's multiply-adds; here the reciprocal is `vrcp14ps` refined by one Newton step
/// (relative error about 2⁻²⁸), the polynomial runs in FMAs and `vscalefps` applies `2^n`.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Pass;
    use std::arch::x86_64::*;

    /// `e^x` as [`super::exp`] computes it: the same clamp, split and polynomial.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    fn exp(x: __m512) -> __m512 {
        // max/min return their second operand where either is NaN: x stays NaN.
        let x = _mm512_min_ps(
            _mm512_set1_ps(88.0),
            _mm512_max_ps(_mm512_set1_ps(-87.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let c = _mm512_set1_ps;
        let p = _mm512_fmadd_ps(c(1.987_569_1e-4), r, c(1.398_199_9e-3));
        let p = _mm512_fmadd_ps(p, r, c(8.333_452e-3));
        let p = _mm512_fmadd_ps(p, r, c(4.166_579_6e-2));
        let p = _mm512_fmadd_ps(p, r, c(1.666_666_5e-1));
        let p = _mm512_fmadd_ps(p, r, c(0.5));
        let e_r = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, c(1.0)));
        _mm512_scalef_ps(e_r, n)
    }

    /// σ(x) = 1/(1 + e^−x).
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    fn sigmoid(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let d = _mm512_add_ps(one, exp(_mm512_sub_ps(_mm512_setzero_ps(), x)));
        let y = _mm512_rcp14_ps(d);
        // One Newton step: y·(2 − d·y).
        _mm512_mul_ps(y, _mm512_fnmadd_ps(d, y, _mm512_set1_ps(2.0)))
    }

    /// # Safety
    /// The CPU has AVX-512F and FMA; `x` and `data` have the same length, a multiple of 16.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn run(pass: Pass, x: &[f32], data: &mut [f32]) {
        for (x, data) in x.chunks_exact(16).zip(data.chunks_exact_mut(16)) {
            // SAFETY: each chunk holds 16 values.
            unsafe {
                let v = _mm512_loadu_ps(x.as_ptr());
                let s = sigmoid(v);
                let out = match pass {
                    Pass::Forward => _mm512_mul_ps(v, s),
                    Pass::Backward => {
                        // g·σ·(1 + x·(1 − σ)).
                        let one = _mm512_set1_ps(1.0);
                        let t = _mm512_fmadd_ps(v, _mm512_sub_ps(one, s), one);
                        let g = _mm512_loadu_ps(data.as_ptr());
                        _mm512_mul_ps(g, _mm512_mul_ps(s, t))
                    }
                };
                _mm512_storeu_ps(data.as_mut_ptr(), out);
            }
        }
    }
}

/// The widest vector unit this CPU has that the kernels are compiled for.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

#[cfg(target_arch = "x86_64")]
fn simd() -> Simd {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx2") && has!("fma") {
        Simd::Avx512
    } else if has!("avx2") && has!("fma") {
        Simd::Avx2
    } else {
        Simd::Baseline
    }
}

/// One pass over one block, on this thread, with the widest kernel the CPU runs.
fn run_block(pass: Pass, x: &[f32], data: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked at run time by `simd`).
        Simd::Avx512 => return unsafe { run_avx512(pass, x, data) },
        // SAFETY: the CPU has AVX2 and FMA (checked at run time by `simd`).
        Simd::Avx2 => return unsafe { run_avx2(pass, x, data) },
        Simd::Baseline => {}
    }
    run_portable(pass, x, data)
}

/// One pass over a slice, on rayon's threads when it is large.
fn run_slice(pass: Pass, x: &[f32], data: &mut [f32]) {
    use rayon::prelude::*;
    if x.len() < PARALLEL_MIN {
        run_block(pass, x, data);
    } else {
        data.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(data, x)| run_block(pass, x, data));
    }
}

/// `out[i] = silu(x[i])`, one block, on this thread.
pub(crate) fn forward_block(x: &[f32], out: &mut [f32]) {
    run_block(Pass::Forward, x, out)
}

/// `grad[i] *= silu'(x[i])`, one block, on this thread.
pub(crate) fn backward_block(x: &[f32], grad: &mut [f32]) {
    run_block(Pass::Backward, x, grad)
}

/// The SiLU forward pass over a slice, on rayon's threads when it is large.
pub(crate) fn forward_slice(x: &[f32], out: &mut [f32]) {
    run_slice(Pass::Forward, x, out)
}

/// The SiLU gradient over a slice (`grad` is multiplied in place), on rayon's threads when
/// it is large.
pub(crate) fn backward_slice(x: &[f32], grad: &mut [f32]) {
    run_slice(Pass::Backward, x, grad)
}

/// The flex paths: an autodiff op with its own backward step, and the plain forward pass.
#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{cast, record, update_values, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;

    type FlexAutodiff = Autodiff<Flex>;

    /// The fused SiLU if `B` is `Flex` or `Autodiff<Flex>` and the data is `f32`; the input
    /// back otherwise.
    pub(super) fn silu<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        let x = match cast::<Tensor<B, D>, Tensor<FlexAutodiff, D>>(x) {
            Ok(x) => return Ok(cast(autodiff(x)).unwrap_or_else(|_| unreachable!())),
            Err(x) => x,
        };
        match cast::<Tensor<B, D>, Tensor<Flex, D>>(x) {
            Ok(x) => {
                let y = forward(&x.into_primitive().tensor());
                let y = Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(y));
                Ok(cast(y).unwrap_or_else(|_| unreachable!()))
            }
            Err(x) => Err(x),
        }
    }

    fn forward(x: &FlexTensor) -> FlexTensor {
        let x_values = values(x);
        let mut out = vec![0.0f32; x_values.len()];
        super::forward_slice(&x_values, &mut out);
        FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
    }

    fn backward(x: &FlexTensor, grad: FlexTensor) -> FlexTensor {
        let x_values = values(x);
        update_values(grad, |grad| super::backward_slice(&x_values, grad))
    }

    /// The backward step: `grad·silu'(x)`, with `x` kept from the forward pass.
    #[derive(Debug)]
    struct SiluBackward;

    impl Backward<Flex, 1> for SiluBackward {
        type State = FlexTensor;

        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| backward(&x, grad));
        }
    }

    fn autodiff<const D: usize>(x: Tensor<FlexAutodiff, D>) -> Tensor<FlexAutodiff, D> {
        let x = x.into_primitive().tensor();
        let out = forward(&x.primitive);
        let state = || x.primitive.clone();
        record(SiluBackward, [&x], state, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_silu(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    fn reference_grad(x: f64) -> f64 {
        let s = 1.0 / (1.0 + (-x).exp());
        s * (1.0 + x * (1.0 - s))
    }

    fn inputs() -> Vec<f32> {
        // Dense around 0, out to ±120 (past the clamp), at more than PARALLEL_MIN values so the
        // parallel path runs too.
        (0..(PARALLEL_MIN + 1001))
            .map(|i| {
                let u = i as f32 / (PARALLEL_MIN + 1000) as f32 * 2.0 - 1.0;
                u * u.abs() * 120.0
            })
            .collect()
    }

    #[test]
    fn exp_is_accurate_over_the_float_range() {
        for i in 0..=20_000 {
            let x = -87.0 + 175.0 * i as f32 / 20_000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            assert!(rel < 3e-7, "exp({x}) = {} against {want}", exp(x));
        }
        assert!(exp(f32::NAN).is_nan());
    }

    type Kernel = fn(&[f32], &mut [f32]);

    /// Every kernel pair this CPU can run: the dispatching entry points, and each
    /// instruction-set variant directly (the entry points only take the widest).
    fn kernels() -> Vec<(&'static str, Kernel, Kernel)> {
        let mut kernels: Vec<(&'static str, Kernel, Kernel)> = vec![
            ("dispatch", forward_slice, backward_slice),
            ("portable", forward_portable, backward_portable),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY (both closures): pushed only when `simd` found the features.
            if simd() != Simd::Baseline {
                kernels.push((
                    "avx2",
                    |x, o| unsafe { run_avx2(Pass::Forward, x, o) },
                    |x, g| unsafe { run_avx2(Pass::Backward, x, g) },
                ));
            }
            if simd() == Simd::Avx512 {
                kernels.push((
                    "avx512",
                    |x, o| unsafe { run_avx512(Pass::Forward, x, o) },
                    |x, g| unsafe { run_avx512(Pass::Backward, x, g) },
                ));
            }
        }
        kernels
    }

    #[test]
    fn forward_and_gradient_match_the_closed_forms() {
        for (name, forward, backward) in kernels() {
            check_kernel(name, forward, backward);
        }
    }

    fn check_kernel(name: &str, forward: Kernel, backward: Kernel) {
        let x = inputs();
        let mut y = vec![0.0; x.len()];
        forward(&x, &mut y);
        let mut g = vec![1.5; x.len()];
        backward(&x, &mut g);
        for ((&x, &y), &g) in x.iter().zip(&y).zip(&g) {
            let (want_y, want_g) = (reference_silu(x as f64), 1.5 * reference_grad(x as f64));
            assert!(
                (y as f64 - want_y).abs() <= 1e-6 * want_y.abs().max(1e-3),
                "{name}: silu({x}) = {y} against {want_y}"
            );
            assert!(
                // The derivative crosses zero near x = −1.28: absolute error there.
                (g as f64 - want_g).abs() <= 1e-6 * want_g.abs().max(1.0),
                "{name}: silu'({x})·1.5 = {g} against {want_g}"
            );
        }
    }

    #[test]
    fn the_avx512_kernel_matches_the_portable_one() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            use rand::rngs::StdRng;
            use rand::{RngExt, SeedableRng};
            let mut rng = StdRng::seed_from_u64(9);
            // Ordinary values, the clamp's range and beyond, infinities, NaN and zeros; a length
            // that leaves a remainder for the portable loop.
            let mut x: Vec<f32> = (0..1000).map(|_| rng.random_range(-12.0..12.0)).collect();
            x.extend([-1e4, -100.0, -88.0, -87.0, 87.0, 89.0, 1e4, f32::INFINITY]);
            x.extend([f32::NEG_INFINITY, f32::NAN, 0.0, -0.0, 1e-30, -1e-30, 1e-3]);
            for pass in [Pass::Forward, Pass::Backward] {
                let (mut fast, mut plain) = (vec![0.5f32; x.len()], vec![0.5f32; x.len()]);
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                unsafe { run_avx512(pass, &x, &mut fast) };
                run_portable(pass, &x, &mut plain);
                for ((a, b), x) in fast.iter().zip(&plain).zip(&x) {
                    // The gradient's factor 1 + x·(1 − σ) cancels near x = −1.28: its rounding
                    // is in units of its terms, (1 + |x|)·g with g = 0.5.
                    let terms = match pass {
                        Pass::Forward => 0.0,
                        Pass::Backward => 0.5 * (1.0 + x.abs()),
                    };
                    let close = (a - b).abs() <= 2e-6 * (b.abs() + terms);
                    let nans = a.is_nan() && b.is_nan();
                    assert!(close || a == b || nans, "x = {x}: {a} against {b}");
                }
            }
        }
    }

    #[test]
    fn nan_propagates() {
        let x = [f32::NAN, 1.0];
        let mut y = [0.0; 2];
        forward_slice(&x, &mut y);
        assert!(y[0].is_nan() && y[1].is_finite());
        let mut g = [1.0; 2];
        backward_slice(&x, &mut g);
        assert!(g[0].is_nan() && g[1].is_finite());
    }

    #[cfg(feature = "flex")]
    #[test]
    fn flex_paths_match_burns_silu_and_its_gradient() {
        use burn::backend::{Autodiff, Flex};
        use burn::tensor::{Distribution, Tolerance};
        type Ad = Autodiff<Flex>;
        let device = Default::default();
        // A transposed (non-contiguous) input exercises the copy path.
        let base = Tensor::<Ad, 2>::random([300, 200], Distribution::Normal(0.0, 4.0), &device);
        let weights = Tensor::<Ad, 2>::random([200, 300], Distribution::Normal(0.0, 1.0), &device);
        let ours_x = base.clone().transpose().require_grad();
        let theirs_x = base.transpose().require_grad();
        let ours = silu(ours_x.clone());
        let theirs = burn::tensor::activation::silu(theirs_x.clone());
        ours.clone()
            .into_data()
            .assert_approx_eq::<f32>(&theirs.clone().into_data(), Tolerance::rel_abs(1e-5, 1e-6));
        let ours_grad = (ours * weights.clone()).sum().backward();
        let theirs_grad = (theirs * weights).sum().backward();
        ours_x
            .grad(&ours_grad)
            .expect("gradient reaches the input")
            .into_data()
            .assert_approx_eq::<f32>(
                &theirs_x
                    .grad(&theirs_grad)
                    .expect("gradient reaches the input")
                    .into_data(),
                Tolerance::rel_abs(1e-5, 1e-6),
            );
        // The inner backend (inference) takes the fused forward pass too.
        let plain = Tensor::<Flex, 1>::from_floats([-3.0, 0.5, 7.0], &device);
        silu(plain.clone()).into_data().assert_approx_eq::<f32>(
            &burn::tensor::activation::silu(plain).into_data(),
            Tolerance::rel_abs(1e-6, 1e-7),
        );
    }
}
