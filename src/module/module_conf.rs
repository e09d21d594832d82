//! Configuration as stored by nginx: main, upstream and location levels; the one way of
//! reporting configuration errors (the glue crate's, shared with the stream module) is
//! re-exported here.

use core::cell::Cell;
use core::ptr;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ngx::ffi::{
    ngx_cycle_t, ngx_event_free_peer_pt, ngx_http_upstream_init_peer_pt,
    ngx_http_upstream_srv_conf_t, ngx_shm_zone_t,
};

pub use upstream_healthcheck_glue::conf::{conf_error, conf_error_at, conf_warn_at, ConfPos};

use crate::config::{CheckParams, PassiveParams, TlsProtocols, ValidStatuses};
use crate::etcd::conf::EtcdConf;
use crate::matcher::Match;
use crate::module::tls::TlsContext;
use crate::module::zone::{Slot, ZoneHeader};
use crate::panic::{self, PanicRule};
use crate::query::Format;

/// `http {}` level: the zone and the list of upstreams built after parsing.
pub struct MainConf {
    /// `upstream_healthcheck_zone`, where it was written.
    pub zone_size: Option<(usize, ConfPos)>,
    /// Every `upstream {}` block in configuration order (filled in postconfiguration).
    pub upstreams: Vec<UpstreamConf>,
    /// The shared zone, when any upstream is checked.
    pub shm_zone: *mut ngx_shm_zone_t,
    /// Set by the zone's init: the state in shared memory.
    pub header: *mut ZoneHeader,
    /// `upstream_healthcheck_ha_address`: the address and how often to look for it.
    pub ha: Option<(IpAddr, u64)>,
    /// Some location has `upstream_healthcheck_admin`.
    pub admin: bool,
    /// Every `upstream_healthcheck_match` block by name, in configuration order; `match=` is
    /// resolved against them after the whole http block is read.
    pub matches: Vec<(String, Arc<Match>)>,
    /// `upstream_healthcheck_traffic` at the http level: the default of every upstream.
    pub traffic: Option<(bool, ConfPos)>,
    /// `upstream_healthcheck_state_file`: the file's full name (`None` inside for `off`).
    pub state_file: Option<(Option<PathBuf>, ConfPos)>,
    /// The cycle this configuration belongs to (its log is where the zone's init reports).
    pub cycle: *mut ngx_cycle_t,
    /// `upstream_healthcheck_etcd`.
    pub etcd: Option<(EtcdConf, ConfPos)>,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            zone_size: None,
            upstreams: Vec::new(),
            shm_zone: ptr::null_mut(),
            header: ptr::null_mut(),
            ha: None,
            admin: false,
            matches: Vec::new(),
            traffic: None,
            state_file: None,
            cycle: ptr::null_mut(),
            etcd: None,
        }
    }
}

impl MainConf {
    /// Number of peer slots in the shared zone: every peer of every upstream block.
    pub fn slots(&self) -> usize {
        self.upstreams.iter().map(|u| u.peers.len()).sum()
    }

    /// Some upstream counts its traffic: the zone holds traffic counters for every slot.
    pub fn counts_traffic(&self) -> bool {
        self.upstreams.iter().any(|u| u.traffic)
    }

    /// Some upstream has `upstream_healthcheck_dynamic`: the zone holds members.
    pub fn has_dynamic(&self) -> bool {
        self.upstreams.iter().any(|u| u.dynamic.is_some())
    }

    /// Some upstream has passive checks: the zone holds passive state for every slot.
    pub fn has_passive(&self) -> bool {
        self.upstreams.iter().any(|u| u.passive.is_some())
    }

    /// The state file, when one is configured.
    pub fn state_path(&self) -> Option<&PathBuf> {
        self.state_file.as_ref()?.0.as_ref()
    }
}

/// `upstream {}` level, as the directives set it.
#[derive(Default)]
pub struct SrvConf {
    /// `upstream_healthcheck` was given (`None` inside for `off`), and where.
    pub check: Option<(Option<CheckParams>, ConfPos)>,
    pub request: Option<(Vec<u8>, ConfPos)>,
    pub valid: Option<(ValidStatuses, ConfPos)>,
    /// The `upstream_healthcheck_ssl_*` directives of a `type=https` check.
    pub ssl: SslDirectives,
    /// The balancer's per-request init, wrapped so a request never sees stale verdicts.
    pub original_init_peer: ngx_http_upstream_init_peer_pt,
    /// `upstream_healthcheck_traffic` in this upstream block.
    pub traffic: Option<(bool, ConfPos)>,
    /// `upstream_healthcheck_passive`.
    pub passive: Option<(PassiveParams, ConfPos)>,
    /// Each proxied attempt is seen (traffic counting, from this block's
    /// `upstream_healthcheck_traffic` or the http level's, or passive checks); set after
    /// parsing.
    pub watches_attempts: bool,
    /// The balancer's `free`, wrapped to see each attempt (`watches_attempts`); learnt by each
    /// worker from the first request (every request of an upstream gets the same one from its
    /// balancer).
    pub original_free: Cell<ngx_event_free_peer_pt>,
    /// `upstream_healthcheck_dynamic max_peers=N`: N, the index in the upstream's `servers`
    /// of the first of the N placeholders it added, and where it was written.
    pub dynamic: Option<(usize, usize, ConfPos)>,
}

/// The `upstream_healthcheck_ssl_*` directives as written, each with its position.
#[derive(Default)]
pub struct SslDirectives {
    pub verify: Option<(bool, ConfPos)>,
    pub trusted: Option<(String, ConfPos)>,
    pub name: Option<(String, ConfPos)>,
    pub server_name: Option<(bool, ConfPos)>,
    pub certificate: Option<(String, ConfPos)>,
    pub certificate_key: Option<(String, ConfPos)>,
    pub protocols: Option<(TlsProtocols, ConfPos)>,
}

impl SslDirectives {
    /// The first directive given, in table order, and where it was written.
    pub fn first_given(&self) -> Option<(&'static str, &ConfPos)> {
        [
            (
                "upstream_healthcheck_ssl_verify",
                self.verify.as_ref().map(|v| &v.1),
            ),
            (
                "upstream_healthcheck_ssl_trusted_certificate",
                self.trusted.as_ref().map(|v| &v.1),
            ),
            (
                "upstream_healthcheck_ssl_name",
                self.name.as_ref().map(|v| &v.1),
            ),
            (
                "upstream_healthcheck_ssl_server_name",
                self.server_name.as_ref().map(|v| &v.1),
            ),
            (
                "upstream_healthcheck_ssl_certificate",
                self.certificate.as_ref().map(|v| &v.1),
            ),
            (
                "upstream_healthcheck_ssl_certificate_key",
                self.certificate_key.as_ref().map(|v| &v.1),
            ),
            (
                "upstream_healthcheck_ssl_protocols",
                self.protocols.as_ref().map(|v| &v.1),
            ),
        ]
        .into_iter()
        .find_map(|(name, pos)| Some((name, pos?)))
    }
}

/// `location {}` level.
#[derive(Default)]
pub struct LocConf {
    /// `upstream_healthcheck_status`: the default format of the status handler.
    pub status: Option<Format>,
    /// `upstream_healthcheck_admin`.
    pub admin: bool,
}

/// One upstream block as the module sees it after parsing.
pub struct UpstreamConf {
    pub name: String,
    pub uscf: *mut ngx_http_upstream_srv_conf_t,
    /// `None` for an upstream without checks.
    pub check: Option<Check>,
    /// Primary peers then backup peers, in nginx's order.
    pub peers: Vec<PeerConf>,
    /// `upstream_healthcheck_traffic on` applies to it.
    pub traffic: bool,
    /// `upstream_healthcheck_passive`.
    pub passive: Option<PassiveParams>,
    /// `slow_start=T` of a balancer that uses the round-robin weights (round robin,
    /// `least_conn`); `None` otherwise.
    pub slow_start: Option<SlowStart>,
    /// How many of `peers` are primary (they come first).
    pub primaries: usize,
    /// `panic_threshold` with the primaries it counts; `None` without the parameter.
    pub panic: Option<PanicRule>,
    /// `upstream_healthcheck_dynamic`: its reserved peers.
    pub dynamic: Option<Dynamic>,
}

/// The peers an upstream reserves for etcd: `peers[first..first + max]`, all primary.
pub struct Dynamic {
    pub first: usize,
    pub max: usize,
}

impl Dynamic {
    /// Whether `peers[i]` is a reserved peer.
    pub fn holds(&self, i: usize) -> bool {
        (self.first..self.first + self.max).contains(&i)
    }
}

/// Slow start in one upstream: its weights inside nginx are the configured ones times `scale`,
/// so that a ramping peer's weight can be a fraction of its full one.
pub struct SlowStart {
    pub duration_ms: u64,
    /// See `slow_start::weight_scale`.
    pub scale: i64,
    /// Each peer's configured weight, in `UpstreamConf::peers` order.
    pub weights: Vec<i64>,
}

impl UpstreamConf {
    /// Whether the verdict of `peers[i]` counts towards panic (see `panic::counts`).
    pub fn counts_for_panic(&self, i: usize) -> bool {
        self.peers
            .get(i)
            .is_some_and(|p| panic::counts(i >= self.primaries, p.config_down))
    }

    /// Counted peers up by their checks, from the zone's slots (O(peers of this upstream)).
    pub fn count_up(&self, slots: &[Slot]) -> u32 {
        (0..self.peers.len())
            .filter(|&i| self.counts_for_panic(i))
            .filter(|&i| {
                slots
                    .get(self.peers[i].slot())
                    .is_some_and(|s| s.health.is_up())
            })
            .count() as u32
    }
}

/// What to do when probing the peers of one upstream.
pub struct Check {
    pub params: CheckParams,
    /// The bytes an http probe sends.
    pub request: Vec<u8>,
    pub valid: ValidStatuses,
    /// The TLS context of a `type=https` check.
    pub tls: Option<TlsContext>,
    /// `match=`: the block that judges a response instead of `valid` (then the default list,
    /// unused). Shared with `MainConf::matches` and every upstream naming the same block: one
    /// compiled copy of its regular expressions per configuration.
    pub matcher: Option<Arc<Match>>,
}

/// One peer of an upstream block.
pub struct PeerConf {
    /// As nginx shows it, borrowed from nginx's configuration memory (see `cycle_str`):
    /// one per peer, so no copy.
    pub name: &'static str,
    /// Marked `down` in nginx.conf: never probed, never brought up.
    pub config_down: bool,
    pub key: u64,
    /// Index of its slot in the shared zone (u32 keeps a peer at 32 bytes).
    slot: u32,
    /// A peer reserved by `upstream_healthcheck_dynamic`: its address comes from etcd.
    pub reserved: bool,
}

impl PeerConf {
    pub fn new(name: &'static str, config_down: bool, key: u64, slot: u32) -> PeerConf {
        PeerConf {
            name,
            config_down,
            key,
            slot,
            reserved: false,
        }
    }

    /// Index of its slot in the shared zone.
    pub fn slot(&self) -> usize {
        self.slot as usize
    }
}
