//! Generated pairs: prior draws and the samples a trained model's probability-flow ODE maps
//! them to. Training a one-step model on them (the
//! [`PairedAnchors::generated`](crate::coupling::PairedAnchors::generated) coupling) learns the
//! ODE's whole integration in one call: the pairing is exact, so the target is a function of
//! the latent and the one-step estimate can be sharp.

use super::ode::{encode_ode, solve_ode_from, OdeSolver};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Classes, IntegrationFlow};
use crate::nn::IntegrationNet;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::Rng;

/// `n` latents and their ODE solutions, row `i` of one paired with row `i` of the other.
#[derive(Clone, Debug)]
pub struct OdePairs {
    /// The path noise `n` of each pair: the prior point is `x_T = α(T)·x + σ(T)·n`, which is the
    /// prior draw itself where α(T) = 0 (rectified flow, VE).
    pub latents: Dataset,
    /// The samples the ODE reached from the prior points.
    pub samples: Dataset,
    /// Network evaluations per pair.
    pub nfe: usize,
}

/// `n` prior draws of `model` integrated by `solver` (its anchor input drawn from its anchor
/// law, zeros for a denoiser), `batch` at a time; `progress(done, n)` after each batch.
///
/// A class-conditional model asked for classes ([`IntegrationFlow::with_classes`]: one for
/// all, or one per pair, `n` of them) integrates each pair at its class, with the model's
/// guidance: the samples then carry those labels ([`Dataset::labels`]), the coupling of a
/// class-conditional one-step student.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use integration_flow::prelude::*;
/// use integration_flow::sample::{ode_pairs, OdeSolver};
/// use rand::SeedableRng;
/// let device = Default::default();
/// let net = MlpConfig::default().init::<Cpu>(&device, 0)?;
/// let flow = FlowConfig::Rf(Default::default()).init()?;
/// let model = IntegrationFlowConfig::default().init(flow, net)?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let pairs = ode_pairs(&model, &mut rng, 10, OdeSolver::Heun { steps: 3 }, 4, |_, _| {})?;
/// assert_eq!((pairs.latents.len(), pairs.samples.len(), pairs.nfe), (10, 10, 5));
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn ode_pairs<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    rng: &mut dyn Rng,
    n: usize,
    solver: OdeSolver,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<OdePairs> {
    if n == 0 || batch == 0 {
        return Err(Error::InvalidArgument {
            name: if n == 0 { "n" } else { "batch" },
            reason: "must be at least 1".into(),
        });
    }
    let (alpha, sigma) = prior_end(model)?;
    let dim = model.dim();
    // Each pair's class, where the model is asked for classes.
    let input = model.net().class_input();
    let classes = match input {
        None => None,
        Some(_) => Some(
            model
                .classes()
                .rows(n)
                .ok_or_else(|| Error::ShapeMismatch {
                    context: "class labels per pair",
                    expected: format!("{n} labels (one per pair) or one class for all"),
                    found: format!("{} labels", model.classes().count().unwrap_or_default()),
                })?,
        ),
    };
    let (mut latents, mut samples) = (Vec::with_capacity(n * dim), Vec::with_capacity(n * dim));
    let mut nfe = 0;
    while samples.len() < n * dim {
        let done = samples.len() / dim;
        let m = batch.min(n - done);
        let batch_model;
        let model = match &classes {
            None => model,
            Some(rows) => {
                let rows = rows[done..done + m].to_vec();
                batch_model = model.clone().with_classes(Classes::Each(rows))?;
                &batch_model
            }
        };
        let x_t = model.sample_prior(rng, m)?;
        let anchor = model.sample_anchor(rng, m)?;
        let generated = solve_ode_from(model, x_t.clone(), anchor, solver)?;
        nfe = generated.nfe;
        let noise = (x_t - generated.samples.clone().mul_scalar(alpha)).div_scalar(sigma);
        latents.extend(noise.into_data().iter::<f32>());
        samples.extend(generated.samples.into_data().iter::<f32>());
        progress(samples.len() / dim, n);
    }
    let samples = Dataset::new(samples, dim)?;
    let labels: Option<Vec<usize>> = classes.and_then(|rows| rows.into_iter().collect());
    let samples = match (labels, input) {
        (Some(labels), Some(input)) => samples.with_labels(labels, input.classes)?,
        _ => samples,
    };
    Ok(OdePairs {
        latents: Dataset::new(latents, dim)?,
        samples,
        nfe,
    })
}

/// `(α, σ)` at `t_max`, or an error where σ(t_max) cannot divide out the path noise.
fn prior_end<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
) -> Result<(f64, f64)> {
    let flow = model.flow();
    let t_max = flow.time_range().max;
    let (alpha, sigma) = (flow.alpha(t_max), flow.sigma(t_max));
    if !(sigma.is_finite() && sigma > 0.0 && alpha.is_finite()) {
        return Err(Error::InvalidArgument {
            name: "model",
            reason: format!(
                "the flow's prior end needs σ(t_max) > 0 to read the path noise of a pair \
                 (α = {alpha}, σ = {sigma})"
            ),
        });
    }
    Ok((alpha, sigma))
}

/// The *encoded* pairs of `data`: each example integrated backwards by `model`'s ODE to
/// `t_max` ([`encode_ode`], the network's anchor input zero, as a denoiser's), its latent the path noise `n = (x_T − α(T)·x)/σ(T)` of the
/// example `x` itself; `batch` at a time, `progress(done, n)` after each batch. The samples are
/// the examples (a copy of `data`). Unlike [`ode_pairs`] the images are real ones, so a student
/// of these pairs can learn to return training examples: check its samples' distance to the
/// training set against held-out data's. A class-conditional model encodes labelled data at
/// each example's class.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use integration_flow::prelude::*;
/// use integration_flow::sample::{encoded_pairs, OdeSolver};
/// let device = Default::default();
/// let net = MlpConfig::default().init::<Cpu>(&device, 0)?;
/// let flow = FlowConfig::Rf(Default::default()).init()?;
/// let model = IntegrationFlowConfig::default().init(flow, net)?;
/// let data = Toy::Moons.sample(10, 0)?;
/// let pairs = encoded_pairs(&model, &data, OdeSolver::Heun { steps: 3 }, 4, |_, _| {})?;
/// assert_eq!((pairs.latents.len(), pairs.samples.values()), (10, data.values()));
/// # }
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn encoded_pairs<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    data: &Dataset,
    solver: OdeSolver,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<OdePairs> {
    if batch == 0 {
        return Err(Error::InvalidArgument {
            name: "batch",
            reason: "must be at least 1".into(),
        });
    }
    let dim = data.dim();
    if dim != model.dim() {
        return Err(Error::ShapeMismatch {
            context: "encoded_pairs (data, model)",
            expected: format!("{} values per example", model.dim()),
            found: format!("{dim}"),
        });
    }
    let (alpha, sigma) = prior_end(model)?;
    let device = crate::backend::device_of(model.net());
    let n = data.len();
    let mut latents = Vec::with_capacity(n * dim);
    let mut nfe = 0;
    for (i, rows) in data.values().chunks(batch * dim).enumerate() {
        let m = rows.len() / dim;
        let upload = |values: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(values, [m, dim]), &device)
        };
        let x = upload(rows.to_vec());
        let anchor = upload(vec![0.0; m * dim]);
        // Labelled data is encoded by a class-conditional model at each example's class.
        let batch_model;
        let model = match (data.labels(), model.net().class_input()) {
            (Some(labels), Some(_)) => {
                let labels = &labels[i * batch..i * batch + m];
                batch_model = model
                    .clone()
                    .with_classes(Classes::each(labels.iter().copied()))?;
                &batch_model
            }
            _ => model,
        };
        let encoded = encode_ode(model, x.clone(), anchor, solver)?;
        nfe = encoded.nfe;
        let noise = (encoded.samples - x.mul_scalar(alpha)).div_scalar(sigma);
        latents.extend(noise.into_data().iter::<f32>());
        progress((i * batch + m).min(n), n);
    }
    Ok(OdePairs {
        latents: Dataset::new(latents, dim)?,
        samples: data.clone(),
        nfe,
    })
}
