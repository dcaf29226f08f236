//! Reader and writer for NumPy `.npy` files holding an (n, 2) integer array.
//!
//! Accepted dtypes: signed/unsigned 32/64-bit integers, little- or big-endian (`<i8`, `>i4`,
//! `<u8`, ...). Fortran order is rejected (the DiffRec splits are C order).

use anyhow::{bail, Context, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let start = header.find(&pat)? + pat.len();
    Some(header[start..].trim_start())
}

/// Parse an `.npy` image of an (n, 2) integer array into rows of i64.
pub fn parse_pairs(bytes: &[u8], what: &str) -> Result<Vec<[i64; 2]>> {
    if bytes.is_empty() {
        bail!("{what}: empty file");
    }
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("{what}: not a NumPy .npy file (bad magic)");
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("{what}: truncated .npy header");
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("{what}: unsupported .npy format version {v}"),
    };
    let hend = hstart
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .with_context(|| format!("{what}: truncated .npy header"))?;
    let header = std::str::from_utf8(&bytes[hstart..hend])
        .with_context(|| format!("{what}: .npy header is not text"))?;
    let descr = dict_value(header, "descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .with_context(|| format!("{what}: .npy header has no 'descr'"))?;
    let fortran = dict_value(header, "fortran_order")
        .with_context(|| format!("{what}: .npy header has no 'fortran_order'"))?;
    if fortran.starts_with("True") {
        bail!("{what}: Fortran-order arrays are not supported; save the array in C order (np.ascontiguousarray)");
    }
    let shape_txt = dict_value(header, "shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .with_context(|| format!("{what}: .npy header has no 'shape'"))?;
    let dims: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{what}: bad shape '({shape_txt})'"))?;
    if dims.len() != 2 || dims[1] != 2 {
        bail!("{what}: expected an (n, 2) array of (user, item) rows, found shape ({shape_txt})");
    }
    let n = dims[0];
    let (big, size, signed) = match descr.as_bytes() {
        [e @ (b'<' | b'>' | b'='), k @ (b'i' | b'u'), s] if matches!(s, b'4' | b'8') => {
            (*e == b'>', (s - b'0') as usize, *k == b'i')
        }
        _ => bail!(
            "{what}: unsupported dtype '{descr}' (expected 32- or 64-bit integers, e.g. '<i8')"
        ),
    };
    let data = &bytes[hend..];
    let need = n.checked_mul(2 * size).context("array too large")?;
    if data.len() < need {
        bail!(
            "{what}: truncated data: {} bytes, expected {need} for {n} rows",
            data.len()
        );
    }
    if data.len() > need {
        bail!(
            "{what}: {} trailing bytes after {n} rows",
            data.len() - need
        );
    }
    let mut out = Vec::with_capacity(n);
    let read = |k: usize| -> i64 {
        let b = &data[k * size..(k + 1) * size];
        match (size, big, signed) {
            (4, false, true) => i32::from_le_bytes(b.try_into().unwrap()) as i64,
            (4, true, true) => i32::from_be_bytes(b.try_into().unwrap()) as i64,
            (4, false, false) => u32::from_le_bytes(b.try_into().unwrap()) as i64,
            (4, true, false) => u32::from_be_bytes(b.try_into().unwrap()) as i64,
            (8, false, true) => i64::from_le_bytes(b.try_into().unwrap()),
            (8, true, true) => i64::from_be_bytes(b.try_into().unwrap()),
            (8, false, false) => {
                u64::from_le_bytes(b.try_into().unwrap()).min(i64::MAX as u64) as i64
            }
            _ => u64::from_be_bytes(b.try_into().unwrap()).min(i64::MAX as u64) as i64,
        }
    };
    for r in 0..n {
        out.push([read(2 * r), read(2 * r + 1)]);
    }
    Ok(out)
}

/// Read an (n, 2) integer `.npy` file.
pub fn read_pairs(path: &Path) -> Result<Vec<[i64; 2]>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_pairs(&bytes, &path.display().to_string())
}

/// Encode rows as an (n, 2) `<i8` C-order `.npy` image (format version 1.0).
pub fn encode_pairs(rows: &[[i64; 2]]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<i8', 'fortran_order': False, 'shape': ({}, 2), }}",
        rows.len()
    );
    // pad so that magic(6)+ver(2)+len(2)+header is a multiple of 64, ending in '\n'
    let base = 10 + dict.len() + 1;
    let pad = base.div_ceil(64) * 64 - base;
    let header = format!("{dict}{}\n", " ".repeat(pad));
    let mut out = Vec::with_capacity(10 + header.len() + rows.len() * 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for r in rows {
        out.extend_from_slice(&r[0].to_le_bytes());
        out.extend_from_slice(&r[1].to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace(img: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut out = img.to_vec();
        let pos = img
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap();
        out[pos..pos + from.len()].copy_from_slice(to.as_bytes());
        out
    }

    #[test]
    fn roundtrip_and_rejections() {
        let rows = vec![[0i64, 5], [3, 1]];
        let img = encode_pairs(&rows);
        assert_eq!(parse_pairs(&img, "x").unwrap(), rows);
        let fortran = replace(&img, "'fortran_order': False", "'fortran_order': True ");
        let e = parse_pairs(&fortran, "x").unwrap_err().to_string();
        assert!(e.contains("Fortran"), "{e}");
        assert!(parse_pairs(&img[..img.len() - 3], "x")
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(parse_pairs(b"", "x")
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn big_endian_int32() {
        let img = encode_pairs(&[]);
        let mut img = replace(&replace(&img, "'<i8'", "'>i4'"), "(0, 2)", "(1, 2)");
        img.extend_from_slice(&7i32.to_be_bytes());
        img.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(parse_pairs(&img, "x").unwrap(), vec![[7, 9]]);
    }
}
