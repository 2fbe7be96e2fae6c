//! Networks for Integration Flow: the [`IntegrationNet`] trait and its implementations.
//!
//! All data in the crate is flat, `[n, dim]`: a network that works on images reshapes inside.

mod class_input;
mod embedding;
mod fused;
mod init;
mod mlp;
mod network_config;
mod norm;
mod unet;

pub(crate) use fused::{adam_update, AdamStep};
use fused::{
    concat_channels, conv2d_in, normalise, self_attention, shift_channels, upsample_nearest, Layout,
};

pub(crate) use class_input::one_hot;
pub use class_input::ClassInput;
pub use embedding::NoiseEmbedding;
pub use fused::{
    conv2d, fused_kernels, group_norm, group_norm_silu, linear_silu, scaled_softmax,
    set_fused_kernels, silu,
};
pub(crate) use init::{conv as init_conv, linear as init_linear};
pub use mlp::{Mlp, MlpConfig};
pub use network_config::{FromNetworkConfig, NetworkConfig};
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

    /// The configuration that rebuilds this network's architecture, saved in checkpoints and
    /// exports so that a model loads without the program that made it; `None` (the default)
    /// for a network of your own, which then loads with a template you build.
    fn network_config(&self) -> Option<NetworkConfig> {
        None
    }

    /// Whether the network takes a target time besides `t` (a *flow-map* network, trained by
    /// the [`flow_map`](crate::train::objective::flow_map) objective): its output then depends
    /// on how far towards the data the estimate jumps. `false` unless the network says so.
    fn takes_target_time(&self) -> bool {
        false
    }

    /// [`forward`](Self::forward) with the target time's input `gap = (t − r)/(t_max − t_min)`
    /// `[n]` (0: the plain denoiser at `t`, 1: the jump from `t_max` to the data). Only called
    /// where [`takes_target_time`](Self::takes_target_time) is `true` (the model checks);
    /// networks without the input keep this default, which ignores `gap`.
    fn forward_to(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Tensor<B, 1>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let _ = gap;
        self.forward(x, c_noise, anchor)
    }

    /// The network's class input ([`ClassInput`]), if it takes one. `None` unless the network
    /// says so.
    fn class_input(&self) -> Option<ClassInput> {
        None
    }

    /// [`forward`](Self::forward) (`gap` `None`) or [`forward_to`](Self::forward_to) with the
    /// classes as one-hot rows `classes` `[n, K + 1]` (column K: the "no class" token). Only
    /// called where [`class_input`](Self::class_input) is `Some` (the model checks), so a
    /// network that reports a class input must implement it; the default ignores `classes`.
    fn forward_classes(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Option<Tensor<B, 1>>,
        classes: Tensor<B, 2>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let _ = classes;
        match gap {
            Some(gap) => self.forward_to(x, c_noise, gap, anchor),
            None => self.forward(x, c_noise, anchor),
        }
    }

    /// This network with the class input `input` added, its weights starting at zero, so that
    /// its output is unchanged until training moves them (a trained unconditional denoiser
    /// becomes the start of a conditional one). A network with that input already is returned
    /// as it is; one with another, or one that cannot take it, is
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    fn with_classes(self, input: ClassInput) -> crate::Result<Self>
    where
        Self: Sized,
    {
        let _ = input;
        Err(crate::Error::InvalidArgument {
            name: "network",
            reason: "this network has no class input (MlpConfig::classes or UNetConfig::classes)"
                .into(),
        })
    }

    /// This network with a target-time input added whose weights start at zero, so that its
    /// output is unchanged until training moves them (a trained denoiser becomes the start of a
    /// flow-map network). A network that has the input already is returned as it is; one that
    /// cannot take it is [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    fn with_target_time(self) -> crate::Result<Self>
    where
        Self: Sized,
    {
        Err(crate::Error::InvalidArgument {
            name: "network",
            reason: "this network has no target-time input (the flow-map objective needs one: \
                     MlpConfig::target_time or UNetConfig::target_time)"
                .into(),
        })
    }
}
