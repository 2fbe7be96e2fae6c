//! Weight initialisation from a host RNG, so that a seed gives the same network on every
//! backend (burn's own initialisers draw from a global, per-backend RNG).

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
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

/// A convolution with PyTorch's default initialisation (`U(−k, k)`, `k = 1/sqrt(fan_in)`), or
/// zeros where `zero` (output layers start at zero, as in DDPM).
pub(crate) fn conv<B: Backend>(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    rng: &mut StdRng,
    device: &B::Device,
    zero: bool,
) -> Conv2d<B> {
    let fan_in = c_in * kernel * kernel;
    let k = 1.0 / (fan_in as f32).sqrt();
    let mut draw = |n: usize| -> Vec<f32> {
        if zero {
            vec![0.0; n]
        } else {
            (0..n).map(|_| rng.random_range(-k..k)).collect()
        }
    };
    let weight = Tensor::from_data(
        TensorData::new(draw(c_out * fan_in), [c_out, c_in, kernel, kernel]),
        device,
    );
    let bias = Tensor::from_data(TensorData::new(draw(c_out), [c_out]), device);
    let pad = kernel / 2;
    Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(pad, pad, pad, pad),
    }
}
