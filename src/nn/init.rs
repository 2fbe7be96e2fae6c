//! Weight initialisation from a host RNG, so that a seed gives the same network on every
//! backend (burn's own initialisers draw from a global, per-backend RNG).

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::RngExt;

/// A linear layer initialised like PyTorch's default: weight and bias `U(−k, k)`,
/// `k = 1/sqrt(d_input)`.
pub(crate) fn linear<B: Backend>(
    d_input: usize,
    d_output: usize,
    rng: &mut StdRng,
    device: &B::Device,
) -> Linear<B> {
    let k = 1.0 / (d_input as f32).sqrt();
    let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-k..k)).collect() };
    let weight = Tensor::from_data(
        TensorData::new(uniform(d_input * d_output), [d_input, d_output]),
        device,
    );
    let bias = Tensor::from_data(TensorData::new(uniform(d_output), [d_output]), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}
