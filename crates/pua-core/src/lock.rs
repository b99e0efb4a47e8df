//! The cross-process lock: binary-compatible with Kamailio's `gen_lock_t` as
//! the Debian core builds it (USE_FUTEX + FAST_LOCK + ADAPTIVE_WAIT: a 4-byte
//! futex word, 0 = free, 1 = locked, 2 = locked with waiters; spin up to
//! ADAPTIVE_WAIT_LOOPS, then a non-private FUTEX_WAIT). Non-private futexes
//! wake waiters in other processes mapping the same shared memory, which a
//! process-local lock (the standard library's Mutex, parking_lot's) silently does not.

use std::sync::atomic::{AtomicU32, Ordering};

/// Spins before sleeping, as the core's ADAPTIVE_WAIT_LOOPS.
const ADAPTIVE_WAIT_LOOPS: u32 = 1024;

/// A futex lock living in shared memory. `#[repr(transparent)]` over the
/// 4-byte word, so it can sit where C has a `gen_lock_t`.
#[repr(transparent)]
pub struct FutexLock {
    word: AtomicU32,
}

impl FutexLock {
    /// Puts a lock into its free state (the memory may be anything before).
    ///
    /// # Safety
    /// `p` must be valid, aligned, and not in use by any other process yet.
    pub unsafe fn init(p: *mut FutexLock) {
        p.write(FutexLock {
            word: AtomicU32::new(0),
        });
    }

    /// Takes the lock; the guard releases it on every path, unwinding included.
    pub fn lock(&self) -> LockGuard<'_> {
        if self
            .word
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        LockGuard { lock: self }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<LockGuard<'_>> {
        self.word
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| LockGuard { lock: self })
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..ADAPTIVE_WAIT_LOOPS {
            std::hint::spin_loop();
            if self.word.load(Ordering::Relaxed) == 0
                && self
                    .word
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        // Mark "locked with waiters" and sleep until the holder wakes us.
        while self.word.swap(2, Ordering::Acquire) != 0 {
            futex_wait(&self.word, 2);
        }
    }

    fn unlock(&self) {
        if self.word.swap(0, Ordering::Release) == 2 {
            futex_wake(&self.word, 1);
        }
    }

    /// Whether the lock is held by anyone (for diagnostics and tests).
    pub fn is_locked(&self) -> bool {
        self.word.load(Ordering::Relaxed) != 0
    }
}

/// Holds a [`FutexLock`]; dropping it releases the lock.
pub struct LockGuard<'a> {
    lock: &'a FutexLock,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT (shared, not FUTEX_PRIVATE_FLAG) on a valid aligned
    // u32; the kernel only reads it. EINTR/EAGAIN just make us re-check.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a valid aligned u32 in shared memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fork_child, SharedArena};

    #[test]
    fn same_size_as_gen_lock_t() {
        assert_eq!(
            std::mem::size_of::<FutexLock>(),
            std::mem::size_of::<crate::sys::gen_lock_t>()
        );
    }

    #[test]
    fn guard_releases_on_unwind() {
        let l = FutexLock {
            word: AtomicU32::new(0),
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _g = l.lock();
            panic!("inside");
        }));
        assert!(r.is_err());
        assert!(!l.is_locked());
    }

    /// A child process blocks on a lock the parent holds in shared memory and
    /// wakes when the parent releases it; their increments never interleave.
    #[test]
    fn excludes_across_processes() {
        let arena = SharedArena::new(1 << 16);
        let lock = arena.alloc_raw(8) as *mut FutexLock;
        let counter = arena.alloc_raw(8) as *mut u64;
        // SAFETY: fresh shared memory, nobody else uses it yet.
        unsafe {
            FutexLock::init(lock);
            *counter = 0;
        }
        // SAFETY: lock lives in the MAP_SHARED arena for the whole test.
        let l = unsafe { &*lock };
        let g = l.lock();
        let child = fork_child(|| {
            for _ in 0..20_000 {
                let _g = l.lock();
                // SAFETY: counter is only touched under the lock.
                unsafe { *counter += 1 };
            }
            0
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        // SAFETY: we hold the lock.
        assert_eq!(
            unsafe { *counter },
            0,
            "child ran while the parent held the lock"
        );
        drop(g);
        for _ in 0..20_000 {
            let _g = l.lock();
            // SAFETY: under the lock.
            unsafe { *counter += 1 };
        }
        assert_eq!(child.wait(), 0);
        // SAFETY: the child has exited.
        assert_eq!(unsafe { *counter }, 40_000);
    }
}
