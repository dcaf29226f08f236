//! The fused epilogue (bias, activation, activation gradient) applied to a finished region of C.

use super::*;

/// Apply `epi` to the `rows x cols` region of C (row stride `ldc`), once its product is done.
///
/// # Safety
/// `c` must be valid for that region, and no other thread may access it meanwhile.
pub(super) unsafe fn epilogue_region(
    c: *mut f32,
    ldc: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    epi: Epilogue,
) {
    if epi.is_none() {
        return;
    }
    for i in rows {
        let row = std::slice::from_raw_parts_mut(c.add(i * ldc + cols.start), cols.len());
        apply_epilogue(
            row,
            epi_cols(epi, i, ldc, cols.start, cols.end),
            i * ldc + cols.start,
        );
    }
}

/// The epilogue restricted to columns `c0..c1` (the bias slice; `grad_of` keeps its matrix).
/// The epilogue of row `i` of C (row stride `ldc`) restricted to columns `c0..c1` (the bias
/// slice, from the row's table row with `bias_rows`; `grad_of` keeps its matrix).
pub(super) fn epi_cols(epi: Epilogue, i: usize, ldc: usize, c0: usize, c1: usize) -> Epilogue {
    let at = epi.bias_rows.map_or(0, |r| r[i] as usize * ldc);
    Epilogue {
        bias: epi.bias.map(|b| &b[at + c0..at + c1]),
        bias_rows: None,
        ..epi
    }
}

/// Apply the epilogue to `row`, which starts at flat index `at` of C (for `grad_of`).
pub(super) fn apply_epilogue(row: &mut [f32], epi: Epilogue, at: usize) {
    if let Some(b) = epi.bias {
        for (v, &bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    }
    crate::kernels::cpu::elementwise::activate_inplace(row, epi.act);
    if let Some((y, act)) = epi.grad_of {
        crate::kernels::cpu::elementwise::activation_backward_seq(&y[at..at + row.len()], row, act);
    }
}
