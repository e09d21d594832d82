//! Plain-data snapshots of upstreams and peers, and the renderers of the status formats.

use core::fmt::{self, Write};

use crate::health::PeerHealth;
use crate::histogram::Histogram;
use crate::panic::PanicRule;
use crate::traffic::{Traffic, TrafficRate};

pub mod html;
pub mod json;
mod num;
pub mod page;
pub mod prometheus;
pub mod text;

/// Whether this host runs probes under `upstream_healthcheck_ha_address`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HaMode {
    /// The directive is absent.
    #[default]
    Disabled,
    /// This host holds the address: it probes.
    Master,
    /// It does not: no probes, peers keep nginx's own flags.
    Slaver,
}

impl HaMode {
    /// The names lua-resty-uh uses.
    pub fn as_str(self) -> &'static str {
        match self {
            HaMode::Disabled => "Disabled",
            HaMode::Master => "Master",
            HaMode::Slaver => "Slaver",
        }
    }
}

/// One peer as the status page shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// Its index in the primary or backup list, kept when a filter drops other peers.
    pub id: usize,
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
    /// What exactly the last failure was (the failing match condition, OpenSSL's reason),
    /// when there is more to say than its kind.
    pub last_error_detail: Option<String>,
    /// Forced down at run time (gray release); `down` is true then.
    pub manual_down: bool,
    /// Seconds left of a manual down, `None` when it does not expire.
    pub manual_down_ttl: Option<u64>,
    /// While it ramps up after coming back (`slow_start`): the Unix time (ms) the ramp ends and
    /// its factor now, in thousandths of its full share.
    pub slow_start: Option<(u64, u64)>,
    /// Its proxied traffic, when its upstream counts it (`upstream_healthcheck_traffic`).
    pub traffic: Option<Traffic>,
    /// Its traffic since this worker's previous HTML page, for that page.
    pub traffic_rate: Option<TrafficRate>,
    /// Its passive checks' state, when its upstream has them.
    pub passive: Option<PassiveView>,
    /// Where it comes from, when its upstream has `upstream_healthcheck_dynamic`.
    pub etcd: Option<EtcdPeer>,
}

/// A peer of an upstream with `upstream_healthcheck_dynamic`: from nginx.conf or from etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdPeer {
    pub from_etcd: bool,
    /// What was wrong with its key's value (the peer then has the defaults).
    pub error: Option<String>,
}

/// A peer's passive checks as the status formats show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveView {
    /// Times proxied requests ejected it.
    pub ejections: u64,
    /// Without active checks: Unix milliseconds its ejection ends, 0 when not ejected.
    pub down_until_ms: u64,
    /// Without active checks: back from an ejection, and sent straight back down by its next
    /// failed request.
    pub probation: bool,
}

/// One upstream block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamSnapshot {
    pub name: String,
    /// Has `upstream_healthcheck` (and it is not `off`).
    pub checked: bool,
    pub primary: Vec<PeerSnapshot>,
    pub backup: Vec<PeerSnapshot>,
    /// Durations of this upstream's probes; `None` when unchecked.
    pub probe_durations: Option<Histogram>,
    /// Probes that gave no verdict for a local reason (no free connection, descriptor or
    /// source port; a worker held up past a timeout); `None` when unchecked.
    pub local_errors: Option<u64>,
    /// Its probes speak TLS (`type=https`): they can fail `tls_handshake` and `tls_verify`.
    pub tls: bool,
    /// Its probes judge responses with a match block: they can fail `mismatch`.
    pub matched: bool,
    /// It has passive checks: its peers can fail `passive`.
    pub passive: bool,
    /// Its panic mode (`panic_threshold`); `None` when unchecked.
    pub panic: Option<PanicSnapshot>,
    /// A `stream {}` upstream (the stream module's): `Stream upstream NAME` on the text page,
    /// in `"stream_upstreams"` in JSON, `kind="stream"` in Prometheus.
    pub stream: bool,
}

/// Whether an upstream is in panic, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PanicSnapshot {
    /// In panic now: the checks' verdicts are not applied.
    pub active: bool,
    /// Times it entered panic.
    pub entered: u64,
    /// Primaries up by their checks (see `panic::counts`).
    pub up: u32,
    /// `panic_threshold` and the primaries it counts; `None` without the parameter.
    pub rule: Option<PanicRule>,
}

impl UpstreamSnapshot {
    /// Some peer carries traffic counters: the upstream counts its traffic.
    pub fn counts_traffic(&self) -> bool {
        self.primary
            .iter()
            .chain(&self.backup)
            .any(|p| p.traffic.is_some())
    }
}

/// The link to etcd (`upstream_healthcheck_etcd`) as the status formats show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdStatus {
    /// The watch is in place (the last attempt succeeded).
    pub connected: bool,
    /// The endpoint in use or last tried, `IP:port`.
    pub endpoint: String,
    /// The etcd revision the state reflects.
    pub revision: i64,
    /// Unix seconds of the last change of `connected`.
    pub since_unix: u64,
    pub last_error: Option<String>,
    /// Keys under the prefix that were refused.
    pub refused_keys: u64,
}

/// Everything a status page renders, upstreams in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Unix time of the snapshot in milliseconds.
    pub now_ms: u64,
    pub ha_mode: HaMode,
    /// `None` without `upstream_healthcheck_etcd`.
    pub etcd: Option<EtcdStatus>,
    pub upstreams: Vec<UpstreamSnapshot>,
}

/// Writes `s`, replacing each character `escape` maps to a string; the renderers' one way of
/// escaping (HTML entities, Prometheus label values).
pub(crate) fn write_escaped(
    out: &mut impl Write,
    s: &str,
    escape: impl Fn(char) -> Option<&'static str>,
) -> fmt::Result {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if let Some(esc) = escape(c) {
            out.write_str(&s[start..i])?;
            out.write_str(esc)?;
            start = i + c.len_utf8();
        }
    }
    out.write_str(&s[start..])
}

/// Snapshots shared by the renderers' tests.
#[cfg(test)]
pub mod fixtures {
    use super::PeerSnapshot;
    use crate::health::PeerHealth;

    /// A peer of a checked upstream, up or down by its health.
    pub fn peer(name: &str, down: bool) -> PeerSnapshot {
        PeerSnapshot {
            name: name.to_owned(),
            down,
            health: Some(PeerHealth::new(!down)),
            ..PeerSnapshot::default()
        }
    }
}
