//! MF-BPR's in-place batch step (`backends::mf_step`) against the sequential scalar code it
//! replaced: gather the rows, dot them, accumulate each triplet's gradient into its rows in
//! triplet order. Bit for bit, at every thread count.

use ddrm::backends::mf_step::{scores, MfScratch};
use ddrm::kernels::cpu::elementwise::{gather_rows, row_dots};
use proptest::prelude::*;

#[derive(Debug)]
struct Case {
    d: usize,
    table: Vec<f32>,
    users: Vec<u32>,
    pos: Vec<u32>,
    neg: Vec<u32>,
    dp: Vec<f32>,
    dn: Vec<f32>,
    rc: f32,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..6, 1usize..8, 1usize..20, 1usize..70, any::<u64>()).prop_map(|(nu, ni, d, b, seed)| {
        let mut r = ddrm::util::rng::Rng::new(seed);
        let n = nu + ni;
        let mut table = vec![0f32; n * d];
        r.fill_normal(&mut table, 1.0);
        let users: Vec<u32> = (0..b).map(|_| r.index(nu) as u32).collect();
        let pos: Vec<u32> = (0..b).map(|_| (nu + r.index(ni)) as u32).collect();
        // a negative may equal the positive (a user who has seen every item)
        let neg: Vec<u32> = (0..b).map(|_| (nu + r.index(ni)) as u32).collect();
        let dp: Vec<f32> = (0..b).map(|_| r.uniform_f32() - 1.0).collect();
        let dn: Vec<f32> = (0..b).map(|_| r.uniform_f32()).collect();
        let rc = r.uniform_f32() * 1e-2;
        Case {
            d,
            table,
            users,
            pos,
            neg,
            dp,
            dn,
            rc,
        }
    })
}

/// The code the step replaced: gathered rows, `row_dots`, and one pass over the triplets.
fn reference(c: &Case) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<f32>) {
    let (d, b) = (c.d, c.users.len());
    let g3 = |ids: &[u32]| {
        let mut o = vec![0f32; b * d];
        gather_rows(&c.table, d, ids, &mut o);
        o
    };
    let (eu, ei, ej) = (g3(&c.users), g3(&c.pos), g3(&c.neg));
    let (mut sp, mut sn) = (vec![0f32; b], vec![0f32; b]);
    row_dots(&eu, &ei, d, &mut sp);
    row_dots(&eu, &ej, d, &mut sn);
    let mut rows: Vec<u32> = c
        .users
        .iter()
        .chain(&c.pos)
        .chain(&c.neg)
        .copied()
        .collect();
    rows.sort_unstable();
    rows.dedup();
    let slot = |r: u32| rows.binary_search(&r).unwrap();
    let mut g = vec![0f32; rows.len() * d];
    for k in 0..b {
        let (su, si, sj) = (slot(c.users[k]), slot(c.pos[k]), slot(c.neg[k]));
        let (u, i, j) = (
            &eu[k * d..(k + 1) * d],
            &ei[k * d..(k + 1) * d],
            &ej[k * d..(k + 1) * d],
        );
        let (dpk, dnk, rc) = (c.dp[k], c.dn[k], c.rc);
        for t in 0..d {
            g[su * d + t] += dpk * i[t] + dnk * j[t] + rc * u[t];
        }
        for t in 0..d {
            g[si * d + t] += dpk * u[t] + rc * i[t];
        }
        for t in 0..d {
            g[sj * d + t] += dnk * u[t] + rc * j[t];
        }
    }
    (sp, sn, rows, g)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn in_place_step_equals_sequential_reference(c in case(), threads in 1usize..4) {
        let (rsp, rsn, rrows, rg) = reference(&c);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let b = c.users.len();
        let trip = (c.users.as_slice(), c.pos.as_slice(), c.neg.as_slice());
        let (sp, sn, sq, rows, g) = pool.install(|| {
            let (mut sp, mut sn, mut sq) = (vec![0f32; b], vec![0f32; b], vec![0f64; b]);
            scores(&c.table, c.d, trip, &mut sp, &mut sn, &mut sq);
            let mut s = MfScratch::default();
            // twice with one scratch: the row map must be released between batches
            let first = s.gradients(&c.table, c.d, trip, &c.dp, &c.dn, c.rc);
            let again = s.gradients(&c.table, c.d, trip, &c.dp, &c.dn, c.rc);
            prop_assert_eq!(&first.0, &again.0);
            prop_assert_eq!(bits(&first.1), bits(&again.1));
            Ok((sp, sn, sq, first.0, first.1))
        })?;
        prop_assert_eq!(bits(&sp), bits(&rsp));
        prop_assert_eq!(bits(&sn), bits(&rsn));
        prop_assert_eq!(&rows, &rrows);
        prop_assert_eq!(bits(&g), bits(&rg));
        for (k, &got) in sq.iter().enumerate() {
            let n2 = |r: u32| {
                c.table[r as usize * c.d..(r as usize + 1) * c.d]
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum::<f64>()
            };
            let want = 0.5 * (n2(c.users[k]) + n2(c.pos[k]) + n2(c.neg[k]));
            prop_assert!((got - want).abs() <= 1e-5 * (1.0 + want), "L2 half {} vs {}", got, want);
        }
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn out_of_range_row_is_refused() {
    let table = vec![0f32; 4 * 2];
    let (mut sp, mut sn, mut sq) = (vec![0f32; 1], vec![0f32; 1], vec![0f64; 1]);
    scores(&table, 2, (&[0], &[4], &[3]), &mut sp, &mut sn, &mut sq);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// The device operations' MF row gradients (CPU implementation, the reference of the
    /// `mf_row_grads` kernel) over the host's row plan give the in-place step's gradient
    /// rows, bit for bit.
    #[test]
    fn device_row_gradients_equal_the_in_place_step(c in case()) {
        use ddrm::device::ops::{plan_rows, CpuOps, Ops, RowPlan};
        let (rows, g) = MfScratch::default().gradients(&c.table, c.d, (&c.users, &c.pos, &c.neg), &c.dp, &c.dn, c.rc);
        let (prow, start, entries) = plan_rows(&c.users, &c.pos, &c.neg);
        prop_assert_eq!(&prow, &rows);
        let plan = RowPlan { n_unique: prow.len(), rows: prow, start, entries };
        let mut out = vec![0f32; plan.n_unique * c.d];
        CpuOps.mf_row_grads(&c.table, c.d, &plan, [&c.users, &c.pos, &c.neg], &c.dp, &c.dn, c.rc, &mut out).unwrap();
        prop_assert_eq!(bits(&out), bits(&g));
    }
}

/// Two epochs of MF-BPR through the device operations (on the CPU) train the table the CPU
/// trainer trains, bit for bit: same triplets, scores, gradients and lazy Adam.
#[test]
fn device_mf_epochs_equal_the_cpu_trainers() {
    use ddrm::backends::mf_device::DeviceMf;
    use ddrm::backends::trainer::run_epoch;
    use ddrm::backends::{Backend, Model, ModelConfig};
    use ddrm::data::synth::{generate, SynthConfig};
    use ddrm::device::ops::CpuOps;
    let parts = generate(&SynthConfig {
        users: 150,
        items: 120,
        interactions: 4000,
        item_exponent: 0.9,
        user_exponent: 0.6,
        seed: 9,
    })
    .unwrap();
    let ds = ddrm::data::Dataset::from_parts(&parts).unwrap();
    let cfg = ModelConfig {
        backend: Backend::Mf,
        dim: 16,
        layers: 0,
        reg: 1e-3,
        lr: 1e-2,
        augment: ddrm::backends::Augment::Ed,
        drop_ratio: 0.1,
        tau: 0.2,
        ssl_weight: 0.1,
        objective: Default::default(),
    };
    let mut cpu = Model::new(cfg.clone(), &ds, 3);
    let start = cpu.ego.clone();
    let mut dev = DeviceMf::new(&CpuOps, &Model::new(cfg, &ds, 3), ds.n_users(), 512).unwrap();
    for epoch in 1..=2u64 {
        let (la, _, na) = run_epoch(&mut cpu, &ds, 3, epoch, 512);
        let (lb, nb) = dev.epoch(&ds, 3, epoch, 512).unwrap();
        assert_eq!(na, nb);
        assert_eq!(
            la.to_bits(),
            lb.to_bits(),
            "epoch {epoch}: loss {la} vs {lb}"
        );
    }
    let t = dev.table().unwrap();
    assert_ne!(bits(&t), bits(&start), "the table trained");
    assert_eq!(
        bits(&t),
        bits(&cpu.ego),
        "device MF table differs from the CPU trainer's"
    );
}
