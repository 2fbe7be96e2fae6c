//! Time: the range a flow lives on and the distributions training draws times from.

use crate::error::{invalid_config, require_finite, Error, Result};
use serde::{Deserialize, Serialize};

/// A closed, non-empty interval of times `[min, max]`: data at `min`, prior at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeRange {
    /// The data end.
    pub min: f64,
    /// The prior end.
    pub max: f64,
}

impl TimeRange {
    /// `[0, 1]`.
    pub const UNIT: TimeRange = TimeRange { min: 0.0, max: 1.0 };

    /// A range checked to be finite and non-empty; `config` names the caller in errors.
    pub(crate) fn checked(config: &'static str, min: f64, max: f64) -> Result<Self> {
        require_finite(config, "t_min", min)?;
        require_finite(config, "t_max", max)?;
        if min >= max {
            return Err(invalid_config(
                config,
                "t_min",
                format!("must be below t_max: the time range [{min}, {max}] is empty"),
            ));
        }
        Ok(TimeRange { min, max })
    }

    /// `max − min`.
    pub fn len(&self) -> f64 {
        self.max - self.min
    }

    /// Whether `t` lies in the range (NaN does not).
    pub fn contains(&self, t: f64) -> bool {
        t >= self.min && t <= self.max
    }

    /// `t` moved into the range.
    pub fn clamp(&self, t: f64) -> f64 {
        t.clamp(self.min, self.max)
    }

    /// `Ok` if `t` lies in the range, else an error naming it.
    pub(crate) fn require(&self, t: f64) -> Result<()> {
        if self.contains(t) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                name: "t",
                reason: format!(
                    "{t} is outside the flow's time range [{}, {}]",
                    self.min, self.max
                ),
            })
        }
    }
}

/// How training draws times `t` (docs/training.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeDistribution {
    /// Uniform over the flow's time range.
    #[default]
    Uniform,
    /// EDM's: `ln σ̃ ~ N(p_mean, p_std²)` for the noise-to-signal ratio σ̃ = σ/α, mapped to the
    /// time with that ratio (clamped to the range). EDM uses `p_mean = −1.2`, `p_std = 1.2`.
    LogNormal {
        /// Mean of `ln σ̃`.
        p_mean: f64,
        /// Standard deviation of `ln σ̃`.
        p_std: f64,
    },
    /// `t = t_min + (t_max − t_min)·sigmoid(z)`, `z ~ N(mean, std²)` (as in SD3 for flows).
    LogitNormal {
        /// Mean of `z`.
        mean: f64,
        /// Standard deviation of `z`.
        std: f64,
    },
}

impl TimeDistribution {
    /// EDM's log-normal with `P_mean = −1.2`, `P_std = 1.2`.
    pub const EDM: TimeDistribution = TimeDistribution::LogNormal {
        p_mean: -1.2,
        p_std: 1.2,
    };

    /// `Ok` if the parameters are finite and the spread is positive.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "TimeDistribution";
        let (mean_name, std_name, mean, std) = match *self {
            TimeDistribution::Uniform => return Ok(()),
            TimeDistribution::LogNormal { p_mean, p_std } => ("p_mean", "p_std", p_mean, p_std),
            TimeDistribution::LogitNormal { mean, std } => ("mean", "std", mean, std),
        };
        require_finite(NAME, mean_name, mean)?;
        require_finite(NAME, std_name, std)?;
        if std <= 0.0 {
            return Err(invalid_config(
                NAME,
                std_name,
                format!("must be positive, got {std}"),
            ));
        }
        Ok(())
    }
}
