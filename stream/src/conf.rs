//! Configuration as stored by nginx (main and upstream levels), the one place that reports
//! configuration errors, and postconfiguration: every stream upstream block as the module sees
//! it, the shared zone, and the wrapped balancer init.

use core::ffi::c_void;
use core::ptr;
use std::collections::HashMap;

use ngx::core::{Pool, Status};
use ngx::ffi::{
    ngx_conf_t, ngx_int_t, ngx_shm_zone_t, ngx_stream_conf_ctx_t, ngx_stream_upstream_init_peer_pt,
    ngx_stream_upstream_main_conf_t, ngx_stream_upstream_module, ngx_stream_upstream_rr_peers_t,
    ngx_stream_upstream_server_t, ngx_stream_upstream_srv_conf_t,
};
use upstream_healthcheck_core::config::CheckParams;
use upstream_healthcheck_core::key::peer_key;
use upstream_healthcheck_core::stream::{
    check_combination, Expect, StreamCheck, StreamType, EXPECT, SEND,
};
use upstream_healthcheck_core::stream_zone::StreamZone;

use upstream_healthcheck_glue::conf::{conf_error_at, ConfPos};

use crate::peers::{self, live_peers};
use crate::zone;

/// `stream {}` level: the upstreams built after parsing and the zone.
pub struct MainConf {
    pub upstreams: Vec<UpstreamConf>,
    pub shm_zone: *mut ngx_shm_zone_t,
    /// Set by the zone's init.
    pub zone: *mut StreamZone,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            upstreams: Vec::new(),
            shm_zone: ptr::null_mut(),
            zone: ptr::null_mut(),
        }
    }
}

impl MainConf {
    /// Every peer of every upstream block has a slot.
    pub fn slots(&self) -> usize {
        self.upstreams.iter().map(|u| u.peers.len()).sum()
    }
}

/// `upstream {}` level, as the directives set it.
#[derive(Default)]
pub struct SrvConf {
    pub check: Option<(Option<StreamCheck>, ConfPos)>,
    pub send: Option<(Vec<u8>, ConfPos)>,
    pub expect: Option<(Expect, ConfPos)>,
    /// The balancer's per-session init, wrapped so a session never sees stale verdicts.
    pub original_init_peer: ngx_stream_upstream_init_peer_pt,
}

/// One stream upstream block as the module sees it after parsing.
pub struct UpstreamConf {
    pub name: String,
    pub uscf: *mut ngx_stream_upstream_srv_conf_t,
    pub check: Option<Check>,
    /// Primary peers then backup peers, in nginx's order.
    pub peers: Vec<PeerConf>,
    pub primaries: usize,
}

/// What to do when probing the peers of one upstream.
pub struct Check {
    pub kind: StreamType,
    pub params: CheckParams,
    /// Empty: nothing to send (tcp).
    pub send: Vec<u8>,
    pub expect: Option<Expect>,
}

/// One peer of an upstream block.
pub struct PeerConf {
    pub name: String,
    pub config_down: bool,
    pub backup: bool,
    pub weight: i64,
    pub max_fails: u64,
    pub fail_timeout: u64,
    pub key: u64,
    pub slot: usize,
}

/// Allocates a conf in the configuration pool, dropped with it.
///
/// # Safety
/// `cf` must be a live configuration context.
unsafe fn allocate<T: Default>(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: per the contract; the pool drops the value when it is destroyed.
    let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
    pool.allocate::<T>(T::default()) as *mut c_void
}

pub unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx calls this with the configuration being read.
    unsafe { allocate::<MainConf>(cf) }
}

pub unsafe extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx calls this with the configuration being read.
    unsafe { allocate::<SrvConf>(cf) }
}

/// This module's upstream-level conf of a stream upstream block.
pub fn srv_conf(us: &ngx_stream_upstream_srv_conf_t) -> Option<&'static mut SrvConf> {
    if us.srv_conf.is_null() {
        return None;
    }
    // SAFETY: an upstream block's srv_conf array has an entry per stream module, ours
    // created by create_srv_conf; it lives as long as the configuration.
    unsafe {
        (*us.srv_conf.add(crate::module().ctx_index))
            .cast::<SrvConf>()
            .as_mut()
    }
}

/// This module's main conf, from a `stream {}` configuration context.
///
/// # Safety
/// `ctx` must be a stream configuration context.
pub unsafe fn main_conf(ctx: *mut ngx_stream_conf_ctx_t) -> Option<&'static mut MainConf> {
    // SAFETY: per the contract; main_conf has an entry per stream module.
    unsafe {
        (*(*ctx).main_conf.add(crate::module().ctx_index))
            .cast::<MainConf>()
            .as_mut()
    }
}

fn text(s: &ngx::ffi::ngx_str_t) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// Where an `upstream {}` block is written.
fn upstream_pos(us: &ngx_stream_upstream_srv_conf_t) -> ConfPos {
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

/// True when some `server` gets its peers at run time (`resolve`): its addresses are missing
/// from the peers built at configuration time.
fn has_runtime_peers(us: &ngx_stream_upstream_srv_conf_t, built: usize) -> bool {
    // SAFETY: servers is null or an array of ngx_stream_upstream_server_t.
    let servers: &[ngx_stream_upstream_server_t] = match unsafe { us.servers.as_ref() } {
        // SAFETY: a non-empty array of nelts servers.
        Some(a) if !a.elts.is_null() => unsafe {
            core::slice::from_raw_parts(a.elts as *const ngx_stream_upstream_server_t, a.nelts)
        },
        _ => &[],
    };
    servers.iter().map(|s| s.naddrs).sum::<usize>() > built
}

/// The check of one upstream from its directives; `Err` after reporting what is wrong.
fn check_of(cf: *mut ngx_conf_t, name: &str, sc: &SrvConf) -> Result<Option<Check>, ()> {
    let given = [
        (SEND, sc.send.as_ref().map(|s| &s.1)),
        (EXPECT, sc.expect.as_ref().map(|e| &e.1)),
    ];
    let Some((Some(c), pos)) = &sc.check else {
        if let Some((directive, Some(pos))) = given.into_iter().find(|(_, p)| p.is_some()) {
            let off = if sc.check.is_some() {
                ", but it is off"
            } else {
                ""
            };
            conf_error_at(
                cf,
                pos,
                format!("\"{directive}\" directive needs \"upstream_healthcheck\" in upstream \"{name}\"{off}"),
            );
            return Err(());
        }
        return Ok(None);
    };
    if let Err(e) = check_combination(c.kind, sc.send.is_some(), sc.expect.is_some()) {
        let at = sc.expect.as_ref().map(|e| &e.1).unwrap_or(pos);
        conf_error_at(cf, at, format!("{e} in upstream \"{name}\""));
        return Err(());
    }
    Ok(Some(Check {
        kind: c.kind,
        params: c.params.clone(),
        send: sc.send.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
        expect: sc.expect.as_ref().map(|e| e.0.clone()),
    }))
}

/// `postconfiguration`: builds the module's view of every stream upstream block, adds the
/// shared zone when some upstream is checked and wraps the balancers' per-session init.
pub unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls postconfiguration with the stream block's configuration context.
    match unsafe { build(cf) } {
        Ok(()) => Status::NGX_OK.into(),
        Err(()) => Status::NGX_ERROR.into(),
    }
}

/// # Safety
/// `cf` must be the stream block's context in postconfiguration.
unsafe fn build(cf: *mut ngx_conf_t) -> Result<(), ()> {
    // SAFETY: per the contract, cf->ctx is the stream block's context; both main confs exist.
    let ctx = unsafe { (*cf).ctx as *mut ngx_stream_conf_ctx_t };
    // SAFETY: ctx is the stream block's context (above).
    let main = unsafe { main_conf(ctx) }.ok_or(())?;
    // SAFETY: the upstream module's main conf, by its index in the stream context.
    let umcf = unsafe {
        (*(*ctx).main_conf.add(ngx_stream_upstream_module.ctx_index))
            .cast::<ngx_stream_upstream_main_conf_t>()
            .as_ref()
    }
    .ok_or(())?;
    // SAFETY: the upstreams array holds upstream srv conf pointers.
    let all: &[*mut ngx_stream_upstream_srv_conf_t] = unsafe { umcf.upstreams.as_slice() };
    let mut next_slot = 0;
    for &uscf in all {
        // SAFETY: every entry is a valid upstream configuration.
        let us = unsafe { &*uscf };
        let Some(sc) = srv_conf(us) else {
            continue; // an implicit upstream made by proxy_pass, not an upstream {} block
        };
        let name = text(&us.host);
        let check = check_of(cf, &name, sc)?;
        // SAFETY: upstream init_main_conf ran before postconfiguration and built the peers.
        let live = unsafe { live_peers(us.peer.data as *mut ngx_stream_upstream_rr_peers_t) };
        if check.is_some() && has_runtime_peers(us, live.len()) {
            conf_error_at(
                cf,
                &upstream_pos(us),
                format!("\"upstream_healthcheck\" cannot check the peers of \"server ... resolve\" in upstream \"{name}\""),
            );
            return Err(());
        }
        let primary = us.peer.data as *mut ngx_stream_upstream_rr_peers_t;
        let mut seen: HashMap<String, u32> = HashMap::with_capacity(live.len());
        let mut peers = Vec::with_capacity(live.len());
        for &(list, rr) in &live {
            // SAFETY: live_peers returns valid peers of this configuration.
            let rr = unsafe { &*rr };
            let peer_name = text(&rr.name);
            let n = seen.entry(peer_name.clone()).or_default();
            let key = peer_key(name.as_bytes(), peer_name.as_bytes(), *n);
            *n += 1;
            peers.push(PeerConf {
                name: peer_name,
                config_down: rr.down != 0,
                backup: list != primary,
                weight: rr.weight as i64,
                max_fails: rr.max_fails as u64,
                fail_timeout: rr.fail_timeout as u64,
                key,
                slot: next_slot,
            });
            next_slot += 1;
        }
        let primaries = peers.iter().filter(|p| !p.backup).count();
        main.upstreams.push(UpstreamConf {
            name,
            uscf,
            check,
            peers,
            primaries,
        });
    }
    if !main.upstreams.iter().any(|u| u.check.is_some()) {
        return Ok(());
    }
    // SAFETY: cf is the stream block's context in postconfiguration.
    unsafe { zone::add(cf, main) }?;
    for up in &main.upstreams {
        // SAFETY: uscf is valid; its balancer's init_upstream ran in init_main_conf.
        let us = unsafe { &mut *up.uscf };
        let sc = srv_conf(us).ok_or(())?;
        if sc.original_init_peer.is_none() && us.peer.init.is_some() {
            sc.original_init_peer = us.peer.init;
            us.peer.init = Some(peers::init_peer);
        }
    }
    Ok(())
}
