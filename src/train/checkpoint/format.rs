//! The checkpoint file: named sections, each with its length and CRC-32, written atomically.
//!
//! Layout (little-endian): the magic `IFCKPT01`, a u32 section count, then per section a u16
//! name length, the name, a u64 payload length, the payload's CRC-32 (u32) and the payload.
//! Writing goes to `<file>.tmp`, is fsynced, renamed over the file and the directory fsynced,
//! so a crash at any moment leaves either the previous checkpoint or the new one.

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"IFCKPT01";
/// The checkpoint's file name inside a checkpoint directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.ifc";

/// Sections of a checkpoint, in order. A payload is a list of parts written one after the
/// other, so that a large section (a memory-mapped anchor store) is written from where it
/// lives instead of being copied into one buffer first.
#[derive(Debug, Default)]
pub(crate) struct Sections<'a>(pub Vec<(String, Vec<Cow<'a, [u8]>>)>);

impl<'a> Sections<'a> {
    pub(crate) fn push(&mut self, name: &str, payload: Vec<u8>) {
        self.push_parts(name, vec![Cow::Owned(payload)]);
    }

    pub(crate) fn push_parts(&mut self, name: &str, parts: Vec<Cow<'a, [u8]>>) {
        self.0.push((name.to_string(), parts));
    }

    /// Whether a section `name` is there.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// The payload of `name`, or an error naming the file.
    pub(crate) fn take(&mut self, name: &str, path: &Path) -> Result<Vec<u8>> {
        let i = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("section `{name}` is missing"),
            })?;
        Ok(self.0.swap_remove(i).1.concat())
    }

    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&(self.0.len() as u32).to_le_bytes())?;
        for (name, parts) in &self.0 {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            let mut crc = crc32fast::Hasher::new();
            parts.iter().for_each(|p| crc.update(p));
            out.write_all(&(name.len() as u16).to_le_bytes())?;
            out.write_all(name.as_bytes())?;
            out.write_all(&(len as u64).to_le_bytes())?;
            out.write_all(&crc.finalize().to_le_bytes())?;
            for part in parts {
                out.write_all(part)?;
            }
        }
        Ok(())
    }

    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Sections<'static>> {
        let corrupt = |reason: String| Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(8) != Some(MAGIC.as_slice()) {
            return Err(corrupt(
                "not an integration-flow checkpoint (bad magic)".into(),
            ));
        }
        let count = reader
            .u32()
            .ok_or_else(|| corrupt("truncated header".into()))?;
        let mut sections = Vec::new();
        for k in 0..count {
            let truncated = || corrupt(format!("truncated in section {k}"));
            let name_len = reader.u16().ok_or_else(truncated)? as usize;
            let name = reader.take(name_len).ok_or_else(truncated)?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| corrupt(format!("section {k} has a malformed name")))?;
            let len = reader.u64().ok_or_else(truncated)?;
            let crc = reader.u32().ok_or_else(truncated)?;
            let len = usize::try_from(len).map_err(|_| truncated())?;
            let payload = reader.take(len).ok_or_else(truncated)?;
            if crc32fast::hash(payload) != crc {
                return Err(corrupt(format!("section `{name}` fails its checksum")));
            }
            sections.push((name, vec![Cow::Owned(payload.to_vec())]));
        }
        if reader.at != bytes.len() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the last section",
                bytes.len() - reader.at
            )));
        }
        Ok(Sections(sections))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The checkpoint file in `dir`.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Writes `sections` to `dir/checkpoint.ifc` atomically (temporary file, fsync, rename, fsync
/// of the directory). On error the previous checkpoint is untouched and the temporary file
/// removed.
pub(crate) fn write(dir: &Path, sections: &Sections) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let path = checkpoint_path(dir);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let result = (|| {
        let mut file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        sections.write_to(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(&path, e)
    })
}

/// Reads and verifies `dir/checkpoint.ifc`.
pub(crate) fn read(dir: &Path) -> Result<Sections<'static>> {
    let path = checkpoint_path(dir);
    let bytes = fs::read(&path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
    })?;
    Sections::decode(&bytes, &path)
}
