//! Preconditioning: how the network's raw output `F` becomes the data estimate
//!
//! ```text
//! x̂_0 = c_skip(t)·x_t + c_out(t)·F(c_in(t)·x_t, c_noise(t), anchor)
//! ```

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which preconditioning form a model uses (docs/math.md, "Preconditioning").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parameterization {
    /// The papers' form, per family: VP `x̂_0 = x_t − F`; VE and PFGM++
    /// `x̂_0 = κ·x_t + (1−κ)·F` with `κ = σ_min/σ(t)`; rectified flow `x̂_0 = x_t − t·F`.
    #[default]
    Integral,
    /// EDM's form in terms of `s = α` and `σ̃ = σ/α`; singular where α = 0 or σ = 0.
    Edm,
}

/// The four preconditioning coefficients at one time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preconditioning {
    /// Weight of `x_t` in the estimate.
    pub c_skip: f64,
    /// Weight of the network output in the estimate.
    pub c_out: f64,
    /// Scale of `x_t` at the network input.
    pub c_in: f64,
    /// The noise-level input of the network.
    pub c_noise: f64,
}

impl Preconditioning {
    /// `Ok(self)` if every coefficient is finite.
    pub(crate) fn require_finite(self) -> Result<Self> {
        for value in [self.c_skip, self.c_out, self.c_in, self.c_noise] {
            if !value.is_finite() {
                return Err(Error::NonFinite {
                    context: "preconditioning coefficient",
                    value,
                });
            }
        }
        Ok(self)
    }
}

/// `1/sqrt(α²σ_d² + σ²)`: the input scale that gives `x_t` unit variance when the data has
/// standard deviation `σ_d` and the noise unit variance.
pub(crate) fn unit_input_scale(alpha: f64, sigma: f64, sigma_data: f64) -> f64 {
    1.0 / (alpha * alpha * sigma_data * sigma_data + sigma * sigma).sqrt()
}

/// EDM's preconditioning for `x_t = α·(x_0 + σ̃·n)`, written in α and σ so that it stays
/// finite as α → 0 (where only `c_noise = ¼·ln σ̃` diverges):
///
/// ```text
/// c_skip = σ_d²·α / (σ² + α²σ_d²)      (= σ_d²/(σ̃² + σ_d²)/s)
/// c_out  = σ·σ_d / sqrt(σ² + α²σ_d²)    (= σ̃·σ_d/sqrt(σ̃² + σ_d²))
/// c_in   = 1 / sqrt(σ² + α²σ_d²)        (= 1/(s·sqrt(σ̃² + σ_d²)))
/// ```
///
/// Returns `None` where α ≤ 0 or σ ≤ 0 (c_noise is infinite there) or an input is not finite.
///
/// ```
/// use integration_flow::flow::edm_preconditioning;
/// let p = edm_preconditioning(1.0, 1e-6, 0.5).unwrap();
/// assert!((p.c_skip - 1.0).abs() < 1e-9 && p.c_out < 1e-5);
/// assert!(edm_preconditioning(0.0, 1.0, 0.5).is_none());
/// ```
pub fn edm_preconditioning(alpha: f64, sigma: f64, sigma_data: f64) -> Option<Preconditioning> {
    let finite = alpha.is_finite() && sigma.is_finite() && sigma_data.is_finite();
    if !finite || alpha <= 0.0 || sigma <= 0.0 || sigma_data <= 0.0 {
        return None;
    }
    let sd2 = sigma_data * sigma_data;
    let total = sigma * sigma + alpha * alpha * sd2;
    Some(Preconditioning {
        c_skip: sd2 * alpha / total,
        c_out: sigma * sigma_data / total.sqrt(),
        c_in: 1.0 / total.sqrt(),
        c_noise: 0.25 * (sigma / alpha).ln(),
    })
}
