//! A global allocator that measures, per thread, the peak of bytes allocated during a call.
//!
//! Install it in the binary (`#[global_allocator] static A: Tracking = Tracking;`, as every
//! fuzz target and the smoke test do), then wrap the code under test in [`measure`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts allocations of the current thread while a [`measure`] is running.
#[derive(Debug)]
pub struct Tracking;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static SEEN: Cell<bool> = const { Cell::new(false) };
}

fn record(delta: isize) {
    // `try_with`: allocations during thread teardown find the slots gone; ignore them.
    let _ = ACTIVE.try_with(|active| {
        if active.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
            SEEN.with(|s| s.set(true));
        }
    });
}

// The only `unsafe` of the fuzz crate: a pass-through to the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the peak of bytes it held allocated at once on this
/// thread (what it freed before returning still counts at its peak), or `None` for the peak
/// when [`Tracking`] is not the global allocator.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<usize>) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    SEEN.with(|s| s.set(false));
    ACTIVE.with(|a| a.set(true));
    let out = f();
    ACTIVE.with(|a| a.set(false));
    let peak = PEAK.with(Cell::get).max(0) as usize;
    (out, SEEN.with(Cell::get).then_some(peak))
}
