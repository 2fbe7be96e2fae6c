//! Saved models: a checkpoint or an export loads without the training data and gives the
//! model that was saved; exports at f16 are close; what does not fit is a typed error.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;
use burn::tensor::{Tensor, TensorData};
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::data::Toy;
use integration_flow::flow::{FlowConfig, ProbabilityFlow};
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{IntegrationNet, Mlp, MlpConfig, NetworkConfig, UNet, UNetConfig};
use integration_flow::saved::{ModelCard, Precision, CARD_FILE, WEIGHTS_FILE};
use integration_flow::train::{CheckpointInfo, TrainConfig, Trainer};
use integration_flow::Error;
use rand::{rngs::StdRng, SeedableRng};

fn values(t: Tensor<Cpu, 2>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn samples<N: IntegrationNet<Cpu>>(model: &IntegrationFlow<Cpu, N>) -> Vec<f32> {
    values(
        model
            .generate(&mut StdRng::seed_from_u64(5), 64, 1)
            .unwrap(),
    )
}

/// A short run on moons with a checkpoint; its EMA model is what loading must return.
fn trained(dir: &std::path::Path) -> Trainer<CpuAutodiff, Mlp<CpuAutodiff>> {
    let data = Toy::Moons.sample(512, 0).unwrap();
    let (_, sd) = data.mean_and_std();
    let net = MlpConfig {
        width: 32,
        depth: 2,
        ..Default::default()
    }
    .init::<CpuAutodiff>(&Default::default(), 0)
    .unwrap();
    let model = IntegrationFlowConfig {
        sigma_data: Some(sd),
        ..Default::default()
    }
    .init(FlowConfig::Vp(Default::default()).init().unwrap(), net)
    .unwrap();
    let config = TrainConfig {
        steps: 30,
        batch_size: 64,
        progress: false,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, data, config)
        .unwrap()
        .with_checkpoint_dir(dir);
    trainer.fit().unwrap();
    trainer
}

#[test]
fn a_checkpoint_and_an_export_load_without_the_data() {
    let run = common::scratch("saved", "run");
    let trainer = trained(&run);
    let expected = samples(&trainer.ema_model());
    let device = Default::default();

    // The checkpoint alone: its EMA model, anchors' law and σ_data included.
    let loaded = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&run, &device).unwrap();
    assert_eq!(samples(&loaded), expected);
    assert_eq!(loaded.sigma_data(), trainer.model().sigma_data());
    assert_eq!(loaded.anchor_law(), trainer.ema_model().anchor_law());
    assert_eq!(loaded.flow().name(), "vp");
    let info = CheckpointInfo::read(&run).unwrap();
    assert!(matches!(info.network, Some(NetworkConfig::Mlp(ref c)) if c.width == 32));
    assert_eq!(info.sigma_data, trainer.model().sigma_data());

    // Exported at f32: the same samples; the card records the run.
    let export = common::scratch("saved", "export32");
    trainer.export(&export, Precision::F32).unwrap();
    let loaded = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&export, &device).unwrap();
    assert_eq!(samples(&loaded), expected);
    let card = ModelCard::read(&export).unwrap();
    let training = card.training.as_ref().unwrap();
    assert_eq!((training.step, training.data_shape), (30, [512, 2]));
    assert_eq!(card.precision, Precision::F32);
    assert_eq!(card.crate_version, env!("CARGO_PKG_VERSION"));

    // At f16: about half the bytes, samples within half-precision rounding.
    let half = common::scratch("saved", "export16");
    trainer.export(&half, Precision::F16).unwrap();
    let size = |dir: &std::path::Path| std::fs::metadata(dir.join(WEIGHTS_FILE)).unwrap().len();
    assert!(
        size(&half) * 10 < size(&export) * 6,
        "{} {}",
        size(&half),
        size(&export)
    );
    let loaded = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&half, &device).unwrap();
    let got = samples(&loaded);
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 0.0 && worst < 0.02, "{worst}");
}

#[test]
fn a_flow_map_unet_round_trips_with_its_target_time() {
    let device = Default::default();
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
        .init::<Cpu>(&device, 3)
        .unwrap()
        .with_target_time()
        .unwrap();
    let model = IntegrationFlowConfig {
        sigma_data: Some(0.5),
        ..Default::default()
    }
    .init(FlowConfig::Rf(Default::default()).init().unwrap(), net)
    .unwrap();
    let dir = common::scratch("saved", "unet");
    model.export(&dir, Precision::F32).unwrap();
    let card = ModelCard::read(&dir).unwrap();
    assert!(matches!(card.network, Some(NetworkConfig::UNet(ref c)) if c.target_time));
    assert!(card.training.is_none());
    let loaded = IntegrationFlow::<Cpu, UNet<Cpu>>::load(&dir, &device).unwrap();
    let x = Tensor::<Cpu, 2>::from_data(
        TensorData::new((0..128).map(|i| (i as f32 * 0.37).sin()).collect(), [2, 64]),
        &device,
    );
    let jump = |m: &IntegrationFlow<Cpu, UNet<Cpu>>| {
        values(
            m.estimate_to(x.clone(), &[1.0, 0.8], &[0.0, 0.3], x.clone())
                .unwrap(),
        )
    };
    assert_eq!(jump(&loaded), jump(&model));
    // The wrong network type names the saved one.
    let err = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&dir, &device).unwrap_err();
    assert!(err.to_string().contains("unet"), "{err}");
}

#[test]
fn what_does_not_fit_is_a_typed_error() {
    let device = Default::default();
    let net = MlpConfig {
        width: 16,
        depth: 1,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap();
    let untrained = IntegrationFlowConfig::default()
        .init(FlowConfig::Ve(Default::default()).init().unwrap(), net)
        .unwrap();
    let dir = common::scratch("saved", "errors");
    // σ_data still left to the data: the card would record a value the model never had.
    let err = untrained.export(&dir, Precision::F32).unwrap_err();
    assert!(err.to_string().contains("σ_data"), "{err}");
    assert!(!dir.join(CARD_FILE).exists());
    let model = untrained.with_sigma_data(1.0).unwrap();
    model.export(&dir, Precision::F32).unwrap();

    // Nothing saved there.
    let empty = common::scratch("saved", "empty");
    let err = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&empty, &device).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // A template of other shapes.
    let wide = MlpConfig {
        width: 32,
        depth: 1,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap();
    let err = IntegrationFlow::load_with(&dir, wide, None).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // Another flow than the saved one.
    let same = MlpConfig {
        width: 16,
        depth: 1,
        ..Default::default()
    }
    .init::<Cpu>(&device, 0)
    .unwrap();
    let rf = FlowConfig::Rf(Default::default()).init().unwrap();
    let err = IntegrationFlow::load_with(&dir, same.clone(), Some(rf)).unwrap_err();
    assert!(err.to_string().contains("flow"), "{err}");
    let ve: std::sync::Arc<dyn ProbabilityFlow> = "ve:sigma_max=20"
        .parse::<FlowConfig>()
        .unwrap()
        .init()
        .unwrap();
    let err = IntegrationFlow::load_with(&dir, same, Some(ve)).unwrap_err();
    assert!(err.to_string().contains("sigma_max"), "{err}");
    // A damaged card or weights file.
    std::fs::write(dir.join(CARD_FILE), b"{\"format\": 1").unwrap();
    let err = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&dir, &device).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    model.export(&dir, Precision::F32).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), b"not safetensors").unwrap();
    let err = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&dir, &device).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
}

/// A flow of your own, trained with `init_unchecked` (it fails the self-check), loads with
/// `load_with` and its flow; without the flow it is a typed error naming the way.
#[test]
fn a_flow_of_ones_own_loads_with_load_with() {
    #[derive(Debug)]
    struct Halved(integration_flow::flow::RectifiedFlow);
    impl ProbabilityFlow for Halved {
        fn name(&self) -> &str {
            "halved"
        }
        fn alpha(&self, t: f64) -> f64 {
            self.0.alpha(t)
        }
        fn sigma(&self, t: f64) -> f64 {
            self.0.sigma(t)
        }
        // Wrong on purpose: the self-check fails, the expert trained it anyway.
        fn alpha_dot(&self, t: f64) -> f64 {
            0.5 * self.0.alpha_dot(t)
        }
        fn sigma_dot(&self, t: f64) -> f64 {
            self.0.sigma_dot(t)
        }
        fn time_range(&self) -> integration_flow::flow::TimeRange {
            self.0.time_range()
        }
    }
    let flow = || -> std::sync::Arc<dyn ProbabilityFlow> {
        std::sync::Arc::new(Halved(
            integration_flow::flow::RectifiedFlowConfig::default()
                .init()
                .unwrap(),
        ))
    };
    let device = Default::default();
    let net = || {
        MlpConfig {
            width: 16,
            depth: 1,
            ..Default::default()
        }
        .init::<Cpu>(&device, 0)
        .unwrap()
    };
    let config = IntegrationFlowConfig {
        sigma_data: Some(0.7),
        ..Default::default()
    };
    assert!(config.init(flow(), net()).is_err());
    let model = config.init_unchecked(flow(), net()).unwrap();
    let dir = common::scratch("saved", "own_flow");
    model.export(&dir, Precision::F32).unwrap();
    let err = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&dir, &device).unwrap_err();
    assert!(err.to_string().contains("load_with"), "{err}");
    let loaded = IntegrationFlow::load_with(&dir, net(), Some(flow())).unwrap();
    assert_eq!(loaded.sigma_data(), 0.7);
    assert_eq!(samples(&loaded), samples(&model));
}
