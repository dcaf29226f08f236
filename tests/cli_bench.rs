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
        (vec!["bench", "scale", "--fractions", "0"], "--fractions"),
        (
            vec!["bench", "kernels", "--device", "tpu"],
            "unknown --device",
        ),
        // without the feature: how to get it; with it, only the kernels suite runs on a GPU
        (
            vec!["bench", "epoch", "--device", "cuda"],
            if cfg!(feature = "cuda") {
                "only the kernels suite"
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
