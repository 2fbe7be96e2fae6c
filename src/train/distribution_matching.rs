//! Distribution matching for a student of a denoiser (DMD, Yin et al. 2024): the student's
//! images of the data end are pulled towards where the teacher's denoiser takes them and away
//! from where a second denoiser, trained on the student's own images, takes them.
//!
//! A pixel distance to paired targets pulls a one-step estimate the student cannot pin down to
//! the mean of what it might be. Distribution matching looks at the student's images as a
//! distribution instead: each image is noised to a random time, and the difference of the two
//! denoisers' estimates there is the gradient of the KL divergence from the data's law (the
//! teacher's) to the student's (the "fake" denoiser's), so it points from the student's images
//! towards the teacher's data rather than to a mean. The fake denoiser starts as a copy of the
//! teacher and learns each step, by the squared-L2 denoising loss (whose minimiser, the
//! conditional mean, is what the teacher estimates), on the student's current images.
//!
//! For an image `x` noised to `x_t` let `g = (D_fake(x_t) − D_teacher(x_t)) / mean|x −
//! D_teacher(x_t)|` (DMD's normalisation, per image); the term is the loss
//! `½·weight·mean((x − sg(x − g))²)` over the judged rows and pixels, whose gradient moves `x`
//! along `−g`: towards the teacher's estimate, away from the fake's. Which rows are images of
//! the data end is the step's (as for the adversarial critic). The fake denoiser and its
//! optimizer are part of the trainer's checkpoint; the teacher is given again after a resume
//! ([`Trainer::with_score_teacher`](super::Trainer::with_score_teacher)).

use super::checkpoint::RecordBytes;
use super::config::{Distance, TrainConfig};
use super::loss;
use super::optimizer::FusedAdam;
use crate::error::{invalid_config, require_term_rates, Error, Result};
use crate::flow::{ProbabilityFlow, ProbabilityFlowExt};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{Recorder, RecorderError};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The distribution-matching term's settings.
///
/// ```
/// use integration_flow::train::{DistributionMatchingConfig, TrainConfig};
/// let config = TrainConfig {
///     distribution_matching: Some(DistributionMatchingConfig { weight: 0.5, ..Default::default() }),
///     ..Default::default()
/// };
/// config.validate()?;
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributionMatchingConfig {
    /// Weight of the term beside the pixel loss (which keeps weight 1).
    pub weight: f64,
    /// The fake denoiser's learning rate (Adam, β₁ = 0.9, β₂ = 0.999).
    pub lr: f64,
    /// Updates of the fake denoiser per step, each on a fresh noising of the step's images
    /// (DMD2 uses 5 against 1 to keep the fake denoiser tracking the student).
    pub fake_updates: usize,
    /// Steps at the start of the run without the term (and without fake-denoiser updates):
    /// the student first learns its teacher's map at full speed, the term refines it after.
    pub warmup: usize,
}

impl Default for DistributionMatchingConfig {
    fn default() -> Self {
        DistributionMatchingConfig {
            weight: 1.0,
            lr: 1e-4,
            fake_updates: 1,
            warmup: 0,
        }
    }
}

impl DistributionMatchingConfig {
    /// Checks the settings; an error names `config` and `field`.
    pub fn check(&self, config: &'static str, field: &'static str) -> Result<()> {
        let bad = |reason: String| -> Result<()> { Err(invalid_config(config, field, reason)) };
        require_term_rates(config, field, self.weight, self.lr)?;
        if self.fake_updates == 0 {
            return bad("fake_updates must be at least 1".into());
        }
        Ok(())
    }
}

/// The two denoisers of the term: the teacher (frozen, given by the user) and the fake one
/// with its optimizer (trained here, checkpointed).
#[derive(Clone)]
pub(crate) struct ScoreState<B: AutodiffBackend, N: AutodiffModule<B>> {
    teacher: Option<N>,
    fake: N,
    optim: OptimizerAdaptor<FusedAdam, N, B>,
}

impl<B, N> ScoreState<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    /// The state of a new run: the fake denoiser starts as the teacher.
    pub(crate) fn from_teacher(teacher: N) -> Self {
        ScoreState {
            teacher: Some(teacher.clone()),
            fake: teacher,
            optim: FusedAdam::new(0.9, 0.999, 1e-8, 0.0).init(),
        }
    }

    /// Gives the teacher (after a resume, where only the fake denoiser was restored).
    pub(crate) fn set_teacher(&mut self, teacher: &N) {
        self.teacher = Some(teacher.clone());
    }

    /// The teacher, once given.
    pub(crate) fn teacher(&self) -> Option<&N> {
        self.teacher.as_ref()
    }

    /// The term's loss on the model's `images` of the data end `[n, dim]`, weighted by
    /// `config.weight`; its gradient reaches the images only.
    pub(crate) fn model_loss(
        &self,
        model: &IntegrationFlow<B, N>,
        images: Tensor<B, 2>,
        train: &TrainConfig,
        config: &DistributionMatchingConfig,
        rng: &mut dyn Rng,
    ) -> Result<Tensor<B, 1>> {
        let teacher = self.teacher.as_ref().ok_or_else(missing_teacher)?.valid();
        let x = images.clone().detach().inner();
        let [n, dim] = x.dims();
        let (t, x_t) = noised(model.flow().as_ref(), train, rng, &x)?;
        let zeros = Tensor::zeros([n, dim], &x.device());
        let real = model
            .with_net(teacher)
            .denoise(x_t.clone(), &t, zeros.clone())?;
        let fake = model.with_net(self.fake.valid()).denoise(x_t, &t, zeros)?;
        // DMD's per-image normalisation keeps the step size independent of how far off the
        // image is.
        let scale = (x.clone() - real.clone()).abs().mean_dim(1).clamp_min(1e-6);
        let gradient = (fake - real) / scale;
        let target = Tensor::<B, 2>::from_inner(x - gradient);
        Ok((images - target)
            .powi_scalar(2)
            .mean()
            .mul_scalar(0.5 * config.weight))
    }

    /// `config.fake_updates` updates of the fake denoiser on the model's `images` (detached
    /// here) by the denoising loss (squared L2, weighted by the run's λ(t)); returns the last
    /// update's loss before it. A non-finite loss returns that value at once: the caller
    /// discards the state (it updates a copy).
    pub(crate) fn update(
        &mut self,
        model: &IntegrationFlow<B, N>,
        images: Tensor<B, 2>,
        train: &TrainConfig,
        config: &DistributionMatchingConfig,
        rng: &mut dyn Rng,
    ) -> Result<f64> {
        let x = images.detach();
        let [n, dim] = x.dims();
        let flow = model.flow().clone();
        let zeros = Tensor::<B, 2>::zeros([n, dim], &x.device());
        let mut value: f64 = 0.0;
        for _ in 0..config.fake_updates {
            let (t, x_t) = noised(flow.as_ref(), train, rng, &x)?;
            let estimate = model
                .with_net(self.fake.clone())
                .denoise(x_t, &t, zeros.clone())?;
            let lambda =
                loss::loss_weights(train.loss_weight, flow.as_ref(), model.sigma_data(), &t);
            // The squared L2 whatever the model's distance: its minimiser is the conditional
            // mean, the teacher's estimate the term compares it with.
            let loss = loss::integration_flow_loss(
                Distance::SquaredL2,
                1.0,
                lambda,
                estimate,
                x.clone(),
                zeros.clone(),
            );
            value = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                return Ok(value);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &self.fake);
            self.fake = self.optim.step(config.lr, self.fake.clone(), grads);
        }
        Ok(value)
    }

    /// The fake denoiser's weights and its optimizer state, for a checkpoint.
    pub(crate) fn to_bytes(&self) -> std::result::Result<[Vec<u8>; 2], RecorderError> {
        let bytes = RecordBytes::default();
        let weights = Recorder::<B>::record(&bytes, self.fake.clone().into_record(), ())?;
        let optim = Recorder::<B>::record(&bytes, self.optim.to_record(), ())?;
        Ok([weights, optim])
    }

    /// The state of a checkpoint: the fake denoiser loaded into `template` (the model's
    /// network), its optimizer state, no teacher yet.
    pub(crate) fn from_bytes(
        template: N,
        [weights, optim]: [Vec<u8>; 2],
        device: &B::Device,
    ) -> std::result::Result<Self, RecorderError> {
        let bytes = RecordBytes::default();
        let fake = template.load_record(Recorder::<B>::load(&bytes, weights, device)?);
        let optim = FusedAdam::new(0.9, 0.999, 1e-8, 0.0)
            .init()
            .load_record(Recorder::<B>::load(&bytes, optim, device)?);
        Ok(ScoreState {
            teacher: None,
            fake,
            optim,
        })
    }
}

/// The error of a step whose distribution-matching term has no teacher.
pub(crate) fn missing_teacher() -> Error {
    Error::InvalidConfig {
        config: "TrainConfig",
        field: "distribution_matching",
        reason: "distribution matching needs its teacher: give it with \
                 Trainer::with_score_teacher (also after a resume)"
            .into(),
    }
}

/// `x` noised by `flow` to times drawn from the run's training distribution: the times and
/// `x_t`.
fn noised<B: Backend>(
    flow: &dyn ProbabilityFlow,
    train: &TrainConfig,
    rng: &mut dyn Rng,
    x: &Tensor<B, 2>,
) -> Result<(Vec<f64>, Tensor<B, 2>)> {
    let t = flow.sample_time(&train.time, rng, x.dims()[0])?;
    let noise = noise_like(flow, rng, x)?;
    let x_t = flow.interpolate(x.clone(), noise, &t)?;
    Ok((t, x_t))
}

/// The flow's noise in the shape of `x`, on its device.
fn noise_like<B: Backend>(
    flow: &dyn ProbabilityFlow,
    rng: &mut dyn Rng,
    x: &Tensor<B, 2>,
) -> Result<Tensor<B, 2>> {
    let [n, dim] = x.dims();
    let values = flow.sample_noise(rng, n, dim)?;
    Ok(Tensor::from_data(
        TensorData::new(values, [n, dim]),
        &x.device(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuAutodiff;
    use crate::flow::FlowConfig;
    use crate::model::IntegrationFlowConfig;
    use crate::nn::{Mlp, MlpConfig};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    type B = CpuAutodiff;

    fn net(seed: u64) -> Mlp<B> {
        MlpConfig {
            dim: 3,
            width: 16,
            depth: 2,
            ..Default::default()
        }
        .init(&Default::default(), seed)
        .unwrap()
    }

    /// The gradient the term gives the images, against the formula recomputed from the same
    /// draws: `weight·(D_fake − D_teacher)/mean|x − D_teacher| / (rows·dim)` per value, so the
    /// images move towards the teacher's estimate and away from the fake's.
    #[test]
    fn the_gradient_is_the_normalised_difference_of_the_denoisers() {
        let flow = FlowConfig::Rf(Default::default()).init().unwrap();
        let model = IntegrationFlowConfig::default()
            .init(flow.clone(), net(0))
            .unwrap();
        let mut state = ScoreState::<B, Mlp<B>>::from_teacher(net(1));
        state.fake = net(2);
        let train = TrainConfig::default();
        let config = DistributionMatchingConfig {
            weight: 3.0,
            ..Default::default()
        };
        let values: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::<B, 2>::from_data(TensorData::new(values, [4, 3]), &Default::default())
            .require_grad();
        let loss = state
            .model_loss(
                &model,
                x.clone(),
                &train,
                &config,
                &mut StdRng::seed_from_u64(5),
            )
            .unwrap();
        let grads = loss.backward();
        let got = x.grad(&grads).unwrap().to_data().to_vec::<f32>().unwrap();

        let mut rng = StdRng::seed_from_u64(5);
        let x = x.detach();
        let t = flow.sample_time(&train.time, &mut rng, 4).unwrap();
        let noise = noise_like(flow.as_ref(), &mut rng, &x).unwrap();
        let x_t = flow.interpolate(x.clone(), noise, &t).unwrap();
        let zeros = Tensor::zeros([4, 3], &Default::default());
        let denoise = |n: Mlp<B>| {
            model
                .with_net(n)
                .denoise(x_t.clone(), &t, zeros.clone())
                .unwrap()
        };
        let (real, fake) = (denoise(net(1)), denoise(net(2)));
        let scale = (x - real.clone()).abs().mean_dim(1);
        let expected = ((fake - real) / scale).mul_scalar(3.0 / 12.0);
        let expected = expected.to_data().to_vec::<f32>().unwrap();
        assert!(expected.iter().any(|v| v.abs() > 1e-4), "{expected:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (g - e).abs() <= 1e-5 + 1e-4 * e.abs(),
                "{got:?} {expected:?}"
            );
        }
    }
}
