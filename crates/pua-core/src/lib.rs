//! pua logic that does not need the Kamailio core to run, so that it can be
//! unit-tested in a plain `cargo test`: the cross-process lock, the
//! shared-memory allocator seam, the record table, the event list, the
//! callback list, parameter validation, the panic guard and the libxml
//! helpers. The `pua` crate plugs Kamailio's allocator and logger into the
//! seams defined here (`shm::set_allocator`, `log::set_sink`).
//!
//! Everything that lives in shared memory is reached through raw pointers and
//! only touched under the owning bucket's lock; the types here keep that
//! `unsafe` in one place per structure, each block with a SAFETY comment.

pub mod bodies;
pub mod bytes;
pub mod callbacks;
pub mod dbonly;
pub mod engine;
pub mod events;
pub mod flags;
pub mod guard;
pub mod hash;
pub mod libxml;
pub mod local;
pub mod lock;
pub mod log;
pub mod pack;
pub mod params;
pub mod persist;
pub mod pid;
pub mod publish;
pub mod scratch;
pub mod shm;
pub mod slab;
pub mod subscribe;
pub mod table;
#[cfg(any(test, feature = "test-arena"))]
pub mod testing;

pub use pua_sys as sys;
