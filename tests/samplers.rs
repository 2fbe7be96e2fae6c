//! Samplers and ODE solvers against exact solutions, with an oracle network whose estimate is
//! the exact posterior mean for Gaussian data.
#![cfg(any(feature = "flex", feature = "ndarray"))]

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use integration_flow::backend::Cpu;
use integration_flow::coupling::AnchorLaw;
use integration_flow::flow::ProbabilityFlowExt;
use integration_flow::flow::{
    Parameterization, ProbabilityFlow, RectifiedFlowConfig, VeConfig, VpConfig,
};
use integration_flow::model::{IntegrationFlow, IntegrationFlowConfig};
use integration_flow::nn::IntegrationNet;
use integration_flow::sample::ode::ode_end_time;
use integration_flow::sample::{
    anchor_iteration, generate_batched, one_step, renoise, renoise_times, solve_ode, OdeSolver,
    RenoiseAnchor, RenoiseSchedule,
};
use rand::{rngs::StdRng, SeedableRng};
use std::sync::Arc;

/// Outputs the `F` that makes the model's estimate the exact E[x_0 | x_t] for data N(0, s²I),
/// reading t from c_noise (the integral form's c_noise = t).
#[derive(Module, Clone, Debug)]
struct Oracle {
    #[module(skip)]
    flow: Arc<dyn ProbabilityFlow>,
    #[module(skip)]
    s: f64,
    #[module(skip)]
    sigma_data: f64,
}

impl<B: Backend> IntegrationNet<B> for Oracle {
    fn dim(&self) -> usize {
        2
    }
    fn forward(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        _anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let t: Vec<f64> = c_noise.into_data().iter::<f64>().collect();
        let [n, dim] = x.dims();
        let mut out = Vec::with_capacity(n * dim);
        let xs: Vec<f64> = x.to_data().iter::<f64>().collect();
        for (i, &ti) in t.iter().enumerate() {
            let ti = self.flow.time_range().clamp(ti); // c_noise arrives as f32
            let p = self
                .flow
                .preconditioning(ti, Parameterization::Integral, self.sigma_data)
                .unwrap();
            let (a, sg) = (self.flow.alpha(ti), self.flow.sigma(ti));
            let gain = a * self.s * self.s / (a * a * self.s * self.s + sg * sg);
            for j in 0..dim {
                let x_t = xs[i * dim + j] / p.c_in;
                let x0 = gain * x_t;
                // Where c_out = 0 the estimate ignores F; keep it finite like a real network.
                let f = if p.c_out == 0.0 {
                    0.0
                } else {
                    (x0 - p.c_skip * x_t) / p.c_out
                };
                out.push(f as f32);
            }
        }
        Tensor::from_data(TensorData::new(out, [n, dim]), &x.device())
    }
}

fn oracle(flow: Arc<dyn ProbabilityFlow>, s: f64) -> IntegrationFlow<Cpu, Oracle> {
    let net = Oracle {
        flow: flow.clone(),
        s,
        sigma_data: s,
    };
    IntegrationFlowConfig {
        parameterization: Parameterization::Integral,
        sigma_data: Some(s),
        anchor_law: AnchorLaw::Zero,
    }
    .init(flow, net)
    .unwrap()
}

/// For Gaussian data the probability-flow ODE scales x by sqrt(α²s² + σ²) ratios.
fn exact_end(flow: &dyn ProbabilityFlow, s: f64, x_t: &[f32]) -> Vec<f64> {
    let scale = |t: f64| (flow.alpha(t).powi(2) * s * s + flow.sigma(t).powi(2)).sqrt();
    let r = scale(ode_end_time(flow)) / scale(flow.time_range().max);
    x_t.iter().map(|&v| f64::from(v) * r).collect()
}

/// `max` that keeps a NaN (so that a NaN error fails the test).
fn nan_max(m: f64, e: f64) -> f64 {
    if m.is_nan() || e.is_nan() {
        f64::NAN
    } else {
        m.max(e)
    }
}

fn values(t: Tensor<Cpu, 2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn ode_solvers_reach_the_exact_solution_for_gaussian_data() {
    let s = 0.7;
    let flows: Vec<Arc<dyn ProbabilityFlow>> = vec![
        Arc::new(VpConfig::default().init().unwrap()),
        Arc::new(
            RectifiedFlowConfig {
                t_min: 0.01,
                t_max: 0.99,
            }
            .init()
            .unwrap(),
        ),
        Arc::new(
            VeConfig {
                sigma_min: 0.01,
                sigma_max: 10.0,
            }
            .init()
            .unwrap(),
        ),
    ];
    for flow in flows {
        let model = oracle(flow.clone(), s);
        for (solver, tol) in [
            (OdeSolver::Euler { steps: 400 }, 5e-2), // first order
            (OdeSolver::Heun { steps: 40 }, 1e-2),   // its last step is Euler
            (OdeSolver::Rk4 { steps: 20 }, 1e-3),
            (
                OdeSolver::Dopri5 {
                    rtol: 1e-6,
                    atol: 1e-6,
                },
                1e-3,
            ),
        ] {
            let prior = values(
                model
                    .sample_prior(&mut StdRng::seed_from_u64(1), 16)
                    .unwrap(),
            );
            let out = solve_ode(&model, &mut StdRng::seed_from_u64(1), 16, solver).unwrap();
            let expected = exact_end(flow.as_ref(), s, &prior);
            let got = values(out.samples);
            let err = got
                .iter()
                .zip(&expected)
                .map(|(g, e)| (f64::from(*g) - e).abs())
                .fold(0.0, nan_max);
            let scale = expected.iter().map(|e| e.abs()).fold(0.0, f64::max);
            println!(
                "{} {}: NFE {}, max error {:.2e} (relative {:.2e})",
                flow.name(),
                solver.label(),
                out.nfe,
                err,
                err / scale
            );
            assert!(
                err / scale < tol,
                "{} {}: relative error {}",
                flow.name(),
                solver.label(),
                err / scale
            );
            let expected_nfe = match solver {
                OdeSolver::Euler { steps } => Some(steps),
                OdeSolver::Heun { steps } => Some(2 * steps - 1),
                OdeSolver::Rk4 { steps } => Some(4 * steps),
                OdeSolver::Dopri5 { .. } => None,
            };
            if let Some(nfe) = expected_nfe {
                assert_eq!(out.nfe, nfe);
            } else {
                assert!(out.nfe > 6 && out.nfe < 2000, "DOPRI5 NFE {}", out.nfe);
            }
        }
    }
}

#[test]
fn higher_order_solvers_converge_faster() {
    let flow: Arc<dyn ProbabilityFlow> = Arc::new(VpConfig::default().init().unwrap());
    let model = oracle(flow.clone(), 0.5);
    let prior = values(
        model
            .sample_prior(&mut StdRng::seed_from_u64(2), 8)
            .unwrap(),
    );
    let expected = exact_end(flow.as_ref(), 0.5, &prior);
    let error = |solver| {
        let got = values(
            solve_ode(&model, &mut StdRng::seed_from_u64(2), 8, solver)
                .unwrap()
                .samples,
        );
        got.iter()
            .zip(&expected)
            .map(|(g, e)| (f64::from(*g) - e).abs())
            .fold(0.0, nan_max)
    };
    let (e8, e16) = (
        error(OdeSolver::Euler { steps: 8 }),
        error(OdeSolver::Euler { steps: 16 }),
    );
    let (h8, h16) = (
        error(OdeSolver::Heun { steps: 8 }),
        error(OdeSolver::Heun { steps: 16 }),
    );
    assert!(e16 < e8 && h16 < h8);
    assert!(h16 < e16, "Heun {h16} vs Euler {e16}");
}

#[test]
fn one_step_anchor_iteration_and_renoising_count_their_calls() {
    let flow: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let model = oracle(flow.clone(), 1.0);
    let mut rng = StdRng::seed_from_u64(3);
    assert_eq!(one_step(&model, &mut rng, 5).unwrap().nfe, 1);
    assert_eq!(anchor_iteration(&model, &mut rng, 5, 4).unwrap().nfe, 4);
    let times = renoise_times(flow.time_range(), 4);
    assert_eq!(times, vec![0.75, 0.5, 0.25]);
    for anchor in [RenoiseAnchor::Fixed, RenoiseAnchor::Previous] {
        let g = renoise(&model, &mut rng, 5, &times, anchor).unwrap();
        assert_eq!((g.nfe, g.samples.dims()), (4, [5, 2]));
    }
    assert!(renoise(&model, &mut rng, 5, &[0.5, 0.7], RenoiseAnchor::Fixed).is_err());
    assert!(solve_ode(&model, &mut rng, 5, OdeSolver::Euler { steps: 0 }).is_err());
    assert!(solve_ode(
        &model,
        &mut rng,
        5,
        OdeSolver::Dopri5 {
            rtol: 0.0,
            atol: 1e-5
        }
    )
    .is_err());
}

/// `generate` with more calls is the re-noising sampler on the default schedule (which
/// refines), not the anchor iteration (which does not).
#[test]
fn generate_refines_by_renoising() {
    let flow: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let model = oracle(flow.clone(), 0.7);
    for steps in [2, 4] {
        let generated = values(
            model
                .generate(&mut StdRng::seed_from_u64(9), 16, steps)
                .unwrap(),
        );
        let times = RenoiseSchedule::default()
            .times(flow.as_ref(), steps)
            .unwrap();
        let renoised = renoise(
            &model,
            &mut StdRng::seed_from_u64(9),
            16,
            &times,
            RenoiseAnchor::Fixed,
        )
        .unwrap();
        assert_eq!(generated, values(renoised.samples), "{steps} steps");
        let iterated = anchor_iteration(&model, &mut StdRng::seed_from_u64(9), 16, steps).unwrap();
        assert_ne!(generated, values(iterated.samples), "{steps} steps");
    }
    let one = values(
        model
            .generate(&mut StdRng::seed_from_u64(9), 16, 1)
            .unwrap(),
    );
    let one_call = values(
        one_step(&model, &mut StdRng::seed_from_u64(9), 16)
            .unwrap()
            .samples,
    );
    assert_eq!(one, one_call);
    assert!(model
        .generate(&mut StdRng::seed_from_u64(9), 16, 0)
        .is_err());
}

#[test]
fn batched_generation_makes_any_count() {
    let flow: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    let model = oracle(flow, 1.0);
    let mut rng = StdRng::seed_from_u64(4);
    let (values, nfe) = generate_batched(1001, 256, |n| one_step(&model, &mut rng, n)).unwrap();
    assert_eq!((values.len(), nfe), (2002, 1));
    assert!(generate_batched::<Cpu>(0, 256, |_| unreachable!()).is_err());
    // The oracle's one-step sample from x_T at T = 1 is the posterior mean given pure noise: 0.
    assert!(values.iter().all(|v| v.abs() < 1e-5));
}

#[test]
fn diagnostics_measure_convergence_and_straightness() {
    use integration_flow::sample::{anchor_convergence, straightness};
    let rf: Arc<dyn ProbabilityFlow> = Arc::new(RectifiedFlowConfig::default().init().unwrap());
    // The oracle ignores its anchor: the iteration is at its fixed point after one call.
    let model = oracle(rf.clone(), 1.0);
    let changes = anchor_convergence(&model, &mut StdRng::seed_from_u64(6), 64, 5).unwrap();
    assert_eq!(changes, vec![0.0; 4]);
    assert!(anchor_convergence(&model, &mut StdRng::seed_from_u64(6), 64, 1).is_err());
    // Data concentrated at one point: the prediction is that point all along every line.
    let point_mass = oracle(rf.clone(), 1e-4);
    let flat = straightness(&point_mass, &mut StdRng::seed_from_u64(7), 32, 9).unwrap();
    assert!(flat < 1e-8, "straightness {flat}");
    // Spread data: the posterior mean moves along the line.
    let curved = straightness(&model, &mut StdRng::seed_from_u64(7), 32, 9).unwrap();
    assert!(curved > 1e-3, "straightness {curved}");
    assert!(straightness(&model, &mut StdRng::seed_from_u64(7), 32, 1).is_err());
}

/// The re-noising schedule lands on the requested noise-to-signal ratios, on every flow.
#[test]
fn renoise_schedule_hits_its_ratios() {
    use integration_flow::sample::RenoiseSchedule;
    let flows: Vec<Arc<dyn ProbabilityFlow>> = vec![
        Arc::new(RectifiedFlowConfig::default().init().unwrap()),
        Arc::new(VpConfig::default().init().unwrap()),
        Arc::new(VeConfig::default().init().unwrap()),
    ];
    let schedule = RenoiseSchedule {
        first: 0.8,
        last: 0.05,
    };
    for flow in &flows {
        assert_eq!(schedule.times(flow.as_ref(), 1).unwrap(), Vec::<f64>::new());
        let two = schedule.times(flow.as_ref(), 2).unwrap();
        assert_eq!(two.len(), 1);
        let ratio = flow.noise_to_signal(two[0]);
        assert!((ratio - 0.8).abs() < 1e-6 * 0.8, "{}: {ratio}", flow.name());
        let four = schedule.times(flow.as_ref(), 4).unwrap();
        let ratios: Vec<f64> = four.iter().map(|&t| flow.noise_to_signal(t)).collect();
        // Geometric: 0.8, 0.2, 0.05.
        for (r, want) in ratios.iter().zip([0.8, 0.2, 0.05]) {
            assert!(
                (r - want).abs() < 1e-6 * want,
                "{}: {ratios:?}",
                flow.name()
            );
        }
        assert!(four.windows(2).all(|w| w[1] < w[0]));
    }
    let rf = flows[0].as_ref();
    for (first, last) in [
        (0.1, 0.5),
        (0.5, 0.0),
        (f64::NAN, 0.1),
        (f64::INFINITY, 0.1),
    ] {
        assert!(RenoiseSchedule { first, last }.times(rf, 2).is_err());
    }
    assert!(RenoiseSchedule::default().times(rf, 0).is_err());
}
