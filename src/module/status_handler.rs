//! The status content handler: each upstream's state taken in turn and streamed to the client.

use core::cell::RefCell;
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::Ordering;

use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_handle_write_event, ngx_http_finalize_request,
    ngx_http_request_empty_handler, ngx_pool_cleanup_add, NGX_DONE, NGX_HTTP_REQUEST_TIME_OUT,
};
use ngx::ffi::{
    ngx_chain_t, ngx_create_temp_buf, ngx_http_discard_request_body, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_int_t,
    ngx_list_push, ngx_rwlock_rlock, ngx_rwlock_unlock, ngx_str_t, ngx_table_elt_t, NGX_ERROR,
    NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK,
    NGX_OK,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};

use crate::control::ttl_left;
use crate::membership::Member;
use crate::module::clock::{now_msec, unix_msec};
use crate::module::etcd;
use crate::module::failure_detail::detail_text;
use crate::module::module_conf::MainConf;
use crate::module::peers::live_peers;
use crate::module::response_writer::{send_header, BodyWriter, Counter};
use crate::module::stream_status;
use crate::module::zone::{Slot, ZoneHeader, HA_MASTER, HA_SLAVER};
use crate::module::Module;
use crate::policy::PeerFacts;
use crate::query::{error_format, parse_status_query, unknown_upstream, Format, StateFilter};
use crate::render::json::render_json_error;
use crate::render::page::{render_page, Page, PageCursor};
use crate::render::{
    EtcdPeer, EtcdStatus, HaMode, PanicSnapshot, PassiveView, PeerSnapshot, UpstreamSnapshot,
};
use crate::slow_start::{factor_permille, ramp_elapsed, unscaled};
use crate::stream_zone::StreamZone;
use crate::traffic::{rate, TrafficRate, TrafficSample};
use rustc_hash::FxHashMap;

/// Takes the state of one upstream at a time: its shared slots copied under the zone lock
/// (held for that upstream only), nginx's peers as this worker sees them.
struct StateReader<'a> {
    main: &'a MainConf,
    /// The stream module's zone, when it runs: upstream `main.upstreams.len() + i` is its
    /// `i`-th stream upstream.
    stream: Option<&'static StreamZone>,
    header: Option<&'a ZoneHeader>,
    /// False on the HA standby: nothing is checked there.
    probing: bool,
    /// Monotonic now, for the ttls.
    now: u64,
    /// Unix now (ms), for slow start.
    now_unix: u64,
    /// The slots of the upstream being read, one per configured peer; reused.
    slots: Vec<Option<Slot>>,
    /// The members of those slots (`upstream_healthcheck_dynamic`); reused.
    members: Vec<Option<Member>>,
    /// Work out each counted peer's traffic since this worker's previous page that did (the
    /// HTML page's requests/s and 5xx share).
    rates: bool,
}

thread_local! {
    /// Each counted peer's traffic on the last two HTML pages this worker rendered (the
    /// earlier one, if any, and the latest), by peer key (stable across reloads).
    static LAST_SEEN: RefCell<FxHashMap<u64, (Option<TrafficSample>, TrafficSample)>> =
        RefCell::new(FxHashMap::default());
}

/// The traffic of peer `key` from this worker's previous HTML page to `now`'s, which it
/// records. A page takes an upstream more than once: within the same page (the same time),
/// the answer stays the same.
fn rate_since_last(key: u64, now: TrafficSample, peers: usize) -> Option<TrafficRate> {
    LAST_SEEN.with(|m| {
        let mut m = m.try_borrow_mut().ok()?;
        if m.len() > 2 * peers + 64 {
            m.clear(); // peers that a reload removed
        }
        let seen = m.entry(key).or_insert((None, now));
        if seen.1.at_ms != now.at_ms {
            *seen = (Some(seen.1), now);
        }
        rate(seen.0?, now)
    })
}

impl StateReader<'_> {
    /// Writes the state of upstream `ui` into `out`, reusing its buffers.
    fn fill(&mut self, ui: usize, out: &mut UpstreamSnapshot) {
        let Some(up) = self.main.upstreams.get(ui) else {
            if let Some(zone) = self.stream {
                stream_status::fill(zone, ui - self.main.upstreams.len(), self.now, out);
            }
            return;
        };
        out.stream = false;
        let mut record = None;
        self.slots.clear();
        if let Some(h) = self.header {
            let mut locked = h.lock();
            record = locked.upstreams().get(ui).copied();
            let all = locked.slots();
            self.slots
                .extend(up.peers.iter().map(|c| all.get(c.slot()).copied()));
            self.members.clear();
            if up.dynamic.is_some() {
                let members = locked.members();
                self.members.extend(
                    up.peers
                        .iter()
                        .map(|c| members.get(c.slot()).copied().filter(|_| c.reserved)),
                );
            }
        }
        let replaced = record.is_some_and(|r| r.replaced);
        let facts = PeerFacts {
            checked: up.check.is_some(),
            excluded: record.is_some_and(|r| r.excluded()),
            standby: !self.probing,
            ..PeerFacts::default()
        };
        let checked = facts.verdict_applies();
        out.name.clear();
        out.name.push_str(&up.name);
        out.checked = checked;
        out.probe_durations = record.filter(|_| checked).map(|r| r.probe_durations);
        out.local_errors = record.filter(|_| checked).map(|r| r.local_errors);
        out.tls = up
            .check
            .as_ref()
            .is_some_and(|c| c.params.check_type.is_tls());
        out.matched = up.check.as_ref().is_some_and(|c| c.matcher.is_some());
        out.passive = up.passive.is_some();
        out.panic = record.filter(|_| checked).map(|r| PanicSnapshot {
            active: r.panic.is_active(),
            entered: r.panic.entered,
            up: r.panic.up,
            rule: up.panic,
        });
        let panic = out.panic.is_some_and(|p| p.active);

        // SAFETY: uscf is valid for the cycle; its peer data is round-robin peers.
        let primary = unsafe { (*up.uscf).peer.data as *mut ngx_http_upstream_rr_peers_t };
        let (mut np, mut nb) = (0, 0);
        // SAFETY: primary is the uscf peer data read just above: null or round-robin peers of this cycle.
        for (i, (list, rr)) in unsafe { live_peers(primary) }.into_iter().enumerate() {
            // Free reserved peers, and static ones once etcd's replace them, are not shown.
            let member = self.members.get(i).copied().flatten();
            let reserved = up.peers.get(i).is_some_and(|c| c.reserved);
            if up.dynamic.is_some() && (member.is_some_and(|m| !m.used) || (!reserved && replaced))
            {
                continue;
            }
            let (peers, n) = if list == primary {
                (&mut out.primary, &mut np)
            } else {
                (&mut out.backup, &mut nb)
            };
            if peers.len() == *n {
                peers.push(PeerSnapshot::default());
            }
            let peer = &mut peers[*n];
            // SAFETY: list and rr are live; zone peers are read under the list's read lock.
            unsafe { read_peer(list, rr, peer) };
            peer.id = *n;
            *n += 1;
            let conf = up
                .peers
                .get(i)
                .filter(|c| c.reserved || *c.name == *peer.name);
            peer.etcd = up.dynamic.as_ref().map(|_| EtcdPeer {
                from_etcd: reserved,
                error: member.and_then(|m| m.error()).map(|e| e.to_string()),
            });
            peer.traffic = conf
                .filter(|_| up.traffic)
                .and_then(|c| self.header?.traffic(c.slot()))
                .map(|t| t.snapshot());
            let passive = conf
                .filter(|_| up.passive.is_some())
                .and_then(|c| self.header?.passive(c.slot()));
            peer.passive = passive.map(|p| PassiveView {
                ejections: p.ejections(),
                down_until_ms: match p.down_until_ms() {
                    0 => 0,
                    until => unix_msec().saturating_add(until.saturating_sub(self.now)),
                },
                probation: p.on_probation(self.now),
            });
            peer.traffic_rate = match (conf, &peer.traffic) {
                (Some(c), Some(t)) if self.rates => {
                    rate_since_last(c.key, t.sample(self.now), self.main.slots())
                }
                _ => None,
            };
            let slot = conf.and_then(|c| {
                peer.config_down = c.config_down;
                self.slots.get(i).copied().flatten()
            });
            // Weights as configured, not as scaled inside nginx for slow start.
            let slow_start = up.slow_start.as_ref().filter(|_| conf.is_some());
            // A peer from etcd ramps over its value's slow_start, or the upstream's.
            let duration_ms = slow_start.map(|ss| {
                member
                    .map(|m| m.slow_start_ms)
                    .filter(|&ms| ms > 0)
                    .unwrap_or(ss.duration_ms)
            });
            if let Some(ss) = slow_start {
                peer.weight = match member {
                    Some(m) => i64::from(m.weight),
                    None => ss.weights.get(i).copied().unwrap_or(peer.weight),
                };
                peer.current_weight = unscaled(peer.current_weight, ss.scale);
                peer.effective_weight = unscaled(peer.effective_weight, ss.scale);
            }
            if let Some(s) = slot {
                peer.manual_down = s.manual_down() || member.is_some_and(|m| m.down);
                peer.manual_down_ttl = (s.manual_down() && s.manual_until_ms != u64::MAX)
                    .then(|| ttl_left(s.manual_until_ms, self.now));
                let peer_facts = PeerFacts {
                    config_down: peer.config_down,
                    manual_down: peer.manual_down,
                    healthy: s.health.is_up(),
                    passive_down: passive.is_some_and(|p| p.is_down()),
                    panic,
                    ..facts
                };
                peer.down = peer_facts.down_for_balancer();
                peer.slow_start = duration_ms.and_then(|duration_ms| {
                    let back = s.back_ms_ago(self.now, self.now_unix);
                    let elapsed = ramp_elapsed(&peer_facts, back, duration_ms)?;
                    Some((
                        self.now_unix + (duration_ms - elapsed),
                        factor_permille(elapsed, duration_ms),
                    ))
                });
                peer.health = checked.then_some(s.health);
                let h = &s.health;
                peer.last_error_detail =
                    up.check.as_ref().filter(|_| checked).and_then(|c| {
                        detail_text(c, h.last_error()?, h.last_detail, h.last_status())
                    });
            }
        }
        out.primary.truncate(np);
        out.backup.truncate(nb);
    }
}

/// nginx's view of one peer, written over `out` (its name's buffer reused).
///
/// # Safety
/// `list` and `rr` must be live round-robin peers of the running cycle.
unsafe fn read_peer(
    list: *mut ngx_http_upstream_rr_peers_t,
    rr: *mut ngx_http_upstream_rr_peer_t,
    out: &mut PeerSnapshot,
) {
    let mut name = core::mem::take(&mut out.name);
    name.clear();
    // SAFETY: per the contract; zone peers are read under the list's read lock.
    unsafe {
        let shared = !(*list).shpool.is_null();
        if shared {
            ngx_rwlock_rlock(&mut (*list).rwlock);
        }
        let rr = &*rr;
        match core::str::from_utf8(rr.name.as_bytes()) {
            Ok(n) => name.push_str(n),
            Err(_) => name.push_str(&String::from_utf8_lossy(rr.name.as_bytes())),
        }
        *out = PeerSnapshot {
            name,
            config_down: rr.down != 0,
            down: rr.down != 0,
            weight: rr.weight as i64,
            max_fails: rr.max_fails as u64,
            fail_timeout: rr.fail_timeout as u64,
            conns: rr.conns as u64,
            current_weight: rr.current_weight as i64,
            effective_weight: rr.effective_weight as i64,
            fails: rr.fails as u64,
            ..PeerSnapshot::default()
        };
        if shared {
            ngx_rwlock_unlock(&mut (*list).rwlock);
        }
    }
}

/// The content handler of `upstream_healthcheck_status`: always 200 with the document when it
/// can be rendered, whatever the peers' health, so scrapers never mistake a down backend for a
/// broken endpoint.
pub extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        // SAFETY: r is the live request nginx passed in; no header has been sent yet.
        unsafe { allow(r, "GET, HEAD") };
        let message = "method not allowed, use GET or HEAD";
        return error(r, Format::Text, NGX_HTTP_NOT_ALLOWED as u16, message);
    }
    // SAFETY: r is the live request nginx passed in, and its body is not being read.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let (Some(main), Some(loc)) = (Module::main_conf(req), Module::location_conf(req)) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let default = loc.status.unwrap_or(Format::Text);
    let q = match parse_status_query(req.args.as_bytes(), default) {
        Ok(q) => q,
        Err(e) => {
            return error(
                r,
                error_format(req.args.as_bytes(), default),
                e.status,
                &e.message,
            );
        }
    };
    // The upstreams shown: all, or those of the asked name (one pass over the names); the
    // stream module's after the http ones, numbered on from them.
    let stream = stream_status::find_zone();
    let stream_names = stream.map(stream_status::names).unwrap_or_default();
    let all = main
        .upstreams
        .iter()
        .map(|u| u.name.as_str())
        .chain(stream_names.iter().copied());
    let shown: Vec<usize> = all
        .enumerate()
        .filter(|(_, n)| q.upstream.as_deref().map_or(true, |name| name == *n))
        .map(|(i, _)| i)
        .collect();
    let streams_from = stream.map(|_| shown.partition_point(|&i| i < main.upstreams.len()));
    if let Some(name) = q.upstream.as_deref().filter(|_| shown.is_empty()) {
        let e = unknown_upstream(name);
        return error(r, q.format, e.status, &e.message);
    }
    let names: Vec<&str> = shown
        .iter()
        .map(|&i| match main.upstreams.get(i) {
            Some(u) => u.name.as_str(),
            None => stream_names[i - main.upstreams.len()],
        })
        .collect();
    // SAFETY: the header, when set, points into the zone mapped for this cycle.
    let header = unsafe { main.header.as_ref() };
    let ha_mode = match header.map(|h| h.ha_state.load(Ordering::Acquire)) {
        Some(HA_MASTER) => HaMode::Master,
        Some(HA_SLAVER) => HaMode::Slaver,
        _ => HaMode::Disabled,
    };
    let etcd = etcd::status(main);
    let page = Page {
        format: q.format,
        ha_mode,
        etcd: etcd.as_ref(),
        now_ms: unix_msec(),
        refresh: q.refresh,
        state: q.state,
        names: &names,
        streams_from,
    };
    let mut reader = StateReader {
        main,
        stream,
        header,
        probing: ha_mode != HaMode::Slaver,
        now: now_msec(),
        now_unix: unix_msec(),
        slots: Vec::new(),
        members: Vec::new(),
        // A HEAD request only counts the page's bytes: it leaves the rates to the next GET.
        rates: false,
    };
    let mut fill = |k: usize, u: &mut UpstreamSnapshot| reader.fill(shown[k], u);

    // HEAD: the length GET would have, counted without writing the page.
    if req.method & NGX_HTTP_HEAD as usize != 0 {
        let mut length = Counter::default();
        if render_page(&mut length, &page, &mut fill).is_err() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        // SAFETY: r is the live request nginx passed in; its header has not been sent.
        return unsafe {
            send_header(
                r,
                NGX_HTTP_OK as usize,
                q.format.content_type(),
                Some(length.0),
            )
        };
    }
    // GET: the page is written as it is rendered, in 64 KiB buffers; the header goes with the
    // first one, with a Content-Length when the page fits in it. When the client falls behind,
    // rendering pauses until it has taken what waits (write events, `resume`).
    // SAFETY: nothing is sent yet; the configuration of the cycle outlives its requests, and
    // the stream lives in the request's pool (freed by its cleanup).
    unsafe {
        let names: Vec<&'static str> = names.iter().map(|&n| &*(n as *const str)).collect();
        let stream = Box::new(Stream {
            cursor: PageCursor::new(&page),
            format: q.format,
            ha_mode,
            etcd: etcd.clone(),
            now_ms: page.now_ms,
            refresh: q.refresh,
            state: q.state,
            names,
            streams_from,
            shown,
            reader: StateReader {
                main: &*(main as *const MainConf),
                stream,
                header: header.map(|h| &*(h as *const ZoneHeader)),
                probing: reader.probing,
                now: reader.now,
                now_unix: reader.now_unix,
                slots: Vec::new(),
                members: Vec::new(),
                rates: q.format == Format::Html,
            },
            body: BodyWriter::new(r, NGX_HTTP_OK as usize, q.format.content_type()),
        });
        let cln = ngx_pool_cleanup_add(req.pool, 0);
        if cln.is_null() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        let stream = Box::into_raw(stream);
        (*cln).handler = Some(drop_stream);
        (*cln).data = stream as *mut c_void;
        *req.ctx.add(Module::module().ctx_index) = stream as *mut c_void;
        match (*stream).run() {
            Some(rc) => rc,
            None => {
                let main_req = &mut *req.main;
                main_req.set_count(main_req.count() + 1);
                req.write_event_handler = Some(resume);
                wait_for_client(r);
                NGX_DONE as ngx_int_t
            }
        }
    }
}

/// A status page being sent: what it shows, where it stands, and its writer. Lives in the
/// request's pool until the request ends.
struct Stream {
    cursor: PageCursor,
    format: Format,
    ha_mode: HaMode,
    etcd: Option<EtcdStatus>,
    now_ms: u64,
    refresh: Option<u32>,
    state: Option<StateFilter>,
    names: Vec<&'static str>,
    streams_from: Option<usize>,
    /// Index in `MainConf::upstreams` of each upstream shown (stream ones numbered on).
    shown: Vec<usize>,
    reader: StateReader<'static>,
    body: BodyWriter,
}

impl Stream {
    /// Renders until the page is complete (`Some` of what to finalize the request with) or
    /// the client is behind (`None`).
    fn run(&mut self) -> Option<ngx_int_t> {
        let page = Page {
            format: self.format,
            ha_mode: self.ha_mode,
            etcd: self.etcd.as_ref(),
            now_ms: self.now_ms,
            refresh: self.refresh,
            state: self.state,
            names: &self.names,
            streams_from: self.streams_from,
        };
        let (reader, shown) = (&mut self.reader, &self.shown);
        let mut fill = |k: usize, u: &mut UpstreamSnapshot| reader.fill(shown[k], u);
        loop {
            if self.body.behind() {
                return None;
            }
            match self.cursor.write_next(&mut self.body, &page, &mut fill) {
                Ok(true) => {}
                Ok(false) => return Some(self.body.finish(Ok(()))),
                Err(e) => return Some(self.body.finish(Err(e))),
            }
        }
    }
}

/// An upstream this large leaves megabytes of freed buffers in the worker's heap once its
/// page is sent; they are handed back to the system rather than kept for the next scrape.
const TRIM_AFTER_PEERS: usize = 10_000;

/// The pool cleanup of a request that streamed a page.
unsafe extern "C" fn drop_stream(data: *mut c_void) {
    // SAFETY: data is the Box leaked by the handler, dropped once, with the request's pool.
    let stream = unsafe { Box::from_raw(data as *mut Stream) };
    let large = stream.cursor.peers_held() >= TRIM_AFTER_PEERS;
    drop(stream);
    #[cfg(target_env = "gnu")]
    if large {
        // SAFETY: glibc's malloc_trim only returns free heap pages to the system; the worker
        // is single-threaded and holds no pointer into freed memory.
        unsafe { libc::malloc_trim(0) };
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = large;
}

/// The write event handler of a page whose client was behind: sends what waits, then
/// renders on.
extern "C" fn resume(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls the write event handler with the live request; its ctx holds the
    // stream the handler set, alive until the request's pool goes.
    unsafe {
        let req = &mut *r;
        let stream = *req.ctx.add(Module::module().ctx_index) as *mut Stream;
        let Some(stream) = stream.as_mut() else {
            ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t);
            return;
        };
        let c = &mut *req.connection;
        let wev = &mut *c.write;
        if wev.timedout() != 0 {
            c.set_timedout(1);
            ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT as ngx_int_t);
            return;
        }
        if wev.delayed() != 0 {
            wait_for_client(r);
            return;
        }
        if stream.body.flush() == NGX_ERROR as ngx_int_t {
            ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t);
            return;
        }
        if stream.body.behind() {
            wait_for_client(r);
            return;
        }
        if wev.timer_set() != 0 {
            ngx_del_timer(wev);
        }
        match stream.run() {
            None => wait_for_client(r),
            Some(rc) => {
                req.write_event_handler = Some(ngx_http_request_empty_handler);
                ngx_http_finalize_request(r, rc);
            }
        }
    }
}

/// Waits for the client to take more: the next write event (or `send_timeout`) calls
/// `resume`, as nginx's own writer waits.
///
/// # Safety
/// `r` must be a live request whose write handler is `resume`.
unsafe fn wait_for_client(r: *mut ngx_http_request_t) {
    // SAFETY: per the contract; the core module's location conf exists for every request.
    unsafe {
        let wev = (*(*r).connection).write;
        let Some(clcf) = NgxHttpCoreModule::location_conf(&*(*r).main) else {
            ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t);
            return;
        };
        if (*wev).delayed() == 0 {
            ngx_add_timer(wev, clcf.send_timeout);
        }
        if ngx_handle_write_event(wev, clcf.send_lowat) != NGX_OK as ngx_int_t {
            ngx_http_finalize_request(r, NGX_ERROR as ngx_int_t);
        }
    }
}

/// Answers a bad request: a JSON error envelope for JSON clients, a line of text otherwise.
fn error(r: *mut ngx_http_request_t, format: Format, status: u16, message: &str) -> ngx_int_t {
    let mut body = String::new();
    let content_type = if format == Format::Json {
        let _ = render_json_error(&mut body, message);
        Format::Json.content_type()
    } else {
        body.push_str(message);
        body.push('\n');
        "text/plain"
    };
    // SAFETY: r is the live request of the calling handler.
    unsafe { send(r, status as usize, content_type, body.as_bytes()) }
}

/// Adds `Allow: methods` to the response headers, for a 405.
///
/// # Safety
/// `r` must be a live request whose header is not sent yet.
pub unsafe fn allow(r: *mut ngx_http_request_t, methods: &'static str) {
    let key = "Allow";
    // SAFETY: per the contract; the element is zeroed before use, and its strings are
    // static, so they outlive the request.
    unsafe {
        let h = ngx_list_push(&mut (*r).headers_out.headers) as *mut ngx_table_elt_t;
        if let Some(h) = h.as_mut() {
            ptr::write_bytes(h as *mut ngx_table_elt_t, 0, 1);
            h.hash = 1;
            h.key = ngx_str_t {
                len: key.len(),
                data: key.as_ptr() as *mut u8,
            };
            h.value = ngx_str_t {
                len: methods.len(),
                data: methods.as_ptr() as *mut u8,
            };
        }
    }
}

/// Sends a complete response.
///
/// # Safety
/// `r` must be a live request in its content phase.
pub unsafe fn send(
    r: *mut ngx_http_request_t,
    status: usize,
    content_type: &'static str,
    body: &[u8],
) -> ngx_int_t {
    // SAFETY: per the contract; buffers come from the request pool.
    unsafe {
        let req = &mut *r;
        let rc = send_header(r, status, content_type, Some(body.len()));
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || req.header_only() != 0 {
            return rc;
        }
        let b = ngx_create_temp_buf(req.pool, body.len().max(1));
        if b.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
        (*b).last = (*b).last.add(body.len());
        if ptr::eq(req.main, r) {
            (*b).set_last_buf(1);
        }
        (*b).set_last_in_chain(1);
        let mut out = ngx_chain_t {
            buf: b,
            next: ptr::null_mut(),
        };
        ngx_http_output_filter(r, &mut out)
    }
}
