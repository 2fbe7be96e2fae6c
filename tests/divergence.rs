//! The divergence guard: a non-finite loss never reaches the weights, the optimizer, the EMA or
//! the anchor store, and each policy (stop, skip, rollback) does what it says and logs it.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;
use common::weights;
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::{Dataset, Toy};
use integration_flow::flow::{
    Parameterization, ProbabilityFlow, RectifiedFlow, RectifiedFlowConfig, TimeRange,
};
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{Mlp, MlpConfig};
use integration_flow::train::{AnchorPolicy, DivergencePolicy, TrainConfig, Trainer};
use integration_flow::Error;
use rand::Rng;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Rectified flow whose noise is NaN on the listed calls of `sample_noise` (one call per
/// training step), or on every call from `from` on: a divergence at a chosen step.
#[derive(Debug)]
struct Poisoned {
    inner: RectifiedFlow,
    calls: AtomicUsize,
    at: HashSet<usize>,
    from: usize,
}

impl ProbabilityFlow for Poisoned {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn alpha(&self, t: f64) -> f64 {
        self.inner.alpha(t)
    }
    fn sigma(&self, t: f64) -> f64 {
        self.inner.sigma(t)
    }
    fn alpha_dot(&self, t: f64) -> f64 {
        self.inner.alpha_dot(t)
    }
    fn sigma_dot(&self, t: f64) -> f64 {
        self.inner.sigma_dot(t)
    }
    fn time_range(&self) -> TimeRange {
        self.inner.time_range()
    }
    fn sample_noise(
        &self,
        rng: &mut dyn Rng,
        n: usize,
        dim: usize,
    ) -> integration_flow::Result<Vec<f32>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut noise = self.inner.sample_noise(rng, n, dim)?;
        if self.at.contains(&call) || call >= self.from {
            noise[0] = f32::NAN;
        }
        Ok(noise)
    }
}

fn poisoned(at: &[usize], from: usize) -> Poisoned {
    Poisoned {
        inner: RectifiedFlowConfig::default().init().unwrap(),
        calls: AtomicUsize::new(0),
        at: at.iter().copied().collect(),
        from,
    }
}

type Model = IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>>;

fn model(flow: impl ProbabilityFlow + 'static) -> Model {
    let net = MlpConfig {
        width: 32,
        depth: 2,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap();
    IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    // Unchecked: the self-check would draw noise, and this flow counts its noise draws as the
    // training steps at which to inject the fault.
    .init_unchecked(Arc::new(flow), net)
    .unwrap()
}

fn data() -> Dataset {
    Toy::Checkerboard.sample(512, 0).unwrap()
}

fn config(steps: usize, on_divergence: DivergencePolicy) -> TrainConfig {
    let mut config = TrainConfig {
        steps,
        batch_size: 64,
        progress: false,
        log_every: 1,
        on_divergence,
        ..Default::default()
    };
    // Policy `prediction` writes anchors every step: a diverged step must not.
    config.anchor.policy = AnchorPolicy::Prediction;
    config
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_divergence_{name}_{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The events the metrics log recorded, as (action, step).
fn events(log: &std::path::Path) -> Vec<(String, usize)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "diverged")
        .map(|v| {
            (
                v["action"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

#[test]
fn stop_names_the_step_and_changes_nothing() {
    let dir = scratch("stop");
    let log = dir.join("metrics.jsonl");
    let mut trainer = Trainer::new(model(poisoned(&[5], usize::MAX)), data(), {
        config(10, DivergencePolicy::Stop)
    })
    .unwrap()
    .with_metrics_log(&log)
    .unwrap();
    for _ in 0..5 {
        trainer.train_step().unwrap();
    }
    let (net, ema, anchors) = (
        weights(trainer.model().net()),
        weights(trainer.ema_model().net()),
        trainer.anchors().unwrap().clone(),
    );
    match trainer.train_step() {
        Err(Error::Diverged { step: 5, reason }) => {
            assert!(reason.contains("x_t is NaN"), "{reason}")
        }
        other => panic!("expected divergence at step 5, got {other:?}"),
    }
    assert_eq!(trainer.step(), 5, "the position moved");
    assert!(weights(trainer.model().net()) == net, "weights changed");
    assert!(weights(trainer.ema_model().net()) == ema, "EMA changed");
    assert!(trainer.anchors().unwrap() == &anchors, "anchors changed");
    assert_eq!(events(&log), vec![("stop".to_string(), 5)]);
}

/// A huge learning rate blows the weights up; the step whose loss is no longer finite stops
/// training with an error that names it.
#[test]
fn a_huge_learning_rate_stops_with_an_error() {
    let mut config = config(50, DivergencePolicy::Stop);
    config.optimizer.lr = 1e30;
    config.optimizer.warmup_steps = 0;
    config.optimizer.grad_clip = None;
    let mut trainer = Trainer::new(
        model(RectifiedFlowConfig::default().init().unwrap()),
        data(),
        config,
    )
    .unwrap();
    match trainer.fit() {
        Err(Error::Diverged { step, .. }) => assert!(step < 50),
        other => panic!("expected a divergence, got {other:?}"),
    }
}

#[test]
fn skip_drops_the_step_and_goes_on() {
    let dir = scratch("skip");
    let log = dir.join("metrics.jsonl");
    let mut trainer = Trainer::new(
        model(poisoned(&[3, 7], usize::MAX)),
        data(),
        config(10, DivergencePolicy::Skip { max: 2 }),
    )
    .unwrap()
    .with_metrics_log(&log)
    .unwrap();
    let mut skipped = Vec::new();
    for _ in 0..3 {
        trainer.train_step().unwrap();
    }
    let before = weights(trainer.model().net());
    let stats = trainer.train_step().unwrap();
    assert!(stats.skipped && stats.step == 3 && stats.loss.is_nan());
    assert!(
        weights(trainer.model().net()) == before,
        "a skipped step moved the weights"
    );
    skipped.push(stats.step);
    while trainer.step() < 10 {
        let stats = trainer.train_step().unwrap();
        if stats.skipped {
            skipped.push(stats.step);
        }
    }
    assert_eq!(skipped, vec![3, 7]);
    assert!(weights(trainer.model().net()).iter().all(|v| v.is_finite()));
    assert_eq!(events(&log), vec![("skip".into(), 3), ("skip".into(), 7)]);
}

#[test]
fn skip_stops_after_its_maximum() {
    let mut trainer = Trainer::new(
        model(poisoned(&[], 4)),
        data(),
        config(20, DivergencePolicy::Skip { max: 3 }),
    )
    .unwrap();
    match trainer.fit() {
        Err(Error::Diverged { step: 7, reason }) => {
            assert!(reason.contains("after 3 skipped steps"), "{reason}")
        }
        other => panic!("expected a stop at step 7, got {other:?}"),
    }
}

#[test]
fn rollback_returns_to_the_last_checkpoint_with_a_lower_learning_rate() {
    let dir = scratch("rollback");
    let log = dir.join("metrics.jsonl");
    let mut config = config(
        12,
        DivergencePolicy::Rollback {
            lr_factor: 0.5,
            max: 2,
        },
    );
    config.checkpoint_every = 4;
    let lr = config.optimizer.lr;
    let mut trainer = Trainer::new(model(poisoned(&[9], usize::MAX)), data(), config)
        .unwrap()
        .with_checkpoint_dir(&dir)
        .with_metrics_log(&log)
        .unwrap();
    trainer.fit().unwrap();
    assert_eq!(trainer.step(), 12);
    assert_eq!(trainer.config().optimizer.lr, 0.5 * lr);
    assert_eq!(events(&log), vec![("rollback".to_string(), 9)]);
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains("\"resume_step\":8"), "rolled back to step 8");
    assert!(weights(trainer.model().net()).iter().all(|v| v.is_finite()));
}

#[test]
fn rollback_needs_a_checkpoint_and_stops_after_its_maximum() {
    let policy = DivergencePolicy::Rollback {
        lr_factor: 0.5,
        max: 2,
    };
    let mut trainer =
        Trainer::new(model(poisoned(&[2], usize::MAX)), data(), config(5, policy)).unwrap();
    match trainer.fit() {
        Err(Error::Diverged { step: 2, reason }) => {
            assert!(reason.contains("needs a checkpoint directory"), "{reason}")
        }
        other => panic!("expected a divergence at step 2, got {other:?}"),
    }
    // Every step from 5 on diverges: two rollbacks to step 4, then a stop.
    let dir = scratch("rollback_max");
    let mut config = config(10, policy);
    config.checkpoint_every = 2;
    let mut trainer = Trainer::new(model(poisoned(&[], 5)), data(), config)
        .unwrap()
        .with_checkpoint_dir(&dir);
    match trainer.fit() {
        Err(Error::Diverged { reason, .. }) => {
            assert!(reason.contains("after 2 rollbacks"), "{reason}")
        }
        other => panic!("expected a stop after 2 rollbacks, got {other:?}"),
    }
}

#[test]
fn divergence_policies_are_validated() {
    for (policy, field) in [
        (DivergencePolicy::Skip { max: 0 }, "on_divergence.max"),
        (
            DivergencePolicy::Rollback {
                lr_factor: 1.5,
                max: 1,
            },
            "on_divergence.lr_factor",
        ),
        (
            DivergencePolicy::Rollback {
                lr_factor: f64::NAN,
                max: 1,
            },
            "on_divergence.lr_factor",
        ),
    ] {
        match config(1, policy).validate() {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{policy:?}: expected an error on {field}, got {other:?}"),
        }
    }
    let json = r#"{"on_divergence": {"kind": "skip", "max": 3}}"#;
    let parsed: TrainConfig = serde_json::from_str(json).unwrap();
    assert_eq!(parsed.on_divergence, DivergencePolicy::Skip { max: 3 });
}

/// A NaN in the distribution-matching fake denoiser's update is a divergence like one in the
/// model's step: with three noise draws per step (the step's, the term's, the fake's update),
/// draw 29 is step 9's fake update; the run rolls back to step 8 (the fake denoiser restored
/// with the rest, the teacher kept) and finishes with finite weights.
#[test]
fn a_diverged_fake_denoiser_rolls_back_with_the_run() {
    let dir = scratch("rollback_fake");
    let log = dir.join("metrics.jsonl");
    let mut config = config(
        12,
        DivergencePolicy::Rollback {
            lr_factor: 0.5,
            max: 2,
        },
    );
    config.checkpoint_every = 4;
    config.t_max_fraction = 1.0;
    config.distribution_matching = Some(Default::default());
    let model = model(poisoned(&[29], usize::MAX));
    let teacher = model.net().clone();
    let mut trainer = Trainer::new(model, data(), config)
        .unwrap()
        .with_score_teacher(teacher)
        .unwrap()
        .with_checkpoint_dir(&dir)
        .with_metrics_log(&log)
        .unwrap();
    trainer.fit().unwrap();
    assert_eq!(trainer.step(), 12);
    assert_eq!(events(&log), vec![("rollback".to_string(), 9)]);
    assert!(weights(trainer.model().net()).iter().all(|v| v.is_finite()));
}
