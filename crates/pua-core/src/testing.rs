//! Test support: a `MAP_SHARED` arena that stands in for Kamailio's shared
//! memory (visible to forked children, like shm after Kamailio's fork), a
//! fork helper, and a log capture.

use crate::log::Level;
use crate::shm::ShmAllocator;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Header at the start of the arena; lives in the shared mapping itself.
#[repr(C)]
struct ArenaHead {
    next: AtomicUsize,
    live: AtomicI64,
}

/// A bump allocator over an anonymous `MAP_SHARED` mapping. Frees are
/// counted (so tests can check for leaks) but space is not reused.
pub struct SharedArena {
    base: *mut u8,
    size: usize,
}

// SAFETY: all mutation goes through atomics in the shared header.
unsafe impl Sync for SharedArena {}
// SAFETY: the mapping is process-wide.
unsafe impl Send for SharedArena {}

impl SharedArena {
    pub fn new(size: usize) -> Self {
        // SAFETY: anonymous shared mapping; checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        let head = base as *mut ArenaHead;
        // SAFETY: fresh mapping, large enough for the header.
        unsafe {
            head.write(ArenaHead {
                next: AtomicUsize::new(64),
                live: AtomicI64::new(0),
            })
        };
        SharedArena {
            base: base as *mut u8,
            size,
        }
    }

    fn head(&self) -> &ArenaHead {
        // SAFETY: written in `new`, lives as long as the mapping.
        unsafe { &*(self.base as *const ArenaHead) }
    }

    /// Raw allocation (8-aligned), not counted as live.
    pub fn alloc_raw(&self, size: usize) -> *mut u8 {
        let size = (size + 15) & !7;
        let off = self.head().next.fetch_add(size, Ordering::SeqCst);
        if off + size > self.size {
            return std::ptr::null_mut();
        }
        // SAFETY: inside the mapping.
        unsafe { self.base.add(off) }
    }

    /// Allocations not yet freed.
    pub fn live(&self) -> i64 {
        self.head().live.load(Ordering::SeqCst)
    }
}

thread_local! {
    /// Allocations minus frees made by this thread (tests run in parallel
    /// threads sharing one arena, so leak checks count per thread).
    static LIVE_HERE: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// Allocations not yet freed, counting only this thread's calls.
pub fn live_here() -> i64 {
    LIVE_HERE.with(|c| c.get())
}

impl ShmAllocator for SharedArena {
    fn alloc(&self, size: usize) -> *mut u8 {
        let p = self.alloc_raw(size);
        if !p.is_null() {
            self.head().live.fetch_add(1, Ordering::SeqCst);
            LIVE_HERE.with(|c| c.set(c.get() + 1));
        }
        p
    }
    unsafe fn free(&self, p: *mut u8) {
        if !p.is_null() {
            self.head().live.fetch_sub(1, Ordering::SeqCst);
            LIVE_HERE.with(|c| c.set(c.get() - 1));
        }
    }
}

/// The arena installed as the process's shm allocator for all tests.
pub fn global_arena() -> &'static SharedArena {
    static ARENA: OnceLock<&'static SharedArena> = OnceLock::new();
    ARENA.get_or_init(|| {
        let a: &'static SharedArena = Box::leak(Box::new(SharedArena::new(256 << 20)));
        crate::shm::set_allocator(a);
        a
    })
}

/// A forked child running a closure; `wait` returns its exit status.
pub struct Child(libc::pid_t);

impl Child {
    pub fn wait(self) -> i32 {
        let mut status = 0;
        // SAFETY: waiting on our own child.
        let r = unsafe { libc::waitpid(self.0, &mut status, 0) };
        assert_eq!(r, self.0, "waitpid");
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        }
    }
}

/// Forks; the child runs `f` and exits with its return value (never returns
/// into the test harness). A panic in the child exits with 101.
pub fn fork_child(f: impl FnOnce() -> i32) -> Child {
    // SAFETY: the child only runs `f` and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    Child(pid)
}

thread_local! {
    static CAPTURED: RefCell<Option<Vec<(Level, String)>>> = const { RefCell::new(None) };
}

fn capture_sink(level: Level, _file: &'static str, _line: u32, args: fmt::Arguments<'_>) {
    let line = args.to_string();
    let taken = CAPTURED.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push((level, line.clone()));
            true
        } else {
            false
        }
    });
    if !taken {
        eprintln!("pua {level:?}: {line}");
    }
}

/// Runs `f` with this thread's log lines captured; returns them with its result.
pub fn capture_log<R>(f: impl FnOnce() -> R) -> (R, Vec<(Level, String)>) {
    crate::log::set_sink(capture_sink, |_| true);
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = f();
    let lines = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, lines)
}

// ---- an in-memory `pua` table (persist::Store) ----

use crate::persist::{DbFail, OwnedVal, Store, Val};
use std::collections::HashMap;

/// An in-memory `pua` table for persistence tests.
#[derive(Default)]
pub struct MemStore {
    pub rows: Vec<HashMap<&'static str, OwnedVal>>,
    pub fail_inserts: bool,
    /// Every operation fails (the database is down).
    pub down: bool,
    pub no_affected_rows: bool,
    /// Queries run (select, insert, update, delete).
    pub queries: usize,
    /// `begin` starts a transaction (rows are kept aside until `commit`).
    pub transactions: bool,
    /// `commit` fails (the transaction's rows are dropped).
    pub fail_commit: bool,
    pub commits: usize,
    /// Rows count at `begin` (rolled back to on a failed commit).
    pub txn_mark: Option<usize>,
}

pub fn own(v: &Val<'_>) -> OwnedVal {
    match v {
        Val::Int(i) => OwnedVal::Int(*i),
        Val::Str(s) => OwnedVal::Str(s.to_vec()),
    }
}

fn int(v: &OwnedVal) -> i64 {
    match v {
        OwnedVal::Int(i) => *i as i64,
        _ => 0,
    }
}

fn matches(
    r: &HashMap<&'static str, OwnedVal>,
    k: &[&'static str],
    ops: &[&str],
    v: &[Val<'_>],
) -> bool {
    k.iter().zip(ops).zip(v).all(|((k, op), v)| {
        let cell = r.get(k).cloned().unwrap_or(OwnedVal::Null);
        match *op {
            "<" => int(&cell) < int(&own(v)),
            ">" => int(&cell) > int(&own(v)),
            _ => cell == own(v),
        }
    })
}

impl MemStore {
    fn up(&mut self) -> Result<(), DbFail> {
        self.queries += 1;
        if self.down {
            Err(DbFail)
        } else {
            Ok(())
        }
    }
}

impl Store for MemStore {
    fn begin(&mut self) -> bool {
        if self.transactions {
            self.txn_mark = Some(self.rows.len());
        }
        self.transactions
    }
    fn commit(&mut self) -> Result<(), DbFail> {
        self.commits += 1;
        let mark = self.txn_mark.take();
        if self.fail_commit {
            // Inserts only in these tests: dropping the new rows rolls back.
            if let Some(m) = mark {
                self.rows.truncate(m);
            }
            return Err(DbFail);
        }
        Ok(())
    }
    fn insert(&mut self, cols: &[&'static str], vals: &[Val<'_>]) -> Result<(), DbFail> {
        self.up()?;
        if self.fail_inserts {
            return Err(DbFail);
        }
        self.rows
            .push(cols.iter().zip(vals).map(|(c, v)| (*c, own(v))).collect());
        Ok(())
    }
    fn update(
        &mut self,
        k: &[&'static str],
        kv: &[Val<'_>],
        cols: &[&'static str],
        vals: &[Val<'_>],
    ) -> Result<Option<u64>, DbFail> {
        self.up()?;
        let ops = vec!["="; k.len()];
        let mut n = 0;
        for r in self.rows.iter_mut().filter(|r| matches(r, k, &ops, kv)) {
            for (c, v) in cols.iter().zip(vals) {
                r.insert(c, own(v));
            }
            n += 1;
        }
        Ok(if self.no_affected_rows { None } else { Some(n) })
    }
    fn delete(
        &mut self,
        k: &[&'static str],
        ops: &[&'static str],
        v: &[Val<'_>],
    ) -> Result<(), DbFail> {
        self.up()?;
        self.rows.retain(|r| !matches(r, k, ops, v));
        Ok(())
    }
    fn select(
        &mut self,
        k: &[&'static str],
        ops: &[&'static str],
        v: &[Val<'_>],
        cols: &[&'static str],
        f: &mut dyn FnMut(&[OwnedVal]),
    ) -> Result<(), DbFail> {
        self.up()?;
        for r in self.rows.iter().filter(|r| matches(r, k, ops, v)) {
            let v: Vec<OwnedVal> = cols
                .iter()
                .map(|c| r.get(c).cloned().unwrap_or(OwnedVal::Null))
                .collect();
            f(&v);
        }
        Ok(())
    }
}

/// A fixed-seed xorshift generator for the randomised tests: each call
/// gives a number below `n` (> 0).
pub fn rnd_below(mut seed: u64) -> impl FnMut(usize) -> usize {
    move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    }
}
