//! The PUBLISH engine's host in Kamailio: requests go out through tm, the
//! tm callback hands replies to `pua_core::engine`, consumer callbacks get a
//! `ua_pres_t` copy of the request, body processors run in Rust (built-in
//! events) or through C (events added by consumers).

use crate::kam::mem;
use crate::kam::sipmsg::{self, FAKED_REPLY};
use crate::kam::tm::{self, OutOfDialog};
use crate::module::state;
use pua_core::engine::{Host, Msg, Param, SendError};
use pua_core::events::{Event, Processor};
use pua_core::guard::ffi;
use pua_core::shm::{borrowed_str, str_ptr_bytes};
use pua_core::table::{Rec, RecordData};
use pua_core::{callbacks, lm_err};
use pua_sys::{cell, publ_info_t, str_, tmcb_params, ua_pres_t};
use std::os::raw::{c_int, c_void};
use std::ptr;

/// Seconds since the epoch, as Kamailio's records use them: `time(NULL)`
/// (the kernel's coarse clock, read without a system call; measured: the
/// nanosecond clock behind `SystemTime::now` was about 1 us per PUBLISH
/// in a virtual machine).
pub fn now() -> u32 {
    pua_core::local::coarse_secs() as u32
}

/// The host of the engine inside Kamailio.
pub struct KamHost;

impl Host for KamHost {
    fn now(&self) -> u32 {
        now()
    }

    fn send(
        &self,
        param: Param,
        uri: &[u8],
        headers: &[u8],
        body: Option<&[u8]>,
        next_hop: Option<&[u8]>,
    ) -> Result<(), SendError> {
        let st = state().ok_or(SendError)?;
        // The URI and body may be borrowed from the request block: tm has
        // copied them (it builds the request before it sends it) before
        // it hands the block back.
        let r = OutOfDialog {
            method: b"PUBLISH",
            uri,
            headers,
            body,
            next_hop,
        };
        if tm::t_request(&st.tm.0, &r, Some(publ_cback), param.to_void()) {
            Ok(())
        } else {
            Err(SendError)
        }
    }

    fn send_on_dialog(
        &self,
        req: Rec,
        method: &[u8],
        headers: &[u8],
        d: &pua_core::subscribe::DialogSpec,
    ) -> Result<(), SendError> {
        let st = state().ok_or(SendError)?;
        // SAFETY: subs_cback takes back the request block it is given.
        if unsafe {
            tm::send_on_dialog(
                &st.tm.0,
                method,
                headers,
                d,
                Some(crate::subscribe::subs_cback),
                req.as_ptr() as *mut c_void,
            )
        } {
            Ok(())
        } else {
            Err(SendError)
        }
    }

    fn run_callbacks(&self, h: &RecordData, msg: Msg) {
        with_hentity(h, |p| {
            // SAFETY: `p` is a valid ua_pres_t for the call; `msg` is the
            // reply tm handed us (alive during its callback) or FAKED_REPLY.
            unsafe { callbacks::run(p, msg.0) };
        });
    }

    fn faked_reply(&self) -> Msg {
        Msg(FAKED_REPLY)
    }

    fn has_callbacks(&self, flag: i32) -> bool {
        callbacks::any_for(flag)
    }

    fn with_store(&self, f: &mut dyn FnMut(&mut dyn pua_core::persist::Store)) {
        crate::kam::db::with_process_conn(|c| f(c));
    }

    fn process_body(
        &self,
        ev: Event,
        body: &[u8],
        ver: i32,
        tuple: Option<&[u8]>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        match builtin_processor(ev) {
            Some(p) => crate::body_glue::process(p, body, ver, tuple),
            None => foreign_process_body(ev, body, ver, tuple),
        }
    }
}

/// Which built-in processor an event uses (None: a consumer's own).
fn builtin_processor(ev: Event) -> Option<Processor> {
    let Some(pb) = ev.process_body() else {
        return Some(Processor::None);
    };
    let f = pb as usize;
    let ours: [(usize, Processor); 6] = [
        (
            crate::bodies::presence as *const () as usize,
            Processor::Presence,
        ),
        (
            crate::bodies::dialog as *const () as usize,
            Processor::Dialog,
        ),
        (
            crate::bodies::dialog_versioned as *const () as usize,
            Processor::DialogVersioned,
        ),
        (crate::bodies::bla as *const () as usize, Processor::Bla),
        (crate::bodies::mwi as *const () as usize, Processor::Mwi),
        (
            crate::bodies::reginfo_versioned as *const () as usize,
            Processor::ReginfoVersioned,
        ),
    ];
    ours.iter().find(|(p, _)| *p == f).map(|(_, k)| *k)
}

/// Runs a body processor a consumer registered with add_event, with the C
/// contract: 0 = `*final_body` is the input (not ours to free), 1 = a new
/// body (`s` from libxml, freed with xmlFree; the `str` from pkg), and a new
/// tuple id in pkg when the record had none.
fn foreign_process_body(
    ev: Event,
    body: &[u8],
    ver: i32,
    tuple: Option<&[u8]>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let Some(pb) = ev.process_body() else {
        return Ok((body.to_vec(), None));
    };
    let mut b = borrowed_str(body);
    // Only the body is known here; pres_uri points at an empty string
    // rather than NULL, so a processor that reads it does not crash.
    let mut empty = borrowed_str(b"");
    let mut publ = publ_info_t {
        body: &mut b,
        pres_uri: &mut empty,
        event: ev.flag(),
        ..Default::default()
    };
    let mut out: *mut str_ = ptr::null_mut();
    let mut tuple_str = tuple.map(borrowed_str);
    let mut tuple_ptr: *mut str_ = tuple_str
        .as_mut()
        .map_or(ptr::null_mut(), |t| t as *mut str_);
    let had_tuple = !tuple_ptr.is_null();
    // SAFETY: the processor gets valid pointers for the call, as C's send_publish passes them.
    let r = unsafe { pb(&mut publ, &mut out, ver, &mut tuple_ptr) };
    if r < 0 || out.is_null() {
        return Err(format!("the event's body processor failed ({r})"));
    }
    // SAFETY: `out` is valid per the processor's contract; freed as C does.
    let new_body = unsafe { str_ptr_bytes(out) }.to_vec();
    if r > 0 {
        // SAFETY: as above (r > 0: allocated by the processor).
        unsafe {
            mem::xml_free((*out).s as *mut c_void);
            mem::pkg_free(out);
        }
    }
    let mut new_tuple = None;
    if !had_tuple && !tuple_ptr.is_null() {
        // SAFETY: a pkg str made by the processor.
        unsafe {
            new_tuple = Some(str_ptr_bytes(tuple_ptr).to_vec());
            mem::pkg_free((*tuple_ptr).s);
            mem::pkg_free(tuple_ptr);
        }
    }
    Ok((new_body, new_tuple))
}

/// Runs `f` with a stack `ua_pres_t` whose fields point into `d`.
pub fn with_hentity<R>(d: &RecordData, f: impl FnOnce(*mut ua_pres_t) -> R) -> R {
    let s = |v: &Vec<u8>| borrowed_str(v);
    let mut pres_uri = s(&d.pres_uri);
    let mut watcher = d.watcher_uri.as_ref().map(s);
    let mut proxy = d.outbound_proxy.as_ref().map(s);
    let mut body = d.body.as_ref().map(s);
    let mut extra = d.extra_headers.as_ref().map(s);
    let p = |o: &mut Option<str_>| o.as_mut().map_or(ptr::null_mut(), |v| v as *mut str_);
    let mut h = ua_pres_t {
        id: s(&d.id),
        pres_uri: &mut pres_uri,
        event: d.event,
        expires: d.expires,
        desired_expires: d.desired_expires,
        flag: d.flag,
        db_flag: d.db_flag,
        cb_param: d.cb_param as *mut c_void,
        next: ptr::null_mut(),
        ua_flag: d.ua_flag,
        outbound_proxy: p(&mut proxy),
        etag: s(&d.etag),
        tuple_id: s(&d.tuple_id),
        body: p(&mut body),
        content_type: s(&d.content_type),
        watcher_uri: p(&mut watcher),
        call_id: s(&d.call_id),
        to_tag: s(&d.to_tag),
        from_tag: s(&d.from_tag),
        cseq: d.cseq,
        version: d.version,
        extra_headers: p(&mut extra),
        record_route: s(&d.record_route),
        remote_contact: s(&d.remote_contact),
        contact: s(&d.contact),
    };
    f(&mut h)
}

/// tm's completion callback of every PUBLISH we send.
unsafe extern "C" fn publ_cback(_t: *mut cell, _type: c_int, ps: *mut tmcb_params) {
    ffi("PUBLISH reply callback", (), || {
        if ps.is_null() {
            return;
        }
        // SAFETY: tm passes valid params; we take the parameter we gave it.
        let (req, msg, code) = unsafe {
            let ps = &mut *ps;
            if ps.param.is_null() || (*ps.param).is_null() {
                lm_err!("PUBLISH reply without its parameter");
                return;
            }
            let req = *ps.param;
            *ps.param = ptr::null_mut();
            (req, ps.rpl, ps.code)
        };
        // SAFETY: the parameter is one the engine made (Param::to_void).
        let Some(param) = (unsafe { Param::from_void(req) }) else {
            return;
        };
        let engine = state().and_then(|s| s.engine.as_ref());
        if let Some(e) = engine {
            // The record's chain is on its way while the reply is read.
            let chain = match param {
                // SAFETY: the request block is ours until on_reply frees it.
                Param::Block(req) => e.table.bucket_of(unsafe { req.node() }.pres_uri(), None),
                Param::Ticket(v) => Param::ticket_parts(v).0,
            };
            e.table.prefetch(chain);
        }
        let info = if sipmsg::is_real(msg) {
            // Whether consumer callbacks will see the reply (as the engine
            // decides in on_reply): they may read headers Kamailio parsed.
            // A ticket went out because no callback was registered for
            // the publication's flag.
            let for_consumers = match param {
                Param::Block(req) => {
                    // SAFETY: the request block is ours until on_reply frees it.
                    let n = unsafe { req.node() };
                    n.ua_flag == pua_core::flags::REQ_OTHER && callbacks::any_for(n.flag)
                }
                Param::Ticket(_) => false,
            };
            // SAFETY: a real reply owned by tm during the callback.
            Some(unsafe { sipmsg::reply_info_for(msg, code, for_consumers) })
        } else {
            None
        };
        let Some(engine) = engine else {
            lm_err!("PUBLISH reply before the module was initialised");
            return;
        };
        engine.on_reply(
            &KamHost,
            param,
            info.as_ref(),
            Msg(if msg.is_null() { FAKED_REPLY } else { msg }),
        );
    })
}

/// `send_publish` for a consumer's `publ_info_t`.
///
/// # Safety
/// `publ` must be a valid `publ_info_t` whose strings are null or valid.
pub unsafe fn send_publish(publ: &publ_info_t) -> c_int {
    let Some(st) = state() else {
        lm_err!("send_publish before the module was initialised");
        return -1;
    };
    let Some(engine) = st.engine.as_ref() else {
        lm_err!("send_publish: the module has no engine");
        return -1;
    };
    if publ.pres_uri.is_null() {
        lm_err!("send_publish: no presentity URI");
        return -1;
    }
    // The chain's cache line is on its way while the intent is copied.
    let table = &engine.table;
    table.prefetch(table.bucket_of(str_ptr_bytes(publ.pres_uri), None));
    let t = now();
    let cfg = &engine.cfg;
    let asked =
        pua_core::publish::asked_expires(publ.expires, cfg.default_expires, cfg.min_expires);
    // Its strings' capacity is reused: no heap allocation per call for the
    // usual fields.
    static INTENT: pua_core::scratch::Slot<RecordData> = pua_core::scratch::Slot::new();
    pua_core::scratch::with_scratch(&INTENT, |intent| {
        let spare = intent.clear();
        let put = |v: &mut Vec<u8>, s: &[u8]| v.extend_from_slice(s);
        let opt = |p: *const str_| {
            (!p.is_null())
                .then(|| str_ptr_bytes(p))
                .filter(|v| !v.is_empty())
        };
        put(&mut intent.id, pua_core::shm::str_bytes(&publ.id));
        put(&mut intent.pres_uri, str_ptr_bytes(publ.pres_uri));
        intent.event = publ.event;
        intent.flag = publ.source_flag;
        intent.cb_param = publ.cb_param as usize;
        intent.ua_flag = pua_core::flags::REQ_OTHER;
        intent.outbound_proxy = opt(publ.outbound_proxy).map(<[u8]>::to_vec);
        if !publ.etag.is_null() {
            put(&mut intent.etag, str_ptr_bytes(publ.etag));
        }
        if !publ.body.is_null() && !(*publ.body).s.is_null() {
            let mut b = spare.unwrap_or_default();
            put(&mut b, str_ptr_bytes(publ.body));
            intent.body = Some(b);
        }
        put(
            &mut intent.content_type,
            pua_core::shm::str_bytes(&publ.content_type),
        );
        intent.extra_headers = opt(publ.extra_headers).map(<[u8]>::to_vec);
        intent.desired_expires = pua_core::publish::desired_expires(publ.expires, t);
        intent.ext.asked = asked;
        engine.send_publish_in(&KamHost, intent)
    })
}
