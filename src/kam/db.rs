//! The database through Kamailio's generic DB API (libsrdb1): bind the
//! module serving `db_url`, check its capabilities and the `pua` table's
//! version, and hold one connection per process (opened in child_init).

use pua_core::shm::borrowed_str;
use pua_core::{lm_dbg, lm_err};
use pua_sys::{db1_con_t, db_bind_mod, db_check_table_version, db_func_t, str_};
use std::cell::RefCell;

/// The `pua` table version this module reads and writes (PUA_TABLE_VERSION).
pub const PUA_TABLE_VERSION: u32 = 7;
/// DB_CAP_QUERY | DB_CAP_INSERT | DB_CAP_DELETE | DB_CAP_UPDATE (db_cap.h's DB_CAP_ALL).
pub const DB_CAP_ALL: u32 = pua_sys::DB_CAP_QUERY
    | pua_sys::DB_CAP_INSERT
    | pua_sys::DB_CAP_DELETE
    | pua_sys::DB_CAP_UPDATE;

/// The bound DB API (function table filled by the db module).
#[derive(Clone, Copy)]
pub struct DbApi {
    f: db_func_t,
}

// SAFETY: a table of function pointers and flags; the db module's functions
// are process-safe per connection.
unsafe impl Send for DbApi {}
// SAFETY: as above.
unsafe impl Sync for DbApi {}

/// Why the database could not be set up; `param` names the modparam to look at.
#[derive(Debug)]
pub struct DbError {
    pub param: &'static str,
    pub message: String,
}

fn err(param: &'static str, message: impl Into<String>) -> DbError {
    DbError {
        param,
        message: message.into(),
    }
}

impl DbApi {
    /// `db_bind_mod` over `db_url`, then the capability check.
    pub fn bind(url: &[u8]) -> Result<DbApi, DbError> {
        let u = borrowed_str(url);
        let mut f = db_func_t::default();
        // SAFETY: `u` borrows `url` for the call; `f` is a valid out-parameter.
        if unsafe { db_bind_mod(&u, &mut f) } != 0 {
            return Err(err(
                "db_url",
                format!(
                    "no loaded database module serves '{}' (loadmodule the db_* module of its scheme)",
                    String::from_utf8_lossy(url)
                ),
            ));
        }
        if f.cap & DB_CAP_ALL != DB_CAP_ALL {
            return Err(err(
                "db_url",
                "the database module does not implement query, insert, delete and update",
            ));
        }
        Ok(DbApi { f })
    }

    /// Opens a connection (`init`, or `init2` without pooling when asked).
    pub fn connect(&self, url: &[u8], no_pooling: bool) -> Result<Conn, DbError> {
        let u = borrowed_str(url);
        // SAFETY: the db module's init functions take a str* valid for the call.
        let h = unsafe {
            match (no_pooling, self.f.init2, self.f.init) {
                (true, Some(init2), _) => init2(&u, pua_sys::DB_POOLING_NONE),
                (_, _, Some(init)) => init(&u),
                _ => std::ptr::null_mut(),
            }
        };
        if h.is_null() {
            return Err(err(
                "db_url",
                format!("cannot connect to '{}'", String::from_utf8_lossy(url)),
            ));
        }
        Ok(Conn {
            api: *self,
            h,
            table: None,
        })
    }
}

/// An open connection, closed on drop.
pub struct Conn {
    api: DbApi,
    h: *mut db1_con_t,
    /// The table name the db layer points at (see `use_table`).
    table: Option<(Box<[u8]>, Box<str_>)>,
}

impl Conn {
    /// `db_check_table_version` for `table` against [`PUA_TABLE_VERSION`].
    pub fn check_version(&mut self, table: &[u8]) -> Result<(), DbError> {
        let t = borrowed_str(table);
        // SAFETY: valid handle and function table; `t` lives across the call.
        let r = unsafe { db_check_table_version(&mut self.api.f, self.h, &t, PUA_TABLE_VERSION) };
        if r < 0 {
            return Err(err(
                "db_table",
                format!(
                    "table '{}' is missing or its version is not {} (see the `version` table; \
                     create it from Kamailio's presence-create.sql)",
                    String::from_utf8_lossy(table),
                    PUA_TABLE_VERSION
                ),
            ));
        }
        Ok(())
    }

    /// Reads (at most `rows` of) the table once, to prove it is there and
    /// readable: the C module fails start-up in db_mode 0 when its restore
    /// query fails (a dropped table whose `version` row is still there).
    pub fn probe(&mut self, table: &[u8], rows: u32) -> Result<(), DbError> {
        self.use_table(table)?;
        let col = borrowed_str(b"pres_uri");
        let cols: [pua_sys::db_key_t; 1] = [&col as *const str_ as pua_sys::db_key_t];
        let mut res: *mut pua_sys::db1_res_t = std::ptr::null_mut();
        // SAFETY: valid handle and function table; `cols` and `col` live
        // across the call; the result is freed below with the same API.
        let r = unsafe {
            pua_sys::db_fetch_query(
                &mut self.api.f,
                rows.max(1) as i32,
                self.h,
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null(),
                cols.as_ptr(),
                0,
                1,
                std::ptr::null_mut(),
                &mut res,
            )
        };
        if !res.is_null() {
            if let Some(free) = self.api.f.free_result {
                // SAFETY: a result of this connection, freed once.
                unsafe { free(self.h, res) };
            }
        }
        if r < 0 {
            return Err(err(
                "db_table",
                format!(
                    "cannot read table '{}' (does it exist?)",
                    String::from_utf8_lossy(table)
                ),
            ));
        }
        Ok(())
    }

    /// `use_table`. The db layer keeps the `str*` it is given (it does not
    /// copy the name), so the connection owns the name and its `str`.
    pub fn use_table(&mut self, table: &[u8]) -> Result<(), DbError> {
        let Some(use_table) = self.api.f.use_table else {
            return Err(err("db_url", "the database module has no use_table"));
        };
        let name: Box<[u8]> = table.into();
        let t = Box::new(borrowed_str(&name));
        let tp: *const str_ = &*t;
        self.table = Some((name, t));
        // SAFETY: valid handle; `tp` points into `self.table`, which lives
        // (unmoved, boxed) as long as the connection.
        if unsafe { use_table(self.h, tp) } < 0 {
            return Err(err(
                "db_table",
                format!("use_table '{}' failed", String::from_utf8_lossy(table)),
            ));
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(close) = self.api.f.close {
            // SAFETY: the handle came from this API's init and is closed once.
            unsafe { close(self.h) };
        }
    }
}

thread_local! {
    /// This process's connection (Kamailio processes are single-threaded;
    /// opened in child_init after the fork).
    static CONN: RefCell<Option<Conn>> = const { RefCell::new(None) };
}

/// Stores this process's connection.
pub fn set_process_conn(c: Conn) {
    CONN.with(|s| *s.borrow_mut() = Some(c));
    lm_dbg!("database connection opened for this process");
}

/// Runs `f` with this process's connection, if it has one.
pub fn with_process_conn<R>(f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
    CONN.with(|s| match s.borrow_mut().as_mut() {
        Some(c) => Some(f(c)),
        None => {
            lm_err!("no database connection in this process");
            None
        }
    })
}

/// Closes this process's connection (module destroy).
pub fn close_process_conn() {
    CONN.with(|s| s.borrow_mut().take());
}
