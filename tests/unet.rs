//! The UNet: shapes, configuration errors, determinism, both anchor inputs, and training.
#![cfg(any(feature = "flex", feature = "ndarray"))]

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor};
use integration_flow::backend::{Cpu, CpuAutodiff};
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::Dataset;
use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::{AnchorInput, IntegrationNet, UNetConfig};
use integration_flow::train::{TrainConfig, Trainer};
use integration_flow::Error;
use std::sync::Arc;

fn small(anchor: AnchorInput, patch: usize) -> UNetConfig {
    UNetConfig {
        channels: 1,
        height: 8,
        width: 8,
        patch,
        base_channels: 8,
        channel_mult: vec![1, 2],
        res_blocks: 1,
        attention_resolutions: vec![8 / patch / 2],
        heads: 2,
        groups: 4,
        anchor,
        ..Default::default()
    }
}

fn inputs(n: usize, dim: usize) -> (Tensor<Cpu, 2>, Tensor<Cpu, 1>, Tensor<Cpu, 2>) {
    let device = Default::default();
    (
        Tensor::random([n, dim], Distribution::Normal(0.0, 1.0), &device),
        Tensor::random([n], Distribution::Uniform(0.0, 1.0), &device),
        Tensor::random([n, dim], Distribution::Normal(0.0, 1.0), &device),
    )
}

#[test]
fn default_config_is_mnist_sized_and_valid() {
    let config = UNetConfig::default();
    assert_eq!(config.dim(), 784);
    config.validate().unwrap();
}

#[test]
fn output_has_the_input_shape_for_every_layout() {
    for anchor in [
        AnchorInput::Channels,
        AnchorInput::CrossAttention { patch: 2 },
    ] {
        for patch in [1, 2] {
            let net = small(anchor, patch)
                .init::<Cpu>(&Default::default(), 0)
                .unwrap();
            assert_eq!(net.dim(), 64);
            let (x, c, a) = inputs(3, 64);
            let out = net.forward(x, c, a);
            assert_eq!(out.dims(), [3, 64], "{anchor:?} patch {patch}");
        }
    }
    // Odd sides: 7×7 halves to 4 and is cropped back on the way up.
    let odd = UNetConfig {
        height: 7,
        width: 7,
        patch: 1,
        attention_resolutions: vec![4],
        ..small(AnchorInput::Channels, 1)
    };
    let net = odd.init::<Cpu>(&Default::default(), 0).unwrap();
    let (x, c, a) = inputs(2, 49);
    assert_eq!(net.forward(x, c, a).dims(), [2, 49]);
}

#[test]
fn the_output_layer_starts_at_zero_and_the_seed_fixes_the_weights() {
    let device = Default::default();
    let net = small(AnchorInput::Channels, 2)
        .init::<Cpu>(&device, 3)
        .unwrap();
    let (x, c, a) = inputs(2, 64);
    let out = net.forward(x, c, a).into_data();
    assert!(out.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    let again = small(AnchorInput::Channels, 2)
        .init::<Cpu>(&device, 3)
        .unwrap();
    let other = small(AnchorInput::Channels, 2)
        .init::<Cpu>(&device, 4)
        .unwrap();
    let flat = |m: &integration_flow::nn::UNet<Cpu>| -> Vec<f32> {
        struct Collect(Vec<f32>);
        impl burn::module::ModuleVisitor<Cpu> for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Cpu, D>>) {
                self.0
                    .extend(param.val().into_data().to_vec::<f32>().unwrap());
            }
        }
        let mut collect = Collect(Vec::new());
        m.visit(&mut collect);
        collect.0
    };
    assert_eq!(flat(&net), flat(&again));
    assert_ne!(flat(&net), flat(&other));
}

#[test]
fn impossible_configs_are_refused_with_the_field() {
    let cases: Vec<(UNetConfig, &str)> = vec![
        (
            UNetConfig {
                groups: 5,
                ..Default::default()
            },
            "groups",
        ),
        (
            UNetConfig {
                heads: 3,
                ..Default::default()
            },
            "heads",
        ),
        (
            UNetConfig {
                patch: 3,
                ..Default::default()
            },
            "patch",
        ),
        (
            UNetConfig {
                channel_mult: vec![],
                ..Default::default()
            },
            "channel_mult",
        ),
        (
            UNetConfig {
                channel_mult: vec![1; 6],
                ..Default::default()
            },
            "channel_mult",
        ),
        (
            UNetConfig {
                base_channels: 0,
                ..Default::default()
            },
            "base_channels",
        ),
        (
            UNetConfig {
                anchor: AnchorInput::CrossAttention { patch: 5 },
                ..Default::default()
            },
            "anchor",
        ),
    ];
    for (config, field) in cases {
        match config.init::<Cpu>(&Default::default(), 0) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!(
                "{field}: expected InvalidConfig, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn the_anchor_changes_the_output_through_either_input() {
    // Train one step so the zero output layer moves, then vary only the anchor.
    for anchor in [
        AnchorInput::Channels,
        AnchorInput::CrossAttention { patch: 4 },
    ] {
        let data = bars(64);
        let mut trainer = trainer(anchor, data, 3);
        trainer.train_steps(3).unwrap();
        let net = trainer.ema_model().into_net();
        let (x, c, a) = inputs(2, 64);
        let first = net.forward(x.clone(), c.clone(), a).into_data();
        let a2 = Tensor::<Cpu, 2>::random([2, 64], Distribution::Normal(0.0, 1.0), &x.device());
        let second = net.forward(x, c, a2).into_data();
        let diff: f32 = first
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .zip(second.to_vec::<f32>().unwrap())
            .map(|(p, q)| (p - q).abs())
            .sum();
        assert!(diff > 0.0, "{anchor:?}: the anchor has no effect");
    }
}

/// 8×8 images of one horizontal or vertical bar, in [-1, 1].
fn bars(n: usize) -> Dataset {
    let mut values = Vec::with_capacity(n * 64);
    for i in 0..n {
        let (vertical, at) = (i % 2 == 0, (i / 2) % 8);
        for r in 0..8 {
            for c in 0..8 {
                let on = if vertical { c == at } else { r == at };
                values.push(if on { 1.0 } else { -1.0 });
            }
        }
    }
    Dataset::new(values, 64).unwrap()
}

fn trainer(
    anchor: AnchorInput,
    data: Dataset,
    steps: usize,
) -> Trainer<CpuAutodiff, integration_flow::nn::UNet<CpuAutodiff>> {
    let net = small(anchor, 2)
        .init::<CpuAutodiff>(&Default::default(), 0)
        .unwrap();
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(
        Arc::new(RectifiedFlowConfig::default().init().unwrap()),
        net,
    )
    .unwrap();
    let mut config = TrainConfig {
        steps,
        batch_size: 16,
        progress: false,
        ..Default::default()
    };
    config.optimizer.lr = 2e-3;
    config.optimizer.warmup_steps = 10;
    Trainer::new(model, data, config).unwrap()
}

#[test]
fn a_unet_model_learns_with_the_trainer() {
    let mut trainer = trainer(AnchorInput::Channels, bars(64), 600);
    let mut losses = Vec::new();
    for _ in 0..600 {
        losses.push(trainer.train_step().unwrap().loss);
    }
    let head: f64 = losses[..15].iter().sum::<f64>() / 15.0;
    let tail: f64 = losses[585..].iter().sum::<f64>() / 15.0;
    assert!(
        tail < 0.6 * head,
        "loss did not fall: first 15 steps {head:.4}, last 15 {tail:.4}"
    );
    // One-step samples from the trained model are closer to bars than the prior is: most
    // pixels are near ±1 rather than spread like N(0, 1).
    let model = trainer.ema_model();
    let samples = model
        .generate(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
            64,
            1,
        )
        .unwrap();
    let values: Vec<f32> = samples.into_data().to_vec().unwrap();
    let mean_dist: f32 =
        values.iter().map(|v| (v.abs() - 1.0).abs()).sum::<f32>() / values.len() as f32;
    // N(0,1) gives E| |z| − 1 | ≈ 0.48.
    assert!(mean_dist < 0.35, "samples are not bar-like: {mean_dist}");
}
