//! The anchor store: one anchor per training example, read and written by dataset index.

use super::{OtSpace, SubspaceLaw};
use crate::data::{Dataset, Pca};
use crate::error::{Error, Result};
use half::f16;
use memmap2::MmapMut;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// How anchors are stored: `f32`, or `f16` at half the memory (about 3 significant digits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorStorage {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 2 bytes per value.
    F16,
}

impl AnchorStorage {
    /// Bytes per value.
    pub fn width(self) -> usize {
        match self {
            AnchorStorage::F32 => 4,
            AnchorStorage::F16 => 2,
        }
    }
}

/// Where the anchor values live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AnchorBacking {
    /// In RAM.
    #[default]
    Memory,
    /// In a file mapped into memory (created or overwritten), for datasets whose anchors
    /// exceed RAM: the operating system pages values in and out. The file is scratch space;
    /// checkpoints keep their own copy.
    File {
        /// The file.
        path: PathBuf,
    },
}

#[derive(Debug)]
enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Little-endian values of `storage` type in a mapped file.
    Mapped {
        map: MmapMut,
        storage: AnchorStorage,
        path: PathBuf,
    },
}

/// One anchor of `dim` values per training example, indexed by the example's position in the
/// dataset, stored as `f32` or `f16`, in memory or in a memory-mapped file. Training state: it
/// is saved in every checkpoint.
///
/// Cloning a file-backed store gives an in-memory copy.
#[derive(Debug)]
pub struct AnchorStore {
    values: Values,
    dim: usize,
}

impl Clone for AnchorStore {
    fn clone(&self) -> Self {
        let values = match &self.values {
            Values::F32(v) => Values::F32(v.clone()),
            Values::F16(v) => Values::F16(v.clone()),
            Values::Mapped { map, storage, .. } => match storage {
                AnchorStorage::F32 => Values::F32(
                    map.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                AnchorStorage::F16 => Values::F16(
                    map.chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
            },
        };
        AnchorStore {
            values,
            dim: self.dim,
        }
    }
}

impl PartialEq for AnchorStore {
    /// Same dimension, storage type and values, wherever they live.
    fn eq(&self, other: &Self) -> bool {
        self.dim == other.dim
            && self.storage() == other.storage()
            && self.len() == other.len()
            && (0..self.len()).all(|i| self.get(&[i]).ok() == other.get(&[i]).ok())
    }
}

impl AnchorStore {
    /// `n` anchors of `dim` values drawn from `N(0, scale²·I)`, in memory.
    pub fn gaussian(
        n: usize,
        dim: usize,
        scale: f64,
        storage: AnchorStorage,
        rng: &mut dyn Rng,
    ) -> Result<Self> {
        Self::gaussian_in(n, dim, scale, storage, &AnchorBacking::Memory, rng)
    }

    /// Like [`gaussian`](Self::gaussian), stored where `backing` says; the same `rng` gives the
    /// same anchors in memory and in a file.
    pub fn gaussian_in(
        n: usize,
        dim: usize,
        scale: f64,
        storage: AnchorStorage,
        backing: &AnchorBacking,
        rng: &mut dyn Rng,
    ) -> Result<Self> {
        crate::flow::sample_len(n, dim)?;
        check_scale(scale)?;
        let mut store = Self::zeros(n, dim, storage, backing)?;
        // Row blocks, so that a file-backed store never needs all values in RAM at once.
        const BLOCK: usize = 4096;
        for start in (0..n).step_by(BLOCK) {
            let rows: Vec<usize> = (start..(start + BLOCK).min(n)).collect();
            let values: Vec<f32> = (0..rows.len() * dim)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    (z * scale) as f32
                })
                .collect();
            store.set(&rows, &values)?;
        }
        Ok(store)
    }

    /// `n` zero anchors of `dim` values, stored where `backing` says.
    pub fn zeros(
        n: usize,
        dim: usize,
        storage: AnchorStorage,
        backing: &AnchorBacking,
    ) -> Result<Self> {
        let len = crate::flow::sample_len(n, dim)?;
        let values = match backing {
            AnchorBacking::Memory => match storage {
                AnchorStorage::F32 => Values::F32(vec![0.0; len]),
                AnchorStorage::F16 => Values::F16(vec![f16::ZERO; len]),
            },
            AnchorBacking::File { path } => Values::Mapped {
                map: map_file(path, len * storage.width())?,
                storage,
                path: path.clone(),
            },
        };
        Ok(AnchorStore { values, dim })
    }

    /// Anchors matched to the examples by optimal transport: the examples are split into random
    /// chunks of at most `chunk`; in each, as many draws from `N(0, scale²·I)` are assigned to
    /// the examples by a linear assignment minimising the total squared distance (auction
    /// algorithm, within 1e-9 of the optimum). Labelled data is matched within each class:
    /// a chunk holds examples of one label only. In memory.
    pub fn optimal_transport(
        data: &Dataset,
        scale: f64,
        chunk: usize,
        space: OtSpace,
        storage: AnchorStorage,
        rng: &mut dyn Rng,
    ) -> Result<Self> {
        Self::optimal_transport_in(
            data,
            scale,
            chunk,
            space,
            storage,
            &AnchorBacking::Memory,
            rng,
        )
    }

    /// Like [`optimal_transport`](Self::optimal_transport), stored where `backing` says,
    /// written chunk by chunk; the same `rng` gives the same anchors in memory and in a file.
    pub fn optimal_transport_in(
        data: &Dataset,
        scale: f64,
        chunk: usize,
        space: OtSpace,
        storage: AnchorStorage,
        backing: &AnchorBacking,
        rng: &mut dyn Rng,
    ) -> Result<Self> {
        check_scale(scale)?;
        if chunk == 0 {
            return Err(Error::InvalidArgument {
                name: "chunk",
                reason: "the optimal-transport chunk size must be at least 1".into(),
            });
        }
        let (n, dim) = (data.len(), data.dim());
        // The space the squared distances are measured in: the data's own, or its top
        // principal directions (data rows are projected once, draws per chunk).
        let pca = match space {
            OtSpace::Data => None,
            OtSpace::Pca { dims } => Some(Pca::fit(data, dims)?),
        };
        let features = |x: &[f32]| -> Vec<f64> {
            match &pca {
                Some(p) => p.project_unchecked(x),
                None => x.iter().map(|&v| f64::from(v)).collect(),
            }
        };
        let data_features: Vec<Vec<f64>> = (0..n).map(|i| features(data.row(i))).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let groups = class_groups(data, order);
        let mut store = Self::zeros(n, dim, storage, backing)?;
        let mut matched = Vec::new();
        for examples in groups.iter().flat_map(|group| group.chunks(chunk)) {
            let m = examples.len();
            let draws: Vec<f32> = (0..m * dim)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    (z * scale) as f32
                })
                .collect();
            let draw_features: Vec<f64> = draws.chunks(dim).flat_map(features).collect();
            let example_features: Vec<f64> = examples
                .iter()
                .flat_map(|&i| data_features[i].iter().copied())
                .collect();
            let feature_dim = draw_features.len() / m.max(1);
            let row_to_col = super::assignment::solve_squared_distances(
                &example_features,
                &draw_features,
                feature_dim,
            )?;
            matched.clear();
            for &col in &row_to_col {
                matched.extend_from_slice(&draws[col * dim..(col + 1) * dim]);
            }
            store.set(examples, &matched)?;
        }
        Ok(store)
    }

    /// The same anchors stored where `backing` says (copied in blocks of rows).
    pub fn into_backing(self, backing: &AnchorBacking) -> Result<Self> {
        let in_place = match (&self.values, backing) {
            (Values::Mapped { path, .. }, AnchorBacking::File { path: p }) => path == p,
            (Values::F32(_) | Values::F16(_), AnchorBacking::Memory) => true,
            (Values::Mapped { .. }, AnchorBacking::Memory)
            | (Values::F32(_) | Values::F16(_), AnchorBacking::File { .. }) => false,
        };
        if in_place {
            return Ok(self);
        }
        let (n, dim) = (self.len(), self.dim);
        let mut target = Self::zeros(n, dim, self.storage(), backing)?;
        const BLOCK: usize = 4096;
        for start in (0..n).step_by(BLOCK) {
            let rows: Vec<usize> = (start..(start + BLOCK).min(n)).collect();
            target.set(&rows, &self.get(&rows)?)?;
        }
        Ok(target)
    }

    /// Anchors drawn from a [`SubspaceLaw`] and matched to the examples by optimal transport
    /// on whitened principal coordinates: in random chunks of at most `chunk` examples, as
    /// many codes `z ~ N(0, I_k)` are assigned to the examples' codes minimising the total
    /// squared distance; each example's anchor is its code's sketch `law.compose(z)`.
    pub fn optimal_transport_subspace(
        data: &Dataset,
        law: &SubspaceLaw,
        chunk: usize,
        storage: AnchorStorage,
        backing: &AnchorBacking,
        rng: &mut dyn Rng,
    ) -> Result<Self> {
        if chunk == 0 {
            return Err(Error::InvalidArgument {
                name: "chunk",
                reason: "the optimal-transport chunk size must be at least 1".into(),
            });
        }
        let (n, dim) = (data.len(), data.dim());
        if law.dim() != dim {
            return Err(Error::ShapeMismatch {
                context: "AnchorStore::optimal_transport_subspace",
                expected: format!("a law of {dim} values per anchor"),
                found: format!("{}", law.dim()),
            });
        }
        let k = law.dims();
        let codes: Vec<Vec<f64>> = (0..n).map(|i| law.code_unchecked(data.row(i))).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let groups = class_groups(data, order);
        let mut store = Self::zeros(n, dim, storage, backing)?;
        let mut matched = Vec::new();
        for examples in groups.iter().flat_map(|group| group.chunks(chunk)) {
            let draws: Vec<Vec<f64>> = (0..examples.len()).map(|_| law.draw(rng)).collect();
            let example_codes: Vec<f64> = examples
                .iter()
                .flat_map(|&i| codes[i].iter().copied())
                .collect();
            let draw_codes: Vec<f64> = draws.iter().flatten().copied().collect();
            let row_to_col =
                super::assignment::solve_squared_distances(&example_codes, &draw_codes, k)?;
            matched.clear();
            for &col in &row_to_col {
                matched.extend(law.compose_unchecked(&draws[col]));
            }
            store.set(examples, &matched)?;
        }
        Ok(store)
    }

    /// A store holding `values` (row-major, `dim` per anchor).
    pub fn from_values(values: Vec<f32>, dim: usize, storage: AnchorStorage) -> Result<Self> {
        if dim == 0 || values.is_empty() || !values.len().is_multiple_of(dim) {
            return Err(Error::ShapeMismatch {
                context: "AnchorStore::from_values",
                expected: format!("a positive whole number of anchors of {dim} values"),
                found: format!("{} values", values.len()),
            });
        }
        let values = match storage {
            AnchorStorage::F32 => Values::F32(values),
            AnchorStorage::F16 => Values::F16(values.into_iter().map(f16::from_f32).collect()),
        };
        Ok(AnchorStore { values, dim })
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.raw_len() / self.dim.max(1)
    }

    /// Whether the store holds no anchor.
    pub fn is_empty(&self) -> bool {
        self.raw_len() == 0
    }

    /// Values per anchor.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The storage type.
    pub fn storage(&self) -> AnchorStorage {
        match self.values {
            Values::F32(_) => AnchorStorage::F32,
            Values::F16(_) => AnchorStorage::F16,
            Values::Mapped { storage, .. } => storage,
        }
    }

    /// The file behind a file-backed store.
    pub fn file(&self) -> Option<&Path> {
        match &self.values {
            Values::Mapped { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Bytes held by the anchor values (in RAM or in the file).
    pub fn bytes(&self) -> usize {
        self.raw_len() * self.storage().width()
    }

    fn raw_len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::F16(v) => v.len(),
            Values::Mapped { map, storage, .. } => map.len() / storage.width(),
        }
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i < self.len() {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                name: "index",
                reason: format!("anchor {i} requested from a store of {}", self.len()),
            })
        }
    }

    /// The anchors at `indices`, row-major.
    pub fn get(&self, indices: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            self.check_index(i)?;
            let range = i * self.dim..(i + 1) * self.dim;
            match &self.values {
                Values::F32(v) => out.extend_from_slice(&v[range]),
                Values::F16(v) => out.extend(v[range].iter().map(|x| x.to_f32())),
                Values::Mapped { map, storage, .. } => {
                    let w = storage.width();
                    let bytes = &map[range.start * w..range.end * w];
                    match storage {
                        AnchorStorage::F32 => out.extend(
                            bytes
                                .chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                        ),
                        AnchorStorage::F16 => out.extend(
                            bytes
                                .chunks_exact(2)
                                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
                        ),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Writes `values` (row-major) as the anchors at `indices`.
    pub fn set(&mut self, indices: &[usize], values: &[f32]) -> Result<()> {
        if values.len() != indices.len() * self.dim {
            return Err(Error::ShapeMismatch {
                context: "AnchorStore::set",
                expected: format!("{} values", indices.len() * self.dim),
                found: format!("{} values", values.len()),
            });
        }
        // Checked before anything is written: a rejected call changes nothing.
        if let Some(&value) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                context: "AnchorStore::set",
                value: f64::from(value),
            });
        }
        for &i in indices {
            self.check_index(i)?;
        }
        for (&i, row) in indices.iter().zip(values.chunks(self.dim)) {
            let range = i * self.dim..(i + 1) * self.dim;
            match &mut self.values {
                Values::F32(v) => v[range].copy_from_slice(row),
                Values::F16(v) => {
                    for (dst, &src) in v[range].iter_mut().zip(row) {
                        *dst = f16::from_f32(src);
                    }
                }
                Values::Mapped { map, storage, .. } => {
                    let w = storage.width();
                    let bytes = &mut map[range.start * w..range.end * w];
                    for (dst, &src) in bytes.chunks_exact_mut(w).zip(row) {
                        match storage {
                            AnchorStorage::F32 => dst.copy_from_slice(&src.to_le_bytes()),
                            AnchorStorage::F16 => {
                                dst.copy_from_slice(&f16::from_f32(src).to_le_bytes())
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Serialises the store in parts: `dim` (u64 LE) and storage tag (u8), then the values
    /// (LE). A file-backed store's values are borrowed from the mapping, not copied, so
    /// checkpointing it needs no memory the size of the store.
    pub(crate) fn to_parts(&self) -> Vec<Cow<'_, [u8]>> {
        let mut header = (self.dim as u64).to_le_bytes().to_vec();
        header.push(match self.storage() {
            AnchorStorage::F32 => 0,
            AnchorStorage::F16 => 1,
        });
        let body = match &self.values {
            Values::Mapped { map, .. } => Cow::Borrowed(&map[..]),
            Values::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Values::F16(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        vec![Cow::Owned(header), body]
    }

    /// Reads what [`to_parts`](Self::to_parts) wrote; `None` if malformed.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let dim = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let body = bytes.get(9..)?;
        if dim == 0 {
            return None;
        }
        let values = match bytes.get(8)? {
            0 if body.len() % 4 == 0 => Values::F32(
                body.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            1 if body.len() % 2 == 0 => Values::F16(
                body.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            _ => return None,
        };
        let store = AnchorStore { values, dim };
        store.raw_len().is_multiple_of(dim).then_some(store)
    }
}

/// Creates (or truncates) `path` with `len` zero bytes and maps it read-write.
fn map_file(path: &Path, len: usize) -> Result<MmapMut> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    file.set_len(len as u64).map_err(io)?;
    if len == 0 {
        return MmapMut::map_anon(0).map_err(io);
    }
    // SAFETY: the file was just created (truncated) by this process for the store's exclusive
    // use and the store owns the only mapping. The mapping's soundness relies on no other
    // process truncating the file while training runs, as for any memory-mapped file.
    unsafe { MmapMut::map_mut(&file) }.map_err(io)
}

fn check_scale(scale: f64) -> Result<()> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            name: "scale",
            reason: format!("the anchor scale must be finite and positive, got {scale}"),
        })
    }
}

/// The examples in `order` split by class (in order within each), for matching within each
/// class: a fresh anchor and a label then ask for an example of that class. Unlabelled data is
/// one group.
fn class_groups(data: &Dataset, order: Vec<usize>) -> Vec<Vec<usize>> {
    match data.labels() {
        None => vec![order],
        Some(labels) => {
            let mut groups = vec![Vec::new(); data.classes()];
            for i in order {
                groups[labels[i]].push(i);
            }
            groups
        }
    }
}
