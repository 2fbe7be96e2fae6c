//! The self-check passes for every family and fails for flows with wrong math.
#![cfg(any(feature = "flex", feature = "ndarray"))]

mod common;

use integration_flow::backend::Cpu;
use integration_flow::flow::{check, CheckConfig, ProbabilityFlow, TimeRange, F32_TOLERANCE};

fn run(flow: &dyn ProbabilityFlow, config: &CheckConfig) -> integration_flow::flow::CheckReport {
    let report = check::<Cpu, _>(flow, &Default::default(), config).unwrap();
    println!("{report}");
    report
}

#[test]
fn every_family_passes_in_f64_below_1e_3() {
    for flow in common::default_flows() {
        let report = run(flow.as_ref(), &CheckConfig::default());
        assert_eq!(report.precision, "f64", "the CPU backend computes in f64");
        assert!(report.passed(), "{report}");
        assert!(report.worst_relative_error() < 1e-3, "{report}");
        // Far inside the tolerance: the math is exact up to finite-difference error.
        let velocity = report.items.iter().find(|i| i.name == "velocity").unwrap();
        assert!(velocity.relative_error < 1e-6, "{report}");
    }
}

#[test]
fn every_family_passes_in_f32_with_the_stated_tolerance() {
    let config = CheckConfig {
        allow_f64: false,
        ..Default::default()
    };
    for flow in common::default_flows() {
        let report = run(flow.as_ref(), &config);
        assert_eq!(report.precision, "f32");
        assert!(report.passed(), "{report}");
        let velocity = report.items.iter().find(|i| i.name == "velocity").unwrap();
        assert!(velocity.relative_error < F32_TOLERANCE, "{report}");
    }
}

/// Rectified flow with one deliberate mistake, chosen per test.
#[derive(Debug)]
struct Broken {
    mistake: Mistake,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mistake {
    SigmaDotSign,
    SwappedAlphaSigma,
    PriorVariance,
    DecreasingNoise,
}

impl ProbabilityFlow for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn alpha(&self, t: f64) -> f64 {
        match self.mistake {
            Mistake::SwappedAlphaSigma => t,
            Mistake::DecreasingNoise => 1.0 - 0.5 * t,
            _ => 1.0 - t,
        }
    }
    fn sigma(&self, t: f64) -> f64 {
        match self.mistake {
            Mistake::SwappedAlphaSigma => 1.0 - t,
            Mistake::DecreasingNoise => 0.1 + (t - 0.5).powi(2),
            _ => t,
        }
    }
    fn alpha_dot(&self, _t: f64) -> f64 {
        match self.mistake {
            Mistake::SwappedAlphaSigma => 1.0,
            Mistake::DecreasingNoise => -0.5,
            _ => -1.0,
        }
    }
    fn sigma_dot(&self, t: f64) -> f64 {
        match self.mistake {
            Mistake::SigmaDotSign => -1.0,
            Mistake::SwappedAlphaSigma => -1.0,
            Mistake::DecreasingNoise => 2.0 * (t - 0.5),
            _ => 1.0,
        }
    }
    fn time_range(&self) -> TimeRange {
        TimeRange::UNIT
    }
    // The prior's variance is derived from σ(t_max) and the noise law's declared variance
    // (it cannot be overridden), so the mistake left to make is a declared variance that the
    // drawn noise does not have.
    fn noise_variance(&self) -> f64 {
        if self.mistake == Mistake::PriorVariance {
            2.0
        } else {
            1.0
        }
    }
}

fn failed_items(mistake: Mistake) -> Vec<String> {
    let report = run(&Broken { mistake }, &CheckConfig::default());
    assert!(!report.passed(), "{mistake:?} must fail:\n{report}");
    report
        .items
        .iter()
        .filter(|i| !i.passed())
        .map(|i| i.name.clone())
        .collect()
}

#[test]
fn a_wrong_derivative_fails_the_derivative_and_velocity_items() {
    let failed = failed_items(Mistake::SigmaDotSign);
    assert!(failed.contains(&"sigma_dot".into()), "{failed:?}");
    assert!(failed.contains(&"velocity".into()), "{failed:?}");
    assert!(!failed.contains(&"alpha_dot".into()), "{failed:?}");
}

#[test]
fn swapped_alpha_and_sigma_fail_the_boundaries() {
    let failed = failed_items(Mistake::SwappedAlphaSigma);
    assert!(failed.contains(&"data_end".into()), "{failed:?}");
    assert!(failed.contains(&"noise_to_signal".into()), "{failed:?}");
}

#[test]
fn a_wrong_noise_variance_fails_the_sampled_prior_item() {
    let failed = failed_items(Mistake::PriorVariance);
    assert!(failed.contains(&"prior_variance".into()), "{failed:?}");
    // The marginal at t_max and the derived prior variance agree by construction.
    assert!(!failed.contains(&"prior_end".into()), "{failed:?}");
}

#[test]
fn a_non_monotone_noise_level_fails() {
    let failed = failed_items(Mistake::DecreasingNoise);
    assert!(failed.contains(&"noise_to_signal".into()), "{failed:?}");
}

#[test]
fn bad_check_config_is_a_typed_error() {
    let flow = common::default_flows().remove(0);
    for config in [
        CheckConfig {
            dim: 0,
            ..Default::default()
        },
        CheckConfig {
            points: 0,
            ..Default::default()
        },
        CheckConfig {
            data_std: f64::NAN,
            ..Default::default()
        },
    ] {
        let err = check::<Cpu, _>(flow.as_ref(), &Default::default(), &config).unwrap_err();
        assert!(err.to_string().contains("CheckConfig"), "{err}");
    }
}

/// A flow of your own is checked when a model is built with it: each broken flow is a
/// `FlowCheck` error naming a failed item; `init_unchecked` is the expert's way past it; a
/// correct flow of your own builds.
#[test]
fn a_model_refuses_a_flow_that_fails_its_self_check() {
    use integration_flow::model::IntegrationFlowConfig;
    use integration_flow::nn::MlpConfig;
    use integration_flow::Error;
    use std::sync::Arc;
    let net = || {
        MlpConfig {
            width: 8,
            depth: 1,
            ..Default::default()
        }
        .init::<Cpu>(&Default::default(), 0)
        .unwrap()
    };
    for mistake in [
        Mistake::SigmaDotSign,
        Mistake::SwappedAlphaSigma,
        Mistake::PriorVariance,
        Mistake::DecreasingNoise,
    ] {
        let flow: Arc<dyn ProbabilityFlow> = Arc::new(Broken { mistake });
        let err = IntegrationFlowConfig::default()
            .init(flow.clone(), net())
            .unwrap_err();
        match &err {
            Error::FlowCheck { flow, item, .. } => {
                assert_eq!(flow, "broken");
                assert!(failed_items(mistake).contains(item), "{mistake:?}: {err}");
            }
            other => panic!("{mistake:?}: {other}"),
        }
        assert!(err.to_string().contains("init_unchecked"), "{err}");
        assert!(IntegrationFlowConfig::default()
            .init_unchecked(flow, net())
            .is_ok());
    }
    // Rectified flow's math under a name of its own (no built-in configuration): it passes.
    #[derive(Debug)]
    struct Mine(integration_flow::flow::RectifiedFlow);
    impl ProbabilityFlow for Mine {
        fn name(&self) -> &str {
            "mine"
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
    let mine = Mine(
        integration_flow::flow::RectifiedFlowConfig::default()
            .init()
            .unwrap(),
    );
    assert!(mine.flow_config().is_none());
    assert!(IntegrationFlowConfig::default()
        .init(Arc::new(mine), net())
        .is_ok());
}
