//! The per-worker probe loop: a cancellable timer that applies verdicts, claims due peers in the
//! shared schedule and starts their probes; and the bookkeeping when a probe ends.

use core::ptr;
use core::sync::atomic::Ordering;
use std::time::Instant;

use ngx::ffi::{
    ngx_current_msec, ngx_cycle, ngx_cycle_t, ngx_event_t, ngx_exiting, ngx_http_request_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_log_t, ngx_pid, ngx_process, ngx_quit, ngx_random,
    ngx_terminate, ngx_timeofday, NGX_ERROR, NGX_LOG_CRIT, NGX_OK, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};

use crate::escape::LogEscaped;
use crate::health::Transition;
use crate::module::conf::{Check, MainConf, PeerConf, UpstreamConf};
use crate::module::ha;
use crate::module::log::hc_log;
use crate::module::peers::{self, Target};
use crate::module::probe::{self, Probe};
use crate::module::zone::{earliest_expiry, restart_checks, ZoneHeader, HA_MASTER, HA_SLAVER};
use crate::module::Module;
use crate::outcome::Outcome;
use crate::schedule::{batch_ms, tick_ms, MAX_TICK_MS};

/// Everything one worker needs to run probes; lives from init_process to exit_process.
pub struct Worker {
    /// The cycle this worker was built for; see `current`.
    cycle: *mut ngx_cycle_t,
    pub main: &'static MainConf,
    pub header: &'static ZoneHeader,
    pub pid: i32,
    timer: ngx_event_t,
    /// The log probe connections use: the cycle's, quietened to `crit` so that a refused
    /// connect, the very thing being checked for, does not flood the error log.
    pub probe_log: ngx_log_t,
    /// Probes in flight from this worker, closed by exit_process if nginx exits first.
    pub probes: Vec<*mut Probe>,
    max_in_flight: usize,
    /// The zone's generation this worker last synced with (see `sync`).
    synced_generation: u64,
    /// Indexed by slot.
    pub targets: Vec<Target>,
    /// This worker's view of when each slot next needs a look (monotonic ms; `u64::MAX` for
    /// slots it never probes or has in flight). It can only be early: a scan that finds a
    /// slot not due, or claimed elsewhere, moves it to the zone's time. So a scan reads 8
    /// bytes per peer instead of the zone, and the worker that probed a peer last is the one
    /// awake when it is due again.
    due: Vec<u64>,
    /// Upstreams excluded from checking at run time, as of the last sync.
    excluded: Vec<bool>,
    /// When to look for the HA address next.
    ha_next_ms: u64,
    /// How early a scan starts probes, to wake once per batch: `schedule::batch_ms`.
    batch_ms: u64,
}

static mut WORKER: *mut Worker = ptr::null_mut();

fn exiting() -> bool {
    // SAFETY: plain reads of nginx's process-state globals.
    unsafe { ngx_exiting != 0 || ngx_quit != 0 || ngx_terminate != 0 }
}

pub fn now_msec() -> u64 {
    // SAFETY: nginx's cached monotonic time, updated by the event loop.
    unsafe { ngx_current_msec as u64 }
}

pub fn unix_msec() -> u64 {
    let tp = ngx_timeofday();
    tp.sec as u64 * 1000 + tp.msec as u64
}

/// `ngx_module_t.init_process`: workers (and the single process) start probing; the cache
/// manager and loader do nothing.
pub extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx's process type global is set before init_process runs.
    let process = unsafe { ngx_process } as u32;
    if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
        return NGX_OK as ngx_int_t;
    }
    // SAFETY: cycle is the running cycle; the main conf lives as long as it.
    let Some(main) = Module::main_conf(unsafe { &*cycle }) else {
        return NGX_OK as ngx_int_t;
    };
    // SAFETY: set by the zone init in this cycle, mapped before the fork.
    let Some(header) = (unsafe { main.header.as_ref() }) else {
        return NGX_OK as ngx_int_t;
    };
    // SAFETY: cycle->log is valid for the cycle.
    let cycle_log = unsafe { &*(*cycle).log };
    let mut probe_log = *cycle_log;
    probe_log.log_level = probe_log.log_level.min(NGX_LOG_CRIT as _);
    probe_log.next = ptr::null_mut();

    let targets = peers::targets(main);
    // SAFETY: connection_n is the worker_connections setting.
    let connections = unsafe { (*cycle).connection_n };
    let worker = Box::new(Worker {
        cycle,
        main,
        header,
        // SAFETY: ngx_pid is this process's pid.
        pid: unsafe { ngx_pid },
        // SAFETY: an all-zero ngx_event_t is its idle state (ngx_pcalloc'ed events are too).
        timer: unsafe { core::mem::zeroed() },
        probe_log,
        probes: Vec::new(),
        max_in_flight: (connections / 2).max(1),
        synced_generation: 0,
        due: vec![0; targets.len()],
        targets,
        excluded: vec![false; main.upstreams.len()],
        ha_next_ms: 0,
        batch_ms: batch_ms(
            main.upstreams
                .iter()
                .filter_map(|u| Some(u.check.as_ref()?.params.interval_ms))
                .min()
                .unwrap_or(0),
        ),
    });
    let w = Box::into_raw(worker);
    // SAFETY: w is a fresh, exclusively owned allocation; the event is initialised before it
    // is armed, and WORKER is only touched from this single-threaded process.
    unsafe {
        let w = &mut *w;
        w.timer.handler = Some(on_tick);
        w.timer.data = w as *mut Worker as *mut _;
        w.timer.log = (*cycle).log;
        w.timer.set_cancelable(1);
        WORKER = w;
        // Verdicts first, so a new worker never proxies to a peer already known down.
        w.sync();
        ngx::ffi::ngx_add_timer(&mut w.timer, 1);
    }
    NGX_OK as ngx_int_t
}

/// `ngx_module_t.exit_process`: close the probes still in flight (nginx reports sockets left
/// open by an exiting worker), drop the timer and the worker state.
pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    stop();
}

/// Ends this process's worker: its probes are closed without a verdict.
fn stop() {
    // SAFETY: single-threaded; WORKER was set by init_process of this process or is null.
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
        drop(Box::from_raw(w));
    }
}

/// The worker of the running cycle. With `master_process off`, a reload swaps the cycle (and
/// frees the old zone) without calling init_process again, so nginx itself runs on without
/// connections for the new cycle: the worker stops there rather than touch freed memory.
fn current() -> Option<&'static mut Worker> {
    // SAFETY: single-threaded; WORKER is null or this process's worker.
    let w = unsafe { WORKER.as_mut()? };
    if is_stale(w) {
        stop();
        hc_log!(
            NGX_LOG_WARN,
            "checks stopped: nginx was reloaded without a master process, restart it instead"
        );
        return None;
    }
    Some(w)
}

/// True when `w` belongs to an older cycle (single-process reload) and must not touch the zone.
pub fn is_stale(w: &Worker) -> bool {
    // SAFETY: reading nginx's running-cycle pointer.
    w.cycle != unsafe { ngx_cycle }
}

extern "C" fn on_tick(_ev: *mut ngx_event_t) {
    if exiting() {
        return; // never re-armed once nginx is exiting
    }
    let Some(w) = current() else { return };
    w.housekeeping(now_msec());
    w.sync();
    let wake = w.scan();
    // SAFETY: the timer event belongs to w and is not set (it just fired).
    unsafe { ngx::ffi::ngx_add_timer(&mut w.timer, tick_ms(wake) as _) };
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
        Some((up, up.check.as_ref()?, up.peers.get(t.peer)?))
    }

    /// Follows the HA address, and ends exclusions and manual downs whose ttl ran out.
    fn housekeeping(&mut self, now: u64) {
        let main = self.main;
        let mut changed = false;
        if let Some((addr, interval)) = main.ha {
            if now >= self.ha_next_ms {
                self.ha_next_ms = now + interval;
                let want = if ha::host_has_address(addr) {
                    HA_MASTER
                } else {
                    HA_SLAVER
                };
                if self.header.ha_state.load(Ordering::Acquire) != want {
                    let mut locked = self.header.lock();
                    if self.header.ha_state.swap(want, Ordering::AcqRel) != want {
                        if want == HA_MASTER {
                            for ui in 0..main.upstreams.len() {
                                restart_checks(&mut locked, main, ui, now);
                            }
                        }
                        changed = true;
                        let mode = if want == HA_MASTER {
                            "Master"
                        } else {
                            "Slaver"
                        };
                        hc_log!(
                            NGX_LOG_WARN,
                            "HA mode is {mode}: {addr} is {}on this host",
                            if want == HA_MASTER { "" } else { "not " }
                        );
                    }
                }
            }
        }
        if now >= self.header.expiry_hint.load(Ordering::Acquire) {
            let mut locked = self.header.lock();
            for ui in 0..main.upstreams.len() {
                let until = locked.upstreams()[ui].excluded_until_ms;
                if until != 0 && until <= now {
                    locked.upstreams()[ui].excluded_until_ms = 0;
                    restart_checks(&mut locked, main, ui, now);
                    changed = true;
                    hc_log!(
                        NGX_LOG_NOTICE,
                        "exclusion of upstream \"{}\" expired",
                        LogEscaped(&main.upstreams[ui].name)
                    );
                }
            }
            for s in locked.slots() {
                if s.manual_until_ms != 0 && s.manual_until_ms <= now {
                    s.manual_until_ms = 0;
                    changed = true;
                }
            }
            let next = earliest_expiry(&mut locked);
            self.header.expiry_hint.store(next, Ordering::Release);
        }
        if changed {
            self.header.bump_generation();
        }
    }

    /// Catches up with the shared state when its generation changed (a verdict, a control
    /// request, an expiry, the HA mode): nginx's `down` flags, the exclusions and the due
    /// times. Unchecked, excluded and HA-standby upstreams serve as nginx would without checks.
    fn sync(&mut self) {
        let generation = self.header.current_generation();
        if generation == self.synced_generation {
            return;
        }
        let probing = self.header.probing_allowed();
        let now = now_msec();
        let pid = self.pid;
        let states: Vec<(bool, bool, u64)> = {
            let mut locked = self.header.lock();
            for (ui, r) in locked.upstreams().iter().enumerate() {
                self.excluded[ui] = r.excluded();
            }
            let slots = locked.slots();
            slots
                .iter()
                .map(|s| {
                    let mine = s.sched.owner_pid == pid && !s.sched.is_idle(now);
                    let due = if mine {
                        u64::MAX
                    } else {
                        now + s.sched.wake_in(now)
                    };
                    (s.health.is_up(), s.manual_down(), due)
                })
                .collect()
        };
        for (slot, (t, (up, manual, due))) in self.targets.iter().zip(states).enumerate() {
            let checked = t.checked && probing && !self.excluded[t.upstream];
            // SAFETY: the targets are live peers of this worker's cycle.
            unsafe { peers::set_down(t, manual || (checked && !up)) };
            self.due[slot] = if checked && !t.config_down {
                due
            } else {
                u64::MAX
            };
        }
        self.synced_generation = generation;
    }

    /// Claims and starts every probe due within the batch window; returns the time until the
    /// next one is due.
    fn scan(&mut self) -> Option<u64> {
        let now = now_msec();
        let horizon = now + self.batch_ms;
        let mut wake = u64::MAX;
        if !self.header.probing_allowed() {
            return None;
        }
        for slot in 0..self.due.len() {
            let due = self.due[slot];
            if due > horizon {
                wake = wake.min(due);
                continue;
            }
            if self.probes.len() >= self.max_in_flight {
                wake = now + 1;
                break;
            }
            let Some((_, check, _)) = self.check_of(slot) else {
                self.due[slot] = u64::MAX;
                continue;
            };
            let claimed = {
                let mut locked = self.header.lock();
                let s = &mut locked.slots()[slot].sched;
                let p = &check.params;
                let ok = s.claim(now, self.batch_ms, self.pid, p.interval_ms, p.timeout_ms);
                self.due[slot] = if ok { u64::MAX } else { now + s.wake_in(now) };
                ok
            };
            if claimed {
                probe::start(self, slot, Instant::now());
            } else {
                wake = wake.min(self.due[slot]);
            }
        }
        (wake != u64::MAX).then(|| wake.saturating_sub(now))
    }

    /// Records the end of the probe of `slot` and logs and applies a change of verdict.
    pub fn finish(&mut self, slot: usize, outcome: Outcome, started: Instant) {
        let Some((up, check, peer)) = self.check_of(slot) else {
            return;
        };
        let p = &check.params;
        let now = now_msec();
        let duration_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let (transition, health, next_due) = {
            let mut locked = self.header.lock();
            let s = &mut locked.slots()[slot];
            let random = ngx_random() as u64;
            if !s
                .sched
                .finish(now, self.pid, p.interval_ms, p.jitter_ms, random)
            {
                return; // the lease was taken over: another worker owns this peer now
            }
            let t = s
                .health
                .record(outcome, unix_msec(), duration_us, p.rise, p.fall);
            if t.is_some() {
                self.header.bump_generation();
            }
            let (health, next_due) = (s.health, s.sched.next_due_ms);
            let upstream = self.targets[slot].upstream;
            locked.upstreams()[upstream]
                .probe_durations
                .observe(u64::from(duration_us));
            (t, health, next_due)
        };
        if !self.excluded[self.targets[slot].upstream] {
            self.due[slot] = next_due;
        }
        match transition {
            Some(Transition::Down) => {
                let status = health
                    .last_status()
                    .map(|s| format!(" (status {s})"))
                    .unwrap_or_default();
                let error = health
                    .last_error()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                hc_log!(
                    NGX_LOG_WARN,
                    "peer {} in upstream \"{}\" is DOWN after {} failed checks, last error: {error}{status}",
                    LogEscaped(&peer.name),
                    LogEscaped(&up.name),
                    health.fall_count
                );
            }
            Some(Transition::Up) => {
                hc_log!(
                    NGX_LOG_WARN,
                    "peer {} in upstream \"{}\" is UP after {} successful checks",
                    LogEscaped(&peer.name),
                    LogEscaped(&up.name),
                    health.rise_count
                );
            }
            None => {}
        }
        if transition.is_some() {
            self.sync();
        }
        if !exiting() {
            let wait = next_due.saturating_sub(now).clamp(1, MAX_TICK_MS);
            let fires_at = self.timer.timer.key as u64;
            if self.timer.timer_set() == 0 || fires_at > now + wait {
                // SAFETY: re-arming this worker's own timer; ngx_add_timer keeps an armed
                // timer that is within its lazy delay, so delete it first.
                unsafe {
                    if self.timer.timer_set() != 0 {
                        ngx::ffi::ngx_del_timer(&mut self.timer);
                    }
                    ngx::ffi::ngx_add_timer(&mut self.timer, wait as _);
                }
            }
        }
    }
}

/// Applies changed verdicts in this worker now (after a control request); other workers
/// follow within one tick.
pub fn apply_now() {
    if let Some(w) = current() {
        w.sync();
    }
}

/// The wrapped `peer.init` of every upstream: catch up with the shared verdicts (when they
/// changed), then let the balancer pick a peer.
pub extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    apply_now();
    // SAFETY: nginx passes the upstream the request uses; our srv conf exists for every
    // upstream block and holds the balancer's own init, set in postconfiguration.
    let original = unsafe { us.as_ref() }
        .and_then(Module::server_conf)
        .and_then(|sc| sc.original_init_peer);
    match original {
        // SAFETY: calling the balancer's init with the arguments nginx gave us.
        Some(init) => unsafe { init(r, us) },
        None => NGX_ERROR as ngx_int_t,
    }
}
