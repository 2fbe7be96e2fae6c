//! The Integration Flow model: a flow's preconditioning around a network.

mod condition;
mod renoise;

pub use condition::Classes;
pub(crate) use condition::Condition;

pub use renoise::{RenoiseAnchor, RenoiseSchedule};

use crate::backend::device_of;
use crate::coupling::AnchorLaw;
use crate::error::{Error, Result};
use crate::flow::tensor::column;
use crate::flow::{Parameterization, ProbabilityFlow, ProbabilityFlowExt};
use crate::nn::IntegrationNet;
use burn::tensor::{backend::Backend, ElementConversion, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;

/// The settings of an [`IntegrationFlow`] besides its flow and network: the preconditioning
/// form, the data's standard deviation, and the anchor law sampling starts from (the trainer
/// replaces it by its coupling's).
///
/// ```
/// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
/// use integration_flow::backend::Cpu;
/// use integration_flow::flow::FlowConfig;
/// use integration_flow::model::IntegrationFlowConfig;
/// use integration_flow::nn::MlpConfig;
///
/// let net = MlpConfig::default().init::<Cpu>(&Default::default(), 0)?;
/// let flow = "ve:sigma_max=20".parse::<FlowConfig>()?.init()?;
/// let model = IntegrationFlowConfig { sigma_data: Some(0.5), ..Default::default() }.init(flow, net)?;
/// assert_eq!(model.flow().name(), "ve");
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrationFlowConfig {
    /// The preconditioning form.
    pub parameterization: Parameterization,
    /// The data's standard deviation σ_d (about 0.5 for images in [-1, 1]); `None` (the
    /// default): the trainer computes it from the training data when a run starts (until then
    /// the model assumes 1), and a checkpoint or export records the value.
    pub sigma_data: Option<f64>,
    /// What sampling feeds as the first anchor.
    pub anchor_law: AnchorLaw,
}

impl Default for IntegrationFlowConfig {
    fn default() -> Self {
        IntegrationFlowConfig {
            parameterization: Parameterization::Integral,
            sigma_data: None,
            anchor_law: AnchorLaw::Gaussian { scale: 1.0 },
        }
    }
}

impl IntegrationFlowConfig {
    /// Checks `sigma_data` and the anchor law's scale.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "IntegrationFlowConfig";
        if let Some(sigma_data) = self.sigma_data {
            check_sigma_data(sigma_data)?;
        }
        match &self.anchor_law {
            AnchorLaw::Gaussian { scale } if !(scale.is_finite() && *scale > 0.0) => {
                Err(crate::error::invalid_config(
                    NAME,
                    "anchor_law.scale",
                    format!("must be finite and positive, got {scale}"),
                ))
            }
            AnchorLaw::Gaussian { .. } | AnchorLaw::Subspace { .. } | AnchorLaw::Zero => Ok(()),
        }
    }

    /// The model of `flow` around `net` with these settings. The preconditioning is evaluated
    /// at both ends of the flow's time range, so a form that is singular there fails now.
    ///
    /// A flow of your own (one without a built-in [`FlowConfig`](crate::flow::FlowConfig)) must
    /// pass [`flow::check`](crate::flow::check) first: its derivatives, ODE velocity, endpoints
    /// and prior are measured, and the first item out of tolerance is an
    /// [`Error::FlowCheck`] (a σ(t) that runs the wrong way would otherwise train without a
    /// word and generate nothing). [`init_unchecked`](Self::init_unchecked) skips it.
    pub fn init<B: Backend, N: IntegrationNet<B>>(
        &self,
        flow: Arc<dyn ProbabilityFlow>,
        net: N,
    ) -> Result<IntegrationFlow<B, N>> {
        if flow.flow_config().is_none() {
            let device = device_of(&net);
            let report = crate::flow::check::<B, _>(
                flow.as_ref(),
                &device,
                &crate::flow::CheckConfig::default(),
            )?;
            if let Some(item) = report.items.iter().find(|item| !item.passed()) {
                return Err(Error::FlowCheck {
                    flow: report.flow.clone(),
                    item: item.name.clone(),
                    relative_error: item.relative_error,
                    tolerance: item.tolerance,
                    detail: item.detail.clone(),
                });
            }
        }
        self.init_unchecked(flow, net)
    }

    /// [`init`](Self::init) without the self-check of a flow of your own: for experts who
    /// know why their flow fails it (or who checked it once and build many models).
    pub fn init_unchecked<B: Backend, N: IntegrationNet<B>>(
        &self,
        flow: Arc<dyn ProbabilityFlow>,
        net: N,
    ) -> Result<IntegrationFlow<B, N>> {
        self.validate()?;
        if let AnchorLaw::Subspace { law } = &self.anchor_law {
            if law.dim() != net.dim() {
                return Err(Error::ShapeMismatch {
                    context: "anchor law (subspace)",
                    expected: format!("{} values per anchor (the network's)", net.dim()),
                    found: format!("{}", law.dim()),
                });
            }
        }
        let form = self.parameterization;
        let sigma_data = self.sigma_data.unwrap_or(1.0);
        let range = flow.time_range();
        flow.preconditioning(range.min, form, sigma_data)?;
        flow.preconditioning(range.max, form, sigma_data)?;
        Ok(IntegrationFlow {
            flow,
            net,
            form,
            sigma_data,
            sigma_data_from_data: self.sigma_data.is_none(),
            anchor_law: self.anchor_law.clone(),
            condition: Condition::default(),
            _backend: PhantomData,
        })
    }
}

/// An Integration Flow model: `x̂_0 = c_skip(t)·x_t + c_out(t)·F(c_in(t)·x_t, c_noise(t), a)`
/// for a [`ProbabilityFlow`] and an [`IntegrationNet`] `F`.
///
/// ```
/// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
/// use integration_flow::backend::Cpu;
/// use integration_flow::flow::FlowConfig;
/// use integration_flow::model::IntegrationFlowConfig;
/// use integration_flow::nn::MlpConfig;
/// use rand::{rngs::StdRng, SeedableRng};
///
/// let device = Default::default();
/// let net = MlpConfig { width: 32, depth: 2, ..Default::default() }.init::<Cpu>(&device, 0)?;
/// let flow = FlowConfig::Rf(Default::default()).init()?;
/// let model = IntegrationFlowConfig::default().init(flow, net)?; // integral form, σ_d from the data
/// let samples = model.generate(&mut StdRng::seed_from_u64(0), 16, 1)?; // one network call
/// assert_eq!(samples.dims(), [16, 2]);
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct IntegrationFlow<B: Backend, N> {
    flow: Arc<dyn ProbabilityFlow>,
    net: N,
    form: Parameterization,
    sigma_data: f64,
    /// σ_d was not given: the trainer sets it from the data when a run starts.
    sigma_data_from_data: bool,
    anchor_law: AnchorLaw,
    /// The classes and guidance the estimates are asked for.
    condition: Condition,
    _backend: PhantomData<B>,
}

impl<B: Backend, N: IntegrationNet<B>> IntegrationFlow<B, N> {
    /// The flow.
    pub fn flow(&self) -> &Arc<dyn ProbabilityFlow> {
        &self.flow
    }

    /// The network.
    pub fn net(&self) -> &N {
        &self.net
    }

    /// Replaces the network (e.g. after an optimizer step), keeping everything else.
    pub fn with_net<M: IntegrationNet<B2>, B2: Backend>(&self, net: M) -> IntegrationFlow<B2, M> {
        IntegrationFlow {
            flow: self.flow.clone(),
            net,
            form: self.form,
            sigma_data: self.sigma_data,
            sigma_data_from_data: self.sigma_data_from_data,
            anchor_law: self.anchor_law.clone(),
            condition: self.condition.clone(),
            _backend: PhantomData,
        }
    }

    /// The same model with another anchor law.
    pub fn with_anchor_law(mut self, anchor_law: AnchorLaw) -> Self {
        self.anchor_law = anchor_law;
        self
    }

    /// Takes the network out.
    pub fn into_net(self) -> N {
        self.net
    }

    /// The preconditioning form.
    pub fn parameterization(&self) -> Parameterization {
        self.form
    }

    /// The data standard deviation the preconditioning assumes.
    pub fn sigma_data(&self) -> f64 {
        self.sigma_data
    }

    /// Whether σ_d was left to the data ([`IntegrationFlowConfig::sigma_data`] `None`) and no
    /// trainer has set it yet.
    pub fn sigma_data_from_data(&self) -> bool {
        self.sigma_data_from_data
    }

    /// The same model with σ_d set from `data` (its overall standard deviation), where it was
    /// left to the data; otherwise unchanged. The trainer calls this when a run starts or
    /// resumes.
    pub fn with_sigma_data_from(self, data: &crate::data::Dataset) -> Result<Self> {
        if !self.sigma_data_from_data {
            return Ok(self);
        }
        let (_, std) = data.mean_and_std();
        check_sigma_data(std).map_err(|_| Error::InvalidArgument {
            name: "data",
            reason: format!(
                "σ_data from the data is {std}: constant data has no scale; give \
                 IntegrationFlowConfig::sigma_data"
            ),
        })?;
        self.with_sigma_data(std)
    }

    /// The same model with σ_d set to `sigma_data` (a value checked like the configuration's):
    /// how a resumed run restores the σ_d its data gave it.
    pub fn with_sigma_data(mut self, sigma_data: f64) -> Result<Self> {
        check_sigma_data(sigma_data)?;
        let range = self.flow.time_range();
        self.flow
            .preconditioning(range.min, self.form, sigma_data)?;
        self.flow
            .preconditioning(range.max, self.form, sigma_data)?;
        self.sigma_data = sigma_data;
        self.sigma_data_from_data = false;
        Ok(self)
    }

    /// The law of the anchor at sampling.
    pub fn anchor_law(&self) -> AnchorLaw {
        self.anchor_law.clone()
    }

    /// Values per example.
    pub fn dim(&self) -> usize {
        self.net.dim()
    }

    /// The data estimate `x̂_0 = f(x_t, t, anchor)`; `t` holds one time per example or one for
    /// all. For a flow-map network ([`IntegrationNet::takes_target_time`]) this is the jump
    /// to the data end ([`estimate_to`](Self::estimate_to) with `r = t_min`), what one-step
    /// and consistency-style samplers call; [`denoise`](Self::denoise) is its denoiser.
    pub fn estimate(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
        anchor: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        self.estimate_towards(x_t, t, &[self.flow.time_range().min], anchor)
    }

    /// The denoiser's estimate `E[x_0 | x_t]`, the one the probability-flow ODE's velocity is
    /// built from: [`estimate`](Self::estimate) for a plain network, the estimate with target
    /// time `r = t` for a flow-map network.
    pub fn denoise(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
        anchor: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        self.estimate_towards(x_t, t, t, anchor)
    }

    /// A flow-map network's estimate for target time `r`; a plain network's only estimate,
    /// whatever `r` is.
    fn estimate_towards(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
        r: &[f64],
        anchor: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        match self.net.takes_target_time() {
            true => self.estimate_to(x_t, t, r, anchor),
            false => self.call(x_t, t, None, anchor),
        }
    }

    /// A flow-map network's data-space estimate `g(x_t, t, r)` for the jump from `t` to the
    /// target time `r ≤ t`: the point of the probability-flow ODE's path through `x_t` at `r`
    /// is `σ(r)/σ(t)·x_t + (α(r) − σ(r)·α(t)/σ(t))·g` ([`flow_map_step`](Self::flow_map_step)).
    /// `r = t` is the denoiser, `r = t_min` the one-step generator. `t` and `r` hold one time
    /// per example or one for all. A network without the target-time input, or an `r` outside
    /// `[t_min, t]`, is an error.
    ///
    /// ```
    /// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
    /// use burn::tensor::Tensor;
    /// use integration_flow::backend::Cpu;
    /// use integration_flow::flow::FlowConfig;
    /// use integration_flow::model::IntegrationFlowConfig;
    /// use integration_flow::nn::MlpConfig;
    ///
    /// let net = MlpConfig { target_time: true, ..Default::default() }.init::<Cpu>(&Default::default(), 0)?;
    /// let flow = FlowConfig::Rf(Default::default()).init()?; // t in [0, 1]
    /// let model = IntegrationFlowConfig::default().init(flow, net)?;
    /// let x = Tensor::<Cpu, 2>::zeros([4, 2], &Default::default());
    /// let one_step = model.estimate_to(x.clone(), &[1.0], &[0.0], x.clone())?; // t_max → data
    /// assert_eq!(one_step.dims(), [4, 2]);
    /// assert!(model.estimate_to(x.clone(), &[0.5], &[0.7], x).is_err()); // r above t
    /// # }
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn estimate_to(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
        r: &[f64],
        anchor: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        if !self.net.takes_target_time() {
            return Err(Error::InvalidArgument {
                name: "network",
                reason: "estimate_to needs a network with a target-time input (see \
                         IntegrationNet::with_target_time)"
                    .into(),
            });
        }
        let n = x_t.dims()[0];
        for (context, times) in [("times per example", t), ("target times per example", r)] {
            if times.len() != n && times.len() != 1 {
                return Err(Error::ShapeMismatch {
                    context,
                    expected: format!("1 or {n} values"),
                    found: format!("{} values", times.len()),
                });
            }
        }
        let range = self.flow.time_range();
        let width = range.max - range.min;
        // One gap per example, or one for all (none for an empty batch).
        let count = match n {
            0 => 0,
            _ => t.len().max(r.len()),
        };
        let mut gap = Vec::with_capacity(count);
        for i in 0..count {
            let ti = t[if t.len() == 1 { 0 } else { i }];
            let ri = r[if r.len() == 1 { 0 } else { i }];
            if !(ti >= range.min && ti <= range.max) {
                return Err(Error::InvalidArgument {
                    name: "t",
                    reason: format!(
                        "a time must lie in [t_min, t_max] = [{}, {}], got {ti}",
                        range.min, range.max
                    ),
                });
            }
            if !(ri >= range.min && ri <= ti) {
                return Err(Error::InvalidArgument {
                    name: "r",
                    reason: format!(
                        "a target time must lie in [t_min, t] = [{}, {ti}], got {ri}",
                        range.min
                    ),
                });
            }
            gap.push(((ti - ri) / width) as f32);
        }
        self.call(x_t, t, Some(gap), anchor)
    }

    /// One jump of the probability-flow ODE from `t` to `r` by a flow-map network:
    /// `σ(r)/σ(t)·x_t + (α(r) − σ(r)·α(t)/σ(t))·g(x_t, t, r)` (at `σ(t) = 0` there is nothing to
    /// jump: `x_t`). One network call.
    pub fn flow_map_step(
        &self,
        x_t: Tensor<B, 2>,
        t: f64,
        r: f64,
        anchor: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        let g = self.estimate_to(x_t.clone(), &[t], &[r], anchor)?;
        let [c, k] = self.flow_map_coefficients(t, r);
        Ok(x_t.mul_scalar(c) + g.mul_scalar(k))
    }

    /// `[σ(r)/σ(t), α(r) − σ(r)·α(t)/σ(t)]`: the point at `r` of the path through `x_t` is
    /// `c·x_t + k·x̂_0` when `x̂_0` is that path's data end (`[1, 0]` where `σ(t) = 0`).
    pub fn flow_map_coefficients(&self, t: f64, r: f64) -> [f64; 2] {
        let flow = &self.flow;
        let sigma_t = flow.sigma(t);
        if sigma_t <= 0.0 {
            return [1.0, 0.0];
        }
        let c = flow.sigma(r) / sigma_t;
        [c, flow.alpha(r) - c * flow.alpha(t)]
    }

    /// The preconditioned network call; `gap` is the target-time input of a flow-map network.
    fn call(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
        gap: Option<Vec<f32>>,
        anchor: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        let [n, dim] = x_t.dims();
        if dim != self.dim() || anchor.dims() != [n, dim] {
            return Err(Error::ShapeMismatch {
                context: "IntegrationFlow::estimate (x_t, anchor)",
                expected: format!("[n, {}] twice", self.dim()),
                found: format!("{:?} and {:?}", x_t.dims(), anchor.dims()),
            });
        }
        // A NaN in would be NaN samples out, silently. The sums of both inputs are finite
        // exactly when every value is (short of sums beyond f32's range, ~1e38): two passes
        // and one read back; only the error path reads more.
        let total: f64 = (x_t.clone().sum() + anchor.clone().sum())
            .into_scalar()
            .elem();
        if !total.is_finite() {
            for (context, tensor) in [(NON_FINITE_X_T, &x_t), (NON_FINITE_ANCHOR, &anchor)] {
                if let Some(value) = first_non_finite(tensor) {
                    return Err(Error::NonFinite { context, value });
                }
            }
        }
        if t.len() != n && t.len() != 1 {
            return Err(Error::ShapeMismatch {
                context: "times per example",
                expected: format!("1 or {n} values"),
                found: format!("{} values", t.len()),
            });
        }
        let mut coefficients = [
            Vec::with_capacity(t.len()),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ];
        for &ti in t {
            let p = self.flow.preconditioning(ti, self.form, self.sigma_data)?;
            for (column, value) in coefficients
                .iter_mut()
                .zip([p.c_skip, p.c_out, p.c_in, p.c_noise])
            {
                column.push(value);
            }
        }
        let [c_skip, c_out, c_in, c_noise] = coefficients;
        let device = x_t.device();
        let c_noise: Vec<f32> = if t.len() == 1 {
            vec![c_noise[0] as f32; n]
        } else {
            c_noise.iter().map(|&c| c as f32).collect()
        };
        let c_noise = Tensor::<B, 1>::from_data(TensorData::new(c_noise, [n]), &device);
        let input = x_t.clone() * column(c_in, &x_t);
        let gap = gap.map(|gap| {
            let gap = match gap.len() {
                1 => vec![gap[0]; n],
                _ => gap,
            };
            Tensor::<B, 1>::from_data(TensorData::new(gap, [n]), &device)
        });
        let output = self.net_output(input, c_noise, gap, anchor)?;
        Ok(x_t.clone() * column(c_skip, &x_t) + output * column(c_out, &x_t))
    }

    /// `n` prior samples `x_T`, drawn on the host.
    pub fn sample_prior(&self, rng: &mut dyn Rng, n: usize) -> Result<Tensor<B, 2>> {
        self.flow
            .prior::<B, 2>(rng, [n, self.dim()], &self.device())
    }

    /// `n` anchors drawn from the model's anchor law.
    pub fn sample_anchor(&self, rng: &mut dyn Rng, n: usize) -> Result<Tensor<B, 2>> {
        crate::flow::sample_len(n, self.dim())?;
        let values = self.anchor_law.sample(rng, n, self.dim())?;
        Ok(Tensor::from_data(
            TensorData::new(values, [n, self.dim()]),
            &self.device(),
        ))
    }

    /// Generates `n` samples in `steps` network calls: one call from the prior (`x_T` and a
    /// first anchor from the anchor law), then for `steps > 1` the re-noising sampler
    /// ([`renoise`](Self::renoise) on the default [`RenoiseSchedule`], the first anchor held),
    /// which
    /// refines: each further call starts from the estimate perturbed back to a smaller noise
    /// level.
    ///
    /// ```
    /// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
    /// use integration_flow::prelude::*;
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let net = MlpConfig { width: 32, depth: 2, ..Default::default() }.init::<Cpu>(&Default::default(), 0)?;
    /// let model = IntegrationFlowConfig::default().init(FlowConfig::Rf(Default::default()).init()?, net)?;
    /// let one_call = model.generate(&mut StdRng::seed_from_u64(0), 100, 1)?;
    /// let three_calls = model.generate(&mut StdRng::seed_from_u64(0), 100, 3)?;
    /// assert_eq!(three_calls.dims(), [100, 2]);
    /// # }
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn generate(&self, rng: &mut dyn Rng, n: usize, steps: usize) -> Result<Tensor<B, 2>> {
        match steps {
            0 => Err(Error::InvalidArgument {
                name: "steps",
                reason: "generation needs at least one network call".into(),
            }),
            1 => self.anchor_iteration(rng, n, 1),
            _ => {
                let times = RenoiseSchedule::default().times(self.flow.as_ref(), steps)?;
                self.renoise(rng, n, &times, RenoiseAnchor::Fixed)
            }
        }
    }

    /// The papers' multi-step sampler: `x_T` from the prior, a first anchor from the anchor
    /// law, then `iterations` calls `a ← f(x_T, T, a)`. One iteration is one-step generation.
    ///
    /// **It does not refine** a model trained with the crate's default (optimal-transport)
    /// anchors: their anchor is a latent code, and the network's output fed back is not one,
    /// so samples move away from the data with every call (docs/evidence.md, "Anchor
    /// iteration"). Use [`generate`](Self::generate) for more calls.
    pub fn anchor_iteration(
        &self,
        rng: &mut dyn Rng,
        n: usize,
        iterations: usize,
    ) -> Result<Tensor<B, 2>> {
        if iterations == 0 {
            return Err(Error::InvalidArgument {
                name: "iterations",
                reason: "generation needs at least one network call".into(),
            });
        }
        let x_t = self.sample_prior(rng, n)?;
        let mut anchor = self.sample_anchor(rng, n)?;
        let t_max = [self.flow.time_range().max];
        for _ in 0..iterations {
            anchor = self.estimate(x_t.clone(), &t_max, anchor)?;
        }
        Ok(anchor)
    }

    fn device(&self) -> B::Device {
        device_of(&self.net)
    }
}

/// The first non-finite value of `tensor`, if any (read back only on the error path).
fn first_non_finite<B: Backend>(tensor: &Tensor<B, 2>) -> Option<f64> {
    tensor.to_data().iter::<f64>().find(|v| !v.is_finite())
}

/// The context of [`Error::NonFinite`] for a non-finite `x_t` given to the model.
pub(crate) const NON_FINITE_X_T: &str = "IntegrationFlow::estimate input x_t";
/// The context of [`Error::NonFinite`] for a non-finite anchor given to the model.
pub(crate) const NON_FINITE_ANCHOR: &str = "IntegrationFlow::estimate input anchor";

fn check_sigma_data(sigma_data: f64) -> Result<()> {
    if sigma_data.is_finite() && sigma_data > 0.0 {
        Ok(())
    } else {
        Err(crate::error::invalid_config(
            "IntegrationFlowConfig",
            "sigma_data",
            format!("must be finite and positive, got {sigma_data}"),
        ))
    }
}
