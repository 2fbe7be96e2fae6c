//! A multilayer perceptron for low-dimensional data.

use super::class_input::{must_add, null_rows, ClassInput};
use super::embedding::{
    embed_times, gap_input, with_zero_inputs, with_zero_inputs_at, NoiseEmbedding,
};
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
    /// A class input ([`ClassInput`]): the one-hot label joins the input after the
    /// embeddings, its weights starting at zero. `None`: unconditional.
    pub classes: Option<ClassInput>,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            dim: 2,
            width: 256,
            depth: 3,
            embedding: NoiseEmbedding::default(),
            target_time: false,
            classes: None,
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
        if let Some(classes) = self.classes {
            classes.validate()?;
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
            classes: None,
            config: MlpConfig {
                target_time: false,
                classes: None,
                ..self.clone()
            },
        };
        let mlp = match self.target_time {
            true => mlp.with_target_time()?,
            false => mlp,
        };
        match self.classes {
            Some(classes) => mlp.with_classes(classes),
            None => Ok(mlp),
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
    #[module(skip)]
    classes: Option<ClassInput>,
    /// The configuration that builds this architecture (`target_time` and `classes` follow
    /// the network).
    #[module(skip)]
    config: MlpConfig,
}

impl<B: Backend> Mlp<B> {
    /// Replaces the layer that reads the input: the first hidden layer (the output layer where
    /// there is none).
    fn map_first_layer(&mut self, f: impl FnOnce(Linear<B>) -> Linear<B>) {
        if self.hidden.is_empty() {
            self.output = f(self.output.clone());
        } else {
            let first = self.hidden.remove(0);
            self.hidden.insert(0, f(first));
        }
    }

    fn run(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Option<Tensor<B, 1>>,
        classes: Option<Tensor<B, 2>>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let classes = classes.or_else(|| null_rows(self.classes, n, &x.device()));
        let times = embed_times(c_noise, gap, &self.frequencies);
        let mut parts = vec![x, anchor, times];
        parts.extend(classes);
        let mut h = Tensor::cat(parts, 1);
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
        let gap = gap_input(self.target_time, None, &c_noise);
        self.run(x, c_noise, gap, None, anchor)
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
        self.run(x, c_noise, gap, None, anchor)
    }

    fn class_input(&self) -> Option<ClassInput> {
        self.classes
    }

    fn forward_classes(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Option<Tensor<B, 1>>,
        classes: Tensor<B, 2>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let gap = gap_input(self.target_time, gap, &c_noise);
        self.run(x, c_noise, gap, Some(classes), anchor)
    }

    fn with_target_time(mut self) -> crate::Result<Self> {
        if !self.target_time {
            let extra = 2 * self.frequencies.len();
            // The gap's embedding follows the noise level's (before the class input, if any).
            let at = 2 * self.dim + extra;
            self.map_first_layer(|layer| with_zero_inputs_at(layer, at, extra));
            self.target_time = true;
            self.config.target_time = true;
        }
        Ok(self)
    }

    fn with_classes(mut self, input: ClassInput) -> crate::Result<Self> {
        if must_add(self.classes, input)? {
            // The one-hot label comes last in the first layer's input.
            self.map_first_layer(|layer| with_zero_inputs(layer, input.width()));
            self.classes = Some(input);
            self.config.classes = Some(input);
        }
        Ok(self)
    }
}
