//! A whole UNet training step with the fused flex kernels and without them: the same loss
//! curve. Its own test binary (one process), because the switch is process-wide.
#![cfg(feature = "flex")]

use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor};
use integration_flow::nn::{set_fused_kernels, IntegrationNet, UNetConfig};

type Ad = Autodiff<Flex>;

/// 20 Adam steps of the default MNIST UNet from seed 3 on fixed random inputs: the losses.
fn loss_curve() -> Vec<f32> {
    let device = Default::default();
    let mut unet = Some(
        UNetConfig::default()
            .init::<Ad>(&device, 3)
            .expect("the default configuration is valid"),
    );
    let (n, dim) = (12, 784);
    let data = |seed: u64, shape: [usize; 2], d: Distribution| {
        <Ad as burn::tensor::backend::Backend>::seed(&device, seed);
        Tensor::<Ad, 2>::random(shape, d, &device)
    };
    let normal = Distribution::Normal(0.0, 1.0);
    let x = data(1, [n, dim], normal);
    let c_noise = data(2, [n, 1], Distribution::Uniform(0.0, 1.0)).reshape([n]);
    let anchor = data(3, [n, dim], normal);
    let target = data(4, [n, dim], normal);
    let mut optim = AdamConfig::new().init();
    (0..20)
        .map(|_| {
            let model = unet.take().expect("put back every step");
            let out = model.forward(x.clone(), c_noise.clone(), anchor.clone());
            let loss = (out - target.clone()).powi_scalar(2).mean();
            let value = loss.clone().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            // A large learning rate, so that 20 steps move the weights far from the start.
            unet = Some(optim.step(1e-2, model, grads));
            value
        })
        .collect()
}

#[test]
fn the_fused_kernels_give_the_reference_loss_curve() {
    set_fused_kernels(false);
    let reference = loss_curve();
    set_fused_kernels(true);
    let fused = loss_curve();
    assert!(
        reference
            .windows(2)
            .any(|w| (w[0] - w[1]).abs() > 1e-3 * w[0]),
        "the loss moves: {reference:?}"
    );
    for (step, (a, b)) in fused.iter().zip(&reference).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "step {step}: fused {a}, reference {b} ({fused:?} against {reference:?})"
        );
    }
}
