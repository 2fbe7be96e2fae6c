//! The overhead of data-parallel training: `Trainer::train_step` with one worker (the
//! trainer's own pool of all the process's threads) against two workers (one thread each,
//! their gradients summed by burn-collective), at the same global batch, for the default MLP
//! on checkerboard (batch 512) and the default UNet on the bundled MNIST (batch 128, the
//! `mnist` example's policy `off`: the denoiser, no anchors).
//!
//! ```sh
//! cargo bench --features data-parallel --bench data_parallel
//! ```
//!
//! On one CPU the two workers share its cores, so the ratio shows what sharding, the
//! replicas and the all-reduce cost, not a speed-up: that needs a device per worker.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use integration_flow::backend::CpuAutodiff;
use integration_flow::coupling::AnchorLaw;
use integration_flow::data::{mnist, Dataset, Toy};
use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::{IntegrationNet, MlpConfig, UNetConfig};
use integration_flow::train::{AnchorPolicy, DataParallelConfig, TrainConfig, Trainer};
use std::hint::black_box;
use std::sync::Arc;

fn model<N: IntegrationNet<CpuAutodiff>>(
    net: N,
    data: &Dataset,
) -> IntegrationFlow<CpuAutodiff, N> {
    let (_, sigma_data) = data.mean_and_std();
    IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(sigma_data),
        anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
    }
    .init(
        Arc::new(RectifiedFlowConfig::default().init().expect("valid flow")),
        net,
    )
    .expect("valid model")
}

fn config(batch_size: usize, workers: usize, policy: AnchorPolicy) -> TrainConfig {
    let mut config = TrainConfig {
        steps: usize::MAX,
        batch_size,
        progress: false,
        data_parallel: (workers > 1).then(|| DataParallelConfig {
            workers,
            ..Default::default()
        }),
        ..Default::default()
    };
    config.anchor.policy = policy;
    config
}

/// Times `train_step` of a trainer of `net` on `data` with one worker, then two.
fn bench_workers<N>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    net: impl Fn() -> N,
    data: &Dataset,
    (batch, policy): (usize, AnchorPolicy),
) where
    N: IntegrationNet<CpuAutodiff> + burn::module::AutodiffModule<CpuAutodiff> + 'static,
    N::InnerModule: IntegrationNet<integration_flow::backend::Cpu> + 'static,
{
    group.throughput(Throughput::Elements(batch as u64));
    for workers in [1, 2] {
        let mut trainer = Trainer::new(
            model(net(), data),
            data.clone(),
            config(batch, workers, policy),
        )
        .expect("valid trainer");
        group.bench_function(format!("{name}/batch{batch}/workers{workers}"), |b| {
            b.iter(|| black_box(trainer.train_step().expect("finite step").loss))
        });
    }
}

fn data_parallel(c: &mut Criterion) {
    integration_flow::backend::tune_allocator();
    let mut group = c.benchmark_group("data_parallel");
    let points = Toy::Checkerboard.sample(8192, 0).expect("checkerboard");
    let mlp = || {
        MlpConfig::default()
            .init::<CpuAutodiff>(&Default::default(), 0)
            .expect("valid MLP")
    };
    bench_workers(&mut group, "mlp", mlp, &points, (512, AnchorPolicy::Ot));

    let digits = mnist::load(None).expect("the bundled MNIST subset");
    let unet = || {
        UNetConfig::default()
            .init::<CpuAutodiff>(&Default::default(), 0)
            .expect("valid UNet")
    };
    group.sample_size(10);
    bench_workers(
        &mut group,
        "unet",
        unet,
        digits.dataset(),
        (128, AnchorPolicy::Off),
    );
    group.finish();
}

criterion_group!(benches, data_parallel);
criterion_main!(benches);
