//! Every CPU kernel against a plain scalar reference, on random shapes (including empty,
//! one-element, and sizes that are not multiples of the vector width or tile).

use ddrm::data::{Csr, DuplicatePolicy};
use ddrm::kernels::cpu::elementwise as ew;
use ddrm::kernels::cpu::gemm::{
    gemm_ex, gemm_ex_block_outer, gemm_ex_col_sums, gemm_reference, Act, Epilogue,
};
use ddrm::kernels::cpu::spmm::{spmm, spmm_reference, spmm_with, SparseMatrix};
use ddrm::kernels::cpu::topk::{fused_topk, topk_reference, PackedItems};
use ddrm::kernels::cpu::Isa;
use proptest::prelude::*;

fn vecf(n: usize, scale: f32) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-scale..scale, n)
}

fn close(a: f32, b: f64, abs: f64, rel: f64) -> bool {
    ((a as f64) - b).abs() <= abs + rel * b.abs()
}

/// `C = Xᵀ·dY` (alpha 1, X stored k x m) with the column sums of dY, on AVX-512 and with
/// `threads` threads, against the AVX2 packed GEMM bit for bit: C, the sums, and C again
/// without the sums (random operands from `seed`, an epilogue of bias and `act`).
#[allow(clippy::too_many_arguments)]
fn atb_bits_match_avx2(
    m: usize,
    n: usize,
    k: usize,
    seed: u64,
    threads: usize,
    beta: f32,
    act: Act,
    with_bias: bool,
) -> Result<(), TestCaseError> {
    let mut r = ddrm::util::rng::Rng::new(seed);
    let mut rv = |len: usize| {
        (0..len)
            .map(|_| r.uniform_f32() * 2.0 - 1.0)
            .collect::<Vec<f32>>()
    };
    let (a, b, c0, bias) = (rv(k * m), rv(k * n), rv(m * n), rv(n));
    let epi = Epilogue {
        bias: with_bias.then_some(&bias[..]),
        act,
        ..Epilogue::NONE
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let run = |isa: Isa| {
        let mut c = c0.clone();
        let mut sums = vec![f32::NAN; n];
        pool.install(|| {
            gemm_ex_col_sums(
                isa, true, false, m, n, k, 1.0, &a, &b, beta, &mut c, epi, &mut sums,
            )
        });
        (c, sums)
    };
    let (x, xs) = run(Isa::Avx512);
    let (y, ys) = run(Isa::Avx2Fma);
    prop_assert_eq!(
        bits(&x),
        bits(&y),
        "m{} n{} k{} threads {}",
        m,
        n,
        k,
        threads
    );
    prop_assert_eq!(bits(&xs), bits(&ys), "column sums, m{} n{} k{}", m, n, k);
    let mut z = c0.clone();
    pool.install(|| {
        gemm_ex(
            Isa::Avx512,
            true,
            false,
            m,
            n,
            k,
            1.0,
            &a,
            &b,
            beta,
            &mut z,
            epi,
        )
    });
    prop_assert_eq!(
        bits(&z),
        bits(&y),
        "without column sums, m{} n{} k{}",
        m,
        n,
        k
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn gemm_matches_reference_in_all_transposition_forms(
        m in 0usize..160, n in 0usize..70, k in 0usize..300, ta: bool, tb: bool,
        beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]), seed in 0u64..1000
    ) {
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let a = rv(m * k);
        let b = rv(k * n);
        let c0 = rv(m * n);
        let mut want = c0.clone();
        gemm_reference(ta, tb, m, n, k, 0.7, &a, &b, beta, &mut want);
        for isa in Isa::available() {
            let mut c = c0.clone();
            gemm_ex(isa, ta, tb, m, n, k, 0.7, &a, &b, beta, &mut c, Epilogue::NONE);
            for (x, y) in c.iter().zip(&want) {
                prop_assert!(close(*x, *y as f64, 1e-4, 1e-4), "{:?} m{} n{} k{}: {} vs {}", isa, m, n, k, x, y);
            }
        }
    }

    #[test]
    fn narrow_last_panel_gives_the_bits_of_the_full_width_product(
        m in 1usize..40, full in 1usize..4, extra in 1usize..9, k in 1usize..700, ta: bool,
        tb: bool, beta in prop::sample::select(vec![0.0f32, 1.0]), seed in 0u64..1000
    ) {
        // n = 16 q + (1..8): the last column panel goes through the half-width micro-kernel;
        // its columns must equal, bit for bit, the same columns of a product whose B has 8
        // more columns (a full-width last panel), at every K depth and transposition. (With
        // alpha = 1 and beta 0 or 1, a partial tile's scalar write-back rounds as the full
        // tile's fused one does.)
        let n = 16 * full + extra;
        let wide = n + 8;
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let a = rv(m * k);
        let bw = rv(k * wide);
        let cw0 = rv(m * wide);
        // B (k x n) and C (m x n) as the first n columns of their wide versions
        let col = |x: &[f32], rows: usize, from: usize, to: usize| -> Vec<f32> {
            (0..rows).flat_map(|i| x[i * from..i * from + to].to_vec()).collect()
        };
        let (b, bt_wide, bt) = {
            let b = col(&bw, k, wide, n);
            // transposed storage: row j of Bᵀ holds column j of B
            let t = |src: &[f32], cols: usize| -> Vec<f32> {
                (0..cols).flat_map(|j| (0..k).map(move |p| src[p * cols + j])).collect()
            };
            (b.clone(), t(&bw, wide), t(&b, n))
        };
        let (bn, bwd) = if tb { (bt, bt_wide) } else { (b, bw) };
        for isa in Isa::available() {
            let mut cn = col(&cw0, m, wide, n);
            let mut cw = cw0.clone();
            gemm_ex(isa, ta, tb, m, n, k, 1.0, &a, &bn, beta, &mut cn, Epilogue::NONE);
            gemm_ex(isa, ta, tb, m, wide, k, 1.0, &a, &bwd, beta, &mut cw, Epilogue::NONE);
            let got: Vec<u32> = cn.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = col(&cw, m, wide, n).iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(got, want, "{:?} m{} n{} k{} ta{} tb{}", isa, m, n, k, ta, tb);
        }
    }

    #[test]
    fn gemm_epilogue_adds_bias_then_activates(
        m in 1usize..20, n in 1usize..40, k in 1usize..30, seed in 0u64..1000,
        act in prop::sample::select(vec![Act::None, Act::Relu, Act::Tanh, Act::Sigmoid])
    ) {
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 4.0 - 2.0).collect::<Vec<f32>>();
        let (a, b, bias) = (rv(m * k), rv(k * n), rv(n));
        let mut want = vec![0f32; m * n];
        gemm_reference(false, false, m, n, k, 1.0, &a, &b, 0.0, &mut want);
        for i in 0..m { for j in 0..n {
            let x = want[i * n + j] as f64 + bias[j] as f64;
            want[i * n + j] = match act {
                Act::None => x, Act::Relu => x.max(0.0), Act::Tanh => x.tanh(),
                Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            } as f32;
        }}
        for isa in Isa::available() {
            let mut c = vec![f32::NAN; m * n]; // beta = 0 must not read C
            gemm_ex(isa, false, false, m, n, k, 1.0, &a, &b, 0.0, &mut c, Epilogue { bias: Some(&bias), act, ..Epilogue::NONE });
            for (x, y) in c.iter().zip(&want) {
                prop_assert!(close(*x, *y as f64, 1e-5, 1e-4), "{:?} {:?}: {} vs {}", isa, act, x, y);
            }
        }
    }

    #[test]
    fn gemm_epilogue_bias_rows_add_each_rows_table_row(
        m in 1usize..40, n in 1usize..50, k in 0usize..600, ta: bool, tb: bool, g in 1usize..5,
        seed in 0u64..1000, act in prop::sample::select(vec![Act::None, Act::Tanh, Act::Sigmoid])
    ) {
        // row i of C adds row bias_rows[i] of the table, then the activation: the bits of a
        // plain product followed by those two steps row by row, on every order of the product
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (a, b, table) = (rv(m * k), rv(k * n), rv(g * n));
        let rows: Vec<u32> = (0..m).map(|i| ((i * 7 + seed as usize) % g) as u32).collect();
        for isa in Isa::available() {
            let mut want = vec![0f32; m * n];
            gemm_ex(isa, ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut want, Epilogue::NONE);
            for (i, row) in want.chunks_exact_mut(n).enumerate() {
                let t = &table[rows[i] as usize * n..(rows[i] as usize + 1) * n];
                for (v, x) in row.iter_mut().zip(t) { *v += x; }
                ew::activate_inplace(row, act);
            }
            let mut got = vec![f32::NAN; m * n];
            let epi = Epilogue { bias: Some(&table), bias_rows: Some(&rows), act, grad_of: None };
            gemm_ex(isa, ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut got, epi);
            prop_assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{:?} {:?} m{} n{} k{}", isa, act, m, n, k);
        }
    }

    #[test]
    fn fused_activation_backward_and_col_sums_equal_separate_passes(
        m in 0usize..90, n in 0usize..60, k in 0usize..600, ta: bool, tb: bool, seed in 0u64..1000,
        act in prop::sample::select(vec![Act::None, Act::Relu, Act::Tanh, Act::Sigmoid])
    ) {
        // the fused epilogue (C ⊙ act'(y)) and the column sums of B taken while packing give
        // the same bits as a plain product followed by activation_backward and col_sums
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (a, b, y) = (rv(m * k), rv(k * n), rv(m * n));
        // op(B) as a plain k x n matrix, for the separate column sums
        let opb: Vec<f32> = (0..k * n).map(|i| { let (p, j) = (i / n.max(1), i % n.max(1)); if tb { b[j * k + p] } else { b[p * n + j] } }).collect();
        let mut want_sums = vec![0f32; n];
        ew::col_sums(&opb, n, &mut want_sums);
        for isa in Isa::available() {
            let mut want = vec![0f32; m * n];
            gemm_ex(isa, ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut want, Epilogue::NONE);
            ew::activation_backward(&y, &mut want, act);
            let mut got = vec![f32::NAN; m * n];
            let mut sums = vec![f32::NAN; n];
            gemm_ex_col_sums(isa, ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut got,
                Epilogue { grad_of: Some((&y, act)), ..Epilogue::NONE }, &mut sums);
            prop_assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{:?} {:?} m{} n{} k{}", isa, act, m, n, k);
            prop_assert_eq!(sums.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want_sums.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "sums {:?} m{} n{} k{}", isa, m, n, k);
        }
    }

    #[test]
    fn deep_k_order_equals_block_outer_order(
        m in 1usize..80, n in 1usize..70, k in 257usize..1100, ta: bool, tb: bool, seed in 0u64..1000,
        beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]),
        act in prop::sample::select(vec![Act::None, Act::Tanh])
    ) {
        // K over one block: the deep-K order (C tiles kept across blocks, B packed to full
        // depth) sums the same products in the same order as the block-outer one
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (a, b, c0, bias) = (rv(m * k), rv(k * n), rv(m * n), rv(n));
        let epi = Epilogue { bias: Some(&bias), act, ..Epilogue::NONE };
        for isa in Isa::available() {
            let (mut x, mut y) = (c0.clone(), c0.clone());
            gemm_ex(isa, ta, tb, m, n, k, 0.7, &a, &b, beta, &mut x, epi);
            gemm_ex_block_outer(isa, ta, tb, m, n, k, 0.7, &a, &b, beta, &mut y, epi);
            prop_assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{:?} m{} n{} k{}", isa, m, n, k);
        }
    }

    #[test]
    fn deep_k_transposed_a_packed_on_first_pass_equals_block_outer_order(
        m in 150usize..400, n in 17usize..130, k in 257usize..700, tb: bool, seed in 0u64..1000,
        threads in 1usize..4, beta in prop::sample::select(vec![0.0f32, 1.0])
    ) {
        // dW = Xᵀ·dY shapes in the deep-K order with several B panels per task (many rows:
        // few row blocks per thread): the first B panel's pass packs each A panel it reads
        // and the task's other B panels read that copy; the same products in the same order
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (a, b, c0) = (rv(k * m), rv(k * n), rv(m * n));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for isa in Isa::available() {
            let (mut x, mut y) = (c0.clone(), c0.clone());
            pool.install(|| {
                gemm_ex(isa, true, tb, m, n, k, 0.7, &a, &b, beta, &mut x, Epilogue::NONE);
                gemm_ex_block_outer(isa, true, tb, m, n, k, 0.7, &a, &b, beta, &mut y, Epilogue::NONE);
            });
            prop_assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{:?} m{} n{} k{} threads {}", isa, m, n, k, threads);
        }
    }

    #[test]
    fn avx512_tiles_give_the_bits_of_the_avx2_tiles(
        m in 1usize..160, n in 1usize..200, k in 1usize..1100, ta: bool, tb: bool,
        wide_n: bool, seed in 0u64..1000, threads in 1usize..4,
        alpha in prop::sample::select(vec![1.0f32, 0.7]),
        beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]),
        act in prop::sample::select(vec![Act::None, Act::Tanh])
    ) {
        // the AVX-512 path (6 x 32 tiles over pairs of B panels, 6 x 16 for a lone full
        // panel) forms every element by the same chain of FMAs as the AVX2 6 x 16 tiles, in
        // every order (block-outer, deep-K, task-local B; `wide_n` takes B past deep-K's
        // 1 MiB), with any thread count: the bits must be equal, column sums included
        if !Isa::Avx512.is_available() {
            return Ok(()); // `avx512_availability_is_reported` says so once
        }
        let n = if wide_n { n + 400 } else { n };
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (a, b, c0, bias) = (rv(m * k), rv(k * n), rv(m * n), rv(n));
        let epi = Epilogue { bias: Some(&bias), act, ..Epilogue::NONE };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let run = |isa: Isa, order: usize| {
            let mut c = c0.clone();
            let mut sums = vec![0f32; n];
            pool.install(|| match order {
                0 => gemm_ex_col_sums(isa, ta, tb, m, n, k, alpha, &a, &b, beta, &mut c, epi, &mut sums),
                _ => gemm_ex_block_outer(isa, ta, tb, m, n, k, alpha, &a, &b, beta, &mut c, epi),
            });
            (c, sums)
        };
        for order in 0..2 {
            let (x, xs) = run(Isa::Avx512, order);
            let (y, ys) = run(Isa::Avx2Fma, order);
            prop_assert_eq!(bits(&x), bits(&y), "order {} m{} n{} k{} ta {} tb {}", order, m, n, k, ta, tb);
            prop_assert_eq!(bits(&xs), bits(&ys), "sums, order {}", order);
        }
    }

    #[test]
    fn avx512_in_place_transposed_a_gives_the_bits_of_the_packed_gemm(
        strips in 1usize..12, short in 0usize..3, n in 1usize..120, wide_n: bool,
        k in 257usize..1100, seed in 0u64..1000, threads in 1usize..4,
        beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]),
        act in prop::sample::select(vec![Act::None, Act::Tanh]), with_bias: bool
    ) {
        // dW = Xᵀ·dY (alpha 1, K over one block, rows filling 32-row strips) on AVX-512 reads
        // both operands in place into 32 x 12 tiles of C's columns, strip by strip or (few
        // strips, wide B) all strips per column chunk: every element must be the AVX2 packed
        // GEMM's, column sums included, whatever the thread count
        if !Isa::Avx512.is_available() {
            return Ok(()); // `avx512_availability_is_reported` says so once
        }
        let m = strips * 32 - short;
        let n = if wide_n { n + 300 } else { n };
        atb_bits_match_avx2(m, n, k, seed, threads, beta, act, with_bias)?;
    }

    #[test]
    fn avx512_few_rows_wide_b_transposed_a_gives_the_bits_of_the_packed_gemm(
        m in 1usize..161, n in 384usize..700, k in 257usize..800, seed in 0u64..1000,
        threads in 1usize..4, beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]),
        act in prop::sample::select(vec![Act::None, Act::Tanh]), with_bias: bool
    ) {
        // dW = Xᵀ·dY with at most 160 rows and a wide dY (alpha 1, several K blocks) on
        // AVX-512: dY's rows as vectors of C's rows, X's as broadcasts, the first row tile
        // copying dY's panels for the others and summing its columns; every element must be
        // the AVX2 packed GEMM's, column sums included, whatever the thread count and
        // however the rows split into tiles of 12, 8, 6, 4, 2 and 1, X packed (32 rows on) or
        // read in place
        if !Isa::Avx512.is_available() {
            return Ok(()); // `avx512_availability_is_reported` says so once
        }
        atb_bits_match_avx2(m, n, k, seed, threads, beta, act, with_bias)?;
    }

    #[test]
    fn wide_transposed_a_order_equals_block_outer_order(
        m in 1usize..40, n in 330usize..700, k in 257usize..900, tb: bool, seed in 0u64..1000,
        beta in prop::sample::select(vec![0.0f32, 1.0]),
        act in prop::sample::select(vec![Act::None, Act::Tanh])
    ) {
        // Aᵀ over several K blocks with B too large for deep-K (over 1 MiB packed): the
        // task-local-B order sums the same products in the same order, column sums included
        prop_assume!(n.div_ceil(16) * 16 * k > 1 << 18);
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (a, b, c0, bias) = (rv(m * k), rv(k * n), rv(m * n), rv(n));
        let epi = Epilogue { bias: Some(&bias), act, ..Epilogue::NONE };
        for isa in Isa::available() {
            let (mut x, mut y) = (c0.clone(), c0.clone());
            let mut sums = vec![0f32; n];
            gemm_ex_col_sums(isa, true, tb, m, n, k, 0.7, &a, &b, beta, &mut x, epi, &mut sums);
            gemm_ex_block_outer(isa, true, tb, m, n, k, 0.7, &a, &b, beta, &mut y, epi);
            prop_assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{:?} m{} n{} k{}", isa, m, n, k);
            let mut want = vec![0f32; n];
            for p in 0..k {
                for (j, w) in want.iter_mut().enumerate() {
                    *w += if tb { b[j * k + p] } else { b[p * n + j] };
                }
            }
            prop_assert_eq!(sums.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "sums {:?}", isa);
        }
    }

    #[test]
    fn elementwise_functions_match_scalar_references(x in prop::collection::vec(prop_oneof![-10f32..10.0, -200f32..200.0, -1e-3f32..1e-3], 0..100)) {
        let mut e = x.clone(); ew::exp_inplace(&mut e);
        let mut s = x.clone(); ew::sigmoid_inplace(&mut s);
        let mut t = x.clone(); ew::tanh_inplace(&mut t);
        let mut r = x.clone(); ew::relu_inplace(&mut r);
        for (k, &v) in x.iter().enumerate() {
            let v64 = v as f64;
            let ex = (v.clamp(-87.3f32, 88.3f32) as f64).exp();
            prop_assert!(close(e[k], ex, 1e-37, 3e-7), "exp({}) = {} vs {}", v, e[k], ex);
            let sg = 1.0 / (1.0 + (-v64).exp());
            prop_assert!(close(s[k], sg, 1e-7, 1e-6), "sigmoid({}) = {} vs {}", v, s[k], sg);
            prop_assert!(close(t[k], v64.tanh(), 0.0, 4.0 * f32::EPSILON as f64), "tanh({}) = {} vs {}", v, t[k], v64.tanh());
            prop_assert_eq!(r[k], v.max(0.0));
            let sp = (1.0 + v64.exp()).ln();
            prop_assert!(close(ew::softplus(v), sp, 1e-6, 1e-6), "softplus({})", v);
            prop_assert!(close(ew::log_sigmoid(v), -(1.0 + (-v64).exp()).ln(), 1e-6, 1e-6), "log_sigmoid({})", v);
            prop_assert!(close(ew::sigmoid(v), sg, 1e-7, 1e-6));
        }
        // every instruction set gives the same bits, NaN and infinities included
        let mut xs = x.clone();
        xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, 88.0, -87.0]);
        for op in [ew::Unary::Exp, ew::Unary::Sigmoid, ew::Unary::Tanh] {
            let mut base = xs.clone();
            ew::unary_inplace_with(Isa::Portable, &mut base, op);
            for isa in Isa::available() {
                let mut y = xs.clone();
                ew::unary_inplace_with(isa, &mut y, op);
                prop_assert!(y.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?} on {} differs", op, isa.name());
            }
        }
    }

    #[test]
    fn vector_sigmoid_is_accurate_relative_to_its_value(
        x in prop::collection::vec(prop_oneof![-87f32..87.0, -12f32..12.0, -1e-3f32..1e-3], 1..90)
    ) {
        // the fused exp inside the vector sigmoid (every element, the tail too, every
        // instruction set): within 3 ulp of 1 / (1 + e^-x) relative to its value, tiny
        // outputs of large negative x included
        for isa in Isa::available() {
            let mut s = x.clone();
            ew::unary_inplace_with(isa, &mut s, ew::Unary::Sigmoid);
            for (k, &v) in x.iter().enumerate() {
                let want = 1.0 / (1.0 + (-(v as f64)).exp());
                prop_assert!(close(s[k], want, 0.0, 3.0 * f32::EPSILON as f64), "{}: sigmoid({:e}) = {:e} vs {:e}", isa.name(), v, s[k], want);
            }
        }
    }

    #[test]
    fn tanh_is_accurate_relative_to_its_value_odd_and_bounded(
        x in prop::collection::vec(prop_oneof![-12f32..12.0, -1e-2f32..1e-2, -1e-6f32..1e-6, -1e-30f32..1e-30], 1..90)
    ) {
        // within 4 ulp of tanh relative to its value everywhere, small arguments included
        // (1 - 2 / (e^2x + 1) lost them to cancellation), odd, never beyond ±1; every
        // element the same function (the scalar tail too), on every instruction set
        for isa in Isa::available() {
            let mut t = x.clone();
            ew::unary_inplace_with(isa, &mut t, ew::Unary::Tanh);
            let mut neg: Vec<f32> = x.iter().map(|v| -v).collect();
            ew::unary_inplace_with(isa, &mut neg, ew::Unary::Tanh);
            for (k, &v) in x.iter().enumerate() {
                let want = (v as f64).tanh();
                prop_assert!(close(t[k], want, 0.0, 4.0 * f32::EPSILON as f64), "{}: tanh({:e}) = {:e} vs {:e}", isa.name(), v, t[k], want);
                prop_assert!(t[k].abs() <= 1.0);
                prop_assert_eq!(neg[k].to_bits(), (-t[k]).to_bits(), "tanh(-{}) is not -tanh({})", v, v);
                prop_assert_eq!(t[k].to_bits(), ew::tanh(v).to_bits(), "element {} differs from the scalar", k);
            }
        }
    }

    #[test]
    fn exp_shifted_sum_matches_scalar(x in prop::collection::vec(prop_oneof![-10f32..10.0, -200f32..200.0], 0..70),
        shift in -5f32..5.0) {
        let mut base = x.clone();
        let z = ew::exp_shifted_sum_with(Isa::Portable, &mut base, shift);
        let mut want = 0f64;
        for (k, &v) in x.iter().enumerate() {
            let e = (((v - shift).clamp(-87.3, 88.3)) as f64).exp();
            prop_assert!(close(base[k], e, 1e-37, 3e-7), "exp({} - {}) = {} vs {}", v, shift, base[k], e);
            want += e;
        }
        prop_assert!((z - want).abs() <= 1e-6 * want.abs() + 1e-30, "sum {} vs {}", z, want);
        for isa in Isa::available() {
            let mut y = x.clone();
            let zi = ew::exp_shifted_sum_with(isa, &mut y, shift);
            prop_assert_eq!(zi.to_bits(), z.to_bits(), "sum on {} differs", isa.name());
            prop_assert!(y.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()), "terms on {} differ", isa.name());
        }
    }

    #[test]
    fn activation_backward_matches_scalar(y in vecf(37, 1.0), g in vecf(37, 3.0),
        act in prop::sample::select(vec![Act::None, Act::Relu, Act::Tanh, Act::Sigmoid])) {
        let mut got = g.clone();
        ew::activation_backward(&y, &mut got, act);
        for k in 0..y.len() {
            let want = match act {
                Act::None => g[k], Act::Relu => if y[k] > 0.0 { g[k] } else { 0.0 },
                Act::Tanh => g[k] * (1.0 - y[k] * y[k]), Act::Sigmoid => g[k] * y[k] * (1.0 - y[k]),
            };
            prop_assert!(close(got[k], want as f64, 1e-6, 1e-6));
        }
        // every instruction set gives the same bits, NaN, infinities and signed zeros included
        let mut ys = y.clone();
        ys.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e20, -1e20, 0.5, -0.5]);
        let mut gs = g.clone();
        gs.extend([1.0, 2.0, -3.0, f32::NAN, 4.0, 1e20, -0.0, f32::INFINITY, 7.0]);
        let mut base = gs.clone();
        ew::activation_backward_seq_with(Isa::Portable, &ys, &mut base, act);
        for isa in Isa::available() {
            let mut got = gs.clone();
            ew::activation_backward_seq_with(isa, &ys, &mut got, act);
            prop_assert!(got.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?} on {} differs", act, isa.name());
        }
    }

    #[test]
    fn vector_kernels_match_scalar(n in 0usize..70, d in 0usize..20, seed in 0u64..100) {
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut rv = |len: usize| (0..len).map(|_| r.uniform_f32() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (x, y0) = (rv(n), rv(n));
        let mut y = y0.clone();
        ew::axpy(0.3, &x, &mut y);
        for k in 0..n { prop_assert!(close(y[k], y0[k] as f64 + 0.3 * x[k] as f64, 1e-6, 1e-6)); }
        let dref: f64 = x.iter().zip(&y0).map(|(a, b)| *a as f64 * *b as f64).sum();
        prop_assert!(close(ew::dot(&x, &y0), dref, 1e-5, 1e-5));
        let rows = 5;
        let (a, b) = (rv(rows * d), rv(rows * d));
        let mut out = vec![0f32; rows];
        ew::row_dots(&a, &b, d, &mut out);
        for q in 0..rows {
            let w: f64 = (0..d).map(|p| a[q * d + p] as f64 * b[q * d + p] as f64).sum();
            prop_assert!(close(out[q], w, 1e-5, 1e-5));
        }
        let table = rv(7 * d);
        let ids: Vec<u32> = (0..n as u32).map(|i| (i * 3) % 7).collect();
        let mut g = vec![0f32; n * d];
        ew::gather_rows(&table, d, &ids, &mut g);
        for (q, &id) in ids.iter().enumerate() {
            prop_assert_eq!(&g[q * d..(q + 1) * d], &table[id as usize * d..(id as usize + 1) * d]);
        }
        let mut acc = vec![0f32; 7 * d];
        ew::scatter_add_rows(&mut acc, d, &ids, &g);
        for row in 0..7 {
            let cnt = ids.iter().filter(|&&i| i as usize == row).count() as f64;
            for p in 0..d {
                prop_assert!(close(acc[row * d + p], cnt * table[row * d + p] as f64, 1e-5, 1e-5));
            }
        }
    }

    #[test]
    fn spmm_matches_reference(nr in 0usize..80, nc in 1usize..60, d in prop::sample::select(vec![0usize, 1, 7, 8, 13, 16, 40, 64, 67, 80, 130]), seed in 0u64..1000) {
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut pairs = Vec::new();
        for i in 0..nr { for _ in 0..r.index(6) { pairs.push((i as u32, r.index(nc) as u32)); } }
        let (c, _) = Csr::from_pairs(nr, nc, &pairs, DuplicatePolicy::Drop).unwrap();
        let a = SparseMatrix { n_rows: nr, n_cols: nc, values: (0..c.nnz()).map(|_| r.uniform_f32()).collect(), indptr: c.indptr, indices: c.indices };
        let x: Vec<f32> = (0..nc * d).map(|_| r.uniform_f32() - 0.5).collect();
        let mut got = vec![0f32; nr * d];
        let mut want = vec![0f32; nr * d];
        spmm(&a, &x, d, &mut got);
        spmm_reference(&a, &x, d, &mut want);
        for (g, w) in got.iter().zip(&want) { prop_assert!(close(*g, *w as f64, 1e-5, 1e-5)); }
        // every instruction set gives the same bits (same operations in the same order)
        for isa in Isa::available() {
            let mut other = vec![f32::NAN; nr * d];
            spmm_with(isa, &a, &x, d, &mut other);
            prop_assert!(other.iter().zip(&got).all(|(o, g)| o.to_bits() == g.to_bits()), "{} differs", isa.name());
        }
    }

    /// Fused top-K equals score-all-then-sort, ties broken by lower item id, masks applied.
    #[test]
    fn fused_topk_matches_sort_reference(nq in 0usize..100, ni in 1usize..1200, d in prop::sample::select(vec![1usize, 3, 16, 64]),
        k in 1usize..30, ties: bool, seed in 0u64..1000) {
        let mut r = ddrm::util::rng::Rng::new(seed);
        // integer-valued embeddings create many exact ties
        let mut rv = |len: usize| (0..len).map(|_| if ties { (r.index(3) as f32) - 1.0 } else { r.uniform_f32() - 0.5 }).collect::<Vec<f32>>();
        let q = rv(nq * d);
        let it = rv(ni * d);
        let mut pairs = Vec::new();
        let mut pairs2 = Vec::new();
        for u in 0..nq { for _ in 0..r.index(20) { pairs.push((u as u32, r.index(ni) as u32)); pairs2.push((u as u32, r.index(ni) as u32)); } }
        let m1 = Csr::from_pairs(nq, ni, &pairs, DuplicatePolicy::Drop).unwrap().0;
        let m2 = Csr::from_pairs(nq, ni, &pairs2, DuplicatePolicy::Drop).unwrap().0;
        let rows: Vec<u32> = (0..nq as u32).collect();
        let masks = [m1.view(), m2.view()];
        let want = topk_reference(&q, &it, d, k, &masks, &rows);
        let packed = PackedItems::new(&it, ni, d);
        // exact score (f64) of query u against item i
        let score = |u: usize, i: u32| -> f64 {
            (0..d).map(|p| q[u * d + p] as f64 * it[i as usize * d + p] as f64).sum()
        };
        for isa in Isa::available() {
            let (got, _) = fused_topk(isa, &q, &packed, k, &masks, &rows);
            for u in 0..nq {
                let g: Vec<u32> = got[u * k..(u + 1) * k].iter().copied().filter(|&x| x != u32::MAX).collect();
                if ties {
                    // small integers: every score is exact in f32, so the lists (ties by
                    // lower id) must be the reference's exactly
                    prop_assert_eq!(&g, &want[u], "user {} ({:?})", u, isa);
                } else {
                    // the kernel's FMA and the reference's separate multiply and add can
                    // round two scores a few ulps apart into the other order: the same
                    // length, no masked or repeated item, and the score at every rank
                    // equal to the reference's within rounding
                    prop_assert_eq!(g.len(), want[u].len(), "user {} ({:?})", u, isa);
                    for (r, (&gi, &wi)) in g.iter().zip(&want[u]).enumerate() {
                        prop_assert!(!masks.iter().any(|m| m.contains(u, gi)), "user {}: masked item {}", u, gi);
                        prop_assert!(!g[..r].contains(&gi), "user {}: item {} twice", u, gi);
                        let (sg, sw) = (score(u, gi), score(u, wi));
                        prop_assert!((sg - sw).abs() <= 1e-5 * (1.0 + sw.abs()),
                            "user {} rank {} ({:?}): item {} scores {} against the reference's item {} at {}", u, r, isa, gi, sg, wi, sw);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// spmm_subset: masked rows are the reference's, unmasked rows are untouched; with a
    /// column mask and x zero outside it, the result equals the full spmm bit for bit.
    #[test]
    fn spmm_subset_matches_reference(nr in 1usize..60, nc in 1usize..50, d in prop::sample::select(vec![1usize, 8, 13, 64, 67]), seed in 0u64..1000) {
        use ddrm::kernels::cpu::spmm::spmm_subset;
        let mut r = ddrm::util::rng::Rng::new(seed);
        let mut indptr = vec![0u32];
        let (mut indices, mut values) = (vec![], vec![]);
        for _ in 0..nr {
            for c in 0..nc as u32 {
                if r.uniform_f32() < 0.3 { indices.push(c); values.push(r.uniform_f32() - 0.5); }
            }
            indptr.push(indices.len() as u32);
        }
        let a = SparseMatrix { n_rows: nr, n_cols: nc, indptr, indices, values };
        let rows: Vec<bool> = (0..nr).map(|_| r.uniform_f32() < 0.5).collect();
        let cols: Vec<bool> = (0..nc).map(|_| r.uniform_f32() < 0.4).collect();
        let mut x = vec![0f32; nc * d];
        r.fill_normal(&mut x, 1.0);
        let mut want = vec![0f32; nr * d];
        spmm_reference(&a, &x, d, &mut want);
        let mut got = vec![7f32; nr * d];
        spmm_subset(&a, &x, d, &mut got, Some(&rows), None);
        for i in 0..nr {
            for j in 0..d {
                let (g, w) = (got[i * d + j], want[i * d + j]);
                if rows[i] { prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "row {} col {}: {} vs {}", i, j, g, w); }
                else { prop_assert_eq!(g, 7.0); }
            }
        }
        for c in 0..nc { if !cols[c] { x[c * d..(c + 1) * d].fill(0.0); } }
        let mut full = vec![0f32; nr * d];
        spmm(&a, &x, d, &mut full);
        let mut sub = vec![0f32; nr * d];
        spmm_subset(&a, &x, d, &mut sub, None, Some(&cols));
        prop_assert_eq!(full, sub);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// LightGCN's propagation with the fused SpMM epilogues equals the separate passes (spmm,
    /// then add, then scale) bit for bit: forward on the requested rows, backward everywhere
    /// (with the first product restricted to the gradient's non-zero rows).
    #[test]
    fn fused_propagation_equals_separate_passes(layers in 0usize..4, d in prop::sample::select(vec![1usize, 8, 13, 64]), seed in 0u64..1000, restrict: bool) {
        use ddrm::backends::graph::Graph;
        use ddrm::backends::Model;
        let cfg = ddrm::data::synth::SynthConfig { users: 40, items: 60, interactions: 600, item_exponent: 0.9, user_exponent: 0.6, seed };
        let ds = ddrm::data::Dataset::from_parts(&ddrm::data::synth::generate(&cfg).unwrap()).unwrap();
        let g = Graph::new(&ds);
        let n = g.n_nodes();
        let mut r = ddrm::util::rng::Rng::new(seed);
        let src: Vec<f32> = (0..n * d).map(|_| r.uniform_f32() - 0.5).collect();
        let mask: Vec<bool> = (0..n).map(|_| r.index(3) == 0).collect();
        let mean = 1.0 / (layers + 1) as f32;
        // forward reference
        let (mut want, mut h) = (src.clone(), src.clone());
        for _ in 0..layers {
            let mut y = vec![0f32; n * d];
            spmm(&g.adj, &h, d, &mut y);
            for (w, v) in want.iter_mut().zip(&y) { *w += v; }
            h = y;
        }
        if layers > 0 { want.iter_mut().for_each(|w| *w *= mean); }
        let mut got = vec![f32::NAN; n * d];
        let mut bufs = Vec::new();
        Model::propagate_rows(&[&g], layers, d, &src, &mut got, &mut bufs, restrict.then_some(&mask[..]));
        for v in 0..n {
            if restrict && !mask[v] { continue; }
            for t in 0..d {
                prop_assert_eq!(got[v * d + t].to_bits(), want[v * d + t].to_bits(), "forward row {} col {}", v, t);
            }
        }
        // backward reference: h = g; h = g + Â h (K times); out = h / (K+1)
        let grad: Vec<f32> = (0..n * d).map(|k| if !restrict || mask[k / d] { r.uniform_f32() - 0.5 } else { 0.0 }).collect();
        let mut h = grad.clone();
        for _ in 0..layers {
            let mut y = vec![0f32; n * d];
            spmm(&g.adj, &h, d, &mut y);
            h = grad.iter().zip(&y).map(|(a, b)| a + b).collect();
        }
        if layers > 0 { h.iter_mut().for_each(|w| *w *= mean); }
        let mut back = vec![f32::NAN; n * d];
        Model::propagate_back_from(&[&g], layers, d, &grad, &mut back, &mut bufs, restrict.then_some(&mask[..]));
        prop_assert!(back.iter().zip(&h).all(|(a, b)| a.to_bits() == b.to_bits()), "backward differs");
    }
}

/// Says on the test output when the AVX-512 comparisons had nothing to compare.
#[test]
fn avx512_availability_is_reported() {
    if !Isa::Avx512.is_available() {
        eprintln!("skipped: no AVX-512F on this CPU; the AVX-512 GEMM tiles are not exercised");
    }
    assert_eq!(
        Isa::Avx512.is_available(),
        Isa::available().contains(&Isa::Avx512)
    );
}

/// `Isa::is_available` (the kernels' entry check) agrees with the list the tests iterate.
#[test]
fn isa_availability_agrees() {
    for isa in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
        assert_eq!(
            isa.is_available(),
            Isa::available().contains(&isa),
            "{}",
            isa.name()
        );
    }
    assert!(Isa::detect().is_available());
}

/// Operands too short for the shape are refused with the operand named (the same check serves
/// the CUDA path, which returns it as an error).
#[test]
fn gemm_shape_errors_name_the_operand() {
    use ddrm::kernels::cpu::gemm::shape_error;
    assert_eq!(shape_error((2, 3, 4), (8, 12, 6), Some(3), Some(6)), None);
    assert_eq!(
        shape_error((2, 3, 4), (7, 12, 6), None, None).as_deref(),
        Some("gemm: A has 7 elements, needs 8")
    );
    assert_eq!(
        shape_error((2, 3, 4), (8, 12, 6), Some(2), None).as_deref(),
        Some("gemm: bias has 2 elements, needs 3")
    );
    assert!(shape_error((2, 3, 4), (8, 12, 6), None, Some(5))
        .unwrap()
        .contains("activation output"));
    let r = std::panic::catch_unwind(|| {
        let mut c = vec![0f32; 6];
        ddrm::kernels::cpu::gemm::gemm(
            false, false, 2, 3, 4, 1.0, &[0.0; 8], &[0.0; 11], 0.0, &mut c,
        )
    });
    let msg = r.unwrap_err().downcast::<String>().unwrap();
    assert_eq!(*msg, "gemm: B has 11 elements, needs 12");
}

/// A column id past the gathered matrix is refused by every instruction set's SpMM kernel
/// (the SIMD ones read rows unchecked once their in-loop test passes), whatever the width.
#[test]
fn spmm_refuses_a_column_past_x() {
    for d in [3usize, 8, 16, 64, 80] {
        for isa in Isa::available() {
            // row 1 holds a valid entry, then column 5 of a 3-column matrix
            let a = SparseMatrix {
                n_rows: 2,
                n_cols: 3,
                indptr: vec![0, 1, 3],
                indices: vec![2, 0, 5],
                values: vec![1.0, 0.5, 0.25],
            };
            let x = vec![1f32; 3 * d];
            let r = std::panic::catch_unwind(|| {
                let mut y = vec![0f32; 2 * d];
                spmm_with(isa, &a, &x, d, &mut y);
            });
            let err = r.expect_err(&format!("{} d {d}: accepted column 5", isa.name()));
            let msg = err
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            assert!(msg.contains("out of range"), "{} d {d}: {msg}", isa.name());
        }
    }
}
