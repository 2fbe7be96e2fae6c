//! Sample-quality metrics that need no pretrained weights: distances between sample sets, and
//! for images a classifier the crate trains itself with a Fréchet distance on its features.

mod class_agreement;
pub mod classifier;
mod frechet;
mod kernel;
mod sliced;

pub use class_agreement::{nearest_labels, ClassAgreement};
pub use classifier::{Classifier, ClassifierConfig, ImageScore};
pub use frechet::{frechet_distance, frechet_from_moments, moments};

pub use kernel::{energy_distance, mmd, nearest_neighbour_distance, MMD_BANDWIDTHS};
pub use sliced::{sliced_wasserstein2, wasserstein2_1d};
