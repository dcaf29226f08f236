//! The binary turns bad input into one clear error and a non-zero exit, never a panic.

mod common;
use common::ddrm;

fn assert_clean_failure(args: &[&str], want: &str) {
    let (code, _, err) = ddrm(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        err.to_lowercase().contains(&want.to_lowercase()),
        "{args:?}: '{err}' lacks '{want}'"
    );
}

#[test]
fn bundled_dataset_info_reports_the_paper_sizes() {
    let (code, out, err) = ddrm(&["data", "info", "ml1m-noisy", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["users"], 5949);
    assert_eq!(v["items"], 3494);
    assert_eq!(
        (v["train"].as_u64(), v["valid"].as_u64(), v["test"].as_u64()),
        (Some(429_993), Some(130_772), Some(57_532))
    );
    let (code, out, _) = ddrm(&["data", "info", "ml1m-clean", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["users"].as_u64(), v["items"].as_u64()),
        (Some(5949), Some(2810))
    );
    assert_eq!(
        (v["train"].as_u64(), v["valid"].as_u64(), v["test"].as_u64()),
        (Some(403_277), Some(110_722), Some(57_532))
    );
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.ddrm");
    std::fs::write(&junk, b"hello world, this is not a dataset").unwrap();
    let junk = junk.to_str().unwrap();
    assert_clean_failure(&["data", "info", "no-such-dataset"], "not found");
    assert_clean_failure(&["data", "info", junk], "truncated");
    assert_clean_failure(&["data", "frobnicate"], "unrecognized subcommand");
    assert_clean_failure(
        &[
            "data",
            "noise",
            "ml1m-clean",
            "--ratio",
            "1.5",
            "--out",
            "/tmp/x.ddrm",
        ],
        "ratio",
    );
    assert_clean_failure(
        &[
            "data",
            "noise",
            "ml1m-clean",
            "--ratio",
            "NaN",
            "--out",
            "/tmp/x.ddrm",
        ],
        "ratio",
    );
    assert_clean_failure(
        &[
            "data",
            "synth",
            "--users",
            "10",
            "--items",
            "10",
            "--interactions",
            "5",
            "--out",
            "/tmp/x.ddrm",
        ],
        "interactions",
    );
    assert_clean_failure(
        &[
            "data",
            "import",
            "npy",
            dir.path().to_str().unwrap(),
            "--out",
            "/tmp/x.ddrm",
        ],
        "missing",
    );
    assert_clean_failure(&["--threads", "0", "data", "info", "ml1m-clean"], "threads");
    let out = dir.path().join("run");
    for model in ["mf", "multivae"] {
        assert_clean_failure(
            &[
                "train",
                "--model",
                model,
                "--eval-every",
                "0",
                "--out",
                out.to_str().unwrap(),
            ],
            "--eval-every",
        );
    }
    assert!(!out.exists(), "a refused run left {out:?} behind");
}
