//! The image terms of the loss. The perceptual term: it joins the loss with its weight, it needs
//! its network, and a checkpoint remembers it. The adversarial term: it joins the loss with its
//! weight, its critic learns, a checkpoint holds the critic so a resumed run continues exactly,
//! images of another shape are refused, a regression run's rows at `t_max` and the flow map's
//! jumps to the data end are judged.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use integration_flow::backend::CpuAutodiff;
use integration_flow::data::Dataset;
use integration_flow::model::IntegrationFlow;
use integration_flow::nn::{IntegrationNet, Mlp};
use integration_flow::train::{
    AdversarialConfig, AnchorPolicy, FlowMapConfig, ImageFeatures, ObjectiveConfig,
    PerceptualConfig, TrainConfig, Trainer,
};
use integration_flow::Error;

/// A fixed "network" on 1×4×4 images: the image and its 2×2 average pool, each as two
/// channels (the values and one minus them).
#[derive(Clone)]
struct Pools;

impl<B: Backend> ImageFeatures<B> for Pools {
    fn image_shape(&self) -> [usize; 3] {
        [1, 4, 4]
    }
    fn feature_maps(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let two = |t: Tensor<B, 4>| Tensor::cat(vec![t.clone(), t.neg().add_scalar(1.0)], 1);
        let pooled =
            burn::tensor::module::avg_pool2d(images.clone(), [2, 2], [2, 2], [0, 0], true, false);
        vec![two(images), two(pooled)]
    }
    fn boxed_clone(&self) -> Box<dyn ImageFeatures<B>> {
        Box::new(Pools)
    }
}

/// 64 "images" of 16 pixels: a bright square at one of four places.
fn squares() -> Dataset {
    let mut values = Vec::new();
    for i in 0..64 {
        let (r, c) = ((i % 4) / 2 * 2, (i % 2) * 2);
        for y in 0..4 {
            for x in 0..4 {
                let on = (r..r + 2).contains(&y) && (c..c + 2).contains(&x);
                values.push(if on { 1.0 } else { -1.0 });
            }
        }
    }
    Dataset::new(values, 16).unwrap()
}

fn model() -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
    model_of(16)
}

fn model_of(dim: usize) -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
    common::rf_mlp_of(dim, 32, 2)
}

fn config(weight: Option<f64>) -> TrainConfig {
    let mut config = TrainConfig {
        steps: 40,
        batch_size: 16,
        progress: false,
        perceptual: weight.map(|weight| PerceptualConfig { weight }),
        ..Default::default()
    };
    config.anchor.policy = AnchorPolicy::Off;
    config
}

/// The first step's loss with weight 0 (no term), 1 and 2: the same estimate and target (same
/// seed, same weights), so the loss is linear in the weight with a positive slope.
#[test]
fn the_term_joins_the_loss_with_its_weight() {
    let first_loss = |weight: Option<f64>| {
        let mut trainer = Trainer::new(model(), squares(), config(weight)).unwrap();
        if weight.is_some() {
            trainer = trainer.with_perceptual_features(Box::new(Pools)).unwrap();
        }
        trainer.train_steps(1).unwrap().unwrap().loss
    };
    let (l0, l1, l2) = (
        first_loss(None),
        first_loss(Some(1.0)),
        first_loss(Some(2.0)),
    );
    let slope = l1 - l0;
    assert!(slope > 1e-4, "{l0} {l1} {l2}");
    assert!(
        ((l2 - l1) - slope).abs() < 1e-4 * slope.max(1.0),
        "{l0} {l1} {l2}"
    );
}

#[test]
fn the_term_needs_its_network_also_after_a_resume() {
    let dir = common::scratch("perceptual", "resume");
    // Without the network the first step refuses, before anything changes.
    let mut trainer = Trainer::new(model(), squares(), config(Some(1.0))).unwrap();
    let err = trainer.train_steps(1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "perceptual",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(trainer.step(), 0);
    // With it the run trains; its checkpoint keeps the weight, so a resume without the network
    // refuses too.
    let mut trainer = Trainer::new(model(), squares(), config(Some(1.0)))
        .unwrap()
        .with_perceptual_features(Box::new(Pools))
        .unwrap()
        .with_checkpoint_dir(&dir);
    trainer.train_steps(5).unwrap();
    trainer.checkpoint().unwrap();
    let mut resumed = Trainer::resume(&dir, model(), squares()).unwrap();
    assert_eq!(
        resumed.config().perceptual,
        Some(PerceptualConfig { weight: 1.0 })
    );
    assert!(resumed.train_steps(1).is_err());
    let mut resumed = resumed.with_perceptual_features(Box::new(Pools)).unwrap();
    resumed.train_steps(1).unwrap();
    assert_eq!(resumed.step(), 6);
}

#[test]
fn a_network_without_the_term_or_of_the_wrong_shape_is_refused() {
    let trainer = Trainer::new(model(), squares(), config(None)).unwrap();
    let err = trainer
        .with_perceptual_features(Box::new(Pools))
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "perceptual",
                ..
            }
        ),
        "{err}"
    );
    let wide = Dataset::new(vec![0.0; 64 * 25], 25).unwrap();
    let trainer = Trainer::new(model_of(25), wide, config(Some(1.0))).unwrap();
    let err = trainer
        .with_perceptual_features(Box::new(Pools))
        .err()
        .unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let bad = TrainConfig {
        perceptual: Some(PerceptualConfig { weight: -1.0 }),
        ..config(None)
    };
    let err = Trainer::new(model(), squares(), bad).err().unwrap();
    assert!(err.to_string().contains("perceptual.weight"), "{err}");
}

/// The distillation hands the network to its student: without it the student stage refuses,
/// with it the student trains with the term its checkpoint records.
#[test]
fn the_distillation_gives_its_student_the_network() {
    use integration_flow::pipeline::{DistillConfig, Distillation};
    use std::time::Duration;
    let recipe = DistillConfig {
        pairs: 128,
        pair_steps: 2,
        pair_batch: 64,
        student_steps: 10,
        student_perceptual: Some(PerceptualConfig { weight: 0.5 }),
        ..Default::default()
    };
    let teacher = TrainConfig {
        steps: 20,
        ..config(None)
    };
    let run = |name: &str, features: bool| {
        let dir = common::scratch("perceptual", name);
        let mut run =
            Distillation::new(&dir, model(), squares(), teacher.clone(), recipe.clone()).unwrap();
        if features {
            run = run.with_student_features(Box::new(Pools));
        }
        run.run_for(Duration::from_secs(600))
    };
    let err = run("distill_without", false).err().unwrap();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "perceptual",
                ..
            }
        ),
        "{err}"
    );
    let student = run("distill_with", true).unwrap();
    assert_eq!(student.step(), 10);
    assert_eq!(
        student.config().perceptual,
        Some(PerceptualConfig { weight: 0.5 })
    );
}

fn adversarial(weight: f64) -> AdversarialConfig {
    AdversarialConfig {
        weight,
        image: [1, 4, 4],
        width: 4,
        lr: 1e-3,
        critic_warmup: 0,
    }
}

/// A regression run whose every row trains at `t_max`, where its estimates are one-step
/// samples, the rows the critic judges.
fn adversarial_config(weight: Option<f64>) -> TrainConfig {
    TrainConfig {
        adversarial: weight.map(adversarial),
        t_max_fraction: 1.0,
        ..config(None)
    }
}

/// A regression run judges only its rows at `t_max`: with none there (times drawn from the
/// open interval) the critic and the term are left out and the loss is the plain run's.
#[test]
fn a_regression_run_judges_its_rows_at_t_max_only() {
    let first = |weight: Option<f64>, t_max_fraction: f64| {
        let config = TrainConfig {
            t_max_fraction,
            ..adversarial_config(weight)
        };
        Trainer::new(model(), squares(), config)
            .unwrap()
            .train_steps(1)
            .unwrap()
            .unwrap()
    };
    let none_at_max = first(Some(1.0), 0.0);
    assert_eq!(none_at_max.critic_loss, None);
    assert_eq!(none_at_max.loss, first(None, 0.0).loss);
    let half = first(Some(1.0), 0.5);
    assert!(half.critic_loss.is_some_and(f64::is_finite), "{half:?}");
    assert_ne!(half.loss, first(None, 0.5).loss);
}

/// The first step's loss without the term and with weights 1 and 2: the estimate and the
/// critic's first weights are the same, so the loss is linear in the weight, its slope the
/// critic's mean score negated (not zero for a random critic).
#[test]
fn the_adversarial_term_joins_the_loss_with_its_weight() {
    let first = |weight: Option<f64>| {
        let mut trainer = Trainer::new(model(), squares(), adversarial_config(weight)).unwrap();
        trainer.train_steps(1).unwrap().unwrap()
    };
    let (s0, s1, s2) = (first(None), first(Some(1.0)), first(Some(2.0)));
    // During the critic's warm-up only the critic learns: the model's loss has no term.
    let mut warm = adversarial_config(Some(1.0));
    if let Some(a) = warm.adversarial.as_mut() {
        a.critic_warmup = 1;
    }
    let warming = Trainer::new(model(), squares(), warm)
        .unwrap()
        .train_steps(1)
        .unwrap()
        .unwrap();
    assert_eq!(warming.loss, s0.loss);
    assert!(warming.critic_loss.is_some());
    assert_eq!(s0.critic_loss, None);
    assert!(s1.critic_loss.is_some_and(f64::is_finite), "{s1:?}");
    let slope = s1.loss - s0.loss;
    assert!(slope.abs() > 1e-6, "{} {} {}", s0.loss, s1.loss, s2.loss);
    assert!(
        ((s2.loss - s1.loss) - slope).abs() < 1e-4 * slope.abs().max(1.0),
        "{} {} {}",
        s0.loss,
        s1.loss,
        s2.loss
    );
}

/// With a model that barely learns, the critic learns to tell its poor estimates from the
/// squares: its hinge loss falls from about 2 (no separation).
#[test]
fn the_critic_learns_to_tell_estimates_from_targets() {
    let mut config = adversarial_config(Some(1e-6));
    config.optimizer.lr = 1e-9;
    let mut trainer = Trainer::new(model(), squares(), config).unwrap();
    let first = trainer
        .train_steps(1)
        .unwrap()
        .unwrap()
        .critic_loss
        .unwrap();
    let mut last = first;
    for _ in 0..299 {
        last = trainer
            .train_steps(1)
            .unwrap()
            .unwrap()
            .critic_loss
            .unwrap();
    }
    assert!(first > 1.5, "{first}");
    assert!(last < 0.5 * first, "{first} -> {last}");
}

/// Eight steps straight, and four, a checkpoint, a resume and four more: the same weights and
/// the same losses, the critic's included (it is restored, not re-drawn).
#[test]
fn a_resumed_adversarial_run_continues_exactly() {
    let dir = common::scratch("image_terms", "adversarial_resume");
    let config = adversarial_config(Some(0.1));
    let mut straight = Trainer::new(model(), squares(), config.clone()).unwrap();
    straight.train_steps(4).unwrap();
    let expected: Vec<_> = (0..4)
        .map(|_| straight.train_steps(1).unwrap().unwrap())
        .collect();
    let mut first = Trainer::new(model(), squares(), config)
        .unwrap()
        .with_checkpoint_dir(&dir);
    first.train_steps(4).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir, model(), squares()).unwrap();
    assert_eq!(resumed.config().adversarial, Some(adversarial(0.1)));
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
fn images_of_another_shape_are_refused() {
    let wide = Dataset::new(vec![0.0; 64 * 25], 25).unwrap();
    let err = Trainer::new(model_of(25), wide, adversarial_config(Some(0.1)))
        .err()
        .unwrap();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let bad = TrainConfig {
        adversarial: Some(AdversarialConfig {
            lr: 0.0,
            ..adversarial(0.1)
        }),
        ..config(None)
    };
    let err = Trainer::new(model(), squares(), bad).err().unwrap();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "adversarial",
                ..
            }
        ),
        "{err}"
    );
}

/// A flow-map run: the critic judges the rows that jump to the data end. With every row there
/// (`data_share` 1) it learns on each step; with none (`denoise_share` 1: every row is r = t)
/// it is left out and the loss is the run's without the term.
#[test]
fn the_flow_map_s_jumps_to_the_data_end_are_judged() {
    let net = |share: (f64, f64)| {
        let objective = ObjectiveConfig::FlowMap(FlowMapConfig {
            denoise_share: share.0,
            data_share: share.1,
            ..Default::default()
        });
        let plain = model();
        let model = plain.with_net(plain.net().clone().with_target_time().unwrap());
        (model, objective)
    };
    let first = |share: (f64, f64), weight: Option<f64>| {
        let (model, objective) = net(share);
        let config = TrainConfig {
            objective,
            ..adversarial_config(weight)
        };
        Trainer::new(model, squares(), config)
            .unwrap()
            .train_steps(1)
            .unwrap()
            .unwrap()
    };
    let judged = first((0.0, 1.0), Some(1.0));
    assert!(judged.critic_loss.is_some_and(f64::is_finite), "{judged:?}");
    assert_ne!(judged.loss, first((0.0, 1.0), None).loss);
    let unjudged = first((1.0, 0.0), Some(1.0));
    assert_eq!(unjudged.critic_loss, None);
    assert_eq!(unjudged.loss, first((1.0, 0.0), None).loss);
}

/// The distillation gives its pairs student the term, which the student's checkpoint records.
#[test]
fn the_distillation_trains_its_student_with_the_critic() {
    use integration_flow::pipeline::{DistillConfig, Distillation};
    use std::time::Duration;
    let recipe = DistillConfig {
        pairs: 128,
        pair_steps: 2,
        pair_batch: 64,
        student_steps: 10,
        student_adversarial: Some(adversarial(0.1)),
        ..Default::default()
    };
    let teacher = TrainConfig {
        steps: 20,
        ..config(None)
    };
    let dir = common::scratch("image_terms", "adversarial_distill");
    let mut run = Distillation::new(&dir, model(), squares(), teacher, recipe).unwrap();
    let student = run.run_for(Duration::from_secs(600)).unwrap();
    assert_eq!(student.step(), 10);
    assert_eq!(student.config().adversarial, Some(adversarial(0.1)));
}
