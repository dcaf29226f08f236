//! The GPU handle: a CUDA context and stream with every kernel module loaded, and the
//! transfers between host and device.

use super::compile::module_ptx;
use super::sources::SOURCES;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Why no GPU can be used on this machine, or `None` when device `ordinal` can be opened.
/// Cheap enough for tests to call before each GPU case.
pub fn unavailable_reason(ordinal: usize) -> Option<String> {
    // SAFETY: only tries to dlopen the driver library by its candidate names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("the CUDA driver library (libcuda) is not installed".into());
    }
    match CudaContext::device_count() {
        Err(e) => Some(format!("the CUDA driver reports no usable device ({e})")),
        Ok(n) if (n as usize) <= ordinal => Some(format!(
            "--device cuda:{ordinal} asked for, but the driver sees {n} device(s)"
        )),
        Ok(_) => None,
    }
}

/// One GPU with the kernels of `kernels/` loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    name: String,
    /// One-element buffers passed where a kernel's optional input is absent.
    pub(super) dummy_f32: CudaSlice<f32>,
    pub(super) dummy_u32: CudaSlice<u32>,
}

impl Gpu {
    /// Open device `ordinal`, compile (or take the prebuilt PTX of) every kernel module and
    /// load it. Fails with a message naming the reason when there is no GPU or no NVRTC.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if let Some(why) = unavailable_reason(ordinal) {
            bail!("--device cuda: {why}");
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("--device cuda: cannot open device {ordinal}: {e}"))?;
        let stream = ctx.default_stream();
        let name = ctx
            .name()
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        if !super::compile::all_prebuilt() {
            if let Some(nvrtc) = super::compile::nvrtc_version() {
                let mut driver = 0;
                // SAFETY: the driver is loaded (a context was just created); writes one int.
                let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
                if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                    if let Some(why) = super::compile::nvrtc_driver_mismatch(nvrtc, driver) {
                        bail!("--device cuda: {why}");
                    }
                }
            }
        }
        let mut funcs = HashMap::new();
        for (module, _, entries) in SOURCES {
            let ptx = module_ptx(module)?;
            let m = ctx
                .load_module(ptx)
                .map_err(|e| anyhow!("loading the PTX of kernels/{module}.cu: {e}"))?;
            for &f in *entries {
                let func = m
                    .load_function(f)
                    .map_err(|e| anyhow!("kernels/{module}.cu has no kernel {f}: {e}"))?;
                funcs.insert(f, func);
            }
        }
        let dummy_f32 = stream.alloc_zeros::<f32>(1).map_err(drv)?;
        let dummy_u32 = stream.alloc_zeros::<u32>(1).map_err(drv)?;
        Ok(Gpu {
            ctx,
            stream,
            funcs,
            name,
            dummy_f32,
            dummy_u32,
        })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream every operation is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait for every queued operation.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv)
    }

    pub(super) fn func(&self, name: &str) -> &CudaFunction {
        self.funcs
            .get(name)
            .unwrap_or_else(|| panic!("kernel {name} is not in kernels/ (sources.rs)"))
    }

    /// Copy a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, h: &[T]) -> Result<CudaSlice<T>> {
        if h.is_empty() {
            // a zero-length allocation is refused by some drivers: keep one element
            // SAFETY: the element is never read (lengths are passed separately).
            return unsafe { self.stream.alloc::<T>(1) }.map_err(drv);
        }
        self.stream.clone_htod(h).map_err(drv)
    }

    /// A zeroed device buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(drv)
    }

    /// Copy a device buffer back to the host (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, d: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(d).map_err(drv)
    }

    /// The context (for callers that create their own streams or events).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

/// A CUDA driver error as an `anyhow` error.
pub(super) fn drv(e: cudarc::driver::DriverError) -> anyhow::Error {
    anyhow!("CUDA: {e}")
}

/// `n` as the `int` a kernel takes.
pub(super) fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).with_context(|| format!("{what} = {n} exceeds the kernels' 32-bit range"))
}
