//! The training loop (docs/training.md, "The loop"): batches, epochs, logging, checkpoints.
//!
//! The step itself is in `step.rs`, the divergence guard in `guard.rs`, checkpoints and resume
//! in `checkpoint/`, the optimizer in `optimizer.rs`, the random streams in `streams.rs`.

use super::adversarial::CriticState;
use super::config::{LossWeight, TrainConfig};
use super::distribution_matching::ScoreState;
use super::guard::GuardCounts;
use super::interrupt;
use super::optimizer::{lr_at, Optim};
use super::perceptual::ImageFeatures;
pub use super::position::StepStats;
pub(super) use super::position::{AnchorDrift, Position};
use super::progress::{MetricsLog, Progress};
use super::streams::{stream, Stream};
use crate::backend::device_of;
use crate::coupling::{AnchorBacking, AnchorStore, Coupling, StoreSpec};
use crate::data::Dataset;
use crate::error::{require_image_rows, Error, Result};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Trains an [`IntegrationFlow`] on a [`Dataset`]: the loop of docs/training.md, with the
/// anchors of a [`Coupling`].
///
/// ```
/// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
/// use integration_flow::backend::CpuAutodiff;
/// use integration_flow::data::Toy;
/// use integration_flow::flow::FlowConfig;
/// use integration_flow::model::IntegrationFlowConfig;
/// use integration_flow::nn::MlpConfig;
/// use integration_flow::train::{TrainConfig, Trainer};
///
/// let device = Default::default();
/// let net = MlpConfig { width: 32, depth: 2, ..Default::default() }.init::<CpuAutodiff>(&device, 0)?;
/// let flow = FlowConfig::Rf(Default::default()).init()?;
/// let model = IntegrationFlowConfig::default().init(flow, net)?; // integral form, σ_d from the data
/// let data = Toy::Moons.sample(256, 0)?;
/// let config = TrainConfig { steps: 20, batch_size: 64, progress: false, ..Default::default() };
/// let mut trainer = Trainer::new(model, data, config)?;
/// trainer.fit()?;
/// assert_eq!(trainer.step(), 20);
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub struct Trainer<B: AutodiffBackend, N: IntegrationNet<B> + AutodiffModule<B>> {
    pub(super) model: IntegrationFlow<B, N>,
    pub(super) ema: N::InnerModule,
    pub(super) optim: Optim<B, N>,
    pub(super) coupling: Arc<dyn Coupling>,
    pub(super) anchors: Option<AnchorStore>,
    /// Whether the run has a store (fixed when it starts): a checkpoint without one is refused.
    pub(super) has_store: bool,
    pub(super) data: Dataset,
    pub(super) config: TrainConfig,
    pub(super) position: Position,
    pub(super) drift: AnchorDrift,
    pub(super) order: Vec<usize>,
    pub(super) checkpoint_dir: Option<PathBuf>,
    pub(super) metrics: Option<MetricsLog>,
    pub(super) device: B::Device,
    pub(super) guard: GuardCounts,
    /// The network of the perceptual term (`config.perceptual`), if one was given.
    pub(super) perceptual: Option<Box<dyn ImageFeatures<B>>>,
    /// The critic of the adversarial term (`config.adversarial`) and its optimizer.
    pub(super) critic: Option<CriticState<B>>,
    /// The denoisers of the distribution-matching term (`config.distribution_matching`): set
    /// when the teacher is given, or restored (without the teacher) by a resume.
    pub(super) score: Option<ScoreState<B, N>>,
    /// The data-parallel workers' devices (`None`: the model's for every worker).
    pub(super) worker_devices: Option<Vec<B::Device>>,
    /// The data-parallel workers, from the first step of a run to its end.
    #[cfg(feature = "data-parallel")]
    pub(super) workers: Option<super::parallel::pool::WorkerPool<B, N>>,
}

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// Prepares training with the coupling `config.anchor` names: validates the configuration
    /// against the model and data, builds the anchors, the optimizer and the EMA. Nothing is
    /// trained yet.
    pub fn new(model: IntegrationFlow<B, N>, data: Dataset, config: TrainConfig) -> Result<Self> {
        let coupling = config.anchor.coupling();
        Self::with_coupling(model, data, config, coupling)
    }

    /// Like [`new`](Self::new) with a coupling of your own (`config.anchor.policy` is then
    /// unused; its storage and backing still say where the anchors are kept). Resume such a run
    /// with [`resume_with_coupling`](Self::resume_with_coupling).
    pub fn with_coupling(
        model: IntegrationFlow<B, N>,
        data: Dataset,
        config: TrainConfig,
        coupling: Arc<dyn Coupling>,
    ) -> Result<Self> {
        config.validate()?;
        // Before the coupling, which can take long: constant data fails here.
        let model = model.with_sigma_data_from(&data)?;
        let law = coupling.law(&data)?;
        let mut rng = stream(config.seed, Stream::Anchors, 0);
        let store = coupling.build(&data, &law, StoreSpec::from(&config.anchor), &mut rng)?;
        let model = model.with_anchor_law(law);
        Self::assemble(
            model,
            data,
            config,
            coupling,
            store,
            Position::default(),
            None,
        )
    }

    pub(super) fn assemble(
        model: IntegrationFlow<B, N>,
        data: Dataset,
        config: TrainConfig,
        coupling: Arc<dyn Coupling>,
        anchors: Option<AnchorStore>,
        position: Position,
        ema: Option<N::InnerModule>,
    ) -> Result<Self> {
        config.validate()?;
        #[cfg(not(feature = "data-parallel"))]
        if config.data_parallel.is_some() {
            return Err(super::parallel::without_feature());
        }
        if data.dim() != model.dim() {
            return Err(Error::ShapeMismatch {
                context: "dataset and model",
                expected: format!("{} values per example (the model's)", model.dim()),
                found: format!("{} values per example", data.dim()),
            });
        }
        check_store_shape(anchors.as_ref(), &data)?;
        check_labelling(model.net().class_input(), model.guidance(), &data, &config)?;
        if let crate::train::ObjectiveConfig::FlowMap(_) = config.objective {
            if !model.net().takes_target_time() {
                return Err(Error::InvalidConfig {
                    config: "TrainConfig",
                    field: "objective",
                    reason: "the flow_map objective needs a network with a target-time input \
                             (MlpConfig/UNetConfig target_time, or IntegrationNet::with_target_time)"
                        .into(),
                });
            }
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
        match config.loss_weight {
            LossWeight::Uniform => {}
            LossWeight::Edm if model.flow().sigma(range.min) <= 0.0 => {
                return Err(Error::InvalidConfig {
                    config: "TrainConfig",
                    field: "loss_weight",
                    reason: "EDM's λ(t) is infinite where σ = 0; use a flow whose t_min has σ > 0"
                        .into(),
                });
            }
            LossWeight::Edm => {}
        }
        if let Some(adversarial) = &config.adversarial {
            require_image_rows(
                "adversarial image shape and data",
                adversarial.image,
                data.dim(),
            )?;
        }
        let optim = Optim::new(&config.optimizer);
        let device = device_of(model.net());
        let critic = config.adversarial.as_ref().map(|adversarial| {
            let seed = stream(config.seed, Stream::Critic, 0).next_u64();
            CriticState::new(adversarial, seed, &device)
        });
        let ema = ema.unwrap_or_else(|| model.net().valid());
        let mut trainer = Trainer {
            model,
            ema,
            optim,
            coupling,
            has_store: anchors.is_some(),
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
            perceptual: None,
            critic,
            score: None,
            worker_devices: None,
            #[cfg(feature = "data-parallel")]
            workers: None,
        };
        trainer.order = trainer.epoch_order(position.epoch);
        Ok(trainer)
    }

    /// Saves a checkpoint to `dir` every `checkpoint_every` steps and at the end of [`fit`](Self::fit).
    pub fn with_checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// Gives the perceptual term (`config.perceptual`) its frozen image network. Its image
    /// shape must hold the data's values per example; a configuration without the term refuses
    /// it (the weight belongs to the configuration, so a checkpoint records it).
    pub fn with_perceptual_features(mut self, features: Box<dyn ImageFeatures<B>>) -> Result<Self> {
        if self.config.perceptual.is_none() {
            return Err(Error::InvalidConfig {
                config: "TrainConfig",
                field: "perceptual",
                reason: "a perceptual network was given but the configuration has no perceptual \
                         term (set perceptual: {weight})"
                    .into(),
            });
        }
        require_image_rows(
            "perceptual features and data",
            features.image_shape(),
            self.data.dim(),
        )?;
        self.perceptual = Some(features);
        Ok(self)
    }

    /// Gives the distribution-matching term (`config.distribution_matching`) its teacher: a
    /// denoiser of the model's flow with the model's network shape (a distilled student's
    /// teacher). A new run's fake denoiser starts as a copy of it; a resumed run keeps the one
    /// of its checkpoint. A configuration without the term, or a teacher of another shape,
    /// refuses it.
    pub fn with_score_teacher(mut self, teacher: N) -> Result<Self> {
        if self.config.distribution_matching.is_none() {
            return Err(Error::InvalidConfig {
                config: "TrainConfig",
                field: "distribution_matching",
                reason: "a teacher was given but the configuration has no distribution-matching \
                         term (set distribution_matching: {weight})"
                    .into(),
            });
        }
        let (have, given) = (
            crate::train::param_shapes(self.model.net()),
            crate::train::param_shapes(&teacher),
        );
        if have != given {
            return Err(Error::ShapeMismatch {
                context:
                    "Trainer::with_score_teacher (the teacher's parameters against the model's)",
                expected: format!("{have:?}"),
                found: format!("{given:?}"),
            });
        }
        match &mut self.score {
            Some(state) => state.set_teacher(&teacher),
            None => self.score = Some(ScoreState::from_teacher(teacher)),
        }
        Ok(self)
    }

    /// Appends a JSON line of [`StepStats`] (plus samples/s) to `path` every `log_every` steps.
    pub fn with_metrics_log(mut self, path: impl AsRef<Path>) -> Result<Self> {
        self.metrics = Some(MetricsLog::open(path.as_ref())?);
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

    /// The anchor store (`None` for a coupling without anchors, such as policy `off`).
    pub fn anchors(&self) -> Option<&AnchorStore> {
        self.anchors.as_ref()
    }

    /// The coupling that gives the examples their anchors.
    pub fn coupling(&self) -> &Arc<dyn Coupling> {
        &self.coupling
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The checkpoint directory, if one was set.
    pub fn checkpoint_dir(&self) -> Option<&Path> {
        self.checkpoint_dir.as_deref()
    }

    /// Examples in the training data.
    pub(crate) fn data_len(&self) -> usize {
        self.data.len()
    }

    /// CRC-32 of the training data's values.
    pub(crate) fn data_crc(&self) -> u32 {
        self.data.crc()
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
    /// for the couplings that never update anchors): does the anchor store converge?
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
    ///
    /// After [`interrupt::install`](super::interrupt::install), Ctrl-C ends the current step,
    /// writes a checkpoint and returns [`Error::Interrupted`].
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
        // A budget past what an Instant can hold is no deadline.
        self.run(remaining, Instant::now().checked_add(budget))
    }

    /// The training loop, on one of rayon's threads ([`crate::backend::on_pool`]).
    fn run(&mut self, count: usize, deadline: Option<Instant>) -> Result<Option<StepStats>> {
        let result = crate::backend::on_pool(|| self.run_here(count, deadline));
        // However the run ended, its workers end with it.
        self.release_workers();
        result
    }

    fn run_here(&mut self, count: usize, deadline: Option<Instant>) -> Result<Option<StepStats>> {
        if self.config.flush_denormals {
            crate::backend::flush_denormals();
        }
        let _running = interrupt::RunningLoop::enter();
        let mut progress = Progress::new(self.config.progress, count, deadline);
        let mut last = None;
        let mut window = (Instant::now(), self.position.step);
        let mut ran = 0;
        let mut interrupted = false;
        // By position, not by count: a rollback moves the position back.
        let target = self.position.step + count;
        while self.position.step < target {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if interrupt::requested() {
                interrupted = true;
                break;
            }
            let stats = self.train_step()?;
            ran += 1;
            let done = self.position.step;
            // Steps done in this call (a rollback can move the position back).
            let this_run = (done + count).saturating_sub(target);
            if done.is_multiple_of(self.config.log_every)
                || done == self.config.steps
                || stats.anchor_drift.is_some()
            {
                let rate = done.saturating_sub(window.1) as f64 * self.config.batch_size as f64
                    / window.0.elapsed().as_secs_f64().max(1e-9);
                window = (Instant::now(), done);
                self.log(&stats, rate)?;
                progress.logged(this_run, done, stats.loss, rate);
            }
            progress.set_position(this_run);
            if self.config.checkpoint_every > 0 && done.is_multiple_of(self.config.checkpoint_every)
            {
                self.checkpoint()?;
            }
            last = Some(stats);
        }
        progress.finish();
        let every = self.config.checkpoint_every;
        let missed = every == 0 || !self.position.step.is_multiple_of(every);
        if (ran > 0 && missed) || interrupted {
            // The periodic checkpoints missed the final state (or a stop asked before the first
            // step still leaves a checkpoint to resume from).
            self.checkpoint()?;
        }
        if interrupted {
            return Err(Error::Interrupted {
                step: self.position.step,
                checkpoint: self.checkpoint_dir.clone(),
            });
        }
        Ok(last)
    }

    fn log(&mut self, stats: &StepStats, samples_per_sec: f64) -> Result<()> {
        let Some(log) = &mut self.metrics else {
            return Ok(());
        };
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(flatten)]
            stats: &'a StepStats,
            samples_per_sec: f64,
        }
        let line = serde_json::to_string(&Line {
            stats,
            // A rate to a tenth: its noise is larger than that.
            samples_per_sec: (samples_per_sec * 10.0).round() / 10.0,
        })
        .unwrap_or_default();
        log.write_line(&line)
    }

    /// Appends `line` to the metrics log, if there is one.
    pub(super) fn write_metrics_line(&mut self, line: &str) -> Result<()> {
        match &mut self.metrics {
            Some(log) => log.write_line(line),
            None => Ok(()),
        }
    }

    /// Writes a checkpoint to the configured directory (no-op without one).
    pub fn checkpoint(&self) -> Result<()> {
        match &self.checkpoint_dir {
            Some(dir) => self.save_checkpoint(dir),
            None => Ok(()),
        }
    }

    /// The data-term weight `w` at `epoch`: the weighting's for a coupling with an anchor
    /// term, 1 otherwise.
    pub(super) fn data_weight(&self, epoch: usize) -> f64 {
        if self.coupling.uses_anchor_term() {
            self.config.weighting.weight(epoch)
        } else {
            1.0
        }
    }

    /// The learning rate at `step`.
    pub(super) fn lr_at(&self, step: usize) -> f64 {
        lr_at(&self.config.optimizer, step, self.config.steps)
    }

    /// Moves to the next batch (and epoch); returns the finished epoch's anchor drift.
    pub(super) fn advance(&mut self) -> Result<Option<f64>> {
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
            self.rebuild_anchors()?;
        }
        Ok(anchor_drift)
    }

    /// At the start of an epoch the coupling asks for, a new store from the random stream of
    /// that epoch (so a resumed run rebuilds identically).
    fn rebuild_anchors(&mut self) -> Result<()> {
        let epoch = self.position.epoch;
        if !self.coupling.rebuilds_at(epoch) {
            return Ok(());
        }
        let mut rng = stream(self.config.seed, Stream::Anchors, epoch as u64);
        match self.config.anchor.backing {
            // The new store re-creates the file: unmap the old one first.
            AnchorBacking::File { .. } => self.anchors = None,
            AnchorBacking::Memory => {}
        }
        let law = self.model.anchor_law();
        let store = self.coupling.build(
            &self.data,
            &law,
            StoreSpec::from(&self.config.anchor),
            &mut rng,
        )?;
        check_store_shape(store.as_ref(), &self.data)?;
        self.anchors = store;
        Ok(())
    }
}

/// A coupling's store must hold one anchor of the data's width per example.
fn check_store_shape(store: Option<&AnchorStore>, data: &Dataset) -> Result<()> {
    match store {
        Some(store) if store.len() != data.len() || store.dim() != data.dim() => {
            Err(Error::ShapeMismatch {
                context: "anchor store and dataset",
                expected: format!("{}×{} anchors", data.len(), data.dim()),
                found: format!("{}×{}", store.len(), store.dim()),
            })
        }
        Some(_) | None => Ok(()),
    }
}

/// `Ok` where the data's labels, the network's class input, the label dropout and the
/// guidance settings agree.
fn check_labelling(
    input: Option<crate::nn::ClassInput>,
    model_guidance: f64,
    data: &Dataset,
    config: &TrainConfig,
) -> Result<()> {
    if model_guidance != 1.0 {
        // The trainer's own estimates would be guided mixes of two evaluations.
        return Err(Error::InvalidArgument {
            name: "model",
            reason: format!(
                "the model samples with guidance {model_guidance}: guidance is a sampling \
                 setting; train the model without it (FlowMapConfig::guidance trains it into \
                 a flow map)"
            ),
        });
    }
    let invalid = |name, reason: String| Err(Error::InvalidArgument { name, reason });
    let config_error = |field, reason: &str| {
        Err(Error::InvalidConfig {
            config: "TrainConfig",
            field,
            reason: reason.into(),
        })
    };
    let flow_map_guidance = match &config.objective {
        crate::train::ObjectiveConfig::FlowMap(flow_map) => flow_map.guidance,
        crate::train::ObjectiveConfig::Regression
        | crate::train::ObjectiveConfig::Consistency(_) => 1.0,
    };
    match (input, data.classes()) {
        (None, 0) if flow_map_guidance != 1.0 => config_error(
            "objective",
            "flow_map.guidance needs a class-conditional network and labelled data",
        ),
        (None, 0) => Ok(()),
        (None, k) => invalid(
            "data",
            format!(
                "the data has labels ({k} classes) but the network no class input: give it one \
                 (MlpConfig/UNetConfig classes, IntegrationNet::with_classes) or train on \
                 Dataset::without_labels"
            ),
        ),
        (Some(input), 0) => invalid(
            "data",
            format!(
                "the network is conditioned on {} classes but the data has no labels \
                 (Dataset::with_labels)",
                input.classes
            ),
        ),
        (Some(input), k) if k != input.classes => invalid(
            "data",
            format!(
                "the data has {k} classes, the network's class input {}",
                input.classes
            ),
        ),
        (Some(input), _) if config.label_dropout > 0.0 && !input.null_class => config_error(
            "label_dropout",
            "label dropout needs the network's \"no class\" token (ClassInput::null_class)",
        ),
        (Some(_), _) if flow_map_guidance != 1.0 && config.label_dropout == 0.0 => config_error(
            "objective",
            "flow_map.guidance needs the \"no class\" estimate, which label dropout trains: \
             set label_dropout above 0",
        ),
        (Some(_), _) if config.distribution_matching.is_some() => config_error(
            "distribution_matching",
            "the distribution-matching term is unconditional; it does not train a \
             class-conditional model yet",
        ),
        (Some(_), _) => Ok(()),
    }
}
