//! Train a one-step generator on MNIST within a time budget; generate digits in one and in
//! four network calls; score them with the crate's own classifier.
//!
//! ```sh
//! cargo run --release --example mnist -- [--policy distill|ot|off] [--flow rf|vp|ve|pfgmpp]
//!     [--minutes M] [--steps N] [--data PATH] [--out DIR] [--count N] [--seed S]
//!     [--teacher DIR] [--checkpoint-every N] [--resume] [--device cpu|cuda] [--workers N]
//!     [--conditional [--class K] [--guidance W] [--flow-map-guidance W] [--pair-guidance W]]
//! ```
//!
//! The default, `--policy distill`, is the `integration_flow::pipeline` run: the UNet trains as
//! a plain denoiser (the teacher) for `--teacher-share` of the budget; then, by default
//! (`--method flow-map`), the teacher's network gains a target-time input and learns the jumps
//! of its probability-flow ODE by the flow-map objective for the rest of the budget, so that one
//! call from `t_max` to the data generates. `--method pairs` (the earlier default) integrates
//! `--pairs` prior draws by the teacher's ODE (Heun, `--pair-steps`) and a student learns to
//! return each pair's image from its latent in one call. The time embedding is smooth by
//! default (`--embedding-scale 5`), which the flow-map objective needs. `--teacher DIR` reuses
//! a trained denoiser (a `--policy off` run, or a distill run's `teacher/`, with the same
//! `--embedding-scale`); `--steps N` caps the teacher's steps. `--policy ot` trains Integration
//! Flow with optimal-transport anchors instead.
//!
//! `--resume` continues the run whose state is in `DIR` (for distill, within the same
//! `--minutes`: the budget counts every stage across resumes; otherwise for `--minutes` more);
//! `--device cuda` needs `--features cuda`.
//!
//! Writes to `DIR` (default `runs/mnist`): `samples_nfe1.npy` and `samples_nfe4.npy` (float32
//! `[count, 784]` in [-1, 1]), `grid_nfe1.png` and `grid_nfe4.png` (8×8), the checkpoint (for
//! distill the student's; the teacher's is in `DIR/teacher`, pairs in `DIR/pairs_*.npy`),
//! `config.json`, `metrics.jsonl`, `results.json` and `fd_vs_nfe.png`, and prints last
//! `fd=<one-step FD> steps=<training steps, teacher and student> seconds=<whole run>`.
//!
//! `--conditional` trains the class-conditional model of the same recipe and budget: the UNet
//! takes the digit's label beside its noise level (a "no class" token trained by label dropout
//! 0.1), and the samples are asked for the digits in equal numbers (row `i` for digit
//! `i mod 10`; `--class K`: all for digit K). Besides the files above it writes `labels.npy`
//! (int64 `[count]`, the digit requested for each row of `samples_nfe1.npy` and
//! `samples_nfe4.npy`) and `grid_by_class.png` (one row per digit, one-step samples), records
//! each sampler's agreement of the classifier with the requested digit (overall and per digit)
//! and per-digit FD in `results.json`, and prints last `fd=<v> accuracy=<v> steps=<n>
//! seconds=<s>` (the one-step samples'). The flow-map student learns the jumps of the guided
//! ODE (scale 2 by default, `--flow-map-guidance W`; 1: unguided), so that its one call gives
//! guided digits; `--pair-guidance W` does the same for the pairs students (their teacher's
//! ODE guided). `--guidance W` samples with classifier-free guidance of scale W besides (two
//! network evaluations per call, counted in the NFE).
//!
//! With `--policy off` the same UNet is trained as the plain denoiser (no anchor) and sampled
//! with Heun and DOPRI5 instead: the classical baseline the evidence compares against.
//!
//! The classifier behind the FD is trained once (about a minute) and cached in
//! `--classifier DIR` (default `runs/mnist_classifier`); FD values compare only with each other
//! and only at equal sample counts (FD is biased upwards at small counts). `--score FILE.npy`
//! scores saved samples (`[n, 784]` float32, the first `--count` rows) and trains nothing.
//! `--classifier-seed S` (with its own `--classifier DIR`) gives a second, independent judge.
//! `--export DIR [--export-precision f16]` also writes the trained model for
//! `IntegrationFlow::load` and the `generate` example.
//!
//! `--perceptual-weight W` adds a perceptual term to the student's loss: the distance in the
//! convolutions of a second classifier (`--perceptual-seed`, default 1, cached in
//! `--perceptual-classifier`, default `runs/mnist_perceptual`), trained on the training images
//! only; its training time is charged to the budget. Off by default (it measured worse).
//!
//! `--adversarial-weight W` adds an adversarial term to the student's loss: a small
//! convolutional critic, trained beside the student on the same batches, tells the student's
//! images of the data end (a flow-map student's jumps to it) from the batch's examples
//! (`--adversarial-lr`, `--adversarial-width`, `--adversarial-warmup` steps where only the
//! critic learns).
//!
//! `--dm-weight W` adds distribution matching (DMD) to the student's loss: its images of the
//! data end, noised to a random time, are pulled towards the teacher's denoising of them and
//! away from that of a second denoiser (a copy of the teacher) trained beside the student on
//! its own images (`--dm-lr`, `--dm-fake-updates` per step, `--dm-warmup` steps without it first).
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::{mnist, read_npy, write_npy_f32, write_npy_i64, Dataset, NpyData};
use integration_flow::flow::{FlowConfig, Parameterization, ProbabilityFlow};
use integration_flow::metrics::{
    nearest_neighbour_distance, ClassAgreement, Classifier, ClassifierConfig, ImageScore,
};
use integration_flow::model::{Classes, IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{ClassInput, IntegrationNet, NoiseEmbedding, UNet, UNetConfig};
use integration_flow::pipeline::{DistillConfig, DistillMethod, Distillation};
use integration_flow::plot::{image_grid_png, line_chart_png, Series, PALETTE};
use integration_flow::sample::{
    flow_map_jumps, generate_batched, one_step, renoise, solve_ode, Generated, OdeSolver,
    RenoiseAnchor, RenoiseSchedule,
};
use integration_flow::saved::Precision;
use integration_flow::train::{
    AdversarialConfig, AnchorPolicy, CheckpointInfo, ConsistencyConfig, DataParallelConfig,
    Distance, DistributionMatchingConfig, FlowMapConfig, FlowMapVelocity, LrDecay, OneStepTarget,
    OtSpace, PerceptualConfig, TrainConfig, Trainer,
};
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Serialize)]
#[command(about = "Train a one-step generator on MNIST; generate digits in one and four steps")]
struct Args {
    /// Flow family: rf, vp, ve or pfgmpp, optionally with fields (`ve:sigma_max=20`).
    #[arg(long, default_value = "rf")]
    flow: String,
    /// Training time budget in minutes.
    #[arg(long, default_value_t = 9.0)]
    minutes: f64,
    /// Stop after this many steps even if time is left.
    #[arg(long)]
    steps: Option<usize>,
    /// MNIST: a folder with the IDX files or an images IDX file; the bundled subset by default.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    /// Samples generated per sampler.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Images kept out of all training (the last N): the generated images' distance to their
    /// nearest training image is compared with theirs (a model that returns training images is
    /// not a generator). 0 trains on every image.
    #[arg(long, default_value_t = 1000)]
    holdout: usize,
    /// distill (the default): a denoiser trains for part of the budget, its ODE makes
    /// generated pairs, and a one-step student learns them (`integration_flow::pipeline`);
    /// ot: Integration Flow with optimal-transport anchors; off: the plain denoiser baseline.
    #[arg(long, default_value = "distill")]
    policy: String,
    /// Policy ot: principal directions the matching measures distances in (0: pixel space).
    #[arg(long, default_value_t = 16)]
    ot_pca: usize,
    /// Policy ot: draw anchors in the data's top K principal directions (0: isotropic
    /// Gaussian anchors matched in the --ot-pca space). 8 generated best of 0, 4, 8, 16 and
    /// 48 (docs/evidence.md).
    #[arg(long, default_value_t = 8)]
    subspace: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam's learning rate (after 100 warm-up steps); for distill, the teacher's.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Policies ot and off: the share of each batch trained at t_max, where one-step sampling
    /// evaluates the network (the rest at times from the flow's training law).
    #[arg(long, default_value_t = 0.0)]
    t_max_fraction: f64,
    /// Distill: reuse the denoiser trained in DIR (a `--policy off` run, or a distill run's
    /// `teacher/`, on the same data, flow and network) instead of training one.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Distill: the teacher's share of the budget.
    #[arg(long, default_value_t = DistillConfig::default().teacher_share)]
    teacher_share: f64,
    /// Distill: how the student learns, from generated pairs (`pairs`), from the training
    /// images and their latents by the teacher's ODE run backwards (`encoded`), by the
    /// consistency objective on the data (`consistency`, no pairs stage), as a flow-map
    /// network by the flow-map objective (`flow-map`, no pairs stage), from both kinds of
    /// pairs at once (`mixed`: --pairs generated pairs and one encoded pair per image), or as a
    /// flow-map network on generated pairs (`flow-map-pairs`: the pair's path from its latent,
    /// the jump from t_max regressed on the sample).
    #[arg(long, default_value = "flow-map")]
    method: String,
    /// Distill, method consistency: student steps per stage of the shrinking gap.
    #[arg(long, default_value_t = ConsistencyConfig::default().stage_steps)]
    stage_steps: usize,
    /// Distill, method consistency: the gap's shrink factor per stage.
    #[arg(long, default_value_t = ConsistencyConfig::default().q)]
    consistency_q: f64,
    /// Distill, methods flow-map and flow-map-pairs: the share of examples trained at r = t (the denoiser).
    #[arg(long, default_value_t = FlowMapConfig::default().denoise_share)]
    flow_map_denoise_share: f64,
    /// Distill, methods flow-map and flow-map-pairs: the share trained at r = t_min (the one-step jump).
    #[arg(long, default_value_t = FlowMapConfig::default().data_share)]
    flow_map_data_share: f64,
    /// Distill, methods flow-map and flow-map-pairs: the path of the finite difference, path (the training path,
    /// MeanFlow's conditional velocity) or ema (the EMA's own ODE).
    #[arg(long, default_value = "path")]
    flow_map_velocity: String,
    /// Distill, methods flow-map and flow-map-pairs: the tangent normalisation's c (0: off).
    #[arg(long, default_value_t = FlowMapConfig::default().normalize)]
    flow_map_normalize: f64,
    /// Distill, methods flow-map and flow-map-pairs: the target of the one-step examples (r = t_min), derivative
    /// (MeanFlow's identity) or two-jumps (the network's own jumps through the midpoint).
    #[arg(long, default_value = "derivative")]
    flow_map_one_step_target: String,
    /// Distill: generated pairs.
    #[arg(long, default_value_t = DistillConfig::default().pairs)]
    pairs: usize,
    /// Distill: Heun steps of the pairs' ODE solve (2·steps − 1 network calls).
    #[arg(long, default_value_t = DistillConfig::default().pair_steps)]
    pair_steps: usize,
    /// Distill: the student's learning rate (default: 3e-4; 1e-4 for flow-map, whose
    /// self-referential target needs smaller steps).
    #[arg(long)]
    student_lr: Option<f64>,
    /// Distill: stop the student after this many steps even if time is left.
    #[arg(long)]
    student_steps: Option<usize>,
    /// Distill: the share of each student batch trained at t_max.
    /// (default: 1 for pairs and encoded, whose student learns the jump from t_max; 0 for
    /// consistency and flow-map, whose objectives need every time)
    #[arg(long)]
    student_t_max_fraction: Option<f64>,
    /// Distill: the student's distance: l2 (squared L2), pseudo-huber (on the whole image,
    /// iCT's c), pseudo-huber-pixel (per value), l1, or adaptive (squared L2 over its
    /// stop-gradient (e + 1e-3)^p, MeanFlow's weighting, p from --student-adaptive-power);
    /// by default pseudo-huber for flow-map, the teacher's for the others.
    #[arg(long)]
    student_distance: Option<String>,
    /// Distill, --student-distance adaptive: the weight's exponent p (MeanFlow: 1 on ImageNet,
    /// 0.75 on CIFAR-10).
    #[arg(long, default_value_t = 1.0)]
    student_adaptive_power: f64,
    /// Distill: the student's learning rate after the warm-up: constant, or cosine (to
    /// --student-lr-floor times the peak at its last step).
    #[arg(long, default_value = "constant")]
    student_lr_decay: String,
    /// Distill: the last step's learning rate over the peak, with --student-lr-decay cosine.
    #[arg(long, default_value_t = 0.0)]
    student_lr_floor: f64,
    /// The time embedding's largest angular frequency (radians per unit of c_noise = t): the
    /// flow-map method needs a small one (its target differentiates the network in t); the
    /// crate's default embedding has 1000, which the denoiser alone does as well with.
    #[arg(long, default_value_t = NoiseEmbedding::SMOOTH_SCALE)]
    embedding_scale: f64,
    /// Seed of weights, training and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Preconditioning: integral (the papers') or edm. With edm, rectified flow runs on
    /// t ∈ [1e-3, 1 − 1e-3], where EDM's c_noise is finite.
    #[arg(long, default_value = "integral")]
    param: String,
    /// Also sample the curve: re-noising with 8 steps besides 2 and 4 (policies distill and
    /// ot), Euler with 4 steps and Heun with 4 (policy off).
    #[arg(long)]
    curve: bool,
    /// Earlier runs' output folders whose results.json join this run's FD-against-NFE figure,
    /// as `DIR` or `DIR=LABEL`.
    #[arg(long)]
    compare: Vec<String>,
    /// This run's name in figures (default from policy, flow and subspace).
    #[arg(long)]
    label: Option<String>,
    /// Only redraw `DIR/fd_vs_nfe.png` from `DIR/results.json` and the --compare runs.
    #[arg(long)]
    replot: bool,
    /// Score the samples in this NPY file instead of training.
    #[arg(long)]
    score: Option<PathBuf>,
    /// Where the FD classifier is cached.
    #[arg(long, default_value = "runs/mnist_classifier")]
    classifier: PathBuf,
    /// Seed of the FD classifier (a second seed gives a second, independent judge of the same
    /// samples; cache it in its own --classifier DIR).
    #[arg(long, default_value_t = 0)]
    classifier_seed: u64,
    /// Weight of a perceptual term in the distillation student's loss (0: none): the
    /// distance between its image and its target in the convolutions of a second classifier,
    /// trained on the training images only with its own seed (never the FD's classifier).
    #[arg(long, default_value_t = 0.0)]
    perceptual_weight: f64,
    /// Where the perceptual term's classifier is cached; its training time counts in the budget.
    #[arg(long, default_value = "runs/mnist_perceptual")]
    perceptual_classifier: PathBuf,
    /// Seed of the perceptual term's classifier (must differ from --classifier-seed).
    #[arg(long, default_value_t = 1)]
    perceptual_seed: u64,
    /// Weight of an adversarial term in the distillation student's loss (0: none): a critic
    /// trained beside the student tells its images of the data end from the batch's examples.
    #[arg(long, default_value_t = 0.0)]
    adversarial_weight: f64,
    /// The adversarial critic's learning rate.
    #[arg(long, default_value_t = 2e-4)]
    adversarial_lr: f64,
    /// Channels of the adversarial critic's first convolution.
    #[arg(long, default_value_t = 32)]
    adversarial_width: usize,
    /// Student steps at the start where only the adversarial critic learns.
    #[arg(long, default_value_t = 0)]
    adversarial_warmup: usize,
    /// Weight of a distribution-matching term in the distillation student's loss (0: none):
    /// its images of the data end are noised and pulled towards the teacher's denoising of
    /// them, away from that of a denoiser trained beside it on its own images (DMD).
    #[arg(long, default_value_t = 0.0)]
    dm_weight: f64,
    /// The distribution-matching fake denoiser's learning rate.
    #[arg(long, default_value_t = 1e-4)]
    dm_lr: f64,
    /// Updates of the distribution-matching fake denoiser per student step.
    #[arg(long, default_value_t = 1)]
    dm_fake_updates: usize,
    /// Student steps at the start without the distribution-matching term.
    #[arg(long, default_value_t = 0)]
    dm_warmup: usize,
    /// Also export the trained model (the EMA, what samples) to DIR: `model.safetensors` and
    /// `model.json`, for `IntegrationFlow::load` and `examples/generate`.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Precision of the exported weights: f32 or f16 (half the size).
    #[arg(long, default_value = "f32")]
    export_precision: String,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Share each step's batch between N worker threads whose gradients are summed
    /// (data-parallel training; built with --features data-parallel; not with the
    /// perceptual, adversarial or distribution-matching terms). 1: no workers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Continue the run whose checkpoint is in --out: train for --minutes more (or until
    /// --steps), then sample as usual.
    #[arg(long)]
    resume: bool,
    /// Device of training and sampling: cpu, or cuda (built with --features cuda). The FD
    /// classifier runs on the CPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Train the class-conditional model (the digit's label as an input) and sample the
    /// digits in equal numbers.
    #[arg(long)]
    conditional: bool,
    /// With --conditional: sample only digit K.
    #[arg(long)]
    class: Option<usize>,
    /// With --conditional: classifier-free guidance scale at sampling (1: none; otherwise two
    /// network evaluations per call).
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    /// With --conditional, methods flow-map and flow-map-pairs: classifier-free guidance
    /// trained into the student's one call (1: none). Default with --conditional: 2, which
    /// gave the best one-step class agreement and FD (docs/evidence.md, "Class-conditional
    /// MNIST").
    #[arg(long)]
    flow_map_guidance: Option<f64>,
    /// With --conditional, the pairs methods: the guidance of the teacher's ODE that makes the
    /// pairs (1: none).
    #[arg(long, default_value_t = 1.0)]
    pair_guidance: f64,
}

/// MNIST's classes.
const DIGITS: usize = 10;

/// One sampler's outcome.
#[derive(Serialize)]
struct SamplerResult {
    sampler: String,
    nfe: usize,
    fd: f64,
    class_histogram: Vec<usize>,
    seconds: f64,
    /// Mean distance of the samples (up to as many as are held out) to their nearest training
    /// image, over the same for the held-out images; `None` without --holdout.
    nn_ratio: Option<f64>,
    /// --conditional: the classifier's agreement with the requested digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<ClassAgreement>,
    /// --conditional (all digits): each digit's FD against the training images of that digit.
    #[serde(skip_serializing_if = "Option::is_none")]
    fd_per_class: Option<Vec<f64>>,
}

fn main() -> std::process::ExitCode {
    // Reuse freed tensor memory instead of faulting it back in every step (docs/benchmarks.md).
    integration_flow::backend::tune_allocator();
    if let Err(e) = integration_flow::train::interrupt::install() {
        eprintln!("warning: {e}; Ctrl-C will stop without a checkpoint");
    }
    integration_flow::train::interrupt::exit_code(
        main_run(),
        "cargo run --release --example mnist --",
    )
}

fn main_run() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let args = Args::parse();
    let form = match args.param.as_str() {
        "integral" => Parameterization::Integral,
        "edm" => Parameterization::Edm,
        other => return Err(format!("unknown --param {other:?}: use integral or edm").into()),
    };
    let mut flow_config: FlowConfig = args.flow.parse()?;
    if let (FlowConfig::Rf(rf), Parameterization::Edm) = (&mut flow_config, form) {
        if args.flow == "rf" {
            // The EDM form is singular where σ = 0 or α = 0: keep away from both ends.
            (rf.t_min, rf.t_max) = (1e-3, 1.0 - 1e-3);
        }
    }
    let flow = flow_config.init()?;
    let recipe = match args.policy.as_str() {
        "distill" => Recipe::Distill,
        "ot" => Recipe::Policy(AnchorPolicy::Ot),
        "off" => Recipe::Policy(AnchorPolicy::Off),
        other => return Err(format!("unknown policy {other:?}: use distill, ot or off").into()),
    };
    if args.teacher.is_some() && recipe != Recipe::Distill {
        return Err("--teacher goes with --policy distill".into());
    }
    let conditional_only = [
        ("--class", args.class.is_some()),
        ("--guidance", args.guidance != 1.0),
        (
            "--flow-map-guidance",
            args.flow_map_guidance.is_some_and(|w| w != 1.0),
        ),
        ("--pair-guidance", args.pair_guidance != 1.0),
    ];
    if let Some((flag, _)) = conditional_only
        .iter()
        .find(|(_, set)| *set && !args.conditional)
    {
        return Err(format!("{flag} needs --conditional").into());
    }
    if let Some(k) = args.class.filter(|&k| k >= DIGITS) {
        return Err(format!("--class {k}: the digits are 0..{}", DIGITS - 1).into());
    }
    if !(args.minutes.is_finite() && args.minutes > 0.0) || args.count == 0 || args.batch == 0 {
        return Err("--minutes, --count and --batch must be positive".into());
    }
    std::fs::create_dir_all(&args.out)?;
    let digits = mnist::load(args.data.as_deref())?;
    eprintln!("{} images {:?}", digits.len(), digits.shape());
    let device = Default::default();

    // The classifier first: a fresh machine pays for it once, and a failure shows early.
    let classifier = Classifier::<Cpu>::load_or_train::<CpuAutodiff>(
        &args.classifier,
        &digits,
        &ClassifierConfig {
            seed: args.classifier_seed,
            ..Default::default()
        },
        &device,
    )?;
    eprintln!(
        "classifier: {:.2}% held-out accuracy ({:.0} s so far)",
        100.0 * classifier.test_accuracy(),
        started.elapsed().as_secs_f64()
    );
    if args.replot {
        let (label, points) = read_results(&args.out)?;
        fd_figure(&args, &args.label.clone().unwrap_or(label), points)?;
        return Ok(());
    }
    if let Some(path) = &args.score {
        let array = read_npy(path)?;
        let NpyData::F32(values) = array.data else {
            return Err(format!("{}: expected float32 samples", path.display()).into());
        };
        let dim = digits.dataset().dim();
        let n = args.count.min(values.len() / dim);
        let score = classifier.score(&values[..n * dim], digits.dataset().values())?;
        eprintln!("classes {:?}", score.class_histogram);
        println!("fd={:.4} count={n}", score.fd);
        return Ok(());
    }

    let setup = Setup {
        form,
        flow,
        recipe,
        digits,
        classifier,
        started,
    };
    match args.device.as_str() {
        "cpu" => run::<CpuAutodiff>(&args, setup, Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" if !integration_flow::backend::cuda_driver_available() => {
            Err("--device cuda: no NVIDIA driver (libcuda.so.1) on this machine".into())
        }
        #[cfg(feature = "cuda")]
        "cuda" => run::<integration_flow::backend::CudaAutodiff>(&args, setup, Default::default()),
        other => Err(format!(
            "unknown device {other:?}: use cpu, or cuda in a build with --features cuda"
        )
        .into()),
    }
}

/// What `main` prepared on the CPU before training starts.
struct Setup {
    form: Parameterization,
    flow: Arc<dyn ProbabilityFlow>,
    recipe: Recipe,
    digits: integration_flow::data::Images,
    classifier: Classifier<Cpu>,
    started: Instant,
}

/// Trains on `device` (or resumes), samples, scores and writes the results.
fn run<B: AutodiffBackend>(
    args: &Args,
    setup: Setup,
    device: B::Device,
) -> Result<(), Box<dyn std::error::Error>> {
    let Setup {
        form,
        flow,
        recipe,
        digits,
        classifier,
        started,
    } = setup;
    // The held-out images are the last ones; FD is measured against the training images.
    // A conditional run trains on the digits with their labels.
    let training = |images: &integration_flow::data::Images| match args.conditional {
        true => images.labelled_dataset(DIGITS),
        false => Ok(images.dataset().clone()),
    };
    let (data, held) = match args.holdout {
        0 => (training(&digits)?, None),
        n => {
            let (train, held) = digits.split_off(n)?;
            (training(&train)?, Some(held.dataset().clone()))
        }
    };
    let (_, sigma_data) = data.mean_and_std();
    let [c, h, w] = digits.shape();
    let unet = UNetConfig {
        channels: c,
        height: h,
        width: w,
        embedding: NoiseEmbedding::sinusoidal(args.embedding_scale),
        classes: args.conditional.then(|| ClassInput::new(DIGITS)),
        ..Default::default()
    };
    if let Some(teacher) = &args.teacher {
        check_embedding(teacher, &unet.embedding)?;
    }
    if args.resume {
        // Before config.json is rewritten with this run's embedding.
        check_embedding(&args.out, &unet.embedding)?;
    }
    let net = unet.init::<B>(&device, args.seed)?;
    // The trainer replaces the law by its coupling's; this one serves runs that only sample.
    let anchor_law = match recipe {
        Recipe::Distill | Recipe::Policy(AnchorPolicy::Off) => AnchorLaw::Zero,
        Recipe::Policy(
            AnchorPolicy::Ot | AnchorPolicy::Prediction | AnchorPolicy::Data | AnchorPolicy::Frozen,
        ) => AnchorLaw::Gaussian { scale: 1.0 },
    };
    // The distillation's teacher is the plain denoiser.
    let policy = match recipe {
        Recipe::Distill => AnchorPolicy::Off,
        Recipe::Policy(policy) => policy,
    };
    let model = IntegrationFlowConfig {
        parameterization: form,
        sigma_data: Some(sigma_data),
        anchor_law,
    }
    .init(flow, net)?;
    let mut config = TrainConfig {
        seed: args.seed,
        steps: args.steps.unwrap_or(1_000_000),
        batch_size: args.batch,
        log_every: 25,
        checkpoint_every: args.checkpoint_every,
        t_max_fraction: args.t_max_fraction,
        data_parallel: (args.workers > 1).then(|| DataParallelConfig {
            workers: args.workers,
            ..Default::default()
        }),
        ..Default::default()
    };
    config.optimizer.lr = args.lr;
    config.anchor.policy = policy;
    if policy == AnchorPolicy::Ot {
        config.anchor.subspace = args.subspace;
    }
    config.anchor.ot_space = match args.ot_pca {
        0 => OtSpace::Data,
        dims => OtSpace::Pca { dims },
    };
    #[derive(Serialize)]
    struct RunConfig<'a> {
        args: &'a Args,
        sigma_data: f64,
        network: &'a UNetConfig,
        train: &'a TrainConfig,
    }
    integration_flow::data::write_atomically(
        args.out.join("config.json"),
        serde_json::to_string_pretty(&RunConfig {
            args,
            sigma_data,
            network: &unet,
            train: &config,
        })?,
    )?;

    // Checked before training, not after it.
    let precision = match args.export_precision.as_str() {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        other => {
            return Err(format!("unknown --export-precision {other:?}: use f32 or f16").into())
        }
    };
    let mut budget = Duration::from_secs_f64(args.minutes * 60.0);
    let (trainer, trained) = if recipe == Recipe::Distill {
        let features = match args.perceptual_weight {
            0.0 => None,
            _ => {
                let train = match args.holdout {
                    0 => digits.clone(),
                    n => digits.split_off(n)?.0,
                };
                let features = perceptual_classifier::<B>(args, &train, &device)?;
                // The recipe's own network: its training time is the budget's.
                let spent = Duration::from_secs_f64(features.train_seconds());
                budget = budget.checked_sub(spent).ok_or_else(|| {
                    format!(
                        "the perceptual classifier's {:.0} s exceed the --minutes budget",
                        spent.as_secs_f64()
                    )
                })?;
                Some(features)
            }
        };
        train_distilled(args, model, &data, config, budget, features)?
    } else if args.perceptual_weight != 0.0
        || args.adversarial_weight != 0.0
        || args.dm_weight != 0.0
    {
        return Err(
            "--perceptual-weight, --adversarial-weight and --dm-weight apply to the \
                    distillation's student (--policy distill)"
                .into(),
        );
    } else {
        train_one(args, model, &data, config, budget)?
    };
    if let Some(dir) = &args.export {
        trainer.export(dir, precision)?;
        eprintln!("exported to {} ({precision:?})", dir.display());
    }
    evaluate(
        args,
        &trainer,
        recipe,
        trained,
        &classifier,
        (&data, held.as_ref()),
        [c, h, w],
        started,
    )
}

/// The perceptual term's classifier on the training images (cached in
/// `--perceptual-classifier`), frozen, on the training backend. It must not be the classifier
/// that scores the samples, or the student would be trained on the measurement.
fn perceptual_classifier<B: AutodiffBackend>(
    args: &Args,
    train: &integration_flow::data::Images,
    device: &B::Device,
) -> Result<Classifier<B>, Box<dyn std::error::Error>> {
    if args.perceptual_seed == args.classifier_seed {
        return Err(format!(
            "--perceptual-seed {} is the FD classifier's seed: the perceptual term would train on \
             the measurement; choose another",
            args.perceptual_seed
        )
        .into());
    }
    if args.perceptual_classifier == args.classifier {
        return Err("--perceptual-classifier must not be the FD classifier's --classifier".into());
    }
    let config = ClassifierConfig {
        seed: args.perceptual_seed,
        ..Default::default()
    };
    let trained = Classifier::<Cpu>::load_or_train::<CpuAutodiff>(
        &args.perceptual_classifier,
        train,
        &config,
        &Default::default(),
    )?;
    eprintln!(
        "perceptual classifier (seed {}): {:.2}% held-out accuracy, {:.0} s of training",
        args.perceptual_seed,
        100.0 * trained.test_accuracy(),
        trained.train_seconds()
    );
    // The same weights on the training backend, frozen.
    let features = Classifier::<B>::load(&args.perceptual_classifier, device)?
        .ok_or("the perceptual classifier's cache vanished")?;
    Ok(features.frozen())
}

/// A trained run: the trainer whose EMA model samples, and what training did.
type Run<B> = (Trainer<B, UNet<B>>, Trained);

/// The flow-map objective's settings from the `--flow-map-*` flags.
fn flow_map_config(args: &Args) -> Result<FlowMapConfig, Box<dyn std::error::Error>> {
    Ok(FlowMapConfig {
        denoise_share: args.flow_map_denoise_share,
        data_share: args.flow_map_data_share,
        normalize: args.flow_map_normalize,
        velocity: match args.flow_map_velocity.as_str() {
            "ema" => FlowMapVelocity::Ema,
            "path" => FlowMapVelocity::Path,
            other => {
                return Err(
                    format!("unknown --flow-map-velocity {other:?}: use ema or path").into(),
                )
            }
        },
        one_step_target: match args.flow_map_one_step_target.as_str() {
            "derivative" => OneStepTarget::Derivative,
            "two-jumps" => OneStepTarget::TwoJumps,
            other => {
                return Err(format!(
                    "unknown --flow-map-one-step-target {other:?}: use derivative or two-jumps"
                )
                .into())
            }
        },
        guidance: flow_map_guidance(args),
        ..Default::default()
    })
}

/// The guidance trained into a flow-map student: the flag's, else 2 for a conditional run
/// (the measured best), else none.
fn flow_map_guidance(args: &Args) -> f64 {
    match (args.flow_map_guidance, args.conditional) {
        (Some(w), _) => w,
        (None, true) => CONDITIONAL_FLOW_MAP_GUIDANCE,
        (None, false) => 1.0,
    }
}

/// `--flow-map-guidance`'s default with `--conditional`.
const CONDITIONAL_FLOW_MAP_GUIDANCE: f64 = 2.0;

/// Runs (or resumes) the distillation pipeline within `budget`; the student's trainer.
fn train_distilled<B: AutodiffBackend>(
    args: &Args,
    model: IntegrationFlow<B, UNet<B>>,
    data: &Dataset,
    config: TrainConfig,
    budget: Duration,
    features: Option<Classifier<B>>,
) -> Result<Run<B>, Box<dyn std::error::Error>> {
    let method = match args.method.as_str() {
        "pairs" => DistillMethod::GeneratedPairs,
        "encoded" => DistillMethod::Encoded,
        "mixed" => DistillMethod::Mixed,
        "consistency" => DistillMethod::Consistency(ConsistencyConfig {
            stage_steps: args.stage_steps,
            q: args.consistency_q,
            ..Default::default()
        }),
        "flow-map" => DistillMethod::FlowMap(flow_map_config(args)?),
        "flow-map-pairs" => DistillMethod::FlowMapPairs(flow_map_config(args)?),
        other => {
            return Err(format!(
                "unknown --method {other:?}: use pairs, encoded, mixed, consistency, flow-map or \
                 flow-map-pairs"
            )
            .into())
        }
    };
    // The method's student defaults (learning rate, distance), which the flags override.
    let defaults = DistillConfig::with_method(method);
    let student_distance = match args.student_distance.as_deref() {
        None => defaults.student_distance,
        Some("l2") => Some(Distance::SquaredL2),
        Some("pseudo-huber") => Some(Distance::PseudoHuber { c: None }),
        Some("pseudo-huber-pixel") => Some(Distance::PseudoHuberElementwise { c: None }),
        Some("l1") => Some(Distance::L1),
        Some("adaptive") => Some(Distance::AdaptiveL2 {
            power: args.student_adaptive_power,
            c: 1e-3,
        }),
        Some(other) => {
            return Err(format!(
                "unknown --student-distance {other:?}: use l2, pseudo-huber, pseudo-huber-pixel, \
                 l1 or adaptive"
            )
            .into())
        }
    };
    let student_lr_decay = match args.student_lr_decay.as_str() {
        "constant" => LrDecay::Constant,
        "cosine" => LrDecay::Cosine {
            floor: args.student_lr_floor,
        },
        other => {
            return Err(
                format!("unknown --student-lr-decay {other:?}: use constant or cosine").into(),
            )
        }
    };
    let distill = DistillConfig {
        student_lr: args.student_lr.unwrap_or(defaults.student_lr),
        teacher_share: args.teacher_share,
        pairs: args.pairs,
        pair_steps: args.pair_steps,
        student_t_max_fraction: args.student_t_max_fraction,
        student_steps: args.student_steps.unwrap_or(defaults.student_steps),
        student_distance,
        student_lr_decay,
        student_perceptual: features.as_ref().map(|_| PerceptualConfig {
            weight: args.perceptual_weight,
        }),
        student_adversarial: (args.adversarial_weight != 0.0).then_some(AdversarialConfig {
            weight: args.adversarial_weight,
            image: [1, 28, 28],
            width: args.adversarial_width,
            lr: args.adversarial_lr,
            critic_warmup: args.adversarial_warmup,
        }),
        student_distribution_matching: (args.dm_weight != 0.0).then_some(
            DistributionMatchingConfig {
                weight: args.dm_weight,
                lr: args.dm_lr,
                fake_updates: args.dm_fake_updates,
                warmup: args.dm_warmup,
            },
        ),
        pair_guidance: args.pair_guidance,
        ..defaults
    };
    let mut run = Distillation::new(&args.out, model, data.clone(), config, distill)?
        .with_log(|m| eprintln!("{m}"));
    if let Some(teacher) = &args.teacher {
        run = run.with_teacher(teacher);
    }
    if let Some(features) = features {
        run = run.with_student_features(Box::new(features));
    }
    if !args.resume {
        run.start_over()?;
    }
    let train_started = Instant::now();
    let student = run.run_for(budget)?;
    let state = run.state()?.ok_or("the pipeline left no state")?;
    let teacher_steps = CheckpointInfo::read(run.teacher_dir())?.step;
    eprintln!(
        "teacher {teacher_steps} steps ({:.0} s), pairs {:.0} s, student {} steps ({:.0} s)",
        state.seconds[0],
        state.seconds[1],
        student.step(),
        state.seconds[2]
    );
    // The encoded latents' distance from the prior, where the run made some.
    let latents = match run.encoded_latents_path() {
        Some(path) => {
            let values = match read_npy(&path)?.data {
                NpyData::F32(values) => values,
                _ => return Err(format!("{}: not float32", path.display()).into()),
            };
            let stats = LatentStats::measure(&values, data.dim(), args.seed)?;
            eprintln!("encoded latents against the prior: {stats:?}");
            Some(stats)
        }
        None => None,
    };
    let trained = Trained {
        steps: teacher_steps + student.step(),
        seconds: train_started.elapsed().as_secs_f64(),
        stages: Some((teacher_steps, state.seconds)),
        latents,
    };
    Ok((student, trained))
}

/// How far the encoded latents are from the N(0, I) draws that sampling feeds the student, each
/// figure beside the same for as many prior draws.
#[derive(Clone, Debug, Serialize)]
struct LatentStats {
    /// Mean and standard deviation over latents of each latent's RMS value.
    rms: [f64; 2],
    prior_rms: [f64; 2],
    /// Sliced W2 to as many prior draws; `prior_sw2` is that between two sets of prior draws
    /// (the estimate's noise floor).
    sw2: f64,
    prior_sw2: f64,
    /// Correlation of horizontally neighbouring pixels (0 for white noise).
    neighbour_correlation: f64,
    prior_neighbour_correlation: f64,
}

impl LatentStats {
    fn measure(latents: &[f32], dim: usize, seed: u64) -> integration_flow::Result<LatentStats> {
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1a7e);
        let mut prior = || -> Vec<f32> {
            (0..latents.len())
                .map(|_| StandardNormal.sample(&mut rng))
                .collect()
        };
        let (a, b) = (prior(), prior());
        let rms = |values: &[f32]| -> [f64; 2] {
            let r: Vec<f64> = values
                .chunks(dim)
                .map(|row| {
                    (row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / dim as f64).sqrt()
                })
                .collect();
            let mean = r.iter().sum::<f64>() / r.len() as f64;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / r.len() as f64;
            [mean, var.sqrt()]
        };
        // Pixels of one row of the 28×28 image, each with its right neighbour.
        let neighbours = |values: &[f32]| -> f64 {
            let side = (dim as f64).sqrt() as usize;
            let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
            for row in values.chunks(dim) {
                for (i, pair) in row.windows(2).enumerate() {
                    if (i + 1) % side != 0 {
                        let (x, y) = (f64::from(pair[0]), f64::from(pair[1]));
                        xy += x * y;
                        xx += x * x;
                        yy += y * y;
                    }
                }
            }
            xy / (xx * yy).sqrt()
        };
        let sw2 = |x: &[f32], y: &[f32]| {
            integration_flow::metrics::sliced_wasserstein2(x, y, dim, 256, seed)
        };
        Ok(LatentStats {
            rms: rms(latents),
            prior_rms: rms(&a),
            sw2: sw2(latents, &a)?,
            prior_sw2: sw2(&b, &a)?,
            neighbour_correlation: neighbours(latents),
            prior_neighbour_correlation: neighbours(&a),
        })
    }
}

/// Trains (or resumes) one model with an anchor policy for `budget`.
fn train_one<B: AutodiffBackend>(
    args: &Args,
    model: IntegrationFlow<B, UNet<B>>,
    data: &Dataset,
    config: TrainConfig,
    budget: Duration,
) -> Result<Run<B>, Box<dyn std::error::Error>> {
    let setup = Instant::now();
    let trainer = if args.resume {
        let mut trainer = Trainer::resume(&args.out, model, data.clone())?;
        trainer.set_steps(config.steps)?;
        eprintln!("resuming at step {}", trainer.step());
        trainer
    } else {
        Trainer::new(model, data.clone(), config)?
    };
    let mut trainer = trainer
        .with_checkpoint_dir(&args.out)
        .with_metrics_log(args.out.join("metrics.jsonl"))?;
    eprintln!("anchors ready in {:.1} s", setup.elapsed().as_secs_f64());
    let train_started = Instant::now();
    trainer.train_for(budget)?;
    let train_seconds = train_started.elapsed().as_secs_f64();
    eprintln!("trained {} steps in {train_seconds:.0} s", trainer.step());
    let trained = Trained {
        steps: trainer.step(),
        seconds: train_seconds,
        stages: None,
        latents: None,
    };
    Ok((trainer, trained))
}

/// What training did: all steps (teacher and student for distill), the seconds, and for
/// distill the teacher's steps and each stage's seconds.
struct Trained {
    steps: usize,
    seconds: f64,
    stages: Option<(usize, [f64; 3])>,
    /// Distill, method encoded: the latents' distance to the prior.
    latents: Option<LatentStats>,
}

/// Samples the trained model, scores and saves the samples, writes the results and prints the
/// last line.
#[allow(clippy::too_many_arguments)]
fn evaluate<B: AutodiffBackend>(
    args: &Args,
    trainer: &Trainer<B, UNet<B>>,
    recipe: Recipe,
    trained: Trained,
    classifier: &Classifier<Cpu>,
    (data, held): (&Dataset, Option<&Dataset>),
    [c, h, w]: [usize; 3],
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let ema = trainer.ema_model();
    let dim = c * h * w;
    // A conditional run's request: the digit of each sample (in batches of 250, a multiple of
    // ten, so that each batch asks for 0, 1, …, 9 in turn like the whole run).
    let requested: Vec<usize> = match (args.conditional, args.class) {
        (false, _) => Vec::new(),
        (true, Some(k)) => vec![k; args.count],
        (true, None) => (0..args.count).map(|i| i % DIGITS).collect(),
    };
    let model_for = |n: usize| -> integration_flow::Result<_> {
        if !args.conditional {
            return Ok(ema.clone());
        }
        let classes = match args.class {
            Some(k) => Classes::All(k),
            None => Classes::each((0..n).map(|i| i % DIGITS)),
        };
        ema.clone()
            .with_classes(classes)?
            .with_guidance(args.guidance)
    };
    let real_by_class: Vec<Vec<f32>> = match data.labels() {
        Some(labels) if args.class.is_none() => (0..DIGITS)
            .map(|k| {
                (0..data.len())
                    .filter(|&i| labels[i] == k)
                    .flat_map(|i| data.row(i).iter().copied())
                    .collect()
            })
            .collect(),
        _ => Vec::new(),
    };
    let held_nn = match held {
        Some(held) => Some((
            held.len(),
            nearest_neighbour_distance(held.values(), data.values(), dim)?,
        )),
        None => None,
    };
    type Sampler<'a, I> = &'a dyn Fn(&mut StdRng, usize) -> integration_flow::Result<Generated<I>>;
    let sample = |name: &str,
                  f: Sampler<B::InnerBackend>|
     -> Result<(Vec<f32>, usize, f64), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(1_000_003));
        // Under guidance the samplers count two evaluations per call.
        let (values, nfe) = generate_batched(args.count, 250, |n| f(&mut rng, n))?;
        // The data range is [-1, 1]: clamp like image samplers do before saving.
        let values: Vec<f32> = values.into_iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let seconds = t.elapsed().as_secs_f64();
        eprintln!("{name}: {nfe} NFE, {seconds:.0} s");
        Ok((values, nfe, seconds))
    };
    let mut results = Vec::new();
    let mut record = |name: &str, values: &[f32], nfe: usize, seconds: f64| {
        let ImageScore {
            fd,
            class_histogram,
        } = classifier.score(values, data.values())?;
        eprintln!("{name}: fd {fd:.3}, classes {class_histogram:?}");
        let accuracy = match requested.is_empty() {
            true => None,
            false => {
                let predicted: Vec<usize> = classifier
                    .classify(values)?
                    .into_iter()
                    .map(usize::from)
                    .collect();
                let agreement = ClassAgreement::new(&requested, &predicted, DIGITS)?;
                eprintln!(
                    "{name}: accuracy {:.4} (worst digit {:.4})",
                    agreement.overall,
                    agreement.worst().unwrap_or(f64::NAN)
                );
                Some(agreement)
            }
        };
        let fd_per_class = match real_by_class.is_empty() {
            true => None,
            false => {
                let mut per_class = Vec::with_capacity(DIGITS);
                for (k, real) in real_by_class.iter().enumerate() {
                    let ours: Vec<f32> = values
                        .chunks(dim)
                        .zip(&requested)
                        .filter(|(_, &r)| r == k)
                        .flat_map(|(x, _)| x.iter().copied())
                        .collect();
                    per_class.push(classifier.score(&ours, real)?.fd);
                }
                Some(per_class)
            }
        };
        let nn_ratio = match held_nn {
            Some((n, held)) => {
                let n = n.min(values.len() / dim);
                let generated = nearest_neighbour_distance(&values[..n * dim], data.values(), dim)?;
                eprintln!(
                    "{name}: nearest training image at {generated:.3} on average, held-out \
                     images at {held:.3} (ratio {:.3})",
                    generated / held
                );
                Some(generated / held)
            }
            None => None,
        };
        results.push(SamplerResult {
            sampler: name.to_string(),
            nfe,
            fd,
            class_histogram,
            seconds,
            nn_ratio,
            accuracy,
            fd_per_class,
        });
        Ok::<f64, Box<dyn std::error::Error>>(fd)
    };
    let save = |tag: &str, values: &[f32]| -> Result<(), Box<dyn std::error::Error>> {
        write_npy_f32(
            args.out.join(format!("samples_{tag}.npy")),
            values,
            &[args.count, dim],
        )?;
        if args.count >= 64 {
            image_grid_png(
                args.out.join(format!("grid_{tag}.png")),
                values,
                [c, h, w],
                8,
                8,
                2,
            )?;
        }
        Ok(())
    };

    let fd_one_step = if recipe == Recipe::Policy(AnchorPolicy::Off) {
        // The baseline: the denoiser through the ODE solvers.
        let mut first = None;
        let mut solvers = vec![("nfe1", OdeSolver::Euler { steps: 1 })];
        if args.curve {
            solvers.push(("euler4", OdeSolver::Euler { steps: 4 }));
            solvers.push(("heun4", OdeSolver::Heun { steps: 4 }));
        }
        solvers.push(("heun", OdeSolver::Heun { steps: 8 }));
        solvers.push((
            "dopri5",
            OdeSolver::Dopri5 {
                rtol: 1e-3,
                atol: 1e-3,
            },
        ));
        for (tag, solver) in solvers {
            let (values, nfe, seconds) =
                sample(tag, &|rng, n| solve_ode(&model_for(n)?, rng, n, solver))?;
            let fd = record(&solver.label(), &values, nfe, seconds)?;
            save(tag, &values)?;
            first.get_or_insert(fd);
        }
        first.unwrap_or(f64::NAN)
    } else {
        let (one, nfe, seconds) = sample("one step", &|rng, n| one_step(&model_for(n)?, rng, n))?;
        let fd = record("one step", &one, nfe, seconds)?;
        save("nfe1", &one)?;
        if !requested.is_empty() {
            class_grid(args, &one, &requested, [c, h, w])?;
        }
        let steps: &[usize] = if args.curve { &[2, 4, 8] } else { &[2, 4] };
        for &k in steps {
            let times = RenoiseSchedule::default().times(ema.flow().as_ref(), k)?;
            let name = format!("re-noising, {k} steps");
            let (values, nfe, seconds) = sample(&name, &|rng, n| {
                renoise(&model_for(n)?, rng, n, &times, RenoiseAnchor::Fixed)
            })?;
            record(&name, &values, nfe, seconds)?;
            if k == 4 {
                save("nfe4", &values)?;
            }
            if ema.net().takes_target_time() {
                // A flow-map student also jumps deterministically through the same times.
                let name = format!("flow-map jumps, {k} steps");
                let (values, nfe, seconds) = sample(&name, &|rng, n| {
                    flow_map_jumps(&model_for(n)?, rng, n, &times)
                })?;
                record(&name, &values, nfe, seconds)?;
            }
        }
        fd
    };
    let label = args.label.clone().unwrap_or_else(|| default_label(args));
    let points: Vec<(String, f64, f64)> = results
        .iter()
        .map(|r| (r.sampler.clone(), r.nfe as f64, r.fd))
        .collect();
    fd_figure(args, &label, points)?;
    #[derive(Serialize)]
    struct Results<'a> {
        label: String,
        steps: usize,
        train_seconds: f64,
        /// Distill: the teacher's steps (the rest are the student's).
        teacher_steps: Option<usize>,
        /// Distill: the seconds of the teacher, the pairs and the student.
        stage_seconds: Option<[f64; 3]>,
        classifier_accuracy: f64,
        samplers: &'a [SamplerResult],
        /// Distill, method encoded: the latents' distance to the prior.
        encoded_latents: Option<LatentStats>,
    }
    integration_flow::data::write_atomically(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&Results {
            label: label.clone(),
            steps: trained.steps,
            train_seconds: trained.seconds,
            teacher_steps: trained.stages.map(|s| s.0),
            stage_seconds: trained.stages.map(|s| s.1),
            classifier_accuracy: classifier.test_accuracy(),
            samplers: &results,
            encoded_latents: trained.latents.clone(),
        })?,
    )?;
    // A conditional run's last line adds the first sampler's agreement with the requests.
    let accuracy = match results.first().and_then(|r| r.accuracy.as_ref()) {
        Some(agreement) => {
            let labels: Vec<i64> = requested.iter().map(|&k| k as i64).collect();
            write_npy_i64(args.out.join("labels.npy"), &labels, &[labels.len()])?;
            format!(" accuracy={:.4}", agreement.overall)
        }
        None => String::new(),
    };
    println!(
        "fd={fd_one_step:.4}{accuracy} steps={} seconds={:.1}",
        trained.steps,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `DIR/grid_by_class.png`: one row per requested digit (in order), its first ten samples.
fn class_grid(
    args: &Args,
    values: &[f32],
    requested: &[usize],
    shape: [usize; 3],
) -> Result<(), Box<dyn std::error::Error>> {
    let dim: usize = shape.iter().product();
    const PER_ROW: usize = 10;
    let mut rows = Vec::new();
    for k in 0..DIGITS {
        let row: Vec<&[f32]> = values
            .chunks(dim)
            .zip(requested)
            .filter(|(_, &r)| r == k)
            .map(|(x, _)| x)
            .take(PER_ROW)
            .collect();
        if row.is_empty() {
            continue;
        }
        let mut pixels: Vec<f32> = row.concat();
        // A short row is padded with black images.
        pixels.resize(PER_ROW * dim, -1.0);
        rows.push(pixels);
    }
    image_grid_png(
        args.out.join("grid_by_class.png"),
        &rows.concat(),
        shape,
        rows.len(),
        PER_ROW,
        2,
    )?;
    Ok(())
}

/// The time embedding is not a parameter, so a checkpoint cannot tell it: a teacher (or a
/// resumed run) trained with another `--embedding-scale` would load and sample wrongly. Its
/// run's `config.json` (in DIR, or in the distill run above a `teacher/` folder) records it.
fn check_embedding(
    teacher: &std::path::Path,
    ours: &NoiseEmbedding,
) -> Result<(), Box<dyn std::error::Error>> {
    let candidates = [
        teacher.join("config.json"),
        teacher.join("..").join("config.json"),
    ];
    let Some(path) = candidates.iter().find(|p| p.exists()) else {
        eprintln!(
            "warning: no config.json in or above {}: the teacher's time embedding is not checked",
            teacher.display()
        );
        return Ok(());
    };
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let theirs: NoiseEmbedding = serde_json::from_value(config["network"]["embedding"].clone())
        .map_err(|e| format!("{}: no network.embedding ({e})", path.display()))?;
    if &theirs != ours {
        return Err(format!(
            "the run in {} was trained with the time embedding {theirs:?}, this one's is \
             {ours:?}: give its --embedding-scale (runs before 2026-12-05 used 1000)",
            teacher.display()
        )
        .into());
    }
    Ok(())
}

/// What the run trains: the distillation pipeline, or one model with an anchor policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recipe {
    Distill,
    Policy(AnchorPolicy),
}

fn default_label(args: &Args) -> String {
    match (args.policy.as_str(), args.subspace) {
        ("distill", _) => {
            let student = match args.method.as_str() {
                "flow-map" => "a flow-map student",
                "flow-map-pairs" => "a flow-map student of generated pairs",
                "mixed" => "distilled from generated and encoded pairs",
                "consistency" => "a consistency student",
                "encoded" => "distilled from encoded pairs",
                _ => "distilled from generated pairs",
            };
            format!("IF ({}, {student})", args.flow)
        }
        ("off", _) => format!("denoiser + ODE ({})", args.flow),
        (_, 0) => format!("IF ({}, isotropic anchors)", args.flow),
        (_, k) => format!("IF ({}, subspace {k})", args.flow),
    }
}

/// A run's label and its (sampler, NFE, FD) points.
type Curve = (String, Vec<(String, f64, f64)>);

/// The label and (NFE, FD) points of a finished run.
fn read_results(dir: &std::path::Path) -> Result<Curve, Box<dyn std::error::Error>> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let run: serde_json::Value = serde_json::from_str(&text)?;
    let points = run["samplers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    let sampler = r["sampler"].as_str().unwrap_or_default().to_string();
                    Some((sampler, r["nfe"].as_f64()?, r["fd"].as_f64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let label = run["label"].as_str().unwrap_or("earlier run").to_string();
    Ok((label, points))
}

/// A run's lines in the FD figure: a flow-map student's deterministic jumps are a line of
/// their own (from its one step), beside the one step and re-noising; every other run is one
/// line in the order it was sampled.
fn run_lines(label: String, points: Vec<(String, f64, f64)>) -> Vec<(String, Vec<(f64, f64)>)> {
    let is_jump = |sampler: &str| sampler.starts_with("flow-map jumps");
    let line = |keep: &dyn Fn(&str) -> bool| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|(sampler, _, _)| keep(sampler))
            .map(|&(_, nfe, fd)| (nfe, fd))
            .collect()
    };
    let others = line(&|sampler| !is_jump(sampler));
    if !points.iter().any(|(sampler, _, _)| is_jump(sampler)) {
        return vec![(label, others)];
    }
    let jumps = line(&|sampler| sampler == "one step" || is_jump(sampler));
    vec![
        (format!("{label}, re-noising"), others),
        (format!("{label}, jumps"), jumps),
    ]
}

/// `DIR/fd_vs_nfe.png`: this run's curve and those of the --compare runs.
fn fd_figure(
    args: &Args,
    label: &str,
    points: Vec<(String, f64, f64)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut curves = run_lines(label.to_string(), points);
    for spec in &args.compare {
        let (dir, name) = match spec.rsplit_once('=') {
            Some((dir, name)) => (dir, Some(name.to_string())),
            None => (spec.as_str(), None),
        };
        let (own, points) = read_results(std::path::Path::new(dir))?;
        curves.extend(run_lines(name.unwrap_or(own), points));
    }
    let series: Vec<Series> = curves
        .iter()
        .zip(PALETTE.iter().cycle())
        .map(|((name, points), &colour)| Series {
            name,
            points,
            colour,
        })
        .collect();
    line_chart_png(
        args.out.join("fd_vs_nfe.png"),
        "MNIST: classifier FD against network calls",
        "NFE",
        "FD",
        &series,
        640,
        420,
    )?;
    Ok(())
}
