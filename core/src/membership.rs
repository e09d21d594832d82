//! Upstream membership from etcd (`upstream_healthcheck_dynamic`): the key's address and the
//! value's fields, the fixed-size record of a member in the shared zone, and which reserved
//! slot each key gets (the holder's roster: a free list bounded by `max_peers`, keys past it
//! refused in etcd's key order).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

/// The longest address text a member holds: "[" + IPv6 with an IPv4 tail + "]:" + port.
pub const ADDR_MAX: usize = 56;
/// The longest `check_url` a member holds.
pub const URL_MAX: usize = 256;
/// The weight a value may give, as nginx's `server weight=` takes it (1 and up); bounded so
/// that a scaled weight stays far from overflow.
pub const WEIGHT_MAX: u32 = 10_000;
/// The most peers one upstream may reserve.
pub const MAX_PEERS_LIMIT: usize = 65_536;

/// The occurrence number of an etcd-learned peer's key (see `key::peer_key`): apart from the
/// occurrences of the same address among the static servers.
pub const ETCD_OCCURRENCE: u32 = u32::MAX - 1;

/// The address of a key `<prefix>upstreams/<upstream>/<host:port>`: an IPv4 or IPv6 literal
/// with a port, in the text nginx would show for it. `None` for a hostname, a missing or zero
/// port, or a scoped IPv6 address.
pub fn parse_addr(text: &str) -> Option<(SocketAddr, String)> {
    let addr: SocketAddr = text.parse().ok()?;
    if addr.port() == 0 {
        return None;
    }
    if let SocketAddr::V6(v6) = addr {
        if v6.scope_id() != 0 || v6.flowinfo() != 0 {
            return None;
        }
    }
    let shown = addr.to_string();
    (shown.len() <= ADDR_MAX).then_some((addr, shown))
}

/// What is wrong with a key's value: the peer is kept with the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ValueError {
    NotJson = 1,
    NotObject = 2,
    Weight = 3,
    SlowStart = 4,
    CheckUrl = 5,
    Status = 6,
}

impl ValueError {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<ValueError> {
        Some(match code {
            1 => ValueError::NotJson,
            2 => ValueError::NotObject,
            3 => ValueError::Weight,
            4 => ValueError::SlowStart,
            5 => ValueError::CheckUrl,
            6 => ValueError::Status,
            _ => return None,
        })
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueError::NotJson => "the value is not valid JSON",
            ValueError::NotObject => "the value is not a JSON object",
            ValueError::Weight => "\"weight\" is not an integer from 1 to 10000",
            ValueError::SlowStart => "\"slow_start\" is not a number of seconds",
            ValueError::CheckUrl => {
                "\"check_url\" is not a path starting with \"/\" (at most 256 characters, no spaces)"
            }
            ValueError::Status => "\"status\" is not \"up\" or \"down\"",
        })
    }
}

/// A key's value: `{"weight": 3, "slow_start": 30, "check_url": "/health", "status": "down"}`,
/// every field optional (`checkurl` is another name of `check_url`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberValue {
    pub weight: u32,
    pub slow_start_ms: u64,
    pub check_url: Option<String>,
    /// `"status": "down"`: a manual down without expiry.
    pub down: bool,
    /// Set when the value was bad: then every field has its default.
    pub error: Option<ValueError>,
}

impl Default for MemberValue {
    fn default() -> Self {
        MemberValue {
            weight: 1,
            slow_start_ms: 0,
            check_url: None,
            down: false,
            error: None,
        }
    }
}

/// Reads a key's value. An empty value is an empty object; a bad one gives the defaults and
/// says what was wrong.
pub fn parse_value(bytes: &[u8]) -> MemberValue {
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return MemberValue::default();
    }
    match fields(trimmed) {
        Ok(v) => v,
        Err(error) => MemberValue {
            error: Some(error),
            ..MemberValue::default()
        },
    }
}

fn fields(bytes: &[u8]) -> Result<MemberValue, ValueError> {
    let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| ValueError::NotJson)?;
    let obj = json.as_object().ok_or(ValueError::NotObject)?;
    let mut v = MemberValue::default();
    if let Some(w) = obj.get("weight").filter(|w| !w.is_null()) {
        v.weight = w
            .as_u64()
            .filter(|w| (1..=u64::from(WEIGHT_MAX)).contains(w))
            .ok_or(ValueError::Weight)? as u32;
    }
    if let Some(s) = obj.get("slow_start").filter(|s| !s.is_null()) {
        let secs = s
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
            .ok_or(ValueError::SlowStart)?;
        v.slow_start_ms = (secs * 1000.0).round() as u64;
    }
    let url = obj
        .get("check_url")
        .or_else(|| obj.get("checkurl"))
        .filter(|u| !u.is_null());
    if let Some(u) = url {
        let u = u
            .as_str()
            .filter(|u| {
                u.starts_with('/') && u.len() <= URL_MAX && u.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or(ValueError::CheckUrl)?;
        v.check_url = Some(u.to_string());
    }
    if let Some(s) = obj.get("status").filter(|s| !s.is_null()) {
        v.down = match s.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("down") => true,
            Some("up") => false,
            _ => return Err(ValueError::Status),
        };
    }
    Ok(v)
}

/// One etcd-learned peer in the shared zone, in a slot reserved by `max_peers`: fixed size,
/// written by the worker that holds the etcd watch under the zone lock.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Member {
    /// The slot holds a peer from etcd; a free slot is hidden and down.
    pub used: bool,
    /// `"status": "down"`.
    pub down: bool,
    /// `ValueError::code`, 0 when the value was good.
    pub error: u8,
    addr_len: u8,
    url_len: u16,
    pub weight: u32,
    /// Changes whenever the slot gets another address: workers reset what they keep for it.
    pub generation: u32,
    pub slow_start_ms: u64,
    /// Key of the upstream it belongs to (carried over a reload by it).
    pub upstream_key: u64,
    addr: [u8; ADDR_MAX],
    url: [u8; URL_MAX],
}

impl Default for Member {
    fn default() -> Self {
        Member {
            used: false,
            down: false,
            error: 0,
            addr_len: 0,
            url_len: 0,
            weight: 1,
            generation: 0,
            slow_start_ms: 0,
            upstream_key: 0,
            addr: [0; ADDR_MAX],
            url: [0; URL_MAX],
        }
    }
}

impl Member {
    /// The address as nginx shows it ("" when free).
    pub fn addr(&self) -> &str {
        let bytes = &self.addr[..(self.addr_len as usize).min(ADDR_MAX)];
        core::str::from_utf8(bytes).unwrap_or("")
    }

    pub fn check_url(&self) -> Option<&str> {
        let bytes = &self.url[..(self.url_len as usize).min(URL_MAX)];
        core::str::from_utf8(bytes).ok().filter(|u| !u.is_empty())
    }

    pub fn error(&self) -> Option<ValueError> {
        ValueError::from_code(self.error)
    }

    /// Gives the slot address `addr` (from `parse_addr`): a new peer, with a new generation.
    pub fn assign(&mut self, upstream_key: u64, addr: &str) {
        let n = addr.len().min(ADDR_MAX);
        self.addr[..n].copy_from_slice(&addr.as_bytes()[..n]);
        self.addr_len = n as u8;
        self.upstream_key = upstream_key;
        self.used = true;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Sets the value's fields.
    pub fn set_value(&mut self, v: &MemberValue) {
        self.weight = v.weight;
        self.slow_start_ms = v.slow_start_ms;
        self.down = v.down;
        self.error = v.error.map_or(0, ValueError::code);
        let url = v.check_url.as_deref().unwrap_or("");
        let n = url.len().min(URL_MAX);
        self.url[..n].copy_from_slice(&url.as_bytes()[..n]);
        self.url_len = n as u16;
    }

    /// Frees the slot: hidden and down from now on; its memory is reused by a later add.
    pub fn free(&mut self) {
        self.used = false;
        self.addr_len = 0;
        self.generation = self.generation.wrapping_add(1);
    }
}

/// What the holder does to one reserved slot (an offset into the upstream's reserved slots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The slot gets a peer: `new` when it is a new address for the slot (its state starts
    /// afresh), else the value of the peer it has changed.
    Set {
        offset: usize,
        addr: String,
        value: Vec<u8>,
        new: bool,
    },
    /// The slot's peer was deleted.
    Free { offset: usize },
}

/// The reserved slots of one dynamic upstream as the holder of the etcd watch assigns them.
#[derive(Clone, Debug, Default)]
pub struct Roster {
    max: usize,
    by_addr: BTreeMap<String, usize>,
    free: BTreeSet<usize>,
    /// Keys past `max_peers`, by address (etcd's key order within an upstream), with their
    /// values: one gets a slot when a peer is deleted.
    refused: BTreeMap<String, Vec<u8>>,
}

impl Roster {
    /// A roster of `max` reserved slots, of which `used` hold these addresses (by offset).
    pub fn new<'a>(max: usize, used: impl IntoIterator<Item = (usize, &'a str)>) -> Roster {
        let mut r = Roster {
            max,
            free: (0..max).collect(),
            ..Roster::default()
        };
        for (offset, addr) in used {
            if offset < max && r.free.remove(&offset) {
                r.by_addr.insert(addr.to_string(), offset);
            }
        }
        r
    }

    /// Keys refused for lack of a reserved slot.
    pub fn refused(&self) -> usize {
        self.refused.len()
    }

    /// Peers in the roster.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// A key was written. `None` when it is refused (every reserved slot is taken). A new
    /// peer gets the first free slot that is not `busy` (a request of the deleted peer that
    /// had it is still in flight), or the first free one when all are.
    pub fn put(&mut self, addr: &str, value: &[u8], busy: &dyn Fn(usize) -> bool) -> Option<Op> {
        if let Some(&offset) = self.by_addr.get(addr) {
            return Some(Op::Set {
                offset,
                addr: addr.to_string(),
                value: value.to_vec(),
                new: false,
            });
        }
        let idle = self.free.iter().copied().find(|&o| !busy(o));
        let Some(offset) = idle.or_else(|| self.free.first().copied()) else {
            self.refused.insert(addr.to_string(), value.to_vec());
            return None;
        };
        self.free.remove(&offset);
        self.by_addr.insert(addr.to_string(), offset);
        Some(Op::Set {
            offset,
            addr: addr.to_string(),
            value: value.to_vec(),
            new: true,
        })
    }

    /// A key was deleted: its slot is freed, and the first refused key, if any, takes a free
    /// slot.
    pub fn delete(&mut self, addr: &str, busy: &dyn Fn(usize) -> bool) -> Vec<Op> {
        if self.refused.remove(addr).is_some() {
            return Vec::new();
        }
        let Some(offset) = self.by_addr.remove(addr) else {
            return Vec::new();
        };
        let mut ops = vec![Op::Free { offset }];
        self.free.insert(offset);
        if let Some((addr, value)) = self.refused.pop_first() {
            ops.extend(self.put(&addr, &value, busy));
        }
        ops
    }

    /// A full read: the keys of this upstream (any order). Peers that stay keep their slots;
    /// the first `max` keys in key order are taken, the others refused.
    pub fn replace(&mut self, entries: &[(&str, &[u8])], busy: &dyn Fn(usize) -> bool) -> Vec<Op> {
        let mut sorted: Vec<(&str, &[u8])> = entries.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let (taken, past) = sorted.split_at(sorted.len().min(self.max));
        let mut ops = Vec::new();
        let gone: Vec<String> = self
            .by_addr
            .keys()
            .filter(|a| taken.binary_search_by(|(t, _)| t.cmp(&a.as_str())).is_err())
            .cloned()
            .collect();
        for addr in gone {
            if let Some(offset) = self.by_addr.remove(&addr) {
                self.free.insert(offset);
                ops.push(Op::Free { offset });
            }
        }
        self.refused.clear();
        for (addr, value) in taken {
            ops.extend(self.put(addr, value, busy));
        }
        for (addr, value) in past {
            self.refused.insert(addr.to_string(), value.to_vec());
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: &dyn Fn(usize) -> bool = &|_| false;

    #[test]
    fn keys_name_address_literals_with_a_port() {
        assert_eq!(parse_addr("127.0.0.1:8081").unwrap().1, "127.0.0.1:8081");
        assert_eq!(parse_addr("[::1]:80").unwrap().1, "[::1]:80");
        assert_eq!(
            parse_addr("[2001:db8:0:0::1]:443").unwrap().1,
            "[2001:db8::1]:443"
        );
        for bad in [
            "localhost:80",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "::1:80",
            "",
            "[fe80::1%2]:80",
        ] {
            assert!(parse_addr(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn values_as_the_seed_writes_them() {
        let v = parse_value(
            br#"{"weight": 3, "slow_start": 30, "check_url": "/health", "status": "down"}"#,
        );
        assert_eq!(
            v,
            MemberValue {
                weight: 3,
                slow_start_ms: 30_000,
                check_url: Some("/health".into()),
                down: true,
                error: None
            }
        );
        assert_eq!(
            parse_value(br#"{"checkurl": "/ping"}"#)
                .check_url
                .as_deref(),
            Some("/ping")
        );
        assert_eq!(parse_value(b""), MemberValue::default());
        assert_eq!(parse_value(b"{}"), MemberValue::default());
        assert!(!parse_value(br#"{"status": "UP"}"#).down);
    }

    #[test]
    fn a_bad_value_keeps_the_peer_with_defaults() {
        for (value, error) in [
            (&b"{weight: 3"[..], ValueError::NotJson),
            (b"[1]", ValueError::NotObject),
            (br#"{"weight": "3"}"#, ValueError::Weight),
            (br#"{"weight": 0}"#, ValueError::Weight),
            (
                br#"{"weight": 3, "slow_start": "x"}"#,
                ValueError::SlowStart,
            ),
            (br#"{"check_url": "health"}"#, ValueError::CheckUrl),
            (br#"{"check_url": "/a b"}"#, ValueError::CheckUrl),
            (br#"{"weight": 5, "status": "gone"}"#, ValueError::Status),
        ] {
            let v = parse_value(value);
            assert_eq!(v.error, Some(error));
            assert_eq!(v.weight, 1, "defaults, not part of the value");
            assert!(!v.down);
        }
    }

    #[test]
    fn a_member_keeps_its_fields_in_fixed_room() {
        assert_eq!(core::mem::size_of::<Member>(), 344, "as the README says");
        let mut m = Member::default();
        m.assign(7, "[::1]:8080");
        m.set_value(&parse_value(br#"{"weight": 2, "check_url": "/h"}"#));
        assert_eq!(
            (m.addr(), m.check_url(), m.weight),
            ("[::1]:8080", Some("/h"), 2)
        );
        let g = m.generation;
        m.free();
        assert!(!m.used);
        assert_eq!(m.addr(), "");
        assert_ne!(m.generation, g);
        m.set_value(&MemberValue::default());
        assert_eq!(m.check_url(), None);
        m.set_value(&parse_value(b"nope"));
        assert_eq!(m.error(), Some(ValueError::NotJson));
    }

    fn set(offset: usize, addr: &str, new: bool) -> Op {
        Op::Set {
            offset,
            addr: addr.into(),
            value: Vec::new(),
            new,
        }
    }

    #[test]
    fn keys_past_max_peers_are_refused_in_key_order() {
        let mut r = Roster::new(2, []);
        let ops = r.replace(
            &[
                ("10.0.0.3:80", b""),
                ("10.0.0.1:80", b""),
                ("10.0.0.2:80", b""),
            ],
            IDLE,
        );
        assert_eq!(
            ops,
            vec![set(0, "10.0.0.1:80", true), set(1, "10.0.0.2:80", true)]
        );
        assert_eq!(r.refused(), 1);
        assert_eq!(r.put("10.0.0.9:80", b"", IDLE), None);
        assert_eq!(r.refused(), 2);
        // A deleted peer frees its slot for the first refused key.
        assert_eq!(
            r.delete("10.0.0.1:80", IDLE),
            vec![Op::Free { offset: 0 }, set(0, "10.0.0.3:80", true)]
        );
        assert_eq!(r.refused(), 1);
        assert_eq!(r.delete("10.0.0.9:80", IDLE), vec![]);
        assert_eq!(r.refused(), 0);
    }

    #[test]
    fn a_full_read_keeps_the_slots_of_peers_that_stay() {
        let mut r = Roster::new(3, [(1, "10.0.0.1:80"), (2, "10.0.0.2:80")]);
        let ops = r.replace(&[("10.0.0.2:80", b""), ("10.0.0.4:80", b"")], IDLE);
        assert_eq!(
            ops,
            vec![
                Op::Free { offset: 1 },
                set(2, "10.0.0.2:80", false),
                set(0, "10.0.0.4:80", true)
            ]
        );
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.replace(&[], IDLE),
            vec![Op::Free { offset: 2 }, Op::Free { offset: 0 }]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_put_of_a_known_peer_changes_its_value_only() {
        let mut r = Roster::new(1, []);
        assert_eq!(
            r.put("10.0.0.1:80", b"", IDLE),
            Some(set(0, "10.0.0.1:80", true))
        );
        assert_eq!(
            r.put("10.0.0.1:80", b"", IDLE),
            Some(set(0, "10.0.0.1:80", false))
        );
        assert_eq!(r.delete("10.0.0.7:80", IDLE), vec![]);
    }
}

#[cfg(test)]
mod busy_tests {
    use super::*;

    #[test]
    fn a_new_peer_avoids_a_slot_with_requests_in_flight() {
        let idle: &dyn Fn(usize) -> bool = &|_| false;
        let mut r = Roster::new(3, [(0, "10.0.0.1:80"), (1, "10.0.0.2:80")]);
        r.delete("10.0.0.1:80", idle);
        // Slot 0 still has a request of 10.0.0.1 in flight: the new peer takes slot 2.
        let busy0: &dyn Fn(usize) -> bool = &|o| o == 0;
        assert_eq!(
            r.put("10.0.0.3:80", b"", busy0),
            Some(Op::Set {
                offset: 2,
                addr: "10.0.0.3:80".into(),
                value: Vec::new(),
                new: true
            })
        );
        // Every free slot busy: the first is taken all the same.
        let all: &dyn Fn(usize) -> bool = &|_| true;
        assert!(matches!(
            r.put("10.0.0.4:80", b"", all),
            Some(Op::Set { offset: 0, .. })
        ));
    }
}
