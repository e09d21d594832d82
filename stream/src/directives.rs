//! The directive table and its handlers: nginx arguments in, typed configuration out.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::NGX_CONF_OK;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_str_t, ngx_uint_t, NGX_CONF_ANY, NGX_CONF_TAKE1,
    NGX_CONF_TAKE12, NGX_STREAM_UPS_CONF,
};
use ngx::ngx_string;
use upstream_healthcheck_core::parse::ParseError;
use upstream_healthcheck_core::stream::{parse_expect, parse_send, parse_stream_healthcheck};

use upstream_healthcheck_glue::conf::{args, conf_error, ConfPos};

use crate::conf::SrvConf;

type SetFn = unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

/// `NGX_STREAM_SRV_CONF_OFFSET`: the offset of `srv_conf` in `ngx_stream_conf_ctx_t`.
const SRV_CONF: usize = core::mem::offset_of!(ngx::ffi::ngx_stream_conf_ctx_t, srv_conf);

const fn command(name: ngx_str_t, type_: u32, set: SetFn) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: SRV_CONF as ngx_uint_t,
        offset: 0,
        post: ptr::null_mut(),
    }
}

pub static mut COMMANDS: [ngx_command_t; 4] = [
    command(
        ngx_string!("upstream_healthcheck"),
        NGX_STREAM_UPS_CONF | NGX_CONF_ANY,
        set_check,
    ),
    command(
        ngx_string!("upstream_healthcheck_send"),
        NGX_STREAM_UPS_CONF | NGX_CONF_TAKE1,
        set_send,
    ),
    command(
        ngx_string!("upstream_healthcheck_expect"),
        NGX_STREAM_UPS_CONF | NGX_CONF_TAKE12,
        set_expect,
    ),
    ngx_command_t::empty(),
];

/// Parses a directive that may appear once into this upstream's conf: `is duplicate` the
/// second time, the parser's message when the arguments are bad.
fn set_once<T>(
    cf: *mut ngx_conf_t,
    conf: *mut c_void,
    slot: impl FnOnce(&mut SrvConf) -> &mut Option<(T, ConfPos)>,
    parse: impl FnOnce(&[&[u8]]) -> Result<T, ParseError>,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf (NGX_STREAM_SRV_CONF_OFFSET).
    let slot = slot(unsafe { &mut *conf.cast::<SrvConf>() });
    // SAFETY: called by nginx while parsing this directive.
    let (name, args) = unsafe { args(cf) };
    if slot.is_some() {
        return conf_error(
            cf,
            format!(
                "\"{}\" directive is duplicate",
                String::from_utf8_lossy(name)
            ),
        );
    }
    match parse(&args) {
        // SAFETY: cf is valid during parsing.
        Ok(v) => *slot = Some((v, ConfPos::here(unsafe { &*cf }))),
        Err(e) => return conf_error(cf, e),
    }
    NGX_CONF_OK
}

extern "C" fn set_check(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    set_once(cf, conf, |c| &mut c.check, parse_stream_healthcheck)
}

extern "C" fn set_send(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    set_once(
        cf,
        conf,
        |c| &mut c.send,
        |a| parse_send(a.first().copied().unwrap_or_default()),
    )
}

extern "C" fn set_expect(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    set_once(cf, conf, |c| &mut c.expect, parse_expect)
}
