//! The status request's query string: format, upstream and state filters, page refresh.

use crate::render::{Snapshot, UpstreamSnapshot};

/// Longest accepted parameter name or value, in bytes after decoding.
pub const MAX_ARG_LEN: usize = 1024;

/// Refresh interval bounds of the HTML page, in seconds.
pub const REFRESH_RANGE: core::ops::RangeInclusive<u32> = 1..=3600;

/// Output format of the status page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Prometheus,
    Html,
}

impl Format {
    /// `text`, `json`, `prometheus` or `html`, exactly.
    pub fn parse(v: &[u8]) -> Option<Format> {
        match v {
            b"text" => Some(Format::Text),
            b"json" => Some(Format::Json),
            b"prometheus" => Some(Format::Prometheus),
            b"html" => Some(Format::Html),
            _ => None,
        }
    }

    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain",
            Format::Json => "application/json",
            Format::Prometheus => "text/plain; version=0.0.4",
            Format::Html => "text/html; charset=utf-8",
        }
    }
}

/// Which peers `?status=` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFilter {
    Up,
    Down,
}

/// A parsed status request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusQuery {
    pub format: Format,
    /// Only this upstream.
    pub upstream: Option<String>,
    /// Only peers in this state.
    pub state: Option<StateFilter>,
    /// Seconds between reloads of the HTML page.
    pub refresh: Option<u32>,
}

/// A request the status page refuses: `status` is the HTTP status (400 or 404).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    pub status: u16,
    pub message: String,
}

impl QueryError {
    fn bad(message: String) -> QueryError {
        QueryError {
            status: 400,
            message,
        }
    }
}

/// Decodes `%XX` escapes (either case) and `+` as a space; `None` on a malformed escape.
pub fn url_decode(v: &[u8]) -> Option<Vec<u8>> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' => {
                let hi = hex(*v.get(i + 1)?)?;
                let lo = hex(*v.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Splits `a=1&b=2` into decoded UTF-8 pairs, in order. Empty segments are skipped; a name
/// without `=` has an empty value. 400 on a bad escape, non-UTF-8 text, or a name or value
/// longer than `MAX_ARG_LEN` bytes.
pub fn parse_args(args: &[u8]) -> Result<Vec<(String, String)>, QueryError> {
    let mut pairs = Vec::new();
    for seg in args.split(|&b| b == b'&').filter(|s| !s.is_empty()) {
        let (k, v) = match seg.iter().position(|&b| b == b'=') {
            Some(i) => (&seg[..i], &seg[i + 1..]),
            None => (seg, &b""[..]),
        };
        let k = decode_one(k, None)?;
        let v = decode_one(v, Some(&k))?;
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// Decodes one name (`of` is `None`) or the value of parameter `of`.
fn decode_one(raw: &[u8], of: Option<&str>) -> Result<String, QueryError> {
    let what = || match of {
        Some(k) => format!("the value of parameter {k:?}"),
        None => "a parameter name".to_owned(),
    };
    // Every escape shrinks the text, so a raw length within 3x the limit may still fit.
    if raw.len() > 3 * MAX_ARG_LEN {
        return Err(QueryError::bad(format!(
            "{} is longer than {MAX_ARG_LEN} bytes",
            what()
        )));
    }
    let bytes = url_decode(raw)
        .ok_or_else(|| QueryError::bad(format!("bad percent-encoding in {}", what())))?;
    if bytes.len() > MAX_ARG_LEN {
        return Err(QueryError::bad(format!(
            "{} is longer than {MAX_ARG_LEN} bytes",
            what()
        )));
    }
    String::from_utf8(bytes).map_err(|_| QueryError::bad(format!("{} is not UTF-8", what())))
}

/// Parses the status request's arguments (`r->args`). Unknown parameters are ignored; a known
/// one given twice is an error.
pub fn parse_status_query(args: &[u8], default: Format) -> Result<StatusQuery, QueryError> {
    let mut q = StatusQuery {
        format: default,
        upstream: None,
        state: None,
        refresh: None,
    };
    let mut seen = [false; 4];
    for (k, v) in parse_args(args)? {
        let slot = match k.as_str() {
            "format" => 0,
            "upstream" => 1,
            "status" => 2,
            "refresh" => 3,
            _ => continue,
        };
        if seen[slot] {
            return Err(QueryError::bad(format!("parameter {k:?} is repeated")));
        }
        seen[slot] = true;
        match slot {
            0 => {
                q.format = Format::parse(v.as_bytes())
                    .ok_or_else(|| QueryError::bad(format!("unknown format {v:?}")))?;
            }
            1 => q.upstream = Some(v),
            2 => {
                q.state = Some(match v.as_str() {
                    "up" => StateFilter::Up,
                    "down" => StateFilter::Down,
                    _ => return Err(QueryError::bad(format!("unknown status {v:?}"))),
                });
            }
            _ => {
                let n = Some(v.as_str())
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u32>().ok())
                    .filter(|n| REFRESH_RANGE.contains(n));
                q.refresh = Some(n.ok_or_else(|| {
                    QueryError::bad(format!(
                        "refresh must be a number of seconds from 1 to 3600, not {v:?}"
                    ))
                })?);
            }
        }
    }
    Ok(q)
}

/// The format of an error answer: the one `format=` asks for when it is given once with a
/// known value, else the location's default (a repeated or unknown `format=` says nothing).
pub fn error_format(args: &[u8], default: Format) -> Format {
    let mut asked = args.split(|&b| b == b'&').filter_map(|seg| {
        let (k, v) = match seg.iter().position(|&b| b == b'=') {
            Some(i) => (&seg[..i], &seg[i + 1..]),
            None => (seg, &b""[..]),
        };
        (url_decode(k)? == b"format").then(|| url_decode(v))
    });
    match (asked.next(), asked.next()) {
        (Some(Some(v)), None) => Format::parse(&v).unwrap_or(default),
        _ => default,
    }
}

/// Keeps what the query asks for: only the named upstream (404 when there is none by that
/// name), only peers in the asked state (`down` true counts as down, config-down included).
/// Upstreams left without peers stay, with empty lists.
pub fn filter(mut snap: Snapshot, q: &StatusQuery) -> Result<Snapshot, QueryError> {
    if let Some(name) = &q.upstream {
        snap.upstreams.retain(|u| &u.name == name);
        if snap.upstreams.is_empty() {
            return Err(unknown_upstream(name));
        }
    }
    if let Some(state) = q.state {
        for u in &mut snap.upstreams {
            keep_state(u, state);
        }
    }
    Ok(snap)
}

/// The 404 of `?upstream=` naming no upstream.
pub fn unknown_upstream(name: &str) -> QueryError {
    QueryError {
        status: 404,
        message: format!("unknown upstream {name:?}"),
    }
}

/// Keeps the peers of `u` in `state` (`down` true counts as down, config-down included).
pub fn keep_state(u: &mut UpstreamSnapshot, state: StateFilter) {
    let want_down = state == StateFilter::Down;
    u.primary.retain(|p| p.down == want_down);
    u.backup.retain(|p| p.down == want_down);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::PeerSnapshot;

    fn q(args: &str) -> Result<StatusQuery, QueryError> {
        parse_status_query(args.as_bytes(), Format::Text)
    }

    fn err(args: &str) -> (u16, String) {
        let e = q(args).unwrap_err();
        (e.status, e.message)
    }

    fn bad(msg: &str) -> (u16, String) {
        (400, msg.to_owned())
    }

    #[test]
    fn errors_come_in_the_one_format_asked_for_else_the_default() {
        let f = |args: &str, default| error_format(args.as_bytes(), default);
        assert_eq!(f("format=json&upstream=nope", Format::Text), Format::Json);
        assert_eq!(f("%66ormat=json", Format::Text), Format::Json);
        assert_eq!(f("format=json&format=json", Format::Text), Format::Text);
        assert_eq!(f("format=json&format=text", Format::Text), Format::Text);
        assert_eq!(f("format=text&format=json", Format::Json), Format::Json);
        assert_eq!(f("format=jsonx", Format::Text), Format::Text);
        assert_eq!(f("format=%zz", Format::Json), Format::Json);
        assert_eq!(f("", Format::Json), Format::Json);
        assert_eq!(f("xformat=json", Format::Text), Format::Text);
    }

    #[test]
    fn formats() {
        for (v, f, ct) in [
            ("text", Format::Text, "text/plain"),
            ("json", Format::Json, "application/json"),
            (
                "prometheus",
                Format::Prometheus,
                "text/plain; version=0.0.4",
            ),
            ("html", Format::Html, "text/html; charset=utf-8"),
        ] {
            assert_eq!(Format::parse(v.as_bytes()), Some(f));
            assert_eq!(f.content_type(), ct);
        }
        assert_eq!(Format::parse(b"JSON"), None);
        assert_eq!(Format::parse(b""), None);
        assert_eq!(Format::parse(b"json "), None);
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode(b"a+b%20c%2b%2B"), Some(b"a b c++".to_vec()));
        assert_eq!(
            url_decode(b"%C3%A9%c3%a9"),
            Some("\u{e9}\u{e9}".as_bytes().to_vec())
        );
        assert_eq!(url_decode(b"%00%ff"), Some(vec![0, 0xff]));
        assert_eq!(url_decode(b""), Some(vec![]));
        assert_eq!(url_decode(b"%"), None);
        assert_eq!(url_decode(b"%4"), None);
        assert_eq!(url_decode(b"%4g"), None);
        assert_eq!(url_decode(b"%%41"), None);
        assert_eq!(url_decode(b"x%zz"), None);
    }

    #[test]
    fn argument_splitting() {
        let pairs = parse_args(b"a=1&&b&c=x=y&=v&d=%26%3D").unwrap();
        let want = [("a", "1"), ("b", ""), ("c", "x=y"), ("", "v"), ("d", "&=")];
        assert_eq!(
            pairs,
            want.iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        );
        assert_eq!(parse_args(b"").unwrap(), vec![]);
        assert_eq!(parse_args(b"&").unwrap(), vec![]);
    }

    #[test]
    fn argument_errors() {
        let e = parse_args(b"a=%zz").unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(
            e.message,
            "bad percent-encoding in the value of parameter \"a\""
        );
        let e = parse_args(b"%zz=1").unwrap_err();
        assert_eq!(e.message, "bad percent-encoding in a parameter name");
        let e = parse_args(b"upstream=%ff").unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "the value of parameter \"upstream\" is not UTF-8")
        );
        let e = parse_args(b"%c3=1").unwrap_err();
        assert_eq!(e.message, "a parameter name is not UTF-8");
    }

    #[test]
    fn value_length_limit() {
        let ok = format!("upstream={}", "x".repeat(MAX_ARG_LEN));
        assert_eq!(parse_args(ok.as_bytes()).unwrap()[0].1.len(), MAX_ARG_LEN);
        let escaped = format!("upstream={}", "%41".repeat(MAX_ARG_LEN));
        assert_eq!(
            parse_args(escaped.as_bytes()).unwrap()[0].1.len(),
            MAX_ARG_LEN
        );
        for long in [
            format!("upstream={}", "x".repeat(MAX_ARG_LEN + 1)),
            format!("upstream={}", "%41".repeat(MAX_ARG_LEN + 1)),
            format!("upstream={}", "x".repeat(100_000)),
        ] {
            let e = parse_args(long.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(
                e.message,
                "the value of parameter \"upstream\" is longer than 1024 bytes"
            );
        }
        let e = parse_args("k".repeat(MAX_ARG_LEN + 1).as_bytes()).unwrap_err();
        assert_eq!(e.message, "a parameter name is longer than 1024 bytes");
    }

    #[test]
    fn defaults() {
        let got = parse_status_query(b"", Format::Json).unwrap();
        assert_eq!(
            got,
            StatusQuery {
                format: Format::Json,
                upstream: None,
                state: None,
                refresh: None
            }
        );
        assert_eq!(q("foo=bar&x").unwrap().format, Format::Text);
    }

    #[test]
    fn every_parameter() {
        let got = q("format=html&upstream=my+back%2Fend&status=down&refresh=30&v=1").unwrap();
        assert_eq!(
            got,
            StatusQuery {
                format: Format::Html,
                upstream: Some("my back/end".to_owned()),
                state: Some(StateFilter::Down),
                refresh: Some(30)
            }
        );
        assert_eq!(q("status=up").unwrap().state, Some(StateFilter::Up));
        assert_eq!(q("format=prometheus").unwrap().format, Format::Prometheus);
        assert_eq!(q("format=text").unwrap().format, Format::Text);
        assert_eq!(
            parse_status_query(b"format=json", Format::Html)
                .unwrap()
                .format,
            Format::Json
        );
        assert_eq!(q("upstream=").unwrap().upstream, Some(String::new()));
    }

    #[test]
    fn bad_values() {
        assert_eq!(err("format=xml"), bad("unknown format \"xml\""));
        assert_eq!(err("format="), bad("unknown format \"\""));
        assert_eq!(err("format=a%22b%0a"), bad("unknown format \"a\\\"b\\n\""));
        assert_eq!(err("status=sideways"), bad("unknown status \"sideways\""));
        assert_eq!(err("status=UP"), bad("unknown status \"UP\""));
        for r in ["0", "3601", "-1", "+5", "1.5", "", "abc", "99999999999"] {
            let (status, msg) = err(&format!("refresh={r}"));
            assert_eq!(status, 400);
            assert!(msg.starts_with("refresh must be"), "{r}: {msg}");
        }
        assert_eq!(q("refresh=1").unwrap().refresh, Some(1));
        assert_eq!(q("refresh=3600").unwrap().refresh, Some(3600));
        assert_eq!(q("refresh=0060").unwrap().refresh, Some(60));
    }

    #[test]
    fn repeated_parameters() {
        assert_eq!(
            err("format=json&format=json"),
            bad("parameter \"format\" is repeated")
        );
        assert_eq!(
            err("upstream=a&status=up&upstream=b"),
            bad("parameter \"upstream\" is repeated")
        );
        assert_eq!(
            err("status=up&status"),
            bad("parameter \"status\" is repeated")
        );
        assert_eq!(
            err("refresh=1&refresh=1"),
            bad("parameter \"refresh\" is repeated")
        );
        // Unknown parameters may repeat.
        assert!(q("x=1&x=2&_=3&_=4").is_ok());
    }

    fn peer(name: &str, down: bool, config_down: bool) -> PeerSnapshot {
        PeerSnapshot {
            name: name.to_owned(),
            down,
            config_down,
            ..PeerSnapshot::default()
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            now_ms: 7,
            upstreams: vec![
                UpstreamSnapshot {
                    name: "a".to_owned(),
                    checked: true,
                    primary: vec![peer("a1", false, false), peer("a2", true, false)],
                    backup: vec![peer("a3", true, true)],
                    ..Default::default()
                },
                UpstreamSnapshot {
                    name: "b".to_owned(),
                    checked: false,
                    primary: vec![peer("b1", false, false)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn names(s: &Snapshot) -> Vec<(String, Vec<String>, Vec<String>)> {
        s.upstreams
            .iter()
            .map(|u| {
                let n = |l: &[PeerSnapshot]| l.iter().map(|p| p.name.clone()).collect();
                (u.name.clone(), n(&u.primary), n(&u.backup))
            })
            .collect()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_filter_keeps_everything() {
        assert_eq!(filter(snap(), &q("").unwrap()).unwrap(), snap());
    }

    #[test]
    fn upstream_filter() {
        let got = filter(snap(), &q("upstream=b").unwrap()).unwrap();
        assert_eq!(got.now_ms, 7);
        assert_eq!(names(&got), vec![("b".to_owned(), strs(&["b1"]), vec![])]);
        let e = filter(snap(), &q("upstream=nope%22").unwrap()).unwrap_err();
        assert_eq!(e.status, 404);
        assert_eq!(e.message, "unknown upstream \"nope\\\"\"");
        assert_eq!(
            filter(snap(), &q("upstream=").unwrap()).unwrap_err().status,
            404
        );
    }

    #[test]
    fn state_filter() {
        let got = filter(snap(), &q("status=down").unwrap()).unwrap();
        assert_eq!(
            names(&got),
            vec![
                ("a".to_owned(), strs(&["a2"]), strs(&["a3"])),
                ("b".to_owned(), vec![], vec![])
            ]
        );
        let got = filter(snap(), &q("status=up").unwrap()).unwrap();
        assert_eq!(
            names(&got),
            vec![
                ("a".to_owned(), strs(&["a1"]), vec![]),
                ("b".to_owned(), strs(&["b1"]), vec![])
            ]
        );
        let got = filter(snap(), &q("status=up&upstream=a").unwrap()).unwrap();
        assert_eq!(names(&got), vec![("a".to_owned(), strs(&["a1"]), vec![])]);
    }
}
