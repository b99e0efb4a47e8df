//! Replies to RPC commands through the core's `rpc_t` (kamcmd, jsonrpcs).

use pua_sys::rpc_t;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};

/// An RPC reply being built.
pub struct Reply {
    rpc: *mut rpc_t,
    ctx: *mut c_void,
}

impl Reply {
    /// # Safety
    /// `rpc` and `ctx` as the core passed them to an RPC function.
    pub unsafe fn new(rpc: *mut rpc_t, ctx: *mut c_void) -> Reply {
        Reply { rpc, ctx }
    }

    /// Replies with a struct of named integers.
    pub fn int_struct(&self, fields: &[(&str, i64)]) {
        // SAFETY: rpc_t functions from the core with their documented formats:
        // "{" adds a struct and returns its handle; "d" takes an int.
        unsafe {
            let rpc = &*self.rpc;
            let (Some(add), Some(struct_add)) = (rpc.add, rpc.struct_add) else {
                return;
            };
            let mut handle: *mut c_void = std::ptr::null_mut();
            if add(
                self.ctx,
                c"{".as_ptr() as *mut c_char,
                &mut handle as *mut *mut c_void,
            ) < 0
            {
                return;
            }
            for (name, v) in fields {
                let Ok(n) = CString::new(*name) else { continue };
                struct_add(
                    handle,
                    c"d".as_ptr() as *mut c_char,
                    n.as_ptr(),
                    *v as c_int,
                );
            }
        }
    }

    /// Replies with an error code and message.
    pub fn fault(&self, code: i32, msg: &str) {
        let m = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: rpc fault with a "%s" format and a NUL-terminated string.
        unsafe {
            if let Some(fault) = (*self.rpc).fault {
                fault(self.ctx, code, c"%s".as_ptr() as *mut c_char, m.as_ptr());
            }
        }
    }
}
