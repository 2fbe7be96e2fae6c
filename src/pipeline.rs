//! One-step generation by distillation as one resumable run within one time budget: a denoiser
//! (the *teacher*, the `off` coupling) trains; its probability-flow ODE maps prior draws to
//! samples (*generated pairs*, [`ode_pairs`]); a one-step *student* starts from the teacher's
//! EMA weights and learns the pairs ([`PairedAnchors::generated`]: each latent is the path noise
//! of its sample, so at `t_max` the student sees the latent and must return the ODE's result).
//! [`DistillMethod::Encoded`] pairs each training example with its latent by the ODE run
//! backwards instead, and [`DistillMethod::Mixed`] learns from both kinds of pairs at once.
//! With [`DistillMethod::Consistency`] there is no pairs stage: the student tunes the teacher's
//! weights on the data by the consistency objective instead, and with [`DistillMethod::FlowMap`]
//! the teacher's network gains a target-time input and learns the ODE's jumps by the flow-map
//! objective. [`DistillMethod::FlowMapPairs`] trains that flow-map student on the generated
//! pairs instead of the data, with the jump from `t_max` regressed on each pair's sample.
//!
//! Each stage keeps its state in the run's directory `DIR`: the student's checkpoint and metrics
//! log in `DIR` itself (it is the run's result), the teacher's in `DIR/teacher`, the pairs in
//! `DIR/pairs_latents.npy` and `DIR/pairs_samples.npy` (a mixture's encoded latents in
//! `DIR/pairs_encoded_latents.npy`), and `DIR/pipeline.json` (the stage and
//! the seconds each stage spent, written atomically after every stage). A stopped run
//! resumes at the stage and step where it stopped, and the budget counts every stage's time
//! across resumes: the teacher trains for its share of it, the pairs take what they take, and the
//! student trains for the rest. A pairs stage cut short is made again (it is deterministic).
//!
//! ```no_run
//! # #[cfg(feature = "flex")] {
//! use integration_flow::pipeline::{Distillation, DistillConfig};
//! use integration_flow::prelude::*;
//! use std::time::Duration;
//!
//! let data = Toy::EightGaussians.sample(8192, 0)?;
//! let net = MlpConfig::default().init::<CpuAutodiff>(&Default::default(), 0)?;
//! let flow = FlowConfig::Rf(Default::default()).init()?;
//! let model = IntegrationFlowConfig::default().init(flow, net)?;
//! let mut run = Distillation::new("runs/distill", model, data, TrainConfig::default(),
//!     DistillConfig::default())?;
//! let student = run.run_for(Duration::from_secs(120))?;
//! let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
//! let samples = student.ema_model().generate(&mut rng, 1000, 1)?;
//! # }
//! # Ok::<(), integration_flow::Error>(())
//! ```

use crate::coupling::{AnchorPolicy, PairedAnchors};
use crate::data::{read_npy, write_atomically, write_npy_f32, write_npy_i64, Dataset, NpyData};
use crate::error::{invalid_config, require_finite, Error, Result};
use crate::model::{Classes, IntegrationFlow};
use crate::nn::IntegrationNet;
use crate::sample::{encoded_pairs, ode_pairs, OdeSolver};
use crate::train::{
    checkpoint_path, AdversarialConfig, ConsistencyConfig, Distance, DistributionMatchingConfig,
    FlowMapConfig, ImageFeatures, LrDecay, ObjectiveConfig, PerceptualConfig, TrainConfig, Trainer,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Student steps timed to plan a decaying learning rate's length.
const PACE_STEPS: usize = 8;

/// The share of the time left that the planned student steps should take: the pace of a few
/// steps is a little optimistic (checkpoints, the machine's load).
const PACE_MARGIN: f64 = 0.95;

/// How the student learns from the teacher.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DistillMethod {
    /// The teacher's ODE maps prior draws to samples (the pairs stage); the student regresses
    /// each sample from its latent ([`PairedAnchors::generated`]).
    #[default]
    GeneratedPairs,
    /// The teacher's ODE integrated backwards maps each training example to its latent (the
    /// pairs stage, [`encoded_pairs`]); the student regresses each example from its latent
    /// ([`PairedAnchors::encoded`]). Its images are real ones, so watch the samples' distance
    /// to the training set.
    Encoded,
    /// Both couplings in one student set: `pairs` generated pairs and one encoded pair per
    /// training example (the pairs stage makes both; `DIR/pairs_encoded_latents.npy` holds the
    /// encoded latents). The generated pairs carry the law sampling feeds, the encoded ones the
    /// real images.
    Mixed,
    /// No pairs: the student trains on the data with the consistency objective
    /// ([`objective::consistency`](crate::train::objective::consistency)), pulled towards its
    /// own estimate closer to the data on the same path.
    Consistency(ConsistencyConfig),
    /// No pairs: the teacher's network gains a target-time input
    /// ([`IntegrationNet::with_target_time`]) and trains on the data by the flow-map objective
    /// ([`objective::flow_map`](crate::train::objective::flow_map)); sampling calls its jump to
    /// the data end.
    FlowMap(FlowMapConfig),
    /// The flow-map student on generated pairs: each pair's path runs from its latent to its
    /// sample (the teacher's ODE coupling, as in reflow), so the path's velocity is known
    /// exactly, and the jump from `t_max` (the latent itself) to the data end regresses on the
    /// sample, as the pairs student does; the rest of the objective is the flow map's.
    FlowMapPairs(FlowMapConfig),
}

impl DistillMethod {
    /// Whether the run has a pairs stage.
    pub fn makes_pairs(&self) -> bool {
        let (generated, encoded) = self.pair_kinds();
        generated || encoded
    }

    /// Whether the student is a flow-map network (one with a target-time input).
    pub fn is_flow_map(&self) -> bool {
        match self {
            DistillMethod::FlowMap(_) | DistillMethod::FlowMapPairs(_) => true,
            DistillMethod::GeneratedPairs
            | DistillMethod::Encoded
            | DistillMethod::Mixed
            | DistillMethod::Consistency(_) => false,
        }
    }

    /// Which pairs the pairs stage makes: `(generated, encoded)`.
    fn pair_kinds(&self) -> (bool, bool) {
        match self {
            DistillMethod::GeneratedPairs | DistillMethod::FlowMapPairs(_) => (true, false),
            DistillMethod::Encoded => (false, true),
            DistillMethod::Mixed => (true, true),
            DistillMethod::Consistency(_) | DistillMethod::FlowMap(_) => (false, false),
        }
    }
}

/// The recipe of a [`Distillation`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// How the student learns: from generated pairs (the default) or by consistency.
    pub method: DistillMethod,
    /// The share of the budget the teacher trains for (0 < share < 1).
    pub teacher_share: f64,
    /// Generated pairs (the encoded method makes one per training example instead).
    pub pairs: usize,
    /// Heun steps of the pairs' ODE solve (`2·steps − 1` network calls per pair).
    pub pair_steps: usize,
    /// Pairs integrated at a time.
    pub pair_batch: usize,
    /// The student's learning rate (it starts from trained weights).
    pub student_lr: f64,
    /// The share of each student batch trained at `t_max`, where one-step sampling evaluates it;
    /// `None` takes the method's ([`student_t_max_share`](Self::student_t_max_share): all of it
    /// for the pairs students, which learn the jump from `t_max`; none for the consistency and
    /// flow-map students, whose objectives must hold at every time; a quarter for the flow map
    /// on pairs, whose rows at `t_max` are its exact jumps).
    pub student_t_max_fraction: Option<f64>,
    /// The student stops after this many steps even if time is left.
    pub student_steps: usize,
    /// The student's distance; `None` keeps the teacher's.
    pub student_distance: Option<Distance>,
    /// How the student's learning rate falls over its steps. A decay needs a known number of
    /// steps: the pipeline times a few of the student's first steps and fixes its length from
    /// that pace and the budget left, at most `student_steps` (recorded in the student's
    /// checkpoint, so a resumed run keeps it).
    pub student_lr_decay: LrDecay,
    /// A perceptual term in the student's loss; its network is given with
    /// [`Distillation::with_student_features`]. `None` by default.
    pub student_perceptual: Option<PerceptualConfig>,
    /// An adversarial term in the student's loss (a critic trained beside it tells the
    /// student's images of the data end from its data). `None` by default.
    pub student_adversarial: Option<AdversarialConfig>,
    /// A distribution-matching term in the student's loss (its images of the data end pulled
    /// towards where the teacher's denoiser takes them, away from where a denoiser of the
    /// student's own images does). `None` by default.
    pub student_distribution_matching: Option<DistributionMatchingConfig>,
    /// With labelled data (a class-conditional teacher): the classifier-free guidance scale of
    /// the teacher's ODE that makes the generated pairs (1, the default: none), so that a
    /// one-step student of them generates guided images in one call. The pairs are made for
    /// the classes in equal numbers. Encoded pairs are not guided (an example's latent is
    /// the unguided ODE's).
    pub pair_guidance: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            method: DistillMethod::GeneratedPairs,
            teacher_share: 0.55,
            pairs: 4000,
            pair_steps: 6,
            pair_batch: 250,
            student_lr: 3e-4,
            student_t_max_fraction: None,
            student_steps: 1_000_000,
            student_distance: None,
            student_lr_decay: LrDecay::Constant,
            student_perceptual: None,
            student_adversarial: None,
            student_distribution_matching: None,
            pair_guidance: 1.0,
        }
    }
}

/// The flow-map student's learning rate: 1e-3, 3e-4, 1e-4 and 3e-5 gave one-step FD 356, 200,
/// 172 and 302 on MNIST from the same teacher in the same 4 minutes (docs/evidence.md); its
/// self-referential target needs smaller steps than the pairs students' 3e-4.
const FLOW_MAP_STUDENT_LR: f64 = 1e-4;

/// The share of a flow-map-on-pairs student's batch at `t_max`: the exact jumps to the samples.
pub const FLOW_MAP_PAIRS_T_MAX_SHARE: f64 = 0.25;

impl DistillConfig {
    /// The default recipe with `method` and that method's student defaults: the flow-map
    /// students (on the data or on pairs) learn at 1e-4 with pseudo-Huber (on MNIST one step a tie with the squared L2
    /// over two teachers, two re-noised calls 17% better: docs/evidence.md), the others at
    /// 3e-4 with the teacher's distance.
    ///
    /// ```
    /// use integration_flow::pipeline::{DistillConfig, DistillMethod};
    /// let recipe = DistillConfig::with_method(DistillMethod::FlowMap(Default::default()));
    /// assert_eq!(recipe.student_lr, 1e-4);
    /// assert_eq!(DistillConfig::with_method(DistillMethod::GeneratedPairs), DistillConfig::default());
    /// ```
    pub fn with_method(method: DistillMethod) -> Self {
        let defaults = DistillConfig::default();
        let (student_lr, student_distance) = match method {
            DistillMethod::FlowMap(_) | DistillMethod::FlowMapPairs(_) => {
                (FLOW_MAP_STUDENT_LR, Some(Distance::PseudoHuber { c: None }))
            }
            DistillMethod::GeneratedPairs
            | DistillMethod::Encoded
            | DistillMethod::Mixed
            | DistillMethod::Consistency(_) => (defaults.student_lr, defaults.student_distance),
        };
        DistillConfig {
            method,
            student_lr,
            student_distance,
            ..defaults
        }
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "DistillConfig";
        match &self.method {
            DistillMethod::GeneratedPairs | DistillMethod::Encoded | DistillMethod::Mixed => {}
            DistillMethod::Consistency(config) => config.validate()?,
            DistillMethod::FlowMap(config) | DistillMethod::FlowMapPairs(config) => {
                config.validate()?
            }
        }
        require_finite(NAME, "teacher_share", self.teacher_share)?;
        if !(self.teacher_share > 0.0 && self.teacher_share < 1.0) {
            return Err(invalid_config(NAME, "teacher_share", "must be in (0, 1)"));
        }
        for (field, value) in [
            ("pairs", self.pairs),
            ("pair_steps", self.pair_steps),
            ("pair_batch", self.pair_batch),
            ("student_steps", self.student_steps),
        ] {
            if value == 0 {
                return Err(invalid_config(NAME, field, "must be at least 1"));
            }
        }
        if let Some(distance) = &self.student_distance {
            distance.check(NAME, "student_distance.c")?;
        }
        if let Some(perceptual) = &self.student_perceptual {
            perceptual.check(NAME, "student_perceptual.weight")?;
        }
        if let Some(adversarial) = &self.student_adversarial {
            adversarial.check(NAME, "student_adversarial")?;
        }
        if let Some(matching) = &self.student_distribution_matching {
            matching.check(NAME, "student_distribution_matching")?;
        }
        self.student_lr_decay
            .check(NAME, "student_lr_decay.floor")?;
        require_finite(NAME, "pair_guidance", self.pair_guidance)?;
        if self.pair_guidance < 0.0 {
            return Err(invalid_config(NAME, "pair_guidance", "must be ≥ 0"));
        }
        require_finite(NAME, "student_lr", self.student_lr)?;
        if self.student_lr <= 0.0 {
            return Err(invalid_config(NAME, "student_lr", "must be positive"));
        }
        if !(0.0..=1.0).contains(&self.student_t_max_share()) {
            return Err(invalid_config(
                NAME,
                "student_t_max_fraction",
                "must be in [0, 1]",
            ));
        }
        Ok(())
    }

    /// The share of each student batch trained at `t_max`: `student_t_max_fraction`, or the
    /// method's default (1 for generated and encoded pairs, 0 for consistency and flow maps,
    /// [`FLOW_MAP_PAIRS_T_MAX_SHARE`] for the flow map on pairs).
    pub fn student_t_max_share(&self) -> f64 {
        self.student_t_max_fraction.unwrap_or(match self.method {
            DistillMethod::GeneratedPairs | DistillMethod::Encoded | DistillMethod::Mixed => 1.0,
            DistillMethod::Consistency(_) | DistillMethod::FlowMap(_) => 0.0,
            DistillMethod::FlowMapPairs(_) => FLOW_MAP_PAIRS_T_MAX_SHARE,
        })
    }

    /// Network calls per pair of the pairs' solve (Heun: `2·pair_steps − 1`).
    pub fn pair_nfe(&self) -> usize {
        2 * self.pair_steps - 1
    }

    /// The solver that makes the pairs.
    pub fn pair_solver(&self) -> OdeSolver {
        OdeSolver::Heun {
            steps: self.pair_steps,
        }
    }
}

/// Where a [`Distillation`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The teacher trains.
    Teacher,
    /// The teacher's ODE makes the pairs.
    Pairs,
    /// The student trains.
    Student,
    /// The budget is spent (or the student's steps done).
    Done,
}

/// What `pipeline.json` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineState {
    /// The stage the run is at.
    pub stage: Stage,
    /// Seconds spent by the teacher, the pairs and the student, across resumes.
    pub seconds: [f64; 3],
    /// The recipe (a run resumes only with the same).
    pub config: DistillConfig,
    /// A trained teacher the run reuses instead of training one.
    pub teacher: Option<PathBuf>,
}

impl PipelineState {
    /// The seconds all stages spent.
    pub fn spent(&self) -> f64 {
        self.seconds.iter().sum()
    }
}

/// Teacher → generated pairs → one-step student in one directory and one budget (module docs).
pub struct Distillation<B: AutodiffBackend, N: IntegrationNet<B> + AutodiffModule<B>> {
    dir: PathBuf,
    model: IntegrationFlow<B, N>,
    data: Dataset,
    teacher_config: TrainConfig,
    config: DistillConfig,
    teacher: Option<PathBuf>,
    log: Box<dyn FnMut(&str)>,
    student_features: Option<Box<dyn ImageFeatures<B>>>,
}

impl<B, N> Distillation<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// A run in `dir` on `data`. `model` is the untrained teacher (its flow, preconditioning and
    /// network are the student's too); `teacher_config` trains it (its anchor policy is set to
    /// `off` and its objective to regression: the teacher is a plain denoiser) and, with the learning rate, `t_max` share and
    /// steps of `config`, the student.
    pub fn new(
        dir: impl Into<PathBuf>,
        model: IntegrationFlow<B, N>,
        data: Dataset,
        mut teacher_config: TrainConfig,
        config: DistillConfig,
    ) -> Result<Self> {
        config.validate()?;
        if config.method.is_flow_map() {
            // Before the teacher spends its share: the student needs the target-time input.
            model.net().clone().with_target_time()?;
        }
        // σ_d left to the data is the training data's, fixed now: the student trains on pairs
        // but keeps its teacher's preconditioning.
        let model = model.with_sigma_data_from(&data)?;
        teacher_config.anchor.policy = AnchorPolicy::Off;
        teacher_config.objective = ObjectiveConfig::Regression;
        teacher_config.validate()?;
        // The student trains with the teacher's configuration and its own terms: a
        // combination the trainer refuses (workers with an image term) fails now, before the
        // teacher spends its share.
        let mut student_terms = teacher_config.clone();
        student_terms.perceptual = config.student_perceptual.clone();
        student_terms.adversarial = config.student_adversarial.clone();
        student_terms.distribution_matching = config.student_distribution_matching.clone();
        student_terms.validate()?;
        let guided = [
            ("pair_guidance", config.pair_guidance),
            (
                "method.guidance",
                match &config.method {
                    DistillMethod::FlowMap(flow_map) | DistillMethod::FlowMapPairs(flow_map) => {
                        flow_map.guidance
                    }
                    DistillMethod::GeneratedPairs
                    | DistillMethod::Encoded
                    | DistillMethod::Mixed
                    | DistillMethod::Consistency(_) => 1.0,
                },
            ),
        ];
        if let Some((field, _)) = guided.iter().find(|(_, w)| *w != 1.0) {
            // Guidance needs the classes and the "no class" estimate label dropout trains.
            if data.classes() == 0 || teacher_config.label_dropout == 0.0 {
                return Err(invalid_config(
                    "DistillConfig",
                    field,
                    "guidance needs labelled data and a teacher trained with label dropout",
                ));
            }
        }
        Ok(Distillation {
            dir: dir.into(),
            model,
            data,
            teacher_config,
            config,
            teacher: None,
            log: Box::new(|_| {}),
            student_features: None,
        })
    }

    /// Reuse the denoiser trained in `dir` (a run of the `off` coupling on the same data, flow
    /// and network; anything else is an error when the pairs are made) instead of training one:
    /// the whole budget goes to the pairs and the student.
    pub fn with_teacher(mut self, dir: impl Into<PathBuf>) -> Self {
        self.teacher = Some(dir.into());
        self
    }

    /// The frozen image network of the student's perceptual term
    /// (`config.student_perceptual`); without the term the student refuses it when it starts.
    pub fn with_student_features(mut self, features: Box<dyn ImageFeatures<B>>) -> Self {
        self.student_features = Some(features);
        self
    }

    /// Where stage messages go (nowhere by default); the trainers' own progress is set by
    /// `teacher_config.progress`.
    pub fn with_log(mut self, log: impl FnMut(&str) + 'static) -> Self {
        self.log = Box::new(log);
        self
    }

    /// Forgets an earlier run in the directory, so that the next [`run_for`](Self::run_for)
    /// starts from the beginning: removes the files a run keeps there (`pipeline.json`, the
    /// pairs, `DIR`'s checkpoint and metrics log, and those in `DIR/teacher` unless the teacher
    /// is reused). Other files stay.
    pub fn start_over(&self) -> Result<()> {
        let mut owned = vec![
            self.dir.join("pipeline.json"),
            checkpoint_path(&self.dir),
            self.dir.join("metrics.jsonl"),
        ];
        owned.extend(self.pair_paths());
        owned.push(self.encoded_path(true));
        if self.teacher.is_none() {
            let teacher = self.dir.join("teacher");
            owned.extend([checkpoint_path(&teacher), teacher.join("metrics.jsonl")]);
        }
        for path in owned {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io { path, source: e })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The run's state, `None` before it starts.
    pub fn state(&self) -> Result<Option<PipelineState>> {
        let path = self.dir.join("pipeline.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Format {
                path,
                reason: format!("not a pipeline state: {e}"),
            })
    }

    /// The teacher's directory: the reused one or `DIR/teacher`.
    pub fn teacher_dir(&self) -> PathBuf {
        self.teacher
            .clone()
            .unwrap_or_else(|| self.dir.join("teacher"))
    }

    /// Runs (or resumes) every stage until `budget`, counted over all stages and resumes, is
    /// spent; returns the student's trainer (its [`ema_model`](Trainer::ema_model) samples in
    /// one call). A budget that cannot pay for the teacher's share, the pairs (estimated from
    /// one timed network call) and some student training is an [`Error::Budget`] before
    /// anything trains.
    pub fn run_for(&mut self, budget: Duration) -> Result<Trainer<B, N>> {
        loop {
            if let Some(student) = self.run_stage(budget)? {
                return Ok(student);
            }
        }
    }

    /// Runs the current stage only; the student's trainer once the run is done.
    pub fn run_stage(&mut self, budget: Duration) -> Result<Option<Trainer<B, N>>> {
        if let Some(teacher) = &self.teacher {
            let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
            if same(teacher, &self.dir) {
                return Err(Error::InvalidArgument {
                    name: "teacher",
                    reason: format!(
                        "the reused teacher's folder {} is the run's own, where the student's \
                         checkpoint goes; give the run another folder",
                        teacher.display()
                    ),
                });
            }
        }
        for dir in [self.dir.clone(), self.dir.join("teacher")] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
                path: dir,
                source: e,
            })?;
        }
        let mut state = match self.state()? {
            Some(state) => {
                self.check_same_recipe(&state)?;
                state
            }
            None => {
                let state = PipelineState {
                    stage: match self.teacher {
                        Some(_) => self.after_teacher(),
                        None => Stage::Teacher,
                    },
                    seconds: [0.0; 3],
                    config: self.config.clone(),
                    teacher: self.teacher.clone(),
                };
                self.check_budget(budget, &state)?;
                state
            }
        };
        let budget = budget.as_secs_f64();
        match state.stage {
            Stage::Teacher => {
                let teacher = if checkpoint_path(&self.teacher_dir()).exists() {
                    Trainer::resume(self.teacher_dir(), self.model.clone(), self.data.clone())?
                } else {
                    Trainer::new(
                        self.model.clone(),
                        self.data.clone(),
                        self.teacher_config.clone(),
                    )?
                };
                let mut teacher = teacher
                    .with_checkpoint_dir(self.teacher_dir())
                    .with_metrics_log(self.teacher_dir().join("metrics.jsonl"))?;
                let left = budget * self.config.teacher_share - state.seconds[0];
                self.train("teacher", &mut teacher, left, &mut state, 0)?;
                if teacher.step() == 0 {
                    return Err(Error::Budget {
                        reason: format!("the teacher's {left:.1} s did not train one step"),
                    });
                }
                state.stage = self.after_teacher();
            }
            Stage::Pairs => {
                let started = Instant::now();
                self.make_pairs()?;
                state.seconds[1] += started.elapsed().as_secs_f64();
                state.stage = Stage::Student;
            }
            Stage::Student => {
                let mut student = self.student()?;
                let decays = match self.config.student_lr_decay {
                    LrDecay::Constant => false,
                    LrDecay::Cosine { .. } => true,
                };
                if decays && student.step() == 0 {
                    self.fix_student_steps(&mut student, budget, &mut state)?;
                }
                let left = budget - state.spent();
                self.train("student", &mut student, left, &mut state, 2)?;
                if student.step() == 0 {
                    return Err(Error::Budget {
                        reason: format!(
                            "{:.0} s of the budget are spent and the student has not trained \
                             a step; give a larger budget to continue",
                            state.spent()
                        ),
                    });
                }
                state.stage = Stage::Done;
                self.save(&state)?;
                return Ok(Some(student));
            }
            Stage::Done => {
                if !checkpoint_path(&self.dir).exists() {
                    return Err(Error::Checkpoint {
                        path: checkpoint_path(&self.dir),
                        reason: "the run is done but the student's checkpoint is missing".into(),
                    });
                }
                return self.student().map(Some);
            }
        }
        self.save(&state)?;
        Ok(None)
    }

    /// A decaying learning rate needs the student's length in advance: a few of its warm-up
    /// steps are timed (their rate does not depend on the length), and the steps the rest of
    /// the budget buys at that pace, a little under, become its length (at most
    /// `student_steps`). The length lives in the student's checkpoint from then on, so a
    /// resumed run keeps it.
    fn fix_student_steps(
        &mut self,
        student: &mut Trainer<B, N>,
        budget: f64,
        state: &mut PipelineState,
    ) -> Result<()> {
        let cap = self.config.student_steps;
        // The first step pays for allocations; the next ones show the pace. All of them stay
        // inside the warm-up where it has room, and inside the cap.
        let timed = student
            .config()
            .optimizer
            .warmup_steps
            .saturating_sub(1)
            .clamp(1, PACE_STEPS)
            .min(cap.saturating_sub(1));
        if timed == 0 {
            // A one-step student: nothing to plan.
            return student.set_steps(cap);
        }
        let started = Instant::now();
        student.train_steps(1)?;
        let paced = Instant::now();
        student.train_steps(timed)?;
        let per_step = paced.elapsed().as_secs_f64() / timed as f64;
        state.seconds[2] += started.elapsed().as_secs_f64();
        let left = (budget - state.spent()).max(0.0);
        let more = (PACE_MARGIN * left / per_step.max(1e-9)).floor() as usize;
        // `student.step()` (1 + timed) is within the cap.
        let steps = (student.step() + more).min(cap);
        student.set_steps(steps)?;
        (self.log)(&format!(
            "student: {:.3} s a step, {steps} steps planned for the learning rate's decay",
            per_step
        ));
        self.save(state)
    }

    /// Trains `trainer` for `left` seconds, adds the time to stage `slot` (recorded even if
    /// training stops with an error) and checkpoints.
    fn train(
        &mut self,
        name: &str,
        trainer: &mut Trainer<B, N>,
        left: f64,
        state: &mut PipelineState,
        slot: usize,
    ) -> Result<()> {
        (self.log)(&format!(
            "{name}: from step {}, {left:.0} s",
            trainer.step()
        ));
        let started = Instant::now();
        let left = Duration::try_from_secs_f64(left.max(0.0)).unwrap_or(Duration::MAX);
        let result = trainer.train_for(left);
        state.seconds[slot] += started.elapsed().as_secs_f64();
        self.save(state)?;
        result?;
        trainer.checkpoint()?;
        (self.log)(&format!("{name}: {} steps", trainer.step()));
        Ok(())
    }

    fn check_same_recipe(&self, state: &PipelineState) -> Result<()> {
        let path = self.dir.join("pipeline.json");
        if state.config != self.config {
            return Err(Error::Checkpoint {
                path,
                reason: format!(
                    "the run was started with another recipe: {:?}, this one is {:?}",
                    state.config, self.config
                ),
            });
        }
        if state.teacher != self.teacher {
            return Err(Error::Checkpoint {
                path,
                reason: format!(
                    "the run was started with teacher {:?}, this one has {:?}",
                    state.teacher, self.teacher
                ),
            });
        }
        Ok(())
    }

    /// Refuses a budget that leaves the student less than a tenth of it after the teacher's
    /// share and the pairs (one network call timed, times the calls the pairs need).
    fn check_budget(&self, budget: Duration, state: &PipelineState) -> Result<()> {
        let budget = budget.as_secs_f64();
        let teacher = match state.stage {
            Stage::Teacher => budget * self.config.teacher_share,
            _ => 0.0,
        };
        let inner = self.model.with_net(self.model.net().valid());
        let batch = self.config.pair_batch.min(self.config.pairs);
        let device = crate::backend::device_of(inner.net());
        let zeros = || {
            Tensor::from_data(
                TensorData::new(vec![0.0f32; batch * inner.dim()], [batch, inner.dim()]),
                &device,
            )
        };
        let t_max = [inner.flow().time_range().max];
        // Reading the result back waits for an asynchronous device.
        inner.estimate(zeros(), &t_max, zeros())?.into_data(); // warm-up
        let started = Instant::now();
        inner.estimate(zeros(), &t_max, zeros())?.into_data();
        let call = started.elapsed().as_secs_f64();
        let (generated, encoded) = self.config.method.pair_kinds();
        let solves = usize::from(generated) * self.config.pairs.div_ceil(batch)
            + usize::from(encoded) * self.data.len().div_ceil(self.config.pair_batch);
        let calls = self.config.pair_nfe() * solves;
        let pairs = call * calls as f64;
        let student = budget - teacher - pairs;
        if student < 0.1 * budget {
            return Err(Error::Budget {
                reason: format!(
                    "{budget:.0} s: the teacher's share is {teacher:.0} s and the {} pairs take \
                     about {pairs:.0} s ({calls} network calls of {call:.2} s), which leaves the \
                     student {student:.0} s (at least a tenth of the budget is needed); give \
                     more time or fewer pairs",
                    self.config.pairs
                ),
            });
        }
        Ok(())
    }

    /// The stage after the teacher's: the pairs, or the student where the method makes none.
    fn after_teacher(&self) -> Stage {
        match self.config.method.makes_pairs() {
            true => Stage::Pairs,
            false => Stage::Student,
        }
    }

    fn save(&self, state: &PipelineState) -> Result<()> {
        let path = self.dir.join("pipeline.json");
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Format {
            path: path.clone(),
            reason: format!("cannot encode the pipeline state: {e}"),
        })?;
        write_atomically(&path, &json)
    }

    fn pair_paths(&self) -> [PathBuf; 2] {
        [
            self.dir.join("pairs_latents.npy"),
            self.dir.join("pairs_samples.npy"),
        ]
    }

    /// Where the pairs stage writes the training examples' encoded latents, for the methods
    /// that make them: `DIR/pairs_latents.npy` for encoded pairs alone,
    /// `DIR/pairs_encoded_latents.npy` for a mixture (whose generated pairs are in the other
    /// two files).
    pub fn encoded_latents_path(&self) -> Option<PathBuf> {
        let (generated, encoded) = self.config.method.pair_kinds();
        encoded.then(|| self.encoded_path(generated))
    }

    /// The encoded latents' file, beside generated pairs or not.
    fn encoded_path(&self, beside_generated: bool) -> PathBuf {
        match beside_generated {
            // Alone, they take the generated pairs' latents file.
            false => {
                let [latents, _] = self.pair_paths();
                latents
            }
            true => self.dir.join("pairs_encoded_latents.npy"),
        }
    }

    fn make_pairs(&mut self) -> Result<()> {
        let dir = self.teacher_dir();
        // Resume checks the data, the flow, the preconditioning and the network's shapes, and
        // reads the coupling the checkpoint names.
        let teacher = Trainer::resume(&dir, self.model.clone(), self.data.clone())?;
        if teacher.coupling().name() != "off" {
            return Err(Error::Checkpoint {
                path: checkpoint_path(&dir),
                reason: format!(
                    "a teacher is a denoiser (coupling off); this run trained with coupling {:?}",
                    teacher.coupling().name()
                ),
            });
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.teacher_config.seed ^ 0x9a15);
        let solver = self.config.pair_solver();
        let [latents, samples] = self.pair_paths();
        let (generated, _) = self.config.method.pair_kinds();
        let encoded_to = self.encoded_latents_path();
        let log = &mut self.log;
        let started = Instant::now();
        let mut progress = |done: usize, n: usize| {
            log(&format!(
                "pairs: {done}/{n} by {} ({:.0} s)",
                solver.label(),
                started.elapsed().as_secs_f64()
            ))
        };
        let (batch, teacher) = (self.config.pair_batch, teacher.ema_model());
        let write = |path: PathBuf, set: &Dataset| {
            write_npy_f32(path, set.values(), &[set.len(), set.dim()])
        };
        // The encoded pairs' samples are the data, which the run has already.
        if let Some(path) = encoded_to {
            let codes = encoded_pairs(&teacher, &self.data, solver, batch, &mut progress)?;
            write(path, &codes.latents)?;
        }
        if generated {
            // A class-conditional teacher makes its pairs for the classes in equal numbers,
            // with the recipe's guidance.
            let classes = self.data.classes();
            let teacher = match classes {
                0 => teacher,
                k => teacher
                    .with_classes(Classes::each((0..self.config.pairs).map(|i| i % k)))?
                    .with_guidance(self.config.pair_guidance)?,
            };
            let pairs = ode_pairs(
                &teacher,
                &mut rng,
                self.config.pairs,
                solver,
                batch,
                &mut progress,
            )?;
            write(latents, &pairs.latents)?;
            write(samples, &pairs.samples)?;
            if let Some(labels) = pairs.samples.labels() {
                let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
                write_npy_i64(self.pair_labels_path(), &labels, &[labels.len()])?;
            }
        }
        Ok(())
    }

    /// The classes of the generated pairs (written where the data is labelled).
    fn pair_labels_path(&self) -> PathBuf {
        self.dir.join("pairs_labels.npy")
    }

    /// A pairs file written by [`make_pairs`](Self::make_pairs); the samples of a labelled
    /// run's pairs carry their classes.
    fn read_pairs(&self, path: &Path) -> Result<Dataset> {
        let pairs = Dataset::new(self.read_pair_values(path)?, self.data.dim())?;
        let [_, samples] = self.pair_paths();
        let classes = self.data.classes();
        if classes == 0 || path != samples {
            return Ok(pairs);
        }
        let labels_path = self.pair_labels_path();
        let labels = match read_npy(&labels_path)?.data {
            NpyData::I64(labels) => labels,
            NpyData::U8(_) | NpyData::F32(_) | NpyData::F64(_) => {
                return Err(Error::Format {
                    path: labels_path,
                    reason: "pair labels are int64".into(),
                })
            }
        };
        let labels = labels
            .into_iter()
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
            .collect();
        pairs
            .with_labels(labels, classes)
            .map_err(|e| Error::Format {
                path: labels_path,
                reason: e.to_string(),
            })
    }

    /// The values of a pairs file, row after row.
    fn read_pair_values(&self, path: &Path) -> Result<Vec<f32>> {
        match read_npy(path)?.data {
            NpyData::F32(values) => Ok(values),
            NpyData::U8(_) | NpyData::F64(_) | NpyData::I64(_) => Err(Error::Format {
                path: path.to_path_buf(),
                reason: "pairs are float32".into(),
            }),
        }
    }

    /// The teacher's EMA weights as a trainable network of the model's type.
    fn teacher_net(&self) -> Result<N> {
        let teacher = Trainer::resume(self.teacher_dir(), self.model.clone(), self.data.clone())?;
        teacher.ema_as_trainable(self.model.net().clone())
    }

    /// The student's trainer: resumed from `DIR`, or new from the teacher's EMA weights.
    fn student(&self) -> Result<Trainer<B, N>> {
        let dir = &self.dir;
        let resume = checkpoint_path(dir).exists();
        // Read once: a new student starts from it, distribution matching denoises with it.
        let teacher = match (resume, &self.config.student_distribution_matching) {
            (true, None) => None,
            (false, _) | (true, Some(_)) => Some(self.teacher_net()?),
        };
        let start = |net: N| -> Result<(IntegrationFlow<B, N>, TrainConfig)> {
            let mut config = self.teacher_config.clone();
            config.optimizer.lr = self.config.student_lr;
            config.t_max_fraction = self.config.student_t_max_share();
            config.steps = self.config.student_steps;
            config.optimizer.decay = self.config.student_lr_decay;
            if let Some(distance) = self.config.student_distance {
                config.distance = distance;
            }
            config.perceptual = self.config.student_perceptual.clone();
            config.adversarial = self.config.student_adversarial.clone();
            config.distribution_matching = self.config.student_distribution_matching.clone();
            Ok((self.model.with_net(net), config))
        };
        // A student of `samples` by `objective`, paired with anchors by `coupling` or not; a
        // flow-map student's network gains its target-time input first, also before its
        // checkpoint is loaded. The coupling checks that there is one latent per example.
        let trainer = |samples: Dataset,
                       coupling: Option<PairedAnchors>,
                       objective: ObjectiveConfig|
         -> Result<Trainer<B, N>> {
            let coupling = coupling.map(Arc::new);
            if resume {
                let model = self
                    .model
                    .with_net(adapt_to(&objective, self.model.net().clone())?);
                return match coupling {
                    Some(coupling) => Trainer::resume_with_coupling(dir, model, samples, coupling),
                    None => Trainer::resume(dir, model, samples),
                };
            }
            let net = match &teacher {
                Some(net) => net.clone(),
                None => self.teacher_net()?,
            };
            let (model, mut config) = start(adapt_to(&objective, net)?)?;
            config.objective = objective.clone();
            match coupling {
                Some(coupling) => Trainer::with_coupling(model, samples, config, coupling),
                None => Trainer::new(model, samples, config),
            }
        };
        let [latents, samples] = self.pair_paths();
        let student = match &self.config.method {
            DistillMethod::GeneratedPairs => trainer(
                self.read_pairs(&samples)?,
                Some(PairedAnchors::generated(self.read_pairs(&latents)?)),
                ObjectiveConfig::Regression,
            )?,
            DistillMethod::Encoded => trainer(
                self.data.clone(),
                Some(PairedAnchors::encoded(self.read_pairs(&latents)?)),
                ObjectiveConfig::Regression,
            )?,
            DistillMethod::Mixed => {
                // Generated pairs first, then the training examples with their encodings.
                let mut anchors = self.read_pair_values(&latents)?;
                anchors.extend(self.read_pair_values(&self.encoded_path(true))?);
                let generated = self.read_pairs(&samples)?;
                generated.check_same_labelling(&self.data)?;
                let mut values = generated.values().to_vec();
                values.extend_from_slice(self.data.values());
                let dim = self.data.dim();
                // A labelled run's pairs and examples keep their classes.
                let examples = match (generated.labels(), self.data.labels()) {
                    (Some(pairs), Some(data)) => Dataset::new(values, dim)?
                        .with_labels([pairs, data].concat(), self.data.classes())?,
                    _ => Dataset::new(values, dim)?,
                };
                trainer(
                    examples,
                    Some(PairedAnchors::mixed(Dataset::new(anchors, dim)?)),
                    ObjectiveConfig::Regression,
                )?
            }
            DistillMethod::Consistency(consistency) => trainer(
                self.data.clone(),
                None,
                ObjectiveConfig::Consistency(consistency.clone()),
            )?,
            DistillMethod::FlowMap(flow_map) => trainer(
                self.data.clone(),
                None,
                ObjectiveConfig::FlowMap(flow_map.clone()),
            )?,
            DistillMethod::FlowMapPairs(flow_map) => trainer(
                self.read_pairs(&samples)?,
                Some(PairedAnchors::generated(self.read_pairs(&latents)?)),
                ObjectiveConfig::FlowMap(FlowMapConfig {
                    paired_jumps: true,
                    ..flow_map.clone()
                }),
            )?,
        };
        let student = match &self.student_features {
            Some(features) => student.with_perceptual_features(features.boxed_clone())?,
            None => student,
        };
        // Distribution matching denoises with the teacher, given as the student's network type
        // (a flow-map student's gains its target-time input).
        let student = match &student.config().distribution_matching {
            Some(_) => {
                let net = match teacher {
                    Some(net) => net,
                    None => self.teacher_net()?,
                };
                let net = adapt_to(&student.config().objective, net)?;
                student.with_score_teacher(net)?
            }
            None => student,
        };
        student
            .with_checkpoint_dir(dir)
            .with_metrics_log(dir.join("metrics.jsonl"))
    }
}

/// `net` as a student of `objective` takes it: a flow-map student's network gains its
/// target-time input.
fn adapt_to<B: Backend, N: IntegrationNet<B>>(objective: &ObjectiveConfig, net: N) -> Result<N> {
    match objective {
        ObjectiveConfig::FlowMap(_) => net.with_target_time(),
        ObjectiveConfig::Regression | ObjectiveConfig::Consistency(_) => Ok(net),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValidatedConfig;

    #[test]
    fn the_recipe_loads_from_json_and_names_a_bad_field() {
        let config = DistillConfig::from_json(r#"{"pairs": 500, "teacher_share": 0.4}"#).unwrap();
        assert_eq!((config.pairs, config.teacher_share), (500, 0.4));
        assert_eq!(config.pair_steps, DistillConfig::default().pair_steps);
        let config = DistillConfig::from_json(
            r#"{"student_distance": {"kind": "l1"}, "student_lr_decay": {"kind": "cosine", "floor": 0.1}}"#,
        )
        .unwrap();
        assert_eq!(config.student_distance, Some(Distance::L1));
        assert_eq!(config.student_lr_decay, LrDecay::Cosine { floor: 0.1 });
        for (json, field) in [
            (r#"{"teacher_share": 1.0}"#, "teacher_share"),
            (r#"{"pairs": 0}"#, "pairs"),
            (r#"{"student_lr": -1.0}"#, "student_lr"),
            (
                r#"{"student_t_max_fraction": 2.0}"#,
                "student_t_max_fraction",
            ),
            (r#"{"pair_stepz": 3}"#, "pair_stepz"),
            (
                r#"{"student_lr_decay": {"kind": "cosine", "floor": 1.5}}"#,
                "student_lr_decay.floor",
            ),
            (
                r#"{"student_distance": {"kind": "pseudo_huber", "c": -1.0}}"#,
                "student_distance.c",
            ),
        ] {
            let err = DistillConfig::from_json(json).unwrap_err();
            assert!(err.to_string().contains(field), "{json}: {err}");
        }
    }
}
