//! Distillation through generated pairs: a denoiser's ODE solutions from prior draws become the
//! training pairs of a one-step student ([`PairedAnchors::generated`], the latent as the path's
//! noise), which starts from the teacher's weights and resumes like any run.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;

use burn::tensor::{Tensor, TensorData};
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::{AnchorLaw, AnchorPolicy, PairedAnchors};
use integration_flow::data::{Dataset, Toy};
use integration_flow::model::IntegrationFlow;
use integration_flow::nn::{Mlp, MlpConfig};
use integration_flow::sample::{ode_pairs, solve_ode_from, OdeSolver};
use integration_flow::train::{TrainConfig, Trainer};
use rand::SeedableRng;
use std::sync::Arc;

fn mlp() -> MlpConfig {
    MlpConfig {
        width: 64,
        depth: 3,
        ..Default::default()
    }
}

fn model() -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
    common::rf_mlp(64, 3)
}

fn config(steps: usize, lr: f64) -> TrainConfig {
    let mut config = TrainConfig {
        steps,
        batch_size: 256,
        progress: false,
        ..Default::default()
    };
    config.optimizer.lr = lr;
    config.anchor.policy = AnchorPolicy::Off;
    config
}

/// Mean squared distance between two `[n, dim]` tensors' rows.
fn msd(a: Tensor<Cpu, 2>, b: Tensor<Cpu, 2>) -> f64 {
    let [n, _] = a.dims();
    let d: Vec<f32> = (a - b)
        .powi_scalar(2)
        .sum_dim(1)
        .into_data()
        .to_vec()
        .unwrap();
    d.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64
}

#[test]
fn a_student_of_generated_pairs_maps_latents_to_the_teachers_ode_solutions() {
    let data = Toy::Moons.sample(4096, 1).unwrap();
    let mut teacher = Trainer::new(model(), data.clone(), config(800, 2e-3)).unwrap();
    teacher.fit().unwrap();
    let solver = OdeSolver::Heun { steps: 8 };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let pairs = ode_pairs(
        &teacher.ema_model(),
        &mut rng,
        4096,
        solver,
        1024,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(pairs.nfe, 15);

    // A template of another shape is refused, not silently half-loaded.
    let wide = MlpConfig { width: 32, ..mlp() };
    assert!(teacher
        .ema_as_trainable(wide.init(&Default::default(), 9).unwrap())
        .is_err());
    let student_net = teacher.ema_as_trainable(mlp().init(&Default::default(), 9).unwrap());
    let student_model = model().with_net(student_net.unwrap());
    let coupling = Arc::new(PairedAnchors::generated(pairs.latents.clone()));
    let dir = common::scratch("distill", "student");
    let mut student = Trainer::with_coupling(
        student_model,
        pairs.samples.clone(),
        config(600, 1e-3),
        coupling.clone(),
    )
    .unwrap()
    .with_checkpoint_dir(&dir);
    student.train_steps(300).unwrap();
    student.checkpoint().unwrap();
    // A stop and a resume on the same pairs, as a long run would.
    let mut student =
        Trainer::resume_with_coupling(&dir, model(), pairs.samples.clone(), coupling).unwrap();
    assert_eq!(student.step(), 300);
    student.fit().unwrap();
    // A budget past what an Instant holds means no deadline (the steps are done: no-op).
    student.train_for(std::time::Duration::MAX).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // Sampling feeds no anchor: the latent is the prior draw.
    assert_eq!(student.ema_model().anchor_law(), AnchorLaw::Zero);

    // Fresh latents: the teacher's ODE solution, its one-step estimate E[x | x_T] (blurred to
    // the mean where many images share a latent) and the student's one call.
    let (teacher, student) = (teacher.ema_model(), student.ema_model());
    let device = Default::default();
    let z = teacher.sample_prior(&mut rng, 1024).unwrap();
    let zeros =
        Tensor::<Cpu, 2>::from_data(TensorData::new(vec![0.0f32; 2048], [1024, 2]), &device);
    let ode = solve_ode_from(&teacher, z.clone(), zeros.clone(), solver)
        .unwrap()
        .samples;
    let t_max = [1.0];
    let teacher_one = teacher.estimate(z.clone(), &t_max, zeros.clone()).unwrap();
    let student_one = student.estimate(z, &t_max, zeros).unwrap();
    let (blurred, distilled) = (msd(teacher_one, ode.clone()), msd(student_one, ode));
    assert!(
        distilled < 0.25 * blurred,
        "the student's one step is {distilled:.4} from the ODE solutions, the teacher's own {blurred:.4}"
    );
}

#[test]
fn encoding_by_the_odes_backward_solve_is_undone_by_its_forward_solve() {
    let data = Toy::Moons.sample(2048, 4).unwrap();
    let mut teacher = Trainer::new(model(), data.clone(), config(600, 2e-3)).unwrap();
    teacher.fit().unwrap();
    let teacher = teacher.ema_model();
    let solver = OdeSolver::Heun { steps: 16 };
    let mut calls = 0;
    let pairs =
        integration_flow::sample::encoded_pairs(&teacher, &data, solver, 512, |_, _| calls += 1)
            .unwrap();
    assert_eq!((calls, pairs.nfe, pairs.latents.len()), (4, 31, 2048));
    assert_eq!(pairs.samples.values(), data.values());
    // The latents are of the prior's scale (unit variance per coordinate, no mean; the data's
    // variance is about 2): 1.49 measured with this short-trained teacher.
    let latents = pairs.latents.values();
    let mean = latents.iter().map(|&v| f64::from(v)).sum::<f64>() / latents.len() as f64;
    let var = latents.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / latents.len() as f64;
    assert!(
        mean.abs() < 0.1 && (0.5..1.75).contains(&var),
        "latent mean {mean}, variance {var}"
    );
    // Decoding the latents gives the examples back, up to the solvers' error.
    let device = Default::default();
    let upload = |values: &[f32]| {
        Tensor::<Cpu, 2>::from_data(TensorData::new(values.to_vec(), [2048, 2]), &device)
    };
    let zeros = upload(&[0.0; 4096]);
    let decoded = solve_ode_from(&teacher, upload(latents), zeros, solver)
        .unwrap()
        .samples;
    let x = upload(data.values());
    let error = msd(decoded, x.clone());
    let spread = msd(x.clone(), x.clone().mean_dim(0).repeat_dim(0, 2048));
    assert!(
        error < 1e-3 * spread,
        "round trip {error:.5}, data spread {spread:.4}"
    );
}

/// A pipeline with `method` and `pairs` generated pairs on `data`, run through its teacher
/// (600 steps) and pairs stages; the student (400 steps) is left to run.
fn through_the_pairs_stage(
    data: &Dataset,
    name: &str,
    method: integration_flow::pipeline::DistillMethod,
    pairs: usize,
) -> (
    std::path::PathBuf,
    integration_flow::pipeline::Distillation<CpuAutodiff, Mlp<CpuAutodiff>>,
) {
    use integration_flow::pipeline::{DistillConfig, Distillation, Stage};
    let dir = common::scratch("distill", name);
    let recipe = DistillConfig {
        method,
        pairs,
        pair_steps: 6,
        pair_batch: 1024,
        student_steps: 400,
        student_lr: 1e-3,
        ..Default::default()
    };
    let mut run =
        Distillation::new(&dir, model(), data.clone(), config(600, 2e-3), recipe).unwrap();
    assert!(run.run_stage(BUDGET).unwrap().is_none());
    assert!(run.run_stage(BUDGET).unwrap().is_none());
    assert_eq!(run.state().unwrap().unwrap().stage, Stage::Student);
    (dir, run)
}

/// More than any stage here needs.
const BUDGET: std::time::Duration = std::time::Duration::from_secs(3600);

#[test]
fn the_pipeline_distils_from_encoded_pairs() {
    use integration_flow::pipeline::DistillMethod;
    let data = Toy::Moons.sample(4096, 6).unwrap();
    let (dir, mut run) = through_the_pairs_stage(&data, "encoded", DistillMethod::Encoded, 4000);
    // One latent per training example; the samples are the data, not written again.
    let latents = integration_flow::data::read_npy(dir.join("pairs_latents.npy")).unwrap();
    assert_eq!(latents.shape, vec![4096, 2]);
    assert!(!dir.join("pairs_samples.npy").exists());
    let student = run.run_for(BUDGET).unwrap();
    assert_eq!(student.coupling().name(), "encoded");
    common::assert_student_halves_teachers_sw2(&dir, &student, &data);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_pipeline_distils_from_a_mixture_of_generated_and_encoded_pairs() {
    use integration_flow::pipeline::DistillMethod;
    let data = Toy::Moons.sample(2048, 7).unwrap();
    let (dir, mut run) = through_the_pairs_stage(&data, "mixed", DistillMethod::Mixed, 1024);
    // Both kinds of pairs: 1,024 generated (latents and samples) and one encoding per example.
    let shape = |name: &str| {
        integration_flow::data::read_npy(dir.join(name))
            .unwrap()
            .shape
    };
    assert_eq!(shape("pairs_latents.npy"), vec![1024, 2]);
    assert_eq!(shape("pairs_samples.npy"), vec![1024, 2]);
    assert_eq!(shape("pairs_encoded_latents.npy"), vec![2048, 2]);
    let student = run.run_for(BUDGET).unwrap();
    assert_eq!(student.coupling().name(), "mixed");
    // The student trains on the generated samples and the data together.
    let info = integration_flow::train::CheckpointInfo::read(&dir).unwrap();
    assert_eq!(info.data_shape, [1024 + 2048, 2]);
    common::assert_student_halves_teachers_sw2(&dir, &student, &data);
    // Starting over removes every pairs file the run wrote, the encoded latents' too.
    run.start_over().unwrap();
    for name in [
        "pairs_latents.npy",
        "pairs_samples.npy",
        "pairs_encoded_latents.npy",
    ] {
        assert!(!dir.join(name).exists(), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The learning rate of the last logged step of a run's metrics log.
fn last_lr(dir: &std::path::Path) -> f64 {
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let line = log.lines().rev().find(|l| l.contains("\"lr\"")).unwrap();
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    value["lr"].as_f64().unwrap()
}

#[test]
fn a_decaying_students_length_is_fixed_from_its_pace_and_the_budget() {
    use integration_flow::pipeline::{DistillConfig, Distillation};
    use integration_flow::train::LrDecay;
    let data = Toy::Moons.sample(2048, 4).unwrap();
    let mut teacher = config(200, 2e-3);
    teacher.log_every = 1;
    let recipe = |student_steps| DistillConfig {
        pairs: 1024,
        pair_steps: 3,
        pair_batch: 1024,
        student_steps,
        student_lr: 1e-3,
        student_lr_decay: LrDecay::Cosine { floor: 0.1 },
        ..Default::default()
    };
    // A budget that outlasts the cap: the student trains the cap and ends at the floor.
    let dir = common::scratch("distill", "decay_capped");
    let mut run =
        Distillation::new(&dir, model(), data.clone(), teacher.clone(), recipe(250)).unwrap();
    let student = run.run_for(std::time::Duration::from_secs(3600)).unwrap();
    assert_eq!((student.step(), student.config().steps), (250, 250));
    assert!((last_lr(&dir) - 1e-4).abs() < 1e-9, "{}", last_lr(&dir));
    let teacher_dir = dir.join("teacher");

    // A cap shorter than the timed steps: the student trains the cap, no more.
    let short = common::scratch("distill", "decay_short");
    let mut run = Distillation::new(&short, model(), data.clone(), teacher.clone(), recipe(4))
        .unwrap()
        .with_teacher(&teacher_dir);
    let student = run.run_for(std::time::Duration::from_secs(3600)).unwrap();
    assert_eq!((student.step(), student.config().steps), (4, 4));
    let _ = std::fs::remove_dir_all(&short);

    // A budget the cap outlasts: the planned length is what the time left buys, and the run
    // stops by then.
    let timed = common::scratch("distill", "decay_timed");
    let mut run = Distillation::new(&timed, model(), data, teacher, recipe(1_000_000))
        .unwrap()
        .with_teacher(&teacher_dir);
    let student = run.run_for(std::time::Duration::from_secs(4)).unwrap();
    let planned = student.config().steps;
    assert!(planned < 1_000_000 && planned > 8, "planned {planned}");
    assert!(student.step() <= planned, "{} > {planned}", student.step());
    assert!(last_lr(&timed) < 1e-3, "the rate fell: {}", last_lr(&timed));
    for dir in [dir, timed] {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
