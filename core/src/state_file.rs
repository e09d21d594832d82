//! The state file's format (`upstream_healthcheck_state_file`): the verdicts, counters, manual
//! downs and exclusions as versioned JSON, encoded and decoded with the time passed in.
//!
//! The file is one JSON object:
//!
//! ```json
//! {"format": "nginx-upstream-healthcheck-state", "version": 1, "written": 1764392000123,
//!  "upstreams": [{"name": "backend", "excluded": {"until": 1764392060000},
//!                 "peers": [{"peer": "127.0.0.1:8081", "up": false, "fall_count": 3, ...,
//!                            "manual_down": {"until": null}}]}],
//!  "membership": {"revision": 42, "upstreams": [{"name": "backend",
//!                 "members": [{"peer": "127.0.0.1:8082", "value": {"weight": 2},
//!                              "up": true, "checks": 12, ...}]}]}}
//! ```
//!
//! Times are Unix milliseconds, so that a ttl runs on while nginx is stopped; `"until": null`
//! is a manual down or an exclusion without a ttl. `membership` is what etcd said of the
//! upstreams with `upstream_healthcheck_dynamic` (each member's address, its key's value as
//! etcd's JSON and its state like a peer's), at the etcd `revision` it reflects; it is left out
//! until etcd has been read. Sections other than these are ignored, and so are fields this
//! version does not know: later versions add sections without breaking older readers of the
//! same version. A member entry that cannot be used is skipped with its reason, the others
//! are kept.

use core::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::health::PeerHealth;
use crate::membership::{parse_addr, parse_value, MemberValue, ValueError};
use crate::outcome::Failure;

/// The `format` field: says the file is ours.
pub const FORMAT: &str = "nginx-upstream-healthcheck-state";
/// The `version` field this module writes and reads.
pub const VERSION: u64 = 1;

/// When a manual down or an exclusion ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// No ttl.
    Forever,
    /// At this Unix time (ms).
    UnixMs(u64),
}

/// Readings of the monotonic clock and the wall clock taken together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub unix_ms: u64,
}

/// A manual down's or an exclusion's end as the zone keeps it (monotonic ms, `u64::MAX` for no
/// ttl) as the file keeps it; `None` when it has ended by `now`.
pub fn until_to_file(until_mono_ms: u64, now: Now) -> Option<Until> {
    if until_mono_ms == u64::MAX {
        return Some(Until::Forever);
    }
    let left = until_mono_ms.checked_sub(now.mono_ms).filter(|&l| l > 0)?;
    Some(Until::UnixMs(now.unix_ms.saturating_add(left)))
}

/// An end read from the file as the zone keeps it: monotonic ms (never 0), `u64::MAX` for no
/// ttl; `None` when it has ended by `now`.
pub fn until_from_file(until: Until, now: Now) -> Option<u64> {
    match until {
        Until::Forever => Some(u64::MAX),
        Until::UnixMs(t) => {
            let left = t.checked_sub(now.unix_ms).filter(|&l| l > 0)?;
            Some(now.mono_ms.saturating_add(left).clamp(1, u64::MAX - 1))
        }
    }
}

/// One peer's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// As nginx shows it (`127.0.0.1:8081`, `unix:/path`).
    pub name: String,
    /// Which occurrence of the name in its upstream (the same address may be listed twice).
    pub occurrence: u32,
    /// Its checks' verdict and counters; `None` when its upstream is not checked.
    pub health: Option<PeerHealth>,
    /// A manual down in force.
    pub manual_down: Option<Until>,
}

/// One upstream block's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamState {
    pub name: String,
    /// An exclusion in force.
    pub excluded: Option<Until>,
    pub peers: Vec<PeerState>,
}

/// One peer learnt from etcd (`upstream_healthcheck_dynamic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    /// Its key's address, as `membership::parse_addr` shows it.
    pub addr: String,
    /// Its key's value as membership keeps it (the defaults and the error for a bad one).
    pub value: MemberValue,
    /// Its checks' verdict and counters; `None` when its upstream is not checked.
    pub health: Option<PeerHealth>,
    /// A manual down of the control API in force.
    pub manual_down: Option<Until>,
}

/// The members of one upstream with `upstream_healthcheck_dynamic` once etcd was read (none:
/// etcd's directory was empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipState {
    pub name: String,
    pub members: Vec<MemberState>,
}

/// The `membership` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The etcd revision it reflects (0: not known).
    pub revision: u64,
    pub upstreams: Vec<MembershipState>,
}

impl Membership {
    /// The members it holds.
    pub fn members(&self) -> usize {
        self.upstreams.iter().map(|u| u.members.len()).sum()
    }
}

/// Everything the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// When it was written (Unix ms).
    pub written_unix_ms: u64,
    pub upstreams: Vec<UpstreamState>,
    /// What etcd said, once it was read.
    pub membership: Option<Membership>,
    /// What a read skipped of the `membership` section, with why (never written).
    pub skipped: Vec<String>,
}

impl State {
    /// Peers, manual downs and exclusions it holds, for the log line that says what was read.
    pub fn counts(&self) -> (usize, usize, usize) {
        let peers = self.upstreams.iter().map(|u| u.peers.len()).sum();
        let downs = self
            .upstreams
            .iter()
            .flat_map(|u| &u.peers)
            .filter(|p| p.manual_down.is_some())
            .count();
        let excluded = self
            .upstreams
            .iter()
            .filter(|u| u.excluded.is_some())
            .count();
        (peers, downs, excluded)
    }
}

/// Why a file cannot be read; shown as `state file "..." is ignored: <reason>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    /// The JSON ends early: a write that did not finish, or a file cut short.
    Truncated,
    /// Not JSON at all.
    NotJson(String),
    /// JSON, but not a state file of this module.
    Foreign,
    /// A state file of another version.
    Version(String),
    /// A state file of this version with a field of the wrong type.
    Malformed(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("the file is empty"),
            DecodeError::Truncated => f.write_str("the file is truncated"),
            DecodeError::NotJson(e) => write!(f, "not JSON ({e})"),
            DecodeError::Foreign => f.write_str("not a state file of upstream_healthcheck"),
            DecodeError::Version(v) => {
                write!(
                    f,
                    "version {v} is not supported, this module reads version {VERSION}"
                )
            }
            DecodeError::Malformed(e) => write!(f, "malformed: {e}"),
        }
    }
}

/// The file's text. Written straight from the state with serde_json's serializer: at 10,000
/// peers it is a couple of megabytes, built in a few milliseconds by the worker that writes it.
pub fn encode(state: &State) -> serde_json::Result<String> {
    let mut text = serde_json::to_string(&Doc(state))?;
    text.push('\n');
    Ok(text)
}

/// The whole file.
struct Doc<'a>(&'a State);

impl Serialize for Doc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("format", FORMAT)?;
        m.serialize_entry("version", &VERSION)?;
        m.serialize_entry("written", &self.0.written_unix_ms)?;
        m.serialize_entry("upstreams", &Upstreams(&self.0.upstreams))?;
        if let Some(membership) = &self.0.membership {
            m.serialize_entry("membership", &MembershipOut(membership))?;
        }
        m.end()
    }
}

struct MembershipOut<'a>(&'a Membership);

impl Serialize for MembershipOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if self.0.revision != 0 {
            m.serialize_entry("revision", &self.0.revision)?;
        }
        m.serialize_entry("upstreams", &Seq(self.0.upstreams.iter().map(MembersOut)))?;
        m.end()
    }
}

/// A sequence from an iterator that can be cloned (serialize takes `&self`).
struct Seq<I>(I);

impl<I: Iterator<Item = T> + Clone, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

struct MembersOut<'a>(&'a MembershipState);

impl Serialize for MembersOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("name", &self.0.name)?;
        m.serialize_entry("members", &Seq(self.0.members.iter().map(MemberOut)))?;
        m.end()
    }
}

/// A key's value in etcd's own words: `{"weight": 2, "slow_start": 30, "check_url": "/h",
/// "status": "down"}`, the defaults left out but the weight.
struct ValueOut<'a>(&'a MemberValue);

impl Serialize for ValueOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("weight", &v.weight)?;
        if v.slow_start_ms != 0 {
            // Seconds as the value gives them; whole milliseconds survive the round trip.
            m.serialize_entry("slow_start", &(v.slow_start_ms as f64 / 1000.0))?;
        }
        if let Some(url) = &v.check_url {
            m.serialize_entry("check_url", url)?;
        }
        if v.down {
            m.serialize_entry("status", "down")?;
        }
        m.end()
    }
}

struct MemberOut<'a>(&'a MemberState);

impl Serialize for MemberOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("peer", &p.addr)?;
        m.serialize_entry("value", &ValueOut(&p.value))?;
        if let Some(e) = p.value.error {
            m.serialize_entry("etcd_error", &e.to_string())?;
        }
        state_entries(&mut m, p.health.as_ref(), p.manual_down)?;
        m.end()
    }
}

struct Upstreams<'a>(&'a [UpstreamState]);

impl Serialize for Upstreams<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(UpstreamOut))
    }
}

struct UpstreamOut<'a>(&'a UpstreamState);

impl Serialize for UpstreamOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let u = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &u.name)?;
        if let Some(until) = u.excluded {
            m.serialize_entry("excluded", &UntilOut(until))?;
        }
        m.serialize_entry("peers", &Peers(&u.peers))?;
        m.end()
    }
}

struct Peers<'a>(&'a [PeerState]);

impl Serialize for Peers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(PeerOut))
    }
}

/// `{"until": T}`, `null` for no ttl.
struct UntilOut(Until);

impl Serialize for UntilOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self.0 {
            Until::Forever => m.serialize_entry("until", &())?,
            Until::UnixMs(t) => m.serialize_entry("until", &t)?,
        }
        m.end()
    }
}

/// The failures of a peer by kind, the kinds that happened.
struct Failures<'a>(&'a PeerHealth);

impl Serialize for Failures<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        s.collect_map(
            Failure::ALL
                .iter()
                .filter(|f| h.failures[f.index()] != 0)
                .map(|f| (f.as_str(), h.failures[f.index()])),
        )
    }
}

struct PeerOut<'a>(&'a PeerState);

impl Serialize for PeerOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("peer", &p.name)?;
        if p.occurrence != 0 {
            m.serialize_entry("occurrence", &p.occurrence)?;
        }
        state_entries(&mut m, p.health.as_ref(), p.manual_down)?;
        m.end()
    }
}

/// A peer's verdict and counters, and its manual down, as entries of its object.
fn state_entries<M: SerializeMap>(
    m: &mut M,
    health: Option<&PeerHealth>,
    manual_down: Option<Until>,
) -> Result<(), M::Error> {
    if let Some(h) = health {
        health_entries(m, h)?;
    }
    if let Some(until) = manual_down {
        m.serialize_entry("manual_down", &UntilOut(until))?;
    }
    Ok(())
}

/// A peer's verdict and counters, as entries of its object.
fn health_entries<M: SerializeMap>(m: &mut M, h: &PeerHealth) -> Result<(), M::Error> {
    m.serialize_entry("up", &h.is_up())?;
    // Zeros and empty values are left out: they are what a reader assumes.
    let numbers = [
        ("rise_count", u64::from(h.rise_count)),
        ("fall_count", u64::from(h.fall_count)),
        ("checks", h.checks),
        ("transitions_up", u64::from(h.transitions_up)),
        ("transitions_down", u64::from(h.transitions_down)),
    ];
    for (k, v) in numbers.into_iter().filter(|&(_, v)| v != 0) {
        m.serialize_entry(k, &v)?;
    }
    if h.failures.iter().any(|&n| n != 0) {
        m.serialize_entry("failures", &Failures(h))?;
    }
    if let Some(e) = h.last_error() {
        m.serialize_entry("last_error", e.as_str())?;
    }
    let last = [
        ("last_status", u64::from(h.last_status)),
        ("last_detail", u64::from(h.last_detail)),
        ("last_duration_us", u64::from(h.last_duration_us)),
        ("last_check", h.last_check_ms),
        ("last_change", h.last_change_ms),
    ];
    for (k, v) in last.into_iter().filter(|&(_, v)| v != 0) {
        m.serialize_entry(k, &v)?;
    }
    Ok(())
}

/// Reads a file's bytes. Manual downs and exclusions whose end passed by `now_unix_ms` are
/// dropped.
pub fn decode(bytes: &[u8], now_unix_ms: u64) -> Result<State, DecodeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            DecodeError::Truncated
        } else {
            DecodeError::NotJson(e.to_string())
        }
    })?;
    let Some(top) = doc.as_object() else {
        return Err(DecodeError::Foreign);
    };
    if top.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(DecodeError::Foreign);
    }
    match top.get("version") {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => return Err(DecodeError::Version(v.to_string())),
        None => return Err(DecodeError::Version("(none)".into())),
    }
    let written_unix_ms = opt_u64(top, "written", "the file")?.unwrap_or(0);
    let upstreams = match top.get("upstreams") {
        None => Vec::new(),
        Some(v) => array(v, "\"upstreams\"")?
            .iter()
            .map(|u| upstream(u, now_unix_ms))
            .collect::<Result<_, _>>()?,
    };
    let mut skipped = Vec::new();
    let membership = top
        .get("membership")
        .and_then(|v| membership(v, now_unix_ms, &mut skipped));
    Ok(State {
        written_unix_ms,
        upstreams,
        membership,
        skipped,
    })
}

/// The `membership` section; what cannot be used is skipped with its reason in `skipped` (the
/// whole section when it is not one).
fn membership(v: &Value, now_unix_ms: u64, skipped: &mut Vec<String>) -> Option<Membership> {
    let section = (|| -> Result<(u64, &[Value]), DecodeError> {
        let m = object(v, "\"membership\"")?;
        let revision = opt_u64(m, "revision", "\"membership\"")?.unwrap_or(0);
        let ups = match m.get("upstreams") {
            None => &[][..],
            Some(v) => array(v, "\"upstreams\" of \"membership\"")?,
        };
        Ok((revision, ups))
    })();
    let (revision, ups) = match section {
        Ok(section) => section,
        Err(e) => {
            skipped.push(format!("the membership section ({e})"));
            return None;
        }
    };
    let mut upstreams: Vec<MembershipState> = Vec::new();
    for u in ups {
        match members_of(u, now_unix_ms, skipped) {
            Ok(u) if upstreams.iter().any(|o| o.name == u.name) => skipped.push(format!(
                "the membership of upstream \"{}\" (listed twice)",
                u.name
            )),
            Ok(u) => upstreams.push(u),
            Err(e) => skipped.push(format!("a membership entry ({e})")),
        }
    }
    Some(Membership {
        revision,
        upstreams,
    })
}

/// One upstream's members; a bad member is skipped (with its reason in `skipped`), and so is
/// a second one of the same address.
fn members_of(
    v: &Value,
    now_unix_ms: u64,
    skipped: &mut Vec<String>,
) -> Result<MembershipState, DecodeError> {
    let m = object(v, "a membership entry")?;
    let name = string(m, "name", "a membership entry")?;
    let what = format!("upstream \"{name}\"");
    let list = match m.get("members") {
        None => &[][..],
        Some(v) => array(v, &format!("\"members\" of {what}"))?,
    };
    let mut members: Vec<MemberState> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        match member(v, &what, now_unix_ms) {
            Ok(p) if members.iter().any(|o| o.addr == p.addr) => {
                skipped.push(format!("member \"{}\" of {what} (listed twice)", p.addr))
            }
            Ok(p) => members.push(p),
            Err(e) => skipped.push(format!("member {} of {what} ({e})", i + 1)),
        }
    }
    Ok(MembershipState { name, members })
}

fn member(v: &Value, upstream: &str, now_unix_ms: u64) -> Result<MemberState, DecodeError> {
    let m = object(v, "a member")?;
    let text = string(m, "peer", "a member")?;
    let (_, addr) = parse_addr(&text)
        .ok_or_else(|| malformed(format_args!("\"{text}\" is not an IP address with a port")))?;
    let what = format!("member \"{addr}\" of {upstream}");
    let value = match m.get("value") {
        None => MemberValue::default(),
        Some(v) => {
            object(v, &format!("\"value\" of {what}"))?;
            let value = parse_value(v.to_string().as_bytes());
            if let Some(e) = value.error {
                return Err(malformed(format_args!("\"value\" of {what}: {e}")));
            }
            value
        }
    };
    // The error of a bad value in etcd, as the status pages show it; one this version does not
    // know is left out.
    let error = m
        .get("etcd_error")
        .and_then(Value::as_str)
        .and_then(|text| {
            (1..=u8::MAX)
                .map_while(ValueError::from_code)
                .find(|e| e.to_string() == text)
        });
    let (health, manual_down) = state_of(m, &what, now_unix_ms)?;
    Ok(MemberState {
        manual_down,
        value: MemberValue { error, ..value },
        addr,
        health,
    })
}

fn malformed(what: impl fmt::Display) -> DecodeError {
    DecodeError::Malformed(what.to_string())
}

fn array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, DecodeError> {
    v.as_array()
        .ok_or_else(|| malformed(format_args!("{what} must be an array")))
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, DecodeError> {
    v.as_object()
        .ok_or_else(|| malformed(format_args!("{what} must be an object")))
}

fn string(m: &Map<String, Value>, key: &str, what: &str) -> Result<String, DecodeError> {
    m.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| malformed(format_args!("{what} has no \"{key}\" string")))
}

fn opt_u64(m: &Map<String, Value>, key: &str, what: &str) -> Result<Option<u64>, DecodeError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            malformed(format_args!(
                "\"{key}\" of {what} must be a non-negative integer"
            ))
        }),
    }
}

fn opt_u32(m: &Map<String, Value>, key: &str, what: &str) -> Result<u32, DecodeError> {
    let v = opt_u64(m, key, what)?.unwrap_or(0);
    u32::try_from(v).map_err(|_| malformed(format_args!("\"{key}\" of {what} is too large")))
}

/// `{"until": T}` (or null) under `key`, dropped when T has passed.
fn until(
    m: &Map<String, Value>,
    key: &str,
    what: &str,
    now_unix_ms: u64,
) -> Result<Option<Until>, DecodeError> {
    let Some(v) = m.get(key) else {
        return Ok(None);
    };
    let what = format!("\"{key}\" of {what}");
    let until = match opt_u64(object(v, &what)?, "until", &what)? {
        None => Until::Forever,
        Some(t) if t <= now_unix_ms => return Ok(None),
        Some(t) => Until::UnixMs(t),
    };
    Ok(Some(until))
}

fn upstream(v: &Value, now_unix_ms: u64) -> Result<UpstreamState, DecodeError> {
    let m = object(v, "an upstream")?;
    let name = string(m, "name", "an upstream")?;
    let what = format!("upstream \"{name}\"");
    let excluded = until(m, "excluded", &what, now_unix_ms)?;
    let peers = match m.get("peers") {
        None => Vec::new(),
        Some(v) => array(v, &format!("\"peers\" of {what}"))?
            .iter()
            .map(|p| peer(p, &what, now_unix_ms))
            .collect::<Result<_, _>>()?,
    };
    Ok(UpstreamState {
        name,
        excluded,
        peers,
    })
}

fn peer(v: &Value, upstream: &str, now_unix_ms: u64) -> Result<PeerState, DecodeError> {
    let m = object(v, &format!("a peer of {upstream}"))?;
    let name = string(m, "peer", &format!("a peer of {upstream}"))?;
    let what = format!("peer \"{name}\" of {upstream}");
    let (health, manual_down) = state_of(m, &what, now_unix_ms)?;
    Ok(PeerState {
        occurrence: opt_u32(m, "occurrence", &what)?,
        manual_down,
        name,
        health,
    })
}

/// A peer's or a member's verdict and counters (when its upstream was checked) and its manual
/// down (dropped when it ended by `now_unix_ms`).
fn state_of(
    m: &Map<String, Value>,
    what: &str,
    now_unix_ms: u64,
) -> Result<(Option<PeerHealth>, Option<Until>), DecodeError> {
    let health = match m.get("up") {
        None => None,
        Some(up) => {
            let up = up
                .as_bool()
                .ok_or_else(|| malformed(format_args!("\"up\" of {what} must be true or false")))?;
            Some(health(m, up, what)?)
        }
    };
    Ok((health, until(m, "manual_down", what, now_unix_ms)?))
}

fn health(m: &Map<String, Value>, up: bool, what: &str) -> Result<PeerHealth, DecodeError> {
    let mut h = PeerHealth::new(up);
    h.rise_count = opt_u32(m, "rise_count", what)?;
    h.fall_count = opt_u32(m, "fall_count", what)?;
    h.checks = opt_u64(m, "checks", what)?.unwrap_or(0);
    h.transitions_up = opt_u32(m, "transitions_up", what)?;
    h.transitions_down = opt_u32(m, "transitions_down", what)?;
    if let Some(v) = m.get("failures") {
        let failures = object(v, &format!("\"failures\" of {what}"))?;
        // Kinds this version does not know are skipped.
        for f in Failure::ALL {
            h.failures[f.index()] = opt_u32(failures, f.as_str(), what)?;
        }
    }
    let last_error = m.get("last_error").and_then(Value::as_str).unwrap_or("");
    h.last_error = Failure::ALL
        .iter()
        .chain([&Failure::Passive])
        .find(|f| f.as_str() == last_error)
        .map_or(0, |&f| f as u8);
    h.last_status = u16::try_from(opt_u64(m, "last_status", what)?.unwrap_or(0))
        .map_err(|_| malformed(format_args!("\"last_status\" of {what} is too large")))?;
    h.last_detail = opt_u32(m, "last_detail", what)?;
    h.last_duration_us = opt_u32(m, "last_duration_us", what)?;
    h.last_check_ms = opt_u64(m, "last_check", what)?.unwrap_or(0);
    h.last_change_ms = opt_u64(m, "last_change", what)?.unwrap_or(0);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use serde_json::json;

    const NOW: u64 = 1_764_392_000_000;

    fn down_peer() -> PeerHealth {
        let mut h = PeerHealth::new(true);
        for i in 0..3 {
            h.record(
                Outcome::failed(Failure::Refused, None),
                NOW - 3000 + i,
                250,
                2,
                3,
            );
        }
        h.record(
            Outcome::failed_with(Failure::BadStatus, Some(503), 0),
            NOW - 1000,
            300,
            2,
            3,
        );
        h
    }

    fn sample() -> State {
        State {
            written_unix_ms: NOW,
            upstreams: vec![
                UpstreamState {
                    name: "backend".into(),
                    excluded: None,
                    peers: vec![
                        PeerState {
                            name: "127.0.0.1:8081".into(),
                            occurrence: 0,
                            health: Some(down_peer()),
                            manual_down: None,
                        },
                        PeerState {
                            name: "127.0.0.1:8081".into(),
                            occurrence: 1,
                            health: Some(PeerHealth::new(true)),
                            manual_down: Some(Until::UnixMs(NOW + 60_000)),
                        },
                        PeerState {
                            name: "unix:/run/app \"1\".sock".into(),
                            occurrence: 0,
                            health: Some(PeerHealth::new(false)),
                            manual_down: Some(Until::Forever),
                        },
                    ],
                },
                UpstreamState {
                    name: "unchecked".into(),
                    excluded: Some(Until::UnixMs(NOW + 5_000)),
                    peers: vec![PeerState {
                        name: "10.0.0.1:80".into(),
                        occurrence: 0,
                        health: None,
                        manual_down: None,
                    }],
                },
                UpstreamState {
                    name: "forever".into(),
                    excluded: Some(Until::Forever),
                    peers: vec![],
                },
            ],
            membership: None,
            skipped: Vec::new(),
        }
    }

    /// `sample` with the membership etcd gave two dynamic upstreams.
    fn with_members() -> State {
        let member = |addr: &str, value: &[u8], health: Option<PeerHealth>| MemberState {
            addr: addr.into(),
            value: crate::membership::parse_value(value),
            health,
            manual_down: None,
        };
        let mut bad = member("127.0.0.1:9003", b"{weight: 3", None);
        bad.manual_down = Some(Until::UnixMs(NOW + 60_000));
        State {
            membership: Some(Membership {
                revision: 42,
                upstreams: vec![
                    MembershipState {
                        name: "backend".into(),
                        members: vec![
                            member(
                                "127.0.0.1:9001",
                                br#"{"weight": 3, "slow_start": 30.5, "check_url": "/h"}"#,
                                Some(PeerHealth::new(true)),
                            ),
                            member("[::1]:9002", br#"{"status": "down"}"#, Some(down_peer())),
                            bad,
                        ],
                    },
                    MembershipState {
                        name: "empty".into(),
                        members: vec![],
                    },
                ],
            }),
            ..sample()
        }
    }

    /// A file of this version around the `membership` section `section`.
    fn file_with(section: &str) -> String {
        format!(
            r#"{{"format": "{FORMAT}", "version": 1, "written": 5, "upstreams": [],
                "membership": {section}}}"#
        )
    }

    #[test]
    fn a_state_survives_a_round_trip() {
        let state = sample();
        let text = encode(&state).unwrap();
        assert_eq!(decode(text.as_bytes(), NOW), Ok(state));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_membership_survives_a_round_trip() {
        let state = with_members();
        let text = encode(&state).unwrap();
        let back = decode(text.as_bytes(), NOW).unwrap();
        assert_eq!(back, state);
        let m = &back.membership.unwrap().upstreams[0].members;
        assert_eq!(m[0].value.slow_start_ms, 30_500);
        assert_eq!(m[2].value.error, Some(ValueError::NotJson));
        assert_eq!(m[2].value.weight, 1, "a bad value's defaults");
    }

    #[test]
    fn members_are_written_with_their_value_in_etcds_words() {
        let doc: Value = serde_json::from_str(&encode(&with_members()).unwrap()).unwrap();
        let section = &doc["membership"];
        assert_eq!(section["revision"], 42);
        let members = &section["upstreams"][0]["members"];
        assert_eq!(
            members[0]["value"],
            json!({"weight": 3, "slow_start": 30.5, "check_url": "/h"})
        );
        assert_eq!(members[0]["up"], true);
        assert_eq!(members[1]["peer"], "[::1]:9002");
        assert_eq!(members[1]["value"], json!({"weight": 1, "status": "down"}));
        assert_eq!(members[1]["up"], false);
        assert_eq!(members[1]["fall_count"], 4);
        assert_eq!(members[2]["etcd_error"], "the value is not valid JSON");
        assert_eq!(members[2]["manual_down"], json!({"until": NOW + 60_000}));
        assert!(members[2].get("up").is_none(), "unchecked");
        assert_eq!(
            section["upstreams"][1],
            json!({"name": "empty", "members": []})
        );
        // Without etcd's peers, no section.
        let doc: Value = serde_json::from_str(&encode(&sample()).unwrap()).unwrap();
        assert!(doc.get("membership").is_none());
    }

    #[test]
    fn a_file_without_the_membership_section_loads_without_membership() {
        let old = format!(
            r#"{{"format": "{FORMAT}", "version": 1, "written": 5,
                "upstreams": [{{"name": "b", "peers": [{{"peer": "127.0.0.1:1", "up": false}}]}}]}}"#
        );
        let state = decode(old.as_bytes(), NOW).unwrap();
        assert_eq!(state.membership, None);
        assert!(state.skipped.is_empty());
        assert!(!state.upstreams[0].peers[0].health.unwrap().is_up());
        // An empty section is etcd's empty directory: an upstream with no peers.
        let state = decode(
            file_with(r#"{"upstreams": [{"name": "b"}]}"#).as_bytes(),
            NOW,
        )
        .unwrap();
        let m = state.membership.unwrap();
        assert_eq!((m.revision, m.upstreams[0].members.len()), (0, 0));
    }

    #[test]
    fn bad_member_entries_are_skipped_with_their_reason_and_the_others_kept() {
        let text = file_with(
            r#"{"revision": 7, "upstreams": [
                {"name": "b", "members": [
                    {"peer": "127.0.0.1:9001", "value": {"weight": 2}, "up": true,
                     "manual_down": {"until": null}},
                    {"peer": "localhost:80"},
                    {"peer": "127.0.0.1:9002", "value": {"weight": 0}},
                    {"peer": "127.0.0.1:9003", "up": "yes"},
                    {"peer": "127.0.0.1:9001"},
                    {"value": {}},
                    "127.0.0.1:9004",
                    {"peer": "127.0.0.1:9005", "etcd_error": "from a later version",
                     "value": [1], "new_field": 1}
                ]},
                {"name": "c", "members": {"not": "an array"}},
                {"name": "b", "members": []},
                {"members": []}
            ]}"#,
        );
        let state = decode(text.as_bytes(), NOW).unwrap();
        let m = state.membership.unwrap();
        assert_eq!(m.revision, 7);
        assert_eq!(m.upstreams.len(), 1);
        let members = &m.upstreams[0].members;
        assert_eq!(members.len(), 1, "{members:?}");
        assert_eq!(members[0].addr, "127.0.0.1:9001");
        assert_eq!(members[0].value.weight, 2);
        assert_eq!(members[0].manual_down, Some(Until::Forever));
        assert_eq!(
            state.skipped,
            [
                "member 2 of upstream \"b\" (malformed: \"localhost:80\" is not an IP address \
                 with a port)",
                "member 3 of upstream \"b\" (malformed: \"value\" of member \"127.0.0.1:9002\" \
                 of upstream \"b\": \"weight\" is not an integer from 1 to 10000)",
                "member 4 of upstream \"b\" (malformed: \"up\" of member \"127.0.0.1:9003\" of \
                 upstream \"b\" must be true or false)",
                "member \"127.0.0.1:9001\" of upstream \"b\" (listed twice)",
                "member 6 of upstream \"b\" (malformed: a member has no \"peer\" string)",
                "member 7 of upstream \"b\" (malformed: a member must be an object)",
                "member 8 of upstream \"b\" (malformed: \"value\" of member \"127.0.0.1:9005\" \
                 of upstream \"b\" must be an object)",
                "a membership entry (malformed: \"members\" of upstream \"c\" must be an array)",
                "the membership of upstream \"b\" (listed twice)",
                "a membership entry (malformed: a membership entry has no \"name\" string)",
            ]
        );
    }

    #[test]
    fn a_membership_section_that_is_not_one_is_skipped_and_the_rest_loads() {
        for (section, reason) in [
            (
                "[1]",
                "the membership section (malformed: \"membership\" must be an object)",
            ),
            (
                r#"{"revision": -1}"#,
                "the membership section (malformed: \"revision\" of \"membership\" must be a \
                 non-negative integer)",
            ),
            (
                r#"{"upstreams": 3}"#,
                "the membership section (malformed: \"upstreams\" of \"membership\" must be an \
                 array)",
            ),
        ] {
            let state = decode(file_with(section).as_bytes(), NOW).unwrap();
            assert_eq!(state.membership, None);
            assert_eq!(state.skipped, [reason]);
            assert_eq!(state.written_unix_ms, 5);
        }
    }

    #[test]
    fn an_etcd_error_this_version_does_not_know_is_left_out() {
        let text = file_with(
            r#"{"upstreams": [{"name": "b", "members": [
                {"peer": "127.0.0.1:9001", "etcd_error": "the value is not a JSON object"},
                {"peer": "127.0.0.1:9002", "etcd_error": "something new"}]}]}"#,
        );
        let state = decode(text.as_bytes(), NOW).unwrap();
        let members = &state.membership.unwrap().upstreams[0].members;
        assert_eq!(members[0].value.error, Some(ValueError::NotObject));
        assert_eq!(members[1].value.error, None);
        assert_eq!(members[1].value, MemberValue::default());
    }

    #[test]
    fn the_file_says_what_it_is_and_which_version() {
        let doc: Value = serde_json::from_str(&encode(&sample()).unwrap()).unwrap();
        assert_eq!(doc["format"], FORMAT);
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["written"], NOW);
        let p = &doc["upstreams"][0]["peers"][0];
        assert_eq!(p["up"], false);
        assert_eq!(p["fall_count"], 4);
        assert_eq!(p["failures"], json!({"refused": 3, "bad_status": 1}));
        assert_eq!(p["last_error"], "bad_status");
        assert_eq!(p["last_status"], 503);
        assert!(
            p.get("occurrence").is_none(),
            "the first occurrence is implied"
        );
        assert_eq!(
            doc["upstreams"][0]["peers"][2]["manual_down"],
            json!({"until": null})
        );
        assert!(doc["upstreams"][1]["peers"][0].get("up").is_none());
        let fresh = &doc["upstreams"][0]["peers"][1];
        assert_eq!(fresh["up"], true);
        assert!(fresh.get("checks").is_none(), "zeros are left out: {fresh}");
    }

    #[test]
    fn every_cut_of_a_file_is_refused_never_half_read() {
        let text = encode(&sample()).unwrap();
        for cut in 0..text.trim_end().len() {
            let err = decode(&text.as_bytes()[..cut], NOW).unwrap_err();
            assert!(
                matches!(err, DecodeError::Empty | DecodeError::Truncated),
                "cut at {cut}: {err}"
            );
        }
        assert_eq!(
            decode(&text.as_bytes()[..40], NOW).unwrap_err().to_string(),
            "the file is truncated"
        );
    }

    #[test]
    fn garbage_and_foreign_files_are_refused_with_their_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "the file is empty"),
            (b" \n", "the file is empty"),
            (
                b"\x00\x01binary",
                "not JSON (expected value at line 1 column 1)",
            ),
            (b"[1, 2]", "not a state file of upstream_healthcheck"),
            (
                br#"{"format": "something-else", "version": 1}"#,
                "not a state file of upstream_healthcheck",
            ),
            (
                br#"{"upstreams": []}"#,
                "not a state file of upstream_healthcheck",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(decode(bytes, NOW).unwrap_err().to_string(), reason);
        }
    }

    #[test]
    fn another_version_is_refused() {
        let doc = |v: &str| format!(r#"{{"format": "{FORMAT}", "version": {v}, "upstreams": []}}"#);
        assert_eq!(
            decode(doc("2").as_bytes(), NOW).unwrap_err().to_string(),
            "version 2 is not supported, this module reads version 1"
        );
        assert_eq!(
            decode(doc("\"1\"").as_bytes(), NOW).unwrap_err(),
            DecodeError::Version("\"1\"".into())
        );
        let none = format!(r#"{{"format": "{FORMAT}"}}"#);
        assert!(matches!(
            decode(none.as_bytes(), NOW),
            Err(DecodeError::Version(_))
        ));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_with_where_it_is() {
        let text = format!(
            r#"{{"format": "{FORMAT}", "version": 1, "upstreams": [{{"name": "b",
               "peers": [{{"peer": "127.0.0.1:1", "up": "yes"}}]}}]}}"#
        );
        assert_eq!(
            decode(text.as_bytes(), NOW).unwrap_err().to_string(),
            "malformed: \"up\" of peer \"127.0.0.1:1\" of upstream \"b\" must be true or false"
        );
        let text = format!(
            r#"{{"format": "{FORMAT}", "version": 1, "upstreams": [{{"name": "b",
               "excluded": {{"until": -5}}}}]}}"#
        );
        assert!(matches!(
            decode(text.as_bytes(), NOW),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_sections_and_fields_are_ignored() {
        let text = format!(
            r#"{{"format": "{FORMAT}", "version": 1, "written": 5,
                "dynamic": {{"backend": ["127.0.0.1:9"]}},
                "upstreams": [{{"name": "b", "color": "blue",
                   "peers": [{{"peer": "127.0.0.1:1", "up": true, "new_counter": 7,
                               "failures": {{"refused": 2, "quantum": 9}}}}]}}]}}"#
        );
        let state = decode(text.as_bytes(), NOW).unwrap();
        assert_eq!(state.written_unix_ms, 5);
        let h = state.upstreams[0].peers[0].health.unwrap();
        assert!(h.is_up());
        assert_eq!(h.failures_total(), 2);
    }

    #[test]
    fn ends_that_passed_while_nginx_was_stopped_are_dropped() {
        let state = sample();
        let text = encode(&state).unwrap();
        // 10 s later: the 5 s exclusion ended, the 60 s manual down holds, no-ttl ones hold.
        let later = decode(text.as_bytes(), NOW + 10_000).unwrap();
        assert_eq!(later.upstreams[1].excluded, None);
        assert_eq!(
            later.upstreams[0].peers[1].manual_down,
            Some(Until::UnixMs(NOW + 60_000))
        );
        assert_eq!(
            later.upstreams[0].peers[2].manual_down,
            Some(Until::Forever)
        );
        assert_eq!(later.upstreams[2].excluded, Some(Until::Forever));
        // At the very end it has ended.
        let at_end = decode(text.as_bytes(), NOW + 60_000).unwrap();
        assert_eq!(at_end.upstreams[0].peers[1].manual_down, None);
        assert_eq!(at_end.counts(), (4, 1, 1));
    }

    #[test]
    fn ends_move_between_the_clocks_keeping_the_time_left() {
        let before = Now {
            mono_ms: 5_000,
            unix_ms: NOW,
        };
        // 30 s left at the write.
        let file = until_to_file(35_000, before).unwrap();
        assert_eq!(file, Until::UnixMs(NOW + 30_000));
        // nginx was stopped 12 s, and its monotonic clock restarted lower.
        let after = Now {
            mono_ms: 1_000,
            unix_ms: NOW + 12_000,
        };
        assert_eq!(until_from_file(file, after), Some(1_000 + 18_000));
        assert_eq!(
            until_from_file(
                file,
                Now {
                    unix_ms: NOW + 30_000,
                    ..after
                }
            ),
            None
        );
        assert_eq!(until_to_file(u64::MAX, before), Some(Until::Forever));
        assert_eq!(until_from_file(Until::Forever, after), Some(u64::MAX));
        assert_eq!(until_to_file(5_000, before), None, "ends now");
        assert_eq!(until_to_file(10, before), None, "ended");
    }
}
