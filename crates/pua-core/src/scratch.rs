//! Per-process scratch values: buffers whose heap capacity is kept from one
//! request to the next, so the PUBLISH path does not allocate for them.
//!
//! A [`Slot`] is a plain `static` guarded by an atomic busy flag, not a
//! `thread_local!`: in a module Kamailio loads with dlopen every
//! thread-local access goes through `__tls_get_addr` (the general-dynamic
//! TLS model), which perf measured at about 0.8 us per PUBLISH (cold, as
//! everything on that path). Kamailio's workers are single-threaded
//! processes, each with its own copy of the static after the fork; should
//! a second thread of one process (or a nested call: a consumer callback
//! that publishes from inside our reply handling) come while the slot is
//! in use, it gets a fresh value instead of waiting.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A scratch value shared by the threads of one process, one user at a time.
pub struct Slot<T> {
    busy: AtomicBool,
    val: UnsafeCell<Option<T>>,
}

// SAFETY: `val` is only reached by the holder of `busy` (an acquire/release
// pair orders its accesses), so one thread at a time; `T: Send` lets the
// value move between the threads that successively hold it.
unsafe impl<T: Send> Sync for Slot<T> {}

impl<T> Slot<T> {
    pub const fn new() -> Slot<T> {
        Slot {
            busy: AtomicBool::new(false),
            val: UnsafeCell::new(None),
        }
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Clears the busy flag when dropped, unwinding included.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Runs `f` with the slot's value (created with `T::default()` at first
/// use) if no one else holds it; `None` (and `f` not run) when it is busy.
pub fn try_with_slot<T: Default, R>(slot: &Slot<T>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
    slot.busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    let _release = Release(&slot.busy);
    // SAFETY: the busy flag is ours until `_release` drops: no other
    // reference to the value exists meanwhile.
    let v = unsafe { &mut *slot.val.get() };
    Some(f(v.get_or_insert_with(T::default)))
}

/// Runs `f` with the slot's value (as the last user left it: `f` resets
/// what it needs), or with a fresh `T` when the slot is in use further up
/// the stack or by another thread.
pub fn with_scratch<T: Default, R>(slot: &Slot<T>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut f = Some(f);
    let r = try_with_slot(slot, |v| f.take().map(|f| f(v)));
    match (r.flatten(), f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut T::default()),
        // `f` was taken only to run, and then gave `Some` (the arm above).
        (None, None) => unreachable!("with_scratch: the closure ran without a result"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_buffer_and_nests() {
        static BUF: Slot<Vec<u8>> = Slot::new();
        let cap = with_scratch(&BUF, |b| {
            b.clear();
            b.extend_from_slice(&[1; 100]);
            // Nested use gets its own value.
            let inner = with_scratch(&BUF, |b2| {
                assert!(b2.is_empty());
                b2.push(7);
                b2.len()
            });
            assert_eq!(inner, 1);
            assert!(try_with_slot(&BUF, |_| ()).is_none(), "busy while in use");
            b.capacity()
        });
        with_scratch(&BUF, |b| {
            assert_eq!(b.len(), 100, "as the last caller left it");
            assert_eq!(b.capacity(), cap);
        });
    }

    #[test]
    fn released_after_a_panic_and_shared_by_threads() {
        static N: Slot<u64> = Slot::new();
        static INSIDE: AtomicBool = AtomicBool::new(false);
        static FRESH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let r = std::panic::catch_unwind(|| with_scratch(&N, |_| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(try_with_slot(&N, |n| *n), Some(0), "the flag was released");
        let hs: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..10_000 {
                        let got = try_with_slot(&N, |n| {
                            // Never two holders at once.
                            assert!(!INSIDE.swap(true, Ordering::AcqRel), "two holders");
                            // A read-modify-write wide enough for a second
                            // holder to show up in it.
                            let v = *n;
                            for _ in 0..200 {
                                std::hint::spin_loop();
                            }
                            *n = v + 1;
                            INSIDE.store(false, Ordering::Release);
                        });
                        if got.is_none() {
                            FRESH.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // Every call either held the slot (counted in it) or was turned
        // away (counted here): none lost, none doubled.
        let n = try_with_slot(&N, |n| *n).unwrap();
        assert_eq!(n + FRESH.load(Ordering::Relaxed), 40_000);
        assert!(n > 0);
    }
}
