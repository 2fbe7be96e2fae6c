//! Sample-quality metrics that need no pretrained weights.

mod kernel;
mod sliced;

pub use kernel::{energy_distance, mmd, nearest_neighbour_distance, MMD_BANDWIDTHS};
pub use sliced::{sliced_wasserstein2, wasserstein2_1d};
