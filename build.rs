//! Build script. The CUDA kernels in `kernels/` are plain `.cu` sources, embedded in the
//! binary and compiled at run time by NVRTC. With the `cuda` feature on a machine that has
//! `nvcc` (on the PATH, or named by `$NVCC`), they are compiled to PTX here instead, so that
//! a kernel that does not compile fails the build; `src/kernels/cuda/sources.rs` includes the
//! generated `ptx.rs` either way (an empty list without nvcc).
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["topk", "gemm", "spmm", "elementwise", "optim", "diffusion"];

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let have_nvcc = Command::new(&nvcc)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut entries = Vec::new();
    if have_nvcc {
        for k in KERNELS {
            let src = format!("kernels/{k}.cu");
            let ptx = out.join(format!("{k}.ptx"));
            let status = Command::new(&nvcc)
                .args(["-ptx", "-arch=compute_80", "-O3", "-o"])
                .arg(&ptx)
                .arg(&src)
                .status()
                .expect("running nvcc");
            assert!(status.success(), "nvcc failed to compile {src}");
            entries.push(format!(
                "(\"{k}\", include_str!(concat!(env!(\"OUT_DIR\"), \"/{k}.ptx\"))),"
            ));
        }
    } else {
        println!(
            "cargo:warning=nvcc not found: the CUDA kernels will be compiled at run time by NVRTC"
        );
    }
    let code = format!(
        "/// PTX compiled by nvcc at build time (empty when nvcc was not found).\npub const PREBUILT_PTX: &[(&str, &str)] = &[{}];\n",
        entries.join("")
    );
    std::fs::write(out.join("ptx.rs"), code).expect("writing ptx.rs");
}
