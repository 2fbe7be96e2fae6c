//! The 10,000-image MNIST subset shipped in the repository's `data/mnist/` (see its README for
//! the attribution: CC BY-SA 3.0).

use super::Images;
use crate::error::Result;
use std::path::{Path, PathBuf};

/// The images file's name.
pub const IMAGES_FILE: &str = "mnist10k-images-idx3-ubyte.gz";
/// The labels file's name.
pub const LABELS_FILE: &str = "mnist10k-labels-idx1-ubyte.gz";

/// The folder of the bundled subset: `data/mnist` in the crate's source.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("mnist")
}

/// The bundled images file.
pub fn images_path() -> PathBuf {
    default_dir().join(IMAGES_FILE)
}

/// The bundled labels file.
pub fn labels_path() -> PathBuf {
    default_dir().join(LABELS_FILE)
}

/// Loads MNIST from `path`: a folder holding the subset's two files or the full set's
/// (`train-images-idx3-ubyte[.gz]` and `train-labels-idx1-ubyte[.gz]`), or one images IDX
/// file (unlabelled). `None` loads the bundled subset.
///
/// ```
/// let digits = integration_flow::data::mnist::load(None)?;
/// assert_eq!(digits.len(), 10_000);
/// assert!(digits.labels().is_some());
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn load(path: Option<&Path>) -> Result<Images> {
    let dir = match path {
        None => default_dir(),
        Some(p) if p.is_file() => return Images::from_idx(p, None::<&Path>),
        Some(p) => p.to_path_buf(),
    };
    let candidates = [
        (IMAGES_FILE, LABELS_FILE),
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ];
    for (images, labels) in candidates {
        if dir.join(images).is_file() {
            let labels = dir.join(labels);
            let labels = labels.is_file().then_some(labels);
            return Images::from_idx(dir.join(images), labels);
        }
    }
    Err(crate::Error::Io {
        path: dir.join(IMAGES_FILE),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no MNIST images file (mnist10k-images-idx3-ubyte.gz or train-images-idx3-ubyte[.gz])",
        ),
    })
}
