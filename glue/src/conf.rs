//! Configuration errors, the one way both modules report them (worded like nginx's own), and
//! a directive's arguments.

use core::ffi::c_char;
use core::fmt::Display;

use ngx::core::NGX_CONF_ERROR;
use ngx::ffi::{ngx_conf_t, ngx_str_t, ngx_uint_t, NGX_LOG_EMERG, NGX_LOG_WARN};

/// Where a directive was written, for errors found after the whole block was read.
#[derive(Clone, Debug, Default)]
pub struct ConfPos {
    pub file: String,
    pub line: ngx_uint_t,
}

impl ConfPos {
    /// The position of the directive nginx is parsing now.
    pub fn here(cf: &ngx_conf_t) -> ConfPos {
        // SAFETY: while a directive is parsed, cf->conf_file points to the open file.
        let Some(file) = (unsafe { cf.conf_file.as_ref() }) else {
            return ConfPos::default();
        };
        ConfPos {
            file: String::from_utf8_lossy(file.file.name.as_bytes()).into_owned(),
            line: file.line,
        }
    }
}

/// Reports a configuration error at the directive being parsed, as nginx's own modules do:
/// `[emerg] <message> in <file>:<line>`. Returns the value a directive handler returns.
pub fn conf_error(cf: *mut ngx_conf_t, err: impl Display) -> *mut c_char {
    ngx::ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", err);
    NGX_CONF_ERROR
}

/// Reports a configuration error found after parsing, at the position it was written.
pub fn conf_error_at(cf: *mut ngx_conf_t, pos: &ConfPos, err: impl Display) {
    log_at(cf, NGX_LOG_EMERG, pos, err);
}

/// Reports a configuration that works but where something written has no effect, found after
/// parsing: `[warn] <message> in <file>:<line>`; `nginx -t` still succeeds.
pub fn conf_warn_at(cf: *mut ngx_conf_t, pos: &ConfPos, warning: impl Display) {
    log_at(cf, NGX_LOG_WARN, pos, warning);
}

fn log_at(cf: *mut ngx_conf_t, level: u32, pos: &ConfPos, msg: impl Display) {
    // SAFETY: cf is the live configuration context passed to postconfiguration.
    let log = unsafe { (*cf).log };
    ngx::ngx_log_error!(level, log, "{} in {}:{}", msg, pos.file, pos.line);
}

/// The directive's name and arguments.
///
/// # Safety
/// `cf` must be the context of the directive being parsed.
pub unsafe fn args<'a>(cf: *mut ngx_conf_t) -> (&'a [u8], Vec<&'a [u8]>) {
    // SAFETY: nginx fills cf->args with the directive and its arguments before calling set.
    let all: &[ngx_str_t] = unsafe { (*(*cf).args).as_slice() };
    let name = all.first().map(|s| s.as_bytes()).unwrap_or_default();
    (name, all.iter().skip(1).map(|s| s.as_bytes()).collect())
}
