//! The flows' tensor operations on the CPU backends.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use integration_flow::backend::Cpu;
use integration_flow::flow::{
    Parameterization, ProbabilityFlow, ProbabilityFlowExt, VeConfig, VpConfig,
};
use integration_flow::Error;
use rand::{rngs::StdRng, SeedableRng};

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn interpolation_matches_host_math_for_every_family() {
    let device = Default::default();
    for flow in common::default_flows() {
        let mut rng = StdRng::seed_from_u64(1);
        let x0 = flow.noise::<Cpu, 2>(&mut rng, [5, 3], &device).unwrap();
        let noise = flow.noise::<Cpu, 2>(&mut rng, [5, 3], &device).unwrap();
        let t = common::interior(flow.as_ref(), 5);
        let x_t = flow.interpolate(x0.clone(), noise.clone(), &t).unwrap();
        let (x0, noise, x_t) = (values(x0), values(noise), values(x_t));
        for (i, &ti) in t.iter().enumerate() {
            for j in 0..3 {
                let k = i * 3 + j;
                let expected =
                    flow.alpha(ti) * f64::from(x0[k]) + flow.sigma(ti) * f64::from(noise[k]);
                let tol = 1e-5 * expected.abs().max(1.0);
                assert!(
                    (f64::from(x_t[k]) - expected).abs() < tol,
                    "{} at t = {ti}",
                    flow.name()
                );
            }
        }
    }
}

#[test]
fn image_shaped_tensors_broadcast_per_example() {
    let device = Default::default();
    let vp = VpConfig::default().init().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let x0 = Tensor::<Cpu, 4>::ones([2, 1, 4, 4], &device);
    let noise = vp.noise::<Cpu, 4>(&mut rng, [2, 1, 4, 4], &device).unwrap();
    let x_t = vp.interpolate(x0, noise.clone(), &[0.2, 0.9]).unwrap();
    let (x_t, noise) = (values(x_t), values(noise));
    for (example, t) in [(0usize, 0.2), (1, 0.9)] {
        for k in example * 16..(example + 1) * 16 {
            let expected = vp.alpha(t) + vp.sigma(t) * f64::from(noise[k]);
            assert!((f64::from(x_t[k]) - expected).abs() < 1e-5);
        }
    }
    // One time for the whole batch broadcasts too.
    let x0 = Tensor::<Cpu, 4>::zeros([2, 1, 4, 4], &device);
    let noise = Tensor::<Cpu, 4>::ones([2, 1, 4, 4], &device);
    let x_t = vp.interpolate(x0, noise, &[0.5]).unwrap();
    assert!(values(x_t)
        .iter()
        .all(|&v| (f64::from(v) - vp.sigma(0.5)).abs() < 1e-6));
}

#[test]
fn ve_integral_estimate_is_x_t_at_sigma_min() {
    let device = Default::default();
    let ve = VeConfig::default().init().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let x_t = ve.noise::<Cpu, 2>(&mut rng, [4, 6], &device).unwrap();
    let output = ve
        .noise::<Cpu, 2>(&mut rng, [4, 6], &device)
        .unwrap()
        .mul_scalar(100.0);
    let est = ve
        .estimate(
            x_t.clone(),
            output.clone(),
            &[0.0],
            Parameterization::Integral,
            0.5,
        )
        .unwrap();
    assert_eq!(values(est), values(x_t.clone()));
    // Away from σ_min the output matters.
    let est = ve
        .estimate(x_t.clone(), output, &[0.5], Parameterization::Integral, 0.5)
        .unwrap();
    assert_ne!(values(est), values(x_t));
}

#[test]
fn bad_tensor_inputs_are_typed_errors() {
    let device = Default::default();
    let vp = VpConfig::default().init().unwrap();
    let a = Tensor::<Cpu, 2>::zeros([4, 2], &device);
    let b = Tensor::<Cpu, 2>::zeros([4, 3], &device);
    let err = vp.interpolate(a.clone(), b, &[0.5]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = vp
        .interpolate(a.clone(), a.clone(), &[0.5, 0.5])
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let err = vp
        .interpolate(a.clone(), a.clone(), &[f64::NAN])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "t", .. }),
        "{err}"
    );
    let err = vp.velocity(a.clone(), a.clone(), &[2.0]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "t", .. }),
        "{err}"
    );
    let err = vp
        .estimate(a.clone(), a.clone(), &[0.5], Parameterization::Edm, -1.0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "sigma_data",
                ..
            }
        ),
        "{err}"
    );
    let err = vp
        .noise::<Cpu, 2>(&mut StdRng::seed_from_u64(0), [0, 2], &device)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn f64_tensors_keep_f64_precision() {
    let device = Default::default();
    let vp = VpConfig::default().init().unwrap();
    let x0 = Tensor::<Cpu, 2>::from_data(
        TensorData::new(vec![1.0f64 / 3.0; 4], [2, 2]),
        (&device, burn::tensor::DType::F64),
    );
    let x_t = vp.interpolate(x0.clone(), x0.zeros_like(), &[0.3]).unwrap();
    assert_eq!(x_t.dtype(), burn::tensor::DType::F64);
    let got: Vec<f64> = x_t.into_data().iter::<f64>().collect();
    assert!((got[0] - vp.alpha(0.3) / 3.0).abs() < 1e-15);
}

/// The same seed gives the same numbers on both CPU backends.
#[cfg(all(feature = "flex", feature = "ndarray"))]
#[test]
fn the_same_seed_gives_the_same_noise_on_every_backend() {
    use integration_flow::backend::{Flex, NdArray};
    for flow in common::default_flows() {
        let a = flow
            .prior::<Flex, 2>(&mut StdRng::seed_from_u64(4), [8, 3], &Default::default())
            .unwrap();
        let b = flow
            .prior::<NdArray, 2>(&mut StdRng::seed_from_u64(4), [8, 3], &Default::default())
            .unwrap();
        assert_eq!(values(a), values(b), "{}", flow.name());
    }
}
