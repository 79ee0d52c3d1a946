//! Giving the memory the C allocator holds free back to the system.
//!
//! glibc's malloc keeps what was freed in its heaps (one per thread that allocated, so one
//! per runtime worker) and returns a heap's pages only from its top. After a burst of
//! connections the broker's resident memory stays near the burst's peak: a storm of 1,000
//! connections left 85 MiB resident where 13 MiB had been, and one `malloc_trim(0)`
//! brought it back to 20 MiB. `Server::measure_resident_memory` calls
//! [`release_free_memory`] when resident growth beyond the memory budget's count is large.

// The only unsafe code in midge: the declaration of one C function. Calling it is safe.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    /// glibc: releases free memory at the top of each heap and the free pages inside them
    /// (`madvise(MADV_DONTNEED)`), keeping `pad` bytes at the top of the main heap. It
    /// takes each heap's lock itself and has no preconditions; the return value says
    /// whether any memory was released.
    safe fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// Gives the allocator's free memory back to the system where the allocator can (glibc);
/// elsewhere it does nothing. Takes milliseconds for a heap of 100 MiB: call it off the
/// async workers.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    malloc_trim(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed memory no longer counts as resident once released (glibc only).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_heap_memory_goes_back_to_the_system() {
        let rss = || midge_broker::memory::resident_bytes().expect("VmRSS");
        // Small blocks, so they come from a heap rather than from mmap, each written so
        // its pages are resident; one in 16 kept, so the freed ones are holes of some
        // 15 KB that the heap cannot give back from its top.
        let mut blocks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 1000]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(16).map(std::mem::take).collect();
        drop(blocks);
        let before = rss();
        release_free_memory();
        let after = rss();
        assert!(
            after + (24 << 20) < before,
            "resident {before} -> {after} bytes after freeing 60 MB in holes"
        );
        assert_eq!(kept.len(), 4 * 1024);
    }
}
