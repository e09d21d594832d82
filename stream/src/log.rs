//! The module's log macros: every message goes through these, prefixed with the module name.

/// Logs to the cycle log at the given nginx level, prefixed `upstream_healthcheck: `.
macro_rules! hc_log {
    ($level:ident, $($arg:tt)+) => {{
        // SAFETY: ngx_cycle is set before any module code runs and stays valid for the
        // process; its log lives as long as the cycle.
        let log = unsafe { (*ngx::ffi::ngx_cycle).log };
        if !log.is_null() {
            ngx::ngx_log_error!(
                ngx::ffi::$level,
                log,
                "upstream_healthcheck: {}",
                format_args!($($arg)+)
            );
        }
    }};
}

/// Logs a debug line about the life of a probe (`error_log ... debug`, nginx `--with-debug`).
macro_rules! hc_debug {
    ($($arg:tt)+) => {{
        // SAFETY: as for hc_log.
        let log = unsafe { (*ngx::ffi::ngx_cycle).log };
        if !log.is_null() {
            ngx::ngx_log_debug!(log, "upstream_healthcheck: {}", format_args!($($arg)+));
        }
    }};
}

pub(crate) use {hc_debug, hc_log};
