//! Active health checks for nginx `stream` upstreams: the module's statics, loaded into nginx
//! after `ngx_stream_module` (static in the vendored nginx, `ngx_stream_module.so` on Debian).

use ngx::ffi::{ngx_command_t, ngx_module_t, ngx_stream_module_t, NGX_STREAM_MODULE};

static CTX: ngx_stream_module_t = ngx_stream_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
};

static mut COMMANDS: [ngx_command_t; 1] = [ngx_command_t::empty()];

ngx::ngx_modules!(ngx_stream_upstream_healthcheck_module);

#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_stream_upstream_healthcheck_module: ngx_module_t = ngx_module_t {
    ctx: &raw const CTX as _,
    // SAFETY: taking the address of the command table; nginx only reads it.
    commands: unsafe { &raw mut COMMANDS[0] },
    type_: NGX_STREAM_MODULE as _,
    ..ngx_module_t::default()
};
