//! The flow-map objective: a network with a target-time input learns the whole family of jumps
//! `t → r` along the probability-flow ODE (`r = t` is the denoiser, `r = t_min` the one-step
//! generator), by the identity that makes the average velocity of MeanFlow (Geng et al. 2025)
//! trainable without solving the ODE.
//!
//! Write the jump from `t` to `r` as `X(x_t, t, r) = c·x_t + k·g(x_t, t, r)` with
//! `c = σ(r)/σ(t)`, `k = α(r) − c·α(t)` ([`IntegrationFlow::flow_map_coefficients`]) and `g` the
//! network's data-space estimate. The ODE's solution does not depend on where on its path one
//! starts, so `dX/dt = 0` along the path (r fixed). MeanFlow's target is one Newton-like step
//! towards that: `X_target = X − (t − r)·dX/dt`, i.e.
//!
//! ```text
//! g_target = sg[ g − (t − r)/k · dX/dt ]
//! ```
//!
//! which is exactly the data `x_0` at `r = t` (the denoiser's regression, the limit of the
//! formula) and the continuous-time consistency target `g − t·dg/dt` on rectified flow at
//! `r = 0`. burn 0.21 has no forward-mode autodiff, so the total derivative `dX/dt` is a finite
//! difference: `X` at `s = t + h` (`t − h` where that would pass `t_max`) on the same path
//! minus `X` at `t`, over `h`, with `h` a small fraction of `t − t_min`. One more network call without gradients pays for it (two with the
//! EMA's velocity). The path through `x_t` is either the training path itself
//! ([`FlowMapVelocity::Path`], MeanFlow's conditional velocity) or the EMA denoiser's own ODE
//! ([`FlowMapVelocity::Ema`]: lower variance, the network distils itself).

use crate::error::{invalid_config, require_finite, Result};
use crate::flow::tensor::column;
use crate::flow::{ProbabilityFlow, ProbabilityFlowExt};
use crate::model::IntegrationFlow;
use crate::nn::IntegrationNet;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// The velocity along which the finite difference follows the path from `x_t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowMapVelocity {
    /// The training path `α(t)·x_0 + σ(t)·ε` itself (MeanFlow's conditional velocity): no extra
    /// network call, unbiased though noisy, and the better of the two on 2-D data.
    #[default]
    Path,
    /// The EMA network's own denoiser: the ODE the flow map should solve (self-distillation;
    /// one more call; its errors compound: 2-3× the one-step SW2 of `Path` on moons).
    Ema,
}

/// The flow-map objective's settings (module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowMapConfig {
    /// The share of examples trained at `r = t`: the denoiser's regression on the data, which
    /// keeps the velocity the other jumps are built from.
    pub denoise_share: f64,
    /// The share trained at `r = t_min`, the jump one-step generation makes; the rest draw `r`
    /// uniformly in `[t_min, t]`.
    pub data_share: f64,
    /// The path the finite difference follows.
    pub velocity: FlowMapVelocity,
    /// The finite difference's step, as a fraction of `t − t_min` (small: its error is of that
    /// order; not too small: f32 rounding grows as its inverse).
    pub fd_step: f64,
    /// Tangent normalisation (sCM, Lu & Song 2024): the pull `g − g_target` of each example is
    /// divided by `rms + c` with this `c` (0, the default, turns it off). It tames a network
    /// whose estimate varies fast in `t`, but on MNIST it cost 2.7× the one-step FD (c = 0.1:
    /// 534 against 200): a smooth time embedding is the better cure.
    pub normalize: f64,
}

impl Default for FlowMapConfig {
    fn default() -> Self {
        FlowMapConfig {
            denoise_share: 0.5,
            data_share: 0.25,
            velocity: FlowMapVelocity::Path,
            fd_step: 5e-3,
            normalize: 0.0,
        }
    }
}

impl FlowMapConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "FlowMapConfig";
        for (field, value) in [
            ("denoise_share", self.denoise_share),
            ("data_share", self.data_share),
            ("fd_step", self.fd_step),
            ("normalize", self.normalize),
        ] {
            require_finite(NAME, field, value)?;
        }
        if self.normalize < 0.0 {
            return Err(invalid_config(NAME, "normalize", "must be ≥ 0"));
        }
        for (field, value) in [
            ("denoise_share", self.denoise_share),
            ("data_share", self.data_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid_config(NAME, field, "must be in [0, 1]"));
            }
        }
        if self.denoise_share + self.data_share > 1.0 {
            return Err(invalid_config(
                NAME,
                "data_share",
                "denoise_share + data_share must not exceed 1",
            ));
        }
        if !(self.fd_step > 0.0 && self.fd_step <= 0.1) {
            return Err(invalid_config(NAME, "fd_step", "must be in (0, 0.1]"));
        }
        Ok(())
    }

    /// A target time per example of times `t`: `t` itself, `t_min`, or uniform in between, in
    /// the configured shares. A gap too small for the finite difference to resolve becomes 0.
    ///
    /// ```
    /// use integration_flow::flow::RectifiedFlowConfig;
    /// use integration_flow::train::FlowMapConfig;
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let flow = RectifiedFlowConfig::default().init()?;
    /// let config = FlowMapConfig { denoise_share: 0.0, data_share: 1.0, ..Default::default() };
    /// let r = config.target_times(&flow, &[0.5, 1.0], &mut StdRng::seed_from_u64(0));
    /// assert_eq!(r, vec![0.0, 0.0]); // every jump to the data end
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn target_times(
        &self,
        flow: &dyn ProbabilityFlow,
        t: &[f64],
        rng: &mut dyn Rng,
    ) -> Vec<f64> {
        let min = flow.time_range().min;
        t.iter()
            .map(|&ti| {
                let u: f64 = rng.random();
                let r = if u < self.denoise_share {
                    ti
                } else if u < self.denoise_share + self.data_share {
                    min
                } else {
                    min + (ti - min) * rng.random::<f64>()
                };
                // The difference's step must fit inside the gap.
                match ti - r < 2.0 * self.step(ti, min) {
                    true => ti,
                    false => r,
                }
            })
            .collect()
    }

    /// The finite difference's step at time `t`.
    fn step(&self, t: f64, min: f64) -> f64 {
        self.fd_step * (t - min)
    }
}

/// The target of the estimates `estimate = g(x_t, t, r)` of the step (module docs): `x0` where
/// `r = t`, `g − (t − r)/k·dX/dt` elsewhere, without gradients. `x_t` is the step's input
/// `α(t)·x0 + σ(t)·noise`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn target<B, N>(
    config: &FlowMapConfig,
    model: &IntegrationFlow<B, N>,
    ema: &N::InnerModule,
    (x0, noise, x_t): (&Tensor<B, 2>, &Tensor<B, 2>, &Tensor<B, 2>),
    anchor: &Tensor<B, 2>,
    (t, r): (&[f64], &[f64]),
    estimate: &Tensor<B, 2>,
) -> Result<Tensor<B, 2>>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    if r.iter().zip(t).all(|(ri, ti)| ri >= ti) {
        return Ok(x0.clone());
    }
    let flow = model.flow().clone();
    let range = flow.time_range();
    let inner = model.with_net(model.net().valid());
    let (x0, noise, anchor) = (
        x0.clone().inner(),
        noise.clone().inner(),
        anchor.clone().inner(),
    );
    let (x_t, g) = (x_t.clone().inner(), estimate.clone().inner());
    // Per example: the later time s = t ± h, and the coefficients of X at t and at s.
    let n = t.len();
    let mut s = Vec::with_capacity(n);
    let mut columns: [Vec<f64>; 6] = Default::default();
    for (&ti, &ri) in t.iter().zip(r) {
        let denoised = ri >= ti;
        let h = match denoised {
            true => 0.0,
            false => {
                let h = config.step(ti, range.min);
                // Backwards where t + h passes t_max (target_times keeps 2h inside the gap).
                if ti + h > range.max {
                    -h
                } else {
                    h
                }
            }
        };
        let si = ti + h;
        s.push(if denoised { ti } else { si });
        let [c_t, k_t] = inner.flow_map_coefficients(ti, ri);
        let [c_s, k_s] = inner.flow_map_coefficients(si, ri);
        // g_target = g − (t − r)/(k_t·h)·(c_s·x_s + k_s·g_s − c_t·x_t − k_t·g).
        let scale = match denoised {
            true => 0.0,
            false => (ti - ri) / (k_t * h),
        };
        let values = [
            scale * c_s,
            scale * k_s,
            scale * c_t,
            1.0 + scale * k_t,
            if denoised { 0.0 } else { 1.0 },
            if denoised { 1.0 } else { 0.0 },
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let x_s = match config.velocity {
        FlowMapVelocity::Path => flow.interpolate(x0.clone(), noise, &s)?,
        FlowMapVelocity::Ema => {
            let teacher = model.with_net(ema.clone());
            let d = teacher.denoise(x_t.clone(), t, anchor.clone())?;
            // The EMA denoiser's ODE step from t to s (exact where its estimate is constant).
            let [mut c, mut k] = [Vec::with_capacity(n), Vec::with_capacity(n)];
            for (&ti, &si) in t.iter().zip(&s) {
                let [ci, ki] = inner.flow_map_coefficients(ti, si);
                c.push(ci);
                k.push(ki);
            }
            x_t.clone() * column(c, &x_t) + d * column(k, &x_t)
        }
    };
    let g_s = inner.estimate_to(x_s.clone(), &s, r, anchor)?;
    let [a_xs, a_gs, a_xt, a_g, keep, data] = columns;
    // The pull g − g_target = −(a_g − 1)·g − a_xt·x_t + a_xs·x_s + a_gs·g_s.
    let a_g: Vec<f64> = a_g.iter().map(|a| a - 1.0).collect();
    let mut pull = x_s.clone() * column(a_xs, &x_s) + g_s.clone() * column(a_gs, &g_s)
        - g.clone() * column(a_g, &g)
        - x_t.clone() * column(a_xt, &x_t);
    if config.normalize > 0.0 {
        let rms = pull.clone().powi_scalar(2).mean_dim(1).sqrt();
        pull = pull / (rms + config.normalize);
    }
    let target = (g - pull) * column(keep, &x0) + x0.clone() * column(data, &x0);
    Ok(Tensor::from_inner(target))
}
