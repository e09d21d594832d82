//! The text status page, in the exact format of lua-resty-upstream-healthcheck's `status_page()`.

use core::fmt::{self, Write};

use super::{EtcdStatus, HaMode, PeerSnapshot, Snapshot, UpstreamSnapshot};

/// Writes the page: per upstream a header line (` (NO checkers)` or ` (panic)` after the name
/// of an unchecked upstream or one in panic), then its primary and backup peers, each with
/// ` up`, ` DOWN` or ` DOWN (manual)`; one empty line between upstreams. Under HA the page starts
/// with `HA Mode: Master` (or `Slaver`) and an empty line.
pub fn render_text(out: &mut impl Write, snap: &Snapshot) -> fmt::Result {
    text_begin(out, snap.ha_mode, snap.etcd.as_ref())?;
    for (i, u) in snap.upstreams.iter().enumerate() {
        text_upstream(out, i, u)?;
    }
    Ok(())
}

/// The start of the page: the HA line and the etcd line (`etcd: connected` or
/// `etcd: disconnected (<last error>)`), if any, then an empty line.
pub fn text_begin(out: &mut impl Write, ha_mode: HaMode, etcd: Option<&EtcdStatus>) -> fmt::Result {
    if ha_mode != HaMode::Disabled {
        out.write_str("HA Mode: ")?;
        out.write_str(ha_mode.as_str())?;
        out.write_str("\n")?;
    }
    if let Some(e) = etcd {
        if e.connected {
            out.write_str("etcd: connected\n")?;
        } else {
            let error = e.last_error.as_deref().unwrap_or("not connected yet");
            writeln!(out, "etcd: disconnected ({error})")?;
        }
    }
    if ha_mode != HaMode::Disabled || etcd.is_some() {
        out.write_str("\n")?;
    }
    Ok(())
}

/// The part of the `i`-th upstream on the page (0-based); the text page has no end.
pub fn text_upstream(out: &mut impl Write, i: usize, u: &UpstreamSnapshot) -> fmt::Result {
    if i > 0 {
        out.write_str("\n")?;
    }
    out.write_str(if u.stream {
        "Stream upstream "
    } else {
        "Upstream "
    })?;
    out.write_str(&u.name)?;
    if !u.checked {
        out.write_str(" (NO checkers)")?;
    } else if u.panic.is_some_and(|p| p.active) {
        out.write_str(" (panic)")?;
    }
    out.write_str("\n    Primary Peers\n")?;
    peers(out, &u.primary)?;
    out.write_str("    Backup Peers\n")?;
    peers(out, &u.backup)
}

fn peers(out: &mut impl Write, list: &[PeerSnapshot]) -> fmt::Result {
    for p in list {
        out.write_str("        ")?;
        out.write_str(&p.name)?;
        out.write_str(if p.manual_down {
            " DOWN (manual)\n"
        } else if p.down {
            " DOWN\n"
        } else {
            " up\n"
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::PanicSnapshot;

    fn peer(name: &str, down: bool) -> PeerSnapshot {
        PeerSnapshot {
            name: name.to_owned(),
            down,
            ..PeerSnapshot::default()
        }
    }

    fn render(snap: &Snapshot) -> String {
        let mut s = String::new();
        render_text(&mut s, snap).unwrap();
        s
    }

    #[test]
    fn empty_snapshot_renders_nothing() {
        assert_eq!(render(&Snapshot::default()), "");
    }

    #[test]
    fn checked_upstream() {
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "backend".to_owned(),
                checked: true,
                primary: vec![peer("127.0.0.1:8081", false), peer("127.0.0.1:8082", true)],
                backup: vec![peer("127.0.0.1:8083", false)],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            render(&snap),
            "Upstream backend\n\
             \x20   Primary Peers\n\
             \x20       127.0.0.1:8081 up\n\
             \x20       127.0.0.1:8082 DOWN\n\
             \x20   Backup Peers\n\
             \x20       127.0.0.1:8083 up\n"
        );
    }

    #[test]
    fn an_upstream_in_panic_says_so_and_its_peers_show_what_nginx_does() {
        let panic = |active| {
            Some(PanicSnapshot {
                active,
                ..PanicSnapshot::default()
            })
        };
        let snap = Snapshot {
            upstreams: vec![
                UpstreamSnapshot {
                    name: "backend".to_owned(),
                    checked: true,
                    // Failed its checks, used all the same.
                    primary: vec![peer("127.0.0.1:8081", false)],
                    panic: panic(true),
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "calm".to_owned(),
                    checked: true,
                    panic: panic(false),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            render(&snap),
            "Upstream backend (panic)\n\
             \x20   Primary Peers\n\
             \x20       127.0.0.1:8081 up\n\
             \x20   Backup Peers\n\
             \n\
             Upstream calm\n\
             \x20   Primary Peers\n\
             \x20   Backup Peers\n"
        );
    }

    #[test]
    fn checked_and_unchecked_upstreams_with_empty_lists() {
        let snap = Snapshot {
            upstreams: vec![
                UpstreamSnapshot {
                    name: "foo.com".to_owned(),
                    checked: true,
                    primary: vec![
                        peer("127.0.0.1:12354", false),
                        peer("127.0.0.1:12355", true),
                    ],
                    backup: vec![],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "bar.com".to_owned(),
                    checked: false,
                    primary: vec![peer("127.0.0.1:12356", true)],
                    backup: vec![peer("127.0.0.1:12357", false)],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "empty".to_owned(),
                    checked: false,
                    primary: vec![],
                    backup: vec![],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "backup_only".to_owned(),
                    checked: true,
                    primary: vec![],
                    backup: vec![peer("[::1]:8080", true)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let expected = "\
Upstream foo.com
    Primary Peers
        127.0.0.1:12354 up
        127.0.0.1:12355 DOWN
    Backup Peers

Upstream bar.com (NO checkers)
    Primary Peers
        127.0.0.1:12356 DOWN
    Backup Peers
        127.0.0.1:12357 up

Upstream empty (NO checkers)
    Primary Peers
    Backup Peers

Upstream backup_only
    Primary Peers
    Backup Peers
        [::1]:8080 DOWN
";
        assert_eq!(render(&snap), expected);
    }

    #[test]
    fn ha_mode_header_and_manual_down() {
        let mut snap = Snapshot {
            ha_mode: HaMode::Master,
            upstreams: vec![UpstreamSnapshot {
                name: "backend".to_owned(),
                checked: true,
                primary: vec![
                    peer("127.0.0.1:8081", false),
                    PeerSnapshot {
                        manual_down: true,
                        ..peer("127.0.0.1:8082", true)
                    },
                ],
                backup: vec![peer("127.0.0.1:8083", true)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let body = "\
Upstream backend
    Primary Peers
        127.0.0.1:8081 up
        127.0.0.1:8082 DOWN (manual)
    Backup Peers
        127.0.0.1:8083 DOWN
";
        assert_eq!(render(&snap), format!("HA Mode: Master\n\n{body}"));
        snap.ha_mode = HaMode::Slaver;
        assert_eq!(render(&snap), format!("HA Mode: Slaver\n\n{body}"));
        snap.ha_mode = HaMode::Disabled;
        assert_eq!(render(&snap), body);
    }

    #[test]
    fn ha_mode_header_on_an_empty_page() {
        let snap = Snapshot {
            ha_mode: HaMode::Slaver,
            ..Default::default()
        };
        assert_eq!(render(&snap), "HA Mode: Slaver\n\n");
    }

    #[test]
    fn write_errors_are_passed_on() {
        struct Full;
        impl Write for Full {
            fn write_str(&mut self, _: &str) -> fmt::Result {
                Err(fmt::Error)
            }
        }
        let snap = Snapshot {
            upstreams: vec![UpstreamSnapshot {
                name: "u".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(render_text(&mut Full, &snap), Err(fmt::Error));
    }
}
