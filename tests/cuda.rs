//! The CUDA backend against the CPU one: the same seeded networks give the same outputs, and
//! training on the GPU generates. Built with `--features cuda`; run on a machine with an
//! NVIDIA GPU (`scripts/gpu-check.sh`).
#![cfg(all(feature = "cuda", any(feature = "flex", feature = "ndarray")))]

use burn::tensor::{backend::Backend, Tensor, TensorData};
use integration_flow::backend::{Cpu, Cuda, CudaAutodiff};
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::Toy;
use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
use integration_flow::metrics::sliced_wasserstein2;
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::{IntegrationNet, MlpConfig, UNetConfig};
use integration_flow::train::{TrainConfig, Trainer};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use std::sync::Arc;

/// `net(x, c, a)` on the backend of `net`, from host values.
fn run<B: Backend, N: IntegrationNet<B>>(net: &N, x: &[f32], c: &[f32], n: usize) -> Vec<f32> {
    let device = net.devices().into_iter().next().unwrap_or_default();
    let dim = net.dim();
    let x = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [n, dim]), &device);
    let c = Tensor::<B, 1>::from_data(TensorData::new(c.to_vec(), [n]), &device);
    net.forward(x.clone(), c, x * 0.5)
        .into_data()
        .iter::<f32>()
        .collect()
}

fn inputs(n: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(3);
    let x = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let c = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
    (x, c)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mlp_on_cuda_matches_the_cpu() {
    let config = MlpConfig::default();
    let cpu = config.init::<Cpu>(&Default::default(), 7).unwrap();
    let gpu = config.init::<Cuda>(&Default::default(), 7).unwrap();
    let (x, c) = inputs(256, 2);
    let diff = max_abs_diff(&run(&cpu, &x, &c, 256), &run(&gpu, &x, &c, 256));
    assert!(diff < 1e-3, "MLP outputs differ by {diff}");
}

#[test]
fn unet_on_cuda_matches_the_cpu() {
    let config = UNetConfig::default();
    let cpu = config.init::<Cpu>(&Default::default(), 7).unwrap();
    let gpu = config.init::<Cuda>(&Default::default(), 7).unwrap();
    let (x, c) = inputs(8, cpu.dim());
    let diff = max_abs_diff(&run(&cpu, &x, &c, 8), &run(&gpu, &x, &c, 8));
    assert!(diff < 1e-3, "UNet outputs differ by {diff}");
}

/// 1500 steps on checkerboard: the loss falls and one-step samples are much closer to the
/// data than the prior is (as on the CPU in tests/train.rs).
#[test]
fn training_on_cuda_generates_in_one_step() {
    let data = Toy::Checkerboard.sample(4096, 0).unwrap();
    let (_, sigma_data) = data.mean_and_std();
    let net = MlpConfig::default()
        .init::<CudaAutodiff>(&Default::default(), 0)
        .unwrap();
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(sigma_data),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(
        Arc::new(RectifiedFlowConfig::default().init().unwrap()),
        net,
    )
    .unwrap();
    let config = TrainConfig {
        steps: 1500,
        progress: false,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, data, config).unwrap();
    let first = trainer.train_step().unwrap().loss;
    let last = trainer.fit().unwrap().unwrap().loss;
    assert!(last < first, "loss did not fall: {first} -> {last}");
    let ema = trainer.ema_model();
    let mut rng = StdRng::seed_from_u64(1);
    let samples: Vec<f32> = ema
        .generate(&mut rng, 4000, 1)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect();
    let prior: Vec<f32> = ema
        .sample_prior(&mut rng, 4000)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect();
    let reference = Toy::Checkerboard.sample(4000, 9).unwrap();
    let sw2 = sliced_wasserstein2(&samples, reference.values(), 2, 128, 0).unwrap();
    let prior_sw2 = sliced_wasserstein2(&prior, reference.values(), 2, 128, 0).unwrap();
    assert!(
        sw2 < 0.5 * prior_sw2,
        "one-step SW2 {sw2} not well below the prior's {prior_sw2}"
    );
}
