//! The one rule for whether nginx's balancer may send traffic to a peer, whether it is probed,
//! and whether a probe's connection is kept for its next probe.

/// What is known about one peer when deciding its `down` flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerFacts {
    /// Marked `down` in nginx.conf.
    pub config_down: bool,
    /// Forced down through the control API.
    pub manual_down: bool,
    /// Its upstream has `upstream_healthcheck`.
    pub checked: bool,
    /// Its upstream is excluded from checking through the control API.
    pub excluded: bool,
    /// This host is the HA standby: nothing is probed and verdicts are not applied.
    pub standby: bool,
    /// The checks' verdict.
    pub healthy: bool,
    /// Ejected by passive checks in an upstream without active checks (with them, an
    /// ejection is part of the checks' verdict).
    pub passive_down: bool,
    /// Its upstream is in panic (`panic_threshold`, see `panic`): too few primaries are up, so
    /// the verdict is set aside; manual and nginx.conf downs still apply.
    pub panic: bool,
}

impl PeerFacts {
    /// True while the checks' verdict applies: a checked upstream, not excluded, not on the
    /// HA standby. Otherwise the upstream serves as nginx would without checks.
    pub fn verdict_applies(&self) -> bool {
        self.checked && !self.excluded && !self.standby
    }

    /// True when the balancer must skip the peer: marked `down` in nginx.conf, forced down,
    /// failed by its checks while their verdict applies and its upstream is not in panic, or
    /// ejected by passive checks (an upstream without active checks) unless the upstream is
    /// excluded or this host is the HA standby.
    pub fn down_for_balancer(&self) -> bool {
        self.config_down
            || self.manual_down
            || (self.verdict_applies() && !self.panic && !self.healthy)
            || (self.passive_down && !self.excluded && !self.standby)
    }

    /// True when the peer is probed: its verdict applies and nginx.conf does not mark it down.
    pub fn probed(&self) -> bool {
        self.verdict_applies() && !self.config_down
    }

    /// True when an idle probe connection to the peer may be kept: it is probed here and up
    /// (a down peer holds no connection).
    pub fn keeps_probe_connection(&self) -> bool {
        self.probed() && self.healthy
    }
}

/// Whether a probe's connection may carry the next probe under `keepalive=N`: the response
/// allowed it and the connection has carried fewer than N probes (`carried` counts this one).
pub fn connection_reusable(reusable: bool, carried: u32, keepalive: u32) -> bool {
    reusable && carried < keepalive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(healthy: bool) -> PeerFacts {
        PeerFacts {
            checked: true,
            healthy,
            ..PeerFacts::default()
        }
    }

    #[test]
    fn a_passive_ejection_takes_an_unchecked_peer_out_like_a_verdict() {
        let ejected = PeerFacts {
            passive_down: true,
            ..PeerFacts::default()
        };
        assert!(ejected.down_for_balancer());
        assert!(!ejected.probed(), "nothing probes an unchecked upstream");
        for off in [
            PeerFacts {
                excluded: true,
                ..ejected
            },
            PeerFacts {
                standby: true,
                ..ejected
            },
        ] {
            assert!(!off.down_for_balancer(), "{off:?}");
        }
    }

    #[test]
    fn a_connection_carries_at_most_keepalive_probes_and_none_to_a_down_peer() {
        assert!(connection_reusable(true, 1, 3) && connection_reusable(true, 2, 3));
        assert!(
            !connection_reusable(true, 3, 3),
            "the third probe was its last"
        );
        assert!(!connection_reusable(false, 1, 3), "the response closed it");
        assert!(!connection_reusable(true, 1, 1) && !connection_reusable(true, 1, 0));
        assert!(checked(true).keeps_probe_connection());
        assert!(!checked(false).keeps_probe_connection());
        let excluded = PeerFacts {
            excluded: true,
            ..checked(true)
        };
        assert!(!excluded.keeps_probe_connection());
    }

    #[test]
    fn an_unhealthy_checked_peer_is_down_and_still_probed() {
        assert!(checked(false).down_for_balancer());
        assert!(checked(false).probed());
        assert!(!checked(true).down_for_balancer());
    }

    #[test]
    fn manual_and_config_downs_win_over_a_healthy_verdict() {
        let manual = PeerFacts {
            manual_down: true,
            ..checked(true)
        };
        assert!(manual.down_for_balancer());
        assert!(manual.probed(), "probes go on under a manual down");
        let config = PeerFacts {
            config_down: true,
            ..checked(true)
        };
        assert!(config.down_for_balancer());
        assert!(!config.probed());
    }

    #[test]
    fn exclusion_standby_and_unchecked_upstreams_serve_as_without_checks() {
        for facts in [
            PeerFacts {
                excluded: true,
                ..checked(false)
            },
            PeerFacts {
                standby: true,
                ..checked(false)
            },
            PeerFacts {
                checked: false,
                ..checked(false)
            },
        ] {
            assert!(!facts.down_for_balancer(), "{facts:?}");
            assert!(!facts.probed(), "{facts:?}");
        }
        let manual_on_unchecked = PeerFacts {
            manual_down: true,
            ..PeerFacts::default()
        };
        assert!(manual_on_unchecked.down_for_balancer());
    }

    #[test]
    fn in_panic_a_failed_peer_serves_but_manual_and_config_downs_still_apply() {
        let panic = |f: PeerFacts| PeerFacts { panic: true, ..f };
        let failed = panic(checked(false));
        assert!(!failed.down_for_balancer(), "the verdict is set aside");
        assert!(failed.probed(), "probes go on, to see the peers come back");
        assert!(
            !failed.keeps_probe_connection(),
            "a failed peer holds no probe connection"
        );
        assert!(panic(PeerFacts {
            manual_down: true,
            ..checked(true)
        })
        .down_for_balancer());
        assert!(panic(PeerFacts {
            config_down: true,
            ..checked(true)
        })
        .down_for_balancer());
    }
}
