//! The event list (`pua_event_t`), in shared memory so that events added by
//! any process are seen by all. Each event is one shm block: the struct, then
//! its name and content type, as consumers expect `pua_event_t` to look.

use crate::flags::*;
use crate::lock::FutexLock;
use crate::shm::{self, str_bytes, BlockBuilder};
use crate::sys::{evs_process_body_t, pua_event_t};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// Which body processor a built-in event uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processor {
    None,
    Presence,
    /// dialog-info passed through unchanged.
    Dialog,
    /// dialog-info with the version attribute set from the record's counter.
    DialogVersioned,
    Bla,
    Mwi,
    /// reginfo with the version attribute set from the record's counter.
    ReginfoVersioned,
}

/// One built-in event: (flag, name, default content type, processor).
pub type Builtin = (i32, &'static str, Option<&'static str>, Processor);

/// The events the module registers at start-up, as the 5.6.3 C module does,
/// except that `reg` follows `reginfo_increase_version` (upstream GH #3234).
pub fn builtin_events(
    dlginfo_increase_version: bool,
    reginfo_increase_version: bool,
) -> Vec<Builtin> {
    vec![
        (
            PRESENCE_EVENT,
            "presence",
            Some("application/pidf+xml"),
            Processor::Presence,
        ),
        (
            DIALOG_EVENT,
            "dialog",
            Some("application/dialog-info+xml"),
            if dlginfo_increase_version {
                Processor::DialogVersioned
            } else {
                Processor::Dialog
            },
        ),
        (
            BLA_EVENT,
            "dialog;sla",
            Some("application/dialog-info+xml"),
            Processor::Bla,
        ),
        (
            MSGSUM_EVENT,
            "message-summary",
            Some("application/simple-message-summary"),
            Processor::Mwi,
        ),
        (PWINFO_EVENT, "presence.winfo", None, Processor::None),
        (
            REGINFO_EVENT,
            "reg",
            Some("application/reginfo+xml"),
            if reginfo_increase_version {
                Processor::ReginfoVersioned
            } else {
                Processor::Dialog
            },
        ),
        (
            XCAPDIFF_EVENT,
            "xcap-diff",
            Some("application/xcap-diff+xml"),
            Processor::None,
        ),
    ]
}

/// The list: written under `lock` (adds only prepend a fully written node,
/// nothing is removed before destroy), read without it, so the lookup on
/// every PUBLISH takes no lock shared by all workers.
#[repr(C)]
struct ListHead {
    lock: FutexLock,
    first: AtomicPtr<pua_event_t>,
    /// Events added so far, counted after the node is linked.
    count: AtomicU32,
}

static HEAD: AtomicPtr<ListHead> = AtomicPtr::new(ptr::null_mut());

fn head() -> Option<&'static ListHead> {
    shm::shared_singleton(&HEAD, |p| {
        // SAFETY: fresh zeroed shm; nobody else sees it before it is published.
        unsafe { FutexLock::init(ptr::addr_of_mut!((*p).lock)) }
    })
}

/// Why an event could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum EventError {
    EmptyName,
    OutOfMemory,
}

/// Adds an event; an event of the same name already present is kept (Ok(false)).
pub fn add(
    ev_flag: i32,
    name: &[u8],
    content_type: Option<&[u8]>,
    process_body: evs_process_body_t,
) -> Result<bool, EventError> {
    if name.is_empty() {
        crate::lm_err!("add_event: empty event name");
        return Err(EventError::EmptyName);
    }
    let head = head().ok_or(EventError::OutOfMemory)?;
    let _g = head.lock.lock();
    if find_in(head, |e| e.name_bytes() == name).is_some() {
        crate::lm_dbg!("event {} already exists", String::from_utf8_lossy(name));
        return Ok(false);
    }
    let mut b = BlockBuilder::new(std::mem::size_of::<pua_event_t>());
    let name_off = b.reserve_bytes(name.len());
    let ct_off = content_type.map(|c| b.reserve_bytes(c.len()));
    let base = shm::alloc_zeroed(b.size()).ok_or(EventError::OutOfMemory)?;
    let ev = base as *mut pua_event_t;
    // SAFETY: `base` has room for the struct and both strings (BlockBuilder);
    // the list is only changed under the head lock.
    unsafe {
        (*ev).ev_flag = ev_flag;
        (*ev).name = shm::write_bytes_at(base, name_off, name);
        if let (Some(off), Some(ct)) = (ct_off, content_type) {
            (*ev).content_type = shm::write_bytes_at(base, off, ct);
        }
        (*ev).process_body = process_body;
        (*ev).next = head.first.load(Ordering::Relaxed);
    }
    head.first.store(ev, Ordering::Release);
    head.count.fetch_add(1, Ordering::AcqRel);
    let _ = crate::scratch::try_with_slot(&LOCAL, |l| l.fresh.invalidate());
    Ok(true)
}

/// A read-only view of an event in the list.
#[derive(Clone, Copy)]
pub struct Event(*mut pua_event_t);

impl Event {
    pub fn as_ptr(&self) -> *mut pua_event_t {
        self.0
    }
    fn get(&self) -> &pua_event_t {
        // SAFETY: events are never freed before module destroy.
        unsafe { &*self.0 }
    }
    pub fn flag(&self) -> i32 {
        self.get().ev_flag
    }
    pub fn name_bytes(&self) -> &[u8] {
        // SAFETY: name was written by `add` (or by C code of the same layout).
        unsafe { str_bytes(&self.get().name) }
    }
    pub fn content_type(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { str_bytes(&self.get().content_type) }
    }
    pub fn process_body(&self) -> evs_process_body_t {
        self.get().process_body
    }
}

fn find_in(head: &ListHead, pred: impl Fn(&Event) -> bool) -> Option<Event> {
    let mut p = head.first.load(Ordering::Acquire);
    while !p.is_null() {
        let e = Event(p);
        if pred(&e) {
            return Some(e);
        }
        // SAFETY: list nodes are valid shm events.
        p = unsafe { (*p).next };
    }
    None
}

fn find(pred: impl Fn(&Event) -> bool) -> Option<Event> {
    find_in(head()?, pred)
}

/// The event with this name (`contains_pua_event`).
pub fn by_name(name: &[u8]) -> Option<Event> {
    find(|e| e.name_bytes() == name)
}

/// The event with this flag (`get_event`).
/// This process's copy of the events' flags (see [`crate::local`]): every
/// PUBLISH looks its event up by flag, twice; the list in shm is linked
/// nodes, newest first, so `presence` (added first) was the last of them.
#[derive(Default)]
struct LocalEvents {
    fresh: crate::local::Freshness,
    by_flag: Vec<(i32, Event)>,
}

// SAFETY: `Event`s are pointers to nodes in shm, valid in every process and
// thread until destroy.
unsafe impl Send for LocalEvents {}

static LOCAL: crate::scratch::Slot<LocalEvents> = crate::scratch::Slot::new();

/// The event of `flag` (the newest one, when two share a flag, as the
/// list walk finds it).
pub fn by_flag(flag: i32) -> Option<Event> {
    let local = crate::scratch::try_with_slot(&LOCAL, |l| {
        if !l.fresh.fresh() {
            let head = head()?;
            let n = head.count.load(Ordering::Acquire);
            if !l.fresh.confirm(n) {
                let mut v = Vec::new();
                let mut p = head.first.load(Ordering::Acquire);
                while !p.is_null() {
                    v.push((
                        // SAFETY: nodes are fully written before they are linked.
                        unsafe { (*p).ev_flag },
                        Event(p),
                    ));
                    // SAFETY: as above; nodes live until destroy.
                    p = unsafe { (*p).next };
                }
                l.by_flag = v;
                l.fresh.rebuilt(n);
            }
        }
        Some(l.by_flag.iter().find(|(f, _)| *f == flag).map(|&(_, e)| e))
    });
    match local {
        Some(Some(found)) => found,
        // In use further up the stack or by another thread.
        _ => find(|e| e.flag() == flag),
    }
}

/// All events, newest first (as the C list).
pub fn all() -> Vec<Event> {
    let mut v = Vec::new();
    if let Some(head) = head() {
        let mut p = head.first.load(Ordering::Acquire);
        while !p.is_null() {
            v.push(Event(p));
            // SAFETY: list nodes are valid shm events.
            p = unsafe { (*p).next };
        }
    }
    v
}

/// Frees the list (module destroy, one process, after the workers are gone).
pub fn destroy() {
    let _ = crate::scratch::try_with_slot(&LOCAL, |l| {
        l.fresh.invalidate();
        l.by_flag.clear();
    });
    let h = HEAD.swap(ptr::null_mut(), Ordering::AcqRel);
    if h.is_null() {
        return;
    }
    // SAFETY: no other process uses the list any more at destroy time.
    unsafe {
        shm::free_list((*h).first.load(Ordering::Acquire), |p| (*p).next);
        shm::free(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fork_child, global_arena};

    #[test]
    fn builtins_match_the_c_module() {
        let ev = builtin_events(false, false);
        let names: Vec<_> = ev.iter().map(|e| e.1).collect();
        assert_eq!(
            names,
            [
                "presence",
                "dialog",
                "dialog;sla",
                "message-summary",
                "presence.winfo",
                "reg",
                "xcap-diff"
            ]
        );
        assert_eq!(ev[5].3, Processor::Dialog);
        let ev = builtin_events(false, true);
        assert_eq!(ev[5].3, Processor::ReginfoVersioned);
        assert_eq!(ev[1].3, Processor::Dialog);
        assert_eq!(builtin_events(true, false)[1].3, Processor::DialogVersioned);
    }

    #[test]
    fn local_copy_sees_an_event_added_in_this_thread_at_once() {
        global_arena();
        // The copy is built (and fresh for this second) without the event...
        assert!(by_flag(1 << 22).is_none());
        assert_eq!(add(1 << 22, b"late-ev", None, None), Ok(true));
        // ...and an add in this thread makes the next lookup read shm again.
        assert_eq!(
            by_flag(1 << 22).map(|e| e.name_bytes().to_vec()),
            Some(b"late-ev".to_vec())
        );
    }

    #[test]
    fn add_find_and_share_across_fork() {
        global_arena();
        assert_eq!(
            add(1 << 20, b"test-ev", Some(b"text/x-test"), None),
            Ok(true)
        );
        assert_eq!(add(1 << 20, b"test-ev", Some(b"other"), None), Ok(false));
        let e = by_name(b"test-ev").unwrap();
        assert_eq!(e.content_type(), b"text/x-test");
        assert_eq!(by_flag(1 << 20).unwrap().name_bytes(), b"test-ev");
        // An event added in a child process is seen by the parent.
        let c = fork_child(|| {
            if add(1 << 21, b"from-child", None, None) == Ok(true) {
                0
            } else {
                1
            }
        });
        assert_eq!(c.wait(), 0);
        let e = by_name(b"from-child").expect("event added by the child");
        assert_eq!(e.flag(), 1 << 21);
        assert!(e.content_type().is_empty());
        assert_eq!(add(1, b"", None, None), Err(EventError::EmptyName));
    }
}
