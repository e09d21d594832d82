//! The worker's timer: each tick does the housekeeping, applies changes and starts the probes
//! that are due; `finish` records a probe's end; `arm` is the one place that re-arms the timer.

use std::time::Instant;

use ngx::ffi::{ngx_event_t, ngx_random};

use crate::escape::LogEscaped;
use crate::health::Transition;
use crate::journal::Change;
use crate::module::clock::{now_msec, unix_msec};
use crate::module::failure_detail::detail_text;
use crate::module::housekeeping;
use crate::module::keepalive;
use crate::module::log::{hc_debug, hc_log};
use crate::module::peers;
use crate::module::probe::{self, Ended, Kept};
use crate::module::process::{exiting, stop_if_stale, with_worker, LocalBurst, Worker};
use crate::module::ramp;
use crate::module::state_store;
use crate::module::zone::log_panic;
use crate::policy::{connection_reusable, PeerFacts};
use crate::schedule::{next_interval_ms, rearm, MAX_TICK_MS};

/// How soon a probe that gave no verdict for a local reason is tried again.
const LOCAL_RETRY_MS: u64 = 1000;
/// A run of local errors ends when a probe completes this long after the last one: a peer
/// that keeps failing locally while others succeed makes one run, not a line per retry.
const BURST_QUIET_MS: u64 = 2000;

/// The timer's handler.
pub extern "C" fn on_tick(_ev: *mut ngx_event_t) {
    if exiting() || stop_if_stale() {
        keepalive::close_all();
        return; // never re-armed once nginx is exiting
    }
    with_worker(|w| {
        let now = now_msec();
        housekeeping::run(w, now);
        state_store::tick(w, now);
        peers::apply_changes(w);
        ramp::step(w, now);
        scan(w);
        arm_next(w);
    });
}

/// Makes the timer fire at `at_ms` (monotonic) or earlier: an armed timer that fires later is
/// moved, one that fires earlier is kept. `ngx_add_timer` alone would keep an armed timer
/// whose time is within its lazy delay (300 ms), so a later call could not move it earlier.
pub fn arm(w: &mut Worker, at_ms: u64) {
    if exiting() {
        return;
    }
    let now = now_msec();
    let armed_at = (w.timer.timer_set() != 0).then_some(w.timer.timer.key as u64);
    let Some(at) = rearm(armed_at, at_ms.clamp(now + 1, now + MAX_TICK_MS)) else {
        return;
    };
    if armed_at.is_some() {
        // SAFETY: deleting this worker's own armed timer.
        unsafe { ngx::ffi::ngx_del_timer(&mut w.timer) };
    }
    hc_debug!("timer armed in {} ms", at - now);
    // SAFETY: arming this worker's own timer, which is not set now.
    unsafe { ngx::ffi::ngx_add_timer(&mut w.timer, (at - now) as _) };
}

/// Arms the timer for the next probe this worker may start (or the next tick).
fn arm_next(w: &mut Worker) {
    let at = w.queue.next_start().unwrap_or(u64::MAX);
    arm(w, at);
}

/// Claims and starts the probes due within the batch window, in order of due time, while the
/// cap on probes in flight allows.
fn scan(w: &mut Worker) {
    if w.standby {
        return;
    }
    let now = now_msec();
    let horizon = now + w.batch_ms;
    while let Some(slot) = w.queue.pop_due(horizon) {
        let Some((_, check, _)) = w.check_of(slot) else {
            continue;
        };
        // A new https connection waits for a handshake place, unclaimed (see HANDSHAKES_MAX).
        let handshake = check.tls.is_some() && !keepalive::has(slot);
        if handshake && !w.queue.may_handshake() {
            w.queue.wait_for_handshake(slot);
            continue;
        }
        let p = &check.params;
        let claimed = {
            let mut locked = w.header.lock();
            let s = &mut locked.slots()[slot].sched;
            if s.claim(now, w.batch_ms, w.pid, p.interval_ms, p.timeout_ms) {
                None
            } else {
                Some(now + s.wake_in(now, w.pid))
            }
        };
        if let Some(look_at) = claimed {
            // Not due after all (another worker probed it) or in flight elsewhere.
            w.queue.set(slot, Some(look_at));
            continue;
        }
        w.queue.started();
        if handshake {
            w.queue.handshake_started();
        }
        let started = Instant::now();
        if let Some((ended, kept)) = probe::start(w, slot, handshake) {
            if handshake {
                w.queue.handshake_ended();
            }
            finish(w, slot, ended, started, kept);
        }
    }
}

/// Records the end of the probe of `slot`: its verdict, or no verdict for a local error; logs
/// and applies a change of verdict; plans the next probe; parks the probe's connection when
/// it may carry the next one (`kept`, closed when dropped).
pub fn finish(w: &mut Worker, slot: usize, ended: Ended, started: Instant, kept: Option<Kept>) {
    w.queue.ended();
    let Some((up, check, _)) = w.check_of(slot) else {
        return;
    };
    let name = w.peer_name(slot);
    let p = &check.params;
    let now = now_msec();
    let ui = w.targets[slot].upstream();
    let outcome = match ended {
        Ended::Local(reason) => {
            let next = {
                let mut locked = w.header.lock();
                locked.upstreams()[ui].local_errors += 1;
                let s = &mut locked.slots()[slot].sched;
                s.release(now, w.pid, LOCAL_RETRY_MS.min(p.interval_ms));
                now + s.wake_in(now, w.pid)
            };
            note_local_error(w, now, &reason);
            requeue(w, slot, next);
            hc_debug!(
                "probe of {} in upstream \"{}\": local error",
                LogEscaped(&name),
                LogEscaped(&up.name)
            );
            arm_next(w);
            return;
        }
        Ended::Outcome(outcome) => outcome,
    };
    let quiet = |b: &LocalBurst| now.saturating_sub(b.last_ms) >= BURST_QUIET_MS;
    if let Some(burst) = w.local_burst.take_if(|b| quiet(b)) {
        hc_log!(
            NGX_LOG_NOTICE,
            "probes give verdicts again after {} without one for a local reason in {} ms",
            burst.count,
            now.saturating_sub(burst.since_ms)
        );
    }
    let duration_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
    let (transition, health, next, keep, panic) = {
        let mut locked = w.header.lock();
        let s = &mut locked.slots()[slot];
        if !s.sched.owns(w.pid) {
            // The lease was taken over (or the checks restarted): the result is dropped.
            let next = now + s.sched.wake_in(now, w.pid);
            drop(locked);
            requeue(w, slot, next);
            arm_next(w);
            return;
        }
        let t = s
            .health
            .record(outcome, unix_msec(), duration_us, p.rise, p.fall);
        w.header.writer.count_probe();
        // The next interval depends on the verdict this result leaves.
        let interval = next_interval_ms(p, &s.health);
        let random = ngx_random() as u64;
        let planned = s.sched.finish(now, w.pid, interval, p.jitter_ms, random);
        debug_assert!(planned, "owned under the same lock");
        let keep = kept.as_ref().is_some_and(|k| {
            let facts = PeerFacts {
                config_down: w.targets[slot].config_down,
                checked: true,
                excluded: w.excluded[ui],
                standby: w.standby,
                healthy: s.health.is_up(),
                manual_down: false,
                passive_down: false,
                panic: w.panic[ui],
            };
            !exiting()
                && facts.keeps_probe_connection()
                && connection_reusable(true, k.carried, p.keepalive)
        });
        s.sched.keep_prober(w.pid, keep);
        let (health, next) = (s.health, s.sched.next_due_ms);
        locked.upstreams()[ui]
            .probe_durations
            .observe(u64::from(duration_us));
        let mut panic = None;
        if let Some(t) = t {
            locked.record(Change::Slot(slot));
            if up.counts_for_panic(w.targets[slot].peer()) {
                let state = &mut locked.upstreams()[ui].panic;
                panic = state
                    .on_transition(t == Transition::Up, up.panic.as_ref())
                    .map(|change| (change, *state));
                if panic.is_some() {
                    // Every worker re-reads the upstream's peers and sets their flags.
                    locked.record(Change::Upstream(ui));
                }
            }
        }
        (t, health, next, keep, panic)
    };
    hc_debug!(
        "probe of {} in upstream \"{}\" ended in {} us: {}",
        LogEscaped(&name),
        LogEscaped(&up.name),
        duration_us,
        outcome
            .failure
            .map_or_else(|| "passed".to_string(), |f| f.to_string())
    );
    requeue(w, slot, next);
    if let Some(kept) = kept.filter(|_| keep) {
        kept.park(slot);
    }
    match transition {
        Some(Transition::Down) => {
            let status = health
                .last_status()
                .map(|s| format!(" (status {s})"))
                .unwrap_or_default();
            let error = health
                .last_error()
                .map(
                    |e| match detail_text(check, e, health.last_detail, health.last_status()) {
                        Some(detail) => format!("{e}: {detail}"),
                        None => e.to_string(),
                    },
                )
                .unwrap_or_default();
            hc_log!(
                NGX_LOG_WARN,
                "peer {} in upstream \"{}\" is DOWN after {} failed checks, last error: {error}{status}",
                LogEscaped(&name),
                LogEscaped(&up.name),
                health.fall_count
            );
        }
        Some(Transition::Up) => {
            hc_log!(
                NGX_LOG_WARN,
                "peer {} in upstream \"{}\" is UP after {} successful checks",
                LogEscaped(&name),
                LogEscaped(&up.name),
                health.rise_count
            );
        }
        None => {}
    }
    if let Some((change, state)) = panic {
        log_panic(up, change, &state);
    }
    if transition.is_some() {
        peers::apply_changes(w);
    }
    arm_next(w);
}

/// Puts `slot` back in the queue for `at`, unless its upstream is no longer probed here.
fn requeue(w: &mut Worker, slot: usize, at: u64) {
    let probed = !w.standby
        && !w.is_hidden(slot)
        && w.targets
            .get(slot)
            .is_some_and(|t| !w.excluded[t.upstream()]);
    w.queue.set(slot, probed.then_some(at));
}

/// Counts a local error in this worker's current run of them and logs the start of a run.
fn note_local_error(w: &mut Worker, now: u64, reason: &str) {
    if let Some(burst) = &mut w.local_burst {
        burst.count += 1;
        burst.last_ms = now;
        return;
    }
    w.local_burst = Some(LocalBurst {
        count: 1,
        since_ms: now,
        last_ms: now,
    });
    hc_log!(
        NGX_LOG_ERR,
        "probes give no verdict: {reason} ({} in flight)",
        w.queue.in_flight()
    );
}
