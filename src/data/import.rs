//! Importers from public formats into [`DatasetParts`]:
//! DiffRec/DDRM NumPy splits, LightGCN text files, and rating CSV/TSV files with the
//! time-ordered 7:1:2 protocol (clean and natural-noise datasets).
//!
//! Duplicate policy: implicit feedback is a set of (user, item) pairs. With
//! [`DuplicatePolicy::Drop`] (the default) a pair given twice is kept once — for CSV input the
//! earliest occurrence in time wins, so a pair never appears in two splits — and the number
//! dropped is reported; with [`DuplicatePolicy::Error`] the import fails naming the pair.

use super::csr::{Csr, DuplicatePolicy};
use super::format::DatasetParts;
use super::npy;
use crate::util::rng::Rng;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// What an import did, for the user.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ImportReport {
    /// Duplicate pairs dropped, per split (train, valid, test).
    pub duplicates_dropped: [usize; 3],
    /// Pairs present in more than one split, dropped from the later split.
    pub cross_split_dropped: usize,
    /// Lines skipped as a header.
    pub header_skipped: bool,
}

fn check_id(v: i64, what: &str, file: &str, row: usize, kind: &str) -> Result<u32> {
    if v < 0 {
        bail!("{file}: {what} {row}: negative {kind} id {v}");
    }
    if v >= u32::MAX as i64 {
        bail!("{file}: {what} {row}: {kind} id {v} too large (ids must fit in u32)");
    }
    Ok(v as u32)
}

/// Build parts from per-split dense pairs, removing duplicates per `dup`.
fn parts_from_splits(
    splits: [Vec<(u32, u32)>; 3],
    n_users: usize,
    n_items: usize,
    dup: DuplicatePolicy,
    report: &mut ImportReport,
) -> Result<DatasetParts> {
    let names = ["train", "valid", "test"];
    let mut mats: Vec<Csr> = Vec::with_capacity(3);
    for (k, pairs) in splits.iter().enumerate() {
        let (m, dropped) = Csr::from_pairs(n_users, n_items, pairs, dup)
            .with_context(|| format!("{} split", names[k]))?;
        report.duplicates_dropped[k] = dropped;
        mats.push(m);
    }
    let test = mats.pop().unwrap();
    let valid = mats.pop().unwrap();
    let train = mats.pop().unwrap();
    Ok(DatasetParts {
        n_users,
        n_items,
        train,
        valid,
        test,
        user_ids: Vec::new(),
        item_ids: Vec::new(),
    })
}

/// Import a DiffRec/DDRM folder holding `train_list.npy`, `valid_list.npy`, `test_list.npy`
/// (each an (n, 2) integer array of dense `user, item` ids). `valid_list.npy` may be absent.
pub fn import_npy_dir(dir: &Path, dup: DuplicatePolicy) -> Result<(DatasetParts, ImportReport)> {
    let mut splits: [Vec<(u32, u32)>; 3] = Default::default();
    let (mut nu, mut ni) = (0usize, 0usize);
    for (k, name) in ["train_list.npy", "valid_list.npy", "test_list.npy"]
        .iter()
        .enumerate()
    {
        let path = dir.join(name);
        if !path.exists() {
            if k == 1 {
                continue;
            }
            bail!(
                "{}: missing (expected train_list.npy and test_list.npy)",
                path.display()
            );
        }
        let rows = npy::read_pairs(&path)?;
        let file = path.display().to_string();
        if k == 0 && rows.is_empty() {
            bail!("{file}: no interactions");
        }
        let mut v = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            let u = check_id(row[0], "row", &file, r, "user")?;
            let i = check_id(row[1], "row", &file, r, "item")?;
            nu = nu.max(u as usize + 1);
            ni = ni.max(i as usize + 1);
            v.push((u, i));
        }
        splits[k] = v;
    }
    let mut report = ImportReport::default();
    let parts = parts_from_splits(splits, nu, ni, dup, &mut report)?;
    Ok((parts, report))
}

fn parse_int(tok: &str, file: &str, line: usize, col: &str) -> Result<i64> {
    tok.trim()
        .parse::<i64>()
        .with_context(|| format!("{file}: line {line}: {col} '{tok}' is not an integer"))
}

/// Read a LightGCN-style file: one line per user, `user item item ...` (space separated).
fn read_lightgcn_file(path: &Path, out: &mut Vec<(u32, u32)>) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = path.display().to_string();
    if text.trim().is_empty() {
        bail!("{file}: empty file");
    }
    for (ln, line) in text.lines().enumerate() {
        let ln = ln + 1;
        let mut toks = line.split_whitespace();
        let Some(ut) = toks.next() else { continue };
        let u = check_id(
            parse_int(ut, &file, ln, "user id")?,
            "line",
            &file,
            ln,
            "user",
        )?;
        for t in toks {
            let i = check_id(
                parse_int(t, &file, ln, "item id")?,
                "line",
                &file,
                ln,
                "item",
            )?;
            out.push((u, i));
        }
    }
    Ok(())
}

/// Import LightGCN text files `train.txt` and `test.txt` from `dir`. When `valid_ratio > 0`,
/// a share of each user's train items (chosen with `seed`) becomes the valid split; otherwise
/// valid is empty.
pub fn import_lightgcn_dir(
    dir: &Path,
    valid_ratio: f64,
    seed: u64,
    dup: DuplicatePolicy,
) -> Result<(DatasetParts, ImportReport)> {
    if !(0.0..1.0).contains(&valid_ratio) {
        bail!("--valid-ratio must be in [0, 1), got {valid_ratio}");
    }
    let mut train = Vec::new();
    let mut test = Vec::new();
    read_lightgcn_file(&dir.join("train.txt"), &mut train)?;
    read_lightgcn_file(&dir.join("test.txt"), &mut test)?;
    let nu = train
        .iter()
        .chain(&test)
        .map(|p| p.0 as usize + 1)
        .max()
        .unwrap_or(0);
    let ni = train
        .iter()
        .chain(&test)
        .map(|p| p.1 as usize + 1)
        .max()
        .unwrap_or(0);
    let mut valid = Vec::new();
    if valid_ratio > 0.0 {
        let (m, _) = Csr::from_pairs(nu, ni, &train, DuplicatePolicy::Drop)?;
        let mut keep = Vec::with_capacity(train.len());
        for u in 0..nu {
            let mut items = m.view().row(u).to_vec();
            Rng::stream(seed, u as u64).shuffle(&mut items);
            let nv = (items.len() as f64 * valid_ratio).floor() as usize;
            for (k, &i) in items.iter().enumerate() {
                if k < nv {
                    valid.push((u as u32, i));
                } else {
                    keep.push((u as u32, i));
                }
            }
        }
        if dup == DuplicatePolicy::Error {
            // surface duplicates of the original file before carving
            Csr::from_pairs(nu, ni, &train, dup).context("train.txt")?;
        }
        train = keep;
    }
    let mut report = ImportReport::default();
    let parts = parts_from_splits([train, valid, test], nu, ni, dup, &mut report)?;
    Ok((parts, report))
}

/// Options for the rating-file importer.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// Field separator; `None` detects `,`, tab, `::`, `;` or whitespace from the first line.
    pub sep: Option<String>,
    /// Ratings at or above this are true positives; below are false positives (natural noise).
    pub min_rating: f64,
    /// `Some(true)`: first line is a header; `Some(false)`: it is not; `None`: detect.
    pub header: Option<bool>,
    /// Duplicate policy.
    pub dup: DuplicatePolicy,
}

struct Rating {
    user: u64,
    item: u64,
    rating: f64,
    time: i64,
    line: usize,
}

fn detect_sep(line: &str) -> String {
    for s in ["::", "\t", ",", ";"] {
        if line.contains(s) {
            return s.to_string();
        }
    }
    " ".to_string()
}

fn split_fields<'a>(line: &'a str, sep: &str) -> Vec<&'a str> {
    if sep == " " {
        line.split_whitespace().collect()
    } else {
        line.split(sep).map(str::trim).collect()
    }
}

fn parse_ratings(
    path: &Path,
    opts: &CsvOptions,
    report: &mut ImportReport,
) -> Result<(Vec<Rating>, bool, bool)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = path.display().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty());
    let Some(first) = first else {
        bail!("{file}: empty file")
    };
    let sep = opts.sep.clone().unwrap_or_else(|| detect_sep(first));
    let first_fields = split_fields(first, &sep);
    let skip_first = match opts.header {
        Some(h) => h,
        None => first_fields.iter().all(|f| f.parse::<f64>().is_err()),
    };
    report.header_skipped = skip_first;
    let mut out = Vec::new();
    let mut ncols: Option<usize> = None;
    let mut seen_first = false;
    for (ln, line) in text.lines().enumerate() {
        let ln = ln + 1;
        if line.trim().is_empty() {
            continue;
        }
        if !seen_first {
            seen_first = true;
            if skip_first {
                continue;
            }
        }
        let f = split_fields(line, &sep);
        if !(2..=4).contains(&f.len()) {
            bail!("{file}: line {ln}: {} columns, expected 2 to 4 (user, item[, rating[, timestamp]])", f.len());
        }
        match ncols {
            None => ncols = Some(f.len()),
            Some(n) if n != f.len() => {
                bail!(
                    "{file}: line {ln}: {} columns, but earlier lines have {n}",
                    f.len()
                )
            }
            _ => {}
        }
        let user = parse_int(f[0], &file, ln, "user id")?;
        let item = parse_int(f[1], &file, ln, "item id")?;
        if user < 0 {
            bail!("{file}: line {ln}: negative user id {user}");
        }
        if item < 0 {
            bail!("{file}: line {ln}: negative item id {item}");
        }
        let rating = if f.len() >= 3 {
            let r: f64 = f[2]
                .parse()
                .with_context(|| format!("{file}: line {ln}: rating '{}' is not a number", f[2]))?;
            if !r.is_finite() {
                bail!("{file}: line {ln}: rating '{}' is not finite", f[2]);
            }
            r
        } else {
            f64::INFINITY
        };
        let time = if f.len() == 4 {
            parse_int(f[3], &file, ln, "timestamp")?
        } else {
            0
        };
        out.push(Rating {
            user: user as u64,
            item: item as u64,
            rating,
            time,
            line: ln,
        });
    }
    if out.is_empty() {
        bail!("{file}: no interactions");
    }
    let n = ncols.unwrap_or(2);
    Ok((out, n >= 3, n >= 4))
}

fn build_remapped(
    rows: &[(&Rating, usize)],
    dup: DuplicatePolicy,
    report: &mut ImportReport,
) -> Result<DatasetParts> {
    let mut users: Vec<u64> = rows.iter().map(|r| r.0.user).collect();
    let mut items: Vec<u64> = rows.iter().map(|r| r.0.item).collect();
    users.sort_unstable();
    users.dedup();
    items.sort_unstable();
    items.dedup();
    let umap: HashMap<u64, u32> = users
        .iter()
        .enumerate()
        .map(|(k, &u)| (u, k as u32))
        .collect();
    let imap: HashMap<u64, u32> = items
        .iter()
        .enumerate()
        .map(|(k, &i)| (i, k as u32))
        .collect();
    let mut splits: [Vec<(u32, u32)>; 3] = Default::default();
    let mut seen: HashMap<(u32, u32), usize> = HashMap::with_capacity(rows.len());
    for (r, split) in rows {
        let pair = (umap[&r.user], imap[&r.item]);
        if let Some(&prev) = seen.get(&pair) {
            if dup == DuplicatePolicy::Error {
                bail!(
                    "line {}: duplicate pair (user {}, item {})",
                    r.line,
                    r.user,
                    r.item
                );
            }
            if prev == *split {
                report.duplicates_dropped[*split] += 1;
            } else {
                report.cross_split_dropped += 1;
            }
            continue;
        }
        seen.insert(pair, *split);
        splits[*split].push(pair);
    }
    let mut sub = ImportReport::default();
    let mut parts = parts_from_splits(splits, users.len(), items.len(), dup, &mut sub)?;
    parts.user_ids = users;
    parts.item_ids = items;
    Ok(parts)
}

/// Import a rating file and produce `(clean, noisy)` datasets with the time-ordered 7:1:2 split:
/// true positives (rating >= `min_rating`) sorted by timestamp (file order breaks ties) are cut
/// 70/10/20 into train/valid/test. The noisy dataset adds the false positives (rating below
/// `min_rating`) to train or valid by the same time cut-offs (those later than the valid
/// cut-off are dropped), so its test holds only true positives. Ids are remapped densely per
/// dataset in increasing raw-id order; the raw ids are stored in the dataset.
pub fn import_csv(
    path: &Path,
    opts: &CsvOptions,
) -> Result<(DatasetParts, DatasetParts, ImportReport)> {
    let mut report = ImportReport::default();
    let (mut rows, _has_rating, _has_time) = parse_ratings(path, opts, &mut report)?;
    rows.sort_by_key(|r| (r.time, r.line));
    let n_pos = rows.iter().filter(|r| r.rating >= opts.min_rating).count();
    if n_pos == 0 {
        bail!(
            "{}: no interaction has rating >= {}",
            path.display(),
            opts.min_rating
        );
    }
    let n_train = (n_pos as f64 * 0.7).round() as usize;
    let n_valid = (n_pos as f64 * 0.1).round() as usize;
    // assign positives by rank; cut-off positions in the time-sorted list
    let mut clean: Vec<(&Rating, usize)> = Vec::with_capacity(n_pos);
    let mut noisy: Vec<(&Rating, usize)> = Vec::with_capacity(rows.len());
    let mut pos_seen = 0usize;
    for r in &rows {
        if r.rating >= opts.min_rating {
            let split = if pos_seen < n_train {
                0
            } else if pos_seen < n_train + n_valid {
                1
            } else {
                2
            };
            pos_seen += 1;
            clean.push((r, split));
            noisy.push((r, split));
        } else {
            // a false positive belongs to the period of the next positive in time
            let split = if pos_seen < n_train {
                0
            } else if pos_seen < n_train + n_valid {
                1
            } else {
                2
            };
            if split < 2 {
                noisy.push((r, split));
            }
        }
    }
    // the noisy set is a superset of the clean one: report what its build dropped
    let clean_parts = build_remapped(&clean, opts.dup, &mut ImportReport::default())?;
    let noisy_parts = build_remapped(&noisy, opts.dup, &mut report)?;
    Ok((clean_parts, noisy_parts, report))
}
