//! Training end to end on the default CPU backend.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;
use common::weights;
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::{Dataset, Toy};
use integration_flow::flow::{
    Parameterization, PfgmPPConfig, ProbabilityFlow, RectifiedFlowConfig, VeConfig, VpConfig,
};
use integration_flow::metrics::sliced_wasserstein2;
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{Mlp, MlpConfig};
use integration_flow::train::{AnchorBacking, AnchorPolicy, OtSpace, TrainConfig, Trainer};
use integration_flow::Error;
use rand::{rngs::StdRng, SeedableRng};
use std::sync::Arc;

fn model(
    flow: Arc<dyn ProbabilityFlow>,
    width: usize,
    sigma_data: f64,
) -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
    let net = MlpConfig {
        width,
        depth: 3,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap();
    IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(sigma_data),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(flow, net)
    .unwrap()
}

fn values(t: burn::tensor::Tensor<Cpu, 2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn quiet(steps: usize, batch_size: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size,
        progress: false,
        ..Default::default()
    }
}

/// Under the default (`ot`) policy every flow learns in a few hundred steps: the loss falls and
/// one-step samples are closer to the data than the prior is.
#[test]
fn every_flow_trains_and_beats_the_prior_in_one_step() {
    let data = Toy::EightGaussians.sample(2048, 1).unwrap();
    let reference = Toy::EightGaussians.sample(4000, 2).unwrap();
    let (_, sd) = data.mean_and_std();
    let flows: Vec<Arc<dyn ProbabilityFlow>> = vec![
        Arc::new(RectifiedFlowConfig::default().init().unwrap()),
        Arc::new(VpConfig::default().init().unwrap()),
        Arc::new(
            VeConfig {
                sigma_max: 40.0,
                ..Default::default()
            }
            .init()
            .unwrap(),
        ),
        Arc::new(
            PfgmPPConfig {
                sigma_max: 40.0,
                ..Default::default()
            }
            .init()
            .unwrap(),
        ),
    ];
    for flow in flows {
        let name = flow.name().to_string();
        let mut trainer =
            Trainer::new(model(flow, 128, sd), data.clone(), quiet(400, 256)).unwrap();
        let first: f64 = (0..10)
            .map(|_| trainer.train_step().unwrap().loss)
            .sum::<f64>()
            / 10.0;
        for _ in 0..380 {
            trainer.train_step().unwrap();
        }
        let last: f64 = (0..10)
            .map(|_| trainer.train_step().unwrap().loss)
            .sum::<f64>()
            / 10.0;
        let tail = last;
        assert!(tail < 0.7 * first, "{name}: loss {first} → {tail}");
        let ema = trainer.ema_model();
        let mut rng = StdRng::seed_from_u64(3);
        let samples = values(ema.generate(&mut rng, 4000, 1).unwrap());
        let prior = values(ema.sample_prior(&mut rng, 4000).unwrap());
        let sw2 = sliced_wasserstein2(&samples, reference.values(), 2, 128, 0).unwrap();
        let prior_sw2 = sliced_wasserstein2(&prior, reference.values(), 2, 128, 0).unwrap();
        println!(
            "{name}: loss {first:.4} → {tail:.4}, one-step sw2 {sw2:.4}, prior sw2 {prior_sw2:.4}"
        );
        assert!(
            sw2 < 0.5 * prior_sw2,
            "{name}: sw2 {sw2} vs prior {prior_sw2}"
        );
    }
}

#[test]
fn every_anchor_policy_runs() {
    let data = Toy::Moons.sample(512, 0).unwrap();
    let rf: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    for policy in [
        AnchorPolicy::Prediction,
        AnchorPolicy::Data,
        AnchorPolicy::Frozen,
        AnchorPolicy::Ot,
        AnchorPolicy::Off,
    ] {
        let mut config = quiet(12, 128);
        config.anchor.policy = policy;
        let mut trainer = Trainer::new(model(rf.clone(), 32, 1.0), data.clone(), config).unwrap();
        let before = trainer.anchors().map(|a| a.get(&[0, 1, 2]).unwrap());
        trainer.fit().unwrap();
        assert_eq!(trainer.step(), 12);
        let after = trainer.anchors().map(|a| a.get(&[0, 1, 2]).unwrap());
        let drift = trainer.anchor_drift();
        assert_eq!(drift.len(), 3, "one value per finished epoch");
        match policy {
            // Predictions keep moving; data anchors reach their examples in the first epoch.
            AnchorPolicy::Prediction => assert!(drift.iter().all(|&d| d > 0.0), "{drift:?}"),
            AnchorPolicy::Data => assert!(drift[0] > 0.0 && drift[1..] == [0.0, 0.0], "{drift:?}"),
            _ => assert_eq!(drift, &[0.0, 0.0, 0.0][..]),
        }
        match policy {
            AnchorPolicy::Prediction | AnchorPolicy::Data => {
                assert_ne!(before, after, "{policy:?} updates anchors")
            }
            AnchorPolicy::Frozen | AnchorPolicy::Ot => {
                assert_eq!(before, after, "{policy:?} keeps anchors")
            }
            AnchorPolicy::Off => assert!(after.is_none()),
        }
        if policy == AnchorPolicy::Data {
            // After one epoch (4 steps of 128) every anchor is its example.
            assert_eq!(after.unwrap(), data.values()[..6].to_vec());
        }
        let law = trainer.ema_model().anchor_law();
        assert_eq!(law == AnchorLaw::Zero, policy == AnchorPolicy::Off);
    }
}

/// OT anchors are a permutation-free matching: each chunk's assignment minimises the total
/// squared distance, so it beats the identity pairing of the same draws.
#[test]
fn optimal_transport_anchors_are_closer_than_random_ones() {
    let data = Toy::Checkerboard.sample(1024, 0).unwrap();
    let mut config = quiet(1, 128);
    let mut cost = |policy| {
        config.anchor.policy = policy;
        let trainer = Trainer::new(
            model(
                Arc::new(RectifiedFlowConfig::default().init().unwrap()),
                16,
                1.0,
            ),
            data.clone(),
            config.clone(),
        )
        .unwrap();
        let anchors = trainer
            .anchors()
            .unwrap()
            .get(&(0..1024).collect::<Vec<_>>())
            .unwrap();
        anchors
            .iter()
            .zip(data.values())
            .map(|(a, x)| f64::from(a - x).powi(2))
            .sum::<f64>()
            / 1024.0
    };
    let (ot, random) = (cost(AnchorPolicy::Ot), cost(AnchorPolicy::Frozen));
    assert!(ot < 0.5 * random, "OT cost {ot} vs random {random}");
}

/// 2 epochs straight, or 1 epoch, checkpoint, resume, 1 more: the same losses and weights.
/// Cases 3 and 4 keep the anchors of the interrupted run in a memory-mapped file: training with
/// the file-backed store gives exactly what the in-memory store gives.
#[test]
fn resume_is_exact() {
    let data = Toy::TwoSpirals.sample(512, 4).unwrap();
    let vp: Arc<dyn ProbabilityFlow> = Arc::new(VpConfig::default().init().unwrap());
    // The third case re-matches OT anchors every epoch (on the first principal direction) and
    // trains a quarter of each batch at t_max: the refresh must also resume exactly.
    for (case, policy) in [
        AnchorPolicy::Prediction,
        AnchorPolicy::Ot,
        AnchorPolicy::Ot,
        AnchorPolicy::Prediction,
        AnchorPolicy::Ot,
        AnchorPolicy::Ot,
    ]
    .into_iter()
    .enumerate()
    {
        let mut config = quiet(8, 128); // 4 steps per epoch
        config.anchor.policy = policy;
        if case == 5 {
            // Anchors drawn on the data's first principal direction, re-matched every epoch.
            config.anchor.subspace = 1;
            config.anchor.ot_refresh_epochs = 1;
        }
        if case == 2 || case == 4 {
            config.anchor.ot_refresh_epochs = 1;
            config.anchor.ot_space = OtSpace::Pca { dims: 1 };
            config.t_max_fraction = 0.25;
        }
        let policy = format!("{policy:?} (case {case})");
        let mut straight =
            Trainer::new(model(vp.clone(), 32, 1.0), data.clone(), config.clone()).unwrap();
        let losses_straight: Vec<f64> = (0..8)
            .map(|_| straight.train_step().unwrap().loss)
            .collect();

        let dir = std::env::temp_dir().join(format!(
            "integration_flow_resume_{case}_{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut interrupted = config.clone();
        if case == 3 || case == 4 {
            interrupted.anchor.backing = AnchorBacking::File {
                path: std::env::temp_dir().join(format!(
                    "integration_flow_resume_anchors_{case}_{}.bin",
                    std::process::id()
                )),
            };
        }
        let mut first =
            Trainer::new(model(vp.clone(), 32, 1.0), data.clone(), interrupted).unwrap();
        assert_eq!(
            first.anchors().unwrap().file().is_some(),
            case == 3 || case == 4
        );
        assert_eq!(
            matches!(first.model().anchor_law(), AnchorLaw::Subspace { .. }),
            case == 5
        );
        let initial_anchors = first.anchors().cloned();
        let mut losses: Vec<f64> = (0..4).map(|_| first.train_step().unwrap().loss).collect();
        if case == 2 || case == 4 || case == 5 {
            assert!(
                first.anchors().cloned() != initial_anchors,
                "the refresh at the epoch boundary did not change the anchors"
            );
        }
        assert_eq!(first.epoch(), 1);
        first.save_checkpoint(&dir).unwrap();
        drop(first);
        // A fresh model with other weights: resume must replace them.
        let template = {
            let net = MlpConfig {
                width: 32,
                depth: 3,
                ..Default::default()
            }
            .init::<CpuAutodiff>(&Default::default(), 99)
            .unwrap();
            IntegrationFlowConfig {
                parameterization: Parameterization::Integral,
                sigma_data: Some(1.0),
                anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
            }
            .init(vp.clone(), net)
            .unwrap()
        };
        let mut resumed = Trainer::resume(&dir, template, data.clone()).unwrap();
        assert_eq!((resumed.step(), resumed.epoch()), (4, 1));
        assert_eq!(
            resumed.anchors().unwrap().file().is_some(),
            case == 3 || case == 4
        );
        // The law sampling draws anchors from comes back with the checkpoint.
        assert_eq!(resumed.model().anchor_law(), straight.model().anchor_law());
        losses.extend((0..4).map(|_| resumed.train_step().unwrap().loss));

        assert_eq!(losses, losses_straight, "{policy:?}");
        let (w_straight, w_resumed) = (
            weights(straight.model().net()),
            weights(resumed.model().net()),
        );
        assert!(w_straight == w_resumed, "{policy:?}: final weights differ");
        assert!(
            straight.anchors() == resumed.anchors(),
            "{policy:?}: anchors differ"
        );
        let (a, b) = (straight.ema_model(), resumed.ema_model());
        assert!(
            weights(a.net()) == weights(b.net()),
            "{policy:?}: EMA weights differ"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_checkpoints_are_typed_errors() {
    let data = Toy::Moons.sample(256, 0).unwrap();
    let rf: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let dir = std::env::temp_dir().join(format!("integration_flow_badckpt_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut t = Trainer::new(model(rf.clone(), 16, 1.0), data.clone(), quiet(2, 64)).unwrap();
    t.fit().unwrap();
    t.save_checkpoint(&dir).unwrap();
    let path = integration_flow::train::checkpoint_path(&dir);
    let good = std::fs::read(&path).unwrap();

    let expect_checkpoint_error =
        |what: &str| match Trainer::resume(&dir, model(rf.clone(), 16, 1.0), data.clone()) {
            Err(Error::Checkpoint { path: p, reason }) => {
                assert_eq!(p, path);
                println!("{what}: {reason}");
            }
            Err(other) => panic!("{what}: expected a checkpoint error, got {other}"),
            Ok(_) => panic!("{what}: a bad checkpoint was loaded"),
        };
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    expect_checkpoint_error("truncated");
    let mut flipped = good.clone();
    let k = flipped.len() - 10;
    flipped[k] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    expect_checkpoint_error("bit flip");
    std::fs::write(&path, b"not a checkpoint").unwrap();
    expect_checkpoint_error("garbage");

    std::fs::write(&path, &good).unwrap();
    // Another dataset, another architecture, another flow: mismatches.
    let other_data = Toy::Moons.sample(256, 1).unwrap();
    assert!(matches!(
        Trainer::resume(&dir, model(rf.clone(), 16, 1.0), other_data),
        Err(Error::Checkpoint { .. })
    ));
    assert!(matches!(
        Trainer::resume(&dir, model(rf.clone(), 32, 1.0), data.clone()),
        Err(Error::Checkpoint { .. })
    ));
    let vp: Arc<dyn ProbabilityFlow> = Arc::new(VpConfig::default().init().unwrap());
    assert!(matches!(
        Trainer::resume(&dir, model(vp, 16, 1.0), data.clone()),
        Err(Error::Checkpoint { .. })
    ));
    // And the good one still loads.
    assert!(Trainer::resume(&dir, model(rf, 16, 1.0), data).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_typed_error_before_training() {
    let rf: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let data = Toy::Moons.sample(100, 0).unwrap();
    // Data dimension ≠ model dimension.
    let three_d = Dataset::new(vec![0.0; 300], 3).unwrap();
    let err = Trainer::new(model(rf.clone(), 16, 1.0), three_d, quiet(1, 10))
        .err()
        .unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // NaN / Inf in the data, an empty dataset.
    assert!(Dataset::new(vec![0.0, f32::NAN], 2).is_err());
    assert!(Dataset::new(vec![f32::INFINITY, 0.0], 2).is_err());
    assert!(Dataset::new(vec![], 2).is_err());
    assert!(Toy::Moons.sample(0, 0).is_err());
    // Batch size 0, or larger than the dataset with drop_last.
    for batch_size in [0, 101] {
        let err = Trainer::new(
            model(rf.clone(), 16, 1.0),
            data.clone(),
            quiet(1, batch_size),
        )
        .err()
        .unwrap();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "batch_size",
                    ..
                }
            ),
            "{batch_size}: {err}"
        );
    }
    let mut no_drop = quiet(1, 101);
    no_drop.drop_last = false;
    assert!(Trainer::new(model(rf.clone(), 16, 1.0), data.clone(), no_drop).is_ok());
    // Impossible settings are refused before training, naming their field.
    let rejected = |edit: &dyn Fn(&mut TrainConfig)| -> Error {
        let mut bad = quiet(1, 10);
        edit(&mut bad);
        Trainer::new(model(rf.clone(), 16, 1.0), data.clone(), bad)
            .err()
            .expect("the config is refused")
    };
    for (field, edit) in [
        (
            "optimizer.beta2",
            &(|c: &mut TrainConfig| c.optimizer.beta2 = 1.5) as &dyn Fn(&mut TrainConfig),
        ),
        ("t_max_fraction", &|c: &mut TrainConfig| {
            c.t_max_fraction = 1.5
        }),
        ("ot_space", &|c: &mut TrainConfig| {
            c.anchor.ot_space = OtSpace::Pca { dims: 0 }
        }),
        ("anchor.subspace", &|c: &mut TrainConfig| {
            c.anchor.subspace = 1;
            c.anchor.policy = AnchorPolicy::Frozen;
        }),
    ] {
        let err = rejected(edit);
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    // More principal directions than the data has dimensions.
    let err = rejected(&|c: &mut TrainConfig| c.anchor.ot_space = OtSpace::Pca { dims: 3 });
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = rejected(&|c: &mut TrainConfig| c.anchor.subspace = 3);
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn train_config_round_trips_through_json() {
    let mut config = TrainConfig::default();
    config.anchor.policy = AnchorPolicy::Prediction;
    config.weighting = integration_flow::train::Weighting::Linear {
        from: 1.0,
        to: 0.2,
        epochs: 10,
    };
    config.distance = integration_flow::train::Distance::PseudoHuber { c: None };
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), config);
    assert!(serde_json::from_str::<TrainConfig>(r#"{"stepz": 3}"#).is_err());
}

/// EDM's λ(t) trains near the prior end of rectified flow and is refused where σ = 0.
#[test]
fn edm_loss_weight_is_finite_at_the_prior_end() {
    use integration_flow::train::LossWeight;
    let data = Toy::Moons.sample(256, 0).unwrap();
    let mut config = quiet(5, 64);
    config.loss_weight = LossWeight::Edm;
    config.time = integration_flow::flow::TimeDistribution::LogitNormal {
        mean: 3.0,
        std: 0.1,
    };
    let rf: Arc<dyn ProbabilityFlow> = Arc::new(
        RectifiedFlowConfig {
            t_min: 1e-3,
            t_max: 1.0,
        }
        .init()
        .unwrap(),
    );
    let mut trainer = Trainer::new(model(rf, 16, 1.0), data.clone(), config.clone()).unwrap();
    for _ in 0..5 {
        assert!(trainer.train_step().unwrap().loss.is_finite());
    }
    let rf0: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let err = Trainer::new(model(rf0, 16, 1.0), data, config)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "loss_weight",
                ..
            }
        ),
        "{err}"
    );
}

/// The metrics log holds one JSON object per logged step, and `fit` leaves a checkpoint.
#[test]
fn fit_writes_a_metrics_log_and_a_final_checkpoint() {
    let dir = std::env::temp_dir().join(format!("integration_flow_log_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = Toy::Moons.sample(256, 0).unwrap();
    let rf: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let mut config = quiet(10, 64); // 4 steps per epoch
    config.log_every = 5;
    let mut trainer = Trainer::new(model(rf, 16, 1.0), data, config)
        .unwrap()
        .with_checkpoint_dir(&dir)
        .with_metrics_log(dir.join("metrics.jsonl"))
        .unwrap();
    trainer.fit().unwrap();
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Steps 5 and 10 by period, 4 and 8 at the ends of epochs.
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![3, 4, 7, 9]);
    assert!(lines
        .iter()
        .all(|l| l["loss"].as_f64().unwrap().is_finite()
            && l["samples_per_sec"].as_f64().unwrap() > 0.0));
    assert!(lines[0]["anchor_drift"].is_number(), "{}", lines[0]);
    assert!(integration_flow::train::checkpoint_path(&dir).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `set_steps` lengthens a run (as the examples do on `--resume`) and rejects zero.
#[test]
fn set_steps_extends_a_run_and_rejects_zero() {
    let data = Toy::Checkerboard.sample(256, 0).unwrap();
    let rf: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let mut trainer = Trainer::new(model(rf, 16, 1.0), data, quiet(3, 64)).unwrap();
    trainer.fit().unwrap();
    assert_eq!(trainer.step(), 3);
    assert!(matches!(
        trainer.set_steps(0),
        Err(Error::InvalidArgument { name: "steps", .. })
    ));
    trainer.set_steps(5).unwrap();
    trainer.fit().unwrap();
    assert_eq!(trainer.step(), 5);
}

/// Trainers on several threads at once all finish (each trains on a rayon pool of its own
/// thread: on one shared pool, a worker waiting inside one trainer's step could take up
/// another's and block on burn's autodiff lock for good, as it once did in this file's tests).
/// A stress check, not a certain reproduction of that interleaving; a small UNet, whose
/// convolutions always split their work over rayon's threads.
#[test]
fn trainers_on_several_threads_at_once_finish() {
    use integration_flow::nn::UNetConfig;
    let (done, finished) = std::sync::mpsc::channel();
    for seed in 0..4u64 {
        let done = done.clone();
        std::thread::spawn(move || {
            let config = UNetConfig {
                height: 8,
                width: 8,
                patch: 1,
                base_channels: 8,
                channel_mult: vec![1, 2],
                attention_resolutions: vec![4],
                heads: 2,
                groups: 4,
                ..Default::default()
            };
            let net = config
                .init::<CpuAutodiff>(&Default::default(), seed)
                .unwrap();
            let model = IntegrationFlowConfig {
                parameterization: Parameterization::Integral,
                sigma_data: Some(0.5),
                anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
            }
            .init(
                Arc::new(RectifiedFlowConfig::default().init().unwrap()),
                net,
            )
            .unwrap();
            let values = (0..256 * 64).map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0);
            let data = Dataset::new(values.collect(), 64).unwrap();
            let mut trainer = Trainer::new(model, data, quiet(30, 32)).unwrap();
            trainer.fit().unwrap();
            done.send((seed, trainer.step())).unwrap();
        });
    }
    drop(done);
    let mut steps = Vec::new();
    for _ in 0..4 {
        // Four small trainings take seconds; a deadlock never ends.
        let (seed, step) = finished
            .recv_timeout(std::time::Duration::from_secs(300))
            .expect("every trainer finishes (none deadlocked)");
        steps.push((seed, step));
    }
    assert!(steps.iter().all(|&(_, step)| step == 30), "{steps:?}");
}

/// `FusedAdam` (the trainer's Adam: one fused pass per parameter on the CPU backend) moves the
/// weights as burn's `Adam` does over many steps, with and without weight decay.
#[test]
fn fused_adam_follows_burns_adam() {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{decay::WeightDecayConfig, AdamConfig, GradientsParams, Optimizer};
    use burn::tensor::{Distribution, Tensor};
    use integration_flow::train::FusedAdam;

    #[derive(Module, Debug)]
    struct Net<B: burn::tensor::backend::Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }
    impl<B: burn::tensor::backend::Backend> Net<B> {
        fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
            self.b
                .forward(burn::tensor::activation::tanh(self.a.forward(x)))
        }
    }
    let device = Default::default();
    for penalty in [0.0f32, 0.01] {
        <CpuAutodiff as burn::tensor::backend::Backend>::seed(&device, 3);
        // Large enough that the update runs in several parallel pieces.
        let start = Net::<CpuAutodiff> {
            a: LinearConfig::new(24, 700).init(&device),
            b: LinearConfig::new(700, 3).init(&device),
        };
        let x = Tensor::<CpuAutodiff, 2>::random([64, 24], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<CpuAutodiff, 2>::random([64, 3], Distribution::Normal(0.0, 1.0), &device);
        let train =
            |mut optim: Box<dyn FnMut(Net<CpuAutodiff>, GradientsParams) -> Net<CpuAutodiff>>| {
                let mut net = start.clone();
                for _ in 0..40 {
                    let loss = (net.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
                    let grads = GradientsParams::from_grads(loss.backward(), &net);
                    net = optim(net, grads);
                }
                weights(&net)
            };
        // Reading the weights initialises burn's lazy parameters, so that both runs start from
        // the same values (each clone would otherwise draw its own).
        let before = weights(&start);
        let mut fused = FusedAdam::new(0.9, 0.999, 1e-8, penalty).init();
        let ours = train(Box::new(move |net, grads| fused.step(3e-3, net, grads)));
        assert_eq!(
            weights(&start),
            before,
            "the starting weights are untouched"
        );
        let decay = (penalty > 0.0).then(|| WeightDecayConfig::new(penalty));
        let mut adam = AdamConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(decay)
            .init();
        let theirs = train(Box::new(move |net, grads| adam.step(3e-3, net, grads)));
        let moved = ours
            .iter()
            .zip(&before)
            .filter(|(a, b)| (*a - *b).abs() > 1e-3)
            .count();
        assert!(
            moved > ours.len() / 2,
            "the weights moved ({moved} of {})",
            ours.len()
        );
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{a} against {b} (penalty {penalty})"
            );
        }
    }
}
