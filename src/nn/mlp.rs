//! A multilayer perceptron for low-dimensional data.

use super::embedding::{embed, NoiseEmbedding};
use super::linear_silu;
use super::{init, IntegrationNet};
use crate::error::{invalid_config, Result};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Configuration of [`Mlp`]: `depth` hidden layers of `width` units with SiLU, input
/// `[c_in·x_t, anchor, embedding(c_noise)]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Data dimension.
    pub dim: usize,
    /// Units per hidden layer.
    pub width: usize,
    /// Hidden layers.
    pub depth: usize,
    /// Embedding of the noise level.
    pub embedding: NoiseEmbedding,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            dim: 2,
            width: 256,
            depth: 3,
            embedding: NoiseEmbedding::default(),
        }
    }
}

impl MlpConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "MlpConfig";
        for (field, value) in [
            ("dim", self.dim),
            ("width", self.width),
            ("depth", self.depth),
        ] {
            if value == 0 {
                return Err(invalid_config(NAME, field, "must be at least 1"));
            }
        }
        self.embedding.validate()
    }

    /// Validates the configuration and builds the network with weights drawn from `seed`.
    ///
    /// ```
    /// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
    /// use integration_flow::backend::Cpu;
    /// use integration_flow::nn::{IntegrationNet, MlpConfig};
    /// let mlp = MlpConfig { width: 64, ..Default::default() }.init::<Cpu>(&Default::default(), 0)?;
    /// assert_eq!(mlp.dim(), 2);
    /// # }
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<Mlp<B>> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let input = 2 * self.dim + self.embedding.dim();
        let hidden = (0..self.depth)
            .map(|i| {
                let d_in = if i == 0 { input } else { self.width };
                init::linear(d_in, self.width, &mut rng, device)
            })
            .collect();
        Ok(Mlp {
            hidden,
            output: init::linear(self.width, self.dim, &mut rng, device),
            frequencies: self.embedding.frequencies(),
            dim: self.dim,
        })
    }
}

/// A SiLU multilayer perceptron taking `[x, anchor, embedding(c_noise)]`; build it with
/// [`MlpConfig::init`].
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Vec<Linear<B>>,
    output: Linear<B>,
    #[module(skip)]
    frequencies: Vec<f32>,
    #[module(skip)]
    dim: usize,
}

impl<B: Backend> IntegrationNet<B> for Mlp<B> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn forward(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let mut h = Tensor::cat(vec![x, anchor, embed(c_noise, &self.frequencies)], 1);
        for layer in &self.hidden {
            h = linear_silu(layer, h);
        }
        self.output.forward(h)
    }
}
