//! The .ddrm format: round trips, corruption detection, importer rejections.

use ddrm::data::import::{self, CsvOptions};
use ddrm::data::{npy, Csr, Dataset, DatasetParts, DuplicatePolicy, Split};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn parts_from(nu: usize, ni: usize, splits: &[Vec<(u32, u32)>; 3]) -> DatasetParts {
    let m = |p: &Vec<(u32, u32)>| Csr::from_pairs(nu, ni, p, DuplicatePolicy::Drop).unwrap().0;
    DatasetParts {
        n_users: nu,
        n_items: ni,
        train: m(&splits[0]),
        valid: m(&splits[1]),
        test: m(&splits[2]),
        user_ids: vec![],
        item_ids: vec![],
    }
}

fn small() -> DatasetParts {
    parts_from(
        4,
        5,
        &[
            vec![(0, 1), (0, 2), (1, 0), (2, 4), (3, 3)],
            vec![(0, 3), (2, 1)],
            vec![(1, 4), (3, 0)],
        ],
    )
}

fn pairs_strategy() -> impl Strategy<Value = (usize, usize, [Vec<(u32, u32)>; 3])> {
    (1usize..30, 1usize..30).prop_flat_map(|(nu, ni)| {
        let pair = (0..nu as u32, 0..ni as u32);
        (
            Just(nu),
            Just(ni),
            [
                prop::collection::vec(pair.clone(), 0..120),
                prop::collection::vec(pair.clone(), 0..40),
                prop::collection::vec(pair, 0..40),
            ],
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// import (npy) -> write -> open -> export gives back exactly the input pairs (as a set).
    #[test]
    fn npy_import_write_open_export_round_trip((nu, ni, splits) in pairs_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        for (k, name) in ["train_list.npy", "valid_list.npy", "test_list.npy"].iter().enumerate() {
            let rows: Vec<[i64; 2]> = splits[k].iter().map(|&(u, i)| [u as i64, i as i64]).collect();
            std::fs::write(dir.path().join(name), npy::encode_pairs(&rows)).unwrap();
        }
        if splits[0].is_empty() {
            prop_assert!(import::import_npy_dir(dir.path(), DuplicatePolicy::Drop).is_err());
            return Ok(());
        }
        let (parts, _) = import::import_npy_dir(dir.path(), DuplicatePolicy::Drop).unwrap();
        let path = dir.path().join("x.ddrm");
        parts.write(&path).unwrap();
        let ds = Dataset::open(&path).unwrap();
        for (k, s) in Split::ALL.iter().enumerate() {
            let want: BTreeSet<(u32, u32)> = splits[k].iter().copied().collect();
            let got: BTreeSet<(u32, u32)> = ds.split(*s).pairs().collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(ds.split(*s).nnz(), want.len());
        }
        prop_assert!(ds.n_users() <= nu && ds.n_items() <= ni);
        prop_assert_eq!(ds.to_parts().train, parts.train);
    }

    /// Any single corrupted byte anywhere in the file is detected on open.
    #[test]
    fn any_flipped_byte_is_detected(pos in 0usize..100_000, bit in 0u8..8) {
        let (buf, len) = small().encode().unwrap();
        let mut bytes: Vec<u8> = bytemuck::cast_slice(&buf)[..len].to_vec();
        let p = pos % len;
        bytes[p] ^= 1 << bit;
        prop_assert!(Dataset::from_bytes(&bytes).is_err(), "flip at byte {} bit {} undetected", p, bit);
    }

    /// Any truncation is detected.
    #[test]
    fn any_truncation_is_detected(cut in 0usize..100_000) {
        let (buf, len) = small().encode().unwrap();
        let bytes: &[u8] = &bytemuck::cast_slice(&buf)[..len];
        let c = cut % len;
        prop_assert!(Dataset::from_bytes(&bytes[..c]).is_err());
    }
}

#[test]
fn open_reports_wrong_magic_future_version_and_truncation() {
    let (buf, len) = small().encode().unwrap();
    let bytes: Vec<u8> = bytemuck::cast_slice(&buf)[..len].to_vec();
    assert!(Dataset::from_bytes(&bytes).is_ok());

    let mut m = bytes.clone();
    m[0] = b'X';
    let e = Dataset::from_bytes(&m).unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");

    // a future version with a consistent header checksum must say "newer"
    let mut f = bytes.clone();
    f[8..12].copy_from_slice(&2u32.to_le_bytes());
    f[252..256].fill(0); // pad is zero anyway
    let crc_off = 8 + 4 * 6 + 24 + 160 + 4;
    f[crc_off..crc_off + 4].fill(0);
    let c = crc32fast::hash(&f[..256]);
    f[crc_off..crc_off + 4].copy_from_slice(&c.to_le_bytes());
    let e = Dataset::from_bytes(&f).unwrap_err().to_string();
    assert!(e.contains("newer"), "{e}");

    let e = Dataset::from_bytes(&bytes[..100]).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn write_is_atomic_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.ddrm");
    small().write(&path).unwrap();
    // an invalid dataset is rejected before anything is written: the old file survives
    let mut bad = small();
    bad.train.indices[0] = 99;
    assert!(bad.write(&path).is_err());
    assert!(Dataset::open(&path).is_ok());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn item_side_csr_is_the_transpose_of_train() {
    let p = small();
    let ds = Dataset::from_parts(&p).unwrap();
    let t = ds.train_by_item();
    let mut pairs: Vec<(u32, u32)> = t.pairs().map(|(i, u)| (u, i)).collect();
    pairs.sort();
    let want: Vec<(u32, u32)> = ds.train().pairs().collect();
    assert_eq!(pairs, want);
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn lightgcn_import_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.txt", "0 1 2 3\n1 0 2\n2 4\n");
    write(dir.path(), "test.txt", "0 4\n1 3\n");
    let (p, _) = import::import_lightgcn_dir(dir.path(), 0.0, 1, DuplicatePolicy::Drop).unwrap();
    assert_eq!(
        (
            p.n_users,
            p.n_items,
            p.train.nnz(),
            p.valid.nnz(),
            p.test.nnz()
        ),
        (3, 5, 6, 0, 2)
    );
    let (p, _) = import::import_lightgcn_dir(dir.path(), 0.5, 1, DuplicatePolicy::Drop).unwrap();
    assert_eq!(p.train.nnz() + p.valid.nnz(), 6);
    assert_eq!(p.valid.nnz(), 2); // floor(3 * .5) + floor(2 * .5) + floor(1 * .5)

    write(dir.path(), "train.txt", "0 1 -2\n");
    let e = import::import_lightgcn_dir(dir.path(), 0.0, 1, DuplicatePolicy::Drop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("negative"), "{e}");
    write(dir.path(), "train.txt", "0 1\n1 x\n");
    let e = import::import_lightgcn_dir(dir.path(), 0.0, 1, DuplicatePolicy::Drop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2") && e.contains("not an integer"), "{e}");
    write(dir.path(), "train.txt", "");
    let e = import::import_lightgcn_dir(dir.path(), 0.0, 1, DuplicatePolicy::Drop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    write(dir.path(), "train.txt", "0 1 1\n");
    let e = import::import_lightgcn_dir(dir.path(), 0.0, 1, DuplicatePolicy::Error).unwrap_err();
    assert!(format!("{e:#}").contains("duplicate"), "{e:#}");
}

fn csv_opts(dup: DuplicatePolicy) -> CsvOptions {
    CsvOptions {
        sep: None,
        min_rating: 4.0,
        header: None,
        dup,
    }
}

#[test]
fn csv_import_splits_by_time_and_adds_false_positives_to_train_and_valid_only() {
    let dir = tempfile::tempdir().unwrap();
    // 10 positives at times 1..10, negatives at times 0, 7.5 (-> valid period) and 11 (test period)
    let mut text = String::from("user,item,rating,timestamp\n");
    for t in 1..=10 {
        text += &format!("{},{},5,{}\n", 100 + t % 3, 200 + t, t * 10);
    }
    text += "101,300,1,0\n102,301,2,75\n100,302,3,110\n";
    let f = write(dir.path(), "r.csv", &text);
    let (clean, noisy, rep) = import::import_csv(&f, &csv_opts(DuplicatePolicy::Drop)).unwrap();
    assert!(rep.header_skipped);
    assert_eq!(
        (clean.train.nnz(), clean.valid.nnz(), clean.test.nnz()),
        (7, 1, 2)
    );
    assert_eq!(
        (noisy.train.nnz(), noisy.valid.nnz(), noisy.test.nnz()),
        (8, 2, 2)
    );
    assert_eq!(clean.n_items, 10);
    assert_eq!(noisy.n_items, 12);
    assert_eq!(clean.user_ids, vec![100, 101, 102]);
    // raw ids survive the round trip through the file
    let ds = Dataset::from_parts(&noisy).unwrap();
    assert_eq!(ds.item_raw_ids()[0], 201);
}

#[test]
fn csv_rejections_name_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("1,2,5\n1,2,5,9\n", "columns"),
        ("1,2,5\n-1,2,5\n", "negative"),
        ("1,2,5\n1,b,5\n", "not an integer"),
        ("1,2,5\n1,3,nan\n", "not finite"),
        ("1\n", "columns"),
        ("", "empty"),
        ("1,2,1\n", "no interaction has rating"),
    ];
    for (text, want) in cases {
        let f = write(dir.path(), "bad.csv", text);
        let e = import::import_csv(&f, &csv_opts(DuplicatePolicy::Drop))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "input {text:?}: got '{e}', want '{want}'");
        assert!(e.contains("bad.csv"), "{e}");
    }
    let f = write(dir.path(), "dup.csv", "1,2,5,1\n1,2,5,2\n");
    let e = import::import_csv(&f, &csv_opts(DuplicatePolicy::Error))
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate"), "{e}");
    let (c, _, rep) = import::import_csv(&f, &csv_opts(DuplicatePolicy::Drop)).unwrap();
    assert_eq!(c.train.nnz() + c.valid.nnz() + c.test.nnz(), 1);
    assert_eq!(
        rep.duplicates_dropped.iter().sum::<usize>() + rep.cross_split_dropped,
        1
    );
}

#[test]
fn npy_importer_rejects_negative_ids_and_bad_shapes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train_list.npy"),
        npy::encode_pairs(&[[0, 1], [2, -3]]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("test_list.npy"),
        npy::encode_pairs(&[[0, 0]]),
    )
    .unwrap();
    let e = import::import_npy_dir(dir.path(), DuplicatePolicy::Drop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 1") && e.contains("negative item id"), "{e}");
    let mut img = npy::encode_pairs(&[]);
    let pos = img.windows(6).position(|w| w == b"(0, 2)").unwrap();
    img[pos..pos + 6].copy_from_slice(b"(0, 3)");
    std::fs::write(dir.path().join("train_list.npy"), &img).unwrap();
    let e = import::import_npy_dir(dir.path(), DuplicatePolicy::Drop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("(n, 2)"), "{e}");
}

#[test]
fn random_noise_keeps_sizes_and_test_and_replaces_the_requested_share() {
    let cfg = ddrm::data::synth::SynthConfig {
        users: 200,
        items: 300,
        interactions: 6000,
        item_exponent: 0.9,
        user_exponent: 0.6,
        seed: 3,
    };
    let ds = Dataset::from_parts(&ddrm::data::synth::generate(&cfg).unwrap()).unwrap();
    let noisy =
        Dataset::from_parts(&ddrm::data::noise::add_random_noise(&ds, 0.3, 9).unwrap()).unwrap();
    for s in Split::ALL {
        assert_eq!(ds.split(s).nnz(), noisy.split(s).nnz());
        for u in 0..ds.n_users() {
            assert_eq!(ds.split(s).row_len(u), noisy.split(s).row_len(u));
        }
    }
    assert_eq!(ds.test().indices, noisy.test().indices);
    let orig: BTreeSet<(u32, u32)> = ds.train().pairs().collect();
    let kept = noisy.train().pairs().filter(|p| orig.contains(p)).count();
    let replaced = ds.train().nnz() - kept;
    let want = (ds.train().nnz() as f64 * 0.3).round() as usize;
    assert_eq!(replaced, want);
    // every new pair is unobserved in the original data
    for (u, i) in noisy.train().pairs().filter(|p| !orig.contains(p)) {
        assert!(!ds.valid().contains(u as usize, i) && !ds.test().contains(u as usize, i));
    }
}

#[test]
fn synth_is_deterministic_and_matches_requested_size() {
    let cfg = ddrm::data::synth::SynthConfig {
        users: 500,
        items: 800,
        interactions: 20_000,
        item_exponent: 0.9,
        user_exponent: 0.6,
        seed: 11,
    };
    let a = ddrm::data::synth::generate(&cfg).unwrap();
    let b = ddrm::data::synth::generate(&cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.train.nnz() + a.valid.nnz() + a.test.nnz(), 20_000);
    // power law: the most popular item is far above the median
    let by_item = a.train.view().transpose();
    let mut pop: Vec<usize> = (0..800).map(|i| by_item.view().row_len(i)).collect();
    pop.sort_unstable();
    assert!(pop[799] > 5 * pop[400].max(1));
}
