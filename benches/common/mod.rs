//! The bare MLP that the training-step benchmarks and the PyTorch reference
//! (`benches/reference/reference.py`) share: 3 hidden layers of 256, SiLU, input 2 + 2 + 32,
//! output 2.
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use integration_flow::nn::linear_silu;

/// Input width: x_t (2) + anchor (2) + a 32-wide time embedding.
pub const INPUT: usize = 2 + 2 + 32;
/// Hidden width.
pub const WIDTH: usize = 256;
/// Hidden layers.
pub const DEPTH: usize = 3;
/// Output width.
pub const OUTPUT: usize = 2;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Vec<Linear<B>>,
    pub out: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn new(device: &B::Device) -> Self {
        let hidden = (0..DEPTH)
            .map(|i| LinearConfig::new(if i == 0 { INPUT } else { WIDTH }, WIDTH).init(device))
            .collect();
        let out = LinearConfig::new(WIDTH, OUTPUT).init(device);
        Mlp { hidden, out }
    }

    pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        for layer in &self.hidden {
            x = linear_silu(layer, x);
        }
        self.out.forward(x)
    }
}
