//! Declarations of our C shim (include/pua_shim.c).
use pua_sys::{hdr_field, sip_msg, tm_binds};
use std::os::raw::{c_char, c_int, c_ulong, c_void};

extern "C" {
    pub fn pua_shim_shm_malloc(size: usize) -> *mut c_void;
    pub fn pua_shim_shm_free(p: *mut c_void);
    pub fn pua_shim_pkg_malloc(size: usize) -> *mut c_void;
    pub fn pua_shim_pkg_free(p: *mut c_void);
    pub fn pua_shim_log_enabled(level: c_int) -> c_int;
    pub fn pua_shim_log(level: c_int, prefix: *const c_char, msg: *const c_char);
    pub fn pua_shim_load_tm(tmb: *mut tm_binds) -> c_int;
    pub fn pua_shim_shm_real_used() -> c_ulong;
    pub fn pua_shim_parse_all_headers(msg: *mut sip_msg) -> c_int;
    pub fn pua_shim_parse_expires(hdr: *mut hdr_field) -> c_int;
}
