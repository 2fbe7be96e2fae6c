//! Probability-flow ODE families behind one trait, [`ProbabilityFlow`].
//!
//! Every family in this crate, and any family a user adds, has the form
//!
//! ```text
//! x_t = α(t)·x_0 + σ(t)·n,     n drawn from the flow's noise law (N(0, I) unless overridden)
//! ```
//!
//! with time running from the data (`t_min`, α ≈ 1, σ ≈ 0) to the prior (`t_max`). For any
//! estimate `x̂_0` of the data the probability-flow ODE velocity is
//!
//! ```text
//! n̂ = (x_t − α·x̂_0) / σ,      dx/dt = α'(t)·x̂_0 + σ'(t)·n̂
//! ```
//!
//! so a family implements only `α`, `σ` and their derivatives; the interpolation, the velocity,
//! the prior, the training-time sampler and both preconditioning forms are provided. PFGM++
//! overrides the noise law (a radial, heavy-tailed one) and nothing else.
//!
//! Scalar math runs on the host in `f64`; the tensor operations on any burn backend are in
//! [`ProbabilityFlowExt`]. A new family is checked with [`check`].

mod check;
mod pfgmpp;
mod precondition;
mod rectified;
pub(crate) mod tensor;
mod time;
mod ve;
mod vp;

pub use check::{check, CheckConfig, CheckItem, CheckReport, F32_TOLERANCE, F64_TOLERANCE};
pub use pfgmpp::{PfgmPP, PfgmPPConfig};
pub use precondition::{edm_preconditioning, Parameterization, Preconditioning};
pub use rectified::{RectifiedFlow, RectifiedFlowConfig};
pub use tensor::ProbabilityFlowExt;
pub use time::{TimeDistribution, TimeRange};
pub use ve::{Ve, VeConfig};
pub use vp::{Vp, VpConfig};

use crate::error::{Error, Result};
use rand::{Rng, RngExt};
use rand_distr::{Distribution, StandardNormal};

/// Coefficients of the probability-flow ODE velocity, linear in `x_t` and `x̂_0`:
/// `dx/dt = x_t·coefficient + x0·coefficient`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VelocityCoefficients {
    /// Multiplies `x_t`: `σ'/σ`.
    pub x_t: f64,
    /// Multiplies `x̂_0`: `α' − σ'·α/σ`.
    pub x0: f64,
}

/// An ODE family of the Integration Flow method: interpolation, noise schedule, prior and
/// preconditioning.
///
/// Implement the four required methods (`α`, `σ` and their time derivatives) and, where the
/// family differs from the defaults, [`time_range`](Self::time_range),
/// [`sample_noise`](Self::sample_noise) with [`noise_variance`](Self::noise_variance), or
/// [`integral_preconditioning`](Self::integral_preconditioning). Then run [`check`] on it.
///
/// The trait is object safe (`Box<dyn ProbabilityFlow>` works); random draws take the caller's
/// RNG as `&mut dyn Rng`, so a seed gives the same numbers on every backend.
///
/// ```
/// use integration_flow::flow::{ProbabilityFlow, RectifiedFlowConfig};
///
/// let rf = RectifiedFlowConfig::default().init()?;
/// assert_eq!(rf.alpha(0.25), 0.75);
/// assert_eq!(rf.sigma(0.25), 0.25);
/// let v = rf.velocity_coefficients(0.5)?; // dx/dt = 2·x_t − 2·x̂_0 at t = 0.5
/// assert_eq!((v.x_t, v.x0), (2.0, -2.0));
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub trait ProbabilityFlow: Send + Sync + std::fmt::Debug {
    /// A short name for reports and logs, e.g. `"vp"`.
    fn name(&self) -> &str;

    /// Signal scale α(t).
    fn alpha(&self, t: f64) -> f64;

    /// Noise scale σ(t).
    fn sigma(&self, t: f64) -> f64;

    /// dα/dt.
    fn alpha_dot(&self, t: f64) -> f64;

    /// dσ/dt.
    fn sigma_dot(&self, t: f64) -> f64;

    /// The times the flow is defined on: data at `min`, prior at `max`. Default `[0, 1]`.
    fn time_range(&self) -> TimeRange {
        TimeRange::UNIT
    }

    /// Per-coordinate variance of the noise law that [`sample_noise`](Self::sample_noise)
    /// draws from. Default 1 (standard normal).
    fn noise_variance(&self) -> f64 {
        1.0
    }

    /// Draws `n` noise vectors of `dim` coordinates each (row-major, `n·dim` values) from the
    /// flow's noise law, on the host. Default: standard normal.
    fn sample_noise(&self, rng: &mut dyn Rng, n: usize, dim: usize) -> Result<Vec<f32>> {
        let len = sample_len(n, dim)?;
        Ok((0..len).map(|_| StandardNormal.sample(rng)).collect())
    }

    /// Draws `n` prior samples of `dim` coordinates: `σ(t_max)·noise`. The signal part
    /// `α(t_max)·x_0` is dropped; [`check`] measures how small it is.
    fn sample_prior(&self, rng: &mut dyn Rng, n: usize, dim: usize) -> Result<Vec<f32>> {
        let scale = self.sigma(self.time_range().max) as f32;
        let mut prior = self.sample_noise(rng, n, dim)?;
        prior.iter_mut().for_each(|v| *v *= scale);
        Ok(prior)
    }

    /// Per-coordinate variance of the prior: `σ(t_max)²·noise_variance`.
    fn prior_variance(&self) -> f64 {
        let s = self.sigma(self.time_range().max);
        s * s * self.noise_variance()
    }

    /// The noise-to-signal ratio σ̃(t) = σ(t)/α(t) (EDM's σ); infinite where α = 0.
    fn noise_to_signal(&self, t: f64) -> f64 {
        let alpha = self.alpha(t);
        if alpha <= 0.0 {
            f64::INFINITY
        } else {
            self.sigma(t) / alpha
        }
    }

    /// The time at which [`noise_to_signal`](Self::noise_to_signal) equals `ratio`, clamped to
    /// the time range. The default bisects, assuming the ratio increases with t (which
    /// [`check`] verifies); families override it with the closed form.
    fn time_at_noise_to_signal(&self, ratio: f64) -> f64 {
        let range = self.time_range();
        let (mut lo, mut hi) = (range.min, range.max);
        if ratio.is_nan() || ratio <= self.noise_to_signal(lo) {
            return lo;
        }
        if ratio >= self.noise_to_signal(hi) {
            return hi;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if self.noise_to_signal(mid) < ratio {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }

    /// Draws `n` training times from `distribution`, inside the time range.
    fn sample_time(
        &self,
        distribution: &TimeDistribution,
        rng: &mut dyn Rng,
        n: usize,
    ) -> Result<Vec<f64>> {
        distribution.validate()?;
        let range = self.time_range();
        let draw = |rng: &mut dyn Rng| -> f64 {
            match *distribution {
                TimeDistribution::Uniform => range.min + range.len() * rng.random::<f64>(),
                TimeDistribution::LogNormal { p_mean, p_std } => {
                    let z: f64 = StandardNormal.sample(rng);
                    self.time_at_noise_to_signal((p_mean + p_std * z).exp())
                }
                TimeDistribution::LogitNormal { mean, std } => {
                    let z: f64 = StandardNormal.sample(rng);
                    let u = 1.0 / (1.0 + (-(mean + std * z)).exp());
                    range.min + range.len() * u
                }
            }
        };
        Ok((0..n).map(|_| range.clamp(draw(rng))).collect())
    }

    /// The integral-form preconditioning of the papers, `x̂_0 = c_skip·x_t + c_out·F`.
    ///
    /// The default, for families that do not override it, removes the displacement from `x_t`
    /// to `x_0` at its expected scale: `c_skip = 1`, `c_out = −sqrt((1−α)²σ_d² + σ²)`, with
    /// `c_in = 1/sqrt(α²σ_d² + σ²)` (unit-variance input) and `c_noise = t`.
    fn integral_preconditioning(&self, t: f64, sigma_data: f64) -> Preconditioning {
        let (alpha, sigma) = (self.alpha(t), self.sigma(t));
        let sd2 = sigma_data * sigma_data;
        Preconditioning {
            c_skip: 1.0,
            c_out: -((1.0 - alpha).powi(2) * sd2 + sigma * sigma).sqrt(),
            c_in: precondition::unit_input_scale(alpha, sigma, sigma_data),
            c_noise: t,
        }
    }

    /// Preconditioning coefficients at `t` in the chosen form; `sigma_data` is the data's
    /// standard deviation (0.5 for images in [-1, 1]). The EDM form is singular where α = 0 or
    /// σ = 0 and returns [`Error::Singular`] there.
    fn preconditioning(
        &self,
        t: f64,
        form: Parameterization,
        sigma_data: f64,
    ) -> Result<Preconditioning> {
        self.time_range().require(t)?;
        if !(sigma_data.is_finite() && sigma_data > 0.0) {
            return Err(Error::InvalidArgument {
                name: "sigma_data",
                reason: format!("must be finite and positive, got {sigma_data}"),
            });
        }
        let p = match form {
            Parameterization::Integral => self.integral_preconditioning(t, sigma_data),
            Parameterization::Edm => edm_preconditioning(self.alpha(t), self.sigma(t), sigma_data)
                .ok_or(Error::Singular {
                    what: "EDM preconditioning",
                    t,
                    reason:
                        "it needs α > 0 and σ > 0; use the integral form or a narrower time range",
                })?,
        };
        p.require_finite()
    }

    /// Coefficients of the probability-flow ODE velocity at `t`; [`Error::Singular`] where
    /// σ = 0, where the velocity is not determined by `x_t` and `x̂_0`.
    fn velocity_coefficients(&self, t: f64) -> Result<VelocityCoefficients> {
        self.time_range().require(t)?;
        let (alpha, sigma) = (self.alpha(t), self.sigma(t));
        if sigma <= 0.0 || !sigma.is_finite() {
            return Err(Error::Singular {
                what: "the ODE velocity",
                t,
                reason: "σ(t) = 0, so the noise cannot be recovered from x_t",
            });
        }
        let sigma_dot = self.sigma_dot(t);
        let c = VelocityCoefficients {
            x_t: sigma_dot / sigma,
            x0: self.alpha_dot(t) - sigma_dot * alpha / sigma,
        };
        for value in [c.x_t, c.x0] {
            if !value.is_finite() {
                return Err(Error::NonFinite {
                    context: "ODE velocity coefficient",
                    value,
                });
            }
        }
        Ok(c)
    }
}

/// `n·dim`, or an error if either is zero or the product overflows.
pub(crate) fn sample_len(n: usize, dim: usize) -> Result<usize> {
    if n == 0 || dim == 0 {
        return Err(Error::InvalidArgument {
            name: if n == 0 { "n" } else { "dim" },
            reason: "must be at least 1".into(),
        });
    }
    n.checked_mul(dim).ok_or(Error::InvalidArgument {
        name: "n",
        reason: format!("{n} samples of {dim} values overflow usize"),
    })
}
