//! Networks for Integration Flow: the [`IntegrationNet`] trait and its implementations.
//!
//! All data in the crate is flat, `[n, dim]`: a network that works on images reshapes inside.

mod embedding;
mod fused;
mod init;
mod mlp;
mod norm;
mod unet;

pub(crate) use fused::{adam_update, AdamStep};
use fused::{
    concat_channels, conv2d_in, normalise, self_attention, shift_channels, upsample_nearest, Layout,
};

pub use embedding::NoiseEmbedding;
pub use fused::{
    conv2d, fused_kernels, group_norm, group_norm_silu, linear_silu, scaled_softmax,
    set_fused_kernels, silu,
};
pub(crate) use init::{conv as init_conv, linear as init_linear};
pub use mlp::{Mlp, MlpConfig};
pub use unet::{AnchorInput, UNet, UNetConfig};

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

/// A network `F(c_in·x_t, c_noise, anchor)` whose output the model turns into the data estimate
/// `x̂_0 = c_skip·x_t + c_out·F`.
pub trait IntegrationNet<B: Backend>: Module<B> {
    /// Values per example of `x`, the anchor and the output.
    fn dim(&self) -> usize;

    /// `x`: the scaled noisy input `[n, dim]`; `c_noise`: the noise-level input `[n]`;
    /// `anchor`: the data estimate fed back to the network `[n, dim]`. Returns `[n, dim]`.
    fn forward(&self, x: Tensor<B, 2>, c_noise: Tensor<B, 1>, anchor: Tensor<B, 2>)
        -> Tensor<B, 2>;
}
