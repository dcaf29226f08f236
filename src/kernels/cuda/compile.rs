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

/// The loaded NVRTC's version, `(major, minor)`, or `None` when there is none.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the call writes two ints.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Why NVRTC `nvrtc` (major, minor) cannot serve a driver of CUDA version `driver` (as
/// `cuDriverGetVersion` gives it, e.g. 13000 for 13.0): a newer NVRTC writes PTX of an ISA
/// that the driver refuses to load. `None` when it can.
pub fn nvrtc_driver_mismatch(nvrtc: (i32, i32), driver: i32) -> Option<String> {
    let (major, minor) = nvrtc;
    let (dmaj, dmin) = (driver / 1000, (driver % 1000) / 10);
    ((major, minor) > (dmaj, dmin)).then(|| {
        format!(
            "NVRTC {major}.{minor} writes PTX that this CUDA {dmaj}.{dmin} driver cannot load: \
             put an NVRTC no newer than {dmaj}.{dmin} first on LD_LIBRARY_PATH (or build with \
             nvcc on the PATH, which embeds the PTX)"
        )
    })
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

/// Whether every module has PTX from the build (nvcc), so that NVRTC is not needed.
pub fn all_prebuilt() -> bool {
    SOURCES
        .iter()
        .all(|(name, _, _)| PREBUILT_PTX.iter().any(|p| p.0 == *name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_nvrtc_than_the_driver_is_named() {
        assert_eq!(nvrtc_driver_mismatch((13, 0), 13000), None);
        assert_eq!(nvrtc_driver_mismatch((12, 9), 13000), None);
        let e = nvrtc_driver_mismatch((13, 2), 13000).expect("13.2 > 13.0");
        assert!(
            e.contains("NVRTC 13.2") && e.contains("CUDA 13.0 driver"),
            "{e}"
        );
        assert!(nvrtc_driver_mismatch((12, 9), 12080).is_some());
    }
}
