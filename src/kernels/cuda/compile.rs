//! Kernel compilation: nvcc's PTX from the build when there is one, otherwise NVRTC at run
//! time. NVRTC needs no GPU, so `compile_all` also checks, on a machine without one, that
//! every kernel compiles.

use super::sources::{ARCH, HEADERS, PREBUILT_PTX, SOURCES};
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
    let src = expand(name, src)?;
    compile_ptx_with_opts(src, opts).map_err(|e| anyhow!("kernels/{name}.cu: {e}"))
}

/// The source with each `#include "NAME"` of a header in [`HEADERS`] replaced by that
/// header's text (NVRTC compiles from memory; nvcc reads the file beside the source). Any
/// other quoted include is an error.
pub fn expand(name: &str, src: &str) -> Result<String> {
    let mut out = String::with_capacity(src.len() + 2048);
    for line in src.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#include \"") {
            let inc = rest.split('"').next().unwrap_or_default();
            let (_, text) = HEADERS
                .iter()
                .find(|h| h.0 == inc)
                .ok_or_else(|| anyhow!("kernels/{name}.cu: unknown header \"{inc}\""))?;
            // a pasted header is part of the main file, where `#pragma once` draws a warning
            for h in text.lines().filter(|l| l.trim() != "#pragma once") {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
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
