//! The math of each family against closed forms.

mod common;

use integration_flow::flow::ProbabilityFlowExt;
use integration_flow::flow::{
    edm_preconditioning, Parameterization, PfgmPPConfig, ProbabilityFlow, RectifiedFlowConfig,
    TimeDistribution, TimeRange, VeConfig, VpConfig,
};
use rand::{rngs::StdRng, SeedableRng};

#[test]
fn vp_is_variance_preserving() {
    let vp = VpConfig::default().init().unwrap();
    for t in [1e-5, 1e-3, 0.1, 0.5, 0.9, 1.0] {
        let (a, s) = (vp.alpha(t), vp.sigma(t));
        assert!(
            (a * a + s * s - 1.0).abs() < 1e-12,
            "t = {t}: α² + σ² = {}",
            a * a + s * s
        );
    }
    // α(1) = exp(−½(β_min + ½(β_max − β_min))) for the defaults.
    assert!((vp.alpha(1.0) - (-0.5f64 * (0.1 + 0.5 * 19.9)).exp()).abs() < 1e-15);
    // Prior N(0, I): the variance at t = 1 is σ(1)² ≈ 1.
    assert!((vp.prior_variance() - 1.0).abs() < 1e-4);
}

#[test]
fn ve_sigma_is_geometric() {
    let ve = VeConfig {
        sigma_min: 0.01,
        sigma_max: 50.0,
    }
    .init()
    .unwrap();
    assert!((ve.sigma(0.0) - 0.01).abs() < 1e-15);
    assert!((ve.sigma(1.0) - 50.0).abs() < 1e-12);
    let ratio: f64 = 50.0 / 0.01;
    for (t0, t1) in [(0.0, 0.3), (0.2, 0.9), (0.5, 0.75)] {
        let expected = ratio.powf(t1 - t0);
        let got = ve.sigma(t1) / ve.sigma(t0);
        assert!(
            (got / expected - 1.0).abs() < 1e-12,
            "{t0} → {t1}: {got} vs {expected}"
        );
    }
    assert_eq!(ve.alpha(0.4), 1.0);
    assert!((ve.prior_variance() - 2500.0).abs() < 1e-9);
}

#[test]
fn rectified_flow_is_the_straight_line() {
    let rf = RectifiedFlowConfig::default().init().unwrap();
    for t in [0.0, 0.3, 1.0] {
        assert_eq!(rf.alpha(t), 1.0 - t);
        assert_eq!(rf.sigma(t), t);
    }
    let v = rf.velocity_coefficients(0.25).unwrap();
    // v = x_t/t − x̂_0/t.
    assert!((v.x_t - 4.0).abs() < 1e-12 && (v.x0 + 4.0).abs() < 1e-12);
}

/// Draws `n` PFGM++ perturbations in `dim` coordinates at unit σ.
fn pfgm_noise(d: u64, n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let flow = PfgmPPConfig {
        d,
        ..Default::default()
    }
    .init()
    .unwrap();
    flow.sample_noise(&mut StdRng::seed_from_u64(seed), n, dim)
        .unwrap()
}

#[test]
fn pfgmpp_radius_matches_its_closed_form() {
    // E[R²] = r²·N/(D − 2) with r = σ√D, i.e. E[|n|²] = D·N/(D − 2) at σ = 1.
    let draws = 200_000;
    for (d, dim) in [(16u64, 3usize), (128, 8), (2048, 2)] {
        let noise = pfgm_noise(d, draws, dim, d);
        let mean_r2 = noise
            .chunks(dim)
            .map(|x| x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>())
            .sum::<f64>()
            / draws as f64;
        let expected = d as f64 * dim as f64 / (d as f64 - 2.0);
        let rel = (mean_r2 / expected - 1.0).abs();
        assert!(
            rel < 0.02,
            "D = {d}, N = {dim}: E[R²] = {mean_r2}, closed form {expected}"
        );
    }
    let flow = PfgmPPConfig {
        d: 128,
        ..Default::default()
    }
    .init()
    .unwrap();
    assert!((flow.radius(1.0) - 80.0 * 128f64.sqrt()).abs() < 1e-9);
}

#[test]
fn pfgmpp_direction_is_uniform() {
    let (draws, dim) = (200_000, 5);
    let noise = pfgm_noise(128, draws, dim, 3);
    let mut second_moment = vec![0.0f64; dim];
    for x in noise.chunks(dim) {
        let r2: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
        for (m, &v) in second_moment.iter_mut().zip(x) {
            *m += f64::from(v).powi(2) / r2;
        }
    }
    for (i, m) in second_moment.iter().enumerate() {
        let e = m / draws as f64;
        assert!(
            (e * dim as f64 - 1.0).abs() < 0.02,
            "E[u_{i}²] = {e}, expected {}",
            1.0 / dim as f64
        );
    }
}

#[test]
fn pfgmpp_tends_to_ve_as_d_grows() {
    let (draws, dim) = (50_000, 4);
    let noise = pfgm_noise(1_000_000, draws, dim, 11);
    let var = noise.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / noise.len() as f64;
    // At unit σ, VE's per-coordinate variance is 1.
    assert!((var - 1.0).abs() < 0.02, "per-coordinate variance {var}");
    let pf = PfgmPPConfig {
        d: 1_000_000,
        ..Default::default()
    }
    .init()
    .unwrap();
    let ve = VeConfig::default().init().unwrap();
    assert!((pf.prior_variance() / ve.prior_variance() - 1.0).abs() < 1e-5);
    // Heavy tails at small D: the variance is D/(D − 2), well above VE's.
    let small = pfgm_noise(6, draws, dim, 12);
    let var_small = small.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / small.len() as f64;
    assert!(
        var_small > 1.2,
        "D = 6 variance {var_small} should be near 1.5"
    );
}

#[test]
fn edm_coefficients_tend_to_identity_as_sigma_vanishes() {
    let mut last = edm_preconditioning(1.0, 1.0, 0.5).unwrap();
    for sigma in [1e-1, 1e-2, 1e-3, 1e-4, 1e-6] {
        let p = edm_preconditioning(1.0, sigma, 0.5).unwrap();
        assert!(p.c_out < last.c_out && p.c_skip > last.c_skip);
        last = p;
    }
    assert!((last.c_skip - 1.0).abs() < 1e-9 && last.c_out < 1e-5);
    // And for the families at their data end with a tiny σ_min.
    let ve = VeConfig {
        sigma_min: 1e-7,
        sigma_max: 80.0,
    }
    .init()
    .unwrap();
    let p = ve.preconditioning(0.0, Parameterization::Edm, 0.5).unwrap();
    assert!(
        (p.c_skip - 1.0).abs() < 1e-9 && p.c_out.abs() < 1e-6,
        "{p:?}"
    );
    let vp = VpConfig {
        t_min: 1e-9,
        ..Default::default()
    }
    .init()
    .unwrap();
    let p = vp
        .preconditioning(1e-9, Parameterization::Edm, 0.5)
        .unwrap();
    assert!(
        (p.c_skip - 1.0).abs() < 1e-6 && p.c_out.abs() < 1e-4,
        "{p:?}"
    );
}

#[test]
fn edm_form_matches_the_scaled_definition() {
    // c_skip = σ_d²/(σ̃² + σ_d²)/s, c_out = σ̃σ_d/sqrt(σ̃² + σ_d²), c_in = 1/(s·sqrt(σ̃² + σ_d²)).
    let vp = VpConfig::default().init().unwrap();
    let sd: f64 = 0.5;
    for t in [0.01, 0.3, 0.8] {
        let (s, st) = (vp.alpha(t), vp.noise_to_signal(t));
        let p = vp.preconditioning(t, Parameterization::Edm, sd).unwrap();
        let q = st * st + sd * sd;
        assert!((p.c_skip - sd * sd / q / s).abs() < 1e-12);
        assert!((p.c_out - st * sd / q.sqrt()).abs() < 1e-12);
        assert!((p.c_in - 1.0 / (s * q.sqrt())).abs() < 1e-12);
        assert!((p.c_noise - 0.25 * st.ln()).abs() < 1e-12);
    }
}

#[test]
fn edm_form_is_singular_at_the_rectified_flow_endpoints() {
    let rf = RectifiedFlowConfig::default().init().unwrap();
    for t in [0.0, 1.0] {
        let err = rf
            .preconditioning(t, Parameterization::Edm, 0.5)
            .unwrap_err();
        assert!(err.to_string().contains("singular"), "{err}");
    }
    let inside = rf
        .preconditioning(1.0 - 1e-4, Parameterization::Edm, 0.5)
        .unwrap();
    assert!(inside.c_noise.is_finite() && (inside.c_out - 0.5).abs() < 1e-3);
    // The integral form has no singularity.
    for t in [0.0, 1.0] {
        rf.preconditioning(t, Parameterization::Integral, 0.5)
            .unwrap();
    }
}

#[test]
fn integral_forms_are_the_papers() {
    let vp = VpConfig::default().init().unwrap();
    let p = vp
        .preconditioning(0.4, Parameterization::Integral, 0.5)
        .unwrap();
    assert_eq!((p.c_skip, p.c_out), (1.0, -1.0));
    let rf = RectifiedFlowConfig::default().init().unwrap();
    let p = rf
        .preconditioning(0.4, Parameterization::Integral, 0.5)
        .unwrap();
    assert_eq!((p.c_skip, p.c_out), (1.0, -0.4));
    let ve = VeConfig::default().init().unwrap();
    let p = ve
        .preconditioning(0.4, Parameterization::Integral, 0.5)
        .unwrap();
    let kappa = 0.002 / ve.sigma(0.4);
    assert!((p.c_skip - kappa).abs() < 1e-15 && (p.c_out - (1.0 - kappa)).abs() < 1e-15);
    // At σ_min the VE estimate is x_t itself.
    let p = ve
        .preconditioning(0.0, Parameterization::Integral, 0.5)
        .unwrap();
    assert_eq!((p.c_skip, p.c_out), (1.0, 0.0));
}

/// Delegates α and σ to a family but keeps the trait's bisection for the time inverse.
#[derive(Debug)]
struct Bisect<'a>(&'a dyn ProbabilityFlow);

impl ProbabilityFlow for Bisect<'_> {
    fn name(&self) -> &str {
        "bisect"
    }
    fn alpha(&self, t: f64) -> f64 {
        self.0.alpha(t)
    }
    fn sigma(&self, t: f64) -> f64 {
        self.0.sigma(t)
    }
    fn alpha_dot(&self, t: f64) -> f64 {
        self.0.alpha_dot(t)
    }
    fn sigma_dot(&self, t: f64) -> f64 {
        self.0.sigma_dot(t)
    }
    fn time_range(&self) -> TimeRange {
        self.0.time_range()
    }
}

#[test]
fn closed_form_time_inverses_agree_with_bisection() {
    for flow in common::default_flows() {
        let bisect = Bisect(flow.as_ref());
        for t in common::interior(flow.as_ref(), 25) {
            let ratio = flow.noise_to_signal(t);
            let closed = flow.time_at_noise_to_signal(ratio);
            let bisected = bisect.time_at_noise_to_signal(ratio);
            assert!(
                (closed - t).abs() < 1e-9,
                "{}: t = {t}, closed form {closed}",
                flow.name()
            );
            assert!(
                (bisected - t).abs() < 1e-9,
                "{}: t = {t}, bisection {bisected}",
                flow.name()
            );
        }
        // Ratios beyond the ends clamp to the range.
        let r = flow.time_range();
        assert_eq!(flow.time_at_noise_to_signal(0.0), r.min);
        assert_eq!(flow.time_at_noise_to_signal(f64::INFINITY), r.max);
        assert_eq!(flow.time_at_noise_to_signal(f64::NAN), r.min);
    }
}

#[test]
fn training_times_follow_their_distribution() {
    let ve = VeConfig::default().init().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let n = 50_000;
    let t = ve.sample_time(&TimeDistribution::EDM, &mut rng, n).unwrap();
    assert!(t.iter().all(|&t| (0.0..=1.0).contains(&t)));
    let mean_log_sigma = t.iter().map(|&t| ve.sigma(t).ln()).sum::<f64>() / n as f64;
    assert!(
        (mean_log_sigma + 1.2).abs() < 0.03,
        "mean ln σ = {mean_log_sigma}"
    );

    let vp = VpConfig::default().init().unwrap();
    let t = vp
        .sample_time(&TimeDistribution::Uniform, &mut rng, n)
        .unwrap();
    let range = vp.time_range();
    assert!(t.iter().all(|&t| range.contains(t)));
    let mean = t.iter().sum::<f64>() / n as f64;
    assert!((mean - 0.5 * (range.min + range.max)).abs() < 0.01);

    let rf = RectifiedFlowConfig::default().init().unwrap();
    let logit = TimeDistribution::LogitNormal {
        mean: 0.0,
        std: 1.0,
    };
    let t = rf.sample_time(&logit, &mut rng, n).unwrap();
    let median = {
        let mut s = t.clone();
        s.sort_by(f64::total_cmp);
        s[n / 2]
    };
    assert!((median - 0.5).abs() < 0.01, "median {median}");

    let bad = TimeDistribution::LogNormal {
        p_mean: 0.0,
        p_std: -1.0,
    };
    assert!(rf
        .sample_time(&bad, &mut rng, 4)
        .unwrap_err()
        .to_string()
        .contains("p_std"));
}

#[test]
fn velocity_is_singular_where_sigma_vanishes() {
    let rf = RectifiedFlowConfig::default().init().unwrap();
    let err = rf.velocity_coefficients(0.0).unwrap_err();
    assert!(err.to_string().contains("singular"), "{err}");
    let err = rf.velocity_coefficients(1.5).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn seeded_noise_is_reproducible() {
    for flow in common::default_flows() {
        let a = flow
            .sample_noise(&mut StdRng::seed_from_u64(9), 16, 3)
            .unwrap();
        let b = flow
            .sample_noise(&mut StdRng::seed_from_u64(9), 16, 3)
            .unwrap();
        let c = flow
            .sample_noise(&mut StdRng::seed_from_u64(10), 16, 3)
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(flow
            .sample_noise(&mut StdRng::seed_from_u64(9), 0, 3)
            .is_err());
        assert!(flow
            .sample_prior(&mut StdRng::seed_from_u64(9), 4, 0)
            .is_err());
    }
}
