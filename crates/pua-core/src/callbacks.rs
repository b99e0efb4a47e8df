//! Callbacks registered by consumers with `register_puacb`: kept in shared
//! memory (registration happens in consumers' mod_init, before the fork, but
//! a list in shm is right whenever it happens), run for every reply whose
//! record's source flag matches the callback's types.

use crate::flags::ALL_SOURCE_FLAGS;
use crate::lock::FutexLock;
use crate::shm;
use crate::sys::{pua_callback, pua_cb, sip_msg, ua_pres_t};
use std::os::raw::c_void;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};

/// Written under `lock` (prepend a fully written node; nothing is removed
/// before destroy), read without it: running the callbacks of a reply takes
/// no lock shared by all workers.
#[repr(C)]
struct ListHead {
    lock: FutexLock,
    next_id: i32,
    first: AtomicPtr<pua_callback>,
    /// Registrations so far, counted after the node is linked.
    count: AtomicU32,
}

/// This process's union of the registered callback types (see
/// [`crate::local`]): whether a reply needs a callback is asked twice per
/// PUBLISH.
static TYPES: AtomicI32 = AtomicI32::new(0);
static TYPES_FRESH: crate::local::Freshness = crate::local::Freshness::new();

static HEAD: AtomicPtr<ListHead> = AtomicPtr::new(ptr::null_mut());

/// Why a registration was refused (the C module returns E_BUG / E_OUT_OF_MEM).
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    BadTypes,
    NullFunction,
    OutOfMemory,
}

fn head() -> Option<&'static ListHead> {
    shm::shared_singleton(&HEAD, |p| {
        // SAFETY: fresh zeroed shm; nobody else sees it before it is published.
        unsafe { FutexLock::init(ptr::addr_of_mut!((*p).lock)) }
    })
}

/// Registers `f` for records whose `flag` has any bit of `types`.
/// Accepts every source flag of hash.h (the C module refuses types above
/// 1<<9 although flags go up to 1<<15).
pub fn register(types: i32, f: pua_cb, param: *mut c_void) -> Result<(), RegisterError> {
    if !(0..=ALL_SOURCE_FLAGS).contains(&types) {
        crate::lm_crit!("register_puacb: invalid callback types: mask={}", types);
        return Err(RegisterError::BadTypes);
    }
    if f.is_none() {
        crate::lm_crit!("register_puacb: null callback function");
        return Err(RegisterError::NullFunction);
    }
    let head = head().ok_or(RegisterError::OutOfMemory)?;
    let cb = shm::alloc_struct::<pua_callback>().ok_or(RegisterError::OutOfMemory)?;
    let _g = head.lock.lock();
    let h = head as *const ListHead as *mut ListHead;
    // SAFETY: `cb` is fresh shm; the list is changed only under the lock.
    unsafe {
        (*h).next_id += 1;
        (*cb).id = (*h).next_id;
        (*cb).types = types;
        (*cb).callback = f;
        (*cb).param = param;
        (*cb).next = head.first.load(Ordering::Relaxed);
    }
    head.first.store(cb, Ordering::Release);
    head.count.fetch_add(1, Ordering::AcqRel);
    TYPES_FRESH.invalidate();
    Ok(())
}

/// Runs every callback registered for `hentity.flag`, in registration order
/// reversed (newest first, as C), exactly once each. Returns how many ran.
///
/// # Safety
/// `hentity` must be a valid record; `msg` a reply (or tm's FAKED_REPLY).
pub unsafe fn run(hentity: *mut ua_pres_t, msg: *mut sip_msg) -> usize {
    let Some(head) = head() else { return 0 };
    // Collect first, then call: a callback may register or call back into pua.
    let mut todo = Vec::new();
    {
        let mut p = head.first.load(Ordering::Acquire);
        while !p.is_null() {
            if (*p).types & (*hentity).flag != 0 {
                todo.push((*p).callback);
            }
            p = (*p).next;
        }
    }
    let mut n = 0;
    for f in todo.into_iter().flatten() {
        f(hentity, msg);
        n += 1;
    }
    n
}

/// Whether any registered callback is for one of the flags in `flag` (so
/// that a caller can skip building the record it would hand them).
pub fn any_for(flag: i32) -> bool {
    registered_types() & flag != 0
}

/// The union of the registered callbacks' types, from this process's copy.
fn registered_types() -> i32 {
    if TYPES_FRESH.fresh() {
        return TYPES.load(Ordering::Acquire);
    }
    let Some(head) = head() else { return 0 };
    let n = head.count.load(Ordering::Acquire);
    if !TYPES_FRESH.confirm(n) {
        let mut types = 0;
        let mut p = head.first.load(Ordering::Acquire);
        // SAFETY: nodes are only prepended, fully written, and freed at destroy.
        unsafe {
            while !p.is_null() {
                types |= (*p).types;
                p = (*p).next;
            }
        }
        TYPES.store(types, Ordering::Release);
        TYPES_FRESH.rebuilt(n);
    }
    TYPES.load(Ordering::Acquire)
}

/// Number of registered callbacks (diagnostics).
pub fn count() -> usize {
    let Some(head) = head() else { return 0 };
    let mut n = 0;
    let mut p = head.first.load(Ordering::Acquire);
    while !p.is_null() {
        n += 1;
        // SAFETY: list nodes are valid.
        p = unsafe { (*p).next };
    }
    n
}

/// Frees the list at module destroy.
pub fn destroy() {
    TYPES_FRESH.invalidate();
    let h = HEAD.swap(ptr::null_mut(), Ordering::AcqRel);
    if h.is_null() {
        return;
    }
    // SAFETY: nobody else uses the list at destroy time.
    unsafe {
        shm::free_list((*h).first.load(Ordering::Acquire), |p| (*p).next);
        shm::free(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::*;
    use crate::testing::global_arena;
    use std::sync::atomic::AtomicUsize;

    static CALLS_A: AtomicUsize = AtomicUsize::new(0);
    static CALLS_B: AtomicUsize = AtomicUsize::new(0);
    unsafe extern "C" fn cb_a(_: *mut ua_pres_t, _: *mut sip_msg) -> i32 {
        CALLS_A.fetch_add(1, Ordering::SeqCst);
        0
    }
    unsafe extern "C" fn cb_b(_: *mut ua_pres_t, _: *mut sip_msg) -> i32 {
        CALLS_B.fetch_add(1, Ordering::SeqCst);
        0
    }

    #[test]
    fn types_copy_sees_a_registration_in_this_process_at_once() {
        global_arena();
        // A flag no other test registers: the copy is built without it...
        assert!(!any_for(DIALOG_PUBLISH));
        register(DIALOG_PUBLISH, Some(cb_b), ptr::null_mut()).unwrap();
        // ...and the registration makes the next question read shm again.
        assert!(any_for(DIALOG_PUBLISH));
    }

    #[test]
    fn runs_matching_callbacks_once() {
        global_arena();
        register(
            XCAPDIFF_SUBSCRIBE | RPC_PUBLISH,
            Some(cb_a),
            ptr::null_mut(),
        )
        .unwrap();
        register(XCAPDIFF_PUBLISH, Some(cb_b), ptr::null_mut()).unwrap();
        assert_eq!(
            register(1 << 16, Some(cb_a), ptr::null_mut()),
            Err(RegisterError::BadTypes)
        );
        assert_eq!(
            register(-1, Some(cb_a), ptr::null_mut()),
            Err(RegisterError::BadTypes)
        );
        assert_eq!(
            register(UL_PUBLISH, None, ptr::null_mut()),
            Err(RegisterError::NullFunction)
        );
        let mut rec = ua_pres_t {
            flag: XCAPDIFF_SUBSCRIBE,
            ..Default::default()
        };
        // SAFETY: a valid record on the stack, no message.
        let n = unsafe { run(&mut rec, ptr::null_mut()) };
        assert_eq!(n, 1);
        assert_eq!(CALLS_A.load(Ordering::SeqCst), 1);
        assert_eq!(CALLS_B.load(Ordering::SeqCst), 0);
        rec.flag = XCAPDIFF_PUBLISH;
        // SAFETY: as above.
        unsafe { run(&mut rec, ptr::null_mut()) };
        assert_eq!(CALLS_B.load(Ordering::SeqCst), 1);
        assert!(count() >= 2);
    }
}
