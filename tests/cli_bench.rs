//! `ddrm bench` through the binary on a small synthetic dataset: every suite runs without
//! Python frameworks (and says so when a framework's interpreter is missing), writes its JSON
//! lines, and bad options fail cleanly.

mod common;
use common::ddrm;

fn synth(dir: &std::path::Path) -> String {
    let p = dir.join("s.ddrm").to_str().unwrap().to_string();
    let (code, _, err) = ddrm(&[
        "-q",
        "data",
        "synth",
        "--users",
        "300",
        "--items",
        "200",
        "--interactions",
        "9000",
        "--out",
        &p,
    ]);
    assert_eq!(code, 0, "{err}");
    p
}

fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bench_suites_run_alone_and_write_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path());
    let out = dir.path().join("bench");
    let outs = out.to_str().unwrap();
    // a missing interpreter: ddrm runs alone and says why
    let (code, table, err) = ddrm(&[
        "-q",
        "bench",
        "eval",
        "--dataset",
        &ds,
        "--reps",
        "1",
        "--vs",
        "torch",
        "--python",
        "/nonexistent/python3",
        "--out",
        outs,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("running ddrm alone"), "{err}");
    assert!(table.contains("fused top-20"), "{table}");
    let rows = jsonl(&out.join("eval.jsonl"));
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["ddrm"]["median_ms"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["vs"].as_array().unwrap().is_empty());
    // one model of the epoch suite
    let (code, _, err) = ddrm(&[
        "-q",
        "bench",
        "epoch",
        "--dataset",
        &ds,
        "--reps",
        "1",
        "--models",
        "mf",
        "--out",
        outs,
    ]);
    assert_eq!(code, 0, "{err}");
    let rows = jsonl(&out.join("epoch.jsonl"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "MF-BPR epoch");
    assert_eq!(rows[0]["unit"], "interactions/s");
    // a subset of the kernels suite
    let (code, table, err) = ddrm(&[
        "-q",
        "bench",
        "kernels",
        "--dataset",
        &ds,
        "--reps",
        "1",
        "--only",
        "dX,TANH",
        "--out",
        outs,
    ]);
    assert_eq!(code, 0, "{err}");
    let rows = jsonl(&out.join("kernels.jsonl"));
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gemm dX", "gemm dX", "gemm dX", "tanh"], "{table}");
    // bad options
    for (args, want) in [
        (
            vec!["bench", "kernels", "--dataset", &ds, "--only", "conv2d"],
            "no kernel row matches",
        ),
        (
            vec!["bench", "epoch", "--only", "dW"],
            "--only selects rows of the kernels suite",
        ),
        (
            vec!["bench", "epoch", "--models", "gru"],
            "unknown model 'gru'",
        ),
        (
            vec!["bench", "eval", "--vs", "jax"],
            "unknown framework 'jax'",
        ),
        (
            vec!["bench", "eval", "--reps", "0"],
            "--reps must be at least 1",
        ),
        (
            vec!["bench", "eval", "--rounds", "0"],
            "--rounds must be at least 1",
        ),
        (vec!["bench", "scale", "--fractions", "0"], "--fractions"),
        (
            vec!["bench", "kernels", "--device", "tpu"],
            "unknown --device",
        ),
        (
            vec!["bench", "kernels", "--device", "cuda:x"],
            "ordinal after 'cuda:'",
        ),
        // without the feature: how to get it; with it, only the kernels suite runs on a GPU
        (
            vec!["bench", "epoch", "--device", "cuda"],
            if cfg!(feature = "cuda") {
                "the training epochs run on the CPU only"
            } else {
                "without the `cuda` feature"
            },
        ),
    ] {
        let (code, _, err) = ddrm(&args);
        assert_ne!(code, 0, "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(err.contains(want), "{args:?}: '{err}' lacks '{want}'");
        // refused before anything is measured
        assert!(
            !err.contains("measuring machine limits"),
            "{args:?} measured before refusing: {err}"
        );
    }
}

/// `--rounds N` alternates ddrm and the framework N times and reports the median of the
/// paired ratios. The framework here is a stand-in interpreter whose n-th run reports n ms,
/// so the rounds and the medians can be checked exactly.
#[cfg(unix)]
#[test]
fn bench_rounds_pair_each_ddrm_timing_with_the_framework_run_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (table, out, counter) = three_rounds_against(dir.path(), "");
    assert!(table.contains("median of 3 A/B rounds"), "{table}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    let rows = jsonl(&out.join("kernels.jsonl"));
    assert_eq!(rows.len(), 1, "{table}");
    let vs = rows[0]["vs"][0].as_array().unwrap();
    assert_eq!(vs[0], "numpy");
    // the framework's median: of its three runs' 1, 2 and 3 ms
    assert_eq!(vs[1].as_f64().unwrap(), 2.0);
    let ratios: Vec<f64> = vs[4]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    assert_eq!(ratios.len(), 3);
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    assert_eq!(
        vs[2].as_f64().unwrap(),
        sorted[1],
        "ratio = median of {ratios:?}"
    );
    // round r paired the framework's r ms with ddrm's median of that round
    assert_eq!(rows[0]["ddrm"]["reps"], 3);
    for (r, ratio) in ratios.iter().enumerate() {
        let ours = (r + 1) as f64 / ratio;
        assert!(ours > 0.0 && ours < 10_000.0, "round {r}: {ours} ms");
    }
}

/// A stand-in interpreter for the reference script: its n-th run reports `n` ms for numpy,
/// after running `fail_if` (shell code that may exit early, with `$n` set). Returns the
/// script and the file counting its runs.
#[cfg(unix)]
fn counting_python(
    dir: &std::path::Path,
    fail_if: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let counter = dir.join("calls");
    let fake = dir.join("fake-python");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo Python 3; exit 0; fi\n\
             n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'\n\
             {fail_if}\n\
             echo \"{{\\\"numpy\\\": {{\\\"median_ms\\\": $n}}}}\"\n",
            c = counter.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    (fake, counter)
}

/// A framework that fails in one round keeps the rounds where it ran, and the row says so.
#[cfg(unix)]
#[test]
fn bench_rounds_keep_the_rounds_where_the_framework_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (table, out, counter) = three_rounds_against(
        dir.path(),
        "if [ $n = 2 ]; then echo 'round two broke' >&2; exit 1; fi",
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    let rows = jsonl(&out.join("kernels.jsonl"));
    let vs = rows[0]["vs"][0].as_array().unwrap();
    // the median of rounds 1 and 3 (1 and 3 ms); round 2 left out
    assert_eq!(vs[1].as_f64().unwrap(), 2.0, "{table}");
    assert_eq!(vs[4].as_array().unwrap().len(), 2);
    let note = vs[3].as_str().unwrap();
    assert!(note.contains("ran in 2 of 3 rounds"), "{note}");
    assert!(note.contains("round two broke"), "{note}");
    assert!(
        table.contains("note: numpy: ran in 2 of 3 rounds"),
        "{table}"
    );
}

/// `bench kernels` on one row with `--rounds 3` against the stand-in of [`counting_python`]
/// (with `fail_if`). Returns the printed table, the output folder and the run counter file.
#[cfg(unix)]
fn three_rounds_against(
    dir: &std::path::Path,
    fail_if: &str,
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let ds = synth(dir);
    let out = dir.join("bench");
    let (fake, counter) = counting_python(dir, fail_if);
    let (code, table, err) = ddrm(&[
        "-q",
        "bench",
        "kernels",
        "--dataset",
        &ds,
        "--reps",
        "1",
        "--rounds",
        "3",
        "--only",
        "2048x64 · (1000x64)",
        "--vs",
        "numpy",
        "--python",
        fake.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    (table, out, counter)
}
