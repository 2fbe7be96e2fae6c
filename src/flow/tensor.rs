//! The flow's operations on tensors of any burn backend, built from its host-side scalars.
//!
//! Per-example times are host `f64` values; each operation evaluates the flow's coefficients
//! for them in `f64`, uploads one `[n, 1, …, 1]` column in the tensor's own dtype and
//! broadcasts it, so any backend and precision computes the same math.

use super::{
    edm_preconditioning, sample_len, Parameterization, Preconditioning, ProbabilityFlow,
    TimeDistribution, VelocityCoefficients,
};
use crate::error::{Error, Result};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::{Rng, RngExt};
use rand_distr::{Distribution, StandardNormal};

/// What follows from a [`ProbabilityFlow`]'s α, σ and noise law, for every flow (including
/// `dyn ProbabilityFlow`; a family cannot override it): the prior, the noise-to-signal ratio,
/// training times, the preconditioning, the ODE velocity coefficients, and the operations on
/// tensors. Times `t` of the tensor operations hold one value per example (the tensors' first
/// dimension), or a single value for the whole batch.
///
/// ```
/// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
/// use burn::tensor::Tensor;
/// use integration_flow::backend::Cpu;
/// use integration_flow::flow::{ProbabilityFlowExt, RectifiedFlowConfig};
/// use rand::{rngs::StdRng, SeedableRng};
///
/// let rf = RectifiedFlowConfig::default().init()?;
/// let device = Default::default();
/// let mut rng = StdRng::seed_from_u64(0);
/// let x0 = Tensor::<Cpu, 2>::ones([4, 2], &device);
/// let noise = rf.noise::<Cpu, 2>(&mut rng, [4, 2], &device)?;
/// let t = [0.25, 0.5, 0.75, 1.0];
/// let x_t = rf.interpolate(x0.clone(), noise.clone(), &t)?;
/// // Given the true x_0, the velocity is the straight line's: noise − x_0.
/// let v = rf.velocity(x_t, x0.clone(), &t)?;
/// let err: f32 = (v - (noise - x0)).abs().max().into_scalar();
/// assert!(err < 1e-5);
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub trait ProbabilityFlowExt: ProbabilityFlow {
    /// Draws `n` prior samples of `dim` coordinates: `σ(t_max)·noise`. The signal part
    /// `α(t_max)·x_0` is dropped; [`check`](super::check) measures how small it is.
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

    /// Draws noise of `shape` (`[n, …]`, each example one draw of the noise law) on the host
    /// and uploads it.
    fn noise<B: Backend, const D: usize>(
        &self,
        rng: &mut dyn Rng,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let (n, dim) = split_shape(&shape)?;
        let values = self.sample_noise(rng, n, dim)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// Draws prior samples of `shape` on the host and uploads them.
    fn prior<B: Backend, const D: usize>(
        &self,
        rng: &mut dyn Rng,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let (n, dim) = split_shape(&shape)?;
        let values = self.sample_prior(rng, n, dim)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// `x_t = α(t)·x_0 + σ(t)·noise`.
    fn interpolate<B: Backend, const D: usize>(
        &self,
        x0: Tensor<B, D>,
        noise: Tensor<B, D>,
        t: &[f64],
    ) -> Result<Tensor<B, D>> {
        linear_combination(self, "interpolate: x0 and noise", x0, noise, t, |t| {
            Ok((self.alpha(t), self.sigma(t)))
        })
    }

    /// The probability-flow ODE velocity `dx/dt` at `(x_t, t)` given the estimate `x̂_0`.
    fn velocity<B: Backend, const D: usize>(
        &self,
        x_t: Tensor<B, D>,
        x0_hat: Tensor<B, D>,
        t: &[f64],
    ) -> Result<Tensor<B, D>> {
        linear_combination(self, "velocity: x_t and x0_hat", x_t, x0_hat, t, |t| {
            let c = self.velocity_coefficients(t)?;
            Ok((c.x_t, c.x0))
        })
    }

    /// The data estimate from the network output `F`: `x̂_0 = c_skip(t)·x_t + c_out(t)·F`.
    fn estimate<B: Backend, const D: usize>(
        &self,
        x_t: Tensor<B, D>,
        output: Tensor<B, D>,
        t: &[f64],
        form: Parameterization,
        sigma_data: f64,
    ) -> Result<Tensor<B, D>> {
        linear_combination(self, "estimate: x_t and output", x_t, output, t, |t| {
            let p = self.preconditioning(t, form, sigma_data)?;
            Ok((p.c_skip, p.c_out))
        })
    }
}

impl<F: ProbabilityFlow + ?Sized> ProbabilityFlowExt for F {}

/// `a·c₁(t) + b·c₂(t)` per example, with `(c₁, c₂) = coefficients(t)` evaluated on the host,
/// after checking that `a` and `b` have one shape, that `t` holds 1 or `batch` times, and that
/// each lies in the flow's time range.
fn linear_combination<F: ProbabilityFlow + ?Sized, B: Backend, const D: usize>(
    flow: &F,
    context: &'static str,
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    t: &[f64],
    coefficients: impl Fn(f64) -> Result<(f64, f64)>,
) -> Result<Tensor<B, D>> {
    let (da, db) = (a.dims(), b.dims());
    if da != db {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("{da:?}"),
            found: format!("{db:?}"),
        });
    }
    let batch = da[0];
    if t.len() != batch && t.len() != 1 {
        return Err(Error::ShapeMismatch {
            context: "times per example",
            expected: format!("1 or {batch} values"),
            found: format!("{} values", t.len()),
        });
    }
    let range = flow.time_range();
    let mut first = Vec::with_capacity(t.len());
    let mut second = Vec::with_capacity(t.len());
    for &ti in t {
        range.require(ti)?;
        let (c1, c2) = coefficients(ti)?;
        for value in [c1, c2] {
            if !value.is_finite() {
                return Err(Error::NonFinite {
                    context: "flow coefficient",
                    value,
                });
            }
        }
        first.push(c1);
        second.push(c2);
    }
    let (c1, c2) = (column(first, &a), column(second, &a));
    Ok(a * c1 + b * c2)
}

/// Per-example values as a `[n, 1, …, 1]` tensor in `like`'s dtype and device.
pub(crate) fn column<B: Backend, const D: usize>(
    values: Vec<f64>,
    like: &Tensor<B, D>,
) -> Tensor<B, D> {
    let mut shape = [1usize; D];
    shape[0] = values.len();
    Tensor::from_data(
        TensorData::new(values, shape),
        (&like.device(), like.dtype()),
    )
}

/// The indices `rows` as an index tensor on `device`, for `Tensor::select` along the rows.
pub(crate) fn row_index<B: Backend>(rows: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [rows.len()]), device)
}

/// `(n, values per example)` of a shape `[n, …]`.
fn split_shape<const D: usize>(shape: &[usize; D]) -> Result<(usize, usize)> {
    let n = shape.first().copied().unwrap_or(0);
    let dim = shape[1..]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let dim = dim.ok_or(Error::InvalidArgument {
        name: "shape",
        reason: format!("{shape:?} overflows usize"),
    })?;
    sample_len(n, dim)?;
    Ok((n, dim))
}
