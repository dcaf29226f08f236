//! End to end through the binary on a small synthetic dataset: train each backend and DDRM,
//! evaluate, recommend, determinism, and clean failures.

use std::path::Path;
mod common;
use common::ddrm;

fn ok(args: &[&str]) -> String {
    let (code, out, err) = ddrm(args);
    assert_eq!(code, 0, "{args:?} failed: {err}");
    out
}

fn synth(dir: &Path, name: &str, seed: &str) -> String {
    let p = dir.join(name);
    let ps = p.to_str().unwrap().to_string();
    ok(&[
        "-q",
        "data",
        "synth",
        "--users",
        "300",
        "--items",
        "200",
        "--interactions",
        "9000",
        "--seed",
        seed,
        "--out",
        &ps,
    ]);
    ps
}

fn test_metrics(run: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("result.json")).unwrap()).unwrap();
    v["test"].clone()
}

#[test]
fn backends_and_ddrm_train_evaluate_and_recommend() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "1");
    let run = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let common = [
        "--dataset",
        ds.as_str(),
        "--eval-every",
        "1",
        "--batch",
        "512",
        "--seed",
        "7",
    ];
    for (model, epochs) in [("mf", "3"), ("lightgcn", "2"), ("sgl", "2")] {
        let mut args = vec![
            "-q",
            "--threads",
            "2",
            "train",
            "--model",
            model,
            "--epochs",
            epochs,
            "--json",
        ];
        args.extend_from_slice(&common);
        let out_dir = run(model);
        args.extend_from_slice(&["--out", &out_dir]);
        let out = ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let r20 = v["at"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["k"] == 20)
            .unwrap()["recall"]
            .as_f64()
            .unwrap();
        assert!(r20.is_finite() && r20 > 0.0, "{model}: {out}");
        // eval agrees with the result written at training time
        let ev: serde_json::Value =
            serde_json::from_str(&ok(&["eval", "--run", &out_dir, "--json"])).unwrap();
        assert_eq!(ev, test_metrics(Path::new(&out_dir)), "{model}");
        assert_eq!(
            std::fs::read_to_string(Path::new(&out_dir).join("metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            epochs.parse::<usize>().unwrap()
        );
    }
    // same seed and threads: identical results
    let mut args = vec![
        "-q",
        "--threads",
        "2",
        "train",
        "--model",
        "mf",
        "--epochs",
        "3",
    ];
    args.extend_from_slice(&common);
    let again = run("mf2");
    args.extend_from_slice(&["--out", &again]);
    ok(&args);
    assert_eq!(
        test_metrics(Path::new(&run("mf"))),
        test_metrics(Path::new(&again))
    );

    // DDRM on the MF run (small denoiser), then eval and recommend on it
    let dd = run("mf-ddrm");
    let mf = run("mf");
    ok(&[
        "-q",
        "--threads",
        "2",
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &mf,
        "--out",
        &dd,
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--hidden",
        "32,16,32",
        "--steps",
        "5",
        "--inference-steps",
        "6",
        "--batch",
        "512",
    ]);
    let ev: serde_json::Value =
        serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &dd, "--json"])).unwrap();
    assert_eq!(
        ev,
        test_metrics(Path::new(&dd)),
        "DDRM eval is seeded and reproducible"
    );
    // --device: cpu is the default; cuda ranks and denoises on a GPU, or says why it cannot
    let on_cpu: serde_json::Value = serde_json::from_str(&ok(&[
        "--threads",
        "2",
        "eval",
        "--run",
        &dd,
        "--device",
        "cpu",
        "--json",
    ]))
    .unwrap();
    assert_eq!(on_cpu, ev);
    // training on a GPU: MF-BPR and DDRM; the other models say so; without a GPU, the reason
    let (code, _, err) = ddrm(&[
        "train",
        "--model",
        "lightgcn",
        "--dataset",
        &ds,
        "--out",
        &run("lgn-gpu"),
        "--device",
        "cuda",
    ]);
    assert!(
        code != 0 && err.contains("the other models train on the CPU only"),
        "{err}"
    );
    assert!(
        !Path::new(&run("lgn-gpu")).exists(),
        "a refused run leaves nothing behind"
    );
    let mf_gpu = run("mf-gpu");
    let (code, _, err) = ddrm(&[
        "-q",
        "train",
        "--model",
        "mf",
        "--dataset",
        &ds,
        "--out",
        &mf_gpu,
        "--epochs",
        "3",
        "--eval-every",
        "1",
        "--device",
        "cuda",
    ]);
    assert!(!err.contains("panicked"), "{err}");
    if code == 0 {
        assert!(
            test_metrics(Path::new(&mf_gpu))["at"][1]["recall"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    } else {
        assert!(
            !Path::new(&mf_gpu).exists(),
            "a run refused for want of a GPU leaves nothing behind"
        );
        if cfg!(feature = "cuda") {
            assert!(err.contains("--device cuda:"), "{err}");
        } else {
            assert!(err.contains("built without the `cuda` feature"), "{err}");
        }
    }
    let dd_gpu = run("mf-ddrm-gpu");
    let (code, _, err) = ddrm(&[
        "-q",
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &mf,
        "--out",
        &dd_gpu,
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--hidden",
        "32,16,32",
        "--steps",
        "5",
        "--inference-steps",
        "6",
        "--batch",
        "512",
        "--device",
        "cuda",
    ]);
    assert!(!err.contains("panicked"), "{err}");
    if code == 0 {
        let (a, b) = (
            test_metrics(Path::new(&dd)),
            test_metrics(Path::new(&dd_gpu)),
        );
        let (ra, rb) = (
            a["at"][1]["recall"].as_f64().unwrap(),
            b["at"][1]["recall"].as_f64().unwrap(),
        );
        // the GPU draws its own noise and masks (counter-based streams): close, not equal
        assert!(
            (ra - rb).abs() <= 0.15 * ra + 0.01,
            "DDRM trained on the GPU: R@20 {rb}, on the CPU {ra}"
        );
    } else if cfg!(feature = "cuda") {
        assert!(err.contains("--device cuda:"), "{err}");
    } else {
        assert!(err.contains("built without the `cuda` feature"), "{err}");
    }
    let (code, _, err) = ddrm(&["eval", "--run", &dd, "--device", "tpu"]);
    assert!(code != 0 && err.contains("unknown --device 'tpu'"), "{err}");
    let (code, out, err) = ddrm(&["eval", "--run", &dd, "--device", "cuda", "--json"]);
    assert!(!err.contains("panicked"), "{err}");
    if code == 0 {
        let on_gpu: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(on_gpu["users"], ev["users"]);
        let (cpu_at, gpu_at) = (
            ev["at"].as_array().unwrap(),
            on_gpu["at"].as_array().unwrap(),
        );
        assert_eq!(cpu_at.len(), gpu_at.len());
        for (c, g) in cpu_at.iter().zip(gpu_at) {
            for m in ["recall", "ndcg"] {
                let (a, b) = (c[m].as_f64().unwrap(), g[m].as_f64().unwrap());
                assert!(
                    (a - b).abs() <= 0.02 * a + 1e-3,
                    "{m}@{}: cpu {a}, gpu {b}",
                    c["k"]
                );
            }
        }
    } else if cfg!(feature = "cuda") {
        assert!(err.contains("--device cuda:"), "{err}");
    } else {
        assert!(err.contains("built without the `cuda` feature"), "{err}");
    }
    let rec: serde_json::Value = serde_json::from_str(&ok(&[
        "recommend",
        "--run",
        &dd,
        "--user",
        "3",
        "--k",
        "5",
        "--json",
    ]))
    .unwrap();
    let items: Vec<u64> = rec
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_u64().unwrap())
        .collect();
    assert_eq!(items.len(), 5);
    // recommended items are never train items of the user
    let dsx = ddrm::data::Dataset::open(Path::new(&ds)).unwrap();
    for i in &items {
        assert!(!dsx.train().contains(3, *i as u32));
    }
    // ablation: start point only
    let so = run("mf-start");
    ok(&[
        "-q",
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &mf,
        "--out",
        &so,
        "--epochs",
        "1",
        "--eval-every",
        "1",
        "--hidden",
        "8",
        "--steps",
        "3",
        "--inference",
        "start-only",
        "--batch",
        "512",
    ]);
    // the start point does not depend on the denoisers: nothing is trained
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&so).join("result.json")).unwrap())
            .unwrap();
    assert_eq!(res["best_epoch"], 0, "{res}");
    assert!(
        res["test"]["at"][1]["recall"].as_f64().unwrap() > 0.0,
        "{res}"
    );
    let ev: serde_json::Value =
        serde_json::from_str(&ok(&["eval", "--run", &so, "--json"])).unwrap();
    assert_eq!(ev, test_metrics(Path::new(&so)), "start point only");

    // posterior sampling and cosine rounding: seeded, so eval reproduces the result
    let sc = run("mf-sample-cos");
    ok(&[
        "-q",
        "--threads",
        "2",
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &mf,
        "--out",
        &sc,
        "--epochs",
        "1",
        "--eval-every",
        "1",
        "--hidden",
        "8",
        "--steps",
        "4",
        "--batch",
        "512",
        "--sample",
        "--rounding",
        "cosine",
    ]);
    let ev: serde_json::Value =
        serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &sc, "--json"])).unwrap();
    assert_eq!(ev, test_metrics(Path::new(&sc)), "sampling + cosine");

    // the Transformer denoiser: trains, checkpoints, reloads; a bad token count is refused
    let tr = run("mf-transformer");
    ok(&[
        "-q",
        "--threads",
        "2",
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &mf,
        "--out",
        &tr,
        "--epochs",
        "1",
        "--eval-every",
        "1",
        "--hidden",
        "16",
        "--steps",
        "4",
        "--batch",
        "512",
        "--arch",
        "transformer",
        "--tokens",
        "8",
    ]);
    let ev: serde_json::Value =
        serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &tr, "--json"])).unwrap();
    assert_eq!(ev, test_metrics(Path::new(&tr)), "transformer");
    let (code, _, err) = ddrm(&[
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &mf,
        "--out",
        &run("x"),
        "--arch",
        "transformer",
        "--tokens",
        "7",
    ]);
    assert!(code != 0 && err.contains("--tokens"), "{err}");

    // --joint: the backend embeddings are fine-tuned (MF directly, LightGCN through its
    // propagation); the checkpoint holds the tuned embeddings and eval reproduces the result
    for (backend, name) in [(&mf, "mf-joint"), (&run("lightgcn"), "lgn-joint")] {
        let jr = run(name);
        ok(&[
            "-q",
            "--threads",
            "2",
            "train",
            "--denoise",
            "ddrm",
            "--from",
            backend,
            "--out",
            &jr,
            "--epochs",
            "2",
            "--eval-every",
            "1",
            "--hidden",
            "16,8,16",
            "--steps",
            "5",
            "--batch",
            "512",
            "--joint",
            "--joint-lr",
            "1e-2",
        ]);
        let ev: serde_json::Value =
            serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &jr, "--json"])).unwrap();
        assert_eq!(ev, test_metrics(Path::new(&jr)), "{name}");
        let tuned =
            ddrm::util::tensorfile::TensorFile::open(&Path::new(&jr).join("model.ckpt")).unwrap();
        let orig = ddrm::util::tensorfile::TensorFile::open(&Path::new(backend).join("model.ckpt"))
            .unwrap();
        let (a, b) = (tuned.get("emb").unwrap().0, orig.get("final").unwrap().0);
        assert_eq!(a.len(), b.len());
        let moved = a
            .iter()
            .zip(b)
            .filter(|(x, y)| (*x - *y).abs() > 1e-6)
            .count();
        assert!(
            moved > a.len() / 10,
            "{name}: only {moved} of {} embedding values changed",
            a.len()
        );
    }

    // failures
    let (code, _, err) = ddrm(&["recommend", "--run", &mf, "--user", "100000"]);
    assert!(code != 0 && err.contains("out of range"), "{err}");
    let (code, _, err) = ddrm(&[
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &dd,
        "--out",
        &run("x"),
    ]);
    assert!(code != 0 && err.contains("backend run"), "{err}");
    let (code, _, err) = ddrm(&[
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &mf,
        "--out",
        &run("x"),
        "--lambda",
        "2",
    ]);
    assert!(code != 0 && err.contains("--lambda"), "{err}");
    let (code, _, err) = ddrm(&["eval", "--run", dir.path().to_str().unwrap()]);
    assert!(code != 0 && err.contains("not a ddrm run"), "{err}");
    // the run's dataset replaced by other data: refused
    synth(dir.path(), "s.ddrm", "2");
    let (code, _, err) = ddrm(&["eval", "--run", &mf]);
    assert!(code != 0 && err.contains("not the data"), "{err}");
    assert!(!err.contains("panicked"));
}

/// T-CE, R-CE and DeCA retrain a backend with their loss: the run is labelled, evaluates to the
/// result written at training time, differs from plain BPR, and bad options are refused.
#[test]
fn tce_rce_and_deca_baselines_train_each_backend() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "3");
    let run = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let train = |model: &str, extra: &[&str], out: &str| {
        let mut args = vec![
            "-q",
            "--threads",
            "2",
            "train",
            "--model",
            model,
            "--dataset",
            &ds,
            "--epochs",
            "2",
            "--eval-every",
            "1",
            "--batch",
            "512",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        ok(&args);
    };
    train("mf", &[], &run("mf"));
    for (model, extra, name, label) in [
        (
            "mf",
            &["--denoise", "tce", "--tce-drop", "0.3", "--tce-warmup", "5"][..],
            "mf-tce",
            "MF-BPR+T-CE",
        ),
        (
            "mf",
            &["--denoise", "rce", "--rce-beta", "0.25"][..],
            "mf-rce",
            "MF-BPR+R-CE",
        ),
        (
            "lightgcn",
            &["--denoise", "rce"][..],
            "lgn-rce",
            "LightGCN+R-CE",
        ),
        ("sgl", &["--denoise", "tce"][..], "sgl-tce", "SGL+T-CE"),
        (
            "mf",
            &["--denoise", "deca", "--deca-c1", "50", "--deca-dim", "4"][..],
            "mf-deca",
            "MF-BPR+DeCA",
        ),
        (
            "lightgcn",
            &["--denoise", "deca", "--deca-alpha", "0"][..],
            "lgn-deca",
            "LightGCN+DeCA",
        ),
    ] {
        let out = run(name);
        train(model, extra, &out);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(Path::new(&out).join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["backend"], label, "{name}");
        let ev: serde_json::Value =
            serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &out, "--json"]))
                .unwrap();
        assert_eq!(ev, test_metrics(Path::new(&out)), "{name}");
        let r20 = ev["at"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["k"] == 20)
            .unwrap()["recall"]
            .as_f64()
            .unwrap();
        assert!(r20.is_finite() && r20 > 0.0, "{name}: {ev}");
    }
    for x in ["mf-tce", "mf-deca"] {
        assert_ne!(
            test_metrics(Path::new(&run("mf"))),
            test_metrics(Path::new(&run(x))),
            "{x} trains with another loss than BPR"
        );
    }
    // a DDRM run on a T-CE backend works like on any backend run
    ok(&[
        "-q",
        "train",
        "--denoise",
        "ddrm",
        "--from",
        &run("mf-tce"),
        "--out",
        &run("tce-ddrm"),
        "--epochs",
        "1",
        "--eval-every",
        "1",
        "--hidden",
        "8",
        "--steps",
        "3",
        "--batch",
        "512",
    ]);
    for (extra, want) in [
        (&["--denoise", "tce", "--tce-drop", "1.5"][..], "--tce-drop"),
        (&["--denoise", "rce", "--rce-beta=-1"][..], "--rce-beta"),
        (
            &["--denoise", "tce", "--from", "x"][..],
            "--from needs --denoise ddrm",
        ),
        (&["--denoise", "ddrm"][..], "--denoise ddrm needs --from"),
        (
            &["--denoise", "deca", "--deca-alpha", "2"][..],
            "--deca-alpha",
        ),
        (&["--denoise", "deca", "--deca-c2=-1"][..], "--deca-c2"),
        (&["--denoise", "deca", "--deca-dim", "0"][..], "--deca-dim"),
        (&["--denoise", "adagcl"][..], "adagcl"),
    ] {
        let mut args = vec![
            "train",
            "--model",
            "mf",
            "--dataset",
            &ds,
            "--out",
            "unused",
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = ddrm(&args);
        assert!(code != 0 && err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!Path::new("unused").exists());
}

/// MultiVAE trains, checkpoints, evaluates to its training-time result, recommends unseen
/// items, is deterministic, and is refused where a backend run is needed.
#[test]
fn multivae_trains_evaluates_and_recommends() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "4");
    let run = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let train = |out: &str| {
        ok(&[
            "-q",
            "--threads",
            "2",
            "train",
            "--model",
            "multivae",
            "--dataset",
            &ds,
            "--epochs",
            "3",
            "--eval-every",
            "1",
            "--batch",
            "64",
            "--vae-hidden",
            "32",
            "--vae-latent",
            "8",
            "--vae-anneal",
            "20",
            "--out",
            out,
        ])
    };
    let (a, b) = (run("vae"), run("vae2"));
    train(&a);
    train(&b);
    let res = test_metrics(Path::new(&a));
    assert_eq!(
        res,
        test_metrics(Path::new(&b)),
        "same seed and threads: same result"
    );
    let ev: serde_json::Value =
        serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &a, "--json"])).unwrap();
    assert_eq!(ev, res);
    let r20 = ev["at"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["k"] == 20)
        .unwrap()["recall"]
        .as_f64()
        .unwrap();
    assert!(r20 > 0.0 && r20.is_finite(), "{ev}");
    let rec: serde_json::Value = serde_json::from_str(&ok(&[
        "recommend",
        "--run",
        &a,
        "--user",
        "5",
        "--k",
        "10",
        "--json",
    ]))
    .unwrap();
    let dsx = ddrm::data::Dataset::open(Path::new(&ds)).unwrap();
    let items: Vec<u32> = rec
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(items.len(), 10);
    assert!(items.iter().all(|&i| !dsx.train().contains(5, i)));
    for (args, want) in [
        (
            vec![
                "train",
                "--denoise",
                "ddrm",
                "--from",
                a.as_str(),
                "--out",
                "unused",
            ],
            "backend run",
        ),
        (
            vec![
                "train",
                "--model",
                "multivae",
                "--dataset",
                &ds,
                "--out",
                "unused",
                "--vae-dropout",
                "1.2",
            ],
            "--vae-dropout",
        ),
        (
            vec![
                "train",
                "--model",
                "multivae",
                "--dataset",
                &ds,
                "--out",
                "unused",
                "--denoise",
                "tce",
            ],
            "not MultiVAE",
        ),
    ] {
        let (code, _, err) = ddrm(&args);
        assert!(code != 0 && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!Path::new("unused").exists());
}

/// DiffRec trains, checkpoints, evaluates to its training-time result (the reverse process
/// rerun from the checkpoint), is deterministic, and refuses bad options.
#[test]
fn diffrec_trains_evaluates_and_recommends() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "5");
    let run = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "-q",
            "--threads",
            "2",
            "train",
            "--model",
            "diffrec",
            "--dataset",
            &ds,
            "--epochs",
            "3",
            "--eval-every",
            "1",
            "--batch",
            "64",
            "--hidden",
            "24,16",
            "--steps",
            "4",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let (a, b, c) = (run("dr"), run("dr2"), run("dr-plain"));
    train(&a, &[]);
    train(&b, &[]);
    train(&c, &["--no-reweight"]);
    let res = test_metrics(Path::new(&a));
    assert_eq!(
        res,
        test_metrics(Path::new(&b)),
        "same seed and threads: same result"
    );
    assert_ne!(
        res,
        test_metrics(Path::new(&c)),
        "--no-reweight changes training"
    );
    for r in [&a, &c] {
        let ev: serde_json::Value =
            serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", r, "--json"])).unwrap();
        assert_eq!(ev, test_metrics(Path::new(r)));
        let r20 = ev["at"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["k"] == 20)
            .unwrap()["recall"]
            .as_f64()
            .unwrap();
        assert!(r20 > 0.0 && r20.is_finite(), "{ev}");
    }
    let rec: serde_json::Value = serde_json::from_str(&ok(&[
        "recommend",
        "--run",
        &a,
        "--user",
        "7",
        "--k",
        "10",
        "--json",
    ]))
    .unwrap();
    let dsx = ddrm::data::Dataset::open(Path::new(&ds)).unwrap();
    let items: Vec<u32> = rec
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(items.len(), 10);
    assert!(items.iter().all(|&i| !dsx.train().contains(7, i)));
    for (extra, want) in [
        (&["--dropout", "1.5"][..], "--dropout"),
        (&["--noise-scale", "300"][..], "schedule"),
        (&["--step-dim", "0"][..], "--step-dim"),
        (&["--denoise", "rce"][..], "not DiffRec"),
    ] {
        let mut args = vec![
            "train",
            "--model",
            "diffrec",
            "--dataset",
            &ds,
            "--out",
            "unused",
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = ddrm(&args);
        assert!(code != 0 && err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!Path::new("unused").exists());
}

/// CDAE trains, checkpoints, evaluates to its training-time result and refuses bad options.
#[test]
fn cdae_trains_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "6");
    let out = dir.path().join("cdae").to_str().unwrap().to_string();
    ok(&[
        "-q",
        "--threads",
        "2",
        "train",
        "--model",
        "cdae",
        "--dataset",
        &ds,
        "--epochs",
        "3",
        "--eval-every",
        "1",
        "--batch",
        "64",
        "--cdae-hidden",
        "16",
        "--out",
        &out,
    ]);
    let ev: serde_json::Value =
        serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &out, "--json"])).unwrap();
    assert_eq!(ev, test_metrics(Path::new(&out)));
    let r20 = ev["at"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["k"] == 20)
        .unwrap()["recall"]
        .as_f64()
        .unwrap();
    assert!(r20 > 0.0 && r20.is_finite(), "{ev}");
    let (code, _, err) = ddrm(&[
        "train",
        "--model",
        "cdae",
        "--dataset",
        &ds,
        "--out",
        "unused",
        "--cdae-corruption",
        "1",
    ]);
    assert!(code != 0 && err.contains("--cdae-corruption"), "{err}");
    assert!(!Path::new("unused").exists());
}

/// AdaGCL trains (the same metrics twice with one seed), checkpoints its ranking embeddings
/// for `eval` and `recommend`, learns something, and refuses bad options.
#[test]
fn adagcl_trains_evaluates_and_recommends() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "9");
    let train = |name: &str| -> String {
        let out = dir.path().join(name).to_str().unwrap().to_string();
        ok(&[
            "-q",
            "--threads",
            "2",
            "train",
            "--model",
            "adagcl",
            "--dataset",
            &ds,
            "--epochs",
            "4",
            "--eval-every",
            "2",
            "--batch",
            "256",
            "--lr",
            "5e-3",
            "--dim",
            "16",
            "--out",
            &out,
        ]);
        out
    };
    let a = train("ada-a");
    let b = train("ada-b");
    assert_eq!(
        test_metrics(Path::new(&a)),
        test_metrics(Path::new(&b)),
        "seeded runs differ"
    );
    let ev: serde_json::Value =
        serde_json::from_str(&ok(&["--threads", "2", "eval", "--run", &a, "--json"])).unwrap();
    assert_eq!(ev, test_metrics(Path::new(&a)));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&a).join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["kind"], "adagcl");
    // the loss falls and the views are built: the metrics log has every validation's parts
    let log = std::fs::read_to_string(Path::new(&a).join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "{log}");
    let bpr = |r: &serde_json::Value| r["losses"]["bpr"].as_f64().unwrap();
    assert!(bpr(&recs[1]) < bpr(&recs[0]), "{log}");
    for r in &recs {
        let kept = r["losses"]["view1_kept"].as_f64().unwrap();
        assert!(kept > 0.0 && kept <= 1.0, "{log}");
        assert!(r["losses"]["gen2"].as_f64().unwrap().is_finite(), "{log}");
    }
    // it ranks better than chance (200 items, R@20 of a random ranking is about 0.1)
    let r20 = ev["at"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["k"] == 20)
        .unwrap()["recall"]
        .as_f64()
        .unwrap();
    assert!(r20 > 0.15, "{ev}");
    let rec: serde_json::Value = serde_json::from_str(&ok(&[
        "recommend",
        "--run",
        &a,
        "--user",
        "4",
        "--k",
        "5",
        "--json",
    ]))
    .unwrap();
    let items: Vec<u64> = rec
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_u64().unwrap())
        .collect();
    assert_eq!(items.len(), 5);
    let dsx = ddrm::data::Dataset::open(Path::new(&ds)).unwrap();
    for i in &items {
        assert!(!dsx.train().contains(4, *i as u32));
    }
    for (flag, value) in [
        ("--adagcl-temp", "0"),
        ("--adagcl-layers", "0"),
        ("--adagcl-ssl", "-1"),
        ("--adagcl-gate-decay", "nan"),
    ] {
        let arg = format!("{flag}={value}");
        let (code, _, err) = ddrm(&[
            "train",
            "--model",
            "adagcl",
            "--dataset",
            &ds,
            "--out",
            "unused",
            &arg,
        ]);
        assert!(code != 0 && err.contains(flag), "{flag}: {err}");
        assert!(!Path::new("unused").exists());
    }
    let (code, _, err) = ddrm(&[
        "train",
        "--model",
        "adagcl",
        "--denoise",
        "tce",
        "--dataset",
        &ds,
        "--out",
        "unused",
    ]);
    assert!(code != 0 && err.contains("AdaGCL"), "{err}");
}

/// The main job end to end on a small dataset: every default row is trained and tabulated,
/// with the paper's figures beside ours, as Markdown and JSON.
#[test]
fn reproduce_runs_every_default_row() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "8");
    let out = dir.path().join("rep").to_str().unwrap().to_string();
    let stdout = ok(&[
        "-q",
        "--threads",
        "2",
        "reproduce",
        "--dataset",
        &ds,
        "--models",
        "mf",
        "--backend-epochs",
        "2",
        "--ddrm-epochs",
        "1",
        "--out",
        &out,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let models: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        [
            "MF-BPR",
            "MF-BPR+T-CE",
            "MF-BPR+R-CE",
            "MF-BPR+DeCA",
            "MF-BPR+DDRM",
            "MF-BPR: start point only",
            "CDAE",
            "MultiVAE",
            "DiffRec"
        ]
    );
    for r in v["rows"].as_array().unwrap() {
        // the start point has no counterpart in the paper
        let start = r["model"].as_str().unwrap().ends_with("start point only");
        assert_eq!(r["paper"].is_array(), !start, "{r}");
        assert!(r["ours"][1].as_f64().unwrap() > 0.0, "{r}");
    }
    let start = &v["rows"][5];
    assert_eq!(start["best_epoch"], 0, "{start}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&out).join("mf-start").join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["config"]["ddrm"]["inference"], "start-only", "{cfg}");
    let md = std::fs::read_to_string(Path::new(&out).join("table.md")).unwrap();
    assert!(
        md.contains("| DiffRec |") && md.contains("Total time"),
        "{md}"
    );
    let (code, _, err) = ddrm(&[
        "reproduce",
        "--dataset",
        &ds,
        "--baselines",
        "ncf",
        "--out",
        &out,
    ]);
    assert!(code != 0 && err.contains("ncf"), "{err}");
}

/// `reproduce --seeds`: one whole reproduction per seed, then each row's mean and spread and
/// how often DDRM is above its backend; `--summarize` pools finished runs the same way.
#[test]
fn reproduce_over_seeds_pools_each_row() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "8");
    let out = dir.path().join("seeds").to_str().unwrap().to_string();
    let base = [
        "-q",
        "--threads",
        "2",
        "reproduce",
        "--dataset",
        &ds,
        "--models",
        "mf",
        "--no-baselines",
        "--backend-epochs",
        "1",
        "--ddrm-epochs",
        "1",
    ];
    let mut args = base.to_vec();
    args.extend(["--seeds", "5,6", "--out", &out, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(v["seeds"], serde_json::json!([5, 6]));
    let rows = v["rows"].as_array().unwrap();
    let models: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(
        models,
        ["MF-BPR", "MF-BPR+DDRM", "MF-BPR: start point only"]
    );
    // each seed's own table, and the pooled figures are the per-seed ones' mean
    let table = |seed: &str| -> serde_json::Value {
        let p = Path::new(&out)
            .join(format!("seed-{seed}"))
            .join("table.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (t5, t6) = (table("5"), table("6"));
    assert_eq!(t5["seed"], 5);
    for (i, r) in rows.iter().enumerate() {
        let (a, b) = (
            t5["rows"][i]["ours"][1].as_f64().unwrap(),
            t6["rows"][i]["ours"][1].as_f64().unwrap(),
        );
        assert_eq!(r["per_seed"][0][1].as_f64().unwrap(), a);
        assert!(
            (r["mean"][1].as_f64().unwrap() - (a + b) / 2.0).abs() < 1e-12,
            "{r}"
        );
        assert!((r["sd"][1].as_f64().unwrap() - (a - b).abs() / 2f64.sqrt()).abs() < 1e-12);
    }
    let ddrm_above = rows[1]["above_backend"].as_array().unwrap();
    let want = (0..2)
        .filter(|&s| {
            let t = if s == 0 { &t5 } else { &t6 };
            t["rows"][1]["ours"][1].as_f64() > t["rows"][0]["ours"][1].as_f64()
        })
        .count();
    assert_eq!(ddrm_above[0].as_u64().unwrap() as usize, want);
    assert_eq!(rows[1]["backend"], "MF-BPR");
    assert!(Path::new(&out).join("seeds.md").exists());
    // the same summary from the finished runs
    let out2 = dir.path().join("pooled").to_str().unwrap().to_string();
    let s5 = Path::new(&out).join("seed-5").to_str().unwrap().to_string();
    let s6 = Path::new(&out).join("seed-6").to_str().unwrap().to_string();
    let both = format!("{s5},{s6}");
    let w: serde_json::Value = serde_json::from_str(&ok(&[
        "-q",
        "reproduce",
        "--summarize",
        &both,
        "--out",
        &out2,
        "--json",
    ]))
    .unwrap();
    assert_eq!(w["rows"], v["rows"]);
    let md = std::fs::read_to_string(Path::new(&out2).join("seeds.md")).unwrap();
    assert!(md.contains("| MF-BPR+DDRM |"), "{md}");
    // refused: a seed twice, the same run twice, a directory without a table, --seed with
    // --seeds
    let same = format!("{s5},{s5}");
    let missing = dir.path().join("nothing").to_str().unwrap().to_string();
    for (args, needle) in [
        (
            vec!["reproduce", "--seeds", "1,1", "--dataset", &ds],
            "twice",
        ),
        (vec!["reproduce", "--summarize", &same], "twice"),
        (vec!["reproduce", "--summarize", &missing], "no table.json"),
        (
            vec![
                "reproduce",
                "--seed",
                "3",
                "--seeds",
                "1,2",
                "--dataset",
                &ds,
            ],
            "cannot be used with",
        ),
    ] {
        let (code, _, err) = ddrm(&args);
        assert!(code != 0 && err.contains(needle), "{args:?}: {err}");
    }
}

/// The random-noise experiment: one row per ratio (backend, + R-CE, + DDRM), a table, JSON and
/// a plot; the corrupted datasets keep the clean test split.
#[test]
fn noise_experiment_runs_each_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "9");
    let out = dir.path().join("noise").to_str().unwrap().to_string();
    let stdout = ok(&[
        "-q",
        "--threads",
        "2",
        "experiment",
        "noise",
        "--dataset",
        &ds,
        "--ratios",
        "0,0.5",
        "--backend-epochs",
        "2",
        "--ddrm-epochs",
        "1",
        "--out",
        &out,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["ratio"], 0.5);
    for r in rows {
        for k in ["backend", "rce", "ddrm"] {
            assert!(r[k][0].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    let clean = ddrm::data::Dataset::open(Path::new(&ds)).unwrap();
    let noisy = ddrm::data::Dataset::open(&Path::new(&out).join("noise-0.5.ddrm")).unwrap();
    assert_eq!(clean.test().indices, noisy.test().indices);
    assert_eq!(clean.train().nnz(), noisy.train().nnz());
    let moved = clean
        .train()
        .pairs()
        .filter(|&(u, i)| !noisy.train().contains(u as usize, i))
        .count();
    let expect = clean.train().nnz() / 2;
    assert!(
        moved.abs_diff(expect) <= 2,
        "{moved} of {} train pairs replaced",
        clean.train().nnz()
    );
    let svg = std::fs::read_to_string(Path::new(&out).join("noise-recall.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3);
    assert!(Path::new(&out).join("noise.md").exists());
    let (code, _, err) = ddrm(&[
        "experiment",
        "noise",
        "--dataset",
        &ds,
        "--ratios",
        "0,1",
        "--out",
        &out,
    ]);
    assert!(code != 0 && err.contains("--ratios"), "{err}");
    let fresh = dir.path().join("noise-bad").to_str().unwrap().to_string();
    let (code, _, err) = ddrm(&[
        "experiment",
        "noise",
        "--dataset",
        &ds,
        "--dropout=-0.1",
        "--out",
        &fresh,
    ]);
    assert!(code != 0 && err.contains("--dropout"), "{err}");
    assert!(
        !Path::new(&fresh).exists(),
        "refused before training anything"
    );
}

/// The hyper-parameter sweep: one backend run, one DDRM run per value (each with the value in
/// its config), a table, JSON and a plot; `--from` reuses a backend run; bad values and a
/// non-backend `--from` fail with the option named.
#[test]
fn sweep_experiment_trains_one_ddrm_per_value() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "9");
    let out = dir.path().join("sweep").to_str().unwrap().to_string();
    let stdout = ok(&[
        "-q",
        "--threads",
        "2",
        "experiment",
        "sweep",
        "--param",
        "lambda",
        "--values",
        "0.2,0.9",
        "--dataset",
        &ds,
        "--backend-epochs",
        "2",
        "--ddrm-epochs",
        "1",
        "--out",
        &out,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["param"], "lambda");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(v["backend"]["recall20"].as_f64().unwrap() > 0.0);
    for (r, want) in rows.iter().zip([0.2f64, 0.9]) {
        assert_eq!(r["value"].as_f64().unwrap(), want);
        assert!(r["recall20"].as_f64().unwrap() > 0.0, "{r}");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(&out)
                    .join(format!("lambda-{want}"))
                    .join("config.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let lambda = cfg["config"]["ddrm"]["lambda"].as_f64().unwrap();
        assert!((lambda - want).abs() < 1e-6, "{cfg}");
        assert_eq!(
            cfg["config"]["ddrm"]["dropout"], 0.0,
            "the paper preset has no dropout"
        );
    }
    // the value the valid split picks: the first with the highest valid R@20
    let valid: Vec<f64> = rows
        .iter()
        .map(|r| r["valid_recall20"].as_f64().unwrap())
        .collect();
    assert!(valid.iter().all(|&x| x > 0.0), "{valid:?}");
    let want = if valid[1] > valid[0] { 0.9 } else { 0.2 };
    assert_eq!(v["picked_on_valid"].as_f64().unwrap(), want, "{valid:?}");
    assert!(v["backend"]["valid_recall20"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(Path::new(&out).join("sweep-recall.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    let md = std::fs::read_to_string(Path::new(&out).join("sweep.md")).unwrap();
    assert!(md.contains("| valid R@20 |"), "{md}");
    assert!(md.contains(&format!("| {want} * |")), "{md}");
    // reuse the backend run: same backend figures, steps set T and T' together
    let backend = Path::new(&out)
        .join("backend")
        .to_str()
        .unwrap()
        .to_string();
    let out2 = dir.path().join("sweep2").to_str().unwrap().to_string();
    let stdout = ok(&[
        "-q",
        "experiment",
        "sweep",
        "--param",
        "steps",
        "--values",
        "5",
        "--from",
        &backend,
        "--ddrm-epochs",
        "1",
        "--dropout",
        "0.5",
        "--out",
        &out2,
        "--json",
    ]);
    let w: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(w["backend"], v["backend"]);
    assert!(!Path::new(&out2).join("backend").exists());
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&out2).join("T-5").join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["config"]["ddrm"]["steps"], 5);
    assert_eq!(cfg["config"]["ddrm"]["inference_steps"], 5);
    assert_eq!(
        cfg["config"]["ddrm"]["dropout"], 0.5,
        "--dropout reaches the runs"
    );
    for (args, needle) in [
        (vec!["--param", "lambda", "--values", "1.5"], "--values"),
        (vec!["--param", "steps", "--values", "2.5"], "--values"),
        (vec!["--param", "alpha"], "alpha"),
        (vec!["--param", "gamma", "--dropout", "1.5"], "--dropout"),
        (vec!["--param", "gamma", "--dropout", "NaN"], "--dropout"),
        (vec!["--param", "gamma", "--from", &out], "no config.json"),
        (
            vec![
                "--param",
                "gamma",
                "--from",
                Path::new(&out).join("lambda-0.2").to_str().unwrap(),
            ],
            "backend run",
        ),
    ] {
        let mut full = vec!["experiment", "sweep", "--dataset", &ds, "--out", &out2];
        full.extend(args);
        let (code, _, err) = ddrm(&full);
        assert!(code != 0 && err.contains(needle), "{full:?}: {err}");
    }
}

/// The ablation: one row per variant, each run's config showing its switch.
#[test]
fn ablation_experiment_switches_one_part_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "9");
    let out = dir.path().join("abl").to_str().unwrap().to_string();
    let stdout = ok(&[
        "-q",
        "--threads",
        "2",
        "experiment",
        "ablation",
        "--variants",
        "full,recon-only,reweight-only,item-only,start-only,start-only-cosine,full",
        "--dataset",
        &ds,
        "--backend-epochs",
        "2",
        "--ddrm-epochs",
        "1",
        "--out",
        &out,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "full",
            "recon-only",
            "reweight-only",
            "item-only",
            "start-only",
            "start-only-cosine"
        ]
    );
    let cfg = |tag: &str| -> serde_json::Value {
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(&out).join(tag).join("config.json")).unwrap(),
        )
        .unwrap();
        c["config"]["ddrm"].clone()
    };
    assert_eq!(cfg("recononly")["gamma"], 0.0);
    assert_eq!(cfg("reweightonly")["lambda"], 1.0);
    assert_eq!(cfg("itemonly")["item_only"], true);
    assert_eq!(cfg("full")["item_only"], false);
    assert_eq!(cfg("startonly")["inference"], "start-only");
    assert_eq!(cfg("startonly")["rounding"], "inner");
    assert_eq!(cfg("startonlycosine")["inference"], "start-only");
    assert_eq!(cfg("startonlycosine")["rounding"], "cosine");
    for r in rows {
        assert!(r["recall20"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["valid_recall20"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(Path::new(&out).join("ablation.md").exists());
    let (code, _, err) = ddrm(&[
        "experiment",
        "ablation",
        "--variants",
        "everything",
        "--dataset",
        &ds,
        "--out",
        &out,
    ]);
    assert!(code != 0 && err.contains("everything"), "{err}");
}

/// `reproduce --baselines adagcl` adds the AdaGCL row, with the paper's figures beside ours.
#[test]
fn reproduce_adds_adagcl_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(dir.path(), "s.ddrm", "10");
    let out = dir.path().join("rep").to_str().unwrap().to_string();
    let stdout = ok(&[
        "-q",
        "--threads",
        "2",
        "reproduce",
        "--dataset",
        &ds,
        "--models",
        "mf",
        "--baselines",
        "adagcl",
        "--no-start-point",
        "--backend-epochs",
        "2",
        "--ddrm-epochs",
        "1",
        "--out",
        &out,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let models: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["MF-BPR", "MF-BPR+DDRM", "AdaGCL"]);
    let ada = &rows[2];
    assert_eq!(ada["paper"][1].as_f64().unwrap(), 0.1200);
    assert!(ada["ours"][1].as_f64().unwrap() > 0.0);
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(&out).join("adagcl").join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["kind"], "adagcl");
    assert_eq!(cfg["config"]["lr"].as_f64().unwrap() as f32, 5e-3);
}
