//! The anchor store: one anchor per training example, read and written by dataset index.

use super::config::OtSpace;
use crate::data::{Dataset, Pca};
use crate::error::{Error, Result};
use half::f16;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

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

#[derive(Clone, Debug, PartialEq)]
enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// One anchor of `dim` values per training example, indexed by the example's position in the
/// dataset. Training state: it is saved in every checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorStore {
    values: Values,
    dim: usize,
}

impl AnchorStore {
    /// `n` anchors of `dim` values drawn from `N(0, scale²·I)`.
    pub fn gaussian(
        n: usize,
        dim: usize,
        scale: f64,
        storage: AnchorStorage,
        rng: &mut dyn Rng,
    ) -> Result<Self> {
        let len = crate::flow::sample_len(n, dim)?;
        check_scale(scale)?;
        let values = (0..len)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                (z * scale) as f32
            })
            .collect();
        Ok(Self::from_values(values, dim, storage))
    }

    /// Anchors matched to the examples by optimal transport: the examples are split into random
    /// chunks of at most `chunk`; in each, as many draws from `N(0, scale²·I)` are assigned to
    /// the examples by an exact linear assignment (Jonker–Volgenant) minimising the total
    /// squared distance.
    pub fn optimal_transport(
        data: &Dataset,
        scale: f64,
        chunk: usize,
        space: OtSpace,
        storage: AnchorStorage,
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
                Some(p) => p.project(x),
                None => x.iter().map(|&v| f64::from(v)).collect(),
            }
        };
        let data_features: Vec<Vec<f64>> = (0..n).map(|i| features(data.row(i))).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let mut values = vec![0.0f32; n * dim];
        for examples in order.chunks(chunk) {
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
            for (row, &i) in examples.iter().enumerate() {
                let col = row_to_col[row];
                values[i * dim..(i + 1) * dim].copy_from_slice(&draws[col * dim..(col + 1) * dim]);
            }
        }
        Ok(Self::from_values(values, dim, storage))
    }

    /// A store holding `values` (row-major, `dim` per anchor).
    pub fn from_values(values: Vec<f32>, dim: usize, storage: AnchorStorage) -> Self {
        let values = match storage {
            AnchorStorage::F32 => Values::F32(values),
            AnchorStorage::F16 => Values::F16(values.into_iter().map(f16::from_f32).collect()),
        };
        AnchorStore { values, dim }
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
        }
    }

    /// Bytes held by the anchor values.
    pub fn bytes(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len() * 4,
            Values::F16(v) => v.len() * 2,
        }
    }

    fn raw_len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::F16(v) => v.len(),
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
        for (&i, row) in indices.iter().zip(values.chunks(self.dim)) {
            self.check_index(i)?;
            let range = i * self.dim..(i + 1) * self.dim;
            match &mut self.values {
                Values::F32(v) => v[range].copy_from_slice(row),
                Values::F16(v) => {
                    for (dst, &src) in v[range].iter_mut().zip(row) {
                        *dst = f16::from_f32(src);
                    }
                }
            }
        }
        Ok(())
    }

    /// Serialises the store: `dim` (u64 LE), storage tag (u8), then the values (LE).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.bytes());
        out.extend_from_slice(&(self.dim as u64).to_le_bytes());
        match &self.values {
            Values::F32(v) => {
                out.push(0);
                v.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            Values::F16(v) => {
                out.push(1);
                v.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
        }
        out
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote; `None` if malformed.
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
