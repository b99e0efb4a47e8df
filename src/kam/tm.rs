//! Sending requests through tm (`t_request`), with a completion callback.

use pua_core::lm_err;
use pua_core::shm::borrowed_str;
use pua_sys::{str_, tm_binds, transaction_cb, uac_req_t};
use std::os::raw::c_void;
use std::ptr;

/// TMCB_LOCAL_COMPLETED (t_hooks.h): final reply of a locally initiated request.
pub const TMCB_LOCAL_COMPLETED: i32 = 1 << 10;

/// A request to send outside any dialog.
pub struct OutOfDialog<'a> {
    pub method: &'a [u8],
    /// Request-URI, To and From (pua uses the presentity URI for all three).
    pub uri: &'a [u8],
    pub headers: &'a [u8],
    pub body: Option<&'a [u8]>,
    pub next_hop: Option<&'a [u8]>,
}

/// Sends `req`; tm calls `cb` with `param` on the final reply (or a local
/// timeout). Returns false when tm refused: `param` was not taken then.
pub fn t_request(
    tm: &tm_binds,
    req: &OutOfDialog<'_>,
    cb: transaction_cb,
    param: *mut c_void,
) -> bool {
    let Some(t_request) = tm.t_request else {
        lm_err!("tm has no t_request");
        return false;
    };
    let mut method = borrowed_str(req.method);
    let mut headers = borrowed_str(req.headers);
    let mut body = req.body.map(borrowed_str);
    let mut ruri = borrowed_str(req.uri);
    let mut to = borrowed_str(req.uri);
    let mut from = borrowed_str(req.uri);
    let mut hop = req.next_hop.filter(|h| !h.is_empty()).map(borrowed_str);
    let mut uac = uac_req_t {
        method: &mut method,
        headers: &mut headers,
        body: body.as_mut().map_or(ptr::null_mut(), |b| b as *mut str_),
        ssock: ptr::null_mut(),
        ssockname: ptr::null_mut(),
        dialog: ptr::null_mut(),
        cb_flags: TMCB_LOCAL_COMPLETED,
        cb,
        cbp: param,
        callid: ptr::null_mut(),
    };
    // SAFETY: every str points at data that lives across the call; tm
    // copies what it keeps (it builds the request buffer before returning).
    let r = unsafe {
        t_request(
            &mut uac,
            &mut ruri,
            &mut to,
            &mut from,
            hop.as_mut().map_or(ptr::null_mut(), |h| h as *mut str_),
        )
    };
    if r < 0 {
        // The caller logs the failure: one line per failed request.
        pua_core::lm_dbg!(
            "tm refused to send {} (t_request returned {})",
            String::from_utf8_lossy(req.method),
            r
        );
        return false;
    }
    true
}

/// Sends `method` on a dialog described by `d` (see pua_shim_send_on_dialog).
/// Returns false when tm refused (then `param` was not taken).
///
/// # Safety
/// `param` must be what `cb` expects to receive back from tm.
pub unsafe fn send_on_dialog(
    tm: &tm_binds,
    method: &[u8],
    headers: &[u8],
    d: &pua_core::subscribe::DialogSpec,
    cb: transaction_cb,
    param: *mut c_void,
) -> bool {
    let s = |v: &[u8]| borrowed_str(v);
    let (mut m, mut h) = (s(method), s(headers));
    let (mut cid, mut lt, mut rt) = (s(&d.call_id), s(&d.loc_tag), s(&d.rem_tag));
    let (mut lu, mut ru, mut tgt) = (s(&d.loc_uri), s(&d.rem_uri), s(&d.rem_target));
    let mut dst = d.dst_uri.as_deref().filter(|v| !v.is_empty()).map(s);
    let mut route = s(&d.route_set);
    let cb_ptr = cb.map_or(ptr::null_mut(), |f| f as *mut c_void);
    // SAFETY: every str points at data that lives across the call; the
    // shim builds the dialog on its stack and tm copies what it keeps.
    let r = unsafe {
        crate::kam::shim::pua_shim_send_on_dialog(
            tm as *const tm_binds as *mut tm_binds,
            &mut m,
            &mut h,
            ptr::null_mut(),
            &mut cid,
            &mut lt,
            &mut rt,
            d.cseq,
            &mut lu,
            &mut ru,
            &mut tgt,
            dst.as_mut().map_or(ptr::null_mut(), |v| v as *mut str_),
            &mut route,
            cb_ptr,
            param,
        )
    };
    if r < 0 {
        pua_core::lm_dbg!(
            "tm refused to send {} (t_uac returned {})",
            String::from_utf8_lossy(method),
            r
        );
        return false;
    }
    true
}
