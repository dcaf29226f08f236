//! Run-time instruction-set dispatch, decided once per process.

use std::sync::OnceLock;

/// Which micro-kernels the CPU kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// `wide` vectors with the compile-time baseline (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// x86-64 AVX2 + FMA intrinsics.
    Avx2Fma,
}

impl Isa {
    /// The best instruction set of this CPU; `DDRM_ISA=portable` forces the portable path.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var("DDRM_ISA")
                .map(|v| v == "portable")
                .unwrap_or(false)
            {
                return Isa::Portable;
            }
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2Fma;
                }
            }
            Isa::Portable
        })
    }

    /// Whether this CPU can run `self` (no allocation: the kernels assert it on entry).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma => false,
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
            }
        }
        v
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable (wide)",
            Isa::Avx2Fma => "avx2+fma",
        }
    }
}
