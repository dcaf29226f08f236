//! Helpers shared by the integration tests (each test file uses a subset).
#![allow(dead_code)]

use proptest::prelude::*;
use std::process::Command;

/// Step of the central finite differences.
pub const H: f64 = 1e-6;

/// An analytic gradient agrees with an f64 central finite difference.
pub fn assert_grad(analytic: f32, fd: f64, what: &str) -> Result<(), TestCaseError> {
    let tol = 5e-4 + 1e-2 * fd.abs();
    prop_assert!(
        (analytic as f64 - fd).abs() <= tol,
        "{}: analytic {} vs finite difference {}",
        what,
        analytic,
        fd
    );
    Ok(())
}

/// Run the `ddrm` binary: (exit code, stdout, stderr).
pub fn ddrm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddrm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
