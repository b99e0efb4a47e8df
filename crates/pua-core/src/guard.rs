//! No panic may unwind into C: every `extern "C"` entry point runs its body
//! through [`ffi`], which catches a panic, logs it at CRITICAL level through
//! Kamailio and returns the entry point's error value instead.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// Runs `body` for the C entry point `name`; a panic becomes `on_panic`.
pub fn ffi<R>(name: &str, on_panic: R, body: impl FnOnce() -> R) -> R {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            crate::lm_crit!(
                "panic in {}: {} (returned an error to Kamailio instead)",
                name,
                msg
            );
            on_panic
        }
    }
}

/// Installs a panic hook that reports through the Kamailio log (daemonized
/// Kamailio sends stderr to /dev/null), with the location of the panic.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let loc = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_else(|| "unknown location".into());
            crate::lm_crit!("Rust panic at {}: {}", loc, info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::capture_log;

    #[test]
    fn panic_becomes_logged_error_return() {
        let (ret, lines) = capture_log(|| ffi("bind_pua", -1, || -> i32 { panic!("boom {}", 7) }));
        assert_eq!(ret, -1);
        assert!(
            lines.iter().any(|(lvl, l)| *lvl == crate::log::Level::Crit
                && l.contains("panic in bind_pua")
                && l.contains("boom 7")),
            "no CRIT line for the panic: {lines:?}"
        );
    }

    #[test]
    fn normal_return_passes_through() {
        assert_eq!(ffi("x", -1, || 5), 5);
    }
}
