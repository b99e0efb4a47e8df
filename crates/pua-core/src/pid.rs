//! This process's id without a `getpid()` system call per use (glibc has
//! not cached it since 2.25, and a new tuple id or dialog needs it): cached
//! on first use, and forgotten in the child of every `fork()` (Kamailio
//! forks its workers after `mod_init`) by a `pthread_atfork` handler.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's id.
pub fn process_id() -> u32 {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // SAFETY: registers a plain function that only stores an atomic; no
        // allocation or lock in the child handler.
        unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) };
    });
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_sees_its_own_id() {
        let parent = process_id();
        assert_eq!(parent, std::process::id());
        let mut fds = [0i32; 2];
        // SAFETY: a pipe and a fork; the child only writes 4 bytes and exits.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            match libc::fork() {
                0 => {
                    let ok =
                        u32::from(process_id() == libc::getpid() as u32 && process_id() != parent);
                    libc::write(fds[1], (&ok as *const u32).cast(), 4);
                    libc::_exit(0);
                }
                child => {
                    assert!(child > 0);
                    let mut ok = 0u32;
                    assert_eq!(libc::read(fds[0], (&mut ok as *mut u32).cast(), 4), 4);
                    libc::waitpid(child, std::ptr::null_mut(), 0);
                    assert_eq!(ok, 1, "the child reported a stale pid");
                }
            }
        }
        assert_eq!(process_id(), parent);
    }
}
