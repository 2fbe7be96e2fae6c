//! Train Integration Flow on a toy 2-D dataset and generate in one network call.
//!
//! ```sh
//! cargo run --release --example quickstart -- [--flow rf|vp|ve|pfgmpp] [--dataset NAME]
//!     [--steps N] [--points N] [--seed S] [--out DIR] [--checkpoint-every N] [--resume]
//!     [--export DIR] [--device cpu|cuda] [--conditional [--guidance W]]
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
//!
//! `--conditional` trains a class-conditional model on the dataset's labels (8gaussians: the
//! Gaussian, moons: the moon, also 2spirals, pinwheel, rings): optimal transport within each
//! class, label dropout 0.1. The samples are then asked for the classes in equal numbers
//! (`DIR/labels.npy`, int64 [10000], the class of each row of `samples.npy`), the scatter
//! colours them by class, and the last line adds `accuracy=<v>` (the share of samples whose
//! five nearest training points are mostly of the requested class). `--guidance W` samples
//! with classifier-free guidance of scale W (two network evaluations).
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use integration_flow::backend::CpuAutodiff;
use integration_flow::data::{write_npy_f32, write_npy_i64, Toy};
use integration_flow::flow::FlowConfig;
use integration_flow::metrics::{nearest_labels, sliced_wasserstein2, ClassAgreement};
use integration_flow::model::{Classes, IntegrationFlowConfig};
use integration_flow::nn::{ClassInput, MlpConfig};
use integration_flow::plot::{scatter_layers_png, Panel};
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
    /// Train a class-conditional model on the dataset's labels and sample the classes in
    /// equal numbers.
    #[arg(long)]
    conditional: bool,
    /// Classifier-free guidance scale at sampling (with --conditional; 1: none).
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
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

    if args.guidance != 1.0 && !args.conditional {
        return Err("--guidance needs --conditional".into());
    }
    let data = match args.conditional {
        true => toy.sample_labelled(args.points, args.seed)?,
        false => toy.sample(args.points, args.seed)?,
    };
    let (_, sigma_data) = data.mean_and_std();
    let mlp = MlpConfig {
        classes: args.conditional.then(|| ClassInput::new(data.classes())),
        ..Default::default()
    };
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
    // The classes in equal numbers, in turn (row i asks for class i mod K).
    let requested: Vec<usize> = (0..SAMPLES).map(|i| i % data.classes().max(1)).collect();
    let ema = match args.conditional {
        true => ema
            .with_classes(Classes::each(requested.iter().copied()))?
            .with_guidance(args.guidance)?,
        false => ema,
    };
    let samples = values(ema.generate(&mut rng, SAMPLES, 1)?);
    let prior = values(ema.sample_prior(&mut rng, SAMPLES)?);
    write_npy_f32(args.out.join("samples.npy"), &samples, &[SAMPLES, 2])?;
    let reference = match args.conditional {
        true => toy.sample_labelled(SAMPLES, args.seed.wrapping_add(7_777))?,
        false => toy.sample(SAMPLES, args.seed.wrapping_add(7_777))?,
    };
    let extent = 1.2
        * reference
            .values()
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()));
    let data_panel = [Panel {
        points: reference.values(),
        colour: [30, 60, 160],
    }];
    // A conditional run's samples in one colour per class, overlaid in one panel.
    let by_class: Vec<Vec<f32>> = match args.conditional {
        true => (0..data.classes())
            .map(|k| {
                samples
                    .chunks(2)
                    .zip(&requested)
                    .filter(|(_, &r)| r == k)
                    .flat_map(|(p, _)| p.iter().copied())
                    .collect()
            })
            .collect(),
        false => vec![samples.clone()],
    };
    let sample_layers: Vec<Panel> = by_class
        .iter()
        .enumerate()
        .map(|(k, points)| Panel {
            points,
            colour: class_colour(k, args.conditional),
        })
        .collect();
    scatter_layers_png(
        args.out.join("samples.png"),
        &[&data_panel, &sample_layers],
        extent,
        400,
    )?;
    let sw2 = sliced_wasserstein2(&samples, reference.values(), 2, 256, 0)?;
    let prior_sw2 = sliced_wasserstein2(&prior, reference.values(), 2, 256, 0)?;
    let accuracy = match args.conditional {
        true => {
            let labels: Vec<i64> = requested.iter().map(|&k| k as i64).collect();
            write_npy_i64(args.out.join("labels.npy"), &labels, &[SAMPLES])?;
            let predicted = nearest_labels(&reference, &samples, 5)?;
            let agreement = ClassAgreement::new(&requested, &predicted, data.classes())?;
            let per_class: Vec<String> = agreement
                .per_class
                .iter()
                .map(|a| format!("{:.3}", a.unwrap_or(f64::NAN)))
                .collect();
            eprintln!("accuracy per class: {}", per_class.join(" "));
            format!(" accuracy={:.4}", agreement.overall)
        }
        false => String::new(),
    };
    println!(
        "sw2={sw2:.4} prior_sw2={prior_sw2:.4} steps={} train_seconds={train_seconds:.1} seconds={:.1}{accuracy}",
        trainer.step(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The samples' colour: red for an unconditional run, one of eight hues per class.
fn class_colour(k: usize, conditional: bool) -> [u8; 3] {
    const HUES: [[u8; 3]; 8] = [
        [190, 50, 30],
        [30, 140, 60],
        [120, 60, 170],
        [230, 140, 20],
        [20, 150, 170],
        [200, 60, 140],
        [110, 110, 20],
        [60, 60, 60],
    ];
    match conditional {
        true => HUES[k % HUES.len()],
        false => HUES[0],
    }
}

fn values<B: burn::tensor::backend::Backend>(t: burn::tensor::Tensor<B, 2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}
