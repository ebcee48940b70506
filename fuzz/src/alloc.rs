//! A counting global allocator: the peak of the bytes a thread holds while it decodes one
//! input, so a decoder that allocates far more than its input justifies is caught (a length
//! prefix believed before the bytes it announces arrive).
//!
//! Counts are per thread (tests replay inputs on many threads at once) and only while
//! [`measure`] runs. An allocation that would take a measured thread past [`HARD_CAP`] is
//! refused before it is made: the [`set_over_cap_hook`] hook runs (the fuzzer saves the input
//! and exits) and the process aborts rather than swap the machine to death.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

/// Bytes a measured thread may hold at once before the run is stopped as a crash.
pub const HARD_CAP: usize = 1 << 30;

/// The allocator: the system's, with per-thread counts.
pub struct Counting;

thread_local! {
    /// Whether this thread is being measured.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated minus bytes freed since the measure began (frees of older blocks can
    /// take it below zero).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` seen.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

static OVER_CAP: OnceLock<fn(usize)> = OnceLock::new();

/// Sets what runs when a measured thread asks for more than [`HARD_CAP`] (once per process).
/// It is called with the size of the refused request, with measuring off, and should not
/// return: if it does, the allocation fails and the process aborts.
pub fn set_over_cap_hook(hook: fn(usize)) {
    if OVER_CAP.set(hook).is_err() {
        // Set already (tests start several runs): the first hook stays, which is equivalent.
    }
}

/// Runs `f` and returns its result with the peak number of bytes it held at once on this
/// thread (beyond what the thread held before).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.set(0);
    PEAK.set(0);
    MEASURING.set(true);
    let out = f();
    MEASURING.set(false);
    (out, PEAK.get().max(0) as usize)
}

/// Counts `size` more bytes held; false if that passes the cap (the request is refused).
fn grow(size: usize) -> bool {
    // `try_with`: never touch a thread-local being torn down.
    let measuring = MEASURING.try_with(Cell::get).unwrap_or(false);
    if !measuring {
        return true;
    }
    let live = LIVE.get().saturating_add(size as isize);
    if live > HARD_CAP as isize {
        MEASURING.set(false);
        if let Some(hook) = OVER_CAP.get() {
            hook(size);
        }
        return false;
    }
    LIVE.set(live);
    if live > PEAK.get() {
        PEAK.set(live);
    }
    true
}

fn shrink(size: usize) {
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        LIVE.set(LIVE.get().saturating_sub(size as isize));
    }
}

// SAFETY: every call is passed on to `System` unchanged; the counting only reads and writes
// this thread's own cells and never allocates (the hook runs with measuring off, so its own
// allocations are not counted and cannot recurse into it).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `alloc` is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout` (every block goes through
        // this allocator).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            if !grow(new_size - layout.size()) {
                return std::ptr::null_mut();
            }
        } else {
            shrink(layout.size() - new_size);
        }
        // SAFETY: as for `dealloc`, and `new_size` obeys `realloc`'s contract (the caller's).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_counts_what_was_held_at_once() {
        let ((), peak) = measure(|| {
            let a = vec![1u8; 1 << 20];
            drop(a);
            let b = vec![2u8; 1 << 19];
            std::hint::black_box(&b);
        });
        assert!((1 << 20..(1 << 20) + 4096).contains(&peak), "{peak}");
        // Growing a buffer counts its final size, not the sum of its steps.
        let ((), peak) = measure(|| {
            let mut v = Vec::new();
            for i in 0..(1u32 << 18) {
                v.push(i);
            }
            std::hint::black_box(&v);
        });
        assert!((1 << 20..=1 << 21).contains(&peak), "{peak}");
        // Another thread's allocations are not this one's.
        let ((), peak) = measure(|| {
            std::thread::spawn(|| std::hint::black_box(vec![0u8; 8 << 20]))
                .join()
                .map(drop)
                .expect("the thread ran");
        });
        assert!(peak < 1 << 20, "{peak}");
    }
}
