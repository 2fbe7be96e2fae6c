//! The Integration Flow model: a flow's preconditioning around a network.

use crate::error::{Error, Result};
use crate::flow::tensor::column;
use crate::flow::{Parameterization, ProbabilityFlow, ProbabilityFlowExt};
use crate::nn::IntegrationNet;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;

/// What the network receives as its anchor when nothing better is known (at sampling): a
/// draw from the anchor law the model was trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AnchorLaw {
    /// `N(0, scale²·I)`: random and optimal-transport anchors.
    Gaussian {
        /// Standard deviation.
        scale: f64,
    },
    /// A Gaussian fitted to the data in its top principal directions: anchors are smooth
    /// sketches of examples (see [`SubspaceLaw`]).
    Subspace {
        /// The law.
        law: Arc<SubspaceLaw>,
    },
    /// Zeros: the anchor input is switched off (the plain denoiser).
    Zero,
}

impl AnchorLaw {
    /// `n` draws of `dim` values, on the host. A subspace law of another dimension is an
    /// error.
    pub fn sample(&self, rng: &mut dyn Rng, n: usize, dim: usize) -> Result<Vec<f32>> {
        if let AnchorLaw::Subspace { law } = self {
            if law.dim() != dim {
                return Err(Error::ShapeMismatch {
                    context: "AnchorLaw::sample",
                    expected: format!("{dim} values per anchor"),
                    found: format!("a subspace law of {} values", law.dim()),
                });
            }
        }
        Ok(match self {
            AnchorLaw::Gaussian { scale } => (0..n * dim)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    (z * scale) as f32
                })
                .collect(),
            AnchorLaw::Subspace { law } => (0..n)
                .flat_map(|_| law.compose_unchecked(&law.draw(rng)))
                .collect(),
            AnchorLaw::Zero => vec![0.0; n * dim],
        })
    }
}

/// `mean + Σᵢ zᵢ·sᵢ·pᵢ` with `z ~ N(0, I_k)`: the Gaussian that fits the data along its top `k`
/// principal directions `pᵢ` (standard deviations `sᵢ`), and nothing outside them.
///
/// In high dimension, random isotropic anchors matched to images by optimal transport pair
/// almost at random (most of an anchor is noise no image shares). Anchors drawn in the data's
/// principal subspace are matched on what they carry, and at sampling a fresh draw is a
/// plausible sketch for the network to complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubspaceLaw {
    mean: Vec<f32>,
    basis: Vec<f32>,
    scales: Vec<f64>,
}

impl SubspaceLaw {
    /// Fits the law to `data` along its top `k` principal directions.
    pub fn fit(data: &crate::data::Dataset, k: usize) -> Result<Self> {
        let pca = crate::data::Pca::fit(data, k)?;
        let (mean, _) = data.mean_and_std();
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let centre = pca.project(&mean)?;
        let n = data.len() as f64;
        let mut var = vec![0.0; k];
        for i in 0..data.len() {
            for ((v, c), m) in var.iter_mut().zip(pca.project(data.row(i))?).zip(&centre) {
                *v += (c - m).powi(2) / n;
            }
        }
        let basis = (0..k)
            .flat_map(|i| pca.component(i).unwrap_or_default().to_vec())
            .map(|v| v as f32)
            .collect();
        Ok(SubspaceLaw {
            mean,
            basis,
            scales: var.iter().map(|v| v.sqrt().max(1e-12)).collect(),
        })
    }

    /// Directions.
    pub fn dims(&self) -> usize {
        self.scales.len()
    }

    /// Values per anchor.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// A standard-normal code `z` of `k` values.
    pub fn draw(&self, rng: &mut dyn Rng) -> Vec<f64> {
        (0..self.dims())
            .map(|_| StandardNormal.sample(rng))
            .collect()
    }

    /// The anchor of code `z` (`dims()` values): `mean + Σᵢ zᵢ·sᵢ·pᵢ`.
    pub fn compose(&self, z: &[f64]) -> Result<Vec<f32>> {
        check_len("SubspaceLaw::compose", "code", z.len(), self.dims())?;
        Ok(self.compose_unchecked(z))
    }

    pub(crate) fn compose_unchecked(&self, z: &[f64]) -> Vec<f32> {
        let mut out = self.mean.clone();
        for ((p, &zi), &s) in self.basis.chunks_exact(self.dim()).zip(z).zip(&self.scales) {
            let w = (zi * s) as f32;
            for (o, &pv) in out.iter_mut().zip(p) {
                *o += w * pv;
            }
        }
        out
    }

    /// The whitened coordinates of `x` (`dim()` values): `(pᵢ·(x − mean))/sᵢ`, comparable
    /// with codes `z`.
    pub fn code(&self, x: &[f32]) -> Result<Vec<f64>> {
        check_len("SubspaceLaw::code", "point", x.len(), self.dim())?;
        Ok(self.code_unchecked(x))
    }

    pub(crate) fn code_unchecked(&self, x: &[f32]) -> Vec<f64> {
        self.basis
            .chunks_exact(self.dim())
            .zip(&self.scales)
            .map(|(p, &s)| {
                p.iter()
                    .zip(x)
                    .zip(&self.mean)
                    .map(|((&pv, &xv), &m)| f64::from(pv) * f64::from(xv - m))
                    .sum::<f64>()
                    / s
            })
            .collect()
    }
}

/// An Integration Flow model: `x̂_0 = c_skip(t)·x_t + c_out(t)·F(c_in(t)·x_t, c_noise(t), a)`
/// for a [`ProbabilityFlow`] and an [`IntegrationNet`] `F`.
///
/// ```
/// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
/// use integration_flow::backend::Cpu;
/// use integration_flow::flow::{Parameterization, RectifiedFlowConfig};
/// use integration_flow::model::{AnchorLaw, IntegrationFlow};
/// use integration_flow::nn::MlpConfig;
/// use rand::{rngs::StdRng, SeedableRng};
///
/// let device = Default::default();
/// let net = MlpConfig { width: 32, depth: 2, ..Default::default() }.init::<Cpu>(&device, 0)?;
/// let flow = RectifiedFlowConfig::default().init()?;
/// let model = IntegrationFlow::new(flow, net, Parameterization::Integral, 1.0, AnchorLaw::Gaussian { scale: 1.0 })?;
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
    anchor_law: AnchorLaw,
    _backend: PhantomData<B>,
}

impl<B: Backend, N: IntegrationNet<B>> IntegrationFlow<B, N> {
    /// A model of `flow` around `net`; `sigma_data` is the data's standard deviation (used by
    /// the preconditioning), `anchor_law` what sampling feeds as the first anchor.
    pub fn new(
        flow: impl ProbabilityFlow + 'static,
        net: N,
        form: Parameterization,
        sigma_data: f64,
        anchor_law: AnchorLaw,
    ) -> Result<Self> {
        Self::from_shared(Arc::new(flow), net, form, sigma_data, anchor_law)
    }

    /// Like [`new`](Self::new) with a shared flow.
    pub fn from_shared(
        flow: Arc<dyn ProbabilityFlow>,
        net: N,
        form: Parameterization,
        sigma_data: f64,
        anchor_law: AnchorLaw,
    ) -> Result<Self> {
        if !(sigma_data.is_finite() && sigma_data > 0.0) {
            return Err(Error::InvalidArgument {
                name: "sigma_data",
                reason: format!("must be finite and positive, got {sigma_data}"),
            });
        }
        if let AnchorLaw::Subspace { law } = &anchor_law {
            if law.dim() != net.dim() {
                return Err(Error::ShapeMismatch {
                    context: "anchor law (subspace)",
                    expected: format!("{} values per anchor (the network's)", net.dim()),
                    found: format!("{}", law.dim()),
                });
            }
        }
        if let AnchorLaw::Gaussian { scale } = anchor_law {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(Error::InvalidArgument {
                    name: "anchor_law",
                    reason: format!("scale must be finite and positive, got {scale}"),
                });
            }
        }
        // Fail now, not at the first batch, if the form is singular at either end.
        let range = flow.time_range();
        flow.preconditioning(range.min, form, sigma_data)?;
        flow.preconditioning(range.max, form, sigma_data)?;
        Ok(IntegrationFlow {
            flow,
            net,
            form,
            sigma_data,
            anchor_law,
            _backend: PhantomData,
        })
    }

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
            anchor_law: self.anchor_law.clone(),
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

    /// The law of the anchor at sampling.
    pub fn anchor_law(&self) -> AnchorLaw {
        self.anchor_law.clone()
    }

    /// Values per example.
    pub fn dim(&self) -> usize {
        self.net.dim()
    }

    /// The data estimate `x̂_0 = f(x_t, t, anchor)`; `t` holds one time per example or one for
    /// all.
    pub fn estimate(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
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
        let output = self
            .net
            .forward(x_t.clone() * column(c_in, &x_t), c_noise, anchor);
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

    /// Generates `n` samples: `x_T` from the prior, a first anchor from the anchor law, then
    /// `iterations` network calls `a ← f(x_T, T, a)` (1 = one-step generation).
    pub fn generate(&self, rng: &mut dyn Rng, n: usize, iterations: usize) -> Result<Tensor<B, 2>> {
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

/// The device a module's parameters live on (all on one); the default for a module without
/// parameters.
pub(crate) fn device_of<B: Backend, M: burn::module::Module<B>>(module: &M) -> B::Device {
    module.devices().into_iter().next().unwrap_or_default()
}

/// `Error::ShapeMismatch` unless a `what` has `expected` values.
pub(crate) fn check_len(
    context: &'static str,
    what: &str,
    found: usize,
    expected: usize,
) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        context,
        expected: format!("a {what} of {expected} values"),
        found: format!("{found} values"),
    })
}
