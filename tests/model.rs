//! The model: preconditioning forms, generation, input checks.
#![cfg(any(feature = "flex", feature = "ndarray"))]

use burn::tensor::{Tensor, TensorData};
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::Toy;
use integration_flow::flow::{Parameterization, ProbabilityFlowExt, RectifiedFlowConfig, VeConfig};
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::{IntegrationNet, MlpConfig, NoiseEmbedding};
use integration_flow::train::{TrainConfig, Trainer};
use integration_flow::Error;
use rand::{rngs::StdRng, SeedableRng};
use std::sync::Arc;

fn values(t: Tensor<Cpu, 2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn the_estimate_applies_the_preconditioning() {
    let device = Default::default();
    let net = MlpConfig {
        width: 16,
        depth: 2,
        ..Default::default()
    }
    .init::<Cpu>(&device, 1)
    .unwrap();
    let ve = VeConfig::default().init().unwrap();
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(0.5),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(Arc::new(ve.clone()), net.clone())
    .unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let x_t = model.sample_prior(&mut rng, 4).unwrap();
    let anchor = model.sample_anchor(&mut rng, 4).unwrap();
    // At σ_min the integral-form VE estimate is x_t whatever the network says.
    let est = model.estimate(x_t.clone(), &[0.0], anchor.clone()).unwrap();
    assert_eq!(values(est), values(x_t.clone()));
    // Elsewhere: c_skip·x_t + c_out·F(c_in·x_t, c_noise, a), computed by hand.
    let t = 0.6;
    let p = ve
        .preconditioning(t, Parameterization::Integral, 0.5)
        .unwrap();
    let c_noise = Tensor::<Cpu, 1>::from_floats([p.c_noise as f32; 4], &device);
    let f = net.forward(x_t.clone().mul_scalar(p.c_in), c_noise, anchor.clone());
    let by_hand = values(x_t.clone().mul_scalar(p.c_skip) + f.mul_scalar(p.c_out));
    let est = values(model.estimate(x_t, &[t], anchor).unwrap());
    for (a, b) in est.iter().zip(&by_hand) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn generation_takes_one_or_more_calls() {
    let device = Default::default();
    let net = MlpConfig {
        width: 16,
        depth: 2,
        ..Default::default()
    }
    .init::<Cpu>(&device, 2)
    .unwrap();
    let rf = RectifiedFlowConfig::default().init().unwrap();
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(Arc::new(rf), net)
    .unwrap();
    let one = values(model.generate(&mut StdRng::seed_from_u64(5), 8, 1).unwrap());
    let one_again = values(model.generate(&mut StdRng::seed_from_u64(5), 8, 1).unwrap());
    let two = values(model.generate(&mut StdRng::seed_from_u64(5), 8, 2).unwrap());
    assert_eq!(one, one_again);
    assert_ne!(one, two);
    assert!(model.generate(&mut StdRng::seed_from_u64(5), 8, 0).is_err());
    assert!(model.generate(&mut StdRng::seed_from_u64(5), 0, 1).is_err());
}

#[test]
fn the_edm_form_is_selectable_and_checked() {
    let device = Default::default();
    let net = || {
        MlpConfig {
            width: 64,
            depth: 2,
            ..Default::default()
        }
        .init::<CpuAutodiff>(&device, 3)
        .unwrap()
    };
    // Singular at rectified flow's ends: refused when the model is built.
    let rf = RectifiedFlowConfig::default().init().unwrap();
    let err = IntegrationFlowConfig {
        parameterization: Parameterization::Edm,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(Arc::new(rf), net())
    .unwrap_err();
    assert!(matches!(err, Error::Singular { .. }), "{err}");
    // Fine on a narrowed range, and on VE; it trains.
    let rf = RectifiedFlowConfig {
        t_min: 1e-3,
        t_max: 1.0 - 1e-3,
    }
    .init()
    .unwrap();
    assert!(IntegrationFlowConfig {
        parameterization: Parameterization::Edm,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 }
    }
    .init(Arc::new(rf), net())
    .is_ok());
    let ve = VeConfig {
        sigma_max: 20.0,
        ..Default::default()
    }
    .init()
    .unwrap();
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Edm,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(Arc::new(ve), net())
    .unwrap();
    let config = TrainConfig {
        steps: 150,
        batch_size: 128,
        progress: false,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, Toy::Moons.sample(1024, 0).unwrap(), config).unwrap();
    let first = trainer.train_step().unwrap().loss;
    let last = trainer.fit().unwrap().unwrap().loss;
    assert!(last < 0.5 * first, "EDM form: loss {first} → {last}");
}

#[test]
fn bad_model_input_is_a_typed_error() {
    let device = Default::default();
    let net = MlpConfig {
        width: 8,
        depth: 1,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap();
    let rf = RectifiedFlowConfig::default().init().unwrap();
    assert!(IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(0.0),
        anchor_law: AnchorLaw::Zero
    }
    .init(Arc::new(rf.clone()), net.clone())
    .is_err());
    assert!(IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: f64::NAN }
    }
    .init(Arc::new(rf.clone()), net.clone())
    .is_err());
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Zero,
    }
    .init(Arc::new(rf), net)
    .unwrap();
    let x = Tensor::<Cpu, 2>::zeros([4, 3], &device);
    let err = model.estimate(x.clone(), &[0.5], x).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let x = Tensor::<Cpu, 2>::zeros([4, 2], &device);
    assert!(model.estimate(x.clone(), &[0.5, 0.5], x.clone()).is_err());
    assert!(model.estimate(x.clone(), &[1.5], x).is_err());
    // The anchor law "zero" feeds zeros.
    let a = values(
        model
            .sample_anchor(&mut StdRng::seed_from_u64(0), 3)
            .unwrap(),
    );
    assert!(a.iter().all(|&v| v == 0.0));
    // Network configs name their field.
    let err = MlpConfig {
        width: 0,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap_err();
    assert!(err.to_string().contains("width"), "{err}");
    let odd = NoiseEmbedding::RandomFourier {
        dim: 7,
        scale: 16.0,
        seed: 0,
    };
    let err = MlpConfig {
        embedding: odd,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap_err();
    assert!(err.to_string().contains("dim"), "{err}");
    let rff = NoiseEmbedding::RandomFourier {
        dim: 16,
        scale: 16.0,
        seed: 0,
    };
    assert_eq!(
        MlpConfig {
            embedding: rff,
            ..Default::default()
        }
        .init::<Cpu>(&device, 0)
        .unwrap()
        .dim(),
        2
    );
}

/// A NaN or infinity in `x_t` or the anchor is a typed error, not NaN samples.
#[test]
fn non_finite_inputs_are_an_error() {
    let device = Default::default();
    let net = MlpConfig {
        width: 8,
        depth: 1,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap();
    let model = IntegrationFlowConfig::default()
        .init(
            Arc::new(RectifiedFlowConfig::default().init().unwrap()),
            net,
        )
        .unwrap();
    let rows =
        |v: [f32; 4]| Tensor::<Cpu, 2>::from_data(TensorData::new(v.to_vec(), [2, 2]), &device);
    let fine = rows([0.0, 1.0, -1.0, 0.5]);
    assert!(model.estimate(fine.clone(), &[0.5], fine.clone()).is_ok());
    for (x, a, which) in [
        (rows([0.0, f32::NAN, 0.0, 0.0]), fine.clone(), "x_t"),
        (fine.clone(), rows([0.0, 0.0, f32::INFINITY, 0.0]), "anchor"),
    ] {
        let err = model.estimate(x.clone(), &[0.5], a.clone()).unwrap_err();
        match err {
            Error::NonFinite { context, .. } => assert!(context.ends_with(which), "{context}"),
            other => panic!("{other}"),
        }
        assert!(model.denoise(x, &[0.5], a).is_err());
    }
}

/// A small rectified-flow model whose σ_data is left to the data.
fn rf_model_scaled_by_data(
) -> integration_flow::model::IntegrationFlow<CpuAutodiff, integration_flow::nn::Mlp<CpuAutodiff>> {
    let net = MlpConfig {
        width: 16,
        depth: 1,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap();
    IntegrationFlowConfig::default()
        .init(
            Arc::new(RectifiedFlowConfig::default().init().unwrap()),
            net,
        )
        .unwrap()
}

/// σ_data left to the data is the training data's standard deviation once a trainer starts,
/// survives a checkpoint and a resume, and a constant dataset (no scale) is refused.
#[test]
fn sigma_data_comes_from_the_data_when_not_given() {
    let model = rf_model_scaled_by_data();
    assert!(model.sigma_data_from_data());
    assert_eq!(model.sigma_data(), 1.0);
    let data = Toy::Moons.sample(256, 0).unwrap();
    let (_, std) = data.mean_and_std();
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_sigma_auto_{}",
        std::process::id()
    ));
    let config = TrainConfig {
        steps: 3,
        batch_size: 64,
        progress: false,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model.clone(), data.clone(), config)
        .unwrap()
        .with_checkpoint_dir(&dir);
    assert_eq!(trainer.model().sigma_data(), std);
    assert!(!trainer.model().sigma_data_from_data());
    trainer.fit().unwrap();
    let resumed = Trainer::resume(&dir, model.clone(), data).unwrap();
    assert_eq!(resumed.model().sigma_data(), std);
    // Other data: the checkpoint names the dataset, not σ_data.
    let other = Toy::Moons.sample(256, 1).unwrap();
    let err = Trainer::resume(&dir, model.clone(), other).err().unwrap();
    assert!(err.to_string().contains("dataset"), "{err}");
    let constant = integration_flow::data::Dataset::new(vec![0.5; 64], 2).unwrap();
    let small = TrainConfig {
        batch_size: 16,
        ..TrainConfig::default()
    };
    let err = Trainer::new(model, constant, small).err().unwrap();
    assert!(err.to_string().contains("constant data"), "{err}");
    // A value of your own is kept.
    let given = IntegrationFlowConfig {
        sigma_data: Some(0.25),
        ..Default::default()
    }
    .init(
        Arc::new(RectifiedFlowConfig::default().init().unwrap()),
        MlpConfig::default()
            .init::<CpuAutodiff>(&Default::default(), 0)
            .unwrap(),
    )
    .unwrap();
    let trainer = Trainer::new(
        given,
        Toy::Moons.sample(1024, 0).unwrap(),
        TrainConfig::default(),
    )
    .unwrap();
    assert_eq!(trainer.model().sigma_data(), 0.25);
}

/// In the distillation pipeline σ_data left to the data is the training data's for the teacher
/// and the student alike (the student trains on generated pairs, whose spread differs).
#[test]
fn the_distilled_student_keeps_its_teachers_sigma_data() {
    use integration_flow::pipeline::{DistillConfig, Distillation};
    let data = Toy::Moons.sample(512, 0).unwrap();
    let (_, std) = data.mean_and_std();
    let model = rf_model_scaled_by_data();
    let teacher = TrainConfig {
        steps: 20,
        batch_size: 64,
        progress: false,
        ..Default::default()
    };
    let recipe = DistillConfig {
        pairs: 128,
        pair_steps: 2,
        pair_batch: 64,
        student_steps: 5,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!(
        "integration_flow_sigma_distill_{}",
        std::process::id()
    ));
    let student = Distillation::new(&dir, model, data, teacher, recipe)
        .unwrap()
        .run_for(std::time::Duration::from_secs(600))
        .unwrap();
    assert_eq!(student.step(), 5);
    assert_eq!(student.model().sigma_data(), std);
}
