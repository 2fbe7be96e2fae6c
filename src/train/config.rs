//! The training configuration (docs/training.md), serde-serialisable and validated.

use super::adversarial::AdversarialConfig;
use super::distribution_matching::DistributionMatchingConfig;
use super::objective::ObjectiveConfig;
use super::parallel::DataParallelConfig;
use super::perceptual::PerceptualConfig;
use crate::coupling::AnchorConfig;
use crate::error::{invalid_config, require_finite, Result};
use crate::flow::TimeDistribution;
use serde::{Deserialize, Serialize};

/// The weight `w` of the data term `d(x̂, x_0)` against the anchor term `d(x̂, a)` per epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Weighting {
    /// `w = 1/(e + 1)`: the papers'.
    #[default]
    InverseEpoch,
    /// A fixed `w`.
    Constant {
        /// The weight, in [0, 1].
        w: f64,
    },
    /// From `from` at epoch 0 linearly to `to` at epoch `epochs`, then constant.
    Linear {
        /// Weight at epoch 0.
        from: f64,
        /// Weight from epoch `epochs` on.
        to: f64,
        /// Length of the ramp in epochs.
        epochs: usize,
    },
}

impl Weighting {
    /// The data-term weight at `epoch`.
    pub fn weight(&self, epoch: usize) -> f64 {
        match *self {
            Weighting::InverseEpoch => 1.0 / (epoch as f64 + 1.0),
            Weighting::Constant { w } => w,
            Weighting::Linear { from, to, epochs } => {
                let u = if epochs == 0 {
                    1.0
                } else {
                    (epoch as f64 / epochs as f64).min(1.0)
                };
                from + (to - from) * u
            }
        }
    }
}

/// The distance `d` of the loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distance {
    /// Mean squared error over the values of an example.
    #[default]
    SquaredL2,
    /// `sqrt(|x − y|² + c²) − c` on the example's norm (iCT); `c` defaults to
    /// `0.00054·sqrt(dim)`.
    PseudoHuber {
        /// The constant `c`; `None` for iCT's default.
        c: Option<f64>,
    },
    /// `sqrt((x − y)² + c²) − c` per value, averaged; `c` defaults to `0.00054`.
    PseudoHuberElementwise {
        /// The constant `c`; `None` for 0.00054.
        c: Option<f64>,
    },
    /// Mean absolute error. Its minimiser is the conditional median, not the mean.
    L1,
    /// The mean squared error `e` of an example divided by the stop-gradient weight
    /// `(e + c)^power` (MeanFlow's adaptive loss weighting, Geng et al. 2025): `power = 0.5`
    /// has pseudo-Huber's gradient, `power = 1` a log loss's, which weighs every example's
    /// relative error alike. Its value is not an error in data units.
    AdaptiveL2 {
        /// The exponent, in [0, 2]; 0 is the squared L2.
        power: f64,
        /// The constant that keeps small errors from dominating, positive (MeanFlow: 1e-3).
        c: f64,
    },
}

impl Distance {
    /// Checks the constant `c` where one is given; `field` names it in the error.
    pub(crate) fn check(&self, config: &'static str, field: &'static str) -> Result<()> {
        match *self {
            Distance::PseudoHuber { c: Some(c) }
            | Distance::PseudoHuberElementwise { c: Some(c) } => {
                require_finite(config, field, c)?;
                if c <= 0.0 {
                    return Err(invalid_config(config, field, "must be positive"));
                }
                Ok(())
            }
            Distance::AdaptiveL2 { power, c } => {
                require_finite(config, field, c)?;
                if c <= 0.0 {
                    return Err(invalid_config(config, field, "must be positive"));
                }
                if !(0.0..=2.0).contains(&power) {
                    return Err(invalid_config(config, field, "power must be in [0, 2]"));
                }
                Ok(())
            }
            Distance::SquaredL2
            | Distance::L1
            | Distance::PseudoHuber { c: None }
            | Distance::PseudoHuberElementwise { c: None } => Ok(()),
        }
    }
}

impl LrDecay {
    /// Checks the floor; `field` names it in the error.
    pub(crate) fn check(&self, config: &'static str, field: &'static str) -> Result<()> {
        match *self {
            LrDecay::Constant => Ok(()),
            LrDecay::Cosine { floor } => unit_interval(config, field, floor),
        }
    }
}

/// The loss weight λ(t).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossWeight {
    /// λ = 1.
    #[default]
    Uniform,
    /// EDM's `(σ̃² + σ_d²)/(σ̃·σ_d)²`, σ̃ = σ/α.
    Edm,
}

/// Optimizer family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam; `weight_decay` is added to the gradient (L2).
    #[default]
    Adam,
    /// AdamW: decoupled weight decay.
    AdamW,
}

/// Optimizer settings; ε defaults to 1e-8 like PyTorch (burn's default differs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Adam or AdamW.
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub epsilon: f64,
    /// Weight decay (0 = none).
    pub weight_decay: f64,
    /// Steps of linear learning-rate warm-up from 0.
    pub warmup_steps: usize,
    /// Clip the gradient to this global L2 norm (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// How the rate falls after the warm-up (constant by default).
    pub decay: LrDecay,
}

/// How the learning rate falls after its warm-up, over the run's `steps`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrDecay {
    /// The peak rate until the end.
    #[default]
    Constant,
    /// Half a cosine from the peak at the end of the warm-up to `floor`·peak at the last step:
    /// a short fine-tuning run (the distillation student) ends on small steps instead of the
    /// peak rate's noise.
    Cosine {
        /// The last step's rate as a fraction of the peak, in [0, 1].
        floor: f64,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 100,
            grad_clip: Some(1.0),
            decay: LrDecay::Constant,
        }
    }
}

/// Exponential moving average of the weights, used for sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    /// Target decay.
    pub decay: f64,
    /// Warm the decay up as `min(decay, (1 + step)/(10 + step))`.
    pub warmup: bool,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig {
            decay: 0.999,
            warmup: true,
        }
    }
}

/// Everything the trainer needs besides the model and the data (docs/training.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of every random draw in training (shuffling, times, noise, anchors).
    pub seed: u64,
    /// Optimizer steps in total.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Drop the last, smaller batch of each epoch.
    pub drop_last: bool,
    /// Anchors.
    pub anchor: AnchorConfig,
    /// What the estimate is pulled towards: the data (the default) or the model's own estimate
    /// closer to the data on the same path ([`objective`](super::objective)).
    pub objective: ObjectiveConfig,
    /// Data-term weight per epoch (ignored by the `ot` and `off` policies, which use w = 1).
    pub weighting: Weighting,
    /// The distance of the loss.
    pub distance: Distance,
    /// Training-time distribution.
    pub time: TimeDistribution,
    /// Fraction of each batch trained at `t = t_max` exactly (the time one-step sampling
    /// uses), the rest drawn from `time`; 0 by default.
    pub t_max_fraction: f64,
    /// Loss weight λ(t).
    pub loss_weight: LossWeight,
    /// A perceptual term beside the pixel distance (image data; the network is given with
    /// [`Trainer::with_perceptual_features`](super::Trainer::with_perceptual_features)); `None`
    /// by default.
    pub perceptual: Option<PerceptualConfig>,
    /// An adversarial term beside the pixel distance (image data): a critic trained with the
    /// model tells its images of the data end from the data; `None` by default.
    pub adversarial: Option<AdversarialConfig>,
    /// A distribution-matching term beside the pixel distance (a student of a denoiser; the
    /// teacher is given with
    /// [`Trainer::with_score_teacher`](super::Trainer::with_score_teacher)); `None` by default.
    pub distribution_matching: Option<DistributionMatchingConfig>,
    /// Share each step's batch between several workers (devices or threads), whose gradients
    /// are summed before the one optimizer step (needs the `data-parallel` feature);
    /// `None` (one worker) by default.
    pub data_parallel: Option<DataParallelConfig>,
    /// For labelled data (a class-conditional model): the probability with which an
    /// example's label is replaced by the "no class" token at a step, so that the network
    /// also learns the unconditional estimate that classifier-free guidance needs. 0.1 by
    /// default; 0 for a network without the token. Ignored for unlabelled data.
    pub label_dropout: f64,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// EMA of the weights.
    pub ema: EmaConfig,
    /// Write a checkpoint every this many steps (0: only when asked).
    pub checkpoint_every: usize,
    /// Write a metrics line every this many steps.
    pub log_every: usize,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// What to do when a step's loss or gradient is not finite.
    pub on_divergence: DivergencePolicy,
    /// Flush subnormal floats to zero on the training threads
    /// ([`backend::flush_denormals`](crate::backend::flush_denormals)); on by default, because
    /// long runs otherwise slow down several times.
    pub flush_denormals: bool,
}

/// What training does when a step's loss or gradient is not finite (NaN or ±∞). Whatever
/// the policy, that step's update never reaches the weights, the optimizer state, the EMA or
/// the anchor store, and the event is written to the metrics log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DivergencePolicy {
    /// Stop with [`Error::Diverged`](crate::Error::Diverged), which names the step.
    #[default]
    Stop,
    /// Drop the step's batch and go on; stop (as `Stop`) once `max` steps were skipped.
    Skip {
        /// Skipped steps allowed in the run, at least 1.
        max: usize,
    },
    /// Go back to the last checkpoint, multiply the learning rate by `lr_factor` and go on;
    /// stop (as `Stop`) once `max` rollbacks were made. Needs a checkpoint directory.
    Rollback {
        /// The learning rate's factor per rollback, in (0, 1).
        lr_factor: f64,
        /// Rollbacks allowed in the run, at least 1.
        max: usize,
    },
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            steps: 10_000,
            batch_size: 512,
            drop_last: true,
            anchor: AnchorConfig::default(),
            objective: ObjectiveConfig::default(),
            weighting: Weighting::default(),
            distance: Distance::default(),
            time: TimeDistribution::default(),
            t_max_fraction: 0.0,
            loss_weight: LossWeight::default(),
            perceptual: None,
            adversarial: None,
            distribution_matching: None,
            data_parallel: None,
            label_dropout: 0.1,
            optimizer: OptimizerConfig::default(),
            ema: EmaConfig::default(),
            checkpoint_every: 0,
            log_every: 100,
            progress: true,
            on_divergence: DivergencePolicy::default(),
            flush_denormals: true,
        }
    }
}

impl TrainConfig {
    /// Reads a configuration from JSON and validates it. Missing fields take their defaults;
    /// an unknown field, a value of the wrong type ([`Error::ConfigJson`](crate::Error)) or out
    /// of range ([`Error::InvalidConfig`](crate::Error)) is an error that names the field.
    ///
    /// ```
    /// use integration_flow::train::TrainConfig;
    /// let config = TrainConfig::from_json(r#"{"steps": 500, "anchor": {"ot_chunk": 1024}}"#)?;
    /// assert_eq!((config.steps, config.anchor.ot_chunk), (500, 1024));
    /// let err = TrainConfig::from_json(r#"{"anchor": {"ot_chunk": "big"}}"#).unwrap_err();
    /// assert!(err.to_string().contains("anchor.ot_chunk"));
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn from_json(json: &str) -> Result<Self> {
        <Self as crate::config::ValidatedConfig>::from_json(json)
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "TrainConfig";
        if self.batch_size == 0 {
            return Err(invalid_config(NAME, "batch_size", "must be at least 1"));
        }
        if self.log_every == 0 {
            return Err(invalid_config(NAME, "log_every", "must be at least 1"));
        }
        match self.on_divergence {
            DivergencePolicy::Stop => {}
            DivergencePolicy::Skip { max } | DivergencePolicy::Rollback { max, .. } if max == 0 => {
                return Err(invalid_config(
                    NAME,
                    "on_divergence.max",
                    "must be at least 1 (use kind `stop` to stop at once)",
                ));
            }
            DivergencePolicy::Skip { .. } => {}
            DivergencePolicy::Rollback { lr_factor, .. } => {
                require_finite(NAME, "on_divergence.lr_factor", lr_factor)?;
                if !(lr_factor > 0.0 && lr_factor < 1.0) {
                    return Err(invalid_config(
                        NAME,
                        "on_divergence.lr_factor",
                        format!("must be in (0, 1), got {lr_factor}"),
                    ));
                }
            }
        }
        self.anchor.validate()?;
        self.objective.validate()?;
        match self.weighting {
            Weighting::InverseEpoch => {}
            Weighting::Constant { w } => unit_interval(NAME, "weighting.w", w)?,
            Weighting::Linear { from, to, .. } => {
                unit_interval(NAME, "weighting.from", from)?;
                unit_interval(NAME, "weighting.to", to)?;
            }
        }
        self.distance.check(NAME, "distance.c")?;
        if !(self.label_dropout.is_finite() && (0.0..1.0).contains(&self.label_dropout)) {
            return Err(invalid_config(
                NAME,
                "label_dropout",
                format!("must be in [0, 1), got {}", self.label_dropout),
            ));
        }
        if let Some(perceptual) = &self.perceptual {
            perceptual.check(NAME, "perceptual.weight")?;
        }
        if let Some(adversarial) = &self.adversarial {
            adversarial.check(NAME, "adversarial")?;
        }
        if let Some(matching) = &self.distribution_matching {
            matching.check(NAME, "distribution_matching")?;
        }
        if let Some(parallel) = &self.data_parallel {
            parallel.check(NAME, self.batch_size)?;
            // The image terms keep state beside the model (a critic, a fake denoiser) that
            // one worker updates from the whole batch's images; they are not sharded yet.
            let terms = [
                ("perceptual", self.perceptual.is_some()),
                ("adversarial", self.adversarial.is_some()),
                (
                    "distribution_matching",
                    self.distribution_matching.is_some(),
                ),
            ];
            if let Some((term, _)) = terms.iter().find(|(_, on)| *on) {
                return Err(invalid_config(
                    NAME,
                    "data_parallel",
                    format!("does not combine with the {term} term yet: train it with one worker"),
                ));
            }
        }
        self.time.validate()?;
        unit_interval(NAME, "t_max_fraction", self.t_max_fraction)?;
        let o = &self.optimizer;
        for (field, value) in [
            ("optimizer.lr", o.lr),
            ("optimizer.beta1", o.beta1),
            ("optimizer.beta2", o.beta2),
            ("optimizer.epsilon", o.epsilon),
            ("optimizer.weight_decay", o.weight_decay),
        ] {
            require_finite(NAME, field, value)?;
        }
        if o.lr <= 0.0 {
            return Err(invalid_config(NAME, "optimizer.lr", "must be positive"));
        }
        for (field, beta) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid_config(
                    NAME,
                    field,
                    format!("must be in [0, 1), got {beta}"),
                ));
            }
        }
        if o.epsilon <= 0.0 {
            return Err(invalid_config(
                NAME,
                "optimizer.epsilon",
                "must be positive",
            ));
        }
        if o.weight_decay < 0.0 {
            return Err(invalid_config(
                NAME,
                "optimizer.weight_decay",
                "must be ≥ 0",
            ));
        }
        o.decay.check(NAME, "optimizer.decay.floor")?;
        if let Some(clip) = o.grad_clip {
            if !(clip.is_finite() && clip > 0.0) {
                return Err(invalid_config(
                    NAME,
                    "optimizer.grad_clip",
                    format!("must be finite and positive, got {clip}"),
                ));
            }
        }
        unit_interval(NAME, "ema.decay", self.ema.decay)?;
        if self.ema.decay >= 1.0 {
            return Err(invalid_config(NAME, "ema.decay", "must be below 1"));
        }
        Ok(())
    }
}

fn unit_interval(config: &'static str, field: &'static str, value: f64) -> Result<()> {
    require_finite(config, field, value)?;
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(invalid_config(
            config,
            field,
            format!("must be in [0, 1], got {value}"),
        ))
    }
}
