//! DDRM: schedule identities, denoiser and loss gradients against finite differences,
//! metric definitions on a hand-computed example.

use ddrm::diffusion::ddrm::ddrm_loss;
use ddrm::diffusion::denoiser::{Denoiser, DenoiserCache};
use ddrm::diffusion::schedule::{Schedule, ScheduleKind};
use ddrm::eval::MetricsAcc;
use ddrm::kernels::cpu::Act;
use ddrm::util::rng::Rng;
use proptest::prelude::*;

const H: f64 = 1e-6;

fn assert_grad(analytic: f32, fd: f64, what: &str) -> Result<(), TestCaseError> {
    let tol = 5e-4 + 1e-2 * fd.abs();
    prop_assert!(
        (analytic as f64 - fd).abs() <= tol,
        "{}: analytic {} vs finite difference {}",
        what,
        analytic,
        fd
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// Composing the one-step kernels q(x_t | x_{t-1}) gives the marginal q(x_t | x_0):
    /// mean factor Π √(1 − β) = √ᾱ_t and variance recursion v_t = (1 − β_t) v_{t−1} + β_t = 1 − ᾱ_t.
    /// The posterior mean at the noise-free point x_t = √ᾱ_t x_0 is √ᾱ_{t−1} x_0
    /// (c1 + c2 √ᾱ_t = √ᾱ_{t−1}) and 0 < β̃_t <= β_t.
    #[test]
    fn schedule_marginals_and_posterior_identities(steps in 1usize..80, s in 1e-5f64..0.5, lo in 1e-4f64..1e-2, span in 1.0f64..10.0, linear: bool) {
        let hi = (lo * span).min(0.99 / s);
        prop_assume!(hi >= lo);
        let kind = if linear { ScheduleKind::Linear } else { ScheduleKind::LinearVar };
        let sch = Schedule::new(kind, steps, s, lo, hi).unwrap();
        let (mut mean, mut var) = (1.0f64, 0.0f64);
        for t in 0..steps {
            let b = sch.betas[t];
            prop_assert!(b > 0.0 && b < 1.0);
            mean *= (1.0 - b).sqrt();
            var = (1.0 - b) * var + b;
            prop_assert!((mean - sch.alphas_cumprod[t].sqrt()).abs() < 1e-9);
            prop_assert!((var - (1.0 - sch.alphas_cumprod[t])).abs() < 1e-9);
            let lhs = sch.coef_x0[t] + sch.coef_xt[t] * sch.alphas_cumprod[t].sqrt();
            prop_assert!((lhs - sch.alphas_cumprod_prev[t].sqrt()).abs() < 1e-9, "t={} {} vs {}", t, lhs, sch.alphas_cumprod_prev[t].sqrt());
            prop_assert!(sch.posterior_variance[t] >= 0.0 && sch.posterior_variance[t] <= b + 1e-15);
        }
        prop_assert_eq!(sch.betas[0], 1e-5);
    }

    /// The denoiser's backward (eval mode) against an f64 reference forward: every parameter,
    /// the noisy input and the condition.
    #[test]
    fn denoiser_backward_matches_finite_differences(n in 1usize..4, seed in 0u64..10_000, act in prop::sample::select(vec![Act::Tanh, Act::Sigmoid])) {
        let (d, sd) = (3usize, 4usize);
        let mut r = Rng::new(seed);
        let dn = Denoiser::new(d, sd, &[5, 4], act, 0.0, &mut r);
        let mut xt = vec![0f32; n * d]; r.fill_normal(&mut xt, 1.0);
        let mut c = vec![0f32; n * d]; r.fill_normal(&mut c, 1.0);
        let steps: Vec<f32> = (0..n).map(|k| (k * 3 + 1) as f32).collect();
        let mut g = vec![0f32; n * d]; r.fill_normal(&mut g, 1.0);
        let mut cache = DenoiserCache::default();
        dn.forward(&xt, &steps, &c, n, None, &mut cache);
        let mut grad = dn.zero_grad();
        let (mut dx, mut dc) = (vec![0f32; n * d], vec![0f32; n * d]);
        dn.backward(n, &mut cache, &g, &mut grad, Some(&mut dx), Some(&mut dc));

        // f64 reference: flat parameter vector in params_mut order
        let mut dn2 = dn.clone();
        let params: Vec<Vec<f64>> = dn2.params_mut().into_iter().map(|p| p.iter().map(|&v| v as f64).collect()).collect();
        let mut enc = vec![0f32; n * sd];
        ddrm::nn::step_embedding::timestep_encoding(&steps, sd, &mut enc);
        let act64 = |x: f64| match act { Act::Tanh => x.tanh(), _ => 1.0 / (1.0 + (-x).exp()) };
        let f = |p: &[Vec<f64>], x: &[f64], cc: &[f64]| -> f64 {
            let mut tot = 0.0;
            for rr in 0..n {
                let mut temb = vec![0f64; sd];
                for j in 0..sd { temb[j] = p[1][j]; for q in 0..sd { temb[j] += enc[rr * sd + q] as f64 * p[0][q * sd + j]; } }
                let mut h: Vec<f64> = x[rr * d..(rr + 1) * d].to_vec();
                h.extend(temb);
                h.extend_from_slice(&cc[rr * d..(rr + 1) * d]);
                let dims = [2 * d + sd, 5, 4, d];
                for l in 0..3 {
                    let (w, b) = (&p[2 + 2 * l], &p[3 + 2 * l]);
                    let mut o = vec![0f64; dims[l + 1]];
                    for j in 0..dims[l + 1] { o[j] = b[j]; for q in 0..dims[l] { o[j] += h[q] * w[q * dims[l + 1] + j]; } if l < 2 { o[j] = act64(o[j]); } }
                    h = o;
                }
                for j in 0..d { tot += h[j] * g[rr * d + j] as f64; }
            }
            tot
        };
        let x64: Vec<f64> = xt.iter().map(|&v| v as f64).collect();
        let c64: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        let grads = Denoiser::grads(&grad);
        for t in 0..params.len() {
            for k in 0..params[t].len() {
                let (mut pp, mut pm) = (params.clone(), params.clone());
                pp[t][k] += H; pm[t][k] -= H;
                assert_grad(grads[t][k], (f(&pp, &x64, &c64) - f(&pm, &x64, &c64)) / (2.0 * H), &format!("param {t}[{k}]"))?;
            }
        }
        for k in 0..n * d {
            let (mut a, mut b) = (x64.clone(), x64.clone()); a[k] += H; b[k] -= H;
            assert_grad(dx[k], (f(&params, &a, &c64) - f(&params, &b, &c64)) / (2.0 * H), "dxt")?;
            let (mut a, mut b) = (c64.clone(), c64.clone()); a[k] += H; b[k] -= H;
            assert_grad(dc[k], (f(&params, &x64, &a) - f(&params, &x64, &b)) / (2.0 * H), "dcond")?;
        }
    }

    /// The DDRM loss (Eq. 18–22) with the reweight w held constant.
    #[test]
    fn ddrm_loss_gradient_matches_finite_differences(n in 1usize..5, seed in 0u64..10_000, lambda in 0f32..1.0, gamma in 0f32..2.0) {
        let d = 3;
        let mut r = Rng::new(seed);
        let mut v = |len: usize| { let mut x = vec![0f32; len]; r.fill_normal(&mut x, 1.0); x };
        let (hu, hi, eu, ei, ej) = (v(n * d), v(n * d), v(n * d), v(n * d), v(n * d));
        let (mut dhu, mut dhi) = (vec![0f32; n * d], vec![0f32; n * d]);
        let parts = ddrm_loss(&hu, &hi, &eu, &ei, &ej, d, lambda, gamma, &mut dhu, &mut dhi);
        let dot = |a: &[f64], b: &[f32], rr: usize| (0..d).map(|j| a[rr * d + j] * b[rr * d + j] as f64).sum::<f64>();
        // weights at the unperturbed point (constants)
        let w0: Vec<f64> = (0..n).map(|rr| {
            let s: f64 = (0..d).map(|j| hu[rr * d + j] as f64 * hi[rr * d + j] as f64).sum();
            if gamma == 0.0 { 1.0 } else { (1.0 / (1.0 + (-s).exp())).powf(gamma as f64) }
        }).collect();
        let f = |u: &[f64], i: &[f64]| -> f64 {
            let mut tot = 0.0;
            for rr in 0..n {
                let sp: f64 = (0..d).map(|j| u[rr * d + j] * i[rr * d + j]).sum();
                let sn = dot(u, &ej, rr);
                let bpr = (1.0 + (sn - sp).exp()).ln();
                let mu: f64 = (0..d).map(|j| (u[rr * d + j] - eu[rr * d + j] as f64).powi(2)).sum::<f64>() / d as f64;
                let mi: f64 = (0..d).map(|j| (i[rr * d + j] - ei[rr * d + j] as f64).powi(2)).sum::<f64>() / d as f64;
                tot += w0[rr] * (lambda as f64 * bpr + (1.0 - lambda as f64) * 0.5 * (mu + mi));
            }
            tot / n as f64
        };
        let (u64v, i64v): (Vec<f64>, Vec<f64>) = (hu.iter().map(|&x| x as f64).collect(), hi.iter().map(|&x| x as f64).collect());
        prop_assert!((parts.total - f(&u64v, &i64v)).abs() < 1e-4 * (1.0 + parts.total.abs()));
        for k in 0..n * d {
            let (mut a, mut b) = (u64v.clone(), u64v.clone()); a[k] += H; b[k] -= H;
            assert_grad(dhu[k], (f(&a, &i64v) - f(&b, &i64v)) / (2.0 * H), "dhat_u")?;
            let (mut a, mut b) = (i64v.clone(), i64v.clone()); a[k] += H; b[k] -= H;
            assert_grad(dhi[k], (f(&u64v, &a) - f(&u64v, &b)) / (2.0 * H), "dhat_i")?;
        }
    }
}

#[test]
fn recall_and_ndcg_match_a_hand_computed_example() {
    let mut acc = MetricsAcc::new(&[2, 5]);
    // user A: ranked [3, 7, 1, 9, 4], truth {1, 7, 8}
    acc.add(&[3, 7, 1, 9, 4], &[1, 7, 8]);
    // user B: ranked [5, 6, u32::MAX...], truth {5}
    acc.add(&[5, 6, u32::MAX, u32::MAX, u32::MAX], &[5]);
    // user C has no truth: not counted
    acc.add(&[1, 2, 3, 4, 5], &[]);
    let m = acc.finish();
    assert_eq!(m.users, 2);
    let l = |p: usize| 1.0 / ((p + 2) as f64).log2();
    // @2: A hits 7 at position 1: recall 1/3, ndcg l(1)/(l(0)+l(1)); B: recall 1, ndcg 1
    let r2 = (1.0 / 3.0 + 1.0) / 2.0;
    let n2 = (l(1) / (l(0) + l(1)) + 1.0) / 2.0;
    assert!((m.recall(2) - r2).abs() < 1e-12 && (m.ndcg(2) - n2).abs() < 1e-12);
    // @5: A hits 7 (pos 1) and 1 (pos 2): recall 2/3, ndcg (l1+l2)/(l0+l1+l2)
    let r5 = (2.0 / 3.0 + 1.0) / 2.0;
    let n5 = ((l(1) + l(2)) / (l(0) + l(1) + l(2)) + 1.0) / 2.0;
    assert!((m.recall(5) - r5).abs() < 1e-12 && (m.ndcg(5) - n5).abs() < 1e-12);
}
