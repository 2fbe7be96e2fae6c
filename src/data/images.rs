//! Image datasets: MNIST's IDX files, CIFAR-10's binary batches, NPY arrays and folders of
//! PNG/JPEG files, all read into `[n, c, h, w]` values scaled to [-1, 1], with optional labels.

use super::idx::read_idx;
use super::npy::{read_npy, NpyData};
use super::Dataset;
use crate::error::{Error, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use std::path::{Path, PathBuf};

/// The layout of a 4-D NPY image array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NpyLayout {
    /// `[n, h, w, c]` if the last side is 1, 3 or 4 and the second is not; `[n, c, h, w]` if
    /// the other way round; otherwise an error asking for an explicit layout.
    #[default]
    Auto,
    /// `[n, h, w, c]` (NumPy/TensorFlow images).
    Nhwc,
    /// `[n, c, h, w]` (PyTorch images).
    Nchw,
}

/// `n` images of `[channels, height, width]`, values in [-1, 1], flat per image (channel-major),
/// with an optional class label per image.
///
/// ```
/// use integration_flow::data::Images;
/// let images = Images::new(vec![0.0; 2 * 4], [1, 2, 2], Some(vec![3, 7]))?;
/// assert_eq!((images.len(), images.shape(), images.labels()), (2, [1, 2, 2], Some(&[3u8, 7][..])));
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    data: Dataset,
    shape: [usize; 3],
    labels: Option<Vec<u8>>,
}

impl Images {
    /// Wraps `values` (`n·c·h·w` of them, each in [-1, 1]) of images shaped `[c, h, w]`.
    pub fn new(values: Vec<f32>, shape: [usize; 3], labels: Option<Vec<u8>>) -> Result<Self> {
        if shape.contains(&0) {
            return Err(Error::InvalidArgument {
                name: "shape",
                reason: format!("image shape {shape:?} has an empty side"),
            });
        }
        if let Some(v) = values.iter().find(|v| !(-1.0..=1.0).contains(*v)) {
            return Err(Error::InvalidArgument {
                name: "values",
                reason: format!("image values must lie in [-1, 1], found {v}"),
            });
        }
        let data = Dataset::new(values, shape.iter().product())?;
        if let Some(labels) = &labels {
            if labels.len() != data.len() {
                return Err(Error::ShapeMismatch {
                    context: "image labels",
                    expected: format!("{} labels", data.len()),
                    found: format!("{}", labels.len()),
                });
            }
        }
        Ok(Images {
            data,
            shape,
            labels,
        })
    }

    /// MNIST's layout: an IDX file of `[n, h, w]` bytes (gzip or raw) and optionally an IDX file
    /// of `n` labels.
    ///
    /// ```
    /// let images = integration_flow::data::Images::from_idx(
    ///     integration_flow::data::mnist::images_path(),
    ///     Some(integration_flow::data::mnist::labels_path()),
    /// )?;
    /// assert_eq!((images.len(), images.shape()), (10_000, [1, 28, 28]));
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn from_idx(images: impl AsRef<Path>, labels: Option<impl AsRef<Path>>) -> Result<Self> {
        let path = images.as_ref();
        let array = read_idx(path)?;
        let shape = match array.dims[..] {
            [_, h, w] => [1, h, w],
            ref dims => {
                return Err(format_error(
                    path,
                    format!("an image IDX file has dimensions [n, h, w], found {dims:?}"),
                ))
            }
        };
        let labels = match labels {
            None => None,
            Some(p) => {
                let p = p.as_ref();
                let l = read_idx(p)?;
                if l.dims.len() != 1 || l.dims[0] != array.dims[0] {
                    return Err(format_error(
                        p,
                        format!(
                            "a label IDX file has dimensions [n] with n = {} images, found {:?}",
                            array.dims[0], l.dims
                        ),
                    ));
                }
                Some(l.data)
            }
        };
        from_bytes(path, &array.data, shape, labels)
    }

    /// CIFAR-10's binary batches (`data_batch_1.bin` …): records of one label byte (0–9) and
    /// 3·32·32 bytes (red, green, blue planes).
    pub fn from_cifar10<P: AsRef<Path>>(files: &[P]) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::InvalidArgument {
                name: "files",
                reason: "no CIFAR-10 batch files given".into(),
            });
        }
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for file in files {
            let path = file.as_ref();
            let bytes = std::fs::read(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            cifar10_records(path, &bytes, &mut pixels, &mut labels)?;
        }
        from_bytes(files[0].as_ref(), &pixels, [3, 32, 32], Some(labels))
    }

    /// One CIFAR-10 binary batch already in memory (as [`from_cifar10`](Self::from_cifar10)
    /// reads from a file); `name` labels errors.
    pub fn parse_cifar10(bytes: &[u8], name: impl AsRef<Path>) -> Result<Self> {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        cifar10_records(name.as_ref(), bytes, &mut pixels, &mut labels)?;
        from_bytes(name.as_ref(), &pixels, [3, 32, 32], Some(labels))
    }

    /// An NPY array of images: `[n, h, w]`, `[n, h, w, c]` or `[n, c, h, w]` (see
    /// [`NpyLayout`]), unsigned bytes (0–255) or float32 in [0, 1] or [-1, 1].
    pub fn from_npy(path: impl AsRef<Path>, layout: NpyLayout) -> Result<Self> {
        let path = path.as_ref();
        let array = read_npy(path)?;
        let is_channels = |s: usize| matches!(s, 1 | 3 | 4);
        let (shape, nhwc) = match (&array.shape[..], layout) {
            (&[_, h, w], _) => ([1, h, w], false),
            (&[_, a, b, c], NpyLayout::Nhwc) => ([c, a, b], true),
            (&[_, a, b, c], NpyLayout::Nchw) => ([a, b, c], false),
            (&[_, a, b, c], NpyLayout::Auto) => match (is_channels(a), is_channels(c)) {
                (false, true) => ([c, a, b], true),
                (true, false) => ([a, b, c], false),
                _ => {
                    return Err(format_error(
                        path,
                        format!(
                            "cannot tell [n, h, w, c] from [n, c, h, w] for shape {:?}; \
                             pass NpyLayout::Nhwc or NpyLayout::Nchw",
                            array.shape
                        ),
                    ))
                }
            },
            (other, _) => {
                return Err(format_error(
                    path,
                    format!("image arrays are [n, h, w] or 4-D, found shape {other:?}"),
                ))
            }
        };
        let values: Vec<f32> = match array.data {
            NpyData::U8(bytes) => bytes.iter().map(|&b| f32::from(b) / 127.5 - 1.0).collect(),
            NpyData::I64(_) => {
                return Err(format_error(
                    path,
                    "images are bytes or floats, found int64 (labels?)",
                ))
            }
            data @ (NpyData::F32(_) | NpyData::F64(_)) => {
                let v = data.to_f32();
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    return Err(format_error(path, format!("non-finite value {bad}")));
                }
                let (lo, hi) = v
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                if lo >= 0.0 && hi <= 1.0 {
                    v.iter().map(|x| 2.0 * x - 1.0).collect()
                } else if lo >= -1.0 && hi <= 1.0 {
                    v
                } else {
                    return Err(format_error(
                        path,
                        format!("float images must lie in [0, 1] or [-1, 1], found [{lo}, {hi}]"),
                    ));
                }
            }
        };
        let values = if nhwc {
            hwc_to_chw(&values, shape)
        } else {
            values
        };
        Images::new(values, shape, None).map_err(|e| format_error(path, e.to_string()))
    }

    /// A folder of PNG/JPEG images of one size. If the folder has subfolders, each subfolder
    /// is a class (labels 0, 1, … in name order) and its images are read; otherwise the
    /// folder's own images, unlabelled. Images are grey (one channel) if every file is grey,
    /// else RGB.
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let entries = sorted_entries(dir)?;
        let classes: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
        let mut files: Vec<(PathBuf, Option<u8>)> = Vec::new();
        if classes.is_empty() {
            files.extend(
                entries
                    .iter()
                    .filter(|p| is_image(p))
                    .map(|p| (p.clone(), None)),
            );
        } else {
            if classes.len() > 256 {
                return Err(format_error(
                    dir,
                    format!("{} class folders; at most 256 are supported", classes.len()),
                ));
            }
            if let Some(stray) = entries.iter().find(|p| is_image(p)) {
                return Err(format_error(
                    stray,
                    "an image beside class folders: put it in a class folder or remove it",
                ));
            }
            for (label, class) in classes.iter().enumerate() {
                for p in sorted_entries(class)?.into_iter().filter(|p| is_image(p)) {
                    files.push((p, Some(label as u8)));
                }
            }
        }
        if files.is_empty() {
            return Err(format_error(dir, "no .png, .jpg or .jpeg images found"));
        }
        let decoded: Vec<image::DynamicImage> = files
            .iter()
            .map(|(p, _)| {
                image::open(p).map_err(|e| format_error(p, format!("cannot decode image: {e}")))
            })
            .collect::<Result<_>>()?;
        let (w, h) = (decoded[0].width(), decoded[0].height());
        let grey = decoded.iter().all(|d| !d.color().has_color());
        let c = if grey { 1 } else { 3 };
        let mut bytes = Vec::with_capacity(files.len() * c * (w * h) as usize);
        for (img, (p, _)) in decoded.iter().zip(&files) {
            if (img.width(), img.height()) != (w, h) {
                return Err(format_error(
                    p,
                    format!(
                        "{}×{} pixels, but the first image is {w}×{h}",
                        img.width(),
                        img.height()
                    ),
                ));
            }
            if grey {
                bytes.extend_from_slice(img.to_luma8().as_raw());
            } else {
                let rgb = img.to_rgb8();
                let plane = (w * h) as usize;
                let raw = rgb.as_raw();
                for ch in 0..3 {
                    bytes.extend((0..plane).map(|i| raw[3 * i + ch]));
                }
            }
        }
        let labels =
            (!classes.is_empty()).then(|| files.iter().map(|(_, l)| l.unwrap_or(0)).collect());
        from_bytes(dir, &bytes, [c, h as usize, w as usize], labels)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Always false: an image set is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The labels, if the source had them.
    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }

    /// The images as a flat `[n, c·h·w]` dataset with their labels as classes `0..classes−1`
    /// (what a class-conditional model trains on); images without labels, or a label
    /// `≥ classes`, are an error.
    ///
    /// ```
    /// use integration_flow::data::Images;
    /// let images = Images::new(vec![0.0; 8], [1, 2, 2], Some(vec![3, 7]))?;
    /// assert_eq!(images.labelled_dataset(10)?.labels(), Some(&[3usize, 7][..]));
    /// assert!(images.labelled_dataset(5).is_err());
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn labelled_dataset(&self, classes: usize) -> Result<Dataset> {
        let labels = self.labels.as_ref().ok_or(Error::InvalidArgument {
            name: "images",
            reason: "these images have no labels (a conditional model needs them)".into(),
        })?;
        self.data
            .clone()
            .with_labels(labels.iter().map(|&l| usize::from(l)).collect(), classes)
    }

    /// The images as a flat `[n, c·h·w]` dataset (what the trainer takes).
    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// The first `n` images (all if `n ≥ len`); `n = 0` (an empty set) is an error.
    pub fn take(&self, n: usize) -> Result<Images> {
        if n == 0 {
            return Err(Error::InvalidArgument {
                name: "n",
                reason: "taking no images leaves an empty set".into(),
            });
        }
        Ok(self.range(0, n.min(self.len())))
    }

    /// Images `start..end`; the caller keeps `start < end ≤ len`.
    fn range(&self, start: usize, end: usize) -> Images {
        let d = self.data.dim();
        Images {
            data: Dataset::from_checked(self.data.values()[start * d..end * d].to_vec(), d),
            shape: self.shape,
            labels: self.labels.as_ref().map(|l| l[start..end].to_vec()),
        }
    }

    /// The first `len − held_out` images and the last `held_out` (a fixed split, for a
    /// held-out test set). Errors unless `0 < held_out < len`.
    pub fn split_off(&self, held_out: usize) -> Result<(Images, Images)> {
        if held_out == 0 || held_out >= self.len() {
            return Err(Error::InvalidArgument {
                name: "held_out",
                reason: format!("must be in 1..{}, got {held_out}", self.len()),
            });
        }
        let at = self.len() - held_out;
        Ok((self.range(0, at), self.range(at, self.len())))
    }

    /// The images as a `[n, c, h, w]` tensor on `device`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        let [c, h, w] = self.shape;
        Tensor::from_data(
            TensorData::new(self.data.values().to_vec(), [self.len(), c, h, w]),
            device,
        )
    }
}

/// Appends the records of one CIFAR-10 batch to `pixels` and `labels`.
fn cifar10_records(
    path: &Path,
    bytes: &[u8],
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    const RECORD: usize = 1 + 3 * 32 * 32;
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(format_error(
            path,
            format!(
                "a CIFAR-10 batch holds records of {RECORD} bytes, found {} bytes \
                 (truncated or not CIFAR-10)",
                bytes.len()
            ),
        ));
    }
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] > 9 {
            return Err(format_error(
                path,
                format!("record {i} has label {}, expected 0–9", record[0]),
            ));
        }
        labels.push(record[0]);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

fn format_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn from_bytes(
    path: &Path,
    bytes: &[u8],
    shape: [usize; 3],
    labels: Option<Vec<u8>>,
) -> Result<Images> {
    if bytes.is_empty() || shape.contains(&0) {
        return Err(format_error(path, format!("no images (shape {shape:?})")));
    }
    let values = bytes.iter().map(|&b| f32::from(b) / 127.5 - 1.0).collect();
    Images::new(values, shape, labels).map_err(|e| format_error(path, e.to_string()))
}

fn hwc_to_chw(values: &[f32], [c, h, w]: [usize; 3]) -> Vec<f32> {
    let per = c * h * w;
    let mut out = vec![0.0; values.len()];
    for (src, dst) in values.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
        for ch in 0..c {
            for i in 0..h * w {
                dst[ch * h * w + i] = src[i * c + ch];
            }
        }
    }
    out
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort();
    Ok(entries)
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}
