//! NPY files (NumPy's array format): writing float32 (version 1.0), reading unsigned bytes
//! and float32 (versions 1 to 3, C order).

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The elements of an NPY array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `|u1`.
    U8(Vec<u8>),
    /// `<f4`.
    F32(Vec<f32>),
    /// `<f8` (NumPy's default float).
    F64(Vec<f64>),
    /// `<i8` (NumPy's default integer: class labels).
    I64(Vec<i64>),
}

impl NpyData {
    /// The elements as float32 (bytes as their values 0–255, float64 rounded to the nearest
    /// float32: values beyond its range become infinite).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            NpyData::U8(v) => v.iter().map(|&b| f32::from(b)).collect(),
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// An NPY array read by [`parse_npy`] or [`read_npy`].
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape, outermost first.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: NpyData,
}

/// Parses NPY `bytes` holding unsigned bytes (`|u1`), or little-endian float32 (`<f4`),
/// float64 (`<f8`) or int64 (`<i8`) in C order. Never panics: anything malformed or unsupported is an [`Error::Format`] saying what.
///
/// ```
/// use integration_flow::data::{parse_npy, NpyData};
/// let dir = std::env::temp_dir().join("integration_flow_parse_npy_doc");
/// std::fs::create_dir_all(&dir).unwrap();
/// integration_flow::data::write_npy_f32(dir.join("a.npy"), &[1.0, 2.0], &[1, 2])?;
/// let array = parse_npy(&std::fs::read(dir.join("a.npy")).unwrap())?;
/// assert_eq!((array.shape, array.data), (vec![1, 2], NpyData::F32(vec![1.0, 2.0])));
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
    parse(bytes).map_err(|reason| Error::Format {
        path: PathBuf::from("(in memory)"),
        reason,
    })
}

/// Reads the NPY file at `path` (see [`parse_npy`]).
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes).map_err(|reason| Error::Format {
        path: path.to_path_buf(),
        reason,
    })
}

fn parse(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if !bytes.starts_with(b"\x93NUMPY") {
        return Err("not an NPY file: missing the \\x93NUMPY magic".into());
    }
    let version = *bytes.get(6).ok_or("truncated NPY preamble")?;
    let (header_start, header_len) = match version {
        1 => {
            let b = bytes.get(8..10).ok_or("truncated NPY preamble")?;
            (10usize, usize::from(u16::from_le_bytes([b[0], b[1]])))
        }
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated NPY preamble")?;
            (12, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        v => return Err(format!("NPY version {v} is not supported (1, 2 or 3)")),
    };
    let header = header_start
        .checked_add(header_len)
        .and_then(|end| bytes.get(header_start..end))
        .ok_or_else(|| format!("truncated NPY header: {header_len} bytes declared"))?;
    let header = std::str::from_utf8(header).map_err(|_| "NPY header is not text")?;
    let descr = dict_value(header, "descr").ok_or("NPY header has no 'descr'")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or("NPY header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("Fortran-ordered NPY arrays are not supported; save in C order".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("NPY header has no 'shape'")?;
    let shape = parse_shape(shape_text)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let body = &bytes[header_start + header_len..];
    let kind = match descr {
        "|u1" | "<u1" | "u1" => Dtype::U8,
        "<f4" | "f4" => Dtype::F32,
        "<f8" | "f8" => Dtype::F64,
        "<i8" | "i8" => Dtype::I64,
        other => {
            return Err(format!(
                "NPY dtype {other:?} is not supported (unsigned bytes '|u1', float32 '<f4', \
                 float64 '<f8' or int64 '<i8', little-endian)"
            ))
        }
    };
    let need = count
        .checked_mul(kind.width())
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if body.len() != need {
        return Err(super::body_size_error(
            format!("shape {shape:?} of {descr}"),
            need,
            body.len(),
        ));
    }
    let data = match kind {
        Dtype::U8 => NpyData::U8(body.to_vec()),
        Dtype::F32 => NpyData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => NpyData::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::I64 => NpyData::I64(
            body.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    Ok(NpyArray { shape, data })
}

/// The element types an NPY file may hold here.
#[derive(Clone, Copy)]
enum Dtype {
    U8,
    F32,
    F64,
    I64,
}

impl Dtype {
    /// Bytes per element.
    fn width(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }
}

/// The text after `'key':` in a Python dict literal, up to the next top-level comma or brace.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth <= 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("NPY shape {text:?} is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("NPY shape entry {s:?} is not a count"))
        })
        .collect()
}

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
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(
        path.as_ref(),
        "<f4",
        &bytes,
        values.len(),
        shape,
        "write_npy_f32",
    )
}

/// Writes `values` as a little-endian int64 NPY array of `shape` (C order) to `path`,
/// atomically: class labels for NumPy (`np.load(path)` gives `int64`).
///
/// ```
/// use integration_flow::data::{read_npy, NpyData};
/// let path = std::env::temp_dir().join("integration_flow_npy_i64_doc.npy");
/// integration_flow::data::write_npy_i64(&path, &[3, 1, 4], &[3])?;
/// assert_eq!(read_npy(&path)?.data, NpyData::I64(vec![3, 1, 4]));
/// assert!(integration_flow::data::write_npy_i64(&path, &[3, 1], &[3]).is_err());
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn write_npy_i64(path: impl AsRef<Path>, values: &[i64], shape: &[usize]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(
        path.as_ref(),
        "<i8",
        &bytes,
        values.len(),
        shape,
        "write_npy_i64",
    )
}

/// An NPY file of `count` values of type `descr` (their little-endian `body`) and `shape`.
fn write_npy(
    path: &Path,
    descr: &str,
    body: &[u8],
    count: usize,
    shape: &[usize],
    context: &'static str,
) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected != count {
        return Err(Error::ShapeMismatch {
            context,
            expected: format!("{expected} values for shape {shape:?}"),
            found: format!("{count} values"),
        });
    }
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n', padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + body.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(body);
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory (`path` + `.tmp`),
/// fsynced and renamed, so that `path` never holds a partial file: a run killed while writing
/// leaves the previous file or the new one. Errors are [`Error::Io`] naming `path`.
///
/// ```
/// let path = std::env::temp_dir().join("integration_flow_doc_write_atomically.json");
/// integration_flow::data::write_atomically(&path, b"{}")?;
/// assert_eq!(std::fs::read(&path).unwrap(), b"{}");
/// # let _ = std::fs::remove_file(&path);
/// # Ok::<(), integration_flow::Error>(())
/// ```
pub fn write_atomically(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    let (path, bytes) = (path.as_ref(), bytes.as_ref());
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
