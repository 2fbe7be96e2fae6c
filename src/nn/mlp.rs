//! A multilayer perceptron for low-dimensional data.

use super::embedding::{embed_times, with_zero_inputs, NoiseEmbedding};
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
    /// A target-time input (a flow-map network, [`IntegrationNet::takes_target_time`]): the
    /// embedding of the gap to the target time joins the input, its weights starting at zero.
    pub target_time: bool,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            dim: 2,
            width: 256,
            depth: 3,
            embedding: NoiseEmbedding::default(),
            target_time: false,
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
        let mlp = Mlp {
            hidden,
            output: init::linear(self.width, self.dim, &mut rng, device),
            frequencies: self.embedding.frequencies(),
            dim: self.dim,
            target_time: false,
            config: MlpConfig {
                target_time: false,
                ..self.clone()
            },
        };
        match self.target_time {
            true => mlp.with_target_time(),
            false => Ok(mlp),
        }
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
    #[module(skip)]
    target_time: bool,
    /// The configuration that builds this architecture (`target_time` follows the network).
    #[module(skip)]
    config: MlpConfig,
}

impl<B: Backend> Mlp<B> {
    fn run(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Option<Tensor<B, 1>>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let times = embed_times(c_noise, gap, &self.frequencies);
        let mut h = Tensor::cat(vec![x, anchor, times], 1);
        for layer in &self.hidden {
            h = linear_silu(layer, h);
        }
        self.output.forward(h)
    }
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
        // A flow-map network's plain call is the denoiser: no gap to the target time.
        let gap = self.target_time.then(|| c_noise.zeros_like());
        self.run(x, c_noise, gap, anchor)
    }

    fn takes_target_time(&self) -> bool {
        self.target_time
    }

    fn network_config(&self) -> Option<super::NetworkConfig> {
        Some(super::NetworkConfig::Mlp(self.config.clone()))
    }

    fn forward_to(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Tensor<B, 1>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let gap = self.target_time.then_some(gap);
        self.run(x, c_noise, gap, anchor)
    }

    fn with_target_time(mut self) -> crate::Result<Self> {
        if !self.target_time {
            let extra = 2 * self.frequencies.len();
            // The embeddings come last in the first layer's input (the output layer's where
            // there is no hidden layer).
            if self.hidden.is_empty() {
                self.output = with_zero_inputs(self.output, extra);
            } else {
                let first = self.hidden.remove(0);
                self.hidden.insert(0, with_zero_inputs(first, extra));
            }
            self.target_time = true;
            self.config.target_time = true;
        }
        Ok(self)
    }
}
