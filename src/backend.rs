//! Concrete backends, one per crate feature. Everything else in the crate is generic over
//! `B: Backend`; this module only names the types a user picks from.
//!
//! | feature | type | device |
//! |---|---|---|
//! | `flex` (default) | [`Flex`](burn::backend::Flex) | CPU, multi-threaded, SIMD |
//! | `ndarray` | [`NdArray`](burn::backend::NdArray) | CPU |
//! | `cuda` | [`Cuda`](burn::backend::Cuda) | NVIDIA GPU (driver loaded at run time) |
//!
//! [`Cpu`] is the default CPU backend: flex, chosen because it ran the reference training step
//! faster than ndarray (docs/benchmarks.md); without the `flex` feature it is ndarray.

/// The default CPU backend (inference).
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;
/// The default CPU backend (inference).
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray;

/// The default CPU backend with automatic differentiation (training).
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

/// The flex CPU backend.
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;

/// The ndarray CPU backend.
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray;

/// The CUDA backend (f32).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// The CUDA backend with automatic differentiation.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;
