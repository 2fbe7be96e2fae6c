//! Embedding of the scalar noise level `c_noise` into a vector the network can use.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How `c_noise` is embedded: `[cos(2π·f·c), sin(2π·f·c)]` for a set of frequencies `f`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NoiseEmbedding {
    /// Transformer/DDPM positional embedding of `scale·c`: angular frequencies
    /// `max_period^(−k/half)`, k = 0..half.
    Sinusoidal {
        /// Embedding width (even).
        dim: usize,
        /// Multiplies `c_noise` first (1000 maps t ∈ [0, 1] to DDPM's step range).
        scale: f64,
        /// The longest period.
        max_period: f64,
    },
    /// Random Fourier features: frequencies `f ~ N(0, scale²)` drawn with `seed`.
    RandomFourier {
        /// Embedding width (even).
        dim: usize,
        /// Standard deviation of the frequencies.
        scale: f64,
        /// Seed of the frequencies (part of the model: keep it with the weights).
        seed: u64,
    },
}

impl Default for NoiseEmbedding {
    fn default() -> Self {
        NoiseEmbedding::sinusoidal(1000.0)
    }
}

impl NoiseEmbedding {
    /// The largest angular frequency (per unit of `t`) of a time embedding smooth enough for
    /// the [`flow_map`](crate::train::objective::flow_map) objective, which differentiates the
    /// network in `t`: the default's 1000 makes it diverge (docs/training.md).
    pub const SMOOTH_SCALE: f64 = 5.0;

    /// The sinusoidal embedding of the default's width (32) and longest period (10,000), its
    /// largest angular frequency `scale` per unit of `c_noise` (the default's is 1000).
    ///
    /// ```
    /// use integration_flow::nn::NoiseEmbedding;
    /// let smooth = NoiseEmbedding::sinusoidal(NoiseEmbedding::SMOOTH_SCALE);
    /// assert_eq!(smooth.dim(), NoiseEmbedding::default().dim());
    /// ```
    pub fn sinusoidal(scale: f64) -> Self {
        NoiseEmbedding::Sinusoidal {
            dim: 32,
            scale,
            max_period: 10_000.0,
        }
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        match *self {
            NoiseEmbedding::Sinusoidal { dim, .. } | NoiseEmbedding::RandomFourier { dim, .. } => {
                dim
            }
        }
    }

    /// `Ok` if the width is even and positive and the scales finite and positive.
    pub fn validate(&self) -> crate::Result<()> {
        const NAME: &str = "NoiseEmbedding";
        let dim = self.dim();
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(crate::error::invalid_config(
                NAME,
                "dim",
                format!("must be even and positive, got {dim}"),
            ));
        }
        let (field, value) = match *self {
            NoiseEmbedding::Sinusoidal {
                scale, max_period, ..
            } => {
                if !(max_period.is_finite() && max_period > 1.0) {
                    return Err(crate::error::invalid_config(
                        NAME,
                        "max_period",
                        format!("must be > 1, got {max_period}"),
                    ));
                }
                ("scale", scale)
            }
            NoiseEmbedding::RandomFourier { scale, .. } => ("scale", scale),
        };
        if !(value.is_finite() && value > 0.0) {
            return Err(crate::error::invalid_config(
                NAME,
                field,
                format!("must be finite and positive, got {value}"),
            ));
        }
        Ok(())
    }

    /// The angular frequencies (radians per unit of `c_noise`), `dim/2` of them.
    pub(crate) fn frequencies(&self) -> Vec<f32> {
        match *self {
            NoiseEmbedding::Sinusoidal {
                dim,
                scale,
                max_period,
            } => {
                let half = dim / 2;
                (0..half)
                    .map(|k| (scale * (-(max_period.ln()) * k as f64 / half as f64).exp()) as f32)
                    .collect()
            }
            NoiseEmbedding::RandomFourier { dim, scale, seed } => {
                let mut rng = StdRng::seed_from_u64(seed);
                (0..dim / 2)
                    .map(|_| {
                        let f: f64 = StandardNormal.sample(&mut rng);
                        (2.0 * std::f64::consts::PI * scale * f) as f32
                    })
                    .collect()
            }
        }
    }
}

/// `[cos(c·ω), sin(c·ω)]`, `[n, 2·len(ω)]`, for `c_noise` `[n]` and frequencies ω.
pub(crate) fn embed<B: Backend>(c_noise: Tensor<B, 1>, frequencies: &[f32]) -> Tensor<B, 2> {
    let device = c_noise.device();
    let omega = Tensor::<B, 2>::from_data(
        TensorData::new(frequencies.to_vec(), [1, frequencies.len()]),
        &device,
    );
    let angles = c_noise.unsqueeze_dim::<2>(1) * omega;
    Tensor::cat(vec![angles.clone().cos(), angles.sin()], 1)
}

/// The embedding of `c_noise`, followed by that of the target-time `gap` where there is one
/// (flow-map networks): `[n, 2·len(ω)]` or `[n, 4·len(ω)]`.
pub(crate) fn embed_times<B: Backend>(
    c_noise: Tensor<B, 1>,
    gap: Option<Tensor<B, 1>>,
    frequencies: &[f32],
) -> Tensor<B, 2> {
    match gap {
        None => embed(c_noise, frequencies),
        Some(gap) => Tensor::cat(
            vec![embed(c_noise, frequencies), embed(gap, frequencies)],
            1,
        ),
    }
}

/// The target-time input of a network call given `gap` or not: none without the input, and
/// for a flow-map network's call without a gap the denoiser's (gap 0).
pub(crate) fn gap_input<B: Backend>(
    target_time: bool,
    gap: Option<Tensor<B, 1>>,
    c_noise: &Tensor<B, 1>,
) -> Option<Tensor<B, 1>> {
    match target_time {
        true => Some(gap.unwrap_or_else(|| c_noise.zeros_like())),
        false => None,
    }
}

/// `layer` taking `extra` more inputs after its own, their weights zero: the layer's output is
/// unchanged by them until training moves those weights.
pub(crate) fn with_zero_inputs<B: Backend>(
    layer: burn::nn::Linear<B>,
    extra: usize,
) -> burn::nn::Linear<B> {
    let at = layer.weight.val().dims()[0];
    with_zero_inputs_at(layer, at, extra)
}

/// `layer` taking `extra` more inputs inserted before its input `at` (its inputs from `at` on
/// move up), their weights zero: the output is unchanged by them until training moves them.
pub(crate) fn with_zero_inputs_at<B: Backend>(
    layer: burn::nn::Linear<B>,
    at: usize,
    extra: usize,
) -> burn::nn::Linear<B> {
    let weight = layer.weight.val();
    let [d_in, d_out] = weight.dims();
    let device = weight.device();
    let zeros = Tensor::zeros([extra, d_out], &device);
    let parts = match at >= d_in {
        true => vec![weight, zeros],
        false => vec![
            weight.clone().narrow(0, 0, at),
            zeros,
            weight.narrow(0, at, d_in - at),
        ],
    };
    burn::nn::Linear {
        weight: burn::module::Param::from_tensor(Tensor::cat(parts, 0).detach()),
        bias: layer.bias,
    }
}
