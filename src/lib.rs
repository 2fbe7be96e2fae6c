//! # integration-flow
//!
//! Integration Flow: one-step generative models over the classical probability-flow ODE
//! families (VP and VE diffusion, rectified flow, PFGM++), on any [burn] backend.
//!
//! An ODE generator moves a prior sample `x_T` to data `x_0` by integrating a velocity field,
//! one network call per step. Integration Flow learns the *result* of the integration instead:
//! the network receives an estimate of `x_0`, the *anchor*, and predicts
//! `x̂_0 = c_skip·x_t + c_out·F(c_in·x_t, c_noise, anchor)`, so one call generates.
//!
//! What is here (docs/design.md has the architecture and how to extend each part):
//!
//! - [`flow`]: the [`ProbabilityFlow`](flow::ProbabilityFlow) trait and the four families
//!   [`Vp`](flow::Vp), [`Ve`](flow::Ve), [`RectifiedFlow`](flow::RectifiedFlow) and
//!   [`PfgmPP`](flow::PfgmPP), the registry [`FlowConfig`](flow::FlowConfig), the
//!   preconditioning in the papers' integral form and EDM's, and [`flow::check`], the
//!   self-check for a family of your own;
//! - [`coupling`]: how each training example gets its anchor, the
//!   [`Coupling`](coupling::Coupling) trait with one file per built-in (optimal transport, the
//!   default; its principal-subspace variant; the papers' rules; none), the anchor laws and the
//!   anchor store;
//! - [`model`]: [`IntegrationFlow`](model::IntegrationFlow), a flow's preconditioning around a
//!   network from [`nn`] (an MLP, a UNet);
//! - [`train`]: the [`Trainer`](train::Trainer) with EMA, atomic checkpoints, exact resume, a
//!   divergence guard and Ctrl-C that checkpoints;
//! - [`saved`]: [`IntegrationFlow::load`](model::IntegrationFlow::load) of a checkpoint or an
//!   export without the training data, and the export (safetensors weights and a JSON card);
//! - [`sample`]: one-step generation, anchor iteration, re-noising and the classical ODE
//!   solvers (Euler, Heun, RK4, DOPRI5) on the same model;
//! - [`data`] (toy 2-D sets, image loaders), [`metrics`] (sliced W2, energy distance, MMD, a
//!   classifier Fréchet distance) and, behind the default `eval` feature, `compare` and `plot`;
//! - [`config`]: every configuration is a burn [`Config`](config::Config) with
//!   [`validate`](config::ValidatedConfig::validate) and JSON loading that names the field;
//! - [`backend`]: the concrete backends behind the `flex` (default), `ndarray` and `cuda`
//!   features; [`Error`]: the one error type.
//!
//! ```
//! # #[cfg(any(feature = "flex", feature = "ndarray"))] {
//! use integration_flow::prelude::*;
//! use rand::{rngs::StdRng, SeedableRng};
//!
//! let flow = VpConfig::default().init()?;
//! let device = Default::default();
//! let mut rng = StdRng::seed_from_u64(7);
//! let x0 = burn::tensor::Tensor::<Cpu, 2>::zeros([3, 2], &device);
//! let noise = flow.noise::<Cpu, 2>(&mut rng, [3, 2], &device)?;
//! let x_t = flow.interpolate(x0, noise, &[0.1, 0.5, 0.9])?;
//! assert_eq!(x_t.dims(), [3, 2]);
//! # }
//! # Ok::<(), integration_flow::Error>(())
//! ```
#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "eval")]
pub mod compare;
pub mod config;
pub mod coupling;
pub mod data;
pub mod error;
pub mod flow;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod pipeline;
#[cfg(feature = "eval")]
pub mod plot;
pub mod sample;
pub mod saved;
pub mod train;

pub use error::{Error, Result};

/// The burn this crate is built on (0.21), so that a program uses the same version without a
/// dependency line of its own: `integration_flow::burn::tensor::Tensor`.
pub use burn;
/// The rand this crate's samplers take (0.10): `integration_flow::rand::SeedableRng`.
pub use rand;

/// The names most programs need: the README's training program compiles with this import
/// alone. It leaves std's `Result` alone (the crate's is `integration_flow::Result`), so
/// `fn main() -> Result<(), Box<dyn std::error::Error>>` still means std's.
pub mod prelude {
    #[cfg(any(feature = "flex", feature = "ndarray"))]
    pub use crate::backend::{Cpu, CpuAutodiff};
    pub use crate::config::{Config, ValidatedConfig};
    pub use crate::coupling::{AnchorLaw, Coupling};
    pub use crate::data::{Dataset, Toy};
    pub use crate::error::Error;
    pub use crate::flow::{
        FlowConfig, Parameterization, PfgmPP, PfgmPPConfig, ProbabilityFlow, ProbabilityFlowExt,
        RectifiedFlow, RectifiedFlowConfig, TimeDistribution, Ve, VeConfig, Vp, VpConfig,
    };
    pub use crate::model::{Classes, IntegrationFlow, IntegrationFlowConfig};
    pub use crate::nn::{ClassInput, Mlp, MlpConfig, UNet, UNetConfig};
    pub use crate::saved::Precision;
    pub use crate::train::{TrainConfig, Trainer};
    pub use burn::tensor::Tensor;
    pub use rand::rngs::StdRng;
    pub use rand::SeedableRng;
}

/// The README's code examples, compiled and run as doc tests.
#[cfg(all(doctest, any(feature = "flex", feature = "ndarray")))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
