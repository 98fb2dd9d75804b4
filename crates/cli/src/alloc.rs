//! The process's allocator settings.
//!
//! glibc's malloc hands every block over 32 MiB to a fresh `mmap` and gives it back to the kernel on `free`.
//! A training step of candle's CPU backend allocates and frees its activations, logits and gradients (blocks of
//! 10-200 MB) every step, so with those defaults the kernel faulted in and zeroed about 4 GB of new pages per
//! Mamba2-130M step (batch 4 × 256: ~1.06M page faults a step) and flushed TLBs when they were unmapped again.
//! Serving large blocks from the heap and never trimming it keeps the pages: ~43k faults a step, and the step
//! ran 1.2-1.35x faster for ~11% more peak resident memory (`coil bench train`, see BENCHMARKS.md). "Never" is
//! a trim threshold of −1: with `i32::MAX` (2 GiB) the Mamba2-130M step (batch 4 × 256) still faulted ~57k pages
//! a step (`perf stat -e page-faults`, 1 step against 3), with −1 no more than the noise between runs.
//!
//! A user who sets any `glibc.malloc.*` tunable in `GLIBC_TUNABLES` keeps their own settings.

/// Applies the settings above where the C library is glibc; elsewhere it does nothing.
pub fn tune_for_large_tensors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc."));
        if !user_tuned {
            // SAFETY: mallopt only changes malloc's parameters; it is called before any thread starts.
            unsafe {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            }
        }
    }
}
