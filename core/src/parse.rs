//! Parsing of the directives' arguments into typed configuration, with errors worded like nginx's.
//!
//! The glue hands over the arguments after the directive name, already un-escaped by nginx.
//! Every error is a full message for `ngx_conf_log_error`; nginx appends the file and line.
//! Arguments echoed in a message are escaped (`\r`, `\n`, `\t`, `\"`, `\\`, `\xNN` for other
//! control and non-ASCII bytes) so that a message is always one printable line.

use core::fmt;
use std::net::IpAddr;

use crate::config::{
    CheckParams, CheckType, PassiveParams, StatusRange, TlsProtocols, ValidStatuses,
};
use crate::query::Format;
use crate::status_line::is_final;

/// The longest `interval`, `fast_interval`, `down_interval`, `timeout` or `jitter` accepted:
/// anything longer is a typo.
pub const MAX_TIME_MS: u64 = 24 * 60 * 60 * 1000;

/// The largest `fall` and `rise`.
pub const MAX_COUNT: u32 = 1_000_000;

/// The most probes `keepalive=N` lets one connection carry (nginx's own `keepalive_requests`
/// defaults to 1000).
pub const MAX_KEEPALIVE: u32 = 1_000_000;

/// The smallest `upstream_healthcheck_zone` size.
pub const MIN_ZONE_SIZE: usize = 32 * 1024;

const HEALTHCHECK: &str = "upstream_healthcheck";
const VALID_STATUSES: &str = "upstream_healthcheck_valid_statuses";
const REQUEST: &str = "upstream_healthcheck_request";
const ZONE: &str = "upstream_healthcheck_zone";
const HA_ADDRESS: &str = "upstream_healthcheck_ha_address";
const STATUS: &str = "upstream_healthcheck_status";

/// A configuration error; its `Display` is the whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(String);

impl ParseError {
    /// An error with this whole message, for the parsers of other files (the match block's).
    pub fn new(msg: String) -> ParseError {
        ParseError(msg)
    }

    /// The message, as `Display` writes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `invalid parameter "ARG" in "DIRECTIVE" directive`
    fn invalid(directive: &str, arg: &[u8]) -> ParseError {
        ParseError(format!(
            "invalid parameter \"{}\" in \"{directive}\" directive",
            escape(arg)
        ))
    }

    /// `invalid parameter "ARG" in "DIRECTIVE" directive, REASON`
    fn invalid_because(directive: &str, arg: &[u8], reason: &str) -> ParseError {
        let mut e = ParseError::invalid(directive, arg);
        e.0.push_str(", ");
        e.0.push_str(reason);
        e
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Makes an argument safe to quote in a one-line message.
pub fn escape(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len());
    for &b in v {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                s.push_str("\\x");
                s.push(char::from(HEX[usize::from(b >> 4)]));
                s.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    s
}

/// Parses a time in nginx's units into milliseconds.
///
/// Units are `ms`, `s`, `m`, `h`, `d`, `w`, `M` (30 days) and `y` (365 days), each at most
/// once and from the largest down, as in `ngx_parse_time`: `1m30s`, `1s 500ms` (spaces may
/// follow a unit). A bare number is milliseconds, and only as the whole value: `1m30` is
/// rejected rather than guessed. `None` on an empty value, a sign, an unknown unit or overflow.
pub fn parse_time_ms(v: &[u8]) -> Option<u64> {
    parse_time(v, false)
}

/// `parse_time_ms`, where a well-formed time too large for a `u64` is `u64::MAX` when
/// `saturate` (so that a message can call it too long rather than malformed).
fn parse_time(v: &[u8], saturate: bool) -> Option<u64> {
    let mul = |a: u64, b: u64| {
        if saturate {
            Some(a.saturating_mul(b))
        } else {
            a.checked_mul(b)
        }
    };
    let add = |a: u64, b: u64| {
        if saturate {
            Some(a.saturating_add(b))
        } else {
            a.checked_add(b)
        }
    };
    let mut total: u64 = 0;
    let mut last_rank = u8::MAX;
    let mut i = 0;
    while i < v.len() {
        let start = i;
        let mut n: u64 = 0;
        while let Some(&d) = v.get(i).filter(|d| d.is_ascii_digit()) {
            n = add(mul(n, 10)?, u64::from(d - b'0'))?;
            i += 1;
        }
        if i == start {
            return None;
        }
        if i == v.len() {
            // A bare number: milliseconds, but not after other parts.
            return (last_rank == u8::MAX).then_some(n);
        }
        let (rank, scale, len): (u8, u64, usize) = match (v[i], v.get(i + 1)) {
            (b'm', Some(b's')) => (0, 1, 2),
            (b's', _) => (1, 1000, 1),
            (b'm', _) => (2, 60 * 1000, 1),
            (b'h', _) => (3, 60 * 60 * 1000, 1),
            (b'd', _) => (4, 24 * 60 * 60 * 1000, 1),
            (b'w', _) => (5, 7 * 24 * 60 * 60 * 1000, 1),
            (b'M', _) => (6, 30 * 24 * 60 * 60 * 1000, 1),
            (b'y', _) => (7, 365 * 24 * 60 * 60 * 1000, 1),
            _ => return None,
        };
        if rank >= last_rank {
            return None;
        }
        last_rank = rank;
        i += len;
        total = add(total, mul(n, scale)?)?;
        while v.get(i) == Some(&b' ') {
            i += 1;
        }
    }
    (last_rank != u8::MAX).then_some(total)
}

/// Parses a size like `ngx_parse_size`: bytes, or a number with `k`/`K`, `m`/`M`, `g`/`G`.
pub fn parse_size(v: &[u8]) -> Option<usize> {
    let (digits, scale): (&[u8], usize) = match v.split_last()? {
        (b'k' | b'K', rest) => (rest, 1 << 10),
        (b'm' | b'M', rest) => (rest, 1 << 20),
        (b'g' | b'G', rest) => (rest, 1 << 30),
        _ => (v, 1),
    };
    parse_digits(digits)
        .and_then(|n| usize::try_from(n).ok())?
        .checked_mul(scale)
}

/// A non-empty run of ASCII digits, `None` on anything else or overflow.
fn parse_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// How a time parameter is written, for the messages of every directive that takes one.
const TIME_EXAMPLE: &str = "(e.g. 2s, 500ms; a bare number means milliseconds)";

/// The value of the time parameter `name`: milliseconds from 1 (from 0 when `zero_ok`) to
/// 24h, or the reason it is not one, worded the same for every directive.
fn time_param(name: &str, value: &[u8], zero_ok: bool) -> Result<u64, String> {
    let ms = parse_time(value, true)
        .filter(|&ms| ms > 0 || zero_ok)
        .ok_or_else(|| {
            let what = if zero_ok { "time" } else { "positive time" };
            format!("{name} must be a {what} {TIME_EXAMPLE}")
        })?;
    if ms > MAX_TIME_MS {
        return Err(format!("{name} must be at most 24h"));
    }
    Ok(ms)
}

/// A time as a message shows it: `2s`, `1500ms`.
pub fn show_ms(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The parameters of `upstream_healthcheck`, in the order of the `given` slots.
pub(crate) const KEYS: [&str; 16] = [
    "type",
    "interval",
    "timeout",
    "fall",
    "rise",
    "port",
    "jitter",
    "uri",
    "host",
    "default_down",
    "keepalive",
    "fast_interval",
    "down_interval",
    "match",
    "slow_start",
    "panic_threshold",
];

/// Parses the arguments of `upstream_healthcheck`: `Ok(None)` for `off`, the defaults of
/// `CheckParams::default()` for what is not given.
pub fn parse_healthcheck(args: &[&[u8]]) -> Result<Option<CheckParams>, ParseError> {
    if args.iter().any(|a| *a == b"off") {
        if args.len() == 1 {
            return Ok(None);
        }
        return Err(ParseError::invalid_because(
            HEALTHCHECK,
            b"off",
            "\"off\" takes no other parameters",
        ));
    }

    let mut params = CheckParams::default();
    // Each parameter as written, once given.
    let mut given: [Option<&[u8]>; KEYS.len()] = [None; KEYS.len()];
    for &arg in args {
        let Some(eq) = arg.iter().position(|&b| b == b'=') else {
            return Err(ParseError::invalid(HEALTHCHECK, arg));
        };
        let (key, value) = (&arg[..eq], &arg[eq + 1..]);
        let Some(k) = KEYS.iter().position(|name| name.as_bytes() == key) else {
            return Err(ParseError::invalid(HEALTHCHECK, arg));
        };
        let name = KEYS[k];
        let bad = |reason: &str| ParseError::invalid_because(HEALTHCHECK, arg, reason);
        if given[k].is_some() {
            return Err(bad(&format!("{name} is given twice")));
        }
        given[k] = Some(arg);

        match name {
            "type" => {
                params.check_type = match value {
                    b"tcp" => CheckType::Tcp,
                    b"http" => CheckType::Http,
                    b"https" => CheckType::Https,
                    _ => return Err(bad("type must be \"tcp\", \"http\" or \"https\"")),
                }
            }
            "interval" | "fast_interval" | "down_interval" | "timeout" | "jitter"
            | "slow_start" => {
                let zero_ok = name == "jitter" || name == "slow_start";
                let ms = time_param(name, value, zero_ok).map_err(|r| bad(&r))?;
                match name {
                    "interval" => params.interval_ms = ms,
                    "fast_interval" => params.fast_interval_ms = ms,
                    "down_interval" => params.down_interval_ms = ms,
                    "timeout" => params.timeout_ms = ms,
                    "slow_start" => params.slow_start_ms = ms,
                    _ => params.jitter_ms = ms,
                }
            }
            "fall" | "rise" => {
                let n = parse_digits(value)
                    .filter(|n| (1..=u64::from(MAX_COUNT)).contains(n))
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        bad(&format!("{name} must be a number from 1 to {MAX_COUNT}"))
                    })?;
                if name == "fall" {
                    params.fall = n;
                } else {
                    params.rise = n;
                }
            }
            "port" => {
                let port = parse_digits(value)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("port must be from 1 to 65535"))?;
                params.port = Some(port);
            }
            "uri" => {
                if value.first() != Some(&b'/') {
                    return Err(bad("uri must start with \"/\""));
                }
                if !value.iter().all(u8::is_ascii_graphic) {
                    return Err(bad(
                        "uri must not contain spaces, control characters or non-ASCII bytes",
                    ));
                }
                params.uri = Some(ascii_string(value));
            }
            "host" => {
                if value.is_empty() {
                    return Err(bad("host must not be empty"));
                }
                if !value.iter().all(u8::is_ascii_graphic) {
                    return Err(bad(
                        "host must not contain whitespace, control characters or non-ASCII bytes",
                    ));
                }
                params.host = Some(ascii_string(value));
            }
            "keepalive" => {
                params.keepalive = parse_digits(value)
                    .filter(|&n| n <= u64::from(MAX_KEEPALIVE))
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        bad(&format!(
                            "keepalive must be a number from 0 to {MAX_KEEPALIVE}"
                        ))
                    })?;
            }
            "match" => params.match_name = Some(parse_match_name(value).map_err(|r| bad(&r))?),
            "panic_threshold" => {
                let digits = value.strip_suffix(b"%").unwrap_or(value);
                params.panic_threshold = Some(
                    parse_digits(digits)
                        .filter(|n| (1..=100).contains(n))
                        .map(|n| n as u8)
                        .ok_or_else(|| {
                            bad("panic_threshold must be a percentage from 1% to 100%")
                        })?,
                );
            }
            _ => {
                params.default_down = match value {
                    b"on" => true,
                    b"off" => false,
                    _ => return Err(bad("default_down must be \"on\" or \"off\"")),
                }
            }
        }
    }

    let arg_of = |name: &str| given[KEYS.iter().position(|k| *k == name).unwrap_or(0)];
    if arg_of("fast_interval").is_none() {
        params.fast_interval_ms = params.interval_ms;
    }
    if arg_of("down_interval").is_none() {
        params.down_interval_ms = params.interval_ms;
    }

    // Parameters that are each well-formed but cannot do what they say together.
    if params.check_type == CheckType::Tcp {
        for name in ["uri", "host", "keepalive", "match"] {
            if let Some(arg) = arg_of(name) {
                return Err(ParseError::invalid_because(
                    HEALTHCHECK,
                    arg,
                    &format!("{name} applies to type=http and type=https only"),
                ));
            }
        }
    }
    // Jitter is added to every interval, so it must stay below the shortest one (the first
    // named of those that are equally short: `interval` when the others are not given).
    let (shortest, shortest_ms) = [
        ("interval", params.interval_ms),
        ("fast_interval", params.fast_interval_ms),
        ("down_interval", params.down_interval_ms),
    ]
    .into_iter()
    .min_by_key(|&(_, ms)| ms)
    .unwrap_or(("interval", params.interval_ms));
    if params.jitter_ms >= shortest_ms {
        if let Some(arg) = arg_of("jitter") {
            let default = if arg_of(shortest).is_none() {
                " by default"
            } else {
                ""
            };
            return Err(ParseError::invalid_because(
                HEALTHCHECK,
                arg,
                &format!(
                    "jitter must be less than {shortest} ({}{default})",
                    show_ms(shortest_ms)
                ),
            ));
        }
    }
    Ok(Some(params))
}

/// `on` or `off`, as nginx's flag directives take.
pub fn parse_on_off(directive: &str, arg: &[u8]) -> Result<bool, ParseError> {
    match arg {
        b"on" => Ok(true),
        b"off" => Ok(false),
        _ => Err(ParseError(format!(
            "invalid value \"{}\" in \"{directive}\" directive, it must be \"on\" or \"off\"",
            escape(arg)
        ))),
    }
}

/// The TLS versions of `upstream_healthcheck_ssl_protocols`.
pub fn parse_tls_protocols(directive: &str, args: &[&[u8]]) -> Result<TlsProtocols, ParseError> {
    let mut p = TlsProtocols {
        tls1: false,
        tls1_1: false,
        tls1_2: false,
        tls1_3: false,
    };
    for &arg in args {
        match arg {
            b"TLSv1" => p.tls1 = true,
            b"TLSv1.1" => p.tls1_1 = true,
            b"TLSv1.2" => p.tls1_2 = true,
            b"TLSv1.3" => p.tls1_3 = true,
            _ => {
                return Err(ParseError(format!(
                    "invalid value \"{}\" in \"{directive}\" directive, it must be \"TLSv1\", \
                     \"TLSv1.1\", \"TLSv1.2\" or \"TLSv1.3\"",
                    escape(arg)
                )))
            }
        }
    }
    Ok(p)
}

/// The name of `upstream_healthcheck_ssl_name`: a host name (or address) to verify and send.
pub fn parse_ssl_name(directive: &str, arg: &[u8]) -> Result<String, ParseError> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_graphic) {
        return Err(ParseError(format!(
            "invalid value \"{}\" in \"{directive}\" directive, it must be a host name \
             without whitespace, control characters or non-ASCII bytes",
            escape(arg)
        )));
    }
    Ok(ascii_string(arg))
}

/// A file name argument: not empty and without NUL bytes, which no path can hold.
pub fn parse_file_name(directive: &str, arg: &[u8]) -> Result<String, ParseError> {
    if arg.is_empty() || arg.contains(&0) {
        return Err(ParseError(format!(
            "invalid value \"{}\" in \"{directive}\" directive, it must be a file name",
            escape(arg)
        )));
    }
    Ok(String::from_utf8_lossy(arg).into_owned())
}

/// The name sent in SNI: none for an empty name or an IP address (RFC 6066 does not allow
/// literal addresses), and without a `:port` suffix, as nginx's proxy does.
pub fn sni_name(name: &str) -> Option<&str> {
    let host = strip_port(name);
    if host.is_empty() || host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(host)
}

/// `name` without a `:port` suffix (an `[IPv6]` keeps its colons).
pub fn strip_port(name: &str) -> &str {
    let from = if name.starts_with('[') {
        name.find(']').unwrap_or(0)
    } else {
        0
    };
    match name[from..].find(':') {
        Some(i) => &name[..from + i],
        None => name,
    }
}

/// The OpenSSL error code in a line nginx logged about a failed TLS handshake
/// (`SSL_do_handshake() failed (SSL: error:0A000086:SSL routines::certificate verify failed)`):
/// the last `error:XXXXXXXX:` in it; `None` for another line or one without a code.
pub fn handshake_error_code(line: &[u8]) -> Option<u32> {
    const WHAT: &[u8] = b"SSL_do_handshake() failed";
    line.windows(WHAT.len()).position(|w| w == WHAT)?;
    let mut code = None;
    let mut rest = line;
    while let Some(i) = rest.windows(6).position(|w| w == b"error:") {
        rest = &rest[i + 6..];
        let hex = rest.get(..9).filter(|h| h[8] == b':');
        if let Some(v) = hex
            .and_then(|h| core::str::from_utf8(&h[..8]).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        {
            code = Some(v);
        }
    }
    code
}

/// Refuses `uri=` and `host=` when `upstream_healthcheck_request` gives the whole request:
/// they shape the default request only, which is then never sent.
pub fn check_with_request(params: &CheckParams) -> Result<(), ParseError> {
    for (name, value) in [("uri", &params.uri), ("host", &params.host)] {
        if let Some(v) = value {
            return Err(ParseError::invalid_because(
                HEALTHCHECK,
                format!("{name}={v}").as_bytes(),
                &format!(
                    "{name} applies to the default request only, but \"{REQUEST}\" sets the request"
                ),
            ));
        }
    }
    Ok(())
}

/// The name of an `upstream_healthcheck_match` block, in the block's directive and in
/// `match=`: printable ASCII without spaces, so that a name reads the same in a message, a log
/// line and the status page.
pub fn parse_match_name(value: &[u8]) -> Result<String, String> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_graphic) {
        return Err("a match name is printable ASCII without spaces".to_owned());
    }
    Ok(ascii_string(value))
}

/// A string from bytes already checked to be printable ASCII.
fn ascii_string(v: &[u8]) -> String {
    v.iter().map(|&b| char::from(b)).collect()
}

const PASSIVE: &str = "upstream_healthcheck_passive";

/// Parses the arguments of `upstream_healthcheck_passive`: `fails=N` (required), `window=T`,
/// `statuses=LIST` (comma-separated tokens of `upstream_healthcheck_valid_statuses`),
/// `timeouts=on|off`, `down_time=T`.
pub fn parse_passive(args: &[&[u8]]) -> Result<PassiveParams, ParseError> {
    const KEYS: [&str; 5] = ["fails", "window", "statuses", "timeouts", "down_time"];
    let mut p = PassiveParams::default();
    let mut given = [false; KEYS.len()];
    for &arg in args {
        let Some(eq) = arg.iter().position(|&b| b == b'=') else {
            return Err(ParseError::invalid(PASSIVE, arg));
        };
        let (key, value) = (&arg[..eq], &arg[eq + 1..]);
        let Some(k) = KEYS.iter().position(|name| name.as_bytes() == key) else {
            return Err(ParseError::invalid(PASSIVE, arg));
        };
        let name = KEYS[k];
        let bad = |reason: &str| ParseError::invalid_because(PASSIVE, arg, reason);
        if given[k] {
            return Err(bad(&format!("{name} is given twice")));
        }
        given[k] = true;
        match name {
            "fails" => {
                p.fails = parse_digits(value)
                    .filter(|n| (1..=u64::from(MAX_COUNT)).contains(n))
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(&format!("fails must be a number from 1 to {MAX_COUNT}")))?;
            }
            "window" => p.window_ms = time_param(name, value, false).map_err(|r| bad(&r))?,
            "down_time" => p.down_time_ms = time_param(name, value, false).map_err(|r| bad(&r))?,
            "timeouts" => {
                p.timeouts = match value {
                    b"on" => true,
                    b"off" => false,
                    _ => return Err(bad("timeouts must be \"on\" or \"off\"")),
                }
            }
            _ => {
                let entries =
                    value
                        .split(|&b| b == b',')
                        .map(parse_status_entry)
                        .collect::<Option<Vec<_>>>()
                        .filter(|e| e.iter().any(|e| !e.negated))
                        .ok_or_else(|| {
                            bad("statuses must be a comma-separated list of statuses (500), ranges \
                             (500-599 or 5xx) and exclusions (!503), with at least one status")
                        })?;
                p.statuses = Some(ValidStatuses { entries });
            }
        }
    }
    if !given[0] {
        return Err(ParseError(format!(
            "\"{PASSIVE}\" directive needs the \"fails=\" parameter"
        )));
    }
    Ok(p)
}

/// Parses the arguments of `upstream_healthcheck_valid_statuses`: `200`, `200-399`, `2xx`, each
/// optionally negated with a leading `!`.
pub fn parse_valid_statuses(args: &[&[u8]]) -> Result<ValidStatuses, ParseError> {
    if args.is_empty() {
        return Err(ParseError(format!(
            "invalid number of arguments in \"{VALID_STATUSES}\" directive"
        )));
    }
    let entries = args
        .iter()
        .map(|&arg| {
            parse_status_entry(arg).ok_or_else(|| {
                ParseError::invalid_because(
                    VALID_STATUSES,
                    arg,
                    "expected a status (200), a range (200-399 or 2xx) or an exclusion (!502)",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let list = ValidStatuses { entries };
    reachable(args, &list)?;
    Ok(list)
}

/// Refuses a list that says a status is healthy when no probe could ever pass with it: a
/// positive entry a probe never sees (interim 1xx) or whose statuses are all excluded, or
/// exclusions alone that leave no status from 200 to 599.
fn reachable(args: &[&[u8]], list: &ValidStatuses) -> Result<(), ParseError> {
    for (&arg, e) in args.iter().zip(&list.entries) {
        if e.negated {
            continue;
        }
        let mut seen = (e.lo..=e.hi).filter(|&s| is_final(s)).peekable();
        if seen.peek().is_none() {
            return Err(ParseError::invalid_because(
                VALID_STATUSES,
                arg,
                "a probe skips interim 1xx responses (all but 101) and never sees them",
            ));
        }
        if !seen.any(|s| list.is_valid(s)) {
            return Err(ParseError::invalid_because(
                VALID_STATUSES,
                arg,
                "every status it names is excluded",
            ));
        }
    }
    if list.entries.iter().all(|e| e.negated) && !(200..=599).any(|s| list.is_valid(s)) {
        let all: Vec<String> = args.iter().map(|a| escape(a)).collect();
        let (s, they) = if all.len() == 1 {
            ("", "it excludes")
        } else {
            ("s", "together they exclude")
        };
        return Err(ParseError(format!(
            "invalid parameter{s} \"{}\" in \"{VALID_STATUSES}\" directive, {they} every status \
             from 200 to 599",
            all.join(" ")
        )));
    }
    Ok(())
}

fn parse_status_entry(arg: &[u8]) -> Option<StatusRange> {
    let (negated, v) = match arg.split_first() {
        Some((b'!', rest)) => (true, rest),
        _ => (false, arg),
    };
    let code = |s: &[u8]| {
        (s.len() == 3)
            .then(|| parse_digits(s))
            .flatten()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (100..=599).contains(n))
    };
    let (lo, hi) = match v {
        [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
            let lo = u16::from(d - b'0') * 100;
            (lo, lo + 99)
        }
        _ => match v.iter().position(|&b| b == b'-') {
            Some(dash) => (code(&v[..dash])?, code(&v[dash + 1..])?),
            None => (code(v)?, code(v)?),
        },
    };
    (lo <= hi).then_some(StatusRange { lo, hi, negated })
}

/// Parses the argument of `upstream_healthcheck_request`: a whole raw request, starting with a
/// method and a space, ending with an empty line. The method is checked as nginx checks the
/// methods it serves: upper-case letters, `-` and `_`.
pub fn parse_request(arg: &[u8]) -> Result<Vec<u8>, ParseError> {
    let shape = || {
        ParseError(format!(
            "invalid value in \"{REQUEST}\" directive, the request must start with a method and \
             end with \"\\r\\n\\r\\n\""
        ))
    };
    let Some(space) = arg.iter().position(|&b| b == b' ').filter(|&sp| sp > 0) else {
        return Err(shape());
    };
    let method = &arg[..space];
    if !method.iter().all(|&b| is_method_byte(b)) {
        return Err(ParseError(format!(
            "invalid method \"{}\" in \"{REQUEST}\" directive, a method is upper-case letters, \
             \"-\" and \"_\" (e.g. GET, HEAD)",
            escape(method)
        )));
    }
    if !(arg.ends_with(b"\r\n\r\n") || arg.ends_with(b"\n\n")) {
        return Err(shape());
    }
    Ok(arg.to_vec())
}

/// A byte of a method as nginx's request-line parser accepts it.
fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// Parses the argument of `upstream_healthcheck_zone`: a size of at least 32k.
/// `upstream_healthcheck_dynamic max_peers=N`: how many peers etcd may give the upstream.
pub fn parse_dynamic(args: &[&[u8]]) -> Result<usize, ParseError> {
    const D: &str = "upstream_healthcheck_dynamic";
    let mut max = None;
    for &arg in args {
        let Some(v) = arg.strip_prefix(b"max_peers=") else {
            return Err(ParseError::invalid(D, arg));
        };
        let n = core::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| (1..=crate::membership::MAX_PEERS_LIMIT).contains(n))
            .ok_or_else(|| {
                ParseError::invalid_because(
                    D,
                    arg,
                    &format!("from 1 to {}", crate::membership::MAX_PEERS_LIMIT),
                )
            })?;
        if max.replace(n).is_some() {
            return Err(ParseError(format!(
                "duplicate parameter \"max_peers\" in \"{D}\" directive"
            )));
        }
    }
    max.ok_or_else(|| ParseError(format!("\"{D}\" directive needs \"max_peers=\"")))
}

pub fn parse_zone_size(arg: &[u8]) -> Result<usize, ParseError> {
    let size = parse_size(arg).ok_or_else(|| {
        ParseError(format!(
            "invalid zone size \"{}\" in \"{ZONE}\" directive",
            escape(arg)
        ))
    })?;
    if size < MIN_ZONE_SIZE {
        return Err(ParseError(format!(
            "\"{ZONE}\" size \"{}\" is too small, the minimum is 32k",
            escape(arg)
        )));
    }
    Ok(size)
}

/// Parses the argument of `upstream_healthcheck_status`: the page's default format, `text`
/// when none is given.
pub fn parse_status_format(arg: Option<&[u8]>) -> Result<Format, ParseError> {
    let Some(arg) = arg else {
        return Ok(Format::Text);
    };
    Format::parse(arg).ok_or_else(|| {
        ParseError::invalid_because(
            STATUS,
            arg,
            "the format must be \"text\", \"json\", \"prometheus\" or \"html\"",
        )
    })
}

/// Parses `upstream_healthcheck_ha_address ADDRESS [interval=T]`: an IPv4 or IPv6 address
/// (a `/prefix` suffix, as keepalived writes VIPs, must be a valid prefix length and is then
/// ignored) and how often to look for it, 10s by default.
pub fn parse_ha_address(args: &[&[u8]]) -> Result<(IpAddr, u64), ParseError> {
    let Some((addr, rest)) = args.split_first() else {
        return Err(ParseError(format!(
            "invalid number of arguments in \"{HA_ADDRESS}\" directive"
        )));
    };
    let bad_addr =
        || ParseError::invalid_because(HA_ADDRESS, addr, "expected an IPv4 or IPv6 address");
    let text = core::str::from_utf8(addr).map_err(|_| bad_addr())?;
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let ip = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map_err(|_| bad_addr())?;
    if let Some(prefix) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if !parse_digits(prefix.as_bytes()).is_some_and(|n| n <= max) {
            return Err(ParseError::invalid_because(
                HA_ADDRESS,
                addr,
                &format!("the prefix length must be from 0 to {max}"),
            ));
        }
    }
    let mut interval = 10_000;
    for (i, arg) in rest.iter().enumerate() {
        let value = arg.strip_prefix(b"interval=").filter(|_| i == 0);
        let Some(value) = value else {
            return Err(ParseError::invalid(HA_ADDRESS, arg));
        };
        interval = time_param("interval", value, false)
            .map_err(|r| ParseError::invalid_because(HA_ADDRESS, arg, &r))?;
    }
    Ok((ip, interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(args: &[&str]) -> Result<Option<CheckParams>, ParseError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        parse_healthcheck(&args)
    }

    fn hc_ok(args: &[&str]) -> CheckParams {
        hc(args).unwrap().unwrap()
    }

    fn hc_err(args: &[&str]) -> String {
        hc(args).unwrap_err().to_string()
    }

    fn invalid(arg: &str) -> String {
        format!("invalid parameter \"{arg}\" in \"upstream_healthcheck\" directive")
    }

    fn bad(arg: &str, reason: &str) -> String {
        format!("{}, {reason}", invalid(arg))
    }

    fn time_reason(name: &str) -> String {
        format!("{name} must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)")
    }

    fn vs(args: &[&str]) -> Result<ValidStatuses, ParseError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        parse_valid_statuses(&args)
    }

    fn r(lo: u16, hi: u16, negated: bool) -> StatusRange {
        StatusRange { lo, hi, negated }
    }

    // --- parse_time_ms

    #[test]
    fn time_single_units() {
        let t = |s: &str| parse_time_ms(s.as_bytes());
        assert_eq!(t("500ms"), Some(500));
        assert_eq!(t("2s"), Some(2000));
        assert_eq!(t("3m"), Some(180_000));
        assert_eq!(t("1h"), Some(3_600_000));
        assert_eq!(t("1d"), Some(86_400_000));
        assert_eq!(t("1w"), Some(7 * 86_400_000));
        assert_eq!(t("1M"), Some(30 * 86_400_000));
        assert_eq!(t("1y"), Some(365 * 86_400_000));
        assert_eq!(t("0s"), Some(0));
        assert_eq!(t("0"), Some(0));
    }

    #[test]
    fn time_bare_number_is_milliseconds() {
        assert_eq!(parse_time_ms(b"1500"), Some(1500));
        assert_eq!(parse_time_ms(b"007"), Some(7));
    }

    #[test]
    fn time_combinations() {
        let t = |s: &str| parse_time_ms(s.as_bytes());
        assert_eq!(t("1m30s"), Some(90_000));
        assert_eq!(t("1s 500ms"), Some(1500));
        assert_eq!(t("1s500ms"), Some(1500));
        assert_eq!(t("1h 2m 3s 4ms"), Some(3_723_004));
        assert_eq!(t("1d1h"), Some(90_000_000));
        assert_eq!(t("2s "), Some(2000));
        assert_eq!(t("1m5ms"), Some(60_005));
    }

    #[test]
    fn time_rejects_garbage() {
        for s in [
            "",
            " ",
            " 1s",
            "-1s",
            "-1",
            "+1s",
            "1.5s",
            "s",
            "ms",
            "1x",
            "1S",
            "1H",
            "1 s",
            "1s1s",
            "1ms1s",
            "1s1m",
            "1m30",
            "1s 500",
            "1mss",
            "abc",
            "1s,2s",
            "1\ts",
            "99999999999999999999",
            "18446744073709551615s",
            "999999999999y",
        ] {
            assert_eq!(parse_time_ms(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(parse_time_ms(b"18446744073709551615"), Some(u64::MAX));
    }

    // --- parse_size

    #[test]
    fn sizes() {
        let z = |s: &str| parse_size(s.as_bytes());
        assert_eq!(z("0"), Some(0));
        assert_eq!(z("4096"), Some(4096));
        assert_eq!(z("32k"), Some(32 * 1024));
        assert_eq!(z("32K"), Some(32 * 1024));
        assert_eq!(z("1m"), Some(1 << 20));
        assert_eq!(z("1M"), Some(1 << 20));
        assert_eq!(z("1g"), Some(1 << 30));
        assert_eq!(z("2G"), Some(2 << 30));
        for s in [
            "",
            "k",
            "-1",
            "1.5m",
            "1 k",
            " 1k",
            "1kb",
            "1t",
            "abc",
            "99999999999999999999",
            "1x",
        ] {
            assert_eq!(z(s), None, "{s:?}");
        }
        assert_eq!(z("18446744073709551615k"), None);
    }

    // --- upstream_healthcheck

    #[test]
    fn healthcheck_no_args_is_defaults() {
        assert_eq!(hc_ok(&[]), CheckParams::default());
    }

    #[test]
    fn healthcheck_off() {
        assert_eq!(hc(&["off"]).unwrap(), None);
        let msg = "invalid parameter \"off\" in \"upstream_healthcheck\" directive, \"off\" takes \
                   no other parameters";
        assert_eq!(hc_err(&["off", "fall=2"]), msg);
        assert_eq!(hc_err(&["fall=2", "off"]), msg);
        assert_eq!(hc_err(&["off", "off"]), msg);
    }

    #[test]
    fn healthcheck_all_parameters() {
        let p = hc_ok(&[
            "type=http",
            "interval=5s",
            "timeout=300ms",
            "fall=5",
            "rise=1",
            "port=8080",
            "jitter=1s",
            "uri=/health?full=1",
            "host=example.com:8080",
            "default_down=on",
            "keepalive=10",
            "slow_start=30s",
        ]);
        assert_eq!(
            p,
            CheckParams {
                check_type: CheckType::Http,
                interval_ms: 5000,
                fast_interval_ms: 5000,
                down_interval_ms: 5000,
                timeout_ms: 300,
                fall: 5,
                rise: 1,
                port: Some(8080),
                jitter_ms: 1000,
                uri: Some("/health?full=1".to_owned()),
                host: Some("example.com:8080".to_owned()),
                default_down: true,
                keepalive: 10,
                match_name: None,
                slow_start_ms: 30_000,
                panic_threshold: None,
            }
        );
    }

    #[test]
    fn healthcheck_slow_start() {
        assert_eq!(hc_ok(&[]).slow_start_ms, 0, "off by default");
        assert_eq!(hc_ok(&["slow_start=0"]).slow_start_ms, 0);
        assert_eq!(hc_ok(&["slow_start=1m30s"]).slow_start_ms, 90_000);
        assert_eq!(
            hc_ok(&["slow_start=500"]).slow_start_ms,
            500,
            "bare number: ms"
        );
        let reason = "slow_start must be a time (e.g. 2s, 500ms; a bare number means milliseconds)";
        for a in ["slow_start=-1", "slow_start=", "slow_start=fast"] {
            assert_eq!(hc_err(&[a]), bad(a, reason));
        }
        assert_eq!(
            hc_err(&["slow_start=25h"]),
            bad("slow_start=25h", "slow_start must be at most 24h")
        );
    }

    #[test]
    fn healthcheck_panic_threshold() {
        assert_eq!(hc_ok(&[]).panic_threshold, None);
        assert_eq!(hc_ok(&["panic_threshold=50%"]).panic_threshold, Some(50));
        assert_eq!(hc_ok(&["panic_threshold=50"]).panic_threshold, Some(50));
        assert_eq!(hc_ok(&["panic_threshold=1%"]).panic_threshold, Some(1));
        assert_eq!(hc_ok(&["panic_threshold=100"]).panic_threshold, Some(100));
        assert_eq!(
            hc_ok(&["type=tcp", "panic_threshold=25%"]).panic_threshold,
            Some(25)
        );
        for a in [
            "panic_threshold=0",
            "panic_threshold=0%",
            "panic_threshold=101%",
            "panic_threshold=",
            "panic_threshold=%",
            "panic_threshold=50%%",
            "panic_threshold=-5%",
            "panic_threshold=0.5",
            "panic_threshold=half",
            "panic_threshold=99999999999999999999",
            "panic_threshold= 50",
        ] {
            assert_eq!(
                hc_err(&[a]),
                bad(a, "panic_threshold must be a percentage from 1% to 100%"),
                "{a}"
            );
        }
        assert_eq!(
            hc_err(&["panic_threshold=50%", "panic_threshold=60%"]),
            bad("panic_threshold=60%", "panic_threshold is given twice")
        );
    }

    #[test]
    fn healthcheck_type() {
        assert_eq!(hc_ok(&["type=http"]).check_type, CheckType::Http);
        assert_eq!(hc_ok(&["type=tcp"]).check_type, CheckType::Tcp);
        for a in ["type=udp", "type=", "type=HTTP", "type=tcp "] {
            assert_eq!(
                hc_err(&[a]),
                bad(
                    &escape(a.as_bytes()),
                    "type must be \"tcp\", \"http\" or \"https\""
                )
            );
        }
    }

    #[test]
    fn healthcheck_interval_and_timeout() {
        for name in ["interval", "timeout"] {
            let get = |p: CheckParams| {
                if name == "interval" {
                    p.interval_ms
                } else {
                    p.timeout_ms
                }
            };
            assert_eq!(get(hc_ok(&[&format!("{name}=2s")])), 2000);
            assert_eq!(get(hc_ok(&[&format!("{name}=500")])), 500);
            assert_eq!(get(hc_ok(&[&format!("{name}=1m30s")])), 90_000);
            assert_eq!(get(hc_ok(&[&format!("{name}=1s 500ms")])), 1500);
            assert_eq!(get(hc_ok(&[&format!("{name}=1ms")])), 1);
            assert_eq!(get(hc_ok(&[&format!("{name}=24h")])), MAX_TIME_MS);
            for v in ["0", "0s", "-1s", "", "abc", "1.5s", "1m30"] {
                let a = format!("{name}={v}");
                assert_eq!(hc_err(&[&a]), bad(&a, &time_reason(name)));
            }
            for v in [
                "25h",
                "86400001",
                "1d1ms",
                "1w",
                "1000000000h",
                "99999999999999999999",
                "99999999999999999999h 1ms",
                "18446744073709551615y",
            ] {
                let a = format!("{name}={v}");
                assert_eq!(
                    hc_err(&[&a]),
                    bad(&a, &format!("{name} must be at most 24h"))
                );
            }
        }
    }

    #[test]
    fn healthcheck_interval_exact_messages() {
        assert_eq!(
            hc_err(&["interval=0"]),
            "invalid parameter \"interval=0\" in \"upstream_healthcheck\" directive, interval \
             must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)"
        );
        assert_eq!(
            hc_err(&["timeout=-1s"]),
            "invalid parameter \"timeout=-1s\" in \"upstream_healthcheck\" directive, timeout \
             must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)"
        );
    }

    #[test]
    fn healthcheck_timeout_may_exceed_interval() {
        let p = hc_ok(&["interval=1s", "timeout=5s"]);
        assert_eq!((p.interval_ms, p.timeout_ms), (1000, 5000));
    }

    #[test]
    fn healthcheck_jitter() {
        assert_eq!(hc_ok(&["jitter=0"]).jitter_ms, 0);
        assert_eq!(hc_ok(&["jitter=0s"]).jitter_ms, 0);
        assert_eq!(hc_ok(&["jitter=250"]).jitter_ms, 250);
        assert_eq!(hc_ok(&["jitter=1s 500ms"]).jitter_ms, 1500);
        let reason = "jitter must be a time (e.g. 2s, 500ms; a bare number means milliseconds)";
        for a in ["jitter=-1", "jitter=", "jitter=x", "jitter=1q"] {
            assert_eq!(hc_err(&[a]), bad(a, reason));
        }
        assert_eq!(
            hc_err(&["jitter=2d"]),
            bad("jitter=2d", "jitter must be at most 24h")
        );
    }

    #[test]
    fn healthcheck_jitter_below_the_interval() {
        assert_eq!(hc_ok(&["interval=1s", "jitter=999ms"]).jitter_ms, 999);
        assert_eq!(hc_ok(&["jitter=1999"]).jitter_ms, 1999);
        assert_eq!(hc_ok(&["interval=1ms", "jitter=0"]).jitter_ms, 0);
        assert_eq!(
            hc_err(&["interval=1s", "jitter=1s"]),
            bad("jitter=1s", "jitter must be less than interval (1s)")
        );
        assert_eq!(
            hc_err(&["jitter=5s", "interval=1500"]),
            bad("jitter=5s", "jitter must be less than interval (1500ms)")
        );
        assert_eq!(
            hc_err(&["jitter=2s"]),
            "invalid parameter \"jitter=2s\" in \"upstream_healthcheck\" directive, jitter must \
             be less than interval (2s by default)"
        );
    }

    #[test]
    fn healthcheck_type_https() {
        let p = hc_ok(&["type=https", "host=backend.test"]);
        assert_eq!(p.check_type, CheckType::Https);
        assert_eq!(p.check_type.as_str(), "https");
        assert!(p.check_type.is_tls() && !CheckType::Http.is_tls());
    }

    #[test]
    fn ssl_directive_arguments() {
        const D: &str = "upstream_healthcheck_ssl_verify";
        assert_eq!(parse_on_off(D, b"on"), Ok(true));
        assert_eq!(parse_on_off(D, b"off"), Ok(false));
        assert_eq!(
            parse_on_off(D, b"yes").unwrap_err().as_str(),
            "invalid value \"yes\" in \"upstream_healthcheck_ssl_verify\" directive, it must be \
             \"on\" or \"off\""
        );
        const P: &str = "upstream_healthcheck_ssl_protocols";
        let p = parse_tls_protocols(P, &[b"TLSv1.2"]).unwrap();
        assert!(p.tls1_2 && !p.tls1_3 && !p.tls1 && !p.tls1_1);
        assert_eq!(
            TlsProtocols::default(),
            parse_tls_protocols(P, &[b"TLSv1.3", b"TLSv1.2"]).unwrap()
        );
        assert!(parse_tls_protocols(P, &[b"SSLv3"])
            .unwrap_err()
            .as_str()
            .starts_with("invalid value \"SSLv3\" in \"upstream_healthcheck_ssl_protocols\""));
        const N: &str = "upstream_healthcheck_ssl_name";
        assert_eq!(parse_ssl_name(N, b"b.test").as_deref(), Ok("b.test"));
        assert!(parse_ssl_name(N, b"a b").is_err() && parse_ssl_name(N, b"").is_err());
        const F: &str = "upstream_healthcheck_ssl_certificate";
        assert_eq!(parse_file_name(F, b"/x/y.pem").as_deref(), Ok("/x/y.pem"));
        assert!(parse_file_name(F, b"").is_err() && parse_file_name(F, b"a\0b").is_err());
    }

    #[test]
    fn handshake_error_codes_come_from_nginx_log_lines() {
        let line = b"2026/11/28 14:00:00 [info] 1#1: *3 SSL_do_handshake() failed (SSL: \
            error:0A00010B:SSL routines::wrong version number) while SSL handshaking";
        assert_eq!(handshake_error_code(line), Some(0x0A00_010B));
        let two = b"SSL_do_handshake() failed (SSL: error:0A000086:SSL routines::x \
            error:0A000410:SSL routines::sslv3 alert handshake failure:SSL alert number 40)";
        assert_eq!(handshake_error_code(two), Some(0x0A00_0410));
        assert_eq!(handshake_error_code(b"SSL_do_handshake() failed"), None);
        assert_eq!(
            handshake_error_code(b"SSL_read() failed (SSL: error:0A00010B:x)"),
            None
        );
        assert_eq!(
            handshake_error_code(b"SSL_do_handshake() failed error:zz"),
            None
        );
    }

    #[test]
    fn fast_and_down_intervals_default_to_the_interval() {
        let p = hc_ok(&[]);
        assert_eq!((p.fast_interval_ms, p.down_interval_ms), (2000, 2000));
        let p = hc_ok(&["interval=5s"]);
        assert_eq!((p.fast_interval_ms, p.down_interval_ms), (5000, 5000));
        let p = hc_ok(&["down_interval=30s", "interval=5s", "fast_interval=250ms"]);
        assert_eq!(
            (p.interval_ms, p.fast_interval_ms, p.down_interval_ms),
            (5000, 250, 30_000)
        );
        let p = hc_ok(&["type=tcp", "interval=2s", "fast_interval=100ms", "fall=3"]);
        assert_eq!((p.check_type, p.fast_interval_ms), (CheckType::Tcp, 100));
        assert_eq!(
            hc_ok(&["interval=1s", "fast_interval=3s"]).fast_interval_ms,
            3000,
            "longer than interval is allowed, as in HAProxy"
        );
        assert_eq!(
            hc_ok(&["interval=10s", "down_interval=1s"]).down_interval_ms,
            1000
        );
    }

    #[test]
    fn sni_is_a_host_name_without_port_never_an_address() {
        assert_eq!(sni_name("backend.test"), Some("backend.test"));
        assert_eq!(sni_name("backend.test:8443"), Some("backend.test"));
        assert_eq!(sni_name("127.0.0.1"), None);
        assert_eq!(sni_name("127.0.0.1:443"), None);
        assert_eq!(sni_name("[::1]:443"), None);
        assert_eq!(sni_name(""), None);
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("name"), "name");
    }

    #[test]
    fn fast_and_down_intervals_are_positive_times_up_to_24h() {
        for name in ["fast_interval", "down_interval"] {
            for v in ["0", "0s", "-1s", "", "abc", "1.5s"] {
                let a = format!("{name}={v}");
                assert_eq!(hc_err(&[&a]), bad(&a, &time_reason(name)));
            }
            let a = format!("{name}=25h");
            assert_eq!(
                hc_err(&[&a]),
                bad(&a, &format!("{name} must be at most 24h"))
            );
            let a = format!("{name}=1m30s");
            assert!(hc(&[&a]).is_ok(), "{a}");
        }
        assert_eq!(
            hc_err(&["fast_interval=0"]),
            "invalid parameter \"fast_interval=0\" in \"upstream_healthcheck\" directive, \
             fast_interval must be a positive time (e.g. 2s, 500ms; a bare number means \
             milliseconds)"
        );
    }

    #[test]
    fn jitter_must_be_less_than_every_interval_it_is_added_to() {
        let p = hc_ok(&["interval=2s", "fast_interval=100ms", "jitter=99ms"]);
        assert_eq!(p.jitter_ms, 99);
        assert_eq!(
            hc_err(&["interval=2s", "fast_interval=100ms", "jitter=500ms"]),
            bad(
                "jitter=500ms",
                "jitter must be less than fast_interval (100ms)"
            )
        );
        assert_eq!(
            hc_err(&["jitter=1s", "down_interval=1s"]),
            bad("jitter=1s", "jitter must be less than down_interval (1s)")
        );
        assert_eq!(
            hc_err(&["jitter=1s", "fast_interval=1s", "interval=1s"]),
            bad("jitter=1s", "jitter must be less than interval (1s)"),
            "when equally short, interval is named"
        );
        assert_eq!(
            hc_err(&["fast_interval=5s", "jitter=2s"]),
            bad(
                "jitter=2s",
                "jitter must be less than interval (2s by default)"
            )
        );
        assert_eq!(
            hc_ok(&["down_interval=30s", "jitter=1s"]).jitter_ms,
            1000,
            "a longer down_interval does not matter"
        );
    }

    #[test]
    fn healthcheck_uri_and_host_are_for_http_only() {
        assert_eq!(
            hc_err(&["type=tcp", "uri=/health"]),
            "invalid parameter \"uri=/health\" in \"upstream_healthcheck\" directive, uri applies \
             to type=http and type=https only"
        );
        assert_eq!(
            hc_err(&["host=foo.com", "type=tcp"]),
            bad(
                "host=foo.com",
                "host applies to type=http and type=https only"
            )
        );
        assert_eq!(
            hc_err(&["type=tcp", "host=foo.com", "uri=/"]),
            bad("uri=/", "uri applies to type=http and type=https only")
        );
        let p = hc_ok(&["type=http", "uri=/health", "host=foo.com"]);
        assert_eq!(
            (p.uri.as_deref(), p.host.as_deref()),
            (Some("/health"), Some("foo.com"))
        );
        assert_eq!(hc_ok(&["type=tcp", "port=81"]).port, Some(81));
    }

    #[test]
    fn uri_and_host_do_not_go_with_a_request_of_ones_own() {
        assert_eq!(
            check_with_request(&hc_ok(&["interval=1s", "fall=2"])),
            Ok(())
        );
        assert_eq!(check_with_request(&hc_ok(&["port=81", "jitter=1"])), Ok(()));
        assert_eq!(
            check_with_request(&hc_ok(&["uri=/health"]))
                .unwrap_err()
                .to_string(),
            "invalid parameter \"uri=/health\" in \"upstream_healthcheck\" directive, uri applies \
             to the default request only, but \"upstream_healthcheck_request\" sets the request"
        );
        assert_eq!(
            check_with_request(&hc_ok(&["host=foo.com", "uri=/"]))
                .unwrap_err()
                .to_string(),
            bad(
                "uri=/",
                "uri applies to the default request only, but \"upstream_healthcheck_request\" \
                 sets the request"
            )
        );
        assert_eq!(
            check_with_request(&hc_ok(&["host=foo.com"]))
                .unwrap_err()
                .to_string(),
            bad(
                "host=foo.com",
                "host applies to the default request only, but \"upstream_healthcheck_request\" \
                 sets the request"
            )
        );
    }

    #[test]
    fn healthcheck_fall_and_rise() {
        assert_eq!(hc_ok(&["fall=1"]).fall, 1);
        assert_eq!(hc_ok(&["fall=1000000"]).fall, 1_000_000);
        assert_eq!(hc_ok(&["rise=7"]).rise, 7);
        assert_eq!(hc_ok(&["rise=1000000"]).rise, 1_000_000);
        for name in ["fall", "rise"] {
            for v in [
                "0",
                "-1",
                "",
                "abc",
                "1.5",
                "1000001",
                "99999999999999999999",
                " 3",
                "+3",
            ] {
                let a = format!("{name}={v}");
                assert_eq!(
                    hc_err(&[&a]),
                    bad(&a, &format!("{name} must be a number from 1 to 1000000"))
                );
            }
        }
        assert_eq!(
            hc_err(&["fall=0"]),
            "invalid parameter \"fall=0\" in \"upstream_healthcheck\" directive, fall must be a \
             number from 1 to 1000000"
        );
    }

    #[test]
    fn healthcheck_port() {
        assert_eq!(hc_ok(&["port=1"]).port, Some(1));
        assert_eq!(hc_ok(&["port=65535"]).port, Some(65535));
        assert_eq!(hc_ok(&[]).port, None);
        for a in [
            "port=0",
            "port=65536",
            "port=-1",
            "port=",
            "port=http",
            "port=80 ",
        ] {
            assert_eq!(
                hc_err(&[a]),
                bad(&escape(a.as_bytes()), "port must be from 1 to 65535")
            );
        }
    }

    #[test]
    fn healthcheck_default_down() {
        assert!(hc_ok(&["default_down=on"]).default_down);
        assert!(!hc_ok(&["default_down=off"]).default_down);
        for a in [
            "default_down=yes",
            "default_down=",
            "default_down=ON",
            "default_down=1",
        ] {
            assert_eq!(
                hc_err(&[a]),
                bad(a, "default_down must be \"on\" or \"off\"")
            );
        }
    }

    #[test]
    fn healthcheck_uri() {
        assert_eq!(hc_ok(&["uri=/"]).uri.as_deref(), Some("/"));
        assert_eq!(
            hc_ok(&["uri=/status?x=1&y=%20"]).uri.as_deref(),
            Some("/status?x=1&y=%20")
        );
        assert_eq!(hc_ok(&[]).uri, None);
        for a in ["uri=", "uri=health", "uri=*", "uri=http://x/"] {
            assert_eq!(hc_err(&[a]), bad(a, "uri must start with \"/\""));
        }
        let reason = "uri must not contain spaces, control characters or non-ASCII bytes";
        assert_eq!(hc_err(&["uri=/a b"]), bad("uri=/a b", reason));
        assert_eq!(hc_err(&["uri=/a\tb"]), bad("uri=/a\\tb", reason));
        assert_eq!(hc_err(&["uri=/a\x7f"]), bad("uri=/a\\x7F", reason));
        assert_eq!(hc_err(&["uri=/é"]), bad("uri=/\\xC3\\xA9", reason));
        assert_eq!(
            hc_err(&["uri=/x HTTP/1.0\r\nX: y"]),
            bad("uri=/x HTTP/1.0\\r\\nX: y", reason)
        );
    }

    #[test]
    fn healthcheck_host() {
        assert_eq!(
            hc_ok(&["host=example.com"]).host.as_deref(),
            Some("example.com")
        );
        assert_eq!(
            hc_ok(&["host=[::1]:8080"]).host.as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(hc_ok(&[]).host, None);
        assert_eq!(hc_err(&["host="]), bad("host=", "host must not be empty"));
        let reason = "host must not contain whitespace, control characters or non-ASCII bytes";
        assert_eq!(hc_err(&["host=a b"]), bad("host=a b", reason));
        assert_eq!(
            hc_err(&["host=a\r\nX-Evil: 1"]),
            bad("host=a\\r\\nX-Evil: 1", reason)
        );
        assert_eq!(hc_err(&["host=\0"]), bad("host=\\x00", reason));
    }

    #[test]
    fn healthcheck_unknown_and_malformed() {
        for a in [
            "foo=1", "fall", "=1", "", "Fall=1", "interval", "off=1", "fall =1", "uri",
        ] {
            assert_eq!(hc_err(&[a]), invalid(a), "{a:?}");
        }
        assert_eq!(
            hc_err(&["foo=1"]),
            "invalid parameter \"foo=1\" in \"upstream_healthcheck\" directive"
        );
    }

    #[test]
    fn healthcheck_each_parameter_at_most_once() {
        for (first, second) in [
            ("type=tcp", "type=http"),
            ("interval=1s", "interval=1s"),
            ("timeout=1s", "timeout=2s"),
            ("fall=3", "fall=0"),
            ("rise=3", "rise=3"),
            ("port=80", "port=81"),
            ("jitter=0", "jitter=1s"),
            ("fast_interval=1s", "fast_interval=1s"),
            ("down_interval=1s", "down_interval=5s"),
            ("uri=/", "uri=/a"),
            ("host=a", "host=b"),
            ("default_down=on", "default_down=off"),
        ] {
            let name = first.split('=').next().unwrap();
            assert_eq!(
                hc_err(&[first, second]),
                bad(second, &format!("{name} is given twice"))
            );
        }
        assert_eq!(
            hc_err(&["fall=3", "fall=4"]),
            "invalid parameter \"fall=4\" in \"upstream_healthcheck\" directive, fall is given twice"
        );
        assert_eq!(
            hc_err(&["rise=2", "uri=/x", "timeout=1s", "rise=2"]),
            bad("rise=2", "rise is given twice")
        );
    }

    #[test]
    fn healthcheck_first_error_wins() {
        assert_eq!(
            hc_err(&["fall=0", "foo=1"]),
            bad("fall=0", "fall must be a number from 1 to 1000000")
        );
        assert_eq!(hc_err(&["foo=1", "fall=0"]), invalid("foo=1"));
    }

    #[test]
    fn messages_escape_quotes_backslashes_and_control_bytes() {
        assert_eq!(hc_err(&["a\"b=1"]), invalid("a\\\"b=1"));
        assert_eq!(hc_err(&["a\\b=1"]), invalid("a\\\\b=1"));
        assert_eq!(
            hc_err(&["x\r\n\t\x01\x1b\x7f\u{ff}"]),
            invalid("x\\r\\n\\t\\x01\\x1B\\x7F\\xC3\\xBF")
        );
        let raw: &[u8] = b"x=\x80\xff";
        let msg = parse_healthcheck(&[raw]).unwrap_err().to_string();
        assert_eq!(msg, invalid("x=\\x80\\xFF"));
        for msg in [msg, hc_err(&["type=\r\n"]), hc_err(&["\r\n"])] {
            assert!(!msg.bytes().any(|b| b.is_ascii_control()), "{msg:?}");
        }
    }

    #[test]
    fn parse_error_is_an_error() {
        let e = hc(&["foo=1"]).unwrap_err();
        assert_eq!(e.as_str(), e.to_string());
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn healthcheck_match_names_a_block() {
        assert_eq!(
            hc_ok(&["match=json_ok"]).match_name.as_deref(),
            Some("json_ok")
        );
        assert_eq!(hc_ok(&[]).match_name, None);
        let reason = "a match name is printable ASCII without spaces";
        assert_eq!(hc_err(&["match="]), bad("match=", reason));
        assert_eq!(hc_err(&["match=a b"]), bad("match=a b", reason));
        assert_eq!(hc_err(&["match=\u{e9}"]), bad("match=\\xC3\\xA9", reason));
        assert_eq!(
            hc_err(&["match=a", "match=b"]),
            bad("match=b", "match is given twice")
        );
        // A tcp probe reads no response to match.
        assert_eq!(
            hc_err(&["type=tcp", "match=json_ok"]),
            bad(
                "match=json_ok",
                "match applies to type=http and type=https only"
            )
        );
        assert_eq!(
            hc_err(&["match=json_ok", "type=tcp"]),
            bad(
                "match=json_ok",
                "match applies to type=http and type=https only"
            )
        );
    }

    // --- upstream_healthcheck_valid_statuses

    #[test]
    fn valid_statuses_forms() {
        assert_eq!(vs(&["200"]).unwrap().entries, vec![r(200, 200, false)]);
        assert_eq!(vs(&["200-399"]).unwrap().entries, vec![r(200, 399, false)]);
        assert_eq!(vs(&["204-204"]).unwrap().entries, vec![r(204, 204, false)]);
        assert_eq!(vs(&["2xx"]).unwrap().entries, vec![r(200, 299, false)]);
        assert_eq!(vs(&["1xx"]).unwrap().entries, vec![r(100, 199, false)]);
        assert_eq!(vs(&["5XX"]).unwrap().entries, vec![r(500, 599, false)]);
        assert_eq!(vs(&["!502"]).unwrap().entries, vec![r(502, 502, true)]);
        assert_eq!(vs(&["!500-503"]).unwrap().entries, vec![r(500, 503, true)]);
        assert_eq!(vs(&["!4xx"]).unwrap().entries, vec![r(400, 499, true)]);
        assert_eq!(
            vs(&["101", "599"]).unwrap().entries,
            vec![r(101, 101, false), r(599, 599, false)]
        );
        let v = vs(&["2xx", "3xx", "!302"]).unwrap();
        assert_eq!(
            v.entries,
            vec![r(200, 299, false), r(300, 399, false), r(302, 302, true)]
        );
        assert!(v.is_valid(200) && v.is_valid(301) && !v.is_valid(302) && !v.is_valid(404));
    }

    #[test]
    fn valid_statuses_rejected() {
        let reason = "expected a status (200), a range (200-399 or 2xx) or an exclusion (!502)";
        for a in [
            "abc", "", "!", "!!200", "99", "099", "600", "1000", "20", "2000", "0xx", "6xx", "2x",
            "2xxx", "x00", "20x", "399-200", "200-", "-200", "200-600", "200--300", "200-3xx",
            "2xx-3xx", " 200", "200 ", "+200", "2 00", "!abc", "200,300",
        ] {
            assert_eq!(
                vs(&[a]).unwrap_err().to_string(),
                format!("invalid parameter \"{a}\" in \"upstream_healthcheck_valid_statuses\" directive, {reason}"),
                "{a:?}"
            );
        }
        assert_eq!(
            vs(&["200", "abc"]).unwrap_err().to_string(),
            "invalid parameter \"abc\" in \"upstream_healthcheck_valid_statuses\" directive, \
             expected a status (200), a range (200-399 or 2xx) or an exclusion (!502)"
        );
        assert_eq!(
            vs(&["2\r\n"]).unwrap_err().to_string(),
            format!("invalid parameter \"2\\r\\n\" in \"upstream_healthcheck_valid_statuses\" directive, {reason}")
        );
        assert_eq!(
            vs(&[]).unwrap_err().to_string(),
            "invalid number of arguments in \"upstream_healthcheck_valid_statuses\" directive"
        );
    }

    #[test]
    fn valid_statuses_a_probe_can_never_pass_are_refused() {
        let msg = |a: &str, reason: &str| {
            format!(
                "invalid parameter \"{a}\" in \"upstream_healthcheck_valid_statuses\" directive, \
                 {reason}"
            )
        };
        let interim = "a probe skips interim 1xx responses (all but 101) and never sees them";
        let excluded = "every status it names is excluded";
        for (args, bad, reason) in [
            (&["100"][..], "100", interim),
            (&["200", "100"], "100", interim),
            (&["102-199"], "102-199", interim),
            (&["200", "!200"], "200", excluded),
            (&["!200", "200"], "200", excluded),
            (&["2xx", "302", "!3xx"], "302", excluded),
            (&["2xx", "!200-249", "!250-299"], "2xx", excluded),
            (&["2xx", "3xx", "!3xx"], "3xx", excluded),
            (&["101", "!1xx"], "101", excluded),
        ] {
            assert_eq!(
                vs(args).unwrap_err().to_string(),
                msg(bad, reason),
                "{args:?}"
            );
        }
        // Exclusions alone that leave nothing from 200 to 599.
        assert_eq!(
            vs(&["!2xx", "!3xx", "!4xx", "!5xx"]).unwrap_err().to_string(),
            "invalid parameters \"!2xx !3xx !4xx !5xx\" in \"upstream_healthcheck_valid_statuses\" \
             directive, together they exclude every status from 200 to 599"
        );
        assert_eq!(
            vs(&["!1xx", "!200-599"]).unwrap_err().to_string(),
            "invalid parameters \"!1xx !200-599\" in \"upstream_healthcheck_valid_statuses\" \
             directive, together they exclude every status from 200 to 599"
        );
        assert_eq!(
            vs(&["!200-599"]).unwrap_err().to_string(),
            "invalid parameter \"!200-599\" in \"upstream_healthcheck_valid_statuses\" \
             directive, it excludes every status from 200 to 599"
        );
        // What a probe can see is accepted, even when most of an entry is excluded.
        for args in [
            &["101"][..],
            &["1xx"],
            &["100-101"],
            &["2xx", "!200-298"],
            &["!2xx", "!3xx", "!4xx"],
            &["!200-598"],
            &["200", "!201"],
            &["!1xx"],
        ] {
            assert!(vs(args).is_ok(), "{args:?}");
        }
    }

    // --- upstream_healthcheck_request

    #[test]
    fn request_accepted() {
        for req in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.0\n\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request(req).unwrap(), req);
        }
    }

    #[test]
    fn request_rejected() {
        let msg = "invalid value in \"upstream_healthcheck_request\" directive, the request must \
                   start with a method and end with \"\\r\\n\\r\\n\"";
        for req in [
            &b""[..],
            b"\r\n\r\n",
            b" GET / HTTP/1.0\r\n\r\n",
            b"GET",
            b"GET / HTTP/1.0",
            b"GET / HTTP/1.0\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\n",
            b"GET / HTTP/1.0\r\n\r\n ",
            b"/status\r\n\r\n",
        ] {
            let e = parse_request(req).unwrap_err().to_string();
            assert_eq!(e, msg, "{req:?}");
            assert!(!e.bytes().any(|b| b.is_ascii_control()));
        }
    }

    #[test]
    fn request_method_must_be_upper_case_as_nginx_parses_it() {
        let bad_method = |m: &str| {
            format!(
                "invalid method \"{m}\" in \"upstream_healthcheck_request\" directive, a method \
                 is upper-case letters, \"-\" and \"_\" (e.g. GET, HEAD)"
            )
        };
        for (req, shown) in [
            (&b"get / HTTP/1.0\r\n\r\n"[..], "get"),
            (b"Get / HTTP/1.0\r\n\r\n", "Get"),
            (b"G(T / HTTP/1.0\r\n\r\n", "G(T"),
            (b"GET/ HTTP/1.0\r\n\r\n", "GET/"),
            (b"GET\t/ HTTP/1.0\r\n\r\n", "GET\\t/"),
            (b"GET1 / HTTP/1.0\r\n\r\n", "GET1"),
            (
                b"\xc3\x89T\xc3\x89 / HTTP/1.0\r\n\r\n",
                "\\xC3\\x89T\\xC3\\x89",
            ),
        ] {
            assert_eq!(
                parse_request(req).unwrap_err().to_string(),
                bad_method(shown),
                "{req:?}"
            );
        }
        // The method is checked before the end: a lower-case method is named even so.
        assert_eq!(
            parse_request(b"get / HTTP/1.0").unwrap_err().to_string(),
            bad_method("get")
        );
        for req in [
            &b"PROPFIND / HTTP/1.1\r\n\r\n"[..],
            b"VERSION-CONTROL / HTTP/1.1\r\n\r\n",
            b"X_PROBE / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request(req).unwrap(), req);
        }
    }

    // --- upstream_healthcheck_zone

    #[test]
    fn zone_size() {
        assert_eq!(parse_zone_size(b"32k").unwrap(), 32 * 1024);
        assert_eq!(parse_zone_size(b"32768").unwrap(), 32768);
        assert_eq!(parse_zone_size(b"1m").unwrap(), 1 << 20);
        assert_eq!(parse_zone_size(b"1G").unwrap(), 1 << 30);
        for a in ["abc", "", "1.5m", "-1m", "10 m", "1mb"] {
            assert_eq!(
                parse_zone_size(a.as_bytes()).unwrap_err().to_string(),
                format!("invalid zone size \"{a}\" in \"upstream_healthcheck_zone\" directive")
            );
        }
        assert_eq!(
            parse_zone_size(b"1m\n").unwrap_err().to_string(),
            "invalid zone size \"1m\\n\" in \"upstream_healthcheck_zone\" directive"
        );
        for a in ["8k", "0", "32767", "31K"] {
            assert_eq!(
                parse_zone_size(a.as_bytes()).unwrap_err().to_string(),
                format!(
                    "\"upstream_healthcheck_zone\" size \"{a}\" is too small, the minimum is 32k"
                )
            );
        }
    }

    #[test]
    fn status_format() {
        assert_eq!(parse_status_format(None), Ok(Format::Text));
        for (a, f) in [
            ("text", Format::Text),
            ("json", Format::Json),
            ("prometheus", Format::Prometheus),
            ("html", Format::Html),
        ] {
            assert_eq!(parse_status_format(Some(a.as_bytes())), Ok(f));
        }
        let msg = |a: &str| {
            format!(
                "invalid parameter \"{a}\" in \"upstream_healthcheck_status\" directive, the format \
                 must be \"text\", \"json\", \"prometheus\" or \"html\""
            )
        };
        assert_eq!(
            parse_status_format(Some(b"JSON")).unwrap_err().to_string(),
            msg("JSON")
        );
        // Escaped like every other message: one printable line.
        assert_eq!(
            parse_status_format(Some(b"x\"\n\xff"))
                .unwrap_err()
                .to_string(),
            msg("x\\\"\\n\\xFF")
        );
    }

    #[test]
    fn ha_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_ha_address(&[b"10.0.0.5"]).unwrap(),
            (ip("10.0.0.5"), 10_000)
        );
        assert_eq!(
            parse_ha_address(&[b"10.0.0.5/32", b"interval=200ms"]).unwrap(),
            (ip("10.0.0.5"), 200)
        );
        assert_eq!(
            parse_ha_address(&[b"fd00::5", b"interval=3000"]).unwrap(),
            (ip("fd00::5"), 3000)
        );
        assert_eq!(
            parse_ha_address(&[b"vip"]).unwrap_err().to_string(),
            "invalid parameter \"vip\" in \"upstream_healthcheck_ha_address\" directive, expected an IPv4 or IPv6 address"
        );
        assert_eq!(
            parse_ha_address(&[b"10.0.0.5", b"interval=0"]).unwrap_err().to_string(),
            "invalid parameter \"interval=0\" in \"upstream_healthcheck_ha_address\" directive, interval must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)"
        );
        assert_eq!(
            parse_ha_address(&[b"10.0.0.5", b"every=1s"])
                .unwrap_err()
                .to_string(),
            "invalid parameter \"every=1s\" in \"upstream_healthcheck_ha_address\" directive"
        );
    }

    #[test]
    fn ha_address_prefix_length_is_checked() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (addr, want) in [
            ("10.0.0.5/0", "10.0.0.5"),
            ("10.0.0.5/32", "10.0.0.5"),
            ("10.0.0.5/24", "10.0.0.5"),
            ("fd00::5/64", "fd00::5"),
            ("fd00::5/128", "fd00::5"),
            ("[fd00::5]/64", "fd00::5"),
        ] {
            assert_eq!(
                parse_ha_address(&[addr.as_bytes()]).unwrap(),
                (ip(want), 10_000)
            );
        }
        let msg = |a: &str, max: u32| {
            format!(
                "invalid parameter \"{a}\" in \"upstream_healthcheck_ha_address\" directive, \
                 the prefix length must be from 0 to {max}"
            )
        };
        for a in [
            "10.0.0.1/99",
            "10.0.0.1/abc",
            "10.0.0.1/",
            "10.0.0.1/33",
            "10.0.0.1/-1",
        ] {
            assert_eq!(
                parse_ha_address(&[a.as_bytes()]).unwrap_err().to_string(),
                msg(a, 32)
            );
        }
        for a in ["fd00::5/129", "fd00::5/x", "fd00::5/64/64"] {
            assert_eq!(
                parse_ha_address(&[a.as_bytes()]).unwrap_err().to_string(),
                msg(a, 128)
            );
        }
    }

    #[test]
    fn ha_address_interval_has_the_words_of_upstream_healthcheck() {
        let ha = |v: &str| {
            let a = format!("interval={v}");
            parse_ha_address(&[b"10.0.0.5", a.as_bytes()])
                .unwrap_err()
                .to_string()
                .replace("upstream_healthcheck_ha_address", "X")
        };
        let hc = |v: &str| hc_err(&[&format!("interval={v}")]).replace("upstream_healthcheck", "X");
        for v in [
            "0",
            "abc",
            "1000000000h",
            "25h",
            "-1s",
            "",
            "99999999999999999999h",
        ] {
            assert_eq!(ha(v), hc(v), "interval={v}");
        }
        assert!(ha("1000000000h").ends_with("interval must be at most 24h"));
        assert_eq!(
            parse_ha_address(&[b"10.0.0.5", b"interval=24h"]).unwrap().1,
            MAX_TIME_MS
        );
    }

    #[test]
    fn dynamic_takes_max_peers() {
        assert_eq!(parse_dynamic(&[b"max_peers=256"]).unwrap(), 256);
        assert_eq!(
            parse_dynamic(&[b"max_peers=0"]).unwrap_err().to_string(),
            "invalid parameter \"max_peers=0\" in \"upstream_healthcheck_dynamic\" directive, from 1 to 65536"
        );
        assert_eq!(
            parse_dynamic(&[b"peers=3"]).unwrap_err().to_string(),
            "invalid parameter \"peers=3\" in \"upstream_healthcheck_dynamic\" directive"
        );
        assert_eq!(
            parse_dynamic(&[]).unwrap_err().to_string(),
            "\"upstream_healthcheck_dynamic\" directive needs \"max_peers=\""
        );
    }
}
