//! The HTML status page: one self-contained document, inline CSS, no scripts or external assets.

use core::fmt::{self, Write};

use super::num::write_decimal;
use super::{write_escaped, HaMode, PeerSnapshot, Snapshot, UpstreamSnapshot};

const STYLE: &str = "\
body{font-family:sans-serif;margin:1em}\
table.upstream{border-collapse:collapse;margin:1em 0;width:100%;max-width:64em}\
caption{text-align:left;font-weight:bold;padding:.3em 0}\
th,td{border:1px solid #999;padding:.2em .6em;text-align:left}\
th{background:#eee}\
tr.up td{background:#c8f0c8}\
tr.down td{background:#f4c0c0}\
tr.panic td{background:#f8e0a0}\
tr.unchecked td{background:#ddd}\
td.num{text-align:right}";

/// Writes the page; `refresh` adds `<meta http-equiv="refresh" content="N">`.
pub fn render_html(out: &mut impl Write, snap: &Snapshot, refresh: Option<u32>) -> fmt::Result {
    let mut summary = Summary::default();
    for u in &snap.upstreams {
        summary.add(u);
    }
    html_begin(out, refresh, snap.ha_mode, &summary)?;
    for u in &snap.upstreams {
        html_upstream(out, snap.now_ms, u)?;
    }
    html_end(out)
}

/// The counts of the page's summary line, gathered upstream by upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub up: usize,
    pub down: usize,
}

impl Summary {
    /// Counts the peers of a checked upstream.
    pub fn add(&mut self, u: &UpstreamSnapshot) {
        if !u.checked {
            return;
        }
        for p in u.primary.iter().chain(&u.backup) {
            if matches!(state(p).0, "down" | "panic") {
                self.down += 1;
            } else {
                self.up += 1;
            }
        }
    }
}

/// The document up to the first table: head, title and the summary line.
pub fn html_begin(
    out: &mut impl Write,
    refresh: Option<u32>,
    ha_mode: HaMode,
    summary: &Summary,
) -> fmt::Result {
    out.write_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")?;
    if let Some(n) = refresh {
        writeln!(out, "<meta http-equiv=\"refresh\" content=\"{n}\">")?;
    }
    out.write_str("<title>Upstream health</title>\n<style>")?;
    out.write_str(STYLE)?;
    out.write_str("</style>\n</head>\n<body>\n<h1>Upstream health</h1>\n")?;
    summary_line(out, ha_mode, summary)
}

/// One upstream's table.
pub fn html_upstream(out: &mut impl Write, now_ms: u64, u: &UpstreamSnapshot) -> fmt::Result {
    upstream(out, now_ms, u)
}

/// Closes the document.
pub fn html_end(out: &mut impl Write) -> fmt::Result {
    out.write_str("</body>\n</html>\n")
}

/// `<p id="summary">5 checked peers: 3 up, 2 down; HA mode: Master</p>`
fn summary_line(out: &mut impl Write, ha_mode: HaMode, summary: &Summary) -> fmt::Result {
    let (up, down) = (summary.up, summary.down);
    let total = up + down;
    let s = if total == 1 { "" } else { "s" };
    write!(
        out,
        "<p id=\"summary\">{total} checked peer{s}: {up} up, {down} down"
    )?;
    if ha_mode != HaMode::Disabled {
        write!(out, "; HA mode: {}", ha_mode.as_str())?;
    }
    out.write_str("</p>\n")
}

fn upstream(out: &mut impl Write, now_ms: u64, u: &UpstreamSnapshot) -> fmt::Result {
    out.write_str("<table class=\"upstream\" data-upstream=\"")?;
    escape(out, &u.name)?;
    out.write_str("\">\n<caption>")?;
    escape(out, &u.name)?;
    if !u.checked {
        out.write_str(" (not checked)")?;
    }
    if let Some(p) = u.panic.filter(|p| p.active) {
        let (threshold, primaries) = p.rule.map_or((0, 0), |r| (r.threshold, r.primaries));
        write!(
            out,
            " (panic: {} of {primaries} primary peers up, below panic_threshold={threshold}%; \
             verdicts are not applied)",
            p.up
        )?;
    }
    out.write_str(
        "</caption>\n<thead><tr><th>Peer</th><th>Role</th><th>State</th><th>Last check</th>\
         <th>Last status</th><th>Last error</th><th>Checks</th><th>Failures</th>",
    )?;
    let traffic = u.counts_traffic();
    if traffic {
        out.write_str("<th>Requests/s</th><th>5xx</th>")?;
    }
    out.write_str("</tr></thead>\n<tbody>\n")?;
    for p in &u.primary {
        peer(out, now_ms, p, "primary", traffic)?;
    }
    for p in &u.backup {
        peer(out, now_ms, p, "backup", traffic)?;
    }
    out.write_str("</tbody>\n</table>\n")
}

/// The traffic cells of a row: requests per second and the share of 5xx responses since the
/// previous page this worker rendered (`-` on the first one, or without responses).
fn traffic_cells(out: &mut impl Write, p: &PeerSnapshot) -> fmt::Result {
    out.write_str("<td class=\"num\">")?;
    match &p.traffic_rate {
        Some(r) => write_decimal(out, r.milli_requests_per_s / 100, 1, 1)?,
        None => out.write_char('-')?,
    }
    out.write_str("</td><td class=\"num\">")?;
    match p.traffic_rate.and_then(|r| r.share_5xx_bp) {
        Some(bp) => {
            write_decimal(out, bp / 10, 1, 1)?;
            out.write_char('%')?;
        }
        None => out.write_char('-')?,
    }
    out.write_str("</td>")
}

/// The row's state class and the text of its State cell.
fn state(p: &PeerSnapshot) -> (&'static str, &'static str) {
    if p.manual_down {
        ("down", "DOWN (manual)")
    } else if p.config_down {
        ("down", "DOWN (config)")
    } else if p.health.is_none() {
        ("unchecked", "unchecked")
    } else if p.down {
        ("down", "DOWN")
    } else if p.health.is_some_and(|h| !h.is_up()) {
        // Failed its checks, but its upstream is in panic: nginx uses it.
        ("panic", "DOWN (in use: panic)")
    } else {
        ("up", "up")
    }
}

fn peer(
    out: &mut impl Write,
    now_ms: u64,
    p: &PeerSnapshot,
    role: &str,
    traffic: bool,
) -> fmt::Result {
    let (class, text) = state(p);
    write!(out, "<tr class=\"peer {class}\" data-peer=\"")?;
    escape(out, &p.name)?;
    write!(out, "\" data-state=\"{class}\"><td>")?;
    escape(out, &p.name)?;
    write!(out, "</td><td>{role}</td><td>{text}</td><td>")?;
    match &p.health {
        None => {
            out.write_str("-</td><td>-</td><td></td><td class=\"num\">-</td><td class=\"num\">-")?
        }
        Some(h) => {
            if h.last_check_ms == 0 {
                out.write_str("never")?;
            } else {
                // Tenths of a second, rounded; a clock step back shows 0.0.
                let tenths = now_ms.saturating_sub(h.last_check_ms).saturating_add(50) / 100;
                write!(out, "{}.{} s ago", tenths / 10, tenths % 10)?;
            }
            out.write_str("</td><td>")?;
            match h.last_status() {
                Some(s) => write!(out, "{s}")?,
                None => out.write_char('-')?,
            }
            out.write_str("</td><td>")?;
            if let Some(f) = h.last_error() {
                // Fixed ASCII descriptions, escaped all the same.
                escape(out, &f.to_string())?;
                if let Some(detail) = &p.last_error_detail {
                    out.write_str(": ")?;
                    escape(out, detail)?;
                }
            }
            write!(
                out,
                "</td><td class=\"num\">{}</td><td class=\"num\">{}",
                h.checks,
                h.failures_total()
            )?;
        }
    }
    out.write_str("</td>")?;
    if traffic {
        traffic_cells(out, p)?;
    }
    out.write_str("</tr>\n")
}

/// Writes `s` with `& < > " '` replaced by entities, safe in text and quoted attributes.
fn escape(out: &mut impl Write, s: &str) -> fmt::Result {
    write_escaped(out, s, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&#39;"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::PeerHealth;
    use crate::outcome::Failure;
    use crate::panic::PanicRule;
    use crate::render::fixtures::peer;
    use crate::render::PanicSnapshot;

    #[test]
    fn counted_upstreams_gain_requests_per_second_and_5xx_share() {
        use crate::traffic::{Traffic, TrafficRate};
        let counted = |rate| PeerSnapshot {
            traffic: Some(Traffic::default()),
            traffic_rate: rate,
            ..peer("127.0.0.1:8081", false)
        };
        let snap = Snapshot {
            upstreams: vec![
                UpstreamSnapshot {
                    name: "counted".to_owned(),
                    primary: vec![
                        counted(Some(TrafficRate {
                            milli_requests_per_s: 12_345,
                            share_5xx_bp: Some(250),
                        })),
                        counted(None),
                    ],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "plain".to_owned(),
                    primary: vec![peer("127.0.0.1:8082", false)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let s = render(&snap, None);
        assert_eq!(s.matches("<th>Requests/s</th><th>5xx</th>").count(), 1);
        assert!(s.contains("<td class=\"num\">12.3</td><td class=\"num\">2.5%</td></tr>"));
        assert!(
            s.contains("<td class=\"num\">-</td><td class=\"num\">-</td></tr>"),
            "first page"
        );
    }

    fn render(snap: &Snapshot, refresh: Option<u32>) -> String {
        let mut s = String::new();
        render_html(&mut s, snap, refresh).unwrap();
        s
    }

    fn sample() -> Snapshot {
        let mut h = PeerHealth::new(false);
        h.checks = 42;
        h.failures[Failure::Refused.index()] = 7;
        h.failures[Failure::Timeout.index()] = 1;
        h.last_error = Failure::Refused as u8;
        h.last_check_ms = 1_000_000 - 1_234;
        let mut ok = PeerHealth::new(true);
        ok.checks = 10;
        ok.last_status = 200;
        ok.last_check_ms = 1_000_000 - 40;
        Snapshot {
            now_ms: 1_000_000,
            ha_mode: HaMode::Disabled,
            etcd: None,
            upstreams: vec![
                UpstreamSnapshot {
                    name: "backend".to_owned(),
                    checked: true,
                    primary: vec![
                        PeerSnapshot {
                            health: Some(ok),
                            ..peer("127.0.0.1:8081", false)
                        },
                        PeerSnapshot {
                            health: Some(h),
                            ..peer("127.0.0.1:8082", true)
                        },
                        PeerSnapshot {
                            manual_down: true,
                            ..peer("127.0.0.1:8083", true)
                        },
                    ],
                    backup: vec![
                        PeerSnapshot {
                            config_down: true,
                            ..peer("127.0.0.1:8084", true)
                        },
                        peer("127.0.0.1:8085", false),
                    ],
                    probe_durations: None,
                    local_errors: Some(0),
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "plain".to_owned(),
                    checked: false,
                    primary: vec![PeerSnapshot {
                        name: "10.0.0.1:80".to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn the_detail_of_a_failure_follows_its_kind_escaped() {
        let mut snap = sample();
        let p = &mut snap.upstreams[0].primary[1];
        p.last_error_detail = Some("body ~ \"<ok>\"".to_owned());
        let page = render(&snap, None);
        assert!(
            page.contains("<td>connection refused: body ~ &quot;&lt;ok&gt;&quot;</td>"),
            "{page}"
        );
    }

    #[test]
    fn document_skeleton() {
        let s = render(&Snapshot::default(), None);
        assert!(s.starts_with("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Upstream health</title>\n<style>"));
        assert!(s.ends_with("</body>\n</html>\n"));
        assert!(s.contains("<p id=\"summary\">0 checked peers: 0 up, 0 down</p>\n"));
        assert!(!s.contains("refresh"));
        assert!(!s.contains("<script"));
        assert!(!s.contains("http://") && !s.contains("https://") && !s.contains(" src="));
        assert!(!s.contains("<table"));
    }

    #[test]
    fn refresh_meta() {
        let s = render(&Snapshot::default(), Some(5));
        assert!(s.contains(
            "<meta charset=\"utf-8\">\n<meta http-equiv=\"refresh\" content=\"5\">\n<title>"
        ));
    }

    #[test]
    fn summary_counts_checked_peers_only() {
        let s = render(&sample(), None);
        assert!(s.contains("<p id=\"summary\">5 checked peers: 2 up, 3 down</p>"));
        let mut one = sample();
        one.upstreams[0].primary.truncate(1);
        one.upstreams[0].backup.clear();
        one.ha_mode = HaMode::Master;
        let s = render(&one, None);
        assert!(s.contains("<p id=\"summary\">1 checked peer: 1 up, 0 down; HA mode: Master</p>"));
        one.ha_mode = HaMode::Slaver;
        assert!(render(&one, None).contains("; HA mode: Slaver</p>"));
    }

    #[test]
    fn golden_rows_and_classes() {
        let s = render(&sample(), None);
        let expected = "\
<table class=\"upstream\" data-upstream=\"backend\">
<caption>backend</caption>
<thead><tr><th>Peer</th><th>Role</th><th>State</th><th>Last check</th><th>Last status</th><th>Last error</th><th>Checks</th><th>Failures</th></tr></thead>
<tbody>
<tr class=\"peer up\" data-peer=\"127.0.0.1:8081\" data-state=\"up\"><td>127.0.0.1:8081</td><td>primary</td><td>up</td><td>0.0 s ago</td><td>200</td><td></td><td class=\"num\">10</td><td class=\"num\">0</td></tr>
<tr class=\"peer down\" data-peer=\"127.0.0.1:8082\" data-state=\"down\"><td>127.0.0.1:8082</td><td>primary</td><td>DOWN</td><td>1.2 s ago</td><td>-</td><td>connection refused</td><td class=\"num\">42</td><td class=\"num\">8</td></tr>
<tr class=\"peer down\" data-peer=\"127.0.0.1:8083\" data-state=\"down\"><td>127.0.0.1:8083</td><td>primary</td><td>DOWN (manual)</td><td>never</td><td>-</td><td></td><td class=\"num\">0</td><td class=\"num\">0</td></tr>
<tr class=\"peer down\" data-peer=\"127.0.0.1:8084\" data-state=\"down\"><td>127.0.0.1:8084</td><td>backup</td><td>DOWN (config)</td><td>never</td><td>-</td><td></td><td class=\"num\">0</td><td class=\"num\">0</td></tr>
<tr class=\"peer up\" data-peer=\"127.0.0.1:8085\" data-state=\"up\"><td>127.0.0.1:8085</td><td>backup</td><td>up</td><td>never</td><td>-</td><td></td><td class=\"num\">0</td><td class=\"num\">0</td></tr>
</tbody>
</table>
<table class=\"upstream\" data-upstream=\"plain\">
<caption>plain (not checked)</caption>
<thead><tr><th>Peer</th><th>Role</th><th>State</th><th>Last check</th><th>Last status</th><th>Last error</th><th>Checks</th><th>Failures</th></tr></thead>
<tbody>
<tr class=\"peer unchecked\" data-peer=\"10.0.0.1:80\" data-state=\"unchecked\"><td>10.0.0.1:80</td><td>primary</td><td>unchecked</td><td>-</td><td>-</td><td></td><td class=\"num\">-</td><td class=\"num\">-</td></tr>
</tbody>
</table>
</body>
</html>
";
        assert!(s.ends_with(expected), "got:\n{s}");
        assert!(s.contains("tr.up td{background:#c8f0c8}"));
        assert!(s.contains("tr.down td{background:#f4c0c0}"));
        assert!(s.contains("tr.unchecked td{background:#ddd}"));
    }

    #[test]
    fn an_upstream_in_panic_names_it_and_its_failed_peers_are_in_use() {
        let failed = PeerSnapshot {
            down: false,
            ..peer("127.0.0.1:8082", true)
        };
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "backend".to_owned(),
                checked: true,
                primary: vec![peer("127.0.0.1:8081", false), failed],
                panic: Some(PanicSnapshot {
                    active: true,
                    entered: 1,
                    up: 1,
                    rule: Some(PanicRule {
                        threshold: 60,
                        primaries: 2,
                    }),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap, None);
        assert!(
            s.contains(
                "<caption>backend (panic: 1 of 2 primary peers up, below panic_threshold=60%; \
                 verdicts are not applied)</caption>"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "<tr class=\"peer panic\" data-peer=\"127.0.0.1:8082\" data-state=\"panic\">\
                 <td>127.0.0.1:8082</td><td>primary</td><td>DOWN (in use: panic)</td>"
            ),
            "{s}"
        );
        assert!(s.contains("tr.panic td{background:#f8e0a0}"));
        assert!(s.contains("<p id=\"summary\">2 checked peers: 1 up, 1 down</p>"));
    }

    #[test]
    fn unchecked_config_down_peer_is_down() {
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "plain".to_owned(),
                primary: vec![PeerSnapshot {
                    name: "x".to_owned(),
                    config_down: true,
                    down: true,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap, None);
        assert!(s.contains("<tr class=\"peer down\" data-peer=\"x\" data-state=\"down\"><td>x</td><td>primary</td><td>DOWN (config)</td>"));
        assert!(s.contains("0 checked peers"));
    }

    #[test]
    fn everything_from_outside_is_escaped() {
        let nasty = "<b>&\"'x'\"</b>";
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: nasty.to_owned(),
                checked: true,
                primary: vec![peer(nasty, false)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap, None);
        let esc = "&lt;b&gt;&amp;&quot;&#39;x&#39;&quot;&lt;/b&gt;";
        assert!(s.contains(&format!("data-upstream=\"{esc}\">")));
        assert!(s.contains(&format!("<caption>{esc}</caption>")));
        assert!(s.contains(&format!("data-peer=\"{esc}\"")));
        assert!(s.contains(&format!("<td>{esc}</td>")));
        assert!(!s.contains("<b>"));
        assert!(!s.contains("'x"));
    }

    #[test]
    fn ages_round_to_tenths_and_survive_clock_steps() {
        let mut snap = sample();
        let h = snap.upstreams[0].primary[0].health.as_mut().unwrap();
        h.last_check_ms = snap.now_ms + 5_000;
        let s = render(&snap, None);
        assert!(s.contains("<td>0.0 s ago</td>"));
        let h = snap.upstreams[0].primary[0].health.as_mut().unwrap();
        h.last_check_ms = snap.now_ms - 61_949;
        assert!(render(&snap, None).contains("<td>61.9 s ago</td>"));
    }

    #[test]
    fn write_errors_are_passed_on() {
        struct Full;
        impl Write for Full {
            fn write_str(&mut self, _: &str) -> fmt::Result {
                Err(fmt::Error)
            }
        }
        assert_eq!(render_html(&mut Full, &sample(), Some(1)), Err(fmt::Error));
    }
}
