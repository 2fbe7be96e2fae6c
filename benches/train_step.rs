//! One training step (forward, backward, Adam step) of a 3-hidden-layer, 256-wide SiLU MLP at
//! batch 512, on each CPU backend compiled in. Input: x_t (2) + anchor (2) + a 32-wide time
//! embedding; output 2, squared-error loss.
//!
//! Also the crate's own [`Trainer::train_step`] (same MLP shape, anchor input, OT anchors,
//! EMA, gradient clipping) on 8192 checkerboard points, reported in samples/s.
//!
//! Run: `cargo bench --bench train_step --features ndarray,flex`
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::Toy;
use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::MlpConfig;
use integration_flow::train::{TrainConfig, Trainer};
use std::hint::black_box;

mod common;
use common::{Mlp, INPUT, OUTPUT};
use std::sync::Arc;

const BATCH: usize = 512;

fn bench_backend<B: AutodiffBackend>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    B::seed(&device, 0);
    let mut model = Some(Mlp::<B>::new(&device));
    let mut optim = AdamConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .init::<B, Mlp<B>>();
    let x = Tensor::<B, 2>::random([BATCH, INPUT], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<B, 2>::random([BATCH, OUTPUT], Distribution::Normal(0.0, 1.0), &device);
    c.bench_function(&format!("train_step/{name}/mlp3x256/batch{BATCH}"), |b| {
        b.iter(|| {
            let m = model.take().expect("model is put back after every step");
            let loss = (m.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            let m = optim.step(1e-3, m, grads);
            // Read one parameter back so lazy backends finish the step inside the timing.
            black_box(m.out.bias.as_ref().map(|b| b.val().into_data()));
            model = Some(m);
        })
    });
}

fn bench_trainer<B: AutodiffBackend>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    let net = MlpConfig::default()
        .init::<B>(&device, 0)
        .expect("valid MLP config");
    let flow = RectifiedFlowConfig::default()
        .init()
        .expect("valid flow config");
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(1.0),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(Arc::new(flow), net)
    .expect("valid model");
    let data = Toy::Checkerboard.sample(8192, 0).expect("toy data");
    let config = TrainConfig {
        steps: usize::MAX,
        batch_size: BATCH,
        progress: false,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, data, config).expect("valid trainer");
    let mut group = c.benchmark_group("trainer_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("{name}/rf/mlp3x256/batch{BATCH}"), |b| {
        b.iter(|| black_box(trainer.train_step().expect("finite step").loss))
    });
    group.finish();
}

fn train_step(c: &mut Criterion) {
    integration_flow::backend::tune_allocator();
    #[cfg(feature = "ndarray")]
    bench_backend::<burn::backend::Autodiff<burn::backend::NdArray>>(c, "ndarray");
    #[cfg(feature = "flex")]
    bench_backend::<burn::backend::Autodiff<burn::backend::Flex>>(c, "flex");
    #[cfg(feature = "ndarray")]
    bench_trainer::<burn::backend::Autodiff<burn::backend::NdArray>>(c, "ndarray");
    #[cfg(feature = "flex")]
    bench_trainer::<burn::backend::Autodiff<burn::backend::Flex>>(c, "flex");
    let _ = c;
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(40).measurement_time(std::time::Duration::from_secs(15));
    targets = train_step
}
criterion_main!(benches);
