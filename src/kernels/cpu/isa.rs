//! Run-time instruction-set dispatch, decided once per process.

use std::sync::OnceLock;

/// Which micro-kernels the CPU kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// `wide` vectors with the compile-time baseline (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// x86-64 AVX2 + FMA intrinsics.
    Avx2Fma,
    /// x86-64 AVX-512F (with AVX2 + FMA): the GEMM micro-kernels on 512-bit registers, the
    /// other kernels as with [`Isa::Avx2Fma`].
    Avx512,
}

impl Isa {
    /// The best instruction set of this CPU. `DDRM_ISA=portable` or `DDRM_ISA=avx2` caps it
    /// (to compare the paths on one machine; a cap above what the CPU has changes nothing).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = std::env::var("DDRM_ISA").unwrap_or_default();
            let best = Isa::available().pop().unwrap_or(Isa::Portable);
            match cap.as_str() {
                "portable" => Isa::Portable,
                "avx2" if best == Isa::Avx512 => Isa::Avx2Fma,
                _ => best,
            }
        })
    }

    /// Whether the AVX2 + FMA kernels may run (true for [`Isa::Avx512`] too).
    pub fn has_avx2(self) -> bool {
        matches!(self, Isa::Avx2Fma | Isa::Avx512)
    }

    /// Whether this CPU can run `self` (no allocation: the kernels assert it on entry).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2Fma.is_available() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma | Isa::Avx512 => false,
        }
    }

    /// All instruction sets this CPU can run (for tests comparing them).
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)] // only x86-64 has a second instruction set
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2Fma);
                if is_x86_feature_detected!("avx512f") {
                    v.push(Isa::Avx512);
                }
            }
        }
        v
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable (wide)",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }
}
