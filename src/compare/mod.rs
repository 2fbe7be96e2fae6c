//! Integration Flow against the classical way of sampling, measured side by side: the engine
//! of the `compare` example (and of its CI check).
//!
//! For each flow it trains the default Integration Flow model (OT anchors) and the baseline
//! (the same network with anchor policy `off`: a plain x̂_0 denoiser) with the same steps and
//! seed, then measures every sampler on the same reference data. Independent trainings run
//! side by side ([`jobs`]); ablations of the recipe live in [`ablation`].

pub mod ablation;
mod distilled;
pub mod jobs;

pub use ablation::{ablation_table, run_ablation, AblationRow, Variant};

use crate::coupling::AnchorLaw;
use crate::data::{Dataset, Toy};
use crate::error::{Error, Result};
use crate::flow::{FlowConfig, Parameterization, ProbabilityFlow};
use crate::metrics::{
    energy_distance, mmd, nearest_neighbour_distance, sliced_wasserstein2, MMD_BANDWIDTHS,
};
use crate::model::{IntegrationFlow, IntegrationFlowConfig};
use crate::nn::{Mlp, MlpConfig};
use crate::pipeline::DistillMethod;
use crate::sample::{
    anchor_convergence, anchor_iteration, generate_batched, renoise, solve_ode, straightness,
    OdeSolver, RenoiseAnchor, RenoiseSchedule,
};
use crate::train::{AnchorPolicy, FlowMapConfig, TrainConfig, Trainer};
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to compare.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareConfig {
    /// The toy dataset.
    pub dataset: Toy,
    /// Training steps of each model.
    pub steps: usize,
    /// Seeds 0..seeds, each a full repetition (data, weights, training, sampling).
    pub seeds: u64,
    /// Training points.
    pub points: usize,
    /// Samples per method (and reference points).
    pub samples: usize,
    /// Samples used by the quadratic-cost metrics (energy, MMD, NN distance).
    pub pairwise_samples: usize,
    /// Trainings run side by side (0 = one per core); results do not depend on it.
    #[serde(default)]
    pub workers: usize,
    /// Where the re-noising sampler re-noises.
    #[serde(default)]
    pub renoise: RenoiseSchedule,
    /// The flows to compare, by name (`rf`, `vp`, `ve`, `pfgmpp`); empty: all of them.
    #[serde(default)]
    pub flows: Vec<String>,
    /// Where each finished job (one model of one flow and seed) is saved as it completes, so
    /// that a run that stops loses only the jobs in flight: a rerun with the same settings
    /// reads the saved jobs back instead of recomputing them. `None`: nothing is saved.
    /// (Saved jobs record the crate version and the settings above, not the code: delete the
    /// folder after changing the code.)
    #[serde(default)]
    pub job_dir: Option<PathBuf>,
    /// Also run the distillation recipe (a denoiser, then a one-step student from its
    /// weights) as a third model, in the same `steps` of work; its rows are `distill-1` (one
    /// call) and `distill-renoise-k`.
    #[serde(default)]
    pub distill: bool,
    /// The student's method with `distill`: the flow map by default (the `mnist` default),
    /// or generated pairs, encoded pairs, a mixture of the two or consistency.
    #[serde(default = "default_distill_method")]
    pub distill_method: DistillMethod,
}

/// The `mnist` example's default student: the flow map.
fn default_distill_method() -> DistillMethod {
    DistillMethod::FlowMap(FlowMapConfig::default())
}

impl CompareConfig {
    /// The default run: 8192 points, 20k steps, 10k samples, one seed.
    pub fn standard(dataset: Toy) -> Self {
        CompareConfig {
            dataset,
            steps: 20_000,
            seeds: 1,
            points: 8192,
            samples: 10_000,
            pairwise_samples: 3000,
            workers: 0,
            renoise: RenoiseSchedule::default(),
            flows: Vec::new(),
            job_dir: None,
            distill: false,
            distill_method: default_distill_method(),
        }
    }

    /// A run of a couple of minutes for CI: 300 steps, 2048 points, 1000 samples.
    pub fn quick(dataset: Toy) -> Self {
        CompareConfig {
            dataset,
            steps: 300,
            seeds: 1,
            points: 2048,
            samples: 1000,
            pairwise_samples: 1000,
            workers: 0,
            renoise: RenoiseSchedule::default(),
            flows: Vec::new(),
            job_dir: None,
            distill: false,
            distill_method: default_distill_method(),
        }
    }
}

/// One method on one flow, with one value per seed for each metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    /// The flow's name.
    pub flow: String,
    /// `if-anchor-k`, `if-renoise-k`, `baseline-<solver>`, `distill-1` or `distill-renoise-k`.
    pub method: String,
    /// Network evaluations per sample.
    pub nfe: usize,
    /// Sliced Wasserstein-2 to the reference data.
    pub sw2: Vec<f64>,
    /// Energy distance to the reference data.
    pub energy: Vec<f64>,
    /// MMD² to the reference data.
    pub mmd: Vec<f64>,
    /// Mean nearest-neighbour distance to the training set.
    pub nn_distance: Vec<f64>,
    /// Seconds to generate 10k samples.
    pub seconds_per_10k: Vec<f64>,
}

/// The prior's SW2 to the reference data, per flow and seed: the no-skill reference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompareResults {
    /// Every measured row.
    pub rows: Vec<CompareRow>,
    /// Prior samples' SW2 per flow (one value per seed).
    pub prior_sw2: BTreeMap<String, Vec<f64>>,
    /// Fresh data's mean nearest-neighbour distance to the training set (per seed): the value
    /// that samples which do not memorise should reach.
    pub data_nn_distance: Vec<f64>,
    /// SW2 between a second fresh data sample and the reference data (per seed): the floor
    /// that perfect samples reach at this sample size.
    #[serde(default)]
    pub data_sw2: Vec<f64>,
    /// Diagnostics of the trained models per flow.
    #[serde(default)]
    pub diagnostics: BTreeMap<String, Diagnostics>,
}

/// How the trained models behave beyond sample quality (docs/evidence.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Anchor iteration of the IF model: mean ‖a_{n+1} − a_n‖ for n = 1..16, per seed
    /// ([`crate::sample::anchor_convergence`]).
    pub anchor_convergence: Vec<Vec<f64>>,
    /// Straightness (variance of the prediction along one noise–data line) of the IF model,
    /// per seed ([`crate::sample::straightness`]).
    pub straightness_if: Vec<f64>,
    /// The same for the baseline, per seed.
    pub straightness_baseline: Vec<f64>,
}

impl CompareResults {
    /// The row of `method` on `flow`.
    pub fn row(&self, flow: &str, method: &str) -> Option<&CompareRow> {
        self.rows
            .iter()
            .find(|r| r.flow == flow && r.method == method)
    }
}

/// An EMA model of the default MLP, ready for sampling.
pub(crate) type EmaModel<B> = IntegrationFlow<
    <B as AutodiffBackend>::InnerBackend,
    Mlp<<B as AutodiffBackend>::InnerBackend>,
>;

/// An untrained model of the default MLP for `data` (σ_data measured from it).
pub(crate) fn fresh_model<B: AutodiffBackend>(
    flow: &Arc<dyn ProbabilityFlow>,
    data: &Dataset,
    parameterization: Parameterization,
    anchor_law: AnchorLaw,
    seed: u64,
) -> Result<IntegrationFlow<B, Mlp<B>>> {
    let (_, sd) = data.mean_and_std();
    let net = MlpConfig::default().init::<B>(&Default::default(), seed)?;
    IntegrationFlowConfig {
        parameterization,
        sigma_data: Some(sd),
        anchor_law,
    }
    .init(flow.clone(), net)
}

/// Trains the default MLP on `data` with `train` (its seed and steps set here, no progress bar)
/// and returns the EMA model, the last step's loss and the last epoch's anchor drift.
pub(crate) fn train<B: AutodiffBackend>(
    flow: &Arc<dyn ProbabilityFlow>,
    data: &Dataset,
    train: &TrainConfig,
    parameterization: Parameterization,
    steps: usize,
    seed: u64,
) -> Result<(EmaModel<B>, f64, f64)> {
    let anchor_law = AnchorLaw::Gaussian { scale: 1.0 };
    let model = fresh_model::<B>(flow, data, parameterization, anchor_law, seed)?;
    let config = TrainConfig {
        seed,
        steps,
        progress: false,
        ..train.clone()
    };
    let mut trainer = Trainer::new(model, data.clone(), config)?;
    let last = trainer.fit()?;
    let drift = trainer.anchor_drift().last().copied().unwrap_or(0.0);
    Ok((
        trainer.ema_model(),
        last.map_or(f64::NAN, |s| s.loss),
        drift,
    ))
}

/// The default recipe with anchor policy `policy`.
pub(crate) fn with_policy(policy: AnchorPolicy) -> TrainConfig {
    let mut config = TrainConfig::default();
    config.anchor.policy = policy;
    config
}

/// A sampler under test: IF methods run on the IF model, ODE solvers on the baseline.
enum Method {
    AnchorIteration(usize),
    Renoise(usize),
    Ode(OdeSolver),
}

impl Method {
    fn all() -> Vec<Method> {
        let mut methods: Vec<Method> = [1, 2, 4, 8].map(Method::AnchorIteration).into();
        methods.extend([2, 4, 8].map(Method::Renoise));
        methods.extend([1, 2, 4, 8, 16, 100].map(|steps| Method::Ode(OdeSolver::Euler { steps })));
        methods.extend(
            [
                OdeSolver::Heun { steps: 8 },
                OdeSolver::Rk4 { steps: 8 },
                OdeSolver::DOPRI5,
            ]
            .map(Method::Ode),
        );
        methods
    }

    /// Whether the method samples `model`: the IF samplers the IF model, the ODE solvers the
    /// denoiser, one call and re-noising the distilled student (it has no anchor to iterate).
    fn runs_on(&self, model: Model) -> bool {
        match (self, model) {
            (Method::AnchorIteration(_) | Method::Renoise(_), Model::IntegrationFlow) => true,
            (Method::Ode(_), Model::Baseline) => true,
            (Method::AnchorIteration(k), Model::Distilled) => *k == 1,
            (Method::Renoise(_), Model::Distilled) => true,
            (Method::AnchorIteration(_) | Method::Renoise(_), Model::Baseline)
            | (Method::Ode(_), Model::IntegrationFlow | Model::Distilled) => false,
        }
    }

    fn name(&self, model: Model) -> String {
        match (self, model) {
            (Method::AnchorIteration(k), Model::Distilled) => format!("distill-{k}"),
            (Method::Renoise(k), Model::Distilled) => format!("distill-renoise-{k}"),
            (Method::AnchorIteration(k), Model::IntegrationFlow | Model::Baseline) => {
                format!("if-anchor-{k}")
            }
            (Method::Renoise(k), Model::IntegrationFlow | Model::Baseline) => {
                format!("if-renoise-{k}")
            }
            (Method::Ode(solver), Model::IntegrationFlow | Model::Baseline | Model::Distilled) => {
                format!("baseline-{}", solver.label())
            }
        }
    }
}

/// Which model a job trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Model {
    /// Integration Flow with OT anchors, sampled by its own samplers.
    IntegrationFlow,
    /// The anchor-free denoiser, sampled by the ODE solvers.
    Baseline,
    /// The distillation recipe's one-step student ([`distilled`]).
    Distilled,
}

/// The methods whose seed-0 samples are kept for figures.
pub const KEPT_METHODS: [&str; 4] = [
    "if-anchor-1",
    "if-renoise-2",
    "baseline-euler-8",
    "baseline-dopri5-1e-5-1e-5",
];

/// What one training-and-measuring job found.
#[derive(Serialize, Deserialize)]
struct JobOutput {
    rows: Vec<CompareRow>,
    prior_sw2: Option<f64>,
    convergence: Option<Vec<f64>>,
    straightness: f64,
    samples: Vec<(String, Vec<f32>)>,
}

/// What [`run_compare`] returns: the measurements and, for seed 0, the samples of the methods in
/// [`KEPT_METHODS`] per flow (row-major `[samples, 2]`).
#[derive(Clone, Debug, Default)]
pub struct CompareOutput {
    /// Every measurement.
    pub results: CompareResults,
    /// `(flow, method) → samples` of seed 0.
    pub samples: BTreeMap<(String, String), Vec<f32>>,
}

/// Runs the comparison; `progress` receives one line per trained model and measured method
/// (from several threads, so it must be `Sync`).
pub fn run_compare<B: AutodiffBackend>(
    config: &CompareConfig,
    progress: impl Fn(&str) + Sync,
) -> Result<CompareOutput> {
    if config.seeds == 0 || config.samples == 0 || config.pairwise_samples == 0 {
        return Err(Error::InvalidArgument {
            name: "config",
            reason: "seeds, samples and pairwise_samples must be at least 1".into(),
        });
    }
    let mut flows = FlowConfig::defaults()
        .iter()
        .map(FlowConfig::init)
        .collect::<Result<Vec<_>>>()?;
    if !config.flows.is_empty() {
        if let Some(unknown) = config
            .flows
            .iter()
            .find(|name| !flows.iter().any(|f| f.name() == name.as_str()))
        {
            return Err(Error::InvalidArgument {
                name: "flows",
                reason: format!("unknown flow {unknown:?} (rf, vp, ve or pfgmpp)"),
            });
        }
        flows.retain(|f| config.flows.iter().any(|name| name == f.name()));
    }
    let mut jobs = Vec::new();
    for seed in 0..config.seeds {
        for flow in &flows {
            for model in [Model::IntegrationFlow, Model::Baseline, Model::Distilled] {
                if model != Model::Distilled || config.distill {
                    jobs.push((seed, flow.clone(), model));
                }
            }
        }
    }
    let outputs = jobs::run_jobs(&jobs, config.workers, |(seed, flow, model)| {
        let key = JobKey::new(config, *seed, flow.name(), *model);
        if let Some(dir) = &config.job_dir {
            if let Some(saved) = load_job(dir, &key, &progress) {
                return Ok(saved);
            }
        }
        let output = compare_job::<B>(config, *seed, flow, *model, &progress)?;
        if let Some(dir) = &config.job_dir {
            save_job(dir, &key, &output)?;
        }
        Ok(output)
    })?;
    let mut out = CompareOutput::default();
    for seed in 0..config.seeds {
        let data = config.dataset.sample(config.points, seed)?;
        let reference = config.dataset.sample(config.samples, 1_000 + seed)?;
        let pairwise = config.pairwise_samples.min(config.samples);
        let fresh = config.dataset.sample(config.samples, 2_000 + seed)?;
        out.results.data_sw2.push(sliced_wasserstein2(
            fresh.values(),
            reference.values(),
            2,
            256,
            seed,
        )?);
        out.results
            .data_nn_distance
            .push(nearest_neighbour_distance(
                &reference.values()[..2 * pairwise],
                data.values(),
                2,
            )?);
    }
    let mut rows: BTreeMap<(String, String), CompareRow> = BTreeMap::new();
    for ((seed, flow, model), job) in jobs.iter().zip(outputs) {
        let name = flow.name().to_string();
        let diagnostics = out.results.diagnostics.entry(name.clone()).or_default();
        if let Some(c) = job.convergence {
            diagnostics.anchor_convergence.push(c);
        }
        match model {
            Model::IntegrationFlow => diagnostics.straightness_if.push(job.straightness),
            Model::Baseline => diagnostics.straightness_baseline.push(job.straightness),
            Model::Distilled => {}
        }
        if let Some(prior) = job.prior_sw2 {
            out.results
                .prior_sw2
                .entry(name.clone())
                .or_default()
                .push(prior);
        }
        for row in job.rows {
            let merged = rows
                .entry((name.clone(), row.method.clone()))
                .or_insert_with(|| CompareRow {
                    flow: name.clone(),
                    method: row.method.clone(),
                    nfe: row.nfe,
                    ..Default::default()
                });
            merged.sw2.extend(row.sw2);
            merged.energy.extend(row.energy);
            merged.mmd.extend(row.mmd);
            merged.nn_distance.extend(row.nn_distance);
            merged.seconds_per_10k.extend(row.seconds_per_10k);
        }
        if *seed == 0 {
            for (method, values) in job.samples {
                out.samples.insert((name.clone(), method), values);
            }
        }
    }
    out.results.rows = rows.into_values().collect();
    Ok(out)
}

/// Everything a job's result depends on (besides the code), stored with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct JobKey {
    version: String,
    dataset: Toy,
    steps: usize,
    points: usize,
    samples: usize,
    pairwise_samples: usize,
    renoise: RenoiseSchedule,
    seed: u64,
    flow: String,
    model: Model,
    /// The student's method, for the distilled model only (so that the other models' saved
    /// jobs stay valid when it changes).
    #[serde(default)]
    distill_method: Option<DistillMethod>,
}

impl JobKey {
    fn new(config: &CompareConfig, seed: u64, flow: &str, model: Model) -> Self {
        JobKey {
            version: env!("CARGO_PKG_VERSION").to_string(),
            dataset: config.dataset,
            steps: config.steps,
            points: config.points,
            samples: config.samples,
            pairwise_samples: config.pairwise_samples,
            renoise: config.renoise,
            seed,
            flow: flow.to_string(),
            model,
            distill_method: match model {
                Model::Distilled => Some(config.distill_method.clone()),
                Model::IntegrationFlow | Model::Baseline => None,
            },
        }
    }

    fn file(&self, dir: &Path) -> PathBuf {
        let model = match self.model {
            Model::IntegrationFlow => "if",
            Model::Baseline => "baseline",
            Model::Distilled => "distill",
        };
        dir.join(format!("seed{}_{}_{model}.json", self.seed, self.flow))
    }
}

/// A saved job: the key it was made with and what it found.
#[derive(Deserialize)]
struct SavedJob {
    key: JobKey,
    output: JobOutput,
}

/// [`SavedJob`] for writing, without copying the output.
#[derive(Serialize)]
struct SavedJobRef<'a> {
    key: &'a JobKey,
    output: &'a JobOutput,
}

/// The saved result of `key`'s job, if there is one made with the same settings. A missing,
/// unreadable or mismatched file means the job runs again (said through `progress`).
fn load_job(dir: &Path, key: &JobKey, progress: &(impl Fn(&str) + Sync)) -> Option<JobOutput> {
    let file = key.file(dir);
    let text = std::fs::read_to_string(&file).ok()?;
    match serde_json::from_str::<SavedJob>(&text) {
        Ok(saved) if saved.key == *key => {
            progress(&format!("{}: reused", file.display()));
            Some(saved.output)
        }
        Ok(_) => {
            progress(&format!(
                "{}: other settings, running again",
                file.display()
            ));
            None
        }
        Err(e) => {
            progress(&format!(
                "{}: unreadable ({e}), running again",
                file.display()
            ));
            None
        }
    }
}

fn save_job(dir: &Path, key: &JobKey, output: &JobOutput) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let json =
        serde_json::to_vec(&SavedJobRef { key, output }).map_err(|e| Error::InvalidArgument {
            name: "job",
            reason: format!("cannot encode a finished job: {e}"),
        })?;
    crate::data::npy::write_atomically(key.file(dir), &json)
}

/// Trains one model of one flow for one seed and measures its samplers.
fn compare_job<B: AutodiffBackend>(
    config: &CompareConfig,
    seed: u64,
    flow: &Arc<dyn ProbabilityFlow>,
    model: Model,
    progress: &(impl Fn(&str) + Sync),
) -> Result<JobOutput> {
    let count = config.samples;
    let pairwise = config.pairwise_samples.min(count);
    let data = config.dataset.sample(config.points, seed)?;
    let reference = config.dataset.sample(count, 1_000 + seed)?;
    let pair_ref = &reference.values()[..2 * pairwise];
    let name = flow.name();
    let started = Instant::now();
    let plain = |policy| {
        let recipe = with_policy(policy);
        train::<B>(
            flow,
            &data,
            &recipe,
            Parameterization::Integral,
            config.steps,
            seed,
        )
        .map(|(trained, _, _)| trained)
    };
    let (trained, label) = match model {
        Model::IntegrationFlow => (plain(AnchorPolicy::Ot)?, "IF"),
        Model::Baseline => (plain(AnchorPolicy::Off)?, "baseline"),
        Model::Distilled => {
            // The pipeline's checkpoints, next to the saved jobs (or in the temporary folder).
            let dir = config
                .job_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("integration_flow_compare"))
                .join(format!("distill_seed{seed}_{name}_{}", std::process::id()));
            let student = distilled::distil::<B>(
                flow,
                &data,
                &TrainConfig::default(),
                &config.distill_method,
                config.steps,
                seed,
                &dir,
            )?;
            (student, "distilled")
        }
    };
    progress(&format!(
        "{name} {label}, seed {seed}: trained {} steps in {:.0} s",
        config.steps,
        started.elapsed().as_secs_f64()
    ));
    let mut rng = StdRng::seed_from_u64(30_000 + seed);
    let mut out = JobOutput {
        rows: Vec::new(),
        prior_sw2: None,
        convergence: None,
        straightness: straightness(&trained, &mut rng, 1000, 16)?,
        samples: Vec::new(),
    };
    if model == Model::IntegrationFlow {
        out.convergence = Some(anchor_convergence(&trained, &mut rng, 2000, 17)?);
        let mut rng = StdRng::seed_from_u64(20_000 + seed);
        let prior: Vec<f32> = trained
            .sample_prior(&mut rng, count)?
            .into_data()
            .iter::<f32>()
            .collect();
        out.prior_sw2 = Some(sliced_wasserstein2(
            &prior,
            reference.values(),
            2,
            256,
            seed,
        )?);
    }
    let methods = Method::all().into_iter().filter(|m| m.runs_on(model));
    for method in methods {
        // The re-noising times depend only on the method: computed once, not per batch.
        let times = match &method {
            Method::Renoise(k) => config.renoise.times(flow.as_ref(), *k)?,
            Method::AnchorIteration(_) | Method::Ode(_) => Vec::new(),
        };
        let mut rng = StdRng::seed_from_u64(10_000 + seed);
        let started = Instant::now();
        let (samples, nfe) = generate_batched(count, 2500, |n| match &method {
            Method::AnchorIteration(k) => anchor_iteration(&trained, &mut rng, n, *k),
            Method::Renoise(_) => renoise(&trained, &mut rng, n, &times, RenoiseAnchor::Fixed),
            Method::Ode(solver) => solve_ode(&trained, &mut rng, n, *solver),
        })?;
        let seconds = started.elapsed().as_secs_f64() * 10_000.0 / count as f64;
        let finite = samples.iter().all(|v| v.is_finite());
        let pair = &samples[..2 * pairwise];
        let metric = |value: Result<f64>| if finite { value } else { Ok(f64::NAN) };
        let row = CompareRow {
            flow: name.to_string(),
            method: method.name(model),
            nfe,
            sw2: vec![metric(sliced_wasserstein2(
                &samples,
                reference.values(),
                2,
                256,
                seed,
            ))?],
            energy: vec![metric(energy_distance(pair, pair_ref, 2))?],
            mmd: vec![metric(mmd(pair, pair_ref, 2, &MMD_BANDWIDTHS))?],
            nn_distance: vec![metric(nearest_neighbour_distance(pair, data.values(), 2))?],
            seconds_per_10k: vec![seconds],
        };
        progress(&format!(
            "  {name} seed {seed} {:<26} NFE {nfe:>4}  sw2 {:.4}",
            row.method, row.sw2[0]
        ));
        if seed == 0 && KEPT_METHODS.contains(&row.method.as_str()) {
            out.samples.push((row.method.clone(), samples));
        }
        out.rows.push(row);
    }
    Ok(out)
}

/// `mean ± std` over seeds (just the mean for one seed).
pub(crate) fn summary(values: &[f64]) -> String {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return format!("{mean:.4}");
    }
    let std = (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{mean:.4} ± {std:.4}")
}

/// The results as a Markdown table, one section per flow.
pub fn markdown_table(config: &CompareConfig, results: &CompareResults) -> String {
    let mut out = format!(
        "# compare: {} ({} training points, {} steps, {} seed(s), {} samples)\n\n\
         Fresh data's mean nearest-neighbour distance to the training set: {}; \
         SW2 of fresh data to the reference (the floor at this sample size): {}\n",
        config.dataset.name(),
        config.points,
        config.steps,
        config.seeds,
        config.samples,
        summary(&results.data_nn_distance),
        summary(&results.data_sw2)
    );
    let mut flows: Vec<&String> = results.prior_sw2.keys().collect();
    flows.sort();
    for flow in flows {
        out.push_str(&format!(
            "\n## {flow} (prior SW2 {})\n\n| method | NFE | SW2 | energy | MMD² | NN distance | s / 10k |\n|---|---|---|---|---|---|---|\n",
            summary(&results.prior_sw2[flow])
        ));
        for r in results.rows.iter().filter(|r| &r.flow == flow) {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.method,
                r.nfe,
                summary(&r.sw2),
                summary(&r.energy),
                summary(&r.mmd),
                summary(&r.nn_distance),
                summary(&r.seconds_per_10k)
            ));
        }
        if let Some(d) = results.diagnostics.get(flow) {
            let per_n = |n: usize| {
                let v: Vec<f64> = d
                    .anchor_convergence
                    .iter()
                    .filter_map(|c| c.get(n).copied())
                    .collect();
                summary(&v)
            };
            out.push_str(&format!(
                "\nDiagnostics: anchor iteration mean ‖a_(n+1) − a_n‖ at n = 1, 2, 4, 8, 16: {}, {}, {}, {}, {}; \
                 straightness (variance along a noise–data line) IF {}, baseline {}\n",
                per_n(0),
                per_n(1),
                per_n(3),
                per_n(7),
                per_n(15),
                summary(&d.straightness_if),
                summary(&d.straightness_baseline)
            ));
        }
    }
    out
}
