//! Fused CPU kernels for the flex backend, apart from the backend-generic networks.
//!
//! Each op here is a function generic over `B: Backend` that takes a fused path when `B` is
//! `Flex` or `Autodiff<Flex>` with `f32` data (reached by a downcast in `flex_ops`, so callers
//! need no extra trait bound) and burn's own composition on every other backend. The kernels
//! and their autodiff glue are internal; the ops are the public surface.

#[cfg(feature = "flex")]
mod flex_ops;
mod linear_silu;
mod silu;

pub use linear_silu::linear_silu;
pub use silu::silu;
