//! Logging through the host: the `pua` crate installs a sink that writes via
//! Kamailio's LM_* machinery; tests install one that captures lines.

use std::fmt;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Kamailio's log levels (core/dprint.h: L_ALERT -5 ... L_DBG 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    Alert = -5,
    Bug = -4,
    Crit = -3,
    Err = -1,
    Warn = 0,
    Notice = 1,
    Info = 2,
    Dbg = 3,
}

/// Where log lines go: (level, source file, line, message).
pub type Sink = fn(Level, &'static str, u32, fmt::Arguments<'_>);
/// Whether a level would be printed at all (so we skip formatting).
pub type Enabled = fn(Level) -> bool;

fn stderr_sink(level: Level, file: &'static str, line: u32, args: fmt::Arguments<'_>) {
    eprintln!("pua {level:?} [{file}:{line}]: {args}");
}
fn always(_: Level) -> bool {
    true
}

static SINK: AtomicPtr<()> = AtomicPtr::new(stderr_sink as *mut ());
static ENABLED: AtomicPtr<()> = AtomicPtr::new(always as *mut ());

/// Installs the sink; called once at module load, before Kamailio forks.
pub fn set_sink(sink: Sink, enabled: Enabled) {
    SINK.store(sink as *mut (), Ordering::Release);
    ENABLED.store(enabled as *mut (), Ordering::Release);
}

#[doc(hidden)]
// Cold and out of line: the blocks that log are the unusual paths, and so
// laid out away from the hot code around them (fewer instruction-cache
// lines per PUBLISH).
#[cold]
#[inline(never)]
pub fn emit(level: Level, file: &'static str, line: u32, args: fmt::Arguments<'_>) {
    // SAFETY: only ever stores of `Enabled`/`Sink` fn pointers are made above.
    let enabled: Enabled = unsafe { std::mem::transmute(ENABLED.load(Ordering::Acquire)) };
    if enabled(level) {
        // SAFETY: as above.
        let sink: Sink = unsafe { std::mem::transmute(SINK.load(Ordering::Acquire)) };
        sink(level, file, line, args);
    }
}

#[macro_export]
macro_rules! lm_log {
    ($lvl:expr, $($arg:tt)+) => {
        $crate::log::emit($lvl, file!(), line!(), format_args!($($arg)+))
    };
}
#[macro_export]
macro_rules! lm_crit { ($($arg:tt)+) => { $crate::lm_log!($crate::log::Level::Crit, $($arg)+) }; }
#[macro_export]
macro_rules! lm_err { ($($arg:tt)+) => { $crate::lm_log!($crate::log::Level::Err, $($arg)+) }; }
#[macro_export]
macro_rules! lm_warn { ($($arg:tt)+) => { $crate::lm_log!($crate::log::Level::Warn, $($arg)+) }; }
#[macro_export]
macro_rules! lm_notice { ($($arg:tt)+) => { $crate::lm_log!($crate::log::Level::Notice, $($arg)+) }; }
#[macro_export]
macro_rules! lm_info { ($($arg:tt)+) => { $crate::lm_log!($crate::log::Level::Info, $($arg)+) }; }
#[macro_export]
macro_rules! lm_dbg { ($($arg:tt)+) => { $crate::lm_log!($crate::log::Level::Dbg, $($arg)+) }; }
