//! The PUBLISH engine's state machine over the shared table, independent of
//! Kamailio: the host (the `pua` crate over tm, or a test double) sends
//! requests, runs consumer callbacks and processes bodies.
//!
//! Rules (RFC 3903, and where the C module goes wrong):
//! - one request in flight per publication; what a consumer asks while one
//!   is in flight waits in the record's queue and is decided anew (with the
//!   new etag) when the reply is in;
//! - no bucket lock is held while sending or running consumer callbacks;
//! - consumer callbacks run exactly once per consumer request, with the
//!   final reply (after our own retries), or tm's FAKED_REPLY when there is
//!   no usable reply;
//! - 412 re-publishes the last body as an initial PUBLISH, 423 asks again
//!   with Min-Expires, 5xx with Retry-After is sent again later, a local
//!   timeout keeps the record and retries at the next pass, anything else
//!   deletes the record (as C).

use crate::events::{self, Event};
use crate::flags::*;
use crate::publish::{self, classify, Kind, Outcome, ReplyInfo};
use crate::sys::sip_msg;
use crate::table::{
    ext_of, free_record, BucketRef, Node, Rec, RecordData, Table, EXT_BODY_PACKED, EXT_HAD_423,
    EXT_RETRY_TIMEOUT, EXT_TICKET, EXT_TIMEOUT_LOGGED,
};
use crate::{lm_dbg, lm_err, lm_info, lm_warn};
use std::sync::atomic::{AtomicU32, Ordering};

/// send_publish's answer for an If-Match etag that matches no publication.
pub const ERR_WRONG_ETAG: i32 = 418;

/// A reply as tm handed it (or tm's FAKED_REPLY), passed through to consumer
/// callbacks untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg(pub *mut sip_msg);

/// tm refused to send a request (the reason is in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendError;

/// What tm carries from a PUBLISH to its reply (the callback parameter).
///
/// Most requests are a block in shm (`Block`) that the reply takes back. A
/// new publication that no consumer callback will be told about (and not
/// in db_mode 2) goes out with a `Ticket` instead: its chain and a number
/// unique in the chain, kept on the record ([`EXT_TICKET`]), so that the
/// PUBLISH that creates a record allocates only the record. A reply that
/// needs more than storing the etag (a retry, a failure) gets the block
/// made from the record then ([`Engine::on_reply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    Block(Rec),
    /// `ticket << 17 | chain << 1 | 1`: odd, where a block's address is
    /// even, and never null.
    Ticket(usize),
}

impl Param {
    /// The ticket of `ticket` in `chain`; `None` where a pointer cannot
    /// hold one (32-bit) or the chain index does not fit 16 bits.
    pub fn ticket(chain: usize, ticket: u32) -> Option<Param> {
        if usize::BITS < 64 || chain >= 1 << 16 {
            return None;
        }
        Some(Param::Ticket(((ticket as usize) << 17) | (chain << 1) | 1))
    }

    /// A ticket's (chain, number).
    pub fn ticket_parts(v: usize) -> (usize, u32) {
        ((v >> 1) & 0xffff, (v >> 17) as u32)
    }

    /// The value handed to tm.
    pub fn to_void(self) -> *mut std::ffi::c_void {
        match self {
            Param::Block(r) => r.as_ptr().cast(),
            Param::Ticket(v) => v as *mut std::ffi::c_void,
        }
    }

    /// What tm handed back (`None` for null).
    ///
    /// # Safety
    /// `p` must be null or a value [`Param::to_void`] made.
    pub unsafe fn from_void(p: *mut std::ffi::c_void) -> Option<Param> {
        if p as usize & 1 == 1 {
            return Some(Param::Ticket(p as usize));
        }
        Rec::from_void(p).map(Param::Block)
    }
}

/// What the engine needs from its host.
pub trait Host {
    fn now(&self) -> u32;
    /// Sends a PUBLISH to `uri` whose reply is to come back with `param`
    /// (the body, if any, is the processed body). On `Ok` the host owns a
    /// `Param::Block` until it hands it back to [`Engine::on_reply`] (the
    /// block may hold `uri` and `body`: the host is done with them before
    /// the reply); on `Err` the engine still owns it.
    fn send(
        &self,
        param: Param,
        uri: &[u8],
        headers: &[u8],
        body: Option<&[u8]>,
        next_hop: Option<&[u8]>,
    ) -> Result<(), SendError>;
    /// Sends `method` on the dialog `d` (a new one when `d.rem_tag` is
    /// empty), with completion handed to [`Engine::on_sub_reply`]. Ownership
    /// of `req` as in [`Host::send`].
    fn send_on_dialog(
        &self,
        req: Rec,
        method: &[u8],
        headers: &[u8],
        d: &crate::subscribe::DialogSpec,
    ) -> Result<(), SendError>;
    /// Runs the consumer callbacks for `hentity` (a copy of the request)
    /// with `msg` (a reply, or tm's FAKED_REPLY).
    fn run_callbacks(&self, hentity: &RecordData, msg: Msg);
    /// Whether any consumer callback is registered for one of `flag`'s
    /// bits (else the engine does not build the record for them).
    fn has_callbacks(&self, flag: i32) -> bool {
        let _ = flag;
        true
    }
    /// The FAKED_REPLY value to hand to callbacks when there is no usable reply.
    fn faked_reply(&self) -> Msg;
    /// Runs the event's body processor: (new body, tuple id for a record without one).
    fn process_body(
        &self,
        ev: Event,
        body: &[u8],
        ver: i32,
        tuple: Option<&[u8]>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), String>;
    /// db_mode 2: runs `f` with this process's database connection (once),
    /// or not at all when there is none.
    fn with_store(&self, f: &mut dyn FnMut(&mut dyn crate::persist::Store)) {
        let _ = f;
    }
}

/// Configuration the engine uses.
#[derive(Clone, Debug)]
pub struct EngineCfg {
    pub default_expires: u32,
    pub min_expires: u32,
    pub update_period: u32,
    /// The `outbound_proxy` parameter.
    pub outbound_proxy: Option<Vec<u8>>,
    /// The `check_remote_contact` parameter (subscription lookups).
    pub check_remote_contact: bool,
    /// Records are synced to the database (db_mode 0 with a sync timer,
    /// and db_mode 2).
    pub persist: bool,
    /// db_mode 2: the table holds only records this node works on; the
    /// database holds the rest (see [`crate::dbonly`]).
    pub db_only: bool,
}

/// Counters in shared memory, seen by every process.
#[repr(C)]
pub struct Shared {
    /// Records with a retry scheduled (the retry timer skips its walk at 0).
    pub scheduled: AtomicU32,
    /// Rows to delete at the next database sync (db_mode 0).
    pub tombs: crate::persist::Tombstones,
    /// The length of the last SIP-ETag a 2xx brought (any worker): a new
    /// publication's block is made with that much room, so its first 2xx
    /// writes the etag in place instead of copying the record to a new
    /// block (that copy was ~2 us of pua's own per new publication in perf;
    /// side by side the change measured -1.3 us, bench/README).
    pub etag_hint: AtomicU32,
}

/// The largest etag length [`Shared::etag_hint`] reserves room for.
const MAX_ETAG_HINT: u32 = 64;

/// The engine: a handle (pointers into shm) valid in every process.
#[derive(Clone)]
pub struct Engine {
    pub table: Table,
    pub cfg: EngineCfg,
    pub shared: &'static Shared,
}

/// What a pass did (timer, `pua.cleanup`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub records: usize,
    pub refreshed: usize,
    pub retried: usize,
    pub expired_deleted: usize,
    pub send_errors: usize,
}

/// Whether record `p` is the publication of (flag, event, pres_uri with
/// its `crate::hash::uri_hash` `uh`, id): what `search_htable` compares.
fn is_publication(p: &Node, flag: i32, event: i32, uh: u32, uri: &[u8], id: &[u8]) -> bool {
    p.flag & flag != 0
        && p.event & event != 0
        && p.uri_is(uh, uri)
        && p.watcher_uri().unwrap_or_default().is_empty()
        && (id.is_empty() || p.id() == id)
}

/// [`is_publication`] for `q`'s identity; `qh` is
/// `crate::hash::uri_hash(&q.pres_uri)`.
fn same_publication(p: &Node, q: &RecordData, qh: u32) -> bool {
    is_publication(p, q.flag, q.event, qh, &q.pres_uri, &q.id)
}

/// [`is_publication`] for the identity of request block `q`.
fn same_publication_as(p: &Node, q: &Node) -> bool {
    is_publication(p, q.flag, q.event, q.uri_hash, q.pres_uri(), q.id())
}

/// db_mode 2, internal: what a preload saw has left memory since; look
/// again (never returned to a consumer).
pub(crate) const STALE: i32 = i32::MIN;
/// How often a lookup is repeated for [`STALE`] before it gives up.
const STALE_TRIES: u32 = 8;

/// Runs `attempt` (a db_mode 2 preload, then the lookup under the chain's
/// lock) again while it answers [`STALE`], a bounded number of times;
/// `None` when it gave up (see [`gave_up`]).
pub(crate) fn until_fresh(mut attempt: impl FnMut() -> i32) -> Option<i32> {
    (0..=STALE_TRIES)
        .map(|_| attempt())
        .find(|&code| code != STALE)
}

/// What [`until_fresh`]'s caller answers when it gave up.
#[cold]
pub(crate) fn gave_up(what: &str, uri: &[u8]) -> i32 {
    lm_err!(
        "{}: {}'s records keep leaving memory while looked up; giving up",
        what,
        String::from_utf8_lossy(uri)
    );
    -1
}

impl Engine {
    /// Deletes a record from its (locked) bucket; with persistence on, its
    /// row is deleted at the next sync.
    pub(crate) fn drop_record(&self, b: &mut BucketRef<'_>, r: Rec) {
        if self.cfg.db_only {
            // Its row goes with the chain's next write (in order with the
            // row's other writes; see `dbonly::settle_chain`).
            if crate::persist::persistent(b.get(r)) {
                b.bury(r);
            } else {
                b.delete(r);
            }
            return;
        }
        if self.cfg.persist {
            crate::persist::record_deleted(&self.shared.tombs, b.get(r), r);
        }
        b.delete(r);
    }

    fn bucket(&self, pres_uri: &[u8]) -> BucketRef<'_> {
        self.table.lock(self.table.bucket_of(pres_uri, None))
    }

    fn find(b: &BucketRef<'_>, q: &RecordData, etag: Option<&[u8]>) -> Option<Rec> {
        let qh = crate::hash::uri_hash(&q.pres_uri);
        b.find(|p| {
            // SAFETY: valid under the lock.
            same_publication(p, q, qh) && etag.is_none_or(|e| p.etag() == e)
        })
    }

    /// `send_publish`: `intent` carries the consumer's publ_info_t
    /// (`ext.asked` = Expires to ask, 0 removes; `etag` = its If-Match, if
    /// any; `body` raw). Returns 0, -1, [`ERR_WRONG_ETAG`] or
    /// [`ERR_PUBLISH_NO_BODY`].
    pub fn send_publish(&self, host: &dyn Host, mut intent: RecordData) -> i32 {
        self.send_publish_in(host, &mut intent)
    }

    /// [`Engine::send_publish`] with the intent in the caller's buffer,
    /// which it changes (the caller's scratch: its capacity is reused).
    pub fn send_publish_in(&self, host: &dyn Host, intent: &mut RecordData) -> i32 {
        let Some(ev) = events::by_flag(intent.event) else {
            lm_err!("send_publish: event {} is not registered", intent.event);
            return -1;
        };
        if intent.pres_uri.is_empty() {
            lm_err!("send_publish: empty presentity URI");
            return -1;
        }
        let bucket = self.table.bucket_of(&intent.pres_uri, None);
        let code = until_fresh(|| {
            let Ok(ticket) = self.preload_publication(host, intent) else {
                return -1;
            };
            match self.decide(host, ev, intent, bucket, ticket) {
                Ok(Some(Param::Block(req))) => self.send_req_with(host, req, Some(ev)),
                // A new publication sent from the intent (the record has it).
                Ok(Some(Param::Ticket(v))) => self.send_ticketed(host, intent, v, ev),
                Ok(None) => 0,
                Err(code) => code,
            }
        })
        .unwrap_or_else(|| gave_up("send_publish", &intent.pres_uri));
        self.settle(host, Some(&[bucket]));
        code
    }

    /// Decides under the lock of `chain` (the intent's); returns the
    /// request to send, if any.
    fn decide(
        &self,
        host: &dyn Host,
        ev: Event,
        intent: &mut RecordData,
        chain: usize,
        ticket: Option<u32>,
    ) -> Result<Option<Param>, i32> {
        let now = host.now();
        let mut b = self.table.lock(chain);
        if !Self::still_valid(&b, ticket) {
            return Err(STALE);
        }
        let if_match = (!intent.etag.is_empty()).then(|| intent.etag.clone());
        let rec = Self::find(&b, intent, if_match.as_deref());
        if if_match.is_some() && rec.is_none() {
            lm_dbg!("send_publish: no publication with the given etag");
            return Err(ERR_WRONG_ETAG);
        }
        if let Some(r) = rec {
            self.unpark_timed_out(&b, r);
        }
        match rec {
            Some(r) if ext_of(r).state != 0 => {
                // One request in flight per publication (RFC 3903 4.1).
                let mut queued = std::mem::take(intent);
                let asked = queued.ext.asked;
                queued.ext = Default::default();
                queued.ext.asked = asked;
                // Its If-Match found this publication; when it is decided
                // anew the publication will have the etag of the reply in
                // between, so it is matched by identity then.
                queued.etag.clear();
                let Some(q) = queued.to_shm() else {
                    return Err(out_of_shm(&queued.pres_uri));
                };
                enqueue(ext_of(r), q);
                lm_dbg!("send_publish: a request is in flight; queued");
                Ok(None)
            }
            None => {
                if intent.ext.asked == 0 {
                    lm_dbg!("send_publish: removal of a publication we do not have");
                    return Ok(None);
                }
                let Some(body) = intent.body.as_deref() else {
                    lm_err!("send_publish: a new publication needs a body");
                    return Err(ERR_PUBLISH_NO_BODY);
                };
                let (body, tuple) = host.process_body(ev, body, 0, None).map_err(|e| {
                    lm_err!("send_publish: body rejected: {}", e);
                    -1
                })?;
                let d = intent;
                d.body = Some(body);
                d.tuple_id = tuple.unwrap_or_default();
                d.etag.clear();
                d.expires = 0;
                d.version = 0;
                d.db_flag = INSERTDB_FLAG;
                let asked = d.ext.asked;
                d.ext = Default::default();
                d.ext.state = 1;
                d.ext.gen = 1;
                d.ext.sent_at = now;
                // Unless consumer callbacks will read the request (they
                // get it as C's ua_pres_t) or the record lives in the
                // database, the request has no block: tm carries a ticket
                // and the PUBLISH is built from the intent.
                let ticketed = (!self.cfg.db_only && !host.has_callbacks(d.flag))
                    .then(|| {
                        let t = b.next_ticket();
                        Param::ticket(chain, t).map(|p| (t, p))
                    })
                    .flatten();
                if let Some((t, _)) = ticketed {
                    d.ext.flags = EXT_TICKET;
                    d.ext.kind = t;
                    d.ext.asked = asked;
                }
                let (ua_flag, cb_param) = (d.ua_flag, d.cb_param);
                let room = self
                    .shared
                    .etag_hint
                    .load(Ordering::Relaxed)
                    .min(MAX_ETAG_HINT);
                let r = record_block(d, room as usize);
                d.ext.asked = asked;
                let Some(r) = r else {
                    return Err(out_of_shm(&d.pres_uri));
                };
                if let Some((_, p)) = ticketed {
                    b.push(r);
                    return Ok(Some(p));
                }
                let req = d;
                req.ua_flag = ua_flag;
                req.cb_param = cb_param;
                req.ext = Default::default();
                req.ext.kind = Kind::Initial as u32;
                req.ext.asked = asked;
                req.ext.gen = 1;
                let Some(q) = req.to_shm() else {
                    // SAFETY: never linked; ours.
                    unsafe { free_record(r) };
                    return Err(out_of_shm(&req.pres_uri));
                };
                b.push(r);
                Ok(Some(Param::Block(q)))
            }
            Some(r) => {
                let kind = if intent.ext.asked == 0 {
                    Kind::Remove
                } else if intent.body.is_some() {
                    Kind::Modify
                } else {
                    Kind::Refresh
                };
                if kind != Kind::Modify
                    && intent.extra_headers.is_none()
                    && intent.outbound_proxy.is_none()
                {
                    // Refresh or removal: no string of the record changes,
                    // it is updated in place, and the request is the
                    // record's block without the body (no heap copies).
                    let Some(req) = b.get(r).rebuild(&[(crate::table::F::Body, None)]) else {
                        return Err(out_of_shm(&intent.pres_uri));
                    };
                    let n = b.get_mut(r);
                    if kind != Kind::Remove {
                        n.desired_expires = intent.desired_expires;
                    }
                    if n.db_flag & NO_UPDATEDB_FLAG != 0 {
                        n.db_flag = UPDATEDB_FLAG;
                    }
                    let (desired, db_flag) = (n.desired_expires, n.db_flag);
                    let e = n.ext_mut();
                    e.state = 1;
                    e.gen = e.gen.wrapping_add(1);
                    e.sent_at = now;
                    let gen = e.gen;
                    // SAFETY: the fresh request block is ours.
                    let q = unsafe { &mut *req.as_ptr() };
                    q.desired_expires = desired;
                    q.db_flag = db_flag;
                    q.ua_flag = intent.ua_flag;
                    q.cb_param = intent.cb_param as *mut std::ffi::c_void;
                    *q.ext_mut() = crate::table::Ext {
                        kind: kind as u32,
                        asked: intent.ext.asked,
                        gen,
                        ..Default::default()
                    };
                    return Ok(Some(Param::Block(req)));
                }
                let mut d = RecordData::from_rec(r);
                if let (Kind::Modify, Some(body)) = (kind, intent.body.as_deref()) {
                    let ver = d.version.wrapping_add(1);
                    let stored = (!d.tuple_id.is_empty()).then_some(d.tuple_id.as_slice());
                    let (body, tuple) = host.process_body(ev, body, ver, stored).map_err(|e| {
                        lm_err!("send_publish: body rejected: {}", e);
                        -1
                    })?;
                    d.version = ver;
                    if d.tuple_id.is_empty() {
                        d.tuple_id = tuple.unwrap_or_default();
                    }
                    d.body = Some(body);
                    d.ext.flags &= !EXT_BODY_PACKED;
                    if !intent.content_type.is_empty() {
                        d.content_type = intent.content_type.clone();
                    }
                }
                if kind != Kind::Remove {
                    d.desired_expires = intent.desired_expires;
                }
                if intent.extra_headers.is_some() {
                    d.extra_headers = intent.extra_headers.clone();
                }
                if intent.outbound_proxy.is_some() {
                    d.outbound_proxy = intent.outbound_proxy.clone();
                }
                if d.db_flag & NO_UPDATEDB_FLAG != 0 {
                    d.db_flag = UPDATEDB_FLAG;
                }
                d.ext.state = 1;
                d.ext.gen = d.ext.gen.wrapping_add(1);
                d.ext.sent_at = now;
                let Some(nr) = record_block(&mut d, 0) else {
                    return Err(out_of_shm(&d.pres_uri));
                };
                let mut req = d;
                if kind != Kind::Modify {
                    req.body = None;
                }
                req.ua_flag = intent.ua_flag;
                req.cb_param = intent.cb_param;
                let gen = req.ext.gen;
                req.ext = Default::default();
                req.ext.kind = kind as u32;
                req.ext.asked = intent.ext.asked;
                req.ext.gen = gen;
                let Some(q) = req.to_shm() else {
                    // SAFETY: never linked; ours.
                    unsafe { free_record(nr) };
                    return Err(out_of_shm(&req.pres_uri));
                };
                // The record changes only once its request exists.
                b.replace(r, nr);
                Ok(Some(Param::Block(q)))
            }
        }
    }

    /// Sends a request block (no lock held). On failure the record goes
    /// back to idle (an initial one is dropped) and the block is freed.
    fn send_req(&self, host: &dyn Host, req: Rec) -> i32 {
        self.send_req_with(host, req, None)
    }

    /// [`Engine::send_req`]; `ev`: its event, if the caller has looked it
    /// up already.
    fn send_req_with(&self, host: &dyn Host, req: Rec, ev: Option<Event>) -> i32 {
        if ext_of(req).kind >= crate::subscribe::SUB_INITIAL {
            return self.send_sub_req(host, req);
        }
        // SAFETY: the request block is ours until `host.send` succeeds; the
        // slices borrowed from it are used only during that call.
        let n = unsafe { req.node() };
        let e = ext_of(req);
        let (kind, asked) = (Kind::from_u32(e.kind).unwrap_or(Kind::Refresh), e.asked);
        let Some(ev) = ev.or_else(|| events::by_flag(n.event)) else {
            lm_err!("event {} vanished", n.event);
            let d = RecordData::from_rec(req);
            self.abandon(host, req, &d);
            return -1;
        };
        let out = Outgoing {
            uri: n.pres_uri(),
            asked,
            etag: (kind != Kind::Initial).then_some(n.etag()),
            content_type: n.s(crate::table::F::ContentType),
            extra_headers: n.opt(crate::table::F::ExtraHeaders),
            outbound_proxy: n.opt(crate::table::F::OutboundProxy),
            body: n.body(),
        };
        match self.send_publish_request(host, Param::Block(req), ev, &out) {
            Ok(()) => 0,
            Err(SendError) => {
                let d = RecordData::from_rec(req);
                lm_err!(
                    "cannot send PUBLISH for {}",
                    String::from_utf8_lossy(&d.pres_uri)
                );
                self.abandon(host, req, &d);
                -1
            }
        }
    }

    /// A new publication's first PUBLISH with a ticket, built from the
    /// intent (the record made from it is in its chain). When tm refuses
    /// it the record is dropped, as a block's would be.
    fn send_ticketed(&self, host: &dyn Host, d: &RecordData, v: usize, ev: Event) -> i32 {
        let out = Outgoing {
            uri: &d.pres_uri,
            asked: d.ext.asked,
            etag: None,
            content_type: &d.content_type,
            extra_headers: d.extra_headers.as_deref(),
            outbound_proxy: d.outbound_proxy.as_deref(),
            body: d.body.as_deref(),
        };
        if self
            .send_publish_request(host, Param::Ticket(v), ev, &out)
            .is_ok()
        {
            return 0;
        }
        lm_err!(
            "cannot send PUBLISH for {}",
            String::from_utf8_lossy(&d.pres_uri)
        );
        let (chain, ticket) = Param::ticket_parts(v);
        let pending = {
            let mut b = self.table.lock(chain);
            match b.find(|n| holds_ticket(n, ticket)) {
                Some(r) => {
                    let pending = take_pending(ext_of(r));
                    self.drop_record(&mut b, r);
                    pending
                }
                None => Vec::new(),
            }
        };
        self.resubmit(host, pending);
        -1
    }

    /// Builds a PUBLISH's headers and hands it to the host.
    fn send_publish_request(
        &self,
        host: &dyn Host,
        p: Param,
        ev: Event,
        out: &Outgoing<'_>,
    ) -> Result<(), SendError> {
        let ct = out.body.map(|_| {
            if out.content_type.is_empty() {
                ev.content_type()
            } else {
                out.content_type
            }
        });
        let next_hop = out.outbound_proxy.or(self.cfg.outbound_proxy.as_deref());
        static HEADERS: crate::scratch::Slot<Vec<u8>> = crate::scratch::Slot::new();
        crate::scratch::with_scratch(&HEADERS, |headers| {
            publish::build_headers_into(
                headers,
                ev.name_bytes(),
                out.asked,
                out.etag,
                ct,
                out.extra_headers,
            );
            host.send(p, out.uri, headers, out.body, next_hop)
        })
    }

    /// A request that could not be sent: release its record.
    fn abandon(&self, host: &dyn Host, req: Rec, d: &RecordData) {
        let pending = {
            let mut b = self.bucket(&d.pres_uri);
            match b
                .find(|p| same_publication(p, d, crate::hash::uri_hash(&d.pres_uri)))
                .filter(|&r| ext_of(r).gen == d.ext.gen)
            {
                Some(r) if d.ext.kind == Kind::Initial as u32 && b.get(r).etag().is_empty() => {
                    let p = take_pending(ext_of(r));
                    self.drop_record(&mut b, r);
                    p
                }
                Some(r) => {
                    ext_of(r).state = 0;
                    take_pending(ext_of(r))
                }
                None => Vec::new(),
            }
        };
        // SAFETY: the engine owns the block again (send failed).
        unsafe { free_record(req) };
        self.resubmit(host, pending);
    }

    /// The reply to the PUBLISH sent with `p` (`reply` None: tm's
    /// FAKED_REPLY).
    pub fn on_reply(&self, host: &dyn Host, p: Param, reply: Option<&ReplyInfo>, msg: Msg) {
        match p {
            Param::Block(req) => self.on_block_reply(host, req, reply, msg),
            Param::Ticket(v) => self.on_ticket_reply(host, v, reply, msg),
        }
    }

    /// The reply to a new publication's PUBLISH sent with a ticket. A 2xx
    /// to store is handled here, under the chain's lock; anything else
    /// (or a consumer callback registered since) goes on with the request
    /// block the PUBLISH would have had, made from the record.
    fn on_ticket_reply(&self, host: &dyn Host, v: usize, reply: Option<&ReplyInfo>, msg: Msg) {
        let now = host.now();
        let (chain, ticket) = Param::ticket_parts(v);
        if chain >= self.table.buckets() {
            lm_err!(
                "PUBLISH reply with a ticket for chain {}: no such chain",
                chain
            );
            return;
        }
        let mut pending = Vec::new();
        let mut block = None;
        {
            let mut b = self.table.lock(chain);
            let Some(r) = b.find(|n| holds_ticket(n, ticket)) else {
                lm_dbg!("reply for a publication that is gone");
                return;
            };
            let flag = b.get(r).flag;
            let e = ext_of(r);
            let asked = e.asked;
            e.flags &= !EXT_TICKET;
            e.kind = 0;
            e.asked = 0;
            match classify(reply, Kind::Initial, 0, false) {
                Outcome::Stored { etag, expires } if !host.has_callbacks(flag) => {
                    pending = self.store(&mut b, r, etag, expires, now);
                }
                _ => match initial_block_of(r, asked) {
                    Some(q) => block = Some(q),
                    None => {
                        lm_err!("out of shm handling a PUBLISH reply; dropping the publication");
                        pending = take_pending(ext_of(r));
                        self.drop_record(&mut b, r);
                    }
                },
            }
        }
        if let Some(q) = block {
            return self.on_block_reply(host, q, reply, msg);
        }
        self.resubmit(host, pending);
        self.settle(host, Some(&[chain]));
    }

    /// A usable 2xx for record `r`: its etag and expiry stored (in place
    /// when the etag fits); returns the requests queued behind it.
    fn store(
        &self,
        b: &mut BucketRef<'_>,
        r: Rec,
        etag: &[u8],
        expires: u32,
        now: u32,
    ) -> Vec<Rec> {
        let len = u32::try_from(etag.len()).unwrap_or(u32::MAX);
        if self.shared.etag_hint.load(Ordering::Relaxed) != len {
            self.shared.etag_hint.store(len, Ordering::Relaxed);
        }
        if b.get_mut(r).set_in_place(crate::table::F::Etag, etag) {
            // The usual refresh: the same etag length (or a shorter
            // one), changed in place.
            let n = b.get_mut(r);
            mark_stored(n, now.saturating_add(expires));
            return take_pending(n.ext_mut());
        }
        // Another etag length: a new block, the other strings copied over
        // (the queue stays with the old one).
        let pending = take_pending(ext_of(r));
        match b.get(r).rebuild(&[(crate::table::F::Etag, Some(etag))]) {
            Some(nr) => {
                // SAFETY: the fresh block is ours until linked.
                let n = unsafe { &mut *nr.as_ptr() };
                mark_stored(n, now.saturating_add(expires));
                n.ext_mut().pending = std::ptr::null_mut();
                b.replace(r, nr);
            }
            None => {
                lm_err!("out of shm updating a publication; dropping it");
                self.drop_record(b, r);
            }
        }
        pending
    }

    /// The reply to request block `req`.
    fn on_block_reply(&self, host: &dyn Host, req: Rec, reply: Option<&ReplyInfo>, msg: Msg) {
        let now = host.now();
        // The scalars; the whole request only for callbacks.
        let rd = RecordData::scalars_of(req);
        // SAFETY: tm handed the block back: ours until it is freed or
        // parked on its record below, and only read before that (under the
        // bucket lock).
        let q = unsafe { req.node() };
        let pres_uri = q.pres_uri();
        let bucket = self.table.bucket_of(pres_uri, None);
        let kind = Kind::from_u32(rd.ext.kind).unwrap_or(Kind::Refresh);
        let outcome = classify(reply, kind, rd.ext.retries, rd.ext.flags & EXT_HAD_423 != 0);
        let mut final_reply = true;
        let mut cb_msg = msg;
        let mut keep_req = false;
        let mut demote = false;
        let mut next: Option<Rec> = None;
        let mut pending = Vec::new();
        {
            let mut b = self.table.lock(bucket);
            let rec = b
                .find(|p| same_publication_as(p, q))
                .filter(|&r| ext_of(r).gen == rd.ext.gen);
            match (&outcome, rec) {
                (Outcome::Stored { etag, expires }, Some(r)) => {
                    pending = self.store(&mut b, r, etag, *expires, now);
                }
                (Outcome::Removed, Some(r)) => {
                    pending = take_pending(ext_of(r));
                    self.drop_record(&mut b, r);
                }
                (Outcome::LocalTimeout, Some(r)) => {
                    let e = ext_of(r);
                    if e.flags & EXT_TIMEOUT_LOGGED == 0 {
                        lm_warn!(
                            "PUBLISH for {} got no reply; keeping the record and retrying at the next pass",
                            String::from_utf8_lossy(pres_uri)
                        );
                        e.flags |= EXT_TIMEOUT_LOGGED;
                    }
                    if e.pending.is_null() {
                        let re = ext_of(req);
                        re.retries = re.retries.saturating_add(1);
                        re.flags |= EXT_RETRY_TIMEOUT;
                        // Retry at the next cleanup pass (every update_period - 5 s).
                        let at =
                            now.saturating_add(self.cfg.update_period.saturating_sub(5).max(1));
                        self.schedule(e, req, at);
                        keep_req = true;
                        demote = true;
                    } else {
                        // Newer state is waiting: it supersedes the lost
                        // request and goes out now instead of waiting for
                        // the retry.
                        e.state = 0;
                        pending = take_pending(e);
                    }
                }
                (Outcome::Republish, Some(r)) if b.get(r).body().is_none() => {
                    lm_err!(
                        "412 for {} and no body kept; dropping it",
                        String::from_utf8_lossy(pres_uri)
                    );
                    pending = take_pending(ext_of(r));
                    self.drop_record(&mut b, r);
                }
                (Outcome::Republish, Some(r)) => {
                    lm_info!(
                        "412 for {}: the server lost the publication; publishing it anew",
                        String::from_utf8_lossy(pres_uri)
                    );
                    let mut d = RecordData::from_rec(r);
                    d.etag.clear();
                    unpack_body(&mut d);
                    let e = ext_of(r);
                    e.gen = e.gen.wrapping_add(1);
                    e.sent_at = now;
                    d.ua_flag = rd.ua_flag;
                    d.cb_param = rd.cb_param;
                    d.ext = Default::default();
                    d.ext.kind = Kind::Initial as u32;
                    d.ext.asked = if rd.ext.asked == 0 {
                        self.cfg.default_expires
                    } else {
                        rd.ext.asked
                    };
                    d.ext.gen = e.gen;
                    d.ext.retries = rd.ext.retries + 1;
                    d.ext.flags = rd.ext.flags;
                    match d.to_shm() {
                        Some(n) => {
                            // The record has no valid etag any more.
                            let mut cleared = RecordData::from_rec(r);
                            cleared.etag.clear();
                            if let Some(nr) = cleared.to_shm() {
                                b.replace(r, nr);
                            }
                            next = Some(n);
                            final_reply = false;
                        }
                        None => {
                            pending = take_pending(ext_of(r));
                            self.drop_record(&mut b, r);
                        }
                    }
                }
                (Outcome::RetryWithExpires(m), Some(r)) => {
                    let e = ext_of(r);
                    e.gen = e.gen.wrapping_add(1);
                    e.sent_at = now;
                    let re = ext_of(req);
                    re.asked = *m;
                    re.retries += 1;
                    re.flags |= EXT_HAD_423;
                    re.gen = e.gen;
                    next = Some(req);
                    keep_req = true;
                    final_reply = false;
                }
                (Outcome::RetryAfter(s), Some(r)) => {
                    lm_info!(
                        "{} for {}: sending again in {} s",
                        reply.map_or(0, |r| r.code),
                        String::from_utf8_lossy(pres_uri),
                        s
                    );
                    let re = ext_of(req);
                    re.retries += 1;
                    // The server set the delay: newer state waits for it too.
                    re.flags &= !EXT_RETRY_TIMEOUT;
                    // The clock has whole seconds: +1 makes it "at least s".
                    self.schedule(ext_of(r), req, now + s + 1);
                    keep_req = true;
                    final_reply = false;
                }
                (Outcome::Failed { reason }, rec) => {
                    lm_err!(
                        "PUBLISH for {} failed: {}",
                        String::from_utf8_lossy(pres_uri),
                        reason
                    );
                    if reply.is_some_and(|r| (200..300).contains(&r.code)) {
                        // A 2xx we cannot use: consumers must not read it as success
                        // (pua_rpc reads Expires/SIP-ETag of a 200 unchecked).
                        cb_msg = host.faked_reply();
                    }
                    if let Some(r) = rec {
                        pending = take_pending(ext_of(r));
                        self.drop_record(&mut b, r);
                    }
                }
                (_, None) => {
                    lm_dbg!("reply for a publication that is gone: {:?}", outcome);
                }
            }
        }
        if final_reply && rd.ua_flag == REQ_OTHER && host.has_callbacks(rd.flag) {
            host.run_callbacks(&RecordData::from_rec(req), cb_msg);
        }
        if demote {
            // The consumer has had its answer; the retry is our own.
            // SAFETY: we own `req`; only its fixed-size fields change.
            unsafe {
                (*req.as_ptr()).ua_flag = REQ_ME;
                (*req.as_ptr()).cb_param = std::ptr::null_mut();
            }
        }
        if !keep_req {
            // SAFETY: tm handed the block back; nobody else refers to it.
            unsafe { free_record(req) };
        }
        if let Some(n) = next {
            self.send_req(host, n);
        }
        self.resubmit(host, pending);
        self.settle(host, Some(&[bucket]));
    }

    /// A confirmed publication whose last request got no reply at all has
    /// that request parked for the next pass (up to `update_period` away).
    /// Newer state from a consumer supersedes it: the parked block is
    /// dropped and the record is idle again, so the new request goes out
    /// now (with the stored etag) instead of queueing behind the retry.
    /// A retry the server asked for (Retry-After) is kept.
    fn unpark_timed_out(&self, b: &BucketRef<'_>, r: Rec) {
        let e = ext_of(r);
        // SAFETY: the parked block belongs to the record (bucket locked).
        let Some(q) = (unsafe { Rec::from_ptr(e.retry_req) }) else {
            return;
        };
        if ext_of(q).flags & EXT_RETRY_TIMEOUT == 0
            || !e.pending.is_null()
            || b.get(r).etag().is_empty()
        {
            return;
        }
        e.retry_req = std::ptr::null_mut();
        e.retry_at = 0;
        e.state = 0;
        self.shared.scheduled.fetch_sub(1, Ordering::AcqRel);
        lm_dbg!("newer state supersedes the retry after a local timeout");
        // SAFETY: unlinked from the record above; nobody else has it.
        unsafe { free_record(q) };
    }

    /// Parks `req` on the record for a retry at `at`.
    pub(crate) fn park(&self, e: &mut crate::table::Ext, req: Rec, at: u32) {
        self.schedule(e, req, at)
    }

    /// Parks `req` on the record for a retry at `at`.
    fn schedule(&self, e: &mut crate::table::Ext, req: Rec, at: u32) {
        if !e.retry_req.is_null() {
            // SAFETY: a parked request owned by the record.
            if let Some(old) = unsafe { Rec::from_ptr(e.retry_req) } {
                // SAFETY: as above; replaced by the newer one.
                unsafe { free_record(old) };
            }
        } else {
            self.shared.scheduled.fetch_add(1, Ordering::AcqRel);
        }
        e.retry_req = req.as_ptr();
        e.retry_at = at.max(1);
        e.state = 1;
    }

    /// Decides queued requests anew, in order (the first goes out, the
    /// next ones queue behind it again).
    pub(crate) fn resubmit_requests(&self, host: &dyn Host, pending: Vec<Rec>) {
        self.resubmit(host, pending)
    }

    fn resubmit(&self, host: &dyn Host, pending: Vec<Rec>) {
        for q in pending {
            let d = RecordData::from_rec(q);
            // SAFETY: dequeued blocks belong to us.
            unsafe { free_record(q) };
            let code = if d.watcher_uri.is_some() {
                self.send_subscribe(
                    host,
                    d.clone(),
                    Default::default(),
                    self.cfg.check_remote_contact,
                )
            } else {
                self.send_publish(host, d.clone())
            };
            if code != 0 && d.ua_flag == REQ_OTHER {
                // The consumer was told 0 when it was queued; tell it now.
                lm_err!(
                    "queued PUBLISH for {} could not be sent ({})",
                    String::from_utf8_lossy(&d.pres_uri),
                    code
                );
                host.run_callbacks(&d, host.faked_reply());
            }
        }
    }

    /// The periodic pass: refresh what is about to expire, send due
    /// retries, delete what expired. `refresh` false: retries only (the
    /// 1-second retry timer).
    pub fn pass(&self, host: &dyn Host, refresh: bool) -> PassStats {
        let now = host.now();
        let mut st = PassStats::default();
        if !refresh && self.shared.scheduled.load(Ordering::Acquire) == 0 {
            return st;
        }
        let period = self.cfg.update_period;
        if refresh && self.cfg.db_only {
            self.claim_due(host, now);
        }
        for i in 0..self.table.buckets() {
            let mut to_send = Vec::new();
            {
                let mut b = self.table.lock(i);
                let recs: Vec<Rec> = b.iter().collect();
                for r in recs {
                    st.records += 1;
                    let e = ext_of(r);
                    if !e.retry_req.is_null() {
                        if e.retry_at <= now {
                            // SAFETY: the parked request is owned by the record.
                            if let Some(q) = unsafe { Rec::from_ptr(e.retry_req) } {
                                e.retry_req = std::ptr::null_mut();
                                e.retry_at = 0;
                                self.shared.scheduled.fetch_sub(1, Ordering::AcqRel);
                                e.gen = e.gen.wrapping_add(1);
                                e.sent_at = now;
                                ext_of(q).gen = e.gen;
                                if ext_of(q).kind >= crate::subscribe::SUB_INITIAL {
                                    // A new transaction on the dialog: next CSeq.
                                    let rec = b.get_mut(r);
                                    rec.cseq = rec.cseq.wrapping_add(1);
                                    let cseq = rec.cseq;
                                    // SAFETY: we own the parked block; fixed-size field.
                                    unsafe { (*q.as_ptr()).cseq = cseq };
                                }
                                to_send.push(q);
                                st.retried += 1;
                            }
                        }
                        continue;
                    }
                    if !refresh {
                        continue;
                    }
                    let p = b.get(r);
                    if e.state != 0 {
                        if e.sent_at.saturating_add(300) < now {
                            lm_warn!("a PUBLISH got no reply for 300 s; releasing its record");
                            e.state = 0;
                        }
                        continue;
                    }
                    if p.is_subscription() {
                        // A subscription: refresh a confirmed one in time,
                        // drop a temporary one that never got its 2xx and
                        // one that ran out.
                        let confirmed = !p.to_tag().is_empty();
                        if confirmed
                            && publish::needs_refresh(
                                p.expires,
                                p.desired_expires,
                                now,
                                period,
                                self.cfg.min_expires,
                            )
                            && p.expires >= now
                        {
                            if let Some(q) = self.sub_refresh_req(&mut b, r, now) {
                                to_send.push(q);
                                st.refreshed += 1;
                            }
                        } else if p.expires < now.saturating_sub(if confirmed { 10 } else { 0 }) {
                            let pending = take_pending(e);
                            self.drop_record(&mut b, r);
                            st.expired_deleted += 1;
                            for q in pending {
                                // SAFETY: queued blocks of a deleted record.
                                unsafe { free_record(q) };
                            }
                        }
                    } else if !p.etag().is_empty()
                        && publish::needs_refresh(
                            p.expires,
                            p.desired_expires,
                            now,
                            period,
                            self.cfg.min_expires,
                        )
                    {
                        let mut d = RecordData::from_rec(r);
                        e.state = 1;
                        e.gen = e.gen.wrapping_add(1);
                        e.sent_at = now;
                        d.body = None;
                        d.ua_flag = REQ_ME;
                        d.cb_param = 0;
                        d.ext = Default::default();
                        d.ext.kind = Kind::Refresh as u32;
                        d.ext.asked = publish::refresh_expires(
                            d.desired_expires,
                            now,
                            self.cfg.default_expires,
                            self.cfg.min_expires,
                        );
                        d.ext.gen = e.gen;
                        match d.to_shm() {
                            Some(q) => {
                                to_send.push(q);
                                st.refreshed += 1;
                            }
                            None => e.state = 0,
                        }
                    } else if !p.is_subscription() && p.expires < now.saturating_sub(10) {
                        let pending = take_pending(e);
                        self.drop_record(&mut b, r);
                        st.expired_deleted += 1;
                        for q in pending {
                            // SAFETY: queued blocks of a deleted record.
                            unsafe { free_record(q) };
                        }
                    }
                }
            }
            for q in to_send {
                if self.send_req(host, q) != 0 {
                    st.send_errors += 1;
                }
            }
        }
        self.settle(host, None);
        st
    }
}

/// A record whose request got a usable 2xx: idle again, alive until
/// `expires`, to be written at the next sync.
fn mark_stored(n: &mut Node, expires: u32) {
    n.expires = expires;
    if n.db_flag & NO_UPDATEDB_FLAG != 0 {
        n.db_flag = UPDATEDB_FLAG;
    }
    let e = n.ext_mut();
    e.state = 0;
    e.flags &= !EXT_TIMEOUT_LOGGED;
}

/// Logs a request that could not be built for lack of shared memory (the
/// consumer gets -1; the record is left as it was).
#[cold]
fn out_of_shm(pres_uri: &[u8]) -> i32 {
    lm_err!(
        "send_publish for {}: out of shared memory",
        String::from_utf8_lossy(pres_uri)
    );
    -1
}

/// The shm block of a table record: a publication's body is kept packed
/// (it is only read again to re-publish after a 412).
fn record_block(d: &mut RecordData, room: usize) -> Option<Rec> {
    if d.ext.flags & EXT_BODY_PACKED == 0 {
        if let Some(p) = d.body.as_deref().and_then(crate::pack::pack) {
            // The packed body in the block, `d` left as it was.
            let raw = d.body.replace(p);
            d.ext.flags |= EXT_BODY_PACKED;
            let r = d.to_shm_with_room(room);
            d.ext.flags &= !EXT_BODY_PACKED;
            d.body = raw;
            return r;
        }
    }
    d.to_shm_with_room(room)
}

/// A record's body as it was published (the record keeps it packed).
fn unpack_body(d: &mut RecordData) {
    if d.ext.flags & EXT_BODY_PACKED != 0 {
        d.body = d.body.as_deref().map(crate::pack::unpack);
    }
}

/// Record `n` holds the ticket `ticket` of its request in flight.
fn holds_ticket(n: &Node, ticket: u32) -> bool {
    let e = n.ext();
    e.flags & EXT_TICKET != 0 && e.kind == ticket && e.gen == 1
}

/// The request block a new publication's first PUBLISH would have had
/// (sent with a ticket; the record is `r`, its request asked `asked`):
/// the record's strings with its body unpacked, for a retry, the
/// consumer callbacks or the failure handling of [`Engine::on_reply`].
fn initial_block_of(r: Rec, asked: u32) -> Option<Rec> {
    let mut d = RecordData::from_rec(r);
    unpack_body(&mut d);
    d.etag.clear();
    d.ext = crate::table::Ext {
        kind: Kind::Initial as u32,
        asked,
        gen: d.ext.gen,
        ..Default::default()
    };
    d.to_shm()
}

/// What a PUBLISH is made of, borrowed from a request block or an intent.
struct Outgoing<'a> {
    uri: &'a [u8],
    asked: u32,
    /// `SIP-If-Match` (not on an initial PUBLISH).
    etag: Option<&'a [u8]>,
    /// Empty: the event's default (when there is a body).
    content_type: &'a [u8],
    extra_headers: Option<&'a [u8]>,
    outbound_proxy: Option<&'a [u8]>,
    body: Option<&'a [u8]>,
}

/// [`enqueue`] for the SUBSCRIBE side.
pub(crate) fn enqueue_request(e: &mut crate::table::Ext, q: Rec) {
    enqueue(e, q)
}

/// [`take_pending`] for the SUBSCRIBE side.
pub(crate) fn take_pending_requests(e: &mut crate::table::Ext) -> Vec<Rec> {
    take_pending(e)
}

/// Appends a request block to a record's queue. A waiting request without
/// a consumer callback parameter is replaced by a newer one (latest state
/// wins); requests that carry one (e.g. pua_rpc's) each keep their place
/// so every consumer gets its answer.
fn enqueue(e: &mut crate::table::Ext, q: Rec) {
    // SAFETY: queue blocks are ours, reached under the record's bucket lock.
    unsafe {
        let mut link: *mut *mut Node = &mut e.pending;
        while !(*link).is_null() {
            let cur = *link;
            if (*cur).next.is_null()
                && (*cur).cb_param.is_null()
                && (*cur).ua_flag == (*q.as_ptr()).ua_flag
            {
                // The last waiting request has nobody waiting on it: replace it.
                *link = q.as_ptr();
                if let Some(old) = Rec::from_ptr(cur) {
                    free_record(old);
                }
                return;
            }
            link = &mut (*cur).next;
        }
        *link = q.as_ptr();
    }
}

/// Takes a record's queue, in order.
fn take_pending(e: &mut crate::table::Ext) -> Vec<Rec> {
    let mut v = Vec::new();
    let mut p = std::mem::replace(&mut e.pending, std::ptr::null_mut());
    // SAFETY: queue blocks are ours.
    unsafe {
        while let Some(r) = Rec::from_ptr(p) {
            p = (*p).next;
            (*r.as_ptr()).next = std::ptr::null_mut();
            v.push(r);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::global_arena;
    use std::cell::{Cell, RefCell};

    const FAKED: Msg = Msg(usize::MAX as *mut sip_msg);
    const MSG: Msg = Msg(0x1000 as *mut sip_msg);

    /// (request, method, headers, dialog) of each in-dialog send.
    type SentOnDialog = (Rec, String, String, crate::subscribe::DialogSpec);
    /// (what tm carries, headers, body, next hop) of each send.
    type Sent = (Param, String, Option<Vec<u8>>, Option<Vec<u8>>);

    #[derive(Default)]
    struct FakeHost {
        now: Cell<u32>,
        sent: RefCell<Vec<Sent>>,
        callbacks: RefCell<Vec<(RecordData, Msg)>>,
        dialogs: RefCell<Vec<SentOnDialog>>,
        fail_send: Cell<bool>,
        /// No consumer callback registered (pua_usrloc's case).
        no_callbacks: Cell<bool>,
        /// The request URI of the last send.
        last_uri: RefCell<Vec<u8>>,
        /// db_mode 2: the database (shared by the nodes of a test).
        store: Option<std::rc::Rc<RefCell<crate::testing::MemStore>>>,
        /// Run once at the next `now()`: what another process does there.
        on_now: RefCell<Option<Box<dyn FnOnce()>>>,
        /// Run once at the next database access, before it.
        on_store: RefCell<Option<Box<dyn FnOnce()>>>,
    }

    impl Host for FakeHost {
        fn now(&self) -> u32 {
            let hook = self.on_now.borrow_mut().take();
            if let Some(f) = hook {
                f();
            }
            self.now.get()
        }
        fn send(
            &self,
            param: Param,
            uri: &[u8],
            headers: &[u8],
            body: Option<&[u8]>,
            hop: Option<&[u8]>,
        ) -> Result<(), SendError> {
            if self.fail_send.get() {
                return Err(SendError);
            }
            *self.last_uri.borrow_mut() = uri.to_vec();
            self.sent.borrow_mut().push((
                param,
                String::from_utf8_lossy(headers).into_owned(),
                body.map(<[u8]>::to_vec),
                hop.map(<[u8]>::to_vec),
            ));
            Ok(())
        }
        fn run_callbacks(&self, h: &RecordData, msg: Msg) {
            self.callbacks.borrow_mut().push((h.clone(), msg));
        }
        fn has_callbacks(&self, _: i32) -> bool {
            !self.no_callbacks.get()
        }
        fn send_on_dialog(
            &self,
            req: Rec,
            method: &[u8],
            headers: &[u8],
            d: &crate::subscribe::DialogSpec,
        ) -> Result<(), SendError> {
            if self.fail_send.get() {
                return Err(SendError);
            }
            self.dialogs.borrow_mut().push((
                req,
                String::from_utf8_lossy(method).into_owned(),
                String::from_utf8_lossy(headers).into_owned(),
                d.clone(),
            ));
            Ok(())
        }
        fn faked_reply(&self) -> Msg {
            FAKED
        }
        fn with_store(&self, f: &mut dyn FnMut(&mut dyn crate::persist::Store)) {
            let hook = self.on_store.borrow_mut().take();
            if let Some(g) = hook {
                g();
            }
            if let Some(s) = &self.store {
                f(&mut *s.borrow_mut());
            }
        }
        fn process_body(
            &self,
            _: Event,
            body: &[u8],
            ver: i32,
            tuple: Option<&[u8]>,
        ) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
            if body == b"bad" {
                return Err("malformed".into());
            }
            let mut b = body.to_vec();
            b.extend_from_slice(format!(";v{ver}").as_bytes());
            Ok((
                b,
                if tuple.is_some() {
                    None
                } else {
                    Some(b"tuple1".to_vec())
                },
            ))
        }
    }

    fn engine() -> (Engine, FakeHost) {
        global_arena();
        let _ = events::add(
            PRESENCE_EVENT,
            b"presence",
            Some(b"application/pidf+xml"),
            None,
        );
        let e = Engine {
            table: Table::new(8).unwrap(),
            cfg: EngineCfg {
                default_expires: 3600,
                min_expires: 0,
                update_period: 100,
                outbound_proxy: None,
                check_remote_contact: false,
                persist: false,
                db_only: false,
            },
            shared: Box::leak(Box::new(Shared {
                scheduled: AtomicU32::new(0),
                tombs: crate::persist::Tombstones::default(),
                etag_hint: AtomicU32::new(0),
            })),
        };
        let h = FakeHost::default();
        h.now.set(10_000);
        (e, h)
    }

    fn intent(body: Option<&str>, expires: i32, cb: usize) -> RecordData {
        RecordData {
            pres_uri: b"sip:alice@example.com".to_vec(),
            id: b"UL_PUBLISH".to_vec(),
            event: PRESENCE_EVENT,
            flag: UL_PUBLISH,
            body: body.map(|b| b.as_bytes().to_vec()),
            cb_param: cb,
            ua_flag: REQ_OTHER,
            desired_expires: publish::desired_expires(expires, 10_000),
            ext: crate::table::Ext {
                asked: publish::asked_expires(expires, 3600, 0),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn ok(etag: &str, expires: u32) -> ReplyInfo<'static> {
        ReplyInfo {
            code: 200,
            expires: Some(expires.to_string().into_bytes().into()),
            etag: Some(etag.as_bytes().to_vec().into()),
            ..Default::default()
        }
    }

    fn pop_sent(h: &FakeHost) -> (Param, String, Option<Vec<u8>>) {
        let (r, hd, b, _) = h.sent.borrow_mut().remove(0);
        (r, hd, b)
    }

    fn stored(e: &Engine) -> Vec<RecordData> {
        let mut v = Vec::new();
        for i in 0..e.table.buckets() {
            let b = e.table.lock(i);
            v.extend(b.iter().map(RecordData::from_rec));
        }
        v
    }

    #[test]
    fn initial_then_200_stores_etag_and_runs_callbacks_once() {
        let (e, h) = engine();
        assert_eq!(e.send_publish(&h, intent(Some("<p/>"), -1, 7)), 0);
        let (req, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("Event: presence\r\nExpires: 3600\r\n"));
        assert!(!hdr.contains("SIP-If-Match"));
        assert!(hdr.contains("Content-Type: application/pidf+xml"));
        assert_eq!(body.as_deref(), Some(&b"<p/>;v0"[..]));
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        let recs = stored(&e);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].etag, b"e1");
        assert_eq!(recs[0].expires, 13_600);
        assert_eq!(recs[0].ext.state, 0);
        assert_eq!(recs[0].tuple_id, b"tuple1");
        let cbs = h.callbacks.borrow();
        assert_eq!(cbs.len(), 1);
        assert_eq!((cbs[0].0.cb_param, cbs[0].1), (7, MSG));
    }

    /// The block of the stored record of `uri`.
    fn record_at(e: &Engine, uri: &[u8]) -> Option<usize> {
        (0..e.table.buckets()).find_map(|i| {
            let b = e.table.lock(i);
            let found = b.iter().find(|&r| b.get(r).pres_uri() == uri);
            found.map(|r| r.as_ptr() as usize)
        })
    }

    #[test]
    fn a_new_publication_has_room_for_the_etag_length_last_seen() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok(&"x".repeat(40), 3600)), MSG);
        // Another presentity, after a 2xx brought a 40-byte etag (more
        // than the allocator's slack can hold).
        let bob = b"sip:bob@example.com";
        let mut i2 = intent(Some("<b/>"), -1, 0);
        i2.pres_uri = bob.to_vec();
        assert_eq!(e.send_publish(&h, i2), 0);
        let before = record_at(&e, bob);
        assert!(before.is_some());
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok(&"y".repeat(40), 3600)), MSG);
        assert_eq!(
            record_at(&e, bob),
            before,
            "the first etag is written into the record's own block"
        );
        let recs = stored(&e);
        let r = recs.iter().find(|r| r.pres_uri == bob).unwrap();
        assert_eq!(r.etag, "y".repeat(40).as_bytes());
        assert_eq!(r.body.as_deref(), Some(&b"<b/>;v0"[..]));
    }

    #[test]
    fn second_publish_waits_for_the_first_and_latest_state_wins() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 0));
        // Two state changes while the initial PUBLISH is unanswered.
        assert_eq!(e.send_publish(&h, intent(Some("<b/>"), -1, 0)), 0);
        assert_eq!(e.send_publish(&h, intent(Some("<c/>"), -1, 0)), 0);
        assert_eq!(
            h.sent.borrow().len(),
            1,
            "one request in flight per publication"
        );
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        assert_eq!(
            h.sent.borrow().len(),
            1,
            "the queued state goes out after the reply"
        );
        let (req, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e1\r\n"), "{hdr}");
        assert_eq!(
            body.as_deref(),
            Some(&b"<c/>;v1"[..]),
            "latest state wins, version increased"
        );
        e.on_reply(&h, req, Some(&ok("e2", 3600)), MSG);
        assert!(h.sent.borrow().is_empty());
        let recs = stored(&e);
        assert_eq!(recs.len(), 1, "no duplicate record");
        assert_eq!(recs[0].etag, b"e2");
        assert_eq!(recs[0].body.as_deref(), Some(&b"<c/>;v1"[..]));
    }

    #[test]
    fn queued_modify_with_the_old_etag_goes_out_with_the_new_one() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        // pua_rpc style: two modifies with the etag the consumer knows.
        let mut m1 = intent(Some("<b/>"), -1, 1);
        m1.etag = b"e1".to_vec();
        let mut m2 = intent(Some("<c/>"), -1, 2);
        m2.etag = b"e1".to_vec();
        assert_eq!(e.send_publish(&h, m1), 0);
        assert_eq!(e.send_publish(&h, m2), 0, "queued behind the first");
        let (req, hdr, _) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e1"));
        e.on_reply(&h, req, Some(&ok("e2", 3600)), MSG);
        let (req, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e2"), "{hdr}");
        assert_eq!(body.as_deref(), Some(&b"<c/>;v2"[..]));
        e.on_reply(&h, req, Some(&ok("e3", 3600)), MSG);
        let params: Vec<usize> = h.callbacks.borrow().iter().map(|c| c.0.cb_param).collect();
        assert_eq!(params, [0, 1, 2]);
    }

    #[test]
    fn queued_requests_with_callback_params_each_get_an_answer() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 1));
        e.send_publish(&h, intent(Some("<b/>"), -1, 2));
        e.send_publish(&h, intent(Some("<c/>"), -1, 3));
        for etag in ["e1", "e2", "e3"] {
            let (req, _, _) = pop_sent(&h);
            e.on_reply(&h, req, Some(&ok(etag, 3600)), MSG);
        }
        let params: Vec<usize> = h.callbacks.borrow().iter().map(|c| c.0.cb_param).collect();
        assert_eq!(params, [1, 2, 3]);
    }

    #[test]
    fn refresh_that_gets_412_republishes_the_last_body() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 120)), MSG);
        h.callbacks.borrow_mut().clear();
        // 100 s later the record is due for a refresh.
        h.now.set(10_100);
        let st = e.pass(&h, true);
        assert_eq!(st.refreshed, 1);
        let (req, hdr, body) = pop_sent(&h);
        assert!(
            hdr.contains("SIP-If-Match: e1") && hdr.contains("Expires: 3600"),
            "{hdr}"
        );
        assert!(body.is_none(), "a refresh carries no body");
        e.on_reply(
            &h,
            req,
            Some(&ReplyInfo {
                code: 412,
                ..Default::default()
            }),
            MSG,
        );
        let (req, hdr, body) = pop_sent(&h);
        assert!(
            !hdr.contains("SIP-If-Match"),
            "re-sent as an initial PUBLISH"
        );
        assert_eq!(body.as_deref(), Some(&b"<a/>;v0"[..]));
        e.on_reply(&h, req, Some(&ok("e9", 3600)), MSG);
        assert_eq!(stored(&e)[0].etag, b"e9");
        assert!(
            h.callbacks.borrow().is_empty(),
            "refreshes are our own: no consumer callback"
        );
    }

    #[test]
    fn kept_bodies_are_packed_and_republished_intact() {
        let (e, h) = engine();
        let pidf = "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\">\n  <tuple id=\"t\">\n    <status>\n      <basic>open</basic>\n    </status>\n  </tuple>\n</presence>\n";
        e.send_publish(&h, intent(Some(pidf), -1, 0));
        let (req, _, sent) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        let rec = stored(&e).remove(0);
        assert!(rec.ext.flags & EXT_BODY_PACKED != 0);
        assert!(
            rec.body.as_ref().unwrap().len() < sent.as_ref().unwrap().len() / 2,
            "packed in shm"
        );
        // A refresh gets 412: the original body goes out again.
        h.now.set(13_550);
        e.pass(&h, true);
        let (req, _, _) = pop_sent(&h);
        e.on_reply(
            &h,
            req,
            Some(&ReplyInfo {
                code: 412,
                ..Default::default()
            }),
            MSG,
        );
        let (_, hdr, body) = pop_sent(&h);
        assert!(!hdr.contains("SIP-If-Match"));
        assert_eq!(body, sent, "unpacked intact");
    }

    #[test]
    fn interval_too_brief_is_retried_once_with_min_expires() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), 60, 5));
        let (req, hdr, _) = pop_sent(&h);
        assert!(hdr.contains("Expires: 60\r\n"), "no +1: {hdr}");
        let r423 = ReplyInfo {
            code: 423,
            min_expires: Some(b"1800".to_vec().into()),
            ..Default::default()
        };
        e.on_reply(&h, req, Some(&r423), MSG);
        let (req, hdr, _) = pop_sent(&h);
        assert!(hdr.contains("Expires: 1800\r\n"), "{hdr}");
        assert!(h.callbacks.borrow().is_empty());
        e.on_reply(&h, req, Some(&r423), MSG);
        assert!(h.sent.borrow().is_empty(), "only once");
        assert!(stored(&e).is_empty(), "failed publication deleted");
        assert_eq!(h.callbacks.borrow().len(), 1);
        assert_eq!(h.callbacks.borrow()[0].0.cb_param, 5);
    }

    #[test]
    fn server_error_with_retry_after_is_sent_again_later() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        let r503 = ReplyInfo {
            code: 503,
            retry_after: Some(b"5".to_vec().into()),
            ..Default::default()
        };
        e.on_reply(&h, req, Some(&r503), MSG);
        assert_eq!(e.shared.scheduled.load(Ordering::SeqCst), 1);
        // Meanwhile a new state waits rather than going out beside the retry.
        e.send_publish(&h, intent(Some("<b/>"), -1, 0));
        h.now.set(10_005);
        assert_eq!(e.pass(&h, false).retried, 0, "Retry-After is a minimum");
        h.now.set(10_006);
        assert_eq!(e.pass(&h, false).retried, 1);
        let (req, hdr, body) = pop_sent(&h);
        assert!(!hdr.contains("SIP-If-Match"));
        assert_eq!(body.as_deref(), Some(&b"<a/>;v0"[..]));
        assert_eq!(e.shared.scheduled.load(Ordering::SeqCst), 0);
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        let (_, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e1"));
        assert_eq!(body.as_deref(), Some(&b"<b/>;v1"[..]));
    }

    /// Without consumer callbacks a new publication goes out without a
    /// request block (a ticket; the body from the intent); every retry of
    /// it carries the body again, in the block made from the record (where
    /// it is packed).
    #[test]
    fn a_new_publication_sends_the_intents_body_and_retries_with_the_records() {
        let (e, h) = engine();
        h.no_callbacks.set(true);
        let body = "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"><tuple id=\"t\"><status>\
                    <basic>open</basic></status></tuple></presence>";
        let want = format!("{body};v0").into_bytes();
        e.send_publish(&h, intent(Some(body), 60, 0));
        let (req, hdr, sent) = pop_sent(&h);
        assert!(matches!(req, Param::Ticket(_)), "no request block");
        assert_eq!(h.last_uri.borrow().as_slice(), b"sip:alice@example.com");
        assert!(
            hdr.contains("Expires: 60\r\n") && !hdr.contains("SIP-If-Match"),
            "{hdr}"
        );
        assert_eq!(sent.as_deref(), Some(&want[..]));
        let flags = stored(&e)[0].ext.flags;
        assert_ne!(flags & EXT_BODY_PACKED, 0, "the record keeps it packed");
        assert_ne!(flags & EXT_TICKET, 0);
        let r423 = ReplyInfo {
            code: 423,
            min_expires: Some(b"1800".to_vec().into()),
            ..Default::default()
        };
        e.on_reply(&h, req, Some(&r423), MSG);
        assert_eq!(
            stored(&e)[0].ext.flags & EXT_TICKET,
            0,
            "the ticket is spent"
        );
        let (req, hdr, sent) = pop_sent(&h);
        assert!(matches!(req, Param::Block(_)));
        assert!(hdr.contains("Expires: 1800\r\n"), "{hdr}");
        assert!(!hdr.contains("SIP-If-Match"), "{hdr}");
        assert_eq!(sent.as_deref(), Some(&want[..]), "423 retry");
        let r503 = ReplyInfo {
            code: 503,
            retry_after: Some(b"5".to_vec().into()),
            ..Default::default()
        };
        e.on_reply(&h, req, Some(&r503), MSG);
        h.now.set(10_006);
        assert_eq!(e.pass(&h, false).retried, 1);
        let (req, hdr, sent) = pop_sent(&h);
        assert!(!hdr.contains("SIP-If-Match"), "{hdr}");
        assert_eq!(sent.as_deref(), Some(&want[..]), "Retry-After retry");
        e.on_reply(&h, req, None, FAKED);
        h.now.set(10_006 + 95);
        assert_eq!(e.pass(&h, false).retried, 1);
        let (req, _, sent) = pop_sent(&h);
        assert_eq!(sent.as_deref(), Some(&want[..]), "local timeout retry");
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        assert_eq!(stored(&e)[0].etag, b"e1");
        assert_eq!(e.shared.scheduled.load(Ordering::SeqCst), 0);
        assert!(h.callbacks.borrow().is_empty());
    }

    /// A ticket's 2xx stores the etag on the record it was made for; what
    /// was queued meanwhile goes out after it, with that etag.
    #[test]
    fn a_tickets_2xx_stores_the_etag_and_sends_the_queue() {
        let (e, h) = engine();
        h.no_callbacks.set(true);
        e.send_publish(&h, intent(Some("<a/>"), 60, 0));
        e.send_publish(&h, intent(Some("<b/>"), 60, 0));
        let (t, _, _) = pop_sent(&h);
        assert!(matches!(t, Param::Ticket(_)));
        assert!(h.sent.borrow().is_empty(), "one request in flight");
        e.on_reply(
            &h,
            t,
            Some(&ok("a-much-longer-etag-than-the-room", 60)),
            MSG,
        );
        let rec = &stored(&e)[0];
        assert_eq!(rec.etag, b"a-much-longer-etag-than-the-room");
        assert_eq!(rec.expires, 10_060);
        assert_eq!(rec.ext.flags & EXT_TICKET, 0);
        let (q, hdr, body) = pop_sent(&h);
        assert!(matches!(q, Param::Block(_)));
        assert!(
            hdr.contains("SIP-If-Match: a-much-longer-etag-than-the-room\r\n"),
            "{hdr}"
        );
        assert_eq!(body.as_deref(), Some(&b"<b/>;v1"[..]));
        e.on_reply(&h, q, Some(&ok("b", 60)), MSG);
        assert_eq!(stored(&e)[0].etag, b"b");
        assert_eq!(stored(&e).len(), 1);
    }

    /// Without consumer callbacks: `<a/>` sent as a new publication
    /// (consumer's `cb` param); its ticket.
    fn ticket_out(cb: usize) -> (Engine, FakeHost, Param) {
        let (e, h) = engine();
        h.no_callbacks.set(true);
        e.send_publish(&h, intent(Some("<a/>"), 60, cb));
        let (t, _, _) = pop_sent(&h);
        assert!(matches!(t, Param::Ticket(_)));
        (e, h, t)
    }

    /// A ticket names one request: after its record is gone, a reply to it
    /// never lands on the next new publication of the chain, even at the
    /// same address.
    #[test]
    fn a_reply_to_a_spent_ticket_changes_nothing() {
        let (e, h, old) = ticket_out(0);
        let chain = e.table.bucket_of(b"sip:alice@example.com", None);
        {
            let mut b = e.table.lock(chain);
            let r = b.iter().next().unwrap();
            e.drop_record(&mut b, r);
        }
        e.send_publish(&h, intent(Some("<b/>"), 60, 0));
        let (new, _, _) = pop_sent(&h);
        assert_ne!(old, new);
        e.on_reply(&h, old, Some(&ok("stale", 60)), MSG);
        let rec = &stored(&e)[0];
        assert!(
            rec.etag.is_empty() && rec.ext.state == 1,
            "still waiting for its own"
        );
        e.on_reply(&h, new, Some(&ok("e2", 60)), MSG);
        assert_eq!(stored(&e)[0].etag, b"e2");
        assert!(h.sent.borrow().is_empty());
    }

    /// tm refusing a ticketed PUBLISH drops the new record, as for a block.
    #[test]
    fn a_ticketed_publish_tm_refuses_leaves_no_record() {
        let (e, h) = engine();
        h.no_callbacks.set(true);
        h.fail_send.set(true);
        assert_eq!(e.send_publish(&h, intent(Some("<a/>"), 60, 0)), -1);
        assert!(stored(&e).is_empty());
    }

    /// A consumer callback registered while a ticket is out still gets
    /// the reply (through the block made from the record).
    #[test]
    fn a_callback_registered_meanwhile_sees_a_tickets_reply() {
        let (e, h, t) = ticket_out(7);
        h.no_callbacks.set(false);
        e.on_reply(&h, t, Some(&ok("e1", 60)), MSG);
        let cbs = h.callbacks.borrow().clone();
        assert_eq!(cbs.len(), 1);
        assert_eq!((cbs[0].0.cb_param, cbs[0].1), (7, MSG));
        assert_eq!(cbs[0].0.body.as_deref(), Some(&b"<a/>;v0"[..]));
        assert_eq!(stored(&e)[0].etag, b"e1");
    }

    #[test]
    fn tickets_travel_through_tm_as_odd_values() {
        let p = Param::ticket(0xffff, u32::MAX).unwrap();
        // SAFETY: a value to_void made.
        assert_eq!(unsafe { Param::from_void(p.to_void()) }, Some(p));
        let Param::Ticket(v) = p else { panic!() };
        assert_eq!(Param::ticket_parts(v), (0xffff, u32::MAX));
        assert_eq!(Param::ticket(1 << 16, 1), None);
        // SAFETY: null is allowed.
        assert_eq!(unsafe { Param::from_void(std::ptr::null_mut()) }, None);
    }

    /// `<a/>` published (etag e1), then `<b/>` sent and answered by tm's
    /// local timeout (parked for the next pass); `cb`: their cb_params.
    fn publish_then_time_out(e: &Engine, h: &FakeHost, cb: (usize, usize)) {
        e.send_publish(h, intent(Some("<a/>"), -1, cb.0));
        let (req, _, _) = pop_sent(h);
        e.on_reply(h, req, Some(&ok("e1", 3600)), MSG);
        e.send_publish(h, intent(Some("<b/>"), -1, cb.1));
        let (req, _, _) = pop_sent(h);
        e.on_reply(h, req, None, FAKED);
    }

    #[test]
    fn local_timeout_keeps_the_record_and_retries() {
        let (e, h) = engine();
        publish_then_time_out(&e, &h, (4, 6));
        assert_eq!(stored(&e).len(), 1, "record kept");
        let cbs = h.callbacks.borrow().clone();
        assert_eq!(cbs.len(), 2);
        assert_eq!((cbs[1].0.cb_param, cbs[1].1), (6, FAKED));
        h.now.set(10_000 + 95);
        assert_eq!(e.pass(&h, false).retried, 1);
        let (req, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e1"));
        assert_eq!(body.as_deref(), Some(&b"<b/>;v1"[..]));
        e.on_reply(&h, req, Some(&ok("e2", 3600)), MSG);
        assert_eq!(
            h.callbacks.borrow().len(),
            2,
            "the retry is ours: no second callback"
        );
        assert_eq!(stored(&e)[0].etag, b"e2");
    }

    #[test]
    fn newer_state_supersedes_a_parked_timeout_retry() {
        let (e, h) = engine();
        publish_then_time_out(&e, &h, (0, 0)); // <b/> parked until the next pass
        assert_eq!(e.shared.scheduled.load(Ordering::SeqCst), 1);
        assert!(h.sent.borrow().is_empty());
        e.send_publish(&h, intent(Some("<c/>"), -1, 0));
        let (req, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e1"), "{hdr}");
        assert_eq!(
            body.as_deref(),
            Some(&b"<c/>;v2"[..]),
            "sent now, not queued"
        );
        assert_eq!(e.shared.scheduled.load(Ordering::SeqCst), 0);
        e.on_reply(&h, req, Some(&ok("e2", 3600)), MSG);
        h.now.set(10_000 + 200);
        assert_eq!(e.pass(&h, false).retried, 0, "the old retry is gone");
        assert!(h.sent.borrow().is_empty());
        assert_eq!(stored(&e)[0].etag, b"e2");
        // A retry the server asked for (503 + Retry-After) is not superseded.
        e.send_publish(&h, intent(Some("<d/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        let mut busy = ok("", 0);
        busy.code = 503;
        busy.etag = None;
        busy.expires = None;
        busy.retry_after = Some(b"30".to_vec().into());
        e.on_reply(&h, req, Some(&busy), MSG);
        e.send_publish(&h, intent(Some("<e/>"), -1, 0));
        assert!(h.sent.borrow().is_empty(), "waits for the Retry-After");
    }

    #[test]
    fn after_a_local_timeout_newer_state_goes_out_at_once() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        e.send_publish(&h, intent(Some("<b/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        e.send_publish(&h, intent(Some("<c/>"), -1, 0)); // queued
        e.on_reply(&h, req, None, FAKED);
        let (_, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e1"));
        assert_eq!(
            body.as_deref(),
            Some(&b"<c/>;v2"[..]),
            "not parked until the next pass"
        );
        assert_eq!(e.shared.scheduled.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn unusable_200_is_an_error_and_callbacks_still_run() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 9));
        let (req, _, _) = pop_sent(&h);
        let bad = ReplyInfo {
            code: 200,
            expires: Some(b"banana".to_vec().into()),
            etag: Some(b"x".to_vec().into()),
            ..Default::default()
        };
        e.on_reply(&h, req, Some(&bad), MSG);
        assert!(stored(&e).is_empty());
        let cbs = h.callbacks.borrow();
        assert_eq!(
            (cbs.len(), cbs[0].1),
            (1, FAKED),
            "callback runs, without the unusable reply"
        );
    }

    #[test]
    fn removal_sends_expires_zero_and_deletes() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), -1, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 3600)), MSG);
        assert_eq!(e.send_publish(&h, intent(None, 0, 0)), 0);
        let (req, hdr, body) = pop_sent(&h);
        assert!(hdr.contains("Expires: 0\r\n") && hdr.contains("SIP-If-Match: e1"));
        assert!(body.is_none() && !hdr.contains("Content-Type"));
        e.on_reply(&h, req, Some(&ok("e1", 0)), MSG);
        assert!(stored(&e).is_empty());
    }

    #[test]
    fn errors_without_sending() {
        let (e, h) = engine();
        let mut i = intent(Some("<a/>"), -1, 0);
        i.etag = b"nope".to_vec();
        assert_eq!(e.send_publish(&h, i), ERR_WRONG_ETAG);
        assert_eq!(e.send_publish(&h, intent(None, -1, 0)), ERR_PUBLISH_NO_BODY);
        assert_eq!(
            e.send_publish(&h, intent(None, 0, 0)),
            0,
            "removing nothing is fine"
        );
        assert_eq!(e.send_publish(&h, intent(Some("bad"), -1, 0)), -1);
        let mut i = intent(Some("<a/>"), -1, 0);
        i.event = 1 << 29;
        assert_eq!(e.send_publish(&h, i), -1, "unknown event");
        assert!(h.sent.borrow().is_empty() && stored(&e).is_empty());
        h.fail_send.set(true);
        assert_eq!(e.send_publish(&h, intent(Some("<a/>"), -1, 0)), -1);
        assert!(
            stored(&e).is_empty(),
            "an initial PUBLISH that could not be sent leaves nothing"
        );
    }

    #[test]
    fn expired_records_are_deleted_by_the_pass() {
        let (e, h) = engine();
        e.send_publish(&h, intent(Some("<a/>"), 60, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 60)), MSG);
        // Wanted for 60 s only: not refreshed, deleted once expired.
        h.now.set(10_050);
        assert_eq!(e.pass(&h, true).refreshed, 0);
        h.now.set(10_080);
        assert_eq!(e.pass(&h, true).expired_deleted, 1);
        assert!(stored(&e).is_empty());
    }

    // ---- SUBSCRIBE ----

    use crate::subscribe::{SubReplyInfo, SubsFlags, SUB_INITIAL, SUB_REFRESH};
    use crate::table::dialog;

    fn sub_intent(expires: i32, cb: usize) -> RecordData {
        RecordData {
            pres_uri: b"sip:carol@example.com".to_vec(),
            watcher_uri: Some(b"sip:rls@example.com".to_vec()),
            contact: b"sip:rls@127.0.0.1:5060".to_vec(),
            event: PRESENCE_EVENT,
            flag: RLS_SUBSCRIBE,
            id: b"rls-1".to_vec(),
            cb_param: cb,
            ua_flag: REQ_OTHER,
            desired_expires: publish::desired_expires(expires, 10_000),
            ext: crate::table::Ext {
                asked: publish::asked_expires(expires, 3600, 0),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pop_dialog(h: &FakeHost) -> SentOnDialog {
        h.dialogs.borrow_mut().remove(0)
    }

    fn sub_ok(expires: Option<&str>, cseq: u32, contact: &str) -> SubReplyInfo {
        SubReplyInfo {
            code: 200,
            expires: expires.map(|e| e.as_bytes().to_vec()),
            to_tag: b"srv-tag".to_vec(),
            contact: contact.as_bytes().to_vec(),
            record_route: b"<sip:proxy;lr>".to_vec(),
            cseq: Some(cseq),
            ..Default::default()
        }
    }

    fn confirmed_subscription(e: &Engine, h: &FakeHost) -> RecordData {
        assert_eq!(
            e.send_subscribe(h, sub_intent(600, 3), SubsFlags::default(), false),
            0
        );
        let (q, m, hdr, d) = pop_dialog(h);
        assert_eq!(m, "SUBSCRIBE");
        assert!(
            hdr.contains("Expires: 600\r\n") && hdr.contains("Contact: <sip:rls@127.0.0.1:5060>"),
            "{hdr}"
        );
        assert!(d.rem_tag.is_empty());
        assert_eq!(
            (d.cseq, d.rem_target.as_slice()),
            (10, &b"sip:carol@example.com"[..])
        );
        let mut tmp = stored(e).remove(0);
        assert!(tmp.to_tag.is_empty());
        tmp.to_tag = b"srv-tag".to_vec();
        assert_eq!(
            dialog::is_dialog(&e.table, &tmp),
            1,
            "temporary dialog before the 2xx"
        );
        e.on_sub_reply(h, q, Some(&sub_ok(None, 10, "sip:carol@10.0.0.9")), MSG);
        let rec = stored(e).remove(0);
        assert_eq!(rec.to_tag, b"srv-tag");
        assert_eq!(
            rec.expires, 10_600,
            "2xx without Expires keeps what we asked"
        );
        assert_eq!(rec.remote_contact, b"sip:carol@10.0.0.9");
        assert_eq!(dialog::is_dialog(&e.table, &rec), 0);
        let cbs = h.callbacks.borrow();
        assert_eq!(cbs.len(), 1);
        assert_eq!(cbs[0].0.to_tag, b"srv-tag", "callbacks see the To tag");
        rec
    }

    #[test]
    fn subscribe_dialog_lifecycle() {
        let (e, h) = engine();
        let rec = confirmed_subscription(&e, &h);
        // A consumer refresh goes in dialog with the next CSeq and the route set.
        assert_eq!(
            e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false),
            0
        );
        let (q, _, _, d) = pop_dialog(&h);
        assert_eq!((d.cseq, d.rem_tag.as_slice()), (11, &b"srv-tag"[..]));
        assert_eq!(d.rem_target, rec.remote_contact);
        assert_eq!(d.route_set, b"<sip:proxy;lr>");
        assert_eq!(d.call_id, rec.call_id);
        assert_eq!(ext_of(q).kind, SUB_REFRESH);
        // 481: the dialog is gone.
        e.on_sub_reply(
            &h,
            q,
            Some(&SubReplyInfo {
                code: 481,
                ..Default::default()
            }),
            MSG,
        );
        assert!(stored(&e).is_empty());
        assert!(
            h.dialogs.borrow().is_empty(),
            "no storm of new initial SUBSCRIBEs"
        );
    }

    #[test]
    fn subscribe_refresh_survives_timeouts_and_5xx() {
        let (e, h) = engine();
        confirmed_subscription(&e, &h);
        e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false);
        let (q, _, _, _) = pop_dialog(&h);
        let mut r503 = SubReplyInfo {
            code: 503,
            ..Default::default()
        };
        r503.retry_after = Some(b"7".to_vec());
        e.on_sub_reply(&h, q, Some(&r503), MSG);
        assert_eq!(stored(&e).len(), 1, "dialog kept");
        h.now.set(10_007);
        assert_eq!(e.pass(&h, false).retried, 0, "Retry-After is a minimum");
        h.now.set(10_008);
        assert_eq!(e.pass(&h, false).retried, 1);
        let (q, _, _, d) = pop_dialog(&h);
        assert_eq!(d.cseq, 12, "a retry is a new transaction");
        e.on_sub_reply(&h, q, None, FAKED);
        assert_eq!(
            stored(&e).len(),
            1,
            "no reply does not kill the dialog either"
        );
        h.now.set(10_020);
        e.pass(&h, false);
        let (q, _, _, d) = pop_dialog(&h);
        assert_eq!(d.cseq, 13);
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("300"), 13, "")), MSG);
        let rec = stored(&e).remove(0);
        assert_eq!((rec.expires, rec.ext.state), (10_320, 0));
    }

    #[test]
    fn subscribe_interval_too_brief() {
        let (e, h) = engine();
        e.send_subscribe(&h, sub_intent(60, 0), SubsFlags::default(), false);
        let (q, _, _, _) = pop_dialog(&h);
        let r423 = SubReplyInfo {
            code: 423,
            min_expires: Some(b"1800".to_vec()),
            ..Default::default()
        };
        e.on_sub_reply(&h, q, Some(&r423), MSG);
        let (q, _, hdr, d) = pop_dialog(&h);
        assert!(hdr.contains("Expires: 1800\r\n"), "{hdr}");
        assert_eq!(d.cseq, 11);
        assert_eq!(ext_of(q).kind, SUB_INITIAL);
    }

    #[test]
    fn notify_updates_the_remote_target() {
        let (e, h) = engine();
        let rec = confirmed_subscription(&e, &h);
        // The NOTIFY's To tag is our From tag; its From tag our To tag.
        assert_eq!(
            e.update_contact(
                &h,
                Some((b"sip:carol@example.com", b"sip:rls@example.com")),
                &rec.call_id,
                b"srv-tag",
                &rec.from_tag,
                b"sip:carol@10.0.0.42:5070"
            ),
            1
        );
        assert_eq!(stored(&e)[0].remote_contact, b"sip:carol@10.0.0.42:5070");
        e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false);
        let (_, _, _, d) = pop_dialog(&h);
        assert_eq!(
            d.rem_target, b"sip:carol@10.0.0.42:5070",
            "the next SUBSCRIBE goes to the new Contact"
        );
        assert_eq!(
            e.update_contact(
                &h,
                None,
                &rec.call_id,
                b"srv-tag",
                &rec.from_tag,
                b"garbage"
            ),
            -1
        );
        assert_eq!(
            e.update_contact(&h, None, b"unknown", b"srv-tag", &rec.from_tag, b"sip:x@y"),
            -1
        );
        assert_eq!(
            e.update_contact(&h, None, &rec.call_id, b"srv-tag", b"", b"sip:x@y"),
            -1
        );
        assert_eq!(
            e.update_contact(
                &h,
                None,
                &rec.call_id,
                b"srv-tag",
                b"wrong-orientation",
                b"sip:x@y"
            ),
            -1
        );
    }

    #[test]
    fn unsubscribe_and_initial_failures() {
        let (e, h) = engine();
        confirmed_subscription(&e, &h);
        e.send_subscribe(&h, sub_intent(0, 0), SubsFlags::default(), false);
        let (q, _, hdr, _) = pop_dialog(&h);
        assert!(hdr.contains("Expires: 0\r\n"));
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("0"), 11, "")), MSG);
        assert!(stored(&e).is_empty());
        // An initial SUBSCRIBE refused: the temporary dialog goes away.
        e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false);
        let (q, _, _, _) = pop_dialog(&h);
        e.on_sub_reply(
            &h,
            q,
            Some(&SubReplyInfo {
                code: 404,
                ..Default::default()
            }),
            MSG,
        );
        assert!(stored(&e).is_empty());
        // tm refusing an initial SUBSCRIBE: 0 as C, nothing left behind.
        h.fail_send.set(true);
        assert_eq!(
            e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false),
            0
        );
        assert!(stored(&e).is_empty());
    }

    #[test]
    fn subscription_refreshed_by_the_pass() {
        let (e, h) = engine();
        e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false);
        let (q, _, _, _) = pop_dialog(&h);
        // The notifier grants less than asked: refresh before it runs out.
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("200"), 10, "sip:c@h")), MSG);
        h.callbacks.borrow_mut().clear();
        h.now.set(10_150);
        assert_eq!(e.pass(&h, true).refreshed, 1);
        let (q, _, hdr, d) = pop_dialog(&h);
        assert_eq!(d.cseq, 11);
        assert!(
            hdr.contains("Expires: 450\r\n"),
            "what is left of the desired lifetime: {hdr}"
        );
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("50"), 11, "")), MSG);
        assert!(
            h.callbacks.borrow().is_empty(),
            "our own refresh: no consumer callback"
        );
    }

    // ---- db_mode 2 ----

    use crate::persist::OwnedVal;
    use crate::testing::MemStore;
    use std::rc::Rc;

    /// A db_mode 2 node over `db` (nodes of one test share it).
    fn db_node(db: &Rc<RefCell<MemStore>>) -> (Engine, FakeHost) {
        let (mut e, mut h) = engine();
        e.cfg.db_only = true;
        e.cfg.persist = true;
        e.shared = Box::leak(Box::new(Shared {
            scheduled: AtomicU32::new(0),
            tombs: crate::persist::Tombstones::default(),
            etag_hint: AtomicU32::new(0),
        }));
        h.store = Some(db.clone());
        (e, h)
    }

    fn cell(db: &Rc<RefCell<MemStore>>, i: usize, col: &str) -> OwnedVal {
        db.borrow().rows[i]
            .get(col)
            .cloned()
            .unwrap_or(OwnedVal::Null)
    }

    #[test]
    fn db_only_publication_lives_in_the_database() {
        let db = Rc::new(RefCell::new(MemStore::default()));
        let (e, h) = db_node(&db);
        let mut i = intent(Some("<a/>"), 600, 0);
        i.id = b".".to_vec();
        assert_eq!(e.send_publish(&h, i.clone()), 0);
        let (req, hdr, _) = pop_sent(&h);
        assert!(!hdr.contains("SIP-If-Match"));
        assert!(db.borrow().rows.is_empty(), "nothing stored before the 2xx");
        e.on_reply(&h, req, Some(&ok("e1", 600)), MSG);
        assert!(stored(&e).is_empty(), "nothing left in memory");
        assert_eq!(db.borrow().rows.len(), 1);
        assert_eq!(cell(&db, 0, "etag"), OwnedVal::Str(b"e1".to_vec()));
        assert_eq!(cell(&db, 0, "expires"), OwnedVal::Int(10_600));
        // Two modifications: each found in the database by URI, event and id.
        for (n, etag) in [(1, "e2"), (2, "e3")] {
            let mut m = i.clone();
            m.body = Some(format!("<m{n}/>").into_bytes());
            assert_eq!(e.send_publish(&h, m), 0);
            let (req, hdr, body) = pop_sent(&h);
            let prev = if n == 1 { "e1" } else { "e2" };
            assert!(hdr.contains(&format!("SIP-If-Match: {prev}\r\n")), "{hdr}");
            assert_eq!(body.unwrap(), format!("<m{n}/>;v{n}").into_bytes());
            e.on_reply(&h, req, Some(&ok(etag, 600)), MSG);
            assert_eq!(db.borrow().rows.len(), 1, "one row, not one per change");
            assert_eq!(
                cell(&db, 0, "etag"),
                OwnedVal::Str(etag.as_bytes().to_vec())
            );
            assert_eq!(cell(&db, 0, "version"), OwnedVal::Int(n));
        }
        // Removal: Expires 0 with the stored etag; the row goes.
        let mut r = i.clone();
        r.body = None;
        r.ext.asked = 0;
        assert_eq!(e.send_publish(&h, r), 0);
        let (req, hdr, _) = pop_sent(&h);
        assert!(
            hdr.contains("Expires: 0\r\n") && hdr.contains("SIP-If-Match: e3"),
            "{hdr}"
        );
        e.on_reply(
            &h,
            req,
            Some(&ReplyInfo {
                code: 200,
                expires: Some(b"0".to_vec().into()),
                etag: Some(b"e3".to_vec().into()),
                ..Default::default()
            }),
            MSG,
        );
        assert!(db.borrow().rows.is_empty(), "{:?}", db.borrow().rows);
        assert!(stored(&e).is_empty());
    }

    #[test]
    fn db_only_unreadable_database_is_an_error_not_a_new_publication() {
        let db = Rc::new(RefCell::new(MemStore::default()));
        let (e, h) = db_node(&db);
        e.send_publish(&h, intent(Some("<a/>"), 600, 0));
        let (req, _, _) = pop_sent(&h);
        db.borrow_mut().down = true;
        e.on_reply(&h, req, Some(&ok("e1", 600)), MSG);
        assert_eq!(stored(&e).len(), 1, "kept in memory while the write fails");
        assert_eq!(e.send_publish(&h, intent(Some("<b/>"), 600, 0)), 0);
        let (req, hdr, _) = pop_sent(&h);
        assert!(hdr.contains("SIP-If-Match: e1"), "found in memory: {hdr}");
        e.on_reply(&h, req, Some(&ok("e2", 600)), MSG);
        db.borrow_mut().down = false;
        e.settle(&h, None);
        assert!(stored(&e).is_empty());
        assert_eq!(db.borrow().rows.len(), 1);
        assert_eq!(cell(&db, 0, "etag"), OwnedVal::Str(b"e2".to_vec()));
        // A lookup that cannot read the table fails instead of publishing anew.
        db.borrow_mut().down = true;
        assert_eq!(e.send_publish(&h, intent(Some("<c/>"), 600, 0)), -1);
        assert!(h.sent.borrow().is_empty());
    }

    #[test]
    fn db_only_timer_refreshes_on_one_node_only() {
        let db = Rc::new(RefCell::new(MemStore::default()));
        let (a, ha) = db_node(&db);
        let (b, hb) = db_node(&db);
        a.send_publish(&ha, intent(Some("<a/>"), 3600, 0));
        let (req, _, _) = pop_sent(&ha);
        a.on_reply(&ha, req, Some(&ok("e1", 60)), MSG);
        // Due (expires 10_060 within update_period 100): both nodes' timers run.
        hb.now.set(10_010);
        ha.now.set(10_010);
        assert!(stored(&a).is_empty(), "A keeps nothing in memory");
        let sb = b.pass(&hb, true);
        let sa = a.pass(&ha, true);
        assert_eq!(
            (sb.refreshed, sa.refreshed),
            (1, 0),
            "one node takes the row"
        );
        let (req, hdr, body) = pop_sent(&hb);
        assert!(hdr.contains("SIP-If-Match: e1") && body.is_none(), "{hdr}");
        assert!(ha.sent.borrow().is_empty());
        b.on_reply(&hb, req, Some(&ok("e2", 60)), MSG);
        assert!(stored(&b).is_empty() && stored(&a).is_empty());
        assert_eq!(cell(&db, 0, "etag"), OwnedVal::Str(b"e2".to_vec()));
        assert_eq!(cell(&db, 0, "expires"), OwnedVal::Int(10_070));
        // Node A changes it next: it reads B's etag from the database.
        a.send_publish(&ha, intent(Some("<b/>"), 3600, 0));
        let (req, hdr, _) = pop_sent(&ha);
        assert!(hdr.contains("SIP-If-Match: e2"), "{hdr}");
        a.on_reply(&ha, req, Some(&ok("e3", 60)), MSG);
        // Expired rows (no refresh wanted any more) are deleted by the pass.
        db.borrow_mut().rows[0].insert("desired_expires", OwnedVal::Int(10_050));
        hb.now.set(10_200);
        assert_eq!(b.pass(&hb, true).expired_deleted, 1);
        assert!(db.borrow().rows.is_empty());
    }

    #[test]
    fn db_only_subscription_dialog_and_notify() {
        let db = Rc::new(RefCell::new(MemStore::default()));
        let (e, h) = db_node(&db);
        assert_eq!(
            e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false),
            0
        );
        let (q, _, _, d) = pop_dialog(&h);
        assert_eq!(stored(&e).len(), 1, "temporary dialog in memory");
        e.on_sub_reply(
            &h,
            q,
            Some(&sub_ok(Some("600"), 10, "sip:carol@10.0.0.9")),
            MSG,
        );
        assert!(stored(&e).is_empty());
        assert_eq!(db.borrow().rows.len(), 1);
        assert_eq!(cell(&db, 0, "to_tag"), OwnedVal::Str(b"srv-tag".to_vec()));
        assert_eq!(cell(&db, 0, "call_id"), OwnedVal::Str(d.call_id.clone()));
        // NOTIFY from another process/node: found in the database.
        assert_eq!(
            e.update_contact(
                &h,
                None,
                &d.call_id,
                b"srv-tag",
                &d.loc_tag,
                b"<sip:carol@10.0.0.42>"
            ),
            1
        );
        assert_eq!(
            cell(&db, 0, "remote_contact"),
            OwnedVal::Str(b"sip:carol@10.0.0.42".to_vec())
        );
        assert_eq!(
            e.update_contact(&h, None, b"nope", b"srv-tag", &d.loc_tag, b"sip:x@y"),
            -1
        );
        // A refresh goes in dialog, to the new target, next CSeq.
        e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false);
        let (q, _, _, d2) = pop_dialog(&h);
        assert_eq!(
            (d2.call_id.as_slice(), d2.rem_tag.as_slice(), d2.cseq),
            (d.call_id.as_slice(), &b"srv-tag"[..], 11)
        );
        assert_eq!(d2.rem_target, b"sip:carol@10.0.0.42");
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("600"), 11, "")), MSG);
        assert_eq!(cell(&db, 0, "cseq"), OwnedVal::Int(11));
        // get_record_id / is_dialog answer from the rows.
        let k = RecordData {
            call_id: d.call_id.clone(),
            from_tag: d.loc_tag.clone(),
            ..Default::default()
        };
        let rows = e.dialog_rows(&h, &k);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, b"rls-1");
        assert_eq!(
            e.subs_list_rows(&h, b"rls-1"),
            vec![b"sip:carol@example.com".to_vec()]
        );
        // un-SUBSCRIBE: the row goes.
        e.send_subscribe(&h, sub_intent(0, 0), SubsFlags::default(), false);
        let (q, _, hdr, _) = pop_dialog(&h);
        assert!(hdr.contains("Expires: 0"), "{hdr}");
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("0"), 12, "")), MSG);
        assert!(db.borrow().rows.is_empty(), "{:?}", db.borrow().rows);
        assert!(stored(&e).is_empty());
    }

    /// Another worker of the same node: the engine's shm handles, its own
    /// host (and database connection to the same database).
    fn other_worker(e: &Engine, db: &Rc<RefCell<MemStore>>) -> (Engine, FakeHost) {
        let h = FakeHost {
            store: Some(db.clone()),
            ..Default::default()
        };
        (e.clone(), h)
    }

    #[test]
    fn db_only_lookup_survives_another_worker_evicting_the_record() {
        // A publication at rest in the database; its row is brought in
        // (or found in memory), and before the bucket is locked again
        // another worker's settle lets it go (CI saw this as pua_rpc's
        // "Wrong ETag" for a modify right after the previous 200).
        let db = Rc::new(RefCell::new(MemStore::default()));
        let (e, h) = db_node(&db);
        e.send_publish(&h, intent(Some("<a/>"), 600, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e1", 600)), MSG);
        assert!(stored(&e).is_empty() && db.borrow().rows.len() == 1);
        for with_etag in [true, false] {
            let (w2, h2) = other_worker(&e, &db);
            *h.on_now.borrow_mut() = Some(Box::new(move || w2.settle(&h2, None)));
            let mut m = intent(Some("<b/>"), 600, 0);
            let et = cell(&db, 0, "etag");
            if with_etag {
                let OwnedVal::Str(et) = et else {
                    panic!("{et:?}")
                };
                m.etag = et;
            }
            assert_eq!(e.send_publish(&h, m), 0, "with etag: {with_etag}");
            assert!(h.on_now.borrow().is_none(), "the other worker ran");
            let (req, hdr, _) = pop_sent(&h);
            let want = if with_etag { "e1" } else { "e2" };
            assert!(
                hdr.contains(&format!("SIP-If-Match: {want}\r\n")),
                "a modify of the stored publication, not a new one: {hdr}"
            );
            e.on_reply(
                &h,
                req,
                Some(&ok(if with_etag { "e2" } else { "e3" }, 600)),
                MSG,
            );
            assert_eq!(db.borrow().rows.len(), 1, "{:?}", db.borrow().rows);
        }
        // The same for a subscription's dialog, step by step.
        assert_eq!(
            e.send_subscribe(&h, sub_intent(600, 0), SubsFlags::default(), false),
            0
        );
        let (q, _, _, d) = pop_dialog(&h);
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("600"), 10, "")), MSG);
        let mut key = sub_intent(600, 0);
        key.flag = crate::flags::RLS_SUBSCRIBE;
        let ticket = e.preload_subscription(&h, &key, false).unwrap();
        assert_eq!(stored(&e).len(), 1, "brought in");
        let (w2, h2) = other_worker(&e, &db);
        w2.settle(&h2, None);
        assert!(stored(&e).is_empty(), "let go by the other worker");
        let w = key.watcher_uri.clone().unwrap();
        let intent = sub_intent(600, 0);
        let f = SubsFlags::default();
        assert_eq!(
            e.send_subscribe_in(&h, &intent, &key, f, false, &w, 0, ticket),
            STALE,
            "a new dialog would have been started"
        );
        assert!(h.dialogs.borrow().is_empty() && stored(&e).is_empty());
        assert_eq!(e.send_subscribe(&h, intent, f, false), 0);
        let (q, _, _, d2) = pop_dialog(&h);
        assert_eq!((d2.call_id, d2.cseq), (d.call_id, 11), "in the dialog");
        e.on_sub_reply(&h, q, Some(&sub_ok(Some("600"), 11, "")), MSG);
    }

    #[test]
    fn db_only_row_writes_keep_the_order_of_the_changes() {
        // Worker A writes the row of a 200 (etag e1); while its write is
        // on its way, worker B modifies the publication and gets e2. The
        // row must end with e2, and the record leave memory only then.
        let db = Rc::new(RefCell::new(MemStore::default()));
        let (e, h) = db_node(&db);
        e.send_publish(&h, intent(Some("<a/>"), 600, 0));
        let (req, _, _) = pop_sent(&h);
        let (w2, h2) = other_worker(&e, &db);
        *h.on_store.borrow_mut() = Some(Box::new(move || {
            let mut m = intent(Some("<b/>"), 600, 0);
            m.etag = b"e1".to_vec();
            assert_eq!(w2.send_publish(&h2, m), 0);
            let (req, hdr, _) = pop_sent(&h2);
            assert!(hdr.contains("SIP-If-Match: e1\r\n"), "{hdr}");
            w2.on_reply(&h2, req, Some(&ok("e2", 600)), MSG);
            assert_eq!(
                stored(&w2).len(),
                1,
                "B left the row to A, the chain's writer"
            );
        }));
        e.on_reply(&h, req, Some(&ok("e1", 600)), MSG);
        assert!(h.on_store.borrow().is_none(), "worker B ran");
        assert_eq!(db.borrow().rows.len(), 1, "{:?}", db.borrow().rows);
        assert_eq!(cell(&db, 0, "etag"), OwnedVal::Str(b"e2".to_vec()));
        assert!(stored(&e).is_empty(), "written, then let go");

        // A writes e3's row; meanwhile B removes the publication: the
        // DELETE comes after A's UPDATE (which would otherwise find no row
        // and INSERT it again).
        let mut m = intent(Some("<c/>"), 600, 0);
        m.etag = b"e2".to_vec();
        assert_eq!(e.send_publish(&h, m), 0);
        let (req, _, _) = pop_sent(&h);
        let (w2, h2) = other_worker(&e, &db);
        *h.on_store.borrow_mut() = Some(Box::new(move || {
            let mut m = intent(None, 0, 0);
            m.etag = b"e3".to_vec();
            assert_eq!(w2.send_publish(&h2, m), 0);
            let (req, hdr, _) = pop_sent(&h2);
            assert!(hdr.contains("Expires: 0\r\n"), "{hdr}");
            w2.on_reply(&h2, req, Some(&ok("e3", 0)), MSG);
        }));
        e.on_reply(&h, req, Some(&ok("e3", 600)), MSG);
        assert!(h.on_store.borrow().is_none(), "worker B ran");
        assert!(db.borrow().rows.is_empty(), "{:?}", db.borrow().rows);
        assert!(stored(&e).is_empty());
        // The chain is free again: a new publication is written at once.
        e.send_publish(&h, intent(Some("<d/>"), 600, 0));
        let (req, _, _) = pop_sent(&h);
        e.on_reply(&h, req, Some(&ok("e4", 600)), MSG);
        assert_eq!(cell(&db, 0, "etag"), OwnedVal::Str(b"e4".to_vec()));
    }

    #[test]
    fn db_only_a_panicking_write_leaves_the_chain_writable() {
        let db = Rc::new(RefCell::new(MemStore::default()));
        let (e, h) = db_node(&db);
        e.send_publish(&h, intent(Some("<a/>"), 600, 0));
        let (req, _, _) = pop_sent(&h);
        *h.on_store.borrow_mut() = Some(Box::new(|| panic!("a bug in a write")));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            e.on_reply(&h, req, Some(&ok("e1", 600)), MSG)
        }));
        assert!(r.is_err());
        assert!(db.borrow().rows.is_empty());
        // The next settle of the chain writes the row (the bit came back).
        e.settle(&h, None);
        assert_eq!(cell(&db, 0, "etag"), OwnedVal::Str(b"e1".to_vec()));
        assert!(stored(&e).is_empty());
    }
}
