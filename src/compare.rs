//! Integration Flow against the classical way of sampling, measured side by side: the engine
//! of the `compare` example (and of its CI check).
//!
//! For each flow it trains the default Integration Flow model (OT anchors) and the baseline
//! (the same network with anchor policy `off`: a plain x̂_0 denoiser) with the same steps and
//! seed, then measures every sampler on the same reference data.

use crate::data::{Dataset, Toy};
use crate::error::{Error, Result};
use crate::flow::{
    Parameterization, PfgmPPConfig, ProbabilityFlow, RectifiedFlowConfig, VeConfig, VpConfig,
};
use crate::metrics::{
    energy_distance, mmd, nearest_neighbour_distance, sliced_wasserstein2, MMD_BANDWIDTHS,
};
use crate::model::{AnchorLaw, IntegrationFlow};
use crate::nn::{Mlp, MlpConfig};
use crate::sample::{
    anchor_iteration, generate_batched, renoise, renoise_times, solve_ode, OdeSolver, RenoiseAnchor,
};
use crate::train::{AnchorPolicy, TrainConfig, Trainer};
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
}

impl CompareConfig {
    /// The default run: 8192 points, 8000 steps, 10k samples, one seed.
    pub fn standard(dataset: Toy) -> Self {
        CompareConfig {
            dataset,
            steps: 8000,
            seeds: 1,
            points: 8192,
            samples: 10_000,
            pairwise_samples: 3000,
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
        }
    }
}

/// One method on one flow, with one value per seed for each metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    /// The flow's name.
    pub flow: String,
    /// `if-anchor-k`, `if-renoise-k` or `baseline-<solver>`.
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
}

impl CompareResults {
    /// The row of `method` on `flow`.
    pub fn row(&self, flow: &str, method: &str) -> Option<&CompareRow> {
        self.rows
            .iter()
            .find(|r| r.flow == flow && r.method == method)
    }
}

/// The four families with the defaults the comparison uses.
pub fn default_flows() -> Result<Vec<Arc<dyn ProbabilityFlow>>> {
    Ok(vec![
        Arc::new(RectifiedFlowConfig::default().init()?),
        Arc::new(VpConfig::default().init()?),
        Arc::new(VeConfig::default().init()?),
        Arc::new(PfgmPPConfig::default().init()?),
    ])
}

/// An EMA model of the default MLP, ready for sampling.
type EmaModel<B> = IntegrationFlow<
    <B as AutodiffBackend>::InnerBackend,
    Mlp<<B as AutodiffBackend>::InnerBackend>,
>;

/// Trains the default MLP on `data` with `train` (its seed and steps set here, no progress bar)
/// and returns the EMA model and the last step's loss.
fn train<B: AutodiffBackend>(
    flow: &Arc<dyn ProbabilityFlow>,
    data: &Dataset,
    train: &TrainConfig,
    parameterization: Parameterization,
    steps: usize,
    seed: u64,
) -> Result<(EmaModel<B>, f64)> {
    let (_, sd) = data.mean_and_std();
    let net = MlpConfig::default().init::<B>(&Default::default(), seed)?;
    let model = IntegrationFlow::from_shared(
        flow.clone(),
        net,
        parameterization,
        sd,
        AnchorLaw::Gaussian { scale: 1.0 },
    )?;
    let config = TrainConfig {
        seed,
        steps,
        progress: false,
        ..train.clone()
    };
    let mut trainer = Trainer::new(model, data.clone(), config)?;
    let last = trainer.fit()?;
    Ok((trainer.ema_model(), last.map_or(f64::NAN, |s| s.loss)))
}

/// The default recipe with anchor policy `policy`.
fn with_policy(policy: AnchorPolicy) -> TrainConfig {
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

    fn name(&self) -> String {
        match self {
            Method::AnchorIteration(k) => format!("if-anchor-{k}"),
            Method::Renoise(k) => format!("if-renoise-{k}"),
            Method::Ode(solver) => format!("baseline-{}", solver.label()),
        }
    }
}

/// Runs the comparison; `progress` receives one line per measured method. Also returns the
/// one-step samples of the IF model of seed 0 per flow.
pub fn run_compare<B: AutodiffBackend>(
    config: &CompareConfig,
    mut progress: impl FnMut(&str),
) -> Result<(CompareResults, BTreeMap<String, Vec<f32>>)> {
    if config.seeds == 0 || config.samples == 0 || config.pairwise_samples == 0 {
        return Err(Error::InvalidArgument {
            name: "config",
            reason: "seeds, samples and pairwise_samples must be at least 1".into(),
        });
    }
    let count = config.samples;
    let pairwise = config.pairwise_samples.min(count);
    let mut results = CompareResults::default();
    let mut one_step = BTreeMap::new();
    let mut rows: BTreeMap<(String, String), CompareRow> = BTreeMap::new();
    for seed in 0..config.seeds {
        let data = config.dataset.sample(config.points, seed)?;
        let reference = config.dataset.sample(count, 1_000 + seed)?;
        let pair_ref = &reference.values()[..2 * pairwise];
        results
            .data_nn_distance
            .push(nearest_neighbour_distance(pair_ref, data.values(), 2)?);
        for flow in default_flows()? {
            let name = flow.name().to_string();
            progress(&format!(
                "{name}, seed {seed}: training IF and baseline ({} steps each)",
                config.steps
            ));
            let integral = Parameterization::Integral;
            let (if_model, _) = train::<B>(
                &flow,
                &data,
                &with_policy(AnchorPolicy::Ot),
                integral,
                config.steps,
                seed,
            )?;
            let (baseline, _) = train::<B>(
                &flow,
                &data,
                &with_policy(AnchorPolicy::Off),
                integral,
                config.steps,
                seed,
            )?;
            let mut rng = StdRng::seed_from_u64(20_000 + seed);
            let prior: Vec<f32> = if_model
                .sample_prior(&mut rng, count)?
                .into_data()
                .iter::<f32>()
                .collect();
            results
                .prior_sw2
                .entry(name.clone())
                .or_default()
                .push(sliced_wasserstein2(
                    &prior,
                    reference.values(),
                    2,
                    256,
                    seed,
                )?);
            for method in Method::all() {
                let mut rng = StdRng::seed_from_u64(10_000 + seed);
                let started = Instant::now();
                let range = flow.time_range();
                let (samples, nfe) = generate_batched(count, 2500, |n| match &method {
                    Method::AnchorIteration(k) => anchor_iteration(&if_model, &mut rng, n, *k),
                    Method::Renoise(k) => renoise(
                        &if_model,
                        &mut rng,
                        n,
                        &renoise_times(range, *k),
                        RenoiseAnchor::Fixed,
                    ),
                    Method::Ode(solver) => solve_ode(&baseline, &mut rng, n, *solver),
                })?;
                let seconds = started.elapsed().as_secs_f64() * 10_000.0 / count as f64;
                let key = (name.clone(), method.name());
                let row = rows.entry(key).or_insert_with(|| CompareRow {
                    flow: name.clone(),
                    method: method.name(),
                    ..Default::default()
                });
                row.nfe = nfe;
                let finite = samples.iter().all(|v| v.is_finite());
                let pair = &samples[..2 * pairwise];
                let metric = |value: Result<f64>| if finite { value } else { Ok(f64::NAN) };
                row.sw2.push(metric(sliced_wasserstein2(
                    &samples,
                    reference.values(),
                    2,
                    256,
                    seed,
                ))?);
                row.energy.push(metric(energy_distance(pair, pair_ref, 2))?);
                row.mmd
                    .push(metric(mmd(pair, pair_ref, 2, &MMD_BANDWIDTHS))?);
                row.nn_distance
                    .push(metric(nearest_neighbour_distance(pair, data.values(), 2))?);
                row.seconds_per_10k.push(seconds);
                progress(&format!(
                    "  {:<28} NFE {nfe:>4}  sw2 {:.4}",
                    method.name(),
                    row.sw2.last().copied().unwrap_or(f64::NAN)
                ));
                if seed == 0 && matches!(method, Method::AnchorIteration(1)) {
                    one_step.insert(name.clone(), samples);
                }
            }
        }
    }
    results.rows = rows.into_values().collect();
    Ok((results, one_step))
}

/// `mean ± std` over seeds (just the mean for one seed).
fn summary(values: &[f64]) -> String {
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
         Fresh data's mean nearest-neighbour distance to the training set: {}\n",
        config.dataset.name(),
        config.points,
        config.steps,
        config.seeds,
        config.samples,
        summary(&results.data_nn_distance)
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
    }
    out
}

/// One training recipe of an ablation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// A short name for tables.
    pub name: String,
    /// The training configuration (its `seed` and `steps` are set per run).
    pub train: TrainConfig,
    /// The preconditioning form.
    pub parameterization: Parameterization,
}

/// One-step and 2-step (re-noising, fixed anchor) quality of one variant, per seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AblationRow {
    /// The variant's name.
    pub variant: String,
    /// SW2 of one-step samples, one value per seed.
    pub one_step_sw2: Vec<f64>,
    /// SW2 of 2-step re-noising samples, one value per seed.
    pub renoise2_sw2: Vec<f64>,
    /// Final training loss, one value per seed.
    pub final_loss: Vec<f64>,
}

/// Trains every variant on `flow` for each seed and measures one-step and 2-step SW2 with
/// `config`'s data sizes; `progress` receives a line per run.
pub fn run_ablation<B: AutodiffBackend>(
    config: &CompareConfig,
    flow: Arc<dyn ProbabilityFlow>,
    variants: &[Variant],
    mut progress: impl FnMut(&str),
) -> Result<Vec<AblationRow>> {
    let mut rows: Vec<AblationRow> = variants
        .iter()
        .map(|v| AblationRow {
            variant: v.name.clone(),
            ..Default::default()
        })
        .collect();
    for seed in 0..config.seeds {
        let data = config.dataset.sample(config.points, seed)?;
        let reference = config.dataset.sample(config.samples, 1_000 + seed)?;
        for (variant, row) in variants.iter().zip(&mut rows) {
            let (model, final_loss) = train::<B>(
                &flow,
                &data,
                &variant.train,
                variant.parameterization,
                config.steps,
                seed,
            )?;
            let mut rng = StdRng::seed_from_u64(10_000 + seed);
            let (one, _) = generate_batched(config.samples, 2500, |n| {
                anchor_iteration(&model, &mut rng, n, 1)
            })?;
            let times = renoise_times(flow.time_range(), 2);
            let (two, _) = generate_batched(config.samples, 2500, |n| {
                renoise(&model, &mut rng, n, &times, RenoiseAnchor::Fixed)
            })?;
            let sw2 = |s: &[f32]| {
                if s.iter().all(|v| v.is_finite()) {
                    sliced_wasserstein2(s, reference.values(), 2, 256, seed)
                } else {
                    Ok(f64::NAN)
                }
            };
            row.one_step_sw2.push(sw2(&one)?);
            row.renoise2_sw2.push(sw2(&two)?);
            row.final_loss.push(final_loss);
            progress(&format!(
                "{:<32} seed {seed}: one-step sw2 {:.4}, re-noise-2 sw2 {:.4}",
                variant.name,
                row.one_step_sw2.last().copied().unwrap_or(f64::NAN),
                row.renoise2_sw2.last().copied().unwrap_or(f64::NAN)
            ));
        }
    }
    Ok(rows)
}

/// An ablation's rows as a Markdown table.
pub fn ablation_table(title: &str, rows: &[AblationRow]) -> String {
    let mut out = format!("## {title}\n\n| variant | one-step SW2 | re-noise-2 SW2 | final loss |\n|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.variant,
            summary(&r.one_step_sw2),
            summary(&r.renoise2_sw2),
            summary(&r.final_loss)
        ));
    }
    out
}
