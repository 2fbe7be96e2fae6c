//! Data-parallel training (`TrainConfig::data_parallel`, the `data-parallel` feature): workers
//! on CPU threads follow one worker at the whole batch, repeat themselves exactly, resume
//! exactly, and a worker that fails, panics or hangs stops the run with a typed error instead
//! of a hang.
#![cfg(all(feature = "data-parallel", any(feature = "flex", feature = "ndarray")))]

mod common;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use common::{max_abs_diff, scratch, weights};
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::{Dataset, Toy};
use integration_flow::flow::{FlowConfig, Parameterization};
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{IntegrationNet, Mlp, MlpConfig};
use integration_flow::train::{
    AnchorPolicy, DataParallelConfig, DivergencePolicy, FlowMapConfig, ObjectiveConfig, StepStats,
    TrainConfig, Trainer,
};
use integration_flow::Error;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Relative tolerance of a loss, and absolute of a weight, EMA or anchor value, between one
/// worker at batch 512 and two at 256 each: the same arithmetic summed in another order (the
/// shards' partial sums) differs by float rounding. Measured over 50 steps: weights and EMA
/// within 5e-8, anchors within 3e-7 (values of order 1), losses within 4e-7 relative.
const LOSS_TOLERANCE: f64 = 1e-5;
const WEIGHT_TOLERANCE: f32 = 1e-6;

/// One data-parallel run at a time per process: the tests take turns, so that a short
/// `timeout_secs` (also the wait for another run's workers) measures only its own run.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const OFF: u8 = 0;
const PANIC: u8 = 1;
const SLEEP: u8 = 2;
const NAN: u8 = 3;

/// An MLP whose forward pass, once armed, fails on worker 1's threads: it panics, sleeps for
/// three seconds or returns NaN, once.
#[derive(Module, Debug)]
struct Faulty<B: Backend> {
    inner: Mlp<B>,
    #[module(skip)]
    fault: Arc<AtomicU8>,
}

impl<B: Backend> IntegrationNet<B> for Faulty<B> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn forward(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let on_worker_1 = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("integration-flow-worker-1"));
        let out = self.inner.forward(x, c_noise, anchor);
        if !on_worker_1 {
            return out;
        }
        match self.fault.swap(OFF, Ordering::SeqCst) {
            PANIC => panic!("injected fault"),
            SLEEP => {
                std::thread::sleep(Duration::from_secs(3));
                out
            }
            NAN => out.mul_scalar(f32::NAN),
            _ => out,
        }
    }
}

fn mlp() -> Mlp<CpuAutodiff> {
    MlpConfig {
        width: 64,
        depth: 2,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap()
}

fn model<N: IntegrationNet<CpuAutodiff>>(net: N) -> IntegrationFlow<CpuAutodiff, N> {
    IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
    .unwrap()
}

fn data() -> Dataset {
    Toy::Checkerboard.sample(2048, 0).unwrap()
}

fn config(workers: usize, batch_size: usize, steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size,
        progress: false,
        data_parallel: (workers > 1).then(|| DataParallelConfig {
            workers,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Losses of every step, weights, EMA and anchors after `config`'s steps.
fn train(config: TrainConfig) -> Run {
    train_net(mlp(), config)
}

fn train_net<N>(net: N, config: TrainConfig) -> Run
where
    N: IntegrationNet<CpuAutodiff> + burn::module::AutodiffModule<CpuAutodiff> + 'static,
    N::InnerModule: IntegrationNet<integration_flow::backend::Cpu> + 'static,
{
    let mut trainer = Trainer::new(model(net), data(), config).unwrap();
    let mut losses = Vec::new();
    while trainer.step() < trainer.config().steps {
        losses.push(trainer.train_step().unwrap().loss);
    }
    let (weights, ema, anchors) = state(&trainer);
    (losses, weights, ema, anchors)
}

type Run = (Vec<f64>, Vec<f32>, Vec<f32>, Vec<f32>);

fn assert_close(what: &str, start: Vec<f32>, one: &Run, two: &Run) {
    assert_eq!(one.0.len(), two.0.len());
    let mut worst = 0.0f64;
    for (step, (a, b)) in one.0.iter().zip(&two.0).enumerate() {
        let relative = (a - b).abs() / a.abs().max(1e-12);
        worst = worst.max(relative);
        assert!(
            relative <= LOSS_TOLERANCE,
            "{what}: step {step} loss {a} (one worker) against {b} (two): {relative:.2e}"
        );
    }
    let (w, e, a) = (
        max_abs_diff(&one.1, &two.1),
        max_abs_diff(&one.2, &two.2),
        max_abs_diff(&one.3, &two.3),
    );
    println!("{what}: max |Δ| weights {w:.2e}, EMA {e:.2e}, anchors {a:.2e}; losses {worst:.2e} relative");
    assert!(w <= WEIGHT_TOLERANCE, "{what}: weights differ by {w}");
    assert!(e <= WEIGHT_TOLERANCE, "{what}: EMA differs by {e}");
    assert!(a <= WEIGHT_TOLERANCE, "{what}: anchors differ by {a}");
    // Not trivially equal: training moved the weights.
    assert!(
        max_abs_diff(&start, &one.1) > 1e-2,
        "{what}: nothing was trained"
    );
}

/// The check: two workers at 256 rows each follow one worker at 512 over 50 steps —
/// OT anchors (the default), anchors updated from every estimate (`prediction`, so the
/// shards' estimates must come back in batch order) and the flow-map objective (target times
/// drawn for the whole batch).
#[test]
fn two_workers_follow_one_worker_at_the_whole_batch() {
    let _turn = serial();
    let start = || weights(&mlp());
    let ot = |workers| config(workers, 512, 50);
    assert_close("ot anchors", start(), &train(ot(1)), &train(ot(2)));

    let prediction = |workers| {
        let mut config = config(workers, 512, 50);
        config.anchor.policy = AnchorPolicy::Prediction;
        config
    };
    assert_close(
        "prediction anchors",
        start(),
        &train(prediction(1)),
        &train(prediction(2)),
    );

    let flow_map = |workers| {
        let mut config = config(workers, 512, 50);
        config.anchor.policy = AnchorPolicy::Off;
        config.objective = ObjectiveConfig::FlowMap(FlowMapConfig::default());
        config
    };
    let net = || mlp().with_target_time().unwrap();
    assert_close(
        "flow map",
        weights(&net()),
        &train_net(net(), flow_map(1)),
        &train_net(net(), flow_map(2)),
    );
}

/// Three workers sum in a fixed order: two runs agree to the bit, and so does a run resumed
/// from a checkpoint (exact resume, as with one worker). Batches of 600 with the short last
/// batch kept (248 rows) give uneven shards.
#[test]
fn three_workers_repeat_themselves_and_resume_exactly() {
    let _turn = serial();
    let run = || {
        let mut config = config(3, 600, 12);
        config.drop_last = false;
        config.anchor.policy = AnchorPolicy::Prediction;
        config
    };
    let first = train(run());
    let second = train(run());
    assert_eq!(first.0, second.0, "losses differ between two runs");
    assert!(first.1 == second.1, "weights differ between two runs");
    assert!(first.3 == second.3, "anchors differ between two runs");

    let dir = scratch("data_parallel", "resume");
    let mut trainer = Trainer::new(model(mlp()), data(), run())
        .unwrap()
        .with_checkpoint_dir(&dir);
    trainer.train_steps(5).unwrap();
    drop(trainer);
    let mut resumed = Trainer::resume(&dir, model(mlp()), data()).unwrap();
    assert_eq!(resumed.step(), 5);
    assert_eq!(
        resumed.config().data_parallel.as_ref().map(|p| p.workers),
        Some(3)
    );
    resumed.fit().unwrap();
    assert!(
        weights(resumed.model().net()) == first.1,
        "the resumed run's weights differ"
    );
    assert!(
        weights(resumed.ema_model().net()) == first.2,
        "the resumed run's EMA differs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn faulty(fault: &Arc<AtomicU8>) -> Faulty<CpuAutodiff> {
    Faulty {
        inner: mlp(),
        fault: fault.clone(),
    }
}

/// A worker that panics mid-step stops the run with `Error::Worker` naming it and the step,
/// promptly; the next run of the process starts its workers afresh.
#[test]
fn a_panicking_worker_is_a_typed_error() {
    let _turn = serial();
    let fault = Arc::new(AtomicU8::new(OFF));
    let mut config = config(2, 256, 10);
    config.anchor.policy = AnchorPolicy::Prediction;
    let mut trainer = Trainer::new(model(faulty(&fault)), data(), config).unwrap();
    trainer.train_steps(3).unwrap();
    let before = state(&trainer);
    fault.store(PANIC, Ordering::SeqCst);
    let started = Instant::now();
    match trainer.train_step() {
        Err(Error::Worker {
            worker: 1,
            step: 3,
            reason,
        }) => assert!(reason.contains("injected fault"), "{reason}"),
        other => panic!("expected worker 1's failure at step 3, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // Nothing of the failed step was applied; the trainer goes on with new workers.
    assert_eq!(trainer.step(), 3);
    unchanged_then_finishes(trainer, before, 10);
}

/// A worker that does not answer within `timeout_secs` stops the run with `Error::Worker`
/// after the timeout, not when (or if) it comes back.
#[test]
fn a_silent_worker_times_out() {
    let _turn = serial();
    let fault = Arc::new(AtomicU8::new(OFF));
    let mut config = config(2, 256, 10);
    config.data_parallel = Some(DataParallelConfig {
        workers: 2,
        timeout_secs: 1.0,
        ..Default::default()
    });
    let mut trainer = Trainer::new(model(faulty(&fault)), data(), config).unwrap();
    trainer.train_steps(2).unwrap();
    let before = state(&trainer);
    fault.store(SLEEP, Ordering::SeqCst);
    let started = Instant::now();
    let result = trainer.train_step();
    let waited = started.elapsed();
    match result {
        Err(Error::Worker {
            worker: 1,
            step: 2,
            reason,
        }) => assert!(reason.contains("no answer within 1.0 s"), "{reason}"),
        other => panic!("expected worker 1 to time out at step 2, got {other:?}"),
    }
    // The timeout (1 s), then the sleeper's return (3 s) while the pool is taken down.
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert_eq!(trainer.step(), 2);
    unchanged_then_finishes(trainer, before, 10);
}

/// A NaN on one worker is the run's divergence, handled by its policy: skipped, and the run
/// goes on with its workers.
#[test]
fn a_diverging_worker_is_the_runs_divergence() {
    let _turn = serial();
    let fault = Arc::new(AtomicU8::new(OFF));
    let mut config = config(2, 256, 8);
    config.on_divergence = DivergencePolicy::Skip { max: 2 };
    let mut trainer = Trainer::new(model(faulty(&fault)), data(), config).unwrap();
    trainer.train_steps(2).unwrap();
    let before = state(&trainer);
    fault.store(NAN, Ordering::SeqCst);
    let stats: StepStats = trainer.train_step().unwrap();
    assert!(stats.skipped && stats.loss.is_nan(), "{stats:?}");
    unchanged_then_finishes(trainer, before, 8);
}

/// A short last batch (2 rows for 3 workers) leaves a worker without rows: it adds nothing
/// to the sum, and the run still follows one worker's.
#[test]
fn a_worker_without_rows_adds_nothing() {
    let _turn = serial();
    let points = Toy::Checkerboard.sample(1026, 0).unwrap();
    let run = |workers| {
        let mut config = config(workers, 512, 6);
        config.drop_last = false;
        let mut trainer = Trainer::new(model(mlp()), points.clone(), config).unwrap();
        let mut rows = Vec::new();
        while trainer.step() < 6 {
            rows.push(trainer.train_step().unwrap().loss);
        }
        (rows, weights(trainer.model().net()))
    };
    let (one, two) = (run(1), run(3));
    for (a, b) in one.0.iter().zip(&two.0) {
        assert!((a - b).abs() <= LOSS_TOLERANCE * a.abs(), "{a} against {b}");
    }
    let d = max_abs_diff(&one.1, &two.1);
    assert!(d <= WEIGHT_TOLERANCE, "weights differ by {d}");
}

/// The workers on devices named explicitly (here the CPU, one per worker) train as by default.
#[test]
fn workers_on_named_devices_train() {
    let _turn = serial();
    let mut trainer = Trainer::new(model(mlp()), data(), config(2, 256, 4))
        .unwrap()
        .with_worker_devices(vec![Default::default(); 2])
        .unwrap();
    trainer.fit().unwrap();
    assert_eq!(trainer.step(), 4);
}

/// A failed or skipped step left weights, EMA and anchors as `before`; the run then goes on
/// (with new workers) to its `steps`.
fn unchanged_then_finishes(
    mut trainer: Trainer<CpuAutodiff, Faulty<CpuAutodiff>>,
    before: (Vec<f32>, Vec<f32>, Vec<f32>),
    steps: usize,
) {
    assert!(
        state(&trainer) == before,
        "the failed step changed the state"
    );
    trainer.fit().unwrap();
    assert_eq!(trainer.step(), steps);
}

/// Weights, EMA and anchors of a trainer.
fn state<N>(trainer: &Trainer<CpuAutodiff, N>) -> (Vec<f32>, Vec<f32>, Vec<f32>)
where
    N: IntegrationNet<CpuAutodiff> + burn::module::AutodiffModule<CpuAutodiff> + 'static,
    N::InnerModule: IntegrationNet<integration_flow::backend::Cpu> + 'static,
{
    let anchors = match trainer.anchors() {
        Some(store) => store.get(&(0..store.len()).collect::<Vec<_>>()).unwrap(),
        None => Vec::new(),
    };
    (
        weights(trainer.model().net()),
        weights(trainer.ema_model().net()),
        anchors,
    )
}

#[test]
fn what_workers_cannot_do_is_refused() {
    let mut adversarial = config(2, 256, 10);
    adversarial.adversarial = Some(Default::default());
    let err = Trainer::new(model(mlp()), data(), adversarial)
        .err()
        .unwrap();
    assert!(err.to_string().contains("data_parallel"), "{err}");

    let trainer = Trainer::new(model(mlp()), data(), config(2, 256, 10)).unwrap();
    let err = trainer
        .with_worker_devices(vec![Default::default()])
        .err()
        .unwrap();
    assert!(err.to_string().contains("1 devices for 2 workers"), "{err}");

    let single = Trainer::new(model(mlp()), data(), config(1, 256, 10)).unwrap();
    let err = single
        .with_worker_devices(vec![Default::default(); 2])
        .err()
        .unwrap();
    assert!(err.to_string().contains("no workers"), "{err}");
}
