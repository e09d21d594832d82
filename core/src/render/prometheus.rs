//! The Prometheus metrics page (text exposition format 0.0.4), lua-resty-upstream-healthcheck's gauge first.

use core::fmt::{self, Write};
use core::hash::Hash;

use rustc_hash::FxHashSet;

use super::num::write_decimal;
use super::{write_escaped, EtcdStatus, PeerSnapshot, Snapshot, UpstreamSnapshot};
use crate::health::PeerHealth;
use crate::histogram::{Histogram, BUCKETS_US};
use crate::outcome::Failure;
use crate::traffic::Traffic;

const P: &str = "nginx_upstream_healthcheck_";

/// The metric families, in page order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    StatusInfo,
    PeerUp,
    PeerManualDown,
    ChecksTotal,
    FailuresTotal,
    TransitionsTotal,
    LastCheck,
    LastDuration,
    LastChange,
    ProbeDuration,
    ProbeErrorsTotal,
    PeerRequestsTotal,
    PeerResponsesTotal,
    PeerFailedAttemptsTotal,
    PeerResponseSeconds,
    PassiveEjectionsTotal,
    UpstreamPanic,
    PanicTotal,
}

impl Family {
    const ALL: [Family; 18] = [
        Family::StatusInfo,
        Family::PeerUp,
        Family::PeerManualDown,
        Family::ChecksTotal,
        Family::FailuresTotal,
        Family::TransitionsTotal,
        Family::LastCheck,
        Family::LastDuration,
        Family::LastChange,
        Family::ProbeDuration,
        Family::ProbeErrorsTotal,
        Family::PeerRequestsTotal,
        Family::PeerResponsesTotal,
        Family::PeerFailedAttemptsTotal,
        Family::PeerResponseSeconds,
        Family::PassiveEjectionsTotal,
        Family::UpstreamPanic,
        Family::PanicTotal,
    ];

    /// The families of proxied traffic (`upstream_healthcheck_traffic`): written only when
    /// some upstream counts it, for those upstreams, checked or not.
    fn is_traffic(self) -> bool {
        matches!(
            self,
            Family::PeerRequestsTotal
                | Family::PeerResponsesTotal
                | Family::PeerFailedAttemptsTotal
                | Family::PeerResponseSeconds
        )
    }

    /// Name, help and type.
    fn header(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::StatusInfo => (
                "nginx_upstream_status_info",
                "The running status of nginx upstream",
                "gauge",
            ),
            Family::PeerUp => (
                "nginx_upstream_healthcheck_peer_up",
                "Whether the peer is up for the balancer (1) or down (0).",
                "gauge",
            ),
            Family::PeerManualDown => (
                "nginx_upstream_healthcheck_peer_manual_down",
                "Whether the peer is forced down at run time (1) or not (0).",
                "gauge",
            ),
            Family::ChecksTotal => (
                "nginx_upstream_healthcheck_checks_total",
                "Health check probes completed.",
                "counter",
            ),
            Family::FailuresTotal => (
                "nginx_upstream_healthcheck_failures_total",
                "Failed health check probes by reason.",
                "counter",
            ),
            Family::TransitionsTotal => (
                "nginx_upstream_healthcheck_transitions_total",
                "Changes of the health verdict, by the state changed to.",
                "counter",
            ),
            Family::LastCheck => (
                "nginx_upstream_healthcheck_last_check_timestamp_seconds",
                "Unix time the last probe ended.",
                "gauge",
            ),
            Family::LastDuration => (
                "nginx_upstream_healthcheck_last_duration_seconds",
                "Duration of the last probe.",
                "gauge",
            ),
            Family::LastChange => (
                "nginx_upstream_healthcheck_last_change_timestamp_seconds",
                "Unix time of the last change of the health verdict.",
                "gauge",
            ),
            Family::ProbeDuration => (
                "nginx_upstream_healthcheck_probe_duration_seconds",
                "Durations of the upstream's health check probes.",
                "histogram",
            ),
            Family::ProbeErrorsTotal => (
                "nginx_upstream_healthcheck_probe_errors_total",
                "Probes that gave no verdict for a local reason.",
                "counter",
            ),
            Family::PeerRequestsTotal => (
                "nginx_upstream_healthcheck_peer_requests_total",
                "Proxied attempts sent to the peer (every try of every request).",
                "counter",
            ),
            Family::PeerResponsesTotal => (
                "nginx_upstream_healthcheck_peer_responses_total",
                "Responses of the peer to proxied requests, by status class.",
                "counter",
            ),
            Family::PeerFailedAttemptsTotal => (
                "nginx_upstream_healthcheck_peer_failed_attempts_total",
                "Proxied attempts nginx counted as failed (connect error, timeout, invalid header, next_upstream).",
                "counter",
            ),
            Family::PeerResponseSeconds => (
                "nginx_upstream_healthcheck_peer_response_seconds",
                "Durations of proxied attempts, from the connect to the end.",
                "histogram",
            ),
            Family::PassiveEjectionsTotal => (
                "nginx_upstream_healthcheck_passive_ejections_total",
                "Times passive checks took the peer out after failed proxied requests.",
                "counter",
            ),
            Family::UpstreamPanic => (
                "nginx_upstream_healthcheck_upstream_panic",
                "Whether the upstream is in panic (1): too few primaries up, verdicts not applied.",
                "gauge",
            ),
            Family::PanicTotal => (
                "nginx_upstream_healthcheck_panic_total",
                "Times the upstream entered panic.",
                "counter",
            ),
        }
    }
}

/// Writes every metric family once, its `# HELP` and `# TYPE` lines followed by all its samples.
///
/// `nginx_upstream_status_info` is lua-resty-upstream-healthcheck's gauge, line for line: per
/// checked upstream its peers' `UP`/`DOWN` pairs then the upstream's `UP`/`DOWN`/`UNKNOWN`
/// triple; per unchecked upstream only the triple, `UNKNOWN` set. The other families cover
/// checked upstreams only. A peer listed twice in one upstream (same name) counts once: the
/// first one wins, so no series is ever duplicated; so does an upstream.
pub fn render_prometheus(out: &mut impl Write, snap: &Snapshot) -> fmt::Result {
    let names: Vec<&str> = snap.upstreams.iter().map(|u| u.name.as_str()).collect();
    prometheus_page(out, &names, |k, u| u.clone_from(&snap.upstreams[k]))?;
    match &snap.etcd {
        Some(e) => etcd_metrics(out, e),
        None => Ok(()),
    }
}

/// The link to etcd: whether it is connected, the revision the state reflects, the keys
/// refused.
pub fn etcd_metrics(out: &mut impl Write, e: &EtcdStatus) -> fmt::Result {
    let families = [
        (
            "etcd_connected",
            "Whether the watch on etcd is in place (1) or not (0).",
            i64::from(e.connected),
        ),
        (
            "etcd_revision",
            "The etcd revision the state reflects.",
            e.revision,
        ),
        (
            "etcd_refused_keys",
            "Keys under the etcd prefix that were refused.",
            e.refused_keys as i64,
        ),
    ];
    for (name, help, v) in families {
        writeln!(
            out,
            "# HELP {P}{name} {help}\n# TYPE {P}{name} gauge\n{P}{name} {v}"
        )?;
    }
    Ok(())
}

/// Streams the page of the upstreams named `names`: `fill(k, u)` writes the current state of
/// the `k`-th into `u` (reused, so its buffers are too). Families are written one after the
/// other, so `fill` is called for each upstream once per family it has samples in; everything
/// else is linear in the number of peers.
pub fn prometheus_page(
    out: &mut impl Write,
    names: &[&str],
    mut fill: impl FnMut(usize, &mut UpstreamSnapshot),
) -> fmt::Result {
    let mut cursor = PrometheusCursor::new(names, None);
    while cursor.write_next(out, &mut fill)? {}
    Ok(())
}

/// Where a Prometheus page stands: it is written one step at a time (a family's header, or
/// one upstream's samples of a family), so the writer can stop between steps and go on later.
#[derive(Debug, Default)]
pub struct PrometheusCursor {
    /// Index into `Family::ALL`; `Family::ALL.len()` once done.
    family: usize,
    /// The next upstream of the family; `None` before the family's header.
    next: Option<usize>,
    /// Whether each upstream is the first of its name.
    shown: Vec<bool>,
    /// Whether each upstream was checked when the first family was written: the others skip
    /// those that were not without taking their state again.
    checked: Vec<bool>,
    /// Likewise, whether each upstream counted its traffic, and had passive checks.
    counted: Vec<bool>,
    passive: Vec<bool>,
    u: UpstreamSnapshot,
    peers: Vec<(usize, bool)>,
    /// Where the stream upstreams start: they get `kind="stream"` and no
    /// `nginx_upstream_status_info`.
    streams_from: usize,
}

impl PrometheusCursor {
    /// The cursor of a page of `names`, the stream upstreams from `streams_from` on (an http
    /// and a stream upstream may share a name: they are told apart by `kind`).
    pub fn new(names: &[&str], streams_from: Option<usize>) -> PrometheusCursor {
        let from = streams_from.unwrap_or(names.len());
        PrometheusCursor {
            streams_from: from,
            shown: first_occurrences(names.iter().enumerate().map(|(k, n)| (n, k >= from))),
            checked: vec![false; names.len()],
            counted: vec![false; names.len()],
            passive: vec![false; names.len()],
            ..Default::default()
        }
    }

    /// Peers its reused buffers have room for: the largest upstream it rendered.
    pub fn peers_held(&self) -> usize {
        self.u.primary.capacity() + self.u.backup.capacity()
    }

    /// Writes the next step; false once the page is complete (nothing written then).
    pub fn write_next(
        &mut self,
        out: &mut impl Write,
        fill: &mut impl FnMut(usize, &mut UpstreamSnapshot),
    ) -> Result<bool, fmt::Error> {
        let Some(&family) = Family::ALL.get(self.family) else {
            return Ok(false);
        };
        let optional = match family {
            f if f.is_traffic() => Some(&self.counted),
            Family::PassiveEjectionsTotal => Some(&self.passive),
            _ => None,
        };
        if optional.is_some_and(|any| !any.contains(&true)) {
            // No upstream counts its traffic (or has passive checks): the page stays as it is
            // without them.
            self.family += 1;
            self.next = None;
            return Ok(self.family < Family::ALL.len());
        }
        let Some(start) = self.next else {
            let (name, help, kind) = family.header();
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")?;
            self.next = Some(0);
            return Ok(true);
        };
        let n = self.shown.len();
        let per_peer = family != Family::StatusInfo;
        let wanted = |k: usize| match family {
            Family::StatusInfo => true,
            f if f.is_traffic() => self.counted[k],
            Family::PassiveEjectionsTotal => self.passive[k],
            _ => self.checked[k],
        };
        let k = (start..n).find(|&k| self.shown[k] && wanted(k));
        let Some(k) = k else {
            self.family += 1;
            self.next = None;
            return Ok(self.family < Family::ALL.len());
        };
        self.next = Some(k + 1);
        fill(k, &mut self.u);
        if !per_peer {
            self.checked[k] = self.u.checked;
            self.counted[k] = self.u.counts_traffic();
            self.passive[k] = self.u.passive;
        }
        let in_scope = match family {
            // lua's gauge stays http-only; stream upstreams are taken for what they check.
            Family::StatusInfo => k < self.streams_from,
            f if f.is_traffic() => self.u.counts_traffic(),
            Family::PassiveEjectionsTotal => self.u.passive,
            _ => self.u.checked,
        };
        if in_scope {
            unique_peers(&self.u, &mut self.peers);
            samples(out, family, &self.u, &self.peers)?;
        }
        Ok(true)
    }
}

/// For each item, whether it is the first one equal to it: one hash lookup per item (Fx: the
/// names are the operator's own, no one to flood the table).
fn first_occurrences<T: Hash + Eq>(items: impl Iterator<Item = T>) -> Vec<bool> {
    let mut seen = FxHashSet::default();
    seen.reserve(items.size_hint().0);
    items.map(|item| seen.insert(item)).collect()
}

/// The peers of `u` (and whether each is a backup), the first of each name only.
fn unique_peers(u: &UpstreamSnapshot, out: &mut Vec<(usize, bool)>) {
    out.clear();
    let names = u.primary.iter().chain(&u.backup).map(|p| p.name.as_str());
    let primary = (0..u.primary.len()).map(|i| (i, false));
    let backup = (0..u.backup.len()).map(|i| (i, true));
    let first = first_occurrences(names);
    out.extend(
        primary
            .chain(backup)
            .zip(first)
            .filter_map(|(peer, first)| first.then_some(peer)),
    );
}

/// The samples of one family for one upstream; `peers` are its unique peers as indexes into
/// its primary (`false`) or backup (`true`) list.
fn samples(
    out: &mut impl Write,
    family: Family,
    u: &UpstreamSnapshot,
    peers: &[(usize, bool)],
) -> fmt::Result {
    let peer = |&(i, backup): &(usize, bool)| -> (&PeerSnapshot, bool) {
        if backup {
            (&u.backup[i], true)
        } else {
            (&u.primary[i], false)
        }
    };
    let name = u.name.as_str();
    let up = Up::of(u);
    match family {
        Family::StatusInfo => {
            if u.checked {
                for (p, backup) in peers.iter().map(peer) {
                    let role = if backup { "BACKUP" } else { "PRIMARY" };
                    for (status, v) in [("UP", !p.down), ("DOWN", p.down)] {
                        out.write_str("nginx_upstream_status_info{name=\"")?;
                        label(out, name)?;
                        out.write_str("\",endpoint=\"")?;
                        label(out, &p.name)?;
                        writeln!(out, "\",status=\"{status}\",role=\"{role}\"}} {}", v as u8)?;
                    }
                }
            }
            let any_up = peers.iter().map(peer).any(|(p, _)| !p.down);
            let (up, down, unknown) = match (u.checked, any_up) {
                (false, _) => (0, 0, 1),
                (true, true) => (1, 0, 0),
                (true, false) => (0, 1, 0),
            };
            for (status, v) in [("UP", up), ("DOWN", down), ("UNKNOWN", unknown)] {
                out.write_str("nginx_upstream_status_info{name=\"")?;
                label(out, name)?;
                writeln!(out, "\",status=\"{status}\"}} {v}")?;
            }
        }
        Family::PeerUp => {
            for (p, backup) in peers.iter().map(peer) {
                peer_sample(out, "peer_up", up, p)?;
                let role = if backup { "backup" } else { "primary" };
                writeln!(out, ",role=\"{role}\"}} {}", !p.down as u8)?;
            }
        }
        Family::PeerManualDown => {
            for (p, _) in peers.iter().map(peer) {
                peer_sample(out, "peer_manual_down", up, p)?;
                writeln!(out, "}} {}", p.manual_down as u8)?;
            }
        }
        Family::ProbeDuration => {
            if let Some(h) = &u.probe_durations {
                histogram(out, up, h)?;
            }
        }
        Family::PeerRequestsTotal
        | Family::PeerResponsesTotal
        | Family::PeerFailedAttemptsTotal
        | Family::PeerResponseSeconds => {
            for (p, _) in peers.iter().map(peer) {
                if let Some(t) = &p.traffic {
                    traffic_samples(out, family, up, p, t)?;
                }
            }
        }
        Family::PassiveEjectionsTotal => {
            for (p, _) in peers.iter().map(peer) {
                if let Some(v) = &p.passive {
                    peer_sample(out, "passive_ejections_total", up, p)?;
                    writeln!(out, "}} {}", v.ejections)?;
                }
            }
        }
        Family::ProbeErrorsTotal => {
            if let Some(n) = u.local_errors {
                write!(out, "{P}probe_errors_total{{upstream=\"")?;
                upstream_label(out, up)?;
                writeln!(out, "\",reason=\"local\"}} {n}")?;
            }
        }
        Family::UpstreamPanic | Family::PanicTotal => {
            if let Some(p) = &u.panic {
                let (metric, v) = match family {
                    Family::UpstreamPanic => ("upstream_panic", u64::from(p.active)),
                    _ => ("panic_total", p.entered),
                };
                write!(out, "{P}{metric}{{upstream=\"")?;
                upstream_label(out, up)?;
                writeln!(out, "\"}} {v}")?;
            }
        }
        _ => {
            for (p, _) in peers.iter().map(peer) {
                if let Some(h) = &p.health {
                    health_samples(out, family, u, p, h)?;
                }
            }
        }
    }
    Ok(())
}

/// The samples of a peer's health record in one of the per-peer counter and time families.
fn health_samples(
    out: &mut impl Write,
    family: Family,
    u: &UpstreamSnapshot,
    p: &PeerSnapshot,
    h: &PeerHealth,
) -> fmt::Result {
    let upstream = Up::of(u);
    match family {
        Family::ChecksTotal => {
            peer_sample(out, "checks_total", upstream, p)?;
            writeln!(out, "}} {}", h.checks)
        }
        Family::FailuresTotal => {
            for f in Failure::possible(u.tls, u.matched) {
                peer_sample(out, "failures_total", upstream, p)?;
                writeln!(
                    out,
                    ",reason=\"{}\"}} {}",
                    f.as_str(),
                    h.failures[f.index()]
                )?;
            }
            // Proxied requests that failed: each ejection counts once.
            if let Some(v) = p.passive.filter(|_| u.passive) {
                peer_sample(out, "failures_total", upstream, p)?;
                writeln!(out, ",reason=\"passive\"}} {}", v.ejections)?;
            }
            Ok(())
        }
        Family::TransitionsTotal => {
            for (to, n) in [("up", h.transitions_up), ("down", h.transitions_down)] {
                peer_sample(out, "transitions_total", upstream, p)?;
                writeln!(out, ",to=\"{to}\"}} {n}")?;
            }
            Ok(())
        }
        Family::LastCheck if h.last_check_ms != 0 => seconds(
            out,
            upstream,
            p,
            "last_check_timestamp_seconds",
            h.last_check_ms,
            3,
        ),
        Family::LastDuration if h.last_check_ms != 0 => seconds(
            out,
            upstream,
            p,
            "last_duration_seconds",
            u64::from(h.last_duration_us),
            6,
        ),
        Family::LastChange if h.last_change_ms != 0 => seconds(
            out,
            upstream,
            p,
            "last_change_timestamp_seconds",
            h.last_change_ms,
            3,
        ),
        _ => Ok(()),
    }
}

/// The samples of a peer's traffic in one of the traffic families.
fn traffic_samples(
    out: &mut impl Write,
    family: Family,
    upstream: Up<'_>,
    p: &PeerSnapshot,
    t: &Traffic,
) -> fmt::Result {
    match family {
        Family::PeerRequestsTotal => {
            peer_sample(out, "peer_requests_total", upstream, p)?;
            writeln!(out, "}} {}", t.requests)
        }
        Family::PeerResponsesTotal => {
            for (class, n) in t.responses.iter().enumerate() {
                peer_sample(out, "peer_responses_total", upstream, p)?;
                writeln!(out, ",code=\"{}xx\"}} {n}", class + 1)?;
            }
            Ok(())
        }
        Family::PeerFailedAttemptsTotal => {
            peer_sample(out, "peer_failed_attempts_total", upstream, p)?;
            writeln!(out, "}} {}", t.failed_attempts)
        }
        _ => {
            let h = &t.response_times;
            let mut total = 0;
            for (i, n) in h.cumulative().enumerate() {
                peer_sample(out, "peer_response_seconds_bucket", upstream, p)?;
                out.write_str(",le=\"")?;
                match BUCKETS_US.get(i) {
                    Some(&le) => write_decimal(out, le, 6, 0)?,
                    None => out.write_str("+Inf")?,
                }
                writeln!(out, "\"}} {n}")?;
                total = n;
            }
            peer_sample(out, "peer_response_seconds_sum", upstream, p)?;
            out.write_str("} ")?;
            write_decimal(out, h.sum_us, 6, 0)?;
            out.write_char('\n')?;
            peer_sample(out, "peer_response_seconds_count", upstream, p)?;
            writeln!(out, "}} {total}")
        }
    }
}

/// A time sample: `v` in units of 10^-`scale` seconds.
fn seconds(
    out: &mut impl Write,
    upstream: Up<'_>,
    p: &PeerSnapshot,
    metric: &str,
    v: u64,
    scale: u32,
) -> fmt::Result {
    peer_sample(out, metric, upstream, p)?;
    out.write_str("} ")?;
    write_decimal(out, v, scale, 0)?;
    out.write_char('\n')
}

/// Writes `nginx_upstream_healthcheck_<metric>{upstream="..",peer=".."`, leaving the label set
/// open for more labels.
fn peer_sample(
    out: &mut impl Write,
    metric: &str,
    upstream: Up<'_>,
    p: &PeerSnapshot,
) -> fmt::Result {
    out.write_str(P)?;
    out.write_str(metric)?;
    out.write_str("{upstream=\"")?;
    upstream_label(out, upstream)?;
    out.write_str("\",peer=\"")?;
    label(out, &p.name)?;
    out.write_char('"')
}

fn histogram(out: &mut impl Write, upstream: Up<'_>, h: &Histogram) -> fmt::Result {
    let mut total = 0;
    for (i, n) in h.cumulative().enumerate() {
        write!(out, "{P}probe_duration_seconds_bucket{{upstream=\"")?;
        upstream_label(out, upstream)?;
        out.write_str("\",le=\"")?;
        match BUCKETS_US.get(i) {
            Some(&le) => write_decimal(out, le, 6, 0)?,
            None => out.write_str("+Inf")?,
        }
        writeln!(out, "\"}} {n}")?;
        total = n;
    }
    write!(out, "{P}probe_duration_seconds_sum{{upstream=\"")?;
    upstream_label(out, upstream)?;
    out.write_str("\"} ")?;
    write_decimal(out, h.sum_us, 6, 0)?;
    // `_count` repeats the `+Inf` bucket, so the two always agree.
    write!(out, "\n{P}probe_duration_seconds_count{{upstream=\"")?;
    upstream_label(out, upstream)?;
    writeln!(out, "\"}} {total}")
}

/// An upstream as its samples label it: `upstream="NAME"`, and `kind="stream"` after it for a
/// stream upstream (http series keep the labels they always had).
#[derive(Clone, Copy)]
struct Up<'a> {
    name: &'a str,
    stream: bool,
}

impl<'a> Up<'a> {
    fn of(u: &'a UpstreamSnapshot) -> Up<'a> {
        Up {
            name: &u.name,
            stream: u.stream,
        }
    }
}

/// Writes the upstream's label value (the caller wrote `upstream="` and closes the quote).
fn upstream_label(out: &mut impl Write, up: Up<'_>) -> fmt::Result {
    label(out, up.name)?;
    if up.stream {
        out.write_str("\",kind=\"stream")?;
    }
    Ok(())
}

/// Writes a label value escaped per the exposition format: `\` `"` and newline.
fn label(out: &mut impl Write, s: &str) -> fmt::Result {
    if !s.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        return out.write_str(s);
    }
    write_escaped(out, s, |c| match c {
        '\\' => Some("\\\\"),
        '"' => Some("\\\""),
        '\n' => Some("\\n"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panic::PanicRule;
    use crate::render::fixtures::peer;
    use crate::render::PanicSnapshot;

    fn render(snap: &Snapshot) -> String {
        let mut s = String::new();
        render_prometheus(&mut s, snap).unwrap();
        s
    }

    const HEADERS: [&str; 13] = [
        "# HELP nginx_upstream_status_info The running status of nginx upstream\n\
         # TYPE nginx_upstream_status_info gauge\n",
        "# HELP nginx_upstream_healthcheck_peer_up Whether the peer is up for the balancer (1) or down (0).\n\
         # TYPE nginx_upstream_healthcheck_peer_up gauge\n",
        "# HELP nginx_upstream_healthcheck_peer_manual_down Whether the peer is forced down at run time (1) or not (0).\n\
         # TYPE nginx_upstream_healthcheck_peer_manual_down gauge\n",
        "# HELP nginx_upstream_healthcheck_checks_total Health check probes completed.\n\
         # TYPE nginx_upstream_healthcheck_checks_total counter\n",
        "# HELP nginx_upstream_healthcheck_failures_total Failed health check probes by reason.\n\
         # TYPE nginx_upstream_healthcheck_failures_total counter\n",
        "# HELP nginx_upstream_healthcheck_transitions_total Changes of the health verdict, by the state changed to.\n\
         # TYPE nginx_upstream_healthcheck_transitions_total counter\n",
        "# HELP nginx_upstream_healthcheck_last_check_timestamp_seconds Unix time the last probe ended.\n\
         # TYPE nginx_upstream_healthcheck_last_check_timestamp_seconds gauge\n",
        "# HELP nginx_upstream_healthcheck_last_duration_seconds Duration of the last probe.\n\
         # TYPE nginx_upstream_healthcheck_last_duration_seconds gauge\n",
        "# HELP nginx_upstream_healthcheck_last_change_timestamp_seconds Unix time of the last change of the health verdict.\n\
         # TYPE nginx_upstream_healthcheck_last_change_timestamp_seconds gauge\n",
        "# HELP nginx_upstream_healthcheck_probe_duration_seconds Durations of the upstream's health check probes.\n\
         # TYPE nginx_upstream_healthcheck_probe_duration_seconds histogram\n",
        "# HELP nginx_upstream_healthcheck_probe_errors_total Probes that gave no verdict for a local reason.\n\
         # TYPE nginx_upstream_healthcheck_probe_errors_total counter\n",
        "# HELP nginx_upstream_healthcheck_upstream_panic Whether the upstream is in panic (1): too few primaries up, verdicts not applied.\n\
         # TYPE nginx_upstream_healthcheck_upstream_panic gauge\n",
        "# HELP nginx_upstream_healthcheck_panic_total Times the upstream entered panic.\n\
         # TYPE nginx_upstream_healthcheck_panic_total counter\n",
    ];

    #[test]
    fn empty_snapshot_has_every_family_header_and_nothing_else() {
        assert_eq!(render(&Snapshot::default()), HEADERS.concat());
    }

    #[test]
    fn golden_mixed_page() {
        let mut busy = PeerHealth::new(true);
        busy.checks = 120;
        busy.failures[Failure::Refused.index()] = 2;
        busy.failures[Failure::BadStatus.index()] = 1;
        busy.transitions_up = 1;
        busy.transitions_down = 2;
        busy.last_check_ms = 1_763_700_000_123;
        busy.last_duration_us = 400;
        busy.last_change_ms = 1_763_690_000_000;
        let mut hist = Histogram::default();
        hist.observe(400);
        hist.observe(3_000);
        hist.observe(20_000_000);
        let snap = Snapshot {
            upstreams: vec![
                UpstreamSnapshot {
                    name: "unknown.com".to_owned(),
                    checked: false,
                    primary: vec![PeerSnapshot {
                        name: "127.0.0.1:12366".to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "backend".to_owned(),
                    checked: true,
                    primary: vec![
                        PeerSnapshot {
                            health: Some(busy),
                            ..peer("127.0.0.1:8081", false)
                        },
                        PeerSnapshot {
                            manual_down: true,
                            ..peer("127.0.0.1:8082", true)
                        },
                    ],
                    backup: vec![peer("127.0.0.1:8083", true)],
                    probe_durations: Some(hist),
                    local_errors: Some(7),
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "dead".to_owned(),
                    checked: true,
                    primary: vec![peer("10.0.0.1:80", true)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let expected = [
            HEADERS[0],
            "nginx_upstream_status_info{name=\"unknown.com\",status=\"UP\"} 0\n",
            "nginx_upstream_status_info{name=\"unknown.com\",status=\"DOWN\"} 0\n",
            "nginx_upstream_status_info{name=\"unknown.com\",status=\"UNKNOWN\"} 1\n",
            "nginx_upstream_status_info{name=\"backend\",endpoint=\"127.0.0.1:8081\",status=\"UP\",role=\"PRIMARY\"} 1\n",
            "nginx_upstream_status_info{name=\"backend\",endpoint=\"127.0.0.1:8081\",status=\"DOWN\",role=\"PRIMARY\"} 0\n",
            "nginx_upstream_status_info{name=\"backend\",endpoint=\"127.0.0.1:8082\",status=\"UP\",role=\"PRIMARY\"} 0\n",
            "nginx_upstream_status_info{name=\"backend\",endpoint=\"127.0.0.1:8082\",status=\"DOWN\",role=\"PRIMARY\"} 1\n",
            "nginx_upstream_status_info{name=\"backend\",endpoint=\"127.0.0.1:8083\",status=\"UP\",role=\"BACKUP\"} 0\n",
            "nginx_upstream_status_info{name=\"backend\",endpoint=\"127.0.0.1:8083\",status=\"DOWN\",role=\"BACKUP\"} 1\n",
            "nginx_upstream_status_info{name=\"backend\",status=\"UP\"} 1\n",
            "nginx_upstream_status_info{name=\"backend\",status=\"DOWN\"} 0\n",
            "nginx_upstream_status_info{name=\"backend\",status=\"UNKNOWN\"} 0\n",
            "nginx_upstream_status_info{name=\"dead\",endpoint=\"10.0.0.1:80\",status=\"UP\",role=\"PRIMARY\"} 0\n",
            "nginx_upstream_status_info{name=\"dead\",endpoint=\"10.0.0.1:80\",status=\"DOWN\",role=\"PRIMARY\"} 1\n",
            "nginx_upstream_status_info{name=\"dead\",status=\"UP\"} 0\n",
            "nginx_upstream_status_info{name=\"dead\",status=\"DOWN\"} 1\n",
            "nginx_upstream_status_info{name=\"dead\",status=\"UNKNOWN\"} 0\n",
            HEADERS[1],
            "nginx_upstream_healthcheck_peer_up{upstream=\"backend\",peer=\"127.0.0.1:8081\",role=\"primary\"} 1\n",
            "nginx_upstream_healthcheck_peer_up{upstream=\"backend\",peer=\"127.0.0.1:8082\",role=\"primary\"} 0\n",
            "nginx_upstream_healthcheck_peer_up{upstream=\"backend\",peer=\"127.0.0.1:8083\",role=\"backup\"} 0\n",
            "nginx_upstream_healthcheck_peer_up{upstream=\"dead\",peer=\"10.0.0.1:80\",role=\"primary\"} 0\n",
            HEADERS[2],
            "nginx_upstream_healthcheck_peer_manual_down{upstream=\"backend\",peer=\"127.0.0.1:8081\"} 0\n",
            "nginx_upstream_healthcheck_peer_manual_down{upstream=\"backend\",peer=\"127.0.0.1:8082\"} 1\n",
            "nginx_upstream_healthcheck_peer_manual_down{upstream=\"backend\",peer=\"127.0.0.1:8083\"} 0\n",
            "nginx_upstream_healthcheck_peer_manual_down{upstream=\"dead\",peer=\"10.0.0.1:80\"} 0\n",
            HEADERS[3],
            "nginx_upstream_healthcheck_checks_total{upstream=\"backend\",peer=\"127.0.0.1:8081\"} 120\n",
            "nginx_upstream_healthcheck_checks_total{upstream=\"backend\",peer=\"127.0.0.1:8082\"} 0\n",
            "nginx_upstream_healthcheck_checks_total{upstream=\"backend\",peer=\"127.0.0.1:8083\"} 0\n",
            "nginx_upstream_healthcheck_checks_total{upstream=\"dead\",peer=\"10.0.0.1:80\"} 0\n",
            HEADERS[4],
            "nginx_upstream_healthcheck_failures_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",reason=\"refused\"} 2\n",
            "nginx_upstream_healthcheck_failures_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",reason=\"timeout\"} 0\n",
            "nginx_upstream_healthcheck_failures_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",reason=\"reset\"} 0\n",
            "nginx_upstream_healthcheck_failures_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",reason=\"closed\"} 0\n",
            "nginx_upstream_healthcheck_failures_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",reason=\"bad_response\"} 0\n",
            "nginx_upstream_healthcheck_failures_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",reason=\"bad_status\"} 1\n",
        ]
        .concat();
        let s = render(&snap);
        assert!(s.starts_with(&expected), "got:\n{s}");
        let tail = [
            HEADERS[5],
            "nginx_upstream_healthcheck_transitions_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",to=\"up\"} 1\n",
            "nginx_upstream_healthcheck_transitions_total{upstream=\"backend\",peer=\"127.0.0.1:8081\",to=\"down\"} 2\n",
        ]
        .concat();
        assert!(s.contains(&tail), "got:\n{s}");
        let tail = [
            HEADERS[6],
            "nginx_upstream_healthcheck_last_check_timestamp_seconds{upstream=\"backend\",peer=\"127.0.0.1:8081\"} 1763700000.123\n",
            HEADERS[7],
            "nginx_upstream_healthcheck_last_duration_seconds{upstream=\"backend\",peer=\"127.0.0.1:8081\"} 0.0004\n",
            HEADERS[8],
            "nginx_upstream_healthcheck_last_change_timestamp_seconds{upstream=\"backend\",peer=\"127.0.0.1:8081\"} 1763690000\n",
            HEADERS[9],
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.001\"} 1\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.0025\"} 1\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.005\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.01\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.025\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.05\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.1\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.25\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"0.5\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"1\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"2.5\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"5\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"10\"} 2\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_bucket{upstream=\"backend\",le=\"+Inf\"} 3\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_sum{upstream=\"backend\"} 20.0034\n",
            "nginx_upstream_healthcheck_probe_duration_seconds_count{upstream=\"backend\"} 3\n",
            HEADERS[10],
            "nginx_upstream_healthcheck_probe_errors_total{upstream=\"backend\",reason=\"local\"} 7\n",
            HEADERS[11],
            HEADERS[12],
        ]
        .concat();
        assert!(s.ends_with(&tail), "got:\n{s}");
        assert!(!s.contains("unknown.com\",peer"));
        assert!(!s.contains("12366"));
        assert_eq!(s.matches("reason=\"refused\"").count(), 4);
        assert_eq!(s.matches("to=\"down\"").count(), 4);
    }

    #[test]
    fn tls_and_mismatch_reasons_appear_only_where_a_check_can_fail_so() {
        let up = |name: &str, tls, matched| UpstreamSnapshot {
            name: name.to_owned(),
            checked: true,
            primary: vec![peer("a:1", false)],
            tls,
            matched,
            ..Default::default()
        };
        let snap = Snapshot {
            upstreams: vec![
                up("plain", false, false),
                up("secure", true, false),
                up("matched", false, true),
            ],
            ..Default::default()
        };
        let s = render(&snap);
        let reasons = |upstream: &str| -> Vec<&str> {
            s.lines()
                .filter(|l| l.contains(&format!("failures_total{{upstream=\"{upstream}\"")))
                .filter_map(|l| l.split("reason=\"").nth(1)?.split('"').next())
                .collect()
        };
        let basic = [
            "refused",
            "timeout",
            "reset",
            "closed",
            "bad_response",
            "bad_status",
        ];
        assert_eq!(reasons("plain"), basic);
        let mut tls = basic.to_vec();
        tls.extend(["tls_handshake", "tls_verify"]);
        assert_eq!(reasons("secure"), tls);
        let mut matched = basic.to_vec();
        matched.push("mismatch");
        assert_eq!(reasons("matched"), matched);
    }

    #[test]
    fn label_values_are_escaped() {
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "a\\b\"c\nd".to_owned(),
                checked: true,
                primary: vec![peer("p\"\\\n\u{e9}", false)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap);
        assert!(s.contains(
            "nginx_upstream_status_info{name=\"a\\\\b\\\"c\\nd\",endpoint=\"p\\\"\\\\\\n\u{e9}\",status=\"UP\",role=\"PRIMARY\"} 1\n"
        ));
        assert!(s.contains(
            "nginx_upstream_healthcheck_checks_total{upstream=\"a\\\\b\\\"c\\nd\",peer=\"p\\\"\\\\\\n\u{e9}\"} 0\n"
        ));
        // Every line is a comment or a sample; no raw newline leaked into a label.
        for line in s.lines() {
            assert!(
                line.starts_with('#') || line.starts_with("nginx_upstream_"),
                "{line}"
            );
        }
    }

    #[test]
    fn duplicate_peers_and_upstreams_are_emitted_once() {
        let snap = Snapshot {
            upstreams: vec![
                UpstreamSnapshot {
                    name: "u".to_owned(),
                    checked: true,
                    primary: vec![peer("a:1", false), peer("a:1", true)],
                    backup: vec![peer("a:1", true), peer("b:2", true)],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "u".to_owned(),
                    checked: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let s = render(&snap);
        let mut seen = std::collections::HashSet::new();
        for line in s.lines().filter(|l| !l.starts_with('#')) {
            let series = line.rsplit_once(' ').unwrap().0;
            assert!(seen.insert(series.to_owned()), "duplicate series {series}");
        }
        assert!(s.contains("peer_up{upstream=\"u\",peer=\"a:1\",role=\"primary\"} 1\n"));
        assert!(s.contains("peer_up{upstream=\"u\",peer=\"b:2\",role=\"backup\"} 0\n"));
        assert_eq!(s.matches("peer_up{").count(), 2);
        assert!(s.contains("nginx_upstream_status_info{name=\"u\",status=\"UP\"} 1\n"));
        assert!(!s.contains("UNKNOWN\"} 1"));
    }

    #[test]
    fn never_checked_peers_have_no_time_samples() {
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "u".to_owned(),
                checked: true,
                primary: vec![peer("a:1", false)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap);
        assert!(!s.contains("last_check_timestamp_seconds{"));
        assert!(!s.contains("last_duration_seconds{"));
        assert!(!s.contains("last_change_timestamp_seconds{"));
        assert!(!s.contains("probe_duration_seconds_bucket"));
        assert!(s.contains("checks_total{upstream=\"u\",peer=\"a:1\"} 0\n"));
    }

    /// A string whose comparisons are counted: the work of de-duplication.
    struct Counted<'a>(&'a str, &'a core::cell::Cell<usize>);

    impl core::hash::Hash for Counted<'_> {
        fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    impl PartialEq for Counted<'_> {
        fn eq(&self, other: &Self) -> bool {
            self.1.set(self.1.get() + 1);
            self.0 == other.0
        }
    }
    impl Eq for Counted<'_> {}

    #[test]
    fn de_duplication_compares_each_name_about_once() {
        let names: Vec<String> = (0..100_000).map(|i| format!("10.0.{i}.1:80")).collect();
        let cmp = core::cell::Cell::new(0);
        // Every name twice: each second copy is found by one comparison or a few.
        let items = names.iter().chain(&names).map(|n| Counted(n, &cmp));
        let first = first_occurrences(items);
        assert_eq!(first.iter().filter(|&&f| f).count(), names.len());
        assert!(first[..names.len()].iter().all(|&f| f));
        assert!(
            cmp.get() >= names.len() && cmp.get() <= 3 * names.len(),
            "{} comparisons for {} names",
            cmp.get(),
            2 * names.len()
        );
    }

    fn fleet(upstreams: usize, peers: usize) -> Snapshot {
        let mut h = PeerHealth::new(true);
        h.last_check_ms = 1_763_700_000_123;
        h.last_change_ms = 1_763_690_000_000;
        Snapshot {
            upstreams: (0..upstreams)
                .map(|u| UpstreamSnapshot {
                    name: format!("up{u}"),
                    checked: true,
                    primary: (0..peers)
                        .map(|p| PeerSnapshot {
                            health: Some(h),
                            ..peer(&format!("10.{}.{}.{}:80", u % 256, p / 256, p % 256), false)
                        })
                        .collect(),
                    probe_durations: Some(Histogram::default()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn traffic_families_cover_counted_upstreams_checked_or_not() {
        let mut t = crate::traffic::Traffic {
            requests: 7,
            responses: [0, 4, 0, 1, 1],
            failed_attempts: 2,
            ..Default::default()
        };
        t.response_times.observe(1_500);
        t.response_times.observe(30_000);
        let counted = UpstreamSnapshot {
            name: "plain".into(),
            primary: vec![PeerSnapshot {
                traffic: Some(t),
                ..peer("127.0.0.1:8081", false)
            }],
            ..Default::default()
        };
        let quiet = UpstreamSnapshot {
            name: "quiet".into(),
            primary: vec![peer("127.0.0.1:8082", false)],
            ..Default::default()
        };
        let snap = Snapshot {
            upstreams: vec![counted, quiet],
            ..Default::default()
        };
        let mut page = String::new();
        render_prometheus(&mut page, &snap).unwrap();
        let samples: Vec<&str> = page
            .lines()
            .filter(|l| {
                l.starts_with("nginx_upstream_healthcheck_peer_re")
                    || l.contains("failed_attempts_total{")
            })
            .filter(|l| !l.contains("_bucket"))
            .collect();
        let l = r#"{upstream="plain",peer="127.0.0.1:8081""#;
        let want: Vec<String> = vec![
            format!("nginx_upstream_healthcheck_peer_requests_total{l}}} 7"),
            format!("nginx_upstream_healthcheck_peer_responses_total{l},code=\"1xx\"}} 0"),
            format!("nginx_upstream_healthcheck_peer_responses_total{l},code=\"2xx\"}} 4"),
            format!("nginx_upstream_healthcheck_peer_responses_total{l},code=\"3xx\"}} 0"),
            format!("nginx_upstream_healthcheck_peer_responses_total{l},code=\"4xx\"}} 1"),
            format!("nginx_upstream_healthcheck_peer_responses_total{l},code=\"5xx\"}} 1"),
            format!("nginx_upstream_healthcheck_peer_failed_attempts_total{l}}} 2"),
            format!("nginx_upstream_healthcheck_peer_response_seconds_sum{l}}} 0.0315"),
            format!("nginx_upstream_healthcheck_peer_response_seconds_count{l}}} 2"),
        ];
        assert_eq!(samples, want);
        assert!(page.contains(&format!(
            "nginx_upstream_healthcheck_peer_response_seconds_bucket{l},le=\"0.0025\"}} 1\n"
        )));
        assert!(page.contains(&format!(
            "nginx_upstream_healthcheck_peer_response_seconds_bucket{l},le=\"+Inf\"}} 2\n"
        )));
        for family in [
            "peer_requests_total counter",
            "peer_response_seconds histogram",
        ] {
            assert!(page.contains(&format!("# TYPE nginx_upstream_healthcheck_{family}\n")));
        }
        assert!(
            !page.contains("quiet\",peer"),
            "an upstream without counting has no samples"
        );
        assert_eq!(
            page.matches("# TYPE").count(),
            Family::ALL.len() - 1,
            "each family once, but passive ejections: no upstream has passive checks"
        );
    }

    /// The same 100,000 peers as 1,000 upstreams of 100 and as one upstream of 100,000: each
    /// upstream's state is taken once per family, and the page has a fixed number of lines
    /// per peer and per upstream, so the work is linear in peers whatever their grouping.
    #[test]
    fn a_fleet_page_is_linear_in_peers_however_grouped() {
        let per_peer = 2 + 1 + 1 + 1 + Failure::possible(false, false).count() + 2 + 3;
        let per_upstream = 3 + BUCKETS_US.len() + 3;
        for (upstreams, peers) in [(1_000, 100), (1, 100_000)] {
            let snap = fleet(upstreams, peers);
            let names: Vec<&str> = snap.upstreams.iter().map(|u| u.name.as_str()).collect();
            let mut fills = vec![0usize; upstreams];
            let mut page = String::new();
            prometheus_page(&mut page, &names, |k, u| {
                fills[k] += 1;
                u.clone_from(&snap.upstreams[k]);
            })
            .unwrap();
            // Without traffic counting, its families are left out altogether.
            let families = Family::ALL
                .iter()
                .filter(|&&f| !f.is_traffic() && f != Family::PassiveEjectionsTotal)
                .count();
            assert!(fills.iter().all(|&n| n == families), "{upstreams}x{peers}");
            let samples = page.lines().filter(|l| !l.starts_with('#')).count();
            assert_eq!(
                samples,
                upstreams * (peers * per_peer + per_upstream),
                "{upstreams}x{peers}"
            );
            assert_eq!(page.lines().count() - samples, 2 * families);
        }
    }

    #[test]
    fn every_sample_follows_its_family_header() {
        let mut hist = Histogram::default();
        hist.observe(1);
        let snap = Snapshot {
            upstreams: vec![
                UpstreamSnapshot {
                    name: "x".to_owned(),
                    checked: true,
                    primary: vec![peer("a:1", false)],
                    backup: vec![peer("b:1", true)],
                    probe_durations: Some(hist),
                    local_errors: Some(0),
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "y".to_owned(),
                    checked: true,
                    primary: vec![peer("c:1", false)],
                    probe_durations: Some(hist),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let s = render(&snap);
        let mut families: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in s.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_owned();
                assert!(!families.contains(&current), "family {current} twice");
                families.push(current.clone());
            } else if !line.starts_with('#') {
                let name = line.split('{').next().unwrap();
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|_| current.ends_with("_seconds") && current.contains("probe"))
                    .unwrap_or(name);
                assert_eq!(base, current, "{line}");
            }
        }
        assert_eq!(families.len(), 13);
    }

    #[test]
    fn panic_gauge_and_counter_per_checked_upstream() {
        let up = |name: &str, panic: Option<PanicSnapshot>| UpstreamSnapshot {
            name: name.to_owned(),
            checked: panic.is_some(),
            primary: vec![peer("a:1", true)],
            panic,
            ..Default::default()
        };
        let rule = PanicRule {
            threshold: 50,
            primaries: 1,
        };
        let snap = Snapshot {
            upstreams: vec![
                up(
                    "in\"panic",
                    Some(PanicSnapshot {
                        active: true,
                        entered: 3,
                        up: 0,
                        rule: Some(rule),
                    }),
                ),
                up("calm", Some(PanicSnapshot::default())),
                up("unchecked", None),
            ],
            ..Default::default()
        };
        let s = render(&snap);
        let want = [
            HEADERS[11],
            "nginx_upstream_healthcheck_upstream_panic{upstream=\"in\\\"panic\"} 1\n",
            "nginx_upstream_healthcheck_upstream_panic{upstream=\"calm\"} 0\n",
            HEADERS[12],
            "nginx_upstream_healthcheck_panic_total{upstream=\"in\\\"panic\"} 3\n",
            "nginx_upstream_healthcheck_panic_total{upstream=\"calm\"} 0\n",
        ]
        .concat();
        assert!(s.ends_with(&want), "got:\n{s}");
    }
}
