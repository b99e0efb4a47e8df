//! Storage for `modparam("pua", ...)`: C-layout statics the core writes while
//! parsing the config (INT_PARAM: an int; PARAM_STR: a `str` pointing into
//! pkg memory), read once in mod_init and validated by pua_core::params.

use crate::kam::CCell;
use pua_core::params::RawParams;
use pua_core::shm::str_bytes;
use pua_sys::str_;
use std::os::raw::c_int;
use std::ptr;

const NO_STR: str_ = str_ {
    s: ptr::null_mut(),
    len: 0,
};

pub static HASH_SIZE: CCell<c_int> = CCell::new(9);
pub static DB_URL: CCell<str_> = CCell::new(NO_STR);
pub static DB_TABLE: CCell<str_> = CCell::new(NO_STR);
pub static MIN_EXPIRES: CCell<c_int> = CCell::new(0);
pub static DEFAULT_EXPIRES: CCell<c_int> = CCell::new(3600);
pub static UPDATE_PERIOD: CCell<c_int> = CCell::new(100);
pub static OUTBOUND_PROXY: CCell<str_> = CCell::new(NO_STR);
pub static DLGINFO_INCREASE_VERSION: CCell<c_int> = CCell::new(0);
pub static REGINFO_INCREASE_VERSION: CCell<c_int> = CCell::new(0);
pub static CHECK_REMOTE_CONTACT: CCell<c_int> = CCell::new(1);
pub static DB_MODE: CCell<c_int> = CCell::new(0);
pub static FETCH_ROWS: CCell<c_int> = CCell::new(500);
pub static DB_TABLE_LOCK_WRITE: CCell<c_int> = CCell::new(1);

/// Reads what the script set (defaults where it set nothing).
pub fn read() -> RawParams {
    let d = RawParams::default();
    // SAFETY: mod_init runs once in the main process after the config was
    // parsed; nothing writes these statics any more.
    unsafe {
        let s = |c: &CCell<str_>, default: Vec<u8>| {
            let v = &*c.get();
            if v.s.is_null() {
                default
            } else {
                str_bytes(v).to_vec()
            }
        };
        RawParams {
            hash_size: *HASH_SIZE.get(),
            db_url: s(&DB_URL, d.db_url),
            db_table: s(&DB_TABLE, d.db_table),
            min_expires: *MIN_EXPIRES.get(),
            default_expires: *DEFAULT_EXPIRES.get(),
            update_period: *UPDATE_PERIOD.get(),
            outbound_proxy: s(&OUTBOUND_PROXY, d.outbound_proxy),
            dlginfo_increase_version: *DLGINFO_INCREASE_VERSION.get(),
            reginfo_increase_version: *REGINFO_INCREASE_VERSION.get(),
            check_remote_contact: *CHECK_REMOTE_CONTACT.get(),
            db_mode: *DB_MODE.get(),
            fetch_rows: *FETCH_ROWS.get(),
            db_table_lock_write: *DB_TABLE_LOCK_WRITE.get(),
        }
    }
}
