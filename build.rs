//! Build script. The CUDA kernels in `kernels/` are plain `.cu` sources; rebuild when they
//! change so that an embedded copy is never stale.
fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
}
