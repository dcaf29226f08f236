//! Versioned checkpoint files of named f32 tensors, memory-mappable:
//! `"DDRMCKPT"`, version (u32), metadata length (u32), JSON metadata, zero padding, then each
//! tensor at a 64-byte aligned offset. The metadata names the model, the dataset fingerprint,
//! the configuration, every tensor's shape and offset, and a CRC-32 of the tensor bytes.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"DDRMCKPT";
const VERSION: u32 = 1;

/// Shape and place of one tensor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Name.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Byte offset from the start of the file.
    pub offset: usize,
}

/// Metadata stored in a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// What the checkpoint holds ("backend", "ddrm", ...).
    pub kind: String,
    /// Fingerprint of the dataset it was trained on.
    pub dataset: String,
    /// The run configuration.
    pub config: serde_json::Value,
    /// Tensors.
    pub tensors: Vec<TensorInfo>,
    /// CRC-32 of all tensor bytes in order.
    pub crc32: u32,
}

/// Write tensors atomically.
pub fn write(
    path: &Path,
    kind: &str,
    dataset: &str,
    config: serde_json::Value,
    tensors: &[(&str, usize, usize, &[f32])],
) -> Result<()> {
    let mut h = crc32fast::Hasher::new();
    for t in tensors {
        assert_eq!(t.3.len(), t.1 * t.2, "tensor {} has the wrong size", t.0);
        h.update(bytemuck::cast_slice(t.3));
    }
    let crc = h.finalize();
    // offsets depend on the metadata length, which depends on the offsets' digits: iterate
    let mut base = 4096usize;
    let (meta_bytes, infos) = loop {
        let mut off = base;
        let mut infos = Vec::new();
        for t in tensors {
            infos.push(TensorInfo {
                name: t.0.to_string(),
                rows: t.1,
                cols: t.2,
                offset: off,
            });
            off = (off + t.3.len() * 4).div_ceil(64) * 64;
        }
        let meta = Meta {
            kind: kind.into(),
            dataset: dataset.into(),
            config: config.clone(),
            tensors: infos.clone(),
            crc32: crc,
        };
        let mb = serde_json::to_vec(&meta)?;
        if 16 + mb.len() <= base {
            break (mb, infos);
        }
        base = (16 + mb.len()).div_ceil(4096) * 4096;
    };
    crate::util::atomic::write_atomic_with(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
        w.write_all(&meta_bytes)?;
        let mut pos = 16 + meta_bytes.len();
        for (t, info) in tensors.iter().zip(&infos) {
            w.write_all(&vec![0u8; info.offset - pos])?;
            w.write_all(bytemuck::cast_slice(t.3))?;
            pos = info.offset + t.3.len() * 4;
        }
        Ok(())
    })
}

/// An opened, validated checkpoint.
pub struct TensorFile {
    mmap: memmap2::Mmap,
    /// Metadata.
    pub meta: Meta,
}

impl TensorFile {
    /// Open and validate (magic, version, bounds, checksum).
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open checkpoint {}", path.display()))?;
        // SAFETY: read-only mapping of a file ddrm only replaces by rename.
        let mmap = unsafe { memmap2::Mmap::map(&f) }?;
        let ctx = || format!("invalid checkpoint {}", path.display());
        if mmap.len() < 16 || &mmap[..8] != MAGIC {
            bail!("{}: not a ddrm checkpoint", ctx());
        }
        let ver = u32::from_le_bytes(mmap[8..12].try_into().unwrap());
        if ver != VERSION {
            bail!(
                "{}: checkpoint version {ver}, this ddrm reads version {VERSION}",
                ctx()
            );
        }
        let ml = u32::from_le_bytes(mmap[12..16].try_into().unwrap()) as usize;
        if 16 + ml > mmap.len() {
            bail!("{}: truncated metadata", ctx());
        }
        let meta: Meta = serde_json::from_slice(&mmap[16..16 + ml]).with_context(ctx)?;
        let mut h = crc32fast::Hasher::new();
        for t in &meta.tensors {
            let end = t
                .rows
                .checked_mul(t.cols)
                .and_then(|n| n.checked_mul(4))
                .and_then(|n| n.checked_add(t.offset));
            match end {
                Some(e) if e <= mmap.len() && t.offset % 64 == 0 => h.update(&mmap[t.offset..e]),
                _ => bail!(
                    "{}: tensor {} lies outside the file (truncated?)",
                    ctx(),
                    t.name
                ),
            }
        }
        if h.finalize() != meta.crc32 {
            bail!("{}: checksum mismatch (corrupted)", ctx());
        }
        Ok(TensorFile { mmap, meta })
    }

    /// A tensor by name: (data, rows, cols).
    pub fn get(&self, name: &str) -> Result<(&[f32], usize, usize)> {
        let t = self
            .meta
            .tensors
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("checkpoint has no tensor '{name}'"))?;
        let bytes = &self.mmap[t.offset..t.offset + t.rows * t.cols * 4];
        Ok((bytemuck::cast_slice(bytes), t.rows, t.cols))
    }
}
