//! A small CNN classifier trained by the crate itself, for image metrics without downloaded
//! weights: the Fréchet distance of its penultimate features between generated and real
//! images, and the class histogram of samples (mode coverage).
//!
//! The numbers are comparable only between runs that use the same classifier (same data, seed
//! and configuration), never with FID values from other tools.

use super::frechet::{frechet_from_moments, moments};
use crate::data::{write_atomically, Images};
use crate::error::{Error, Result};
use crate::train::ImageFeatures;
use burn::module::{AutodiffModule, Module};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Width of the feature vector the Fréchet distance uses.
pub const FEATURES: usize = 128;

/// How the classifier is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Seed of the weights and the batch order.
    pub seed: u64,
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam's initial learning rate, decayed to zero along a cosine.
    pub lr: f64,
    /// The last this many images are held out to measure the test accuracy.
    pub held_out: usize,
}

impl ClassifierConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [("epochs", self.epochs), ("batch_size", self.batch_size)] {
            if value == 0 {
                return Err(crate::error::invalid_config(
                    "ClassifierConfig",
                    field,
                    "must be at least 1",
                ));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(crate::error::invalid_config(
                "ClassifierConfig",
                "lr",
                format!("must be finite and positive, got {}", self.lr),
            ));
        }
        Ok(())
    }
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            seed: 0,
            epochs: 8,
            batch_size: 64,
            lr: 2e-3,
            held_out: 1000,
        }
    }
}

/// The network: three 3×3 convolutions (16, 32, 32 channels; the last two stride 2), a
/// 128-unit feature layer, and the class layer.
#[derive(Module, Debug)]
pub struct ClassifierNet<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    conv3: Conv2d<B>,
    features: Linear<B>,
    classes: Linear<B>,
}

impl<B: Backend> ClassifierNet<B> {
    fn new(shape: [usize; 3], classes: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let [c, h, w] = shape;
        let side = |s: usize| s.div_ceil(2).div_ceil(2);
        let flat = 32 * side(h) * side(w);
        ClassifierNet {
            conv1: crate::nn::init_conv(c, 16, 3, 1, &mut rng, device, false),
            conv2: crate::nn::init_conv(16, 32, 3, 2, &mut rng, device, false),
            conv3: crate::nn::init_conv(32, 32, 3, 2, &mut rng, device, false),
            features: crate::nn::init_linear(flat, FEATURES, &mut rng, device),
            classes: crate::nn::init_linear(FEATURES, classes, &mut rng, device),
        }
    }

    /// Penultimate features `[n, 128]` and class logits `[n, classes]` of images `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let h = self.convolutions(x);
        let features = relu(self.features.forward(h.flatten(1, 3)));
        let logits = self.classes.forward(features.clone());
        (features, logits)
    }

    /// The three convolutions' activations (after the ReLU) of images `[n, c, h, w]`: the
    /// layers a perceptual distance compares.
    pub fn feature_maps(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut maps = Vec::with_capacity(3);
        self.convolutions_into(x, &mut maps);
        maps
    }

    /// The last convolution's activations (what the feature layer reads).
    fn convolutions(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.convolutions_into(x, &mut Vec::new())
    }

    /// The three convolutions with their ReLUs; each activation is also pushed to `maps`.
    fn convolutions_into(&self, x: Tensor<B, 4>, maps: &mut Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
        let mut h = x;
        for conv in [&self.conv1, &self.conv2, &self.conv3] {
            h = relu(conv.forward(h));
            maps.push(h.clone());
        }
        h
    }
}

/// What is saved beside the weights, to know whether a cached classifier fits the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Meta {
    config: ClassifierConfig,
    shape: [usize; 3],
    classes: usize,
    data_crc: u32,
    test_accuracy: f64,
    /// Seconds its training took (0 in caches written before it was recorded).
    #[serde(default)]
    train_seconds: f64,
}

/// A trained classifier, its held-out accuracy, and the feature moments of its real images.
///
/// Its convolutions also serve as the network of a perceptual training term
/// ([`ImageFeatures`]): train one with a seed of its own for that, never the one that scores
/// the samples.
#[derive(Clone, Debug)]
pub struct Classifier<B: Backend> {
    net: ClassifierNet<B>,
    meta: Meta,
}

/// Quality of generated images as the classifier sees them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    /// Fréchet distance of the penultimate features, generated vs real.
    pub fd: f64,
    /// How many samples the classifier puts in each class.
    pub class_histogram: Vec<usize>,
}

impl<B: Backend> Classifier<B> {
    /// Trains on `images` (which must carry labels), holding out the last
    /// `config.held_out` images to measure the accuracy. Training runs on the autodiff backend
    /// `A`; the result lives on its inner backend.
    pub fn train<A: AutodiffBackend<InnerBackend = B, Device = B::Device>>(
        images: &Images,
        config: &ClassifierConfig,
        device: &A::Device,
    ) -> Result<Self> {
        let labels = images.labels().ok_or(Error::InvalidArgument {
            name: "images",
            reason: "the classifier needs labelled images".into(),
        })?;
        config.validate()?;
        let classes = usize::from(labels.iter().copied().max().unwrap_or(0)) + 1;
        let (train, test) = images.split_off(config.held_out)?;
        let train_labels = train.labels().unwrap_or_default();
        let shape = images.shape();
        let dim = shape.iter().product::<usize>();
        let started = std::time::Instant::now();
        let mut net = ClassifierNet::<A>::new(shape, classes, config.seed, device);
        let mut optim = AdamConfig::new().init::<A, ClassifierNet<A>>();
        let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed);
        let mut order: Vec<usize> = (0..train.len()).collect();
        let values = train.dataset().values();
        let total = config.epochs * train.len().div_ceil(config.batch_size);
        let mut step = 0;
        for _epoch in 0..config.epochs {
            order.shuffle(&mut rng);
            for batch in order.chunks(config.batch_size) {
                // Cosine decay to zero: the last epochs settle instead of bouncing.
                let lr = config.lr
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
                step += 1;
                let mut x = Vec::with_capacity(batch.len() * dim);
                batch
                    .iter()
                    .for_each(|&i| x.extend_from_slice(&values[i * dim..(i + 1) * dim]));
                let y: Vec<i64> = batch.iter().map(|&i| i64::from(train_labels[i])).collect();
                let x = Tensor::<A, 4>::from_data(
                    TensorData::new(x, [batch.len(), shape[0], shape[1], shape[2]]),
                    device,
                );
                let y = Tensor::<A, 1, Int>::from_data(TensorData::new(y, [batch.len()]), device);
                let (_, logits) = net.forward(x);
                let loss = -log_softmax(logits, 1).gather(1, y.unsqueeze_dim(1)).mean();
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                net = optim.step(lr, net, grads);
            }
        }
        let mut classifier = Classifier {
            net: net.valid(),
            meta: Meta {
                config: config.clone(),
                shape,
                classes,
                data_crc: crc(images),
                test_accuracy: 0.0,
                train_seconds: started.elapsed().as_secs_f64(),
            },
        };
        let predicted = classifier.classify(test.dataset().values())?;
        let test_labels = test.labels().unwrap_or_default();
        let correct = predicted
            .iter()
            .zip(test_labels)
            .filter(|(p, l)| p == l)
            .count();
        classifier.meta.test_accuracy = correct as f64 / test.len() as f64;
        Ok(classifier)
    }

    /// Loads the classifier cached in `dir` if it was trained on the same images with the same
    /// configuration, else trains one and caches it there (atomically).
    pub fn load_or_train<A: AutodiffBackend<InnerBackend = B, Device = B::Device>>(
        dir: impl AsRef<Path>,
        images: &Images,
        config: &ClassifierConfig,
        device: &A::Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if let Some(cached) = Self::load(dir, device)? {
            if cached.meta.config == *config
                && cached.meta.data_crc == crc(images)
                && cached.meta.shape == images.shape()
            {
                return Ok(cached);
            }
        }
        let trained = Self::train::<A>(images, config, device)?;
        trained.save(dir)?;
        Ok(trained)
    }

    /// Writes the weights and metadata to `dir`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let weights = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .record(self.net.clone().into_record(), ())
            .map_err(|e| Error::Format {
                path: dir.join("weights.mpk"),
                reason: format!("cannot record the classifier: {e}"),
            })?;
        write_atomically(dir.join("weights.mpk"), &weights)?;
        let meta = serde_json::to_vec_pretty(&self.meta).map_err(|e| Error::Format {
            path: dir.join("meta.json"),
            reason: e.to_string(),
        })?;
        write_atomically(dir.join("meta.json"), &meta)
    }

    /// The classifier saved in `dir`, `None` if there is none; a corrupt cache is an error.
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        let (meta_path, weights_path) = (dir.join("meta.json"), dir.join("weights.mpk"));
        if !meta_path.is_file() || !weights_path.is_file() {
            return Ok(None);
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let meta: Meta = serde_json::from_slice(&read(&meta_path)?).map_err(|e| Error::Format {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .load(read(&weights_path)?, device)
            .map_err(|e| Error::Format {
                path: weights_path.clone(),
                reason: format!("cannot read the classifier weights: {e}"),
            })?;
        let net = ClassifierNet::new(meta.shape, meta.classes, 0, device).load_record(record);
        Ok(Some(Classifier { net, meta }))
    }

    /// The configuration it was trained with (its seed among it).
    pub fn config(&self) -> &ClassifierConfig {
        &self.meta.config
    }

    /// The same classifier with its parameters marked as not requiring gradients: frozen, as
    /// the network of a perceptual term should be (the backward pass then skips them).
    pub fn frozen(mut self) -> Self {
        self.net = self.net.no_grad();
        self
    }

    /// Seconds its training took, so a recipe that uses it can count them in its budget (0
    /// for a cache written before this was recorded).
    pub fn train_seconds(&self) -> f64 {
        self.meta.train_seconds
    }

    /// Accuracy on the held-out images when it was trained.
    pub fn test_accuracy(&self) -> f64 {
        self.meta.test_accuracy
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.meta.classes
    }

    /// Features `[n, 128]` (row-major) and predicted classes of flat images.
    pub fn features_and_classes(&self, values: &[f32]) -> Result<(Vec<f32>, Vec<u8>)> {
        let [c, h, w] = self.meta.shape;
        let dim = c * h * w;
        if values.is_empty() || !values.len().is_multiple_of(dim) {
            return Err(Error::ShapeMismatch {
                context: "Classifier input",
                expected: format!("a positive multiple of {dim} values"),
                found: format!("{} values", values.len()),
            });
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                context: "Classifier input",
                value: f64::from(*v),
            });
        }
        const BATCH: usize = 500;
        let device = crate::backend::device_of(&self.net);
        let mut features = Vec::with_capacity(values.len() / dim * FEATURES);
        let mut classes = Vec::with_capacity(values.len() / dim);
        for chunk in values.chunks(BATCH * dim) {
            let n = chunk.len() / dim;
            let x =
                Tensor::<B, 4>::from_data(TensorData::new(chunk.to_vec(), [n, c, h, w]), &device);
            let (f, logits) = self.net.forward(x);
            features.extend(f.into_data().iter::<f32>());
            classes.extend(
                logits
                    .argmax(1)
                    .into_data()
                    .iter::<i64>()
                    .map(|k| k.clamp(0, 255) as u8),
            );
        }
        Ok((features, classes))
    }

    /// Predicted classes of flat images.
    pub fn classify(&self, values: &[f32]) -> Result<Vec<u8>> {
        Ok(self.features_and_classes(values)?.1)
    }

    /// The Fréchet distance between the features of `samples` and of `real` images, and the
    /// class histogram of the samples.
    pub fn score(&self, samples: &[f32], real: &[f32]) -> Result<ImageScore> {
        let (f_samples, classes) = self.features_and_classes(samples)?;
        let (f_real, _) = self.features_and_classes(real)?;
        let (mu_s, cov_s) = moments(&f_samples, FEATURES, "classifier features (samples)")?;
        let (mu_r, cov_r) = moments(&f_real, FEATURES, "classifier features (real)")?;
        let mut class_histogram = vec![0; self.meta.classes];
        for c in classes {
            if let Some(slot) = class_histogram.get_mut(usize::from(c)) {
                *slot += 1;
            }
        }
        Ok(ImageScore {
            fd: frechet_from_moments(&mu_s, &cov_s, &mu_r, &cov_r)?,
            class_histogram,
        })
    }
}

fn crc(images: &Images) -> u32 {
    let mut hasher = images.dataset().crc_hasher();
    if let Some(labels) = images.labels() {
        hasher.update(labels);
    }
    hasher.finalize()
}

impl<B: Backend> ImageFeatures<B> for Classifier<B> {
    fn image_shape(&self) -> [usize; 3] {
        self.meta.shape
    }

    fn feature_maps(&self, images: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        self.net.feature_maps(images)
    }

    fn boxed_clone(&self) -> Box<dyn ImageFeatures<B>> {
        Box::new(self.clone())
    }
}
