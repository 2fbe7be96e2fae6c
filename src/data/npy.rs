//! Writing NPY files (NumPy's array format, version 1.0).

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Writes `values` as a little-endian float32 NPY array of `shape` (C order) to `path`,
/// atomically (temporary file, fsync, rename).
///
/// ```
/// let dir = std::env::temp_dir().join("integration_flow_npy_doc");
/// std::fs::create_dir_all(&dir).unwrap();
/// integration_flow::data::write_npy_f32(dir.join("a.npy"), &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn write_npy_f32(path: impl AsRef<Path>, values: &[f32], shape: &[usize]) -> Result<()> {
    let path = path.as_ref();
    let expected: usize = shape.iter().product();
    if expected != values.len() {
        return Err(Error::ShapeMismatch {
            context: "write_npy_f32",
            expected: format!("{expected} values for shape {shape:?}"),
            found: format!("{} values", values.len()),
        });
    }
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n', padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * values.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced and
/// renamed, so that `path` never holds a partial file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(e)
    })
}
