//! DDRM: schedule identities, denoiser and loss gradients against finite differences,
//! metric definitions on a hand-computed example.

use ddrm::cli::ddrm_cmd::{ddrm_config, DdrmArgs};
use ddrm::diffusion::ddrm::{ddrm_loss, Ddrm, TargetGrads};
use ddrm::diffusion::denoiser::{Denoiser, DenoiserCache};
use ddrm::diffusion::schedule::{Schedule, ScheduleKind};
use ddrm::eval::MetricsAcc;
use ddrm::kernels::cpu::Act;
use ddrm::util::rng::Rng;
use proptest::prelude::*;

mod common;
use common::{assert_grad, H};

/// f64 reference of a denoiser's forward (`params` in `params_mut` order, MLP widths
/// `dims`): rows of `x` (noisy input) and `c` (condition), step encodings `enc`.
#[allow(clippy::too_many_arguments)]
fn denoiser64(
    p: &[Vec<f64>],
    enc: &[f32],
    x: &[f64],
    c: &[f64],
    n: usize,
    d: usize,
    sd: usize,
    dims: &[usize],
    act: Act,
) -> Vec<f64> {
    let act64 = |x: f64| match act {
        Act::Tanh => x.tanh(),
        Act::Relu => x.max(0.0),
        Act::None => x,
        _ => 1.0 / (1.0 + (-x).exp()),
    };
    let nl = dims.len() - 1;
    let mut out = vec![0f64; n * d];
    for rr in 0..n {
        let mut temb = vec![0f64; sd];
        for j in 0..sd {
            temb[j] = p[1][j];
            for q in 0..sd {
                temb[j] += enc[rr * sd + q] as f64 * p[0][q * sd + j];
            }
        }
        let mut h: Vec<f64> = x[rr * d..(rr + 1) * d].to_vec();
        h.extend(temb);
        h.extend_from_slice(&c[rr * d..(rr + 1) * d]);
        for l in 0..nl {
            let (w, b) = (&p[2 + 2 * l], &p[3 + 2 * l]);
            let mut o = vec![0f64; dims[l + 1]];
            for j in 0..dims[l + 1] {
                o[j] = b[j];
                for q in 0..dims[l] {
                    o[j] += h[q] * w[q * dims[l + 1] + j];
                }
                if l + 1 < nl {
                    o[j] = act64(o[j]);
                }
            }
            h = o;
        }
        out[rr * d..(rr + 1) * d].copy_from_slice(&h);
    }
    out
}

/// f64 MLP forward of one row (`p`: weights and biases per layer, activation between layers).
fn denoiser64_mlp(p: &[Vec<f64>], x: &[f64], dims: &[usize], act: Act) -> Vec<f64> {
    let act64 = |x: f64| match act {
        Act::Tanh => x.tanh(),
        Act::Relu => x.max(0.0),
        Act::None => x,
        _ => 1.0 / (1.0 + (-x).exp()),
    };
    let nl = dims.len() - 1;
    let mut h = x.to_vec();
    for l in 0..nl {
        let (w, b) = (&p[2 * l], &p[2 * l + 1]);
        let mut o = vec![0f64; dims[l + 1]];
        for j in 0..dims[l + 1] {
            o[j] = b[j];
            for q in 0..dims[l] {
                o[j] += h[q] * w[q * dims[l + 1] + j];
            }
            if l + 1 < nl {
                o[j] = act64(o[j]);
            }
        }
        h = o;
    }
    h
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
    fn denoiser_backward_matches_finite_differences(n in 1usize..6, seed in 0u64..10_000, act in prop::sample::select(vec![Act::Tanh, Act::Sigmoid]), step_ids in prop::collection::vec(0u32..3, 5)) {
        let (d, sd) = (3usize, 4usize);
        let mut r = Rng::new(seed);
        let dn = Denoiser::new(d, sd, &[5, 4], act, 0.0, &mut r);
        let mut xt = vec![0f32; n * d]; r.fill_normal(&mut xt, 1.0);
        let mut c = vec![0f32; n * d]; r.fill_normal(&mut c, 1.0);
        // steps repeat across rows (the first layer's step part is formed per distinct step)
        let steps: Vec<f32> = step_ids[..n].iter().map(|&k| (k * 3) as f32).collect();
        let mut g = vec![0f32; n * d]; r.fill_normal(&mut g, 1.0);
        let mut cache = DenoiserCache::default();
        let out = dn.forward(&xt, &steps, &c, n, None, &mut cache).to_vec();
        let mut grad = dn.zero_grad();
        let (mut dx, mut dc) = (vec![0f32; n * d], vec![0f32; n * d]);
        dn.backward(n, &mut cache, &g, &mut grad, Some(&mut dx), Some(&mut dc));
        // without input gradients only the step columns of the first layer's dx are formed:
        // the parameter gradients must not change
        let mut cache2 = DenoiserCache::default();
        dn.forward(&xt, &steps, &c, n, None, &mut cache2);
        let mut grad2 = dn.zero_grad();
        dn.backward(n, &mut cache2, &g, &mut grad2, None, None);
        for (t, (a, b)) in Denoiser::grads(&grad).iter().zip(Denoiser::grads(&grad2)).enumerate() {
            for (x, y) in a.iter().zip(b) {
                prop_assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "param {t}: {x} vs {y} without input gradients");
            }
        }

        // f64 reference: flat parameter vector in params_mut order
        let mut dn2 = dn.clone();
        let params: Vec<Vec<f64>> = dn2.params_mut().into_iter().map(|p| p.iter().map(|&v| v as f64).collect()).collect();
        let mut enc = vec![0f32; n * sd];
        ddrm::nn::step_embedding::timestep_encoding(&steps, sd, &mut enc);
        let f = |p: &[Vec<f64>], x: &[f64], cc: &[f64]| -> f64 {
            let out = denoiser64(p, &enc, x, cc, n, d, sd, &[2 * d + sd, 5, 4, d], act);
            (0..n * d).map(|k| out[k] * g[k] as f64).sum()
        };
        let x64: Vec<f64> = xt.iter().map(|&v| v as f64).collect();
        let c64: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        // the forward itself: the output of the f64 reference over concat(x, s, c)
        let reference = denoiser64(&params, &enc, &x64, &c64, n, d, sd, &[2 * d + sd, 5, 4, d], act);
        for k in 0..n * d {
            prop_assert!((out[k] as f64 - reference[k]).abs() <= 1e-5 * (1.0 + reference[k].abs()), "output {k}: {} vs {}", out[k], reference[k]);
        }
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

    /// The Transformer denoiser (cross-attention with query c, key the step embedding, value
    /// e_t, then a residual feed-forward block): every parameter, dxt and dcond against an f64
    /// reference.
    #[test]
    fn transformer_denoiser_backward_matches_finite_differences(n in 1usize..4, seed in 0u64..10_000, tokens in prop::sample::select(vec![1usize, 2, 4]), act in prop::sample::select(vec![Act::Tanh, Act::Sigmoid])) {
        let (d, sd, hid) = (4usize, 4usize, 5usize);
        let h = d / tokens;
        let mut r = Rng::new(seed);
        let dn = Denoiser::transformer(d, sd, tokens, &[hid], act, 0.0, &mut r);
        let mut xt = vec![0f32; n * d]; r.fill_normal(&mut xt, 1.0);
        let mut c = vec![0f32; n * d]; r.fill_normal(&mut c, 1.0);
        let steps: Vec<f32> = (0..n).map(|k| (k * 3 + 1) as f32).collect();
        let mut g = vec![0f32; n * d]; r.fill_normal(&mut g, 1.0);
        let mut cache = DenoiserCache::default();
        dn.forward(&xt, &steps, &c, n, None, &mut cache);
        let mut grad = dn.zero_grad();
        let (mut dx, mut dc) = (vec![0f32; n * d], vec![0f32; n * d]);
        dn.backward(n, &mut cache, &g, &mut grad, Some(&mut dx), Some(&mut dc));

        let mut dn2 = dn.clone();
        let params: Vec<Vec<f64>> = dn2.params_mut().into_iter().map(|p| p.iter().map(|&v| v as f64).collect()).collect();
        let mut enc = vec![0f32; n * sd];
        ddrm::nn::step_embedding::timestep_encoding(&steps, sd, &mut enc);
        let lin = |x: &[f64], w: &[f64], b: &[f64], din: usize, dout: usize| -> Vec<f64> {
            (0..dout).map(|j| b[j] + (0..din).map(|q| x[q] * w[q * dout + j]).sum::<f64>()).collect()
        };
        let f = |p: &[Vec<f64>], x: &[f64], cc: &[f64]| -> f64 {
            let mut tot = 0.0;
            for rr in 0..n {
                let e: Vec<f64> = enc[rr * sd..(rr + 1) * sd].iter().map(|&v| v as f64).collect();
                let temb = lin(&e, &p[0], &p[1], sd, sd);
                let xr = &x[rr * d..(rr + 1) * d];
                let q = lin(&cc[rr * d..(rr + 1) * d], &p[2], &p[3], d, d);
                let k = lin(&temb, &p[4], &p[5], sd, d);
                let v = lin(xr, &p[6], &p[7], d, d);
                let mut o = vec![0f64; d];
                for i in 0..tokens {
                    let s: Vec<f64> = (0..tokens).map(|j| (0..h).map(|cq| q[i * h + cq] * k[j * h + cq]).sum::<f64>() / (h as f64).sqrt()).collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
                    for j in 0..tokens { let a = (s[j] - mx).exp() / z; for cq in 0..h { o[i * h + cq] += a * v[j * h + cq]; } }
                }
                let att = lin(&o, &p[8], &p[9], d, d);
                let zr: Vec<f64> = (0..d).map(|j| xr[j] + att[j]).collect();
                let ffn = denoiser64_mlp(&p[10..], &zr, &[d, hid, d], act);
                for j in 0..d { tot += (zr[j] + ffn[j]) * g[rr * d + j] as f64; }
            }
            tot
        };
        let x64: Vec<f64> = xt.iter().map(|&v| v as f64).collect();
        let c64: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        let grads = Denoiser::grads(&grad);
        prop_assert_eq!(grads.len(), params.len());
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
        let (mut teu, mut tei, mut tej) = (vec![0f32; n * d], vec![0f32; n * d], vec![0f32; n * d]);
        let parts = ddrm_loss(&hu, &hi, &eu, &ei, &ej, d, lambda, gamma, &mut dhu, &mut dhi, Some(TargetGrads { eu: &mut teu, ei: &mut tei, ej: &mut tej }));
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
        // the same loss as a function of the targets e_u, e_i, e_j (predictions fixed)
        let g = |tu: &[f64], ti: &[f64], tj: &[f64]| -> f64 {
            let mut tot = 0.0;
            for rr in 0..n {
                let dot64 = |a: &[f32], b: &[f64]| (0..d).map(|j| a[rr * d + j] as f64 * b[rr * d + j]).sum::<f64>();
                let sp: f64 = (0..d).map(|j| hu[rr * d + j] as f64 * hi[rr * d + j] as f64).sum();
                let sn = dot64(&hu, tj);
                let bpr = (1.0 + (sn - sp).exp()).ln();
                let mu: f64 = (0..d).map(|j| (hu[rr * d + j] as f64 - tu[rr * d + j]).powi(2)).sum::<f64>() / d as f64;
                let mi: f64 = (0..d).map(|j| (hi[rr * d + j] as f64 - ti[rr * d + j]).powi(2)).sum::<f64>() / d as f64;
                tot += w0[rr] * (lambda as f64 * bpr + (1.0 - lambda as f64) * 0.5 * (mu + mi));
            }
            tot / n as f64
        };
        let to64 = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        let (tu, ti, tj) = (to64(&eu), to64(&ei), to64(&ej));
        for k in 0..n * d {
            for (which, analytic) in [(0, teu[k]), (1, tei[k]), (2, tej[k])] {
                let (mut a, mut b) = ([tu.clone(), ti.clone(), tj.clone()], [tu.clone(), ti.clone(), tj.clone()]);
                a[which][k] += H; b[which][k] -= H;
                let fd = (g(&a[0], &a[1], &a[2]) - g(&b[0], &b[1], &b[2])) / (2.0 * H);
                assert_grad(analytic, fd, &format!("target {which}"))?;
            }
        }
        let (u64v, i64v): (Vec<f64>, Vec<f64>) = (hu.iter().map(|&x| x as f64).collect(), hi.iter().map(|&x| x as f64).collect());
        prop_assert!((parts.total - f(&u64v, &i64v)).abs() < 1e-4 * (1.0 + parts.total.abs()));
        for k in 0..n * d {
            let (mut a, mut b) = (u64v.clone(), u64v.clone()); a[k] += H; b[k] -= H;
            assert_grad(dhu[k], (f(&a, &i64v) - f(&b, &i64v)) / (2.0 * H), "dhat_u")?;
            let (mut a, mut b) = (i64v.clone(), i64v.clone()); a[k] += H; b[k] -= H;
            assert_grad(dhi[k], (f(&u64v, &a) - f(&u64v, &b)) / (2.0 * H), "dhat_i")?;
        }
    }

    /// `--joint`: the gradient of a batch's DDRM loss w.r.t. the backend embeddings, through
    /// the reconstruction targets, both denoisers' noisy inputs and conditions and the
    /// negative's score (item-only too), against an f64 reference of the whole batch loss.
    #[test]
    fn joint_embedding_gradient_matches_finite_differences(n in 1usize..4, seed in 0u64..10_000, lambda in 0f32..1.0, gamma in 0f32..1.5, item_only: bool, act in prop::sample::select(vec![Act::Tanh, Act::Sigmoid, Act::Relu])) {
        let (nu, ni, d, sd) = (3usize, 4usize, 3usize, 4usize);
        let args = DdrmArgs {
            steps: Some(10), noise_scale: Some(0.5), noise_min: Some(0.1), noise_max: Some(1.0),
            lambda: Some(lambda), gamma: Some(gamma), hidden: Some(vec![5, 4]), act: Some(act),
            step_dim: Some(sd), dropout: Some(0.0), item_only, ..Default::default()
        };
        let cfg = ddrm_config(&args, None, None, Some(1), 1, 1, seed, &[20]).unwrap();
        let mut r = Rng::new(seed);
        let mut emb = vec![0f32; (nu + ni) * d]; r.fill_normal(&mut emb, 1.0);
        let m = Ddrm::new(cfg, emb.clone(), nu, d).unwrap();
        let users: Vec<u32> = (0..n).map(|_| r.index(nu) as u32).collect();
        let pos: Vec<u32> = (0..n).map(|_| r.index(ni) as u32).collect();
        let neg: Vec<u32> = (0..n).map(|_| r.index(ni) as u32).collect();
        let steps: Vec<usize> = (0..n).map(|_| r.index(10)).collect();
        let (mut eps_u, mut eps_i) = (vec![0f32; n * d], vec![0f32; n * d]);
        r.fill_normal(&mut eps_u, 1.0); r.fill_normal(&mut eps_i, 1.0);
        let (loss, grad) = m.batch_loss_and_emb_grad(&users, &pos, &neg, &steps, &eps_u, &eps_i);

        let (mut udn, mut idn) = (m.user_dn.clone(), m.item_dn.clone());
        let to64 = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        let up: Vec<Vec<f64>> = udn.params_mut().into_iter().map(|p| to64(p)).collect();
        let ip: Vec<Vec<f64>> = idn.params_mut().into_iter().map(|p| to64(p)).collect();
        let stepf: Vec<f32> = steps.iter().map(|&t| t as f32).collect();
        let mut enc = vec![0f32; n * sd];
        ddrm::nn::step_embedding::timestep_encoding(&stepf, sd, &mut enc);
        let dims = [2 * d + sd, 5, 4, d];
        let coef: Vec<(f64, f64)> = steps.iter().map(|&t| { let (a, b) = m.schedule.q_coefs(t); (a as f64, b as f64) }).collect();
        let total = |e: &[f64], w0: Option<&[f64]>| -> (f64, Vec<f64>) {
            let row = |node: usize| e[node * d..(node + 1) * d].to_vec();
            let (mut eu, mut ei, mut ej) = (vec![], vec![], vec![]);
            for k in 0..n { eu.extend(row(users[k] as usize)); ei.extend(row(nu + pos[k] as usize)); ej.extend(row(nu + neg[k] as usize)); }
            let noised = |e0: &[f64], eps: &[f32]| -> Vec<f64> { (0..n * d).map(|q| coef[q / d].0 * e0[q] + coef[q / d].1 * eps[q] as f64).collect() };
            let hu = if item_only { eu.clone() } else { denoiser64(&up, &enc, &noised(&eu, &eps_u), &ei, n, d, sd, &dims, act) };
            let hi = denoiser64(&ip, &enc, &noised(&ei, &eps_i), &eu, n, d, sd, &dims, act);
            let mut ws = vec![];
            let mut tot = 0.0;
            for k in 0..n {
                let dot = |a: &[f64], b: &[f64]| (0..d).map(|j| a[k * d + j] * b[k * d + j]).sum::<f64>();
                let (sp, sn) = (dot(&hu, &hi), dot(&hu, &ej));
                let w = match w0 { Some(w) => w[k], None => if gamma == 0.0 { 1.0 } else { (1.0 / (1.0 + (-sp).exp())).powf(gamma as f64) } };
                ws.push(w);
                let mse = |a: &[f64], b: &[f64]| (0..d).map(|j| (a[k * d + j] - b[k * d + j]).powi(2)).sum::<f64>() / d as f64;
                tot += w * (lambda as f64 * (1.0 + (sn - sp).exp()).ln() + (1.0 - lambda as f64) * 0.5 * (mse(&hu, &eu) + mse(&hi, &ei)));
            }
            (tot / n as f64, ws)
        };
        let e64 = to64(&emb);
        let (l64, w0) = total(&e64, None);
        prop_assert!((loss - l64).abs() < 1e-4 * (1.0 + l64.abs()), "loss {} vs f64 {}", loss, l64);
        for k in 0..e64.len() {
            let (mut a, mut b) = (e64.clone(), e64.clone()); a[k] += H; b[k] -= H;
            let fd = (total(&a, Some(&w0)).0 - total(&b, Some(&w0)).0) / (2.0 * H);
            assert_grad(grad[k], fd, &format!("d emb[{k}]"))?;
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

#[test]
fn posterior_sampling_and_cosine_rounding_change_what_they_should() {
    use ddrm::data::synth::{generate, SynthConfig};
    use ddrm::diffusion::ddrm::Rounding;
    let parts = generate(&SynthConfig {
        users: 50,
        items: 40,
        interactions: 900,
        item_exponent: 0.9,
        user_exponent: 0.6,
        seed: 3,
    })
    .unwrap();
    let ds = ddrm::data::Dataset::from_parts(&parts).unwrap();
    let d = 8;
    let mut emb = vec![0f32; (ds.n_users() + ds.n_items()) * d];
    Rng::new(1).fill_normal(&mut emb, 1.0);
    let mk = |sample: bool, rounding: Rounding| {
        let args = DdrmArgs {
            hidden: Some(vec![16]),
            steps: Some(5),
            noise_scale: Some(0.1),
            noise_min: Some(0.1),
            noise_max: Some(0.5),
            sample,
            rounding: Some(rounding),
            ..Default::default()
        };
        let cfg = ddrm_config(&args, None, None, Some(1), 1, 1, 1, &[20]).unwrap();
        Ddrm::new(cfg, emb.clone(), ds.n_users(), d).unwrap()
    };
    let users: Vec<u32> = (0..10).collect();
    let mean = mk(false, Rounding::Inner).infer(&ds, &users, 5);
    let sampled = mk(true, Rounding::Inner).infer(&ds, &users, 5);
    assert_ne!(mean, sampled, "--sample must add posterior noise");
    assert_eq!(
        sampled,
        mk(true, Rounding::Inner).infer(&ds, &users, 5),
        "seeded"
    );
    let inner = mk(false, Rounding::Inner);
    assert_eq!(&*inner.item_embeddings(), &emb[ds.n_users() * d..]);
    let cos = mk(false, Rounding::Cosine);
    for row in cos.item_embeddings().chunks(d) {
        let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (n - 1.0).abs() < 1e-5,
            "cosine rounding normalizes items: norm {n}"
        );
    }
}

/// The gradients of two implementations agree tensor by tensor, relative to each tensor's
/// largest entry (the device trainer splits the first layer's product in three, so the
/// sums run in another order).
fn assert_tensors_close(
    cpu: &[Vec<f32>],
    dev: &[Vec<f32>],
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(cpu.len(), dev.len(), "{}: tensor count", what);
    for (k, (a, b)) in cpu.iter().zip(dev).enumerate() {
        prop_assert_eq!(a.len(), b.len(), "{}: tensor {} length", what, k);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        for (x, y) in a.iter().zip(b) {
            prop_assert!(
                (x - y).abs() <= 2e-4 * scale,
                "{}: tensor {}: cpu {} vs device {} (scale {})",
                what,
                k,
                x,
                y,
                scale
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// The device trainer, run on the CPU's buffer operations, gives the loss and the
    /// denoiser gradients of the CPU trainer's batch (same steps, noise and dropout masks),
    /// for every activation, item-only or not, with and without reweighting.
    #[test]
    fn device_trainer_gives_the_cpu_trainers_gradients(n in 1usize..40, seed in 0u64..10_000, lambda in 0f32..1.0, gamma in prop::sample::select(vec![0f32, 0.5, 1.0]), item_only: bool, act in prop::sample::select(vec![Act::Tanh, Act::Sigmoid, Act::Relu]), layers in 1usize..4) {
        use ddrm::device::ops::CpuOps;
        use ddrm::diffusion::ddrm_device::{grad_tensors, DeviceDdrm};
        let (nu, ni, d, t) = (7usize, 9usize, 6usize, 8usize);
        let hidden: Vec<usize> = [24usize, 5, 24][..layers - 1].to_vec();
        let args = DdrmArgs {
            steps: Some(t), noise_scale: Some(0.5), noise_min: Some(0.1), noise_max: Some(1.0),
            lambda: Some(lambda), gamma: Some(gamma), hidden: Some(hidden), act: Some(act),
            step_dim: Some(4), item_only, dropout: Some(0.5), ..Default::default()
        };
        let cfg = ddrm_config(&args, None, None, Some(1), 1, 1, seed, &[20]).unwrap();
        let mut r = Rng::new(seed);
        let mut emb = vec![0f32; (nu + ni) * d]; r.fill_normal(&mut emb, 1.0);
        let m = Ddrm::new(cfg, emb, nu, d).unwrap();
        let users: Vec<u32> = (0..n).map(|_| r.index(nu) as u32).collect();
        let pos: Vec<u32> = (0..n).map(|_| r.index(ni) as u32).collect();
        let neg: Vec<u32> = (0..n).map(|_| r.index(ni) as u32).collect();
        let steps: Vec<usize> = (0..n).map(|_| r.index(t)).collect();
        let (mut eps_u, mut eps_i) = (vec![0f32; n * d], vec![0f32; n * d]);
        r.fill_normal(&mut eps_u, 1.0); r.fill_normal(&mut eps_i, 1.0);
        // the CPU trainer draws the user's mask, then the item's, from the batch's stream
        let drop = Rng::new(seed ^ 0xD0);
        let (parts, gu, gi) = m.batch_grads(&users, &pos, &neg, &steps, &eps_u, &eps_i, Some(&mut drop.clone()));
        let mut dr = drop.clone();
        let mask_u = if item_only { Vec::new() } else { m.user_dn.dropout_mask(n, &mut dr) };
        let mask_i = m.item_dn.dropout_mask(n, &mut dr);
        prop_assert!(!mask_i.is_empty(), "the preset has dropout");
        let mut dev = DeviceDdrm::new(&CpuOps, &m, 64).unwrap();
        let steps32: Vec<u32> = steps.iter().map(|&s| s as u32).collect();
        let dp = dev.step(&users, &pos, &neg, &steps32, [&eps_u, &eps_i], [&mask_u, &mask_i], false).unwrap();
        for (a, b, what) in [(parts.total, dp.total, "loss"), (parts.bpr, dp.bpr, "bpr"), (parts.recon, dp.recon, "recon")] {
            prop_assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{}: cpu {} vs device {}", what, a, b);
        }
        let [du, di] = dev.grads().unwrap();
        assert_tensors_close(&grad_tensors(&gi), &di, "item denoiser")?;
        if !item_only {
            assert_tensors_close(&grad_tensors(&gu), &du, "user denoiser")?;
        }
    }
}

/// One epoch of the device trainer on the CPU's operations tracks the CPU trainer's epoch:
/// same batches, steps, noise and masks, so the same loss and, after a few hundred Adam
/// steps apart only in summation order, nearly the same denoisers and metrics.
#[test]
fn device_trainer_epoch_tracks_the_cpu_epoch() {
    use ddrm::data::synth::{generate, SynthConfig};
    use ddrm::data::Split;
    use ddrm::device::ops::CpuOps;
    use ddrm::diffusion::ddrm::DdrmTrainer;
    use ddrm::diffusion::ddrm_device::DeviceDdrm;
    let parts = generate(&SynthConfig {
        users: 120,
        items: 90,
        interactions: 3000,
        item_exponent: 0.9,
        user_exponent: 0.6,
        seed: 8,
    })
    .unwrap();
    let ds = ddrm::data::Dataset::from_parts(&parts).unwrap();
    let d = 8;
    let mut emb = vec![0f32; (ds.n_users() + ds.n_items()) * d];
    Rng::new(2).fill_normal(&mut emb, 0.5);
    let args = DdrmArgs {
        hidden: Some(vec![32, 8, 32]),
        steps: Some(5),
        dropout: Some(0.5),
        ..Default::default()
    };
    let cfg = ddrm_config(&args, None, Some(256), Some(2), 1, 1, 4, &[10, 20]).unwrap();
    let mut cpu = Ddrm::new(cfg, emb, ds.n_users(), d).unwrap();
    let mut on_dev = Ddrm::new(cpu.cfg.clone(), cpu.emb.clone(), ds.n_users(), d).unwrap();
    let mut init = Ddrm::new(cpu.cfg.clone(), cpu.emb.clone(), ds.n_users(), d).unwrap();
    let mut trainer = DdrmTrainer::new(&cpu);
    let mut dev = DeviceDdrm::new(&CpuOps, &on_dev, cpu.cfg.batch).unwrap();
    for epoch in 1..=2 {
        let a = trainer.epoch(&mut cpu, &ds, epoch);
        let b = dev.epoch(&on_dev, &ds, epoch).unwrap();
        assert_eq!(a.samples, b.samples);
        assert!(
            (a.loss - b.loss).abs() <= 1e-3 * a.loss.abs(),
            "epoch {epoch}: loss {} vs {}",
            a.loss,
            b.loss
        );
    }
    dev.download_into(&mut on_dev).unwrap();
    let (mut worst, mut moved) = (0f32, 0f32);
    for ((p, q), p0) in cpu
        .item_dn
        .params_mut()
        .into_iter()
        .zip(on_dev.item_dn.params_mut())
        .zip(init.item_dn.params_mut())
    {
        for ((x, y), x0) in p.iter().zip(q.iter()).zip(p0.iter()) {
            worst = worst.max((x - y).abs());
            moved = moved.max((x - x0).abs());
        }
    }
    assert!(
        worst < 1e-3 && moved > 50.0 * worst,
        "item denoiser: the two trainers' parameters are {worst} apart, and moved {moved} from the start"
    );
    let (ma, mb) = (
        cpu.evaluate(&ds, Split::Test, 1),
        on_dev.evaluate(&ds, Split::Test, 1),
    );
    for (x, y) in ma.at.iter().zip(&mb.at) {
        assert!((x.recall - y.recall).abs() < 0.01, "{x:?} vs {y:?}");
    }
    // noise and masks drawn by the device's counter-based streams: other numbers, the same
    // distribution, so about the same losses
    use ddrm::diffusion::ddrm_device::NoiseSource;
    let fresh = Ddrm::new(cpu.cfg.clone(), cpu.emb.clone(), ds.n_users(), d).unwrap();
    let mut dev = DeviceDdrm::new(&CpuOps, &fresh, cpu.cfg.batch).unwrap();
    dev.set_noise(NoiseSource::Device);
    let mut cpu2 = Ddrm::new(cpu.cfg.clone(), cpu.emb.clone(), ds.n_users(), d).unwrap();
    let mut trainer = DdrmTrainer::new(&cpu2);
    for epoch in 1..=2 {
        let a = trainer.epoch(&mut cpu2, &ds, epoch);
        let b = dev.epoch(&fresh, &ds, epoch).unwrap();
        assert!(
            (a.loss - b.loss).abs() <= 0.1 * a.loss.abs() && a.loss != b.loss,
            "epoch {epoch}, device noise: loss {} vs the CPU's {}",
            b.loss,
            a.loss
        );
    }
}

/// The counter-based streams: standard normals and dropout masks with the right moments,
/// element i the same whatever the length drawn, and other seeds other numbers.
#[test]
fn counter_streams_have_the_right_moments_and_prefixes() {
    use ddrm::device::ops::{CpuOps, Draw, Ops};
    let n = 200_000;
    let mut x = vec![0f32; n];
    CpuOps.draw(7, Draw::Normal, n, &mut x).unwrap();
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let tail = x.iter().filter(|v| v.abs() > 1.96).count() as f64 / n as f64;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
        "mean {mean}, var {var}"
    );
    assert!((tail - 0.05).abs() < 0.003, "P(|z| > 1.96) = {tail}");
    let mut head = vec![0f32; 1000];
    CpuOps.draw(7, Draw::Normal, 1000, &mut head).unwrap();
    assert_eq!(
        &head[..],
        &x[..1000],
        "element i does not depend on the length"
    );
    CpuOps.draw(8, Draw::Normal, 1000, &mut head).unwrap();
    assert!(
        head.iter().zip(&x).filter(|(a, b)| a == b).count() < 5,
        "seed 8 repeats seed 7"
    );
    let mut m = vec![0f32; n];
    CpuOps.draw(7, Draw::Keep(0.3), n, &mut m).unwrap();
    let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.3).abs() < 0.005, "kept {kept}");
    assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.3).abs() < 1e-6));
    assert!(CpuOps.draw(7, Draw::Keep(0.0), 10, &mut m).is_err());
}

/// The options the device trainer does not cover are named before anything runs.
#[test]
fn device_training_names_what_it_does_not_cover() {
    use ddrm::diffusion::ddrm::Arch;
    use ddrm::diffusion::ddrm_device::check_supported;
    let cfg = |args: DdrmArgs| ddrm_config(&args, None, None, Some(1), 1, 1, 1, &[20]).unwrap();
    assert!(check_supported(&cfg(DdrmArgs::default())).is_ok());
    let joint = cfg(DdrmArgs {
        joint: true,
        ..Default::default()
    });
    assert!(check_supported(&joint)
        .unwrap_err()
        .to_string()
        .contains("--joint"));
    let dynamic = cfg(DdrmArgs {
        dynamic_noise: true,
        ..Default::default()
    });
    assert!(check_supported(&dynamic)
        .unwrap_err()
        .to_string()
        .contains("--dynamic-noise"));
    let tr = cfg(DdrmArgs {
        arch: Some(Arch::Transformer),
        ..Default::default()
    });
    assert!(check_supported(&tr)
        .unwrap_err()
        .to_string()
        .contains("Transformer"));
}

/// DDRM inference through the device operations (on the CPU's): the same queries as
/// `Ddrm::infer` up to rounding (the first layer is summed in three parts), in every
/// inference variant, with T' > T and more users than one chunk; the Transformer is refused.
#[test]
fn device_inference_gives_the_cpu_queries() {
    use ddrm::data::synth::{generate, SynthConfig};
    use ddrm::device::ops::CpuOps;
    use ddrm::diffusion::ddrm::Arch;
    use ddrm::diffusion::Inference;
    let parts = generate(&SynthConfig {
        users: 2300,
        items: 300,
        interactions: 20_000,
        item_exponent: 0.9,
        user_exponent: 0.6,
        seed: 12,
    })
    .unwrap();
    let ds = ddrm::data::Dataset::from_parts(&parts).unwrap();
    let d = 8;
    let mut emb = vec![0f32; (ds.n_users() + ds.n_items()) * d];
    Rng::new(4).fill_normal(&mut emb, 0.5);
    let users: Vec<u32> = (0..ds.n_users() as u32).collect();
    let base = || DdrmArgs {
        hidden: Some(vec![24, 6, 24]),
        steps: Some(5),
        inference_steps: Some(7),
        noise_scale: Some(0.1),
        noise_min: Some(0.1),
        noise_max: Some(0.5),
        ..Default::default()
    };
    let variants = [
        ("posterior mean", base()),
        (
            "sampling",
            DdrmArgs {
                sample: true,
                ..base()
            },
        ),
        (
            "dynamic noise",
            DdrmArgs {
                dynamic_noise: true,
                ..base()
            },
        ),
        (
            "pure noise",
            DdrmArgs {
                inference: Some(Inference::Noise),
                ..base()
            },
        ),
    ];
    for (what, args) in variants {
        let cfg = ddrm_config(&args, None, None, Some(1), 1, 1, 3, &[20]).unwrap();
        let m = Ddrm::new(cfg, emb.clone(), ds.n_users(), d).unwrap();
        let cpu = m.infer(&ds, &users, 9);
        let dev = m.infer_with(&CpuOps, &ds, &users, 9).unwrap();
        let worst = cpu
            .iter()
            .zip(&dev)
            .map(|(a, b)| (a - b).abs() / (1e-3 + a.abs()))
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "{what}: worst relative difference {worst}");
        assert_ne!(cpu, vec![0f32; cpu.len()]);
    }
    let cfg = ddrm_config(
        &DdrmArgs {
            arch: Some(Arch::Transformer),
            hidden: Some(vec![16]),
            steps: Some(3),
            ..Default::default()
        },
        None,
        None,
        Some(1),
        1,
        1,
        3,
        &[20],
    )
    .unwrap();
    let m = Ddrm::new(cfg, emb.clone(), ds.n_users(), d).unwrap();
    let e = m
        .infer_with(&CpuOps, &ds, &[0, 1], 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Transformer") && e.contains("--device cpu"),
        "{e}"
    );
}

/// The FLOP figures of `ddrm train` and `ddrm bench epoch` count the work as performed:
/// no input gradient for the fixed step encoding, and without `--joint` none for the noisy
/// input and the condition; the MLP denoiser forms the step's part once per distinct step
/// (not per sample), so it is not counted per sample.
#[test]
fn train_macs_count_the_gradients_the_backward_computes() {
    let mut r = Rng::new(1);
    // the MF recipe: 64 + 10 + 64 -> 1000 -> 100 -> 1000 -> 64, step layer 10 x 10
    let dn = Denoiser::new(64, 10, &[1000, 100, 1000], Act::Tanh, 0.0, &mut r);
    assert_eq!(dn.macs(), 128 * 1000 + 1000 * 100 + 100 * 1000 + 1000 * 64);
    let fwd = dn.macs();
    // forward + weight gradients (the first layer's rows of x and c), input gradients of
    // layers 1..3
    let grads = 128 * 1000 + 1000 * 100 + 100 * 1000 + 1000 * 64;
    let dx = 1000 * 100 + 100 * 1000 + 1000 * 64;
    assert_eq!(dn.train_macs(false), fwd + grads + dx);
    assert_eq!(dn.train_macs(true), fwd + grads + dx + 128 * 1000);
    // Transformer: attention q, k, v, o (64 x 64, 10 x 64) over 4 tokens of 16, FFN 64-256-64
    let tf = Denoiser::transformer(64, 10, 4, &[256], Act::Tanh, 0.0, &mut r);
    let attn = 3 * 64 * 64 + 10 * 64 + 2 * 4 * 4 * 16;
    assert_eq!(tf.macs(), attn + 2 * 64 * 256 + 100);
    assert_eq!(tf.train_macs(true), 3 * tf.macs() - 100);
    assert_eq!(tf.train_macs(false), 3 * tf.macs() - 100 - 64 * 64);
}
