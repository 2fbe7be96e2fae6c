//! A perceptual term for image models: the distance between the estimate and its target as a
//! frozen image network sees them, added to the pixel distance of the loss.
//!
//! A pixel distance judges every pixel alone, so a student that cannot place a stroke exactly
//! is pulled to the mean of where it might be: a blur. A feature network compares local
//! structure (edges, strokes, their arrangement), which the mean of several placements lacks.
//! The distance is LPIPS's without its learned weights (Zhang et al. 2018): each layer's
//! activations are normalised to unit length over the channels at every position, and the
//! squared difference is averaged over positions and summed over layers.
//!
//! The network is supplied to the trainer
//! ([`Trainer::with_perceptual_features`](super::Trainer::with_perceptual_features)); the
//! weight of the term is part of the [`TrainConfig`](super::TrainConfig), so a checkpoint
//! records it and a resumed run without the network is an error, not a silently different
//! loss. A network that also scores the samples (the classifier of an FD) would let training
//! optimise the measurement: use one trained separately.

use crate::error::{invalid_config, require_finite, require_image_rows, Error, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// The perceptual term's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerceptualConfig {
    /// Weight of the mean perceptual distance beside the pixel loss (which keeps weight 1).
    pub weight: f64,
}

impl Default for PerceptualConfig {
    fn default() -> Self {
        PerceptualConfig { weight: 1.0 }
    }
}

impl PerceptualConfig {
    /// Checks the weight; the error names `config` and `field` (where the settings sit).
    pub fn check(&self, config: &'static str, field: &'static str) -> Result<()> {
        require_finite(config, field, self.weight)?;
        if self.weight <= 0.0 {
            return Err(invalid_config(
                config,
                field,
                format!(
                    "must be positive (leave the term out for none), got {}",
                    self.weight
                ),
            ));
        }
        Ok(())
    }
}

/// A frozen image network whose intermediate activations the perceptual distance compares.
///
/// Its parameters are not trained (the optimizer only sees the model's); implementations should
/// mark them as not requiring gradients so the backward pass does not compute them.
pub trait ImageFeatures<B: Backend>: Send {
    /// The image shape `[channels, height, width]` the network takes; rows of the training data
    /// are reshaped to it.
    fn image_shape(&self) -> [usize; 3];

    /// The activations `[n, c_l, h_l, w_l]` of each compared layer for images `[n, c, h, w]`.
    fn feature_maps(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>>;

    /// A copy of the network behind a new box (the trainer and a pipeline each hold one).
    fn boxed_clone(&self) -> Box<dyn ImageFeatures<B>>;
}

/// Per-example perceptual distance `[n, 1]` between image rows `x` and `y` (`[n, dim]`) in the
/// layers of `features`; a [`ShapeMismatch`](Error::ShapeMismatch) where the rows are not its
/// images.
pub fn perceptual_distance<B: Backend>(
    features: &dyn ImageFeatures<B>,
    x: Tensor<B, 2>,
    y: Tensor<B, 2>,
) -> Result<Tensor<B, 2>> {
    let [n, dim] = x.dims();
    let [c, h, w] = features.image_shape();
    require_image_rows("perceptual features and data", [c, h, w], dim)?;
    // One pass over both halves: the network sees 2n images.
    let images = Tensor::cat(vec![x, y], 0).reshape([2 * n, c, h, w]);
    let mut total: Option<Tensor<B, 2>> = None;
    for layer in features.feature_maps(images) {
        let [_, channels, lh, lw] = layer.dims();
        // Unit length over the channels at each position; ε keeps dead positions finite.
        let norm = layer
            .clone()
            .powi_scalar(2)
            .sum_dim(1)
            .add_scalar(1e-10)
            .sqrt();
        let unit = layer / norm;
        let a = unit.clone().narrow(0, 0, n);
        let b = unit.narrow(0, n, n);
        let d = (a - b)
            .powi_scalar(2)
            .reshape([n, channels * lh * lw])
            .sum_dim(1)
            .div_scalar((lh * lw) as f64);
        total = Some(match total {
            Some(t) => t + d,
            None => d,
        });
    }
    total.ok_or_else(|| Error::InvalidArgument {
        name: "features",
        reason: "the perceptual network returned no feature maps".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};
    use burn::tensor::TensorData;

    /// Two fixed "layers": the image itself and its 2×2 average pool, as two channels each
    /// (the image and its negation), so channel normalisation has something to normalise.
    #[derive(Clone)]
    struct Toy;

    impl<B: Backend> ImageFeatures<B> for Toy {
        fn image_shape(&self) -> [usize; 3] {
            [1, 2, 2]
        }
        fn feature_maps(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
            let two = |t: Tensor<B, 4>| Tensor::cat(vec![t.clone(), t.neg().add_scalar(1.0)], 1);
            let pooled = images.clone().mean_dim(2).mean_dim(3);
            vec![two(images), two(pooled)]
        }
        fn boxed_clone(&self) -> Box<dyn ImageFeatures<B>> {
            Box::new(Toy)
        }
    }

    fn rows<B: Backend>(values: &[f32]) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len() / 4, 4]),
            &Default::default(),
        )
    }

    #[test]
    fn identical_images_are_at_zero_and_different_ones_are_not() {
        let x = rows::<Cpu>(&[0.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0]);
        let y = rows::<Cpu>(&[0.0, 1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 0.0]);
        let d = perceptual_distance(&Toy, x, y).unwrap();
        let d = d.into_data().to_vec::<f32>().unwrap();
        assert_eq!(d.len(), 2);
        assert!(d[0].abs() < 1e-6, "{d:?}");
        // Second row: the last pixel's channels (x, 1 − x) go from (1, 0) to (0, 1), squared
        // distance 2 averaged over 4 positions; the pooled channels (1, 0) against
        // (0.75, 0.25) normalised.
        let a = (1.0f32, 0.0f32);
        let b = (0.75f32 / 0.625f32.sqrt(), 0.25f32 / 0.625f32.sqrt());
        let pool = (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2);
        let expected = 2.0 / 4.0 + pool;
        assert!((d[1] - expected).abs() < 1e-5, "{} vs {expected}", d[1]);
    }

    #[test]
    fn gradient_reaches_the_estimate() {
        let x = rows::<CpuAutodiff>(&[0.2, 0.4, 0.6, 0.8]).require_grad();
        let y = rows::<CpuAutodiff>(&[0.8, 0.6, 0.4, 0.2]);
        let d = perceptual_distance(&Toy, x.clone(), y).unwrap().sum();
        let grads = d.backward();
        let g = x.grad(&grads).unwrap().to_data().to_vec::<f32>().unwrap();
        assert!(g.iter().any(|v| v.abs() > 1e-4), "{g:?}");
    }

    #[test]
    fn a_wrong_image_shape_is_an_error() {
        let x = rows::<Cpu>(&[0.0; 8]).reshape([1, 8]);
        let err = perceptual_distance(&Toy, x.clone(), x).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }

    #[test]
    fn the_weight_must_be_positive_and_finite() {
        for weight in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                PerceptualConfig { weight }.check("T", "w").is_err(),
                "{weight}"
            );
        }
        assert!(PerceptualConfig { weight: 0.5 }.check("T", "w").is_ok());
    }
}
