//! Plain-data snapshots of upstreams and peers, and the renderers of the status formats.

use crate::health::PeerHealth;

pub mod text;

/// One peer as the status page shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// As nginx names it: `127.0.0.1:8081`.
    pub name: String,
    /// Marked `down` in nginx.conf.
    pub config_down: bool,
    /// Down as the balancer sees it now (config, health verdict).
    pub down: bool,
    pub weight: i64,
    pub max_fails: u64,
    /// Seconds.
    pub fail_timeout: u64,
    pub conns: u64,
    pub current_weight: i64,
    pub effective_weight: i64,
    pub fails: u64,
    /// `None` for a peer of an unchecked upstream.
    pub health: Option<PeerHealth>,
}

/// One upstream block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamSnapshot {
    pub name: String,
    /// Has `upstream_healthcheck` (and it is not `off`).
    pub checked: bool,
    pub primary: Vec<PeerSnapshot>,
    pub backup: Vec<PeerSnapshot>,
}

/// Everything a status page renders, upstreams in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub upstreams: Vec<UpstreamSnapshot>,
}
