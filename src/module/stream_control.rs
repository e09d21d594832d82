//! The control endpoint's commands on the stream module's upstreams (`k=stream`): exclusions
//! and manual downs written into the stream zone, with a journal entry each, which the stream
//! module's workers apply within a tick or before their next balancer pick.

use crate::control::{expiry, ttl_left, Action, Answer, Command, Entry, Subject};
use crate::health::PeerHealth;
use crate::journal::Change;
use crate::module::stream_status::lock;
use crate::query::QueryError;
use crate::schedule::Schedule;
use crate::stream_zone::{StreamUpstream, StreamZone};

/// The slots of an upstream's peers.
fn range(u: &StreamUpstream, nslots: usize) -> core::ops::Range<usize> {
    let first = (u.first_slot as usize).min(nslots);
    first..(first + u.npeers as usize).min(nslots)
}

fn err(status: u16, message: String) -> QueryError {
    QueryError { status, message }
}

/// Carries out one command on the stream zone; `exiting`: this worker is on its way out.
pub fn execute(
    zone: &StreamZone,
    command: Command,
    now: u64,
    exiting: bool,
) -> Result<Answer, QueryError> {
    let _locked = lock(zone);
    if command.changes_state() && (zone.is_superseded() || exiting) {
        return Err(err(503, "nginx is reloading, retry".to_owned()));
    }
    // SAFETY: the lock is held until the end of this function.
    let (ups, slots) = unsafe { (zone.upstreams_locked(), zone.slots_locked()) };
    let peers = zone.peers();
    let nslots = slots.len();
    let Command::Apply { subject, action } = command else {
        let mut entries = Vec::new();
        for u in ups.iter() {
            let upstream = zone.name(u.name).to_owned();
            if u.excluded() {
                entries.push(Entry {
                    upstream: upstream.clone(),
                    peer: None,
                    ttl_secs: ttl_left(u.excluded_until_ms, now),
                });
            }
            for s in range(u, nslots).filter(|&s| slots[s].manual_down()) {
                entries.push(Entry {
                    upstream: upstream.clone(),
                    peer: Some(zone.name(peers[s].name).to_owned()),
                    ttl_secs: ttl_left(slots[s].manual_until_ms, now),
                });
            }
        }
        return Ok(Answer::List(entries));
    };
    let name = match &subject {
        Subject::Exclusion { upstream } | Subject::ManualDown { upstream, .. } => upstream,
    };
    let ui = (0..ups.len())
        .find(|&ui| zone.name(ups[ui].name) == name)
        .ok_or_else(|| err(404, format!("unknown stream upstream {name:?}")))?;
    match subject {
        Subject::Exclusion { upstream } => {
            let until = ups[ui].excluded_until_ms;
            match action {
                Action::Set { ttl_secs } => {
                    ups[ui].excluded_until_ms = expiry(now, ttl_secs);
                    zone.note_expiry(ups[ui].excluded_until_ms);
                }
                Action::Del => {
                    ups[ui].excluded_until_ms = 0;
                    if until != 0 && ups[ui].checked() {
                        // Checks restart with fresh counters, all peers probed at once.
                        for s in range(&ups[ui], nslots) {
                            slots[s].health = PeerHealth::new(ups[ui].default_down == 0);
                            slots[s].sched = Schedule::restart(now);
                        }
                    }
                }
                Action::Get => {
                    return Ok(Answer::Get((until != 0).then(|| Entry {
                        upstream,
                        peer: None,
                        ttl_secs: ttl_left(until, now),
                    })))
                }
            }
            // SAFETY: the lock is held.
            unsafe { zone.record_locked(Change::Upstream(ui)) };
            Ok(if matches!(action, Action::Del) {
                Answer::Deleted
            } else {
                Answer::Set
            })
        }
        Subject::ManualDown { upstream, peer } => {
            let matched: Vec<usize> = range(&ups[ui], nslots)
                .filter(|&s| zone.name(peers[s].name) == peer)
                .collect();
            let Some(&first) = matched.first() else {
                return Err(err(
                    404,
                    format!("unknown peer {peer:?} in stream upstream {upstream:?}"),
                ));
            };
            let until = match action {
                Action::Get => {
                    let s = slots[first];
                    return Ok(Answer::Get(s.manual_down().then(|| Entry {
                        upstream,
                        peer: Some(peer),
                        ttl_secs: ttl_left(s.manual_until_ms, now),
                    })));
                }
                Action::Set { ttl_secs } => expiry(now, ttl_secs),
                Action::Del => 0,
            };
            for &s in &matched {
                slots[s].manual_until_ms = until;
                // SAFETY: the lock is held.
                unsafe { zone.record_locked(Change::Slot(s)) };
            }
            zone.note_expiry(if until == 0 { u64::MAX } else { until });
            Ok(if until == 0 {
                Answer::Deleted
            } else {
                Answer::Set
            })
        }
    }
}
