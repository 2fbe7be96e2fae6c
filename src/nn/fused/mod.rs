//! Fused CPU kernels for the flex backend, apart from the backend-generic networks.
//!
//! Each op here is a function generic over `B: Backend` that takes a fused path when `B` is
//! `Flex` or `Autodiff<Flex>` with `f32` data (reached by a downcast in `flex_ops`, so callers
//! need no extra trait bound) and burn's own composition on every other backend. The kernels
//! and their autodiff glue are internal; the ops are the public surface.

mod adam;
mod attention;
mod concat;
mod conv2d;
mod exp;
#[cfg(feature = "flex")]
mod flex_ops;
mod group_norm;
mod layout;
mod linear_silu;
#[cfg(feature = "flex")]
mod scratch;
mod shift;
mod silu;
mod softmax;
#[cfg(feature = "flex")]
mod transpose;
mod upsample;
#[cfg(feature = "flex")]
mod winograd;

pub(crate) use adam::{adam_update, AdamStep};
pub(crate) use attention::self_attention;
pub(crate) use concat::concat_channels;
pub use conv2d::conv2d;
pub(crate) use conv2d::conv2d_in;
pub(crate) use group_norm::normalise;
pub use group_norm::{group_norm, group_norm_silu};
pub(crate) use layout::Layout;
pub use linear_silu::linear_silu;
pub(crate) use shift::shift_channels;
pub use silu::silu;
pub use softmax::scaled_softmax;
pub(crate) use upsample::upsample_nearest;

use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused flex kernels of [`silu`], [`linear_silu`], [`conv2d`], [`group_norm`],
/// [`group_norm_silu`] and [`scaled_softmax`] on or off for the
/// whole process (on by default). Off, every op takes burn's own composition on every backend:
/// the reference the fused kernels are tested against, and a way to rule them out when a
/// result looks wrong. The switch is global, so flip it only where nothing else is training.
///
/// ```
/// use integration_flow::nn::{fused_kernels, set_fused_kernels};
/// set_fused_kernels(false);
/// assert!(!fused_kernels());
/// set_fused_kernels(true);
/// ```
pub fn set_fused_kernels(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the fused flex kernels are on (see [`set_fused_kernels`]).
pub fn fused_kernels() -> bool {
    ENABLED.load(Ordering::Relaxed)
}
