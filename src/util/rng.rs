//! Reproducible randomness: xoshiro256++ seeded through SplitMix64.
//!
//! One scheme for the whole crate. A run derives every stream it needs from the run seed and a
//! stream id (`Rng::stream(seed, id)`), so work split over threads by *data index* (user id,
//! batch id, ...) gives bit-identical results whatever the thread count or schedule.

/// SplitMix64 step: used to expand seeds into xoshiro state.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th value of the counter-based stream `seed`: SplitMix64's output for the state
/// `seed + i·φ`. Every element is computed on its own, in any order, so a GPU kernel
/// (`counter_fill` in `kernels/diffusion.cu`) draws the same stream as [`counter_normal`] and
/// [`counter_uniform`] here.
#[inline]
pub fn counter_u64(seed: u64, i: u64) -> u64 {
    let mut s = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    splitmix64(&mut s)
}

/// A uniform in (0, 1) from the top 24 bits of [`counter_u64`].
#[inline]
pub fn counter_uniform(seed: u64, i: u64) -> f32 {
    ((counter_u64(seed, i) >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// A standard normal from one [`counter_u64`] (Box–Muller on its top and bottom 24 bits).
#[inline]
pub fn counter_normal(seed: u64, i: u64) -> f32 {
    let h = counter_u64(seed, i);
    let u1 = ((h >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0);
    let u2 = ((h & 0xFF_FFFF) as f32 + 0.5) * (1.0 / 16_777_216.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// xoshiro256++ generator (Blackman & Vigna). Not cryptographic; fast and well distributed.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
    cached_normal: Option<f64>,
}

impl Rng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng {
            s,
            cached_normal: None,
        }
    }

    /// An independent stream for `(seed, id)`: the same pair always gives the same stream.
    pub fn stream(seed: u64, id: u64) -> Self {
        let mut sm = seed ^ 0xD1B5_4A32_D192_ED03;
        let a = splitmix64(&mut sm);
        let mut sm2 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ a;
        Rng::new(splitmix64(&mut sm2) ^ a.rotate_left(17))
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift with rejection). `n` must be > 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut m = (self.next_u64() as u128) * (n as u128);
        let mut lo = m as u64;
        if lo < n {
            let t = n.wrapping_neg() % n;
            while lo < t {
                m = (self.next_u64() as u128) * (n as u128);
                lo = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// Uniform `u32` index in `0..n`.
    #[inline]
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform f64 in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform f32 in [0, 1).
    #[inline]
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Standard normal sample (Box–Muller, computed in f64).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.cached_normal.take() {
            return z;
        }
        let (c, s) = self.normal_pair();
        self.cached_normal = Some(s);
        c
    }

    /// Two standard normals from one Box–Muller step: `normal()` returns the first and then
    /// the second (cached).
    #[inline]
    fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        (r * c, r * s)
    }

    /// Fill `out` with N(0, std^2) samples: the values of `out.len()` calls of
    /// [`Self::normal`], drawn a Box–Muller pair at a time.
    pub fn fill_normal(&mut self, out: &mut [f32], std: f32) {
        let rest = match (self.cached_normal.take(), out.split_first_mut()) {
            (Some(z), Some((first, rest))) => {
                *first = (z as f32) * std;
                rest
            }
            (z, _) => {
                self.cached_normal = z;
                out
            }
        };
        let mut pairs = rest.chunks_exact_mut(2);
        for p in &mut pairs {
            let (c, s) = self.normal_pair();
            p[0] = (c as f32) * std;
            p[1] = (s as f32) * std;
        }
        if let [last] = pairs.into_remainder() {
            *last = (self.normal() as f32) * std;
        }
    }

    /// Fill `out` with N(0, std^2) samples in parallel, chunk `k` of 4096 drawn from
    /// `Rng::stream(seed, k)`: deterministic whatever the thread count. The samples come
    /// from the f32 Box–Muller of [`super::normal8`] (the diffusion noise of every training
    /// step), not from [`Self::fill_normal`]'s f64 one.
    pub fn fill_normal_par(out: &mut [f32], std: f32, seed: u64) {
        use rayon::prelude::*;
        out.par_chunks_mut(4096)
            .enumerate()
            .for_each(|(k, c)| super::normal8::fill(&mut Rng::stream(seed, k as u64), c, std));
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.index(i + 1);
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let mut a = Rng::stream(7, 3);
        let mut b = Rng::stream(7, 3);
        let mut c = Rng::stream(7, 4);
        let va: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let vb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let vc: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
    }

    #[test]
    fn below_stays_in_range_and_covers() {
        let mut r = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let x = r.below(7) as usize;
            assert!(x < 7);
            seen[x] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    /// `fill_normal` gives the stream of the element-by-element Box–Muller it replaced
    /// (cosine first, then the cached sine; `sin` and `cos` called separately), across calls of
    /// every parity, the cached value included: the random streams of every run are unchanged.
    #[test]
    fn fill_normal_gives_the_element_by_element_stream() {
        struct Reference(Rng, Option<f64>);
        impl Reference {
            fn normal(&mut self) -> f64 {
                if let Some(z) = self.1.take() {
                    return z;
                }
                let u1 = 1.0 - self.0.uniform();
                let u2 = self.0.uniform();
                let r = (-2.0 * u1.ln()).sqrt();
                let th = std::f64::consts::TAU * u2;
                self.1 = Some(r * th.sin());
                r * th.cos()
            }
        }
        for seed in 0..50u64 {
            let mut want = Reference(Rng::new(seed), None);
            let mut got = Rng::new(seed);
            for len in [0usize, 1, 2, 3, 7, 1, 0, 4096, 5, 64, 33] {
                let mut y = vec![0f32; len];
                got.fill_normal(&mut y, 0.7);
                for v in y {
                    assert_eq!(v.to_bits(), ((want.normal() as f32) * 0.7).to_bits());
                }
                assert_eq!(got.normal().to_bits(), want.normal().to_bits());
            }
        }
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(42);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
