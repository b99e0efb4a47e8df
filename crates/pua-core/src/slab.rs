//! A page allocator in shared memory over the host's allocator.
//!
//! Kamailio's shm allocator (q_malloc with DBG_SR_MEMORY) costs thousands of
//! instructions per call, adds ~90 bytes of debug header to every block, and
//! its free-list search is shared by every module: small blocks of ours
//! taken from its free lists one by one make the next small allocation of
//! usrloc or tm search further (measured: usrloc's `new_ucontact` ~3 us per
//! REGISTER slower with ours loaded, bench/README perf mode). So blocks come
//! from [`PAGE`]-byte pages taken from the host one at a time: sizes are
//! rounded up to classes (32 bytes apart, up to 4 KiB), each page serves one
//! class, and a freed block goes back to its page, under one cross-process
//! futex lock. A page whose blocks are all free goes back to the host,
//! except one per class kept for the next allocation. Blocks above 4 KiB go
//! straight to the host.

use crate::lock::FutexLock;
use crate::shm::ShmAllocator;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Class granularity and the largest size served from classes.
const GRAIN: usize = 32;
const MAX_CLASS_SIZE: usize = 4096;
const NCLASS: usize = MAX_CLASS_SIZE / GRAIN;
/// The bytes of a page (its header included). q_malloc serves this size
/// from its first "big" bucket, whose search is short.
pub const PAGE: usize = 16 << 10;
/// Per-block header: its page (or DIRECT) in the 8 bytes before the block.
const HDR: usize = 8;
const DIRECT: u64 = u64::MAX;
/// Marks a live page header (a corrupt block header is caught, not followed).
const MAGIC: u32 = 0x5055_4150;

/// A page's header, at its start; its blocks follow.
#[repr(C)]
struct Page {
    /// The class's list of pages with a free block (doubly linked).
    next: *mut Page,
    prev: *mut Page,
    /// Freed blocks of this page (linked through their first word).
    free: *mut u8,
    /// Offset of the first block never handed out.
    bump: u32,
    /// Blocks handed out and not freed.
    live: u32,
    class: u32,
    magic: u32,
    on_list: u32,
    _pad: u32,
}

const PAGE_HDR: usize = std::mem::size_of::<Page>().div_ceil(16) * 16;

/// The allocator's state, itself in shared memory.
#[repr(C)]
pub struct SlabState {
    lock: FutexLock,
    /// Per class: pages with at least one free block.
    partial: [*mut Page; NCLASS],
    /// Per class: pages on `partial` with no live block (at most 1 kept).
    empty: [u32; NCLASS],
    /// Pages taken from the host.
    pub pages: AtomicU64,
    /// Bytes in live blocks (their class sizes).
    pub in_use: AtomicU64,
}

/// A page allocator over `base`; its state lives in memory from `base`.
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

    /// (bytes held in pages but not in live blocks, bytes in live blocks).
    pub fn usage(&self) -> (u64, u64) {
        // SAFETY: the state lives as long as the slab.
        let st = unsafe { &*self.st };
        let used = st.in_use.load(Ordering::Relaxed);
        let held = st.pages.load(Ordering::Relaxed) * PAGE as u64;
        (held.saturating_sub(used), used)
    }

    fn class_of(size: usize) -> Option<usize> {
        let total = size.checked_add(HDR)?;
        (total <= MAX_CLASS_SIZE).then(|| total.div_ceil(GRAIN) - 1)
    }

    /// Takes a block of class `c` (block size `bsize`) from the class's
    /// first page with room. Under the lock.
    ///
    /// # Safety
    /// The lock is held; the lists are consistent.
    unsafe fn take(st: *mut SlabState, c: usize, bsize: usize) -> Option<(*mut Page, *mut u8)> {
        let p = (*st).partial[c];
        if p.is_null() {
            return None;
        }
        let pg = &mut *p;
        let b = if !pg.free.is_null() {
            let b = pg.free;
            pg.free = *(b as *mut *mut u8);
            b
        } else {
            let b = (p as *mut u8).add(pg.bump as usize);
            pg.bump += bsize as u32;
            b
        };
        if pg.live == 0 {
            (*st).empty[c] -= 1;
        }
        pg.live += 1;
        if pg.free.is_null() && pg.bump as usize + bsize > PAGE {
            Self::unlink(st, c, p);
        }
        Some((p, b))
    }

    /// # Safety
    /// The lock is held and `p` is on class `c`'s list.
    unsafe fn unlink(st: *mut SlabState, c: usize, p: *mut Page) {
        let pg = &mut *p;
        if pg.prev.is_null() {
            (*st).partial[c] = pg.next;
        } else {
            (*pg.prev).next = pg.next;
        }
        if !pg.next.is_null() {
            (*pg.next).prev = pg.prev;
        }
        pg.next = ptr::null_mut();
        pg.prev = ptr::null_mut();
        pg.on_list = 0;
    }

    /// # Safety
    /// The lock is held and `p` is not on a list.
    unsafe fn push(st: *mut SlabState, c: usize, p: *mut Page) {
        let pg = &mut *p;
        pg.prev = ptr::null_mut();
        pg.next = (*st).partial[c];
        if !pg.next.is_null() {
            (*pg.next).prev = p;
        }
        (*st).partial[c] = p;
        pg.on_list = 1;
    }
}

/// Maps the memory pages under `[p, p + len)` into this process, writable,
/// with one `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+; an older kernel
/// answers EINVAL and the pages fault in one by one as before). Each
/// first touch of a shm page is a page fault per process, and the records
/// of a new page are written one by one across many PUBLISHes: one call
/// instead of a fault for each memory page. The bytes are not changed.
fn populate(p: *mut u8, len: usize) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    const MEM_PAGE: usize = 4096;
    let start = (p as usize) & !(MEM_PAGE - 1);
    let end = (p as usize).saturating_add(len).next_multiple_of(MEM_PAGE);
    // SAFETY: the range covers only memory pages of a block we own and
    // its neighbours in the same mapping; POPULATE_WRITE faults them in
    // without writing to them.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE);
    }
}

impl ShmAllocator for Slab {
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: the state is valid; pages and lists change under the lock.
        unsafe {
            let st = self.st;
            let Some(c) = Self::class_of(size) else {
                let p = self.base.alloc(size + HDR);
                if p.is_null() {
                    return p;
                }
                (p as *mut u64).write(DIRECT);
                return p.add(HDR);
            };
            let bsize = (c + 1) * GRAIN;
            let got = {
                let _g = (*st).lock.lock();
                Self::take(st, c, bsize)
            };
            let (page, b) = match got {
                Some(x) => x,
                None => {
                    // A new page, taken from the host outside the lock.
                    let p = self.base.alloc(PAGE) as *mut Page;
                    if p.is_null() {
                        return ptr::null_mut();
                    }
                    populate(p.cast(), PAGE);
                    p.write(Page {
                        next: ptr::null_mut(),
                        prev: ptr::null_mut(),
                        free: ptr::null_mut(),
                        bump: PAGE_HDR as u32,
                        live: 0,
                        class: c as u32,
                        magic: MAGIC,
                        on_list: 0,
                        _pad: 0,
                    });
                    (*st).pages.fetch_add(1, Ordering::Relaxed);
                    let _g = (*st).lock.lock();
                    Self::push(st, c, p);
                    (*st).empty[c] += 1;
                    match Self::take(st, c, bsize) {
                        Some(x) => x,
                        None => return ptr::null_mut(), // unreachable: the page has room
                    }
                }
            };
            (*st).in_use.fetch_add(bsize as u64, Ordering::Relaxed);
            (b as *mut u64).write(page as u64);
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
        let st = self.st;
        let b = p.sub(HDR);
        let h = (b as *const u64).read();
        if h == DIRECT {
            self.base.free(b);
            return;
        }
        let page = h as *mut Page;
        let sane = h.is_multiple_of(8)
            && (b as usize) > (page as usize)
            && (b as usize) < (page as usize) + PAGE
            && (*page).magic == MAGIC
            && ((*page).class as usize) < NCLASS;
        if !sane {
            crate::lm_crit!("slab: freeing a block with a corrupt header ({:#x})", h);
            return;
        }
        let c = (*page).class as usize;
        let bsize = (c + 1) * GRAIN;
        (*st).in_use.fetch_sub(bsize as u64, Ordering::Relaxed);
        let give_back = {
            let _g = (*st).lock.lock();
            let pg = &mut *page;
            *(b as *mut *mut u8) = pg.free;
            pg.free = b;
            pg.live -= 1;
            if pg.on_list == 0 {
                Self::push(st, c, page);
            }
            if pg.live > 0 {
                false
            } else if (*st).empty[c] >= 1 {
                Self::unlink(st, c, page);
                pg.magic = 0;
                true
            } else {
                (*st).empty[c] += 1;
                false
            }
        };
        if give_back {
            (*st).pages.fetch_sub(1, Ordering::Relaxed);
            self.base.free(page as *mut u8);
        }
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

    /// POPULATE_WRITE maps the pages; it must not change a byte of them or
    /// of the neighbours sharing their first and last memory page.
    #[test]
    fn populate_keeps_the_bytes() {
        let arena = SharedArena::new(1 << 20);
        let p = arena.alloc_raw(3 * PAGE);
        // SAFETY: 3 pages of the arena, ours.
        let all = unsafe { std::slice::from_raw_parts_mut(p, 3 * PAGE) };
        for (i, b) in all.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // SAFETY: as above; an unaligned block in the middle.
        populate(unsafe { p.add(PAGE + 24) }, PAGE - 48);
        assert!(all.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
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
    fn blocks_share_pages_and_empty_pages_go_back() {
        let (base, s) = slab();
        let per_page = (PAGE - PAGE_HDR) / 1024;
        let n = per_page * 10;
        let blocks: Vec<_> = (0..n).map(|_| s.alloc(1000)).collect();
        assert_eq!(
            s.usage().0 + s.usage().1,
            10 * PAGE as u64,
            "{n} blocks of 1 KiB fill 10 pages exactly"
        );
        assert_eq!(s.usage().1, (n * 1024) as u64);
        for p in blocks {
            // SAFETY: allocated above, freed once.
            unsafe { s.free(p) };
        }
        assert_eq!(s.usage().1, 0);
        assert_eq!(
            base.frees.load(Ordering::SeqCst),
            9,
            "every empty page but one goes back"
        );
        assert_eq!(s.usage().0, PAGE as u64, "one page kept for the class");
        // The kept page serves the class again, without the host.
        let before = base.frees.load(Ordering::SeqCst);
        let a = s.alloc(1000);
        // SAFETY: allocated above.
        unsafe { s.free(a) };
        assert_eq!(base.frees.load(Ordering::SeqCst), before);
        assert_eq!(s.usage().0, PAGE as u64);
    }

    #[test]
    fn a_corrupt_header_is_refused() {
        let (base, s) = slab();
        let p = s.alloc(100);
        // SAFETY: the block's own header, overwritten on purpose; the block
        // is leaked afterwards.
        unsafe {
            (p.sub(HDR) as *mut u64).write(0x1234_5678);
            s.free(p);
        }
        assert_eq!(base.frees.load(Ordering::SeqCst), 0);
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
