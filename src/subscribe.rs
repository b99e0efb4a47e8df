//! The SUBSCRIBE side in Kamailio: `send_subscribe` for a consumer's
//! `subs_info_t`, tm's completion callback, and `pua_update_contact()`.

use crate::kam::sipmsg::{self, FAKED_REPLY};
use crate::module::state;
use crate::publish::{now, KamHost};
use pua_core::engine::Msg;
use pua_core::guard::ffi;
use pua_core::lm_err;
use pua_core::shm::{str_bytes, str_ptr_bytes};
use pua_core::subscribe::{SubsFlags, INTERNAL_UPDATE_TRUE};
use pua_core::table::{Rec, RecordData};
use pua_sys::{cell, sip_msg, str_, subs_info_t, tmcb_params};
use std::os::raw::c_int;
use std::ptr;

/// `send_subscribe` for a consumer's `subs_info_t`.
///
/// # Safety
/// `subs` must be a valid `subs_info_t` whose strings are null or valid.
pub unsafe fn send_subscribe(subs: &subs_info_t) -> c_int {
    let Some(st) = state() else {
        lm_err!("send_subscribe before the module was initialised");
        return -1;
    };
    let Some(engine) = st.engine.as_ref() else {
        lm_err!("send_subscribe: the module has no engine");
        return -1;
    };
    if subs.pres_uri.is_null() || subs.watcher_uri.is_null() || subs.contact.is_null() {
        lm_err!("send_subscribe: presentity URI, watcher URI and contact are required");
        return -1;
    }
    let opt = |p: *const str_| {
        (!p.is_null())
            .then(|| str_ptr_bytes(p).to_vec())
            .filter(|v| !v.is_empty())
    };
    let t = now();
    let cfg = &engine.cfg;
    let mut intent = RecordData {
        id: str_bytes(&subs.id).to_vec(),
        pres_uri: str_ptr_bytes(subs.pres_uri).to_vec(),
        watcher_uri: Some(str_ptr_bytes(subs.watcher_uri).to_vec()),
        contact: str_ptr_bytes(subs.contact).to_vec(),
        remote_contact: opt(subs.remote_target).unwrap_or_default(),
        outbound_proxy: opt(subs.outbound_proxy),
        event: subs.event,
        extra_headers: opt(subs.extra_headers),
        flag: subs.source_flag,
        cb_param: subs.cb_param as usize,
        ua_flag: pua_core::flags::REQ_OTHER,
        desired_expires: pua_core::publish::desired_expires(subs.expires, t),
        ..Default::default()
    };
    intent.ext.asked =
        pua_core::publish::asked_expires(subs.expires, cfg.default_expires, cfg.min_expires);
    let f = SubsFlags {
        insert: subs.flag & pua_core::flags::INSERT_TYPE != 0,
        internal_update: subs.internal_update_flag == INTERNAL_UPDATE_TRUE,
    };
    engine.send_subscribe(&KamHost, intent, f, cfg.check_remote_contact)
}

/// tm's completion callback of every SUBSCRIBE we send.
pub(crate) unsafe extern "C" fn subs_cback(_t: *mut cell, _type: c_int, ps: *mut tmcb_params) {
    ffi("SUBSCRIBE reply callback", (), || {
        if ps.is_null() {
            return;
        }
        // SAFETY: tm passes valid params; we take the parameter we gave it.
        let (q, msg, code) = unsafe {
            let ps = &mut *ps;
            if ps.param.is_null() || (*ps.param).is_null() {
                lm_err!("SUBSCRIBE reply without its parameter");
                return;
            }
            let q = *ps.param;
            *ps.param = ptr::null_mut();
            (q, ps.rpl, ps.code)
        };
        // SAFETY: the parameter is a request block made by the engine.
        let Some(q) = (unsafe { Rec::from_void(q) }) else {
            return;
        };
        let info = if sipmsg::is_real(msg) {
            // SAFETY: a real reply owned by tm during the callback.
            Some(unsafe { sipmsg::sub_reply_info(msg, code) })
        } else {
            None
        };
        let Some(engine) = state().and_then(|s| s.engine.as_ref()) else {
            lm_err!("SUBSCRIBE reply before the module was initialised");
            return;
        };
        engine.on_sub_reply(
            &KamHost,
            q,
            info.as_ref(),
            Msg(if msg.is_null() { FAKED_REPLY } else { msg }),
        );
    })
}

/// `pua_update_contact()`: 1 when the NOTIFY's dialog was found and its
/// remote target updated, -1 otherwise (with a log line).
///
/// # Safety
/// `msg` must be null, FAKED_REPLY or the request being routed.
pub(crate) unsafe fn update_contact(msg: *mut sip_msg) -> c_int {
    if !sipmsg::is_real(msg) {
        lm_err!("pua_update_contact: no message");
        return -1;
    }
    // SAFETY: the request being routed (caller's contract).
    let Some(d) = (unsafe { sipmsg::request_dialog(msg) }) else {
        lm_err!("pua_update_contact: cannot parse the request");
        return -1;
    };
    let Some(engine) = state().and_then(|s| s.engine.as_ref()) else {
        lm_err!("pua_update_contact: the module is not initialised");
        return -1;
    };
    // The NOTIFY comes from the presentity to the watcher: their bucket first.
    let hint = Some((d.from_uri.as_slice(), d.to_uri.as_slice()));
    engine.update_contact(
        &KamHost,
        hint,
        &d.call_id,
        &d.from_tag,
        &d.to_tag,
        &d.contact,
    )
}
