//! A status page streamed upstream by upstream: each upstream's state is taken just before it
//! is written, so neither the whole state nor the whole page is ever held at once.

use core::fmt::{self, Write};

use super::html::{html_begin, html_end, html_upstream, Summary};
use super::json::{json_begin, json_end, json_streams_begin, json_upstream};
use super::prometheus::etcd_metrics;
use super::prometheus::PrometheusCursor;
use super::text::{text_begin, text_upstream};
use super::{EtcdStatus, HaMode, UpstreamSnapshot};
use crate::query::{keep_state, Format, StateFilter};

/// What a page shows besides the upstreams' own state.
#[derive(Clone, Copy, Debug)]
pub struct Page<'a> {
    pub format: Format,
    pub ha_mode: HaMode,
    /// `None` without `upstream_healthcheck_etcd`.
    pub etcd: Option<&'a EtcdStatus>,
    /// Unix time of the page in milliseconds.
    pub now_ms: u64,
    /// Seconds between reloads of the HTML page.
    pub refresh: Option<u32>,
    /// Only peers in this state.
    pub state: Option<StateFilter>,
    /// The upstreams shown, in order: http ones, then stream ones.
    pub names: &'a [&'a str],
    /// Where the stream upstreams start in `names`, when the stream module runs: the page then
    /// shows them too (text, JSON, Prometheus; the HTML page shows http upstreams only). `None`
    /// leaves the page exactly as without the stream module.
    pub streams_from: Option<usize>,
}

impl Page<'_> {
    /// The upstreams this page's format shows: all, but http ones only for HTML.
    fn shown(&self) -> usize {
        match (self.format, self.streams_from) {
            (Format::Html, Some(from)) => from.min(self.names.len()),
            _ => self.names.len(),
        }
    }
}

/// Writes the page; `fill(k, u)` puts the current state of the `k`-th upstream of
/// `page.names` into `u`, a buffer reused from one upstream to the next. Each upstream is
/// filled once (text, JSON), twice (HTML: the summary line comes first) or once per metric
/// family it has samples in (Prometheus): the work is linear in the number of peers.
pub fn render_page(
    out: &mut impl Write,
    page: &Page<'_>,
    mut fill: impl FnMut(usize, &mut UpstreamSnapshot),
) -> fmt::Result {
    let mut cursor = PageCursor::new(page);
    while cursor.write_next(out, page, &mut fill)? {}
    Ok(())
}

/// Where a page stands: it is written one part at a time (its head, one upstream, its end; for
/// Prometheus one family's header or one upstream's samples of a family), so the writer can
/// stop between parts, when the client is slow, and go on later.
#[derive(Debug)]
pub struct PageCursor {
    /// The next upstream; `None` before the head; `names.len()` for the end.
    next: Option<usize>,
    done: bool,
    u: UpstreamSnapshot,
    prometheus: Option<PrometheusCursor>,
    /// The JSON list of stream upstreams is open.
    streams_opened: bool,
}

impl PageCursor {
    pub fn new(page: &Page<'_>) -> PageCursor {
        PageCursor {
            next: None,
            done: false,
            u: UpstreamSnapshot::default(),
            streams_opened: false,
            prometheus: (page.format == Format::Prometheus)
                .then(|| PrometheusCursor::new(page.names, page.streams_from)),
        }
    }

    /// Peers the cursor's reused buffers have room for: the largest upstream it rendered.
    pub fn peers_held(&self) -> usize {
        let prometheus = self
            .prometheus
            .as_ref()
            .map_or(0, PrometheusCursor::peers_held);
        (self.u.primary.capacity() + self.u.backup.capacity()).max(prometheus)
    }

    /// Writes the next part, with `page` and `fill` as for `render_page` (the same on every
    /// call); false once the page is complete (nothing written then).
    pub fn write_next(
        &mut self,
        out: &mut impl Write,
        page: &Page<'_>,
        fill: &mut impl FnMut(usize, &mut UpstreamSnapshot),
    ) -> Result<bool, fmt::Error> {
        let mut take = |k: usize, u: &mut UpstreamSnapshot| {
            fill(k, u);
            if let Some(state) = page.state {
                keep_state(u, state);
            }
        };
        if let Some(p) = &mut self.prometheus {
            if p.write_next(out, &mut take)? {
                return Ok(true);
            }
            // The etcd families come last, once.
            if let Some(e) = page.etcd.filter(|_| !self.done) {
                self.done = true;
                etcd_metrics(out, e)?;
                return Ok(true);
            }
            return Ok(false);
        }
        if self.done {
            return Ok(false);
        }
        let n = page.shown();
        let Some(k) = self.next else {
            match page.format {
                Format::Text => text_begin(out, page.ha_mode, page.etcd)?,
                Format::Json => json_begin(out, page.ha_mode, page.etcd)?,
                _ => {
                    // The summary line counts every peer before the first table.
                    let mut summary = Summary::default();
                    for k in 0..n {
                        take(k, &mut self.u);
                        summary.add(&self.u);
                    }
                    html_begin(out, page.refresh, page.ha_mode, &summary)?;
                }
            }
            self.next = Some(0);
            return Ok(true);
        };
        let streams_from = page.streams_from.filter(|_| page.format == Format::Json);
        if streams_from.is_some_and(|from| k == from.min(n)) && !self.streams_opened {
            self.streams_opened = true;
            json_streams_begin(out)?;
        }
        if k == n {
            match page.format {
                Format::Json => json_end(out)?,
                Format::Html => html_end(out)?,
                _ => {}
            }
            self.done = true;
            return Ok(true);
        }
        take(k, &mut self.u);
        match page.format {
            Format::Text => text_upstream(out, k, &self.u)?,
            Format::Json => json_upstream(
                out,
                k - streams_from.filter(|&f| k >= f).unwrap_or(0),
                &self.u,
            )?,
            _ => html_upstream(out, page.now_ms, &self.u)?,
        }
        self.next = Some(k + 1);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::peer;
    use crate::render::html::render_html;
    use crate::render::json::render_json;
    use crate::render::prometheus::render_prometheus;
    use crate::render::text::render_text;
    use crate::render::{PeerSnapshot, Snapshot};

    fn sample() -> Snapshot {
        Snapshot {
            now_ms: 1_000_000,
            ha_mode: HaMode::Master,
            etcd: None,
            upstreams: vec![
                UpstreamSnapshot {
                    name: "a".to_owned(),
                    checked: true,
                    primary: vec![peer("1:1", false), peer("1:2", true)],
                    backup: vec![peer("1:3", false)],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "b".to_owned(),
                    checked: false,
                    primary: vec![PeerSnapshot {
                        name: "2:1".to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "c".to_owned(),
                    checked: true,
                    primary: vec![peer("3:1", true)],
                    ..Default::default()
                },
            ],
        }
    }

    /// The page streamed from `snap` with `format` and `state`, and how often each upstream was
    /// filled.
    fn stream(snap: &Snapshot, format: Format, state: Option<StateFilter>) -> (String, Vec<usize>) {
        let names: Vec<&str> = snap.upstreams.iter().map(|u| u.name.as_str()).collect();
        let page = Page {
            format,
            ha_mode: snap.ha_mode,
            etcd: snap.etcd.as_ref(),
            now_ms: snap.now_ms,
            refresh: Some(5),
            state,
            names: &names,
            streams_from: None,
        };
        let mut fills = vec![0; names.len()];
        let mut out = String::new();
        render_page(&mut out, &page, |k, u| {
            fills[k] += 1;
            u.clone_from(&snap.upstreams[k]);
        })
        .unwrap();
        (out, fills)
    }

    fn whole(snap: &Snapshot, format: Format) -> String {
        let mut out = String::new();
        match format {
            Format::Text => render_text(&mut out, snap),
            Format::Json => render_json(&mut out, snap),
            Format::Html => render_html(&mut out, snap, Some(5)),
            Format::Prometheus => render_prometheus(&mut out, snap),
        }
        .unwrap();
        out
    }

    #[test]
    fn the_etcd_link_on_every_format() {
        let mut snap = sample();
        snap.etcd = Some(EtcdStatus {
            connected: false,
            endpoint: "127.0.0.1:2379".into(),
            revision: 42,
            since_unix: 1_764_000_000,
            last_error: Some("connect() to 127.0.0.1:2379 failed (Connection refused)".into()),
            refused_keys: 0,
        });
        let (text, _) = stream(&snap, Format::Text, None);
        assert!(text.starts_with(
            "HA Mode: Master\netcd: disconnected (connect() to 127.0.0.1:2379 failed \
             (Connection refused))\n\nUpstream "
        ));
        assert_eq!(text, {
            let mut s = String::new();
            render_text(&mut s, &snap).unwrap();
            s
        });
        let (json, _) = stream(&snap, Format::Json, None);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["msg"]["etcd"],
            serde_json::json!({"connected": false, "endpoint": "127.0.0.1:2379", "revision": 42,
                "since": 1_764_000_000u64, "refused_keys": 0,
                "last_error": "connect() to 127.0.0.1:2379 failed (Connection refused)"})
        );
        let (prom, _) = stream(&snap, Format::Prometheus, None);
        assert!(prom.ends_with(
            "# HELP nginx_upstream_healthcheck_etcd_connected Whether the watch on etcd is in place (1) or not (0).\n\
             # TYPE nginx_upstream_healthcheck_etcd_connected gauge\n\
             nginx_upstream_healthcheck_etcd_connected 0\n\
             # HELP nginx_upstream_healthcheck_etcd_revision The etcd revision the state reflects.\n\
             # TYPE nginx_upstream_healthcheck_etcd_revision gauge\n\
             nginx_upstream_healthcheck_etcd_revision 42\n\
             # HELP nginx_upstream_healthcheck_etcd_refused_keys Keys under the etcd prefix that were refused.\n\
             # TYPE nginx_upstream_healthcheck_etcd_refused_keys gauge\n\
             nginx_upstream_healthcheck_etcd_refused_keys 0\n"
        ));
        assert_eq!(prom, {
            let mut s = String::new();
            render_prometheus(&mut s, &snap).unwrap();
            s
        });
        snap.etcd.as_mut().unwrap().connected = true;
        snap.ha_mode = HaMode::Disabled;
        let (text, _) = stream(&snap, Format::Text, None);
        assert!(text.starts_with("etcd: connected\n\nUpstream "));
        snap.etcd = None;
        let (json, _) = stream(&snap, Format::Json, None);
        assert!(!json.contains("etcd"));
    }

    #[test]
    fn streamed_pages_equal_whole_ones_with_each_upstream_taken_a_bounded_number_of_times() {
        let snap = sample();
        for (format, most) in [
            (Format::Text, 1),
            (Format::Json, 1),
            (Format::Html, 2),
            (Format::Prometheus, 13),
        ] {
            let (out, fills) = stream(&snap, format, None);
            assert_eq!(out, whole(&snap, format), "{format:?}");
            assert!(
                fills.iter().all(|&n| n >= 1 && n <= most),
                "{format:?} {fills:?}"
            );
        }
        // Prometheus takes an unchecked upstream once, for its status triple only.
        assert_eq!(stream(&snap, Format::Prometheus, None).1, [13, 1, 13]);
    }

    #[test]
    fn the_state_filter_applies_to_every_upstream_taken() {
        let snap = sample();
        for (state, down) in [(StateFilter::Up, false), (StateFilter::Down, true)] {
            let mut want = snap.clone();
            for u in &mut want.upstreams {
                u.primary.retain(|p| p.down == down);
                u.backup.retain(|p| p.down == down);
            }
            for format in [Format::Text, Format::Json, Format::Html, Format::Prometheus] {
                let (out, _) = stream(&snap, format, Some(state));
                assert_eq!(out, whole(&want, format), "{format:?} {state:?}");
            }
        }
    }

    /// The page of `snap` with its upstreams from `from` on being stream ones.
    fn with_streams(snap: &Snapshot, format: Format, from: usize) -> String {
        let names: Vec<&str> = snap.upstreams.iter().map(|u| u.name.as_str()).collect();
        let page = Page {
            format,
            ha_mode: HaMode::Disabled,
            now_ms: snap.now_ms,
            refresh: None,
            state: None,
            names: &names,
            streams_from: Some(from),
            etcd: None,
        };
        let mut out = String::new();
        render_page(&mut out, &page, |k, u| {
            u.clone_from(&snap.upstreams[k]);
            u.stream = k >= from;
        })
        .unwrap();
        out
    }

    #[test]
    fn stream_upstreams_follow_the_http_ones_in_each_format() {
        let mut snap = sample();
        snap.upstreams[2].name = "a".to_owned(); // a stream upstream named as an http one
        let text = with_streams(&snap, Format::Text, 2);
        assert!(text.contains("\nStream upstream a\n    Primary Peers\n        3:1 DOWN\n"));
        assert!(text.starts_with("Upstream a\n"));
        let json = with_streams(&snap, Format::Json, 2);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["msg"]["upstreams"].as_array().unwrap().len(), 2);
        assert_eq!(v["msg"]["stream_upstreams"][0]["name"], "a");
        let none = with_streams(&snap, Format::Json, 3);
        let v: serde_json::Value = serde_json::from_str(&none).unwrap();
        assert_eq!(v["msg"]["stream_upstreams"].as_array().unwrap().len(), 0);
        let prom = with_streams(&snap, Format::Prometheus, 2);
        assert!(prom.contains(
            "nginx_upstream_healthcheck_peer_up{upstream=\"a\",kind=\"stream\",peer=\"3:1\",role=\"primary\"} 0\n"
        ));
        assert!(prom.contains(
            "nginx_upstream_healthcheck_peer_up{upstream=\"a\",peer=\"1:1\",role=\"primary\"} 1\n"
        ));
        assert!(!prom.contains("nginx_upstream_status_info{name=\"a\",endpoint=\"3:1\""));
        let html = with_streams(&snap, Format::Html, 2);
        assert!(!html.contains("3:1"));
    }
}
