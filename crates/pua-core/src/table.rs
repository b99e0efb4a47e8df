//! The record table in shared memory: chains (singly linked lists of
//! records), each guarded by its own cross-process [`FutexLock`] in the same
//! cache line as the chain's head.
//! Created in mod_init before the fork; every worker, the timer process and
//! the RPC process reach it through the same pointers.
//!
//! A record is one compact shm block, a [`Node`]: the fixed-size fields of
//! `ua_pres_t` and the engine state, then the lengths of the 15 string
//! fields as varints, then their bytes (one allocation per record; about
//! 110 bytes of header instead of the 256-byte `ua_pres_t` plus a `str`
//! per pointer field). Consumers never see a `Node`: their callbacks get a
//! `ua_pres_t` built from the record's values. A record is only read or
//! changed under its bucket's lock; changing a string field means building
//! a new block and [`BucketRef::replace`]-ing the old one.

use crate::hash::bucket_of;
use crate::lock::{FutexLock, LockGuard};
use crate::shm::{self, str_bytes, str_ptr_bytes};
use crate::sys::{str_, ua_pres_t};
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

/// A chain: its lock and its head (and db_mode 2's bookkeeping), 32
/// bytes, so taking the lock brings the head along (one cache miss, not
/// two).
#[repr(C)]
struct Chain {
    lock: FutexLock,
    /// db_mode 2, under the lock: [`WRITER`] while a process writes this
    /// chain's rows; below it, how many records have left memory for the
    /// database ([`BucketRef::evict`]), wrapping.
    meta: u32,
    head: *mut Node,
    /// db_mode 2: records deleted whose rows are still to be deleted
    /// ([`BucketRef::bury`]), linked by `next`, newest first.
    tombs: *mut Node,
    /// The last ticket handed out in this chain ([`BucketRef::next_ticket`]).
    tickets: u32,
}

/// [`Chain::meta`]'s writer bit.
const WRITER: u32 = 1 << 31;

/// A handle to the table; plain pointers into shm, valid in every process.
#[derive(Clone, Copy)]
pub struct Table {
    chain: *mut Chain,
    /// A power of two, at least `n`.
    chains: usize,
    /// 2^hash_size: the table size the operator configured.
    n: usize,
}

/// Chains per configured bucket: 2^hash_size is the table size an operator
/// configured for the C module (512 by default), which with 10,000
/// publications makes chains of 20 records, and every lookup that misses
/// walks one, a cache miss per record. More chains keep them short.
const CHAINS_PER_BUCKET: usize = 16;
/// The most chains we add beyond 2^hash_size (32 bytes each in shm).
const MAX_CHAINS: usize = 1 << 16;

// SAFETY: the handle is only pointers into shm; all access is under bucket locks.
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

/// A record block in shm (made by [`RecordData::to_shm`] or found in a
/// bucket). Read it through [`BucketRef::get`] while its bucket is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec(NonNull<Node>);

impl Rec {
    /// The block's address (a list link, or tm's callback parameter).
    pub fn as_ptr(self) -> *mut Node {
        self.0.as_ptr()
    }

    /// Takes back a pointer that came from [`Rec::as_ptr`] (e.g. tm's
    /// callback parameter or an `Ext` list); `None` for null.
    ///
    /// # Safety
    /// `p` must be null or a block built by [`RecordData::to_shm`].
    pub unsafe fn from_ptr(p: *mut Node) -> Option<Rec> {
        NonNull::new(p).map(Rec)
    }

    /// [`Rec::from_ptr`] for an opaque callback parameter.
    ///
    /// # Safety
    /// As [`Rec::from_ptr`].
    pub unsafe fn from_void(p: *mut c_void) -> Option<Rec> {
        NonNull::new(p as *mut Node).map(Rec)
    }

    /// The record's fields. For a table record, only while its bucket is
    /// locked; a request block belongs to whoever holds it.
    ///
    /// # Safety
    /// See above: no one may change or free the block meanwhile.
    pub unsafe fn node<'a>(self) -> &'a Node {
        &*self.0.as_ptr()
    }
}

// SAFETY: a pointer into shm, valid in every process; access is under bucket locks.
unsafe impl Send for Rec {}

/// Engine state kept right after the `ua_pres_t` in every block we build
/// (never in a consumer's `ua_pres_t`). For a table record it says whether
/// a request is in flight and what waits; for a request block (the tm
/// callback parameter) what was sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ext {
    /// Record: 1 while a request is in flight (or scheduled for a retry).
    pub state: u32,
    /// Record: bumped per request; a request carries the value it was sent with.
    pub gen: u32,
    /// Request: retries so far (412, 423, 5xx, local timeout).
    pub retries: u32,
    /// Record: when the scheduled retry (`retry_req`) is due (0: none).
    pub retry_at: u32,
    /// Request: a `publish::Kind` (or a subscribe kind). Record with
    /// [`EXT_TICKET`]: the ticket of its request.
    pub kind: u32,
    /// Request: the Expires asked. Record with [`EXT_TICKET`]: the same.
    pub asked: u32,
    /// Bit flags (`EXT_*`).
    pub flags: u32,
    /// Record: when the in-flight request was sent.
    pub sent_at: u32,
    /// Record: requests waiting for the one in flight (linked by `next`).
    pub pending: *mut Node,
    /// Record: a request to send again at `retry_at`.
    pub retry_req: *mut Node,
}

impl Default for Ext {
    fn default() -> Self {
        Ext {
            state: 0,
            gen: 0,
            retries: 0,
            retry_at: 0,
            kind: 0,
            asked: 0,
            flags: 0,
            sent_at: 0,
            pending: ptr::null_mut(),
            retry_req: ptr::null_mut(),
        }
    }
}

/// `Ext::flags`: the local timeout of this record was logged already.
pub const EXT_TIMEOUT_LOGGED: u32 = 1;
/// `Ext::flags`: this request was retried after a 423 already.
pub const EXT_HAD_423: u32 = 2;
/// `Ext::flags`: the record's body is packed (`pack::pack`).
pub const EXT_BODY_PACKED: u32 = 4;
/// Request: parked for a retry after a local timeout (no reply at all), so
/// newer state from a consumer supersedes it at once instead of waiting.
pub const EXT_RETRY_TIMEOUT: u32 = 8;
/// Record: its request (a new publication's first PUBLISH) went out
/// without a request block: tm holds a ticket (chain and number, see
/// `engine::Param`) and the record keeps what the reply needs, the ticket
/// in `Ext::kind` and the Expires asked in `Ext::asked`.
pub const EXT_TICKET: u32 = 16;

/// The string fields of a record, in the order they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum F {
    Id = 0,
    PresUri,
    OutboundProxy,
    Etag,
    TupleId,
    Body,
    ContentType,
    WatcherUri,
    CallId,
    ToTag,
    FromTag,
    ExtraHeaders,
    RecordRoute,
    RemoteContact,
    Contact,
}
const NFIELDS: usize = 15;

/// A record block: `ua_pres_t`'s fixed-size fields (same names), the
/// engine state, which optional strings are present, then (after the
/// struct) the strings' lengths as LEB128 varints and their bytes.
#[repr(C)]
pub struct Node {
    pub next: *mut Node,
    pub cb_param: *mut c_void,
    // What a bucket walk compares first, in the block's first 32 bytes.
    pub event: i32,
    pub flag: i32,
    /// [`crate::hash::uri_hash`] of `pres_uri`, set by `to_shm` (pres_uri
    /// never changes in place): a chain walk compares it before it reads
    /// the strings in the block's tail.
    pub uri_hash: u32,
    pub expires: u32,
    pub desired_expires: u32,
    pub db_flag: i32,
    pub ua_flag: i32,
    pub cseq: i32,
    pub version: i32,
    /// Bit `F as u8`: the optional field is present (`Some`, maybe empty).
    present: u16,
    /// Bytes of varints after the struct (15 varints of at most 3 bytes).
    lens_len: u8,
    /// Unused bytes at the end of the block (the allocator's rounding up to
    /// its size class, and what a value made shorter in place left): a
    /// string field may grow in place by that much ([`Node::set_in_place`]).
    room: u8,
    ext: Ext,
}

impl Node {
    fn tail(&self) -> *const u8 {
        // SAFETY: the varints and strings follow the struct in its block.
        unsafe { (self as *const Node as *const u8).add(std::mem::size_of::<Node>()) }
    }

    /// A string field (empty when absent).
    pub fn s(&self, f: F) -> &[u8] {
        let t = self.tail();
        let (mut off, mut i, mut pos) = (0usize, 0usize, 0usize);
        let want = f as usize;
        let lens_len = self.lens_len as usize;
        // SAFETY: `lens_len` varints were written by `to_shm`, followed by
        // the strings whose lengths they give, all inside the block.
        unsafe {
            while pos < lens_len {
                let len = read_varint(t, &mut pos);
                if i == want {
                    return std::slice::from_raw_parts(t.add(lens_len + off), len);
                }
                off += len;
                i += 1;
            }
        }
        &[]
    }

    /// Sets a string field in the block itself: overwritten when the length
    /// is the same (an etag from the same server usually is), the tail
    /// rewritten when the value is shorter or the room a shorter value left
    /// holds the difference; `false` otherwise (the caller builds a new
    /// block). Never `pres_uri`, which is hashed into `uri_hash`. (A block
    /// has the allocator's slack as room, 0-31 bytes with pua's 32-byte
    /// size classes, plus what its maker asked for: a new publication asks
    /// for the length of the last etag seen, `Shared::etag_hint`, so its
    /// first etag fits without a new block and without bytes the record
    /// would not hold anyway.)
    pub fn set_in_place(&mut self, f: F, v: &[u8]) -> bool {
        if matches!(f, F::PresUri) {
            return false;
        }
        let cur = self.s(f);
        if cur.len() == v.len() {
            let p = cur.as_ptr() as *mut u8;
            // SAFETY: `p` points at the field's bytes inside our block, which
            // `&mut self` lets us change; lengths are equal.
            unsafe { ptr::copy_nonoverlapping(v.as_ptr(), p, v.len()) };
            return true;
        }
        if v.len() > cur.len() + self.room as usize {
            return false;
        }
        if self.shift_in_place(f, v) {
            return true;
        }
        // The tail as it is, copied aside (records are small; larger ones
        // take the caller's path), then written anew with `v`.
        const MAX_TAIL: usize = 1024;
        let mut vals = self.values();
        let old_len: usize =
            self.lens_len as usize + vals.iter().map(|v| v.map_or(0, <[u8]>::len)).sum::<usize>();
        if old_len > MAX_TAIL {
            return false;
        }
        // Not zeroed first (a 1 KiB memset per call, measured): only the
        // `old_len` bytes copied into it are read.
        let mut buf = std::mem::MaybeUninit::<[u8; MAX_TAIL]>::uninit();
        // SAFETY: the tail is `old_len` bytes after the struct, in our
        // block; `buf` has MAX_TAIL >= old_len bytes; the slice covers only
        // the bytes just written.
        let copy: &[u8] = unsafe {
            ptr::copy_nonoverlapping(self.tail(), buf.as_mut_ptr().cast::<u8>(), old_len);
            std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), old_len)
        };
        let mut off = self.lens_len as usize;
        for slot in vals.iter_mut() {
            if let Some(x) = slot {
                let l = x.len();
                *slot = Some(&copy[off..off + l]);
                off += l;
            }
        }
        vals[f as usize] = Some(v);
        let (lens_len, data_len, present) = layout(&vals);
        let new_len = lens_len + data_len;
        let Some(room) = (old_len + self.room as usize)
            .checked_sub(new_len)
            .and_then(|r| u8::try_from(r).ok())
        else {
            return false;
        };
        let Ok(lens_len_u8) = u8::try_from(lens_len) else {
            return false;
        };
        // SAFETY: the block has old_len + room bytes after the struct, at
        // least new_len; `vals` points into `copy` and `v`, not the block.
        unsafe { write_tail(self.tail() as *mut u8, lens_len, &vals) };
        self.lens_len = lens_len_u8;
        self.present = present;
        self.room = room;
        true
    }

    /// [`Node::set_in_place`] when the field is present and its length's
    /// varint keeps its width (an etag of 1-127 bytes where there was none:
    /// a new publication's first 2xx): the bytes after the field move by
    /// the difference and the varint is overwritten, nothing else is
    /// rewritten. `false`: not that case, nothing changed.
    fn shift_in_place(&mut self, f: F, v: &[u8]) -> bool {
        let want = f as usize;
        if OPTIONAL & (1 << want) != 0 && self.present & (1 << want) == 0 {
            return false;
        }
        let t = self.tail() as *mut u8;
        let lens_len = self.lens_len as usize;
        // (its varint's offset and width, its bytes' offset and length)
        let mut field = None;
        let (mut pos, mut i, mut data_len) = (0usize, 0usize, 0usize);
        // SAFETY: as in `s`: `lens_len` varints written by write_block.
        unsafe {
            while pos < lens_len {
                let start = pos;
                let len = read_varint(t, &mut pos);
                if i == want {
                    field = Some((start, pos - start, data_len, len));
                }
                data_len += len;
                i += 1;
            }
        }
        let Some((vpos, width, off, cur)) = field else {
            return false;
        };
        if varint_len(v.len()) != width {
            return false;
        }
        let Some(room) = (self.room as usize + cur)
            .checked_sub(v.len())
            .and_then(|r| u8::try_from(r).ok())
        else {
            return false;
        };
        // SAFETY: the block has lens_len + data_len + room bytes after the
        // struct, and the new data is at most data_len + room long; `v` is
        // not in the block (the caller's value); the varint keeps its width.
        unsafe {
            let d = t.add(lens_len);
            let after = off + cur;
            ptr::copy(d.add(after), d.add(off + v.len()), data_len - after);
            ptr::copy_nonoverlapping(v.as_ptr(), d.add(off), v.len());
            write_varint(t.add(vpos), v.len());
        }
        self.room = room;
        true
    }

    /// The string fields as stored (`None`: an absent optional one).
    fn values(&self) -> [Option<&[u8]>; NFIELDS] {
        let mut vals: [Option<&[u8]>; NFIELDS] = [None; NFIELDS];
        let t = self.tail();
        let lens_len = self.lens_len as usize;
        let (mut pos, mut off, mut i) = (0usize, 0usize, 0usize);
        // SAFETY: as in `s`: the varints and strings written by write_block.
        unsafe {
            while pos < lens_len && i < NFIELDS {
                let len = read_varint(t, &mut pos);
                let v = std::slice::from_raw_parts(t.add(lens_len + off), len);
                vals[i] = (OPTIONAL & (1 << i) == 0 || self.present & (1 << i) != 0).then_some(v);
                off += len;
                i += 1;
            }
        }
        vals
    }

    /// A new block with this one's fixed fields and engine state (`next`
    /// cleared) and its strings, except the fields in `edits` (`None`:
    /// absent for an optional field, empty otherwise). No heap allocation:
    /// what the reply path uses when an etag of another length comes back.
    pub fn rebuild(&self, edits: &[(F, Option<&[u8]>)]) -> Option<Rec> {
        let mut vals = self.values();
        for &(f, v) in edits {
            let i = f as usize;
            vals[i] = if OPTIONAL & (1 << i) != 0 {
                v
            } else {
                Some(v.unwrap_or(&[]))
            };
        }
        // SAFETY: a bitwise copy of the fixed fields (raw pointers and
        // integers); the new block does not share the chain link.
        let mut head = unsafe { ptr::read(self) };
        head.next = ptr::null_mut();
        head.uri_hash = crate::hash::uri_hash(vals[F::PresUri as usize].unwrap_or(&[]));
        write_block(head, &vals, 0)
    }

    /// Whether this record's pres_uri is `uri`, whose
    /// [`crate::hash::uri_hash`] is `h` (the hash first: most records of a
    /// bucket differ there, and it sits in the block's first cache line).
    #[inline]
    pub fn uri_is(&self, h: u32, uri: &[u8]) -> bool {
        self.uri_hash == h && self.pres_uri() == uri
    }

    /// The engine state (as [`ext_of`], through the node).
    pub fn ext(&self) -> &Ext {
        &self.ext
    }

    /// The engine state, to change (the bucket locked).
    pub fn ext_mut(&mut self) -> &mut Ext {
        &mut self.ext
    }

    /// An optional string field: `None` when absent.
    pub fn opt(&self, f: F) -> Option<&[u8]> {
        (self.present & (1 << f as u8) != 0).then(|| self.s(f))
    }

    pub fn id(&self) -> &[u8] {
        self.s(F::Id)
    }
    pub fn pres_uri(&self) -> &[u8] {
        self.s(F::PresUri)
    }
    pub fn etag(&self) -> &[u8] {
        self.s(F::Etag)
    }
    pub fn tuple_id(&self) -> &[u8] {
        self.s(F::TupleId)
    }
    pub fn body(&self) -> Option<&[u8]> {
        self.opt(F::Body)
    }
    /// The watcher URI; `None` for a publication.
    pub fn watcher_uri(&self) -> Option<&[u8]> {
        self.opt(F::WatcherUri)
    }
    /// A subscription record (a watcher URI, even empty, as C's non-NULL pointer).
    pub fn is_subscription(&self) -> bool {
        self.watcher_uri().is_some()
    }
    pub fn call_id(&self) -> &[u8] {
        self.s(F::CallId)
    }
    pub fn to_tag(&self) -> &[u8] {
        self.s(F::ToTag)
    }
    pub fn from_tag(&self) -> &[u8] {
        self.s(F::FromTag)
    }
    pub fn remote_contact(&self) -> &[u8] {
        self.s(F::RemoteContact)
    }
}

/// Bytes of `v` as a LEB128 varint.
fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// The owned values of a record, used to build its shm block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordData {
    pub id: Vec<u8>,
    pub pres_uri: Vec<u8>,
    pub event: i32,
    pub expires: u32,
    pub desired_expires: u32,
    pub flag: i32,
    pub db_flag: i32,
    pub cb_param: usize,
    pub ua_flag: i32,
    pub outbound_proxy: Option<Vec<u8>>,
    pub etag: Vec<u8>,
    pub tuple_id: Vec<u8>,
    pub body: Option<Vec<u8>>,
    pub content_type: Vec<u8>,
    pub watcher_uri: Option<Vec<u8>>,
    pub call_id: Vec<u8>,
    pub to_tag: Vec<u8>,
    pub from_tag: Vec<u8>,
    pub cseq: i32,
    pub version: i32,
    pub extra_headers: Option<Vec<u8>>,
    pub record_route: Vec<u8>,
    pub remote_contact: Vec<u8>,
    pub contact: Vec<u8>,
    /// Engine state (not part of a consumer's `ua_pres_t`).
    pub ext: Ext,
}

// SAFETY: `Ext`'s pointers are shm addresses only dereferenced under locks.
unsafe impl Send for RecordData {}

impl RecordData {
    /// Back to `Default`, keeping the capacity of the always-present strings
    /// for the next use of a scratch value; returns the body's buffer
    /// (emptied) for reuse, the body itself is `None` now.
    pub fn clear(&mut self) -> Option<Vec<u8>> {
        let keep = |v: &mut Vec<u8>| {
            let mut v = std::mem::take(v);
            v.clear();
            v
        };
        let body = self.body.take().map(|mut b| {
            b.clear();
            b
        });
        *self = RecordData {
            id: keep(&mut self.id),
            pres_uri: keep(&mut self.pres_uri),
            etag: keep(&mut self.etag),
            content_type: keep(&mut self.content_type),
            ..Default::default()
        };
        body
    }
}

fn opt(p: *const str_) -> Option<Vec<u8>> {
    // SAFETY: callers pass records whose str pointers are null or valid.
    (!p.is_null()).then(|| unsafe { str_ptr_bytes(p) }.to_vec())
}

impl RecordData {
    /// Copies the values out of a record (a table record or a consumer's
    /// stack `ua_pres_t`).
    ///
    /// # Safety
    /// Every `str`/`str*` of `r` must be null or point at valid bytes.
    pub unsafe fn from_record(r: &ua_pres_t) -> RecordData {
        RecordData {
            id: str_bytes(&r.id).to_vec(),
            pres_uri: str_ptr_bytes(r.pres_uri).to_vec(),
            event: r.event,
            expires: r.expires,
            desired_expires: r.desired_expires,
            flag: r.flag,
            db_flag: r.db_flag,
            cb_param: r.cb_param as usize,
            ua_flag: r.ua_flag,
            outbound_proxy: opt(r.outbound_proxy),
            etag: str_bytes(&r.etag).to_vec(),
            tuple_id: str_bytes(&r.tuple_id).to_vec(),
            body: opt(r.body),
            content_type: str_bytes(&r.content_type).to_vec(),
            watcher_uri: opt(r.watcher_uri),
            call_id: str_bytes(&r.call_id).to_vec(),
            to_tag: str_bytes(&r.to_tag).to_vec(),
            from_tag: str_bytes(&r.from_tag).to_vec(),
            cseq: r.cseq,
            version: r.version,
            extra_headers: opt(r.extra_headers),
            record_route: str_bytes(&r.record_route).to_vec(),
            remote_contact: str_bytes(&r.remote_contact).to_vec(),
            contact: str_bytes(&r.contact).to_vec(),
            ext: Ext::default(),
        }
    }

    /// The values of one of our blocks, engine state included.
    pub fn from_rec(r: Rec) -> RecordData {
        // SAFETY: `Rec`s are blocks built by `to_shm`; callers hold the
        // bucket lock or own the block.
        let n = unsafe { r.node() };
        let v = |f: F| n.s(f).to_vec();
        let o = |f: F| n.opt(f).map(<[u8]>::to_vec);
        RecordData {
            id: v(F::Id),
            pres_uri: v(F::PresUri),
            outbound_proxy: o(F::OutboundProxy),
            etag: v(F::Etag),
            tuple_id: v(F::TupleId),
            body: o(F::Body),
            content_type: v(F::ContentType),
            watcher_uri: o(F::WatcherUri),
            call_id: v(F::CallId),
            to_tag: v(F::ToTag),
            from_tag: v(F::FromTag),
            extra_headers: o(F::ExtraHeaders),
            record_route: v(F::RecordRoute),
            remote_contact: v(F::RemoteContact),
            contact: v(F::Contact),
            ..Self::scalars(n)
        }
    }

    /// The fixed-size fields of a block and its engine state; strings empty.
    fn scalars(n: &Node) -> RecordData {
        RecordData {
            event: n.event,
            expires: n.expires,
            desired_expires: n.desired_expires,
            flag: n.flag,
            db_flag: n.db_flag,
            cb_param: n.cb_param as usize,
            ua_flag: n.ua_flag,
            cseq: n.cseq,
            version: n.version,
            ext: n.ext,
            ..Default::default()
        }
    }

    /// The fixed-size fields and engine state of a block, no strings.
    pub fn scalars_of(r: Rec) -> RecordData {
        // SAFETY: as `from_rec`.
        Self::scalars(unsafe { r.node() })
    }

    /// Builds the record as one shm block; `None` when shm is exhausted.
    pub fn to_shm(&self) -> Option<Rec> {
        self.to_shm_with_room(0)
    }

    /// [`RecordData::to_shm`] with at least `room` spare bytes after the
    /// strings, so a field can grow by that much in place
    /// ([`Node::set_in_place`]).
    pub fn to_shm_with_room(&self, room: usize) -> Option<Rec> {
        let empty: &[u8] = &[];
        let fields: [(Option<&[u8]>, bool); NFIELDS] = [
            (Some(&self.id), false),
            (Some(&self.pres_uri), false),
            (self.outbound_proxy.as_deref(), true),
            (Some(&self.etag), false),
            (Some(&self.tuple_id), false),
            (self.body.as_deref(), true),
            (Some(&self.content_type), false),
            (self.watcher_uri.as_deref(), true),
            (Some(&self.call_id), false),
            (Some(&self.to_tag), false),
            (Some(&self.from_tag), false),
            (self.extra_headers.as_deref(), true),
            (Some(&self.record_route), false),
            (Some(&self.remote_contact), false),
            (Some(&self.contact), false),
        ];
        let head = Node {
            next: ptr::null_mut(),
            cb_param: self.cb_param as *mut c_void,
            event: self.event,
            flag: self.flag,
            uri_hash: crate::hash::uri_hash(&self.pres_uri),
            expires: self.expires,
            desired_expires: self.desired_expires,
            db_flag: self.db_flag,
            ua_flag: self.ua_flag,
            cseq: self.cseq,
            version: self.version,
            present: 0,
            lens_len: 0,
            room: 0,
            ext: self.ext,
        };
        let mut vals: [Option<&[u8]>; NFIELDS] = [None; NFIELDS];
        for (i, (v, optional)) in fields.iter().enumerate() {
            vals[i] = if *optional {
                *v
            } else {
                Some(v.unwrap_or(empty))
            };
        }
        write_block(head, &vals, room)
    }

    /// The bucket key of this record.
    pub fn key(&self) -> (&[u8], Option<&[u8]>) {
        (
            &self.pres_uri,
            self.watcher_uri.as_deref().filter(|w| !w.is_empty()),
        )
    }
}

/// The engine state of a block built by [`RecordData::to_shm`]. For a table
/// record, only touch it with the bucket locked; a request block belongs to
/// whoever holds it (tm's callback parameter).
#[allow(clippy::mut_from_ref)]
pub fn ext_of<'a>(r: Rec) -> &'a mut Ext {
    // SAFETY: every `Rec` is a `Node` (to_shm is the only constructor);
    // exclusivity is the caller's protocol (bucket lock or ownership).
    unsafe { &mut (*r.as_ptr()).ext }
}

/// Frees the request blocks a record holds (its queue and its parked retry).
///
/// # Safety
/// `e` must be the state of a record no one else can reach any more.
pub unsafe fn free_chains(e: &mut Ext) {
    let mut p = std::mem::replace(&mut e.pending, ptr::null_mut());
    while let Some(r) = Rec::from_ptr(p) {
        p = (*p).next;
        free_record(r);
    }
    if let Some(r) = Rec::from_ptr(std::mem::replace(&mut e.retry_req, ptr::null_mut())) {
        free_record(r);
    }
}

/// The LEB128 varint at `t + *pos`, advancing `*pos` past it.
///
/// # Safety
/// A complete varint (as `write_block` writes them) must start there.
#[inline]
unsafe fn read_varint(t: *const u8, pos: &mut usize) -> usize {
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = *t.add(*pos);
        *pos += 1;
        len |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return len;
        }
    }
}

/// Fields that may be absent (`None`), as opposed to empty.
const OPTIONAL: u16 = (1 << F::OutboundProxy as u16)
    | (1 << F::Body as u16)
    | (1 << F::WatcherUri as u16)
    | (1 << F::ExtraHeaders as u16);

/// (bytes of varints, bytes of strings, `present` bits) of a block's tail.
fn layout(vals: &[Option<&[u8]>; NFIELDS]) -> (usize, usize, u16) {
    let mut present = 0u16;
    let mut lens_len = 0usize;
    let mut data_len = 0usize;
    for (i, v) in vals.iter().enumerate() {
        if OPTIONAL & (1 << i) != 0 && v.is_some() {
            present |= 1 << i;
        }
        let l = v.map_or(0, <[u8]>::len);
        lens_len += varint_len(l);
        data_len += l;
    }
    (lens_len, data_len, present)
}

/// Writes `l` as a LEB128 varint ([`varint_len`] bytes) at `p`; returns
/// the byte after it.
///
/// # Safety
/// `p` has room for `varint_len(l)` bytes.
unsafe fn write_varint(mut p: *mut u8, mut l: usize) -> *mut u8 {
    loop {
        let b = (l & 0x7f) as u8;
        l >>= 7;
        *p = if l > 0 { b | 0x80 } else { b };
        p = p.add(1);
        if l == 0 {
            return p;
        }
    }
}

/// Writes the varints and the strings of `vals` at `tail`.
///
/// # Safety
/// `tail` must have room for `lens_len` (from [`layout`]) plus the strings'
/// bytes, and not overlap them.
unsafe fn write_tail(tail: *mut u8, lens_len: usize, vals: &[Option<&[u8]>; NFIELDS]) {
    let mut lp = tail;
    let mut dp = lp.add(lens_len);
    for v in vals.iter() {
        let v = v.unwrap_or(&[]);
        lp = write_varint(lp, v.len());
        ptr::copy_nonoverlapping(v.as_ptr(), dp, v.len());
        dp = dp.add(v.len());
    }
}

/// Allocates a block holding `head` (its `present` and `lens_len` are
/// computed here, `next` must be null) and the strings `vals` (`None`:
/// absent, for the optional fields; empty otherwise).
fn write_block(mut head: Node, vals: &[Option<&[u8]>; NFIELDS], room: usize) -> Option<Rec> {
    let (lens_len, data_len, present) = layout(vals);
    head.present = present;
    head.lens_len = u8::try_from(lens_len).ok()?;
    let hsize = std::mem::size_of::<Node>();
    let size = hsize + lens_len + data_len;
    let asked = size + room.min(u8::MAX as usize);
    head.room = u8::try_from(shm::usable(asked) - size).unwrap_or(u8::MAX);
    // Not zeroed: the struct and the tail are written in full below (the
    // room after them is never read).
    let base = shm::alloc_uninit(asked)?;
    let n = base as *mut Node;
    // SAFETY: `base` has room for the struct, the varints and the bytes.
    unsafe {
        n.write(head);
        write_tail(base.add(hsize), lens_len, vals);
    }
    NonNull::new(n).map(Rec)
}

/// Frees a record block made by [`RecordData::to_shm`].
///
/// # Safety
/// `r` must be unlinked from the table and not used afterwards.
pub unsafe fn free_record(r: Rec) {
    shm::free(r.as_ptr());
}

impl Table {
    /// Allocates the chains of a table of `n` (a power of two) buckets in
    /// shm, all empty.
    pub fn new(n: usize) -> Option<Table> {
        assert!(n.is_power_of_two());
        let chains = n.max(n.saturating_mul(CHAINS_PER_BUCKET).min(MAX_CHAINS));
        let bytes = chains.checked_mul(std::mem::size_of::<Chain>())?;
        // Zeroed: every head null.
        let chain = shm::alloc_zeroed(bytes)? as *mut Chain;
        for i in 0..chains {
            // SAFETY: inside the fresh allocation.
            unsafe { FutexLock::init(ptr::addr_of_mut!((*chain.add(i)).lock)) };
        }
        Some(Table { chain, chains, n })
    }

    /// Number of chains: what `bucket_of` returns indices for and what a
    /// walk over the whole table iterates (`lock(i)` for each).
    pub fn buckets(&self) -> usize {
        self.chains
    }

    /// The configured table size (2^hash_size).
    pub fn configured(&self) -> usize {
        self.n
    }

    /// The chain of a presentity URI (+ watcher URI for subscriptions).
    pub fn bucket_of(&self, pres_uri: &[u8], watcher_uri: Option<&[u8]>) -> usize {
        bucket_of(pres_uri, watcher_uri.filter(|w| !w.is_empty()), self.chains)
    }

    /// Asks the CPU to bring chain `i` (its lock and head) into the cache,
    /// without waiting: called on entry to a PUBLISH or a reply, whose
    /// chain is a cache miss (another process, often on the other core,
    /// wrote it last), so that the line arrives while the caller copies
    /// strings or reads headers, and [`Table::lock`] finds it there.
    #[inline]
    pub fn prefetch(&self, i: usize) {
        if i < self.chains {
            prefetch_line(self.chain.wrapping_add(i).cast());
        }
    }

    /// Locks chain `i` and gives access to its records until dropped.
    pub fn lock(&self, i: usize) -> BucketRef<'_> {
        assert!(i < self.chains);
        // SAFETY: index in range; the chains live as long as the table.
        let c = unsafe { self.chain.add(i) };
        // SAFETY: as above; the lock is atomics (shared access is fine).
        let guard = unsafe { &(*c).lock }.lock();
        BucketRef {
            // SAFETY: as above; written only while the lock is held.
            head: unsafe { ptr::addr_of_mut!((*c).head) },
            // SAFETY: as above.
            meta: unsafe { ptr::addr_of_mut!((*c).meta) },
            // SAFETY: as above.
            tombs: unsafe { ptr::addr_of_mut!((*c).tombs) },
            // SAFETY: as above.
            tickets: unsafe { ptr::addr_of_mut!((*c).tickets) },
            _guard: guard,
        }
    }

    /// Inserts a record built from `data` into its bucket; returns it.
    pub fn insert(&self, data: &RecordData) -> Option<Rec> {
        let r = data.to_shm()?;
        let (p, w) = data.key();
        self.lock(self.bucket_of(p, w)).push(r);
        Some(r)
    }

    /// Number of records (takes every bucket lock in turn).
    pub fn len(&self) -> usize {
        (0..self.chains).map(|i| self.lock(i).iter().count()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees every record and the buckets (module destroy).
    ///
    /// # Safety
    /// No other process may use the table any more.
    pub unsafe fn destroy(self) {
        for i in 0..self.chains {
            let mut b = self.lock(i);
            while let Some(r) = b.pop() {
                free_chains(ext_of(r));
                free_record(r);
            }
            for r in b.take_tombs() {
                free_record(r);
            }
        }
        shm::free(self.chain);
    }
}

/// A hint to the CPU to load the cache line at `p`; no effect on the
/// program's meaning (a prefetch neither faults nor reads into a value).
#[inline(always)]
pub fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 has no architectural effect and cannot fault.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A locked bucket. Record pointers obtained from it are valid while it lives.
pub struct BucketRef<'a> {
    /// The chain's head pointer (in shm), guarded by `_guard`.
    head: *mut *mut Node,
    /// The chain's writer bit and eviction count (in shm), guarded by `_guard`.
    meta: *mut u32,
    /// The chain's tomb list (in shm), guarded by `_guard`.
    tombs: *mut *mut Node,
    /// The chain's ticket counter (in shm), guarded by `_guard`.
    tickets: *mut u32,
    _guard: LockGuard<'a>,
}

impl BucketRef<'_> {
    /// The records of the bucket, newest first.
    pub fn iter(&self) -> impl Iterator<Item = Rec> + '_ {
        // SAFETY: the bucket is locked; list nodes are valid records.
        let mut p = unsafe { *self.head };
        std::iter::from_fn(move || {
            let r = NonNull::new(p)?;
            // SAFETY: as above.
            p = unsafe { (*p).next };
            Some(Rec(r))
        })
    }

    /// Reads a record of this bucket; valid while the bucket stays locked.
    pub fn get(&self, r: Rec) -> &Node {
        // SAFETY: `Rec`s are valid record blocks; the lock keeps them alive.
        unsafe { r.0.as_ref() }
    }

    /// Changes fixed-size fields of a record of this bucket in place.
    pub fn get_mut(&mut self, r: Rec) -> &mut Node {
        // SAFETY: as `get`; the lock makes us the only accessor.
        unsafe { &mut *r.as_ptr() }
    }

    /// The first record matching `pred`.
    pub fn find(&self, pred: impl Fn(&Node) -> bool) -> Option<Rec> {
        self.iter().find(|&r| pred(self.get(r)))
    }

    /// A number no other record of this chain had for the last 2^32 - 1
    /// tickets (never 0): what a request without a block is known by
    /// ([`EXT_TICKET`]).
    pub fn next_ticket(&mut self) -> u32 {
        // SAFETY: bucket locked.
        unsafe {
            let t = (*self.tickets).wrapping_add(1).max(1);
            *self.tickets = t;
            t
        }
    }

    /// Links a record (from [`RecordData::to_shm`]) at the head of the bucket.
    pub fn push(&mut self, r: Rec) {
        // SAFETY: bucket locked; `r` is a valid unlinked record.
        unsafe {
            (*r.as_ptr()).next = *self.head;
            *self.head = r.as_ptr();
        }
    }

    fn pop(&mut self) -> Option<Rec> {
        // SAFETY: bucket locked.
        unsafe {
            let r = NonNull::new(*self.head)?;
            *self.head = (*r.as_ptr()).next;
            (*r.as_ptr()).next = ptr::null_mut();
            Some(Rec(r))
        }
    }

    /// The link that points at `r`, if `r` is in this bucket.
    fn link_to(&mut self, r: Rec) -> Option<*mut *mut Node> {
        // SAFETY: bucket locked; we walk the `next` links of valid records.
        unsafe {
            let mut link: *mut *mut Node = self.head;
            while !(*link).is_null() {
                if *link == r.as_ptr() {
                    return Some(link);
                }
                link = ptr::addr_of_mut!((**link).next);
            }
        }
        None
    }

    /// Unlinks `r`; returns whether it was in this bucket. The caller frees it.
    pub fn unlink(&mut self, r: Rec) -> bool {
        let Some(link) = self.link_to(r) else {
            return false;
        };
        // SAFETY: `link` points at `r` inside this locked bucket.
        unsafe {
            *link = (*r.as_ptr()).next;
            (*r.as_ptr()).next = ptr::null_mut();
        }
        true
    }

    /// Unlinks and frees `r`.
    pub fn delete(&mut self, r: Rec) -> bool {
        let found = self.unlink(r);
        if found {
            // SAFETY: unlinked just now; the bucket lock kept others away.
            unsafe { free_record(r) };
        }
        found
    }

    /// db_mode 2: deletes a record that is not gone but only left memory
    /// (its row holds it), and counts that in the chain. A process that
    /// found the record here, or brought its row in, and locks the chain
    /// again later compares [`BucketRef::evictions`] to learn whether what
    /// it saw may have left meanwhile (then it reads the row again).
    pub fn evict(&mut self, r: Rec) -> bool {
        let found = self.delete(r);
        if found {
            // SAFETY: bucket locked.
            unsafe {
                let m = *self.meta;
                *self.meta = (m & WRITER) | (m.wrapping_add(1) & !WRITER);
            }
        }
        found
    }

    /// How many records have been evicted from this chain (wraps).
    pub fn evictions(&self) -> u32 {
        // SAFETY: bucket locked.
        unsafe { *self.meta & !WRITER }
    }

    /// db_mode 2: whether a process is writing this chain's rows.
    pub fn writer_busy(&self) -> bool {
        // SAFETY: bucket locked.
        unsafe { *self.meta & WRITER != 0 }
    }

    /// db_mode 2: takes (`true`) or gives back the right to write this
    /// chain's rows. One writer per chain keeps the writes of a row in the
    /// order of the changes and its DELETE after them.
    pub fn set_writer(&mut self, on: bool) {
        // SAFETY: bucket locked.
        unsafe {
            if on {
                *self.meta |= WRITER;
            } else {
                *self.meta &= !WRITER;
            }
        }
    }

    /// db_mode 2: unlinks `r`, a deleted record whose row is still to be
    /// deleted, and keeps its block on the chain's tomb list for the
    /// chain's writer ([`BucketRef::take_tombs`]).
    pub fn bury(&mut self, r: Rec) -> bool {
        if !self.unlink(r) {
            return false;
        }
        self.rebury(r);
        true
    }

    /// db_mode 2: the chain's tomb blocks, oldest first (the caller frees
    /// them, or buries them again).
    pub fn take_tombs(&mut self) -> Vec<Rec> {
        let mut v = Vec::new();
        // SAFETY: bucket locked; the list is ours once detached.
        unsafe {
            let mut p = std::mem::replace(&mut *self.tombs, ptr::null_mut());
            while let Some(r) = NonNull::new(p) {
                p = (*p).next;
                (*r.as_ptr()).next = ptr::null_mut();
                v.push(Rec(r));
            }
        }
        v.reverse();
        v
    }

    /// Links an unlinked block onto the tomb list (also a tomb whose
    /// DELETE failed, taken off by [`BucketRef::take_tombs`]).
    pub fn rebury(&mut self, r: Rec) {
        // SAFETY: bucket locked; `r` is a valid unlinked block.
        unsafe {
            (*r.as_ptr()).next = *self.tombs;
            *self.tombs = r.as_ptr();
        }
    }

    /// Puts `new` in place of `old` (same position) and frees `old`.
    pub fn replace(&mut self, old: Rec, new: Rec) -> bool {
        let Some(link) = self.link_to(old) else {
            return false;
        };
        // SAFETY: `link` points at `old` inside this locked bucket; `new` is
        // a valid unlinked record.
        unsafe {
            (*new.as_ptr()).next = (*old.as_ptr()).next;
            *link = new.as_ptr();
            free_record(old);
        }
        true
    }
}

/// Dialog lookups as the C module's `get_dialog` / `get_temporary_dialog`:
/// a confirmed dialog matches flag, Call-ID, To tag and From tag; a
/// temporary one (no To tag yet) matches Call-ID and From tag.
pub mod dialog {
    use super::*;

    /// Confirmed dialog of `q` in a locked bucket.
    pub fn confirmed(b: &BucketRef<'_>, q: &RecordData) -> Option<Rec> {
        if q.to_tag.is_empty() {
            return None;
        }
        b.find(|p| {
            let (call_id, to_tag, from_tag) = (p.call_id(), p.to_tag(), p.from_tag());
            p.flag & q.flag != 0
                && !to_tag.is_empty()
                && call_id == q.call_id.as_slice()
                && to_tag == q.to_tag.as_slice()
                && from_tag == q.from_tag.as_slice()
        })
    }

    /// Temporary (not yet confirmed) dialog of `q` in a locked bucket.
    pub fn temporary(b: &BucketRef<'_>, q: &RecordData) -> Option<Rec> {
        b.find(|p| {
            let (call_id, from_tag) = (p.call_id(), p.from_tag());
            !call_id.is_empty()
                && call_id == q.call_id.as_slice()
                && from_tag == q.from_tag.as_slice()
        })
    }

    /// `is_dialog`: 0 confirmed, 1 temporary, -1 none.
    pub fn is_dialog(t: &Table, q: &RecordData) -> i32 {
        let (p, w) = q.key();
        let b = t.lock(t.bucket_of(p, w));
        if confirmed(&b, q).is_some() {
            0
        } else if temporary(&b, q).is_some() {
            1
        } else {
            -1
        }
    }

    /// `get_record_id`: the id of the (confirmed or temporary) dialog.
    pub fn record_id(t: &Table, q: &RecordData) -> Option<Vec<u8>> {
        let (p, w) = q.key();
        let b = t.lock(t.bucket_of(p, w));
        let r = confirmed(&b, q).or_else(|| temporary(&b, q))?;
        Some(b.get(r).id().to_vec())
    }

    /// `get_subs_list`: the presentity URIs of every record whose id starts
    /// with `did` (the C module compares `did.len` bytes), sorted, unique.
    pub fn subs_list(t: &Table, did: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..t.buckets() {
            let b = t.lock(i);
            for r in b.iter() {
                let rec = b.get(r);
                let (id, uri) = (rec.id(), rec.pres_uri());
                if !id.is_empty() && id.starts_with(did) && !uri.is_empty() {
                    out.push(uri.to_vec());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::*;
    use crate::testing::{fork_child, global_arena, live_here};

    fn publ(uri: &str, id: &str) -> RecordData {
        RecordData {
            id: id.into(),
            pres_uri: uri.into(),
            event: PRESENCE_EVENT,
            flag: UL_PUBLISH,
            etag: b"etag-1".to_vec(),
            body: Some(b"<presence/>".to_vec()),
            content_type: b"application/pidf+xml".to_vec(),
            expires: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn clear_resets_and_hands_back_the_body_buffer() {
        let mut d = publ("sip:a@b", "i");
        d.etag = b"e1".to_vec();
        d.watcher_uri = Some(b"sip:w@b".to_vec());
        d.ext.state = 1;
        let cap = d.pres_uri.capacity();
        let body = d.clear();
        assert_eq!(d, RecordData::default());
        assert!(d.pres_uri.capacity() >= cap, "capacity kept");
        assert_eq!(
            body.map(|b| (b.is_empty(), b.capacity() > 0)),
            Some((true, true))
        );
        assert_eq!(d.clear(), None, "no body: no buffer");
    }

    #[test]
    fn set_in_place_uses_the_blocks_room() {
        global_arena();
        let mut d = publ("sip:alice@example.com", "UL_PUBLISH.x");
        d.etag = vec![b'x'; 32];
        d.extra_headers = Some(vec![b'X'; 130]); // a two-byte varint
        let r = d.to_shm().unwrap();
        // SAFETY: fresh block, ours.
        let n = unsafe { &mut *r.as_ptr() };
        assert_eq!(n.room, 0);
        // Shorter: in place, the difference becomes room.
        assert!(n.set_in_place(F::Etag, b""));
        assert_eq!(n.room, 32);
        // Longer again, within the room.
        assert!(n.set_in_place(F::Etag, b"a.1732640123.12345.1.0"));
        d.etag = b"a.1732640123.12345.1.0".to_vec();
        assert_eq!(RecordData::from_rec(r), d);
        assert_eq!(n.room, 32 - 22);
        // Same length: overwritten; shorter: room given back.
        assert!(n.set_in_place(F::Etag, b"b.1732640123.12345.1.0"));
        assert!(n.set_in_place(F::Etag, b"c.1"));
        d.etag = b"c.1".to_vec();
        assert_eq!(RecordData::from_rec(r), d);
        assert_eq!(n.room, 32 - 3);
        // More than the room: refused, nothing changed.
        assert!(!n.set_in_place(F::Etag, &[b'e'; 40]));
        assert_eq!(RecordData::from_rec(r), d);
        // An optional field becomes present; a field crosses a varint size.
        assert!(n.set_in_place(F::OutboundProxy, b"sip:p"));
        d.outbound_proxy = Some(b"sip:p".to_vec());
        assert!(n.set_in_place(F::TupleId, &[b't'; 20]));
        d.tuple_id = vec![b't'; 20];
        assert_eq!(RecordData::from_rec(r), d);
        assert!(n.set_in_place(F::ExtraHeaders, &[b'Y'; 120])); // one-byte varint now
        d.extra_headers = Some(vec![b'Y'; 120]);
        assert_eq!(RecordData::from_rec(r), d);
        // pres_uri never changes in place; a block without room only takes
        // values of the same length.
        assert!(!n.set_in_place(F::PresUri, b"sip:alice@example.org"));
        let r2 = d.to_shm().unwrap();
        // SAFETY: as above.
        let n2 = unsafe { &mut *r2.as_ptr() };
        assert!(!n2.set_in_place(F::Etag, b"c.12"));
        assert!(n2.set_in_place(F::Etag, b"c.2"));
        // SAFETY: unlinked blocks, not used afterwards.
        unsafe {
            free_record(r);
            free_record(r2);
        }
    }

    #[test]
    fn rebuild_changes_only_the_edited_fields() {
        global_arena();
        let mut d = publ("sip:alice@example.com", "UL_PUBLISH.x");
        d.outbound_proxy = Some(Vec::new()); // present and empty
        d.extra_headers = Some(vec![b'X'; 300]);
        d.cb_param = 77;
        d.ext.state = 1;
        d.ext.gen = 9;
        let r = d.to_shm().unwrap();
        // SAFETY: fresh block, ours.
        let n = unsafe { r.node() };
        let long_etag = vec![b'e'; 200];
        let r2 = n
            .rebuild(&[(F::Etag, Some(&long_etag)), (F::Body, None)])
            .unwrap();
        let mut want = d.clone();
        want.etag = long_etag;
        want.body = None;
        assert_eq!(RecordData::from_rec(r2), want);
        // SAFETY: as above.
        let n2 = unsafe { r2.node() };
        assert_eq!(n2.uri_hash, n.uri_hash);
        assert!(n2.next.is_null());
        // Absent optional fields stay absent, and a new pres_uri is hashed.
        let r3 = n2
            .rebuild(&[(F::PresUri, Some(b"sip:bob@x")), (F::Etag, None)])
            .unwrap();
        want.pres_uri = b"sip:bob@x".to_vec();
        want.etag.clear();
        assert_eq!(RecordData::from_rec(r3), want);
        // SAFETY: as above.
        assert!(unsafe { r3.node() }.uri_is(crate::hash::uri_hash(b"sip:bob@x"), b"sip:bob@x"));
        // SAFETY: unlinked blocks, not used afterwards.
        unsafe {
            free_record(r);
            free_record(r2);
            free_record(r3);
        }
    }

    #[test]
    fn record_round_trips_through_shm() {
        global_arena();
        let mut d = publ("sip:alice@example.com", "UL_PUBLISH.x");
        d.watcher_uri = Some(b"sip:bob@example.com".to_vec());
        d.outbound_proxy = Some(b"sip:proxy".to_vec());
        // Long strings: lengths above one varint byte, and above 64 KiB.
        d.extra_headers = Some(vec![b'X'; 5000]);
        d.body = Some(vec![b'b'; 70_000]);
        d.call_id = b"cid".to_vec();
        d.ext.state = 1;
        d.ext.gen = 7;
        let r = d.to_shm().unwrap();
        assert_eq!(RecordData::from_rec(r), d);
        // SAFETY: a fresh block we own.
        let n = unsafe { r.node() };
        assert!(n.next.is_null());
        assert_eq!(n.pres_uri(), b"sip:alice@example.com");
        assert_eq!(n.watcher_uri(), Some(&b"sip:bob@example.com"[..]));
        assert_eq!(n.body().map(<[u8]>::len), Some(70_000));
        assert_eq!(n.etag(), b"etag-1");
        // SAFETY: ours, freed once.
        unsafe { free_record(r) };
        // Absent optional fields are None; present but empty ones are Some("").
        let mut e = publ("sip:a@b", "i");
        e.body = None;
        e.content_type.clear();
        e.extra_headers = Some(Vec::new());
        let r = e.to_shm().unwrap();
        // SAFETY: as above.
        let n = unsafe { r.node() };
        assert_eq!((n.watcher_uri(), n.body()), (None, None));
        assert!(!n.is_subscription());
        assert_eq!(n.opt(F::ExtraHeaders), Some(&b""[..]));
        assert_eq!(RecordData::from_rec(r), e);
        // SAFETY: as above.
        unsafe { free_record(r) };
        // The compact block is much smaller than a ua_pres_t-based one.
        assert!(
            std::mem::size_of::<Node>() <= 104,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn insert_find_replace_delete() {
        global_arena();
        let t = Table::new(16).unwrap();
        let before = live_here();
        for i in 0..200 {
            t.insert(&publ(&format!("sip:u{i}@x"), "ul")).unwrap();
        }
        assert_eq!(t.len(), 200);
        let d = publ("sip:u7@x", "ul");
        let i = t.bucket_of(&d.pres_uri, None);
        {
            let mut b = t.lock(i);
            // SAFETY: valid under the lock.
            let r = b.find(|p| p.pres_uri() == b"sip:u7@x").unwrap();
            let mut nd = d.clone();
            nd.etag = b"etag-2".to_vec();
            assert!(b.replace(r, nd.to_shm().unwrap()));
            // SAFETY: as above.
            let r = b.find(|p| p.pres_uri() == b"sip:u7@x").unwrap();
            // SAFETY: valid under the lock.
            assert_eq!(b.get(r).etag(), b"etag-2");
            assert!(b.delete(r));
            assert!(!b.unlink(r));
        }
        assert_eq!(t.len(), 199);
        assert_eq!(live_here() - before, 199);
        // SAFETY: nobody else uses this table.
        unsafe { t.destroy() };
        assert_eq!(
            live_here(),
            before - 1,
            "destroy frees every record and the chains"
        );
    }

    /// Records inserted by one process (a forked "worker") are seen, and can
    /// be deleted, by another: the table lives in MAP_SHARED memory and the
    /// buckets are guarded by cross-process locks.
    #[test]
    fn records_inserted_by_one_process_are_seen_by_another() {
        global_arena();
        let t = Table::new(64).unwrap();
        let workers: Vec<_> = (0..4)
            .map(|w| {
                fork_child(move || {
                    for i in 0..250 {
                        if t.insert(&publ(&format!("sip:w{w}u{i}@x"), "ul")).is_none() {
                            return 1;
                        }
                    }
                    0
                })
            })
            .collect();
        for w in workers {
            assert_eq!(w.wait(), 0);
        }
        assert_eq!(t.len(), 1000, "records lost or duplicated across processes");
        let d = publ("sip:w3u249@x", "ul");
        let b = t.lock(t.bucket_of(&d.pres_uri, None));
        // SAFETY: valid under the lock.
        let r = b.find(|p| p.pres_uri() == b"sip:w3u249@x");
        assert!(
            r.is_some(),
            "a record inserted by a child is missing in the parent"
        );
        drop(b);
        // A child deletes; the parent sees it gone.
        let c = fork_child(move || {
            let mut b = t.lock(t.bucket_of(b"sip:w0u0@x", None));
            // SAFETY: valid under the lock.
            match b.find(|p| p.pres_uri() == b"sip:w0u0@x") {
                Some(r) if b.delete(r) => 0,
                _ => 1,
            }
        });
        assert_eq!(c.wait(), 0);
        assert_eq!(t.len(), 999);
    }

    #[test]
    fn dialog_queries() {
        global_arena();
        let t = Table::new(8).unwrap();
        let mut s = RecordData {
            id: b"rls-did;1".to_vec(),
            pres_uri: b"sip:carol@x".to_vec(),
            watcher_uri: Some(b"sip:rls@x".to_vec()),
            flag: RLS_SUBSCRIBE,
            event: PRESENCE_EVENT,
            call_id: b"c1".to_vec(),
            from_tag: b"f1".to_vec(),
            ..Default::default()
        };
        t.insert(&s).unwrap();
        let mut q = s.clone();
        q.to_tag = b"t1".to_vec();
        assert_eq!(dialog::is_dialog(&t, &q), 1, "temporary dialog");
        s.to_tag = b"t1".to_vec();
        s.call_id = b"c2".to_vec();
        s.pres_uri = b"sip:dave@x".to_vec();
        t.insert(&s).unwrap();
        let mut q2 = s.clone();
        assert_eq!(dialog::is_dialog(&t, &q2), 0, "confirmed dialog");
        assert_eq!(dialog::record_id(&t, &q2).unwrap(), b"rls-did;1");
        q2.from_tag = b"other".to_vec();
        assert_eq!(dialog::is_dialog(&t, &q2), -1);
        assert_eq!(dialog::record_id(&t, &q2), None);
        assert_eq!(
            dialog::subs_list(&t, b"rls-did"),
            vec![b"sip:carol@x".to_vec(), b"sip:dave@x".to_vec()]
        );
        assert!(dialog::subs_list(&t, b"nope").is_empty());
    }
}
