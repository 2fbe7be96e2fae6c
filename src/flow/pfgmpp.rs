//! PFGM++: Poisson flow in N + D dimensions, with augmented dimension D.
//!
//! With σ(t) as in VE and `r = σ·√D`, the perturbation kernel is radial:
//!
//! ```text
//! B ~ Beta(N/2, D/2),   R = r·sqrt(B/(1 − B)),   u uniform on the sphere,   x_t = x_0 + R·u
//! ```
//!
//! Writing `B = G₁/(G₁ + G₂)` with independent `G₁ ~ Gamma(N/2)`, `G₂ ~ Gamma(D/2)`, and
//! `G₁ = |g|²/2` for `g ~ N(0, I_N)` (which also gives `u = g/|g|`), the draw is
//!
//! ```text
//! R·u = σ·g·sqrt(D / (2·G₂)) = σ·n,   n = g / sqrt(χ²_D / D)
//! ```
//!
//! a multivariate Student-t with D degrees of freedom: the same law as the Beta form, drawn with
//! one Gamma variate per example. So the flow is `x_t = x_0 + σ(t)·n` with a heavy-tailed noise
//! law of per-coordinate variance `D/(D − 2)`, `E[R²] = r²·N/(D − 2)`, and as D → ∞ it tends to
//! VE's `N(0, σ²I)`. The ODE `dx/dσ = (x − x̂_0)/σ` is EDM's, so only the noise law differs.

use super::ve::GeometricSigma;
use super::{sample_len, Preconditioning, ProbabilityFlow};
use crate::error::{invalid_config, Result};
use rand::Rng;
use rand_distr::{Distribution, Gamma, StandardNormal};
use serde::{Deserialize, Serialize};

/// Configuration of [`PfgmPP`]; defaults σ_min 0.002, σ_max 80, D = 128.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PfgmPPConfig {
    /// Noise scale at t = 0; must be > 0.
    pub sigma_min: f64,
    /// Noise scale at t = 1; must be > σ_min.
    pub sigma_max: f64,
    /// Augmented dimension D; must be > 2 (for D ≤ 2 the prior has infinite variance).
    pub d: u64,
}

impl Default for PfgmPPConfig {
    fn default() -> Self {
        PfgmPPConfig {
            sigma_min: 0.002,
            sigma_max: 80.0,
            d: 128,
        }
    }
}

impl PfgmPPConfig {
    /// Validates the configuration and builds the flow.
    ///
    /// ```
    /// use integration_flow::flow::PfgmPPConfig;
    /// let err = PfgmPPConfig { d: 0, ..Default::default() }.init().unwrap_err();
    /// assert!(err.to_string().contains("`d`"));
    /// ```
    pub fn init(&self) -> Result<PfgmPP> {
        const NAME: &str = "PfgmPPConfig";
        let schedule = GeometricSigma::new(NAME, self.sigma_min, self.sigma_max)?;
        if self.d <= 2 {
            return Err(invalid_config(
                NAME,
                "d",
                format!(
                    "must be > 2 (the prior has infinite variance for D ≤ 2), got {}",
                    self.d
                ),
            ));
        }
        let half_d = self.d as f64 / 2.0;
        let gamma = Gamma::new(half_d, 1.0)
            .map_err(|e| invalid_config(NAME, "d", format!("gives no Gamma(D/2) law: {e}")))?;
        Ok(PfgmPP {
            config: self.clone(),
            schedule,
            gamma,
        })
    }
}

/// PFGM++; build it with [`PfgmPPConfig::init`].
#[derive(Clone, Debug)]
pub struct PfgmPP {
    config: PfgmPPConfig,
    schedule: GeometricSigma,
    gamma: Gamma<f64>,
}

impl PfgmPP {
    /// The configuration this flow was built from.
    pub fn config(&self) -> &PfgmPPConfig {
        &self.config
    }

    /// The radius scale `r(t) = σ(t)·√D` of the perturbation kernel.
    pub fn radius(&self, t: f64) -> f64 {
        self.schedule.sigma(t) * (self.config.d as f64).sqrt()
    }
}

impl ProbabilityFlow for PfgmPP {
    fn name(&self) -> &str {
        "pfgmpp"
    }

    fn flow_config(&self) -> Option<super::FlowConfig> {
        Some(super::FlowConfig::Pfgmpp(self.config.clone()))
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

    fn noise_variance(&self) -> f64 {
        let d = self.config.d as f64;
        d / (d - 2.0)
    }

    /// Radial noise `n = g·sqrt(D/(2·G₂))`, `g ~ N(0, I_dim)`, `G₂ ~ Gamma(D/2)`, one `G₂` per
    /// example (see the module docs).
    fn sample_noise(&self, rng: &mut dyn Rng, n: usize, dim: usize) -> Result<Vec<f32>> {
        let mut noise = Vec::with_capacity(sample_len(n, dim)?);
        let d = self.config.d as f64;
        for _ in 0..n {
            let scale = (d / (2.0 * self.gamma.sample(rng))).sqrt();
            noise.extend((0..dim).map(|_| {
                let g: f64 = StandardNormal.sample(rng);
                (g * scale) as f32
            }));
        }
        Ok(noise)
    }

    fn time_at_noise_to_signal(&self, ratio: f64) -> f64 {
        self.schedule.time_at(ratio)
    }

    fn integral_preconditioning(&self, t: f64, sigma_data: f64) -> Preconditioning {
        self.schedule.integral_preconditioning(t, sigma_data)
    }
}
