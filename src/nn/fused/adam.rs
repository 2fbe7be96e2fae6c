//! One Adam update of a parameter tensor and its two moments in one pass, on the default CPU
//! backend.
//!
//! burn's Adam updates each parameter through about ten tensor operations (scaled moments,
//! their sums, a square, a square root, a division, the scaled step), each a pass with a fresh
//! buffer, on one thread below flex's parallel threshold: for the 3×256 MLP at batch 512 that
//! was a tenth of the training step. Here the moments and the parameter are updated in place
//! (where nothing else holds them) in one pass on rayon's threads, with the same arithmetic in
//! the same order as burn's `Adam` (the `train` tests check the weights agree over many steps).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The scalars of one Adam step, as burn's `Adam` computes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AdamStep {
    /// The learning rate.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    /// The L2 penalty added to the gradient (`penalty·param`), 0 for none.
    pub penalty: f32,
    /// The step count after this step (1 for the first).
    pub time: i32,
}

/// A parameter, its gradient and its two moments (absent before the first step).
pub(crate) type AdamTensors<B, const D: usize> = (
    Tensor<B, D>,
    Tensor<B, D>,
    Option<(Tensor<B, D>, Tensor<B, D>)>,
);

/// A parameter and its two moments after a step.
pub(crate) type AdamUpdated<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>);

/// `(param, moment_1, moment_2)` after one Adam step where the tensors are `f32` on
/// `Flex`; the inputs back otherwise (the caller takes burn's `Adam`).
pub(crate) fn adam_update<B: Backend, const D: usize>(
    (param, grad, moments): AdamTensors<B, D>,
    step: AdamStep,
) -> Result<AdamUpdated<B, D>, AdamTensors<B, D>> {
    #[cfg(feature = "flex")]
    if super::fused_kernels() {
        return flex::update((param, grad, moments), step);
    }
    Err((param, grad, moments))
}

#[cfg(feature = "flex")]
mod kernels {
    use super::AdamStep;
    use rayon::prelude::*;

    /// Values per rayon task.
    const CHUNK: usize = 1 << 14;

    /// `p`, `m` and `v` updated by the gradient `g`, element by element.
    pub(super) fn update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: AdamStep) {
        let bias_correction2_sqrt = (1.0 - s.beta2.powi(s.time)).sqrt();
        let combined = bias_correction2_sqrt / (1.0 - s.beta1.powi(s.time));
        let eps = s.epsilon * bias_correction2_sqrt;
        let (f1, f2) = (1.0 - s.beta1, 1.0 - s.beta2);
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    let g = match s.penalty {
                        0.0 => g,
                        penalty => *p * penalty + g,
                    };
                    *m = *m * s.beta1 + g * f1;
                    *v = *v * s.beta2 + g * g * f2;
                    let delta = (*m * combined) / (v.sqrt() + eps);
                    *p -= delta * s.lr;
                }
            });
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::super::flex_ops::{cast, update_values, values};
    use super::{kernels, AdamStep, AdamTensors, AdamUpdated};
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;

    pub(super) fn update<B: Backend, const D: usize>(
        (param, grad, moments): AdamTensors<B, D>,
        step: AdamStep,
    ) -> Result<AdamUpdated<B, D>, AdamTensors<B, D>> {
        let f32s = param.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && moments
                .as_ref()
                .is_none_or(|(m, v)| m.dtype() == DType::F32 && v.dtype() == DType::F32);
        let shapes = param.dims() == grad.dims()
            && moments
                .as_ref()
                .is_none_or(|(m, v)| m.dims() == param.dims() && v.dims() == param.dims());
        if !f32s || !shapes {
            return Err((param, grad, moments));
        }
        let param = match cast::<Tensor<B, D>, Tensor<Flex, D>>(param) {
            Ok(param) => param,
            Err(param) => return Err((param, grad, moments)),
        };
        const SAME: &str = "an optimizer's tensors are on one backend";
        let to_flex = |t: Tensor<B, D>| -> FlexTensor {
            match cast::<Tensor<B, D>, Tensor<Flex, D>>(t) {
                Ok(t) => t.into_primitive().tensor(),
                Err(_) => unreachable!("{SAME}"),
            }
        };
        let dims = param.dims();
        let grad = to_flex(grad);
        let (m, v) = match moments {
            Some((m, v)) => (to_flex(m), to_flex(v)),
            None => {
                let zeros = || {
                    FlexTensor::from_data(TensorData::new(
                        vec![0.0f32; grad.layout().num_elements()],
                        dims,
                    ))
                };
                (zeros(), zeros())
            }
        };
        let g = values(&grad);
        let (mut m, mut v) = (Some(m), Some(v));
        // Each buffer in place where nothing else holds it (update_values), else a copy.
        let p = update_values(param.into_primitive().tensor(), |p| {
            let m_new = update_values(m.take().unwrap_or_else(|| unreachable!()), |m| {
                let v_new = update_values(v.take().unwrap_or_else(|| unreachable!()), |v| {
                    kernels::update(p, m, v, &g, step)
                });
                v = Some(v_new);
            });
            m = Some(m_new);
        });
        let back = |t: Option<FlexTensor>| -> Tensor<B, D> {
            let t = Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(
                t.unwrap_or_else(|| unreachable!("set above")),
            ));
            cast(t).unwrap_or_else(|_| unreachable!("{SAME}"))
        };
        Ok((back(Some(p)), back(m), back(v)))
    }
}
