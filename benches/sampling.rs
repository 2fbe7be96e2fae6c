//! Sampling throughput: one-step generation beside the classical ODE baseline (DOPRI5 on the
//! same network trained as a plain denoiser), timed in one process on trained models.
//!
//! ```sh
//! # 2-D: trains (once) the IF model and the baseline on checkerboard, 20k steps each, and
//! # keeps their checkpoints in --dir; later runs load them.
//! cargo bench --bench sampling -- toy [--flow rf] [--steps 20000] [--count 10000]
//!     [--repeats 5] [--dir target/sampling-bench]
//! # MNIST: loads the checkpoints of two `mnist` example runs (IF, and `--policy off`).
//! cargo bench --bench sampling -- mnist --if runs/mnist --ode runs/mnist_baseline
//!     [--count 1000] [--batch 250] [--repeats 3]
//! ```
//!
//! Prints one line per sampler, `<case> sampler=<name> nfe=<n> seconds=<s>
//! samples_per_s=<r>` (median of the repeats), then `<case> speedup=<DOPRI5 time / one-step
//! time>` last. The toy case also prints each sampler's SW2 against fresh data, to show the
//! quality the speed is bought at.
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::{mnist, Dataset, Toy};
use integration_flow::flow::{FlowConfig, Parameterization};
use integration_flow::metrics::sliced_wasserstein2;
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{IntegrationNet, MlpConfig, UNetConfig};
use integration_flow::sample::{generate_batched, one_step, solve_ode, Generated, OdeSolver};
use integration_flow::train::{checkpoint_path, AnchorPolicy, TrainConfig, Trainer};
use rand::{rngs::StdRng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::Instant;

type Error = Box<dyn std::error::Error>;

struct Args {
    case: String,
    flow: String,
    steps: usize,
    count: usize,
    batch: Option<usize>,
    repeats: usize,
    dir: PathBuf,
    if_dir: Option<PathBuf>,
    ode_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let case = args
        .next()
        .ok_or("usage: sampling toy|mnist [--count N] ...")?;
    let mut parsed = Args {
        case,
        flow: "rf".into(),
        steps: 20_000,
        count: 0,
        batch: None,
        repeats: 0,
        dir: PathBuf::from("target/sampling-bench"),
        if_dir: None,
        ode_dir: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--flow" => parsed.flow = value,
            "--steps" => parsed.steps = value.parse()?,
            "--count" => parsed.count = value.parse()?,
            "--batch" => parsed.batch = Some(value.parse()?),
            "--repeats" => parsed.repeats = value.parse()?,
            "--dir" => parsed.dir = value.into(),
            "--if" => parsed.if_dir = Some(value.into()),
            "--ode" => parsed.ode_dir = Some(value.into()),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(parsed)
}

fn main() -> Result<(), Error> {
    integration_flow::backend::tune_allocator();
    let args = parse_args()?;
    match args.case.as_str() {
        "toy" => toy(&args),
        "mnist" => images(&args),
        other => Err(format!("unknown case {other:?}: use toy or mnist").into()),
    }
}

/// Median wall time of `repeats` runs of `sample`, with the last run's values and NFE.
fn timed(
    repeats: usize,
    mut sample: impl FnMut() -> Result<(Vec<f32>, usize), Error>,
) -> Result<(f64, Vec<f32>, usize), Error> {
    let mut seconds = Vec::with_capacity(repeats);
    let mut last = (Vec::new(), 0);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        last = sample()?;
        seconds.push(t.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok((seconds[seconds.len() / 2], last.0, last.1))
}

fn report(case: &str, sampler: &str, nfe: usize, seconds: f64, count: usize, extra: &str) {
    println!(
        "{case} sampler={sampler} nfe={nfe} seconds={seconds:.4} samples_per_s={:.0}{extra}",
        count as f64 / seconds
    );
}

/// Loads the checkpoint in `dir` when there is one; otherwise trains `model` with `config`
/// and checkpoints it there. Returns the EMA model.
fn trained<B, N>(
    dir: &Path,
    model: IntegrationFlow<B, N>,
    data: Dataset,
    config: Option<TrainConfig>,
) -> Result<IntegrationFlow<B::InnerBackend, N::InnerModule>, Error>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    if checkpoint_path(dir).exists() {
        eprintln!("loading {}", checkpoint_path(dir).display());
        return Ok(Trainer::resume(dir, model, data)?.ema_model());
    }
    let config = config.ok_or(format!(
        "no checkpoint in {}: run the mnist example there first (docs/benchmarks.md)",
        dir.display()
    ))?;
    eprintln!("training {} steps into {}", config.steps, dir.display());
    let started = Instant::now();
    let mut trainer = Trainer::new(model, data, config)?.with_checkpoint_dir(dir);
    trainer.fit()?;
    trainer.checkpoint()?;
    eprintln!("trained in {:.0} s", started.elapsed().as_secs_f64());
    Ok(trainer.ema_model())
}

/// The `compare` example's setting: checkerboard, 8192 points, the default MLP and recipe,
/// policy `ot` for IF and `off` for the baseline; DOPRI5 at rtol = atol = 1e-5.
fn toy(args: &Args) -> Result<(), Error> {
    let count = if args.count == 0 { 10_000 } else { args.count };
    let repeats = if args.repeats == 0 { 5 } else { args.repeats };
    let toy = Toy::Checkerboard;
    let seed = 0;
    let data = toy.sample(8192, seed)?;
    let reference = toy.sample(count, 1_000 + seed)?;
    let (_, sigma_data) = data.mean_and_std();
    let flow = args.flow.parse::<FlowConfig>()?.init()?;
    let load = |policy: AnchorPolicy, tag: &str| {
        let net = MlpConfig::default().init::<CpuAutodiff>(&Default::default(), seed)?;
        let model = IntegrationFlowConfig {
            parameterization: Parameterization::Integral,
            sigma_data: Some(sigma_data),
            anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
        }
        .init(flow.clone(), net)?;
        let mut config = TrainConfig {
            seed,
            steps: args.steps,
            progress: false,
            ..Default::default()
        };
        config.anchor.policy = policy;
        let dir = args.dir.join(format!("{}_{tag}_{}", args.flow, args.steps));
        trained(&dir, model, data.clone(), Some(config))
    };
    let if_model = load(AnchorPolicy::Ot, "if")?;
    let baseline = load(AnchorPolicy::Off, "baseline")?;
    let case = format!("toy flow={} count={count}", args.flow);
    let sw2 = |values: &[f32]| sliced_wasserstein2(values, reference.values(), 2, 256, 0);
    let mut rng = StdRng::seed_from_u64(30_000);
    let values = |g: Generated<Cpu>| g.samples.into_data().iter::<f32>().collect::<Vec<_>>();

    let (one, samples, nfe) = timed(repeats, || {
        let g = one_step(&if_model, &mut rng, count)?;
        Ok((values(g.clone()), g.nfe))
    })?;
    report(
        &case,
        "one_step",
        nfe,
        one,
        count,
        &format!(" sw2={:.4}", sw2(&samples)?),
    );
    for solver in [OdeSolver::Heun { steps: 8 }, OdeSolver::DOPRI5] {
        let reps = if solver == OdeSolver::DOPRI5 {
            1
        } else {
            repeats
        };
        let (seconds, samples, nfe) = timed(reps, || {
            let g = solve_ode(&baseline, &mut rng, count, solver)?;
            Ok((values(g.clone()), g.nfe))
        })?;
        let extra = format!(" sw2={:.4}", sw2(&samples)?);
        report(&case, &solver.label(), nfe, seconds, count, &extra);
        if solver == OdeSolver::DOPRI5 {
            println!("{case} speedup={:.0}", seconds / one);
        }
    }
    Ok(())
}

/// The `mnist` example's models, loaded from its checkpoints; DOPRI5 at rtol = atol = 1e-3
/// and batches of 250, as the example samples.
fn images(args: &Args) -> Result<(), Error> {
    let count = if args.count == 0 { 1000 } else { args.count };
    let repeats = if args.repeats == 0 { 3 } else { args.repeats };
    let batch = args.batch.unwrap_or(250);
    let (Some(if_dir), Some(ode_dir)) = (&args.if_dir, &args.ode_dir) else {
        return Err("mnist needs --if DIR and --ode DIR (checkpoints of the mnist example)".into());
    };
    let digits = mnist::load(None)?;
    let data = digits.dataset().clone();
    let (_, sigma_data) = data.mean_and_std();
    let [c, h, w] = digits.shape();
    let unet = UNetConfig {
        channels: c,
        height: h,
        width: w,
        ..Default::default()
    };
    let flow = args.flow.parse::<FlowConfig>()?.init()?;
    let load = |dir: &Path, law: AnchorLaw| {
        let net = unet.init::<CpuAutodiff>(&Default::default(), 0)?;
        let model = IntegrationFlowConfig {
            parameterization: Parameterization::Integral,
            sigma_data: Some(sigma_data),
            anchor_law: law,
        }
        .init(flow.clone(), net)?;
        trained(dir, model, data.clone(), None)
    };
    let if_model = load(if_dir, AnchorLaw::Gaussian { scale: 1.0 })?;
    let baseline = load(ode_dir, AnchorLaw::Zero)?;
    let case = format!("mnist flow={} count={count}", args.flow);
    let mut rng = StdRng::seed_from_u64(1_000_003);
    let (one, _, nfe) = timed(repeats, || {
        Ok(generate_batched(count, batch, |n| {
            one_step(&if_model, &mut rng, n)
        })?)
    })?;
    report(&case, "one_step", nfe, one, count, "");
    let solver = OdeSolver::Dopri5 {
        rtol: 1e-3,
        atol: 1e-3,
    };
    let (seconds, _, nfe) = timed(1, || {
        Ok(generate_batched(count, batch, |n| {
            solve_ode(&baseline, &mut rng, n, solver)
        })?)
    })?;
    report(&case, &solver.label(), nfe, seconds, count, "");
    println!("{case} speedup={:.0}", seconds / one);
    Ok(())
}
