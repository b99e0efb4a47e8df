//! The SUBSCRIBE side of the engine (RFC 6665): dialogs made by initial
//! SUBSCRIBEs, refreshed and ended in dialog, replies handled so that a
//! subscription survives what should not kill it, and NOTIFYs matched to
//! their dialogs (`pua_update_contact`).
//!
//! A subscription record has `watcher_uri` set. It is *temporary* (no To
//! tag) from the initial SUBSCRIBE until its 2xx, then *confirmed*.

use crate::engine::{until_fresh, Engine, Host, Msg, STALE};
use crate::events;
use crate::flags::*;
use crate::publish::{parse_delta_seconds, MAX_FORWARDS, MAX_RETRIES, MAX_RETRY_AFTER};
use crate::table::{ext_of, free_record, BucketRef, Node, Rec, RecordData, EXT_HAD_423};
use crate::{lm_dbg, lm_err, lm_info, lm_warn};
use std::sync::atomic::{AtomicU32, Ordering};

/// `Ext::kind` of SUBSCRIBE requests (PUBLISH kinds are 1..=4).
pub const SUB_INITIAL: u32 = 11;
pub const SUB_REFRESH: u32 = 12;
pub const SUB_REMOVE: u32 = 13;

/// The CSeq of an initial SUBSCRIBE (tm's DEFAULT_CSEQ).
pub const INITIAL_CSEQ: u32 = 10;
/// A temporary dialog lives this long without its 2xx (2 * 64 T1, as C).
pub const TEMPORARY_LIFETIME: u32 = 64;
/// `subs_info_t.internal_update_flag` value of rls' internal updates.
pub const INTERNAL_UPDATE_TRUE: i32 = 1;

/// Everything tm needs to send a request on a dialog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DialogSpec {
    pub call_id: Vec<u8>,
    pub loc_tag: Vec<u8>,
    /// Empty for the initial request of a new dialog.
    pub rem_tag: Vec<u8>,
    pub cseq: u32,
    pub loc_uri: Vec<u8>,
    pub rem_uri: Vec<u8>,
    pub rem_target: Vec<u8>,
    pub dst_uri: Option<Vec<u8>>,
    /// Record-Route of the 2xx, reversed (as stored in `record_route`).
    pub route_set: Vec<u8>,
}

/// A reply to a SUBSCRIBE, as far as the engine cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubReplyInfo {
    pub code: u32,
    pub expires: Option<Vec<u8>>,
    pub min_expires: Option<Vec<u8>>,
    pub retry_after: Option<Vec<u8>>,
    pub to_tag: Vec<u8>,
    pub contact: Vec<u8>,
    pub record_route: Vec<u8>,
    pub cseq: Option<u32>,
}

/// What a reply means for the subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubOutcome {
    /// 2xx to the initial SUBSCRIBE: the dialog is confirmed.
    Confirmed { to_tag: Vec<u8>, expires: u32 },
    /// 2xx to a refresh.
    Refreshed { expires: u32 },
    /// 2xx with Expires 0, a removal answered, or a final error that ends
    /// the subscription (481, 404, 410, 489, other 4xx-6xx).
    Ended { reason: String },
    /// 423: ask again with this Expires (once).
    RetryWithExpires(u32),
    /// 408, 5xx or no reply to an in-dialog request: keep the dialog and
    /// send again after this many seconds.
    RetryLater(u32),
}

/// The SUBSCRIBE headers (no fixed buffer; the Expires asked, not +10).
pub fn build_headers(event: &[u8], contact: &[u8], expires: u32, extra: Option<&[u8]>) -> Vec<u8> {
    let mut h = Vec::with_capacity(96 + event.len() + contact.len() + extra.map_or(0, <[u8]>::len));
    h.extend_from_slice(format!("Max-Forwards: {MAX_FORWARDS}\r\nEvent: ").as_bytes());
    h.extend_from_slice(event);
    h.extend_from_slice(b"\r\nContact: <");
    h.extend_from_slice(contact);
    h.extend_from_slice(format!(">\r\nExpires: {expires}\r\n").as_bytes());
    if let Some(x) = extra.filter(|x| !x.is_empty()) {
        h.extend_from_slice(x);
        if !x.ends_with(b"\r\n") {
            h.extend_from_slice(b"\r\n");
        }
    }
    h
}

/// Backoff before re-sending a failed refresh: Retry-After when given (up
/// to an hour), else 5 s doubling per retry, at most 300 s.
pub fn backoff(retry_after: Option<&[u8]>, retries: u32) -> u32 {
    retry_after
        .and_then(parse_delta_seconds)
        .filter(|&s| s <= MAX_RETRY_AFTER)
        .unwrap_or_else(|| (5u32 << retries.min(6)).min(300))
}

/// Classifies a reply (`None`: tm's FAKED_REPLY) to a SUBSCRIBE of `kind`.
pub fn classify(
    info: Option<&SubReplyInfo>,
    kind: u32,
    asked: u32,
    retries: u32,
    had_423: bool,
) -> SubOutcome {
    let initial = kind == SUB_INITIAL;
    let Some(r) = info else {
        return if initial || kind == SUB_REMOVE {
            SubOutcome::Ended {
                reason: "no reply".into(),
            }
        } else {
            SubOutcome::RetryLater(backoff(None, retries))
        };
    };
    match r.code {
        200..=299 => {
            // A 2xx without Expires keeps what we asked (RFC 6665 requires
            // one; the C module deleted the dialog).
            let expires = match r.expires.as_deref() {
                None => asked,
                Some(v) => match parse_delta_seconds(v) {
                    Some(e) => e,
                    None => {
                        return SubOutcome::Ended {
                            reason: format!(
                                "{} with an unparsable Expires '{}'",
                                r.code,
                                String::from_utf8_lossy(v)
                            ),
                        }
                    }
                },
            };
            if expires == 0 || kind == SUB_REMOVE {
                return SubOutcome::Ended {
                    reason: "ended by the notifier (Expires 0)".into(),
                };
            }
            if initial {
                if r.to_tag.is_empty() {
                    return SubOutcome::Ended {
                        reason: format!("{} without a To tag", r.code),
                    };
                }
                SubOutcome::Confirmed {
                    to_tag: r.to_tag.clone(),
                    expires,
                }
            } else {
                SubOutcome::Refreshed { expires }
            }
        }
        423 if !had_423 => match r.min_expires.as_deref().and_then(parse_delta_seconds) {
            Some(m) if m > 0 => SubOutcome::RetryWithExpires(m),
            _ => SubOutcome::Ended {
                reason: "423 without a usable Min-Expires".into(),
            },
        },
        408 | 500..=599 if !initial && kind != SUB_REMOVE && retries < 2 * MAX_RETRIES => {
            SubOutcome::RetryLater(backoff(r.retry_after.as_deref(), retries))
        }
        c => SubOutcome::Ended {
            reason: format!("final reply {c}"),
        },
    }
}

/// A subscription record's identity for `send_subscribe` (`search_htable`
/// with a watcher): flag, event, presentity, watcher, id when given, and
/// the remote target when `check_remote_contact` is on.
fn same_subscription(p: &Node, q: &RecordData, check_remote_contact: bool) -> bool {
    let (uri, watcher, id, rc) = (
        p.pres_uri(),
        p.watcher_uri().unwrap_or_default(),
        p.id(),
        p.remote_contact(),
    );
    p.flag & q.flag != 0
        && p.event & q.event != 0
        && !watcher.is_empty()
        && uri == q.pres_uri.as_slice()
        && Some(watcher) == q.watcher_uri.as_deref()
        && (q.id.is_empty() || id == q.id.as_slice())
        && (!check_remote_contact
            || (!q.remote_contact.is_empty() && rc == q.remote_contact.as_slice()))
}

/// The dialog of a request in flight (matched by Call-ID and local tag).
fn same_dialog(p: &Node, call_id: &[u8], from_tag: &[u8]) -> bool {
    p.call_id() == call_id && p.from_tag() == from_tag && p.is_subscription()
}

/// A Call-ID and a From tag for a new dialog.
pub fn new_dialog_ids() -> (Vec<u8>, Vec<u8>) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = crate::pid::process_id();
    (
        format!("pua-{pid:x}-{nanos:x}-{n:x}").into_bytes(),
        format!("{:x}{:x}", (nanos as u32) ^ pid.rotate_left(16), n).into_bytes(),
    )
}

/// What `send_subscribe` was asked (the parts of `subs_info_t` that are not
/// record fields).
#[derive(Clone, Copy, Debug, Default)]
pub struct SubsFlags {
    /// `flag & INSERT_TYPE`: always a new dialog.
    pub insert: bool,
    /// `internal_update_flag == INTERNAL_UPDATE_TRUE`.
    pub internal_update: bool,
}

impl Engine {
    fn sub_bucket(&self, pres_uri: &[u8], watcher: &[u8]) -> BucketRef<'_> {
        self.table
            .lock(self.table.bucket_of(pres_uri, Some(watcher)))
    }

    /// `send_subscribe`. `intent`: pres_uri, watcher_uri, contact,
    /// remote_contact (= remote_target, may be empty), outbound_proxy,
    /// event, flag (source flag), id, extra_headers, cb_param,
    /// desired_expires, `ext.asked` (0 ends the subscription).
    pub fn send_subscribe(
        &self,
        host: &dyn Host,
        intent: RecordData,
        f: SubsFlags,
        check_remote_contact: bool,
    ) -> i32 {
        let Some(_ev) = events::by_flag(intent.event) else {
            lm_err!("send_subscribe: event {} is not registered", intent.event);
            return -1;
        };
        let Some(watcher) = intent.watcher_uri.clone().filter(|w| !w.is_empty()) else {
            lm_err!("send_subscribe: no watcher URI");
            return -1;
        };
        if intent.pres_uri.is_empty() || intent.contact.is_empty() {
            lm_err!("send_subscribe: no presentity URI or contact");
            return -1;
        }
        let now = host.now();
        // XMPP_INITIAL_SUBS is stored as XMPP_SUBSCRIBE; callbacks see the
        // flag the consumer asked with.
        let mut rec_flag = intent.flag;
        if rec_flag & XMPP_INITIAL_SUBS != 0 {
            rec_flag = (rec_flag & !XMPP_INITIAL_SUBS) | XMPP_SUBSCRIBE;
        }
        let mut key = intent.clone();
        key.flag = rec_flag;
        let bucket = self.table.bucket_of(&intent.pres_uri, Some(&watcher));
        let code = until_fresh(|| {
            let ticket = if f.insert {
                None
            } else {
                match self.preload_subscription(host, &key, check_remote_contact) {
                    Ok(t) => t,
                    Err(()) => return -1,
                }
            };
            self.send_subscribe_in(
                host,
                &intent,
                &key,
                f,
                check_remote_contact,
                &watcher,
                now,
                ticket,
            )
        })
        .unwrap_or_else(|| crate::engine::gave_up("send_subscribe", &intent.pres_uri));
        self.settle(host, Some(&[bucket]));
        code
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_subscribe_in(
        &self,
        host: &dyn Host,
        intent: &RecordData,
        key: &RecordData,
        f: SubsFlags,
        check_remote_contact: bool,
        watcher: &[u8],
        now: u32,
        ticket: Option<u32>,
    ) -> i32 {
        let rec_flag = key.flag;
        let req = {
            let mut b = self.sub_bucket(&intent.pres_uri, watcher);
            if !Self::still_valid(&b, ticket) {
                return STALE;
            }
            let rec = if f.insert {
                None
            } else {
                b.find(|p| same_subscription(p, key, check_remote_contact))
            };
            match rec {
                None => {
                    if intent.ext.asked == 0 {
                        lm_dbg!("send_subscribe: un-SUBSCRIBE without a dialog");
                        return 0;
                    }
                    let (call_id, from_tag) = new_dialog_ids();
                    let mut d = intent.clone();
                    d.flag = rec_flag;
                    d.call_id = call_id;
                    d.from_tag = from_tag;
                    d.to_tag.clear();
                    d.cseq = INITIAL_CSEQ as i32;
                    d.expires = now + TEMPORARY_LIFETIME;
                    d.db_flag = INSERTDB_FLAG;
                    d.ext = Default::default();
                    d.ext.state = 1;
                    d.ext.gen = 1;
                    d.ext.sent_at = now;
                    let Some(r) = d.to_shm() else { return -1 };
                    b.push(r);
                    let mut q = d;
                    q.flag = intent.flag;
                    q.ext = Default::default();
                    q.ext.kind = SUB_INITIAL;
                    q.ext.asked = intent.ext.asked;
                    q.ext.gen = 1;
                    q
                }
                Some(r) => {
                    let e = ext_of(r);
                    let p = b.get(r);
                    if f.internal_update {
                        lm_info!("re-SUBSCRIBE on an internal (rls) update: skipped");
                        return 0;
                    }
                    if p.to_tag().is_empty() {
                        if intent.ext.asked > 0 {
                            lm_warn!("re-SUBSCRIBE to a dialog not yet established: skipped");
                        } else {
                            lm_warn!(
                                "un-SUBSCRIBE of a dialog not yet established: dropping the dialog"
                            );
                            if e.state == 0 {
                                self.drop_record(&mut b, r);
                            }
                        }
                        return 0;
                    }
                    if e.state != 0 {
                        let mut queued = intent.clone();
                        let asked = queued.ext.asked;
                        queued.ext = Default::default();
                        queued.ext.asked = asked;
                        let Some(q) = queued.to_shm() else { return -1 };
                        crate::engine::enqueue_request(e, q);
                        return 0;
                    }
                    let mut d = RecordData::from_rec(r);
                    d.cseq = d.cseq.wrapping_add(1);
                    if intent.ext.asked > 0 {
                        d.desired_expires = intent.desired_expires;
                    }
                    if intent.extra_headers.is_some() {
                        d.extra_headers = intent.extra_headers.clone();
                    }
                    if d.db_flag & NO_UPDATEDB_FLAG != 0 {
                        d.db_flag = UPDATEDB_FLAG;
                    }
                    d.ext.state = 1;
                    d.ext.gen = d.ext.gen.wrapping_add(1);
                    d.ext.sent_at = now;
                    let Some(nr) = d.to_shm() else { return -1 };
                    b.replace(r, nr);
                    let mut q = d;
                    q.flag = intent.flag;
                    q.ua_flag = intent.ua_flag;
                    q.cb_param = intent.cb_param;
                    let gen = q.ext.gen;
                    q.ext = Default::default();
                    q.ext.kind = if intent.ext.asked == 0 {
                        SUB_REMOVE
                    } else {
                        SUB_REFRESH
                    };
                    q.ext.asked = intent.ext.asked;
                    q.ext.gen = gen;
                    q
                }
            }
        };
        let Some(q) = req.to_shm() else { return -1 };
        let initial = req.ext.kind == SUB_INITIAL;
        match self.send_sub_req(host, q) {
            // C returns 0 when an initial SUBSCRIBE cannot be sent ("the
            // calling function must continue"); consumers rely on it.
            r if r < 0 && initial => 0,
            r => r,
        }
    }

    /// Sends a SUBSCRIBE request block; on failure releases its record.
    pub(crate) fn send_sub_req(&self, host: &dyn Host, q: Rec) -> i32 {
        let d = RecordData::from_rec(q);
        let Some(ev) = events::by_flag(d.event) else {
            lm_err!("event {} vanished", d.event);
            self.sub_abandon(q, &d);
            return -1;
        };
        let headers = build_headers(
            ev.name_bytes(),
            &d.contact,
            d.ext.asked,
            d.extra_headers.as_deref(),
        );
        let target = if d.remote_contact.is_empty() {
            d.pres_uri.clone()
        } else {
            d.remote_contact.clone()
        };
        let spec = DialogSpec {
            call_id: d.call_id.clone(),
            loc_tag: d.from_tag.clone(),
            rem_tag: d.to_tag.clone(),
            cseq: d.cseq.max(0) as u32,
            loc_uri: d.watcher_uri.clone().unwrap_or_default(),
            rem_uri: d.pres_uri.clone(),
            rem_target: target,
            dst_uri: d
                .outbound_proxy
                .clone()
                .or_else(|| self.cfg.outbound_proxy.clone()),
            route_set: d.record_route.clone(),
        };
        match host.send_on_dialog(q, b"SUBSCRIBE", &headers, &spec) {
            Ok(()) => 0,
            Err(_) => {
                lm_err!(
                    "cannot send SUBSCRIBE for {} (watcher {})",
                    String::from_utf8_lossy(&d.pres_uri),
                    String::from_utf8_lossy(d.watcher_uri.as_deref().unwrap_or_default())
                );
                self.sub_abandon(q, &d);
                -1
            }
        }
    }

    fn sub_abandon(&self, q: Rec, d: &RecordData) {
        let watcher = d.watcher_uri.clone().unwrap_or_default();
        {
            let mut b = self.sub_bucket(&d.pres_uri, &watcher);
            if let Some(r) = b
                .find(|p| same_dialog(p, &d.call_id, &d.from_tag))
                .filter(|&r| ext_of(r).gen == d.ext.gen)
            {
                if b.get(r).to_tag().is_empty() {
                    // SAFETY: the record is deleted right after; nobody else reaches it.
                    unsafe { crate::table::free_chains(ext_of(r)) };
                    self.drop_record(&mut b, r);
                } else {
                    ext_of(r).state = 0;
                }
            }
        }
        // SAFETY: the engine owns the block again (send failed).
        unsafe { free_record(q) };
    }

    /// The reply to SUBSCRIBE request `q` (`reply` None: FAKED_REPLY).
    pub fn on_sub_reply(&self, host: &dyn Host, q: Rec, reply: Option<&SubReplyInfo>, msg: Msg) {
        let now = host.now();
        let mut rd = RecordData::from_rec(q);
        let outcome = classify(
            reply,
            rd.ext.kind,
            rd.ext.asked,
            rd.ext.retries,
            rd.ext.flags & EXT_HAD_423 != 0,
        );
        let watcher = rd.watcher_uri.clone().unwrap_or_default();
        let mut keep = false;
        let mut resend = false;
        let mut run_cb = true;
        let mut pending = Vec::new();
        {
            let mut b = self.sub_bucket(&rd.pres_uri, &watcher);
            let rec = b
                .find(|p| same_dialog(p, &rd.call_id, &rd.from_tag))
                .filter(|&r| ext_of(r).gen == rd.ext.gen);
            match (&outcome, rec) {
                (SubOutcome::Confirmed { to_tag, expires }, Some(r)) => {
                    let mut d = RecordData::from_rec(r);
                    d.to_tag = to_tag.clone();
                    if let Some(r) = reply {
                        if !r.contact.is_empty() {
                            d.remote_contact = r.contact.clone();
                        }
                        d.record_route = r.record_route.clone();
                        if let Some(c) = r.cseq {
                            d.cseq = c as i32;
                        }
                    }
                    if d.remote_contact.is_empty() {
                        lm_warn!(
                            "2xx to SUBSCRIBE without Contact: using the presentity URI as target"
                        );
                    }
                    d.expires = now.saturating_add(*expires);
                    d.ext.state = 0;
                    d.ext.pending = std::ptr::null_mut();
                    d.ext.retry_req = std::ptr::null_mut();
                    pending = crate::engine::take_pending_requests(ext_of(r));
                    match d.to_shm() {
                        Some(nr) => {
                            b.replace(r, nr);
                        }
                        None => {
                            self.drop_record(&mut b, r);
                        }
                    }
                    rd.to_tag = to_tag.clone();
                }
                (SubOutcome::Refreshed { expires }, Some(r)) => {
                    let mut d = RecordData::from_rec(r);
                    d.expires = now.saturating_add(*expires);
                    if let Some(r) = reply {
                        if !r.contact.is_empty() {
                            d.remote_contact = r.contact.clone();
                        }
                    }
                    if d.db_flag & NO_UPDATEDB_FLAG != 0 {
                        d.db_flag = UPDATEDB_FLAG;
                    }
                    d.ext.state = 0;
                    d.ext.pending = std::ptr::null_mut();
                    d.ext.retry_req = std::ptr::null_mut();
                    pending = crate::engine::take_pending_requests(ext_of(r));
                    if let Some(nr) = d.to_shm() {
                        b.replace(r, nr);
                    }
                }
                (SubOutcome::Ended { reason }, rec) => {
                    if rd.ext.kind != SUB_REMOVE || reply.is_none_or(|r| r.code >= 300) {
                        lm_info!(
                            "subscription of {} to {} ended: {}",
                            String::from_utf8_lossy(&watcher),
                            String::from_utf8_lossy(&rd.pres_uri),
                            reason
                        );
                    }
                    if let Some(r) = rec {
                        pending = crate::engine::take_pending_requests(ext_of(r));
                        // SAFETY: the record is deleted right after.
                        unsafe { crate::table::free_chains(ext_of(r)) };
                        self.drop_record(&mut b, r);
                    }
                }
                (SubOutcome::RetryWithExpires(m), Some(r)) => {
                    let e = ext_of(r);
                    e.gen = e.gen.wrapping_add(1);
                    let mut d = RecordData::from_rec(r);
                    d.cseq = d.cseq.wrapping_add(1);
                    if let Some(nr) = d.to_shm() {
                        b.replace(r, nr);
                    }
                    let qe = ext_of(q);
                    qe.asked = *m;
                    qe.retries += 1;
                    qe.flags |= EXT_HAD_423;
                    qe.gen = d.ext.gen;
                    // SAFETY: we own `q`; fixed-size field.
                    unsafe { (*q.as_ptr()).cseq = d.cseq };
                    keep = true;
                    resend = true;
                    run_cb = false;
                }
                (SubOutcome::RetryLater(s), Some(r)) => {
                    lm_warn!(
                        "SUBSCRIBE refresh of {} to {} failed ({}): keeping the dialog, retrying in {} s",
                        String::from_utf8_lossy(&watcher),
                        String::from_utf8_lossy(&rd.pres_uri),
                        reply.map_or("no reply".to_string(), |r| r.code.to_string()),
                        s
                    );
                    let qe = ext_of(q);
                    qe.retries += 1;
                    // The clock has whole seconds: +1 makes it "at least s".
                    self.park(ext_of(r), q, now + s + 1);
                    keep = true;
                }
                (_, None) => lm_dbg!("reply for a subscription that is gone: {:?}", outcome),
            }
        }
        if run_cb && rd.ua_flag == REQ_OTHER {
            host.run_callbacks(&rd, msg);
        }
        if keep && !resend {
            // The consumer has had its reply; what follows is our own retry.
            // SAFETY: we own `q`; fixed-size fields.
            unsafe {
                (*q.as_ptr()).ua_flag = REQ_ME;
                (*q.as_ptr()).cb_param = std::ptr::null_mut();
            }
        }
        if !keep {
            // SAFETY: tm handed the block back.
            unsafe { free_record(q) };
        }
        if resend {
            self.send_sub_req(host, q);
        }
        self.resubmit_requests(host, pending);
        self.settle(host, Some(&[self.bucket_of_data(&rd)]));
    }

    /// Builds the in-dialog refresh of a confirmed, idle subscription due
    /// for one (called by the pass with the bucket locked).
    pub(crate) fn sub_refresh_req(&self, b: &mut BucketRef<'_>, r: Rec, now: u32) -> Option<Rec> {
        let mut d = RecordData::from_rec(r);
        d.cseq = d.cseq.wrapping_add(1);
        d.ext.state = 1;
        d.ext.gen = d.ext.gen.wrapping_add(1);
        d.ext.sent_at = now;
        let nr = d.to_shm()?;
        b.replace(r, nr);
        let mut q = d;
        q.ua_flag = REQ_ME;
        q.cb_param = 0;
        let gen = q.ext.gen;
        q.ext = Default::default();
        q.ext.kind = SUB_REFRESH;
        q.ext.asked = crate::publish::refresh_expires(
            q.desired_expires,
            now,
            self.cfg.default_expires,
            self.cfg.min_expires,
        );
        q.ext.gen = gen;
        q.to_shm()
    }

    /// `pua_update_contact()` on a NOTIFY: finds the dialog (Call-ID, the
    /// NOTIFY's To tag = our From tag, its From tag = our To tag) and
    /// updates its remote target. 1 found and updated, -1 otherwise.
    pub fn update_contact(
        &self,
        host: &dyn Host,
        hint: Option<(&[u8], &[u8])>,
        call_id: &[u8],
        notify_from_tag: &[u8],
        notify_to_tag: &[u8],
        contact: &[u8],
    ) -> i32 {
        if call_id.is_empty() || notify_to_tag.is_empty() {
            lm_err!("pua_update_contact: the request has no Call-ID or To tag");
            return -1;
        }
        let raw = contact;
        let contact = contact_uri(raw).unwrap_or_default();
        if contact.is_empty() || !looks_like_uri(contact) {
            lm_err!(
                "pua_update_contact: no usable Contact in the request ('{}')",
                String::from_utf8_lossy(raw)
            );
            return -1;
        }
        // The bucket of (From URI, To URI) of the NOTIFY holds the dialog
        // when the URIs are written as in the SUBSCRIBE; else look everywhere.
        let first = hint.map(|(p, w)| self.table.bucket_of(p, Some(w)));
        let order = first
            .into_iter()
            .chain((0..self.table.buckets()).filter(move |i| Some(*i) != first));
        for i in order {
            let mut b = self.table.lock(i);
            let found = b.find(|p| {
                let (cid, from_tag, to_tag) = (p.call_id(), p.from_tag(), p.to_tag());
                p.is_subscription()
                    && cid == call_id
                    && from_tag == notify_to_tag
                    && (to_tag.is_empty() || to_tag == notify_from_tag)
            });
            if let Some(r) = found {
                // SAFETY: valid under the lock.
                if b.get(r).remote_contact() == contact {
                    return 1;
                }
                let mut d = RecordData::from_rec(r);
                d.remote_contact = contact.to_vec();
                if d.db_flag & NO_UPDATEDB_FLAG != 0 {
                    d.db_flag = UPDATEDB_FLAG;
                }
                let code = match d.to_shm() {
                    Some(nr) => {
                        b.replace(r, nr);
                        1
                    }
                    None => -1,
                };
                drop(b);
                self.settle(host, Some(&[i]));
                return code;
            }
        }
        if let Some(code) =
            self.update_contact_db(host, call_id, notify_from_tag, notify_to_tag, contact)
        {
            if code == 1 {
                return 1;
            }
        }
        // Normal after an un-SUBSCRIBE: the final NOTIFY comes after its 2xx.
        crate::lm_notice!(
            "pua_update_contact: no pua dialog for Call-ID {}",
            String::from_utf8_lossy(call_id)
        );
        -1
    }
}

/// The URI of a Contact header value (`"Name" <uri>;params`, `<uri>` or
/// `uri;params`); `None` when there is none.
pub fn contact_uri(raw: &[u8]) -> Option<&[u8]> {
    let v = raw.trim_ascii();
    if v.is_empty() || v == b"*" {
        return None;
    }
    if let Some(open) = v.iter().position(|&c| c == b'<') {
        let rest = &v[open + 1..];
        let close = rest.iter().position(|&c| c == b'>')?;
        return Some(rest[..close].trim_ascii()).filter(|u| !u.is_empty());
    }
    let end = v
        .iter()
        .position(|&c| c == b';' || c == b',' || c.is_ascii_whitespace())
        .unwrap_or(v.len());
    Some(&v[..end]).filter(|u| !u.is_empty())
}

/// A minimal check that a Contact is a SIP URI we can send to.
fn looks_like_uri(c: &[u8]) -> bool {
    let lower = c.to_ascii_lowercase();
    (lower.starts_with(b"sip:") || lower.starts_with(b"sips:") || lower.starts_with(b"tel:"))
        && c.len() > 4
        && !c
            .iter()
            .any(|b| b.is_ascii_whitespace() || *b == b'<' || *b == b'>')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(expires: Option<&str>, to_tag: &str) -> SubReplyInfo {
        SubReplyInfo {
            code: 200,
            expires: expires.map(|e| e.as_bytes().to_vec()),
            to_tag: to_tag.as_bytes().to_vec(),
            contact: b"sip:srv@127.0.0.1".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn headers_ask_what_was_asked() {
        let h = String::from_utf8(build_headers(b"presence", b"sip:w@h", 600, Some(b"X-A: b")))
            .unwrap();
        assert_eq!(h, "Max-Forwards: 70\r\nEvent: presence\r\nContact: <sip:w@h>\r\nExpires: 600\r\nX-A: b\r\n");
    }

    #[test]
    fn classify_sub_replies() {
        assert_eq!(
            classify(Some(&ok(Some("300"), "t")), SUB_INITIAL, 600, 0, false),
            SubOutcome::Confirmed {
                to_tag: b"t".to_vec(),
                expires: 300
            }
        );
        assert_eq!(
            classify(Some(&ok(None, "t")), SUB_INITIAL, 600, 0, false),
            SubOutcome::Confirmed {
                to_tag: b"t".to_vec(),
                expires: 600
            },
            "no Expires: what we asked"
        );
        assert!(matches!(
            classify(Some(&ok(Some("300"), "")), SUB_INITIAL, 600, 0, false),
            SubOutcome::Ended { .. }
        ));
        assert_eq!(
            classify(Some(&ok(Some("120"), "t")), SUB_REFRESH, 600, 0, false),
            SubOutcome::Refreshed { expires: 120 }
        );
        assert!(matches!(
            classify(Some(&ok(Some("0"), "t")), SUB_REFRESH, 600, 0, false),
            SubOutcome::Ended { .. }
        ));
        let code = |c| SubReplyInfo {
            code: c,
            ..Default::default()
        };
        assert!(matches!(
            classify(Some(&code(481)), SUB_REFRESH, 600, 0, false),
            SubOutcome::Ended { .. }
        ));
        assert!(matches!(
            classify(Some(&code(404)), SUB_REFRESH, 600, 0, false),
            SubOutcome::Ended { .. }
        ));
        assert_eq!(
            classify(Some(&code(408)), SUB_REFRESH, 600, 0, false),
            SubOutcome::RetryLater(5)
        );
        assert_eq!(
            classify(Some(&code(500)), SUB_REFRESH, 600, 2, false),
            SubOutcome::RetryLater(20)
        );
        let mut r503 = code(503);
        r503.retry_after = Some(b"30".to_vec());
        assert_eq!(
            classify(Some(&r503), SUB_REFRESH, 600, 0, false),
            SubOutcome::RetryLater(30)
        );
        assert_eq!(
            classify(None, SUB_REFRESH, 600, 0, false),
            SubOutcome::RetryLater(5)
        );
        assert!(matches!(
            classify(None, SUB_INITIAL, 600, 0, false),
            SubOutcome::Ended { .. }
        ));
        assert!(matches!(
            classify(Some(&code(503)), SUB_INITIAL, 600, 0, false),
            SubOutcome::Ended { .. }
        ));
        let mut r423 = code(423);
        r423.min_expires = Some(b"3600".to_vec());
        assert_eq!(
            classify(Some(&r423), SUB_REFRESH, 600, 0, false),
            SubOutcome::RetryWithExpires(3600)
        );
        assert!(matches!(
            classify(Some(&r423), SUB_REFRESH, 600, 1, true),
            SubOutcome::Ended { .. }
        ));
    }

    #[test]
    fn contact_uris() {
        assert_eq!(
            contact_uri(b"<sip:a@h:5060;transport=udp>;expires=5"),
            Some(&b"sip:a@h:5060;transport=udp"[..])
        );
        assert_eq!(contact_uri(b"\"Bob\" <sip:b@h>"), Some(&b"sip:b@h"[..]));
        assert_eq!(contact_uri(b" sip:c@h;expires=60"), Some(&b"sip:c@h"[..]));
        assert_eq!(contact_uri(b"<sip:unterminated"), None);
        assert_eq!(contact_uri(b"*"), None);
        assert_eq!(contact_uri(b""), None);
    }

    #[test]
    fn contact_check() {
        assert!(looks_like_uri(b"sip:a@127.0.0.1:5060;transport=udp"));
        assert!(!looks_like_uri(b"garbage"));
        assert!(!looks_like_uri(b"sip:"));
        assert!(!looks_like_uri(b"sip:a b"));
    }

    #[test]
    fn dialog_ids_are_unique() {
        let a = new_dialog_ids();
        let b = new_dialog_ids();
        assert_ne!(a, b);
        assert!(!a.0.is_empty() && !a.1.is_empty());
    }
}
