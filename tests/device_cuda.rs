//! The model-level GPU paths (feature `cuda`) against the CPU: full-ranking evaluation and
//! DDRM inference (Algorithm 2) through [`Device`]. On a machine without a GPU every case
//! prints why it is skipped and passes, as on CI.
#![cfg(feature = "cuda")]

use ddrm::cli::ddrm_cmd::{ddrm_config, DdrmArgs};
use ddrm::data::synth::{generate, SynthConfig};
use ddrm::data::{Dataset, Split};
use ddrm::device::Device;
use ddrm::diffusion::ddrm::Arch;
use ddrm::diffusion::{Ddrm, Inference};
use ddrm::eval::{eval_users, evaluate_embeddings, evaluate_queries_on, masks_for, rank_on};
use ddrm::kernels::cuda;
use ddrm::util::rng::Rng;
use std::sync::OnceLock;

/// The GPU as a [`Device`], opened once; `None` (with the reason printed) without one.
fn gpu(test: &str) -> Option<&'static Device> {
    static DEV: OnceLock<Result<Device, String>> = OnceLock::new();
    let d = DEV.get_or_init(|| match cuda::unavailable_reason(0) {
        Some(why) => Err(why),
        None => Device::open("cuda").map_err(|e| format!("{e:#}")),
    });
    match d {
        Ok(d) => Some(d),
        Err(why) => {
            eprintln!("{test}: skipped, no GPU here: {why}");
            None
        }
    }
}

/// A synthetic dataset with more users than one inference chunk (2048), so that the chunk
/// boundary is crossed.
fn dataset() -> Dataset {
    let parts = generate(&SynthConfig {
        users: 2300,
        items: 400,
        interactions: 30_000,
        item_exponent: 0.9,
        user_exponent: 0.6,
        seed: 11,
    })
    .unwrap();
    Dataset::from_parts(&parts).unwrap()
}

fn embeddings(ds: &Dataset, d: usize, seed: u64) -> Vec<f32> {
    let mut emb = vec![0f32; (ds.n_users() + ds.n_items()) * d];
    Rng::new(seed).fill_normal(&mut emb, 0.5);
    emb
}

/// A DDRM with untrained (random) denoisers: inference exercises every layer all the same.
fn model(ds: &Dataset, emb: &[f32], d: usize, args: DdrmArgs) -> Ddrm {
    let cfg = ddrm_config(&args, None, None, Some(1), 1, 1, 1, &[10, 20]).unwrap();
    Ddrm::new(cfg, emb.to_vec(), ds.n_users(), d).unwrap()
}

fn assert_close(cpu: &[f32], gpu: &[f32], what: &str) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: lengths");
    let worst = cpu
        .iter()
        .zip(gpu)
        .map(|(a, b)| ((a - b).abs() / (1e-3 + a.abs())) as f64)
        .fold(0.0, f64::max);
    assert!(worst < 5e-3, "{what}: worst relative difference {worst}");
}

#[test]
fn ddrm_inference_on_the_gpu_matches_the_cpu() {
    let Some(dev) = gpu("ddrm_inference_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let ds = dataset();
    let d = 16;
    let emb = embeddings(&ds, d, 3);
    let users = eval_users(&ds, Split::Test);
    assert!(users.len() > 2048, "two chunks: {}", users.len());
    let base = || DdrmArgs {
        hidden: Some(vec![64, 24, 64]),
        steps: Some(5),
        inference_steps: Some(7), // T' > T: the step index is clamped to T
        noise_scale: Some(0.1),
        noise_min: Some(0.1),
        noise_max: Some(0.5),
        ..Default::default()
    };
    let variants: Vec<(&str, DdrmArgs)> = vec![
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
            "from pure noise",
            DdrmArgs {
                inference: Some(Inference::Noise),
                ..base()
            },
        ),
    ];
    for (what, args) in variants {
        let m = model(&ds, &emb, d, args);
        let cpu = m.infer(&ds, &users, 9);
        let on_gpu = m.infer_on(dev, &ds, &users, 9).unwrap();
        assert_close(&cpu, &on_gpu, what);
        let (mc, mg) = (
            m.evaluate(&ds, Split::Test, 9),
            m.evaluate_on(dev, &ds, Split::Test, 9).unwrap(),
        );
        assert_eq!(mc.users, mg.users);
        for (a, b) in mc.at.iter().zip(&mg.at) {
            assert!(
                (a.recall - b.recall).abs() < 2e-3 && (a.ndcg - b.ndcg).abs() < 2e-3,
                "{what}: cpu {a:?}, gpu {b:?}"
            );
        }
    }
}

#[test]
fn the_transformer_denoiser_is_refused_on_the_gpu_with_a_reason() {
    let Some(dev) = gpu("the_transformer_denoiser_is_refused_on_the_gpu_with_a_reason") else {
        return;
    };
    let ds = dataset();
    let d = 16;
    let m = model(
        &ds,
        &embeddings(&ds, d, 4),
        d,
        DdrmArgs {
            arch: Some(Arch::Transformer),
            hidden: Some(vec![32]),
            steps: Some(3),
            ..Default::default()
        },
    );
    let e = m.infer_on(dev, &ds, &[0, 1], 1).unwrap_err().to_string();
    assert!(
        e.contains("Transformer") && e.contains("--device cpu"),
        "{e}"
    );
}

#[test]
fn ranking_on_the_gpu_matches_the_cpu() {
    let Some(dev) = gpu("ranking_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let ds = dataset();
    let d = 24;
    let emb = embeddings(&ds, d, 5);
    let nu = ds.n_users();
    for split in [Split::Valid, Split::Test] {
        let users = eval_users(&ds, split);
        let mut q = vec![0f32; users.len() * d];
        ddrm::kernels::cpu::elementwise::gather_rows(&emb, d, &users, &mut q);
        let items = &emb[nu * d..];
        // the lists themselves: random scores have no near-ties at this size
        let masks = masks_for(&ds, split);
        let (ci, cs) = rank_on(&Device::Cpu, &q, items, d, 20, &masks, &users).unwrap();
        let (gi, gs) = rank_on(dev, &q, items, d, 20, &masks, &users).unwrap();
        assert_eq!(ci, gi, "{split:?}: top-20 lists");
        assert_close(&cs, &gs, "top-20 scores");
        let cpu = evaluate_embeddings(&ds, split, &emb[..nu * d], items, d, &[10, 20]);
        let on_gpu = evaluate_queries_on(dev, &ds, split, &users, &q, items, d, &[10, 20]).unwrap();
        assert_eq!(cpu, on_gpu, "{split:?}: metrics");
    }
}

/// DDRM training on the GPU: one batch's loss and denoiser gradients against the CPU
/// trainer's (same steps, noise and dropout masks), then two epochs against the CPU's.
#[test]
fn ddrm_training_on_the_gpu_matches_the_cpu() {
    use ddrm::diffusion::ddrm::DdrmTrainer;
    use ddrm::diffusion::ddrm_device::{grad_tensors, DeviceDdrm};
    let Some(Device::Cuda(gpu)) = gpu("ddrm_training_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let gpu: &cuda::Gpu = gpu;
    let ds = dataset();
    let d = 16;
    let emb = embeddings(&ds, d, 6);
    for (item_only, gamma) in [(false, 1.0), (true, 0.0)] {
        let args = DdrmArgs {
            hidden: Some(vec![64, 24, 64]),
            steps: Some(5),
            gamma: Some(gamma),
            item_only,
            dropout: Some(0.5),
            ..Default::default()
        };
        let cfg = ddrm_config(&args, None, Some(1024), Some(2), 1, 1, 3, &[10, 20]).unwrap();
        let mut cpu = Ddrm::new(cfg, emb.clone(), ds.n_users(), d).unwrap();
        // one batch
        let n = 300;
        let mut r = Rng::new(5);
        let users: Vec<u32> = (0..n).map(|_| r.index(ds.n_users()) as u32).collect();
        let pos: Vec<u32> = (0..n).map(|_| r.index(ds.n_items()) as u32).collect();
        let neg: Vec<u32> = (0..n).map(|_| r.index(ds.n_items()) as u32).collect();
        let steps: Vec<usize> = (0..n).map(|_| r.index(5)).collect();
        let (mut eu, mut ei) = (vec![0f32; n * d], vec![0f32; n * d]);
        r.fill_normal(&mut eu, 1.0);
        r.fill_normal(&mut ei, 1.0);
        let drop = Rng::new(9);
        let (parts, gu, gi) = cpu.batch_grads(
            &users,
            &pos,
            &neg,
            &steps,
            &eu,
            &ei,
            Some(&mut drop.clone()),
        );
        let mut dr = drop.clone();
        let mu = if item_only {
            Vec::new()
        } else {
            cpu.user_dn.dropout_mask(n, &mut dr)
        };
        let mi = cpu.item_dn.dropout_mask(n, &mut dr);
        let mut dev = DeviceDdrm::new(gpu, &cpu, 1024).unwrap();
        let s32: Vec<u32> = steps.iter().map(|&s| s as u32).collect();
        let dp = dev
            .step(&users, &pos, &neg, &s32, [&eu, &ei], [&mu, &mi], false)
            .unwrap();
        assert!(
            (parts.total - dp.total).abs() <= 1e-4 * (1.0 + parts.total.abs()),
            "loss: cpu {} gpu {}",
            parts.total,
            dp.total
        );
        let [du, di] = dev.grads().unwrap();
        let mut pairs = vec![(grad_tensors(&gi), di, "item")];
        if !item_only {
            pairs.push((grad_tensors(&gu), du, "user"));
        }
        for (c, g, what) in pairs {
            for (k, (a, b)) in c.iter().zip(&g).enumerate() {
                assert_close(a, b, &format!("{what} denoiser tensor {k}"));
            }
        }
        // two epochs
        let mut on_gpu = Ddrm::new(cpu.cfg.clone(), emb.clone(), ds.n_users(), d).unwrap();
        let mut trainer = DdrmTrainer::new(&cpu);
        let mut dev = DeviceDdrm::new(gpu, &on_gpu, cpu.cfg.batch).unwrap();
        for epoch in 1..=2 {
            let a = trainer.epoch(&mut cpu, &ds, epoch);
            let b = dev.epoch(&on_gpu, &ds, epoch).unwrap();
            assert!(
                (a.loss - b.loss).abs() <= 1e-3 * a.loss.abs(),
                "epoch {epoch}: cpu loss {} gpu {}",
                a.loss,
                b.loss
            );
        }
        dev.download_into(&mut on_gpu).unwrap();
        let (mc, mg) = (
            cpu.evaluate(&ds, Split::Test, 1),
            on_gpu.evaluate(&ds, Split::Test, 1),
        );
        for (a, b) in mc.at.iter().zip(&mg.at) {
            assert!(
                (a.recall - b.recall).abs() < 5e-3,
                "after two epochs: cpu {a:?}, gpu {b:?}"
            );
        }
    }
}

/// MF-BPR on the GPU: two epochs against the CPU trainer's (same triplets); the tables
/// apart only by rounding, and the same metrics.
#[test]
fn mf_training_on_the_gpu_matches_the_cpu() {
    use ddrm::backends::mf_device::DeviceMf;
    use ddrm::backends::trainer::run_epoch;
    use ddrm::backends::{Augment, Backend, Model, ModelConfig};
    let Some(Device::Cuda(gpu)) = gpu("mf_training_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let gpu: &cuda::Gpu = gpu;
    let ds = dataset();
    let cfg = ModelConfig {
        backend: Backend::Mf,
        dim: 32,
        layers: 0,
        reg: 1e-4,
        lr: 1e-3,
        augment: Augment::Ed,
        drop_ratio: 0.1,
        tau: 0.2,
        ssl_weight: 0.1,
        objective: Default::default(),
    };
    let mut cpu = Model::new(cfg.clone(), &ds, 2);
    let mut dev = DeviceMf::new(gpu, &Model::new(cfg, &ds, 2), ds.n_users(), 2048).unwrap();
    for epoch in 1..=2u64 {
        let (la, _, _) = run_epoch(&mut cpu, &ds, 2, epoch, 2048);
        let (lb, _) = dev.epoch(&ds, 2, epoch, 2048).unwrap();
        assert!(
            (la - lb).abs() <= 1e-4 * la.abs(),
            "epoch {epoch}: loss cpu {la} gpu {lb}"
        );
    }
    let t = dev.table().unwrap();
    assert_close(&cpu.ego, &t, "MF table after two epochs");
    let nu = ds.n_users();
    let d = 32;
    let a = evaluate_embeddings(
        &ds,
        Split::Test,
        &cpu.ego[..nu * d],
        &cpu.ego[nu * d..],
        d,
        &[20],
    );
    let b = evaluate_embeddings(&ds, Split::Test, &t[..nu * d], &t[nu * d..], d, &[20]);
    assert!(
        (a.recall(20) - b.recall(20)).abs() < 2e-3,
        "cpu {a:?} gpu {b:?}"
    );
}
