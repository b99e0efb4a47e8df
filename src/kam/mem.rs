//! Kamailio's allocators: shm (visible to every process) behind pua_core's
//! allocator seam, and pkg (process-private) for what consumers pkg_free.

use super::shim;
use pua_core::shm::ShmAllocator;
use pua_sys::str_;
use std::os::raw::c_char;
use std::ptr;

/// `shm_malloc` / `shm_free`.
pub struct KamailioShm;

impl ShmAllocator for KamailioShm {
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: shm_malloc is usable from mod_init on, in every process.
        unsafe { shim::pua_shim_shm_malloc(size) as *mut u8 }
    }
    unsafe fn free(&self, p: *mut u8) {
        shim::pua_shim_shm_free(p.cast());
    }
}

static SHM: KamailioShm = KamailioShm;

/// pua's allocator: a slab over Kamailio's shm (pua_core::slab), created at
/// the first allocation (in a mod_init, before the fork, so every process
/// inherits it).
struct PuaShm;

static SLAB: std::sync::OnceLock<Option<pua_core::slab::Slab>> = std::sync::OnceLock::new();

fn slab() -> Option<&'static pua_core::slab::Slab> {
    SLAB.get_or_init(|| pua_core::slab::Slab::new(&SHM))
        .as_ref()
}

impl ShmAllocator for PuaShm {
    fn alloc(&self, size: usize) -> *mut u8 {
        slab().map_or(std::ptr::null_mut(), |s| s.alloc(size))
    }
    unsafe fn free(&self, p: *mut u8) {
        if let Some(s) = slab() {
            s.free(p);
        }
    }
    fn usable(&self, size: usize) -> usize {
        slab().map_or(size, |s| s.usable(size))
    }
}

static PUA_SHM: PuaShm = PuaShm;

/// Installs pua's allocator in pua_core (at module load, before the fork).
pub fn install() {
    pua_core::shm::set_allocator(&PUA_SHM);
}

/// (bytes kept on pua's free lists, bytes in live blocks).
pub fn slab_usage() -> (u64, u64) {
    slab().map_or((0, 0), |s| s.usage())
}

/// A pkg-allocated `str` whose `s` is also pkg-allocated (NUL-terminated),
/// as rls and other consumers free it: `pkg_free(s->s); pkg_free(s)`.
pub fn pkg_str(bytes: &[u8]) -> Option<*mut str_> {
    // SAFETY: fresh pkg allocations, checked for null, filled in bounds.
    unsafe {
        let s = shim::pua_shim_pkg_malloc(std::mem::size_of::<str_>()) as *mut str_;
        if s.is_null() {
            pua_core::lm_err!("out of pkg memory");
            return None;
        }
        let data = shim::pua_shim_pkg_malloc(bytes.len() + 1) as *mut c_char;
        if data.is_null() {
            shim::pua_shim_pkg_free(s.cast());
            pua_core::lm_err!("out of pkg memory");
            return None;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), data as *mut u8, bytes.len());
        *data.add(bytes.len()) = 0;
        s.write(str_ {
            s: data,
            len: bytes.len() as i32,
        });
        Some(s)
    }
}

/// pkg_malloc of `size` bytes (null when exhausted).
pub fn pkg_alloc(size: usize) -> *mut u8 {
    // SAFETY: plain allocation.
    unsafe { shim::pua_shim_pkg_malloc(size) as *mut u8 }
}

/// pkg_free.
///
/// # Safety
/// `p` from pkg_malloc, not used afterwards.
pub unsafe fn pkg_free<T>(p: *mut T) {
    if !p.is_null() {
        shim::pua_shim_pkg_free(p.cast());
    }
}

/// real_used of Kamailio's shm (for `pua.stats`).
pub fn shm_real_used() -> u64 {
    // SAFETY: reads the allocator's counters.
    unsafe { shim::pua_shim_shm_real_used() as u64 }
}

extern "C" {
    /// libxml2's deallocator (a global function pointer in libxml2).
    static xmlFree: Option<unsafe extern "C" fn(*mut std::os::raw::c_void)>;
}

/// Frees memory that libxml2 allocated (as `xmlFree` in C).
///
/// # Safety
/// `p` null or allocated by libxml2, not used afterwards.
pub unsafe fn xml_free(p: *mut std::os::raw::c_void) {
    if !p.is_null() {
        if let Some(f) = xmlFree {
            f(p);
        }
    }
}
