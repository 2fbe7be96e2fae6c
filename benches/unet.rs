//! The image path on the default CPU backend (flex): one training step of the default UNet
//! (MNIST-sized, 28×28, batch 64) through the crate's trainer with OT anchors, and one-step
//! generation throughput in images per second.
//!
//! Run: `cargo bench --bench unet`
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::mnist;
use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
use integration_flow::model::IntegrationFlowConfig;
use integration_flow::nn::UNetConfig;
use integration_flow::train::{OtSpace, TrainConfig, Trainer};
use rand::{rngs::StdRng, SeedableRng};
use std::hint::black_box;
use std::sync::Arc;

const BATCH: usize = 64;
const GENERATE: usize = 250;

fn unet(c: &mut Criterion) {
    integration_flow::backend::tune_allocator();
    let digits = mnist::load(None).expect("the bundled MNIST subset");
    let data = digits.dataset().clone();
    let (_, sigma_data) = data.mean_and_std();
    let net = UNetConfig::default()
        .init::<CpuAutodiff>(&Default::default(), 0)
        .expect("valid UNet config");
    let model = IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(sigma_data),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(
        Arc::new(RectifiedFlowConfig::default().init().expect("valid flow")),
        net,
    )
    .expect("valid model");
    let mut config = TrainConfig {
        steps: usize::MAX,
        batch_size: BATCH,
        progress: false,
        ..Default::default()
    };
    config.anchor.ot_space = OtSpace::Pca { dims: 16 };
    let mut trainer = Trainer::new(model, data, config).expect("valid trainer");
    let mut group = c.benchmark_group("unet");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("train_step/mnist28/batch{BATCH}"), |b| {
        b.iter(|| black_box(trainer.train_step().expect("finite step").loss))
    });
    let ema = trainer.ema_model();
    let mut rng = StdRng::seed_from_u64(0);
    group.throughput(Throughput::Elements(GENERATE as u64));
    group.bench_function(format!("one_step_generation/mnist28/{GENERATE}"), |b| {
        b.iter(|| {
            let samples = ema.generate(&mut rng, GENERATE, 1).expect("generation");
            black_box(samples.into_data())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(20));
    targets = unet
}
criterion_main!(benches);
