//! The JSON status page, in lua-resty-uh's envelope, written by hand as compact pure-ASCII JSON.

use core::fmt::{self, Write};

use super::num::write_decimal;
use super::{EtcdStatus, HaMode, PeerSnapshot, Snapshot, UpstreamSnapshot};
use crate::health::PeerHealth;
use crate::traffic::Traffic;

/// Writes `{"status":"ok","err_msg":"","msg":{"ha_mode":..,"upstreams":[..]}}`.
pub fn render_json(out: &mut impl Write, snap: &Snapshot) -> fmt::Result {
    json_begin(out, snap.ha_mode, snap.etcd.as_ref())?;
    for (i, u) in snap.upstreams.iter().enumerate() {
        json_upstream(out, i, u)?;
    }
    json_end(out)
}

/// The envelope up to the opening of the upstream list, with `etcd` when it is configured.
pub fn json_begin(out: &mut impl Write, ha_mode: HaMode, etcd: Option<&EtcdStatus>) -> fmt::Result {
    out.write_str("{\"status\":\"ok\",\"err_msg\":\"\",\"msg\":{\"ha_mode\":")?;
    write_json_str(out, ha_mode.as_str())?;
    if let Some(e) = etcd {
        write!(
            out,
            ",\"etcd\":{{\"connected\":{},\"endpoint\":",
            e.connected
        )?;
        write_json_str(out, &e.endpoint)?;
        write!(
            out,
            ",\"revision\":{},\"since\":{},\"last_error\":",
            e.revision, e.since_unix
        )?;
        match &e.last_error {
            Some(err) => write_json_str(out, err)?,
            None => out.write_str("null")?,
        }
        write!(out, ",\"refused_keys\":{}}}", e.refused_keys)?;
    }
    out.write_str(",\"upstreams\":[")
}

/// The `i`-th upstream of the list (0-based), with the comma before it.
pub fn json_upstream(out: &mut impl Write, i: usize, u: &UpstreamSnapshot) -> fmt::Result {
    if i > 0 {
        out.write_char(',')?;
    }
    upstream(out, u)
}

/// Closes the list of http upstreams and opens the list of stream ones.
pub fn json_streams_begin(out: &mut impl Write) -> fmt::Result {
    out.write_str("],\"stream_upstreams\":[")
}

/// Closes the list and the envelope.
pub fn json_end(out: &mut impl Write) -> fmt::Result {
    out.write_str("]}}")
}

/// Writes `{"status":"err","err_msg":"<msg>","msg":""}`.
pub fn render_json_error(out: &mut impl Write, msg: &str) -> fmt::Result {
    out.write_str("{\"status\":\"err\",\"err_msg\":")?;
    write_json_str(out, msg)?;
    out.write_str(",\"msg\":\"\"}")
}

/// Writes `s` as a JSON string literal (RFC 8259), quotes included. The output is pure ASCII:
/// `"` and `\` are backslash-escaped, control characters become `\n` `\r` `\t` `\b` `\f` or
/// `\u00XX`, DEL and everything beyond ASCII become `\uXXXX` (UTF-16 surrogate pairs above the
/// BMP).
pub fn write_json_str(out: &mut impl Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let plain = c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\';
        if plain {
            continue;
        }
        out.write_str(&s[start..i])?;
        start = i + c.len_utf8();
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '\u{8}' => out.write_str("\\b")?,
            '\u{c}' => out.write_str("\\f")?,
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(out, "\\u{:04x}", u)?;
                }
            }
        }
    }
    out.write_str(&s[start..])?;
    out.write_char('"')
}

fn upstream(out: &mut impl Write, u: &UpstreamSnapshot) -> fmt::Result {
    out.write_str("{\"name\":")?;
    write_json_str(out, &u.name)?;
    write!(out, ",\"checked\":{}", u.checked)?;
    if let Some(p) = &u.panic {
        write!(out, ",\"panic\":{}", p.active)?;
    }
    out.write_str(",\"primary\":")?;
    peers(out, &u.primary)?;
    out.write_str(",\"backup\":")?;
    peers(out, &u.backup)?;
    if let Some(n) = u.local_errors {
        write!(out, ",\"probe_errors\":{{\"local\":{n}}}")?;
    }
    out.write_char('}')
}

fn peers(out: &mut impl Write, list: &[PeerSnapshot]) -> fmt::Result {
    out.write_char('[')?;
    for (i, p) in list.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{{\"id\":{},\"name\":", p.id)?;
        write_json_str(out, &p.name)?;
        write!(
            out,
            ",\"weight\":{},\"max_fails\":{},\"fail_timeout\":{},\"down\":{},\"conns\":{},\
             \"current_weight\":{},\"effective_weight\":{},\"fails\":{}",
            p.weight,
            p.max_fails,
            p.fail_timeout,
            p.down,
            p.conns,
            p.current_weight,
            p.effective_weight,
            p.fails
        )?;
        if let Some(h) = &p.health {
            out.write_str(",\"health\":")?;
            health(out, p, h)?;
        }
        if let Some(t) = &p.traffic {
            out.write_str(",\"traffic\":")?;
            traffic(out, t)?;
        }
        if let Some(v) = &p.passive {
            write!(
                out,
                ",\"passive\":{{\"ejections\":{},\"down_until\":",
                v.ejections
            )?;
            unix_seconds(out, v.down_until_ms)?;
            write!(out, ",\"probation\":{}}}", v.probation)?;
        }
        if let Some(e) = &p.etcd {
            let source = if e.from_etcd { "etcd" } else { "config" };
            write!(out, ",\"source\":\"{source}\",\"etcd_error\":")?;
            match &e.error {
                Some(error) => write_json_str(out, error)?,
                None => out.write_str("null")?,
            }
        }
        out.write_char('}')?;
    }
    out.write_char(']')
}

fn traffic(out: &mut impl Write, t: &Traffic) -> fmt::Result {
    let [r1, r2, r3, r4, r5] = t.responses;
    write!(
        out,
        "{{\"requests\":{},\"responses\":{{\"1xx\":{r1},\"2xx\":{r2},\"3xx\":{r3},\
         \"4xx\":{r4},\"5xx\":{r5}}},\"failed_attempts\":{},\"response_time_ms_avg\":",
        t.requests, t.failed_attempts
    )?;
    let h = &t.response_times;
    let avg_us = h.sum_us.checked_div(h.count).unwrap_or(0);
    write_decimal(out, avg_us, 3, 1)?;
    out.write_char('}')
}

fn health(out: &mut impl Write, p: &PeerSnapshot, h: &PeerHealth) -> fmt::Result {
    let status = if h.is_up() && !p.config_down {
        "up"
    } else {
        "down"
    };
    write!(
        out,
        "{{\"status\":\"{status}\",\"rise_count\":{},\"fall_count\":{},\"checks\":{},\
         \"failures\":{},\"last_check\":",
        h.rise_count,
        h.fall_count,
        h.checks,
        h.failures_total()
    )?;
    unix_seconds(out, h.last_check_ms)?;
    out.write_str(",\"last_duration_ms\":")?;
    write_decimal(out, u64::from(h.last_duration_us), 3, 1)?;
    out.write_str(",\"last_status\":")?;
    match h.last_status() {
        Some(s) => write!(out, "{s}")?,
        None => out.write_str("null")?,
    }
    out.write_str(",\"last_error\":")?;
    match h.last_error() {
        Some(f) => write_json_str(out, f.as_str())?,
        None => out.write_str("null")?,
    }
    out.write_str(",\"last_error_detail\":")?;
    match &p.last_error_detail {
        Some(d) => write_json_str(out, d)?,
        None => out.write_str("null")?,
    }
    out.write_str(",\"last_change\":")?;
    unix_seconds(out, h.last_change_ms)?;
    write!(
        out,
        ",\"manual_down\":{},\"manual_down_ttl\":",
        p.manual_down
    )?;
    match p.manual_down_ttl {
        Some(ttl) => write!(out, "{ttl}")?,
        None => out.write_str("null")?,
    }
    let (until_ms, permille) = p.slow_start.unwrap_or((0, 1000));
    out.write_str(",\"slow_start_until\":")?;
    unix_seconds(out, until_ms)?;
    out.write_str(",\"slow_start_factor\":")?;
    write_decimal(out, permille, 3, 1)?;
    out.write_char('}')
}

/// Unix milliseconds as seconds with at least one decimal (`1763690000.0`), `null` for 0.
fn unix_seconds(out: &mut impl Write, ms: u64) -> fmt::Result {
    if ms == 0 {
        out.write_str("null")
    } else {
        write_decimal(out, ms, 3, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;
    use crate::render::PanicSnapshot;
    use serde_json::{json, Value};

    fn render(snap: &Snapshot) -> String {
        let mut s = String::new();
        render_json(&mut s, snap).unwrap();
        s
    }

    fn parse(s: &str) -> Value {
        assert!(s.is_ascii(), "not pure ASCII: {s}");
        serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON ({e}): {s}"))
    }

    fn jstr(s: &str) -> String {
        let mut out = String::new();
        write_json_str(&mut out, s).unwrap();
        out
    }

    fn peer(name: &str) -> PeerSnapshot {
        PeerSnapshot {
            name: name.to_owned(),
            weight: 1,
            max_fails: 1,
            fail_timeout: 10,
            effective_weight: 1,
            ..PeerSnapshot::default()
        }
    }

    fn checked_peer(name: &str) -> PeerSnapshot {
        PeerSnapshot {
            health: Some(PeerHealth::new(true)),
            ..peer(name)
        }
    }

    fn busy_health() -> PeerHealth {
        let mut h = PeerHealth::new(true);
        h.rise_count = 5;
        h.checks = 120;
        h.failures[Failure::Refused.index()] = 2;
        h.failures[Failure::Timeout.index()] = 1;
        h.last_check_ms = 1_763_700_000_123;
        h.last_duration_us = 400;
        h.last_status = 200;
        h.last_change_ms = 1_763_690_000_000;
        h
    }

    #[test]
    fn golden_checked_upstream() {
        let snap = Snapshot {
            now_ms: 1_763_700_001_000,
            ha_mode: HaMode::Disabled,
            etcd: None,
            upstreams: vec![UpstreamSnapshot {
                name: "backend".to_owned(),
                checked: true,
                primary: vec![PeerSnapshot {
                    health: Some(busy_health()),
                    ..peer("127.0.0.1:8081")
                }],
                backup: vec![],
                probe_durations: None,
                local_errors: Some(4),
                ..Default::default()
            }],
        };
        let expected = concat!(
            r#"{"status":"ok","err_msg":"","msg":{"ha_mode":"Disabled","upstreams":["#,
            r#"{"name":"backend","checked":true,"primary":["#,
            r#"{"id":0,"name":"127.0.0.1:8081","weight":1,"max_fails":1,"fail_timeout":10,"#,
            r#""down":false,"conns":0,"current_weight":0,"effective_weight":1,"fails":0,"#,
            r#""health":{"status":"up","rise_count":5,"fall_count":0,"checks":120,"failures":3,"#,
            r#""last_check":1763700000.123,"last_duration_ms":0.4,"last_status":200,"#,
            r#""last_error":null,"last_error_detail":null,"last_change":1763690000.0,"#,
            r#""manual_down":false,"manual_down_ttl":null,"#,
            r#""slow_start_until":null,"slow_start_factor":1.0}}],"#,
            r#""backup":[],"probe_errors":{"local":4}}]}}"#
        );
        let s = render(&snap);
        assert_eq!(s, expected);
        let v = parse(&s);
        assert_eq!(
            v["msg"]["upstreams"][0]["primary"][0]["health"]["last_check"],
            json!(1763700000.123)
        );
    }

    #[test]
    fn panic_is_shown_for_checked_upstreams_only() {
        let snap = Snapshot {
            upstreams: vec![
                UpstreamSnapshot {
                    name: "a".to_owned(),
                    checked: true,
                    panic: Some(PanicSnapshot {
                        active: true,
                        ..PanicSnapshot::default()
                    }),
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "b".to_owned(),
                    checked: true,
                    panic: Some(PanicSnapshot::default()),
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "c".to_owned(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let s = render(&snap);
        assert!(
            s.contains(r#"{"name":"a","checked":true,"panic":true,"primary":[]"#),
            "{s}"
        );
        assert!(
            s.contains(r#"{"name":"b","checked":true,"panic":false,"primary":[]"#),
            "{s}"
        );
        assert!(
            s.contains(r#"{"name":"c","checked":false,"primary":[]"#),
            "{s}"
        );
        parse(&s);
    }

    #[test]
    fn empty_snapshot() {
        let s = render(&Snapshot::default());
        assert_eq!(
            s,
            r#"{"status":"ok","err_msg":"","msg":{"ha_mode":"Disabled","upstreams":[]}}"#
        );
        assert_eq!(
            parse(&s),
            json!({"status":"ok","err_msg":"","msg":{"ha_mode":"Disabled","upstreams":[]}})
        );
    }

    #[test]
    fn upstream_with_empty_lists_and_ha_mode() {
        let snap = Snapshot {
            ha_mode: HaMode::Slaver,
            upstreams: vec![UpstreamSnapshot {
                name: "empty".to_owned(),
                checked: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap);
        assert_eq!(
            s,
            r#"{"status":"ok","err_msg":"","msg":{"ha_mode":"Slaver","upstreams":[{"name":"empty","checked":true,"primary":[],"backup":[]}]}}"#
        );
        parse(&s);
    }

    #[test]
    fn unchecked_upstream_has_no_health_objects() {
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "plain".to_owned(),
                checked: false,
                primary: vec![
                    peer("a:1"),
                    PeerSnapshot {
                        id: 1,
                        ..peer("b:2")
                    },
                ],
                backup: vec![PeerSnapshot {
                    down: true,
                    config_down: true,
                    ..peer("c:3")
                }],
                probe_durations: None,
                local_errors: None,
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap);
        assert!(!s.contains("health"));
        assert!(!s.contains("manual_down"));
        assert!(!s.contains("probe_errors"));
        let v = parse(&s);
        let u = &v["msg"]["upstreams"][0];
        assert_eq!(u["checked"], json!(false));
        assert_eq!(u["primary"][1]["id"], json!(1));
        assert_eq!(u["primary"][1]["name"], json!("b:2"));
        assert_eq!(u["backup"][0]["id"], json!(0));
        assert_eq!(u["backup"][0]["down"], json!(true));
        assert_eq!(
            u["primary"][0],
            json!({"id":0,"name":"a:1","weight":1,"max_fails":1,"fail_timeout":10,"down":false,
                   "conns":0,"current_weight":0,"effective_weight":1,"fails":0})
        );
    }

    #[test]
    fn config_down_peer_is_down_even_when_healthy() {
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "u".to_owned(),
                checked: true,
                primary: vec![
                    PeerSnapshot {
                        config_down: true,
                        down: true,
                        ..checked_peer("a:1")
                    },
                    checked_peer("b:2"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = parse(&render(&snap));
        let p = &v["msg"]["upstreams"][0]["primary"];
        assert_eq!(p[0]["down"], json!(true));
        assert_eq!(p[0]["health"]["status"], json!("down"));
        assert_eq!(p[1]["down"], json!(false));
        assert_eq!(p[1]["health"]["status"], json!("up"));
    }

    #[test]
    fn a_counted_peer_reports_its_traffic_and_others_have_none() {
        let mut t = Traffic {
            requests: 12,
            responses: [0, 9, 0, 1, 1],
            failed_attempts: 1,
            ..Default::default()
        };
        for us in [1_000, 2_000, 2_500] {
            t.response_times.observe(us);
        }
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "u".to_owned(),
                primary: vec![
                    PeerSnapshot {
                        traffic: Some(t),
                        ..peer("a:1")
                    },
                    peer("b:2"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap);
        assert!(s.contains(
            r#""traffic":{"requests":12,"responses":{"1xx":0,"2xx":9,"3xx":0,"4xx":1,"5xx":1},"failed_attempts":1,"response_time_ms_avg":1.833}"#
        ), "{s}");
        let v = parse(&s);
        assert!(v["msg"]["upstreams"][0]["primary"][1]
            .get("traffic")
            .is_none());
    }

    #[test]
    fn null_versus_set_values() {
        let fresh = checked_peer("fresh:1");
        let mut h = busy_health();
        h.up = 0;
        h.fall_count = 3;
        h.last_error = Failure::Mismatch as u8;
        h.last_status = 503;
        h.last_duration_us = 12_345_678;
        let failing = PeerSnapshot {
            last_error_detail: Some(r#"body ~ "\"ok\"""#.to_owned()),
            down: true,
            manual_down: true,
            manual_down_ttl: Some(300),
            health: Some(h),
            ..peer("failing:2")
        };
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "u".to_owned(),
                checked: true,
                primary: vec![fresh],
                backup: vec![failing],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap);
        assert!(s.contains(
            r#""health":{"status":"up","rise_count":0,"fall_count":0,"checks":0,"failures":0,"last_check":null,"last_duration_ms":0.0,"last_status":null,"last_error":null,"last_error_detail":null,"last_change":null,"manual_down":false,"manual_down_ttl":null,"slow_start_until":null,"slow_start_factor":1.0}"#
        ));
        let v = parse(&s);
        let h = &v["msg"]["upstreams"][0]["backup"][0]["health"];
        assert_eq!(
            *h,
            json!({"status":"down","rise_count":5,"fall_count":3,"checks":120,"failures":3,
                   "last_check":1763700000.123,"last_duration_ms":12345.678,"last_status":503,
                   "last_error":"mismatch","last_error_detail":r#"body ~ "\"ok\"""#,
                   "last_change":1763690000.0,
                   "manual_down":true,"manual_down_ttl":300,
                   "slow_start_until":null,"slow_start_factor":1.0})
        );
    }

    #[test]
    fn a_ramping_peer_shows_when_its_slow_start_ends_and_its_factor() {
        let ramping = PeerSnapshot {
            slow_start: Some((1_763_700_030_500, 325)),
            ..checked_peer("back:1")
        };
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "u".to_owned(),
                checked: true,
                primary: vec![ramping],
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = render(&snap);
        assert!(
            s.contains(r#""slow_start_until":1763700030.5,"slow_start_factor":0.325}"#),
            "{s}"
        );
        let h = &parse(&s)["msg"]["upstreams"][0]["primary"][0]["health"];
        assert_eq!(h["slow_start_factor"], json!(0.325));
    }

    #[test]
    fn awkward_names_round_trip() {
        let names = [
            "quo\"te",
            "back\\slash",
            "ctl\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "caf\u{e9}",
            "emoji \u{1F600}",
            "</script>",
        ];
        let snap = Snapshot {
            upstreams: names
                .iter()
                .map(|&n| UpstreamSnapshot {
                    name: n.to_owned(),
                    checked: true,
                    primary: vec![checked_peer(n)],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let v = parse(&render(&snap));
        for (i, n) in names.iter().enumerate() {
            let u = &v["msg"]["upstreams"][i];
            assert_eq!(u["name"], json!(n));
            assert_eq!(u["primary"][0]["name"], json!(n));
        }
    }

    #[test]
    fn string_escaping_golden() {
        assert_eq!(jstr(""), r#""""#);
        assert_eq!(jstr("plain"), r#""plain""#);
        assert_eq!(jstr("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(jstr("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(jstr("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        assert_eq!(jstr("\u{e9}"), r#""\u00e9""#);
        assert_eq!(jstr("\u{20ac}"), r#""\u20ac""#);
        assert_eq!(jstr("\u{1F600}"), r#""\ud83d\ude00""#);
        assert_eq!(jstr("a/b"), r#""a/b""#);
    }

    #[test]
    fn error_envelope() {
        let mut s = String::new();
        render_json_error(&mut s, "unknown upstream \"x\u{e9}\"\n").unwrap();
        assert_eq!(
            s,
            r#"{"status":"err","err_msg":"unknown upstream \"x\u00e9\"\n","msg":""}"#
        );
        assert_eq!(
            parse(&s),
            json!({"status":"err","err_msg":"unknown upstream \"x\u{e9}\"\n","msg":""})
        );
    }

    #[test]
    fn write_errors_are_passed_on() {
        struct Full;
        impl Write for Full {
            fn write_str(&mut self, _: &str) -> fmt::Result {
                Err(fmt::Error)
            }
        }
        assert_eq!(
            render_json(&mut Full, &Snapshot::default()),
            Err(fmt::Error)
        );
        assert_eq!(render_json_error(&mut Full, "x"), Err(fmt::Error));
    }
}
