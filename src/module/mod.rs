//! The nginx module: its statics, configuration hooks and process hooks.

use core::ffi::c_void;
use std::collections::HashMap;
use std::sync::Arc;

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_module_t, ngx_http_upstream_rr_peers_t, ngx_http_upstream_server_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_module_t, ngx_pnalloc, ngx_pool_cleanup_add,
    ngx_pool_t, ngx_shared_memory_add, ngx_str_t, ngx_uint_t, AF_UNIX, NGX_HTTP_MODULE,
    NGX_HTTP_UPSTREAM_BACKUP,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf,
    NgxHttpUpstreamModule,
};

use crate::config::default_request;
use crate::key::peer_key;
use crate::module::module_conf::{
    conf_error_at, conf_warn_at, Check, ConfPos, Dynamic, LocConf, MainConf, PeerConf, SlowStart,
    SrvConf, UpstreamConf,
};
use crate::panic::{self, PanicRule};
use crate::parse::{self, show_ms};
use crate::slow_start::weight_scale;

mod attempts;
mod clock;
mod control_handler;
mod directives;
mod dynamic;
mod etcd;
mod etcd_call;
mod etcd_zone;
mod failure_detail;
mod fleet;
mod fleet_control;
mod ha;
mod housekeeping;
mod keepalive;
mod log;
mod membership;
mod module_conf;
mod peers;
mod probe;
mod process;
mod ramp;
mod response_writer;
mod state_store;
mod status_handler;
mod stream_control;
mod stream_status;
mod tick;
mod tls;
mod zone;

pub struct Module;

static CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: None,
    create_srv_conf: Some(Module::create_srv_conf),
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: None,
};

ngx::ngx_modules!(ngx_http_upstream_healthcheck_module);

#[used]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static mut ngx_http_upstream_healthcheck_module: ngx_module_t = ngx_module_t {
    ctx: &raw const CTX as _,
    // SAFETY: taking the address of the command table; nginx only reads it.
    commands: unsafe { &raw mut directives::COMMANDS[0] },
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(zone::commit_supersede),
    init_process: Some(process::init_process),
    exit_process: Some(process::exit_process),
    exit_master: Some(state_store::exit_master),
    ..ngx_module_t::default()
};

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static lives for the life of the process; nginx writes its
        // indexes before any configuration callback runs.
        unsafe { &*core::ptr::addr_of!(ngx_http_upstream_healthcheck_module) }
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: nginx calls postconfiguration with the http block's configuration context.
        match unsafe { build_upstreams(cf) } {
            Ok(()) => Status::NGX_OK.into(),
            Err(()) => Status::NGX_ERROR.into(),
        }
    }
}

// SAFETY: the types match what create_*_conf allocate for this module.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}
// SAFETY: the server conf type matches what create_srv_conf allocates for this module.
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = SrvConf;
}
// SAFETY: the location conf type matches what create_loc_conf allocates for this module.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

fn text(s: &ngx_str_t) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// One peer as nginx's round robin built it.
struct ConfigPeer {
    name: &'static str,
    /// Marked `down` in nginx.conf.
    down: bool,
    /// A `unix:` socket, which has no port.
    unix: bool,
    /// `weight=` as configured.
    weight: i64,
    /// In the upstream's backup list.
    backup: bool,
}

/// The peers of an upstream as nginx's round robin built them, primary then backup.
///
/// # Safety
/// `uscf` must be an initialized upstream whose peer.data is round-robin peers (or null).
unsafe fn config_peers(
    pool: *mut ngx_pool_t,
    uscf: &ngx_http_upstream_srv_conf_t,
) -> Result<Vec<ConfigPeer>, ()> {
    let primary = uscf.peer.data as *mut ngx_http_upstream_rr_peers_t;
    // SAFETY: per the contract.
    unsafe { peers::live_peers(primary) }
        .into_iter()
        // SAFETY: live_peers returns valid peers; a peer's sockaddr is null or its address.
        .map(|(list, rr)| unsafe {
            Ok(ConfigPeer {
                backup: list != primary,
                name: cycle_str(pool, &(*rr).name).ok_or(())?,
                down: (*rr).down != 0,
                unix: (*rr)
                    .sockaddr
                    .as_ref()
                    .is_some_and(|sa| u32::from(sa.sa_family) == AF_UNIX),
                weight: (*rr).weight as i64,
            })
        })
        .collect()
}

/// `s` as text that lives as long as this configuration, without a copy: nginx built `s` in
/// the configuration's pool, which is destroyed only after the module's configuration (kept in
/// the same pool) is dropped. A name that is not UTF-8 is copied lossily into that pool.
/// None when the pool is out of memory.
///
/// # Safety
/// `s` must point into memory of the configuration `pool` belongs to (or static memory), and
/// `pool` must be that configuration's pool.
unsafe fn cycle_str(pool: *mut ngx_pool_t, s: &ngx_str_t) -> Option<&'static str> {
    // SAFETY: per the contract, the bytes outlive every user of this configuration.
    let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(s.data, s.len) };
    if s.len == 0 {
        return Some("");
    }
    if let Ok(name) = core::str::from_utf8(bytes) {
        return Some(name);
    }
    let lossy = String::from_utf8_lossy(bytes);
    // SAFETY: pool is the configuration's pool; the copy lives as long as it.
    let copy = unsafe { ngx_pnalloc(pool, lossy.len()) } as *mut u8;
    if copy.is_null() {
        return None;
    }
    // SAFETY: copy has room for lossy.len() bytes, which are UTF-8.
    unsafe {
        core::ptr::copy_nonoverlapping(lossy.as_ptr(), copy, lossy.len());
        Some(core::str::from_utf8_unchecked(core::slice::from_raw_parts(
            copy,
            lossy.len(),
        )))
    }
}

/// True when some `server` of the upstream gets its peers at run time (`resolve`, nginx 1.27+):
/// its address count is then missing from the peers built at configuration time.
///
/// # Safety
/// `uscf` must be an initialized upstream whose peer.data is round-robin peers (or null).
unsafe fn has_runtime_peers(uscf: &ngx_http_upstream_srv_conf_t) -> bool {
    // SAFETY: servers is null or an array of ngx_http_upstream_server_t.
    let servers: &[ngx_http_upstream_server_t] = match unsafe { uscf.servers.as_ref() } {
        // SAFETY: a non-empty array of nelts servers.
        Some(a) if !a.elts.is_null() => unsafe {
            core::slice::from_raw_parts(a.elts as *const ngx_http_upstream_server_t, a.nelts)
        },
        _ => &[],
    };
    let configured: usize = servers.iter().map(|s| s.naddrs).sum();
    // SAFETY: per the contract.
    let built = unsafe { peers::live_peers(uscf.peer.data as *mut ngx_http_upstream_rr_peers_t) };
    configured > built.len()
}

/// Where an `upstream {}` block is written.
fn upstream_pos(us: &ngx_http_upstream_srv_conf_t) -> ConfPos {
    if us.file_name.is_null() {
        return ConfPos::default();
    }
    // SAFETY: a non-null file_name is the NUL-terminated name of the file the block is in.
    let file = unsafe { core::ffi::CStr::from_ptr(us.file_name as *const _) };
    ConfPos {
        file: file.to_string_lossy().into_owned(),
        line: us.line,
    }
}

/// The two directives that shape an http probe, and where each was written.
fn http_directives(sc: &SrvConf) -> [(&'static str, Option<&ConfPos>); 2] {
    [
        (
            "upstream_healthcheck_request",
            sc.request.as_ref().map(|r| &r.1),
        ),
        (
            "upstream_healthcheck_valid_statuses",
            sc.valid.as_ref().map(|v| &v.1),
        ),
    ]
}

/// The slow start of an upstream whose balancer uses the round-robin weights (round robin,
/// `least_conn`: the ones that keep `server ... backup`); for `hash`, `ip_hash` and `random`,
/// which pick by their own rule, `nginx -t` warns that `slow_start` is ignored.
fn slow_start_of(
    cf: *mut ngx_conf_t,
    us: &ngx_http_upstream_srv_conf_t,
    name: &str,
    check: &Option<Check>,
    listed: &[ConfigPeer],
) -> Option<SlowStart> {
    let check = check.as_ref()?;
    let duration_ms = check.params.slow_start_ms;
    if duration_ms == 0 {
        return None;
    }
    if us.flags & NGX_HTTP_UPSTREAM_BACKUP as ngx_uint_t == 0 {
        if let Some((_, pos)) = Module::server_conf(us).and_then(|sc| sc.check.as_ref()) {
            conf_warn_at(
                cf,
                pos,
                format!(
                    "parameter \"slow_start={}\" in \"upstream_healthcheck\" directive is \
                     ignored, the balancer of upstream \"{name}\" (hash, ip_hash or random) \
                     does not use it",
                    show_ms(duration_ms)
                ),
            );
        }
        return None;
    }
    let weights: Vec<i64> = listed.iter().map(|p| p.weight).collect();
    Some(SlowStart {
        duration_ms,
        scale: weight_scale(weights.iter().copied()),
        weights,
    })
}

/// The peers `upstream_healthcheck_dynamic` reserved in the upstream, after checking that its
/// balancer and the rest of the block allow them.
///
/// # Safety
/// `us` must be a parsed upstream whose round-robin peers nginx built.
unsafe fn dynamic_of(
    cf: *mut ngx_conf_t,
    us: &ngx_http_upstream_srv_conf_t,
    name: &str,
    sc: &SrvConf,
    check: &Option<Check>,
    etcd: bool,
) -> Result<Option<Dynamic>, ()> {
    let Some((max, at, pos)) = &sc.dynamic else {
        return Ok(None);
    };
    const D: &str = "upstream_healthcheck_dynamic";
    let refuse = |why: String| {
        conf_error_at(cf, pos, why);
        Err(())
    };
    if !etcd {
        return refuse(format!(
            "\"{D}\" directive needs \"upstream_healthcheck_etcd\" in the http block"
        ));
    }
    if us.shm_zone.is_null() {
        return refuse(format!(
            "\"{D}\" directive needs \"zone\" in upstream \"{name}\""
        ));
    }
    if us.flags & NGX_HTTP_UPSTREAM_BACKUP as ngx_uint_t == 0 {
        return refuse(format!(
            "\"{D}\" directive is not allowed with hash, ip_hash or random in upstream \"{name}\""
        ));
    }
    // SAFETY: per the contract.
    if unsafe { has_runtime_peers(us) } {
        return refuse(format!(
            "\"{D}\" directive is not allowed with \"server ... resolve\" in upstream \"{name}\""
        ));
    }
    if check
        .as_ref()
        .is_some_and(|c| c.params.panic_threshold.is_some())
    {
        return refuse(format!(
            "\"{D}\" directive is not allowed with \"panic_threshold\" in upstream \"{name}\""
        ));
    }
    Ok(Some(Dynamic {
        // SAFETY: per the contract.
        first: unsafe { dynamic::first_reserved(us, *at) },
        max: *max,
    }))
}

/// Builds the module's view of every upstream block, then sizes and adds the shared zone.
///
/// # Safety
/// `cf` must be the http block's configuration context in postconfiguration.
unsafe fn build_upstreams(cf: *mut ngx_conf_t) -> Result<(), ()> {
    // SAFETY: cf is valid; both main confs exist inside http {}.
    let cfr = unsafe { &*cf };
    let main = Module::main_conf_mut(cfr).ok_or(())?;
    main.cycle = cfr.cycle;
    let umcf = NgxHttpUpstreamModule::main_conf(cfr).ok_or(())?;
    // SAFETY: the upstreams array holds upstream srv conf pointers.
    let all: &[*mut ngx_http_upstream_srv_conf_t] = unsafe { umcf.upstreams.as_slice() };

    let mut next_slot = 0;
    for &uscf in all {
        // SAFETY: every entry is a valid upstream configuration.
        let us = unsafe { &*uscf };
        if us.srv_conf.is_null() {
            continue; // an implicit upstream made by proxy_pass, not an upstream {} block
        }
        let name = text(&us.host);
        let sc = Module::server_conf(us).ok_or(())?;
        // SAFETY: upstream init_main_conf ran before postconfiguration and built the peers.
        let listed = unsafe { config_peers(cfr.pool, us) }?;
        let params = match &sc.check {
            Some((Some(p), pos)) => {
                if sc.request.is_some() {
                    if let Err(e) = parse::check_with_request(p) {
                        conf_error_at(cf, pos, e);
                        return Err(());
                    }
                }
                if let Some(port) = p.port {
                    if !listed.is_empty() && listed.iter().all(|peer| peer.unix) {
                        conf_warn_at(
                            cf,
                            pos,
                            format!(
                                "parameter \"port={port}\" in \"upstream_healthcheck\" directive \
                                 is ignored, every peer of upstream \"{name}\" is a unix socket"
                            ),
                        );
                    }
                }
                if let Some(m) = &p.match_name {
                    if !main.matches.iter().any(|(name, _)| name == m) {
                        conf_error_at(
                            cf,
                            pos,
                            format!("unknown match \"{m}\" in \"upstream_healthcheck\" directive"),
                        );
                        return Err(());
                    }
                    if let Some((_, valid_pos)) = &sc.valid {
                        conf_error_at(
                            cf,
                            valid_pos,
                            format!(
                                "\"upstream_healthcheck_valid_statuses\" directive is not allowed \
                                 with \"match={m}\" in \"upstream_healthcheck\" directive, use a \
                                 \"status\" condition in the match"
                            ),
                        );
                        return Err(());
                    }
                }
                Some(p.clone())
            }
            Some((None, _)) | None => {
                if let Some((directive, Some(pos))) = http_directives(sc)
                    .into_iter()
                    .find(|(_, pos)| pos.is_some())
                {
                    let off = if sc.check.is_some() {
                        ", but it is off"
                    } else {
                        ""
                    };
                    conf_error_at(
                        cf,
                        pos,
                        format!(
                            "\"{directive}\" directive needs \"upstream_healthcheck\" in upstream \
                             \"{name}\"{off}"
                        ),
                    );
                    return Err(());
                }
                None
            }
        };

        // SAFETY: upstream init_main_conf ran before postconfiguration and built the peers.
        if params.is_some() && unsafe { has_runtime_peers(us) } {
            conf_error_at(
                cf,
                &upstream_pos(us),
                format!("\"upstream_healthcheck\" cannot check the peers of \"server ... resolve\" in upstream \"{name}\""),
            );
            return Err(());
        }
        // The ssl directives need a type=https check; its TLS context is built here, so that
        // `nginx -t` reports files it cannot load.
        let tls = match (&params, &sc.check) {
            (Some(p), Some((_, pos))) if p.check_type.is_tls() => {
                let host = p.host.as_deref().unwrap_or(&name);
                // SAFETY: cf is the http block's context in postconfiguration.
                Some(unsafe { tls::create_context(cf, &name, host, &sc.ssl, pos) }?)
            }
            _ => {
                if let Some((directive, pos)) = sc.ssl.first_given() {
                    let why = match &params {
                        Some(p) => format!("sets type={}", p.check_type.as_str()),
                        None if sc.check.is_some() => "is off".to_string(),
                        None => "is not given".to_string(),
                    };
                    conf_error_at(
                        cf,
                        pos,
                        format!(
                            "\"{directive}\" directive applies to type=https only, but \
                             \"upstream_healthcheck\" in upstream \"{name}\" {why}"
                        ),
                    );
                    return Err(());
                }
                None
            }
        };
        let check = params.map(|params| {
            let host = params.host.clone().unwrap_or_else(|| name.clone());
            Check {
                tls,
                request: sc.request.as_ref().map_or_else(
                    || {
                        let uri = params.uri.as_deref().unwrap_or("/");
                        default_request(uri, &host, params.keepalive > 0)
                    },
                    |r| r.0.clone(),
                ),
                valid: sc.valid.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
                matcher: params.match_name.as_ref().and_then(|m| {
                    main.matches
                        .iter()
                        .find(|(name, _)| name == m)
                        .map(|(_, matcher)| Arc::clone(matcher))
                }),
                params,
            }
        });
        // SAFETY: uscf is a parsed upstream with the peers nginx built.
        let dynamic = unsafe { dynamic_of(cf, us, &name, sc, &check, main.etcd.is_some()) }?;
        // Every peer gets a slot, checked or not, so run-time state (a manual down) can
        // apply to any of them. A name listed twice gets keys 0, 1, ... of its own.
        let mut seen: HashMap<&str, u32> = HashMap::with_capacity(listed.len());
        let mut peers = Vec::with_capacity(listed.len());
        for (i, peer) in listed.iter().enumerate() {
            let reserved = dynamic.as_ref().is_some_and(|d| d.holds(i));
            let key = if reserved {
                peer_key(name.as_bytes(), b"", i as u32)
            } else {
                let n = seen.entry(peer.name).or_default();
                *n += 1;
                peer_key(name.as_bytes(), peer.name.as_bytes(), *n - 1)
            };
            let Ok(slot) = u32::try_from(next_slot) else {
                conf_error_at(cf, &upstream_pos(us), "too many peers");
                return Err(());
            };
            let mut conf = PeerConf::new(peer.name, peer.down && !reserved, key, slot);
            conf.reserved = reserved;
            peers.push(conf);
            next_slot += 1;
        }
        let traffic = sc
            .traffic
            .as_ref()
            .or(main.traffic.as_ref())
            .is_some_and(|(on, _)| *on);
        let slow_start = match slow_start_of(cf, us, &name, &check, &listed) {
            // Weights from etcd may be lighter than the static ones: scaled as for slow start,
            // so that a value's `slow_start` ramps even without the upstream's.
            None if dynamic.is_some() => {
                let weights: Vec<i64> = listed.iter().map(|p| p.weight).collect();
                Some(SlowStart {
                    duration_ms: 0,
                    scale: weight_scale(weights.iter().copied().chain([1])),
                    weights,
                })
            }
            Some(mut ss) if dynamic.is_some() => {
                ss.scale = weight_scale(ss.weights.iter().copied().chain([1]));
                Some(ss)
            }
            other => other,
        };
        let primaries = listed.iter().filter(|p| !p.backup).count();
        let panic = check
            .as_ref()
            .and_then(|c| c.params.panic_threshold)
            .map(|threshold| PanicRule {
                threshold,
                primaries: listed
                    .iter()
                    .filter(|p| panic::counts(p.backup, p.down))
                    .count() as u32,
            });
        main.upstreams.push(UpstreamConf {
            name,
            uscf,
            check,
            peers,
            traffic,
            passive: sc.passive.as_ref().map(|(p, _)| p.clone()),
            slow_start,
            primaries,
            panic,
            dynamic,
        });
    }

    // Only verdicts, control changes and etcd's membership are kept in the state file.
    if let Some((Some(_), pos)) = &main.state_file {
        if !main.admin && !main.has_dynamic() && main.upstreams.iter().all(|u| u.check.is_none()) {
            conf_warn_at(
                cf,
                pos,
                "\"upstream_healthcheck_state_file\" directive is ignored, no upstream is \
                 checked and no location has \"upstream_healthcheck_admin\"",
            );
        }
    }
    let n = main.slots();
    let needs_zone = main.admin
        || main.has_dynamic()
        || main.etcd.is_some()
        || main.counts_traffic()
        || main.has_passive()
        || main.upstreams.iter().any(|u| u.check.is_some());
    if !needs_zone {
        return Ok(());
    }
    let need = zone::required_size(
        n,
        main.upstreams.len(),
        main.counts_traffic(),
        main.has_passive(),
        main.has_dynamic(),
    );
    let size = match &main.zone_size {
        Some((size, pos)) if *size < need => {
            conf_error_at(
                cf,
                pos,
                format!(
                    "\"upstream_healthcheck_zone\" size {}k is too small for {n} peer{}, at least {}k is needed",
                    size / 1024,
                    if n == 1 { "" } else { "s" },
                    need.div_ceil(1024)
                ),
            );
            return Err(());
        }
        Some((size, _)) => *size,
        None => need,
    };
    let mut name = ngx::ngx_string!("upstream_healthcheck");
    // SAFETY: cf is valid; the tag is this module's static, the same across reloads.
    let shm = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut name,
            size,
            Module::module() as *const _ as *mut c_void,
        )
    };
    // SAFETY: a non-null zone returned by nginx is ours to set up until the cycle starts.
    let Some(shm) = (unsafe { shm.as_mut() }) else {
        return Err(());
    };
    shm.init = Some(zone::init_zone);
    shm.data = main as *mut MainConf as *mut c_void;
    shm.noreuse = 1;
    // SAFETY: cf->pool is the new cycle's pool, destroyed when that cycle fails or ends.
    let Some(cln) = (unsafe { ngx_pool_cleanup_add((*cf).pool, 0).as_mut() }) else {
        return Err(());
    };
    cln.handler = Some(zone::undo_supersede);

    // Wrap every balancer's per-request init, so a worker applies a changed verdict before
    // choosing a peer: the cost is one atomic load per request.
    for up in &main.upstreams {
        // SAFETY: uscf is valid; its balancer's init_upstream ran in init_main_conf.
        let us = unsafe { &mut *up.uscf };
        let sc = Module::server_conf_mut(us).ok_or(())?;
        sc.watches_attempts = up.traffic || up.passive.is_some();
        if sc.original_init_peer.is_none() && us.peer.init.is_some() {
            sc.original_init_peer = us.peer.init;
            us.peer.init = Some(peers::init_peer);
        }
    }
    main.shm_zone = shm;
    Ok(())
}
