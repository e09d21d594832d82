//! The `upstream_healthcheck_match` block: its lines parsed into conditions, and the judgement
//! of one response (status, headers, body) against them, in time linear in the response.
//!
//! A block is a list of conditions that must all hold, as NGINX Plus's `match`:
//!
//! - `status 200-399 !302;` the syntax of `upstream_healthcheck_valid_statuses` (and NGINX
//!   Plus's `status ! 301-303 307;`, a `!` before the list that excludes all of it). Without
//!   a `status` line any status passes, as in NGINX Plus: the block is the whole judgement.
//! - `header NAME;` present; `header ! NAME;` absent; `header NAME = "v";` some field of that
//!   name has exactly the value; `header NAME != "v";` the field is present and none has the
//!   value; `header NAME ~ "re";` some value matches; `header NAME !~ "re";` the field is
//!   present and no value matches. Names are compared without regard to case.
//! - `body ~ "re";` / `body !~ "re";` the first `body_max` bytes of the body match (or not).
//! - `body_max 64k;` how much of the body is examined: 64k by default, at most 1m.
//!
//! Regular expressions are the `regex` crate's (byte-oriented, `regex::bytes`): no
//! backreferences or look-around, and matching takes time linear in the input, so a backend
//! cannot stall a worker with a crafted body. Each condition displays as the operator wrote it,
//! for the logs and the status page.

use crate::outcome::{Failure, Outcome};
use core::fmt;

use regex::bytes::{Regex, RegexBuilder};

use crate::config::ValidStatuses;
use crate::parse::{escape, parse_size, parse_valid_statuses, ParseError};

/// The block's directive name, as messages show it.
pub const BLOCK: &str = "upstream_healthcheck_match";

/// `body_max` when the block does not set it.
pub const DEFAULT_BODY_MAX: usize = 64 * 1024;

/// The largest `body_max`.
pub const MAX_BODY_MAX: usize = 1024 * 1024;

/// The most a compiled regular expression may take: a pattern that needs more is refused at
/// configuration time rather than costing every worker memory.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How a header's value is tested.
#[derive(Clone, Debug)]
pub enum HeaderTest {
    /// `header NAME;`
    Present,
    /// `header ! NAME;`
    Absent,
    /// `header NAME = "v";`
    Equals(Vec<u8>),
    /// `header NAME != "v";`
    NotEquals(Vec<u8>),
    /// `header NAME ~ "re";`
    Matches(Regex),
    /// `header NAME !~ "re";`
    NotMatches(Regex),
}

/// One line of the block that the response must satisfy.
#[derive(Clone, Debug)]
pub enum Condition {
    /// `status ...;` with the arguments as written, for display.
    Status {
        valid: ValidStatuses,
        written: Vec<Vec<u8>>,
    },
    /// `header ...;` with the name as written (compared without regard to case).
    Header { name: Vec<u8>, test: HeaderTest },
    /// `body ~ "re";` (`negated: false`) or `body !~ "re";`.
    Body { regex: Regex, negated: bool },
}

impl Condition {
    /// Whether the response passes this condition; `body` is already cut to `body_max`.
    fn holds(&self, status: u16, headers: &[(&[u8], &[u8])], body: &[u8]) -> bool {
        match self {
            Condition::Status { valid, .. } => valid.is_valid(status),
            Condition::Header { name, test } => {
                let mut values = headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|&(_, v)| v)
                    .peekable();
                let present = values.peek().is_some();
                match test {
                    HeaderTest::Present => present,
                    HeaderTest::Absent => !present,
                    HeaderTest::Equals(want) => values.any(|v| v == want.as_slice()),
                    HeaderTest::NotEquals(want) => present && values.all(|v| v != want.as_slice()),
                    HeaderTest::Matches(re) => values.any(|v| re.is_match(v)),
                    HeaderTest::NotMatches(re) => present && values.all(|v| !re.is_match(v)),
                }
            }
            Condition::Body { regex, negated } => regex.is_match(body) != *negated,
        }
    }

    /// A `status` condition, which a failure message completes with the status received.
    pub fn is_status(&self) -> bool {
        matches!(self, Condition::Status { .. })
    }
}

/// Writes `v` between double quotes as an operator would write it in nginx.conf: `"` becomes
/// `\"`; a backslash stays as written (`\s` reads as in the config); control bytes and bytes
/// beyond ASCII become `\xNN`, so the text is always one printable ASCII line.
fn quoted(f: &mut fmt::Formatter<'_>, v: &[u8]) -> fmt::Result {
    f.write_str("\"")?;
    for &b in v {
        match b {
            b'"' => f.write_str("\\\"")?,
            0x20..=0x7e => write!(f, "{}", char::from(b))?,
            _ => write!(f, "\\x{b:02X}")?,
        }
    }
    f.write_str("\"")
}

/// Writes a token (a header name, a status entry): printable ASCII as is, anything else as
/// `\xNN`.
fn token(f: &mut fmt::Formatter<'_>, v: &[u8]) -> fmt::Result {
    for &b in v {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
            write!(f, "{}", char::from(b))?;
        } else {
            write!(f, "\\x{b:02X}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Condition {
    /// The condition as written in the block, without the `;`: `status 200-399 !302`,
    /// `header Content-Type ~ "json"`, `header ! X-Maintenance`, `body ~ "\"ok\""`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Status { written, .. } => {
                f.write_str("status")?;
                for w in written {
                    f.write_str(" ")?;
                    token(f, w)?;
                }
                Ok(())
            }
            Condition::Header { name, test } => {
                f.write_str("header ")?;
                if matches!(test, HeaderTest::Absent) {
                    f.write_str("! ")?;
                }
                token(f, name)?;
                let (op, value): (&str, &[u8]) = match test {
                    HeaderTest::Present | HeaderTest::Absent => return Ok(()),
                    HeaderTest::Equals(v) => ("=", v),
                    HeaderTest::NotEquals(v) => ("!=", v),
                    HeaderTest::Matches(re) => ("~", re.as_str().as_bytes()),
                    HeaderTest::NotMatches(re) => ("!~", re.as_str().as_bytes()),
                };
                write!(f, " {op} ")?;
                quoted(f, value)
            }
            Condition::Body { regex, negated } => {
                f.write_str(if *negated { "body !~ " } else { "body ~ " })?;
                quoted(f, regex.as_str().as_bytes())
            }
        }
    }
}

/// A parsed `upstream_healthcheck_match` block.
#[derive(Clone, Debug)]
pub struct Match {
    conditions: Vec<Condition>,
    body_max: usize,
}

impl Match {
    /// `Ok` when every condition holds; otherwise the index of the first that does not, in the
    /// order of the block (see `condition`). `status` is the final status (interim 1xx
    /// skipped); `headers` are the response's fields in arrival order, each value without the
    /// whitespace around it, a field given twice appearing twice; `body` is what was read of
    /// the body (empty when `needs_body` is false). Only the first `body_max` bytes of `body`
    /// are examined, whatever the caller passes.
    pub fn check(&self, status: u16, headers: &[(&[u8], &[u8])], body: &[u8]) -> Result<(), usize> {
        let body = &body[..body.len().min(self.body_max)];
        match self
            .conditions
            .iter()
            .position(|c| !c.holds(status, headers, body))
        {
            Some(i) => Err(i),
            None => Ok(()),
        }
    }

    /// The verdict on a response: passed, or `Mismatch` with the failing condition's index + 1
    /// as its detail (see `failure`).
    pub fn judge(&self, status: u16, headers: &[(&[u8], &[u8])], body: &[u8]) -> Outcome {
        match self.check(status, headers, body) {
            Ok(()) => Outcome::ok(Some(status)),
            Err(i) => Outcome::failed_with(Failure::Mismatch, Some(status), i as u32 + 1),
        }
    }

    /// How many bytes of the body `check` examines.
    pub fn body_max(&self) -> usize {
        self.body_max
    }

    /// The `i`th condition, in the order of the block. Panics when `i` is not an index that
    /// `check` returned (or below `len`).
    pub fn condition(&self, i: usize) -> &Condition {
        &self.conditions[i]
    }

    /// The conditions, in the order of the block.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Some condition looks at the body: the probe must read it (up to `body_max`). When false,
    /// the probe can judge once the headers are read, and passes an empty body.
    pub fn needs_body(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| matches!(c, Condition::Body { .. }))
    }

    /// Some condition looks at the header fields: when false (and `needs_body` is false), the
    /// status line alone decides.
    pub fn needs_headers(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| matches!(c, Condition::Header { .. }))
    }

    /// Why condition `i` failed, for a log line or the status page: the condition as written,
    /// and for a `status` condition the status received, e.g. `status 200-399 !302 (got 302)`.
    /// An index past the end gives an empty string rather than a panic.
    pub fn failure(&self, i: usize, status: u16) -> String {
        match self.conditions.get(i) {
            Some(c) if c.is_status() => format!("{c} (got {status})"),
            Some(c) => c.to_string(),
            None => String::new(),
        }
    }
}

/// One line of the block, parsed.
#[derive(Clone, Debug)]
pub enum Line {
    Condition(Condition),
    /// `body_max SIZE;`
    BodyMax(usize),
}

/// `invalid number of arguments in "WHAT" of "upstream_healthcheck_match" block`
fn arity(what: &str) -> ParseError {
    ParseError::new(format!(
        "invalid number of arguments in \"{what}\" of \"{BLOCK}\" block"
    ))
}

/// `invalid parameter "ARG" in "WHAT" of "upstream_healthcheck_match" block, REASON`
fn bad(what: &str, arg: &[u8], reason: &str) -> ParseError {
    ParseError::new(format!(
        "invalid parameter \"{}\" in \"{what}\" of \"{BLOCK}\" block, {reason}",
        escape(arg)
    ))
}

/// Compiles a regular expression of a `header` or `body` line: `None` and a one-line reason
/// when it is not one.
fn regex(what: &str, pattern: &[u8]) -> Result<Regex, ParseError> {
    let refuse = |reason: &str| {
        ParseError::new(format!(
            "invalid regular expression \"{}\" in \"{what}\" of \"{BLOCK}\" block, {reason}",
            escape(pattern)
        ))
    };
    let text = core::str::from_utf8(pattern).map_err(|_| refuse("it is not valid UTF-8"))?;
    RegexBuilder::new(text)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| refuse(&regex_reason(&e)))
}

/// The one-line reason of a regex error: its `error: ...` line, without the pattern and caret
/// drawing that the crate's message spreads over several lines.
pub(crate) fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .or_else(|| text.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .unwrap_or("invalid regular expression");
    let reason = match e {
        regex::Error::CompiledTooBig(_) => "it compiles too big (at most 1m)",
        _ => reason,
    };
    escape(reason.as_bytes())
}

/// A header name as RFC 9110 allows it: one or more token characters.
fn is_token(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses one line of the block: its arguments, the condition's keyword first, as nginx hands
/// them over (un-quoted, un-escaped).
pub fn parse_line(args: &[&[u8]]) -> Result<Line, ParseError> {
    let Some((&keyword, rest)) = args.split_first() else {
        return Err(ParseError::new(format!(
            "invalid condition \"\" in \"{BLOCK}\" block"
        )));
    };
    match keyword {
        b"status" => parse_status(rest),
        b"header" => parse_header(rest),
        b"body" => parse_body(rest),
        b"body_max" => {
            let [size] = rest else {
                return Err(arity("body_max"));
            };
            let reason = "body_max must be a size from 1 to 1m (e.g. 64k)";
            match parse_size(size) {
                Some(n @ 1..=MAX_BODY_MAX) => Ok(Line::BodyMax(n)),
                _ => Err(bad("body_max", size, reason)),
            }
        }
        _ => Err(ParseError::new(format!(
            "invalid condition \"{}\" in \"{BLOCK}\" block",
            escape(keyword)
        ))),
    }
}

/// `status LIST` in the syntax of `upstream_healthcheck_valid_statuses`, or NGINX Plus's
/// `status ! LIST` which excludes the whole list.
fn parse_status(args: &[&[u8]]) -> Result<Line, ParseError> {
    let (all_negated, list) = match args.split_first() {
        Some((&b"!", list)) => (true, list),
        _ => (false, args),
    };
    if list.is_empty() {
        return Err(arity("status"));
    }
    if all_negated {
        if let Some(a) = list.iter().find(|a| a.first() == Some(&b'!')) {
            return Err(bad(
                "status",
                a,
                "an entry after a \"!\" that excludes the whole list cannot have a \"!\" of its own",
            ));
        }
    }
    let entries: Vec<Vec<u8>> = list
        .iter()
        .map(|a| {
            let mut e = Vec::with_capacity(a.len() + 1);
            if all_negated {
                e.push(b'!');
            }
            e.extend_from_slice(a);
            e
        })
        .collect();
    let slices: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let valid = parse_valid_statuses(&slices).map_err(|e| {
        ParseError::new(e.as_str().replace(
            "in \"upstream_healthcheck_valid_statuses\" directive",
            &format!("in \"status\" of \"{BLOCK}\" block"),
        ))
    })?;
    Ok(Line::Condition(Condition::Status {
        valid,
        written: args.iter().map(|a| a.to_vec()).collect(),
    }))
}

/// `header NAME`, `header ! NAME` (or `!NAME`), `header NAME OP VALUE`.
fn parse_header(args: &[&[u8]]) -> Result<Line, ParseError> {
    let name_ok = |name: &[u8]| {
        if is_token(name) {
            Ok(name.to_vec())
        } else {
            Err(bad(
                "header",
                name,
                "a header name is letters, digits and !#$%&'*+-.^_`|~",
            ))
        }
    };
    let (name, test) = match args {
        [b"!", name] => (name_ok(name)?, HeaderTest::Absent),
        [name] => match name.strip_prefix(b"!") {
            Some(rest) => (name_ok(rest)?, HeaderTest::Absent),
            None => (name_ok(name)?, HeaderTest::Present),
        },
        [b"!", ..] => return Err(arity("header")),
        [name, op, value] => {
            let name = name_ok(name)?;
            let test = match *op {
                b"=" => HeaderTest::Equals(value.to_vec()),
                b"!=" => HeaderTest::NotEquals(value.to_vec()),
                b"~" => HeaderTest::Matches(regex("header", value)?),
                b"!~" => HeaderTest::NotMatches(regex("header", value)?),
                _ => {
                    return Err(bad(
                        "header",
                        op,
                        "the operator must be \"=\", \"!=\", \"~\" or \"!~\"",
                    ))
                }
            };
            (name, test)
        }
        _ => return Err(arity("header")),
    };
    Ok(Line::Condition(Condition::Header { name, test }))
}

/// `body ~ RE` or `body !~ RE`.
fn parse_body(args: &[&[u8]]) -> Result<Line, ParseError> {
    let [op, pattern] = args else {
        return Err(arity("body"));
    };
    let negated = match *op {
        b"~" => false,
        b"!~" => true,
        _ => return Err(bad("body", op, "the operator must be \"~\" or \"!~\"")),
    };
    Ok(Line::Condition(Condition::Body {
        regex: regex("body", pattern)?,
        negated,
    }))
}

/// A block being read, line by line.
#[derive(Debug, Default)]
pub struct MatchBuilder {
    conditions: Vec<Condition>,
    body_max: Option<usize>,
}

impl MatchBuilder {
    /// Adds one line of the block (see `parse_line`); `body_max` may be given once.
    pub fn add(&mut self, args: &[&[u8]]) -> Result<(), ParseError> {
        match parse_line(args)? {
            Line::Condition(c) => self.conditions.push(c),
            Line::BodyMax(n) => {
                if self.body_max.is_some() {
                    return Err(ParseError::new(format!(
                        "\"body_max\" is duplicate in \"{BLOCK}\" block"
                    )));
                }
                self.body_max = Some(n);
            }
        }
        Ok(())
    }

    /// The block, once its `}` is read: at least one condition is required.
    pub fn finish(self, name: &[u8]) -> Result<Match, ParseError> {
        if self.conditions.is_empty() {
            return Err(ParseError::new(format!(
                "no conditions are inside \"{BLOCK}\" block \"{}\"",
                escape(name)
            )));
        }
        Ok(Match {
            conditions: self.conditions,
            body_max: self.body_max.unwrap_or(DEFAULT_BODY_MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block from its lines, each as nginx would split it (no quotes, no `;`).
    fn block(lines: &[&[&str]]) -> Result<Match, String> {
        let mut b = MatchBuilder::default();
        for line in lines {
            let args: Vec<&[u8]> = line.iter().map(|a| a.as_bytes()).collect();
            b.add(&args).map_err(|e| e.to_string())?;
        }
        b.finish(b"m").map_err(|e| e.to_string())
    }

    fn ok(lines: &[&[&str]]) -> Match {
        block(lines).unwrap()
    }

    fn err(lines: &[&[&str]]) -> String {
        block(lines).unwrap_err()
    }

    fn hdrs<'a>(h: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        h.iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    // --- the issue's example, as an operator's story

    #[test]
    fn a_json_health_endpoint() {
        let m = ok(&[
            &["status", "200-399", "!302"],
            &["header", "Content-Type", "~", "json"],
            &["body", "~", r#""status"\s*:\s*"ok""#],
            &["body_max", "64k"],
        ]);
        let json = hdrs(&[("content-type", "application/json; charset=utf-8")]);
        assert_eq!(m.check(200, &json, br#"{"status": "ok"}"#), Ok(()));
        // Each condition fails on its own, and the first failing one is named.
        assert_eq!(m.check(302, &json, br#"{"status":"ok"}"#), Err(0));
        assert_eq!(m.check(500, &json, b""), Err(0));
        let html = hdrs(&[("Content-Type", "text/html")]);
        assert_eq!(m.check(200, &html, br#"{"status":"ok"}"#), Err(1));
        assert_eq!(m.check(200, &[], br#"{"status":"ok"}"#), Err(1));
        assert_eq!(m.check(200, &json, br#"{"status":"degraded"}"#), Err(2));
        // What the probe shows when it fails.
        assert_eq!(m.condition(0).to_string(), "status 200-399 !302");
        assert_eq!(m.failure(0, 302), "status 200-399 !302 (got 302)");
        assert_eq!(
            m.condition(1).to_string(),
            r#"header Content-Type ~ "json""#
        );
        assert_eq!(
            m.condition(2).to_string(),
            r#"body ~ "\"status\"\s*:\s*\"ok\"""#
        );
        assert_eq!(m.failure(2, 200), r#"body ~ "\"status\"\s*:\s*\"ok\"""#);
        assert_eq!(m.failure(9, 200), "");
        assert_eq!(m.body_max(), 64 * 1024);
        assert!(m.needs_body() && m.needs_headers());
        assert_eq!(m.conditions().len(), 3);
    }

    #[test]
    fn without_a_status_line_any_status_passes_as_in_nginx_plus() {
        let m = ok(&[&["header", "!", "X-Maintenance"]]);
        for status in [200, 204, 302, 404, 500, 503] {
            assert_eq!(m.check(status, &[], b""), Ok(()), "{status}");
        }
        assert_eq!(m.check(200, &hdrs(&[("x-maintenance", "1")]), b""), Err(0));
        assert!(!m.needs_body() && m.needs_headers());
    }

    #[test]
    fn a_status_only_match_needs_neither_headers_nor_body() {
        let m = ok(&[&["status", "200"]]);
        assert!(!m.needs_body() && !m.needs_headers());
        assert_eq!(m.check(200, &[], b""), Ok(()));
        assert_eq!(m.check(201, &[], b""), Err(0));
    }

    #[test]
    fn status_lines_take_the_valid_statuses_syntax_and_nginx_plus_negation() {
        let m = ok(&[&["status", "2xx", "!204", "301"]]);
        assert_eq!(m.check(200, &[], b""), Ok(()));
        assert_eq!(m.check(301, &[], b""), Ok(()));
        assert_eq!(m.check(204, &[], b""), Err(0));
        assert_eq!(m.check(302, &[], b""), Err(0));
        // NGINX Plus: `status ! 301-303 307;` is neither 301-303 nor 307.
        let m = ok(&[&["status", "!", "301-303", "307"]]);
        assert_eq!(m.condition(0).to_string(), "status ! 301-303 307");
        for s in [200, 304, 404, 500] {
            assert_eq!(m.check(s, &[], b""), Ok(()), "{s}");
        }
        for s in [301, 302, 303, 307] {
            assert_eq!(m.check(s, &[], b""), Err(0), "{s}");
        }
        // Two status lines must both hold.
        let m = ok(&[&["status", "2xx"], &["status", "!204"]]);
        assert_eq!(m.check(200, &[], b""), Ok(()));
        assert_eq!(m.check(204, &[], b""), Err(1));
        assert_eq!(m.check(500, &[], b""), Err(0));
    }

    #[test]
    fn header_tests() {
        let h = hdrs(&[
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("X-Mode", "active"),
        ]);
        let pass = |line: &[&str]| ok(&[line]).check(200, &h, b"") == Ok(());
        // Presence, without regard to the case of the name.
        assert!(pass(&["header", "x-mode"]));
        assert!(pass(&["header", "X-MODE"]));
        assert!(!pass(&["header", "X-Other"]));
        assert!(pass(&["header", "!", "X-Other"]));
        assert!(pass(&["header", "!X-Other"]));
        assert!(!pass(&["header", "!", "x-mode"]));
        // Exact values: the value's case counts.
        assert!(pass(&["header", "X-Mode", "=", "active"]));
        assert!(!pass(&["header", "X-Mode", "=", "Active"]));
        assert!(!pass(&["header", "X-Mode", "=", "activ"]));
        assert!(pass(&["header", "X-Mode", "!=", "standby"]));
        assert!(!pass(&["header", "X-Mode", "!=", "active"]));
        // A field given twice: = and ~ need one value, != and !~ need none.
        assert!(pass(&["header", "Set-Cookie", "=", "b=2"]));
        assert!(!pass(&["header", "Set-Cookie", "!=", "b=2"]));
        assert!(pass(&["header", "Set-Cookie", "~", "^b="]));
        assert!(!pass(&["header", "Set-Cookie", "!~", "^b="]));
        assert!(pass(&["header", "Set-Cookie", "!~", "^c="]));
        // A missing field fails every test of its value, negated or not.
        for op in ["=", "!=", "~", "!~"] {
            assert!(!pass(&["header", "X-Other", op, "x"]), "{op}");
        }
        // Regular expressions find a match anywhere unless anchored.
        assert!(pass(&["header", "X-Mode", "~", "tiv"]));
        assert!(!pass(&["header", "X-Mode", "~", "^tiv"]));
        assert!(pass(&["header", "X-Mode", "~", "(?i)ACTIVE"]));
    }

    #[test]
    fn body_tests_see_at_most_body_max_bytes() {
        let m = ok(&[&["body", "~", "needle"], &["body_max", "1k"]]);
        assert_eq!(m.body_max(), 1024);
        let mut body = vec![b'.'; 1000];
        body.extend_from_slice(b"needle");
        assert_eq!(m.check(200, &[], &body), Ok(()));
        // The needle straddles the limit: not seen.
        let mut body = vec![b'.'; 1020];
        body.extend_from_slice(b"needle");
        assert_eq!(m.check(200, &[], &body), Err(0));
        let m = ok(&[&["body", "!~", "maintenance"]]);
        assert_eq!(m.check(200, &[], b"all good"), Ok(()));
        assert_eq!(m.check(200, &[], b"in maintenance mode"), Err(0));
        assert_eq!(m.check(200, &[], b""), Ok(()));
        // Bytes that are not UTF-8 are matched as bytes.
        let m = ok(&[&["body", "~", r"(?-u)\xff\x00ok"]]);
        assert_eq!(m.check(200, &[], b"\x01\xff\x00ok"), Ok(()));
        assert!(m.needs_body() && !m.needs_headers());
    }

    #[test]
    fn body_max_limits() {
        assert_eq!(ok(&[&["status", "200"]]).body_max(), DEFAULT_BODY_MAX);
        assert_eq!(
            ok(&[&["body_max", "1m"], &["status", "200"]]).body_max(),
            1 << 20
        );
        assert_eq!(ok(&[&["body_max", "1"], &["status", "200"]]).body_max(), 1);
        let reason = "body_max must be a size from 1 to 1m (e.g. 64k)";
        for v in ["2m", "1025k", "0", "lots", "", "-1"] {
            assert_eq!(
                err(&[&["body_max", v]]),
                format!(
                    "invalid parameter \"{v}\" in \"body_max\" of \"upstream_healthcheck_match\" \
                     block, {reason}"
                )
            );
        }
        assert_eq!(
            err(&[&["body_max", "1k"], &["body_max", "2k"]]),
            "\"body_max\" is duplicate in \"upstream_healthcheck_match\" block"
        );
    }

    #[test]
    fn malformed_lines_are_refused_in_nginx_words() {
        assert_eq!(
            err(&[&["foo", "bar"]]),
            "invalid condition \"foo\" in \"upstream_healthcheck_match\" block"
        );
        assert_eq!(
            err(&[&["Status", "200"]]),
            "invalid condition \"Status\" in \"upstream_healthcheck_match\" block"
        );
        assert_eq!(
            err(&[&[]]),
            "invalid condition \"\" in \"upstream_healthcheck_match\" block"
        );
        for (line, what) in [
            (&["status"][..], "status"),
            (&["status", "!"], "status"),
            (&["header"], "header"),
            (&["header", "X", "="], "header"),
            (&["header", "X", "=", "a", "b"], "header"),
            (&["header", "!", "X", "Y"], "header"),
            (&["body"], "body"),
            (&["body", "~"], "body"),
            (&["body", "~", "a", "b"], "body"),
            (&["body_max"], "body_max"),
            (&["body_max", "1k", "2k"], "body_max"),
        ] {
            assert_eq!(
                err(&[line]),
                format!(
                    "invalid number of arguments in \"{what}\" of \"upstream_healthcheck_match\" block"
                ),
                "{line:?}"
            );
        }
        assert_eq!(
            err(&[&["header", "X", "==", "a"]]),
            "invalid parameter \"==\" in \"header\" of \"upstream_healthcheck_match\" block, \
             the operator must be \"=\", \"!=\", \"~\" or \"!~\""
        );
        assert_eq!(
            err(&[&["body", "=", "a"]]),
            "invalid parameter \"=\" in \"body\" of \"upstream_healthcheck_match\" block, \
             the operator must be \"~\" or \"!~\""
        );
        assert_eq!(
            err(&[&["header", "Content Type"]]),
            "invalid parameter \"Content Type\" in \"header\" of \"upstream_healthcheck_match\" \
             block, a header name is letters, digits and !#$%&'*+-.^_`|~"
        );
        assert_eq!(
            err(&[&["status", "2yy"]]),
            "invalid parameter \"2yy\" in \"status\" of \"upstream_healthcheck_match\" block, \
             expected a status (200), a range (200-399 or 2xx) or an exclusion (!502)"
        );
        assert_eq!(
            err(&[&["status", "200", "!200"]]),
            "invalid parameter \"200\" in \"status\" of \"upstream_healthcheck_match\" block, \
             every status it names is excluded"
        );
        assert_eq!(
            err(&[&["status", "!", "!302"]]),
            "invalid parameter \"!302\" in \"status\" of \"upstream_healthcheck_match\" block, \
             an entry after a \"!\" that excludes the whole list cannot have a \"!\" of its own"
        );
    }

    #[test]
    fn bad_regular_expressions_are_refused_with_a_one_line_reason() {
        let msg = err(&[&["body", "~", "(unclosed"]]);
        assert_eq!(
            msg,
            "invalid regular expression \"(unclosed\" in \"body\" of \"upstream_healthcheck_match\" \
             block, unclosed group"
        );
        let msg = err(&[&["header", "X", "!~", "a{2,1}"]]);
        assert!(
            msg.starts_with(
                "invalid regular expression \"a{2,1}\" in \"header\" of \
                 \"upstream_healthcheck_match\" block, "
            ),
            "{msg}"
        );
        // Backreferences and look-around would need backtracking: refused.
        for re in [r"(a)\1", "(?=a)", "(?<!a)b"] {
            let msg = err(&[&["body", "~", re]]);
            assert!(msg.starts_with("invalid regular expression"), "{msg}");
        }
        // A pattern that compiles to more than the limit.
        let msg = err(&[&["body", "~", r"\w{1000}\w{1000}\w{1000}"]]);
        assert!(msg.ends_with("it compiles too big (at most 1m)"), "{msg}");
        // Not UTF-8.
        let b = MatchBuilder::default().add(&[b"body", b"~", b"\xff"]);
        assert_eq!(
            b.unwrap_err().to_string(),
            "invalid regular expression \"\\xFF\" in \"body\" of \"upstream_healthcheck_match\" \
             block, it is not valid UTF-8"
        );
        for m in [
            err(&[&["body", "~", "(\n"]]),
            err(&[&["body", "~", "[z-a]"]]),
        ] {
            assert!(m.bytes().all(|b| (0x20..0x7f).contains(&b)), "{m:?}");
        }
    }

    #[test]
    fn an_empty_block_is_refused() {
        assert_eq!(
            err(&[]),
            "no conditions are inside \"upstream_healthcheck_match\" block \"m\""
        );
        // body_max alone is no condition.
        assert_eq!(
            err(&[&["body_max", "1k"]]),
            "no conditions are inside \"upstream_healthcheck_match\" block \"m\""
        );
    }

    #[test]
    fn conditions_display_as_written_on_one_printable_line() {
        for (line, shown) in [
            (&["header", "X-A"][..], "header X-A"),
            (&["header", "!", "X-A"], "header ! X-A"),
            (&["header", "!X-A"], "header ! X-A"),
            (&["header", "X-A", "=", "a b"], r#"header X-A = "a b""#),
            (
                &["header", "X-A", "!=", "\"q\""],
                r#"header X-A != "\"q\"""#,
            ),
            (
                &["header", "X-A", "!~", r"^\d+$"],
                r#"header X-A !~ "^\d+$""#,
            ),
            (&["body", "!~", "down\n"], r#"body !~ "down\x0A""#),
            (&["body", "~", "é"], r#"body ~ "\xC3\xA9""#),
            (&["status", "2xx", "!204"], "status 2xx !204"),
        ] {
            let m = ok(&[line]);
            let text = m.condition(0).to_string();
            assert_eq!(text, shown);
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)));
        }
        let m = MatchBuilder::default();
        let mut m = m;
        m.add(&[b"header", b"X", b"=", b"\xff\x00"]).unwrap();
        let m = m.finish(b"m").unwrap();
        assert_eq!(m.condition(0).to_string(), r#"header X = "\xFF\x00""#);
    }

    #[test]
    fn matching_is_linear_where_backtracking_is_exponential() {
        // `(a|aa)*b` on a run of 'a's without a 'b' takes a backtracking engine exponential
        // time; here one pass over 1 MiB.
        let m = ok(&[&["body", "~", "(a|aa)*b"], &["body_max", "1m"]]);
        let body = vec![b'a'; 1 << 20];
        let t = std::time::Instant::now();
        assert_eq!(m.check(200, &[], &body), Err(0));
        // Generous: an unoptimized build does this in well under a second.
        assert!(t.elapsed() < std::time::Duration::from_secs(20));
        let m = ok(&[&["body", "~", "^(a+)+$"], &["body_max", "1m"]]);
        let mut body = vec![b'a'; (1 << 20) - 1];
        body.push(b'!');
        assert_eq!(m.check(200, &[], &body), Err(0));
        body.pop();
        assert_eq!(m.check(200, &[], &body), Ok(()));
    }
}
