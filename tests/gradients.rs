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
