//! Datasets: an in-memory `[n, dim]` array type, the toy 2-D generators, image loaders (IDX,
//! CIFAR-10, NPY, folders), the bundled MNIST subset, NPY input and output, and principal
//! directions.

mod idx;
mod images;
pub mod mnist;
pub(crate) mod npy;
mod pca;
mod toy;

pub use idx::{parse_idx, read_idx, IdxArray};
pub use images::{Images, NpyLayout};
pub use npy::{
    parse_npy, read_npy, write_atomically, write_npy_f32, write_npy_i64, NpyArray, NpyData,
};
pub use pca::Pca;
pub use toy::Toy;

/// "needs N bytes of data, found M (truncated|trailing bytes)" for a parser whose header
/// declares a size the body does not have.
pub(crate) fn body_size_error(what: String, need: usize, found: usize) -> String {
    let kind = if found < need {
        "truncated"
    } else {
        "trailing bytes"
    };
    format!("{what} needs {need} bytes of data, found {found} ({kind})")
}

use crate::error::{Error, Result};
use std::path::Path;

/// An in-memory dataset of `n` examples with `dim` values each, row-major `f32`, checked on
/// construction to be non-empty, rectangular and finite.
///
/// ```
/// use integration_flow::data::Dataset;
/// let ds = Dataset::new(vec![0.0, 1.0, 2.0, 3.0], 2)?;
/// assert_eq!((ds.len(), ds.dim()), (2, 2));
/// assert_eq!(ds.row(1), &[2.0, 3.0]);
/// assert!(Dataset::new(vec![f32::NAN, 0.0], 2).is_err());
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    values: Vec<f32>,
    dim: usize,
    /// Class labels, one per example, and the number of classes.
    labels: Option<Labels>,
}

/// The class labels of a [`Dataset`]: one per example, each below `classes`.
#[derive(Clone, Debug, PartialEq)]
struct Labels {
    values: Vec<usize>,
    classes: usize,
}

impl Dataset {
    /// Wraps row-major `values` of `dim` values per example.
    pub fn new(values: Vec<f32>, dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::InvalidArgument {
                name: "dim",
                reason: "a dataset needs at least one value per example".into(),
            });
        }
        if values.is_empty() {
            return Err(Error::InvalidArgument {
                name: "values",
                reason: "the dataset is empty".into(),
            });
        }
        if !values.len().is_multiple_of(dim) {
            return Err(Error::ShapeMismatch {
                context: "dataset values",
                expected: format!("a multiple of dim = {dim}"),
                found: format!("{} values", values.len()),
            });
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument {
                name: "values",
                reason: format!(
                    "non-finite value {} at example {}, coordinate {}",
                    values[i],
                    i / dim,
                    i % dim
                ),
            });
        }
        Ok(Dataset {
            values,
            dim,
            labels: None,
        })
    }

    /// The `[n, d]` float32 or float64 array in the NPY file at `path` (NumPy's
    /// `np.save(path, x)`); a 1-D array `[n]` is `n` examples of one value. Float64 values are
    /// rounded to float32. Bytes, other shapes and non-finite values are errors.
    ///
    /// ```
    /// use integration_flow::data::{write_npy_f32, Dataset};
    /// let path = std::env::temp_dir().join("integration_flow_from_npy_doc.npy");
    /// write_npy_f32(&path, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[3, 2])?;
    /// let data = Dataset::from_npy(&path)?;
    /// assert_eq!((data.len(), data.dim()), (3, 2));
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn from_npy(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let array = read_npy(path)?;
        let format = |reason: String| Error::Format {
            path: path.to_path_buf(),
            reason,
        };
        let dim = match array.shape.as_slice() {
            [_] => 1,
            [_, d] => *d,
            other => {
                return Err(format(format!(
                    "a dataset is an [n, d] array, found shape {other:?} (images: Images::from_npy)"
                )))
            }
        };
        let values =
            match &array.data {
                NpyData::F32(_) | NpyData::F64(_) => array.data.to_f32(),
                NpyData::U8(_) | NpyData::I64(_) => return Err(format(
                    "a dataset is float32 or float64, found integers (images: Images::from_npy)"
                        .into(),
                )),
            };
        Dataset::new(values, dim).map_err(|e| format(e.to_string()))
    }

    /// The examples of a `[n, dim]` tensor (read back to the host), e.g. generated samples to
    /// score or save; non-finite values are an error.
    pub fn from_tensor<B: burn::tensor::backend::Backend>(
        tensor: burn::tensor::Tensor<B, 2>,
    ) -> Result<Self> {
        let [_, dim] = tensor.dims();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::InvalidArgument {
                name: "tensor",
                reason: format!("cannot read the tensor's values: {e:?}"),
            })?;
        Dataset::new(values, dim)
    }

    /// The examples as a `[len, dim]` tensor on `device`.
    pub fn to_tensor<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> burn::tensor::Tensor<B, 2> {
        burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(self.values.clone(), [self.len(), self.dim]),
            device,
        )
    }

    /// Writes the examples to `path` as a float32 `[len, dim]` NPY array, atomically
    /// (NumPy's `np.load(path)` reads it).
    pub fn write_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        write_npy_f32(path, &self.values, &[self.len(), self.dim])
    }

    /// Wraps values the caller has already checked (a slice of a valid dataset).
    pub(crate) fn from_checked(values: Vec<f32>, dim: usize) -> Self {
        Dataset {
            values,
            dim,
            labels: None,
        }
    }

    /// The same examples with class labels `0..classes−1`, one per example: what a
    /// class-conditional model trains on. No classes, a count that differs from the examples'
    /// or a label `≥ classes` is an error.
    ///
    /// ```
    /// use integration_flow::data::Dataset;
    /// let ds = Dataset::new(vec![0.0, 1.0, 2.0, 3.0], 2)?.with_labels(vec![1, 0], 2)?;
    /// assert_eq!((ds.labels(), ds.classes()), (Some(&[1usize, 0][..]), 2));
    /// assert!(ds.clone().with_labels(vec![0, 2], 2).is_err()); // label 2 of 2 classes
    /// assert!(ds.with_labels(vec![0], 2).is_err()); // one label for two examples
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn with_labels(mut self, labels: Vec<usize>, classes: usize) -> Result<Self> {
        if classes == 0 {
            return Err(Error::InvalidArgument {
                name: "classes",
                reason: "labelled data needs at least one class".into(),
            });
        }
        if labels.len() != self.len() {
            return Err(Error::ShapeMismatch {
                context: "dataset labels",
                expected: format!("{} labels, one per example", self.len()),
                found: format!("{}", labels.len()),
            });
        }
        if let Some(i) = labels.iter().position(|&l| l >= classes) {
            return Err(Error::InvalidArgument {
                name: "labels",
                reason: format!(
                    "label {} of example {i} is not one of the {classes} classes 0..{}",
                    labels[i],
                    classes - 1
                ),
            });
        }
        self.labels = Some(Labels {
            values: labels,
            classes,
        });
        Ok(self)
    }

    /// The same examples without labels.
    pub fn without_labels(mut self) -> Self {
        self.labels = None;
        self
    }

    /// The class labels, one per example, if the data has them.
    pub fn labels(&self) -> Option<&[usize]> {
        self.labels.as_ref().map(|l| l.values.as_slice())
    }

    /// The number of classes (0: unlabelled).
    pub fn classes(&self) -> usize {
        self.labels.as_ref().map_or(0, |l| l.classes)
    }

    /// `Ok` where `other` (a held-out or validation split) is labelled like this data: both
    /// unlabelled, or both with the same number of classes.
    pub fn check_same_labelling(&self, other: &Dataset) -> Result<()> {
        match (self.classes(), other.classes()) {
            (a, b) if a == b => Ok(()),
            (0, b) => Err(Error::InvalidArgument {
                name: "labels",
                reason: format!(
                    "the training data is unlabelled but the other split has {b} classes"
                ),
            }),
            (a, 0) => Err(Error::InvalidArgument {
                name: "labels",
                reason: format!(
                    "the training data has {a} classes but the other split is unlabelled"
                ),
            }),
            (a, b) => Err(Error::InvalidArgument {
                name: "labels",
                reason: format!("the training data has {a} classes, the other split {b}"),
            }),
        }
    }

    /// The labels of the examples at `indices` (`None` for unlabelled data).
    pub(crate) fn labels_at(&self, indices: &[usize]) -> Option<Vec<usize>> {
        self.labels
            .as_ref()
            .map(|l| indices.iter().map(|&i| l.values[i]).collect())
    }

    /// CRC-32 of the values (little-endian bytes): identifies the data a checkpoint or a
    /// cached model was made from.
    pub(crate) fn crc(&self) -> u32 {
        self.crc_hasher().finalize()
    }

    /// A CRC-32 hasher fed with the values, for callers that hash more after them.
    pub(crate) fn crc_hasher(&self) -> crc32fast::Hasher {
        let mut hasher = crc32fast::Hasher::new();
        for v in &self.values {
            hasher.update(&v.to_le_bytes());
        }
        // Labels change what a run learns; unlabelled data hashes as it always did.
        if let Some(labels) = &self.labels {
            hasher.update(&(labels.classes as u64).to_le_bytes());
            for &l in &labels.values {
                hasher.update(&(l as u64).to_le_bytes());
            }
        }
        hasher
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.values.len() / self.dim
    }

    /// Always false: a dataset is never empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Values per example.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All values, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Example `i`. Panics if `i ≥ len()`, like slice indexing.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// The examples at `indices`, row-major, appended to `out`.
    pub(crate) fn gather_into(&self, indices: &[usize], out: &mut Vec<f32>) {
        out.reserve(indices.len() * self.dim);
        for &i in indices {
            out.extend_from_slice(self.row(i));
        }
    }

    /// Per-coordinate mean over all examples and the overall standard deviation.
    pub fn mean_and_std(&self) -> (Vec<f64>, f64) {
        let n = self.len() as f64;
        let mut mean = vec![0.0; self.dim];
        for row in self.values.chunks(self.dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v) / n;
            }
        }
        let mut var = 0.0;
        for row in self.values.chunks(self.dim) {
            for (m, &v) in mean.iter().zip(row) {
                var += (f64::from(v) - m).powi(2);
            }
        }
        (mean, (var / (n * self.dim as f64)).sqrt())
    }
}
