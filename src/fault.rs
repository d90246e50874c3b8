//! Fault injection for tests of the failure paths; compiled into debug builds only. Each switch
//! counts down: the next this-many times its place is reached, it panics. Process-wide, so a
//! test that flips one runs alone in its test binary (tests/engine_panic.rs).
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// Forward (encoder) passes.
pub static PANIC_PASSES: AtomicUsize = AtomicUsize::new(0);
/// Decode steps of the running batch.
pub static PANIC_STEPS: AtomicUsize = AtomicUsize::new(0);
/// Prompt registrations on the engine thread.
pub static PANIC_REGISTERS: AtomicUsize = AtomicUsize::new(0);
/// Turns of the batching loop.
pub static PANIC_BATCHER: AtomicUsize = AtomicUsize::new(0);
/// Prompt writes into the prompts folder (on the blocking pool).
pub static PANIC_STORE_WRITES: AtomicUsize = AtomicUsize::new(0);

/// While non-zero, every prompt write into the prompts folder fails with this OS error
/// (errno) after half the temporary file is written: a full disk (ENOSPC) or a read-only one
/// (EROFS) without needing one.
pub static STORE_WRITE_ERRNO: AtomicI32 = AtomicI32::new(0);

/// Whether this pass through `switch`'s place should panic (and counts it down).
pub fn take(switch: &AtomicUsize) -> bool {
    switch
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}
