//! A caching allocator in shared memory over the host's allocator.
//!
//! Kamailio's shm allocator (with DBG_SR_MEMORY) costs tens of thousands of
//! instructions per call, and a PUBLISH allocates and frees a few blocks.
//! Blocks are rounded up to size classes (32 bytes apart, up to 4 KiB) and,
//! when freed, kept on per-class free lists for the next allocation of the
//! class, under one cross-process futex lock. At most [`CACHE_CAP`] bytes
//! are kept: beyond that, and for blocks above 4 KiB, memory goes straight
//! back to the host, so under overload tm gets back what pua does not use.

use crate::lock::FutexLock;
use crate::shm::ShmAllocator;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Class granularity and the largest size served from classes.
const GRAIN: usize = 32;
const MAX_CLASS_SIZE: usize = 4096;
const NCLASS: usize = MAX_CLASS_SIZE / GRAIN;
/// Per-block header: the class (or DIRECT) in the 8 bytes before the block.
const HDR: usize = 8;
const DIRECT: u64 = u64::MAX;
/// The most bytes kept on the free lists.
pub const CACHE_CAP: u64 = 256 << 10;

/// The allocator's state, itself in shared memory.
#[repr(C)]
pub struct SlabState {
    lock: FutexLock,
    free: [*mut u8; NCLASS],
    /// Bytes on the free lists.
    pub cached: AtomicU64,
    /// Bytes in live blocks (their class sizes).
    pub in_use: AtomicU64,
}

/// A caching allocator over `base`; its state lives in memory from `base`.
pub struct Slab {
    base: &'static dyn ShmAllocator,
    st: *mut SlabState,
}

// SAFETY: the state is in shm and only changed under its futex lock (the
// counters are atomics).
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

    /// (bytes kept on the free lists, bytes in live blocks).
    pub fn usage(&self) -> (u64, u64) {
        // SAFETY: the state lives as long as the slab.
        let st = unsafe { &*self.st };
        (
            st.cached.load(Ordering::Relaxed),
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
        // SAFETY: the state is valid; the lists change under the lock.
        unsafe {
            let st = &mut *self.st;
            let Some(c) = Self::class_of(size) else {
                let p = self.base.alloc(size + HDR);
                if p.is_null() {
                    return p;
                }
                (p as *mut u64).write(DIRECT);
                return p.add(HDR);
            };
            let bsize = (c + 1) * GRAIN;
            let mut b = {
                let _g = st.lock.lock();
                let b = st.free[c];
                if !b.is_null() {
                    st.free[c] = *(b as *mut *mut u8);
                    st.cached.fetch_sub(bsize as u64, Ordering::Relaxed);
                }
                b
            };
            if b.is_null() {
                b = self.base.alloc(bsize);
                if b.is_null() {
                    return b;
                }
            }
            st.in_use.fetch_add(bsize as u64, Ordering::Relaxed);
            (b as *mut u64).write(c as u64);
            b.add(HDR)
        }
    }

    fn usable(&self, size: usize) -> usize {
        Self::class_of(size).map_or(size, |c| (c + 1) * GRAIN - HDR)
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
        let bsize = (c + 1) * GRAIN;
        st.in_use.fetch_sub(bsize as u64, Ordering::Relaxed);
        {
            let _g = st.lock.lock();
            if st.cached.load(Ordering::Relaxed) + bsize as u64 <= CACHE_CAP {
                *(b as *mut *mut u8) = st.free[c];
                st.free[c] = b;
                st.cached.fetch_add(bsize as u64, Ordering::Relaxed);
                return;
            }
        }
        self.base.free(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fork_child, SharedArena};

    /// A counting base allocator over a shared arena.
    struct Counting {
        arena: SharedArena,
        frees: AtomicU64,
    }
    impl ShmAllocator for Counting {
        fn alloc(&self, size: usize) -> *mut u8 {
            self.arena.alloc(size)
        }
        unsafe fn free(&self, p: *mut u8) {
            self.frees.fetch_add(1, Ordering::SeqCst);
            self.arena.free(p)
        }
    }

    fn slab() -> (&'static Counting, Slab) {
        let base: &'static Counting = Box::leak(Box::new(Counting {
            arena: SharedArena::new(64 << 20),
            frees: AtomicU64::new(0),
        }));
        let s = Slab::new(base).unwrap();
        (base, s)
    }

    #[test]
    fn classes_and_reuse() {
        let (base, s) = slab();
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
        assert_eq!(
            base.frees.load(Ordering::SeqCst),
            1,
            "large blocks go back at once"
        );
        assert_eq!(Slab::class_of(0), Some(0));
        assert_eq!(Slab::class_of(24), Some(0));
        assert_eq!(Slab::class_of(25), Some(1));
        assert_eq!(Slab::class_of(4088), Some(NCLASS - 1));
        assert_eq!(Slab::class_of(4089), None);
        assert_eq!(s.usable(1), 24);
        assert_eq!(s.usable(24), 24);
        assert_eq!(s.usable(25), 56);
        assert_eq!(s.usable(5000), 5000);
    }

    #[test]
    fn the_cache_is_capped_and_memory_goes_back() {
        let (base, s) = slab();
        let n = (2 * CACHE_CAP as usize) / 1024;
        let blocks: Vec<_> = (0..n).map(|_| s.alloc(1000)).collect();
        for p in blocks {
            // SAFETY: allocated above, freed once.
            unsafe { s.free(p) };
        }
        let (cached, used) = s.usage();
        assert!(cached <= CACHE_CAP);
        assert_eq!(used, 0);
        assert!(
            base.frees.load(Ordering::SeqCst) as usize >= n / 2 - 1,
            "beyond the cap, blocks go back"
        );
    }

    #[test]
    fn many_sizes_without_overlap() {
        let (_, s) = slab();
        let mut blocks = Vec::new();
        for i in 0..5000usize {
            // Every byte the allocator says a block has is used.
            let n = s.usable((i * 37) % 3000 + 1);
            let p = s.alloc(n);
            assert!(!p.is_null());
            // SAFETY: `n` bytes.
            unsafe { ptr::write_bytes(p, (i % 251) as u8, n) };
            blocks.push((p, n, (i % 251) as u8));
            if i % 3 == 0 {
                let (p, _, _) = blocks.swap_remove(i / 7 % blocks.len());
                // SAFETY: still allocated; removed from the list.
                unsafe { s.free(p) };
            }
        }
        for (p, n, v) in &blocks {
            // SAFETY: still allocated.
            let sl = unsafe { std::slice::from_raw_parts(*p, *n) };
            assert!(sl.iter().all(|b| b == v), "blocks overlap");
        }
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
