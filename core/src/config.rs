//! Typed configuration of the module, with every default in one place.

/// What a probe does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckType {
    /// A connect within the timeout is success.
    Tcp,
    /// Connect, send the request, judge the status line.
    Http,
    /// As `Http`, over TLS.
    Https,
}

impl CheckType {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckType::Tcp => "tcp",
            CheckType::Http => "http",
            CheckType::Https => "https",
        }
    }

    /// The probe speaks TLS.
    pub fn is_tls(self) -> bool {
        self == CheckType::Https
    }
}

/// `upstream_healthcheck_ssl_protocols`: a set of the versions nginx's `ngx_ssl_create` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsProtocols {
    pub tls1: bool,
    pub tls1_1: bool,
    pub tls1_2: bool,
    pub tls1_3: bool,
}

impl Default for TlsProtocols {
    /// TLSv1.2 and TLSv1.3, as `proxy_ssl_protocols` since nginx 1.23.4.
    fn default() -> Self {
        TlsProtocols {
            tls1: false,
            tls1_1: false,
            tls1_2: true,
            tls1_3: true,
        }
    }
}

/// Parameters of `upstream_healthcheck_passive`: how proxied requests eject a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassiveParams {
    /// Failed attempts within `window_ms` that eject the peer.
    pub fails: u32,
    pub window_ms: u64,
    /// Response statuses that count as failures besides what nginx itself counts as a failed
    /// try; `None`: none.
    pub statuses: Option<ValidStatuses>,
    /// Timed-out attempts count.
    pub timeouts: bool,
    /// Without active checks, how long an ejected peer stays down (then on probation).
    pub down_time_ms: u64,
}

impl Default for PassiveParams {
    fn default() -> Self {
        PassiveParams {
            fails: 1,
            window_ms: 10_000,
            statuses: None,
            timeouts: true,
            down_time_ms: 10_000,
        }
    }
}

/// Parameters of `upstream_healthcheck`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckParams {
    pub check_type: CheckType,
    pub interval_ms: u64,
    /// The interval while the verdict is in doubt (see `schedule::next_interval_ms`);
    /// `interval` unless given.
    pub fast_interval_ms: u64,
    /// The interval while the peer is down and not in doubt; `interval` unless given.
    pub down_interval_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    /// Port to probe instead of the peer's own.
    pub port: Option<u16>,
    /// Up to this much random delay is added to every interval (fast and down ones too).
    pub jitter_ms: u64,
    /// Path of the default request; `/` when `None`.
    pub uri: Option<String>,
    /// Host header of the default request; the upstream's name when `None`.
    pub host: Option<String>,
    /// Peers seen for the first time start down and need `rise` good probes.
    pub default_down: bool,
    /// Probes one connection carries before it is closed (`keepalive=N`); 0: a new
    /// connection per probe.
    pub keepalive: u32,
    /// `match=`: the name of the `upstream_healthcheck_match` block that judges responses
    /// (resolved after parsing, so the block may come after the upstream).
    pub match_name: Option<String>,
    /// `slow_start=T`: a peer back in service ramps its share of requests up over this long; 0
    /// is off.
    pub slow_start_ms: u64,
    /// `panic_threshold=P%`: the upstream is in panic while fewer than P percent (1 to 100) of
    /// its primary peers are up (see `panic`); `None`: never.
    pub panic_threshold: Option<u8>,
}

impl Default for CheckParams {
    fn default() -> Self {
        CheckParams {
            check_type: CheckType::Http,
            interval_ms: 2000,
            fast_interval_ms: 2000,
            down_interval_ms: 2000,
            timeout_ms: 1000,
            fall: 3,
            rise: 2,
            port: None,
            jitter_ms: 0,
            uri: None,
            host: None,
            default_down: false,
            keepalive: 0,
            match_name: None,
            slow_start_ms: 0,
            panic_threshold: None,
        }
    }
}

/// One entry of `upstream_healthcheck_valid_statuses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
    /// A `!` entry: statuses in the range are invalid.
    pub negated: bool,
}

/// Which HTTP statuses mean the peer is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidStatuses {
    pub entries: Vec<StatusRange>,
}

impl Default for ValidStatuses {
    /// 200-399, as in NGINX Plus and the Lua checkers.
    fn default() -> Self {
        ValidStatuses {
            entries: vec![StatusRange {
                lo: 200,
                hi: 399,
                negated: false,
            }],
        }
    }
}

impl ValidStatuses {
    /// A status is valid when it matches a positive entry (or there is none) and matches no
    /// `!` entry.
    pub fn is_valid(&self, status: u16) -> bool {
        let within = |e: &&StatusRange| (e.lo..=e.hi).contains(&status);
        let mut positive = self.entries.iter().filter(|e| !e.negated).peekable();
        let allowed = positive.peek().is_none() || positive.any(|e| within(&e));
        allowed
            && !self
                .entries
                .iter()
                .filter(|e| e.negated)
                .any(|e| within(&e))
    }
}

/// The request sent by an http probe when `upstream_healthcheck_request` is not given: HTTP/1.1
/// without `Connection: close` when the connection is kept (`keepalive=N`), HTTP/1.0 that
/// closes it otherwise.
pub fn default_request(uri: &str, host: &str, keepalive: bool) -> Vec<u8> {
    let (version, close) = if keepalive {
        ("1.1", "")
    } else {
        ("1.0", "Connection: close\r\n")
    };
    format!(
        "GET {uri} HTTP/{version}\r\nHost: {host}\r\nUser-Agent: nginx-upstream-healthcheck/{}\r\n\
         {close}\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lo: u16, hi: u16, negated: bool) -> StatusRange {
        StatusRange { lo, hi, negated }
    }

    #[test]
    fn default_statuses_are_200_to_399() {
        let v = ValidStatuses::default();
        assert!(v.is_valid(200) && v.is_valid(302) && v.is_valid(399));
        assert!(!v.is_valid(199) && !v.is_valid(400) && !v.is_valid(502));
    }

    #[test]
    fn exclusions_alone_allow_everything_else() {
        let v = ValidStatuses {
            entries: vec![r(502, 502, true)],
        };
        assert!(v.is_valid(200) && v.is_valid(500) && v.is_valid(404));
        assert!(!v.is_valid(502));
    }

    #[test]
    fn positive_and_negative_entries_combine() {
        let v = ValidStatuses {
            entries: vec![r(200, 299, false), r(204, 204, true), r(302, 302, false)],
        };
        assert!(v.is_valid(200) && v.is_valid(302));
        assert!(!v.is_valid(204) && !v.is_valid(301) && !v.is_valid(500));
    }

    #[test]
    fn default_request_has_host_and_closes() {
        let req = String::from_utf8(default_request("/health", "backend", false)).unwrap();
        assert!(req.starts_with("GET /health HTTP/1.0\r\nHost: backend\r\n"));
        assert!(req.contains("\r\nConnection: close\r\n") && req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_kept_connection_gets_an_http_1_1_request_that_does_not_close_it() {
        let req = String::from_utf8(default_request("/health", "backend", true)).unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\nHost: backend\r\nUser-Agent: "));
        assert!(!req.contains("Connection") && req.ends_with("\r\n\r\n"));
    }
}
