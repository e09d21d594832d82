//! Process start and exit: the worker's state, built in `init_process`, dropped in
//! `exit_process`, and the one way to reach it.

use core::cell::Cell;
use core::ptr;
use std::borrow::Cow;
use std::rc::Rc;

use ngx::ffi::{
    ngx_cycle, ngx_cycle_t, ngx_event_t, ngx_exiting, ngx_int_t, ngx_log_t, ngx_pid, ngx_process,
    ngx_quit, ngx_terminate, NGX_LOG_EMERG, NGX_OK, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};
use ngx::http::HttpModuleMainConf;

use crate::module::keepalive;
use crate::module::log::hc_log;
use crate::module::module_conf::{Check, MainConf, PeerConf, UpstreamConf};
use crate::module::peers::{self, Sweep, Target};
use crate::module::probe::{self, Probe};
use crate::module::ramp::{self, Ramps};
use crate::module::zone::ZoneHeader;
use crate::module::{attempts, etcd, tick, tls, Module};
use crate::schedule::{batch_ms, DueQueue};

/// One slot's state as the last application of changes read it (see `peers::apply_changes`).
#[derive(Clone, Copy)]
pub struct SlotView {
    /// u32 keeps a view small: a journal's or a sweep chunk's worth are held at once.
    pub slot: u32,
    pub healthy: bool,
    pub manual_down: bool,
    /// Ejected by passive checks (an upstream without active checks).
    pub passive_down: bool,
    /// When this worker should next look at the slot; `None` while this worker has its probe
    /// in flight.
    pub look_at: Option<u64>,
    /// How long ago the peer came back into service (slow start; `Slot::back_ms_ago`).
    pub back_ms_ago: Option<u64>,
    /// Not shown nor used: a free reserved peer, or a static one replaced by etcd's.
    pub hidden: bool,
    /// The member of a reserved peer (`upstream_healthcheck_dynamic`).
    pub member: Option<MemberView>,
}

/// The name of a reserved peer's member and the probe request of its `check_url`.
#[derive(Default)]
pub struct MemberMeta {
    pub generation: u32,
    pub name: String,
    pub url: String,
    /// The request for `url`; `None` when the upstream's applies.
    pub request: Option<Rc<[u8]>>,
}

/// What a worker keeps of the member of a reserved peer.
#[derive(Clone, Copy, Default)]
pub struct MemberView {
    /// `Member::generation`: a change means another peer in the slot.
    pub generation: u32,
    pub weight: u32,
    /// `"status": "down"`.
    pub down: bool,
    pub slow_start_ms: u64,
}

/// A run of probes that gave no verdict for a local reason: logged once when it begins and
/// once when it ends, never per probe.
#[derive(Default)]
pub struct LocalBurst {
    pub count: u64,
    pub since_ms: u64,
    /// When the last local error of the run happened.
    pub last_ms: u64,
}

/// Everything one worker needs to run probes; lives from init_process to exit_process.
pub struct Worker {
    /// The cycle this worker was built for; see `with_worker`.
    pub cycle: *mut ngx_cycle_t,
    pub main: &'static MainConf,
    pub header: &'static ZoneHeader,
    pub pid: i32,
    pub timer: ngx_event_t,
    /// The log probe connections use: the cycle's, quietened so that nginx does not log a
    /// line per failed connect; the checker logs failures itself, once per change.
    pub probe_log: ngx_log_t,
    /// The log of https probe connections (see `tls::quiet_log`).
    pub tls_log: ngx_log_t,
    /// Probes in flight from this worker, each knowing its index here; closed by exit_process.
    pub probes: Vec<*mut Probe>,
    /// The peers this worker may probe, by due time, and the cap on probes in flight.
    pub queue: DueQueue,
    /// Indexed by slot.
    pub targets: Vec<Target>,
    /// Upstreams excluded from checking at run time, as of the last application of changes.
    pub excluded: Vec<bool>,
    /// Upstreams in panic (`panic_threshold`), as of the last application of changes.
    pub panic: Vec<bool>,
    /// Upstreams whose static servers etcd's peers replaced, as of the last application.
    pub replaced: Vec<bool>,
    /// The members of the reserved peers as last applied, by slot (empty without
    /// `upstream_healthcheck_dynamic`).
    pub members: Vec<MemberView>,
    /// Their names and probe requests, by slot, kept up to date under the zone lock.
    pub member_meta: Vec<MemberMeta>,
    /// Slots not in use, by slot (free reserved peers, static ones replaced by etcd's):
    /// never probed.
    pub hidden: Vec<bool>,
    /// This host is the HA standby, as of the last application of changes.
    pub standby: bool,
    /// The journal position up to which changes are applied.
    pub applied: u64,
    /// Scratch space for `apply_changes`, reused: at most a journal or a sweep chunk of views.
    pub views: Vec<SlotView>,
    /// Whole upstreams or everything to re-read after the journal, in chunks.
    pub sweeps: Vec<Sweep>,
    /// When to look for the HA address next.
    pub ha_next_ms: u64,
    /// How early a scan starts probes, to wake once per batch: `schedule::batch_ms`.
    pub batch_ms: u64,
    /// The current run of local errors, if any.
    pub local_burst: Option<LocalBurst>,
    /// The peers ramping up after coming back (slow start).
    pub ramps: Ramps,
    /// When to look at the state file's writer lease next (`state_store::tick`).
    pub state_next_ms: u64,
    /// This worker's side of etcd (`upstream_healthcheck_etcd`).
    pub etcd: Option<Box<etcd::Client>>,
}

impl Worker {
    /// The upstream, check and peer behind a slot; `None` for an unchecked upstream.
    pub fn check_of(
        &self,
        slot: usize,
    ) -> Option<(&'static UpstreamConf, &'static Check, &'static PeerConf)> {
        let t = self.targets.get(slot)?;
        let main: &'static MainConf = self.main;
        let up = main.upstreams.get(t.upstream())?;
        Some((up, up.check.as_ref()?, up.peers.get(t.peer())?))
    }

    /// The slot's peer is not in use (see `hidden`).
    pub fn is_hidden(&self, slot: usize) -> bool {
        self.hidden.get(slot).copied().unwrap_or(false)
    }

    /// The name of the peer behind a slot: an etcd-learned one's address, or nginx's name.
    pub fn peer_name(&self, slot: usize) -> Cow<'static, str> {
        let Some((_, _, peer)) = self.check_of(slot) else {
            return Cow::Borrowed("");
        };
        match self.member_meta.get(slot).filter(|_| peer.reserved) {
            Some(m) => Cow::Owned(m.name.clone()),
            None => Cow::Borrowed(peer.name),
        }
    }

    /// True when `w` belongs to an older cycle (a reload with `master_process off`) and must
    /// not touch the zone, which nginx freed.
    pub fn is_stale(&self) -> bool {
        // SAFETY: reading nginx's running-cycle pointer.
        self.cycle != unsafe { ngx_cycle }
    }
}

/// This process's worker; null outside workers, before init_process and after exit_process.
static mut WORKER: *mut Worker = ptr::null_mut();

thread_local! {
    /// Set while a `&mut Worker` handed out by `with_worker` is alive.
    static BORROWED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this process's worker, even one of an older cycle (only to close probes
/// then). `None` when there is none, or when called from inside another `with_any_worker`
/// (nothing nginx calls back into does that; the check keeps two `&mut` from ever existing).
pub fn with_any_worker<R>(f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
    if BORROWED.with(|b| b.replace(true)) {
        return None;
    }
    // SAFETY: single-threaded; WORKER is null or the live worker of this process, and the
    // BORROWED flag makes this the only reference to it while f runs.
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
    probe_log.log_level = probe_log.log_level.min(NGX_LOG_EMERG as _);
    probe_log.next = ptr::null_mut();

    let targets = peers::targets(main);
    // SAFETY: connection_n is the worker_connections setting.
    let connections = unsafe { (*cycle).connection_n };
    let slots = targets.len();
    keepalive::init(connections);
    let worker = Box::new(Worker {
        cycle,
        main,
        header,
        // SAFETY: ngx_pid is this process's pid.
        pid: unsafe { ngx_pid },
        // SAFETY: an all-zero ngx_event_t is its idle state (ngx_pcalloc'ed events are too).
        timer: unsafe { core::mem::zeroed() },
        tls_log: tls::quiet_log(&probe_log),
        probe_log,
        probes: Vec::new(),
        queue: DueQueue::new(slots, probe_cap(connections)),
        targets,
        excluded: vec![false; main.upstreams.len()],
        panic: vec![false; main.upstreams.len()],
        replaced: vec![false; main.upstreams.len()],
        members: if main.has_dynamic() {
            vec![MemberView::default(); slots]
        } else {
            Vec::new()
        },
        member_meta: if main.has_dynamic() {
            (0..slots).map(|_| MemberMeta::default()).collect()
        } else {
            Vec::new()
        },
        hidden: if main.has_dynamic() {
            vec![false; slots]
        } else {
            Vec::new()
        },
        standby: false,
        applied: 0,
        views: Vec::new(),
        sweeps: Vec::new(),
        ha_next_ms: 0,
        batch_ms: batch_ms(
            main.upstreams
                .iter()
                .filter_map(|u| u.check.as_ref())
                .flat_map(|c| {
                    let p = &c.params;
                    [p.interval_ms, p.fast_interval_ms, p.down_interval_ms]
                })
                .min()
                .unwrap_or(0),
        ),
        local_burst: None,
        ramps: Ramps::default(),
        state_next_ms: 0,
        etcd: None,
    });
    let w = Box::into_raw(worker);
    // SAFETY: w is a fresh, exclusively owned allocation; the event is initialised before it
    // is armed, and WORKER is only touched from this single-threaded process.
    unsafe {
        let w = &mut *w;
        w.timer.handler = Some(tick::on_tick);
        w.timer.data = w as *mut Worker as *mut _;
        w.timer.log = (*cycle).log;
        w.timer.set_cancelable(1);
        WORKER = w;
    }
    with_worker(|w| {
        // Weights scaled for slow start, then verdicts (and the ramps in force), so a new
        // worker never proxies to a peer already known down.
        ramp::init(w);
        peers::resync(w);
        attempts::init(w);
        tick::arm(w, 1);
        etcd::start(w);
    });
    NGX_OK as ngx_int_t
}

/// Probes may hold at most this many of a worker's connections: an eighth of
/// `worker_connections`, at least one, so that probes never crowd out client traffic.
pub fn probe_cap(worker_connections: usize) -> usize {
    (worker_connections / 8).max(1)
}

/// `ngx_module_t.exit_process`: close the probes still in flight (nginx reports sockets left
/// open by an exiting worker), drop the timer and the worker state.
pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    stop();
}

/// Ends this process's worker: its probes are closed without a verdict.
pub fn stop() {
    if BORROWED.with(|b| b.get()) {
        return;
    }
    // SAFETY: single-threaded and not borrowed (checked above); WORKER was set by
    // init_process of this process or is null.
    unsafe {
        let w = WORKER;
        if w.is_null() {
            return;
        }
        WORKER = ptr::null_mut();
        if (*w).timer.timer_set() != 0 {
            ngx::ffi::ngx_del_timer(&mut (*w).timer);
        }
        etcd::stop(&mut *w);
        for p in core::mem::take(&mut (*w).probes) {
            probe::abort(p);
        }
        keepalive::close_all();
        tls::forget_sessions();
        attempts::clear();
        drop(Box::from_raw(w));
    }
}

/// Stops a worker left behind by a reload without a master process: nginx itself runs on
/// without connections for the new cycle, so the checks stop rather than touch freed memory.
pub fn stop_if_stale() -> bool {
    if with_any_worker(|w| w.is_stale()) != Some(true) {
        return false;
    }
    stop();
    hc_log!(
        NGX_LOG_WARN,
        "checks stopped: nginx was reloaded without a master process, restart it instead"
    );
    true
}
