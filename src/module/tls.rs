//! TLS for probes: the context built from the upstream's directives, a probe connection's
//! handshake, verification and session reuse.
//!
//! Everything goes through nginx's own OpenSSL layer (`ngx_ssl_*`), as `proxy_pass https://`
//! does: the context is made at configuration time (so `nginx -t` reports unreadable files
//! and keys that do not match), a connection gets its `SSL` from `ngx_ssl_create_connection`,
//! the handshake runs on nginx's event loop through `ngx_ssl_handshake`, and once it is done
//! `c->send`/`c->recv` are nginx's `ngx_ssl_write`/`ngx_ssl_recv`.

use core::cell::{Cell, RefCell};
use core::ffi::{c_char, c_int, c_long, c_void};
use core::mem::size_of;
use core::ptr;
use std::ffi::CString;

use ngx::ffi::{
    ngx_conf_t, ngx_connection_handler_pt, ngx_connection_t, ngx_create_pool, ngx_destroy_pool,
    ngx_log_t, ngx_pcalloc, ngx_pnalloc, ngx_pool_cleanup_add, ngx_ssl_certificate,
    ngx_ssl_check_host, ngx_ssl_ciphers, ngx_ssl_cleanup_ctx, ngx_ssl_client_session_cache,
    ngx_ssl_create, ngx_ssl_create_connection, ngx_ssl_get_session, ngx_ssl_handshake,
    ngx_ssl_set_session, ngx_ssl_shutdown, ngx_ssl_t, ngx_ssl_trusted_certificate, ngx_str_t,
    ngx_uint_t, u_char, NGX_SSL_TLSv1, NGX_SSL_TLSv1_1, NGX_SSL_TLSv1_2, NGX_SSL_TLSv1_3,
    SSL_SESSION_free, SSL_ctrl, SSL_get_verify_result, NGX_AGAIN, NGX_LOG_INFO, NGX_OK,
    NGX_SSL_BUFFER, NGX_SSL_CLIENT, SSL_CTRL_SET_TLSEXT_HOSTNAME, SSL_SESSION,
    X509_V_ERR_HOSTNAME_MISMATCH,
};
use ngx::ffi::{
    ERR_clear_error, ERR_peek_error, SSL_get_error, SSL_pending, SSL_read, SSL_ERROR_SYSCALL,
    SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_ZERO_RETURN,
};
use rustc_hash::FxHashMap;

use crate::config::TlsProtocols;
use crate::module::module_conf::{conf_error_at, ConfPos, SslDirectives};
use crate::module::probe::Probe;
use crate::outcome::{Failure, Outcome};
use crate::parse::{handshake_error_code, sni_name, strip_port};

/// `TLSEXT_NAMETYPE_host_name`: the only kind of SNI name.
const TLSEXT_NAMETYPE_HOST_NAME: c_long = 0;

/// How deep a peer's certificate chain may be when it is verified.
pub const VERIFY_DEPTH: isize = 4;

/// The TLS side of one checked upstream, built at configuration time and living as long as
/// the configuration (its cleanup is on the configuration's pool).
pub struct TlsContext {
    ssl: *mut ngx_ssl_t,
    /// `upstream_healthcheck_ssl_verify`.
    verify: bool,
    /// The name the certificate must be valid for, in the configuration's pool.
    name: ngx_str_t,
    /// The name sent in SNI, if any.
    sni: Option<CString>,
}

/// A copy of `s` in `pool`, NUL-terminated (the terminator is not counted in `len`), as
/// nginx's configuration strings are.
///
/// # Safety
/// `pool` must be a live pool.
unsafe fn pool_str(pool: *mut ngx::ffi::ngx_pool_t, s: &str) -> Option<ngx_str_t> {
    // SAFETY: per the contract; the copy has room for the bytes and the terminator.
    unsafe {
        let p = ngx_pnalloc(pool, s.len() + 1) as *mut u8;
        if p.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        *p.add(s.len()) = 0;
        Some(ngx_str_t {
            len: s.len(),
            data: p,
        })
    }
}

fn protocol_mask(p: TlsProtocols) -> ngx_uint_t {
    let mut mask = 0;
    for (on, bit) in [
        (p.tls1, NGX_SSL_TLSv1),
        (p.tls1_1, NGX_SSL_TLSv1_1),
        (p.tls1_2, NGX_SSL_TLSv1_2),
        (p.tls1_3, NGX_SSL_TLSv1_3),
    ] {
        if on {
            mask |= bit as ngx_uint_t;
        }
    }
    mask
}

/// Builds the TLS context of an `https` check from its directives, as `proxy_ssl_*` does:
/// nginx logs what OpenSSL said, and the directive that asked for it is named after that.
/// `name` is the default name to verify and send: `host=` or the upstream's name.
///
/// # Safety
/// `cf` must be the http block's configuration context in postconfiguration.
pub unsafe fn create_context(
    cf: *mut ngx_conf_t,
    upstream: &str,
    name: &str,
    d: &SslDirectives,
    pos: &ConfPos,
) -> Result<TlsContext, ()> {
    // SAFETY: cf is valid during configuration.
    let pool = unsafe { (*cf).pool };
    let verify = d.verify.as_ref().is_some_and(|v| v.0);
    if let Some((true, vpos)) = &d.verify {
        if d.trusted.is_none() {
            conf_error_at(
                cf,
                vpos,
                format!(
                    "no \"upstream_healthcheck_ssl_trusted_certificate\" for \
                     \"upstream_healthcheck_ssl_verify\" in upstream \"{upstream}\""
                ),
            );
            return Err(());
        }
    }
    match (&d.certificate, &d.certificate_key) {
        (Some((cert, cpos)), None) => {
            conf_error_at(
                cf,
                cpos,
                format!(
                    "no \"upstream_healthcheck_ssl_certificate_key\" is defined for certificate \
                     \"{cert}\""
                ),
            );
            return Err(());
        }
        (None, Some((_, kpos))) => {
            conf_error_at(
                cf,
                kpos,
                "\"upstream_healthcheck_ssl_certificate_key\" directive needs \
                 \"upstream_healthcheck_ssl_certificate\"",
            );
            return Err(());
        }
        _ => {}
    }

    // SAFETY: the pool is the configuration's; the context is zeroed as nginx's own are.
    let ssl = unsafe { ngx_pcalloc(pool, size_of::<ngx_ssl_t>()) } as *mut ngx_ssl_t;
    if ssl.is_null() {
        return Err(());
    }
    let protocols = d.protocols.as_ref().map(|p| p.0).unwrap_or_default();
    // SAFETY: ssl is a zeroed context in the configuration's pool; cf->log is valid.
    unsafe {
        (*ssl).log = (*cf).log;
        if ngx_ssl_create(ssl, protocol_mask(protocols), ptr::null_mut()) != NGX_OK as isize {
            conf_error_at(
                cf,
                pos,
                format!("cannot create the TLS context of upstream \"{upstream}\""),
            );
            return Err(());
        }
        let Some(cln) = ngx_pool_cleanup_add(pool, 0).as_mut() else {
            ngx_ssl_cleanup_ctx(ssl as *mut c_void);
            return Err(());
        };
        cln.handler = Some(ngx_ssl_cleanup_ctx);
        cln.data = ssl as *mut c_void;
    }
    // SAFETY: pool is the configuration's, live.
    let Some(mut ciphers) = (unsafe { pool_str(pool, "DEFAULT") }) else {
        return Err(());
    };
    // SAFETY: cf and ssl are valid; ciphers is a NUL-terminated pool string.
    if unsafe { ngx_ssl_ciphers(cf, ssl, &mut ciphers, 0) } != NGX_OK as isize {
        return Err(());
    }
    if let (Some((cert, cpos)), Some((key, _))) = (&d.certificate, &d.certificate_key) {
        // SAFETY: pool is valid.
        let (Some(mut c), Some(mut k)) = (unsafe { pool_str(pool, cert) }, unsafe {
            pool_str(pool, key)
        }) else {
            return Err(());
        };
        // SAFETY: cf and ssl are valid; both names are NUL-terminated pool strings.
        if unsafe { ngx_ssl_certificate(cf, ssl, &mut c, &mut k, ptr::null_mut()) }
            != NGX_OK as isize
        {
            conf_error_at(
                cf,
                cpos,
                format!(
                    "cannot load \"upstream_healthcheck_ssl_certificate\" \"{cert}\" with \
                     \"upstream_healthcheck_ssl_certificate_key\" \"{key}\""
                ),
            );
            return Err(());
        }
    }
    if verify {
        if let Some((file, tpos)) = &d.trusted {
            // SAFETY: pool is valid.
            let Some(mut f) = (unsafe { pool_str(pool, file) }) else {
                return Err(());
            };
            // SAFETY: cf and ssl are valid; f is a NUL-terminated pool string.
            if unsafe { ngx_ssl_trusted_certificate(cf, ssl, &mut f, VERIFY_DEPTH) }
                != NGX_OK as isize
            {
                conf_error_at(
                    cf,
                    tpos,
                    format!(
                        "cannot load \"upstream_healthcheck_ssl_trusted_certificate\" \"{file}\""
                    ),
                );
                return Err(());
            }
        }
    }
    // SAFETY: cf and ssl are valid. Sessions are handed to the connection's save_session.
    if unsafe { ngx_ssl_client_session_cache(cf, ssl, 1) } != NGX_OK as isize {
        return Err(());
    }

    let name = d.name.as_ref().map_or(name, |n| n.0.as_str());
    let name = strip_port(name);
    let send_sni = d.server_name.as_ref().map_or(true, |s| s.0);
    let sni = send_sni
        .then(|| sni_name(name))
        .flatten()
        .and_then(|n| CString::new(n).ok());
    // SAFETY: pool is valid.
    let Some(name) = (unsafe { pool_str(pool, name) }) else {
        return Err(());
    };
    Ok(TlsContext {
        ssl,
        verify,
        name,
        sni,
    })
}

/// The TLS state of one probe.
pub struct ProbeTls {
    /// The session the peer handed out during this probe (`ngx_ssl_get_session`'s reference).
    session: *mut SSL_SESSION,
    /// The handshake finished and the certificate passed: the session is worth keeping.
    pub passed: bool,
}

impl Default for ProbeTls {
    fn default() -> Self {
        ProbeTls {
            session: ptr::null_mut(),
            passed: false,
        }
    }
}

impl ProbeTls {
    /// The session to resume the next probe of this peer with, if the probe passed TLS.
    pub fn take_session(&mut self) -> Option<*mut SSL_SESSION> {
        let s = core::mem::replace(&mut self.session, ptr::null_mut());
        if s.is_null() {
            return None;
        }
        if !self.passed {
            // SAFETY: s is this probe's own reference.
            unsafe { SSL_SESSION_free(s) };
            return None;
        }
        Some(s)
    }
}

impl Drop for ProbeTls {
    fn drop(&mut self) {
        if !self.session.is_null() {
            // SAFETY: the probe holds one reference to the session.
            unsafe { SSL_SESSION_free(self.session) };
        }
    }
}

thread_local! {
    /// The last good session of each https peer this worker probes, by slot; one reference
    /// each. Beside the worker, not in it, as the idle connections are (`keepalive`): a probe
    /// reconnects from an event handler, where the worker is not at hand. Never borrowed
    /// across a call into nginx.
    static SESSIONS: RefCell<FxHashMap<usize, *mut SSL_SESSION>> =
        RefCell::new(FxHashMap::default());
}

/// Keeps `s` (a reference the caller hands over) as the peer's session, or forgets the
/// peer's session when `s` is `None`.
fn set_session(slot: usize, s: Option<*mut SSL_SESSION>) {
    let old = SESSIONS.with(|m| {
        let mut m = m.try_borrow_mut().ok()?;
        match s {
            Some(s) => m.insert(slot, s),
            None => m.remove(&slot),
        }
    });
    if let Some(old) = old {
        // SAFETY: the map held one reference to it.
        unsafe { SSL_SESSION_free(old) };
    }
}

/// After a probe of `slot`: keeps the session it brought, or the one it resumed when it
/// brought none; forgets the peer's session when the probe did not pass TLS (the next one
/// starts afresh).
pub fn keep_session(slot: usize, probe: &mut ProbeTls) {
    if !probe.passed {
        set_session(slot, None);
    } else if let Some(s) = probe.take_session() {
        set_session(slot, Some(s));
    }
}

/// Frees every kept session (the worker exits).
pub fn forget_sessions() {
    let all: Vec<*mut SSL_SESSION> = SESSIONS
        .with(|m| {
            m.try_borrow_mut()
                .ok()
                .map(|mut m| m.drain().map(|(_, s)| s).collect())
        })
        .unwrap_or_default();
    for s in all {
        // SAFETY: the map held one reference to each.
        unsafe { SSL_SESSION_free(s) };
    }
}

/// The session to resume `slot`'s next probe with; borrowed from the map (null if none).
fn session_of(slot: usize) -> *mut SSL_SESSION {
    SESSIONS
        .with(|m| m.try_borrow().ok().and_then(|m| m.get(&slot).copied()))
        .unwrap_or(ptr::null_mut())
}

thread_local! {
    /// The OpenSSL error code of the last failed handshake nginx logged to `quiet_log`.
    static HANDSHAKE_ERROR: Cell<u32> = const { Cell::new(0) };
}

/// The log of https probe connections: nginx drains OpenSSL's error queue into its log line
/// when a handshake fails, so the code is read back from that line; nothing is written (the
/// checker logs a peer's failures itself, once per change).
pub fn quiet_log(base: &ngx_log_t) -> ngx_log_t {
    let mut log = *base;
    log.log_level = NGX_LOG_INFO as _;
    log.writer = Some(capture);
    log.wdata = ptr::null_mut();
    log.next = ptr::null_mut();
    log
}

unsafe extern "C" fn capture(
    _: *mut ngx_log_t,
    _: ngx::ffi::ngx_uint_t,
    buf: *mut u_char,
    len: usize,
) {
    if buf.is_null() {
        return;
    }
    // SAFETY: nginx passes the formatted line, len bytes long.
    let line = unsafe { core::slice::from_raw_parts(buf, len) };
    if let Some(code) = handshake_error_code(line) {
        HANDSHAKE_ERROR.with(|e| e.set(code));
    }
}

/// Gives a new probe connection its TLS side: a pool, the `SSL` object, SNI and the session
/// of the peer's last probe. An error is local (no verdict): nginx ran out of memory or
/// OpenSSL refused.
///
/// # Safety
/// `c` must be a new probe connection whose `data` will be (or is) its `Probe`.
pub unsafe fn attach(
    c: *mut ngx_connection_t,
    ctx: &TlsContext,
    slot: usize,
) -> Result<(), String> {
    // SAFETY: per the contract; the pool belongs to the connection until `close`.
    unsafe {
        let c = &mut *c;
        if c.pool.is_null() {
            c.pool = ngx_create_pool(256, c.log);
            if c.pool.is_null() {
                return Err("no memory for the TLS connection".to_string());
            }
        }
        if ngx_ssl_create_connection(ctx.ssl, c, (NGX_SSL_BUFFER | NGX_SSL_CLIENT) as ngx_uint_t)
            != NGX_OK as isize
        {
            return Err("SSL_new() failed".to_string());
        }
        let ssl = &mut *c.ssl;
        if let Some(sni) = &ctx.sni {
            // SSL_set_tlsext_host_name is a macro over SSL_ctrl.
            if SSL_ctrl(
                ssl.connection,
                SSL_CTRL_SET_TLSEXT_HOSTNAME as c_int,
                TLSEXT_NAMETYPE_HOST_NAME,
                sni.as_ptr() as *mut c_char as *mut c_void,
            ) == 0
            {
                return Err(format!(
                    "SSL_set_tlsext_host_name(\"{}\") failed",
                    sni.to_string_lossy()
                ));
            }
        }
        ssl.save_session = Some(on_new_session);
        let session = session_of(slot);
        if !session.is_null() && ngx_ssl_set_session(c, session) != NGX_OK as isize {
            return Err("SSL_set_session() failed".to_string());
        }
    }
    Ok(())
}

/// nginx hands a client session over here when the peer sends one (for TLS 1.3 after the
/// handshake, in a ticket): the probe keeps it until it ends.
unsafe extern "C" fn on_new_session(c: *mut ngx_connection_t) {
    // SAFETY: nginx calls this for a live connection with TLS; its data is the probe (set
    // before the handshake starts) or null.
    unsafe {
        // An idle kept connection's data is its slot, not a probe.
        let p = (*c).data as *mut Probe;
        if p.is_null() || (*c).idle() != 0 {
            return;
        }
        let s = ngx_ssl_get_session(c);
        if s.is_null() {
            return;
        }
        let tls = (*p).tls_mut();
        if !tls.session.is_null() {
            SSL_SESSION_free(tls.session);
        }
        tls.session = s;
    }
}

/// Starts or continues the handshake of a probe connection. `None` while it is in progress
/// (nginx calls `handler` when it is done, failed or timed out); otherwise whether the peer
/// passed, as `finish` says.
///
/// # Safety
/// `c` must be a live probe connection with TLS attached.
pub unsafe fn handshake(
    c: *mut ngx_connection_t,
    ctx: &TlsContext,
    handler: ngx_connection_handler_pt,
) -> Option<Result<(), Outcome>> {
    HANDSHAKE_ERROR.with(|e| e.set(0));
    // SAFETY: per the contract.
    unsafe {
        if ngx_ssl_handshake(c) == NGX_AGAIN as isize {
            (*(*c).ssl).handler = handler;
            return None;
        }
        Some(finish(c, ctx))
    }
}

/// After `ngx_ssl_handshake` returned or called the handler: a handshake that did not finish
/// (failed or timed out) is `tls_handshake`, with OpenSSL's error code as the detail when
/// there is one; with verification on, a certificate that does not
/// chain to the trusted ones or is not valid for the name is `tls_verify`, with OpenSSL's
/// verify result as the detail.
///
/// # Safety
/// `c` must be a live probe connection with TLS attached.
pub unsafe fn finish(c: *mut ngx_connection_t, ctx: &TlsContext) -> Result<(), Outcome> {
    // SAFETY: per the contract.
    unsafe {
        let ssl = &*(*c).ssl;
        let code = HANDSHAKE_ERROR.with(|e| e.replace(0));
        if ssl.handshaked() == 0 {
            return Err(Outcome::failed_with(Failure::TlsHandshake, None, code));
        }
        if ctx.verify {
            let rc = SSL_get_verify_result(ssl.connection);
            if rc != 0 {
                return Err(Outcome::failed_with(
                    Failure::TlsVerify,
                    None,
                    u32::try_from(rc).unwrap_or(u32::MAX),
                ));
            }
            let mut name = ctx.name;
            if ngx_ssl_check_host(c, &mut name) != NGX_OK as isize {
                return Err(Outcome::failed_with(
                    Failure::TlsVerify,
                    None,
                    X509_V_ERR_HOSTNAME_MISMATCH,
                ));
            }
        }
    }
    Ok(())
}

/// What one `SSL_read` on a probe connection gave.
pub enum Received {
    Data(usize),
    /// Nothing until the socket is readable (`WantWrite`: writable) again.
    WantRead,
    WantWrite,
    /// The peer closed the connection (with or without close_notify).
    Eof,
    /// A TLS error or a reset.
    Failed,
}

/// One `SSL_read` into `buf`, classified as nginx's `ngx_ssl_recv` classifies it, but without
/// its loop: nginx reads until the socket is empty, a probe reads until its response is whole
/// and stops there, which saves an `SSL_read` and a `read(2)` per probe.
///
/// # Safety
/// `c` must be a live probe connection whose handshake is done.
pub unsafe fn read(c: *mut ngx_connection_t, buf: &mut [u8]) -> Received {
    // SAFETY: per the contract, c->ssl->connection is the connection's SSL object.
    unsafe {
        let ssl = (*(*c).ssl).connection;
        ERR_clear_error();
        let len = c_int::try_from(buf.len()).unwrap_or(c_int::MAX);
        let n = SSL_read(ssl, buf.as_mut_ptr() as *mut c_void, len);
        if n > 0 {
            return Received::Data(n as usize);
        }
        let err = SSL_get_error(ssl, n) as u32;
        match err {
            SSL_ERROR_WANT_READ => Received::WantRead,
            SSL_ERROR_WANT_WRITE => Received::WantWrite,
            _ => {
                // Nothing more is sent on it: no close_notify after an error (as nginx does).
                (*(*c).ssl).set_no_send_shutdown(1);
                let clean = err == SSL_ERROR_ZERO_RETURN
                    || (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0);
                ERR_clear_error();
                if clean {
                    Received::Eof
                } else {
                    Received::Failed
                }
            }
        }
    }
}

/// True when the TLS layer of `c` holds no decrypted bytes yet to be read.
///
/// # Safety
/// `c` must be a live probe connection with TLS attached.
pub unsafe fn drained(c: *mut ngx_connection_t) -> bool {
    // SAFETY: per the contract.
    unsafe { SSL_pending((*(*c).ssl).connection) == 0 }
}

/// Ends the TLS side of a connection before it is closed: sends close_notify without waiting
/// for the peer's (quietly when that would block), frees the `SSL` and the pool. Nothing to do
/// for a connection without TLS.
///
/// # Safety
/// `c` must be a live probe connection, about to be closed.
pub unsafe fn shutdown(c: *mut ngx_connection_t) {
    // SAFETY: per the contract.
    unsafe {
        let c = &mut *c;
        if !c.ssl.is_null() {
            (*c.ssl).set_no_wait_shutdown(1);
            if ngx_ssl_shutdown(c) == NGX_AGAIN as isize {
                // The socket cannot take the close_notify now: give up on it quietly, as
                // nginx does for a connection in error.
                c.set_error(1);
                ngx_ssl_shutdown(c);
            }
        }
        if !c.pool.is_null() {
            ngx_destroy_pool(c.pool);
            c.pool = ptr::null_mut();
        }
    }
}
