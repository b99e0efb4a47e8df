//! The body processors of the built-in events, with the C signature
//! `evs_process_body_t`: `*final_body` gets a pkg `str` (and pkg `s`) that
//! send_publish frees; `*tuple` gets a pkg `str` with a new tuple id when
//! the record had none. The XML work is pua_core::bodies.

use crate::kam::mem;
use pua_core::events::Processor;
use pua_core::guard::ffi;
use pua_core::lm_err;
use pua_core::shm::str_ptr_bytes;
use pua_sys::{publ_info, str_};
use std::os::raw::c_int;

/// Runs processor `p` on `publ->body`; see the module doc for the outputs.
///
/// # Safety
/// Arguments as C's send_publish passes them.
unsafe fn run(
    p: Processor,
    publ: *mut publ_info,
    final_body: *mut *mut str_,
    ver: c_int,
    tuple: *mut *mut str_,
) -> c_int {
    if publ.is_null() || final_body.is_null() {
        lm_err!("process_body: NULL argument");
        return -1;
    }
    let body = str_ptr_bytes((*publ).body);
    let stored = if tuple.is_null() || (*tuple).is_null() {
        None
    } else {
        Some(str_ptr_bytes(*tuple))
    };
    let out = match crate::body_glue::process(p, body, ver, stored) {
        Ok(o) => o,
        Err(e) => {
            lm_err!("process_body ({:?}): {}", p, e);
            return -1;
        }
    };
    let Some(b) = mem::pkg_str(&out.0) else {
        return -1;
    };
    *final_body = b;
    if let (Some(new_tuple), false) = (out.1, tuple.is_null()) {
        if (*tuple).is_null() {
            match mem::pkg_str(&new_tuple) {
                Some(t) => *tuple = t,
                None => {
                    mem::pkg_free((*b).s);
                    mem::pkg_free(b);
                    *final_body = std::ptr::null_mut();
                    return -1;
                }
            }
        }
    }
    0
}

macro_rules! processor {
    ($name:ident, $p:expr) => {
        /// A built-in body processor (`evs_process_body_t`).
        pub(crate) unsafe extern "C" fn $name(
            publ: *mut publ_info,
            final_body: *mut *mut str_,
            ver: c_int,
            tuple: *mut *mut str_,
        ) -> c_int {
            // SAFETY: arguments as send_publish passes them.
            ffi(stringify!($name), -1, || unsafe {
                run($p, publ, final_body, ver, tuple)
            })
        }
    };
}

processor!(presence, Processor::Presence);
processor!(dialog, Processor::Dialog);
processor!(dialog_versioned, Processor::DialogVersioned);
processor!(bla, Processor::Bla);
processor!(mwi, Processor::Mwi);
processor!(reginfo_versioned, Processor::ReginfoVersioned);
