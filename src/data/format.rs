//! The `.ddrm` binary dataset format (version 1).
//!
//! Layout (little-endian):
//! ```text
//! [0, 256)   header: magic "DDRMDATA", version, header length, n_users, n_items, section count,
//!            flags, nnz of train/valid/test, 10 x (offset, byte length), payload CRC-32,
//!            header CRC-32 (computed with its own field zeroed), zero padding
//! sections, each at a 64-byte aligned offset, zero padding between them:
//!   0 train row pointers (u32, n_users+1)   1 train item ids (u32)
//!   2 valid row pointers                    3 valid item ids
//!   4 test row pointers                     5 test item ids
//!   6 train-by-item row pointers (n_items+1) 7 train-by-item user ids (graph propagation)
//!   8 raw user ids (u64, n_users or empty)  9 raw item ids (u64, n_items or empty)
//! ```
//! The payload CRC covers every byte after the header, so a flipped byte anywhere is detected.
//! Opening maps the file (`memmap2`), validates everything, and hands out zero-copy slices.

use super::csr::{Csr, CsrView};
use anyhow::{anyhow, bail, Context, Result};
use bytemuck::{Pod, Zeroable};
use std::path::{Path, PathBuf};

/// File magic.
pub const MAGIC: [u8; 8] = *b"DDRMDATA";
/// Current format version.
pub const VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 256;
/// Number of sections.
pub const N_SECTIONS: usize = 10;
/// Section alignment in bytes.
pub const ALIGN: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    header_len: u32,
    n_users: u32,
    n_items: u32,
    n_sections: u32,
    flags: u32,
    nnz: [u64; 3],
    sections: [[u64; 2]; N_SECTIONS],
    payload_crc: u32,
    header_crc: u32,
    pad: [u8; 32],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_LEN);

/// The three splits of a dataset.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training interactions.
    Train,
    /// Validation interactions.
    Valid,
    /// Test interactions.
    Test,
}

impl Split {
    /// All splits in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// An owned dataset, as built by importers and generators before writing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetParts {
    /// Number of users.
    pub n_users: usize,
    /// Number of items.
    pub n_items: usize,
    /// Train interactions (users x items).
    pub train: Csr,
    /// Validation interactions.
    pub valid: Csr,
    /// Test interactions.
    pub test: Csr,
    /// Raw (original) user ids by dense id; empty when ids were already dense.
    pub user_ids: Vec<u64>,
    /// Raw item ids by dense id; empty when ids were already dense.
    pub item_ids: Vec<u64>,
}

impl DatasetParts {
    /// The split's matrix.
    pub fn split(&self, s: Split) -> &Csr {
        match s {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    /// Serialize to the `.ddrm` byte image (8-byte aligned buffer and its length in bytes).
    pub fn encode(&self) -> Result<(Vec<u64>, usize)> {
        for s in Split::ALL {
            let m = self.split(s);
            if m.n_rows != self.n_users || m.n_cols != self.n_items {
                bail!(
                    "{} matrix is {} x {}, dataset is {} x {}",
                    s.name(),
                    m.n_rows,
                    m.n_cols,
                    self.n_users,
                    self.n_items
                );
            }
            m.view().validate(s.name())?;
        }
        if self.n_users > u32::MAX as usize - 1 || self.n_items > u32::MAX as usize - 1 {
            bail!("too many users or items for u32 ids");
        }
        if !self.user_ids.is_empty() && self.user_ids.len() != self.n_users {
            bail!(
                "raw user id map has {} entries, expected {}",
                self.user_ids.len(),
                self.n_users
            );
        }
        if !self.item_ids.is_empty() && self.item_ids.len() != self.n_items {
            bail!(
                "raw item id map has {} entries, expected {}",
                self.item_ids.len(),
                self.n_items
            );
        }
        let by_item = self.train.view().transpose();
        let u32_secs: [&[u32]; 8] = [
            &self.train.indptr,
            &self.train.indices,
            &self.valid.indptr,
            &self.valid.indices,
            &self.test.indptr,
            &self.test.indices,
            &by_item.indptr,
            &by_item.indices,
        ];
        let mut sections = [[0u64; 2]; N_SECTIONS];
        let mut off = HEADER_LEN;
        let mut place = |k: usize, bytes: usize, off: &mut usize| {
            sections[k] = [*off as u64, bytes as u64];
            *off = (*off + bytes).div_ceil(ALIGN) * ALIGN;
        };
        for (k, s) in u32_secs.iter().enumerate() {
            place(k, s.len() * 4, &mut off);
        }
        place(8, self.user_ids.len() * 8, &mut off);
        place(9, self.item_ids.len() * 8, &mut off);
        let total = off;
        let mut buf = vec![0u64; total / 8];
        {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
            for (k, s) in u32_secs.iter().enumerate() {
                let o = sections[k][0] as usize;
                bytes[o..o + s.len() * 4].copy_from_slice(bytemuck::cast_slice(s));
            }
            for (k, s) in [(8usize, &self.user_ids), (9, &self.item_ids)] {
                let o = sections[k][0] as usize;
                bytes[o..o + s.len() * 8].copy_from_slice(bytemuck::cast_slice(s));
            }
            let mut h = Header {
                magic: MAGIC,
                version: VERSION,
                header_len: HEADER_LEN as u32,
                n_users: self.n_users as u32,
                n_items: self.n_items as u32,
                n_sections: N_SECTIONS as u32,
                flags: 0,
                nnz: [
                    self.train.nnz() as u64,
                    self.valid.nnz() as u64,
                    self.test.nnz() as u64,
                ],
                sections,
                payload_crc: crc32fast::hash(&bytes[HEADER_LEN..total]),
                header_crc: 0,
                pad: [0; 32],
            };
            h.header_crc = crc32fast::hash(bytemuck::bytes_of(&h));
            bytes[..HEADER_LEN].copy_from_slice(bytemuck::bytes_of(&h));
        }
        Ok((buf, total))
    }

    /// Write atomically to `path` (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let (buf, len) = self.encode()?;
        let bytes: &[u8] = bytemuck::cast_slice(&buf);
        crate::util::atomic::write_atomic(path, &bytes[..len])
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Heap(Vec<u64>, usize),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Heap(v, len) => &bytemuck::cast_slice(v)[..*len],
        }
    }
}

/// An opened, validated dataset; every accessor is a zero-copy slice into the mapped file.
pub struct Dataset {
    storage: Storage,
    n_users: usize,
    n_items: usize,
    sections: [(usize, usize); N_SECTIONS],
    /// Where it came from (path or "<memory>").
    pub source: String,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("source", &self.source)
            .field("n_users", &self.n_users)
            .field("n_items", &self.n_items)
            .finish()
    }
}

impl Dataset {
    /// Open and validate a `.ddrm` file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open dataset {}", path.display()))?;
        // SAFETY: the file is opened read-only; ddrm never modifies dataset files in place
        // (writers rename a new file over the old one, which leaves this mapping intact).
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map dataset {}", path.display()))?;
        Self::from_storage(Storage::Mmap(mmap), path.display().to_string())
            .with_context(|| format!("invalid dataset file {}", path.display()))
    }

    /// Validate an in-memory image (as produced by [`DatasetParts::encode`]).
    pub fn from_parts(parts: &DatasetParts) -> Result<Self> {
        let (buf, len) = parts.encode()?;
        Self::from_storage(Storage::Heap(buf, len), "<memory>".into())
    }

    /// Validate raw bytes (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut buf = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(bytes);
        Self::from_storage(Storage::Heap(buf, bytes.len()), "<memory>".into())
    }

    fn from_storage(storage: Storage, source: String) -> Result<Self> {
        let bytes = storage.bytes();
        if bytes.len() < HEADER_LEN {
            bail!(
                "file is truncated: {} bytes, smaller than the {HEADER_LEN}-byte header",
                bytes.len()
            );
        }
        let h: Header = bytemuck::pod_read_unaligned(&bytes[..HEADER_LEN]);
        if h.magic != MAGIC {
            bail!("not a ddrm dataset (wrong magic bytes)");
        }
        if h.version > VERSION {
            bail!(
                "dataset format version {} is newer than this ddrm supports ({VERSION}); upgrade ddrm",
                h.version
            );
        }
        if h.version != VERSION {
            bail!("unsupported dataset format version {}", h.version);
        }
        let mut hz = h;
        hz.header_crc = 0;
        if crc32fast::hash(bytemuck::bytes_of(&hz)) != h.header_crc {
            bail!("header checksum mismatch: the file is corrupted");
        }
        if h.header_len as usize != HEADER_LEN || h.n_sections as usize != N_SECTIONS {
            bail!("unexpected header length or section count");
        }
        let n_users = h.n_users as usize;
        let n_items = h.n_items as usize;
        let mut sections = [(0usize, 0usize); N_SECTIONS];
        let mut prev_end = HEADER_LEN;
        for (k, s) in h.sections.iter().enumerate() {
            let (off, len) = (s[0], s[1]);
            let end = off
                .checked_add(len)
                .ok_or_else(|| anyhow!("section {k} overflows"))?;
            if !(off as usize).is_multiple_of(ALIGN)
                || (off as usize) < prev_end
                || end > bytes.len() as u64
            {
                bail!(
                    "section {k} (offset {off}, {len} bytes) lies outside the file or out of order: \
                     the file is truncated or corrupted"
                );
            }
            prev_end = end as usize;
            sections[k] = (off as usize, len as usize);
        }
        if crc32fast::hash(&bytes[HEADER_LEN..]) != h.payload_crc {
            bail!("payload checksum mismatch: the file is corrupted or truncated");
        }
        let ds = Dataset {
            storage,
            n_users,
            n_items,
            sections,
            source,
        };
        ds.validate(&h)?;
        Ok(ds)
    }

    fn validate(&self, h: &Header) -> Result<()> {
        let expect = |k: usize, elems: usize, size: usize, what: &str| -> Result<()> {
            if self.sections[k].1 != elems * size {
                bail!(
                    "{what}: section holds {} bytes, expected {}",
                    self.sections[k].1,
                    elems * size
                );
            }
            Ok(())
        };
        for s in Split::ALL {
            let k = s.index() * 2;
            expect(k, self.n_users + 1, 4, s.name())?;
            expect(k + 1, h.nnz[s.index()] as usize, 4, s.name())?;
            self.split(s).validate(s.name())?;
        }
        expect(6, self.n_items + 1, 4, "train-by-item")?;
        expect(7, h.nnz[0] as usize, 4, "train-by-item")?;
        let by_item = self.train_by_item();
        by_item.validate("train-by-item")?;
        // the item-side CSR must be exactly the transpose of train
        let train = self.split(Split::Train);
        let mut cursor: Vec<u32> = by_item.indptr[..self.n_items].to_vec();
        for u in 0..self.n_users {
            for &i in train.row(u) {
                let p = cursor[i as usize];
                if p >= by_item.indptr[i as usize + 1] || by_item.indices[p as usize] != u as u32 {
                    bail!("train-by-item does not match train at user {u}, item {i}");
                }
                cursor[i as usize] = p + 1;
            }
        }
        let u_len = self.sections[8].1;
        if u_len != 0 && u_len != self.n_users * 8 {
            bail!(
                "raw user id section has {u_len} bytes, expected 0 or {}",
                self.n_users * 8
            );
        }
        let i_len = self.sections[9].1;
        if i_len != 0 && i_len != self.n_items * 8 {
            bail!(
                "raw item id section has {i_len} bytes, expected 0 or {}",
                self.n_items * 8
            );
        }
        Ok(())
    }

    fn u32s(&self, k: usize) -> &[u32] {
        let (o, l) = self.sections[k];
        bytemuck::cast_slice(&self.storage.bytes()[o..o + l])
    }

    fn u64s(&self, k: usize) -> &[u64] {
        let (o, l) = self.sections[k];
        bytemuck::cast_slice(&self.storage.bytes()[o..o + l])
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.n_users
    }

    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// A split as users x items CSR.
    pub fn split(&self, s: Split) -> CsrView<'_> {
        let k = s.index() * 2;
        CsrView {
            n_rows: self.n_users,
            n_cols: self.n_items,
            indptr: self.u32s(k),
            indices: self.u32s(k + 1),
        }
    }

    /// Train interactions.
    pub fn train(&self) -> CsrView<'_> {
        self.split(Split::Train)
    }
    /// Validation interactions.
    pub fn valid(&self) -> CsrView<'_> {
        self.split(Split::Valid)
    }
    /// Test interactions.
    pub fn test(&self) -> CsrView<'_> {
        self.split(Split::Test)
    }

    /// Train interactions as items x users CSR (for graph propagation).
    pub fn train_by_item(&self) -> CsrView<'_> {
        CsrView {
            n_rows: self.n_items,
            n_cols: self.n_users,
            indptr: self.u32s(6),
            indices: self.u32s(7),
        }
    }

    /// Raw user ids by dense id (empty when the import ids were already dense).
    pub fn user_raw_ids(&self) -> &[u64] {
        self.u64s(8)
    }

    /// Raw item ids by dense id (empty when the import ids were already dense).
    pub fn item_raw_ids(&self) -> &[u64] {
        self.u64s(9)
    }

    /// An owned copy of everything.
    pub fn to_parts(&self) -> DatasetParts {
        DatasetParts {
            n_users: self.n_users,
            n_items: self.n_items,
            train: self.train().to_owned(),
            valid: self.valid().to_owned(),
            test: self.test().to_owned(),
            user_ids: self.user_raw_ids().to_vec(),
            item_ids: self.item_raw_ids().to_vec(),
        }
    }

    /// A short fingerprint (users, items, nnz and payload CRC) used to tie checkpoints to data.
    pub fn fingerprint(&self) -> String {
        let h: Header = bytemuck::pod_read_unaligned(&self.storage.bytes()[..HEADER_LEN]);
        format!(
            "{}x{}:{}/{}/{}:{:08x}",
            self.n_users, self.n_items, h.nnz[0], h.nnz[1], h.nnz[2], h.payload_crc
        )
    }
}

/// Resolve a dataset given by name (`ml1m-noisy`) or by path.
///
/// A name is looked up as `NAME.ddrm` in `$DDRM_DATA_DIR`, then `./data`, then the `data/`
/// folder of the source tree this binary was built from.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    let p = PathBuf::from(name_or_path);
    if p.is_file() {
        return Ok(p);
    }
    let file = if name_or_path.ends_with(".ddrm") {
        name_or_path.to_string()
    } else {
        format!("{name_or_path}.ddrm")
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("DDRM_DATA_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("data"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("data"));
    for d in &dirs {
        let c = d.join(&file);
        if c.is_file() {
            return Ok(c);
        }
    }
    let mut known: Vec<String> = Vec::new();
    for d in &dirs {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(stem) = n.strip_suffix(".ddrm") {
                    if !known.contains(&stem.to_string()) {
                        known.push(stem.to_string());
                    }
                }
            }
        }
    }
    known.sort();
    bail!(
        "dataset '{name_or_path}' not found (no such file, and no {file} in {}); known datasets: {}",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        if known.is_empty() { "none".into() } else { known.join(", ") }
    )
}

/// Resolve and open a dataset by name or path.
pub fn open(name_or_path: &str) -> Result<Dataset> {
    Dataset::open(&resolve(name_or_path)?)
}
