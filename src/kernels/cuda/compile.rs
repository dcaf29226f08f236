//! Kernel compilation: nvcc's PTX from the build when there is one, otherwise NVRTC at run
//! time. NVRTC needs no GPU, so `compile_all` also checks, on a machine without one, that
//! every kernel compiles.

use super::sources::{ARCH, PREBUILT_PTX, SOURCES};
use anyhow::{anyhow, bail, Result};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// Whether the NVRTC library can be loaded (it is looked up by name: put its folder on
/// `LD_LIBRARY_PATH`, e.g. that of the `nvidia-cuda-nvrtc-cu12` wheel).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compile one module's source with NVRTC.
pub fn compile_with_nvrtc(name: &str) -> Result<Ptx> {
    let (_, src, _) = SOURCES
        .iter()
        .find(|s| s.0 == name)
        .ok_or_else(|| anyhow!("no CUDA kernel module named '{name}'"))?;
    if !nvrtc_available() {
        bail!(
            "NVRTC (libnvrtc) was not found: install the CUDA toolkit or the \
             nvidia-cuda-nvrtc-cu12 wheel and put its lib folder on LD_LIBRARY_PATH"
        );
    }
    let opts = CompileOptions {
        arch: Some(ARCH),
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| anyhow!("kernels/{name}.cu: {e}"))
}

/// The PTX of one module: nvcc's from the build, else NVRTC's.
pub fn module_ptx(name: &str) -> Result<Ptx> {
    match PREBUILT_PTX.iter().find(|p| p.0 == name) {
        Some((_, ptx)) => Ok(Ptx::from_src(*ptx)),
        None => compile_with_nvrtc(name),
    }
}

/// Compile every module with NVRTC (whatever the build did), returning each module's name
/// and PTX text.
pub fn compile_all() -> Result<Vec<(&'static str, String)>> {
    SOURCES
        .iter()
        .map(|(name, _, _)| Ok((*name, compile_with_nvrtc(name)?.to_src())))
        .collect()
}
