//! pua_core's log sink over Kamailio's LM_* machinery: lines land where every
//! module's lines land (syslog or stderr), with the module's log level.

use super::shim;
use pua_core::log::Level;
use std::ffi::CString;
use std::fmt;

fn enabled(level: Level) -> bool {
    // SAFETY: reads the core's debug level; valid in every process.
    unsafe { shim::pua_shim_log_enabled(level as i32) != 0 }
}

fn sink(level: Level, file: &'static str, line: u32, args: fmt::Arguments<'_>) {
    let prefix = format!(
        "pua [{}:{}]: ",
        file.rsplit('/').next().unwrap_or(file),
        line
    );
    let msg = args.to_string().replace('\0', "\\0");
    let (Ok(prefix), Ok(msg)) = (CString::new(prefix), CString::new(msg)) else {
        return;
    };
    // SAFETY: both are NUL-terminated and live across the call.
    unsafe { shim::pua_shim_log(level as i32, prefix.as_ptr(), msg.as_ptr()) };
}

/// Routes pua_core's log macros through Kamailio.
pub fn install() {
    pua_core::log::set_sink(sink, enabled);
}
