//! Process-local copies of shared lists that change (almost) only at
//! start-up: the consumer callbacks and the events. Every PUBLISH looks an
//! event up and asks whether a callback wants its reply; reading the lists in
//! shared memory each time cost a cache miss (or several: the events are a
//! linked list, `presence` last) on a path that is otherwise a handful of
//! misses. Consumers register in mod_init, before Kamailio forks, so every
//! process starts with the lists complete; a registration in a process after
//! the fork reaches the others within a second: a process compares the
//! list's registration count in shm with the one its copy was made at, at
//! most once per second (and at once after a registration of its own).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Whole seconds of a coarse clock (no system call, no TSC read).
pub fn coarse_secs() -> u64 {
    // SAFETY: time(NULL) has no preconditions.
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    t.max(0) as u64
}

/// When a process-local copy must be compared with its shm list again.
pub struct Freshness {
    /// `coarse_secs() + 1` when the copy was last confirmed (0: never).
    checked: AtomicU64,
    /// The list's registration count the copy was made at (`u32::MAX`: none).
    seen: AtomicU32,
}

impl Freshness {
    pub const fn new() -> Freshness {
        Freshness {
            checked: AtomicU64::new(0),
            seen: AtomicU32::new(u32::MAX),
        }
    }

    /// Whether the copy may be used without looking at shm (confirmed less
    /// than a second ago).
    pub fn fresh(&self) -> bool {
        self.checked.load(Ordering::Acquire) == coarse_secs() + 1
    }

    /// After a look at the list's count `n`: whether the copy was made at
    /// `n` (then it is confirmed for this second); if not, the caller
    /// rebuilds it and calls [`Freshness::rebuilt`].
    pub fn confirm(&self, n: u32) -> bool {
        if self.seen.load(Ordering::Acquire) == n {
            self.checked.store(coarse_secs() + 1, Ordering::Release);
            true
        } else {
            false
        }
    }

    /// The copy was rebuilt from a list whose count was `n` (read before
    /// the list was walked).
    pub fn rebuilt(&self, n: u32) {
        self.seen.store(n, Ordering::Release);
        self.checked.store(coarse_secs() + 1, Ordering::Release);
    }

    /// A registration in this process: look at the list at the next use.
    pub fn invalidate(&self) {
        self.checked.store(0, Ordering::Release);
        self.seen.store(u32::MAX, Ordering::Release);
    }
}

impl Default for Freshness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_cycle() {
        let f = Freshness::new();
        assert!(!f.fresh());
        assert!(!f.confirm(3), "never built");
        let t0 = coarse_secs();
        f.rebuilt(3);
        // Fresh for the rest of the second it was confirmed in.
        assert!(f.fresh() || coarse_secs() != t0);
        assert!(f.confirm(3));
        assert!(!f.confirm(4), "the list changed");
        f.invalidate();
        assert!(!f.fresh());
        assert!(!f.confirm(3));
    }
}
