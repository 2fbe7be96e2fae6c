//! Sample-quality metrics that need no pretrained weights.

mod sliced;

pub use sliced::{sliced_wasserstein2, wasserstein2_1d};
