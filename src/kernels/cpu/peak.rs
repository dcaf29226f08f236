//! Measure the machine's limits: single-precision FMA peak and memory bandwidth.

use rayon::prelude::*;
use std::time::Instant;
use wide::f32x8;

/// Measured FMA throughput in GFLOP/s over all rayon threads: each thread runs 12
/// independent chains of 8-wide fused multiply-adds (enough to hide FMA latency).
pub fn fma_peak_gflops() -> f64 {
    let threads = rayon::current_num_threads();
    let iters: usize = 20_000_000;
    let run = || {
        let t0 = Instant::now();
        let sums: f32 = (0..threads)
            .into_par_iter()
            .map(|t| fma_chains(iters, t as f32 * 1e-9))
            .sum();
        std::hint::black_box(sums);
        t0.elapsed().as_secs_f64()
    };
    run(); // warm-up
    let best = (0..3).map(|_| run()).fold(f64::INFINITY, f64::min);
    let flops = threads as f64 * iters as f64 * 12.0 * 8.0 * 2.0;
    flops / best / 1e9
}

fn fma_chains(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        match super::Isa::detect() {
            // SAFETY: features checked by detect (a 16-wide chain counts as two 8-wide ones:
            // half the iterations)
            super::Isa::Avx512 => return unsafe { fma_chains_avx512(iters / 2, seed) },
            // SAFETY: as above.
            super::Isa::Avx2Fma => return unsafe { fma_chains_avx2(iters, seed) },
            super::Isa::Portable => {}
        }
    }
    let a = f32x8::splat(0.999_999);
    let b = f32x8::splat(1e-7 + seed);
    let mut c = [f32x8::splat(1.0); 12];
    for _ in 0..iters {
        for v in c.iter_mut() {
            *v = v.mul_add(a, b);
        }
    }
    c.iter().map(|v| v.reduce_add()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7 + seed);
    let mut c = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in c.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; 8];
    let mut s = 0.0;
    for v in c {
        _mm256_storeu_ps(out.as_mut_ptr(), v);
        s += out.iter().sum::<f32>();
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7 + seed);
    let mut c = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        for v in c.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    c.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

/// Measured read bandwidth in GB/s (sum over a 256 MiB buffer, all threads).
pub fn read_bandwidth_gbs() -> f64 {
    let n = 64 << 20; // 64 Mi f32 = 256 MiB
    let buf = vec![1.0f32; n];
    let run = || {
        let t0 = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = f32x8::ZERO;
                for ch in c.chunks_exact(8) {
                    acc += f32x8::from(<[f32; 8]>::try_from(ch).unwrap());
                }
                acc.reduce_add()
            })
            .sum();
        std::hint::black_box(s);
        t0.elapsed().as_secs_f64()
    };
    run();
    let best = (0..3).map(|_| run()).fold(f64::INFINITY, f64::min);
    (n * 4) as f64 / best / 1e9
}
