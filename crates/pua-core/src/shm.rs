//! The shared-memory allocator seam. In Kamailio it is `shm_malloc`/`shm_free`
//! (installed by the `pua` crate before the fork); in tests it is a
//! `MAP_SHARED` arena (see `testing`), so fork tests exercise the same code.
//!
//! Everything another process reads, or a C consumer may `shm_free`, must come
//! from here. Never put Box, Vec or String in shared memory.

use crate::sys::str_;
use std::os::raw::c_char;
use std::ptr;
use std::sync::OnceLock;

/// An allocator whose memory is visible to every Kamailio process.
pub trait ShmAllocator: Sync {
    /// Allocates `size` bytes aligned to 8, or returns null.
    fn alloc(&self, size: usize) -> *mut u8;
    /// Frees what `alloc` returned; null is ignored.
    ///
    /// # Safety
    /// `p` must come from `alloc` of this allocator and not be freed twice.
    unsafe fn free(&self, p: *mut u8);
    /// The bytes an `alloc(size)` block really has (at least `size`): an
    /// allocator that rounds up to size classes says so, and the caller may
    /// use the slack.
    fn usable(&self, size: usize) -> usize {
        size
    }
}

static ALLOC: OnceLock<&'static dyn ShmAllocator> = OnceLock::new();

/// Installs the allocator once per server (before the fork); later calls are ignored.
pub fn set_allocator(a: &'static dyn ShmAllocator) {
    let _ = ALLOC.set(a);
}

fn allocator() -> &'static dyn ShmAllocator {
    *ALLOC.get().expect("shared-memory allocator not installed")
}

/// Allocates `size` zeroed bytes of shared memory; `None` when it is exhausted.
pub fn alloc_zeroed(size: usize) -> Option<*mut u8> {
    let p = alloc_uninit(size)?;
    // SAFETY: `p` is a fresh allocation of at least `size` bytes.
    unsafe { ptr::write_bytes(p, 0, size) };
    Some(p)
}

/// Allocates `size` bytes of shared memory whose contents are undefined
/// (for a caller that writes all it will read); `None` when it is exhausted.
pub fn alloc_uninit(size: usize) -> Option<*mut u8> {
    let p = allocator().alloc(size.max(1));
    if p.is_null() {
        // Under overload this can happen thousands of times a second: log
        // the 1st, 2nd, 4th, 8th... failure of this process.
        static FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            crate::lm_err!(
                "out of shared memory ({} bytes); {} such failures in this process",
                size,
                n
            );
        }
        return None;
    }
    Some(p)
}

/// The bytes a block from [`alloc_zeroed`]`(size)` really has.
pub fn usable(size: usize) -> usize {
    allocator().usable(size.max(1)).max(size)
}

/// Allocates a zeroed `T` in shared memory.
pub fn alloc_struct<T>() -> Option<*mut T> {
    debug_assert!(std::mem::align_of::<T>() <= 8);
    alloc_zeroed(std::mem::size_of::<T>()).map(|p| p.cast())
}

/// Frees shared memory from [`alloc_zeroed`] / [`alloc_struct`] (null is fine).
///
/// # Safety
/// `p` must come from this module's allocator and must not be used afterwards.
pub unsafe fn free<T>(p: *mut T) {
    if !p.is_null() {
        allocator().free(p.cast());
    }
}

/// The bytes of a Kamailio `str` (empty for a null pointer or negative length).
///
/// # Safety
/// `s.s` must point at `s.len` readable bytes when non-null.
pub unsafe fn str_bytes<'a>(s: &str_) -> &'a [u8] {
    if s.s.is_null() || s.len <= 0 {
        &[]
    } else {
        std::slice::from_raw_parts(s.s as *const u8, s.len as usize)
    }
}

/// The bytes behind an optional `str*`.
///
/// # Safety
/// As [`str_bytes`], and `p` null or valid.
pub unsafe fn str_ptr_bytes<'a>(p: *const str_) -> &'a [u8] {
    if p.is_null() {
        &[]
    } else {
        str_bytes(&*p)
    }
}

/// A `str` pointing at `bytes` (no copy): for handing borrowed data to C.
pub fn borrowed_str(bytes: &[u8]) -> str_ {
    str_ {
        s: bytes.as_ptr() as *mut c_char,
        len: bytes.len() as i32,
    }
}

/// Lays out several strings after a header in one shared-memory block, so a
/// record costs one allocation instead of one per field.
pub struct BlockBuilder {
    total: usize,
}

impl BlockBuilder {
    /// Starts a block whose first `header` bytes hold a struct.
    pub fn new(header: usize) -> Self {
        BlockBuilder {
            total: (header + 7) & !7,
        }
    }
    /// Reserves room for a `str` header plus its bytes; returns its offset.
    pub fn reserve_str(&mut self, len: usize) -> usize {
        let off = self.total;
        self.total += (std::mem::size_of::<str_>() + len + 1 + 7) & !7;
        off
    }
    /// Reserves room for `len` bytes (NUL-terminated); returns their offset.
    pub fn reserve_bytes(&mut self, len: usize) -> usize {
        let off = self.total;
        self.total += (len + 1 + 7) & !7;
        off
    }
    /// Total size of the block.
    pub fn size(&self) -> usize {
        self.total
    }
}

/// Writes `bytes` at `base + off` (NUL-terminated) and returns a `str` to them.
///
/// # Safety
/// `base + off` must have room for `bytes.len() + 1` bytes (see [`BlockBuilder`]).
pub unsafe fn write_bytes_at(base: *mut u8, off: usize, bytes: &[u8]) -> str_ {
    let dst = base.add(off);
    ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
    *dst.add(bytes.len()) = 0;
    str_ {
        s: dst as *mut c_char,
        len: bytes.len() as i32,
    }
}

/// Writes a `str` header followed by `bytes` at `base + off`; returns a `str*`.
///
/// # Safety
/// As [`write_bytes_at`], with room for the header too (see [`BlockBuilder::reserve_str`]).
pub unsafe fn write_str_at(base: *mut u8, off: usize, bytes: &[u8]) -> *mut str_ {
    let hdr = base.add(off) as *mut str_;
    let data_off = off + std::mem::size_of::<str_>();
    hdr.write(write_bytes_at(base, data_off, bytes));
    hdr
}

/// The shm struct behind `slot`, allocated zeroed (and handed to `init`)
/// at first use (normally in mod_init, before the fork). A struct made by
/// a racing caller that lost is freed. `None` when shm is exhausted.
pub fn shared_singleton<T>(
    slot: &std::sync::atomic::AtomicPtr<T>,
    init: impl FnOnce(*mut T),
) -> Option<&'static T> {
    use std::sync::atomic::Ordering;
    let mut h = slot.load(Ordering::Acquire);
    if h.is_null() {
        let p = alloc_struct::<T>()?;
        init(p);
        h = match slot.compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => p,
            Err(existing) => {
                // SAFETY: `p` was never published.
                unsafe { free(p) };
                existing
            }
        };
    }
    // SAFETY: published structs live in shm until their owner's destroy.
    Some(unsafe { &*h })
}

/// Frees a singly linked list of shm nodes.
///
/// # Safety
/// Every node must come from this allocator and be reachable by no one else.
pub unsafe fn free_list<T>(mut p: *mut T, next: impl Fn(*mut T) -> *mut T) {
    while !p.is_null() {
        let n = next(p);
        free(p);
        p = n;
    }
}
