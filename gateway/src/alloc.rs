//! The process allocator: mimalloc, called the way its C API is fast.
//!
//! Rust hands every allocation an alignment. The `mimalloc` crate passes
//! each one to `mi_malloc_aligned`, and mimalloc v3 serves that from its
//! fast path only for blocks up to 1 KiB whose next free block happens to
//! be aligned. Anything larger, or any size whose bin is not a power of
//! two, goes through the generic aligned path and over-allocates: on the
//! proxy path that was 5.7 of 16 allocations per request, ~180
//! instructions each. A plain `mi_malloc` block is aligned the way C's
//! `malloc` must be (16 bytes, `MI_MAX_ALIGN_SIZE`, for any size of at
//! least 16; a smaller block to its size class), so requests whose
//! alignment is at most 16 and at most their size take the plain calls,
//! the rule std's own system allocator uses. Only larger alignments
//! (monoio's cache-padded timer entries) keep the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every `mi_malloc` block of at least this size has.
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator.
pub struct Allocator;

/// True when a plain `mi_malloc` block of `size` bytes satisfies `align`.
#[inline(always)]
fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every method forwards to mimalloc, which returns either null or
// a block of at least the requested size aligned as asked: the plain calls
// only when `plain` holds (malloc's alignment guarantee covers it), the
// aligned calls otherwise. `dealloc` and `realloc` receive only pointers
// this allocator returned, and `mi_free` / `mi_realloc*` accept any
// mimalloc block however it was allocated. Tested below across sizes and
// alignments.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl; mimalloc has no preconditions on sizes.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new
        // block keeps `layout.align()` by the same rule as `alloc`.
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIGNS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 4096];

    fn sizes() -> impl Iterator<Item = usize> {
        (1..=80).chain((81..=2100).step_by(7)).chain([
            4095,
            4096,
            4097,
            65_536,
            65_537,
            1 << 20,
            (1 << 20) + 3,
        ])
    }

    fn check(p: *mut u8, layout: Layout) {
        assert!(!p.is_null(), "{layout:?}");
        assert_eq!(p as usize % layout.align(), 0, "{layout:?} at {p:p}");
    }

    #[test]
    fn every_block_has_the_requested_size_and_alignment() {
        for align in ALIGNS {
            for size in sizes() {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: a non-zero-size layout; the block is written
                // within its size, then freed once with its layout.
                unsafe {
                    let p = Allocator.alloc(layout);
                    check(p, layout);
                    p.write_bytes(0xa5, size);
                    assert_eq!(*p.add(size - 1), 0xa5);
                    Allocator.dealloc(p, layout);
                }
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_after_reuse() {
        for align in ALIGNS {
            for size in sizes() {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: as above; the dirty block is freed first so the
                // zeroed one likely reuses it.
                unsafe {
                    let dirty = Allocator.alloc(layout);
                    check(dirty, layout);
                    dirty.write_bytes(0xff, size);
                    Allocator.dealloc(dirty, layout);
                    let p = Allocator.alloc_zeroed(layout);
                    check(p, layout);
                    let s = std::slice::from_raw_parts(p, size);
                    assert!(s.iter().all(|&b| b == 0), "{layout:?}");
                    Allocator.dealloc(p, layout);
                }
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_and_the_alignment() {
        for align in ALIGNS {
            for (from, to) in [
                (1, 3),
                (8, 17),
                (16, 1500),
                (1000, 1100),
                (1100, 40),
                (4096, 70_000),
                (70_000, 8),
            ] {
                let layout = Layout::from_size_align(from, align).expect("valid layout");
                // SAFETY: the block is filled within its size, resized once,
                // read within the smaller of the sizes, freed with its
                // final layout.
                unsafe {
                    let p = Allocator.alloc(layout);
                    check(p, layout);
                    for i in 0..from {
                        *p.add(i) = i as u8;
                    }
                    let q = Allocator.realloc(p, layout, to);
                    let new = Layout::from_size_align(to, align).expect("valid layout");
                    check(q, new);
                    for i in 0..from.min(to) {
                        assert_eq!(*q.add(i), i as u8, "{layout:?} -> {to}");
                    }
                    Allocator.dealloc(q, new);
                }
            }
        }
    }

    #[test]
    fn the_plain_path_is_taken_only_within_mallocs_guarantee() {
        assert!(plain(1, 1) && plain(8, 8) && plain(16, 16) && plain(16, 4096));
        assert!(!plain(16, 8), "an 8-byte block may be only 8-aligned");
        assert!(!plain(32, 64) && !plain(128, 4096));
    }
}
