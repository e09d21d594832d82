//! Turns a failure's detail code (`Outcome::detail`) into the words an operator reads: the
//! failing match condition, OpenSSL's reason for a rejected certificate or a failed handshake.

use core::ffi::{c_long, CStr};

use ngx::ffi::{ERR_reason_error_string, X509_verify_cert_error_string};

use crate::module::module_conf::Check;
use crate::outcome::Failure;

/// The text of `code` for a failure of kind `failure` under `check`; `None` when there is
/// nothing more to say than the kind.
/// `status` is the last probe's HTTP status, if it got one.
pub fn detail_text(
    check: &Check,
    failure: Failure,
    code: u32,
    status: Option<u16>,
) -> Option<String> {
    if code == 0 {
        return None;
    }
    match failure {
        Failure::TlsVerify => {
            // SAFETY: OpenSSL returns a static string for every value, known or not.
            let s = unsafe { X509_verify_cert_error_string(code as c_long) };
            static_str(s)
        }
        Failure::TlsHandshake => {
            // SAFETY: OpenSSL returns a static string or null for an unknown code.
            let s = unsafe { ERR_reason_error_string(code.into()) };
            static_str(s)
        }
        Failure::Mismatch => {
            let m = check.matcher.as_ref()?;
            Some(m.failure(code as usize - 1, status.unwrap_or(0)))
        }
        _ => None,
    }
}

fn static_str(s: *const core::ffi::c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: non-null strings from OpenSSL's error tables are static and NUL-terminated.
    let text = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
    Some(text)
}
