//! The crate's configurations follow burn's conventions: each is a serde struct (or enum) with
//! defaults that implements burn's [`Config`] (so `save` and `load` work as burn users expect),
//! and [`ValidatedConfig`]: `validate()`, and JSON loading whose errors name the field's path.
//!
//! ```
//! use integration_flow::config::ValidatedConfig;
//! use integration_flow::flow::VeConfig;
//!
//! let ve = VeConfig::from_json(r#"{"sigma_max": 20}"#)?;
//! assert_eq!(ve.sigma_max, 20.0);
//! let err = VeConfig::from_json(r#"{"sigma_max": 0.001}"#).unwrap_err(); // below sigma_min
//! assert!(err.to_string().contains("sigma_max"));
//! let err = VeConfig::from_json(r#"{"sigma_mx": 20}"#).unwrap_err();
//! assert!(err.to_string().contains("sigma_mx"));
//! # Ok::<(), integration_flow::Error>(())
//! ```

pub use burn::config::Config;

use crate::error::{Error, Result};
use std::path::Path;

/// A configuration that checks its values and loads from JSON with errors that name the field.
pub trait ValidatedConfig: Config {
    /// The type's name in errors, e.g. `TrainConfig`.
    const NAME: &'static str;

    /// Checks every value; the error ([`Error::InvalidConfig`]) names the field.
    fn validate(&self) -> Result<()>;

    /// Reads the configuration from JSON and validates it. Missing fields take their defaults;
    /// an unknown field or a value of the wrong type is an [`Error::ConfigJson`] naming its
    /// path, a value out of range an [`Error::InvalidConfig`].
    fn from_json(json: &str) -> Result<Self> {
        let config: Self = crate::error::config_from_json(Self::NAME, json)?;
        ValidatedConfig::validate(&config)?;
        Ok(config)
    }

    /// [`from_json`](Self::from_json) of a file's contents.
    fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_json(&json)
    }
}

/// Implements [`Config`] and [`ValidatedConfig`] for `$ty` named `$name`, validated by `$check`.
macro_rules! validated_config {
    ($ty:ty, $name:literal, $check:expr) => {
        impl Config for $ty {}
        impl ValidatedConfig for $ty {
            const NAME: &'static str = $name;
            fn validate(&self) -> Result<()> {
                let check: fn(&$ty) -> Result<()> = $check;
                check(self)
            }
        }
    };
}

use crate::coupling::AnchorConfig;
use crate::flow::{CheckConfig, FlowConfig, PfgmPPConfig, RectifiedFlowConfig, VeConfig, VpConfig};
use crate::metrics::ClassifierConfig;
use crate::model::IntegrationFlowConfig;
use crate::nn::{MlpConfig, UNetConfig};
use crate::pipeline::DistillConfig;
use crate::train::{EmaConfig, OptimizerConfig, TrainConfig};

validated_config!(TrainConfig, "TrainConfig", TrainConfig::validate);
validated_config!(AnchorConfig, "AnchorConfig", AnchorConfig::validate);
// The optimizer's and the EMA's settings are checked as parts of a TrainConfig, so that errors
// name them as there (`optimizer.lr`).
validated_config!(OptimizerConfig, "OptimizerConfig", |c| TrainConfig {
    optimizer: c.clone(),
    ..Default::default()
}
.validate());
validated_config!(EmaConfig, "EmaConfig", |c| TrainConfig {
    ema: c.clone(),
    ..Default::default()
}
.validate());
validated_config!(FlowConfig, "FlowConfig", |c| c.init().map(drop));
validated_config!(VpConfig, "VpConfig", |c| c.init().map(drop));
validated_config!(VeConfig, "VeConfig", |c| c.init().map(drop));
validated_config!(RectifiedFlowConfig, "RectifiedFlowConfig", |c| c
    .init()
    .map(drop));
validated_config!(PfgmPPConfig, "PfgmPPConfig", |c| c.init().map(drop));
validated_config!(
    CheckConfig,
    "CheckConfig",
    crate::flow::validate_check_config
);
validated_config!(MlpConfig, "MlpConfig", MlpConfig::validate);
validated_config!(DistillConfig, "DistillConfig", DistillConfig::validate);
validated_config!(UNetConfig, "UNetConfig", UNetConfig::validate);
validated_config!(
    ClassifierConfig,
    "ClassifierConfig",
    ClassifierConfig::validate
);
validated_config!(
    IntegrationFlowConfig,
    "IntegrationFlowConfig",
    IntegrationFlowConfig::validate
);
