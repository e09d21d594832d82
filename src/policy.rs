//! The one rule for whether nginx's balancer may send traffic to a peer, and whether it is probed.

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
}

impl PeerFacts {
    /// True while the checks' verdict applies: a checked upstream, not excluded, not on the
    /// HA standby. Otherwise the upstream serves as nginx would without checks.
    pub fn verdict_applies(&self) -> bool {
        self.checked && !self.excluded && !self.standby
    }

    /// True when the balancer must skip the peer.
    pub fn down_for_balancer(&self) -> bool {
        self.config_down || self.manual_down || (self.verdict_applies() && !self.healthy)
    }

    /// True when the peer is probed: its verdict applies and nginx.conf does not mark it down.
    pub fn probed(&self) -> bool {
        self.verdict_applies() && !self.config_down
    }
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
}
