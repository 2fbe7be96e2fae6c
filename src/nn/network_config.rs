//! Which network a saved model holds: [`NetworkConfig`] names the architecture and its settings,
//! so that a checkpoint or an export rebuilds the network without the program that trained it.

use super::{IntegrationNet, Mlp, MlpConfig, UNet, UNetConfig};
use crate::error::{Error, Result};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// The configuration of one of the crate's networks, as saved beside its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NetworkConfig {
    /// An [`Mlp`].
    Mlp(MlpConfig),
    /// A [`UNet`].
    #[serde(rename = "unet")]
    UNet(UNetConfig),
}

impl NetworkConfig {
    /// The architecture's name (`mlp`, `unet`).
    pub fn name(&self) -> &'static str {
        match self {
            NetworkConfig::Mlp(_) => "mlp",
            NetworkConfig::UNet(_) => "unet",
        }
    }

    /// Values per example of the network's input and output.
    pub fn dim(&self) -> usize {
        match self {
            NetworkConfig::Mlp(config) => config.dim,
            NetworkConfig::UNet(config) => config.dim(),
        }
    }

    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        match self {
            NetworkConfig::Mlp(config) => config.validate(),
            NetworkConfig::UNet(config) => config.validate(),
        }
    }
}

/// A network that a [`NetworkConfig`] builds: what loading a saved model needs
/// ([`IntegrationFlow::load`](crate::model::IntegrationFlow::load)). The weights are drawn from
/// a fixed seed; loading replaces them.
pub trait FromNetworkConfig<B: Backend>: IntegrationNet<B> + Sized {
    /// The network `config` describes, or [`Error::InvalidArgument`] naming the architecture
    /// saved where it is not this type's.
    fn from_network_config(config: &NetworkConfig, device: &B::Device) -> Result<Self>;
}

fn other_architecture(saved: &NetworkConfig, wanted: &str) -> Error {
    Error::InvalidArgument {
        name: "network",
        reason: format!(
            "the saved model holds a network of kind {:?}; load it with that network type, not \
             {wanted}",
            saved.name()
        ),
    }
}

impl<B: Backend> FromNetworkConfig<B> for Mlp<B> {
    fn from_network_config(config: &NetworkConfig, device: &B::Device) -> Result<Self> {
        match config {
            NetworkConfig::Mlp(config) => config.init(device, 0),
            NetworkConfig::UNet(_) => Err(other_architecture(config, "Mlp")),
        }
    }
}

impl<B: Backend> FromNetworkConfig<B> for UNet<B> {
    fn from_network_config(config: &NetworkConfig, device: &B::Device) -> Result<Self> {
        match config {
            NetworkConfig::UNet(config) => config.init(device, 0),
            NetworkConfig::Mlp(_) => Err(other_architecture(config, "UNet")),
        }
    }
}
