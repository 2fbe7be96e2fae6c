//! What a checkpoint of a run holds, writing it, and resuming a run from it.

use super::format::{self, Sections};
use super::RecordBytes;
use crate::backend::device_of;
use crate::coupling::{AnchorLaw, AnchorPolicy, AnchorStore, Coupling};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::flow::{FlowConfig, Parameterization};
use crate::model::IntegrationFlow;
use crate::nn::{IntegrationNet, NetworkConfig};
use crate::train::distribution_matching::ScoreState;
use crate::train::guard::{params_finite, GuardCounts};
use crate::train::trainer::{AnchorDrift, Position, Trainer};
use crate::train::{AnchorStorage, TrainConfig};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::record::Recorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a checkpoint records besides tensors, to resume exactly and to refuse a checkpoint of
/// another model, flow, coupling or dataset. Fields added after format 1 are optional, so that
/// older checkpoints still load.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    config: TrainConfig,
    position: Position,
    flow: String,
    /// The built-in flow's full configuration (`None`: a flow of the user's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    flow_config: Option<FlowConfig>,
    /// The coupling's name (absent in older checkpoints: the one `config.anchor` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    coupling: Option<String>,
    /// Whether an anchor store is saved (absent in older checkpoints: all policies but `off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anchors: Option<bool>,
    /// The network's configuration (absent in older checkpoints and for networks of your own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<NetworkConfig>,
    parameterization: Parameterization,
    sigma_data: f64,
    anchor_law: AnchorLaw,
    data_len: usize,
    data_dim: usize,
    data_crc: u32,
    param_shapes: Vec<Vec<usize>>,
    drift: AnchorDrift,
    #[serde(default)]
    guard: GuardCounts,
}

impl Meta {
    /// The coupling's name; older checkpoints do not record it, and theirs is the one their
    /// configuration names.
    fn coupling_name(&self, configured: &dyn Coupling) -> String {
        self.coupling
            .clone()
            .unwrap_or_else(|| configured.name().to_string())
    }

    fn has_anchors(&self) -> bool {
        self.anchors.unwrap_or(match self.config.anchor.policy {
            AnchorPolicy::Off => false,
            AnchorPolicy::Prediction
            | AnchorPolicy::Data
            | AnchorPolicy::Frozen
            | AnchorPolicy::Ot => true,
        })
    }
}

const FORMAT: u32 = 1;

impl<B, N> Trainer<B, N>
where
    B: AutodiffBackend,
    N: IntegrationNet<B> + AutodiffModule<B> + 'static,
    N::InnerModule: IntegrationNet<B::InnerBackend> + 'static,
{
    /// Writes a checkpoint (model, EMA, optimizer, anchors, config, position) to `dir`
    /// atomically.
    ///
    /// Weights that are not finite are never written: that is an [`Error::Diverged`], and the
    /// previous checkpoint stays.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if !params_finite(self.model.net()) || !params_finite(&self.ema) {
            return Err(Error::Diverged {
                step: self.position.step,
                reason: "the weights are not finite; the checkpoint was not written".into(),
            });
        }
        if self.has_store && self.anchors.is_none() {
            return Err(Error::Checkpoint {
                path: format::checkpoint_path(dir),
                reason: "the anchor store was lost (a failed rebuild or rollback); \
                         the checkpoint was not written"
                    .into(),
            });
        }
        let record_error = |what: &str, e: burn::record::RecorderError| Error::Checkpoint {
            path: format::checkpoint_path(dir),
            reason: format!("cannot record the {what}: {e}"),
        };
        let meta = self.meta();
        let mut sections = Sections::default();
        let meta_json = serde_json::to_vec(&meta).map_err(|e| Error::Checkpoint {
            path: format::checkpoint_path(dir),
            reason: format!("cannot encode the metadata: {e}"),
        })?;
        sections.push("meta", meta_json);
        let bytes = RecordBytes::default();
        let model = Recorder::<B>::record(&bytes, self.model.net().clone().into_record(), ())
            .map_err(|e| record_error("model", e))?;
        sections.push("model", model);
        let ema = Recorder::<B::InnerBackend>::record(&bytes, self.ema.clone().into_record(), ())
            .map_err(|e| record_error("EMA", e))?;
        sections.push("ema", ema);
        let optim = self
            .optim
            .to_bytes()
            .map_err(|e| record_error("optimizer", e))?;
        sections.push("optimizer", optim);
        if let Some(critic) = &self.critic {
            let [weights, optim] = critic
                .to_bytes()
                .map_err(|e| record_error("adversarial critic", e))?;
            sections.push("critic", weights);
            sections.push("critic_optimizer", optim);
        }
        if let Some(score) = &self.score {
            let [weights, optim] = score
                .to_bytes()
                .map_err(|e| record_error("distribution-matching fake denoiser", e))?;
            sections.push("fake_denoiser", weights);
            sections.push("fake_denoiser_optimizer", optim);
        }
        if let Some(store) = &self.anchors {
            sections.push_parts("anchors", store.to_parts());
        }
        format::write(dir, &sections)
    }

    fn meta(&self) -> Meta {
        Meta {
            format: FORMAT,
            config: self.config.clone(),
            position: self.position,
            flow: self.model.flow().name().to_string(),
            flow_config: self.model.flow().flow_config(),
            coupling: Some(self.coupling.name().to_string()),
            anchors: Some(self.has_store),
            network: self.model.net().network_config(),
            parameterization: self.model.parameterization(),
            sigma_data: self.model.sigma_data(),
            anchor_law: self.model.anchor_law(),
            data_len: self.data.len(),
            data_dim: self.data.dim(),
            data_crc: self.data.crc(),
            param_shapes: param_shapes(self.model.net()),
            drift: self.drift.clone(),
            guard: self.guard,
        }
    }

    /// The EMA weights as a network that trains (on the autodiff backend): to start another
    /// run from this one's result, e.g. a one-step student from its teacher. `template` is a
    /// network of the same configuration (its weights are replaced).
    pub fn ema_as_trainable(&self, template: N) -> Result<N> {
        let (have, given) = (param_shapes(&self.ema), param_shapes(&template));
        if have != given {
            return Err(Error::ShapeMismatch {
                context: "Trainer::ema_as_trainable (the template's parameters)",
                expected: format!("{have:?}"),
                found: format!("{given:?}"),
            });
        }
        let bytes = RecordBytes::default();
        let error = |e: burn::record::RecorderError| Error::Checkpoint {
            path: PathBuf::from("<memory>"),
            reason: format!("cannot copy the EMA weights: {e}"),
        };
        let record =
            Recorder::<B::InnerBackend>::record(&bytes, self.ema.clone().into_record(), ())
                .map_err(error)?;
        let device = device_of(&template);
        let record = Recorder::<B>::load(&bytes, record, &device).map_err(error)?;
        Ok(template.load_record(record))
    }

    /// Continues the run whose checkpoint is in `dir`: `model` supplies the flow and the
    /// network's architecture (its weights are replaced), `data` must be the dataset the run
    /// trained on. The configuration comes from the checkpoint, and with it the coupling. A
    /// missing, corrupt, truncated or mismatched checkpoint is an [`Error::Checkpoint`] (a
    /// mismatch names what differs: the flow or one of its fields, the coupling, the dataset,
    /// the network's shapes) and nothing is loaded.
    pub fn resume(
        dir: impl AsRef<Path>,
        model: IntegrationFlow<B, N>,
        data: Dataset,
    ) -> Result<Self> {
        Self::resume_inner(dir.as_ref(), model, data, None)
    }

    /// Like [`resume`](Self::resume) for a run trained with a coupling of your own
    /// ([`with_coupling`](Self::with_coupling)); the checkpoint must name the same coupling.
    pub fn resume_with_coupling(
        dir: impl AsRef<Path>,
        model: IntegrationFlow<B, N>,
        data: Dataset,
        coupling: Arc<dyn Coupling>,
    ) -> Result<Self> {
        Self::resume_inner(dir.as_ref(), model, data, Some(coupling))
    }

    fn resume_inner(
        dir: &Path,
        model: IntegrationFlow<B, N>,
        data: Dataset,
        coupling: Option<Arc<dyn Coupling>>,
    ) -> Result<Self> {
        let path = format::checkpoint_path(dir);
        let mismatch = |reason: String| Error::Checkpoint {
            path: path.clone(),
            reason,
        };
        let mut sections = format::read(dir)?;
        let meta = read_meta(&mut sections, &path)?;
        // σ_d left to the data is the value the run started with (its data is checked below).
        let model = match model.sigma_data_from_data() {
            true => model.with_sigma_data(meta.sigma_data)?,
            false => model,
        };
        let configured = meta.config.anchor.coupling();
        let saved_coupling = meta.coupling_name(configured.as_ref());
        let coupling = coupling.unwrap_or(configured);
        let checks = [
            ("flow", meta.flow.clone(), model.flow().name().to_string()),
            ("coupling", saved_coupling, coupling.name().to_string()),
            (
                "parameterization",
                format!("{:?}", meta.parameterization),
                format!("{:?}", model.parameterization()),
            ),
            (
                "sigma_data",
                meta.sigma_data.to_string(),
                model.sigma_data().to_string(),
            ),
            (
                "dataset size",
                format!("{}×{}", meta.data_len, meta.data_dim),
                format!("{}×{}", data.len(), data.dim()),
            ),
            (
                "dataset contents (CRC-32)",
                meta.data_crc.to_string(),
                data.crc().to_string(),
            ),
            (
                "network parameter shapes",
                format!("{:?}", meta.param_shapes),
                format!("{:?}", param_shapes(model.net())),
            ),
        ];
        for (what, saved, given) in checks {
            if saved != given {
                return Err(mismatch(format!(
                    "{what} differs: checkpoint has {saved}, this run has {given}"
                )));
            }
        }
        if let Some(saved) = &meta.flow_config {
            let given = model.flow().flow_config();
            if let Some(difference) = saved.difference(given.as_ref()) {
                return Err(mismatch(difference));
            }
        }
        let device = device_of(model.net());
        let bytes = RecordBytes::default();
        let load_error = |what: &str, e: burn::record::RecorderError| {
            mismatch(format!("cannot load the {what}: {e}"))
        };
        let net_record = Recorder::<B>::load(&bytes, sections.take("model", &path)?, &device)
            .map_err(|e| load_error("model", e))?;
        let net = model.net().clone().load_record(net_record);
        let ema_template = net.valid();
        let ema_record = Recorder::<B::InnerBackend>::load(
            &bytes,
            sections.take("ema", &path)?,
            &device_of(&ema_template),
        )
        .map_err(|e| load_error("EMA", e))?;
        let ema = ema_template.load_record(ema_record);
        // The dataset's size was checked against the metadata above.
        let anchors = read_anchors(&mut sections, &meta, &path)?
            .map(|store| store.into_backing(&meta.config.anchor.backing))
            .transpose()?;
        let optim_bytes = sections.take("optimizer", &path)?;
        let critic_bytes = match meta.config.adversarial {
            Some(_) => Some([
                sections.take("critic", &path)?,
                sections.take("critic_optimizer", &path)?,
            ]),
            None => None,
        };
        // A run with distribution matching saved its fake denoiser once its teacher was given
        // (a checkpoint before that has none, and the teacher given later starts it afresh).
        let score_bytes = match meta.config.distribution_matching {
            Some(_) if sections.has("fake_denoiser") => Some([
                sections.take("fake_denoiser", &path)?,
                sections.take("fake_denoiser_optimizer", &path)?,
            ]),
            Some(_) | None => None,
        };
        let template = net.clone();
        let model = model.with_net(net).with_anchor_law(meta.anchor_law);
        let mut trainer = Self::assemble(
            model,
            data,
            meta.config,
            coupling,
            anchors,
            meta.position,
            Some(ema),
        )?;
        trainer.guard = meta.guard;
        trainer.drift = meta.drift;
        trainer.optim = trainer
            .optim
            .load_bytes(optim_bytes, &device)
            .map_err(|e| load_error("optimizer", e))?;
        if let (Some(critic), Some(bytes)) = (trainer.critic.take(), critic_bytes) {
            trainer.critic = Some(
                critic
                    .load_bytes(bytes, &device)
                    .map_err(|e| load_error("adversarial critic", e))?,
            );
        }
        if let Some(bytes) = score_bytes {
            trainer.score = Some(
                ScoreState::from_bytes(template, bytes, &device)
                    .map_err(|e| load_error("distribution-matching fake denoiser", e))?,
            );
        }
        Ok(trainer.with_checkpoint_dir(dir))
    }
}

/// What a checkpoint holds, read and verified (magic, lengths, checksums, metadata, anchor
/// store) without building a model: to inspect a run, and the reader the fuzzer drives.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    /// The step the run takes next (the steps done).
    pub step: usize,
    /// Its epoch.
    pub epoch: usize,
    /// The flow's name.
    pub flow: String,
    /// The built-in flow's configuration (`None` for a flow of the user's own, or a checkpoint
    /// written before it was recorded).
    pub flow_config: Option<FlowConfig>,
    /// The coupling's name.
    pub coupling: String,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Examples and values per example of the dataset it trained on.
    pub data_shape: [usize; 2],
    /// The sections, with their payload sizes in bytes.
    pub sections: Vec<(String, usize)>,
    /// The anchor store's examples, values per example and storage; `None` without anchors.
    pub anchors: Option<(usize, usize, AnchorStorage)>,
    /// The network's configuration (`None` for a network of your own, or a checkpoint written
    /// before it was recorded).
    pub network: Option<NetworkConfig>,
    /// The preconditioning form.
    pub parameterization: Parameterization,
    /// The data's standard deviation the model was built with.
    pub sigma_data: f64,
    /// The law of the anchors sampling starts from.
    pub anchor_law: AnchorLaw,
}

impl CheckpointInfo {
    /// Reads and verifies `dir/checkpoint.ifc`.
    pub fn read(dir: impl AsRef<Path>) -> Result<Self> {
        let path = format::checkpoint_path(dir.as_ref());
        let bytes = std::fs::read(&path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        Self::parse(&bytes, &path)
    }

    /// Verifies checkpoint bytes; `path` names the file in errors ([`Error::Checkpoint`]).
    pub fn parse(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut sections = Sections::decode(bytes, path)?;
        let sizes = sections
            .0
            .iter()
            .map(|(name, parts)| (name.clone(), parts.iter().map(|p| p.len()).sum()))
            .collect();
        let meta = read_meta(&mut sections, path)?;
        meta.config
            .validate()
            .map_err(|e| bad(format!("invalid configuration: {e}")))?;
        let anchors = read_anchors(&mut sections, &meta, path)?
            .map(|store| (store.len(), store.dim(), store.storage()));
        for name in ["model", "ema", "optimizer"] {
            sections.take(name, path)?;
        }
        let coupling = meta.coupling_name(meta.config.anchor.coupling().as_ref());
        Ok(CheckpointInfo {
            step: meta.position.step,
            epoch: meta.position.epoch,
            flow: meta.flow,
            flow_config: meta.flow_config,
            coupling,
            config: meta.config,
            data_shape: [meta.data_len, meta.data_dim],
            sections: sizes,
            anchors,
            network: meta.network,
            parameterization: meta.parameterization,
            sigma_data: meta.sigma_data,
            anchor_law: meta.anchor_law,
        })
    }
}

/// The model a checkpoint holds, for inference: what rebuilds it and its EMA weights' record
/// bytes (the `saved` module makes its card of this).
pub(crate) struct CheckpointModel {
    pub(crate) flow: String,
    pub(crate) flow_config: Option<FlowConfig>,
    pub(crate) parameterization: Parameterization,
    pub(crate) sigma_data: f64,
    pub(crate) anchor_law: AnchorLaw,
    pub(crate) network: Option<NetworkConfig>,
    pub(crate) param_shapes: Vec<Vec<usize>>,
    pub(crate) config: TrainConfig,
    pub(crate) coupling: String,
    pub(crate) step: usize,
    pub(crate) data_shape: [usize; 2],
    pub(crate) data_crc: u32,
    pub(crate) ema: Vec<u8>,
}

/// Reads the model of the checkpoint in `dir` (no optimizer state or anchors are decoded).
pub(crate) fn read_ema(dir: &Path) -> Result<CheckpointModel> {
    let path = format::checkpoint_path(dir);
    let mut sections = format::read(dir)?;
    let meta = read_meta(&mut sections, &path)?;
    let ema = sections.take("ema", &path)?;
    let coupling = meta.coupling_name(meta.config.anchor.coupling().as_ref());
    Ok(CheckpointModel {
        flow: meta.flow,
        flow_config: meta.flow_config,
        parameterization: meta.parameterization,
        sigma_data: meta.sigma_data,
        anchor_law: meta.anchor_law,
        network: meta.network,
        param_shapes: meta.param_shapes,
        config: meta.config,
        coupling,
        step: meta.position.step,
        data_shape: [meta.data_len, meta.data_dim],
        data_crc: meta.data_crc,
        ema,
    })
}

/// A checkpoint's metadata section, of this crate's format.
fn read_meta(sections: &mut Sections, path: &Path) -> Result<Meta> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let meta: Meta = serde_json::from_slice(&sections.take("meta", path)?)
        .map_err(|e| bad(format!("unreadable metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(bad(format!("format {} is not {FORMAT}", meta.format)));
    }
    Ok(meta)
}

/// A checkpoint's anchor store (`None` when the run had none), of the dataset shape `meta`
/// records.
fn read_anchors(sections: &mut Sections, meta: &Meta, path: &Path) -> Result<Option<AnchorStore>> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.has_anchors() {
        if sections.has("anchors") {
            return Err(bad(
                "an anchor store is saved, but the metadata says the run had none".into(),
            ));
        }
        return Ok(None);
    }
    let store = AnchorStore::from_bytes(&sections.take("anchors", path)?)
        .ok_or_else(|| bad("malformed anchor store".into()))?;
    if store.len() != meta.data_len || store.dim() != meta.data_dim {
        return Err(bad(format!(
            "anchor store holds {}×{}, the dataset {}×{}",
            store.len(),
            store.dim(),
            meta.data_len,
            meta.data_dim
        )));
    }
    Ok(Some(store))
}

pub(crate) fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().dims().to_vec());
        }
    }
    let mut shapes = Shapes(Vec::new());
    module.visit(&mut shapes);
    shapes.0
}
