//! The stream module in tests: its path, the `load_module` lines that load it (after nginx's own
//! stream module where that is dynamic, as on Debian) and a `stream {}` block to pass as the
//! main-context extra of `Nginx::start_with` / `nginx_test_conf`.

use std::path::PathBuf;

/// The stream module `.so` under test: `NGX_HC_STREAM_MODULE`, else the file beside
/// `NGX_HC_MODULE` (scripts/build.sh hands both out in one directory).
pub fn stream_module_path() -> PathBuf {
    match std::env::var_os("NGX_HC_STREAM_MODULE") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => super::module_path().with_file_name("ngx_stream_upstream_healthcheck_module.so"),
    }
}

/// nginx's own stream module when it is a dynamic module: `NGX_HC_STREAM_BASE` when set (empty:
/// built in), else Debian's `ngx_stream_module.so` for the debian target.
pub fn stream_base_module() -> Option<PathBuf> {
    match std::env::var("NGX_HC_STREAM_BASE") {
        Ok(v) if v.is_empty() => None,
        Ok(v) => Some(PathBuf::from(v)),
        Err(_) => (super::target_name() == "debian")
            .then(|| PathBuf::from("/usr/lib/nginx/modules/ngx_stream_module.so")),
    }
}

/// `load_module` lines for nginx's stream module (when dynamic) and then the stream module.
pub fn stream_load_lines() -> String {
    let base = stream_base_module()
        .map(|p| format!("load_module {};\n", p.display()))
        .unwrap_or_default();
    format!("{base}load_module {};\n", stream_module_path().display())
}

/// Main-context text for `Nginx::start_with`: the stream module's `load_module` lines and
/// `stream { <body> }`.
pub fn stream_main(body: &str) -> String {
    format!("{}stream {{\n{body}\n}}\n", stream_load_lines())
}
