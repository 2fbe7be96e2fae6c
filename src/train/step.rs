//! One training step: a batch, its times and noise, the estimate, the loss (on this thread or
//! on data-parallel workers), the update of the weights, the EMA and the anchors.

use super::batch::{self, input_divergence, DataEnd, Rows};
use super::distribution_matching;
use super::ema;
use super::loss;
use super::objective::ObjectiveConfig;
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
use burn::tensor::{ElementConversion, Tensor};
use rand::RngExt;

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// The step at the current position; a non-finite loss or gradient (the model's, the
    /// critic's or the fake denoiser's) is [`Error::Diverged`] before anything is updated.
    pub(super) fn try_step(&mut self) -> Result<StepStats> {
        let Position { step, epoch, .. } = self.position;
        let drawn = self.draw(step)?;
        let w = self.data_weight(epoch);
        let outcome = match self.config.data_parallel.clone() {
            None => self.one_worker(step, w, &drawn.rows)?,
            Some(parallel) => self.on_workers(step, w, &drawn.rows, &parallel)?,
        };
        self.apply(step, epoch, w, &drawn, outcome)
    }

    /// The step's draws, the same whatever the number of workers: the batch's examples and
    /// anchors, times, noise and (flow map) target times.
    fn draw(&self, step: usize) -> Result<Drawn> {
        let bs = self.config.batch_size;
        let start = self.position.batch * bs;
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
        let (r, exact) = match &self.config.objective {
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
                (r, exact)
            }
            ObjectiveConfig::Regression | ObjectiveConfig::Consistency(_) => {
                (Vec::new(), Vec::new())
            }
        };
        let lambda = loss::loss_weights(
            self.config.loss_weight,
            flow.as_ref(),
            self.model.sigma_data(),
            &t,
        );
        // Labels last, so that unlabelled runs draw what they always drew.
        let classes = match self.data.labels_at(&indices) {
            None => Vec::new(),
            Some(labels) => labels
                .into_iter()
                .map(|label| (rng.random::<f64>() >= self.config.label_dropout).then_some(label))
                .collect(),
        };
        Ok(Drawn {
            indices,
            anchor,
            rows: Rows {
                dim,
                t,
                r,
                exact,
                x0,
                input,
                noise,
                lambda,
                classes,
            },
        })
    }

    /// The step's loss and clipped gradient on this thread, with the image terms; the critic
    /// and the fake denoiser are updated here (only when every loss is finite).
    fn one_worker(&mut self, step: usize, w: f64, rows: &Rows) -> Result<Outcome<B>> {
        let estimate = batch::estimate(
            &self.model,
            &self.ema,
            &self.config,
            step,
            rows,
            &self.device,
        )
        .map_err(|e| input_divergence(step, e))?;
        // The image terms' pair: the data rows and their data-end estimates (none this step
        // where no row jumps to the data end), for the critic and distribution matching.
        let wanted = self.critic.is_some() || self.config.distribution_matching.is_some();
        let data_end_pair = match (wanted, &estimate.data_end) {
            (false, _) => None,
            (true, DataEnd::All) => Some((estimate.x0.clone(), estimate.x_hat.clone())),
            (true, DataEnd::Rows(judged)) if judged.is_empty() => None,
            (true, DataEnd::Rows(judged)) => {
                let index = row_index::<B>(judged, &self.device);
                Some((
                    estimate.x0.clone().select(0, index.clone()),
                    estimate.x_hat.clone().select(0, index),
                ))
            }
        };
        let mut loss = estimate.loss(&self.config, w, rows);
        if let Some(config) = &self.config.perceptual {
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
            let d = perceptual::perceptual_distance(
                features,
                estimate.x_hat.clone(),
                estimate.target.clone(),
            )?;
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
        let (grads, grad_norm) = self.clipped(step, grads)?;
        // The critic learns from this step's estimates; the model's gradient above used it as
        // it was. The updates go to copies, kept only when every loss was finite, so a
        // divergence leaves the critic and the fake denoiser as they were.
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
        Ok(Outcome {
            loss: loss_value,
            grads,
            grad_norm,
            estimates: Estimates::Tensor(estimate.x_hat),
            critic_loss,
        })
    }

    /// The step's gradient clipped to the configured norm, with its norm before clipping; a
    /// non-finite norm is [`Error::Diverged`] (one worker or several).
    pub(super) fn clipped(
        &self,
        step: usize,
        grads: GradientsParams,
    ) -> Result<(GradientsParams, f64)> {
        let (grads, grad_norm) =
            clip_global_norm::<B, N>(self.model.net(), grads, self.config.optimizer.grad_clip);
        finite_or_diverged(step, "gradient norm", grad_norm)?;
        Ok((grads, grad_norm))
    }

    /// The step's outcome applied: one optimizer step, one EMA update, the anchors' update
    /// (estimates in batch order) and the move to the next batch.
    fn apply(
        &mut self,
        step: usize,
        epoch: usize,
        w: f64,
        drawn: &Drawn,
        outcome: Outcome<B>,
    ) -> Result<StepStats> {
        let Outcome {
            loss,
            grads,
            grad_norm,
            estimates,
            critic_loss,
        } = outcome;
        let lr = self.lr_at(step);
        let net = self.optim.step(lr, self.model.net().clone(), grads);
        let decay = ema::decay_at(self.config.ema.decay, self.config.ema.warmup, step);
        self.ema = ema::update(self.ema.clone(), &net.valid(), decay);
        self.model = self.model.with_net(net);

        if let Some(store) = &mut self.anchors {
            let values = || estimates.values();
            let batch = StepBatch::new(&drawn.indices, &drawn.rows.x0, &drawn.anchor, &values);
            if let Some(new) = self.coupling.update(&batch)? {
                self.drift.epoch_sum += anchor_change(&new, &drawn.anchor, drawn.rows.dim);
                store.set(&drawn.indices, &new)?;
            }
        }

        let anchor_drift = self.advance()?;
        Ok(StepStats {
            step,
            epoch,
            loss,
            grad_norm,
            lr,
            w,
            anchor_drift,
            critic_loss,
            skipped: false,
        })
    }
}

/// A step's draws: the batch's dataset indices, the store's anchors of those examples (zeros
/// without a store) and the rows the estimate runs on.
pub(super) struct Drawn {
    pub(super) indices: Vec<usize>,
    pub(super) anchor: Vec<f32>,
    pub(super) rows: Rows,
}

/// What the loss and backward pass of a step gave, one worker or several.
pub(super) struct Outcome<B: AutodiffBackend> {
    /// The batch's loss.
    pub(super) loss: f64,
    /// The clipped gradient.
    pub(super) grads: GradientsParams,
    /// The gradient's norm before clipping.
    pub(super) grad_norm: f64,
    /// The batch's estimates (for the anchor store).
    pub(super) estimates: Estimates<B>,
    /// The adversarial critic's loss.
    pub(super) critic_loss: Option<f64>,
}

/// A batch's estimates: on the device (one worker) or gathered from the workers.
pub(super) enum Estimates<B: AutodiffBackend> {
    /// The estimate tensor.
    Tensor(Tensor<B, 2>),
    /// Row-major values (the workers' shards in batch order).
    #[cfg_attr(not(feature = "data-parallel"), allow(dead_code))]
    Values(Vec<f32>),
}

impl<B: AutodiffBackend> Estimates<B> {
    fn values(&self) -> Vec<f32> {
        match self {
            Estimates::Tensor(x_hat) => x_hat.clone().into_data().iter::<f32>().collect(),
            Estimates::Values(values) => values.clone(),
        }
    }
}

/// [`Error::Diverged`] at `step` where `value` (named `what`) is not finite.
pub(super) fn finite_or_diverged(step: usize, what: &str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged {
            step,
            reason: format!("{what} is {value}"),
        })
    }
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

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use crate::backend::CpuAutodiff;
    use crate::data::Toy;
    use crate::flow::FlowConfig;
    use crate::model::IntegrationFlowConfig;
    use crate::nn::{ClassInput, MlpConfig};
    use crate::train::{TrainConfig, Trainer};

    #[test]
    fn label_dropout_replaces_labels_at_its_rate_and_keeps_the_others() {
        let data = Toy::EightGaussians.sample_labelled(4096, 0).unwrap();
        let model = |classes: Option<ClassInput>| {
            let net = MlpConfig {
                width: 8,
                depth: 1,
                classes,
                ..Default::default()
            }
            .init::<CpuAutodiff>(&Default::default(), 0)
            .unwrap();
            IntegrationFlowConfig::default()
                .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
                .unwrap()
        };
        let config = TrainConfig {
            batch_size: 512,
            label_dropout: 0.3,
            progress: false,
            ..Default::default()
        };
        let trainer = Trainer::new(model(Some(ClassInput::new(8))), data.clone(), config).unwrap();
        let labels = data.labels().unwrap();
        let (mut dropped, mut rows) = (0, 0);
        for step in 0..8 {
            let drawn = trainer.draw(step).unwrap();
            assert_eq!(drawn.rows.classes.len(), drawn.indices.len());
            for (&i, class) in drawn.indices.iter().zip(&drawn.rows.classes) {
                match class {
                    Some(k) => assert_eq!(*k, labels[i], "a kept label is the example's"),
                    None => dropped += 1,
                }
                rows += 1;
            }
        }
        let rate = dropped as f64 / rows as f64;
        // 4,096 draws: the rate's standard error is 0.007.
        assert!((rate - 0.3).abs() < 0.03, "dropped {rate:.3} of the labels");
        // Unlabelled data draws no classes.
        let plain =
            Trainer::new(model(None), data.without_labels(), TrainConfig::default()).unwrap();
        assert!(plain.draw(0).unwrap().rows.classes.is_empty());
    }
}
