//! db_mode 2: the `pua` table is the store of every record at rest.
//!
//! The engine keeps its rules (one request in flight per publication, a
//! queue behind it, retries) by holding a record in the shared-memory table
//! only while this node works on it: a request in flight, a queue, a retry
//! scheduled. Everything else lives in the database alone:
//! - a lookup that misses the table reads the database (by presentity URI,
//!   then matched like the table: flag, event, id and etag together; for a
//!   subscription presentity and watcher URI) and brings the row in;
//! - after every operation the touched records are written back (new rows
//!   inserted, changed ones updated, an UPDATE that finds no row becomes an
//!   INSERT), deleted records' rows are deleted, and records with nothing
//!   in flight leave the table ([`Engine::settle`]). One process at a time
//!   writes a chain's rows (the chain's writer bit), deletes first, and
//!   looks again before it lets go, so a row never goes back to an older
//!   state and a record leaves only once its last change is written;
//! - a lookup that saw a record in memory (or brought its row in) and
//!   locks the chain again checks the chain's eviction count: if a record
//!   left meanwhile it looks again ([`Engine::still_valid`]);
//! - the timer pass reads the rows due for a refresh or expired and takes
//!   each with a conditional UPDATE of its `expires` (a lease), so that of
//!   several nodes sharing the table only one refreshes a record, where the
//!   driver reports affected rows (PostgreSQL, MySQL; db_sqlite does not:
//!   one node per SQLite file).
//!
//! What the table does not hold is lost between operations: a publication's
//! body (a 412 on a refresh cannot be answered by re-publishing it, the
//! record is dropped as in the C module) and the consumer's outbound proxy
//! (a consumer's request brings its own; the timer's refreshes use the
//! `outbound_proxy` parameter).

use crate::engine::{Engine, Host};
use crate::flags::*;
use crate::persist::{self, same_row, DbFail, Store, Val, COLS};
use crate::table::{ext_of, free_record, Rec, RecordData};
use crate::{lm_dbg, lm_err, lm_warn};

/// How long a node holds a due row it took for a refresh before another
/// node may take it (seconds past the refresh window).
pub const LEASE: u32 = 60;

/// Rows matching `keys` (all "=" unless `ops` says otherwise), as records.
pub fn select(
    store: &mut dyn Store,
    keys: &[&'static str],
    ops: &[&'static str],
    vals: &[Val<'_>],
) -> Result<Vec<RecordData>, DbFail> {
    let mut out = Vec::new();
    let mut bad = 0usize;
    store.select(
        keys,
        ops,
        vals,
        &COLS,
        &mut |v| match persist::from_row(v) {
            Some(d) if !d.pres_uri.is_empty() => out.push(d),
            _ => bad += 1,
        },
    )?;
    if bad > 0 {
        lm_err!("{} rows of the pua table could not be read", bad);
    }
    Ok(out)
}

/// A publication row matches a query as `search_htable` matches records:
/// flag and event bits, presentity URI, the id when one is given, no
/// watcher.
/// Whether the table record `p` is what `q` asks for: a publication
/// (`watcher` None: no watcher URI) or the subscription of watcher `w`;
/// `qh` is `crate::hash::uri_hash(&q.pres_uri)`.
fn in_memory(p: &crate::table::Node, q: &RecordData, qh: u32, watcher: Option<&[u8]>) -> bool {
    p.flag & q.flag != 0
        && p.event & q.event != 0
        && p.uri_is(qh, &q.pres_uri)
        && p.watcher_uri() == watcher
        && (q.id.is_empty() || p.id() == q.id.as_slice())
}

pub fn same_publication(d: &RecordData, q: &RecordData) -> bool {
    d.flag & q.flag != 0
        && d.event & q.event != 0
        && d.watcher_uri.as_deref().is_none_or(<[u8]>::is_empty)
        && d.pres_uri == q.pres_uri
        && (q.id.is_empty() || d.id == q.id)
}

/// A subscription row matches like the table's `same_subscription`.
pub fn same_subscription(d: &RecordData, q: &RecordData, check_remote_contact: bool) -> bool {
    d.flag & q.flag != 0
        && d.event & q.event != 0
        && d.watcher_uri.as_deref().is_some_and(|w| !w.is_empty())
        && d.pres_uri == q.pres_uri
        && d.watcher_uri == q.watcher_uri
        && (q.id.is_empty() || d.id == q.id)
        && (!check_remote_contact
            || (!q.remote_contact.is_empty() && d.remote_contact == q.remote_contact))
}

/// Whether the node has nothing going on for a record.
fn idle(r: Rec) -> bool {
    let e = ext_of(r);
    e.state == 0 && e.pending.is_null() && e.retry_req.is_null()
}

/// Writes a record's row: INSERT for a new one, else UPDATE by its key,
/// and INSERT when the UPDATE finds no row.
fn write_row(store: &mut dyn Store, flag: i32, d: &RecordData) -> Result<(), DbFail> {
    let vals = persist::row(d);
    if flag & INSERTDB_FLAG != 0 {
        return store.insert(&COLS, &vals);
    }
    let (k, kv) = persist::key(d);
    match store.update(&k, &kv, &COLS, &vals)? {
        Some(0) => store.insert(&COLS, &vals),
        _ => Ok(()),
    }
}

impl Engine {
    /// Runs `f` with this process's database connection; `Err` when there
    /// is none (logged by the host) or the query failed (logged by the store).
    pub(crate) fn with_db<R>(
        &self,
        host: &dyn Host,
        f: impl FnOnce(&mut dyn Store) -> Result<R, DbFail>,
    ) -> Result<R, DbFail> {
        let mut f = Some(f);
        let mut out = None;
        host.with_store(&mut |s| {
            if let Some(f) = f.take() {
                out = Some(f(s));
            }
        });
        out.unwrap_or(Err(DbFail))
    }

    /// db_mode 2: brings the row of the publication `q` asks for into the
    /// table when the table does not hold it. `Err` when the database
    /// cannot be read (the caller must not take the publication for new).
    ///
    /// `Ok(Some(ticket))`: the chain's eviction count when the record was
    /// seen here or brought in (or found absent); the caller compares it
    /// when it locks the chain again ([`Engine::still_valid`]). `Ok(None)`
    /// outside db_mode 2.
    pub(crate) fn preload_publication(
        &self,
        host: &dyn Host,
        q: &RecordData,
    ) -> Result<Option<u32>, ()> {
        if !self.cfg.db_only {
            return Ok(None);
        }
        let bucket = self.table.bucket_of(&q.pres_uri, None);
        let qh = crate::hash::uri_hash(&q.pres_uri);
        let here =
            |b: &crate::table::BucketRef<'_>| b.find(|p| in_memory(p, q, qh, None)).is_some();
        {
            let b = self.table.lock(bucket);
            if here(&b) {
                return Ok(Some(b.evictions()));
            }
        }
        // With an id, the (pres_id, pres_uri) index of Kamailio's schema
        // serves the lookup; without one (any id matches), pres_uri alone.
        let rows = self
            .with_db(host, |s| {
                if q.id.is_empty() {
                    select(s, &["pres_uri"], &["="], &[Val::Str(&q.pres_uri)])
                } else {
                    select(
                        s,
                        &["pres_id", "pres_uri"],
                        &["=", "="],
                        &[Val::Str(&q.id), Val::Str(&q.pres_uri)],
                    )
                }
            })
            .map_err(|_| {
                lm_err!(
                    "send_publish: cannot read the pua table for {}",
                    String::from_utf8_lossy(&q.pres_uri)
                )
            })?;
        let etag = (!q.etag.is_empty()).then_some(q.etag.as_slice());
        let mut found: Vec<RecordData> = rows
            .into_iter()
            .filter(|d| same_publication(d, q) && etag.is_none_or(|e| d.etag == e))
            .collect();
        if found.len() > 1 {
            lm_warn!(
                "{} rows for one publication of {} in the pua table; using the newest",
                found.len(),
                String::from_utf8_lossy(&q.pres_uri)
            );
        }
        found.sort_by_key(|d| std::cmp::Reverse(d.expires));
        Ok(Some(self.adopt(
            bucket,
            found.into_iter().next(),
            NO_UPDATEDB_FLAG,
            here,
        )))
    }

    /// db_mode 2: the same for the subscription `q` asks for.
    pub(crate) fn preload_subscription(
        &self,
        host: &dyn Host,
        q: &RecordData,
        check_remote_contact: bool,
    ) -> Result<Option<u32>, ()> {
        if !self.cfg.db_only {
            return Ok(None);
        }
        let Some(w) = q.watcher_uri.as_deref() else {
            return Ok(None);
        };
        let bucket = self.table.bucket_of(&q.pres_uri, Some(w));
        let qh = crate::hash::uri_hash(&q.pres_uri);
        let here =
            |b: &crate::table::BucketRef<'_>| b.find(|p| in_memory(p, q, qh, Some(w))).is_some();
        {
            let b = self.table.lock(bucket);
            if here(&b) {
                return Ok(Some(b.evictions()));
            }
        }
        let rows = self
            .with_db(host, |s| {
                if q.id.is_empty() {
                    select(
                        s,
                        &["pres_uri", "watcher_uri"],
                        &["=", "="],
                        &[Val::Str(&q.pres_uri), Val::Str(w)],
                    )
                } else {
                    select(
                        s,
                        &["pres_id", "pres_uri", "watcher_uri"],
                        &["=", "=", "="],
                        &[Val::Str(&q.id), Val::Str(&q.pres_uri), Val::Str(w)],
                    )
                }
            })
            .map_err(|_| {
                lm_err!(
                    "send_subscribe: cannot read the pua table for {}",
                    String::from_utf8_lossy(&q.pres_uri)
                )
            })?;
        let mut found: Vec<RecordData> = rows
            .into_iter()
            .filter(|d| same_subscription(d, q, check_remote_contact) && !d.to_tag.is_empty())
            .collect();
        found.sort_by_key(|d| std::cmp::Reverse(d.expires));
        let mut row = found.into_iter().next();
        if let Some(d) = row.as_mut() {
            // Not a column: the consumer's outbound proxy of this request.
            d.outbound_proxy = q.outbound_proxy.clone();
        }
        Ok(Some(self.adopt(bucket, row, NO_UPDATEDB_FLAG, here)))
    }

    /// Puts a record read from the database (if a row was found) into its
    /// bucket unless `here` says another process brought it in meanwhile.
    /// Returns the chain's eviction count under that lock: the ticket.
    fn adopt(
        &self,
        bucket: usize,
        row: Option<RecordData>,
        db_flag: i32,
        here: impl Fn(&crate::table::BucketRef<'_>) -> bool,
    ) -> u32 {
        let mut b = self.table.lock(bucket);
        let ticket = b.evictions();
        let Some(mut d) = row else {
            return ticket;
        };
        if here(&b) {
            return ticket;
        }
        d.db_flag = db_flag;
        d.ext = Default::default();
        d.ua_flag = REQ_ME;
        d.cb_param = 0;
        match d.to_shm() {
            Some(r) => b.push(r),
            None => lm_err!("out of shm reading a pua row"),
        }
        ticket
    }

    /// Whether what a preload saw (its `ticket`) still holds in the locked
    /// chain `b`: no record has been evicted from it since. A record seen
    /// here or brought in may otherwise have left for the database between
    /// the two locks (another process's [`Engine::settle`]), and the
    /// caller would take the publication for new or its etag for wrong.
    pub(crate) fn still_valid(b: &crate::table::BucketRef<'_>, ticket: Option<u32>) -> bool {
        ticket.is_none_or(|t| b.evictions() == t)
    }

    /// db_mode 2: a dialog that is not in the table, read from the database
    /// by Call-ID and our tag (the NOTIFY's To tag); its remote target is
    /// updated in its row. 1 found, -1 not found or not readable.
    pub(crate) fn update_contact_db(
        &self,
        host: &dyn Host,
        call_id: &[u8],
        notify_from_tag: &[u8],
        notify_to_tag: &[u8],
        contact: &[u8],
    ) -> Option<i32> {
        if !self.cfg.db_only {
            return None;
        }
        let rows = self
            .with_db(host, |s| {
                select(
                    s,
                    &["call_id", "from_tag"],
                    &["=", "="],
                    &[Val::Str(call_id), Val::Str(notify_to_tag)],
                )
            })
            .ok()?;
        let d = rows.into_iter().find(|d| {
            d.watcher_uri.as_deref().is_some_and(|w| !w.is_empty())
                && (d.to_tag.is_empty() || d.to_tag == notify_from_tag)
        })?;
        if d.remote_contact == contact {
            return Some(1);
        }
        let (k, kv) = persist::key(&d);
        match self.with_db(host, |s| {
            s.update(&k, &kv, &["remote_contact"], &[Val::Str(contact)])
        }) {
            Ok(_) => Some(1),
            Err(DbFail) => Some(-1),
        }
    }

    /// db_mode 2 dialog lookups (`is_dialog`, `get_record_id`): the rows of
    /// the dialog `q` (Call-ID, From tag), confirmed first.
    pub fn dialog_rows(&self, host: &dyn Host, q: &RecordData) -> Vec<RecordData> {
        let rows = self
            .with_db(host, |s| {
                select(
                    s,
                    &["call_id", "from_tag"],
                    &["=", "="],
                    &[Val::Str(&q.call_id), Val::Str(&q.from_tag)],
                )
            })
            .unwrap_or_default();
        let mut v: Vec<RecordData> = rows.into_iter().filter(|d| !d.call_id.is_empty()).collect();
        v.sort_by_key(|d| d.to_tag.is_empty());
        v
    }

    /// db_mode 2 `get_subs_list`: presentity URIs of the rows whose pres_id
    /// is `did` (as the C module's query).
    pub fn subs_list_rows(&self, host: &dyn Host, did: &[u8]) -> Vec<Vec<u8>> {
        self.with_db(host, |s| select(s, &["pres_id"], &["="], &[Val::Str(did)]))
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.pres_uri)
            .collect()
    }

    /// db_mode 2, the timer pass: takes the rows due for a refresh (or
    /// expired) that no process of this node holds, each with a
    /// conditional UPDATE of `expires` (another node that took it first
    /// leaves 0 rows changed), and puts them in the table marked changed,
    /// so that the pass refreshes or deletes them and their true `expires`
    /// is written back. Returns the rows taken.
    pub(crate) fn claim_due(&self, host: &dyn Host, now: u32) -> usize {
        let horizon = now.saturating_add(self.cfg.update_period);
        let Ok(rows) = self.with_db(host, |s| {
            select(s, &["expires"], &["<"], &[Val::Int(horizon as i32)])
        }) else {
            lm_err!("cleanup: cannot read the due rows of the pua table");
            return 0;
        };
        let lease = horizon.saturating_add(LEASE);
        let mut taken = 0;
        for d in rows {
            let bucket = self.table.bucket_of(
                &d.pres_uri,
                d.watcher_uri.as_deref().filter(|w| !w.is_empty()),
            );
            let here = |b: &crate::table::BucketRef<'_>| b.find(|p| same_row(p, &d)).is_some();
            if here(&self.table.lock(bucket)) {
                continue;
            }
            let (mut k, mut kv) = persist::key(&d);
            k.push("expires");
            kv.push(Val::Int(d.expires as i32));
            match self.with_db(host, |s| {
                s.update(&k, &kv, &["expires"], &[Val::Int(lease as i32)])
            }) {
                Ok(Some(0)) => {
                    lm_dbg!("a due row was taken by another node");
                    continue;
                }
                Ok(_) => {}
                Err(DbFail) => continue,
            }
            let mut d = d;
            if d.watcher_uri.as_deref().is_some_and(<[u8]>::is_empty) {
                d.watcher_uri = None;
            }
            self.adopt(bucket, Some(d.clone()), UPDATEDB_FLAG, |b| {
                b.find(|p| same_row(p, &d)).is_some()
            });
            taken += 1;
        }
        taken
    }

    /// db_mode 2: writes back the changed records of `buckets` (all when
    /// `None`), deletes the rows of deleted records, and lets records with
    /// nothing in flight leave the table. A write that fails leaves the
    /// record in the table, marked, for the next time.
    pub fn settle(&self, host: &dyn Host, buckets: Option<&[usize]>) {
        if !self.cfg.db_only {
            return;
        }
        match buckets {
            Some(l) => l.iter().for_each(|&i| self.settle_chain(host, i)),
            None => (0..self.table.buckets()).for_each(|i| self.settle_chain(host, i)),
        }
    }

    /// [`Engine::settle`] for chain `i`. One process at a time writes a
    /// chain's rows (the chain's writer bit): the writes of a row then
    /// land in the order of its changes, a DELETE after them, and a record
    /// leaves memory only after its last change is written. A process that
    /// finds the bit taken leaves its changes to the writer, which looks
    /// again under the lock before it gives the bit back.
    fn settle_chain(&self, host: &dyn Host, i: usize) {
        {
            let mut b = self.table.lock(i);
            if b.writer_busy() {
                return;
            }
            b.set_writer(true);
        }
        // If a panic unwinds out of here (the entry point catches it): the
        // bit goes back, and the chain's records are marked changed again,
        // since the writes taken for this pass may not have happened (the
        // next settle writes them all; a row written twice is harmless).
        struct Release<'a>(&'a crate::table::Table, usize, bool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                if self.2 {
                    let mut b = self.0.lock(self.1);
                    let recs: Vec<Rec> = b.iter().collect();
                    for r in recs {
                        let n = b.get_mut(r);
                        if n.db_flag == NO_UPDATEDB_FLAG && persist::persistent(n) {
                            n.db_flag = UPDATEDB_FLAG;
                        }
                    }
                    b.set_writer(false);
                }
            }
        }
        let mut release = Release(&self.table, i, true);
        let mut b = self.table.lock(i);
        loop {
            let tombs = b.take_tombs();
            let mut dirty = Vec::new();
            let recs: Vec<Rec> = b.iter().collect();
            for r in recs {
                let p = b.get(r);
                // A record in flight is written when its work is done
                // (a row taken by the timer keeps its lease until then).
                if p.db_flag == NO_UPDATEDB_FLAG
                    || p.db_flag == 0
                    || !persist::persistent(p)
                    || !idle(r)
                {
                    continue;
                }
                dirty.push((p.db_flag, RecordData::from_rec(r)));
                b.get_mut(r).db_flag = NO_UPDATEDB_FLAG;
            }
            if tombs.is_empty() && dirty.is_empty() {
                Self::evict_idle(&mut b);
                b.set_writer(false);
                release.2 = false;
                return;
            }
            drop(b);
            // Deletes first: a row deleted and then made anew (the same
            // key) is deleted before it is inserted again.
            let mut failed_tombs = Vec::new();
            for t in tombs {
                let d = RecordData::from_rec(t);
                let (k, v) = persist::key(&d);
                let ops = vec!["="; k.len()];
                if self.with_db(host, |s| s.delete(&k, &ops, &v)).is_err() {
                    failed_tombs.push(t);
                } else {
                    // SAFETY: taken off the chain's tomb list; ours.
                    unsafe { free_record(t) };
                }
            }
            let mut failed = Vec::new();
            for (flag, d) in dirty {
                if self.with_db(host, |s| write_row(s, flag, &d)).is_err() {
                    failed.push((flag, d));
                }
            }
            b = self.table.lock(i);
            if !failed_tombs.is_empty() || !failed.is_empty() {
                // The database is not taking writes: keep them for the
                // next time (an operation on the chain, or the timer).
                for t in failed_tombs {
                    b.rebury(t);
                }
                for (flag, d) in &failed {
                    persist::remark(&mut b, d, *flag);
                }
                Self::evict_idle(&mut b);
                b.set_writer(false);
                release.2 = false;
                return;
            }
        }
    }

    /// Lets the written records with nothing going on leave the chain.
    fn evict_idle(b: &mut crate::table::BucketRef<'_>) {
        let recs: Vec<Rec> = b.iter().collect();
        for r in recs {
            let p = b.get(r);
            let clean = p.db_flag == NO_UPDATEDB_FLAG || !persist::persistent(p);
            if clean && idle(r) {
                b.evict(r);
            }
        }
    }

    /// The bucket of a record block's row.
    pub(crate) fn bucket_of_data(&self, d: &RecordData) -> usize {
        self.table.bucket_of(
            &d.pres_uri,
            d.watcher_uri.as_deref().filter(|w| !w.is_empty()),
        )
    }
}
