//! The state file on disk (`upstream_healthcheck_state_file`): read when the zone starts fresh,
//! written atomically by the worker holding the writer's lease when something changed, and by
//! the master at exit, once every worker is gone. It keeps the membership learnt from etcd
//! too, so that a start while etcd is down serves it until etcd answers.

use core::sync::atomic::Ordering;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ngx::ffi::{ngx_cycle_t, ngx_time_update};
use ngx::http::HttpModuleMainConf;

use crate::escape::LogEscaped;
use crate::health::PeerHealth;
use crate::key::peer_key;
use crate::membership::{Member, MemberValue};
use crate::module::clock::{now_msec, unix_msec};
use crate::module::log::hc_log;
use crate::module::module_conf::MainConf;
use crate::module::process::Worker;
use crate::module::zone::{
    member_key, upstream_key, with_lock_or_without, Locked, Slot, ZoneHeader,
};
use crate::module::Module;
use crate::state_file::{
    self, until_from_file, until_to_file, MemberState, Membership, MembershipState, Now, PeerState,
    State, UpstreamState,
};
use crate::state_lease::{WriteReport, WRITE_EVERY_MS};

/// A peer as the state file kept it.
#[derive(Clone, Copy)]
pub struct RestoredPeer {
    /// Its verdict and counters, when its upstream was checked.
    pub health: Option<PeerHealth>,
    /// Its manual down as the zone keeps it (monotonic end, `u64::MAX` without ttl); 0 when
    /// none.
    pub manual_until_ms: u64,
}

impl RestoredPeer {
    /// A peer's state as the file kept it: its verdict when its upstream is still `checked`,
    /// its manual down when it has not ended by `now`.
    fn of(
        health: Option<PeerHealth>,
        manual_down: Option<state_file::Until>,
        checked: bool,
        now: Now,
    ) -> RestoredPeer {
        RestoredPeer {
            health: health.filter(|_| checked),
            manual_until_ms: manual_down
                .and_then(|m| until_from_file(m, now))
                .unwrap_or(0),
        }
    }
}

/// What a fresh start takes from the state file, by the keys the zone uses.
#[derive(Default)]
pub struct Restored {
    peers: HashMap<u64, RestoredPeer>,
    /// Monotonic end of each excluded upstream's exclusion, by upstream name.
    excluded: HashMap<String, u64>,
    /// The members etcd last gave each upstream with `upstream_healthcheck_dynamic`, in the
    /// file's order, by upstream name (their state is in `peers`, by `member_key`).
    members: HashMap<String, Vec<Member>>,
    /// The etcd revision of those members (0: not known).
    pub revision: u64,
}

impl Restored {
    pub fn peer(&self, key: u64) -> Option<&RestoredPeer> {
        self.peers.get(&key)
    }

    /// The end of the upstream's exclusion as the zone keeps it; 0 when not excluded.
    pub fn excluded_until(&self, upstream: &str) -> u64 {
        self.excluded.get(upstream).copied().unwrap_or(0)
    }

    /// The members etcd last gave `upstream`, when the file has them: its peers until etcd
    /// answers (possibly none: etcd's directory was empty).
    pub fn members(&self, upstream: &str) -> Option<&[Member]> {
        self.members.get(upstream).map(Vec::as_slice)
    }
}

/// Reads the state file when the zone starts fresh (in the master, before any worker). A
/// missing file means a fresh start; a file that cannot be read or used is reported once and
/// ignored: the checks start as without one.
pub fn read(main: &MainConf, now: Now) -> Option<Restored> {
    let path = main.state_path()?;
    // SAFETY: the configuration's cycle lives while its zone is initialized; its log is set
    // up (the new cycle's) before shared memory is.
    let log = unsafe { main.cycle.as_ref() }.map_or(core::ptr::null_mut(), |c| c.log);
    let ignored = |reason: &dyn core::fmt::Display| {
        if !log.is_null() {
            ngx::ngx_log_error!(
                ngx::ffi::NGX_LOG_WARN,
                log,
                "upstream_healthcheck: state file \"{}\" is ignored: {reason}",
                shown(path)
            );
        }
    };
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            ignored(&step("read()".to_string())(e).0);
            return None;
        }
    };
    let state = match state_file::decode(&bytes, now.unix_ms) {
        Ok(state) => state,
        Err(e) => {
            ignored(&e);
            return None;
        }
    };
    let (peers, downs, excluded) = state.counts();
    if !log.is_null() {
        ngx::ngx_log_error!(
            ngx::ffi::NGX_LOG_NOTICE,
            log,
            "upstream_healthcheck: state of {peers} peers ({downs} manual downs, {excluded} \
             exclusions) taken from \"{}\", written {} s ago",
            shown(path),
            now.unix_ms.saturating_sub(state.written_unix_ms) / 1000
        );
    }
    if !log.is_null() {
        log_membership(log, path, main, &state);
    }
    Some(restore(main, &state, now))
}

/// Says what the file's membership section gives: the members of each upstream that still has
/// `upstream_healthcheck_dynamic`, and what is left out and why.
fn log_membership(log: *mut ngx::ffi::ngx_log_t, path: &Path, main: &MainConf, state: &State) {
    if let Some(first) = state.skipped.first() {
        ngx::ngx_log_error!(
            ngx::ffi::NGX_LOG_WARN,
            log,
            "upstream_healthcheck: state file \"{}\": {} membership entr{} skipped, the first: {}",
            shown(path),
            state.skipped.len(),
            if state.skipped.len() == 1 { "y" } else { "ies" },
            LogEscaped(first)
        );
    }
    let Some(membership) = &state.membership else {
        return;
    };
    let mut used = 0;
    for u in &membership.upstreams {
        if dynamic(main, &u.name) {
            used += 1;
        } else {
            ngx::ngx_log_error!(
                ngx::ffi::NGX_LOG_NOTICE,
                log,
                "upstream_healthcheck: the membership of upstream \"{}\" in state file \"{}\" \
                 is ignored: no upstream of that name has upstream_healthcheck_dynamic",
                LogEscaped(&u.name),
                shown(path)
            );
        }
    }
    if used > 0 {
        ngx::ngx_log_error!(
            ngx::ffi::NGX_LOG_NOTICE,
            log,
            "upstream_healthcheck: membership of {used} upstream(s) taken from \"{}\" (etcd \
             revision {}): used until etcd answers",
            shown(path),
            membership.revision
        );
    }
}

/// Whether the configuration has an upstream `name` with `upstream_healthcheck_dynamic`.
fn dynamic(main: &MainConf, name: &str) -> bool {
    main.upstreams
        .iter()
        .any(|up| up.name == name && up.dynamic.is_some())
}

/// A path as the error log shows it.
fn shown(path: &Path) -> String {
    LogEscaped(&path.display().to_string()).to_string()
}

/// The file's state by the zone's keys; peers and upstreams the configuration no longer has
/// are left out by the lookups that never ask for them.
fn restore(main: &MainConf, state: &State, now: Now) -> Restored {
    let mut restored = Restored::default();
    let checked: HashSet<&str> = main
        .upstreams
        .iter()
        .filter(|up| up.check.is_some())
        .map(|up| up.name.as_str())
        .collect();
    for u in &state.upstreams {
        let checked = checked.contains(u.name.as_str());
        if let Some(until) = u.excluded.and_then(|e| until_from_file(e, now)) {
            restored.excluded.insert(u.name.clone(), until);
        }
        for p in &u.peers {
            let key = peer_key(u.name.as_bytes(), p.name.as_bytes(), p.occurrence);
            let peer = RestoredPeer::of(p.health, p.manual_down, checked, now);
            restored.peers.insert(key, peer);
        }
    }
    let membership = state.membership.iter().flat_map(|m| &m.upstreams);
    for u in membership.filter(|u| dynamic(main, &u.name)) {
        let checked = checked.contains(u.name.as_str());
        let members = u
            .members
            .iter()
            .map(|p| {
                let peer = RestoredPeer::of(p.health, p.manual_down, checked, now);
                restored.peers.insert(member_key(&u.name, &p.addr), peer);
                let mut m = Member::default();
                m.assign(upstream_key(&u.name), &p.addr);
                m.set_value(&p.value);
                m
            })
            .collect();
        restored.members.insert(u.name.clone(), members);
    }
    restored.revision = state.membership.as_ref().map_or(0, |m| m.revision);
    restored
}

/// The zone's state at one moment, copied under the lock and written without it.
struct Snapshot {
    head: u64,
    probes: u64,
    slots: Vec<Slot>,
    /// Each upstream's `excluded_until_ms`.
    excluded: Vec<u64>,
    /// Each upstream's members from etcd with their slots, in the order of its reserved
    /// peers; `None` until etcd's peers replaced its static ones.
    members: Vec<Option<Vec<(usize, Member)>>>,
    /// The etcd revision the zone reflects (0: not known).
    revision: u64,
}

/// Copies the zone's state (O(slots), once a second at most, and at exit).
fn snapshot(main: &MainConf, header: &ZoneHeader, locked: &mut Locked<'_>) -> Snapshot {
    let replaced: Vec<bool> = locked.upstreams().iter().map(|u| u.replaced).collect();
    let members = main
        .upstreams
        .iter()
        .enumerate()
        .map(|(ui, up)| {
            let d = up
                .dynamic
                .as_ref()
                .filter(|_| replaced.get(ui) == Some(&true))?;
            let all = locked.members();
            let used = up.peers[d.first..d.first + d.max]
                .iter()
                .filter_map(|p| {
                    let m = all.get(p.slot())?;
                    m.used.then(|| (p.slot(), *m))
                })
                .collect();
            Some(used)
        })
        .collect();
    Snapshot {
        head: header.journal_head(),
        probes: header.writer.probes(),
        slots: locked.slots().to_vec(),
        excluded: locked
            .upstreams()
            .iter()
            .map(|u| u.excluded_until_ms)
            .collect(),
        members,
        revision: header
            .writer
            .membership_revision(header.etcd.revision.load(Ordering::Acquire)),
    }
}

/// A slot's manual down as the file keeps it.
fn manual_down_of(s: &Slot, now: Now) -> Option<state_file::Until> {
    s.manual_down()
        .then(|| until_to_file(s.manual_until_ms, now))
        .flatten()
}

/// The membership section of a snapshot; `None` when no upstream has etcd's peers.
fn membership_of(main: &MainConf, snap: &Snapshot, now: Now) -> Option<Membership> {
    let upstreams: Vec<MembershipState> = main
        .upstreams
        .iter()
        .zip(&snap.members)
        .filter_map(|(up, members)| {
            let members = members
                .as_ref()?
                .iter()
                .filter_map(|(slot, m)| {
                    let s = snap.slots.get(*slot)?;
                    Some(MemberState {
                        addr: m.addr().to_string(),
                        value: MemberValue {
                            weight: m.weight,
                            slow_start_ms: m.slow_start_ms,
                            check_url: m.check_url().map(str::to_string),
                            down: m.down,
                            error: m.error(),
                        },
                        health: up.check.is_some().then_some(s.health),
                        manual_down: manual_down_of(s, now),
                    })
                })
                .collect();
            Some(MembershipState {
                name: up.name.clone(),
                members,
            })
        })
        .collect();
    (!upstreams.is_empty()).then_some(Membership {
        revision: snap.revision,
        upstreams,
    })
}

/// The snapshot as the file keeps it.
fn state_of(main: &MainConf, snap: &Snapshot, now: Now) -> State {
    let upstreams = main
        .upstreams
        .iter()
        .enumerate()
        .map(|(ui, up)| {
            let mut seen: HashMap<&str, u32> = HashMap::new();
            // Reserved peers are in the membership section, by their members.
            let peers = up
                .peers
                .iter()
                .filter(|peer| !peer.reserved)
                .filter_map(|peer| {
                    let n = seen.entry(peer.name).or_default();
                    let occurrence = *n;
                    *n += 1;
                    let s = snap.slots.get(peer.slot())?;
                    Some(PeerState {
                        name: peer.name.to_string(),
                        occurrence,
                        health: up.check.is_some().then_some(s.health),
                        manual_down: manual_down_of(s, now),
                    })
                })
                .collect();
            let excluded = snap.excluded.get(ui).copied().unwrap_or(0);
            UpstreamState {
                name: up.name.clone(),
                excluded: (excluded != 0)
                    .then(|| until_to_file(excluded, now))
                    .flatten(),
                peers,
            }
        })
        .collect();
    State {
        written_unix_ms: now.unix_ms,
        upstreams,
        membership: membership_of(main, snap, now),
        skipped: Vec::new(),
    }
}

/// A failed step of a write, as nginx words them: `rename() "a" to "b" failed (13: ...)`.
struct WriteError(String);

fn step(what: String) -> impl FnOnce(io::Error) -> WriteError {
    move |e| {
        let code = e.raw_os_error().unwrap_or(0);
        let text = e.to_string();
        let text = text.split(" (os error").next().unwrap_or(&text).to_string();
        WriteError(format!("{what} failed ({code}: {text})"))
    }
}

/// Writes `text` to `path` atomically: a temporary file in the same directory, written and
/// synced, renamed over `path`; the directory is synced after. A reader sees the old file or
/// the new one, never a part. Returns the new file's device and inode.
fn write_atomically(path: &Path, text: &[u8]) -> Result<(u64, u64), WriteError> {
    let mut tmp = OsString::from(path.as_os_str());
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // One left by a process of the same pid that died mid-write.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(step(format!("open() \"{}\"", tmp.display())))?;
        f.write_all(text)
            .and_then(|()| f.sync_all())
            .map_err(step(format!("write() to \"{}\"", tmp.display())))?;
        let meta = f
            .metadata()
            .map_err(step(format!("fstat() \"{}\"", tmp.display())))?;
        fs::rename(&tmp, path).map_err(step(format!(
            "rename() \"{}\" to \"{}\"",
            tmp.display(),
            path.display()
        )))?;
        Ok((meta.dev(), meta.ino()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // The rename itself reaches the disk with its directory.
    if let Some(dir) = path.parent().and_then(|d| fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    result
}

/// Writes the snapshot and records the attempt; logs the first failure (error) and the first
/// success after failures (notice), never one line per attempt.
fn write(main: &MainConf, header: &ZoneHeader, path: &Path, snap: &Snapshot, now: Now) {
    let result = state_file::encode(&state_of(main, snap, now))
        .map_err(|e| WriteError(format!("encoding failed ({e})")))
        .and_then(|text| write_atomically(path, text.as_bytes()));
    if let Ok((dev, ino)) = result {
        header.writer.wrote_file(dev, ino);
    }
    let report = header
        .writer
        .attempted(result.is_ok(), snap.head, snap.probes, now.mono_ms);
    match (report, result) {
        (Some(WriteReport::Failing), Err(WriteError(e))) => hc_log!(
            NGX_LOG_ERR,
            "cannot write state file \"{}\": {}",
            shown(path),
            e
        ),
        (Some(WriteReport::Recovered), _) => hc_log!(
            NGX_LOG_NOTICE,
            "state file \"{}\" is written again",
            shown(path)
        ),
        _ => {}
    }
}

/// On each tick of every worker: the worker holding the writer's lease (or taking it over
/// from one that is gone) writes the state, at most once a second, when it changed.
pub fn tick(w: &mut Worker, now: u64) {
    let main = w.main;
    let Some(path) = main.state_path() else {
        return;
    };
    if now < w.state_next_ms {
        return;
    }
    w.state_next_ms = now + WRITE_EVERY_MS;
    let header = w.header;
    let snap = {
        let mut locked = header.lock();
        // A newer cycle copied this zone: it writes from now on.
        if header.is_superseded()
            || !header.writer.take(w.pid, now)
            || !header.writer.due(header.journal_head(), now)
        {
            return;
        }
        snapshot(main, header, &mut locked)
    };
    let now = Now {
        mono_ms: now,
        unix_ms: unix_msec(),
    };
    write(main, header, path, &snap, now);
}

/// `ngx_module_t.exit_master`: the master writes the final state once every worker has exited
/// (`nginx -s quit` and `nginx -s stop` alike); the zone is still mapped. A file another
/// process wrote since this nginx's last write is newer than this state and is kept.
pub extern "C" fn exit_master(cycle: *mut ngx_cycle_t) {
    // SAFETY: nginx passes its running cycle; the main conf lives as long as it.
    let Some(main) = Module::main_conf(unsafe { &*cycle }) else {
        return;
    };
    let Some(path) = main.state_path() else {
        return;
    };
    // SAFETY: set by the zone's init in this cycle; mapped until the master exits.
    let Some(header) = (unsafe { main.header.as_ref() }) else {
        return;
    };
    // SAFETY: the master updates nginx's cached clocks between signals; it is idle now.
    unsafe { ngx_time_update() };
    let now = Now {
        mono_ms: now_msec(),
        unix_ms: unix_msec(),
    };
    // Another process wrote the file since this nginx did (the new master of a binary
    // upgrade): its state is newer, it is left as it is.
    if let (Some(ours), Ok(now_there)) = (header.writer.last_file(), fs::metadata(path)) {
        if ours != (now_there.dev(), now_there.ino()) {
            hc_log!(
                NGX_LOG_NOTICE,
                "state file \"{}\" was written by another process since, it is left as it is",
                shown(path)
            );
            return;
        }
    }
    let snap = with_lock_or_without(header, "writing the state file", |locked| {
        snapshot(main, header, locked)
    });
    write(main, header, path, &snap, now);
}
