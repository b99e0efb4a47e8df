//! A size-class allocator in shared memory over the host's allocator.
//!
//! Kamailio's shm allocator (with DBG_SR_MEMORY) costs tens of thousands of
//! instructions per call and a sizeable header per fragment; a PUBLISH
//! allocates and frees a few blocks. This allocator takes 64 KiB chunks from
//! the host and serves blocks from per-class free lists (classes of 32
//! bytes up to 4 KiB), under one cross-process futex lock; larger blocks go
//! to the host directly. Memory taken from the host is kept for reuse, not
//! returned (the table's peak size stays reserved), and is counted.

use crate::lock::FutexLock;
use crate::shm::ShmAllocator;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Class granularity and the largest size served from classes.
const GRAIN: usize = 32;
const MAX_CLASS_SIZE: usize = 4096;
const NCLASS: usize = MAX_CLASS_SIZE / GRAIN;
/// Bytes taken from the host at a time.
const CHUNK: usize = 64 * 1024;
/// Per-block header: the class (or DIRECT) in the 8 bytes before the block.
const HDR: usize = 8;
const DIRECT: u64 = u64::MAX;

/// The allocator's state, itself in shared memory.
#[repr(C)]
pub struct SlabState {
    lock: FutexLock,
    free: [*mut u8; NCLASS],
    cur: *mut u8,
    left: usize,
    /// Bytes taken from the host (chunks and direct blocks).
    pub reserved: AtomicU64,
    /// Bytes handed out in live blocks (their class sizes).
    pub in_use: AtomicU64,
}

/// A slab allocator over `base`; state lives in memory from `base`.
pub struct Slab {
    base: &'static dyn ShmAllocator,
    st: *mut SlabState,
}

// SAFETY: the state is in shm and only changed under its futex lock.
unsafe impl Sync for Slab {}
// SAFETY: as above.
unsafe impl Send for Slab {}

impl Slab {
    /// Creates the state with `base` (before the fork). `None` when out of memory.
    pub fn new(base: &'static dyn ShmAllocator) -> Option<Slab> {
        let st = base.alloc(std::mem::size_of::<SlabState>()) as *mut SlabState;
        if st.is_null() {
            return None;
        }
        // SAFETY: fresh memory of the right size, not shared yet.
        unsafe {
            ptr::write_bytes(st as *mut u8, 0, std::mem::size_of::<SlabState>());
            FutexLock::init(ptr::addr_of_mut!((*st).lock));
        }
        Some(Slab { base, st })
    }

    /// The counters (reserved from the host, in use by blocks).
    pub fn usage(&self) -> (u64, u64) {
        // SAFETY: the state lives as long as the slab.
        let st = unsafe { &*self.st };
        (
            st.reserved.load(Ordering::Relaxed),
            st.in_use.load(Ordering::Relaxed),
        )
    }

    fn class_of(size: usize) -> Option<usize> {
        let total = size.checked_add(HDR)?;
        (total <= MAX_CLASS_SIZE).then(|| total.div_ceil(GRAIN) - 1)
    }
}

impl ShmAllocator for Slab {
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: the state is valid; lists and chunks change under the lock.
        unsafe {
            let st = &mut *self.st;
            let Some(c) = Self::class_of(size) else {
                let p = self.base.alloc(size + HDR);
                if p.is_null() {
                    return p;
                }
                (p as *mut u64).write(DIRECT);
                st.reserved
                    .fetch_add((size + HDR) as u64, Ordering::Relaxed);
                return p.add(HDR);
            };
            let bsize = (c + 1) * GRAIN;
            let _g = st.lock.lock();
            let mut b = st.free[c];
            if !b.is_null() {
                st.free[c] = *(b as *mut *mut u8);
            } else {
                if st.left < bsize {
                    // The rest of the chunk goes to the free lists of the
                    // classes it fits, then a new chunk.
                    while st.left >= GRAIN {
                        let k = (st.left / GRAIN).min(NCLASS) - 1;
                        let piece = st.cur;
                        *(piece as *mut *mut u8) = st.free[k];
                        st.free[k] = piece;
                        st.cur = st.cur.add((k + 1) * GRAIN);
                        st.left -= (k + 1) * GRAIN;
                    }
                    let chunk = self.base.alloc(CHUNK);
                    if chunk.is_null() {
                        return ptr::null_mut();
                    }
                    st.reserved.fetch_add(CHUNK as u64, Ordering::Relaxed);
                    st.cur = chunk;
                    st.left = CHUNK;
                }
                b = st.cur;
                st.cur = st.cur.add(bsize);
                st.left -= bsize;
            }
            st.in_use.fetch_add(bsize as u64, Ordering::Relaxed);
            (b as *mut u64).write(c as u64);
            b.add(HDR)
        }
    }

    unsafe fn free(&self, p: *mut u8) {
        if p.is_null() {
            return;
        }
        let st = &mut *self.st;
        let b = p.sub(HDR);
        let c = (b as *const u64).read();
        if c == DIRECT {
            self.base.free(b);
            return;
        }
        let c = c as usize;
        if c >= NCLASS {
            crate::lm_crit!("slab: freeing a block with a corrupt header ({})", c);
            return;
        }
        let _g = st.lock.lock();
        *(b as *mut *mut u8) = st.free[c];
        st.free[c] = b;
        st.in_use
            .fetch_sub(((c + 1) * GRAIN) as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fork_child, SharedArena};

    fn slab() -> (&'static SharedArena, Slab) {
        let arena: &'static SharedArena = Box::leak(Box::new(SharedArena::new(64 << 20)));
        let s = Slab::new(arena).unwrap();
        (arena, s)
    }

    #[test]
    fn classes_and_reuse() {
        let (_, s) = slab();
        let a = s.alloc(10);
        let b = s.alloc(10);
        assert_ne!(a, b);
        assert_eq!(a as usize % 8, 0);
        // SAFETY: blocks of at least 10 bytes.
        unsafe {
            ptr::write_bytes(a, 1, 10);
            ptr::write_bytes(b, 2, 10);
            s.free(a);
        }
        assert_eq!(s.alloc(20), a, "a freed block of the class is reused");
        let big = s.alloc(100_000);
        assert!(!big.is_null());
        // SAFETY: a direct block.
        unsafe {
            ptr::write_bytes(big, 3, 100_000);
            s.free(big);
        }
        assert_eq!(Slab::class_of(0), Some(0));
        assert_eq!(Slab::class_of(24), Some(0));
        assert_eq!(Slab::class_of(25), Some(1));
        assert_eq!(Slab::class_of(4088), Some(NCLASS - 1));
        assert_eq!(Slab::class_of(4089), None);
    }

    #[test]
    fn many_sizes_without_overlap() {
        let (_, s) = slab();
        let mut blocks = Vec::new();
        for i in 0..5000usize {
            let n = (i * 37) % 3000 + 1;
            let p = s.alloc(n);
            assert!(!p.is_null());
            // SAFETY: `n` bytes.
            unsafe { ptr::write_bytes(p, (i % 251) as u8, n) };
            blocks.push((p, n, (i % 251) as u8));
        }
        for (p, n, v) in &blocks {
            // SAFETY: still allocated.
            let sl = unsafe { std::slice::from_raw_parts(*p, *n) };
            assert!(sl.iter().all(|b| b == v), "blocks overlap");
        }
        let (_, used) = s.usage();
        assert!(used > 0);
        for (p, _, _) in blocks {
            // SAFETY: allocated above, freed once.
            unsafe { s.free(p) };
        }
        assert_eq!(s.usage().1, 0);
    }

    #[test]
    fn shared_across_processes() {
        let (_, s) = slab();
        let s: &'static Slab = Box::leak(Box::new(s));
        let kids: Vec<_> = (0..3)
            .map(|k| {
                fork_child(move || {
                    for i in 0..2000 {
                        let p = s.alloc(40 + (i % 200));
                        if p.is_null() {
                            return 1;
                        }
                        // SAFETY: fresh block.
                        unsafe {
                            *p = k as u8;
                            if i % 2 == 0 {
                                s.free(p);
                            }
                        }
                    }
                    0
                })
            })
            .collect();
        for k in kids {
            assert_eq!(k.wait(), 0);
        }
        assert_eq!(s.usage().1 as usize % GRAIN, 0);
        assert!(
            s.usage().1 > 0,
            "the children's live blocks are counted in shm"
        );
    }
}
