//! pua.so: a drop-in Rust replacement for Kamailio 5.6.3's `pua` module.
//!
//! Layers, bottom up (as ngx-rust and pgrx are built):
//! - `pua_sys`: bindgen's raw bindings to the 5.6.3 headers (crates/pua-sys);
//! - `kam`: a thin safe layer over the host: shm/pkg allocators, logging,
//!   database, RPC — the C shim (include/pua_shim.c) covers macros/inlines;
//! - `pua_core` (crates/pua-core): the module logic, host-independent and
//!   unit-tested: table, locks, events, callbacks, parameters;
//! - `module`, `api`: mod_init/child_init/destroy, the consumer API;
//! - `exports`: the C-ABI symbols Kamailio and consumers look up.
//!
//! Every `extern "C"` entry point runs its body in `pua_core::guard::ffi`.

pub mod api;
pub mod bodies;
mod body_glue;
pub mod exports;
pub mod kam;
pub mod module;
pub mod params;
pub mod publish;
pub mod subscribe;
