//! Where a command's kernels run: the CPU (always) or a CUDA GPU (feature `cuda`).
//!
//! The operations with both implementations take a [`Device`] and dispatch once, at the top:
//! full-ranking evaluation (score + mask + top-K) and DDRM inference. Below them, [`ops::Ops`]
//! is the buffer-level interface (GEMM with fused epilogue, gather, noising, the DDRM loss,
//! Adam) with a CPU and a CUDA implementation, over which DDRM's device training step is
//! written once ([`crate::diffusion::ddrm_device`]).

#[cfg(feature = "cuda")]
mod cuda_ops;
pub mod ops;

use anyhow::{bail, Result};

/// A compute device, parsed from `--device cpu|cuda|cuda:N`.
pub enum Device {
    /// The CPU kernels (SIMD + rayon).
    Cpu,
    /// A GPU with the kernels of `kernels/` loaded.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<crate::kernels::cuda::Gpu>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The GPU ordinal of a `--device` value: `None` for `cpu`, `Some(n)` for `cuda` (0) or
/// `cuda:n`; an error naming the value for anything else.
pub fn parse_spec(spec: &str) -> Result<Option<usize>> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(None);
    }
    if s == "cuda" {
        return Ok(Some(0));
    }
    if let Some(n) = s.strip_prefix("cuda:") {
        return match n.parse::<usize>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => bail!("--device '{spec}': the GPU ordinal after 'cuda:' must be a number"),
        };
    }
    bail!("unknown --device '{spec}' (cpu, cuda or cuda:N)")
}

impl Device {
    /// Open the device `spec` names. `cuda` fails with a message naming the reason when this
    /// binary was built without the `cuda` feature, or when there is no driver, no such GPU
    /// or no NVRTC to compile the kernels with.
    pub fn open(spec: &str) -> Result<Device> {
        match parse_spec(spec)? {
            None => Ok(Device::Cpu),
            Some(ordinal) => Self::open_cuda(ordinal),
        }
    }

    #[cfg(feature = "cuda")]
    fn open_cuda(ordinal: usize) -> Result<Device> {
        let gpu = crate::kernels::cuda::Gpu::open(ordinal)?;
        Ok(Device::Cuda(std::sync::Arc::new(gpu)))
    }

    #[cfg(not(feature = "cuda"))]
    fn open_cuda(_ordinal: usize) -> Result<Device> {
        bail!(
            "--device cuda: this ddrm was built without the `cuda` feature \
             (cargo build --release --features cuda)"
        )
    }

    /// "cpu", or "cuda (<GPU name>)".
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            #[cfg(feature = "cuda")]
            Device::Cuda(g) => format!("cuda ({})", g.name()),
        }
    }

    /// Whether this is the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_name_the_bad_value() {
        assert_eq!(parse_spec("cpu").unwrap(), None);
        assert_eq!(parse_spec("CUDA").unwrap(), Some(0));
        assert_eq!(parse_spec("cuda:3").unwrap(), Some(3));
        let e = parse_spec("cuda:x").unwrap_err().to_string();
        assert!(e.contains("'cuda:x'") && e.contains("ordinal"), "{e}");
        let e = parse_spec("tpu").unwrap_err().to_string();
        assert!(e.contains("unknown --device 'tpu'"), "{e}");
        assert!(Device::open("cpu").unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = Device::open("cuda").unwrap_err().to_string();
        assert!(e.contains("built without the `cuda` feature"), "{e}");
    }
}
