//! The distribution-matching term: it is zero while the fake denoiser is the teacher and acts
//! once the fake has learned the student's estimates, its warm-up leaves both alone, it pulls
//! the student towards the teacher's data, it needs its teacher (also after a resume), a
//! checkpoint holds the fake denoiser so a resumed run continues exactly, and bad settings or
//! teachers are refused.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;
use integration_flow::backend::CpuAutodiff;
use integration_flow::data::Dataset;
use integration_flow::model::IntegrationFlow;
use integration_flow::nn::Mlp;
use integration_flow::train::{AnchorPolicy, DistributionMatchingConfig, TrainConfig, Trainer};
use integration_flow::Error;

type Model = IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>>;

/// 256 points of a small disc around `(centre, centre)`.
fn cluster(centre: f32) -> Dataset {
    let values = (0..256)
        .flat_map(|i| {
            let a = i as f32 * 2.399_963;
            let r = 0.3 * ((i as f32 + 0.5) / 256.0).sqrt();
            [centre + r * a.cos(), centre + r * a.sin()]
        })
        .collect();
    Dataset::new(values, 2).unwrap()
}

fn model() -> Model {
    common::rf_mlp_of(2, 32, 2)
}

fn matching(weight: f64) -> DistributionMatchingConfig {
    DistributionMatchingConfig {
        weight,
        lr: 1e-3,
        ..Default::default()
    }
}

fn config(steps: usize, weight: Option<f64>) -> TrainConfig {
    let mut config = TrainConfig {
        steps,
        batch_size: 64,
        progress: false,
        distribution_matching: weight.map(matching),
        // Every row at t_max, where a regression run's estimates are one-step samples: the
        // rows the term judges.
        t_max_fraction: 1.0,
        ..Default::default()
    };
    config.optimizer.lr = 1e-3;
    config.anchor.policy = AnchorPolicy::Off;
    config
}

/// A denoiser of the cluster at `centre`, trained from the model's initial weights.
fn teacher(centre: f32) -> Mlp<CpuAutodiff> {
    let config = TrainConfig {
        t_max_fraction: 0.0,
        ..config(300, None)
    };
    let mut trainer = Trainer::new(model(), cluster(centre), config).unwrap();
    trainer.fit().unwrap();
    trainer.model().net().clone()
}

/// The losses of 20 steps of a run from the model's initial weights on the cluster at +1, with
/// the term as `matching` says (the teacher: those initial weights) or without it.
fn losses(matching: Option<DistributionMatchingConfig>) -> Vec<f64> {
    let config = TrainConfig {
        distribution_matching: matching.clone(),
        ..config(20, None)
    };
    let mut trainer = Trainer::new(model(), cluster(1.0), config).unwrap();
    if matching.is_some() {
        trainer = trainer.with_score_teacher(model().net().clone()).unwrap();
    }
    (0..20)
        .map(|_| trainer.train_steps(1).unwrap().unwrap().loss)
        .collect()
}

/// The first step of a run whose fake denoiser is still the teacher has the loss of the run
/// without the term (the two denoisers agree, so the gradient is zero); after the fake has
/// learned the student's estimates the losses part.
#[test]
fn the_term_is_zero_until_the_fake_denoiser_learns() {
    let (plain, matched) = (losses(None), losses(Some(matching(1.0))));
    assert_eq!(plain[0], matched[0]);
    assert_ne!(plain[19], matched[19]);
}

/// With a warm-up of 5 steps the term is off and the fake denoiser untouched for steps 0–4, so
/// the first active step (5) still finds the fake equal to the teacher: six equal losses, then
/// the runs part.
#[test]
fn the_warm_up_leaves_the_term_and_the_fake_denoiser_alone() {
    let plain = losses(None);
    let warm = losses(Some(DistributionMatchingConfig {
        warmup: 5,
        ..matching(1.0)
    }));
    assert_eq!(plain[..6], warm[..6]);
    assert_ne!(plain[19], warm[19]);
}

/// A student of the cluster at −1 whose teacher denoises the cluster at +1: distribution
/// matching pulls its estimates towards the teacher's cluster, so their mean ends further up
/// than without the term (a term of the wrong sign would push them down).
#[test]
fn the_term_pulls_the_student_towards_the_teacher_s_data() {
    let teacher = teacher(1.0);
    let mean_estimate = |weight: Option<f64>| {
        let start = model().with_net(teacher.clone());
        let mut trainer = Trainer::new(start, cluster(-1.0), config(150, weight)).unwrap();
        if weight.is_some() {
            trainer = trainer.with_score_teacher(teacher.clone()).unwrap();
        }
        trainer.fit().unwrap();
        let model = trainer.model();
        // The same prior draws for both runs.
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws: Vec<f32> = (0..1024)
            .map(|_| rand_distr::StandardNormal.sample(&mut rng))
            .collect();
        let noise = burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(draws, [512, 2]),
            &Default::default(),
        );
        let zeros = burn::tensor::Tensor::zeros([512, 2], &Default::default());
        let x = model.denoise(noise, &[1.0; 512], zeros).unwrap();
        x.mean().into_scalar()
    };
    let (plain, matched) = (mean_estimate(None), mean_estimate(Some(30.0)));
    assert!(
        matched > plain + 1.0,
        "with the term {matched}, without {plain}"
    );
}

#[test]
fn the_term_needs_its_teacher_also_after_a_resume() {
    let dir = common::scratch("distribution_matching", "teacher");
    let mut trainer = Trainer::new(model(), cluster(1.0), config(20, Some(1.0))).unwrap();
    let err = trainer.train_steps(1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "distribution_matching",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(trainer.step(), 0);
    let mut trainer = trainer
        .with_score_teacher(model().net().clone())
        .unwrap()
        .with_checkpoint_dir(&dir);
    trainer.train_steps(3).unwrap();
    trainer.checkpoint().unwrap();
    let mut resumed = Trainer::resume(&dir, model(), cluster(1.0)).unwrap();
    assert_eq!(resumed.config().distribution_matching, Some(matching(1.0)));
    let err = resumed.train_steps(1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "distribution_matching",
                ..
            }
        ),
        "{err}"
    );
    let mut resumed = resumed.with_score_teacher(model().net().clone()).unwrap();
    resumed.train_steps(1).unwrap();
    assert_eq!(resumed.step(), 4);
}

/// Eight steps straight, and four, a checkpoint, a resume and four more: the same losses and
/// weights, so the fake denoiser and its optimizer were restored.
#[test]
fn a_resumed_run_continues_exactly() {
    let dir = common::scratch("distribution_matching", "resume");
    let teacher = teacher(1.0);
    let start = || {
        Trainer::new(model(), cluster(-1.0), config(8, Some(10.0)))
            .unwrap()
            .with_score_teacher(teacher.clone())
            .unwrap()
    };
    let mut straight = start();
    straight.train_steps(4).unwrap();
    let expected: Vec<_> = (0..4)
        .map(|_| straight.train_steps(1).unwrap().unwrap())
        .collect();
    let mut first = start().with_checkpoint_dir(&dir);
    first.train_steps(4).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir, model(), cluster(-1.0))
        .unwrap()
        .with_score_teacher(teacher.clone())
        .unwrap();
    let got: Vec<_> = (0..4)
        .map(|_| resumed.train_steps(1).unwrap().unwrap())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        common::weights(resumed.model().net()),
        common::weights(straight.model().net())
    );
}

#[test]
fn bad_settings_and_teachers_are_refused() {
    let err = Trainer::new(model(), cluster(1.0), config(20, None))
        .unwrap()
        .with_score_teacher(model().net().clone())
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "distribution_matching",
                ..
            }
        ),
        "{err}"
    );
    let wide = common::rf_mlp_of(2, 16, 2).net().clone();
    let err = Trainer::new(model(), cluster(1.0), config(20, Some(1.0)))
        .unwrap()
        .with_score_teacher(wide)
        .err()
        .unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let bad = [
        DistributionMatchingConfig {
            weight: 0.0,
            ..Default::default()
        },
        DistributionMatchingConfig {
            weight: f64::NAN,
            ..Default::default()
        },
        DistributionMatchingConfig {
            lr: -1.0,
            ..Default::default()
        },
        DistributionMatchingConfig {
            fake_updates: 0,
            ..Default::default()
        },
    ];
    for matching in bad {
        let config = TrainConfig {
            distribution_matching: Some(matching.clone()),
            ..config(20, None)
        };
        let err = Trainer::new(model(), cluster(1.0), config).err().unwrap();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "distribution_matching",
                    ..
                }
            ),
            "{matching:?}: {err}"
        );
    }
}

/// The distillation gives its pairs student the teacher, and the student's checkpoint records
/// the term.
#[test]
fn the_distillation_trains_its_student_with_the_teacher() {
    use integration_flow::pipeline::{DistillConfig, Distillation};
    use std::time::Duration;
    let recipe = DistillConfig {
        pairs: 128,
        pair_steps: 2,
        pair_batch: 64,
        student_steps: 10,
        student_distribution_matching: Some(matching(1.0)),
        ..Default::default()
    };
    let dir = common::scratch("distribution_matching", "distill");
    let mut run = Distillation::new(&dir, model(), cluster(1.0), config(20, None), recipe).unwrap();
    let student = run.run_for(Duration::from_secs(600)).unwrap();
    assert_eq!(student.step(), 10);
    assert_eq!(student.config().distribution_matching, Some(matching(1.0)));
}
