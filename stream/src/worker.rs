//! The worker: its state, built in `init_process` and dropped in `exit_process`; its timer,
//! whose tick applies changes and starts the probes that are due; `finish`, which records a
//! probe's end in the zone.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::Ordering;
use std::collections::HashMap;
use std::time::Instant;

use ngx::ffi::{
    ngx_cycle, ngx_cycle_t, ngx_event_t, ngx_exiting, ngx_int_t, ngx_log_t, ngx_pid, ngx_process,
    ngx_quit, ngx_random, ngx_stream_conf_ctx_t, ngx_stream_module, ngx_terminate, ngx_timeofday,
    NGX_LOG_EMERG, NGX_OK, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};
use upstream_healthcheck_core::escape::LogEscaped;
use upstream_healthcheck_core::health::Transition;
use upstream_healthcheck_core::journal::Change;
use upstream_healthcheck_core::schedule::{batch_ms, next_interval_ms, DueQueue};
use upstream_healthcheck_core::stream::failure_text;
use upstream_healthcheck_core::stream_zone::StreamZone;

use crate::conf::{main_conf, Check, MainConf, PeerConf, UpstreamConf};
use crate::keepalive::{self, Idle};
use crate::peers::{self, Target};
use crate::probe::{self, Ended, Probe};
use crate::zone;
use upstream_healthcheck_glue::timer;
use upstream_healthcheck_glue::{hc_debug, hc_log};

/// How soon a probe that gave no verdict for a local reason is tried again.
const LOCAL_RETRY_MS: u64 = 1000;

/// Everything one worker needs to run probes; lives from init_process to exit_process.
pub struct Worker {
    /// The cycle this worker was built for.
    pub cycle: *mut ngx_cycle_t,
    pub main: &'static MainConf,
    pub zone: &'static StreamZone,
    pub pid: i32,
    pub timer: ngx_event_t,
    /// The log of probe connections: the cycle's, quietened; the checker logs failures itself,
    /// once per change.
    pub probe_log: ngx_log_t,
    /// Probes in flight from this worker, each knowing its index here.
    pub probes: Vec<*mut Probe>,
    pub queue: DueQueue,
    /// Indexed by slot.
    pub targets: Vec<Target>,
    /// Upstreams excluded from checking at run time, as of the last application of changes.
    pub excluded: Vec<bool>,
    /// The journal position up to which changes are applied.
    pub applied: u64,
    pub batch_ms: u64,
    /// Probes gave no verdict for a local reason since the last verdict: logged once.
    pub local_run: bool,
    /// Idle probe connections by slot (`keepalive=N`).
    pub idle: HashMap<usize, Idle>,
}

impl Worker {
    /// The upstream, check and peer behind a slot; `None` for an unchecked upstream.
    pub fn check_of(
        &self,
        slot: usize,
    ) -> Option<(&'static UpstreamConf, &'static Check, &'static PeerConf)> {
        let t = self.targets.get(slot)?;
        let main: &'static MainConf = self.main;
        let up = main.upstreams.get(t.upstream)?;
        let first = up.peers.first()?.slot;
        Some((up, up.check.as_ref()?, up.peers.get(slot - first)?))
    }

    fn is_stale(&self) -> bool {
        // SAFETY: reading nginx's running-cycle pointer.
        self.cycle != unsafe { ngx_cycle }
    }
}

pub use upstream_healthcheck_glue::timer::now_msec;

/// nginx's cached wall-clock time in Unix milliseconds.
fn unix_msec() -> u64 {
    let tp = ngx_timeofday();
    tp.sec as u64 * 1000 + tp.msec as u64
}

/// This process's worker; null outside workers, before init_process and after exit_process.
static mut WORKER: *mut Worker = ptr::null_mut();

thread_local! {
    /// Set while a `&mut Worker` handed out by `with_any_worker` is alive.
    static BORROWED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this process's worker, even one of an older cycle; `None` when there is
/// none, or from inside another `with_any_worker` (never two `&mut`).
pub fn with_any_worker<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    if BORROWED.with(|b| b.replace(true)) {
        return None;
    }
    // SAFETY: single-threaded; WORKER is null or this process's live worker, and the flag
    // makes this the only reference to it while f runs.
    let out = unsafe { WORKER.as_mut() }.map(f);
    BORROWED.with(|b| b.set(false));
    out
}

/// Runs `f` with the worker of the running cycle; `None` when there is none or it is stale.
pub fn with_worker<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    with_any_worker(|w| (!w.is_stale()).then(|| f(w))).flatten()
}

/// True once nginx is shutting this process down.
pub fn exiting() -> bool {
    // SAFETY: plain reads of nginx's process-state globals.
    unsafe { ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 }
}

/// This module's main conf in the running cycle, when it has a `stream {}` block.
fn cycle_main_conf(cycle: *mut ngx_cycle_t) -> Option<&'static MainConf> {
    // SAFETY: conf_ctx has an entry per core module; the stream module's is null without a
    // stream block, else the stream block's context.
    unsafe {
        let ctx = *(*cycle).conf_ctx.add(ngx_stream_module.index) as *mut ngx_stream_conf_ctx_t;
        if ctx.is_null() {
            return None;
        }
        main_conf(ctx).map(|m| &*m)
    }
}

/// `ngx_module_t.init_process`: workers (and the single process) start probing.
pub extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx's process type global is set before init_process runs.
    let process = unsafe { ngx_process } as u32;
    if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
        return NGX_OK as ngx_int_t;
    }
    let Some(main) = cycle_main_conf(cycle) else {
        return NGX_OK as ngx_int_t;
    };
    // SAFETY: set by the zone init in this cycle, mapped before the fork.
    let Some(zone) = (unsafe { main.zone.as_ref() }) else {
        return NGX_OK as ngx_int_t;
    };
    // SAFETY: cycle->log is valid for the cycle.
    let mut probe_log = unsafe { *(*cycle).log };
    probe_log.log_level = probe_log.log_level.min(NGX_LOG_EMERG as _);
    probe_log.next = ptr::null_mut();
    let targets = peers::targets(main);
    // SAFETY: connection_n is the worker_connections setting.
    let connections = unsafe { (*cycle).connection_n };
    let w = Box::into_raw(Box::new(Worker {
        cycle,
        main,
        zone,
        // SAFETY: ngx_pid is this process's pid.
        pid: unsafe { ngx_pid },
        // SAFETY: an all-zero ngx_event_t is its idle state.
        timer: unsafe { core::mem::zeroed() },
        probe_log,
        probes: Vec::new(),
        queue: DueQueue::new(targets.len(), (connections / 8).max(1)),
        targets,
        excluded: vec![false; main.upstreams.len()],
        applied: 0,
        batch_ms: batch_ms(
            main.upstreams
                .iter()
                .filter_map(|u| u.check.as_ref())
                .map(|c| c.params.interval_ms)
                .min()
                .unwrap_or(0),
        ),
        local_run: false,
        idle: HashMap::new(),
    }));
    // SAFETY: w is a fresh, exclusively owned allocation; the event is set up before it is
    // armed, and WORKER is only touched from this single-threaded process.
    unsafe {
        let w = &mut *w;
        w.timer.handler = Some(on_tick);
        w.timer.data = w as *mut Worker as *mut _;
        w.timer.log = (*cycle).log;
        w.timer.set_cancelable(1);
        WORKER = w;
    }
    with_worker(|w| {
        peers::resync(w);
        arm(w, 1);
    });
    NGX_OK as ngx_int_t
}

/// `ngx_module_t.exit_process`: close the probes in flight, drop the timer and the state.
pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    stop();
}

/// Ends this process's worker: its probes are closed without a verdict.
fn stop() {
    if BORROWED.with(|b| b.get()) {
        return;
    }
    // SAFETY: single-threaded and not borrowed; WORKER was set by init_process or is null.
    unsafe {
        let w = WORKER;
        if w.is_null() {
            return;
        }
        WORKER = ptr::null_mut();
        if (*w).timer.timer_set() != 0 {
            ngx::ffi::ngx_del_timer(&mut (*w).timer);
        }
        for p in core::mem::take(&mut (*w).probes) {
            probe::abort(p);
        }
        keepalive::close_all(&mut *w);
        drop(Box::from_raw(w));
    }
}

/// The timer's handler.
extern "C" fn on_tick(_ev: *mut ngx_event_t) {
    if exiting() {
        with_any_worker(keepalive::close_all);
        return; // never re-armed once nginx is exiting
    }
    if with_any_worker(|w| w.is_stale()) == Some(true) {
        stop();
        return;
    }
    with_worker(|w| {
        expire(w, now_msec());
        peers::apply_changes(w);
        scan(w);
        arm_next(w);
    });
}

/// Ends the manual downs and exclusions (set through the http module's control API) whose
/// ttl ran out: one atomic load until the earliest one is due, then one pass that ends the
/// due ones and finds the next.
fn expire(w: &mut Worker, now: u64) {
    if w.zone.expiry_hint.load(Ordering::Acquire) > now {
        return;
    }
    let finite = |until: u64| (until != 0 && until != u64::MAX).then_some(until);
    let mut locked = zone::lock(w.zone);
    let mut next = u64::MAX;
    for ui in 0..locked.upstreams().len() {
        match finite(locked.upstreams()[ui].excluded_until_ms) {
            Some(until) if until <= now => {
                locked.upstreams()[ui].excluded_until_ms = 0;
                locked.record(Change::Upstream(ui));
            }
            Some(until) => next = next.min(until),
            None => {}
        }
    }
    for slot in 0..locked.slots().len() {
        match finite(locked.slots()[slot].manual_until_ms) {
            Some(until) if until <= now => {
                locked.slots()[slot].manual_until_ms = 0;
                locked.record(Change::Slot(slot));
            }
            Some(until) => next = next.min(until),
            None => {}
        }
    }
    w.zone.expiry_hint.store(next, Ordering::Release);
}

/// Makes the timer fire at `at_ms` (monotonic) or earlier.
fn arm(w: &mut Worker, at_ms: u64) {
    if !exiting() {
        timer::arm(&mut w.timer, at_ms);
    }
}

fn arm_next(w: &mut Worker) {
    let at = w.queue.next_start().unwrap_or(u64::MAX);
    arm(w, at);
}

/// Claims and starts the probes due within the batch window, in order of due time, while the
/// cap on probes in flight allows.
fn scan(w: &mut Worker) {
    let now = now_msec();
    let horizon = now + w.batch_ms;
    while let Some(slot) = w.queue.pop_due(horizon) {
        let Some((_, check, _)) = w.check_of(slot) else {
            continue;
        };
        let p = &check.params;
        let claimed = {
            let mut locked = zone::lock(w.zone);
            let s = &mut locked.slots()[slot].sched;
            if s.claim(now, w.batch_ms, w.pid, p.interval_ms, p.timeout_ms) {
                None
            } else {
                Some(now + s.wake_in(now, w.pid))
            }
        };
        if let Some(look_at) = claimed {
            w.queue.set(slot, Some(look_at));
            continue;
        }
        w.queue.started();
        let started = Instant::now();
        if let Some((ended, kept)) = probe::start(w, slot) {
            finish(w, slot, ended, started, kept);
        }
    }
}

/// Records the end of the probe of `slot`: its verdict, or no verdict for a local error; logs
/// and applies a change of verdict; plans the next probe.
pub fn finish(w: &mut Worker, slot: usize, ended: Ended, started: Instant, kept: bool) {
    w.queue.ended();
    let Some((up, check, peer)) = w.check_of(slot) else {
        return;
    };
    let p = &check.params;
    let now = now_msec();
    let ui = w.targets[slot].upstream;
    let outcome = match ended {
        Ended::Local(reason) => {
            let next = {
                let mut locked = zone::lock(w.zone);
                locked.upstreams()[ui].local_errors += 1;
                let s = &mut locked.slots()[slot].sched;
                s.release(now, w.pid, LOCAL_RETRY_MS.min(p.interval_ms));
                now + s.wake_in(now, w.pid)
            };
            if !w.local_run {
                w.local_run = true;
                hc_log!(NGX_LOG_ERR, "stream probes give no verdict: {reason}");
            }
            requeue(w, slot, next);
            arm_next(w);
            return;
        }
        Ended::Outcome(outcome) => outcome,
    };
    if w.local_run {
        w.local_run = false;
        hc_log!(NGX_LOG_NOTICE, "stream probes give verdicts again");
    }
    let duration_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
    let (transition, health, next) = {
        let mut locked = zone::lock(w.zone);
        let s = &mut locked.slots()[slot];
        if !s.sched.owns(w.pid) {
            // The lease was taken over: the result is dropped.
            let next = now + s.sched.wake_in(now, w.pid);
            drop(locked);
            requeue(w, slot, next);
            arm_next(w);
            return;
        }
        let t = s
            .health
            .record(outcome, unix_msec(), duration_us, p.rise, p.fall);
        let interval = next_interval_ms(p, &s.health);
        s.sched
            .finish(now, w.pid, interval, p.jitter_ms, ngx_random() as u64);
        s.sched.keep_prober(w.pid, kept);
        let (health, next) = (s.health, s.sched.next_due_ms);
        locked.upstreams()[ui]
            .probe_durations
            .observe(u64::from(duration_us));
        if t.is_some() {
            locked.record(Change::Slot(slot));
        }
        (t, health, next)
    };
    hc_debug!(
        "stream probe of {} in upstream \"{}\" ended in {} us: {}",
        LogEscaped(&peer.name),
        LogEscaped(&up.name),
        duration_us,
        outcome
            .failure
            .map_or_else(|| "passed".to_string(), |f| f.to_string())
    );
    requeue(w, slot, next);
    match transition {
        Some(Transition::Down) => hc_log!(
            NGX_LOG_WARN,
            "peer {} in stream upstream \"{}\" is DOWN after {} failed checks, last error: {}",
            LogEscaped(&peer.name),
            LogEscaped(&up.name),
            health.fall_count,
            health.last_error().map_or("", failure_text)
        ),
        Some(Transition::Up) => hc_log!(
            NGX_LOG_WARN,
            "peer {} in stream upstream \"{}\" is UP after {} successful checks",
            LogEscaped(&peer.name),
            LogEscaped(&up.name),
            health.rise_count
        ),
        None => {}
    }
    if transition.is_some() {
        peers::apply_changes(w);
    }
    arm_next(w);
}

/// Puts `slot` back in the queue for `at`, unless its upstream is no longer probed here.
fn requeue(w: &mut Worker, slot: usize, at: u64) {
    let probed = w.targets.get(slot).is_some_and(|t| !w.excluded[t.upstream]);
    w.queue.set(slot, probed.then_some(at));
}
