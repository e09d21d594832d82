//! Stream checks: the arguments of the stream directives (`upstream_healthcheck`,
//! `upstream_healthcheck_send`, `upstream_healthcheck_expect` in `stream { upstream {} }`) and
//! the judgement of a peer's answer.

use regex::bytes::{Regex, RegexBuilder};

use crate::config::CheckParams;
use crate::matcher::{regex_reason, REGEX_SIZE_LIMIT};
use crate::outcome::Failure;
use crate::parse::{escape, parse_healthcheck, ParseError};

const HEALTHCHECK: &str = "upstream_healthcheck";
pub const SEND: &str = "upstream_healthcheck_send";
pub const EXPECT: &str = "upstream_healthcheck_expect";

/// How much of an answer a regular expression is matched against.
pub const EXPECT_WINDOW: usize = 4096;

/// The parameters `upstream_healthcheck` takes in a stream upstream; the others (`uri=`,
/// `host=`, `match=`, ...) are http's.
const STREAM_KEYS: [&str; 9] = [
    "type",
    "interval",
    "timeout",
    "fall",
    "rise",
    "port",
    "jitter",
    "default_down",
    "keepalive",
];

/// What a stream probe speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    Tcp,
    Udp,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Tcp => "tcp",
            StreamType::Udp => "udp",
        }
    }
}

/// `upstream_healthcheck` of a stream upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCheck {
    pub kind: StreamType,
    /// The shared parameters; `check_type`, `uri`, `host` and `match_name` are unused.
    pub params: CheckParams,
}

/// Parses the arguments of `upstream_healthcheck` in a stream upstream: `Ok(None)` for `off`.
/// Parameters are checked as for http (same ranges, same messages); http-only ones are
/// invalid.
pub fn parse_stream_healthcheck(args: &[&[u8]]) -> Result<Option<StreamCheck>, ParseError> {
    let mut kind = None;
    // parse_healthcheck with type=http accepts keepalive; the type is the stream one.
    let mut shared: Vec<&[u8]> = vec![b"type=http"];
    for &arg in args {
        if arg == b"off" {
            shared.push(arg);
            continue;
        }
        let key = arg.split(|&b| b == b'=').next().unwrap_or(arg);
        if !arg.contains(&b'=') || !STREAM_KEYS.iter().any(|k| k.as_bytes() == key) {
            return Err(ParseError::new(format!(
                "invalid parameter \"{}\" in \"{HEALTHCHECK}\" directive",
                escape(arg)
            )));
        }
        if key == b"type" {
            let bad = |reason: &str| {
                ParseError::new(format!(
                    "invalid parameter \"{}\" in \"{HEALTHCHECK}\" directive, {reason}",
                    escape(arg)
                ))
            };
            if kind.is_some() {
                return Err(bad("type is given twice"));
            }
            kind = Some(match &arg[5..] {
                b"tcp" => StreamType::Tcp,
                b"udp" => StreamType::Udp,
                _ => return Err(bad("type must be \"tcp\" or \"udp\" in a stream upstream")),
            });
            continue;
        }
        shared.push(arg);
    }
    if shared[1..].contains(&&b"off"[..]) {
        if kind.is_some() {
            return Err(ParseError::new(format!(
                "invalid parameter \"off\" in \"{HEALTHCHECK}\" directive, \"off\" takes no other \
                 parameters"
            )));
        }
        return parse_healthcheck(&shared[1..]).map(|_| None);
    }
    let params = parse_healthcheck(&shared)?.unwrap_or_default();
    Ok(Some(StreamCheck {
        kind: kind.unwrap_or(StreamType::Tcp),
        params,
    }))
}

/// Decodes the escapes of a send or expect string: `\r`, `\n`, `\t`, `\\` and `\xHH` (nginx
/// itself already turns `\r`, `\n` and `\t` in quoted strings into bytes).
pub fn unescape(directive: &str, arg: &[u8]) -> Result<Vec<u8>, ParseError> {
    let bad = || {
        ParseError::new(format!(
            "invalid escape in \"{}\" in \"{directive}\" directive, use \\r, \\n, \\t, \\\\ or \
             \\xHH",
            escape(arg)
        ))
    };
    let mut out = Vec::with_capacity(arg.len());
    let mut i = 0;
    while i < arg.len() {
        if arg[i] != b'\\' {
            out.push(arg[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match arg.get(i + 1) {
            Some(b'r') => (b'\r', 2),
            Some(b'n') => (b'\n', 2),
            Some(b't') => (b'\t', 2),
            Some(b'\\') => (b'\\', 2),
            Some(b'x') => {
                let hex = arg.get(i + 2..i + 4).ok_or_else(bad)?;
                let text = core::str::from_utf8(hex).map_err(|_| bad())?;
                (u8::from_str_radix(text, 16).map_err(|_| bad())?, 4)
            }
            _ => return Err(bad()),
        };
        out.push(byte);
        i += used;
    }
    Ok(out)
}

/// Parses the argument of `upstream_healthcheck_send`: the bytes to send, not empty.
pub fn parse_send(arg: &[u8]) -> Result<Vec<u8>, ParseError> {
    let bytes = unescape(SEND, arg)?;
    if bytes.is_empty() {
        return Err(ParseError::new(format!(
            "invalid value \"\" in \"{SEND}\" directive, nothing to send"
        )));
    }
    Ok(bytes)
}

/// `upstream_healthcheck_expect`: what a good answer looks like.
#[derive(Clone, Debug)]
pub enum Expect {
    /// The answer starts with these bytes.
    Prefix(Vec<u8>),
    /// The regular expression matches within the first `EXPECT_WINDOW` bytes (linear time).
    Regex(Regex),
}

/// Parses the arguments of `upstream_healthcheck_expect`: `"string"` or `~ "regex"`.
pub fn parse_expect(args: &[&[u8]]) -> Result<Expect, ParseError> {
    match args {
        [s] if !s.is_empty() && *s != b"~" => Ok(Expect::Prefix(unescape(EXPECT, s)?)),
        [b"~", pattern] => {
            let refuse = |reason: &str| {
                ParseError::new(format!(
                    "invalid regular expression \"{}\" in \"{EXPECT}\" directive, {reason}",
                    escape(pattern)
                ))
            };
            let text =
                core::str::from_utf8(pattern).map_err(|_| refuse("it is not valid UTF-8"))?;
            RegexBuilder::new(text)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(Expect::Regex)
                .map_err(|e| refuse(&regex_reason(&e)))
        }
        _ => Err(ParseError::new(format!(
            "invalid parameters in \"{EXPECT}\" directive, expected \"string\" or ~ \"regex\""
        ))),
    }
}

/// Where an answer stands against the expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    Met,
    Refuted,
    /// Not yet decided: read more (a stream answer that is still arriving).
    NeedMore,
}

impl Expect {
    /// Judges the first bytes of an answer, `ended` when no more will come (the peer closed,
    /// or a datagram, which is whole).
    pub fn judge(&self, answer: &[u8], ended: bool) -> Judgement {
        let decided = match self {
            Expect::Prefix(p) => {
                let n = p.len().min(answer.len());
                if answer[..n] != p[..n] {
                    Some(false)
                } else if answer.len() >= p.len() {
                    Some(true)
                } else {
                    None
                }
            }
            Expect::Regex(re) => {
                let window = &answer[..answer.len().min(EXPECT_WINDOW)];
                if re.is_match(window) {
                    Some(true)
                } else if answer.len() >= EXPECT_WINDOW {
                    Some(false)
                } else {
                    None
                }
            }
        };
        match decided {
            Some(true) => Judgement::Met,
            Some(false) => Judgement::Refuted,
            None if ended => Judgement::Refuted,
            None => Judgement::NeedMore,
        }
    }

    /// How many bytes of an answer are ever needed to judge it.
    pub fn window(&self) -> usize {
        match self {
            Expect::Prefix(p) => p.len(),
            Expect::Regex(_) => EXPECT_WINDOW,
        }
    }
}

/// A stream probe's failure as the error log words it (the http wording speaks of status
/// lines).
pub fn failure_text(f: Failure) -> &'static str {
    match f {
        Failure::Closed => "connection closed before the expected answer",
        Failure::Mismatch => "the answer did not meet upstream_healthcheck_expect",
        Failure::Refused => "connection refused",
        Failure::Timeout => "timed out",
        _ => "connection reset by peer",
    }
}

/// The checks of one stream upstream taken together: `nginx -t`'s message when they cannot
/// work (udp needs something to send).
pub fn check_combination(kind: StreamType, send: bool, expect: bool) -> Result<(), String> {
    match kind {
        StreamType::Udp if !send && expect => Err(format!(
            "\"{EXPECT}\" directive needs \"{SEND}\" with type=udp"
        )),
        StreamType::Udp if !send => {
            Err(format!("\"{HEALTHCHECK}\" with type=udp needs \"{SEND}\""))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<StreamCheck>, String> {
        let args: Vec<&[u8]> = s.split_whitespace().map(str::as_bytes).collect();
        parse_stream_healthcheck(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn stream_parameters_parse_as_for_http() {
        let c = parse("type=udp interval=1s timeout=500ms fall=2 rise=1 port=53 jitter=100ms")
            .unwrap()
            .unwrap();
        assert_eq!(c.kind, StreamType::Udp);
        assert_eq!(
            (
                c.params.interval_ms,
                c.params.timeout_ms,
                c.params.fall,
                c.params.rise
            ),
            (1000, 500, 2, 1)
        );
        assert_eq!(c.params.port, Some(53));
        let c = parse("keepalive=10 default_down=on").unwrap().unwrap();
        assert_eq!(c.kind, StreamType::Tcp);
        assert_eq!(c.params.keepalive, 10);
        assert!(c.params.default_down);
        assert_eq!(parse("").unwrap().unwrap().kind, StreamType::Tcp);
        assert_eq!(parse("off").unwrap(), None);
    }

    #[test]
    fn http_parameters_and_bad_values_are_errors() {
        assert_eq!(
            parse("uri=/health").unwrap_err(),
            "invalid parameter \"uri=/health\" in \"upstream_healthcheck\" directive"
        );
        assert_eq!(
            parse("type=http").unwrap_err(),
            "invalid parameter \"type=http\" in \"upstream_healthcheck\" directive, type must \
             be \"tcp\" or \"udp\" in a stream upstream"
        );
        assert_eq!(
            parse("fall=0").unwrap_err(),
            "invalid parameter \"fall=0\" in \"upstream_healthcheck\" directive, fall must be a \
             number from 1 to 1000000"
        );
        assert!(parse("type=udp off")
            .unwrap_err()
            .contains("takes no other"));
        assert!(parse("interval=1s off")
            .unwrap_err()
            .contains("takes no other"));
        assert!(parse("match=x").is_err());
    }

    #[test]
    fn escapes_decode() {
        assert_eq!(parse_send(b"PING\\r\\n").unwrap(), b"PING\r\n");
        assert_eq!(parse_send(b"\\x00\\x01ab\\\\").unwrap(), b"\x00\x01ab\\");
        assert!(parse_send(b"\\x4").is_err());
        assert!(parse_send(b"\\q").is_err());
        assert!(parse_send(b"").is_err());
    }

    #[test]
    fn a_prefix_is_met_refuted_or_needs_more() {
        let e = parse_expect(&[b"+PONG"]).unwrap();
        assert_eq!(e.judge(b"+PO", false), Judgement::NeedMore);
        assert_eq!(e.judge(b"+PO", true), Judgement::Refuted);
        assert_eq!(e.judge(b"+PONG\r\n", false), Judgement::Met);
        assert_eq!(e.judge(b"-ERR", false), Judgement::Refuted);
    }

    #[test]
    fn a_regex_looks_at_the_first_4k() {
        let e = parse_expect(&[b"~", b"^220 .*ESMTP"]).unwrap();
        assert_eq!(e.judge(b"220 mx ESMTP ready", false), Judgement::Met);
        assert_eq!(e.judge(b"220 mx", false), Judgement::NeedMore);
        assert_eq!(e.judge(b"220 mx", true), Judgement::Refuted);
        let late = [b"x".repeat(EXPECT_WINDOW), b"220 ESMTP".to_vec()].concat();
        let e = parse_expect(&[b"~", b"220 ESMTP"]).unwrap();
        assert_eq!(e.judge(&late, false), Judgement::Refuted);
        assert!(parse_expect(&[b"~", b"("])
            .unwrap_err()
            .to_string()
            .starts_with(
                "invalid regular expression \"(\" in \"upstream_healthcheck_expect\" directive, "
            ));
        assert!(parse_expect(&[b"~"]).is_err());
    }

    #[test]
    fn udp_needs_something_to_send() {
        assert!(check_combination(StreamType::Tcp, false, false).is_ok());
        assert!(check_combination(StreamType::Tcp, false, true).is_ok());
        assert!(check_combination(StreamType::Udp, true, false).is_ok());
        assert_eq!(
            check_combination(StreamType::Udp, false, true).unwrap_err(),
            "\"upstream_healthcheck_expect\" directive needs \"upstream_healthcheck_send\" with \
             type=udp"
        );
        assert!(check_combination(StreamType::Udp, false, false).is_err());
    }
}
