//! A global allocator that backs large allocations with transparent huge pages.
//!
//! Graph propagation gathers 256-byte embedding rows at random across tables of tens of MiB,
//! and the GEMMs stream matrices of several MiB: with 4 KiB pages most of those accesses miss
//! the TLB. Allocations of at least [`HUGE_MIN`] bytes are aligned to 2 MiB and marked
//! `MADV_HUGEPAGE` before their pages are first touched, so the kernel backs them with 2 MiB
//! pages where it can (`/sys/kernel/mm/transparent_hugepage/enabled` set to `madvise` or
//! `always`). Nothing changes in the results; where huge pages are unavailable the advice is
//! ignored. Smaller allocations go to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes get huge-page advice.
pub const HUGE_MIN: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// The allocator; install it in a binary with `#[global_allocator]`.
pub struct HugePageAlloc;

#[inline]
fn big(layout: &Layout) -> Option<Layout> {
    if layout.size() >= HUGE_MIN {
        Layout::from_size_align(layout.size(), layout.align().max(HUGE_PAGE)).ok()
    } else {
        None
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
// layout, decided by the size alone; the advice does not change what the memory holds.
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
            None => System.alloc(layout),
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
            None => System.alloc_zeroed(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, big(&layout).unwrap_or(layout))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if big(&layout).is_none() && big(&new_layout).is_none() {
            return System.realloc(ptr, layout, new_size);
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
            (HUGE_MIN - 1, 64),
            (HUGE_MIN, 4),
            (HUGE_MIN * 3 + 5, 16),
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = a.alloc_zeroed(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
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
