//! 1-rectified flow (flow matching with the straight-line interpolant), without reflow.
//!
//! ```text
//! α(t) = 1 − t,   σ(t) = t,   t ∈ [0, 1],   prior N(0, I)
//! ```

use super::{Preconditioning, ProbabilityFlow, TimeRange};
use crate::error::{invalid_config, Result};
use serde::{Deserialize, Serialize};

/// Configuration of [`RectifiedFlow`]: the time range, `[0, 1]` by default. The EDM
/// preconditioning is singular at both ends (σ = 0 at 0, α = 0 at 1), so a model that uses it
/// trains on a narrower range such as `[1e-4, 1 − 1e-4]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RectifiedFlowConfig {
    /// Data end, ≥ 0.
    pub t_min: f64,
    /// Prior end, ≤ 1.
    pub t_max: f64,
}

impl Default for RectifiedFlowConfig {
    fn default() -> Self {
        RectifiedFlowConfig {
            t_min: 0.0,
            t_max: 1.0,
        }
    }
}

impl RectifiedFlowConfig {
    /// Validates the configuration and builds the flow.
    ///
    /// ```
    /// use integration_flow::flow::RectifiedFlowConfig;
    /// let err = RectifiedFlowConfig { t_min: 0.5, t_max: 0.5 }.init().unwrap_err();
    /// assert!(err.to_string().contains("empty"));
    /// ```
    pub fn init(&self) -> Result<RectifiedFlow> {
        const NAME: &str = "RectifiedFlowConfig";
        let range = TimeRange::checked(NAME, self.t_min, self.t_max)?;
        if range.min < 0.0 {
            return Err(invalid_config(
                NAME,
                "t_min",
                format!("must be ≥ 0, got {}", range.min),
            ));
        }
        if range.max > 1.0 {
            return Err(invalid_config(
                NAME,
                "t_max",
                format!("must be ≤ 1, got {}", range.max),
            ));
        }
        Ok(RectifiedFlow {
            config: self.clone(),
            range,
        })
    }
}

/// Rectified flow; build it with [`RectifiedFlowConfig::init`].
#[derive(Clone, Debug)]
pub struct RectifiedFlow {
    config: RectifiedFlowConfig,
    range: TimeRange,
}

impl RectifiedFlow {
    /// The configuration this flow was built from.
    pub fn config(&self) -> &RectifiedFlowConfig {
        &self.config
    }
}

impl ProbabilityFlow for RectifiedFlow {
    fn name(&self) -> &str {
        "rf"
    }

    fn flow_config(&self) -> Option<super::FlowConfig> {
        Some(super::FlowConfig::Rf(self.config.clone()))
    }

    fn alpha(&self, t: f64) -> f64 {
        1.0 - t
    }

    fn sigma(&self, t: f64) -> f64 {
        t
    }

    fn alpha_dot(&self, _t: f64) -> f64 {
        -1.0
    }

    fn sigma_dot(&self, _t: f64) -> f64 {
        1.0
    }

    fn time_range(&self) -> TimeRange {
        self.range
    }

    fn time_at_noise_to_signal(&self, ratio: f64) -> f64 {
        // σ̃ = t/(1 − t) ⇒ t = σ̃/(1 + σ̃).
        let t = if ratio.is_infinite() && ratio > 0.0 {
            1.0
        } else {
            ratio / (1.0 + ratio)
        };
        if t.is_nan() {
            self.range.min
        } else {
            self.range.clamp(t)
        }
    }

    /// The papers' form `x̂_0 = x_t − t·F`: `F` is the (constant) velocity `n − x_0`.
    fn integral_preconditioning(&self, t: f64, sigma_data: f64) -> Preconditioning {
        Preconditioning {
            c_skip: 1.0,
            c_out: -t,
            c_in: super::precondition::unit_input_scale(1.0 - t, t, sigma_data),
            c_noise: t,
        }
    }
}
