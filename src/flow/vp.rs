//! Variance-preserving diffusion (continuous-time DDPM).
//!
//! ```text
//! β(t) = β_min + t·(β_max − β_min),   B(t) = ∫₀ᵗ β = β_min·t + ½·t²·(β_max − β_min)
//! α(t) = exp(−½·B(t)),   σ(t) = sqrt(1 − α²),   t ∈ [t_min, 1],   prior N(0, I)
//! ```

use super::{Preconditioning, ProbabilityFlow, TimeRange};
use crate::error::{invalid_config, require_finite, Result};
use serde::{Deserialize, Serialize};

/// Configuration of [`Vp`]; defaults β_min 0.1, β_max 20, t_min 1e-5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpConfig {
    /// β at t = 0; must be ≥ 0.
    pub beta_min: f64,
    /// β at t = 1; must be ≥ β_min and > 0.
    pub beta_max: f64,
    /// The data end of the time range (σ(0) = 0 makes t = 0 singular); in (0, 1).
    pub t_min: f64,
}

impl Default for VpConfig {
    fn default() -> Self {
        VpConfig {
            beta_min: 0.1,
            beta_max: 20.0,
            t_min: 1e-5,
        }
    }
}

impl VpConfig {
    /// Validates the configuration and builds the flow.
    ///
    /// ```
    /// use integration_flow::flow::VpConfig;
    /// let err = VpConfig { beta_min: -1.0, ..Default::default() }.init().unwrap_err();
    /// assert!(err.to_string().contains("beta_min"));
    /// ```
    pub fn init(&self) -> Result<Vp> {
        const NAME: &str = "VpConfig";
        require_finite(NAME, "beta_min", self.beta_min)?;
        require_finite(NAME, "beta_max", self.beta_max)?;
        require_finite(NAME, "t_min", self.t_min)?;
        if self.beta_min < 0.0 {
            return Err(invalid_config(
                NAME,
                "beta_min",
                format!("must be ≥ 0, got {}", self.beta_min),
            ));
        }
        if self.beta_max < self.beta_min || self.beta_max <= 0.0 {
            return Err(invalid_config(
                NAME,
                "beta_max",
                format!(
                    "must be positive and ≥ beta_min = {}, got {}",
                    self.beta_min, self.beta_max
                ),
            ));
        }
        if self.t_min <= 0.0 {
            return Err(invalid_config(
                NAME,
                "t_min",
                format!("must be > 0 (σ(0) = 0), got {}", self.t_min),
            ));
        }
        let range = TimeRange::checked(NAME, self.t_min, 1.0)?;
        Ok(Vp {
            config: self.clone(),
            range,
        })
    }
}

/// Variance-preserving diffusion; build it with [`VpConfig::init`].
#[derive(Clone, Debug)]
pub struct Vp {
    config: VpConfig,
    range: TimeRange,
}

impl Vp {
    /// The configuration this flow was built from.
    pub fn config(&self) -> &VpConfig {
        &self.config
    }

    fn beta(&self, t: f64) -> f64 {
        self.config.beta_min + t * (self.config.beta_max - self.config.beta_min)
    }

    /// B(t) = ∫₀ᵗ β(s) ds.
    fn integrated_beta(&self, t: f64) -> f64 {
        self.config.beta_min * t + 0.5 * t * t * (self.config.beta_max - self.config.beta_min)
    }
}

impl ProbabilityFlow for Vp {
    fn name(&self) -> &str {
        "vp"
    }

    fn flow_config(&self) -> Option<super::FlowConfig> {
        Some(super::FlowConfig::Vp(self.config.clone()))
    }

    fn alpha(&self, t: f64) -> f64 {
        (-0.5 * self.integrated_beta(t)).exp()
    }

    fn sigma(&self, t: f64) -> f64 {
        // 1 − α² = 1 − exp(−B), via expm1 to keep precision near t = 0.
        (-(-self.integrated_beta(t)).exp_m1()).sqrt()
    }

    fn alpha_dot(&self, t: f64) -> f64 {
        -0.5 * self.beta(t) * self.alpha(t)
    }

    fn sigma_dot(&self, t: f64) -> f64 {
        // σ² = 1 − α² ⇒ σσ' = −αα' = ½β·α².
        let alpha = self.alpha(t);
        0.5 * self.beta(t) * alpha * alpha / self.sigma(t)
    }

    fn time_range(&self) -> TimeRange {
        self.range
    }

    fn time_at_noise_to_signal(&self, ratio: f64) -> f64 {
        // σ̃² = exp(B) − 1 ⇒ B(t) = ln(1 + σ̃²); solve ½·Δβ·t² + β_min·t − B = 0.
        if ratio == f64::INFINITY {
            return self.range.max;
        }
        let target = (ratio * ratio).ln_1p();
        let (b0, db) = (
            self.config.beta_min,
            self.config.beta_max - self.config.beta_min,
        );
        let t = if db.abs() < 1e-12 {
            target / b0
        } else {
            // The positive root, written to avoid cancellation when b0² ≫ 2·db·target.
            2.0 * target / (b0 + (b0 * b0 + 2.0 * db * target).sqrt())
        };
        if t.is_nan() {
            return self.range.min;
        }
        self.range.clamp(t)
    }

    /// DDDM's form `x̂_0 = x_t − F`.
    fn integral_preconditioning(&self, t: f64, sigma_data: f64) -> Preconditioning {
        Preconditioning {
            c_skip: 1.0,
            c_out: -1.0,
            c_in: super::precondition::unit_input_scale(self.alpha(t), self.sigma(t), sigma_data),
            c_noise: t,
        }
    }
}
