//! Where quantized weights live.
//!
//! Decoding streams every weight once per token, so it is bound by memory bandwidth. A private
//! copy on 2 MiB pages (Linux transparent huge pages, requested with `madvise`) streams faster
//! than candle's 4 KiB-paged allocation: fewer TLB misses and hardware prefetchers that are not
//! stopped at every 4 KiB boundary.

/// An aligned, immutable byte buffer, backed by huge pages where the OS grants them.
pub struct HugeBuf {
    ptr: *mut u8,
    len: usize,
    /// The mapping (or allocation) to release: base and length.
    base: *mut u8,
    map_len: usize,
    mapped: bool,
}

// SAFETY: the buffer is never mutated after construction.
unsafe impl Send for HugeBuf {}
unsafe impl Sync for HugeBuf {}

const HUGE: usize = 2 << 20;
const ALIGN: usize = 64;

impl HugeBuf {
    /// A copy of `data`.
    pub fn copy_of(data: &[u8]) -> Self {
        let len = data.len();
        #[cfg(target_os = "linux")]
        if len >= HUGE {
            // Over-allocate so that the data starts on a 2 MiB boundary.
            let map_len = len.next_multiple_of(HUGE) + HUGE;
            // SAFETY: an anonymous private mapping; checked for failure.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base != libc::MAP_FAILED {
                let base = base as *mut u8;
                let ptr = (base as usize).next_multiple_of(HUGE) as *mut u8;
                // SAFETY: `ptr..ptr+len` lies inside the mapping; advice failures are harmless.
                unsafe {
                    libc::madvise(
                        ptr as *mut libc::c_void,
                        len.next_multiple_of(HUGE),
                        libc::MADV_HUGEPAGE,
                    );
                    std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, len);
                }
                return Self {
                    ptr,
                    len,
                    base,
                    map_len,
                    mapped: true,
                };
            }
        }
        let layout = std::alloc::Layout::from_size_align(len.max(1), ALIGN).expect("layout");
        // SAFETY: non-zero size; checked for failure; filled before use.
        unsafe {
            let ptr = std::alloc::alloc(layout);
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, len);
            Self {
                ptr,
                len,
                base: ptr,
                map_len: len.max(1),
                mapped: false,
            }
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialized bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        if self.mapped {
            #[cfg(target_os = "linux")]
            // SAFETY: the mapping made in `copy_of`.
            unsafe {
                libc::munmap(self.base as *mut libc::c_void, self.map_len);
            }
        } else {
            let layout = std::alloc::Layout::from_size_align(self.map_len, ALIGN).expect("layout");
            // SAFETY: allocated in `copy_of` with this layout.
            unsafe { std::alloc::dealloc(self.base, layout) };
        }
    }
}
