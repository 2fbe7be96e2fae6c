//! One training step: a batch, its times and noise, the estimate, the loss, the update of the
//! weights, the EMA and the anchors.

use super::distribution_matching;
use super::ema;
use super::loss;
use super::objective::{self, ObjectiveConfig};
use super::optimizer::clip_global_norm;
use super::perceptual;
use super::streams::{stream, Stream};
use super::trainer::{Position, StepStats, Trainer};
use crate::coupling::{AnchorRole, StepBatch};
use crate::error::{Error, Result};
use crate::flow::tensor::row_index;
use crate::flow::ProbabilityFlowExt;
use crate::nn::IntegrationNet;
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    /// The step at the current position; a non-finite loss or gradient (the model's, the
    /// critic's or the fake denoiser's) is [`Error::Diverged`] before anything is updated.
    pub(super) fn try_step(&mut self) -> Result<StepStats> {
        let Position { step, epoch, batch } = self.position;
        let bs = self.config.batch_size;
        let start = batch * bs;
        let indices: Vec<usize> = self.order[start..(start + bs).min(self.data.len())].to_vec();
        let n = indices.len();
        let dim = self.data.dim();
        let flow = self.model.flow().clone();
        let mut rng = stream(self.config.seed, Stream::Step, step as u64);
        let mut t = flow.sample_time(&self.config.time, &mut rng, n)?;
        // The first ⌊fraction·n⌋ examples of the (shuffled) batch train at t_max.
        let at_max = (self.config.t_max_fraction * n as f64).floor() as usize;
        for ti in t.iter_mut().take(at_max) {
            *ti = flow.time_range().max;
        }
        let mut x0 = Vec::new();
        self.data.gather_into(&indices, &mut x0);
        let anchor = match &self.anchors {
            Some(store) => store.get(&indices)?,
            None => vec![0.0; n * dim],
        };
        let upload = |values: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(values, [n, dim]), &self.device)
        };
        // The network's anchor input and the path's noise, by the coupling's role for anchors.
        let (input, noise) = match self.coupling.anchor_role() {
            AnchorRole::Input => (anchor.clone(), flow.sample_noise(&mut rng, n, dim)?),
            AnchorRole::Noise if self.anchors.is_some() => (vec![0.0; n * dim], anchor.clone()),
            AnchorRole::Noise => {
                return Err(Error::InvalidArgument {
                    name: "coupling",
                    reason: format!(
                        "coupling {:?} makes the anchor the path's noise but built no anchors",
                        self.coupling.name()
                    ),
                })
            }
        };
        let x0_t = upload(x0.clone());
        let anchor_t = upload(input);
        let noise_t = upload(noise);
        let x_t = flow.interpolate(x0_t.clone(), noise_t.clone(), &t)?;
        // Each objective's estimate and the target it is pulled towards: regression trains the
        // denoiser (for a flow-map network, its r = t estimate), the flow map the jumps to
        // target times r ≤ t, the consistency objective the estimate one-step samplers call.
        // Third: the rows whose estimate is an image of the data end (regression's rows at
        // t_max, all for consistency, the flow map's jumps to t_min), which the image terms
        // judge.
        let x0_rows = x0_t.clone();
        let estimate = || -> Result<(Tensor<B, 2>, Tensor<B, 2>, DataEnd)> {
            Ok(match &self.config.objective {
                ObjectiveConfig::Regression => {
                    let x_hat = self.model.denoise(x_t, &t, anchor_t.clone())?;
                    // Its one-step samples: the rows at t_max (elsewhere the estimate is a
                    // conditional mean, not an image to judge).
                    let max = flow.time_range().max;
                    let rows = (0..n).filter(|&i| t[i] >= max).collect();
                    (
                        x_hat,
                        objective::regression::target(x0_t),
                        DataEnd::Rows(rows),
                    )
                }
                ObjectiveConfig::FlowMap(config) => {
                    let mut r = config.target_times(flow.as_ref(), &t, &mut rng);
                    // Where the path's noise is the example's paired latent (generated pairs), the
                    // jump from t_max to the data end is known: the example itself.
                    let paired = match (config.paired_jumps, self.coupling.anchor_role()) {
                        (false, _) => false,
                        (true, AnchorRole::Noise) => true,
                        (true, AnchorRole::Input) => {
                            return Err(Error::InvalidArgument {
                                name: "objective",
                                reason: format!(
                                "flow_map.paired_jumps needs a coupling whose path noise is the \
                                 paired latent; {:?} gives the network its anchor as an input",
                                self.coupling.name()
                            ),
                            })
                        }
                    };
                    let exact: Vec<bool> = (0..n).map(|i| paired && i < at_max).collect();
                    for (ri, _) in r.iter_mut().zip(&exact).filter(|(_, &e)| e) {
                        *ri = flow.time_range().min;
                    }
                    let x_hat = self
                        .model
                        .estimate_to(x_t.clone(), &t, &r, anchor_t.clone())?;
                    let target = objective::flow_map::target(
                        config,
                        &self.model,
                        &self.ema,
                        (&x0_t, &noise_t, &x_t),
                        &anchor_t,
                        (&t, &r, &exact),
                        &x_hat,
                    )?;
                    let min = flow.time_range().min;
                    let rows = (0..n).filter(|&i| r[i] <= min && t[i] > min).collect();
                    (x_hat, target, DataEnd::Rows(rows))
                }
                ObjectiveConfig::Consistency(config) => {
                    let x_hat = self.model.estimate(x_t, &t, anchor_t.clone())?;
                    let target = objective::consistency::target(
                        config,
                        &self.model,
                        &self.ema,
                        step,
                        &x0_t,
                        &noise_t,
                        &anchor_t,
                        &t,
                    )?;
                    (x_hat, target, DataEnd::All)
                }
            })
        };
        let (x_hat, target, data_end) = estimate().map_err(|e| input_divergence(step, e))?;

        let w = self.data_weight(epoch);
        let lambda = loss::loss_weights(
            self.config.loss_weight,
            flow.as_ref(),
            self.model.sigma_data(),
            &t,
        );
        let perceptual_target = self.config.perceptual.as_ref().map(|_| target.clone());
        // The image terms' pair: the data rows and their data-end estimates (none this step
        // where no row jumps to the data end), for the critic and distribution matching.
        let wanted = self.critic.is_some() || self.config.distribution_matching.is_some();
        let data_end_pair = match (wanted, &data_end) {
            (false, _) => None,
            (true, DataEnd::All) => Some((x0_rows, x_hat.clone())),
            (true, DataEnd::Rows(rows)) if rows.is_empty() => None,
            (true, DataEnd::Rows(rows)) => {
                let index = row_index::<B>(rows, &self.device);
                Some((
                    x0_rows.select(0, index.clone()),
                    x_hat.clone().select(0, index),
                ))
            }
        };
        let mut loss = loss::integration_flow_loss(
            self.config.distance,
            w,
            lambda,
            x_hat.clone(),
            target,
            anchor_t,
        );
        if let (Some(config), Some(target)) = (&self.config.perceptual, perceptual_target) {
            let features = self
                .perceptual
                .as_deref()
                .ok_or_else(|| Error::InvalidConfig {
                    config: "TrainConfig",
                    field: "perceptual",
                    reason: "the perceptual term needs its network: give it with \
                         Trainer::with_perceptual_features (also after a resume)"
                        .into(),
                })?;
            let d = perceptual::perceptual_distance(features, x_hat.clone(), target)?;
            loss = loss + d.mean().mul_scalar(config.weight);
        }
        if let (Some(config), Some(critic), Some((_, images))) =
            (&self.config.adversarial, &self.critic, &data_end_pair)
        {
            // After the critic's warm-up the model learns from it too.
            if step >= config.critic_warmup {
                let adversarial = critic.model_loss(images.clone(), config)?;
                loss = loss + adversarial.mul_scalar(config.weight);
            }
        }
        let mut score_rng = stream(self.config.seed, Stream::Score, step as u64);
        let matching = self
            .config
            .distribution_matching
            .as_ref()
            .filter(|config| step >= config.warmup);
        if let (Some(config), Some((_, images))) = (matching, &data_end_pair) {
            let state = self
                .score
                .as_ref()
                .ok_or_else(distribution_matching::missing_teacher)?;
            let term = state
                .model_loss(
                    &self.model,
                    images.clone(),
                    &self.config,
                    config,
                    &mut score_rng,
                )
                .map_err(|e| input_divergence(step, e))?;
            loss = loss + term;
        }
        let loss_value: f64 = loss.clone().into_scalar().elem();
        finite_or_diverged(step, "loss", loss_value)?;
        let grads = GradientsParams::from_grads(loss.backward(), self.model.net());
        let (grads, grad_norm) =
            clip_global_norm::<B, N>(self.model.net(), grads, self.config.optimizer.grad_clip);
        finite_or_diverged(step, "gradient norm", grad_norm)?;
        // The critic learns from this step's estimates; the model's gradient above used it as
        // it was. A non-finite critic loss leaves everything as it was.
        // The updates go to copies, kept only when every loss was finite, so a divergence
        // leaves the critic and the fake denoiser as they were.
        let critic_next = match (&self.critic, &self.config.adversarial, &data_end_pair) {
            (Some(critic), Some(config), Some((data, images))) => {
                let mut next = critic.clone();
                let value = next.update(data.clone(), images.clone(), config)?;
                finite_or_diverged(step, "the adversarial critic's loss", value)?;
                Some((next, value))
            }
            _ => None,
        };
        // The fake denoiser learns this step's images, after the model's gradient used it.
        let score_next = match (matching, &self.score, &data_end_pair) {
            (Some(config), Some(state), Some((_, images))) => {
                let mut next = state.clone();
                let value = next
                    .update(
                        &self.model,
                        images.clone(),
                        &self.config,
                        config,
                        &mut score_rng,
                    )
                    .map_err(|e| input_divergence(step, e))?;
                finite_or_diverged(
                    step,
                    "the distribution-matching fake denoiser's loss",
                    value,
                )?;
                Some(next)
            }
            _ => None,
        };
        let critic_loss = match critic_next {
            Some((next, value)) => {
                self.critic = Some(next);
                Some(value)
            }
            None => None,
        };
        if let Some(next) = score_next {
            self.score = Some(next);
        }
        let lr = self.lr_at(step);
        let net = self.optim.step(lr, self.model.net().clone(), grads);
        let decay = ema::decay_at(self.config.ema.decay, self.config.ema.warmup, step);
        self.ema = ema::update(self.ema.clone(), &net.valid(), decay);
        self.model = self.model.with_net(net);

        if let Some(store) = &mut self.anchors {
            let estimates = || {
                x_hat
                    .clone()
                    .into_data()
                    .iter::<f32>()
                    .collect::<Vec<f32>>()
            };
            let batch = StepBatch::new(&indices, &x0, &anchor, &estimates);
            if let Some(new) = self.coupling.update(&batch)? {
                self.drift.epoch_sum += anchor_change(&new, &anchor, dim);
                store.set(&indices, &new)?;
            }
        }

        let anchor_drift = self.advance()?;
        Ok(StepStats {
            step,
            epoch,
            loss: loss_value,
            grad_norm,
            lr,
            w,
            anchor_drift,
            critic_loss,
            skipped: false,
        })
    }
}

/// A non-finite network input (NaN noise or data) as a divergence of `step`, like a NaN loss.
/// Only the model's own input checks: other non-finite values (a flow's coefficients) are
/// defects to report, not divergences to skip.
fn input_divergence(step: usize, e: Error) -> Error {
    match e {
        Error::NonFinite { context, value }
            if context == crate::model::NON_FINITE_X_T
                || context == crate::model::NON_FINITE_ANCHOR =>
        {
            Error::Diverged {
                step,
                reason: format!("{context} is {value}"),
            }
        }
        other => other,
    }
}

/// [`Error::Diverged`] at `step` where `value` (named `what`) is not finite.
fn finite_or_diverged(step: usize, what: &str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged {
            step,
            reason: format!("{what} is {value}"),
        })
    }
}

/// Which rows of a step's estimate are images of the data end.
enum DataEnd {
    /// Every row (the consistency function).
    All,
    /// These rows (regression's rows at `t_max`, the flow map's jumps to `t_min`).
    Rows(Vec<usize>),
}

/// The sum over examples of `‖new − old‖`.
fn anchor_change(new: &[f32], old: &[f32], dim: usize) -> f64 {
    new.chunks(dim)
        .zip(old.chunks(dim))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
}
