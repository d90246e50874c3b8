//! The C allocator behind libtorch's CPU tensors, set for passes that allocate large blocks.
//!
//! glibc's malloc maps every block over its mmap threshold (at most 32 MiB) fresh and unmaps it
//! on free, and returns the top of its heap to the system past its trim threshold. A CPU pass
//! allocates and frees activations of tens to hundreds of MiB per layer (64 rows of 425 tokens:
//! a 111 MiB feed-forward block), so every one page-faulted its whole size again: that pass ran
//! 1.25-1.7x slower (BENCHMARKS.md §11, "This stop"). Loading a model on the CPU raises both
//! thresholds to 1 GiB once, so freed activations are reused from the heap. Up to that much freed
//! memory may stay with the process, next to a model that is usually larger.

/// Raises glibc's mmap and trim thresholds (once per process; other platforms: nothing).
pub fn keep_freed_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            const BLOCK: libc::c_int = 1 << 30;
            // SAFETY: mallopt only changes allocator parameters; glibc takes its arena lock.
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, BLOCK) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, BLOCK) == 1
            };
            if !ok {
                tracing::warn!("glibc refused the malloc thresholds; CPU passes may page-fault");
            }
        });
    }
}
