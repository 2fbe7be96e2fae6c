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

use crate::error::{invalid_config, require_finite, Error, Result};
use crate::flow::tensor::{column, row_index};
use crate::flow::{ProbabilityFlow, ProbabilityFlowExt};
use crate::model::{Classes, IntegrationFlow};
use crate::nn::IntegrationNet;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Tensor};
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

/// The target of the examples trained at `r = t_min`, the jump one-step generation makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OneStepTarget {
    /// MeanFlow's identity with the finite difference, as every other gap.
    #[default]
    Derivative,
    /// The network's own two jumps through the midpoint `m = (t + r)/2`, without gradients:
    /// `X(X(x_t, t, m), m, r)` (the self-consistency of shortcut models, Frans et al. 2024).
    /// With [`FlowMapVelocity::Path`] the conditional velocity's noise enters the derivative
    /// target scaled by the gap, so it is largest for the longest jump; the two half-jumps
    /// carry no such noise. Two more network calls on those examples (the finite difference's
    /// call is still made for the whole batch), and `normalize` does not apply to them. On
    /// MNIST it was 2.4× worse at one step than the derivative (docs/evidence.md).
    TwoJumps,
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
    /// The target of the examples at `r = t_min`.
    pub one_step_target: OneStepTarget,
    /// Whether the coupling pairs each example with the latent its ODE path starts from (path
    /// noise = the paired latent, [`AnchorRole::Noise`](crate::coupling::AnchorRole::Noise), as
    /// generated pairs do): then the examples the trainer puts at `t_max` jump to `t_min` with
    /// the example itself as the target (the jump is known, up to the prior's σ at `t_min`)
    /// instead of the derivative. A coupling that gives the network its anchor as an input is
    /// an error with this set. `DistillMethod::FlowMapPairs` sets it.
    pub paired_jumps: bool,
    /// Classifier-free guidance learnt into the jumps of a class-conditional network (1, the
    /// default: none). The finite difference then follows the guided velocity
    /// `w·v_c + (1 − w)·v_∅` on the rows that have a class: with the `path` velocity the
    /// training path's step mixed with the EMA's "no class" ODE step (MeanFlow's
    /// one-evaluation guidance), with the `ema` velocity the EMA's guided ODE step. One call of
    /// the trained network then gives guided samples. Needs the "no class" token.
    pub guidance: f64,
}

impl Default for FlowMapConfig {
    fn default() -> Self {
        FlowMapConfig {
            denoise_share: 0.5,
            data_share: 0.25,
            velocity: FlowMapVelocity::Path,
            fd_step: 5e-3,
            normalize: 0.0,
            one_step_target: OneStepTarget::Derivative,
            paired_jumps: false,
            guidance: 1.0,
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
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            return Err(invalid_config(
                NAME,
                "guidance",
                format!("must be finite and non-negative, got {}", self.guidance),
            ));
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
/// `r = t` or `exact` (a row whose jump is known: the path's noise is the example's paired
/// latent and the jump goes from it to the data end, [`FlowMapConfig::paired_jumps`]), the
/// network's own two jumps on the other `r = t_min` rows with [`OneStepTarget::TwoJumps`],
/// `g − (t − r)/k·dX/dt` elsewhere, without gradients. `x_t` is the step's input
/// `α(t)·x0 + σ(t)·noise`; `exact` is empty or one flag per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn target<B, N>(
    config: &FlowMapConfig,
    model: &IntegrationFlow<B, N>,
    ema: &N::InnerModule,
    (x0, noise, x_t): (&Tensor<B, 2>, &Tensor<B, 2>, &Tensor<B, 2>),
    anchor: &Tensor<B, 2>,
    (t, r, exact): (&[f64], &[f64], &[bool]),
    estimate: &Tensor<B, 2>,
) -> Result<Tensor<B, 2>>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B>,
    N::InnerModule: IntegrationNet<B::InnerBackend>,
{
    if !exact.is_empty() && exact.len() != t.len() {
        return Err(Error::ShapeMismatch {
            context: "flow_map::target (exact rows)",
            expected: format!("none or {} flags", t.len()),
            found: format!("{} flags", exact.len()),
        });
    }
    let is_data = |i: usize| r[i] >= t[i] || exact.get(i).copied().unwrap_or(false);
    if (0..t.len()).all(is_data) {
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
    for (i, (&ti, &ri)) in t.iter().zip(r).enumerate() {
        let denoised = is_data(i);
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
    // Guidance applies where the network has classes and the scale is not 1.
    let guided = config.guidance != 1.0 && model.net().class_input().is_some();
    let x_s = match (config.velocity, guided) {
        (FlowMapVelocity::Path, false) => flow.interpolate(x0.clone(), noise, &s)?,
        (FlowMapVelocity::Path, true) => {
            let path = flow.interpolate(x0.clone(), noise, &s)?;
            // The EMA's "no class" ODE step from t to s, mixed in on the rows with a class.
            let free = model
                .with_net(ema.clone())
                .with_classes(Classes::Unconditional)?
                .denoise(x_t.clone(), t, anchor.clone())?;
            let free = jump_with(&inner, x_t.clone(), free, t, &s);
            let w: Vec<f64> = match model.classes().rows(n) {
                Some(rows) => rows
                    .iter()
                    .map(|row| match row {
                        Some(_) => config.guidance,
                        None => 1.0,
                    })
                    .collect(),
                None => vec![config.guidance; n],
            };
            let rest: Vec<f64> = w.iter().map(|w| 1.0 - w).collect();
            path.clone() * column(w, &path) + free.clone() * column(rest, &free)
        }
        (FlowMapVelocity::Ema, _) => {
            let teacher = model.with_net(ema.clone());
            let teacher = match guided {
                true => teacher.with_guidance(config.guidance)?,
                false => teacher,
            };
            let d = teacher.denoise(x_t.clone(), t, anchor.clone())?;
            // The EMA denoiser's ODE step from t to s (exact where its estimate is constant).
            jump_with(&inner, x_t.clone(), d, t, &s)
        }
    };
    let g_s = inner.estimate_to(x_s.clone(), &s, r, anchor.clone())?;
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
    let target = match config.one_step_target {
        OneStepTarget::Derivative => target,
        OneStepTarget::TwoJumps => {
            let rows: Vec<usize> = (0..n)
                .filter(|&i| r[i] <= range.min && !is_data(i))
                .collect();
            two_jump_targets(&inner, target, (&x_t, &anchor), (t, r), &rows)?
        }
    };
    Ok(Tensor::from_inner(target))
}

/// `target` with its `rows` replaced by the data-space estimates that reproduce the network's
/// own two jumps `t → m → r` through `m = (t + r)/2` ([`OneStepTarget::TwoJumps`]).
fn two_jump_targets<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    target: Tensor<B, 2>,
    (x_t, anchor): (&Tensor<B, 2>, &Tensor<B, 2>),
    (t, r): (&[f64], &[f64]),
    rows: &[usize],
) -> Result<Tensor<B, 2>> {
    if rows.is_empty() {
        return Ok(target);
    }
    let device = x_t.device();
    // A labelled batch's classes, for these rows only.
    let model = &model.for_rows(rows)?;
    let index = row_index::<B>(rows, &device);
    let (x, a) = (
        x_t.clone().select(0, index.clone()),
        anchor.clone().select(0, index.clone()),
    );
    let t_rows: Vec<f64> = rows.iter().map(|&i| t[i]).collect();
    let r_rows: Vec<f64> = rows.iter().map(|&i| r[i]).collect();
    let m_rows: Vec<f64> = t_rows
        .iter()
        .zip(&r_rows)
        .map(|(t, r)| 0.5 * (t + r))
        .collect();
    // One jump per example by the network: c·x + k·g(x, from, to).
    let jump = |x: Tensor<B, 2>, from: &[f64], to: &[f64]| -> Result<Tensor<B, 2>> {
        let g = model.estimate_to(x.clone(), from, to, a.clone())?;
        Ok(jump_with(model, x, g, from, to))
    };
    let x_m = jump(x.clone(), &t_rows, &m_rows)?;
    let x_r = jump(x_m, &m_rows, &r_rows)?;
    // X(x_t, t, r) = c·x_t + k·g, solved for g (k > 0 where r < t).
    let [c, k] = jump_coefficients(model, &t_rows, &r_rows);
    let k: Vec<f64> = k.iter().map(|k| 1.0 / k).collect();
    let wanted = (x_r - x.clone() * column(c, &x)) * column(k, &x);
    let old = target.clone().select(0, index.clone());
    Ok(target.select_assign(0, index, wanted - old, IndexingUpdateOp::Add))
}

/// Per row, the coefficients `[c, k]` of the jump from `from` to `to`
/// ([`IntegrationFlow::flow_map_coefficients`]).
fn jump_coefficients<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    from: &[f64],
    to: &[f64],
) -> [Vec<f64>; 2] {
    let (c, k) = from
        .iter()
        .zip(to)
        .map(|(&t, &r)| model.flow_map_coefficients(t, r))
        .map(|[c, k]| (c, k))
        .unzip();
    [c, k]
}

/// Per row, the point at `to` of the ODE path through `x` at `from` whose data end is `g`:
/// `c·x + k·g`.
fn jump_with<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    x: Tensor<B, 2>,
    g: Tensor<B, 2>,
    from: &[f64],
    to: &[f64],
) -> Tensor<B, 2> {
    let [c, k] = jump_coefficients(model, from, to);
    x.clone() * column(c, &x) + g * column(k, &x)
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};
    use crate::coupling::AnchorLaw;
    use crate::flow::{FlowConfig, Parameterization, RectifiedFlowConfig};
    use crate::model::IntegrationFlowConfig;
    use crate::nn::{Mlp, MlpConfig, NoiseEmbedding};
    use burn::tensor::Distribution;
    use burn::tensor::TensorData;

    fn model(flow: FlowConfig) -> IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>> {
        let net = MlpConfig {
            width: 32,
            depth: 2,
            embedding: NoiseEmbedding::sinusoidal(NoiseEmbedding::SMOOTH_SCALE),
            ..Default::default()
        }
        .init(&Default::default(), 3)
        .unwrap()
        .with_target_time()
        .unwrap();
        IntegrationFlowConfig {
            parameterization: Parameterization::Integral,
            sigma_data: Some(1.0),
            anchor_law: AnchorLaw::Zero,
        }
        .init(flow.init().unwrap(), net)
        .unwrap()
    }

    /// A batch of random examples on `model`'s training paths at times `t`, and the network's
    /// estimates for target times `r`.
    struct Batch {
        x0: Tensor<CpuAutodiff, 2>,
        noise: Tensor<CpuAutodiff, 2>,
        anchor: Tensor<CpuAutodiff, 2>,
        x_t: Tensor<CpuAutodiff, 2>,
        estimate: Tensor<CpuAutodiff, 2>,
    }

    impl Batch {
        fn new(
            model: &IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>>,
            t: &[f64],
            r: &[f64],
        ) -> Self {
            let device = Default::default();
            let normal = Distribution::Normal(0.0, 1.0);
            let x0 = Tensor::random([t.len(), 2], normal, &device);
            let noise = Tensor::random([t.len(), 2], normal, &device);
            let anchor = Tensor::zeros([t.len(), 2], &device);
            let x_t = model
                .flow()
                .interpolate(x0.clone(), noise.clone(), t)
                .unwrap();
            let estimate = model
                .estimate_to(x_t.clone(), t, r, anchor.clone())
                .unwrap();
            Batch {
                x0,
                noise,
                anchor,
                x_t,
                estimate,
            }
        }

        /// The targets by `config`, row by row.
        fn targets(
            &self,
            model: &IntegrationFlow<CpuAutodiff, Mlp<CpuAutodiff>>,
            config: &FlowMapConfig,
            (t, r, exact): (&[f64], &[f64], &[bool]),
        ) -> Vec<Vec<f32>> {
            let ema = model.net().valid();
            let tensors = (&self.x0, &self.noise, &self.x_t);
            let target = super::target(
                config,
                model,
                &ema,
                tensors,
                &self.anchor,
                (t, r, exact),
                &self.estimate,
            );
            rows(target.unwrap().inner())
        }
    }

    fn rows(tensor: Tensor<Cpu, 2>) -> Vec<Vec<f32>> {
        let values: Vec<f32> = tensor.into_data().to_vec().unwrap();
        values.chunks(2).map(<[f32]>::to_vec).collect()
    }

    #[test]
    fn exact_rows_target_their_example_and_leave_the_others() {
        let model = model(FlowConfig::Rf(Default::default()));
        let min = model.flow().time_range().min;
        let (t, r) = ([1.0, 1.0, 0.8], [min, min, 0.2]);
        let batch = Batch::new(&model, &t, &r);
        let config = FlowMapConfig::default();
        let target = |exact: &[bool]| batch.targets(&model, &config, (&t, &r, exact));
        let (none, first) = (target(&[]), target(&[true, false, false]));
        assert_eq!(first[0], rows(batch.x0.clone().inner())[0]);
        assert_ne!(none[0], first[0]);
        assert_eq!(none[1..], first[1..]);
    }

    #[test]
    fn two_jump_targets_are_the_networks_own_two_jumps_on_the_one_step_rows_only() {
        // Rectified flow on [0.2, 0.9]: σ(t_min) > 0 and α(t_max) ≠ 0, so neither coefficient
        // of the jump to t_min is trivial (c ≈ 0.22, k ≈ 0.78).
        let model = model(FlowConfig::Rf(RectifiedFlowConfig {
            t_min: 0.2,
            t_max: 0.9,
        }));
        let range = model.flow().time_range();
        let (min, max) = (range.min, range.max);
        // Rows: a shorter jump, a one-step jump, the denoiser, a one-step jump, a shorter one.
        let t = [0.85, max, 0.5, 0.7, 0.6];
        let r = [0.4, min, 0.5, min, 0.3];
        let batch = Batch::new(&model, &t, &r);
        let target = |one_step_target| {
            let config = FlowMapConfig {
                one_step_target,
                ..Default::default()
            };
            batch.targets(&model, &config, (&t, &r, &[]))
        };
        let (derivative, two_jumps) = (
            target(OneStepTarget::Derivative),
            target(OneStepTarget::TwoJumps),
        );
        for i in [0, 2, 4] {
            assert_eq!(derivative[i], two_jumps[i], "row {i} changed");
        }
        // The one-step rows: the jump X = c·x_t + k·target lands where the network's own jumps
        // t → (t + r)/2 → r land, one example at a time.
        let inner = model.with_net(model.net().valid());
        let x_t = rows(batch.x_t.clone().inner());
        let device = Default::default();
        for i in [1, 3] {
            let x = Tensor::<Cpu, 2>::from_data(TensorData::new(x_t[i].clone(), [1, 2]), &device);
            let zero = Tensor::<Cpu, 2>::zeros([1, 2], &device);
            let m = 0.5 * (t[i] + r[i]);
            let x_m = inner
                .flow_map_step(x.clone(), t[i], m, zero.clone())
                .unwrap();
            let x_r = rows(inner.flow_map_step(x_m, m, r[i], zero).unwrap()).remove(0);
            let [c, k] = inner.flow_map_coefficients(t[i], r[i]);
            assert!(
                c > 1e-3 && (k - 1.0).abs() > 1e-3,
                "trivial coefficients {c}, {k}"
            );
            for d in 0..2 {
                let landed = c as f32 * x_t[i][d] + k as f32 * two_jumps[i][d];
                assert!(
                    (landed - x_r[d]).abs() < 1e-4,
                    "row {i}: lands at {landed}, the two jumps at {}",
                    x_r[d]
                );
            }
            assert_ne!(derivative[i], two_jumps[i], "row {i} did not change");
        }
    }

    #[test]
    fn exact_flags_of_the_wrong_length_are_an_error() {
        let model = model(FlowConfig::Rf(Default::default()));
        let ema = model.net().valid();
        let x = Tensor::<CpuAutodiff, 2>::zeros([2, 2], &Default::default());
        let (t, r) = ([1.0, 0.5], [0.0, 0.0]);
        let result = super::target(
            &FlowMapConfig::default(),
            &model,
            &ema,
            (&x, &x, &x),
            &x,
            (&t, &r, &[true]),
            &x,
        );
        assert!(matches!(result, Err(Error::ShapeMismatch { .. })));
    }
}
