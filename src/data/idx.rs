//! The IDX format of the MNIST files: a big-endian header (two zero bytes, the element type,
//! the number of dimensions, one u32 per dimension), then the elements. Only unsigned bytes
//! (type 0x08), the type of every MNIST file, are read.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Parses IDX `bytes` (already decompressed). Never panics: anything malformed is an
/// [`Error::Format`] saying what.
///
/// ```
/// use integration_flow::data::parse_idx;
/// let bytes = [0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9];
/// let array = parse_idx(&bytes)?;
/// assert_eq!((array.dims, array.data), (vec![3], vec![7, 8, 9]));
/// assert!(parse_idx(&bytes[..10]).is_err()); // truncated
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray> {
    parse(bytes).map_err(|reason| Error::Format {
        path: PathBuf::from("(in memory)"),
        reason,
    })
}

fn parse(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    let header = bytes
        .get(..4)
        .ok_or_else(|| format!("{} bytes: too short for an IDX header", bytes.len()))?;
    if header[0] != 0 || header[1] != 0 {
        return Err(format!(
            "not an IDX file: magic starts with {:#04x} {:#04x}, expected 0x00 0x00",
            header[0], header[1]
        ));
    }
    if header[2] != 0x08 {
        return Err(format!(
            "IDX element type {:#04x} is not supported (only 0x08, unsigned bytes)",
            header[2]
        ));
    }
    let rank = usize::from(header[3]);
    if rank == 0 {
        return Err("IDX header declares zero dimensions".into());
    }
    let sizes = bytes.get(4..4 + 4 * rank).ok_or_else(|| {
        format!(
            "truncated header: {rank} dimensions need {} bytes",
            4 + 4 * rank
        )
    })?;
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    let body = &bytes[4 + 4 * rank..];
    if body.len() != count {
        return Err(super::body_size_error(
            format!("dimensions {dims:?}"),
            count,
            body.len(),
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Reads the IDX file at `path`, gzip-compressed (detected by its magic bytes) or raw.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = read_maybe_gzip(path)?;
    parse(&bytes).map_err(|reason| Error::Format {
        path: path.to_path_buf(),
        reason,
    })
}

/// The bytes of `path`, decompressed if they start with the gzip magic.
pub(crate) fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::Format {
                path: path.to_path_buf(),
                reason: format!("corrupt gzip stream: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}
