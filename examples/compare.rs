//! Integration Flow against the classical way of sampling, on a toy 2-D dataset.
//!
//! ```sh
//! cargo run --release --example compare -- [--dataset NAME] [--steps N] [--seeds K] [--out DIR] [--quick]
//! ```
//!
//! For each flow it trains the default Integration Flow model (OT anchors) and the baseline
//! (the same network with anchor policy `off`: a plain x̂_0 denoiser), with the same steps and
//! seed, then measures every sampler: IF one step, anchor iteration (2, 4, 8) and re-noising
//! (2, 4, 8); baseline Euler (1, 2, 4, 8, 16, 100), Heun (8), RK4 (8) and DOPRI5. Writes
//! `DIR/table.md`, `DIR/results.json` and `DIR/<flow>_if_nfe1.npy`.
use clap::Parser;
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::data::{write_npy_f32, Dataset, Toy};
use integration_flow::flow::{
    Parameterization, PfgmPPConfig, ProbabilityFlow, RectifiedFlowConfig, VeConfig, VpConfig,
};
use integration_flow::metrics::{
    energy_distance, mmd, nearest_neighbour_distance, sliced_wasserstein2, MMD_BANDWIDTHS,
};
use integration_flow::model::{AnchorLaw, IntegrationFlow};
use integration_flow::nn::{Mlp, MlpConfig};
use integration_flow::sample::{
    anchor_iteration, generate_batched, renoise, renoise_times, solve_ode, Generated, OdeSolver,
    RenoiseAnchor,
};
use integration_flow::train::{AnchorPolicy, TrainConfig, Trainer};
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Toy dataset.
    #[arg(long, default_value = "checkerboard")]
    dataset: String,
    /// Training steps of each model.
    #[arg(long, default_value_t = 8000)]
    steps: usize,
    /// Seeds (training and sampling) to average over.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Training points.
    #[arg(long, default_value_t = 8192)]
    points: usize,
    /// Output directory.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// A small, fast run (CI): few steps and samples, one seed.
    #[arg(long)]
    quick: bool,
}

#[derive(Serialize, Clone, Default)]
struct Row {
    flow: String,
    method: String,
    nfe: f64,
    sw2: Vec<f64>,
    energy: Vec<f64>,
    mmd: Vec<f64>,
    nn_distance: Vec<f64>,
    seconds_per_10k: Vec<f64>,
}

type Model = IntegrationFlow<Cpu, Mlp<Cpu>>;
/// A sampler under test: a function of the model, the RNG and the count.
type Sampler = Box<dyn Fn(&Model, &mut StdRng, usize) -> integration_flow::Result<Generated<Cpu>>>;

fn flows() -> Vec<Arc<dyn ProbabilityFlow>> {
    vec![
        Arc::new(
            RectifiedFlowConfig::default()
                .init()
                .expect("default config"),
        ),
        Arc::new(VpConfig::default().init().expect("default config")),
        Arc::new(VeConfig::default().init().expect("default config")),
        Arc::new(PfgmPPConfig::default().init().expect("default config")),
    ]
}

fn train(
    flow: &Arc<dyn ProbabilityFlow>,
    data: &Dataset,
    policy: AnchorPolicy,
    steps: usize,
    seed: u64,
) -> integration_flow::Result<Model> {
    let (_, sd) = data.mean_and_std();
    let net = MlpConfig::default().init::<CpuAutodiff>(&Default::default(), seed)?;
    let model = IntegrationFlow::from_shared(
        flow.clone(),
        net,
        Parameterization::Integral,
        sd,
        AnchorLaw::Gaussian { scale: 1.0 },
    )?;
    let mut config = TrainConfig {
        seed,
        steps,
        ..Default::default()
    };
    config.anchor.policy = policy;
    let mut trainer = Trainer::new(model, data.clone(), config)?;
    trainer.fit()?;
    Ok(trainer.ema_model())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse();
    if args.quick {
        args.steps = args.steps.min(300);
        args.seeds = 1;
        args.points = args.points.min(2048);
    }
    let count = if args.quick { 1000 } else { 10_000 };
    let toy: Toy = args.dataset.parse()?;
    std::fs::create_dir_all(&args.out)?;
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for seed in 0..args.seeds {
        let data = toy.sample(args.points, seed)?;
        let reference = toy.sample(count, 1_000 + seed)?;
        for flow in flows() {
            let name = flow.name().to_string();
            eprintln!(
                "{name}, seed {seed}: training IF and baseline ({} steps each)",
                args.steps
            );
            let if_model = train(&flow, &data, AnchorPolicy::Ot, args.steps, seed)?;
            let baseline = train(&flow, &data, AnchorPolicy::Off, args.steps, seed)?;
            let range = flow.time_range();
            let mut methods: Vec<(String, &Model, Sampler)> = Vec::new();
            for k in [1usize, 2, 4, 8] {
                methods.push((
                    format!("if-anchor-{k}"),
                    &if_model,
                    Box::new(move |m, r, n| anchor_iteration(m, r, n, k)),
                ));
            }
            for k in [2usize, 4, 8] {
                let times = renoise_times(range, k);
                methods.push((
                    format!("if-renoise-{k}"),
                    &if_model,
                    Box::new(move |m, r, n| renoise(m, r, n, &times, RenoiseAnchor::Fixed)),
                ));
            }
            let mut solvers: Vec<OdeSolver> = [1, 2, 4, 8, 16, 100]
                .map(|steps| OdeSolver::Euler { steps })
                .to_vec();
            solvers.extend([
                OdeSolver::Heun { steps: 8 },
                OdeSolver::Rk4 { steps: 8 },
                OdeSolver::DOPRI5,
            ]);
            for solver in solvers {
                methods.push((
                    format!("baseline-{}", solver.label()),
                    &baseline,
                    Box::new(move |m, r, n| solve_ode(m, r, n, solver)),
                ));
            }
            for (method, model, sampler) in methods {
                let mut rng = StdRng::seed_from_u64(10_000 + seed);
                let started = Instant::now();
                let (samples, nfe) =
                    generate_batched(count, 2500, |n| sampler(model, &mut rng, n))?;
                let seconds = started.elapsed().as_secs_f64() * 10_000.0 / count as f64;
                if method == "if-anchor-1" && seed == 0 {
                    write_npy_f32(
                        args.out.join(format!("{name}_if_nfe1.npy")),
                        &samples,
                        &[count, 2],
                    )?;
                }
                let row = rows
                    .entry((name.clone(), method.clone()))
                    .or_insert_with(|| Row {
                        flow: name.clone(),
                        method: method.clone(),
                        ..Default::default()
                    });
                row.nfe = nfe as f64;
                row.sw2.push(sliced_wasserstein2(
                    &samples,
                    reference.values(),
                    2,
                    256,
                    seed,
                )?);
                let (a, b) = (
                    &samples[..2 * count.min(3000)],
                    &reference.values()[..2 * count.min(3000)],
                );
                row.energy.push(energy_distance(a, b, 2)?);
                row.mmd.push(mmd(a, b, 2, &MMD_BANDWIDTHS)?);
                row.nn_distance
                    .push(nearest_neighbour_distance(a, data.values(), 2)?);
                row.seconds_per_10k.push(seconds);
                eprintln!(
                    "  {method:<28} NFE {nfe:>4}  sw2 {:.4}",
                    row.sw2.last().copied().unwrap_or(f64::NAN)
                );
            }
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    let stat = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>()
            / v.len().max(2).saturating_sub(1) as f64)
            .sqrt();
        if v.len() > 1 {
            format!("{m:.4} ± {s:.4}")
        } else {
            format!("{m:.4}")
        }
    };
    let mut table = format!(
        "# compare: {} ({} points, {} steps, {} seed(s))\n\n| flow | method | NFE | SW2 | energy | MMD | NN distance | s / 10k |\n|---|---|---|---|---|---|---|---|\n",
        args.dataset, args.points, args.steps, args.seeds
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.flow,
            r.method,
            r.nfe,
            stat(&r.sw2),
            stat(&r.energy),
            stat(&r.mmd),
            stat(&r.nn_distance),
            stat(&r.seconds_per_10k)
        ));
    }
    std::fs::write(args.out.join("table.md"), &table)?;
    println!("{table}");
    Ok(())
}
