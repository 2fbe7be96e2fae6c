//! The consistency objective: the estimate at `(x_t, t)` is pulled towards the model's own
//! stop-gradient estimate at a smaller time `r` on the same noise path,
//! `x_r = α(r)·x_0 + σ(r)·ε` with the `ε` of `x_t`, and towards `x_0` where `r` reaches
//! `t_min`. A network whose estimates agree along every path returns the same image from every
//! time, so one call at `t_max` generates. Started from a trained denoiser (whose estimate is
//! already right at small t), the gap `t − r` shrinks stage by stage, as in easy consistency
//! tuning (ECT; Geng et al. 2024):
//!
//! ```text
//! r = t_min + (t − t_min)·max(0, 1 − q^−(stage+1)·(1 + k·sigmoid(−b·σ̃(t)))),  stage = ⌊step / stage_steps⌋
//! ```
//!
//! with σ̃ = σ/α the noise-to-signal ratio (EDM's σ), so that the schedule means the same on
//! every flow: at small σ̃ the factor `1 + k/2` sends `r` to `t_min` (the target is the data, as
//! for a denoiser) in the first stages; at large σ̃ `r` starts at half of `t` (q = 2). On the VE
//! flow (`t = σ̃`, `t_min ≈ 0`) this is ECT's mapping. Each step costs one more forward pass,
//! without gradients.

use crate::error::{invalid_config, require_finite, Result};
use crate::flow::tensor::column;
use crate::flow::{ProbabilityFlow, ProbabilityFlowExt};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which weights make the target estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyTarget {
    /// The weights being trained, without their gradient (ECT and improved consistency
    /// training: an EMA target lags and slows the shrinking gap down).
    #[default]
    Online,
    /// The EMA of the weights (the original consistency models).
    Ema,
}

/// The consistency objective's schedule of the gap `t − r` (module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsistencyConfig {
    /// The gap shrinks by this factor from stage to stage (> 1).
    pub q: f64,
    /// How much larger the gap's relative shortening is at small σ̃ (`1 + k/2` times at σ̃ = 0).
    pub k: f64,
    /// The σ̃ scale of that adjustment.
    pub b: f64,
    /// Optimizer steps per stage (at least 1).
    pub stage_steps: usize,
    /// The weights of the target estimate.
    pub target: ConsistencyTarget,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            q: 2.0,
            k: 8.0,
            b: 1.0,
            stage_steps: 100,
            target: ConsistencyTarget::Online,
        }
    }
}

impl ConsistencyConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "ConsistencyConfig";
        for (field, value) in [("q", self.q), ("k", self.k), ("b", self.b)] {
            require_finite(NAME, field, value)?;
        }
        if self.q <= 1.0 {
            return Err(invalid_config(NAME, "q", "must be above 1"));
        }
        if self.k < 0.0 || self.b < 0.0 {
            let field = if self.k < 0.0 { "k" } else { "b" };
            return Err(invalid_config(NAME, field, "must be ≥ 0"));
        }
        if self.stage_steps == 0 {
            return Err(invalid_config(NAME, "stage_steps", "must be at least 1"));
        }
        Ok(())
    }

    /// The stage at optimizer step `step`.
    pub fn stage(&self, step: usize) -> usize {
        step / self.stage_steps
    }

    /// The smaller time `r` whose estimate is the target of the estimate at `t`, at `step`.
    ///
    /// ```
    /// use integration_flow::flow::RectifiedFlowConfig;
    /// use integration_flow::train::ConsistencyConfig;
    /// let flow = RectifiedFlowConfig::default().init()?;
    /// let schedule = ConsistencyConfig::default();
    /// // At t_max (σ̃ = ∞) the first stage halves t, the next stage quarters the gap…
    /// assert!((schedule.smaller_time(&flow, 1.0, 0) - 0.5).abs() < 1e-12);
    /// assert!((schedule.smaller_time(&flow, 1.0, 100) - 0.75).abs() < 1e-12);
    /// // …and at small times the first stages' target is the data (r = t_min).
    /// assert_eq!(schedule.smaller_time(&flow, 0.1, 0), 0.0);
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn smaller_time(&self, flow: &dyn ProbabilityFlow, t: f64, step: usize) -> f64 {
        let min = flow.time_range().min;
        let ratio = flow.noise_to_signal(t);
        // sigmoid(−b·σ̃), 0 where σ̃ = ∞ (α = 0 at t_max on rectified flow).
        let sigmoid = if ratio.is_finite() {
            1.0 / (1.0 + (self.b * ratio).exp())
        } else {
            0.0
        };
        let exponent = i32::try_from(self.stage(step).saturating_add(1)).unwrap_or(i32::MAX);
        let decay = self.q.powi(exponent);
        let keep = (1.0 - (1.0 + self.k * sigmoid) / decay).max(0.0);
        min + (t - min) * keep
    }
}

/// The target of the estimate at times `t`: the stop-gradient estimate at the smaller times on
/// the same path (`x0`, `noise` and the network's `anchor` input of the step), `x_0` where the
/// smaller time is `t_min`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn target<B, N>(
    config: &ConsistencyConfig,
    model: &IntegrationFlow<B, N>,
    ema: &N::InnerModule,
    step: usize,
    x0: &Tensor<B, 2>,
    noise: &Tensor<B, 2>,
    anchor: &Tensor<B, 2>,
    t: &[f64],
) -> Result<Tensor<B, 2>>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    let flow = model.flow().clone();
    let min = flow.time_range().min;
    let r: Vec<f64> = t
        .iter()
        .map(|&ti| config.smaller_time(flow.as_ref(), ti, step))
        .collect();
    if r.iter().all(|&ri| ri <= min) {
        return Ok(x0.clone());
    }
    let net = match config.target {
        ConsistencyTarget::Online => model.net().valid(),
        ConsistencyTarget::Ema => ema.clone(),
    };
    let inner = model.with_net(net);
    let x0_inner = x0.clone().inner();
    let x_r = flow.interpolate(x0_inner.clone(), noise.clone().inner(), &r)?;
    let estimate = inner.estimate(x_r, &r, anchor.clone().inner())?;
    // Where r reached t_min the target is the data itself (the estimate's boundary value).
    let at_min: Vec<f64> = r
        .iter()
        .map(|&ri| if ri <= min { 1.0 } else { 0.0 })
        .collect();
    let keep = column(at_min.iter().map(|m| 1.0 - m).collect(), &estimate);
    let data = column(at_min, &estimate);
    Ok(Tensor::from_inner(estimate * keep + x0_inner * data))
}
