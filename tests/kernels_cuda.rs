//! The CUDA kernels (feature `cuda`): every kernel compiles with NVRTC (needs the NVRTC
//! library, not a GPU), and on a machine with a GPU each one agrees with the CPU kernel or a
//! scalar reference on random shapes. Without NVRTC or a GPU the cases print why they are
//! skipped and pass, as on CI.
#![cfg(feature = "cuda")]

use ddrm::data::{Csr, DuplicatePolicy};
use ddrm::kernels::cpu::gemm::{gemm_reference, Act};
use ddrm::kernels::cpu::spmm::{spmm_reference, SparseMatrix};
use ddrm::kernels::cpu::topk::topk_reference;
use ddrm::kernels::cuda::{self, AdamCoefs, Gpu, GpuScatterPlan, ScatterPlan};
use ddrm::nn::{Adam, AdamConfig};
use ddrm::util::rng::Rng;
use proptest::prelude::*;
use std::sync::OnceLock;

/// The GPU, opened once for the whole file; `None` (with the reason printed) without one.
fn gpu(test: &str) -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let g = GPU.get_or_init(|| match cuda::unavailable_reason(0) {
        Some(why) => Err(why),
        None => Gpu::open(0).map_err(|e| format!("{e:#}")),
    });
    match g {
        Ok(g) => Some(g),
        Err(why) => {
            // once per test, not once per proptest case
            static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
            let mut said = SAID.lock().unwrap();
            if !said.iter().any(|t| t == test) {
                eprintln!("{test}: skipped, no GPU here: {why}");
                said.push(test.to_string());
            }
            None
        }
    }
}

fn close(a: f32, b: f64, abs: f64, rel: f64) -> bool {
    ((a as f64) - b).abs() <= abs + rel * b.abs()
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !cuda::nvrtc_available() {
        eprintln!(
            "every_kernel_compiles_with_nvrtc: skipped, NVRTC not found (install the \
             nvidia-cuda-nvrtc-cu12 wheel and put its lib folder on LD_LIBRARY_PATH, as .ci/run does)"
        );
        return;
    }
    let compiled = cuda::compile_all().expect("every kernel compiles");
    assert_eq!(compiled.len(), cuda::sources::SOURCES.len());
    for ((name, ptx), (_, _, entries)) in compiled.iter().zip(cuda::sources::SOURCES) {
        for e in *entries {
            assert!(
                ptx.contains(&format!(".entry {e}(")),
                "kernels/{name}.cu: no entry {e} in the PTX"
            );
        }
        // loadable by the GPU machines' driver (CUDA 13.0): PTX ISA 9.0 or older
        let v = ptx
            .lines()
            .find_map(|l| l.trim().strip_prefix(".version "))
            .expect("PTX has a .version line");
        let (maj, min) = v.trim().split_once('.').expect("version X.Y");
        let (maj, min): (u32, u32) = (maj.parse().unwrap(), min.parse().unwrap());
        assert!(
            (maj, min) <= (9, 0),
            "kernels/{name}.cu: PTX ISA {v} is newer than CUDA 13.0 loads"
        );
        assert!(
            ptx.contains(".target sm_80"),
            "kernels/{name}.cu: not compiled for compute_80"
        );
    }
}

#[test]
fn open_without_a_gpu_fails_with_a_reason() {
    match cuda::unavailable_reason(0) {
        Some(why) => {
            let e = Gpu::open(0).err().expect("no GPU: open fails");
            let msg = format!("{e:#}");
            assert!(msg.contains("--device cuda") && msg.contains(&why), "{msg}");
        }
        None => {
            // a GPU is here: asking for one past the last fails with a message instead
            let n = 64;
            let why = cuda::unavailable_reason(n).expect("no machine has 65 GPUs");
            assert!(why.contains("device"), "{why}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Fused top-K on the GPU returns the same lists as score-all-then-sort (ties by lower
    /// id); scores are compared in f64 so that a different summation order cannot flip a
    /// near-tie into a failure: each list must hold the reference's scores, in order.
    #[test]
    fn fused_topk_matches_sort_reference(nq in 0usize..70, ni in 1usize..700,
        d in prop::sample::select(vec![1usize, 3, 16, 33, 64, 100]), k in 1usize..=128,
        ties: bool, seed in 0u64..1000) {
        let Some(g) = gpu("fused_topk_matches_sort_reference") else { return Ok(()) };
        let mut r = Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| if ties { (r.index(3) as f32) - 1.0 } else { r.uniform_f32() - 0.5 }).collect::<Vec<f32>>();
        let q = rv(nq * d);
        let it = rv(ni * d);
        let mut p1 = Vec::new();
        let mut p2 = Vec::new();
        let mut r2 = Rng::new(seed + 1);
        for u in 0..nq { for _ in 0..r2.index(20) { p1.push((u as u32, r2.index(ni) as u32)); p2.push((u as u32, r2.index(ni) as u32)); } }
        let m1 = Csr::from_pairs(nq, ni, &p1, DuplicatePolicy::Drop).unwrap().0;
        let m2 = Csr::from_pairs(nq, ni, &p2, DuplicatePolicy::Drop).unwrap().0;
        let rows: Vec<u32> = (0..nq as u32).collect();
        let masks = [m1.view(), m2.view()];
        let want = topk_reference(&q, &it, d, k, &masks, &rows);
        let (got, scores) = g.topk_host(&q, &it, d, k, &masks, &rows).unwrap();
        let exact = |u: usize, i: u32| (0..d).map(|p| q[u * d + p] as f64 * it[i as usize * d + p] as f64).sum::<f64>();
        for u in 0..nq {
            let gl: Vec<u32> = got[u * k..(u + 1) * k].iter().copied().filter(|&x| x != u32::MAX).collect();
            prop_assert_eq!(gl.len(), want[u].len(), "user {}: list length", u);
            for (p, (&gi, &wi)) in gl.iter().zip(&want[u]).enumerate() {
                prop_assert!(!masks.iter().any(|m| m.contains(u, gi)), "user {}: masked item {} returned", u, gi);
                prop_assert!(close(scores[u * k + p], exact(u, gi), 1e-4, 1e-4), "user {}: score of {}", u, gi);
                prop_assert!((exact(u, gi) - exact(u, wi)).abs() <= 1e-4 * (1.0 + exact(u, wi).abs()),
                    "user {} rank {}: item {} vs reference {}", u, p, gi, wi);
                if ties { prop_assert_eq!(gi, wi, "user {} rank {}: integer scores are exact", u, p); }
            }
            let mut seen = gl.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), gl.len(), "user {}: an item twice", u);
        }
    }

    /// GEMM in the three forms training uses (and A^T B^T), with beta, bias, activation and
    /// the activation-gradient epilogue, against the f64 triple loop.
    #[test]
    fn gemm_matches_reference(m in 0usize..150, n in 0usize..140, k in 0usize..300, ta: bool, tb: bool,
        beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]),
        act in prop::sample::select(vec![Act::None, Act::Relu, Act::Tanh, Act::Sigmoid]),
        bias: bool, grad: bool, seed in 0u64..1000) {
        let Some(g) = gpu("gemm_matches_reference") else { return Ok(()) };
        let mut r = Rng::new(seed);
        let a: Vec<f32> = (0..m * k).map(|_| r.uniform_f32() - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|_| r.uniform_f32() - 0.5).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| r.uniform_f32() - 0.5).collect();
        let bv: Vec<f32> = (0..n).map(|_| r.uniform_f32() - 0.5).collect();
        let y: Vec<f32> = (0..m * n).map(|_| r.uniform_f32()).collect();
        let mut want = c0.clone();
        gemm_reference(ta, tb, m, n, k, 1.0, &a, &b, beta, &mut want);
        let gact = if grad { Act::Tanh } else { Act::None };
        for i in 0..m { for j in 0..n {
            let mut v = want[i * n + j] as f64 + if bias { bv[j] as f64 } else { 0.0 };
            v = match act { Act::None => v, Act::Relu => v.max(0.0), Act::Tanh => v.tanh(), Act::Sigmoid => 1.0 / (1.0 + (-v).exp()) };
            if grad { v *= 1.0 - (y[i * n + j] as f64).powi(2); }
            want[i * n + j] = v as f32;
        }}
        let mut got = c0.clone();
        g.gemm_host(ta, tb, m, n, k, 1.0, &a, &b, beta, &mut got, bias.then_some(&bv[..]), act,
            grad.then_some((&y[..], gact))).unwrap();
        for (x, w) in got.iter().zip(&want) { prop_assert!(close(*x, *w as f64, 1e-4, 1e-4), "{} vs {}", x, w); }
    }

    /// CSR SpMM against the scalar reference, for widths around the warp's 32 and 64 columns.
    #[test]
    fn spmm_matches_reference(nr in 0usize..300, nc in 1usize..200,
        d in prop::sample::select(vec![1usize, 7, 32, 33, 64, 67, 130]), seed in 0u64..1000) {
        let Some(g) = gpu("spmm_matches_reference") else { return Ok(()) };
        let mut r = Rng::new(seed);
        let mut pairs = Vec::new();
        for i in 0..nr { for _ in 0..r.index(12) { pairs.push((i as u32, r.index(nc) as u32)); } }
        let (c, _) = Csr::from_pairs(nr, nc, &pairs, DuplicatePolicy::Drop).unwrap();
        let a = SparseMatrix { n_rows: nr, n_cols: nc, values: (0..c.nnz()).map(|_| r.uniform_f32()).collect(), indptr: c.indptr, indices: c.indices };
        let x: Vec<f32> = (0..nc * d).map(|_| r.uniform_f32() - 0.5).collect();
        let mut want = vec![0f32; nr * d];
        spmm_reference(&a, &x, d, &mut want);
        let got = g.spmm_host(&a, &x, d).unwrap();
        for (x, w) in got.iter().zip(&want) { prop_assert!(close(*x, *w as f64, 1e-5, 1e-5)); }
    }

    /// Activations, row dots, BPR, gather, deterministic scatter-add, Adam and the diffusion
    /// steps against scalar references (Adam against `nn::Adam` itself).
    #[test]
    fn elementwise_optim_and_diffusion_match_references(n in 0usize..300, d in 1usize..70, t in 1i32..50, seed in 0u64..1000) {
        let Some(g) = gpu("elementwise_optim_and_diffusion_match_references") else { return Ok(()) };
        let mut r = Rng::new(seed);
        let nd = n * d;
        let x: Vec<f32> = (0..nd).map(|_| (r.uniform_f32() - 0.5) * 20.0).collect();
        let gx = g.upload(&x).unwrap();
        for act in [Act::None, Act::Relu, Act::Tanh, Act::Sigmoid] {
            let mut gy = g.zeros::<f32>(nd).unwrap();
            g.act_forward(act, &gx, &mut gy, nd).unwrap();
            let y = g.download(&gy).unwrap();
            for (i, &v) in x.iter().enumerate() {
                let w = match act { Act::None => v as f64, Act::Relu => (v as f64).max(0.0), Act::Tanh => (v as f64).tanh(), Act::Sigmoid => 1.0 / (1.0 + (-(v as f64)).exp()) };
                prop_assert!(close(y[i], w, 1e-6, 1e-5), "{:?}({}) = {} vs {}", act, v, y[i], w);
            }
            let mut gdx = g.zeros::<f32>(nd).unwrap();
            g.act_backward(act, &gy, &gx, &mut gdx, nd).unwrap();
            let dx = g.download(&gdx).unwrap();
            for i in 0..nd {
                let yv = y[i] as f64;
                let der = match act { Act::None => 1.0, Act::Relu => if y[i] > 0.0 { 1.0 } else { 0.0 }, Act::Tanh => 1.0 - yv * yv, Act::Sigmoid => yv * (1.0 - yv) };
                prop_assert!(close(dx[i], x[i] as f64 * der, 1e-5, 1e-5));
            }
        }
        // row dots and BPR
        let b: Vec<f32> = (0..nd).map(|_| r.uniform_f32() - 0.5).collect();
        let gb = g.upload(&b).unwrap();
        let mut gd = g.zeros::<f32>(n).unwrap();
        g.row_dots(&gx, &gb, n, d, &mut gd).unwrap();
        let dots = g.download(&gd).unwrap();
        for i in 0..n {
            let w: f64 = (0..d).map(|j| x[i * d + j] as f64 * b[i * d + j] as f64).sum();
            prop_assert!(close(dots[i], w, 1e-4, 1e-5));
        }
        let sp: Vec<f32> = (0..n).map(|_| (r.uniform_f32() - 0.5) * 60.0).collect();
        let sn: Vec<f32> = (0..n).map(|_| (r.uniform_f32() - 0.5) * 60.0).collect();
        let w: Vec<f32> = (0..n).map(|_| r.uniform_f32()).collect();
        let (gsp, gsn, gw) = (g.upload(&sp).unwrap(), g.upload(&sn).unwrap(), g.upload(&w).unwrap());
        let (mut gl, mut gdp, mut gdn) = (g.zeros::<f32>(n).unwrap(), g.zeros::<f32>(n).unwrap(), g.zeros::<f32>(n).unwrap());
        let scale = 1.0 / n.max(1) as f32;
        g.bpr_loss(&gsp, &gsn, Some(&gw), scale, n, &mut gl, &mut gdp, &mut gdn).unwrap();
        let (l, dp, dn) = (g.download(&gl).unwrap(), g.download(&gdp).unwrap(), g.download(&gdn).unwrap());
        for i in 0..n {
            let z = sn[i] as f64 - sp[i] as f64;
            let sp_ = z.max(0.0) + (-z.abs()).exp().ln_1p();
            prop_assert!(close(l[i], w[i] as f64 * sp_, 1e-5, 1e-5));
            let gr = w[i] as f64 * scale as f64 / (1.0 + (-z).exp());
            prop_assert!(close(dp[i], -gr, 1e-7, 1e-5) && close(dn[i], gr, 1e-7, 1e-5));
        }
        // gather and deterministic scatter-add into a table of `rows` rows
        let rows = (n / 3).max(1);
        let idx: Vec<u32> = (0..n).map(|_| r.index(rows) as u32).collect();
        let table: Vec<f32> = (0..rows * d).map(|_| r.uniform_f32()).collect();
        let (gt, gi) = (g.upload(&table).unwrap(), g.upload(&idx).unwrap());
        let mut gout = g.zeros::<f32>(nd).unwrap();
        g.gather_rows(&gt, d, &gi, n, &mut gout).unwrap();
        let got = g.download(&gout).unwrap();
        for i in 0..n { for j in 0..d { prop_assert_eq!(got[i * d + j], table[idx[i] as usize * d + j]); } }
        let plan = ScatterPlan::new(&idx, rows).unwrap();
        let gp = GpuScatterPlan::new(g, &plan).unwrap();
        let mut gt2 = g.upload(&table).unwrap();
        g.scatter_add_rows(&gp, &gx, d, &mut gt2).unwrap();
        let first = g.download(&gt2).unwrap();
        let mut want = table.clone();
        for i in 0..n { for j in 0..d { want[idx[i] as usize * d + j] += x[i * d + j]; } }
        for (a, b) in first.iter().zip(&want) { prop_assert!(close(*a, *b as f64, 1e-4, 1e-5)); }
        let mut gt3 = g.upload(&table).unwrap();
        g.scatter_add_rows(&gp, &gx, d, &mut gt3).unwrap();
        prop_assert!(g.download(&gt3).unwrap().iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()), "scatter-add is not deterministic");
        prop_assert!(ScatterPlan::new(&[rows as u32], rows).is_err());
        // Adam: t steps against nn::Adam
        let cfg = AdamConfig { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-3 };
        let mut cpu = Adam::new(cfg, &[nd]);
        let mut p = b.clone();
        let (mut gp_, mut gm, mut gv) = (g.upload(&b).unwrap(), g.zeros::<f32>(nd).unwrap(), g.zeros::<f32>(nd).unwrap());
        for step in 1..=t.min(5) {
            let grad: Vec<f32> = (0..nd).map(|_| r.uniform_f32() - 0.5).collect();
            cpu.begin_step();
            cpu.update(0, &mut p, &grad);
            let gg = g.upload(&grad).unwrap();
            g.adam_step(&mut gp_, &gg, &mut gm, &mut gv, nd, AdamCoefs::at(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, step)).unwrap();
        }
        let pg = g.download(&gp_).unwrap();
        for (a, b) in pg.iter().zip(&p) { prop_assert!(close(*a, *b as f64, 1e-6, 1e-5), "adam {} vs {}", a, b); }
        // forward noising and a posterior step
        let steps: Vec<u32> = (0..n).map(|_| r.index(t as usize) as u32).collect();
        let sa: Vec<f32> = (0..t).map(|s| 1.0 - 0.01 * s as f32).collect();
        let s1: Vec<f32> = sa.iter().map(|a| (1.0 - a * a).sqrt()).collect();
        let eps: Vec<f32> = (0..nd).map(|_| r.uniform_f32() - 0.5).collect();
        let (gs, gsa, gs1, ge) = (g.upload(&steps).unwrap(), g.upload(&sa).unwrap(), g.upload(&s1).unwrap(), g.upload(&eps).unwrap());
        let mut gq = g.zeros::<f32>(nd).unwrap();
        g.q_sample(&gs, &gsa, &gs1, &gb, &ge, n, d, &mut gq).unwrap();
        let qs = g.download(&gq).unwrap();
        for i in 0..n { for j in 0..d {
            let e = i * d + j;
            let w = sa[steps[i] as usize] as f64 * b[e] as f64 + s1[steps[i] as usize] as f64 * eps[e] as f64;
            prop_assert!(close(qs[e], w, 1e-6, 1e-5));
        }}
        g.posterior_step(0.3, 0.6, &gb, &mut gq, Some((0.1, &ge)), nd).unwrap();
        let post = g.download(&gq).unwrap();
        for e in 0..nd {
            let w = 0.3 * b[e] as f64 + 0.6 * qs[e] as f64 + 0.1 * eps[e] as f64;
            prop_assert!(close(post[e], w, 1e-6, 1e-5));
        }
    }
}

/// Bad input reaches the user as an error, not a launch: K too large, wrong shapes, ids out
/// of range.
#[test]
fn gpu_ops_refuse_bad_input() {
    let Some(g) = gpu("gpu_ops_refuse_bad_input") else {
        return;
    };
    let q = vec![0.5f32; 4];
    let it = vec![0.5f32; 8];
    let e = g.topk_host(&q, &it, 2, 129, &[], &[0, 1]).unwrap_err();
    assert!(format!("{e:#}").contains("K = 129"), "{e:#}");
    let e = g.topk_host(&q[..3], &it, 2, 5, &[], &[0, 1]).unwrap_err();
    assert!(format!("{e:#}").contains("queries"), "{e:#}");
    let a = SparseMatrix {
        n_rows: 1,
        n_cols: 2,
        indptr: vec![0, 1],
        indices: vec![5],
        values: vec![1.0],
    };
    let e = g.spmm_host(&a, &[0.0; 4], 2).unwrap_err();
    assert!(format!("{e:#}").contains("column id 5"), "{e:#}");
}

/// The shared header is pasted in for NVRTC; an unknown header is an error naming it.
#[test]
fn includes_are_expanded_for_nvrtc() {
    let (_, gemm_src, _) = cuda::sources::SOURCES
        .iter()
        .find(|s| s.0 == "gemm")
        .unwrap();
    assert!(gemm_src.contains("#include \"activation.cuh\""));
    let x = cuda::compile::expand("gemm", gemm_src).unwrap();
    let directive = |d: &str| x.lines().any(|l| l.trim_start().starts_with(d));
    assert!(!directive("#include"), "an include is left");
    assert!(!directive("#pragma once"));
    assert_eq!(x.matches("float act_apply(").count(), 1);
    let err = cuda::compile::expand("x", "#include \"nope.cuh\"\n").unwrap_err();
    assert!(
        format!("{err}").contains("unknown header \"nope.cuh\""),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// The training kernels behind `device::ops::Ops` (masked noising, the DDRM loss, the
    /// counter-based random streams) on the GPU against the CPU implementation of the same
    /// operations (plain loops).
    #[test]
    fn ddrm_training_kernels_match_the_cpu_ops(n in 0usize..300, d in 1usize..70, seed in 0u64..1000, lambda in 0f32..1.0, gamma in prop::sample::select(vec![0f32, 0.3, 1.0]), masked: bool) {
        use ddrm::device::ops::{CpuOps, Ops};
        let Some(g) = gpu("ddrm_training_kernels_match_the_cpu_ops") else { return Ok(()); };
        let mut r = Rng::new(seed);
        let t = 7;
        let mut vecs = vec![vec![0f32; n * d]; 6];
        for v in vecs.iter_mut() { r.fill_normal(v, 1.0); }
        let steps: Vec<u32> = (0..n).map(|_| r.index(t) as u32).collect();
        let (sa, s1): (Vec<f32>, Vec<f32>) = (0..t).map(|k| (1.0 - 0.1 * k as f32, 0.1 * k as f32 + 0.01)).unzip();
        let mask: Vec<f32> = (0..n * d).map(|_| if r.uniform_f32() < 0.5 { 2.0 } else { 0.0 }).collect();
        // CPU
        let c = CpuOps;
        let mut want_x = vec![0f32; n * d];
        c.q_sample(&steps, &sa, &s1, &vecs[0], &vecs[1], masked.then_some(&mask), n, d, &mut want_x).unwrap();
        let (mut wp, mut wu, mut wi) = (vec![0f32; 3 * n], vec![0f32; n * d], vec![0f32; n * d]);
        c.ddrm_loss(&vecs[0], &vecs[1], &vecs[2], &vecs[3], &vecs[4], n, d, lambda, gamma, &mut wp, &mut wu, &mut wi).unwrap();
        // GPU
        let up = |v: &[f32]| Ops::upload(g, v).unwrap();
        let (gs, gsa, gs1) = (Ops::upload_u32(g, &steps).unwrap(), up(&sa), up(&s1));
        let gv: Vec<_> = vecs.iter().map(|v| up(v)).collect();
        let gm = up(&mask);
        let mut gx = Ops::zeros(g, n * d).unwrap();
        Ops::q_sample(g, &gs, &gsa, &gs1, &gv[0], &gv[1], masked.then_some(&gm), n, d, &mut gx).unwrap();
        let (mut gp, mut gu, mut gi) = (Ops::zeros(g, 3 * n).unwrap(), Ops::zeros(g, n * d).unwrap(), Ops::zeros(g, n * d).unwrap());
        Ops::ddrm_loss(g, &gv[0], &gv[1], &gv[2], &gv[3], &gv[4], n, d, lambda, gamma, &mut gp, &mut gu, &mut gi).unwrap();
        let got_x = Ops::read(g, &gx, n * d).unwrap();
        for (a, b) in want_x.iter().zip(&got_x) { prop_assert!(close(*b, *a as f64, 1e-6, 1e-5), "q_sample: cpu {} gpu {}", a, b); }
        for (what, w, gb, len) in [("parts", &wp, &gp, 3 * n), ("dhu", &wu, &gu, n * d), ("dhi", &wi, &gi, n * d)] {
            let got = Ops::read(g, gb, len).unwrap();
            for (a, b) in w.iter().zip(&got) { prop_assert!(close(*b, *a as f64, 1e-6, 1e-4), "{}: cpu {} gpu {}", what, a, b); }
        }
        // the counter-based streams: normals to the last bits of logf / cosf, masks exactly
        use ddrm::device::ops::Draw;
        for what in [Draw::Normal, Draw::Keep(0.6)] {
            let mut want = vec![0f32; n * d];
            c.draw(seed, what, n * d, &mut want).unwrap();
            let mut gd = Ops::zeros(g, n * d).unwrap();
            Ops::draw(g, seed, what, n * d, &mut gd).unwrap();
            let got = Ops::read(g, &gd, n * d).unwrap();
            for (a, b) in want.iter().zip(&got) {
                match what {
                    Draw::Normal => prop_assert!(close(*b, *a as f64, 1e-5, 1e-5), "normal: cpu {} gpu {}", a, b),
                    Draw::Keep(_) => prop_assert_eq!(a, b),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// MF-BPR's row gradients and lazy row Adam on the GPU against the CPU operations.
    #[test]
    fn mf_kernels_match_the_cpu_ops(nu in 1usize..40, ni in 1usize..40, d in 1usize..70, b in 1usize..200, seed in 0u64..1000, t in 1i32..20) {
        use ddrm::device::ops::{plan_rows, AdamCoefs, CpuOps, Ops, RowPlan};
        let Some(g) = gpu("mf_kernels_match_the_cpu_ops") else { return Ok(()); };
        let mut r = Rng::new(seed);
        let mut table = vec![0f32; (nu + ni) * d];
        r.fill_normal(&mut table, 1.0);
        let users: Vec<u32> = (0..b).map(|_| r.index(nu) as u32).collect();
        let pos: Vec<u32> = (0..b).map(|_| (nu + r.index(ni)) as u32).collect();
        let neg: Vec<u32> = (0..b).map(|_| (nu + r.index(ni)) as u32).collect();
        let dp: Vec<f32> = (0..b).map(|_| r.uniform_f32() - 1.0).collect();
        let dn: Vec<f32> = (0..b).map(|_| r.uniform_f32()).collect();
        let (rows, start, entries) = plan_rows(&users, &pos, &neg);
        let cplan = RowPlan { n_unique: rows.len(), rows: rows.clone(), start: start.clone(), entries: entries.clone() };
        let mut want = vec![0f32; rows.len() * d];
        CpuOps.mf_row_grads(&table, d, &cplan, [&users, &pos, &neg], &dp, &dn, 1e-3, &mut want).unwrap();
        let gplan = RowPlan {
            n_unique: rows.len(),
            rows: Ops::upload_u32(g, &rows).unwrap(),
            start: Ops::upload_u32(g, &start).unwrap(),
            entries: Ops::upload_u32(g, &entries).unwrap(),
        };
        let gt = Ops::upload(g, &table).unwrap();
        let gid: Vec<_> = [&users, &pos, &neg].iter().map(|v| Ops::upload_u32(g, v).unwrap()).collect();
        let (gdp, gdn) = (Ops::upload(g, &dp).unwrap(), Ops::upload(g, &dn).unwrap());
        let mut gg = Ops::zeros(g, rows.len() * d).unwrap();
        Ops::mf_row_grads(g, &gt, d, &gplan, [&gid[0], &gid[1], &gid[2]], &gdp, &gdn, 1e-3, &mut gg).unwrap();
        let got = Ops::read(g, &gg, rows.len() * d).unwrap();
        // the same products and sums in the same order, unfused: the same bits
        prop_assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        // lazy Adam on those rows
        let c = AdamCoefs::at(1e-2, 0.9, 0.999, 1e-8, 1e-4, t);
        let (mut ct, mut cm, mut cv) = (table.clone(), vec![0.01f32; table.len()], vec![0.02f32; table.len()]);
        CpuOps.adam_rows(&mut ct, d, &cplan, &want, &mut cm, &mut cv, c).unwrap();
        let (mut gtm, mut gm, mut gv) = (Ops::upload(g, &table).unwrap(), Ops::upload(g, &vec![0.01f32; table.len()]).unwrap(), Ops::upload(g, &vec![0.02f32; table.len()]).unwrap());
        Ops::adam_rows(g, &mut gtm, d, &gplan, &gg, &mut gm, &mut gv, c).unwrap();
        for (what, w, gb) in [("table", &ct, &gtm), ("m", &cm, &gm), ("v", &cv, &gv)] {
            let got = Ops::read(g, gb, table.len()).unwrap();
            for (a, x) in w.iter().zip(&got) { prop_assert!(close(*x, *a as f64, 1e-6, 1e-5), "{}: cpu {} gpu {}", what, a, x); }
        }
    }
}
