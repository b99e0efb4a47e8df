//! The consumer API: what `bind_pua` and `bind_libxml_api` hand out, and the
//! body processors of the built-in events. Each function is an `extern "C"`
//! entry point guarded against panics, with the 5.6.3 signature.

use crate::kam::mem;
use crate::module::state;
use pua_core::events::{self, Processor};
use pua_core::guard::ffi;
use pua_core::params::Config;
use pua_core::table::{dialog, RecordData};
use pua_core::{callbacks, lm_err};
use pua_sys::{
    evs_process_body_t, libxml_api_t, list_entry_t, pua_api_t, pua_cb, publ_info, publ_info_t,
    str_, subs_info_t, ua_pres_t, xmlDoc, xmlNode,
};
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;

/// `bind_pua`: fills `pua_api_t` in the 5.6.3 field order.
pub(crate) unsafe extern "C" fn bind_pua(api: *mut pua_api_t) -> c_int {
    ffi("bind_pua", -1, || {
        if api.is_null() {
            lm_err!("bind_pua: invalid parameter value (NULL)");
            return -1;
        }
        // SAFETY: the caller passes its own pua_api_t to fill.
        unsafe {
            api.write(pua_api_t {
                send_subscribe: Some(send_subscribe),
                send_publish: Some(send_publish),
                register_puacb: Some(register_puacb),
                is_dialog: Some(is_dialog),
                get_record_id: Some(get_record_id),
                add_event: Some(add_event),
                get_subs_list: Some(get_subs_list),
            })
        };
        0
    })
}

/// `send_publish`: see `crate::publish` and `pua_core::engine`.
pub(crate) unsafe extern "C" fn send_publish(publ: *mut publ_info_t) -> c_int {
    ffi("send_publish", -1, || {
        if publ.is_null() {
            lm_err!("send_publish: NULL publ_info");
            return -1;
        }
        // SAFETY: a consumer's publ_info_t, valid for the call.
        unsafe { crate::publish::send_publish(&*publ) }
    })
}

/// `send_subscribe`: see `crate::subscribe` and `pua_core::subscribe`.
pub(crate) unsafe extern "C" fn send_subscribe(subs: *mut subs_info_t) -> c_int {
    ffi("send_subscribe", -1, || {
        if subs.is_null() {
            lm_err!("send_subscribe: NULL subs_info");
            return -1;
        }
        // SAFETY: a consumer's subs_info_t, valid for the call.
        unsafe { crate::subscribe::send_subscribe(&*subs) }
    })
}

/// `register_puacb`: 1 on success (as C), E_BUG / E_OUT_OF_MEM otherwise.
pub(crate) unsafe extern "C" fn register_puacb(
    types: c_int,
    f: pua_cb,
    param: *mut c_void,
) -> c_int {
    ffi(
        "register_puacb",
        pua_sys::E_BUG,
        || match callbacks::register(types, f, param) {
            Ok(()) => 1,
            Err(callbacks::RegisterError::OutOfMemory) => pua_sys::E_OUT_OF_MEM,
            Err(_) => pua_sys::E_BUG,
        },
    )
}

/// The lookup key of a consumer's (stack) `ua_pres_t`.
///
/// # Safety
/// `d` must be a valid `ua_pres_t` whose strings are null or valid.
unsafe fn query(d: *mut ua_pres_t) -> Option<RecordData> {
    if d.is_null() {
        lm_err!("NULL dialog");
        return None;
    }
    Some(RecordData::from_record(&*d))
}

/// `is_dialog`: 0 confirmed dialog, 1 temporary, -1 none.
pub(crate) unsafe extern "C" fn is_dialog(d: *mut ua_pres_t) -> c_int {
    ffi("is_dialog", -1, || {
        // SAFETY: consumers pass a valid ua_pres_t.
        let Some(q) = (unsafe { query(d) }) else {
            return -1;
        };
        let Some(t) = state().and_then(|s| s.table) else {
            lm_err!("is_dialog: the module is not initialised");
            return -1;
        };
        match dialog::is_dialog(&t, &q) {
            -1 => match db_dialog(&q) {
                Some(row) if confirmed_row(&row, &q) => 0,
                Some(_) => 1,
                None => -1,
            },
            found => found,
        }
    })
}

/// `get_record_id`: `*rec_id` = pkg str (and pkg `s`) of the dialog's id,
/// or NULL when there is none; 0 on success, -1 on error.
pub(crate) unsafe extern "C" fn get_record_id(d: *mut ua_pres_t, rec_id: *mut *mut str_) -> c_int {
    ffi("get_record_id", -1, || {
        if rec_id.is_null() {
            return -1;
        }
        // SAFETY: valid out-parameter.
        unsafe { *rec_id = ptr::null_mut() };
        // SAFETY: consumers pass a valid ua_pres_t.
        let Some(q) = (unsafe { query(d) }) else {
            return -1;
        };
        let Some(t) = state().and_then(|s| s.table) else {
            lm_err!("get_record_id: the module is not initialised");
            return -1;
        };
        let id = dialog::record_id(&t, &q).or_else(|| db_dialog(&q).map(|row| row.id));
        match id {
            None => 0,
            Some(id) => match mem::pkg_str(&id) {
                Some(s) => {
                    // SAFETY: valid out-parameter.
                    unsafe { *rec_id = s };
                    0
                }
                None => -1,
            },
        }
    })
}

/// `get_subs_list`: a pkg list (rls's list_entry_t) of the presentity URIs
/// subscribed under `did`, sorted; the caller frees nodes and strings.
pub(crate) unsafe extern "C" fn get_subs_list(did: *mut str_) -> *mut list_entry_t {
    ffi("get_subs_list", ptr::null_mut(), || {
        if did.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: a valid str from the caller.
        let did = unsafe { pua_core::shm::str_bytes(&*did) }.to_vec();
        let Some(t) = state().and_then(|s| s.table) else {
            lm_err!("get_subs_list: the module is not initialised");
            return ptr::null_mut();
        };
        let mut uris = dialog::subs_list(&t, &did);
        if let Some(e) = db_engine() {
            uris.extend(e.subs_list_rows(&crate::publish::KamHost, &did));
            uris.sort();
            uris.dedup();
        }
        // Build the list back to front so it ends up sorted.
        let mut head: *mut list_entry_t = ptr::null_mut();
        for uri in uris.iter().rev() {
            let Some(s) = mem::pkg_str(uri) else { break };
            let node = mem::pkg_alloc(std::mem::size_of::<list_entry_t>()) as *mut list_entry_t;
            if node.is_null() {
                // SAFETY: s and s->s from pkg_str.
                unsafe {
                    mem::pkg_free((*s).s);
                    mem::pkg_free(s);
                }
                lm_err!("get_subs_list: out of pkg memory");
                break;
            }
            // SAFETY: fresh node.
            unsafe {
                node.write(list_entry_t {
                    strng: s,
                    next: head,
                })
            };
            head = node;
        }
        head
    })
}

/// `add_event`: 0 on success (also when the event exists), -1 on error.
pub(crate) unsafe extern "C" fn add_event(
    ev_flag: c_int,
    name: *mut c_char,
    content_type: *mut c_char,
    process_body: evs_process_body_t,
) -> c_int {
    ffi("add_event", -1, || {
        if name.is_null() {
            lm_err!("add_event: NULL event name");
            return -1;
        }
        // SAFETY: C strings from the caller.
        let (n, ct) = unsafe {
            (
                CStr::from_ptr(name).to_bytes(),
                (!content_type.is_null()).then(|| CStr::from_ptr(content_type).to_bytes()),
            )
        };
        match events::add(ev_flag, n, ct, process_body) {
            Ok(_) => 0,
            Err(_) => -1,
        }
    })
}

/// Registers the built-in events with our body processors.
pub fn register_builtin_events(cfg: &Config) -> Result<(), String> {
    for (flag, name, ct, proc_) in
        events::builtin_events(cfg.dlginfo_increase_version, cfg.reginfo_increase_version)
    {
        let pb: evs_process_body_t = match proc_ {
            Processor::None => None,
            Processor::Presence => Some(crate::bodies::presence),
            Processor::Dialog => Some(crate::bodies::dialog),
            Processor::DialogVersioned => Some(crate::bodies::dialog_versioned),
            Processor::Bla => Some(crate::bodies::bla),
            Processor::Mwi => Some(crate::bodies::mwi),
            Processor::ReginfoVersioned => Some(crate::bodies::reginfo_versioned),
        };
        events::add(flag, name.as_bytes(), ct.map(str::as_bytes), pb)
            .map_err(|_| format!("cannot add the built-in event {name}"))?;
    }
    Ok(())
}

// The four libxml helpers of `libxml_api_t`.
unsafe extern "C" fn xml_doc_get_node_by_name(
    doc: *mut xmlDoc,
    name: *const c_char,
    ns: *const c_char,
) -> *mut xmlNode {
    // SAFETY: caller's parsed document and C strings.
    ffi("xmlDocGetNodeByName", ptr::null_mut(), || unsafe {
        if name.is_null() {
            return ptr::null_mut();
        }
        pua_core::libxml::doc_node_by_name(doc, name, ns)
    })
}
unsafe extern "C" fn xml_node_get_node_by_name(
    node: *mut xmlNode,
    name: *const c_char,
    ns: *const c_char,
) -> *mut xmlNode {
    // SAFETY: caller's node and C strings.
    ffi("xmlNodeGetNodeByName", ptr::null_mut(), || unsafe {
        if name.is_null() {
            return ptr::null_mut();
        }
        pua_core::libxml::node_by_name(node, name, ns)
    })
}
unsafe extern "C" fn xml_node_get_node_content_by_name(
    root: *mut xmlNode,
    name: *const c_char,
    ns: *const c_char,
) -> *mut c_char {
    // SAFETY: caller's node and C strings.
    ffi("xmlNodeGetNodeContentByName", ptr::null_mut(), || unsafe {
        if name.is_null() {
            return ptr::null_mut();
        }
        pua_core::libxml::node_content_by_name(root, name, ns)
    })
}
unsafe extern "C" fn xml_node_get_attr_content_by_name(
    node: *mut xmlNode,
    name: *const c_char,
) -> *mut c_char {
    // SAFETY: caller's node and C string.
    ffi("xmlNodeGetAttrContentByName", ptr::null_mut(), || unsafe {
        if name.is_null() {
            return ptr::null_mut();
        }
        pua_core::libxml::attr_content_by_name(node, name)
    })
}

/// `bind_libxml_api`: the four helpers over libxml2 nodes.
pub(crate) unsafe extern "C" fn bind_libxml_api(api: *mut libxml_api_t) -> c_int {
    ffi("bind_libxml_api", -1, || {
        if api.is_null() {
            lm_err!("bind_libxml_api: invalid parameter value (NULL)");
            return -1;
        }
        // SAFETY: the caller's struct to fill.
        unsafe {
            api.write(libxml_api_t {
                xmlDocGetNodeByName: Some(xml_doc_get_node_by_name),
                xmlNodeGetNodeByName: Some(xml_node_get_node_by_name),
                xmlNodeGetNodeContentByName: Some(xml_node_get_node_content_by_name),
                xmlNodeGetAttrContentByName: Some(xml_node_get_attr_content_by_name),
            })
        };
        0
    })
}

/// Type check: our processors have the `evs_process_body_t` signature.
#[allow(dead_code)]
const _: [unsafe extern "C" fn(*mut publ_info, *mut *mut str_, c_int, *mut *mut str_) -> c_int; 1] =
    [crate::bodies::presence];

/// The engine when it runs in db_mode 2.
fn db_engine() -> Option<&'static pua_core::engine::Engine> {
    state()
        .and_then(|s| s.engine.as_ref())
        .filter(|e| e.cfg.db_only)
}

/// db_mode 2: the row of the dialog `q` names (Call-ID and From tag; the
/// one with `q`'s To tag first), when the table does not hold it.
fn db_dialog(q: &RecordData) -> Option<RecordData> {
    let e = db_engine()?;
    let mut rows = e.dialog_rows(&crate::publish::KamHost, q);
    if let Some(i) = rows.iter().position(|r| confirmed_row(r, q)) {
        return Some(rows.swap_remove(i));
    }
    rows.into_iter().next()
}

/// A row is the confirmed dialog of `q` (as `dialog::confirmed`).
fn confirmed_row(r: &RecordData, q: &RecordData) -> bool {
    !q.to_tag.is_empty()
        && r.flag & q.flag != 0
        && r.to_tag == q.to_tag
        && r.call_id == q.call_id
        && r.from_tag == q.from_tag
}
