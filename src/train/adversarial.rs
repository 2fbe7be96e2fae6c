//! An adversarial term for image models: a critic network, trained beside the model, learns to
//! tell the data from the model's images of it, and the model is pulled towards images the
//! critic takes for data.
//!
//! A pixel distance pulls an estimate the model cannot pin down to the mean of what it might
//! be: a blur, and for a one-step student of an ODE a shape between shapes. A critic judges
//! whole images, so its gradient points at what makes an estimate unlike any target (soft
//! strokes, broken shapes) rather than at the average. One-step students that match their
//! teachers in the literature add such a term to the regression (CTM, Kim et al. 2023; ADD,
//! Sauer et al. 2023). The losses are the hinge losses of Lim & Ye (2017): the critic minimises
//! `mean(relu(1 − D(data))) + mean(relu(1 + D(estimate)))`, the model adds
//! `weight · mean(−D(estimate))` to its pixel loss.
//!
//! The critic sees each step's training examples (for a student of generated pairs, the
//! teacher's samples) against the model's estimates of the data end: the rows at `t_max` (where
//! one-step sampling evaluates) for the regression objective, every row for the consistency
//! objective, the rows that jump to `t_min` for the flow map (a step without such rows leaves
//! the critic and the term out). The critic and its optimizer
//! state are part of the trainer's checkpoint, so a resumed run goes on with the same critic.

use super::checkpoint::RecordBytes;
use super::optimizer::FusedAdam;
use crate::error::{invalid_config, require_image_rows, require_term_rates, Result};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{Recorder, RecorderError};
use burn::tensor::activation::{leaky_relu, relu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The adversarial term's settings.
///
/// ```
/// use integration_flow::train::{AdversarialConfig, TrainConfig};
/// let config = TrainConfig {
///     adversarial: Some(AdversarialConfig { weight: 0.01, image: [1, 28, 28], ..Default::default() }),
///     ..Default::default()
/// };
/// config.validate()?;
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdversarialConfig {
    /// Weight of the model's adversarial loss beside the pixel loss (which keeps weight 1).
    pub weight: f64,
    /// The image shape `[channels, height, width]` the data's rows are reshaped to (default
    /// `[1, 28, 28]`, MNIST's); its product must be the data's values per example.
    pub image: [usize; 3],
    /// Channels of the critic's first convolution (the next two have twice as many).
    pub width: usize,
    /// The critic's learning rate (Adam with β₁ = 0.5, β₂ = 0.999, as GANs commonly use).
    pub lr: f64,
    /// Steps at the start of the run where only the critic learns (the model's term is off),
    /// so the model is not pushed by a critic that has not yet learned anything.
    pub critic_warmup: usize,
}

impl Default for AdversarialConfig {
    fn default() -> Self {
        AdversarialConfig {
            weight: 0.01,
            image: [1, 28, 28],
            width: 32,
            lr: 2e-4,
            critic_warmup: 0,
        }
    }
}

impl AdversarialConfig {
    /// Checks the settings; an error names `config` and `field` (where the settings sit) and
    /// says which setting is wrong.
    pub fn check(&self, config: &'static str, field: &'static str) -> Result<()> {
        let bad = |reason: String| -> Result<()> { Err(invalid_config(config, field, reason)) };
        require_term_rates(config, field, self.weight, self.lr)?;
        if self.width == 0 {
            return bad("width must be at least 1".into());
        }
        if self.image.contains(&0) {
            return bad(format!(
                "every side of image must be at least 1, got {:?}",
                self.image
            ));
        }
        Ok(())
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.image.iter().product()
    }

    /// A critic for these settings, its weights drawn from `seed`.
    pub fn init_critic<B: Backend>(&self, seed: u64, device: &B::Device) -> Critic<B> {
        Critic::new(self.image, self.width, seed, device)
    }
}

/// The critic: three 3×3 convolutions (`width`, `2·width`, `2·width` channels; the last two
/// stride 2) with leaky ReLUs, and a linear layer to one score per image.
#[derive(Module, Debug)]
pub struct Critic<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    conv3: Conv2d<B>,
    score: Linear<B>,
}

impl<B: Backend> Critic<B> {
    fn new(image: [usize; 3], width: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let [c, h, w] = image;
        let side = |s: usize| s.div_ceil(2).div_ceil(2);
        Critic {
            conv1: crate::nn::init_conv(c, width, 3, 1, &mut rng, device, false),
            conv2: crate::nn::init_conv(width, 2 * width, 3, 2, &mut rng, device, false),
            conv3: crate::nn::init_conv(2 * width, 2 * width, 3, 2, &mut rng, device, false),
            score: crate::nn::init_linear(2 * width * side(h) * side(w), 1, &mut rng, device),
        }
    }

    /// One score per image row of `x` (`[n, c·h·w]` reshaped to `image`): higher is "more like
    /// the data". A [`ShapeMismatch`](crate::Error::ShapeMismatch) where the rows are not such images.
    pub fn scores(&self, x: Tensor<B, 2>, image: [usize; 3]) -> Result<Tensor<B, 1>> {
        let [n, dim] = x.dims();
        require_image_rows("adversarial critic and data", image, dim)?;
        let [c, h, w] = image;
        let mut y = x.reshape([n, c, h, w]);
        for conv in [&self.conv1, &self.conv2, &self.conv3] {
            // The crate's convolution: on the default CPU backend its backward is a few matrix
            // products, where burn's ran the critic's step 3× slower than the UNet's.
            y = leaky_relu(crate::nn::conv2d(conv, y), 0.2);
        }
        let flat: Tensor<B, 2> = y.flatten(1, 3);
        Ok(self.score.forward(flat).reshape([n]))
    }
}

/// The critic of a run and its optimizer: what the trainer holds and checkpoints.
#[derive(Clone)]
pub(crate) struct CriticState<B: AutodiffBackend> {
    critic: Critic<B>,
    optim: OptimizerAdaptor<FusedAdam, Critic<B>, B>,
}

impl<B: AutodiffBackend> CriticState<B> {
    /// A fresh critic (weights from `seed`) and optimizer.
    pub(crate) fn new(config: &AdversarialConfig, seed: u64, device: &B::Device) -> Self {
        CriticState {
            critic: config.init_critic(seed, device),
            optim: FusedAdam::new(0.5, 0.999, 1e-8, 0.0).init(),
        }
    }

    /// The model's adversarial loss on its estimates `[n, dim]` (images of `config.image`),
    /// unweighted. The gradient reaches the estimates through a copy of the critic whose
    /// weights track no gradient: the model's backward pass computes none for them.
    pub(crate) fn model_loss(
        &self,
        estimates: Tensor<B, 2>,
        config: &AdversarialConfig,
    ) -> Result<Tensor<B, 1>> {
        let frozen = self.critic.clone().no_grad();
        Ok(generator_loss(frozen.scores(estimates, config.image)?))
    }

    /// One update of the critic on `data` (real) against `estimates` (fake, detached from the
    /// model), as `config` says; returns its loss before the update.
    pub(crate) fn update(
        &mut self,
        data: Tensor<B, 2>,
        estimates: Tensor<B, 2>,
        config: &AdversarialConfig,
    ) -> Result<f64> {
        let n = data.dims()[0];
        // One pass over both halves.
        let both = Tensor::cat(vec![data, estimates.detach()], 0);
        let scores = self.critic.scores(both, config.image)?;
        let real = scores.clone().narrow(0, 0, n);
        let fake = scores.narrow(0, n, n);
        let loss = critic_loss(real, fake);
        let value: f64 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Ok(value);
        }
        let grads = GradientsParams::from_grads(loss.backward(), &self.critic);
        self.critic = self.optim.step(config.lr, self.critic.clone(), grads);
        Ok(value)
    }

    /// The critic's weights and its optimizer state, for a checkpoint.
    pub(crate) fn to_bytes(&self) -> std::result::Result<[Vec<u8>; 2], RecorderError> {
        let bytes = RecordBytes::default();
        let weights = Recorder::<B>::record(&bytes, self.critic.clone().into_record(), ())?;
        let optim = Recorder::<B>::record(&bytes, self.optim.to_record(), ())?;
        Ok([weights, optim])
    }

    /// The same critic with the weights and optimizer state of [`to_bytes`](Self::to_bytes).
    pub(crate) fn load_bytes(
        mut self,
        [weights, optim]: [Vec<u8>; 2],
        device: &B::Device,
    ) -> std::result::Result<Self, RecorderError> {
        let bytes = RecordBytes::default();
        self.critic = self
            .critic
            .load_record(Recorder::<B>::load(&bytes, weights, device)?);
        self.optim = self
            .optim
            .load_record(Recorder::<B>::load(&bytes, optim, device)?);
        Ok(self)
    }
}

/// The critic's hinge loss: the data pushed above +1, the estimates below −1.
pub fn critic_loss<B: Backend>(real: Tensor<B, 1>, fake: Tensor<B, 1>) -> Tensor<B, 1> {
    relu(real.neg().add_scalar(1.0)).mean() + relu(fake.add_scalar(1.0)).mean()
}

/// The model's adversarial loss: the critic's mean score of its estimates, negated.
pub fn generator_loss<B: Backend>(fake: Tensor<B, 1>) -> Tensor<B, 1> {
    fake.mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};
    use crate::Error;
    use burn::tensor::TensorData;

    fn vector<B: Backend>(values: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn the_hinge_losses_vanish_only_past_the_margins() {
        let loss = |r: &[f32], f: &[f32]| -> f32 {
            critic_loss(vector::<Cpu>(r), vector::<Cpu>(f)).into_scalar()
        };
        assert_eq!(loss(&[1.5, 1.0], &[-1.0, -3.0]), 0.0);
        // relu(1 − 0) + mean(relu(1 + 0.5), relu(1 − 2)) = 1 + 0.75.
        assert!((loss(&[0.0], &[0.5, -2.0]) - 1.75).abs() < 1e-6);
        let g: f32 = generator_loss(vector::<Cpu>(&[2.0, -1.0])).into_scalar();
        assert!((g + 0.5).abs() < 1e-6);
    }

    #[test]
    fn the_critic_scores_each_image_and_refuses_other_shapes() {
        let config = AdversarialConfig {
            image: [1, 5, 6],
            width: 4,
            ..Default::default()
        };
        let critic = config.init_critic::<Cpu>(0, &Default::default());
        let x = Tensor::<Cpu, 2>::ones([3, 30], &Default::default());
        let s = critic.scores(x, config.image).unwrap();
        assert_eq!(s.dims(), [3]);
        let values = s.into_data().to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
        assert_eq!(values[0], values[2]);
        let wrong = Tensor::<Cpu, 2>::ones([3, 31], &Default::default());
        let err = critic.scores(wrong, config.image).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        // The same seed gives the same critic.
        let again = config.init_critic::<Cpu>(0, &Default::default());
        let a = again
            .scores(Tensor::ones([1, 30], &Default::default()), config.image)
            .unwrap();
        assert_eq!(a.into_data().to_vec::<f32>().unwrap()[0], values[0]);
    }

    #[test]
    fn the_model_loss_reaches_the_estimate_through_the_critic() {
        let config = AdversarialConfig {
            image: [1, 4, 4],
            width: 2,
            ..Default::default()
        };
        let critic = config.init_critic::<CpuAutodiff>(1, &Default::default());
        let x = Tensor::<CpuAutodiff, 2>::from_data(
            TensorData::new((0..32).map(|i| i as f32 / 32.0).collect(), [2, 16]),
            &Default::default(),
        )
        .require_grad();
        let loss = generator_loss(critic.scores(x.clone(), config.image).unwrap());
        let grads = loss.backward();
        let g = x.grad(&grads).unwrap().to_data().to_vec::<f32>().unwrap();
        assert!(g.iter().any(|v| v.abs() > 1e-6), "{g:?}");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = [
            AdversarialConfig {
                weight: 0.0,
                ..Default::default()
            },
            AdversarialConfig {
                weight: f64::INFINITY,
                ..Default::default()
            },
            AdversarialConfig {
                lr: f64::NAN,
                ..Default::default()
            },
            AdversarialConfig {
                lr: -1.0,
                ..Default::default()
            },
            AdversarialConfig {
                width: 0,
                ..Default::default()
            },
            AdversarialConfig {
                image: [1, 0, 28],
                ..Default::default()
            },
        ];
        for config in bad {
            let err = config.check("TrainConfig", "adversarial").unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::InvalidConfig {
                        field: "adversarial",
                        ..
                    }
                ),
                "{config:?}: {err}"
            );
        }
        assert!(AdversarialConfig::default()
            .check("TrainConfig", "adversarial")
            .is_ok());
    }
}
