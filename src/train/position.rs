//! Where a run stands (position, anchor drift) and what one step reports.

use serde::{Deserialize, Serialize};

/// What one optimizer step measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The step's index (0-based).
    pub step: usize,
    /// The epoch it belonged to.
    pub epoch: usize,
    /// The loss.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The data-term weight `w`.
    pub w: f64,
    /// When this step finished an epoch: that epoch's mean anchor change per example.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_drift: Option<f64>,
    /// The adversarial critic's loss before its update this step (runs with an adversarial
    /// term; about 2 while it cannot tell estimates from targets, 0 once it always can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critic_loss: Option<f64>,
    /// The step diverged and was skipped ([`DivergencePolicy::Skip`](super::DivergencePolicy)):
    /// nothing was updated, and `loss` and `grad_norm` are what diverged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// Where training stands: the next step, its epoch and its batch within the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Position {
    pub(super) step: usize,
    pub(super) epoch: usize,
    pub(super) batch: usize,
}

/// How far the anchor store moved: the running sum of per-example anchor changes in the
/// current epoch, and the mean change per example of every finished epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct AnchorDrift {
    pub(super) epoch_sum: f64,
    pub(super) history: Vec<f64>,
}
