//! Active health checks for nginx `stream` upstreams: the module's statics, loaded into nginx
//! after `ngx_stream_module` (static in the vendored nginx, `ngx_stream_module.so` on Debian).
//! The pure core (`upstream-healthcheck-core`) holds the policy; this crate is the glue, left
//! out of unit tests (it would not link without nginx): the core's tests and t/stream.rs cover it.
#![cfg(not(test))]

use ngx::ffi::{ngx_module_t, ngx_stream_module_t, NGX_STREAM_MODULE};

mod conf;
mod directives;
mod keepalive;
mod peers;
mod probe;
mod worker;
mod zone;

static CTX: ngx_stream_module_t = ngx_stream_module_t {
    preconfiguration: None,
    postconfiguration: Some(conf::postconfiguration),
    create_main_conf: Some(conf::create_main_conf),
    init_main_conf: None,
    create_srv_conf: Some(conf::create_srv_conf),
    merge_srv_conf: None,
};

ngx::ngx_modules!(ngx_stream_upstream_healthcheck_module);

#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_stream_upstream_healthcheck_module: ngx_module_t = ngx_module_t {
    ctx: &raw const CTX as _,
    // SAFETY: taking the address of the command table; nginx only reads it.
    commands: unsafe { &raw mut directives::COMMANDS[0] },
    type_: NGX_STREAM_MODULE as _,
    init_module: Some(zone::commit_supersede),
    init_process: Some(worker::init_process),
    exit_process: Some(worker::exit_process),
    ..ngx_module_t::default()
};

/// The module static, for its indexes and as the zone's tag.
pub fn module() -> &'static ngx_module_t {
    // SAFETY: the module static lives for the life of the process; nginx writes its indexes
    // before any configuration callback runs.
    unsafe { &*core::ptr::addr_of!(ngx_stream_upstream_healthcheck_module) }
}
