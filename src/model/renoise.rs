//! The re-noising sampler, the refining multi-step sampler that
//! [`IntegrationFlow::generate`] uses: estimate, perturb the estimate back to a smaller noise
//! level with fresh noise, estimate again. It lives with the model (`generate` needs it);
//! [`sample::renoise`](crate::sample::renoise) is the same with its NFE count.

use super::IntegrationFlow;
use crate::error::{Error, Result};
use crate::flow::ProbabilityFlowExt;
use crate::nn::IntegrationNet;
use burn::tensor::{backend::Backend, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which anchor the re-noising sampler feeds after the first estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenoiseAnchor {
    /// Keep the first anchor (a latent code, as trained with `ot` anchors).
    #[default]
    Fixed,
    /// Feed the previous estimate.
    Previous,
}

/// Where the re-noising sampler puts its intermediate steps, as noise-to-signal ratios σ/α
/// (EDM's σ), which mean the same on every flow: `steps − 1` ratios spaced geometrically from
/// `first` down to `last` (just `first` for 2 steps).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenoiseSchedule {
    /// The ratio of the first re-noising (the largest).
    pub first: f64,
    /// The ratio of the last re-noising (the smallest).
    pub last: f64,
}

impl Default for RenoiseSchedule {
    /// `first` 0.5, `last` 0.05: chosen by the re-noising sweep in docs/evidence.md.
    fn default() -> Self {
        RenoiseSchedule {
            first: 0.5,
            last: 0.05,
        }
    }
}

impl RenoiseSchedule {
    /// The `steps − 1` re-noising times of a `steps`-step sampler on `flow`.
    pub fn times(&self, flow: &dyn crate::flow::ProbabilityFlow, steps: usize) -> Result<Vec<f64>> {
        if !(self.first.is_finite() && self.last > 0.0 && self.last <= self.first) {
            return Err(Error::InvalidArgument {
                name: "schedule",
                reason: format!(
                    "need 0 < last ≤ first < ∞, got first {} and last {}",
                    self.first, self.last
                ),
            });
        }
        if steps == 0 {
            return Err(Error::InvalidArgument {
                name: "steps",
                reason: "a sampler needs at least one step".into(),
            });
        }
        let k = steps - 1;
        let mut times: Vec<f64> = (0..k)
            .map(|i| {
                let frac = if k > 1 {
                    i as f64 / (k - 1) as f64
                } else {
                    0.0
                };
                let ratio = self.first * (self.last / self.first).powf(frac);
                flow.time_at_noise_to_signal(ratio)
            })
            .collect();
        // Ratios beyond the flow's range clamp to its ends; keep the times strictly
        // decreasing and below t_max, as `renoise` requires.
        let range = flow.time_range();
        let mut last = range.max;
        for t in &mut times {
            if *t >= last {
                *t = last - 1e-6 * range.len();
            }
            last = *t;
        }
        Ok(times)
    }
}

impl<B: Backend, N: IntegrationNet<B>> IntegrationFlow<B, N> {
    /// Consistency-style multi-step: estimate from the prior, then for each `t` in `times`
    /// (decreasing, inside the range) perturb the estimate to `t` with fresh noise and estimate
    /// again. NFE = 1 + `times.len()`.
    pub fn renoise(
        &self,
        rng: &mut dyn Rng,
        n: usize,
        times: &[f64],
        anchor: RenoiseAnchor,
    ) -> Result<Tensor<B, 2>> {
        let flow = self.flow().clone();
        let t_max = flow.time_range().max;
        let mut last = t_max;
        for &t in times {
            if !(t < last && flow.time_range().contains(t)) {
                return Err(Error::InvalidArgument {
                    name: "times",
                    reason: format!(
                        "re-noising times must decrease inside the range and below t_max; {t} does not"
                    ),
                });
            }
            last = t;
        }
        let x_t = self.sample_prior(rng, n)?;
        let first_anchor = self.sample_anchor(rng, n)?;
        let mut estimate = self.estimate(x_t, &[t_max], first_anchor.clone())?;
        for &t in times {
            let noise = flow.noise::<B, 2>(rng, [n, self.dim()], &estimate.device())?;
            let x_t = flow.interpolate(estimate.clone(), noise, &[t])?;
            let a = match anchor {
                RenoiseAnchor::Fixed => first_anchor.clone(),
                RenoiseAnchor::Previous => estimate,
            };
            estimate = self.estimate(x_t, &[t], a)?;
        }
        Ok(estimate)
    }
}
