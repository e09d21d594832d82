//! The modules' log macros: every message goes through these, prefixed with the module name.

/// Logs to the cycle log at the given nginx level, prefixed `upstream_healthcheck: `.
#[macro_export]
macro_rules! hc_log {
    ($level:ident, $($arg:tt)+) => {{
        // SAFETY: ngx_cycle is set before any module code runs and stays valid for the
        // process; its log lives as long as the cycle.
        let log = unsafe { (*$crate::ngx::ffi::ngx_cycle).log };
        if !log.is_null() {
            $crate::ngx::ngx_log_error!(
                $crate::ngx::ffi::$level,
                log,
                "upstream_healthcheck: {}",
                format_args!($($arg)+)
            );
        }
    }};
}

/// Logs a debug line (`error_log ... debug` with an nginx built `--with-debug`) about the life
/// of a probe or the worker's timer; compiled out against an nginx without debug logging.
#[macro_export]
macro_rules! hc_debug {
    ($($arg:tt)+) => {{
        // SAFETY: ngx_cycle is set before any module code runs and stays valid for the
        // process; its log lives as long as the cycle.
        let log = unsafe { (*$crate::ngx::ffi::ngx_cycle).log };
        if !log.is_null() {
            $crate::ngx::ngx_log_debug!(log, "upstream_healthcheck: {}", format_args!($($arg)+));
        }
    }};
}
