//! Declarations of our C shim (include/pua_shim.c).
use pua_sys::{hdr_field, sip_msg, str_, tm_binds};
use std::os::raw::{c_char, c_int, c_ulong, c_void};

/// `struct pua_reply_dlg` of pua_shim.h.
#[repr(C)]
#[derive(Default)]
pub struct ReplyDlg {
    pub to_tag: str_,
    pub contact: str_,
    pub record_route: str_,
    pub cseq: u32,
    pub has_cseq: c_int,
}

/// `struct pua_request_dlg` of pua_shim.h.
#[repr(C)]
#[derive(Default)]
pub struct RequestDlg {
    pub call_id: str_,
    pub from_tag: str_,
    pub to_tag: str_,
    pub from_uri: str_,
    pub to_uri: str_,
    pub contact: str_,
}

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
    pub fn pua_shim_reply_dialog(msg: *mut sip_msg, out: *mut ReplyDlg) -> c_int;
    pub fn pua_shim_request_dialog(msg: *mut sip_msg, out: *mut RequestDlg) -> c_int;
    pub fn pua_shim_send_on_dialog(
        tmb: *mut tm_binds,
        method: *mut str_,
        headers: *mut str_,
        body: *mut str_,
        call_id: *mut str_,
        loc_tag: *mut str_,
        rem_tag: *mut str_,
        cseq: u32,
        loc_uri: *mut str_,
        rem_uri: *mut str_,
        rem_target: *mut str_,
        dst_uri: *mut str_,
        route_set: *mut str_,
        cb: *mut c_void,
        cbp: *mut c_void,
    ) -> c_int;
}
