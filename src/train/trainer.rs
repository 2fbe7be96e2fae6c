//! The training loop: anchors, loss, optimizer, EMA, progress, metrics log and checkpoints.

use super::anchors::{AnchorBacking, AnchorStore};
use super::checkpoint::{self, Sections};
use super::config::{AnchorPolicy, DivergencePolicy, LossWeight, OptimizerKind, TrainConfig};
use super::{ema, loss};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::flow::tensor::column;
use crate::flow::ProbabilityFlowExt;
use crate::model::{device_of, AnchorLaw, IntegrationFlow, SubspaceLaw};
use crate::nn::IntegrationNet;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What one optimizer step measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The step's index (0-based).
    pub step: usize,
    /// The epoch it belonged to.
    pub epoch: usize,
    /// The loss.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The data-term weight `w`.
    pub w: f64,
    /// When this step finished an epoch: that epoch's mean anchor change per example.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_drift: Option<f64>,
    /// The step diverged and was skipped ([`DivergencePolicy::Skip`]): nothing was updated,
    /// and `loss` and `grad_norm` are what diverged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// How often the divergence guard acted in this run (saved in checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct GuardCounts {
    skipped: usize,
    rollbacks: usize,
}

enum Optim<B: AutodiffBackend, N: AutodiffModule<B>> {
    Adam(OptimizerAdaptor<Adam, N, B>),
    AdamW(OptimizerAdaptor<AdamW, N, B>),
}

type Bytes = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Where training stands: the next step, its epoch and its batch within the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    step: usize,
    epoch: usize,
    batch: usize,
}

/// How far the anchor store moved: the running sum of per-example anchor changes in the
/// current epoch, and the mean change per example of every finished epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct AnchorDrift {
    epoch_sum: f64,
    history: Vec<f64>,
}

/// What a checkpoint records besides tensors, to resume exactly and to refuse a checkpoint of
/// another model or dataset.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    config: TrainConfig,
    position: Position,
    flow: String,
    parameterization: crate::flow::Parameterization,
    sigma_data: f64,
    anchor_law: AnchorLaw,
    data_len: usize,
    data_dim: usize,
    data_crc: u32,
    param_shapes: Vec<Vec<usize>>,
    drift: AnchorDrift,
    #[serde(default)]
    guard: GuardCounts,
}

const FORMAT: u32 = 1;

/// Trains an [`IntegrationFlow`] on a [`Dataset`] with the anchor algorithm of DESIGN.md §3.
///
/// ```
/// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
/// use integration_flow::backend::CpuAutodiff;
/// use integration_flow::data::Toy;
/// use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
/// use integration_flow::model::{AnchorLaw, IntegrationFlow};
/// use integration_flow::nn::MlpConfig;
/// use integration_flow::train::{TrainConfig, Trainer};
///
/// let device = Default::default();
/// let net = MlpConfig { width: 32, depth: 2, ..Default::default() }.init::<CpuAutodiff>(&device, 0)?;
/// let flow = RectifiedFlowConfig::default().init()?;
/// let model = IntegrationFlow::new(flow, net, Parameterization::Integral, 1.0, AnchorLaw::Gaussian { scale: 1.0 })?;
/// let data = Toy::Moons.sample(256, 0)?;
/// let config = TrainConfig { steps: 20, batch_size: 64, progress: false, ..Default::default() };
/// let mut trainer = Trainer::new(model, data, config)?;
/// trainer.fit()?;
/// assert_eq!(trainer.step(), 20);
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub struct Trainer<B: AutodiffBackend, N: IntegrationNet<B> + AutodiffModule<B>> {
    model: IntegrationFlow<B, N>,
    ema: N::InnerModule,
    optim: Optim<B, N>,
    anchors: Option<AnchorStore>,
    data: Dataset,
    config: TrainConfig,
    position: Position,
    drift: AnchorDrift,
    order: Vec<usize>,
    checkpoint_dir: Option<PathBuf>,
    metrics: Option<(PathBuf, BufWriter<File>)>,
    device: B::Device,
    guard: GuardCounts,
}

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    /// Prepares training: validates the configuration against the model and data, draws the
    /// anchors and builds the optimizer and the EMA. Nothing is trained yet.
    pub fn new(model: IntegrationFlow<B, N>, data: Dataset, config: TrainConfig) -> Result<Self> {
        let anchors = init_anchors(&data, &config)?;
        let model = model.with_anchor_law(anchor_law(&config, anchors.as_ref())?);
        let store = anchors.map(|a| a.store);
        Self::assemble(model, data, config, store, Position::default(), None)
    }

    fn assemble(
        model: IntegrationFlow<B, N>,
        data: Dataset,
        config: TrainConfig,
        anchors: Option<AnchorStore>,
        position: Position,
        ema: Option<N::InnerModule>,
    ) -> Result<Self> {
        config.validate()?;
        if data.dim() != model.dim() {
            return Err(Error::ShapeMismatch {
                context: "dataset and model",
                expected: format!("{} values per example (the model's)", model.dim()),
                found: format!("{} values per example", data.dim()),
            });
        }
        if config.drop_last && config.batch_size > data.len() {
            return Err(Error::InvalidConfig {
                config: "TrainConfig",
                field: "batch_size",
                reason: format!(
                    "{} exceeds the dataset's {} examples while drop_last is set: no batch would run",
                    config.batch_size,
                    data.len()
                ),
            });
        }
        let range = model.flow().time_range();
        if config.loss_weight == LossWeight::Edm && model.flow().sigma(range.min) <= 0.0 {
            return Err(Error::InvalidConfig {
                config: "TrainConfig",
                field: "loss_weight",
                reason: "EDM's λ(t) is infinite where σ = 0; use a flow whose t_min has σ > 0"
                    .into(),
            });
        }
        let optim = build_optimizer(&config)?;
        let device = device_of(model.net());
        let ema = ema.unwrap_or_else(|| model.net().valid());
        let mut trainer = Trainer {
            model,
            ema,
            optim,
            anchors,
            data,
            config,
            position,
            drift: AnchorDrift::default(),
            order: Vec::new(),
            checkpoint_dir: None,
            metrics: None,
            device,
            guard: GuardCounts::default(),
        };
        trainer.order = trainer.epoch_order(position.epoch);
        Ok(trainer)
    }

    /// Saves a checkpoint to `dir` every `checkpoint_every` steps and at the end of [`fit`](Self::fit).
    pub fn with_checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// Appends a JSON line of [`StepStats`] (plus samples/s) to `path` every `log_every` steps.
    pub fn with_metrics_log(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        self.metrics = Some((path.to_path_buf(), BufWriter::new(file)));
        Ok(self)
    }

    /// The model being trained.
    pub fn model(&self) -> &IntegrationFlow<B, N> {
        &self.model
    }

    /// The EMA of the model, ready for sampling (no autodiff).
    pub fn ema_model(&self) -> IntegrationFlow<B::InnerBackend, N::InnerModule> {
        self.model.with_net(self.ema.clone())
    }

    /// The anchor store (`None` for the `off` policy).
    pub fn anchors(&self) -> Option<&AnchorStore> {
        self.anchors.as_ref()
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step(&self) -> usize {
        self.position.step
    }

    /// The current epoch.
    pub fn epoch(&self) -> usize {
        self.position.epoch
    }

    /// The mean change `‖a_new − a_old‖` of an example's anchor over each finished epoch (zeros
    /// for the policies that never update anchors): does the anchor store converge?
    pub fn anchor_drift(&self) -> &[f64] {
        &self.drift.history
    }

    fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.data.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        order.shuffle(&mut stream(self.config.seed, Stream::Shuffle, epoch as u64));
        order
    }

    /// Trains until `config.steps` steps are done, with progress bar, metrics log and
    /// checkpoints as configured; returns the last step's statistics.
    pub fn fit(&mut self) -> Result<Option<StepStats>> {
        let remaining = self.config.steps.saturating_sub(self.position.step);
        self.train_steps(remaining)
    }

    /// Sets the run's length (`config.steps`), e.g. to train a resumed run further than it was
    /// configured to go; `fit` and `train_for` then stop at `steps`. Steps already done stay
    /// done. Zero is an error.
    pub fn set_steps(&mut self, steps: usize) -> Result<()> {
        if steps == 0 {
            return Err(Error::InvalidArgument {
                name: "steps",
                reason: "must be at least 1".into(),
            });
        }
        self.config.steps = steps;
        Ok(())
    }

    /// Runs `count` more steps (past `config.steps` if asked).
    pub fn train_steps(&mut self, count: usize) -> Result<Option<StepStats>> {
        self.run(count, None)
    }

    /// Trains until `budget` of wall time is spent or `config.steps` are done, whichever comes
    /// first (a step that starts inside the budget finishes), then checkpoints like
    /// [`fit`](Self::fit). For runs sized by time rather than steps.
    pub fn train_for(&mut self, budget: std::time::Duration) -> Result<Option<StepStats>> {
        let remaining = self.config.steps.saturating_sub(self.position.step);
        self.run(remaining, Some(Instant::now() + budget))
    }

    fn run(&mut self, count: usize, deadline: Option<Instant>) -> Result<Option<StepStats>> {
        if self.config.flush_denormals {
            crate::backend::flush_denormals();
        }
        let bar = self.progress_bar(count);
        let mut last = None;
        let mut window = (Instant::now(), self.position.step);
        let mut ran = 0;
        // By position, not by count: a rollback moves the position back.
        let target = self.position.step + count;
        while self.position.step < target {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let stats = self.train_step()?;
            ran += 1;
            let done = self.position.step;
            if done.is_multiple_of(self.config.log_every)
                || done == self.config.steps
                || stats.anchor_drift.is_some()
            {
                let rate = done.saturating_sub(window.1) as f64 * self.config.batch_size as f64
                    / window.0.elapsed().as_secs_f64().max(1e-9);
                window = (Instant::now(), done);
                self.log(&stats, rate)?;
                bar.set_message(format!("loss {:.4}", stats.loss));
            }
            bar.set_position((done + count).saturating_sub(target) as u64);
            if self.config.checkpoint_every > 0 && done.is_multiple_of(self.config.checkpoint_every)
            {
                self.checkpoint()?;
            }
            last = Some(stats);
        }
        bar.finish_and_clear();
        let every = self.config.checkpoint_every;
        if ran > 0 && (every == 0 || !self.position.step.is_multiple_of(every)) {
            // The periodic checkpoints missed the final state.
            self.checkpoint()?;
        }
        Ok(last)
    }

    fn progress_bar(&self, count: usize) -> ProgressBar {
        let visible = self.config.progress && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(count as u64), target);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {per_sec}  eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    }

    fn log(&mut self, stats: &StepStats, samples_per_sec: f64) -> Result<()> {
        if self.metrics.is_none() {
            return Ok(());
        }
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(flatten)]
            stats: &'a StepStats,
            samples_per_sec: f64,
        }
        let line = serde_json::to_string(&Line {
            stats,
            samples_per_sec,
        })
        .unwrap_or_default();
        self.write_metrics_line(&line)
    }

    /// Appends `line` to the metrics log, if there is one, and flushes it.
    fn write_metrics_line(&mut self, line: &str) -> Result<()> {
        if let Some((path, out)) = &mut self.metrics {
            writeln!(out, "{line}")
                .and_then(|_| out.flush())
                .map_err(|e| Error::Io {
                    path: path.clone(),
                    source: e,
                })?;
        }
        Ok(())
    }

    /// Writes a checkpoint to the configured directory (no-op without one).
    pub fn checkpoint(&self) -> Result<()> {
        match &self.checkpoint_dir {
            Some(dir) => self.save_checkpoint(dir),
            None => Ok(()),
        }
    }

    /// One optimizer step on the next batch. A non-finite loss or gradient is handled by
    /// [`TrainConfig::on_divergence`]: an error naming the step, a skipped step (returned with
    /// `skipped` set), or a rollback to the last checkpoint (the returned step is then the
    /// first one after it).
    pub fn train_step(&mut self) -> Result<StepStats> {
        match self.try_step() {
            Err(Error::Diverged { step, reason }) => self.on_divergence(step, reason),
            other => other,
        }
    }

    fn on_divergence(&mut self, step: usize, reason: String) -> Result<StepStats> {
        let stop = |why: String| Error::Diverged { step, reason: why };
        match self.config.on_divergence {
            DivergencePolicy::Stop => {
                self.log_event(step, "stop", &reason, None)?;
                Err(stop(reason))
            }
            DivergencePolicy::Skip { max } => {
                if self.guard.skipped >= max {
                    self.log_event(step, "stop", &reason, None)?;
                    return Err(stop(format!("{reason} (after {max} skipped steps)")));
                }
                self.guard.skipped += 1;
                self.log_event(step, "skip", &reason, None)?;
                let epoch = self.position.epoch;
                let w = self.data_weight(epoch);
                let anchor_drift = self.advance()?;
                Ok(StepStats {
                    step,
                    epoch,
                    loss: f64::NAN,
                    grad_norm: f64::NAN,
                    lr: self.lr_at(step),
                    w,
                    anchor_drift,
                    skipped: true,
                })
            }
            DivergencePolicy::Rollback { lr_factor, max } => {
                if self.guard.rollbacks >= max {
                    self.log_event(step, "stop", &reason, None)?;
                    return Err(stop(format!("{reason} (after {max} rollbacks)")));
                }
                let Some(dir) = self.checkpoint_dir.clone() else {
                    return Err(stop(format!(
                        "{reason}; policy rollback needs a checkpoint directory"
                    )));
                };
                let lr = self.config.optimizer.lr * lr_factor;
                self.rollback(&dir, lr)
                    .map_err(|e| stop(format!("{reason}; rolling back failed: {e}")))?;
                self.log_event(step, "rollback", &reason, Some(lr))?;
                self.train_step()
            }
        }
    }

    /// Replaces the training state by the checkpoint in `dir` and sets the learning rate;
    /// the guard's counts carry on (one more rollback).
    fn rollback(&mut self, dir: &Path, lr: f64) -> Result<()> {
        // A file-backed store is re-created at its path: unmap the current one first.
        self.anchors = None;
        let mut back = Self::resume(dir, self.model.clone(), self.data.clone())?;
        back.config.optimizer.lr = lr;
        self.model = back.model;
        self.ema = back.ema;
        self.optim = back.optim;
        self.anchors = back.anchors;
        self.config = back.config;
        self.position = back.position;
        self.drift = back.drift;
        self.order = back.order;
        self.guard.rollbacks += 1;
        Ok(())
    }

    /// A metrics-log line for a divergence event.
    fn log_event(
        &mut self,
        step: usize,
        action: &str,
        reason: &str,
        lr: Option<f64>,
    ) -> Result<()> {
        let mut line = serde_json::json!({
            "event": "diverged",
            "step": step,
            "action": action,
            "reason": reason,
            "skipped": self.guard.skipped,
            "rollbacks": self.guard.rollbacks,
            "resume_step": self.position.step,
        });
        if let Some(lr) = lr {
            line["lr"] = serde_json::json!(lr);
        }
        self.write_metrics_line(&line.to_string())
    }

    fn data_weight(&self, epoch: usize) -> f64 {
        if self.config.anchor.policy.uses_anchor_term() {
            self.config.weighting.weight(epoch)
        } else {
            1.0
        }
    }

    fn lr_at(&self, step: usize) -> f64 {
        let o = &self.config.optimizer;
        let warmup = if o.warmup_steps == 0 {
            1.0
        } else {
            ((step + 1) as f64 / o.warmup_steps as f64).min(1.0)
        };
        o.lr * warmup
    }

    /// Moves to the next batch (and epoch); returns the finished epoch's anchor drift.
    fn advance(&mut self) -> Result<Option<f64>> {
        self.position.step += 1;
        self.position.batch += 1;
        let mut anchor_drift = None;
        if self.position.batch == self.batches_per_epoch() {
            let per_example = self.drift.epoch_sum / self.data.len() as f64;
            self.drift.history.push(per_example);
            anchor_drift = Some(per_example);
            self.drift.epoch_sum = 0.0;
            self.position.batch = 0;
            self.position.epoch += 1;
            self.order = self.epoch_order(self.position.epoch);
            self.refresh_anchors()?;
        }
        Ok(anchor_drift)
    }

    fn try_step(&mut self) -> Result<StepStats> {
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
        let noise = flow.sample_noise(&mut rng, n, dim)?;
        let mut x0 = Vec::new();
        self.data.gather_into(&indices, &mut x0);
        let anchor = match &self.anchors {
            Some(store) => store.get(&indices)?,
            None => vec![0.0; n * dim],
        };
        let upload = |values: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(values, [n, dim]), &self.device)
        };
        let x0_t = upload(x0.clone());
        let anchor_t = upload(anchor.clone());
        let x_t = flow.interpolate(x0_t.clone(), upload(noise), &t)?;
        let x_hat = self.model.estimate(x_t, &t, anchor_t.clone())?;

        let policy = self.config.anchor.policy;
        let w = self.data_weight(epoch);
        let mut per_example =
            loss::distance(self.config.distance, x_hat.clone(), x0_t).mul_scalar(w);
        if w < 1.0 {
            per_example = per_example
                + loss::distance(self.config.distance, x_hat.clone(), anchor_t).mul_scalar(1.0 - w);
        }
        if self.config.loss_weight == LossWeight::Edm {
            let sd = self.model.sigma_data();
            let lambda: Vec<f64> = t
                .iter()
                // (σ̃² + σ_d²)/(σ̃σ_d)² = 1/σ_d² + 1/σ̃², finite where σ̃ = ∞ (α = 0).
                .map(|&ti| 1.0 / (sd * sd) + flow.noise_to_signal(ti).powi(-2))
                .collect();
            per_example = per_example * column(lambda, &x_hat);
        }
        let loss = per_example.mean();
        let loss_value: f64 = loss.clone().into_scalar().elem();
        if !loss_value.is_finite() {
            return Err(Error::Diverged {
                step,
                reason: format!("loss is {loss_value}"),
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), self.model.net());
        let (grads, grad_norm) =
            clip_global_norm::<B, N>(self.model.net(), grads, self.config.optimizer.grad_clip);
        if !grad_norm.is_finite() {
            return Err(Error::Diverged {
                step,
                reason: format!("gradient norm is {grad_norm}"),
            });
        }
        let lr = self.lr_at(step);
        let net = self.model.net().clone();
        let net = match &mut self.optim {
            Optim::Adam(opt) => opt.step(lr, net, grads),
            Optim::AdamW(opt) => opt.step(lr, net, grads),
        };
        let decay = ema::decay_at(self.config.ema.decay, self.config.ema.warmup, step);
        self.ema = ema::update(self.ema.clone(), &net.valid(), decay);
        self.model = self.model.with_net(net);

        if let Some(store) = &mut self.anchors {
            let new = match policy {
                AnchorPolicy::Prediction => {
                    Some(x_hat.into_data().iter::<f32>().collect::<Vec<f32>>())
                }
                AnchorPolicy::Data => Some(x0),
                AnchorPolicy::Frozen | AnchorPolicy::Ot | AnchorPolicy::Off => None,
            };
            if let Some(new) = new {
                self.drift.epoch_sum += new
                    .chunks(dim)
                    .zip(anchor.chunks(dim))
                    .map(|(a, b)| {
                        a.iter()
                            .zip(b)
                            .map(|(x, y)| f64::from(x - y).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .sum::<f64>();
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
            skipped: false,
        })
    }

    /// Policy `ot` with `ot_refresh_epochs = k > 0`: at the start of every k-th epoch, fresh
    /// anchors matched again (from a random stream of that epoch, so a resumed run refreshes
    /// identically).
    fn refresh_anchors(&mut self) -> Result<()> {
        let a = &self.config.anchor;
        let epoch = self.position.epoch;
        if a.policy != AnchorPolicy::Ot
            || a.ot_refresh_epochs == 0
            || !epoch.is_multiple_of(a.ot_refresh_epochs)
        {
            return Ok(());
        }
        let mut rng = stream(self.config.seed, Stream::Anchors, epoch as u64);
        if matches!(a.backing, AnchorBacking::File { .. }) {
            // The new store re-creates the file: unmap the old one first.
            self.anchors = None;
        }
        let store = if let AnchorLaw::Subspace { law } = self.model.anchor_law() {
            AnchorStore::optimal_transport_subspace(
                &self.data, &law, a.ot_chunk, a.storage, &a.backing, &mut rng,
            )?
        } else {
            AnchorStore::optimal_transport_in(
                &self.data, a.scale, a.ot_chunk, a.ot_space, a.storage, &a.backing, &mut rng,
            )?
        };
        self.anchors = Some(store);
        Ok(())
    }

    /// Writes a checkpoint (model, EMA, optimizer, anchors, config, position) to `dir`
    /// atomically.
    ///
    /// Weights that are not finite are never written: that is an [`Error::Diverged`], and the
    /// previous checkpoint stays.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if !params_finite(self.model.net()) || !params_finite(&self.ema) {
            return Err(Error::Diverged {
                step: self.position.step,
                reason: "the weights are not finite; the checkpoint was not written".into(),
            });
        }
        let record_error = |what: &str, e: burn::record::RecorderError| Error::Checkpoint {
            path: checkpoint::checkpoint_path(dir),
            reason: format!("cannot record the {what}: {e}"),
        };
        let meta = self.meta();
        let mut sections = Sections::default();
        let meta_json = serde_json::to_vec(&meta).map_err(|e| Error::Checkpoint {
            path: checkpoint::checkpoint_path(dir),
            reason: format!("cannot encode the metadata: {e}"),
        })?;
        sections.push("meta", meta_json);
        let bytes = Bytes::default();
        let model = Recorder::<B>::record(&bytes, self.model.net().clone().into_record(), ())
            .map_err(|e| record_error("model", e))?;
        sections.push("model", model);
        let ema = Recorder::<B::InnerBackend>::record(&bytes, self.ema.clone().into_record(), ())
            .map_err(|e| record_error("EMA", e))?;
        sections.push("ema", ema);
        let optim = match &self.optim {
            Optim::Adam(o) => Recorder::<B>::record(&bytes, o.to_record(), ()),
            Optim::AdamW(o) => Recorder::<B>::record(&bytes, o.to_record(), ()),
        }
        .map_err(|e| record_error("optimizer", e))?;
        sections.push("optimizer", optim);
        if let Some(store) = &self.anchors {
            sections.push_parts("anchors", store.to_parts());
        }
        checkpoint::write(dir, &sections)
    }

    fn meta(&self) -> Meta {
        Meta {
            format: FORMAT,
            config: self.config.clone(),
            position: self.position,
            flow: self.model.flow().name().to_string(),
            parameterization: self.model.parameterization(),
            sigma_data: self.model.sigma_data(),
            anchor_law: self.model.anchor_law(),
            data_len: self.data.len(),
            data_dim: self.data.dim(),
            data_crc: self.data.crc(),
            param_shapes: param_shapes(self.model.net()),
            drift: self.drift.clone(),
            guard: self.guard,
        }
    }

    /// Continues the run whose checkpoint is in `dir`: `model` supplies the flow and the
    /// network's architecture (its weights are replaced), `data` must be the dataset the run
    /// trained on. The configuration comes from the checkpoint. A missing, corrupt, truncated
    /// or mismatched checkpoint is an error and nothing is loaded.
    pub fn resume(
        dir: impl AsRef<Path>,
        model: IntegrationFlow<B, N>,
        data: Dataset,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let path = checkpoint::checkpoint_path(dir);
        let mismatch = |reason: String| Error::Checkpoint {
            path: path.clone(),
            reason,
        };
        let mut sections = checkpoint::read(dir)?;
        let meta = read_meta(&mut sections, &path)?;
        let checks = [
            ("flow", meta.flow.clone(), model.flow().name().to_string()),
            (
                "parameterization",
                format!("{:?}", meta.parameterization),
                format!("{:?}", model.parameterization()),
            ),
            (
                "sigma_data",
                meta.sigma_data.to_string(),
                model.sigma_data().to_string(),
            ),
            (
                "dataset size",
                format!("{}×{}", meta.data_len, meta.data_dim),
                format!("{}×{}", data.len(), data.dim()),
            ),
            (
                "dataset contents (CRC-32)",
                meta.data_crc.to_string(),
                data.crc().to_string(),
            ),
            (
                "network parameter shapes",
                format!("{:?}", meta.param_shapes),
                format!("{:?}", param_shapes(model.net())),
            ),
        ];
        for (what, saved, given) in checks {
            if saved != given {
                return Err(mismatch(format!(
                    "{what} differs: checkpoint has {saved}, this run has {given}"
                )));
            }
        }
        let device = device_of(model.net());
        let bytes = Bytes::default();
        let load_error = |what: &str, e: burn::record::RecorderError| {
            mismatch(format!("cannot load the {what}: {e}"))
        };
        let net_record = Recorder::<B>::load(&bytes, sections.take("model", &path)?, &device)
            .map_err(|e| load_error("model", e))?;
        let net = model.net().clone().load_record(net_record);
        let ema_template = net.valid();
        let ema_record = Recorder::<B::InnerBackend>::load(
            &bytes,
            sections.take("ema", &path)?,
            &device_of(&ema_template),
        )
        .map_err(|e| load_error("EMA", e))?;
        let ema = ema_template.load_record(ema_record);
        // The dataset's size was checked against the metadata above.
        let anchors = read_anchors(&mut sections, &meta, &path)?
            .map(|store| store.into_backing(&meta.config.anchor.backing))
            .transpose()?;
        let optim_bytes = sections.take("optimizer", &path)?;
        let model = model.with_net(net).with_anchor_law(meta.anchor_law);
        let mut trainer =
            Self::assemble(model, data, meta.config, anchors, meta.position, Some(ema))?;
        trainer.guard = meta.guard;
        trainer.drift = meta.drift;
        trainer.optim = match trainer.optim {
            Optim::Adam(o) => Optim::Adam(
                o.load_record(
                    Recorder::<B>::load(&bytes, optim_bytes, &device)
                        .map_err(|e| load_error("optimizer", e))?,
                ),
            ),
            Optim::AdamW(o) => Optim::AdamW(
                o.load_record(
                    Recorder::<B>::load(&bytes, optim_bytes, &device)
                        .map_err(|e| load_error("optimizer", e))?,
                ),
            ),
        };
        Ok(trainer.with_checkpoint_dir(dir))
    }
}

/// What a checkpoint holds, read and verified (magic, lengths, checksums, metadata, anchor
/// store) without building a model: to inspect a run, and the reader the fuzzer drives.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    /// The step the run takes next (the steps done).
    pub step: usize,
    /// Its epoch.
    pub epoch: usize,
    /// The flow's name.
    pub flow: String,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Examples and values per example of the dataset it trained on.
    pub data_shape: [usize; 2],
    /// The sections, with their payload sizes in bytes.
    pub sections: Vec<(String, usize)>,
    /// The anchor store's examples, values per example and storage; `None` for policy `off`.
    pub anchors: Option<(usize, usize, super::AnchorStorage)>,
}

impl CheckpointInfo {
    /// Reads and verifies `dir/checkpoint.ifc`.
    pub fn read(dir: impl AsRef<Path>) -> Result<Self> {
        let path = checkpoint::checkpoint_path(dir.as_ref());
        let bytes = std::fs::read(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        Self::parse(&bytes, &path)
    }

    /// Verifies checkpoint bytes; `path` names the file in errors ([`Error::Checkpoint`]).
    pub fn parse(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut sections = Sections::decode(bytes, path)?;
        let sizes = sections
            .0
            .iter()
            .map(|(name, parts)| (name.clone(), parts.iter().map(|p| p.len()).sum()))
            .collect();
        let meta = read_meta(&mut sections, path)?;
        meta.config
            .validate()
            .map_err(|e| bad(format!("invalid configuration: {e}")))?;
        let anchors = read_anchors(&mut sections, &meta, path)?
            .map(|store| (store.len(), store.dim(), store.storage()));
        for name in ["model", "ema", "optimizer"] {
            sections.take(name, path)?;
        }
        Ok(CheckpointInfo {
            step: meta.position.step,
            epoch: meta.position.epoch,
            flow: meta.flow,
            config: meta.config,
            data_shape: [meta.data_len, meta.data_dim],
            sections: sizes,
            anchors,
        })
    }
}

/// A checkpoint's metadata section, of this crate's format.
fn read_meta(sections: &mut Sections, path: &Path) -> Result<Meta> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let meta: Meta = serde_json::from_slice(&sections.take("meta", path)?)
        .map_err(|e| bad(format!("unreadable metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(bad(format!("format {} is not {FORMAT}", meta.format)));
    }
    Ok(meta)
}

/// A checkpoint's anchor store (`None` for policy `off`), of the dataset shape `meta` records.
fn read_anchors(sections: &mut Sections, meta: &Meta, path: &Path) -> Result<Option<AnchorStore>> {
    if meta.config.anchor.policy == AnchorPolicy::Off {
        return Ok(None);
    }
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let store = AnchorStore::from_bytes(&sections.take("anchors", path)?)
        .ok_or_else(|| bad("malformed anchor store".into()))?;
    if store.len() != meta.data_len || store.dim() != meta.data_dim {
        return Err(bad(format!(
            "anchor store holds {}×{}, the dataset {}×{}",
            store.len(),
            store.dim(),
            meta.data_len,
            meta.data_dim
        )));
    }
    Ok(Some(store))
}

/// The anchor store a run starts with, and the subspace law its anchors were drawn from.
struct InitialAnchors {
    store: AnchorStore,
    law: Option<Arc<SubspaceLaw>>,
}

fn init_anchors(data: &Dataset, config: &TrainConfig) -> Result<Option<InitialAnchors>> {
    config.validate()?;
    let a = &config.anchor;
    let mut rng = stream(config.seed, Stream::Anchors, 0);
    let plain = |store| Some(InitialAnchors { store, law: None });
    Ok(match a.policy {
        AnchorPolicy::Off => None,
        AnchorPolicy::Ot if a.subspace > 0 => {
            let law = Arc::new(SubspaceLaw::fit(data, a.subspace)?);
            let store = AnchorStore::optimal_transport_subspace(
                data, &law, a.ot_chunk, a.storage, &a.backing, &mut rng,
            )?;
            Some(InitialAnchors {
                store,
                law: Some(law),
            })
        }
        AnchorPolicy::Ot => plain(AnchorStore::optimal_transport_in(
            data, a.scale, a.ot_chunk, a.ot_space, a.storage, &a.backing, &mut rng,
        )?),
        AnchorPolicy::Prediction | AnchorPolicy::Data | AnchorPolicy::Frozen => {
            plain(AnchorStore::gaussian_in(
                data.len(),
                data.dim(),
                a.scale,
                a.storage,
                &a.backing,
                &mut rng,
            )?)
        }
    })
}

/// The anchor law sampling uses after training with `config`.
/// The law sampling draws anchors from: the one the stored anchors came from.
fn anchor_law(config: &TrainConfig, anchors: Option<&InitialAnchors>) -> Result<AnchorLaw> {
    Ok(match (config.anchor.policy, anchors) {
        (AnchorPolicy::Off, _) => AnchorLaw::Zero,
        (_, Some(InitialAnchors { law: Some(law), .. })) => {
            AnchorLaw::Subspace { law: law.clone() }
        }
        _ => AnchorLaw::Gaussian {
            scale: config.anchor.scale,
        },
    })
}

fn build_optimizer<B: AutodiffBackend, N: AutodiffModule<B>>(
    config: &TrainConfig,
) -> Result<Optim<B, N>> {
    let o = &config.optimizer;
    Ok(match o.kind {
        OptimizerKind::Adam => {
            let decay =
                (o.weight_decay > 0.0).then(|| WeightDecayConfig::new(o.weight_decay as f32));
            Optim::Adam(
                AdamConfig::new()
                    .with_beta_1(o.beta1 as f32)
                    .with_beta_2(o.beta2 as f32)
                    .with_epsilon(o.epsilon as f32)
                    .with_weight_decay(decay)
                    .init(),
            )
        }
        OptimizerKind::AdamW => Optim::AdamW(
            AdamWConfig::new()
                .with_beta_1(o.beta1 as f32)
                .with_beta_2(o.beta2 as f32)
                .with_epsilon(o.epsilon as f32)
                .with_weight_decay(o.weight_decay as f32)
                .init(),
        ),
    })
}

/// Independent random streams, each a function of (seed, stream, index) alone, so that a
/// resumed run draws exactly what an uninterrupted one would.
#[derive(Clone, Copy)]
enum Stream {
    Anchors = 1,
    Shuffle = 2,
    Step = 3,
}

fn stream(seed: u64, stream: Stream, index: u64) -> StdRng {
    // SplitMix64 over the three inputs.
    let mut z = seed
        ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Whether every parameter value of `module` is finite.
fn params_finite<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Finite(bool);
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0 {
                let flat = param.val().reshape([-1]);
                let bad = flat.clone().is_nan().bool_or(flat.is_inf()).any();
                self.0 = !bad.into_scalar().elem::<bool>();
            }
        }
    }
    let mut finite = Finite(true);
    module.visit(&mut finite);
    finite.0
}

fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().dims().to_vec());
        }
    }
    let mut shapes = Shapes(Vec::new());
    module.visit(&mut shapes);
    shapes.0
}

/// The global L2 norm of the gradients, and the gradients scaled down to `max_norm` if above.
fn clip_global_norm<B: AutodiffBackend, N: AutodiffModule<B>>(
    net: &N,
    mut grads: GradientsParams,
    max_norm: Option<f64>,
) -> (GradientsParams, f64) {
    struct SumSquares<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut sum = SumSquares::<B> {
        grads: &grads,
        total: None,
    };
    net.visit(&mut sum);
    let norm = sum.total.map_or(0.0, |t| {
        let v: f64 = t.into_scalar().elem();
        v.sqrt()
    });
    if let Some(max) = max_norm {
        if norm.is_finite() && norm > max {
            net.visit(&mut Scale {
                grads: &mut grads,
                factor: max / norm,
            });
        }
    }
    (grads, norm)
}
