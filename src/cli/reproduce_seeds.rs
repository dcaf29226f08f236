//! `ddrm reproduce --seeds` / `--summarize`: pools whole reproductions made with different
//! seeds. Each row's four metrics get a mean and a (sample) standard deviation over the seeds,
//! its mean is compared with the paper, and each variant ("B+X", "B: start point only") is
//! compared with its backend B seed by seed: in how many seeds it is above it.

use super::reproduce::{paper_row, Row};
use super::table::render;
use crate::util::atomic::write_atomic;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One reproduction's table, as `table.json` holds it.
#[derive(serde::Deserialize)]
struct Table {
    dataset: String,
    seed: u64,
    recipe: serde_json::Value,
    rows: Vec<Row>,
}

/// A row pooled over the seeds.
#[derive(Debug, Serialize)]
pub struct Pooled {
    /// Model label.
    pub model: String,
    /// R@10, R@20, N@10, N@20 per seed (in the order of `seeds`).
    pub per_seed: Vec<[f64; 4]>,
    /// Their means.
    pub mean: [f64; 4],
    /// Their sample standard deviations (0 with one seed).
    pub sd: [f64; 4],
    /// The paper's values.
    pub paper: Option<[f64; 4]>,
    /// mean / paper − 1.
    pub rel_diff: Option<[f64; 4]>,
    /// The backend row this one is a variant of.
    pub backend: Option<String>,
    /// Seeds in which this row is above its backend on R@20, and on N@20.
    pub above_backend: Option<[usize; 2]>,
}

/// Refuse an empty or repeated seed list.
pub fn check_seeds(seeds: &[u64]) -> Result<()> {
    if seeds.is_empty() {
        bail!("--seeds is empty");
    }
    for (i, s) in seeds.iter().enumerate() {
        if seeds[..i].contains(s) {
            bail!("--seeds: seed {s} is given twice (each seed is one reproduction)");
        }
    }
    Ok(())
}

fn read_table(dir: &Path) -> Result<Table> {
    let path = dir.join("table.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no table.json (not a finished `ddrm reproduce` directory)",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: malformed table.json", path.display()))
}

/// The label of the backend a row is a variant of ("MF-BPR+DDRM" → "MF-BPR").
fn backend_of(label: &str) -> Option<&str> {
    label.split_once(['+', ':']).map(|(b, _)| b)
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Pool the rows of `tables` (one per seed): the rows present in every table, in the first
/// table's order. Returns them and the labels left out.
fn pool(tables: &[Table]) -> (Vec<Pooled>, Vec<String>) {
    let find = |t: &Table, label: &str| t.rows.iter().find(|r| r.model == label).map(|r| r.ours);
    let mut pooled = Vec::new();
    let mut left_out = Vec::new();
    for r in &tables[0].rows {
        let per_seed: Option<Vec<[f64; 4]>> = tables.iter().map(|t| find(t, &r.model)).collect();
        let Some(per_seed) = per_seed else {
            left_out.push(r.model.clone());
            continue;
        };
        let mut mean = [0.0; 4];
        let mut sd = [0.0; 4];
        for k in 0..4 {
            let v: Vec<f64> = per_seed.iter().map(|x| x[k]).collect();
            (mean[k], sd[k]) = mean_sd(&v);
        }
        let paper = paper_row(&r.model);
        let rel_diff = paper.map(|p| [0, 1, 2, 3].map(|k| mean[k] / p[k] - 1.0));
        let backend = backend_of(&r.model)
            .filter(|b| tables.iter().all(|t| find(t, b).is_some()))
            .map(str::to_string);
        let above_backend = backend.as_deref().map(|b| {
            let count = |k: usize| {
                tables
                    .iter()
                    .zip(&per_seed)
                    .filter(|(t, x)| x[k] > find(t, b).unwrap()[k])
                    .count()
            };
            [count(1), count(3)]
        });
        pooled.push(Pooled {
            model: r.model.clone(),
            per_seed,
            mean,
            sd,
            paper,
            rel_diff,
            backend,
            above_backend,
        });
    }
    (pooled, left_out)
}

/// Pool the reproductions in `dirs` and write `seeds.md` and `seeds.json` into `out`.
pub fn summarize_dirs(dirs: &[PathBuf], out: &Path, json: bool) -> Result<()> {
    if dirs.is_empty() {
        bail!("--summarize needs at least one directory");
    }
    let tables: Vec<Table> = dirs.iter().map(|d| read_table(d)).collect::<Result<_>>()?;
    let seeds: Vec<u64> = tables.iter().map(|t| t.seed).collect();
    check_seeds(&seeds).context("the tables to pool")?;
    for (t, d) in tables.iter().zip(dirs) {
        if t.dataset != tables[0].dataset || t.recipe != tables[0].recipe {
            bail!(
                "{}: dataset {} with recipe {}, but {} has dataset {} with recipe {}: only runs \
                 of the same dataset and recipe can be pooled",
                d.display(),
                t.dataset,
                t.recipe,
                dirs[0].display(),
                tables[0].dataset,
                tables[0].recipe
            );
        }
    }
    let (pooled, left_out) = pool(&tables);
    let n = tables.len();
    let header = [
        "model",
        "R@20 mean ± sd",
        "N@20 mean ± sd",
        "mean vs paper (R@20 / N@20)",
        "above backend (R@20 / N@20)",
        "R@20 by seed",
    ];
    let rows: Vec<Vec<String>> = pooled
        .iter()
        .map(|p| {
            vec![
                p.model.clone(),
                format!("{:.4} ± {:.4}", p.mean[1], p.sd[1]),
                format!("{:.4} ± {:.4}", p.mean[3], p.sd[3]),
                p.rel_diff.map_or("-".into(), |d| {
                    format!("{:+.1}% / {:+.1}%", 100.0 * d[1], 100.0 * d[3])
                }),
                p.above_backend
                    .map_or("-".into(), |[r, g]| format!("{r}/{n} / {g}/{n}")),
                p.per_seed
                    .iter()
                    .map(|x| format!("{:.4}", x[1]))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    let seed_list = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let recipe = match &tables[0].recipe {
        serde_json::Value::String(r) => r.clone(),
        other => other.to_string(),
    };
    let title = format!(
        "ddrm reproduce — {} over seeds {seed_list} (test split, recipe {recipe})",
        tables[0].dataset
    );
    let footer = if left_out.is_empty() {
        String::new()
    } else {
        format!("Left out (not in every run): {}.\n", left_out.join(", "))
    };
    let md = super::experiment_common::markdown(&title, &header, &rows, &footer);
    let value = serde_json::json!({"dataset": tables[0].dataset, "recipe": tables[0].recipe,
        "seeds": seeds, "runs": dirs, "rows": pooled, "left_out": left_out});
    std::fs::create_dir_all(out)?;
    write_atomic(&out.join("seeds.json"), &serde_json::to_vec_pretty(&value)?)?;
    write_atomic(&out.join("seeds.md"), md.as_bytes())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{title}");
        print!("{}", render(&header, &rows));
        print!("{footer}");
        println!(
            "summary written to {} (seeds.md, seeds.json)",
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, r20: f64, n20: f64) -> Row {
        Row {
            model: model.into(),
            ours: [0.0, r20, 0.0, n20],
            paper: None,
            rel_diff: None,
            best_epoch: 1,
            epoch_seconds: 1.0,
            run: PathBuf::new(),
        }
    }

    #[test]
    fn pools_rows_present_in_every_seed_and_counts_wins_seed_by_seed() {
        let t = |seed, rows| Table {
            dataset: "d".into(),
            seed,
            recipe: serde_json::json!("Paper"),
            rows,
        };
        let tables = vec![
            t(
                1,
                vec![
                    row("MF-BPR", 0.10, 0.06),
                    row("MF-BPR+DDRM", 0.11, 0.05),
                    row("CDAE", 0.09, 0.06),
                ],
            ),
            t(
                2,
                vec![row("MF-BPR", 0.12, 0.06), row("MF-BPR+DDRM", 0.11, 0.07)],
            ),
        ];
        let (p, left) = pool(&tables);
        assert_eq!(left, ["CDAE"]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].backend, None);
        assert!((p[0].mean[1] - 0.11).abs() < 1e-12);
        // sample sd of 0.10 and 0.12
        assert!((p[0].sd[1] - 0.02f64 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(p[1].backend.as_deref(), Some("MF-BPR"));
        // R@20: above in seed 1 (0.11 > 0.10) only; N@20: above in seed 2 only
        assert_eq!(p[1].above_backend, Some([1, 1]));
        assert!(
            p[1].rel_diff.is_some(),
            "MF-BPR+DDRM is in the paper's table"
        );
    }

    #[test]
    fn refuses_repeated_seeds() {
        assert!(check_seeds(&[1, 2, 1])
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(check_seeds(&[]).is_err());
        assert!(check_seeds(&[3]).is_ok());
    }
}
