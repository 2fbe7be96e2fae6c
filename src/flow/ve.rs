//! Variance-exploding diffusion.
//!
//! ```text
//! α(t) = 1,   σ(t) = σ_min·(σ_max/σ_min)^t,   t ∈ [0, 1],   prior N(0, σ_max²·I)
//! ```

use super::{Preconditioning, ProbabilityFlow, TimeRange};
use crate::error::{invalid_config, require_finite, Result};
use serde::{Deserialize, Serialize};

/// Configuration of [`Ve`]; defaults σ_min 0.002, σ_max 80 (images in [-1, 1]; toy data
/// needs σ_max ≫ its standard deviation too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VeConfig {
    /// Noise scale at t = 0; must be > 0.
    pub sigma_min: f64,
    /// Noise scale at t = 1; must be > σ_min.
    pub sigma_max: f64,
}

impl Default for VeConfig {
    fn default() -> Self {
        VeConfig {
            sigma_min: 0.002,
            sigma_max: 80.0,
        }
    }
}

impl VeConfig {
    /// Validates the configuration and builds the flow.
    ///
    /// ```
    /// use integration_flow::flow::VeConfig;
    /// let err = VeConfig { sigma_min: 5.0, sigma_max: 1.0 }.init().unwrap_err();
    /// assert!(err.to_string().contains("sigma_max"));
    /// ```
    pub fn init(&self) -> Result<Ve> {
        Ok(Ve {
            schedule: GeometricSigma::new("VeConfig", self.sigma_min, self.sigma_max)?,
            config: self.clone(),
        })
    }
}

/// Variance-exploding diffusion; build it with [`VeConfig::init`].
#[derive(Clone, Debug)]
pub struct Ve {
    config: VeConfig,
    schedule: GeometricSigma,
}

impl Ve {
    /// The configuration this flow was built from.
    pub fn config(&self) -> &VeConfig {
        &self.config
    }
}

impl ProbabilityFlow for Ve {
    fn name(&self) -> &str {
        "ve"
    }

    fn flow_config(&self) -> Option<super::FlowConfig> {
        Some(super::FlowConfig::Ve(self.config.clone()))
    }

    fn alpha(&self, _t: f64) -> f64 {
        1.0
    }

    fn sigma(&self, t: f64) -> f64 {
        self.schedule.sigma(t)
    }

    fn alpha_dot(&self, _t: f64) -> f64 {
        0.0
    }

    fn sigma_dot(&self, t: f64) -> f64 {
        self.schedule.sigma_dot(t)
    }

    fn time_at_noise_to_signal(&self, ratio: f64) -> f64 {
        self.schedule.time_at(ratio)
    }

    fn integral_preconditioning(&self, t: f64, sigma_data: f64) -> Preconditioning {
        self.schedule.integral_preconditioning(t, sigma_data)
    }
}

/// The geometric noise schedule σ(t) = σ_min·(σ_max/σ_min)^t on [0, 1] that VE and PFGM++
/// share, with their common integral-form preconditioning.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GeometricSigma {
    sigma_min: f64,
    /// ln(σ_max/σ_min).
    log_ratio: f64,
}

impl GeometricSigma {
    pub(crate) fn new(config: &'static str, sigma_min: f64, sigma_max: f64) -> Result<Self> {
        require_finite(config, "sigma_min", sigma_min)?;
        require_finite(config, "sigma_max", sigma_max)?;
        if sigma_min <= 0.0 {
            return Err(invalid_config(
                config,
                "sigma_min",
                format!("must be > 0, got {sigma_min}"),
            ));
        }
        if sigma_max <= sigma_min {
            return Err(invalid_config(
                config,
                "sigma_max",
                format!("must exceed sigma_min = {sigma_min}, got {sigma_max}"),
            ));
        }
        Ok(GeometricSigma {
            sigma_min,
            log_ratio: (sigma_max / sigma_min).ln(),
        })
    }

    pub(crate) fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (t * self.log_ratio).exp()
    }

    pub(crate) fn sigma_dot(&self, t: f64) -> f64 {
        self.sigma(t) * self.log_ratio
    }

    /// The t with σ(t) = `sigma`, clamped to [0, 1].
    pub(crate) fn time_at(&self, sigma: f64) -> f64 {
        let t = (sigma / self.sigma_min).ln() / self.log_ratio;
        if t.is_nan() {
            0.0
        } else {
            TimeRange::UNIT.clamp(t)
        }
    }

    /// `x̂_0 = κ·x_t + (1−κ)·F`, `κ = σ_min/σ(t)`: exactly `x_t` at σ_min.
    pub(crate) fn integral_preconditioning(&self, t: f64, sigma_data: f64) -> Preconditioning {
        let sigma = self.sigma(t);
        let kappa = self.sigma_min / sigma;
        Preconditioning {
            c_skip: kappa,
            c_out: 1.0 - kappa,
            c_in: super::precondition::unit_input_scale(1.0, sigma, sigma_data),
            c_noise: t,
        }
    }
}
