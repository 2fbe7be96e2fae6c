//! Configurations round-trip through JSON and reject impossible values by name.

use integration_flow::flow::{
    Parameterization, PfgmPPConfig, RectifiedFlowConfig, TimeDistribution, VeConfig, VpConfig,
};
use integration_flow::Error;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, value, "{json}");
}

#[test]
fn every_config_round_trips_through_json() {
    round_trip(&VpConfig {
        beta_min: 0.2,
        beta_max: 15.0,
        t_min: 1e-4,
    });
    round_trip(&VeConfig {
        sigma_min: 0.01,
        sigma_max: 20.0,
    });
    round_trip(&RectifiedFlowConfig {
        t_min: 1e-4,
        t_max: 0.999,
    });
    round_trip(&PfgmPPConfig {
        sigma_min: 0.002,
        sigma_max: 80.0,
        d: 2048,
    });
    round_trip(&TimeDistribution::EDM);
    round_trip(&TimeDistribution::LogitNormal {
        mean: 0.1,
        std: 0.9,
    });
    round_trip(&TimeDistribution::Uniform);
    round_trip(&Parameterization::Edm);
    // Missing fields take the defaults, so a config file names only what it changes.
    let ve: VeConfig = serde_json::from_str(r#"{"sigma_max": 10.0}"#).unwrap();
    assert_eq!(
        ve,
        VeConfig {
            sigma_max: 10.0,
            ..Default::default()
        }
    );
    // A round-tripped config builds the same flow.
    let json = serde_json::to_string(&VpConfig::default()).unwrap();
    let vp: VpConfig = serde_json::from_str(&json).unwrap();
    assert!(vp.init().is_ok());
}

#[test]
fn unknown_fields_are_rejected() {
    let err = serde_json::from_str::<VeConfig>(r#"{"sigma_mx": 10.0}"#).unwrap_err();
    assert!(err.to_string().contains("sigma_mx"), "{err}");
    let err = serde_json::from_str::<TimeDistribution>(
        r#"{"kind":"log_normal","p_mean":0,"p_std":1,"x":1}"#,
    );
    assert!(err.is_err());
}

/// Asserts that `result` is an `InvalidConfig` error for `field` of `config`.
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>, config: &str, field: &str) {
    match result {
        Err(Error::InvalidConfig {
            config: c,
            field: f,
            reason,
        }) => {
            assert_eq!((c, f), (config, field), "{reason}");
            let message = Error::InvalidConfig {
                config: c,
                field: f,
                reason,
            }
            .to_string();
            assert!(message.contains(field), "{message}");
        }
        other => panic!("expected InvalidConfig {config}.{field}, got {other:?}"),
    }
}

#[test]
fn impossible_vp_configs_name_their_field() {
    let d = VpConfig::default;
    assert_invalid(
        VpConfig {
            beta_min: -0.1,
            ..d()
        }
        .init(),
        "VpConfig",
        "beta_min",
    );
    assert_invalid(
        VpConfig {
            beta_min: f64::NAN,
            ..d()
        }
        .init(),
        "VpConfig",
        "beta_min",
    );
    assert_invalid(
        VpConfig {
            beta_max: 0.05,
            ..d()
        }
        .init(),
        "VpConfig",
        "beta_max",
    );
    assert_invalid(
        VpConfig {
            beta_max: f64::INFINITY,
            ..d()
        }
        .init(),
        "VpConfig",
        "beta_max",
    );
    assert_invalid(VpConfig { t_min: 0.0, ..d() }.init(), "VpConfig", "t_min");
    assert_invalid(VpConfig { t_min: 1.0, ..d() }.init(), "VpConfig", "t_min");
    assert_invalid(
        VpConfig {
            t_min: f64::NAN,
            ..d()
        }
        .init(),
        "VpConfig",
        "t_min",
    );
}

#[test]
fn impossible_ve_configs_name_their_field() {
    assert_invalid(
        VeConfig {
            sigma_min: 1.0,
            sigma_max: 1.0,
        }
        .init(),
        "VeConfig",
        "sigma_max",
    );
    assert_invalid(
        VeConfig {
            sigma_min: 2.0,
            sigma_max: 1.0,
        }
        .init(),
        "VeConfig",
        "sigma_max",
    );
    assert_invalid(
        VeConfig {
            sigma_min: 0.0,
            sigma_max: 1.0,
        }
        .init(),
        "VeConfig",
        "sigma_min",
    );
    assert_invalid(
        VeConfig {
            sigma_min: -1.0,
            sigma_max: 1.0,
        }
        .init(),
        "VeConfig",
        "sigma_min",
    );
    assert_invalid(
        VeConfig {
            sigma_min: f64::NAN,
            sigma_max: 1.0,
        }
        .init(),
        "VeConfig",
        "sigma_min",
    );
    assert_invalid(
        VeConfig {
            sigma_min: 0.1,
            sigma_max: f64::NAN,
        }
        .init(),
        "VeConfig",
        "sigma_max",
    );
}

#[test]
fn impossible_rectified_flow_configs_name_their_field() {
    let c = |t_min, t_max| RectifiedFlowConfig { t_min, t_max }.init();
    assert_invalid(c(0.5, 0.5), "RectifiedFlowConfig", "t_min");
    assert_invalid(c(0.8, 0.2), "RectifiedFlowConfig", "t_min");
    assert_invalid(c(-0.1, 1.0), "RectifiedFlowConfig", "t_min");
    assert_invalid(c(0.0, 1.5), "RectifiedFlowConfig", "t_max");
    assert_invalid(c(f64::NAN, 1.0), "RectifiedFlowConfig", "t_min");
    assert_invalid(c(0.0, f64::NAN), "RectifiedFlowConfig", "t_max");
}

#[test]
fn impossible_pfgmpp_configs_name_their_field() {
    let d = PfgmPPConfig::default;
    assert_invalid(PfgmPPConfig { d: 0, ..d() }.init(), "PfgmPPConfig", "d");
    assert_invalid(PfgmPPConfig { d: 2, ..d() }.init(), "PfgmPPConfig", "d");
    assert_invalid(
        PfgmPPConfig {
            sigma_min: 3.0,
            sigma_max: 2.0,
            ..d()
        }
        .init(),
        "PfgmPPConfig",
        "sigma_max",
    );
    assert_invalid(
        PfgmPPConfig {
            sigma_min: f64::NAN,
            ..d()
        }
        .init(),
        "PfgmPPConfig",
        "sigma_min",
    );
    assert!(PfgmPPConfig { d: 3, ..d() }.init().is_ok());
}

#[test]
fn impossible_time_distributions_name_their_field() {
    let e = TimeDistribution::LogNormal {
        p_mean: f64::NAN,
        p_std: 1.0,
    }
    .validate();
    assert_invalid(e, "TimeDistribution", "p_mean");
    let e = TimeDistribution::LogNormal {
        p_mean: 0.0,
        p_std: 0.0,
    }
    .validate();
    assert_invalid(e, "TimeDistribution", "p_std");
    let e = TimeDistribution::LogitNormal {
        mean: 0.0,
        std: f64::INFINITY,
    }
    .validate();
    assert_invalid(e, "TimeDistribution", "std");
}
