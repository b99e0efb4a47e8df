//! Module life cycle: mod_init (main process, before the fork), child_init
//! (each process after it), destroy; the module state every process shares
//! (set before the fork, so every child inherits it); and the timer pass.

use crate::kam::db::{self, DbApi};
use pua_core::engine::{Engine, EngineCfg, PassStats, Shared};
use pua_core::params::{Config, DbMode};
use pua_core::table::Table;
use pua_core::{events, lm_err, lm_info, lm_notice, lm_warn};
use pua_sys::tm_binds;
use std::sync::OnceLock;

/// What mod_init set up; read-only afterwards, inherited by every child.
pub struct State {
    pub cfg: Config,
    pub db: DbApi,
    /// The record table: every record in db_mode 0; in db_mode 2 only the
    /// records this node has work in flight for (see pua_core::dbonly).
    pub table: Option<Table>,
    /// The PUBLISH/SUBSCRIBE engine over the table.
    pub engine: Option<Engine>,
    pub tm: TmApi,
}

/// tm's API (`load_tm_api`), used by the PUBLISH and SUBSCRIBE engines.
pub struct TmApi(pub tm_binds);
// SAFETY: a table of tm's function pointers, valid in every process.
unsafe impl Send for TmApi {}
// SAFETY: as above.
unsafe impl Sync for TmApi {}

static STATE: OnceLock<State> = OnceLock::new();

/// The module state; `None` before mod_init succeeded.
pub fn state() -> Option<&'static State> {
    STATE.get()
}

// Process ranks from sr_module.h whose child_init does nothing here.
const PROC_INIT: i32 = pua_sys::PROC_INIT;
const PROC_MAIN: i32 = pua_sys::PROC_MAIN as i32;
const PROC_TCP_MAIN: i32 = pua_sys::PROC_TCP_MAIN;

/// mod_init: validate parameters, bind tm and the database, check the
/// table, create the shared table, events and callbacks, start timers.
pub fn init() -> Result<(), String> {
    let (cfg, fixes) = crate::params::read()
        .validate()
        .map_err(|e| e.to_string())?;
    for f in fixes {
        if f.is_error {
            lm_err!("modparam(\"pua\", \"{}\"): {}", f.param, f.message);
        } else {
            lm_warn!("modparam(\"pua\", \"{}\"): {}", f.param, f.message);
        }
    }

    crate::exports::register_rpc()?;

    let mut tm = tm_binds::default();
    // SAFETY: fills `tm` through tm's exported load function.
    if unsafe { crate::kam::shim::pua_shim_load_tm(&mut tm) } != 0 {
        return Err("cannot load the tm API: loadmodule \"tm.so\" before pua".into());
    }

    let table = Some(Table::new(cfg.buckets).ok_or_else(|| {
        format!(
            "modparam(\"pua\", \"hash_size\"): no shared memory for {} buckets (raise -m or lower hash_size)",
            cfg.buckets
        )
    })?);
    let db_only = cfg.db_mode == DbMode::DbOnly;

    let db = DbApi::bind(&cfg.db_url)
        .map_err(|e| format!("modparam(\"pua\", \"{}\"): {}", e.param, e.message))?;
    {
        let name = |e: db::DbError| format!("modparam(\"pua\", \"{}\"): {}", e.param, e.message);
        let mut conn = db.connect(&cfg.db_url, false).map_err(name)?;
        conn.check_version(&cfg.db_table).map_err(name)?;
        if let (Some(t), false) = (table, db_only) {
            // db_mode 0: load what the last run left (rows stay in the table).
            conn.use_table(&cfg.db_table).map_err(name)?;
            conn.set_fetch_rows(cfg.fetch_rows);
            let n = pua_core::persist::restore(&t, &mut conn, crate::publish::now()).map_err(|_| {
                format!(
                    "modparam(\"pua\", \"db_table\"): cannot read table '{}' to restore the records",
                    String::from_utf8_lossy(&cfg.db_table)
                )
            })?;
            if n > 0 {
                lm_info!("restored {} records from the database", n);
            }
        }
        // The connection closes here: children open their own.
    }

    crate::api::register_builtin_events(&cfg)?;

    let engine = match table {
        Some(t) => {
            let shared = pua_core::shm::alloc_struct::<Shared>()
                .ok_or("no shared memory for the PUBLISH engine")?;
            Some(Engine {
                table: t,
                cfg: EngineCfg {
                    default_expires: cfg.default_expires,
                    min_expires: cfg.min_expires,
                    update_period: cfg.update_period,
                    outbound_proxy: (!cfg.outbound_proxy.is_empty())
                        .then(|| cfg.outbound_proxy.clone()),
                    check_remote_contact: cfg.check_remote_contact,
                    persist: cfg.update_period > 0 || db_only,
                    db_only,
                },
                // SAFETY: zeroed shm is a valid `Shared` (atomics at 0); it
                // lives until module destroy, in every process.
                shared: unsafe { &*shared },
            })
        }
        None => None,
    };

    if cfg.update_period > 5 {
        crate::exports::register_timers(cfg.update_period, cfg.db_mode == DbMode::Memory)?;
    }

    lm_info!(
        "pua (Rust) ready: db_mode {}, {} buckets, update_period {}s, {} events",
        if db_only { 2 } else { 0 },
        cfg.buckets,
        cfg.update_period,
        events::all().len()
    );
    STATE
        .set(State {
            cfg,
            db,
            table,
            engine,
            tm: TmApi(tm),
        })
        .map_err(|_| "mod_init ran twice".to_string())
}

/// child_init: a database connection per worker process in db_mode 2,
/// where every PUBLISH reads and writes the table. In db_mode 0 only the
/// timer's sync uses the database, so the connection is opened there, at
/// its first use (mod_init has already read the table through its own
/// connection, so a wrong db_url has failed start-up). A worker that never
/// opens one keeps its pkg memory as it would be without pua's database:
/// every connection leaves long-lived blocks in the middle of the
/// process's pkg pool, which made Kamailio's own pkg allocations in the
/// REGISTER path measurably slower (bench/README, perf mode).
pub fn child_init(rank: i32) -> Result<(), String> {
    if rank == PROC_INIT || rank == PROC_MAIN || rank == PROC_TCP_MAIN {
        return Ok(());
    }
    let st = state().ok_or("child_init before mod_init")?;
    if st.cfg.db_mode == DbMode::DbOnly {
        db::set_process_conn(open_conn(&format!("child {rank}"))?);
    }
    Ok(())
}

/// Opens this process's connection to the pua table (`who` names the
/// process in the error).
fn open_conn(who: &str) -> Result<db::Conn, String> {
    let st = state().ok_or("no pua state")?;
    let named =
        |e: db::DbError| format!("{who}: modparam(\"pua\", \"{}\"): {}", e.param, e.message);
    let mut conn = st
        .db
        .connect(&st.cfg.db_url, st.cfg.db_mode == DbMode::DbOnly)
        .map_err(named)?;
    conn.use_table(&st.cfg.db_table).map_err(named)?;
    Ok(conn)
}

/// Opens this process's connection if it has none (db_mode 0's timer).
fn ensure_conn() -> bool {
    if db::has_process_conn() {
        return true;
    }
    match open_conn("timer") {
        Ok(c) => {
            db::set_process_conn(c);
            true
        }
        Err(e) => {
            lm_err!("database sync: cannot connect: {}", e);
            false
        }
    }
}

/// destroy: free the shared structures (the main process, workers gone).
pub fn destroy() {
    db::close_process_conn();
    if let Some(st) = state() {
        if let Some(e) = st.engine.as_ref().filter(|e| !e.cfg.db_only) {
            // Module destroy flushes the table (the C module could not: its
            // main process has no database connection).
            match open_conn("main") {
                Ok(mut c) => {
                    let s = pua_core::persist::sync(
                        &e.table,
                        &e.shared.tombs,
                        &mut c,
                        crate::publish::now(),
                    );
                    lm_info!("final database sync: {:?}", s);
                }
                Err(e) => lm_err!("cannot save the records at shutdown: {}", e),
            }
        }
        if let Some(t) = st.table {
            let n = t.len();
            if n > 0 {
                lm_notice!("shutting down with {} records in the table", n);
            }
            // SAFETY: destroy runs once, in the main process, after the
            // workers have exited; nothing uses the table any more.
            unsafe { t.destroy() };
        }
    }
    pua_core::callbacks::destroy();
    events::destroy();
}

/// The periodic pass (timer every update_period - 5 s, and `pua.cleanup`):
/// refresh publications about to expire, send due retries, drop expired
/// records. Bucket locks are never held while sending.
pub fn cleanup() -> PassStats {
    match state().and_then(|s| s.engine.as_ref()) {
        Some(e) => e.pass(&crate::publish::KamHost, true),
        None => PassStats::default(),
    }
}

/// The database sync (every update_period s, db_mode 0), in the timer
/// process with its own connection.
pub fn db_sync() {
    let Some(st) = state() else { return };
    let Some(e) = st.engine.as_ref().filter(|e| !e.cfg.db_only) else {
        return;
    };
    if !ensure_conn() {
        return;
    }
    let now = crate::publish::now();
    let stats =
        db::with_process_conn(|c| pua_core::persist::sync(&e.table, &e.shared.tombs, c, now));
    if let Some(s) = stats {
        if s.failed > 0 {
            pua_core::lm_warn!("database sync: {:?} (failed rows are retried next time)", s);
        } else if s != Default::default() {
            pua_core::lm_dbg!("database sync: {:?}", s);
        }
    }
}

/// The 1-second retry timer: sends retries that are due (5xx Retry-After).
pub fn retry_due() -> PassStats {
    match state().and_then(|s| s.engine.as_ref()) {
        Some(e) => e.pass(&crate::publish::KamHost, false),
        None => PassStats::default(),
    }
}
