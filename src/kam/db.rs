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
        let sqlite = url.starts_with(b"sqlite:");
        let mut c = Conn {
            api: *self,
            h,
            table: None,
            fetch_rows: 500,
            sqlite,
            in_txn: false,
        };
        if sqlite {
            c.sqlite_busy_timeout(SQLITE_BUSY_TIMEOUT_MS);
        }
        Ok(c)
    }
}

/// How long a statement on SQLite waits for another process's lock.
/// db_sqlite sets no busy timeout, so a write that meets another
/// process's write fails at once with "database is locked" (Kamailio's
/// presence and pua workers write the same file); the C module loses the
/// record then. Waiting a little is far better for a worker than that.
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 2000;

/// An open connection, closed on drop.
pub struct Conn {
    api: DbApi,
    h: *mut db1_con_t,
    /// The table name the db layer points at (see `use_table`).
    table: Option<(Box<[u8]>, Box<str_>)>,
    /// Rows per fetch when loading (`fetch_rows`).
    fetch_rows: u32,
    /// db_sqlite: batches of writes go in BEGIN ... COMMIT.
    sqlite: bool,
    in_txn: bool,
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

impl Conn {
    /// `PRAGMA busy_timeout` on this connection.
    fn sqlite_busy_timeout(&mut self, ms: u32) {
        if !self.raw(&format!("PRAGMA busy_timeout = {ms}")) {
            lm_err!("database: cannot set SQLite's busy timeout");
        }
    }

    /// Runs a statement through `raw_query` (db_sqlite steps the statement
    /// only when asked for a result, which is then freed); `false` on error.
    fn raw(&mut self, q: &str) -> bool {
        let (Some(raw), Some(free)) = (self.api.f.raw_query, self.api.f.free_result) else {
            return false;
        };
        let qs = borrowed_str(q.as_bytes());
        let mut res: *mut pua_sys::db1_res_t = std::ptr::null_mut();
        // SAFETY: valid handle; `qs` borrows `q` for the call; the result,
        // if any, is freed once.
        unsafe {
            let r = raw(self.h, &qs, &mut res);
            if !res.is_null() {
                free(self.h, res);
            }
            r >= 0
        }
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

/// Whether this process has opened its connection.
pub fn has_process_conn() -> bool {
    CONN.with(|s| s.borrow().is_some())
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

// ---- the pua table through the generic DB API (pua_core::persist::Store) ----

use pua_core::persist::{DbFail, OwnedVal, Store, Val};
use pua_sys::{db_key_t, db_op_t, db_val_t, db_val_t__bindgen_ty_1};
use std::os::raw::c_char;

/// Column names as `str`s (db_key_t points at them during a call).
fn keys(cols: &[&'static str]) -> Vec<str_> {
    cols.iter().map(|c| borrowed_str(c.as_bytes())).collect()
}

fn key_ptrs(k: &mut [str_]) -> Vec<db_key_t> {
    k.iter_mut().map(|s| s as *mut str_).collect()
}

/// Values for a call. An empty string gets a non-null pointer: db_sqlite
/// binds a NULL `s` as SQL NULL, which the pua table's NOT NULL columns
/// refuse (the C module's bug with subscriptions on SQLite).
fn vals(v: &[Val<'_>]) -> Vec<db_val_t> {
    v.iter()
        .map(|v| match v {
            Val::Int(i) => db_val_t {
                type_: pua_sys::DB1_INT,
                nul: 0,
                free: 0,
                val: db_val_t__bindgen_ty_1 { int_val: *i },
            },
            Val::Str(s) => {
                let p: &[u8] = if s.is_empty() { b"\0" } else { s };
                db_val_t {
                    type_: pua_sys::DB1_STR,
                    nul: 0,
                    free: 0,
                    val: db_val_t__bindgen_ty_1 {
                        str_val: str_ {
                            s: p.as_ptr() as *mut c_char,
                            len: s.len() as i32,
                        },
                    },
                }
            }
        })
        .collect()
}

fn ops(o: &[&'static str]) -> Vec<db_op_t> {
    o.iter()
        .map(|o| match *o {
            "<" => c"<".as_ptr(),
            ">" => c">".as_ptr(),
            _ => c"=".as_ptr(),
        })
        .collect()
}

/// Reads one value of a result row.
///
/// # Safety
/// `v` must be a value of a live result.
unsafe fn owned(v: &db_val_t) -> OwnedVal {
    if v.nul != 0 {
        return OwnedVal::Null;
    }
    match v.type_ {
        pua_sys::DB1_INT | pua_sys::DB1_UINT => OwnedVal::Int(v.val.int_val),
        pua_sys::DB1_BIGINT | pua_sys::DB1_UBIGINT => OwnedVal::Int(v.val.ll_val as i32),
        pua_sys::DB1_DATETIME => OwnedVal::Int(v.val.time_val as i32),
        pua_sys::DB1_DOUBLE => OwnedVal::Int(v.val.double_val as i32),
        pua_sys::DB1_STRING => {
            let p = v.val.string_val;
            if p.is_null() {
                OwnedVal::Null
            } else {
                OwnedVal::Str(std::ffi::CStr::from_ptr(p).to_bytes().to_vec())
            }
        }
        pua_sys::DB1_STR | pua_sys::DB1_BLOB => OwnedVal::Str(str_bytes(&v.val.str_val).to_vec()),
        _ => OwnedVal::Null,
    }
}

use pua_core::shm::str_bytes;

impl Conn {
    fn table_ok(&mut self) -> Result<(), DbFail> {
        if self.table.is_none() {
            lm_err!("database: no table selected");
            return Err(DbFail);
        }
        Ok(())
    }

    /// Rows read per fetch when loading (`fetch_rows`).
    pub fn set_fetch_rows(&mut self, n: u32) {
        self.fetch_rows = n.max(1);
    }
}

impl Store for Conn {
    /// SQLite only: there every autocommit statement is a fsync (10,000
    /// rows took more than 10 s at shutdown), and a failing statement does
    /// not abort the transaction. PostgreSQL aborts a transaction at its
    /// first failing statement, so there rows stay one statement each.
    fn begin(&mut self) -> bool {
        if !self.sqlite || self.in_txn {
            return self.in_txn;
        }
        self.in_txn = self.raw("BEGIN");
        self.in_txn
    }

    fn commit(&mut self) -> Result<(), DbFail> {
        if !self.in_txn {
            return Ok(());
        }
        self.in_txn = false;
        if self.raw("COMMIT") {
            return Ok(());
        }
        lm_err!("database: commit of a batch of pua rows failed; they are written again next time");
        self.raw("ROLLBACK");
        Err(DbFail)
    }

    fn insert(&mut self, cols: &[&'static str], v: &[Val<'_>]) -> Result<(), DbFail> {
        self.table_ok()?;
        let Some(insert) = self.api.f.insert else {
            return Err(DbFail);
        };
        let mut k = keys(cols);
        let kp = key_ptrs(&mut k);
        let vv = vals(v);
        // SAFETY: arrays of `cols.len()` keys and values, alive across the call.
        if unsafe { insert(self.h, kp.as_ptr(), vv.as_ptr(), cols.len() as i32) } < 0 {
            lm_err!("database: insert into the pua table failed");
            return Err(DbFail);
        }
        Ok(())
    }

    fn update(
        &mut self,
        kcols: &[&'static str],
        kv: &[Val<'_>],
        cols: &[&'static str],
        v: &[Val<'_>],
    ) -> Result<Option<u64>, DbFail> {
        self.table_ok()?;
        let Some(update) = self.api.f.update else {
            return Err(DbFail);
        };
        let (mut k, mut u) = (keys(kcols), keys(cols));
        let (kp, up) = (key_ptrs(&mut k), key_ptrs(&mut u));
        let (kvv, uvv) = (vals(kv), vals(v));
        let o = ops(&vec!["="; kcols.len()]);
        // SAFETY: arrays alive across the call, lengths as passed.
        let r = unsafe {
            update(
                self.h,
                kp.as_ptr(),
                o.as_ptr(),
                kvv.as_ptr(),
                up.as_ptr(),
                uvv.as_ptr(),
                kcols.len() as i32,
                cols.len() as i32,
            )
        };
        if r < 0 {
            lm_err!("database: update of the pua table failed");
            return Err(DbFail);
        }
        // SAFETY: valid handle.
        Ok(self
            .api
            .f
            .affected_rows
            .map(|ar| unsafe { ar(self.h) })
            .filter(|&n| n >= 0)
            .map(|n| n as u64))
    }

    fn delete(
        &mut self,
        kcols: &[&'static str],
        o: &[&'static str],
        v: &[Val<'_>],
    ) -> Result<(), DbFail> {
        self.table_ok()?;
        let Some(delete) = self.api.f.delete else {
            return Err(DbFail);
        };
        let mut k = keys(kcols);
        let kp = key_ptrs(&mut k);
        let vv = vals(v);
        let op = ops(o);
        // SAFETY: arrays alive across the call, lengths as passed.
        if unsafe {
            delete(
                self.h,
                kp.as_ptr(),
                op.as_ptr(),
                vv.as_ptr(),
                kcols.len() as i32,
            )
        } < 0
        {
            lm_err!("database: delete from the pua table failed");
            return Err(DbFail);
        }
        Ok(())
    }

    fn select(
        &mut self,
        kcols: &[&'static str],
        o: &[&'static str],
        kv: &[Val<'_>],
        cols: &[&'static str],
        f: &mut dyn FnMut(&[OwnedVal]),
    ) -> Result<(), DbFail> {
        self.table_ok()?;
        let mut k = keys(cols);
        let kp = key_ptrs(&mut k);
        let mut qk = keys(kcols);
        let qkp = key_ptrs(&mut qk);
        let qo = ops(o);
        let qv = vals(kv);
        let n_keys = kcols.len().min(o.len()).min(kv.len()) as i32;
        let (qkp_p, qo_p, qv_p) = if n_keys == 0 {
            (std::ptr::null(), std::ptr::null(), std::ptr::null())
        } else {
            (qkp.as_ptr(), qo.as_ptr(), qv.as_ptr())
        };
        let mut res: *mut pua_sys::db1_res_t = std::ptr::null_mut();
        let frows = self.fetch_rows as i32;
        // SAFETY: valid handle and function table; arrays alive across calls;
        // the result is read only while it is live, and freed once.
        unsafe {
            if pua_sys::db_fetch_query(
                &mut self.api.f,
                frows,
                self.h,
                qkp_p,
                qo_p,
                qv_p,
                kp.as_ptr(),
                n_keys,
                cols.len() as i32,
                std::ptr::null_mut(),
                &mut res,
            ) < 0
            {
                lm_err!("database: cannot read the pua table");
                if !res.is_null() {
                    if let Some(free) = self.api.f.free_result {
                        free(self.h, res);
                    }
                }
                return Err(DbFail);
            }
            loop {
                if res.is_null() {
                    break;
                }
                let n = (*res).n.max(0) as usize;
                for i in 0..n {
                    let row = &*(*res).rows.add(i);
                    let m = (row.n.max(0) as usize).min(cols.len());
                    let v: Vec<OwnedVal> = (0..m).map(|j| owned(&*row.values.add(j))).collect();
                    f(&v);
                }
                if n == 0 || pua_sys::db_fetch_next(&mut self.api.f, frows, self.h, &mut res) != 1 {
                    break;
                }
            }
            if !res.is_null() {
                if let Some(free) = self.api.f.free_result {
                    free(self.h, res);
                }
            }
        }
        Ok(())
    }
}
