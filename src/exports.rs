//! The C-ABI symbols: what Kamailio's loader reads (module_version,
//! module_flags, module_interface_ver, exports, mod_register) and what the
//! exports point to (cmds, params, RPC, KEMI, timers). All entry points run
//! inside `pua_core::guard::ffi`.

use crate::kam::rpc::Reply;
use crate::kam::CCell;
use crate::{api, module, params};
use pua_core::guard::{ffi, install_panic_hook};
use pua_core::{lm_crit, lm_dbg, lm_err};
use pua_sys::abi::{MODULE_FLAGS, MODULE_VERSION};
use pua_sys::{
    cmd_export_t, cmd_function, module_exports, param_export_t, rpc_export_t, rpc_t, sip_msg,
    sr_kemi_t, str_,
};
use std::os::raw::{c_char, c_int, c_uint, c_void};
use std::ptr;

/// The core's version string; the loader strcmp's it with its own.
#[no_mangle]
pub static module_version: CCell<*const c_char> =
    CCell::new(MODULE_VERSION.as_ptr() as *const c_char);
/// The core's compile flags; the loader strcmp's them with its own.
#[no_mangle]
pub static module_flags: CCell<*const c_char> = CCell::new(MODULE_FLAGS.as_ptr() as *const c_char);
/// MODULE_INTERFACE_VER.
#[no_mangle]
pub static module_interface_ver: CCell<c_uint> = CCell::new(pua_sys::MODULE_INTERFACE_VER);

const fn cstr(s: &'static std::ffi::CStr) -> *mut c_char {
    s.as_ptr() as *mut c_char
}

// Config-script functions and the bind functions consumers find with
// find_export("bind_pua", 1, 0): same names, param_no and flags as 5.6.3.
type BindPua = unsafe extern "C" fn(*mut pua_sys::pua_api_t) -> c_int;
type BindXml = unsafe extern "C" fn(*mut pua_sys::libxml_api_t) -> c_int;
type CmdFn = unsafe extern "C" fn(*mut sip_msg, *mut c_char, *mut c_char) -> c_int;

const fn as_cmd_bind_pua(f: BindPua) -> cmd_function {
    // SAFETY: Kamailio stores bind functions as cmd_function and consumers
    // cast the pointer back to bind_pua_t before calling it (as in C).
    Some(unsafe { std::mem::transmute::<BindPua, CmdFn>(f) })
}
const fn as_cmd_bind_xml(f: BindXml) -> cmd_function {
    // SAFETY: as above, with bind_libxml_t.
    Some(unsafe { std::mem::transmute::<BindXml, CmdFn>(f) })
}

const fn cmd(
    name: &'static std::ffi::CStr,
    f: cmd_function,
    param_no: c_int,
    flags: u32,
) -> cmd_export_t {
    cmd_export_t {
        name: cstr(name),
        function: f,
        param_no,
        fixup: None,
        free_fixup: None,
        flags,
    }
}

static CMDS: CCell<[cmd_export_t; 4]> = CCell::new([
    cmd(
        c"pua_update_contact",
        Some(w_pua_update_contact),
        0,
        pua_sys::REQUEST_ROUTE,
    ),
    cmd(
        c"bind_libxml_api",
        as_cmd_bind_xml(api::bind_libxml_api),
        1,
        0,
    ),
    cmd(c"bind_pua", as_cmd_bind_pua(api::bind_pua), 1, 0),
    cmd_export_t {
        name: ptr::null_mut(),
        function: None,
        param_no: 0,
        fixup: None,
        free_fixup: None,
        flags: 0,
    },
]);

const fn param(name: &'static std::ffi::CStr, ty: u32, p: *mut c_void) -> param_export_t {
    param_export_t {
        name: cstr(name),
        type_: ty,
        param_pointer: p,
    }
}
const INT: u32 = pua_sys::INT_PARAM;
const STR: u32 = pua_sys::PARAM_STR;

static PARAMS: CCell<[param_export_t; 14]> = CCell::new([
    param(c"hash_size", INT, params::HASH_SIZE.get() as *mut c_void),
    param(c"db_url", STR, params::DB_URL.get() as *mut c_void),
    param(c"db_table", STR, params::DB_TABLE.get() as *mut c_void),
    param(
        c"min_expires",
        INT,
        params::MIN_EXPIRES.get() as *mut c_void,
    ),
    param(
        c"default_expires",
        INT,
        params::DEFAULT_EXPIRES.get() as *mut c_void,
    ),
    param(
        c"update_period",
        INT,
        params::UPDATE_PERIOD.get() as *mut c_void,
    ),
    param(
        c"outbound_proxy",
        STR,
        params::OUTBOUND_PROXY.get() as *mut c_void,
    ),
    param(
        c"dlginfo_increase_version",
        INT,
        params::DLGINFO_INCREASE_VERSION.get() as *mut c_void,
    ),
    param(
        c"reginfo_increase_version",
        INT,
        params::REGINFO_INCREASE_VERSION.get() as *mut c_void,
    ),
    param(
        c"check_remote_contact",
        INT,
        params::CHECK_REMOTE_CONTACT.get() as *mut c_void,
    ),
    param(c"db_mode", INT, params::DB_MODE.get() as *mut c_void),
    param(c"fetch_rows", INT, params::FETCH_ROWS.get() as *mut c_void),
    param(
        c"db_table_lock_write",
        INT,
        params::DB_TABLE_LOCK_WRITE.get() as *mut c_void,
    ),
    param_export_t {
        name: ptr::null_mut(),
        type_: 0,
        param_pointer: ptr::null_mut(),
    },
]);

/// The module's exports, as 5.6.3's `struct module_exports`.
#[no_mangle]
pub static exports: CCell<module_exports> = CCell::new(module_exports {
    name: cstr(c"pua"),
    dlflags: pua_sys::DEFAULT_DLFLAGS,
    cmds: CMDS.get() as *mut cmd_export_t,
    params: PARAMS.get() as *mut param_export_t,
    // RPC commands are registered in mod_init with rpc_register_array, as C.
    rpc_methods: ptr::null_mut(),
    pv_items: ptr::null_mut(),
    response_f: None,
    init_mod_f: Some(mod_init),
    init_child_f: Some(child_init),
    destroy_mod_f: Some(mod_destroy),
});

/// Called by the loader right after dlopen, before the config is parsed:
/// install the logger, the shm allocator and the panic hook, register KEMI.
///
/// # Safety
/// Called by Kamailio's module loader only.
#[no_mangle]
pub unsafe extern "C" fn mod_register(
    _path: *mut c_char,
    _dlflags: *mut c_int,
    _p1: *mut c_void,
    _p2: *mut c_void,
) -> c_int {
    crate::kam::log::install();
    crate::kam::mem::install();
    install_panic_hook();
    ffi("mod_register", -1, || {
        // SAFETY: a static, NUL-terminated KEMI table that lives forever.
        if unsafe { pua_sys::sr_kemi_modules_add(KEMI.get() as *mut sr_kemi_t) } < 0 {
            lm_err!("cannot register the KEMI exports");
            return -1;
        }
        0
    })
}

unsafe extern "C" fn mod_init() -> c_int {
    ffi("mod_init", -1, || match module::init() {
        Ok(()) => 0,
        Err(e) => {
            lm_err!("{}", e);
            -1
        }
    })
}

unsafe extern "C" fn child_init(rank: c_int) -> c_int {
    ffi("child_init", -1, || match module::child_init(rank) {
        Ok(()) => 0,
        Err(e) => {
            lm_err!("{}", e);
            -1
        }
    })
}

unsafe extern "C" fn mod_destroy() {
    ffi("destroy", (), module::destroy)
}

/// `pua_update_contact()` from the config script.
unsafe extern "C" fn w_pua_update_contact(
    msg: *mut sip_msg,
    _a: *mut c_char,
    _b: *mut c_char,
) -> c_int {
    ffi("pua_update_contact", -1, || update_contact(msg))
}

/// `KSR.pua.pua_update_contact()`.
unsafe extern "C" fn ki_pua_update_contact(msg: *mut sip_msg) -> c_int {
    ffi("pua_update_contact", -1, || update_contact(msg))
}

fn update_contact(msg: *mut sip_msg) -> c_int {
    // SAFETY: Kamailio passes the request being routed.
    unsafe { crate::subscribe::update_contact(msg) }
}

const fn s(b: &'static str) -> str_ {
    str_ {
        s: b.as_ptr() as *mut c_char,
        len: b.len() as c_int,
    }
}

static KEMI: CCell<[sr_kemi_t; 2]> = CCell::new([
    sr_kemi_t {
        mname: s("pua"),
        fname: s("pua_update_contact"),
        rtype: pua_sys::SR_KEMIP_INT as c_int,
        func: ki_pua_update_contact as *mut c_void,
        ptypes: [pua_sys::SR_KEMIP_NONE as c_int; 6],
    },
    sr_kemi_t {
        mname: str_ {
            s: ptr::null_mut(),
            len: 0,
        },
        fname: str_ {
            s: ptr::null_mut(),
            len: 0,
        },
        rtype: 0,
        func: ptr::null_mut(),
        ptypes: [0; 6],
    },
]);

// ---- RPC ----

static CLEANUP_DOC: CCell<[*const c_char; 2]> = CCell::new([
    c"Execute pua cleanup: drop expired records, refresh those about to expire.".as_ptr(),
    ptr::null(),
]);
static STATS_DOC: CCell<[*const c_char; 2]> = CCell::new([
    c"pua statistics: records, buckets, events, callbacks, shm in use.".as_ptr(),
    ptr::null(),
]);

static RPC: CCell<[rpc_export_t; 3]> = CCell::new([
    rpc_export_t {
        name: c"pua.cleanup".as_ptr(),
        function: Some(rpc_cleanup),
        doc_str: CLEANUP_DOC.get() as *mut *const c_char,
        flags: 0,
    },
    rpc_export_t {
        name: c"pua.stats".as_ptr(),
        function: Some(rpc_stats),
        doc_str: STATS_DOC.get() as *mut *const c_char,
        flags: 0,
    },
    rpc_export_t {
        name: ptr::null(),
        function: None,
        doc_str: ptr::null_mut(),
        flags: 0,
    },
]);

/// Registers `pua.cleanup` and `pua.stats` (mod_init).
pub fn register_rpc() -> Result<(), String> {
    // SAFETY: a static NUL-terminated RPC table that lives forever.
    if unsafe { pua_sys::rpc_register_array(RPC.get() as *mut rpc_export_t) } != 0 {
        return Err("failed to register the RPC commands".into());
    }
    Ok(())
}

unsafe extern "C" fn rpc_cleanup(rpc: *mut rpc_t, ctx: *mut c_void) {
    ffi("pua.cleanup", (), || {
        let st = module::cleanup();
        lm_dbg!("pua.cleanup: {:?}", st);
        // SAFETY: as the core passed them.
        let r = unsafe { Reply::new(rpc, ctx) };
        r.int_struct(&[
            ("records", st.records as i64),
            ("refreshed", st.refreshed as i64),
            ("retried", st.retried as i64),
            ("expired_deleted", st.expired_deleted as i64),
            ("send_errors", st.send_errors as i64),
        ]);
    })
}

unsafe extern "C" fn rpc_stats(rpc: *mut rpc_t, ctx: *mut c_void) {
    ffi("pua.stats", (), || {
        // SAFETY: as the core passed them.
        let r = unsafe { Reply::new(rpc, ctx) };
        let Some(st) = module::state() else {
            r.fault(500, "pua not initialised");
            return;
        };
        let (records, buckets, chains) = st
            .table
            .map(|t| (t.len() as i64, t.configured() as i64, t.buckets() as i64))
            .unwrap_or((-1, 0, 0));
        r.int_struct(&[
            ("records", records),
            ("buckets", buckets),
            ("chains", chains),
            (
                "db_mode",
                if st.cfg.db_mode == pua_core::params::DbMode::DbOnly {
                    2
                } else {
                    0
                },
            ),
            ("events", pua_core::events::all().len() as i64),
            ("callbacks", pua_core::callbacks::count() as i64),
            ("shm_real_used", crate::kam::mem::shm_real_used() as i64),
            ("pua_shm_cached", crate::kam::mem::slab_usage().0 as i64),
            ("pua_shm_in_use", crate::kam::mem::slab_usage().1 as i64),
        ]);
    })
}

// ---- timers ----

unsafe extern "C" fn timer_cleanup(_ticks: c_uint, _param: *mut c_void) {
    ffi("pua cleanup timer", (), || {
        let st = module::cleanup();
        if st != Default::default() {
            lm_dbg!("cleanup timer: {:?}", st);
        }
    })
}

unsafe extern "C" fn timer_retry(_ticks: c_uint, _param: *mut c_void) {
    ffi("pua retry timer", (), || {
        let st = module::retry_due();
        if st.retried > 0 {
            lm_dbg!("retry timer: {:?}", st);
        }
    })
}

unsafe extern "C" fn timer_db_sync(_ticks: c_uint, _param: *mut c_void) {
    ffi("pua db sync timer", (), module::db_sync)
}

/// The cleanup timer every `update_period - 5` s (as C), a 1 s timer for
/// retries that are due (it does nothing while none is scheduled), and in
/// db_mode 0 the database sync every `update_period` s.
pub fn register_timers(update_period: u32, db_sync: bool) -> Result<(), String> {
    // SAFETY: registering timer functions in mod_init, before the fork.
    unsafe {
        if pua_sys::register_timer(Some(timer_cleanup), ptr::null_mut(), update_period - 5) < 0
            || pua_sys::register_timer(Some(timer_retry), ptr::null_mut(), 1) < 0
            || (db_sync
                && pua_sys::register_timer(Some(timer_db_sync), ptr::null_mut(), update_period) < 0)
        {
            lm_crit!("cannot register the pua timers");
            return Err("cannot register the pua timers".into());
        }
    }
    Ok(())
}
