//! The directive table and its handlers: nginx arguments in, typed configuration out.

use core::ffi::{c_char, c_void};
use core::ptr;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_full_name, ngx_conf_parse, ngx_conf_t, ngx_int_t, ngx_str_t,
    ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_ANY, NGX_CONF_BLOCK, NGX_CONF_NOARGS, NGX_CONF_TAKE1,
    NGX_CONF_TAKE12, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF,
    NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF_OFFSET, NGX_HTTP_UPS_CONF, NGX_OK,
};
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule,
    NgxHttpUpstreamModule,
};
use ngx::ngx_string;

use crate::config::CheckType;
use crate::matcher::{MatchBuilder, BLOCK};
use crate::module::control_handler::admin_handler;
use crate::module::module_conf::{conf_error, conf_error_at, ConfPos, LocConf, MainConf, SrvConf};
use crate::module::status_handler::status_handler;
use crate::module::Module;
use crate::parse::{self, escape, ParseError};
use upstream_healthcheck_glue::conf::args;

type SetFn = unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

const fn command(name: ngx_str_t, type_: u32, set: SetFn, conf: usize) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf: conf as ngx_uint_t,
        offset: 0,
        post: ptr::null_mut(),
    }
}

const UPS: u32 = NGX_HTTP_UPS_CONF;

pub static mut COMMANDS: [ngx_command_t; 22] = [
    command(
        ngx_string!("upstream_healthcheck"),
        UPS | NGX_CONF_ANY,
        set_check,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_request"),
        UPS | NGX_CONF_TAKE1,
        set_request,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_valid_statuses"),
        UPS | NGX_CONF_1MORE,
        set_valid,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_zone"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_status"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
        set_status,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ha_address"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12,
        set_ha_address,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_etcd"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
        set_etcd,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_admin"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
        set_admin,
        NGX_HTTP_LOC_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ssl_verify"),
        UPS | NGX_CONF_TAKE1,
        set_ssl,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ssl_trusted_certificate"),
        UPS | NGX_CONF_TAKE1,
        set_ssl,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ssl_name"),
        UPS | NGX_CONF_TAKE1,
        set_ssl,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ssl_server_name"),
        UPS | NGX_CONF_TAKE1,
        set_ssl,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ssl_certificate"),
        UPS | NGX_CONF_TAKE1,
        set_ssl,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ssl_certificate_key"),
        UPS | NGX_CONF_TAKE1,
        set_ssl,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_ssl_protocols"),
        UPS | NGX_CONF_1MORE,
        set_ssl,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    // One name, two levels: nginx picks the entry whose context matches.
    command(
        ngx_string!("upstream_healthcheck_traffic"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_main_traffic,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_traffic"),
        UPS | NGX_CONF_TAKE1,
        set_upstream_traffic,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_passive"),
        UPS | NGX_CONF_1MORE,
        set_passive,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_dynamic"),
        UPS | NGX_CONF_1MORE,
        set_dynamic,
        NGX_HTTP_SRV_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_match"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_BLOCK | NGX_CONF_TAKE1,
        set_match,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    command(
        ngx_string!("upstream_healthcheck_state_file"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        set_state_file,
        NGX_HTTP_MAIN_CONF_OFFSET,
    ),
    ngx_command_t::empty(),
];

/// Parses a directive that may appear once and stores its value: `is duplicate` the second
/// time, the parser's message when the arguments are bad.
fn set_once<T>(
    cf: *mut ngx_conf_t,
    slot: &mut Option<T>,
    parse: impl FnOnce(&[&[u8]], ConfPos) -> Result<T, ParseError>,
) -> *mut c_char {
    // SAFETY: called by nginx while parsing this directive.
    let (name, args) = unsafe { args(cf) };
    if slot.is_some() {
        return conf_error(cf, duplicate(name));
    }
    // SAFETY: cf is valid during parsing.
    match parse(&args, ConfPos::here(unsafe { &*cf })) {
        Ok(v) => *slot = Some(v),
        Err(e) => return conf_error(cf, e),
    }
    NGX_CONF_OK
}

fn duplicate(name: &[u8]) -> String {
    format!(
        "\"{}\" directive is duplicate",
        String::from_utf8_lossy(name)
    )
}

/// The status page and the control endpoint both are a location's content: one location
/// cannot serve both.
fn one_handler(name: &str, other: &str) -> String {
    format!("\"{name}\" directive is not allowed in a location with \"{other}\"")
}

fn http_only(name: &str) -> String {
    format!("\"{name}\" directive applies to type=http and type=https only, but \"upstream_healthcheck\" sets type=tcp")
}

extern "C" fn set_check(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf for NGX_HTTP_SRV_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<SrvConf>() };
    // SAFETY: called by nginx while parsing this directive.
    let (name, args) = unsafe { args(cf) };
    if conf.check.is_some() {
        return conf_error(cf, duplicate(name));
    }
    let params = match parse::parse_healthcheck(&args) {
        Ok(p) => p,
        Err(e) => return conf_error(cf, e),
    };
    if let Some(p) = &params {
        if p.check_type == CheckType::Tcp {
            if conf.request.is_some() {
                return conf_error(cf, http_only("upstream_healthcheck_request"));
            }
            if conf.valid.is_some() {
                return conf_error(cf, http_only("upstream_healthcheck_valid_statuses"));
            }
        }
    }
    // SAFETY: cf is valid during parsing.
    conf.check = Some((params, ConfPos::here(unsafe { &*cf })));
    NGX_CONF_OK
}

fn is_tcp(conf: &SrvConf) -> bool {
    matches!(&conf.check, Some((Some(p), _)) if p.check_type == CheckType::Tcp)
}

extern "C" fn set_request(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf for NGX_HTTP_SRV_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<SrvConf>() };
    if is_tcp(conf) {
        return conf_error(cf, http_only("upstream_healthcheck_request"));
    }
    set_once(cf, &mut conf.request, |args, pos| {
        Ok((
            parse::parse_request(args.first().copied().unwrap_or_default())?,
            pos,
        ))
    })
}

extern "C" fn set_valid(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf for NGX_HTTP_SRV_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<SrvConf>() };
    if is_tcp(conf) {
        return conf_error(cf, http_only("upstream_healthcheck_valid_statuses"));
    }
    set_once(cf, &mut conf.valid, |args, pos| {
        Ok((parse::parse_valid_statuses(args)?, pos))
    })
}

fn first<'a>(args: &[&'a [u8]]) -> &'a [u8] {
    args.first().copied().unwrap_or_default()
}

/// Every `upstream_healthcheck_ssl_*` directive: the name says which. Whether the check is
/// `type=https` is known only once the block is read (see `build_upstreams`).
extern "C" fn set_ssl(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf for NGX_HTTP_SRV_CONF_OFFSET.
    let ssl = unsafe { &mut (*conf.cast::<SrvConf>()).ssl };
    // SAFETY: called by nginx while parsing this directive.
    let (name, _) = unsafe { args(cf) };
    let directive = String::from_utf8_lossy(name).into_owned();
    let d = directive.as_str();
    match d {
        "upstream_healthcheck_ssl_verify" => set_once(cf, &mut ssl.verify, |a, pos| {
            Ok((parse::parse_on_off(d, first(a))?, pos))
        }),
        "upstream_healthcheck_ssl_server_name" => set_once(cf, &mut ssl.server_name, |a, pos| {
            Ok((parse::parse_on_off(d, first(a))?, pos))
        }),
        "upstream_healthcheck_ssl_trusted_certificate" => {
            set_once(cf, &mut ssl.trusted, |a, pos| {
                Ok((parse::parse_file_name(d, first(a))?, pos))
            })
        }
        "upstream_healthcheck_ssl_certificate" => set_once(cf, &mut ssl.certificate, |a, pos| {
            Ok((parse::parse_file_name(d, first(a))?, pos))
        }),
        "upstream_healthcheck_ssl_certificate_key" => {
            set_once(cf, &mut ssl.certificate_key, |a, pos| {
                Ok((parse::parse_file_name(d, first(a))?, pos))
            })
        }
        "upstream_healthcheck_ssl_name" => set_once(cf, &mut ssl.name, |a, pos| {
            Ok((parse::parse_ssl_name(d, first(a))?, pos))
        }),
        _ => set_once(cf, &mut ssl.protocols, |a, pos| {
            Ok((parse::parse_tls_protocols(d, a)?, pos))
        }),
    }
}

/// `upstream_healthcheck_passive`.
extern "C" fn set_passive(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf for NGX_HTTP_SRV_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<SrvConf>() };
    set_once(cf, &mut conf.passive, |args, pos| {
        Ok((parse::parse_passive(args)?, pos))
    })
}

/// `upstream_healthcheck_dynamic max_peers=N`: reserves N peers in the upstream, placeholders
/// that nginx's own round robin (and the `zone`, which the block must have) lays out with the
/// static servers; etcd's keys fill them at run time (see `membership`).
extern "C" fn set_dynamic(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf for NGX_HTTP_SRV_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<SrvConf>() };
    // SAFETY: cf is valid during parsing; inside upstream {} the upstream module's server
    // conf is the block's ngx_http_upstream_srv_conf_t.
    let Some(uscf) = NgxHttpUpstreamModule::server_conf_mut(unsafe { &*cf }) else {
        return conf_error(cf, "no upstream for \"upstream_healthcheck_dynamic\"");
    };
    set_once(cf, &mut conf.dynamic, |args, pos| {
        let max = parse::parse_dynamic(args)?;
        // SAFETY: cf is the context of this directive, inside uscf's block.
        let at =
            unsafe { crate::module::dynamic::reserve(cf, uscf, max) }.map_err(ParseError::new)?;
        Ok((max, at, pos))
    })
}

/// `upstream_healthcheck_traffic` at the http level.
extern "C" fn set_main_traffic(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main conf for NGX_HTTP_MAIN_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<MainConf>() };
    set_once(cf, &mut conf.traffic, |args, pos| {
        Ok((
            parse::parse_on_off("upstream_healthcheck_traffic", first(args))?,
            pos,
        ))
    })
}

/// `upstream_healthcheck_traffic` in an upstream block.
extern "C" fn set_upstream_traffic(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's upstream-level conf for NGX_HTTP_SRV_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<SrvConf>() };
    set_once(cf, &mut conf.traffic, |args, pos| {
        Ok((
            parse::parse_on_off("upstream_healthcheck_traffic", first(args))?,
            pos,
        ))
    })
}

extern "C" fn set_zone(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main conf for NGX_HTTP_MAIN_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<MainConf>() };
    set_once(cf, &mut conf.zone_size, |args, pos| {
        Ok((
            parse::parse_zone_size(args.first().copied().unwrap_or_default())?,
            pos,
        ))
    })
}

/// `upstream_healthcheck_state_file off | PATH`: a relative path is taken from the prefix, as
/// nginx takes `pid` and `error_log`.
extern "C" fn set_state_file(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main conf for NGX_HTTP_MAIN_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<MainConf>() };
    set_once(cf, &mut conf.state_file, |args, pos| {
        let arg = first(args);
        if arg == b"off" {
            return Ok((None, pos));
        }
        parse::parse_file_name("upstream_healthcheck_state_file", arg)?;
        // SAFETY: cf is valid during parsing; full_name allocates from the cycle's pool.
        let full = unsafe { full_name(cf, arg) }.ok_or_else(|| {
            ParseError::new(
                "cannot make the full name of \"upstream_healthcheck_state_file\"".into(),
            )
        })?;
        Ok((Some(full), pos))
    })
}

/// `name` made absolute against the prefix (`ngx_conf_full_name`).
///
/// # Safety
/// `cf` must be the context of the directive being parsed.
unsafe fn full_name(cf: *mut ngx_conf_t, name: &[u8]) -> Option<PathBuf> {
    let mut s = ngx_str_t {
        len: name.len(),
        data: name.as_ptr().cast_mut(),
    };
    // SAFETY: cf->cycle is the cycle being configured; ngx_conf_full_name only reads `s` and,
    // for a relative name, points it at a copy allocated from the cycle's pool.
    if unsafe { ngx_conf_full_name((*cf).cycle, &mut s, 0) } != NGX_OK as ngx_int_t {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(s.as_bytes())))
}

extern "C" fn set_status(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    // SAFETY: called by nginx while parsing this directive.
    let (name, args) = unsafe { args(cf) };
    if conf.status.is_some() {
        return conf_error(cf, duplicate(name));
    }
    if conf.admin {
        return conf_error(
            cf,
            one_handler("upstream_healthcheck_status", "upstream_healthcheck_admin"),
        );
    }
    let format = match parse::parse_status_format(args.first().copied()) {
        Ok(f) => f,
        Err(e) => return conf_error(cf, e),
    };
    // SAFETY: cf is valid during parsing; the core module's location conf always exists.
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) else {
        return conf_error(
            cf,
            "no location configuration for \"upstream_healthcheck_status\"",
        );
    };
    clcf.handler = Some(status_handler);
    conf.status = Some(format);
    NGX_CONF_OK
}

extern "C" fn set_ha_address(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main conf for NGX_HTTP_MAIN_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<MainConf>() };
    set_once(cf, &mut conf.ha, |args, _| parse::parse_ha_address(args))
}

extern "C" fn set_etcd(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main conf for NGX_HTTP_MAIN_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<MainConf>() };
    set_once(cf, &mut conf.etcd, |args, pos| {
        crate::etcd::conf::parse_etcd(args)
            .map(|c| (c, pos))
            .map_err(crate::parse::ParseError::new)
    })
}

extern "C" fn set_admin(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location conf for NGX_HTTP_LOC_CONF_OFFSET.
    let conf = unsafe { &mut *conf.cast::<LocConf>() };
    // SAFETY: called by nginx while parsing this directive.
    let (name, _) = unsafe { args(cf) };
    if conf.admin {
        return conf_error(cf, duplicate(name));
    }
    if conf.status.is_some() {
        return conf_error(
            cf,
            one_handler("upstream_healthcheck_admin", "upstream_healthcheck_status"),
        );
    }
    // SAFETY: cf is valid during parsing; both confs exist inside http {}.
    let (Some(clcf), Some(main)) = (
        NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }),
        Module::main_conf_mut(unsafe { &*cf }),
    ) else {
        return conf_error(cf, "no configuration for \"upstream_healthcheck_admin\"");
    };
    clcf.handler = Some(admin_handler);
    conf.admin = true;
    main.admin = true;
    NGX_CONF_OK
}

/// `upstream_healthcheck_match NAME { ... }`: reads the block's lines with `match_line`, the
/// way nginx's own `types { ... }` reads its lines, then keeps the block by name in the main
/// conf; `match=` finds it after the whole http block is read.
extern "C" fn set_match(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main conf for NGX_HTTP_MAIN_CONF_OFFSET.
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    // SAFETY: called by nginx while parsing this directive.
    let (_, args) = unsafe { args(cf) };
    let raw = args.first().copied().unwrap_or_default();
    let name = match parse::parse_match_name(raw) {
        Ok(name) => name,
        Err(reason) => {
            return conf_error(
                cf,
                format!(
                    "invalid parameter \"{}\" in \"{BLOCK}\" directive, {reason}",
                    escape(raw)
                ),
            )
        }
    };
    if main.matches.iter().any(|(n, _)| *n == name) {
        return conf_error(cf, format!("duplicate match \"{name}\""));
    }
    // SAFETY: cf is valid during parsing.
    let pos = ConfPos::here(unsafe { &*cf });
    let mut builder = MatchBuilder::default();
    // SAFETY: cf is valid during parsing. As nginx's own block handlers do, the context is
    // saved, given a line handler whose conf is `builder` (alive until ngx_conf_parse
    // returns), parsed up to the block's "}", then restored whatever the outcome.
    let rv = unsafe {
        let save = *cf;
        (*cf).handler = Some(match_line);
        (*cf).handler_conf = (&mut builder as *mut MatchBuilder).cast();
        let rv = ngx_conf_parse(cf, ptr::null_mut());
        *cf = save;
        rv
    };
    if rv != NGX_CONF_OK {
        return rv;
    }
    match builder.finish(raw) {
        Ok(m) => main.matches.push((name, Arc::new(m))),
        Err(e) => {
            // At the block's first line, as nginx reports an upstream without servers.
            conf_error_at(cf, &pos, e);
            return NGX_CONF_ERROR;
        }
    }
    NGX_CONF_OK
}

/// One line of an `upstream_healthcheck_match` block.
extern "C" fn match_line(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: conf is the handler_conf set_match gave, its builder, alive during the parse.
    let builder = unsafe { &mut *conf.cast::<MatchBuilder>() };
    // SAFETY: nginx fills cf->args with the line's words before calling the handler.
    let (keyword, rest) = unsafe { args(cf) };
    let mut line = Vec::with_capacity(rest.len() + 1);
    line.push(keyword);
    line.extend(rest);
    match builder.add(&line) {
        Ok(()) => NGX_CONF_OK,
        Err(e) => conf_error(cf, e),
    }
}
