//! MF-BPR training written once over the buffer operations of [`Ops`], so that it runs on
//! the CPU ([`CpuOps`](crate::device::ops::CpuOps)) or a GPU with the same code: the table
//! and its Adam moments stay on the device; per batch, the rows are gathered, scored, the
//! BPR derivatives taken, each distinct row's gradient summed in triplet order
//! (`mf_row_grads`, grouped on the host as [`super::mf_step`] groups them) and the touched
//! rows updated by lazy Adam. The batches are the CPU trainer's
//! ([`super::trainer::run_epoch`]), so both devices train on the same triplets. Plain BPR
//! only: T-CE, R-CE and DeCA train on the CPU.

use super::model::{Backend, Model};
use super::sampler::sample_epoch;
use crate::data::Dataset;
use crate::denoising::Objective;
use crate::device::ops::{plan_rows, AdamCoefs, Ops, RowPlan};
use crate::nn::AdamConfig;
use anyhow::{bail, ensure, Result};

/// An MF-BPR table training on a device.
pub struct DeviceMf<'o, O: Ops> {
    ops: &'o O,
    d: usize,
    n_users: u32,
    rows: usize,
    cap: usize,
    reg: f32,
    acfg: AdamConfig,
    t: i32,
    table: O::F,
    m: O::F,
    v: O::F,
    ids: [O::U; 3],
    e: [O::F; 3],
    sp: O::F,
    sn: O::F,
    loss: O::F,
    dp: O::F,
    dn: O::F,
    plan: RowPlan<O::U>,
    grads: O::F,
}

impl<'o, O: Ops> DeviceMf<'o, O> {
    /// Upload `model`'s table (an MF-BPR model that has not trained yet: the Adam moments
    /// start at zero) for batches of up to `cap` triplets.
    pub fn new(ops: &'o O, model: &Model, n_users: usize, cap: usize) -> Result<Self> {
        let cfg = &model.cfg;
        if cfg.backend != Backend::Mf {
            bail!(
                "training on a device covers MF-BPR and DDRM; {} trains on the CPU (--device cpu)",
                cfg.backend.label()
            );
        }
        if cfg.objective != Objective::Bpr {
            bail!("MF on a device trains plain BPR; T-CE, R-CE and DeCA train on the CPU (--device cpu)");
        }
        let (d, cap) = (cfg.dim, cap.max(1));
        ensure!(d > 0, "MF on a device: embedding size 0");
        let zu = |n: usize| ops.upload_u32(&vec![0u32; n]);
        let z = |n: usize| ops.zeros(n);
        Ok(DeviceMf {
            ops,
            d,
            n_users: n_users as u32,
            rows: model.ego.len() / d,
            cap,
            reg: cfg.reg,
            acfg: AdamConfig::with_lr(cfg.lr),
            t: 0,
            table: ops.upload(&model.ego)?,
            m: z(model.ego.len())?,
            v: z(model.ego.len())?,
            ids: [zu(cap)?, zu(cap)?, zu(cap)?],
            e: [z(cap * d)?, z(cap * d)?, z(cap * d)?],
            sp: z(cap)?,
            sn: z(cap)?,
            loss: z(cap)?,
            dp: z(cap)?,
            dn: z(cap)?,
            plan: RowPlan {
                n_unique: 0,
                rows: zu(3 * cap)?,
                start: zu(3 * cap + 1)?,
                entries: zu(3 * cap)?,
            },
            grads: z(3 * cap * d)?,
        })
    }

    /// One optimizer step on a batch of triplets (`pos`, `neg` are item ids); returns the
    /// mean BPR loss.
    pub fn step(&mut self, users: &[u32], pos: &[u32], neg: &[u32]) -> Result<f64> {
        let (n, d, ops) = (users.len(), self.d, self.ops);
        ensure!(
            n <= self.cap && pos.len() == n && neg.len() == n,
            "MF step on a device: {n} users, {} positives, {} negatives (at most {})",
            pos.len(),
            neg.len(),
            self.cap
        );
        if n == 0 {
            return Ok(0.0);
        }
        let nu = self.n_users;
        let ids = [
            users.to_vec(),
            pos.iter().map(|&i| i + nu).collect::<Vec<u32>>(),
            neg.iter().map(|&i| i + nu).collect::<Vec<u32>>(),
        ];
        for (k, v) in ids.iter().enumerate() {
            if let Some(&bad) = v.iter().find(|&&r| r as usize >= self.rows) {
                bail!(
                    "MF step on a device: row {bad} out of range (list {k}, {} rows)",
                    self.rows
                );
            }
            ops.write_u32(v, &mut self.ids[k])?;
            ops.gather_rows(&self.table, d, &self.ids[k], n, &mut self.e[k])?;
        }
        ops.row_dots(&self.e[0], &self.e[1], n, d, &mut self.sp)?;
        ops.row_dots(&self.e[0], &self.e[2], n, d, &mut self.sn)?;
        ops.bpr(
            &self.sp,
            &self.sn,
            n,
            &mut self.loss,
            &mut self.dp,
            &mut self.dn,
        )?;
        let (rows, start, entries) = plan_rows(&ids[0], &ids[1], &ids[2]);
        ops.write_u32(&rows, &mut self.plan.rows)?;
        ops.write_u32(&start, &mut self.plan.start)?;
        ops.write_u32(&entries, &mut self.plan.entries)?;
        self.plan.n_unique = rows.len();
        let rc = self.reg / n as f32;
        let trip = [&self.ids[0], &self.ids[1], &self.ids[2]];
        ops.mf_row_grads(
            &self.table,
            d,
            &self.plan,
            trip,
            &self.dp,
            &self.dn,
            rc,
            &mut self.grads,
        )?;
        self.t += 1;
        let a = self.acfg;
        let c = AdamCoefs::at(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, self.t);
        ops.adam_rows(
            &mut self.table,
            d,
            &self.plan,
            &self.grads,
            &mut self.m,
            &mut self.v,
            c,
        )?;
        let loss = ops.read(&self.loss, n)?;
        Ok(loss.iter().map(|&v| v as f64).sum::<f64>() / n as f64)
    }

    /// One epoch over the CPU trainer's triplets for (`seed`, `epoch`) in batches of
    /// `batch`: the summed batch losses and the number of batches.
    pub fn epoch(
        &mut self,
        ds: &Dataset,
        seed: u64,
        epoch: u64,
        batch: usize,
    ) -> Result<(f64, usize)> {
        let trip = sample_epoch(&ds.train(), seed, epoch);
        let (mut lsum, mut nb) = (0f64, 0usize);
        for s in (0..trip.users.len()).step_by(batch.max(1)) {
            let e = (s + batch.max(1)).min(trip.users.len());
            lsum += self.step(&trip.users[s..e], &trip.pos[s..e], &trip.neg[s..e])?;
            nb += 1;
        }
        Ok((lsum, nb))
    }

    /// The table, on the host.
    pub fn table(&self) -> Result<Vec<f32>> {
        self.ops.read(&self.table, self.rows * self.d)
    }
}
