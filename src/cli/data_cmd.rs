//! `ddrm data ...`: import, info, export, noise, synth.

use super::table::{render, thousands};
use crate::data::import::{self, CsvOptions};
use crate::data::{self, npy, DuplicatePolicy, Split};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Convert a public format into a .ddrm dataset.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Print sizes, density, item popularity and coverage of a dataset.
    Info {
        /// Dataset name (e.g. ml1m-noisy) or path to a .ddrm file.
        dataset: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write the splits back as DiffRec-style .npy files (train_list/valid_list/test_list).
    Export {
        /// Dataset name or path.
        dataset: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Random-noise setting: replace a share of train/valid interactions by unobserved pairs.
    Noise {
        /// Dataset name or path.
        dataset: String,
        /// Share of train and valid interactions to replace, in [0, 1].
        #[arg(long)]
        ratio: f64,
        /// Seed.
        #[arg(long, default_value_t = 2020)]
        seed: u64,
        /// Output .ddrm path.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate a synthetic dataset with power-law popularity and activity.
    Synth(SynthArgs),
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Number of users.
    #[arg(long)]
    users: usize,
    /// Number of items.
    #[arg(long)]
    items: usize,
    /// Number of interactions (all splits).
    #[arg(long)]
    interactions: usize,
    /// Zipf exponent of item popularity.
    #[arg(long, default_value_t = 0.9)]
    item_exponent: f64,
    /// Zipf exponent of user activity.
    #[arg(long, default_value_t = 0.6)]
    user_exponent: f64,
    /// Seed.
    #[arg(long, default_value_t = 2020)]
    seed: u64,
    /// Output .ddrm path.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// DiffRec/DDRM folder with train_list.npy, valid_list.npy, test_list.npy.
    Npy {
        /// Folder holding the .npy files.
        dir: PathBuf,
        /// Output .ddrm path.
        #[arg(long)]
        out: PathBuf,
        /// What to do with a pair given twice.
        #[arg(long, value_enum, default_value_t = DuplicatePolicy::Drop)]
        duplicates: DuplicatePolicy,
    },
    /// LightGCN folder with train.txt and test.txt (`user item item ...` per line).
    Lightgcn {
        /// Folder holding the text files.
        dir: PathBuf,
        /// Output .ddrm path.
        #[arg(long)]
        out: PathBuf,
        /// Share of each user's train items moved to a valid split (0 = no valid split).
        #[arg(long, default_value_t = 0.0)]
        valid_ratio: f64,
        /// Seed for the valid carve-out.
        #[arg(long, default_value_t = 2020)]
        seed: u64,
        /// What to do with a pair given twice.
        #[arg(long, value_enum, default_value_t = DuplicatePolicy::Drop)]
        duplicates: DuplicatePolicy,
    },
    /// Rating file `user,item[,rating[,timestamp]]` with the time-ordered 7:1:2 split.
    Csv {
        /// The rating file (CSV, TSV, `::`-separated or whitespace-separated).
        file: PathBuf,
        /// Output for the clean dataset (true positives only).
        #[arg(long)]
        out_clean: Option<PathBuf>,
        /// Output for the natural-noise dataset (false positives added to train/valid).
        #[arg(long)]
        out_noisy: Option<PathBuf>,
        /// Ratings at or above this are true positives.
        #[arg(long, default_value_t = 4.0)]
        min_rating: f64,
        /// Field separator (default: detected from the first line).
        #[arg(long)]
        sep: Option<String>,
        /// Whether the first line is a header (default: detected).
        #[arg(long)]
        header: Option<bool>,
        /// What to do with a pair given twice.
        #[arg(long, value_enum, default_value_t = DuplicatePolicy::Drop)]
        duplicates: DuplicatePolicy,
    },
}

fn finish_write(parts: &data::DatasetParts, out: &std::path::Path, quiet: bool) -> Result<()> {
    parts.write(out)?;
    // re-open to prove the file is valid
    let ds = data::Dataset::open(out)?;
    if !quiet {
        eprintln!(
            "wrote {} ({} users, {} items, {} / {} / {} interactions)",
            out.display(),
            thousands(ds.n_users()),
            thousands(ds.n_items()),
            thousands(ds.train().nnz()),
            thousands(ds.valid().nnz()),
            thousands(ds.test().nnz())
        );
    }
    Ok(())
}

fn report_import(r: &import::ImportReport, quiet: bool) {
    if quiet {
        return;
    }
    let d = r.duplicates_dropped;
    if d.iter().sum::<usize>() > 0 {
        eprintln!(
            "dropped duplicate pairs: train {}, valid {}, test {}",
            d[0], d[1], d[2]
        );
    }
    if r.cross_split_dropped > 0 {
        eprintln!(
            "dropped {} pairs repeated in a later split",
            r.cross_split_dropped
        );
    }
}

pub fn run(cmd: DataCommand, quiet: bool) -> Result<()> {
    match cmd {
        DataCommand::Import(ic) => match ic {
            ImportCommand::Npy {
                dir,
                out,
                duplicates,
            } => {
                let (parts, rep) = import::import_npy_dir(&dir, duplicates)?;
                report_import(&rep, quiet);
                finish_write(&parts, &out, quiet)
            }
            ImportCommand::Lightgcn {
                dir,
                out,
                valid_ratio,
                seed,
                duplicates,
            } => {
                let (parts, rep) =
                    import::import_lightgcn_dir(&dir, valid_ratio, seed, duplicates)?;
                report_import(&rep, quiet);
                finish_write(&parts, &out, quiet)
            }
            ImportCommand::Csv {
                file,
                out_clean,
                out_noisy,
                min_rating,
                sep,
                header,
                duplicates,
            } => {
                if out_clean.is_none() && out_noisy.is_none() {
                    bail!("give --out-clean and/or --out-noisy");
                }
                if !min_rating.is_finite() {
                    bail!("--min-rating must be a finite number");
                }
                let opts = CsvOptions {
                    sep,
                    min_rating,
                    header,
                    dup: duplicates,
                };
                let (clean, noisy, rep) = import::import_csv(&file, &opts)?;
                report_import(&rep, quiet);
                if let Some(p) = out_clean {
                    finish_write(&clean, &p, quiet)?;
                }
                if let Some(p) = out_noisy {
                    finish_write(&noisy, &p, quiet)?;
                }
                Ok(())
            }
        },
        DataCommand::Info { dataset, json } => {
            let t0 = Instant::now();
            let ds = data::open(&dataset)?;
            let open_ms = t0.elapsed().as_secs_f64() * 1e3;
            let inf = data::info::info(&ds);
            if json {
                println!("{}", serde_json::to_string_pretty(&inf)?);
                return Ok(());
            }
            let mut rows = vec![
                vec!["source".into(), inf.source.clone()],
                vec!["users".into(), thousands(inf.users)],
                vec!["items".into(), thousands(inf.items)],
                vec!["train".into(), thousands(inf.train)],
                vec!["valid".into(), thousands(inf.valid)],
                vec!["test".into(), thousands(inf.test)],
                vec!["density".into(), format!("{:.5}", inf.density)],
                vec![
                    "users without test".into(),
                    thousands(inf.users_without_test),
                ],
                vec![
                    "users without train".into(),
                    thousands(inf.users_without_train),
                ],
                vec![
                    "items without train".into(),
                    thousands(inf.items_without_train),
                ],
                vec![
                    "raw id maps".into(),
                    if inf.has_id_maps {
                        "yes"
                    } else {
                        "no (ids as given)"
                    }
                    .into(),
                ],
            ];
            let qs: Vec<String> = inf
                .item_popularity_quantiles
                .iter()
                .map(|(q, c)| format!("p{}={}", (q * 100.0).round(), c))
                .collect();
            rows.push(vec!["item popularity (train)".into(), qs.join(" ")]);
            rows.push(vec!["fingerprint".into(), inf.fingerprint.clone()]);
            rows.push(vec!["open + validate".into(), format!("{open_ms:.1} ms")]);
            print!("{}", render(&["field", "value"], &rows));
            Ok(())
        }
        DataCommand::Export { dataset, out } => {
            let ds = data::open(&dataset)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            for s in Split::ALL {
                let rows: Vec<[i64; 2]> = ds
                    .split(s)
                    .pairs()
                    .map(|(u, i)| [u as i64, i as i64])
                    .collect();
                let path = out.join(format!("{}_list.npy", s.name()));
                crate::util::atomic::write_atomic(&path, &npy::encode_pairs(&rows))?;
            }
            if !quiet {
                eprintln!(
                    "wrote train_list.npy, valid_list.npy, test_list.npy to {}",
                    out.display()
                );
            }
            Ok(())
        }
        DataCommand::Noise {
            dataset,
            ratio,
            seed,
            out,
        } => {
            let ds = data::open(&dataset)?;
            let parts = data::noise::add_random_noise(&ds, ratio, seed)?;
            finish_write(&parts, &out, quiet)
        }
        DataCommand::Synth(a) => {
            let t0 = Instant::now();
            let cfg = data::synth::SynthConfig {
                users: a.users,
                items: a.items,
                interactions: a.interactions,
                item_exponent: a.item_exponent,
                user_exponent: a.user_exponent,
                seed: a.seed,
            };
            let parts = data::synth::generate(&cfg)?;
            finish_write(&parts, &a.out, quiet)?;
            if !quiet {
                eprintln!("generated in {:.2} s", t0.elapsed().as_secs_f64());
            }
            Ok(())
        }
    }
}
