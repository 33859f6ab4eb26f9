//! Giving memory back after a large message. The allocator keeps what it freed for reuse,
//! so one 64 MiB message would leave the process that much larger for good; after a batch
//! that carried large payloads, mqdb asks it to return what it does not use.

/// Payloads that, together in one batch, are worth a trim afterwards.
pub const LARGE: usize = 1 << 20;

/// Returns the allocator's free memory to the operating system (glibc only; elsewhere the
/// allocator decides).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
