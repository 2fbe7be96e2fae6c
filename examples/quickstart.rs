//! Train Integration Flow on a toy 2-D dataset and generate in one network call.
//!
//! ```sh
//! cargo run --release --example quickstart -- [--flow rf|vp|ve|pfgmpp] [--dataset NAME]
//!     [--steps N] [--points N] [--seed S] [--out DIR] [--checkpoint-every N] [--resume]
//!     [--export DIR] [--device cpu|cuda]
//! ```
//!
//! The run checkpoints to `DIR` every `--checkpoint-every` steps and at the end; `--resume`
//! continues the run whose checkpoint is in `DIR` (same flags otherwise) and ends with the same
//! samples, byte for byte, as a run that was never interrupted. `--device cuda` needs
//! `--features cuda`.
//!
//! Writes `DIR/samples.npy` (float32 [10000, 2], one-step samples of the EMA model),
//! `DIR/samples.png` (data beside samples), `DIR/config.json`, the checkpoint, and prints
//! `sw2=<v> prior_sw2=<v> steps=<n> train_seconds=<s> seconds=<s>` last.
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use integration_flow::backend::CpuAutodiff;
use integration_flow::data::{write_npy_f32, Toy};
use integration_flow::flow::FlowConfig;
use integration_flow::metrics::sliced_wasserstein2;
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::MlpConfig;
use integration_flow::plot::{scatter_png, Panel};
use integration_flow::train::{TrainConfig, Trainer};
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug, Serialize)]
#[command(about = "Train Integration Flow on a toy 2-D dataset; generate in one step")]
struct Args {
    /// Flow family: rf, vp, ve or pfgmpp, optionally with fields (`ve:sigma_max=20`).
    #[arg(long, default_value = "rf")]
    flow: String,
    /// Toy dataset: checkerboard, 8gaussians, moons, 2spirals, pinwheel, rings, swissroll.
    #[arg(long, default_value = "checkerboard")]
    dataset: String,
    /// Optimizer steps.
    #[arg(long, default_value_t = 20_000)]
    steps: usize,
    /// Training points drawn from the dataset.
    #[arg(long, default_value_t = 8192)]
    points: usize,
    /// Seed of data, weights and training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: usize,
    /// Continue the run whose checkpoint is in --out.
    #[arg(long)]
    resume: bool,
    /// Also export the trained model (model.safetensors and model.json) to DIR, for
    /// `IntegrationFlow::load` and the `generate` example.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Device: cpu, or cuda (built with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

const SAMPLES: usize = 10_000;

fn main() -> std::process::ExitCode {
    // Reuse freed tensor memory instead of faulting it back in every step (docs/benchmarks.md).
    integration_flow::backend::tune_allocator();
    let started = Instant::now();
    let args = Args::parse();
    if let Err(e) = integration_flow::train::interrupt::install() {
        eprintln!("warning: {e}; Ctrl-C will stop without a checkpoint");
    }
    let result = match args.device.as_str() {
        "cpu" => run::<CpuAutodiff>(&args, Default::default(), started),
        #[cfg(feature = "cuda")]
        "cuda" if !integration_flow::backend::cuda_driver_available() => {
            Err("--device cuda: no NVIDIA driver (libcuda.so.1) on this machine".into())
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            run::<integration_flow::backend::CudaAutodiff>(&args, Default::default(), started)
        }
        other => Err(format!(
            "unknown device {other:?}: use cpu, or cuda in a build with --features cuda"
        )
        .into()),
    };
    integration_flow::train::interrupt::exit_code(
        result,
        "cargo run --release --example quickstart --",
    )
}

fn run<B: AutodiffBackend>(
    args: &Args,
    device: B::Device,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let toy: Toy = args.dataset.parse()?;
    let flow = args.flow.parse::<FlowConfig>()?.init()?;
    std::fs::create_dir_all(&args.out)?;

    let data = toy.sample(args.points, args.seed)?;
    let (_, sigma_data) = data.mean_and_std();
    let mlp = MlpConfig::default();
    let net = mlp.init::<B>(&device, args.seed)?;
    let model_config = IntegrationFlowConfig {
        sigma_data: Some(sigma_data),
        ..Default::default()
    };
    let model = model_config.init(flow, net)?;
    let config = TrainConfig {
        seed: args.seed,
        steps: args.steps,
        checkpoint_every: args.checkpoint_every,
        ..Default::default()
    };
    #[derive(Serialize)]
    struct RunConfig<'a> {
        args: &'a Args,
        sigma_data: f64,
        model: &'a IntegrationFlowConfig,
        network: &'a MlpConfig,
        train: &'a TrainConfig,
    }
    let run = RunConfig {
        args,
        sigma_data,
        model: &model_config,
        network: &mlp,
        train: &config,
    };
    integration_flow::data::write_atomically(
        args.out.join("config.json"),
        serde_json::to_string_pretty(&run)?,
    )?;

    let trainer = if args.resume {
        let mut trainer = Trainer::resume(&args.out, model, data.clone())?;
        trainer.set_steps(args.steps)?;
        eprintln!("resuming at step {}", trainer.step());
        trainer
    } else {
        Trainer::new(model, data.clone(), config)?
    };
    let mut trainer = trainer
        .with_checkpoint_dir(&args.out)
        .with_metrics_log(args.out.join("metrics.jsonl"))?;
    let train_started = Instant::now();
    trainer.fit()?;
    let train_seconds = train_started.elapsed().as_secs_f64();
    if let Some(dir) = &args.export {
        trainer.export(dir, integration_flow::saved::Precision::F32)?;
        eprintln!("exported to {}", dir.display());
    }

    let ema = trainer.ema_model();
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(1_000_003));
    let samples = values(ema.generate(&mut rng, SAMPLES, 1)?);
    let prior = values(ema.sample_prior(&mut rng, SAMPLES)?);
    write_npy_f32(args.out.join("samples.npy"), &samples, &[SAMPLES, 2])?;
    let reference = toy.sample(SAMPLES, args.seed.wrapping_add(7_777))?;
    let extent = 1.2
        * reference
            .values()
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()));
    scatter_png(
        args.out.join("samples.png"),
        &[
            Panel {
                points: reference.values(),
                colour: [30, 60, 160],
            },
            Panel {
                points: &samples,
                colour: [190, 50, 30],
            },
        ],
        extent,
        400,
    )?;
    let sw2 = sliced_wasserstein2(&samples, reference.values(), 2, 256, 0)?;
    let prior_sw2 = sliced_wasserstein2(&prior, reference.values(), 2, 256, 0)?;
    println!(
        "sw2={sw2:.4} prior_sw2={prior_sw2:.4} steps={} train_seconds={train_seconds:.1} seconds={:.1}",
        trainer.step(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn values<B: burn::tensor::backend::Backend>(t: burn::tensor::Tensor<B, 2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}
