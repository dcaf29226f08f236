//! Criterion benches for kernel-level regression tracking (`cargo bench`).
//! The user-facing profiler with framework comparisons is `ddrm bench`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddrm::backends::graph::Graph;
use ddrm::data::Split;
use ddrm::kernels::cpu::elementwise::{sigmoid_inplace, tanh_inplace};
use ddrm::kernels::cpu::spmm::spmm;
use ddrm::kernels::cpu::topk::{fused_topk, PackedItems};
use ddrm::kernels::cpu::{gemm, Isa};
use ddrm::util::rng::Rng;

/// The allocator of the `ddrm` binary (huge pages, cache-line alignment), so that these
/// figures are those of the command line.
#[global_allocator]
static ALLOC: ddrm::util::hugepage::HugePageAlloc = ddrm::util::hugepage::HugePageAlloc;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    Rng::new(seed).fill_normal(&mut v, 1.0);
    v
}

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(20);
    // model shapes (m x k · k x n) and their backward forms
    for &(m, n, k, ta, tb) in &[
        (2048usize, 600usize, 138usize, false, false),
        (2048, 200, 600, false, false),
        (2048, 64, 200, false, false),
        (138, 600, 2048, true, false),
        (2048, 138, 600, false, true),
        (2048, 1000, 138, false, false),
        (2048, 100, 1000, false, false),
        // the DDRM recipe's weight gradients (on AVX-512, the in-place Aᵀ·B for 1000 and 128
        // rows, the few-rows one for 100)
        (1000, 100, 2048, true, false),
        (1000, 64, 2048, true, false),
        (128, 1000, 2048, true, false),
        (100, 1000, 2048, true, false),
    ] {
        let a = randn(m * k, 1);
        let b = randn(k * n, 2);
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(
            BenchmarkId::from_parameter(format!("{m}x{n}x{k} ta={ta} tb={tb}")),
            |bch| bch.iter(|| gemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut out)),
        );
    }
    g.finish();
}

fn bench_spmm_topk(c: &mut Criterion) {
    let ds = ddrm::data::open("ml1m-noisy").expect("bundled dataset");
    let graph = Graph::new(&ds);
    let n = graph.n_nodes();
    let x = randn(n * 64, 3);
    let mut y = vec![0f32; n * 64];
    let mut g = c.benchmark_group("spmm");
    g.sample_size(20);
    g.bench_function("ml1m-noisy d=64", |b| {
        b.iter(|| spmm(&graph.adj, &x, 64, &mut y))
    });
    g.finish();

    let users = ddrm::eval::eval_users(&ds, Split::Test);
    let q = randn(users.len() * 64, 4);
    let items = randn(ds.n_items() * 64, 5);
    let packed = PackedItems::new(&items, ds.n_items(), 64);
    let masks = [ds.train(), ds.valid()];
    let mut g = c.benchmark_group("fused_topk");
    g.sample_size(10);
    g.bench_function("ml1m-noisy all test users k=20", |b| {
        b.iter(|| fused_topk(Isa::detect(), &q, &packed, 20, &masks, &users))
    });
    g.finish();
}

fn bench_elementwise(c: &mut Criterion) {
    let mut v = randn(2048 * 1000, 6);
    let mut g = c.benchmark_group("elementwise");
    g.throughput(Throughput::Elements(v.len() as u64));
    g.bench_function("sigmoid 2048x1000", |b| b.iter(|| sigmoid_inplace(&mut v)));
    g.bench_function("tanh 2048x1000", |b| b.iter(|| tanh_inplace(&mut v)));
    g.finish();
}

criterion_group!(benches, bench_gemm, bench_spmm_topk, bench_elementwise);
criterion_main!(benches);
