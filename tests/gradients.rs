//! Every hand-written backward against central finite differences of an f64 reference forward.

use ddrm::kernels::cpu::elementwise as ew;
use ddrm::kernels::cpu::Act;
use ddrm::nn::{loss, Linear, Mlp, MlpCache};
use ddrm::util::rng::Rng;
use proptest::prelude::*;

mod common;
use common::{assert_grad, H};

fn act64(x: f64, act: Act) -> f64 {
    match act {
        Act::None => x,
        Act::Relu => x.max(0.0),
        Act::Tanh => x.tanh(),
        Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

/// f64 reference of an MLP forward: returns Σ G ⊙ output.
fn mlp_ref(
    ws: &[Vec<f64>],
    bs: &[Vec<f64>],
    dims: &[usize],
    act: Act,
    x: &[f64],
    n: usize,
    g: &[f64],
) -> f64 {
    let mut h = x.to_vec();
    for l in 0..ws.len() {
        let (din, dout) = (dims[l], dims[l + 1]);
        let mut o = vec![0f64; n * dout];
        for r in 0..n {
            for j in 0..dout {
                let mut s = bs[l][j];
                for p in 0..din {
                    s += h[r * din + p] * ws[l][p * dout + j];
                }
                o[r * dout + j] = if l + 1 == ws.len() { s } else { act64(s, act) };
            }
        }
        h = o;
    }
    h.iter().zip(g).map(|(a, b)| a * b).sum()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Linear with each smooth activation: dW, db and dx.
    #[test]
    fn linear_backward_matches_finite_differences(n in 1usize..6, din in 1usize..9, dout in 1usize..11, seed in 0u64..10_000,
        act in prop::sample::select(vec![Act::None, Act::Tanh, Act::Sigmoid])) {
        let mut r = Rng::new(seed);
        let lin = Linear::xavier_normal(din, dout, 0.1, &mut r);
        let mut x = vec![0f32; n * din]; r.fill_normal(&mut x, 1.0);
        let mut g = vec![0f32; n * dout]; r.fill_normal(&mut g, 1.0);
        let mut y = vec![0f32; n * dout];
        lin.forward(&x, n, act, &mut y);
        let mut dy = g.clone();
        let mut grad = lin.zero_grad();
        let mut dx = vec![0f32; n * din];
        lin.backward(&x, &y, &mut dy, n, act, &mut grad, Some(&mut dx), false);
        let (w, b, x64, g64) = (to64(&lin.w), to64(&lin.b), to64(&x), to64(&g));
        // a single layer applies its activation to the output
        let f = |w: &[f64], b: &[f64], x: &[f64]| {
            let mut o = 0.0;
            for rr in 0..n { for j in 0..dout {
                let mut s = b[j]; for p in 0..din { s += x[rr * din + p] * w[p * dout + j]; }
                o += act64(s, act) * g64[rr * dout + j];
            }}
            o
        };
        for k in 0..w.len() {
            let (mut wp, mut wm) = (w.clone(), w.clone()); wp[k] += H; wm[k] -= H;
            assert_grad(grad.w[k], (f(&wp, &b, &x64) - f(&wm, &b, &x64)) / (2.0 * H), "dW")?;
        }
        for k in 0..b.len() {
            let (mut bp, mut bm) = (b.clone(), b.clone()); bp[k] += H; bm[k] -= H;
            assert_grad(grad.b[k], (f(&w, &bp, &x64) - f(&w, &bm, &x64)) / (2.0 * H), "db")?;
        }
        for k in 0..x64.len() {
            let (mut xp, mut xm) = (x64.clone(), x64.clone()); xp[k] += H; xm[k] -= H;
            assert_grad(dx[k], (f(&w, &b, &xp) - f(&w, &b, &xm)) / (2.0 * H), "dx")?;
        }
    }

    /// A 3-layer MLP: every weight, bias and input coordinate.
    #[test]
    fn mlp_backward_matches_finite_differences(n in 1usize..5, seed in 0u64..10_000,
        act in prop::sample::select(vec![Act::Tanh, Act::Sigmoid])) {
        let mut r = Rng::new(seed);
        let dims = [5usize, 7, 3, 4];
        let mlp = Mlp::new(&dims, act, 0.1, &mut r);
        let mut x = vec![0f32; n * 5]; r.fill_normal(&mut x, 1.0);
        let mut g = vec![0f32; n * 4]; r.fill_normal(&mut g, 1.0);
        let mut cache = MlpCache::default();
        mlp.forward(&x, n, &mut cache);
        let mut grads = mlp.zero_grad();
        let mut dx = vec![0f32; n * 5];
        mlp.backward(&x, n, &mut cache, &g, &mut grads, Some(&mut dx));
        let ws: Vec<Vec<f64>> = mlp.layers.iter().map(|l| to64(&l.w)).collect();
        let bs: Vec<Vec<f64>> = mlp.layers.iter().map(|l| to64(&l.b)).collect();
        let (x64, g64) = (to64(&x), to64(&g));
        for l in 0..3 {
            for k in 0..ws[l].len() {
                let (mut p, mut m) = (ws.clone(), ws.clone()); p[l][k] += H; m[l][k] -= H;
                let fd = (mlp_ref(&p, &bs, &dims, act, &x64, n, &g64) - mlp_ref(&m, &bs, &dims, act, &x64, n, &g64)) / (2.0 * H);
                assert_grad(grads[l].w[k], fd, "mlp dW")?;
            }
            for k in 0..bs[l].len() {
                let (mut p, mut m) = (bs.clone(), bs.clone()); p[l][k] += H; m[l][k] -= H;
                let fd = (mlp_ref(&ws, &p, &dims, act, &x64, n, &g64) - mlp_ref(&ws, &m, &dims, act, &x64, n, &g64)) / (2.0 * H);
                assert_grad(grads[l].b[k], fd, "mlp db")?;
            }
        }
        for k in 0..x64.len() {
            let (mut p, mut m) = (x64.clone(), x64.clone()); p[k] += H; m[k] -= H;
            let fd = (mlp_ref(&ws, &bs, &dims, act, &p, n, &g64) - mlp_ref(&ws, &bs, &dims, act, &m, n, &g64)) / (2.0 * H);
            assert_grad(dx[k], fd, "mlp dx")?;
        }
    }

    /// Weighted BPR, including large score gaps (stable softplus / sigmoid).
    #[test]
    fn bpr_backward_matches_finite_differences(pos in prop::collection::vec(-30f32..30.0, 1..9), seed in 0u64..1000) {
        let mut r = Rng::new(seed);
        let b = pos.len();
        let neg: Vec<f32> = (0..b).map(|_| r.uniform_f32() * 60.0 - 30.0).collect();
        let w: Vec<f32> = (0..b).map(|_| r.uniform_f32()).collect();
        let (mut dp, mut dn) = (vec![0f32; b], vec![0f32; b]);
        let l = loss::bpr(&pos, &neg, Some(&w), &mut dp, &mut dn);
        let f = |p: &[f64], q: &[f64]| -> f64 {
            (0..b).map(|k| w[k] as f64 * (1.0 + (q[k] - p[k]).exp()).ln()).sum::<f64>() / b as f64
        };
        let (p64, n64) = (to64(&pos), to64(&neg));
        prop_assert!((l - f(&p64, &n64)).abs() < 1e-4 * (1.0 + l.abs()));
        for k in 0..b {
            let (mut a, mut c) = (p64.clone(), p64.clone()); a[k] += H; c[k] -= H;
            assert_grad(dp[k], (f(&a, &n64) - f(&c, &n64)) / (2.0 * H), "dpos")?;
            let (mut a, mut c) = (n64.clone(), n64.clone()); a[k] += H; c[k] -= H;
            assert_grad(dn[k], (f(&p64, &a) - f(&p64, &c)) / (2.0 * H), "dneg")?;
        }
    }

    #[test]
    fn mse_and_bce_backward_match_finite_differences(v in prop::collection::vec(-5f32..5.0, 6..18), seed in 0u64..1000) {
        let mut r = Rng::new(seed);
        let d = 3; let n = v.len() / d; let len = n * d;
        let pred = &v[..len];
        let target: Vec<f32> = (0..len).map(|_| r.uniform_f32() - 0.5).collect();
        let w: Vec<f32> = (0..n).map(|_| r.uniform_f32()).collect();
        let mut dp = vec![0f32; len];
        loss::mse_rows(pred, &target, d, Some(&w), &mut dp);
        let f = |p: &[f64]| -> f64 {
            (0..n).map(|rr| w[rr] as f64 * (0..d).map(|j| (p[rr * d + j] - target[rr * d + j] as f64).powi(2)).sum::<f64>() / d as f64).sum::<f64>() / n as f64
        };
        let p64 = to64(pred);
        for k in 0..len {
            let (mut a, mut c) = (p64.clone(), p64.clone()); a[k] += H; c[k] -= H;
            assert_grad(dp[k], (f(&a) - f(&c)) / (2.0 * H), "mse")?;
        }
        let y: Vec<f32> = (0..len).map(|k| (k % 2) as f32).collect();
        let mut dz = vec![0f32; len];
        loss::bce_logits(pred, &y, None, &mut dz);
        let fb = |z: &[f64]| -> f64 { (0..len).map(|k| (1.0 + z[k].exp()).ln() - y[k] as f64 * z[k]).sum::<f64>() / len as f64 };
        for k in 0..len {
            let (mut a, mut c) = (p64.clone(), p64.clone()); a[k] += H; c[k] -= H;
            assert_grad(dz[k], (fb(&a) - fb(&c)) / (2.0 * H), "bce")?;
        }
    }

    /// InfoNCE through the L2 normalization, both views.
    #[test]
    fn infonce_backward_matches_finite_differences(n in 1usize..6, d in 1usize..6, seed in 0u64..1000, tau in 0.1f32..1.0) {
        let mut r = Rng::new(seed);
        let mut a = vec![0f32; n * d]; r.fill_normal(&mut a, 1.0);
        let mut b = vec![0f32; n * d]; r.fill_normal(&mut b, 1.0);
        let (mut da, mut db) = (vec![0f32; n * d], vec![0f32; n * d]);
        let l = loss::infonce(&a, &b, d, tau, &mut da, &mut db);
        let f = |a: &[f64], b: &[f64]| -> f64 {
            let norm = |x: &[f64]| -> Vec<f64> { let mut o = x.to_vec(); for rr in 0..n { let s = (0..d).map(|j| x[rr*d+j].powi(2)).sum::<f64>().sqrt(); for j in 0..d { o[rr*d+j] /= s; } } o };
            let (ah, bh) = (norm(a), norm(b));
            let mut tot = 0.0;
            for i in 0..n {
                let s: Vec<f64> = (0..n).map(|j| (0..d).map(|p| ah[i*d+p] * bh[j*d+p]).sum::<f64>() / tau as f64).collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                tot += mx + s.iter().map(|v| (v - mx).exp()).sum::<f64>().ln() - s[i];
            }
            tot / n as f64
        };
        let (a64, b64) = (to64(&a), to64(&b));
        prop_assert!((l - f(&a64, &b64)).abs() < 1e-4 * (1.0 + l.abs()));
        for k in 0..n * d {
            let (mut p, mut m) = (a64.clone(), a64.clone()); p[k] += H; m[k] -= H;
            assert_grad(da[k], (f(&p, &b64) - f(&m, &b64)) / (2.0 * H), "infonce da")?;
            let (mut p, mut m) = (b64.clone(), b64.clone()); p[k] += H; m[k] -= H;
            assert_grad(db[k], (f(&a64, &p) - f(&a64, &m)) / (2.0 * H), "infonce db")?;
        }
    }

    /// Scatter-add is the gradient of gather (embedding lookup).
    #[test]
    fn embedding_gather_gradient_is_scatter_add(ids in prop::collection::vec(0u32..6, 0..12), d in 1usize..5, seed in 0u64..1000) {
        let mut r = Rng::new(seed);
        let mut g = vec![0f32; ids.len() * d]; r.fill_normal(&mut g, 1.0);
        let mut grad = vec![0f32; 6 * d];
        ew::scatter_add_rows(&mut grad, d, &ids, &g);
        // L(table) = Σ G ⊙ gather(table): linear, so dL/dtable[i][j] = Σ_{r: ids[r]=i} G[r][j]
        let table = vec![0f64; 6 * d];
        let f = |t: &[f64]| -> f64 { ids.iter().enumerate().map(|(rr, &i)| (0..d).map(|j| t[i as usize * d + j] * g[rr * d + j] as f64).sum::<f64>()).sum() };
        for k in 0..6 * d {
            let (mut p, mut m) = (table.clone(), table.clone()); p[k] += H; m[k] -= H;
            assert_grad(grad[k], (f(&p) - f(&m)) / (2.0 * H), "scatter")?;
        }
    }
}

#[test]
fn adam_matches_a_scalar_reference_step() {
    use ddrm::nn::{Adam, AdamConfig};
    let mut cfg = AdamConfig::with_lr(0.01);
    cfg.weight_decay = 0.1;
    let n = 10_007;
    let mut r = Rng::new(5);
    let mut p = vec![0f32; n];
    r.fill_normal(&mut p, 1.0);
    let mut g = vec![0f32; n];
    r.fill_normal(&mut g, 1.0);
    let mut opt = Adam::new(cfg, &[n]);
    let mut pref: Vec<f64> = to64(&p);
    let (mut m, mut v) = (vec![0f64; n], vec![0f64; n]);
    for t in 1..=3 {
        opt.begin_step();
        opt.update(0, &mut p, &g);
        for k in 0..n {
            let gk = g[k] as f64 + 0.1 * pref[k];
            m[k] = 0.9 * m[k] + 0.1 * gk;
            v[k] = 0.999 * v[k] + 0.001 * gk * gk;
            let mh = m[k] / (1.0 - 0.9f64.powi(t));
            let vh = v[k] / (1.0 - 0.999f64.powi(t));
            pref[k] -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
    }
    for k in 0..n {
        assert!(
            (p[k] as f64 - pref[k]).abs() < 1e-5,
            "{k}: {} vs {}",
            p[k],
            pref[k]
        );
    }
}

#[test]
fn step_encoding_matches_formula() {
    let mut out = vec![0f32; 2 * 10];
    ddrm::nn::step_embedding::timestep_encoding(&[0.0, 7.0], 10, &mut out);
    assert_eq!(&out[..5], &[1.0; 5]);
    assert_eq!(&out[5..10], &[0.0; 5]);
    let f1 = (-(10000f64.ln()) / 5.0).exp();
    assert!((out[10 + 1] as f64 - (7.0 * f1).cos()).abs() < 1e-6);
    assert!((out[15 + 1] as f64 - (7.0 * f1).sin()).abs() < 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Lazy (row) Adam, SIMD and parallel, against a scalar f64 reference of the same steps:
    /// the listed rows move exactly as dense Adam would move them, every other row is untouched.
    #[test]
    fn lazy_adam_rows_match_a_scalar_reference(
        n_rows in 1usize..300, d in 1usize..40, seed in 0u64..1000, steps in 1i32..4,
    ) {
        use ddrm::nn::{Adam, AdamConfig};
        let mut cfg = AdamConfig::with_lr(0.01);
        cfg.weight_decay = 0.05;
        let mut r = Rng::new(seed);
        let mut p = vec![0f32; n_rows * d];
        r.fill_normal(&mut p, 1.0);
        let orig = p.clone();
        let mut opt = Adam::new(cfg, &[n_rows * d]);
        let mut pref = to64(&p);
        let (mut m, mut v) = (vec![0f64; n_rows * d], vec![0f64; n_rows * d]);
        // the same distinct rows every step, in a shuffled order
        let mut rows: Vec<u32> = (0..n_rows as u32).filter(|_| r.uniform() < 0.5).collect();
        for k in (1..rows.len()).rev() {
            let j = (r.uniform() * (k + 1) as f64) as usize;
            rows.swap(k, j.min(k));
        }
        let mut g = vec![0f32; rows.len() * d];
        for t in 1..=steps {
            r.fill_normal(&mut g, 2.0);
            opt.begin_step();
            opt.update_rows(0, &mut p, d, &rows, &g);
            for (k, &row) in rows.iter().enumerate() {
                for j in 0..d {
                    let o = row as usize * d + j;
                    let gk = g[k * d + j] as f64 + 0.05 * pref[o];
                    m[o] = 0.9 * m[o] + 0.1 * gk;
                    v[o] = 0.999 * v[o] + 0.001 * gk * gk;
                    let mh = m[o] / (1.0 - 0.9f64.powi(t));
                    let vh = v[o] / (1.0 - 0.999f64.powi(t));
                    pref[o] -= 0.01 * mh / (vh.sqrt() + 1e-8);
                }
            }
        }
        for row in 0..n_rows {
            let listed = rows.contains(&(row as u32));
            for j in 0..d {
                let o = row * d + j;
                if listed {
                    prop_assert!((p[o] as f64 - pref[o]).abs() < 1e-5, "row {row} col {j}: {} vs {}", p[o], pref[o]);
                } else {
                    prop_assert_eq!(p[o], orig[o]);
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "repeats")]
fn lazy_adam_refuses_a_repeated_row() {
    use ddrm::nn::{Adam, AdamConfig};
    let mut opt = Adam::new(AdamConfig::with_lr(0.01), &[8]);
    let mut p = vec![0f32; 8];
    opt.begin_step();
    opt.update_rows(0, &mut p, 2, &[1, 3, 1], &[1.0; 6]);
}

mod denoising_objectives {
    use super::*;
    use ddrm::denoising::objective::{
        rce_weights, reweighted_bce, tce_keep, tce_rate, truncated_bce,
    };
    use ddrm::denoising::Objective;

    fn sp64(x: f64) -> f64 {
        x.max(0.0) + (-x.abs()).exp().ln_1p()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// T-CE: the kept set drops exactly floor(rate · B) positives, those with the largest
        /// BCE loss (the smallest scores); the gradient at that fixed set matches FD of the f64
        /// truncated BCE, including large scores.
        #[test]
        fn tce_drops_the_largest_losses_and_its_gradient_matches_fd(
            pos in prop::collection::vec(-40f32..40.0, 1..24), seed in 0u64..1000, rate in 0f32..0.99) {
            let mut r = Rng::new(seed);
            let b = pos.len();
            let neg: Vec<f32> = (0..b).map(|_| r.uniform_f32() * 80.0 - 40.0).collect();
            let keep = tce_keep(&pos, rate);
            let n_drop = keep.iter().filter(|k| !**k).count();
            prop_assert_eq!(n_drop, (rate as f64 * b as f64).floor() as usize);
            let max_dropped = (0..b).filter(|&k| !keep[k]).map(|k| pos[k]).fold(f32::NEG_INFINITY, f32::max);
            let min_kept = (0..b).filter(|&k| keep[k]).map(|k| pos[k]).fold(f32::INFINITY, f32::min);
            prop_assert!(max_dropped <= min_kept, "dropped {} above kept {}", max_dropped, min_kept);
            let (mut dp, mut dn) = (vec![0f32; b], vec![0f32; b]);
            let l = truncated_bce(&pos, &neg, &keep, &mut dp, &mut dn);
            let n = (b - n_drop + b) as f64;
            let f = |p: &[f64], q: &[f64]| -> f64 {
                (0..b).map(|k| if keep[k] { sp64(-p[k]) } else { 0.0 } + sp64(q[k])).sum::<f64>() / n
            };
            let (p64, n64) = (to64(&pos), to64(&neg));
            prop_assert!((l - f(&p64, &n64)).abs() < 1e-4 * (1.0 + l.abs()), "loss {} vs {}", l, f(&p64, &n64));
            for k in 0..b {
                let (mut a, mut c) = (p64.clone(), p64.clone()); a[k] += H; c[k] -= H;
                assert_grad(dp[k], (f(&a, &n64) - f(&c, &n64)) / (2.0 * H), "tce dpos")?;
                let (mut a, mut c) = (n64.clone(), n64.clone()); a[k] += H; c[k] -= H;
                assert_grad(dn[k], (f(&p64, &a) - f(&p64, &c)) / (2.0 * H), "tce dneg")?;
            }
        }

        /// R-CE: the weights are σ(z)^β / (1 − σ(z))^β; the gradient with the weights held
        /// constant matches FD of the f64 weighted BCE.
        #[test]
        fn rce_gradient_matches_fd(pos in prop::collection::vec(-40f32..40.0, 1..16), seed in 0u64..1000, beta in 0f32..1.0) {
            let mut r = Rng::new(seed);
            let b = pos.len();
            let neg: Vec<f32> = (0..b).map(|_| r.uniform_f32() * 80.0 - 40.0).collect();
            let (wp, wn) = rce_weights(&pos, &neg, beta);
            for k in 0..b {
                let s = |z: f64| 1.0 / (1.0 + (-z).exp());
                // 1 − σ(x) = σ(−x), computed without cancellation
                let (ep, en) = (s(pos[k] as f64).powf(beta as f64), s(-(neg[k] as f64)).powf(beta as f64));
                prop_assert!((wp[k] as f64 - ep).abs() <= 1e-6 + 1e-4 * ep, "wp {} vs {}", wp[k], ep);
                prop_assert!((wn[k] as f64 - en).abs() <= 1e-6 + 1e-4 * en, "wn {} vs {}", wn[k], en);
            }
            let (mut dp, mut dn) = (vec![0f32; b], vec![0f32; b]);
            let l = reweighted_bce(&pos, &neg, &wp, &wn, &mut dp, &mut dn);
            let f = |p: &[f64], q: &[f64]| -> f64 {
                (0..b).map(|k| wp[k] as f64 * sp64(-p[k]) + wn[k] as f64 * sp64(q[k])).sum::<f64>() / (2 * b) as f64
            };
            let (p64, n64) = (to64(&pos), to64(&neg));
            prop_assert!((l - f(&p64, &n64)).abs() < 1e-4 * (1.0 + l.abs()));
            for k in 0..b {
                let (mut a, mut c) = (p64.clone(), p64.clone()); a[k] += H; c[k] -= H;
                assert_grad(dp[k], (f(&a, &n64) - f(&c, &n64)) / (2.0 * H), "rce dpos")?;
                let (mut a, mut c) = (n64.clone(), n64.clone()); a[k] += H; c[k] -= H;
                assert_grad(dn[k], (f(&p64, &a) - f(&p64, &c)) / (2.0 * H), "rce dneg")?;
            }
        }
    }

    /// The T-CE schedule grows linearly to its cap; with nothing dropped T-CE is plain BCE, and
    /// R-CE with β = 0 is plain BCE too (`loss::bce_logits` on the 2B samples).
    #[test]
    fn schedule_and_limits() {
        assert_eq!(tce_rate(0.2, 100, 0), 0.0);
        assert!((tce_rate(0.2, 100, 50) - 0.1).abs() < 1e-7);
        assert_eq!(tce_rate(0.2, 100, 100), 0.2);
        assert_eq!(tce_rate(0.2, 100, 10_000), 0.2);
        assert_eq!(tce_rate(0.2, 0, 0), 0.2);
        let pos = [2.0f32, -1.0, 0.5, 3.0];
        let neg = [-3.0f32, 1.0, 0.0, -30.0];
        let z: Vec<f32> = pos.iter().chain(&neg).copied().collect();
        let y = [1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let mut dz = [0f32; 8];
        let want = loss::bce_logits(&z, &y, None, &mut dz);
        for obj in [
            Objective::Tce {
                drop: 0.5,
                warmup: 10,
            }, // step 0: nothing dropped yet
            Objective::Rce { beta: 0.0 },
        ] {
            let (mut dp, mut dn) = ([0f32; 4], [0f32; 4]);
            let l = obj.loss(0, &pos, &neg, &mut dp, &mut dn);
            assert!((l - want).abs() < 1e-6, "{obj:?}: {l} vs {want}");
            for k in 0..4 {
                assert!((dp[k] - dz[k]).abs() < 1e-7 && (dn[k] - dz[4 + k]).abs() < 1e-7);
            }
        }
        // at full rate T-CE drops the half of positives with the lowest scores
        let (mut dp, mut dn) = ([0f32; 4], [0f32; 4]);
        Objective::Tce {
            drop: 0.5,
            warmup: 10,
        }
        .loss(10, &pos, &neg, &mut dp, &mut dn);
        assert_eq!(dp.map(|g| g != 0.0), [true, false, false, true]);
    }
}

mod multivae {
    use super::*;
    use ddrm::denoising::multivae::{MultVae, VaeBatch};

    /// f64 reference: (loss, logits) of a batch; params = [w1, b1, w2, b2, w3, b3, w4, b4].
    #[allow(clippy::too_many_arguments)]
    fn reference(
        p: &[Vec<f64>],
        dims: (usize, usize, usize),
        b: &VaeBatch,
        eps: &[f64],
        beta: f64,
    ) -> (f64, Vec<f64>) {
        let (ni, h, l) = dims;
        let n = b.n();
        let lin = |x: &[f64], w: &[f64], bias: &[f64], din: usize, dout: usize| -> Vec<f64> {
            (0..dout)
                .map(|j| bias[j] + (0..din).map(|k| x[k] * w[k * dout + j]).sum::<f64>())
                .collect()
        };
        let (mut tot, mut all_logits) = (0.0, vec![]);
        for r in 0..n {
            let mut a1 = p[1].clone();
            for q in b.in_ptr[r]..b.in_ptr[r + 1] {
                let i = b.in_idx[q] as usize;
                for j in 0..h {
                    a1[j] += b.in_val[q] as f64 * p[0][i * h + j];
                }
            }
            let h1: Vec<f64> = a1.iter().map(|v| v.tanh()).collect();
            let o = lin(&h1, &p[2], &p[3], h, 2 * l);
            let z: Vec<f64> = (0..l)
                .map(|j| o[j] + eps[r * l + j] * (0.5 * o[l + j]).exp())
                .collect();
            let h3: Vec<f64> = lin(&z, &p[4], &p[5], l, h)
                .iter()
                .map(|v| v.tanh())
                .collect();
            let lg = lin(&h3, &p[6], &p[7], h, ni);
            let mx = lg.iter().cloned().fold(f64::MIN, f64::max);
            let lse = mx + lg.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            let tg = &b.tg_idx[b.tg_ptr[r]..b.tg_ptr[r + 1]];
            let nll = tg.len() as f64 * lse - tg.iter().map(|&i| lg[i as usize]).sum::<f64>();
            let kl: f64 = (0..l)
                .map(|j| -0.5 * (1.0 + o[l + j] - o[j] * o[j] - o[l + j].exp()))
                .sum();
            tot += nll + beta * kl;
            all_logits.extend(lg);
        }
        (tot / n as f64, all_logits)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

        /// Every weight and bias of the four layers against FD of the f64 reference (fixed
        /// dropout draw and ε), with the sparse first layer and repeated items across users.
        #[test]
        fn multivae_backward_matches_finite_differences(seed in 0u64..10_000, n in 1usize..4, beta in 0f32..1.0) {
            let (ni, h, l) = (7usize, 4usize, 3usize);
            let mut r = Rng::new(seed);
            let mut m = MultVae::new(ni, h, l, seed);
            for layer in m.layers_mut() { r.fill_normal(&mut layer.b, 0.3); r.fill_normal(&mut layer.w, 0.5); }
            let mut b = VaeBatch { in_ptr: vec![0], tg_ptr: vec![0], ..Default::default() };
            for _ in 0..n {
                for i in 0..ni as u32 {
                    if r.uniform_f32() < 0.5 { b.tg_idx.push(i); if r.uniform_f32() < 0.7 { b.in_idx.push(i); b.in_val.push(r.uniform_f32() + 0.1); } }
                }
                b.tg_idx.push(ni as u32 - 1); // never empty (a repeated target counts twice)
                b.in_ptr.push(b.in_idx.len()); b.tg_ptr.push(b.tg_idx.len());
            }
            let mut eps = vec![0f32; n * l]; r.fill_normal(&mut eps, 1.0);
            let mut g = m.zero_grads();
            let lo = m.loss_and_grads(&b, &eps, beta, &mut g);
            let mut p: Vec<Vec<f64>> = vec![];
            for layer in m.layers_mut() { p.push(to64(&layer.w)); p.push(to64(&layer.b)); }
            let e64 = to64(&eps);
            let (want, _) = reference(&p, (ni, h, l), &b, &e64, beta as f64);
            let got = lo.nll + beta as f64 * lo.kl;
            prop_assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "loss {} vs {}", got, want);
            for t in 0..8 {
                let an: &[f32] = if t % 2 == 0 { &g.layers[t / 2].w } else { &g.layers[t / 2].b };
                for k in 0..p[t].len() {
                    let (mut a, mut c) = (p.clone(), p.clone());
                    a[t][k] += H; c[t][k] -= H;
                    let fd = (reference(&a, (ni, h, l), &b, &e64, beta as f64).0 - reference(&c, (ni, h, l), &b, &e64, beta as f64).0) / (2.0 * H);
                    assert_grad(an[k], fd, &format!("multivae tensor {t} entry {k}"))?;
                }
            }
        }
    }

    /// Ranking scores `[h3, 1] · [W4ᵀ | b4]` equal the decoder's logits at z = μ.
    #[test]
    fn queries_times_item_rows_are_the_logits() {
        let (ni, h, l) = (9usize, 5usize, 2usize);
        let m = MultVae::new(ni, h, l, 3);
        let rows: Vec<Vec<u32>> = vec![vec![0, 3, 8], vec![], vec![1, 2]];
        let mut batch = VaeBatch {
            in_ptr: vec![0],
            tg_ptr: vec![0],
            ..Default::default()
        };
        for row in &rows {
            for &i in row {
                batch.in_idx.push(i);
                batch.in_val.push(1.0 / (row.len() as f32).sqrt());
                batch.tg_idx.push(i);
            }
            batch.in_ptr.push(batch.in_idx.len());
            batch.tg_ptr.push(batch.tg_idx.len());
        }
        let mut mm = m.clone();
        let mut p: Vec<Vec<f64>> = vec![];
        for layer in mm.layers_mut() {
            p.push(to64(&layer.w));
            p.push(to64(&layer.b));
        }
        let (_, logits) = reference(&p, (ni, h, l), &batch, &vec![0.0; rows.len() * l], 0.0);
        let pairs: Vec<(u32, u32)> = rows
            .iter()
            .enumerate()
            .flat_map(|(u, r)| r.iter().map(move |&i| (u as u32, i)))
            .collect();
        let (csr, _) =
            ddrm::data::Csr::from_pairs(rows.len(), ni, &pairs, ddrm::data::DuplicatePolicy::Error)
                .unwrap();
        let q = m.queries(&csr.view(), &[0, 1, 2]);
        let items = m.item_matrix();
        for u in 0..rows.len() {
            for i in 0..ni {
                let s: f64 = (0..=h)
                    .map(|k| q[u * (h + 1) + k] as f64 * items[i * (h + 1) + k] as f64)
                    .sum();
                assert!(
                    (s - logits[u * ni + i]).abs() < 1e-4,
                    "user {u} item {i}: {s} vs {}",
                    logits[u * ni + i]
                );
            }
        }
    }
}

mod diffrec {
    use super::*;
    use ddrm::denoising::diffrec::{DiffRec, StepSampler};
    use ddrm::nn::step_embedding::timestep_encoding;

    /// f64 reference of the weighted x_0 loss; params = [step w, step b, (layer w, b)...].
    fn reference(
        p: &[Vec<f64>],
        dims: &[usize],
        e: usize,
        x_t: &[f64],
        x0: &[f64],
        steps: &[usize],
        w: &[f64],
    ) -> f64 {
        let n = steps.len();
        let ni = *dims.last().unwrap();
        let mut tot = 0.0;
        for r in 0..n {
            let mut enc = vec![0f32; e];
            timestep_encoding(&[steps[r] as f32], e, &mut enc);
            let emb: Vec<f64> = (0..e)
                .map(|j| p[1][j] + (0..e).map(|k| enc[k] as f64 * p[0][k * e + j]).sum::<f64>())
                .collect();
            let mut h: Vec<f64> = x_t[r * ni..(r + 1) * ni]
                .iter()
                .copied()
                .chain(emb)
                .collect();
            let nl = dims.len() - 1;
            for l in 0..nl {
                let (din, dout) = (dims[l], dims[l + 1]);
                let (lw, lb) = (&p[2 + 2 * l], &p[3 + 2 * l]);
                h = (0..dout)
                    .map(|j| {
                        let s = lb[j] + (0..din).map(|k| h[k] * lw[k * dout + j]).sum::<f64>();
                        if l + 1 < nl {
                            s.tanh()
                        } else {
                            s
                        }
                    })
                    .collect();
            }
            let mse = (0..ni)
                .map(|j| (h[j] - x0[r * ni + j]).powi(2))
                .sum::<f64>()
                / ni as f64;
            tot += w[r] * mse;
        }
        tot / n as f64
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

        /// Step layer and every MLP layer against FD of the f64 reference.
        #[test]
        fn diffrec_backward_matches_finite_differences(seed in 0u64..10_000, n in 1usize..4) {
            let (ni, e) = (6usize, 4usize);
            let hidden = [5usize, 3];
            let mut r = Rng::new(seed);
            let mut m = DiffRec::new(ni, e, &hidden, seed);
            for p in m.params_mut() { r.fill_normal(p, 0.4); }
            let mut x_t = vec![0f32; n * ni]; r.fill_normal(&mut x_t, 1.0);
            let x0: Vec<f32> = (0..n * ni).map(|_| if r.uniform_f32() < 0.4 { 1.0 } else { 0.0 }).collect();
            let steps: Vec<usize> = (0..n).map(|_| r.index(5)).collect();
            let w: Vec<f32> = (0..n).map(|_| r.uniform_f32() * 3.0).collect();
            let mut g = m.zero_grads();
            let (loss, _) = m.loss_and_grads(&x_t, &x0, &steps, &w, &mut g);
            let mut p: Vec<Vec<f64>> = m.params_mut().into_iter().map(|v| to64(v)).collect();
            let dims = [ni + e, 5, 3, ni];
            let (xt64, x064, w64) = (to64(&x_t), to64(&x0), to64(&w));
            let want = reference(&p, &dims, e, &xt64, &x064, &steps, &w64);
            prop_assert!((loss - want).abs() < 1e-4 * (1.0 + want.abs()), "loss {} vs {}", loss, want);
            let an: Vec<Vec<f32>> = std::iter::once(g.step.w.clone()).chain(std::iter::once(g.step.b.clone()))
                .chain(g.mlp.iter().flat_map(|l| [l.w.clone(), l.b.clone()])).collect();
            for t in 0..p.len() {
                for k in 0..p[t].len() {
                    let orig = p[t][k];
                    p[t][k] = orig + H; let fp = reference(&p, &dims, e, &xt64, &x064, &steps, &w64);
                    p[t][k] = orig - H; let fm = reference(&p, &dims, e, &xt64, &x064, &steps, &w64);
                    p[t][k] = orig;
                    assert_grad(an[t][k], (fp - fm) / (2.0 * H), &format!("diffrec tensor {t} entry {k}"))?;
                }
            }
        }
    }

    /// The step sampler is uniform until every step has 10 losses, then favours the steps
    /// with larger losses, returning p_t · T for the importance weight.
    #[test]
    fn step_sampler_moves_to_loss_aware_sampling() {
        let mut s = StepSampler::new(3);
        let mut rng = Rng::new(1);
        let (_, pt) = s.sample(50, true, &mut rng);
        assert!(pt.iter().all(|&p| p == 1.0));
        for k in 0..12 {
            s.record(0, 1.0);
            s.record(1, 1.0);
            if k < 9 {
                s.record(2, 9.0);
            }
        }
        let (_, pt) = s.sample(10, true, &mut rng);
        assert!(pt.iter().all(|&p| p == 1.0), "step 2 has only 9 losses");
        s.record(2, 9.0);
        let (ts, pt) = s.sample(3000, true, &mut rng);
        let share2 = ts.iter().filter(|&&t| t == 2).count() as f64 / 3000.0;
        // p ∝ (1, 1, 9) mixed with 0.1% uniform: p_2 ≈ 0.818
        assert!((share2 - 0.818).abs() < 0.03, "share of step 2: {share2}");
        for (t, p) in ts.iter().zip(&pt) {
            let want = if *t == 2 { 9.0 / 11.0 } else { 1.0 / 11.0 } * 0.999 + 0.001 / 3.0;
            assert!((p - want * 3.0).abs() < 1e-9);
        }
    }
}

mod cdae {
    use super::*;
    use ddrm::denoising::cdae::Cdae;
    use ddrm::denoising::multivae::VaeBatch;

    /// f64 reference loss; params = [enc w, enc b, user table, dec w, dec b].
    fn reference(p: &[Vec<f64>], ni: usize, h: usize, users: &[u32], b: &VaeBatch) -> f64 {
        let mut tot = 0.0;
        for (r, &u) in users.iter().enumerate() {
            let mut a: Vec<f64> = (0..h).map(|j| p[1][j] + p[2][u as usize * h + j]).collect();
            for q in b.in_ptr[r]..b.in_ptr[r + 1] {
                let i = b.in_idx[q] as usize;
                for j in 0..h {
                    a[j] += b.in_val[q] as f64 * p[0][i * h + j];
                }
            }
            let hh: Vec<f64> = a.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            let tg = &b.tg_idx[b.tg_ptr[r]..b.tg_ptr[r + 1]];
            for i in 0..ni {
                let z = p[4][i] + (0..h).map(|k| hh[k] * p[3][k * ni + i]).sum::<f64>();
                let y = if tg.contains(&(i as u32)) { 1.0 } else { 0.0 };
                tot += z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z;
            }
        }
        tot / users.len() as f64
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

        /// Encoder, decoder and the batch users' input-node rows against FD of the f64 loss.
        #[test]
        fn cdae_backward_matches_finite_differences(seed in 0u64..10_000) {
            let (nu, ni, h) = (5usize, 6usize, 3usize);
            let mut r = Rng::new(seed);
            let mut m = Cdae::new(nu, ni, h, seed);
            r.fill_normal(&mut m.enc.w, 0.6); r.fill_normal(&mut m.enc.b, 0.3);
            r.fill_normal(&mut m.dec.w, 0.6); r.fill_normal(&mut m.dec.b, 0.3);
            r.fill_normal(&mut m.user, 0.5);
            let users = [3u32, 0, 4];
            let mut b = VaeBatch { in_ptr: vec![0], tg_ptr: vec![0], ..Default::default() };
            for _ in &users {
                for i in 0..ni as u32 {
                    if r.uniform_f32() < 0.5 { b.tg_idx.push(i); if r.uniform_f32() < 0.6 { b.in_idx.push(i); b.in_val.push(2.0); } }
                }
                b.in_ptr.push(b.in_idx.len()); b.tg_ptr.push(b.tg_idx.len());
            }
            let mut g = m.zero_grads(users.len());
            let loss = m.loss_and_grads(&users, &b, &mut g);
            let mut p = vec![to64(&m.enc.w), to64(&m.enc.b), to64(&m.user), to64(&m.dec.w), to64(&m.dec.b)];
            let want = reference(&p, ni, h, &users, &b);
            prop_assert!((loss - want).abs() < 1e-4 * (1.0 + want.abs()), "loss {} vs {}", loss, want);
            // analytic gradient of the user table, dense (zero outside the batch's rows)
            let mut guser = vec![0f32; nu * h];
            for (k, &u) in users.iter().enumerate() { guser[u as usize * h..(u as usize + 1) * h].copy_from_slice(&g.user_rows[k * h..(k + 1) * h]); }
            let an = [g.enc.w.clone(), g.enc.b.clone(), guser, g.dec.w.clone(), g.dec.b.clone()];
            for t in 0..p.len() {
                for k in 0..p[t].len() {
                    let orig = p[t][k];
                    p[t][k] = orig + H; let fp = reference(&p, ni, h, &users, &b);
                    p[t][k] = orig - H; let fm = reference(&p, ni, h, &users, &b);
                    p[t][k] = orig;
                    assert_grad(an[t][k], (fp - fm) / (2.0 * H), &format!("cdae tensor {t} entry {k}"))?;
                }
            }
        }
    }
}

/// DeCA: each sample's gradient w.r.t. the three logits, and the batch's gradients w.r.t. the
/// auxiliary tables, against central finite differences of f64 references.
mod deca {
    use super::*;
    use ddrm::denoising::deca::{sample_loss, Deca, DecaWeights, Phase};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        #[test]
        fn sample_gradient_matches_fd(dp: bool, positive: bool, z in -9f64..9.0, ah in -9f64..9.0,
            ag in -9f64..9.0, alpha in 0f64..=1.0, c1 in 0f64..1000.0, c2 in 0f64..1000.0) {
            let phase = if dp { Phase::Dp } else { Phase::Dn };
            let w = DecaWeights { alpha, c1, c2 };
            let r = sample_loss(phase, positive, z, ah, ag, w);
            let l = |z: f64, ah: f64, ag: f64| sample_loss(phase, positive, z, ah, ag, w).loss;
            let fd = |f: &dyn Fn(f64) -> f64, x: f64| (f(x + H) - f(x - H)) / (2.0 * H);
            let tol = |fd: f64| 1e-5 + 1e-4 * fd.abs();
            let (fz, fh, fg) = (fd(&|x| l(x, ah, ag), z), fd(&|x| l(z, x, ag), ah), fd(&|x| l(z, ah, x), ag));
            prop_assert!((r.dz - fz).abs() <= tol(fz), "dz {} vs {}", r.dz, fz);
            prop_assert!((r.dh - fh).abs() <= tol(fh), "dh {} vs {}", r.dh, fh);
            prop_assert!((r.dg - fg).abs() <= tol(fg), "dg {} vs {}", r.dg, fg);
        }

        #[test]
        fn batch_gradients_match_fd_of_the_table_loss(seed in 0u64..1000, b in 1usize..12, step in 0u64..4,
            alpha in 0f64..=1.0) {
            let (nu, ni, dim) = (5usize, 7usize, 3usize);
            let w = DecaWeights { alpha, c1: 3.0, c2: 2.0 };
            let mut deca = Deca::new(w, dim, 1e-3, nu, ni, seed);
            let mut r = Rng::new(seed ^ 0x5eed);
            let users: Vec<u32> = (0..b).map(|_| r.index(nu) as u32).collect();
            let pos_items: Vec<u32> = (0..b).map(|_| r.index(ni) as u32).collect();
            let neg_items: Vec<u32> = (0..b).map(|_| r.index(ni) as u32).collect();
            let pos: Vec<f32> = (0..b).map(|_| r.uniform_f32() * 8.0 - 4.0).collect();
            let neg: Vec<f32> = (0..b).map(|_| r.uniform_f32() * 8.0 - 4.0).collect();
            let (mut dpos, mut dneg) = (vec![0f32; b], vec![0f32; b]);
            let g = deca.batch_grads(step, &users, &pos_items, &neg_items, &pos, &neg, &mut dpos, &mut dneg);
            prop_assert_eq!(g.h, if step % 2 == 0 { 0 } else { 1 });
            let phase = Phase::of_step(step);
            // f64 reference of the batch loss as a function of the h and g tables
            let loss = |th: &[f64], tg: &[f64], p: &[f64], q: &[f64]| -> f64 {
                let dot = |t: &[f64], u: usize, i: usize| (0..dim).map(|c| t[u * dim + c] * t[(nu + i) * dim + c]).sum::<f64>();
                (0..b).map(|k| {
                    let (u, i, j) = (users[k] as usize, pos_items[k] as usize, neg_items[k] as usize);
                    sample_loss(phase, true, p[k], dot(th, u, i), dot(tg, u, i), w).loss
                        + sample_loss(phase, false, q[k], dot(th, u, j), dot(tg, u, j), w).loss
                }).sum::<f64>() / b as f64
            };
            let th = to64(deca.table(g.h));
            let tg = to64(deca.table(2));
            let (p64, q64) = (to64(&pos), to64(&neg));
            prop_assert!((g.loss - loss(&th, &tg, &p64, &q64)).abs() < 1e-6 * (1.0 + g.loss.abs()));
            for k in 0..b {
                let (mut a, mut c) = (p64.clone(), p64.clone()); a[k] += H; c[k] -= H;
                assert_grad(dpos[k], (loss(&th, &tg, &a, &q64) - loss(&th, &tg, &c, &q64)) / (2.0 * H), "deca dpos")?;
                let (mut a, mut c) = (q64.clone(), q64.clone()); a[k] += H; c[k] -= H;
                assert_grad(dneg[k], (loss(&th, &tg, &p64, &a) - loss(&th, &tg, &p64, &c)) / (2.0 * H), "deca dneg")?;
            }
            for node in 0..nu + ni {
                let slot = g.rows.iter().position(|&x| x as usize == node);
                for c in 0..dim {
                    let e = node * dim + c;
                    let (mut a, mut m) = (th.clone(), th.clone()); a[e] += H; m[e] -= H;
                    let fd_h = (loss(&a, &tg, &p64, &q64) - loss(&m, &tg, &p64, &q64)) / (2.0 * H);
                    let (mut a, mut m) = (tg.clone(), tg.clone()); a[e] += H; m[e] -= H;
                    let fd_g = (loss(&th, &a, &p64, &q64) - loss(&th, &m, &p64, &q64)) / (2.0 * H);
                    match slot {
                        Some(s) => {
                            assert_grad(g.grad_h[s * dim + c], fd_h, "deca h table")?;
                            assert_grad(g.grad_g[s * dim + c], fd_g, "deca g table")?;
                        }
                        None => prop_assert!(fd_h.abs() < 1e-9 && fd_g.abs() < 1e-9, "a row outside the batch has a gradient"),
                    }
                }
            }
        }
    }

    /// A DP step moves h1 and g but not h2; a DN step moves h2 and g but not h1.
    #[test]
    fn each_phase_steps_its_own_models() {
        let w = DecaWeights {
            alpha: 0.5,
            c1: 10.0,
            c2: 10.0,
        };
        let mut deca = Deca::new(w, 4, 1e-2, 3, 4, 7);
        let (users, pi, ni) = ([0u32, 1, 2], [0u32, 1, 2], [3u32, 3, 0]);
        let (pos, neg) = ([0.5f32, -0.2, 1.0], [0.1f32, 0.3, -1.0]);
        let (mut dp, mut dn) = ([0f32; 3], [0f32; 3]);
        for step in 0..2u64 {
            let before: Vec<Vec<f32>> = (0..3).map(|t| deca.table(t).to_vec()).collect();
            let l = deca.loss_and_step(step, &users, &pi, &ni, &pos, &neg, &mut dp, &mut dn);
            assert!(l.is_finite());
            let moved: Vec<bool> = (0..3)
                .map(|t| deca.table(t) != before[t].as_slice())
                .collect();
            let h = step as usize; // 0: DP (h1), 1: DN (h2)
            assert!(
                moved[h] && !moved[1 - h] && moved[2],
                "step {step}: moved {moved:?}"
            );
        }
    }
}

#[allow(clippy::needless_range_loop)]
mod adagcl {
    use super::*;
    use ddrm::denoising::adagcl::contrast::contrast_loss;
    use ddrm::denoising::adagcl::edge_mask::{EdgeMasker, GateConfig};
    use ddrm::denoising::adagcl::graph::{propagation_backward, LoopGraph, Propagation};
    use ddrm::denoising::adagcl::vgae::Vgae;
    use ddrm::kernels::cpu::spmm::SparseMatrix;

    /// A random bipartite graph with self-loops: `nu` users, `ni` items.
    fn tiny_graph(nu: usize, ni: usize, seed: u64) -> LoopGraph {
        let mut r = Rng::new(seed);
        let mut adj = vec![vec![false; ni]; nu];
        for (u, row) in adj.iter_mut().enumerate() {
            row[(u + seed as usize) % ni] = true; // every user has an item
            for v in row.iter_mut() {
                if r.uniform() < 0.4 {
                    *v = true;
                }
            }
        }
        let mut indptr = vec![0u32];
        let mut indices = Vec::new();
        for (u, row) in adj.iter().enumerate() {
            indices.push(u as u32);
            for (i, &on) in row.iter().enumerate() {
                if on {
                    indices.push((nu + i) as u32);
                }
            }
            indptr.push(indices.len() as u32);
        }
        for i in 0..ni {
            for (u, row) in adj.iter().enumerate() {
                if row[i] {
                    indices.push(u as u32);
                }
            }
            indices.push((nu + i) as u32);
            indptr.push(indices.len() as u32);
        }
        LoopGraph::from_structure(nu, nu + ni, indptr, indices)
    }

    fn sp64(x: f64) -> f64 {
        x.max(0.0) + (-x.abs()).exp().ln_1p()
    }
    fn sig64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    fn relu64(x: f64) -> f64 {
        x.max(0.0)
    }

    /// y = act(x W + b) for one row.
    fn lin64(x: &[f64], w: &[f64], b: &[f64], relu: bool) -> Vec<f64> {
        let dout = b.len();
        (0..dout)
            .map(|t| {
                let v = (0..x.len()).map(|k| x[k] * w[k * dout + t]).sum::<f64>() + b[t];
                if relu {
                    relu64(v)
                } else {
                    v
                }
            })
            .collect()
    }

    fn spmm64(g: &LoopGraph, vals: &[f64], x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let d = x[0].len();
        (0..g.n_nodes())
            .map(|r| {
                let mut out = vec![0f64; d];
                for e in g.adj.indptr[r] as usize..g.adj.indptr[r + 1] as usize {
                    let c = g.adj.indices[e] as usize;
                    for t in 0..d {
                        out[t] += vals[e] * x[c][t];
                    }
                }
                out
            })
            .collect()
    }

    fn bpr64(out: &[Vec<f64>], nu: usize, users: &[u32], pos: &[u32], neg: &[u32], bn: f64) -> f64 {
        (0..users.len())
            .map(|k| {
                let (u, i, j) = (
                    users[k] as usize,
                    nu + pos[k] as usize,
                    nu + neg[k] as usize,
                );
                let diff: f64 = (0..out[0].len())
                    .map(|t| out[u][t] * (out[i][t] - out[j][t]))
                    .sum();
                sp64(-diff) / bn
            })
            .sum()
    }

    fn rows64(x: &[f32], d: usize) -> Vec<Vec<f64>> {
        x.chunks(d).map(to64).collect()
    }

    /// FD of `f` at every element of every tensor, against the analytic gradients.
    fn check_all(
        params: &[Vec<f64>],
        grads: &[&Vec<f32>],
        f: &dyn Fn(&[Vec<f64>]) -> f64,
        what: &str,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(params.len(), grads.len());
        for (k, p) in params.iter().enumerate() {
            for e in 0..p.len() {
                let mut a = params.to_vec();
                let mut m = params.to_vec();
                a[k][e] += H;
                m[k][e] -= H;
                let fd = (f(&a) - f(&m)) / (2.0 * H);
                assert_grad(grads[k][e], fd, &format!("{what}: tensor {k} element {e}"))?;
            }
        }
        Ok(())
    }

    fn batch(nu: usize, ni: usize, b: usize, seed: u64) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let mut r = Rng::new(seed ^ 0xBA7C);
        let users = (0..b).map(|_| r.index(nu) as u32).collect();
        let pos = (0..b).map(|_| r.index(ni) as u32).collect();
        let neg = (0..b).map(|_| r.index(ni) as u32).collect();
        (users, pos, neg)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

        #[test]
        fn contrast_gradients_match_fd(n in 2usize..7, d in 1usize..5, seed in 0u64..1000,
            tau in 0.2f32..1.0, scale in 0.1f32..2.0) {
            let mut r = Rng::new(seed);
            let a: Vec<f32> = (0..n * d).map(|_| r.uniform_f32() * 2.0 - 1.0).collect();
            let b: Vec<f32> = (0..n * d).map(|_| r.uniform_f32() * 2.0 - 1.0).collect();
            let (mut da, mut db) = (vec![0f32; n * d], vec![0f32; n * d]);
            let got = contrast_loss(&a, &b, d, tau, scale, &mut da, Some(&mut db));
            let reference = |p: &[Vec<f64>]| -> f64 {
                let norm = |x: &[f64]| -> Vec<Vec<f64>> {
                    x.chunks(d).map(|row| {
                        let nr = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                        row.iter().map(|v| v / nr).collect()
                    }).collect()
                };
                let (ah, bh) = (norm(&p[0]), norm(&p[1]));
                let s = |i: usize, j: usize| (0..d).map(|t| ah[i][t] * bh[j][t]).sum::<f64>() / tau as f64;
                (0..n).map(|i| {
                    let z: f64 = (0..n).filter(|&j| j != i).map(|j| s(i, j).exp()).sum();
                    z.ln() - s(i, i)
                }).sum::<f64>() / n as f64 * scale as f64
            };
            let params = vec![to64(&a), to64(&b)];
            let want = reference(&params) / scale as f64;
            prop_assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "loss {} vs {}", got, want);
            check_all(&params, &[&da, &db], &reference, "contrast")?;
            // without db, da is the same
            let mut da2 = vec![0f32; n * d];
            contrast_loss(&a, &b, d, tau, scale, &mut da2, None);
            prop_assert_eq!(da2, da);
        }

        #[test]
        fn propagation_backward_matches_fd(seed in 0u64..1000, layers in 1usize..4, d in 1usize..4) {
            let g = tiny_graph(3, 4, seed);
            let n = g.n_nodes();
            let mut r = Rng::new(seed ^ 0x9909);
            // asymmetric values: the backward needs the transposes
            let mats: Vec<SparseMatrix> = (0..layers)
                .map(|_| g.with_values((0..g.nnz()).map(|_| r.uniform_f32()).collect()))
                .collect();
            let mut tr: Vec<SparseMatrix> = Vec::new();
            for m in &mats {
                let mut t = g.adj.clone();
                g.transpose_values(m, &mut t);
                tr.push(t);
            }
            let e0: Vec<f32> = (0..n * d).map(|_| r.uniform_f32() - 0.5).collect();
            let c: Vec<f32> = (0..n * d).map(|_| r.uniform_f32() - 0.5).collect();
            let refs: Vec<&SparseMatrix> = mats.iter().collect();
            let out = Propagation::run(&e0, d, &refs).sum();
            prop_assert_eq!(out.len(), n * d);
            let trefs: Vec<&SparseMatrix> = tr.iter().collect();
            let grad = propagation_backward(&c, d, &trefs);
            let f = |p: &[Vec<f64>]| -> f64 {
                let mut x: Vec<Vec<f64>> = p[0].chunks(d).map(|r| r.to_vec()).collect();
                let mut sum = x.clone();
                for m in &mats {
                    x = spmm64(&g, &to64(&m.values), &x);
                    for (s, v) in sum.iter_mut().zip(&x) {
                        for t in 0..d { s[t] += v[t]; }
                    }
                }
                sum.iter().flatten().zip(&c).map(|(a, &b)| a * b as f64).sum()
            };
            check_all(&[to64(&e0)], &[&grad], &f, "propagation")?;
        }

        #[test]
        fn edge_masker_gradients_match_fd(seed in 0u64..1000, beta in 0.3f32..2.0, b in 1usize..4) {
            let (nu, ni, d, nl) = (2usize, 3usize, 3usize, 2usize);
            let g = tiny_graph(nu, ni, seed);
            let n = g.n_nodes();
            let mut r = Rng::new(seed ^ 0xED6E);
            let gate = GateConfig { gamma: -0.45, zeta: 1.05, lambda0: 0.05 };
            let masker = EdgeMasker::new(d, nl, gate, &mut r);
            let x0: Vec<f32> = (0..n * d).map(|_| r.uniform_f32() * 2.0 - 1.0).collect();
            let noise: Vec<Vec<f32>> = (0..nl)
                .map(|_| (0..g.nnz()).map(|_| 0.05 + 0.9 * r.uniform_f32()).collect())
                .collect();
            let (users, pos, neg) = batch(nu, ni, b, seed);
            let (bn, reg) = (4usize, 0.01f32);
            let mut grads = masker.zero_grads();
            let lo = masker.loss_and_grads(&g, &x0, &noise, beta, &users, &pos, &neg, bn, reg, &mut grads);
            let (gm, zt, l0w) = (gate.gamma as f64, gate.zeta as f64, gate.lambda0 as f64);
            let beta64 = beta as f64;
            let f = |p: &[Vec<f64>]| -> f64 {
                let mut x = rows64(&x0, d);
                let mut sum = x.clone();
                let mut l0 = 0f64;
                for l in 0..nl {
                    let (nbw, nbb) = (&p[2 * l], &p[2 * l + 1]);
                    let (sw, sb) = (&p[2 * nl + 2 * l], &p[2 * nl + 2 * l + 1]);
                    let (aw, ab) = (&p[4 * nl + 2 * l], &p[4 * nl + 2 * l + 1]);
                    let pv: Vec<f64> = x.iter().map(|row| {
                        lin64(row, nbw, nbb, true).iter().zip(&aw[..d]).map(|(h, a)| h * a).sum()
                    }).collect();
                    let qv: Vec<f64> = x.iter().map(|row| {
                        lin64(row, sw, sb, true).iter().zip(&aw[d..]).map(|(h, a)| h * a).sum()
                    }).collect();
                    let mut m = vec![0f64; g.nnz()];
                    for e in 0..g.nnz() {
                        let (rr, cc) = (g.rows[e] as usize, g.adj.indices[e] as usize);
                        let w = pv[rr] + qv[cc] + ab[0];
                        let u = noise[l][e] as f64;
                        let gt = sig64(((u.ln() - (1.0 - u).ln()) + w) / beta64);
                        m[e] = (gt * (zt - gm) + gm).clamp(0.0, 1.0);
                        l0 += sig64(w - beta64 * (-gm / zt).ln()) / g.nnz() as f64;
                    }
                    let dis: Vec<f64> = (0..n).map(|rr| {
                        let s: f64 = (g.adj.indptr[rr] as usize..g.adj.indptr[rr + 1] as usize).map(|e| m[e]).sum::<f64>() + 1e-6;
                        (1.0 / s.sqrt()).min(10.0)
                    }).collect();
                    let vals: Vec<f64> = (0..g.nnz()).map(|e| {
                        m[e] * dis[g.rows[e] as usize] * dis[g.adj.indices[e] as usize]
                    }).collect();
                    x = spmm64(&g, &vals, &x);
                    for (s, v) in sum.iter_mut().zip(&x) {
                        for t in 0..d { s[t] += v[t]; }
                    }
                }
                let sq: f64 = p.iter().flatten().map(|v| v * v).sum();
                bpr64(&sum, nu, &users, &pos, &neg, bn as f64) + reg as f64 * sq + l0w * l0
            };
            let mut mm = masker.clone();
            let params: Vec<Vec<f64>> = mm.tensors_mut().iter().map(|t| to64(t)).collect();
            let want = f(&params);
            prop_assert!((lo.total() - want).abs() < 1e-5 * (1.0 + want.abs()), "loss {} vs {}", lo.total(), want);
            check_all(&params, &EdgeMasker::grad_tensors(&grads), &f, "edge masker")?;
        }

        #[test]
        fn vgae_gradients_match_fd(seed in 0u64..1000, b in 1usize..4, layers in 1usize..3) {
            let (nu, ni, d) = (2usize, 3usize, 3usize);
            let g = tiny_graph(nu, ni, seed);
            let n = g.n_nodes();
            let mut r = Rng::new(seed ^ 0x76AE);
            let vgae = Vgae::new(nu, n, d, layers, &mut r);
            let eps: Vec<f32> = (0..n * d).map(|_| r.uniform_f32() * 2.0 - 1.0).collect();
            let (users, pos, neg) = batch(nu, ni, b, seed);
            let (bn, reg) = (4usize, 0.01f32);
            let mut grads = vgae.zero_grads();
            let lo = vgae.loss_and_grads(&g, &eps, &users, &pos, &neg, bn, reg, &mut grads);
            let adj = to64(&g.adj.values);
            let f = |p: &[Vec<f64>]| -> f64 {
                let mut x = p[0].chunks(d).map(|r| r.to_vec()).collect::<Vec<_>>();
                let mut sum = x.clone();
                for _ in 0..layers {
                    x = spmm64(&g, &adj, &x);
                    for (s, v) in sum.iter_mut().zip(&x) {
                        for t in 0..d { s[t] += v[t]; }
                    }
                }
                let w = |k: usize| (&p[1 + 2 * k], &p[2 + 2 * k]);
                let mut z = Vec::new();
                let mut kl = 0f64;
                for (node, row) in sum.iter().enumerate() {
                    let (w0, b0) = w(0);
                    let (w1, b1) = w(1);
                    let (w2, b2) = w(2);
                    let (w3, b3) = w(3);
                    let mean = lin64(&lin64(row, w0, b0, true), w1, b1, false);
                    let sd: Vec<f64> = lin64(&lin64(row, w2, b2, true), w3, b3, false).iter().map(|&v| sp64(v)).collect();
                    let zr: Vec<f64> = (0..d).map(|t| mean[t] + eps[node * d + t] as f64 * sd[t]).collect();
                    kl += (0..d).map(|t| -0.5 * (1.0 + 2.0 * sd[t].ln() - mean[t] * mean[t] - sd[t] * sd[t])).sum::<f64>();
                    z.push(zr);
                }
                let kl = 0.1 * kl / n as f64;
                let dec = |a: usize, c: usize| -> f64 {
                    let inp: Vec<f64> = (0..d).map(|t| relu64(z[a][t] * z[c][t])).collect();
                    let (w4, b4) = w(4);
                    let (w5, b5) = w(5);
                    lin64(&lin64(&inp, w4, b4, true), w5, b5, false)[0]
                };
                let mut rec = 0f64;
                for k in 0..b {
                    let (u, i, j) = (users[k] as usize, nu + pos[k] as usize, nu + neg[k] as usize);
                    let (lp, ln) = (dec(u, i), dec(u, j));
                    rec += sp64(lp) - lp + sp64(ln);
                }
                rec /= b as f64;
                let mut sq: f64 = p[0].iter().map(|v| v * v).sum();
                for t in p.iter().take(9).skip(1) {
                    sq += t.iter().map(|v| v * v).sum::<f64>();
                }
                rec + kl + bpr64(&z, nu, &users, &pos, &neg, bn as f64) + reg as f64 * sq
            };
            let mut vv = vgae.clone();
            let params: Vec<Vec<f64>> = vv.tensors_mut().iter().map(|t| to64(t)).collect();
            let want = f(&params);
            prop_assert!((lo.total() - want).abs() < 1e-5 * (1.0 + want.abs()), "loss {} vs {}", lo.total(), want);
            check_all(&params, &Vgae::grad_tensors(&grads), &f, "vgae")?;
        }
    }

    /// View 1 keeps mirrored entries together and rescales what it keeps by nnz / kept.
    #[test]
    fn vgae_view_is_symmetric_and_rescaled() {
        for seed in 0..20 {
            let g = tiny_graph(3, 4, seed);
            let mut r = Rng::new(seed);
            let vgae = Vgae::new(3, g.n_nodes(), 4, 2, &mut r);
            let mut eps = vec![0f32; g.n_nodes() * 4];
            r.fill_normal(&mut eps, 1.0);
            let (v, kept) = vgae.view_values(&g, &eps);
            assert_eq!(v.iter().filter(|&&x| x != 0.0).count(), kept);
            for e in 0..g.nnz() {
                assert_eq!(
                    v[e], v[g.mirror[e] as usize],
                    "entry {e} and its mirror differ"
                );
                if v[e] != 0.0 {
                    let want = g.adj.values[e] * (g.nnz() as f32 / kept as f32);
                    assert!((v[e] - want).abs() <= 1e-6 * want, "{} vs {}", v[e], want);
                }
            }
        }
    }

    /// The self-looped graph: each row holds its self-loop, mirrors point back, and the
    /// values are 1/sqrt(deg_r deg_c).
    #[test]
    fn loop_graph_structure() {
        let g = tiny_graph(4, 5, 7);
        for e in 0..g.nnz() {
            let m = g.mirror[e] as usize;
            assert_eq!(g.mirror[m] as usize, e);
            assert_eq!(g.rows[m], g.adj.indices[e]);
            assert_eq!(g.adj.indices[m], g.rows[e]);
            let deg = |r: u32| (g.adj.indptr[r as usize + 1] - g.adj.indptr[r as usize]) as f64;
            let want = 1.0 / (deg(g.rows[e]) * deg(g.adj.indices[e])).sqrt();
            assert!((g.adj.values[e] as f64 - want).abs() < 1e-7);
        }
        for r in 0..g.n_nodes() {
            let row = &g.adj.indices[g.adj.indptr[r] as usize..g.adj.indptr[r + 1] as usize];
            assert!(row.contains(&(r as u32)), "row {r} lacks its self-loop");
        }
    }
}
