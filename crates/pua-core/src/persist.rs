//! db_mode 0 persistence: the table is written to the `pua` table (version
//! 7) every `update_period` seconds, at shutdown, and read back at start.
//!
//! Beyond the C module: a changed record whose UPDATE finds no row is
//! inserted; one failing row does not abort the pass (it is retried at the
//! next one); records deleted in memory are deleted in the database too
//! (tombstones), so a restart does not bring back removed publications; the
//! restore never empties the table; empty strings are stored as empty
//! strings (never NULL, which the NOT NULL columns refuse).

use crate::flags::*;
use crate::lm_err;
use crate::table::{ext_of, free_record, Node, Rec, RecordData, Table};
use std::sync::atomic::{AtomicPtr, Ordering};

/// A value bound to a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Val<'a> {
    Int(i32),
    Str(&'a [u8]),
}

/// A value read from the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedVal {
    Int(i32),
    Str(Vec<u8>),
    Null,
}

impl OwnedVal {
    fn int(&self) -> i32 {
        match self {
            OwnedVal::Int(i) => *i,
            OwnedVal::Str(s) => std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            OwnedVal::Null => 0,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            OwnedVal::Str(s) => s.clone(),
            OwnedVal::Int(i) => i.to_string().into_bytes(),
            OwnedVal::Null => Vec::new(),
        }
    }
}

/// A database failure (already logged by the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbFail;

/// The operations persistence needs from a database.
pub trait Store {
    fn insert(&mut self, cols: &[&'static str], vals: &[Val<'_>]) -> Result<(), DbFail>;
    /// `Some(n)`: rows changed, when the driver can tell.
    fn update(
        &mut self,
        keys: &[&'static str],
        kvals: &[Val<'_>],
        cols: &[&'static str],
        vals: &[Val<'_>],
    ) -> Result<Option<u64>, DbFail>;
    fn delete(
        &mut self,
        keys: &[&'static str],
        ops: &[&'static str],
        vals: &[Val<'_>],
    ) -> Result<(), DbFail>;
    /// Calls `f` with the values (in `cols` order) of each row where every
    /// key column compares (`ops`: "=", "<", ">") with its value; no keys:
    /// every row.
    fn select(
        &mut self,
        keys: &[&'static str],
        ops: &[&'static str],
        vals: &[Val<'_>],
        cols: &[&'static str],
        f: &mut dyn FnMut(&[OwnedVal]),
    ) -> Result<(), DbFail>;
    /// Starts a transaction for a batch of writes, where that makes them
    /// much cheaper (SQLite: one fsync per transaction instead of one per
    /// statement) and a failing statement does not spoil the others.
    /// `false`: no transaction, every statement stands alone.
    fn begin(&mut self) -> bool {
        false
    }
    /// Ends the transaction [`Store::begin`] started; `Err`: its writes are
    /// lost (rolled back).
    fn commit(&mut self) -> Result<(), DbFail> {
        Ok(())
    }
    /// Calls `f` with each row's values in `cols` order.
    fn load(
        &mut self,
        cols: &[&'static str],
        f: &mut dyn FnMut(&[OwnedVal]),
    ) -> Result<(), DbFail> {
        self.select(&[], &[], &[], cols, f)
    }
}

/// The columns of the `pua` table we read and write (all but `id`).
pub const COLS: [&str; 18] = [
    "pres_uri",
    "pres_id",
    "event",
    "expires",
    "desired_expires",
    "flag",
    "etag",
    "tuple_id",
    "watcher_uri",
    "call_id",
    "to_tag",
    "from_tag",
    "cseq",
    "record_route",
    "contact",
    "remote_contact",
    "version",
    "extra_headers",
];

/// The row of a record, in [`COLS`] order.
pub fn row(d: &RecordData) -> Vec<Val<'_>> {
    vec![
        Val::Str(&d.pres_uri),
        Val::Str(&d.id),
        Val::Int(d.event),
        Val::Int(d.expires as i32),
        Val::Int(d.desired_expires as i32),
        Val::Int(d.flag),
        Val::Str(&d.etag),
        Val::Str(&d.tuple_id),
        Val::Str(d.watcher_uri.as_deref().unwrap_or_default()),
        Val::Str(&d.call_id),
        Val::Str(&d.to_tag),
        Val::Str(&d.from_tag),
        Val::Int(d.cseq),
        Val::Str(&d.record_route),
        Val::Str(&d.contact),
        Val::Str(&d.remote_contact),
        Val::Int(d.version),
        Val::Str(d.extra_headers.as_deref().unwrap_or_default()),
    ]
}

/// A record from a row in [`COLS`] order.
pub fn from_row(v: &[OwnedVal]) -> Option<RecordData> {
    if v.len() != COLS.len() {
        return None;
    }
    let opt = |x: &OwnedVal| Some(x.bytes()).filter(|b| !b.is_empty());
    Some(RecordData {
        pres_uri: v[0].bytes(),
        id: v[1].bytes(),
        event: v[2].int(),
        expires: v[3].int().max(0) as u32,
        desired_expires: v[4].int().max(0) as u32,
        flag: v[5].int(),
        etag: v[6].bytes(),
        tuple_id: v[7].bytes(),
        watcher_uri: opt(&v[8]),
        call_id: v[9].bytes(),
        to_tag: v[10].bytes(),
        from_tag: v[11].bytes(),
        cseq: v[12].int(),
        record_route: v[13].bytes(),
        contact: v[14].bytes(),
        remote_contact: v[15].bytes(),
        version: v[16].int(),
        extra_headers: opt(&v[17]),
        db_flag: NO_UPDATEDB_FLAG,
        ..Default::default()
    })
}

/// The key of a record's row: what identifies it in the table.
pub fn key(d: &RecordData) -> (Vec<&'static str>, Vec<Val<'_>>) {
    let mut k = vec!["pres_uri", "pres_id", "flag", "event"];
    let mut v = vec![
        Val::Str(&d.pres_uri),
        Val::Str(&d.id),
        Val::Int(d.flag),
        Val::Int(d.event),
    ];
    if let Some(w) = d.watcher_uri.as_deref() {
        k.extend(["watcher_uri", "call_id", "from_tag"]);
        v.extend([Val::Str(w), Val::Str(&d.call_id), Val::Str(&d.from_tag)]);
    }
    (k, v)
}

/// Whether a record is worth keeping across a restart: a publication the
/// server accepted, or a confirmed subscription dialog.
pub fn persistent(p: &Node) -> bool {
    if !p.is_subscription() || p.watcher_uri().unwrap_or_default().is_empty() {
        !p.etag().is_empty()
    } else {
        !p.to_tag().is_empty()
    }
}

/// Keys of records deleted in memory whose rows must go: a lock-free stack
/// of record blocks in shm (push with CAS, take all with a swap).
#[repr(C)]
#[derive(Default)]
pub struct Tombstones {
    head: AtomicPtr<Node>,
}

impl Tombstones {
    pub fn push(&self, d: &RecordData) {
        let mut k = RecordData {
            pres_uri: d.pres_uri.clone(),
            id: d.id.clone(),
            flag: d.flag,
            event: d.event,
            watcher_uri: d.watcher_uri.clone(),
            call_id: d.call_id.clone(),
            from_tag: d.from_tag.clone(),
            ..Default::default()
        };
        k.ext = Default::default();
        let Some(r) = k.to_shm() else {
            lm_err!("out of shm: a deleted record's row stays in the database until it expires");
            return;
        };
        let p = r.as_ptr();
        let mut cur = self.head.load(Ordering::Acquire);
        loop {
            // SAFETY: `p` is ours until published.
            unsafe { (*p).next = cur };
            match self
                .head
                .compare_exchange(cur, p, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    pub(crate) fn take_all(&self) -> Vec<Rec> {
        let mut p = self.head.swap(std::ptr::null_mut(), Ordering::AcqRel);
        let mut v = Vec::new();
        // SAFETY: the swapped-out list is ours alone.
        unsafe {
            while let Some(r) = Rec::from_ptr(p) {
                p = (*p).next;
                (*r.as_ptr()).next = std::ptr::null_mut();
                v.push(r);
            }
        }
        v
    }
}

/// What a sync pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
    pub failed: usize,
}

/// The record in the table whose row is `d`'s (the row's key fields).
pub fn same_row(p: &Node, d: &RecordData) -> bool {
    p.flag == d.flag
        && p.event == d.event
        && p.uri_is(crate::hash::uri_hash(&d.pres_uri), &d.pres_uri)
        && p.id() == d.id.as_slice()
        && p.call_id() == d.call_id.as_slice()
        && p.from_tag() == d.from_tag.as_slice()
        && p.watcher_uri().unwrap_or_default() == d.watcher_uri.as_deref().unwrap_or_default()
}

/// Marks a record as needing a write again after a failed one.
pub(crate) fn remark(b: &mut crate::table::BucketRef<'_>, d: &RecordData, flag: i32) {
    if let Some(r) = b.find(|p| same_row(p, d)) {
        let p = b.get_mut(r);
        if p.db_flag == NO_UPDATEDB_FLAG {
            p.db_flag = flag;
        }
    }
}

/// One sync pass (the `update_period` timer, and module destroy).
pub fn sync(table: &Table, tombs: &Tombstones, store: &mut dyn Store, now: u32) -> SyncStats {
    let mut st = SyncStats::default();
    let mut in_txn = false;
    let mut batch: Vec<(i32, RecordData)> = Vec::new();
    for t in tombs.take_all() {
        let d = RecordData::from_rec(t);
        let (k, v) = key(&d);
        let ops = vec!["="; k.len()];
        match store.delete(&k, &ops, &v) {
            Ok(()) => {
                st.deleted += 1;
                // SAFETY: taken off the stack; ours.
                unsafe { free_record(t) };
            }
            Err(DbFail) => {
                st.failed += 1;
                // SAFETY: as above; pushed again as a copy.
                unsafe { free_record(t) };
                tombs.push(&d);
            }
        }
    }
    for i in 0..table.buckets() {
        let mut dirty = Vec::new();
        {
            let mut b = table.lock(i);
            let recs: Vec<Rec> = b.iter().collect();
            for r in recs {
                let p = b.get(r);
                if p.db_flag == NO_UPDATEDB_FLAG || p.db_flag == 0 || !persistent(p) {
                    continue;
                }
                let flag = p.db_flag;
                dirty.push((flag, RecordData::from_rec(r)));
                b.get_mut(r).db_flag = NO_UPDATEDB_FLAG;
            }
        }
        for (flag, d) in dirty {
            if !in_txn {
                in_txn = store.begin();
            }
            let vals = row(&d);
            let ok = if flag & INSERTDB_FLAG != 0 {
                store.insert(&COLS, &vals).map(|_| st.inserted += 1)
            } else {
                let (k, kv) = key(&d);
                match store.update(&k, &kv, &COLS, &vals) {
                    // The row is gone (or was never written): insert it.
                    Ok(Some(0)) => store.insert(&COLS, &vals).map(|_| st.inserted += 1),
                    Ok(_) => {
                        st.updated += 1;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            if ok.is_err() {
                st.failed += 1;
                let mut b = table.lock(table.bucket_of(&d.pres_uri, d.watcher_uri.as_deref()));
                remark(&mut b, &d, flag);
            } else if in_txn {
                batch.push((flag, d));
                if batch.len() >= TXN_ROWS {
                    finish_batch(table, store, &mut batch, &mut st);
                    in_txn = false;
                }
            }
        }
    }
    if in_txn {
        finish_batch(table, store, &mut batch, &mut st);
    }
    if store
        .delete(&["expires"], &["<"], &[Val::Int(now as i32)])
        .is_err()
    {
        st.failed += 1;
    }
    st
}

/// Rows written per transaction (where the store uses them): other
/// processes writing the same SQLite file wait at most one batch.
const TXN_ROWS: usize = 500;

/// Commits a batch of writes; when the commit fails they are lost, so
/// their records are marked for the next sync again.
fn finish_batch(
    table: &Table,
    store: &mut dyn Store,
    batch: &mut Vec<(i32, RecordData)>,
    st: &mut SyncStats,
) {
    if store.commit().is_err() {
        for (flag, d) in batch.iter() {
            let mut b = table.lock(table.bucket_of(&d.pres_uri, d.watcher_uri.as_deref()));
            remark(&mut b, d, *flag);
        }
        st.failed += batch.len();
    }
    batch.clear();
}

/// Loads the rows that have not expired into the table (db_mode 0 start).
/// The rows stay in the database (the C module deleted the whole table).
pub fn restore(table: &Table, store: &mut dyn Store, now: u32) -> Result<usize, DbFail> {
    let mut n = 0;
    let mut bad = 0;
    store.load(&COLS, &mut |v| match from_row(v) {
        Some(d) if d.expires > now && !d.pres_uri.is_empty() => {
            if table.insert(&d).is_some() {
                n += 1;
            }
        }
        Some(_) => {}
        None => bad += 1,
    })?;
    if bad > 0 {
        lm_err!("{} rows of the pua table could not be read", bad);
    }
    Ok(n)
}

/// Called when the engine deletes a record: its row goes at the next sync.
pub fn record_deleted(tombs: &Tombstones, p: &Node, r: Rec) {
    if p.db_flag != INSERTDB_FLAG && persistent(p) {
        tombs.push(&RecordData::from_rec(r));
    }
    let _ = ext_of(r);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{global_arena, own, MemStore};

    fn publ(uri: &str, etag: &str) -> RecordData {
        RecordData {
            pres_uri: uri.into(),
            id: b"UL".to_vec(),
            event: PRESENCE_EVENT,
            flag: UL_PUBLISH,
            etag: etag.into(),
            expires: 2000,
            db_flag: INSERTDB_FLAG,
            ..Default::default()
        }
    }

    fn sub() -> RecordData {
        RecordData {
            pres_uri: b"sip:c@x".to_vec(),
            watcher_uri: Some(b"sip:w@x".to_vec()),
            event: PRESENCE_EVENT,
            flag: RPC_SUBSCRIBE,
            call_id: b"cid".to_vec(),
            from_tag: b"ft".to_vec(),
            to_tag: b"tt".to_vec(),
            contact: b"sip:w@127.0.0.1".to_vec(),
            cseq: 11,
            expires: 2000,
            db_flag: INSERTDB_FLAG,
            ..Default::default()
        }
    }

    #[test]
    fn rows_round_trip_with_empty_strings_not_null() {
        let d = sub();
        let v: Vec<OwnedVal> = row(&d).iter().map(own).collect();
        assert!(
            v.iter().all(|x| *x != OwnedVal::Null),
            "empty strings are strings"
        );
        let back = from_row(&v).unwrap();
        assert_eq!(
            (back.call_id, back.to_tag, back.cseq, back.watcher_uri),
            (d.call_id, d.to_tag, d.cseq, d.watcher_uri)
        );
        assert!(from_row(&v[..3]).is_none());
    }

    #[test]
    fn sync_inserts_updates_and_deletes() {
        global_arena();
        let t = Table::new(8).unwrap();
        let tombs = Tombstones::default();
        let mut db = MemStore::default();
        t.insert(&publ("sip:a@x", "e1"));
        t.insert(&sub());
        let mut tmp = publ("sip:b@x", "");
        tmp.etag.clear();
        t.insert(&tmp); // initial PUBLISH unanswered: nothing to persist yet
        let st = sync(&t, &tombs, &mut db, 1000);
        assert_eq!((st.inserted, st.failed), (2, 0));
        assert_eq!(db.rows.len(), 2);
        // Nothing changed: nothing written.
        assert_eq!(sync(&t, &tombs, &mut db, 1000), SyncStats::default());
        // A change whose row vanished is inserted, not lost.
        db.rows.clear();
        {
            let mut b = t.lock(t.bucket_of(b"sip:a@x", None));
            let r = b.find(|p| p.pres_uri() == b"sip:a@x").unwrap();
            b.get_mut(r).db_flag = UPDATEDB_FLAG;
        }
        let st = sync(&t, &tombs, &mut db, 1000);
        assert_eq!(st.inserted, 1);
        // A deleted record's row goes.
        {
            let mut b = t.lock(t.bucket_of(b"sip:a@x", None));
            let r = b.find(|p| p.pres_uri() == b"sip:a@x").unwrap();
            record_deleted(&tombs, b.get(r), r);
            b.delete(r);
        }
        let st = sync(&t, &tombs, &mut db, 1000);
        assert_eq!(st.deleted, 1);
        assert!(db
            .rows
            .iter()
            .all(|r| r.get("pres_uri") != Some(&OwnedVal::Str(b"sip:a@x".to_vec()))));
        // Expired rows go.
        db.rows.push(
            row(&publ("sip:old@x", "e"))
                .iter()
                .zip(COLS)
                .map(|(v, c)| (c, own(v)))
                .collect(),
        );
        db.rows
            .last_mut()
            .unwrap()
            .insert("expires", OwnedVal::Int(5));
        sync(&t, &tombs, &mut db, 1000);
        assert!(db
            .rows
            .iter()
            .all(|r| r.get("expires").map(|e| e.int()) != Some(5)));
    }

    #[test]
    fn failed_writes_are_retried_next_pass() {
        global_arena();
        let t = Table::new(8).unwrap();
        let tombs = Tombstones::default();
        let mut db = MemStore {
            fail_inserts: true,
            ..Default::default()
        };
        t.insert(&publ("sip:a@x", "e1"));
        t.insert(&publ("sip:b@x", "e2"));
        let st = sync(&t, &tombs, &mut db, 1000);
        assert_eq!(
            (st.inserted, st.failed),
            (0, 2),
            "one failing row does not stop the pass"
        );
        db.fail_inserts = false;
        let st = sync(&t, &tombs, &mut db, 1000);
        assert_eq!(st.inserted, 2, "written once the database is back");
    }

    #[test]
    fn writes_are_batched_in_transactions_and_a_failed_commit_is_retried() {
        global_arena();
        let t = Table::new(8).unwrap();
        let tombs = Tombstones::default();
        for i in 0..(TXN_ROWS + 10) {
            t.insert(&publ(&format!("sip:u{i}@x"), "e1"));
        }
        let mut db = MemStore {
            transactions: true,
            fail_commit: true,
            ..Default::default()
        };
        let st = sync(&t, &tombs, &mut db, 1000);
        assert_eq!(db.commits, 2, "one commit per {TXN_ROWS} rows");
        assert_eq!(st.failed, TXN_ROWS + 10);
        assert!(db.rows.is_empty(), "rolled back");
        db.fail_commit = false;
        let st = sync(&t, &tombs, &mut db, 1000);
        assert_eq!((st.inserted, st.failed), (TXN_ROWS + 10, 0));
        assert_eq!(
            db.rows.len(),
            TXN_ROWS + 10,
            "written once the commit works"
        );
    }

    #[test]
    fn restore_loads_live_rows_and_keeps_the_table() {
        global_arena();
        let mut db = MemStore::default();
        for d in [publ("sip:a@x", "e1"), sub()] {
            db.insert(&COLS, &row(&d)).unwrap();
        }
        let mut old = publ("sip:old@x", "e0");
        old.expires = 10;
        db.insert(&COLS, &row(&old)).unwrap();
        let t = Table::new(8).unwrap();
        assert_eq!(restore(&t, &mut db, 1000), Ok(2));
        assert_eq!(db.rows.len(), 3, "restore deletes nothing");
        assert_eq!(t.len(), 2);
        let b = t.lock(t.bucket_of(b"sip:c@x", Some(b"sip:w@x")));
        let r = b.find(|p| p.is_subscription()).unwrap();
        let d = RecordData::from_rec(r);
        assert_eq!(
            (d.call_id.as_slice(), d.to_tag.as_slice(), d.cseq, d.db_flag),
            (&b"cid"[..], &b"tt"[..], 11, NO_UPDATEDB_FLAG)
        );
    }
}
