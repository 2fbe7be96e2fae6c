//! What a training step pulls the estimate `x̂_0 = f(x_t, t, a)` towards: one file per
//! objective, chosen by [`ObjectiveConfig`] in the [`TrainConfig`](super::TrainConfig).
//!
//! - [`regression`]: the data `x_0` itself (Integration Flow's and the denoiser's objective);
//! - [`consistency`]: the model's own stop-gradient estimate at a smaller time `r` on the same
//!   noise path (consistency training in the easy-consistency-tuning form: start from a trained
//!   denoiser, shrink `t − r` stage by stage), the data where `r` reaches `t_min`;
//! - [`flow_map`]: a network with a target-time input learns every jump `t → r` of the
//!   probability-flow ODE at once, by MeanFlow's identity with a finite-difference derivative.
//!
//! Either way the distance, the loss weight λ(t) and the anchor term of the configuration apply
//! to the estimate and its target. A new objective is a variant here and a file; the `match`es
//! over [`ObjectiveConfig`] are where it plugs in.

pub mod consistency;
pub mod flow_map;
pub mod regression;

pub use consistency::{ConsistencyConfig, ConsistencyTarget};
pub use flow_map::{FlowMapConfig, FlowMapVelocity, OneStepTarget};

use crate::error::Result;
use serde::{Deserialize, Serialize};

/// The training objective.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectiveConfig {
    /// The estimate regresses on the data: `d(x̂_0, x_0)`.
    #[default]
    Regression,
    /// The estimate is pulled towards the model's own estimate at a smaller time on the same
    /// path ([`consistency`]).
    Consistency(ConsistencyConfig),
    /// A flow-map network (one with a target-time input) learns the jumps `t → r` of the ODE
    /// ([`flow_map`]).
    FlowMap(FlowMapConfig),
}

impl ObjectiveConfig {
    /// The objective's name in logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            ObjectiveConfig::Regression => "regression",
            ObjectiveConfig::Consistency(_) => "consistency",
            ObjectiveConfig::FlowMap(_) => "flow_map",
        }
    }

    /// Checks the objective's parameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        match self {
            ObjectiveConfig::Regression => Ok(()),
            ObjectiveConfig::Consistency(config) => config.validate(),
            ObjectiveConfig::FlowMap(config) => config.validate(),
        }
    }
}
