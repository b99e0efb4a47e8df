//! The Kamailio layer: safe wrappers over what the core offers.
pub mod db;
pub mod log;
pub mod mem;
pub mod rpc;
pub mod shim;
pub mod sipmsg;
pub mod tm;

/// A `static` that C may read and write (module_exports, parameter storage):
/// `UnsafeCell` keeps it in writable memory, `repr(transparent)` keeps C's
/// layout. Kamailio touches these only from its single-threaded processes.
#[repr(transparent)]
pub struct CCell<T>(pub std::cell::UnsafeCell<T>);

// SAFETY: Kamailio processes are single-threaded; these statics are written
// by the core while parsing the config (before the fork) and read after.
unsafe impl<T> Sync for CCell<T> {}

impl<T> CCell<T> {
    pub const fn new(v: T) -> Self {
        CCell(std::cell::UnsafeCell::new(v))
    }
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}
