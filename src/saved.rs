//! Saved models for inference: load the EMA model of a checkpoint or of an export without the
//! data it trained on, and export a model as `model.safetensors` (the weights, in the format
//! other frameworks read) beside `model.json` (its [`ModelCard`]: everything that rebuilds
//! the model, and how it was trained).
//!
//! ```
//! # #[cfg(any(feature = "flex", feature = "ndarray"))] {
//! use integration_flow::prelude::*;
//! use integration_flow::nn::Mlp;
//! use integration_flow::saved::Precision;
//!
//! let device = Default::default();
//! let net = MlpConfig { width: 32, depth: 2, ..Default::default() }.init::<Cpu>(&device, 0)?;
//! let flow = FlowConfig::Rf(Default::default()).init()?;
//! let model = IntegrationFlowConfig { sigma_data: Some(1.0), ..Default::default() }.init(flow, net)?;
//! let dir = std::env::temp_dir().join("integration_flow_saved_doc");
//! model.export(&dir, Precision::F32)?;
//! let loaded = IntegrationFlow::<Cpu, Mlp<Cpu>>::load(&dir, &device)?;
//! assert_eq!(loaded.sigma_data(), model.sigma_data());
//! # }
//! # Ok::<(), integration_flow::Error>(())
//! ```

use crate::coupling::AnchorLaw;
use crate::data::write_atomically;
use crate::error::{Error, Result};
use crate::flow::{FlowConfig, Parameterization, ProbabilityFlow};
use crate::model::{IntegrationFlow, IntegrationFlowConfig};
use crate::nn::{FromNetworkConfig, IntegrationNet, NetworkConfig};
use crate::train::{
    checkpoint_path, param_shapes, read_ema, CheckpointModel, RecordBytes, TrainConfig, Trainer,
};
use burn::module::{AutodiffModule, Module};
use burn::record::Recorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn_store::{HalfPrecisionAdapter, ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The version of the card's layout; a card of another is refused.
pub const CARD_FORMAT: u32 = 1;

/// The card's file name in an export directory.
pub const CARD_FILE: &str = "model.json";

/// The weights' file name in an export directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// How the exported weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats, as trained.
    #[default]
    F32,
    /// 16-bit floats (half the size; the weights of linear, convolution and normalisation
    /// layers), widened to 32 bits when loaded.
    F16,
}

/// How an exported model was trained, where it came from a trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// The run's configuration (a `TrainConfig` as JSON: kept as written, so that a card stays
    /// readable when the configuration's fields change).
    pub config: serde_json::Value,
    /// The coupling's name.
    pub coupling: String,
    /// Steps trained.
    pub step: usize,
    /// Examples and values per example of the training data.
    pub data_shape: [usize; 2],
    /// CRC-32 of the training data's values.
    pub data_crc: u32,
}

/// Everything that rebuilds a saved model besides its weights (`model.json` of an export).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// [`CARD_FORMAT`] of the crate that wrote it.
    pub format: u32,
    /// The version of the crate that wrote it (empty for a card read from a checkpoint).
    pub crate_version: String,
    /// The flow's name.
    pub flow: String,
    /// The built-in flow's configuration (`None` for a flow of your own: give it to
    /// [`IntegrationFlow::load_with`]).
    pub flow_config: Option<FlowConfig>,
    /// The preconditioning form.
    pub parameterization: Parameterization,
    /// The data's standard deviation the model was built with.
    pub sigma_data: f64,
    /// The law of the anchors sampling starts from.
    pub anchor_law: AnchorLaw,
    /// The network's configuration (`None` for a network of your own: give a template to
    /// [`IntegrationFlow::load_with`]).
    pub network: Option<NetworkConfig>,
    /// The shape of every parameter, in the network's order: checked before weights load.
    pub param_shapes: Vec<Vec<usize>>,
    /// How the weights are stored.
    pub precision: Precision,
    /// How it was trained (`None` for a model exported without its trainer).
    pub training: Option<TrainingRecord>,
}

impl ModelCard {
    /// The card of the model saved at `path`: an export directory (`model.json`) or a run's
    /// checkpoint directory (`checkpoint.ifc`).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Ok(read_saved(path.as_ref())?.0)
    }

    fn of_checkpoint(model: &CheckpointModel) -> Result<Self> {
        Ok(ModelCard {
            format: CARD_FORMAT,
            crate_version: String::new(),
            flow: model.flow.clone(),
            flow_config: model.flow_config.clone(),
            parameterization: model.parameterization,
            sigma_data: model.sigma_data,
            anchor_law: model.anchor_law.clone(),
            network: model.network.clone(),
            param_shapes: model.param_shapes.clone(),
            precision: Precision::F32,
            training: Some(TrainingRecord {
                config: training_json(&model.config)?,
                coupling: model.coupling.clone(),
                step: model.step,
                data_shape: model.data_shape,
                data_crc: model.data_crc,
            }),
        })
    }

    fn describe<B: Backend, N: IntegrationNet<B>>(
        model: &IntegrationFlow<B, N>,
        precision: Precision,
        training: Option<TrainingRecord>,
    ) -> Self {
        ModelCard {
            format: CARD_FORMAT,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            flow: model.flow().name().to_string(),
            flow_config: model.flow().flow_config(),
            parameterization: model.parameterization(),
            sigma_data: model.sigma_data(),
            anchor_law: model.anchor_law(),
            network: model.net().network_config(),
            param_shapes: param_shapes(model.net()),
            precision,
            training,
        }
    }

    /// The flow the card describes, or the one given for a flow of your own (checked against
    /// the card's where both exist).
    fn flow(&self, given: Option<Arc<dyn ProbabilityFlow>>) -> Result<Arc<dyn ProbabilityFlow>> {
        let mismatch = |reason: String| Error::InvalidArgument {
            name: "flow",
            reason,
        };
        match (given, &self.flow_config) {
            (Some(flow), saved) => {
                if flow.name() != self.flow {
                    return Err(mismatch(format!(
                        "the saved model's flow is {:?}, the one given {:?}",
                        self.flow,
                        flow.name()
                    )));
                }
                if let Some(difference) = saved
                    .as_ref()
                    .and_then(|saved| saved.difference(flow.flow_config().as_ref()))
                {
                    return Err(mismatch(difference));
                }
                Ok(flow)
            }
            (None, Some(config)) => config.init(),
            (None, None) => Err(mismatch(format!(
                "the saved model's flow {:?} is one of your own: give it to \
                 IntegrationFlow::load_with",
                self.flow
            ))),
        }
    }
}

/// Where a saved model's weights are.
enum Weights {
    /// An export's safetensors file.
    Safetensors(PathBuf),
    /// A checkpoint's EMA record bytes, and the checkpoint file (for errors).
    Record(Vec<u8>, PathBuf),
}

/// The card and the weights of the model saved at `path` (read once).
fn read_saved(path: &Path) -> Result<(ModelCard, Weights)> {
    let card = path.join(CARD_FILE);
    if card.is_file() {
        let weights = Weights::Safetensors(path.join(WEIGHTS_FILE));
        return Ok((read_card(&card)?, weights));
    }
    if checkpoint_path(path).is_file() {
        let model = read_ema(path)?;
        let card = ModelCard::of_checkpoint(&model)?;
        return Ok((card, Weights::Record(model.ema, checkpoint_path(path))));
    }
    Err(Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no saved model here (neither {CARD_FILE} nor a checkpoint)"),
        ),
    })
}

fn training_json(config: &TrainConfig) -> Result<serde_json::Value> {
    serde_json::to_value(config).map_err(|e| Error::InvalidArgument {
        name: "config",
        reason: format!("cannot record the training configuration: {e}"),
    })
}

fn read_card(path: &Path) -> Result<ModelCard> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let card: ModelCard = serde_json::from_slice(&bytes).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        reason: format!("not a model card: {e}"),
    })?;
    if card.format != CARD_FORMAT {
        return Err(Error::Format {
            path: path.to_path_buf(),
            reason: format!("card format {} is not {CARD_FORMAT}", card.format),
        });
    }
    Ok(card)
}

impl<B: Backend, N: IntegrationNet<B>> IntegrationFlow<B, N> {
    /// The model saved at `path` (an export directory or a run's checkpoint directory, whose EMA
    /// weights it takes), rebuilt from its card alone: no training data, no autodiff. The
    /// network type must be the saved one (`Mlp<B>` or `UNet<B>`, [`ModelCard::network`]).
    /// For a flow or network of your own use [`load_with`](Self::load_with).
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self>
    where
        N: FromNetworkConfig<B>,
    {
        let (card, weights) = read_saved(path.as_ref())?;
        let config = card
            .network
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument {
                name: "network",
                reason: "the saved model does not record its network's configuration (a network \
                     of your own, or a checkpoint older than the record): give a template to \
                     IntegrationFlow::load_with"
                    .into(),
            })?;
        let net = N::from_network_config(config, device)?;
        Self::assemble_saved(card, weights, net, None)
    }

    /// [`load`](Self::load) with the network's architecture given by `template` (its weights
    /// are replaced; its parameter shapes must be the saved ones) and, for a flow of your own,
    /// the flow (checked against the saved one where the card records it; not self-checked
    /// again: it was accepted when the model was trained).
    pub fn load_with(
        path: impl AsRef<Path>,
        template: N,
        flow: Option<Arc<dyn ProbabilityFlow>>,
    ) -> Result<Self> {
        let (card, weights) = read_saved(path.as_ref())?;
        Self::assemble_saved(card, weights, template, flow)
    }

    fn assemble_saved(
        card: ModelCard,
        weights: Weights,
        template: N,
        flow: Option<Arc<dyn ProbabilityFlow>>,
    ) -> Result<Self> {
        let file = match &weights {
            Weights::Safetensors(file) | Weights::Record(_, file) => file,
        };
        check_shapes(&card, &template, file)?;
        let net =
            match weights {
                Weights::Safetensors(file) => load_safetensors(template, &file, card.precision)?,
                Weights::Record(ema, file) => {
                    let device = crate::backend::device_of(&template);
                    let record = Recorder::<B>::load(&RecordBytes::default(), ema, &device)
                        .map_err(|e| Error::Checkpoint {
                            path: file.clone(),
                            reason: format!("cannot load the EMA weights: {e}"),
                        })?;
                    template.load_record(record)
                }
            };
        let flow = card.flow(flow)?;
        IntegrationFlowConfig {
            parameterization: card.parameterization,
            sigma_data: Some(card.sigma_data),
            anchor_law: card.anchor_law.clone(),
        }
        .init_unchecked(flow, net)
    }

    /// Writes the model to the directory `dir` (created if needed): `model.safetensors` with the
    /// network's weights at `precision` and `model.json`, its card (no training record; a
    /// trainer's [`export`](Trainer::export) adds one). Each file is written atomically, an
    /// earlier card is removed first, and the card comes last, so a directory with a card has
    /// the weights it describes. A model whose σ_d is still left to the data (never trained)
    /// is refused: its card would record a value it never had.
    pub fn export(&self, dir: impl AsRef<Path>, precision: Precision) -> Result<()> {
        export(self, dir.as_ref(), precision, None)
    }
}

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// Exports the EMA model (what samples) like [`IntegrationFlow::export`], with the run's
    /// configuration, coupling, step and data fingerprint in the card.
    pub fn export(&self, dir: impl AsRef<Path>, precision: Precision) -> Result<()> {
        let record = TrainingRecord {
            config: training_json(self.config())?,
            coupling: self.coupling().name().to_string(),
            step: self.step(),
            data_shape: [self.data_len(), self.ema_model().dim()],
            data_crc: self.data_crc(),
        };
        export(&self.ema_model(), dir.as_ref(), precision, Some(record))
    }
}

fn export<B: Backend, N: IntegrationNet<B>>(
    model: &IntegrationFlow<B, N>,
    dir: &Path,
    precision: Precision,
    training: Option<TrainingRecord>,
) -> Result<()> {
    if model.sigma_data_from_data() {
        return Err(Error::InvalidArgument {
            name: "model",
            reason: "σ_data is still left to the data (no trainer has set it): export a trained \
                     model, or give IntegrationFlowConfig::sigma_data"
                .into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // The old card goes first: new weights beside an old card would load as that model.
    let card_path = dir.join(CARD_FILE);
    match std::fs::remove_file(&card_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                path: card_path,
                source: e,
            })
        }
        _ => {}
    }
    let weights = dir.join(WEIGHTS_FILE);
    let mut store = SafetensorsStore::from_bytes(None).metadata(
        "producer",
        concat!("integration-flow ", env!("CARGO_PKG_VERSION")),
    );
    if precision == Precision::F16 {
        store = store.with_to_adapter(HalfPrecisionAdapter::new());
    }
    let store_error = |e: burn_store::SafetensorsStoreError| Error::Format {
        path: weights.clone(),
        reason: format!("cannot write the weights: {e}"),
    };
    model.net().save_into(&mut store).map_err(store_error)?;
    let bytes = store.get_bytes().map_err(store_error)?;
    write_atomically(&weights, bytes)?;
    let card = ModelCard::describe(model, precision, training);
    let json = serde_json::to_vec_pretty(&card).map_err(|e| Error::Format {
        path: dir.join(CARD_FILE),
        reason: e.to_string(),
    })?;
    // The card last: a directory with a card has its weights.
    write_atomically(dir.join(CARD_FILE), json)
}

fn check_shapes<B: Backend, N: Module<B>>(card: &ModelCard, net: &N, path: &Path) -> Result<()> {
    let given = param_shapes(net);
    if given != card.param_shapes {
        return Err(Error::ShapeMismatch {
            context: "saved model and network",
            expected: format!("the saved parameter shapes {:?}", card.param_shapes),
            found: format!("{given:?} (network for {})", path.display()),
        });
    }
    Ok(())
}

fn load_safetensors<B: Backend, N: Module<B>>(
    mut net: N,
    path: &Path,
    precision: Precision,
) -> Result<N> {
    let mut store = SafetensorsStore::from_file(path);
    if precision == Precision::F16 {
        store = store.with_from_adapter(HalfPrecisionAdapter::new());
    }
    let result = net.load_from(&mut store).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        reason: format!("cannot read the weights: {e}"),
    })?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(Error::Format {
            path: path.to_path_buf(),
            reason: format!(
                "the weights do not fit the network: missing {:?}, errors {:?}",
                result.missing, result.errors
            ),
        });
    }
    Ok(net)
}
