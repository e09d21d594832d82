//! The control API's requests and answers: lua-resty-uh's `t`/`u`/`p`/`a`/`ttl` parameters,
//! validated into a command, and its JSON envelope for the answers.

use core::fmt::{self, Write};

use crate::query::QueryError;
use crate::render::json::write_json_str;

/// The longest `ttl` accepted: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// What `a=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `a=set`; a ttl of 0 means no expiry.
    Set {
        ttl_secs: u64,
    },
    Del,
    Get,
}

/// What `t=` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `t=ex&u=UPSTREAM`: an upstream excluded from checking.
    Exclusion { upstream: String },
    /// `t=gray&u=UPSTREAM&p=PEER`: a peer forced down.
    ManualDown { upstream: String, peer: String },
}

/// One control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// No parameters: list every exclusion and manual down.
    List,
    Apply {
        subject: Subject,
        action: Action,
    },
}

impl Command {
    /// Set and del change production traffic, so they must come as POST.
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Command::Apply {
                action: Action::Set { .. } | Action::Del,
                ..
            }
        )
    }
}

fn bad(message: String) -> QueryError {
    QueryError {
        status: 400,
        message,
    }
}

/// Which module's upstreams a control request addresses (`k=`): a name can exist in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `k=http`, the default.
    Http,
    /// `k=stream`: the stream module's upstreams.
    Stream,
}

/// Takes `k=` out of the parameters: the kind of upstream the rest addresses.
pub fn take_kind(params: &mut Vec<(String, String)>) -> Result<Kind, QueryError> {
    let mut kind = None;
    let mut err = None;
    params.retain(|(name, value)| {
        if name != "k" {
            return true;
        }
        if kind.is_some() {
            err = Some(bad("parameter \"k\" is repeated".to_owned()));
        }
        kind = Some(match value.as_str() {
            "http" => Kind::Http,
            "stream" => Kind::Stream,
            _ => {
                err = Some(bad(format!(
                    "unknown k {:?}, expected \"http\" or \"stream\"",
                    shortened(value)
                )));
                Kind::Http
            }
        });
        false
    });
    match err {
        Some(e) => Err(e),
        None => Ok(kind.unwrap_or(Kind::Http)),
    }
}

/// Validates the decoded parameters of a control request.
pub fn parse_command(params: &[(String, String)]) -> Result<Command, QueryError> {
    const KNOWN: [&str; 5] = ["t", "u", "p", "a", "ttl"];
    for (i, (name, _)) in params.iter().enumerate() {
        if !KNOWN.contains(&name.as_str()) {
            return Err(bad(format!("unknown parameter {:?}", shortened(name))));
        }
        if params[..i].iter().any(|(n, _)| n == name) {
            return Err(bad(format!("parameter {name:?} is repeated")));
        }
    }
    if params.is_empty() {
        return Ok(Command::List);
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let need = |name: &str| match get(name) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(bad(format!("missing parameter {name:?}"))),
    };

    let t = need("t")?;
    let upstream = need("u")?;
    let subject = match t.as_str() {
        "ex" => {
            if get("p").is_some() {
                return Err(bad("parameter \"p\" is not allowed with t=ex".to_owned()));
            }
            Subject::Exclusion { upstream }
        }
        "gray" => Subject::ManualDown {
            upstream,
            peer: need("p")?,
        },
        _ => return Err(bad(format!("unknown t {t:?}, expected \"ex\" or \"gray\""))),
    };
    let a = need("a")?;
    let ttl = get("ttl");
    let action = match a.as_str() {
        "set" => Action::Set {
            ttl_secs: ttl.map_or(Ok(0), parse_ttl)?,
        },
        "del" | "get" if ttl.is_some() => {
            return Err(bad(
                "parameter \"ttl\" is only allowed with a=set".to_owned()
            ))
        }
        "del" => Action::Del,
        "get" => Action::Get,
        _ => {
            return Err(bad(format!(
                "unknown a {a:?}, expected \"set\", \"del\" or \"get\""
            )))
        }
    };
    Ok(Command::Apply { subject, action })
}

/// Longest unknown parameter name echoed back whole, in bytes.
const MAX_ECHOED_NAME: usize = 32;

/// `name`, cut to `MAX_ECHOED_NAME` bytes (on a character boundary) with `...` when longer.
fn shortened(name: &str) -> String {
    if name.len() <= MAX_ECHOED_NAME {
        return name.to_owned();
    }
    let mut end = MAX_ECHOED_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &name[..end])
}

/// Whether a request's `Content-Type` is a form: the media type, before any parameters,
/// is `application/x-www-form-urlencoded` (case-insensitive), exactly.
pub fn is_form(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

fn parse_ttl(v: &str) -> Result<u64, QueryError> {
    let ok = !v.is_empty() && v.len() <= 8 && v.bytes().all(|b| b.is_ascii_digit());
    match v.parse::<u64>() {
        Ok(n) if ok && n <= MAX_TTL_SECS => Ok(n),
        _ => Err(bad(format!(
            "invalid ttl {v:?}, expected seconds from 0 to {MAX_TTL_SECS}"
        ))),
    }
}

/// One exclusion or manual down, for `a=get` and the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub upstream: String,
    /// `None` for an exclusion.
    pub peer: Option<String>,
    /// Seconds left, 0 when it does not expire.
    pub ttl_secs: u64,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `a=set`
    Set,
    /// `a=del`
    Deleted,
    /// `a=get`: the entry, if any.
    Get(Option<Entry>),
    /// No parameters: every entry.
    List(Vec<Entry>),
}

/// Writes an answer in lua-resty-uh's envelope, with its words for `msg`.
pub fn render_answer(out: &mut impl Write, answer: &Answer) -> fmt::Result {
    out.write_str("{\"status\":\"ok\",\"err_msg\":\"\",\"msg\":")?;
    match answer {
        Answer::Set => out.write_str("\"Set into shm succeded\"")?,
        Answer::Deleted => out.write_str("\"Delete succeded\"")?,
        Answer::Get(None) => out.write_str("\"not found\"")?,
        Answer::Get(Some(e)) => write!(out, "\"found\",\"ttl\":{}", e.ttl_secs)?,
        Answer::List(entries) => {
            out.write_str("{\"exclusions\":[")?;
            write_entries(out, entries.iter().filter(|e| e.peer.is_none()))?;
            out.write_str("],\"manual_downs\":[")?;
            write_entries(out, entries.iter().filter(|e| e.peer.is_some()))?;
            out.write_str("]}")?;
        }
    }
    out.write_char('}')
}

fn write_entries<'a>(
    out: &mut impl Write,
    entries: impl Iterator<Item = &'a Entry>,
) -> fmt::Result {
    for (i, e) in entries.enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        out.write_str("{\"upstream\":")?;
        write_json_str(out, &e.upstream)?;
        if let Some(peer) = &e.peer {
            out.write_str(",\"peer\":")?;
            write_json_str(out, peer)?;
        }
        write!(out, ",\"ttl\":{}}}", e.ttl_secs)?;
    }
    Ok(())
}

/// Seconds left until `until_ms` (monotonic), rounded up; 0 for "never expires".
pub fn ttl_left(until_ms: u64, now_ms: u64) -> u64 {
    if until_ms == u64::MAX {
        0
    } else {
        until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
    }
}

/// The monotonic time a `ttl` of `secs` ends at; `u64::MAX` for 0 (no expiry).
pub fn expiry(now_ms: u64, secs: u64) -> u64 {
    if secs == 0 {
        u64::MAX
    } else {
        now_ms.saturating_add(secs * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &[(&str, &str)]) -> Result<Command, QueryError> {
        let v: Vec<(String, String)> = q
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        parse_command(&v)
    }

    fn err(q: &[(&str, &str)]) -> (u16, String) {
        let e = p(q).unwrap_err();
        (e.status, e.message)
    }

    fn ex(u: &str) -> Subject {
        Subject::Exclusion {
            upstream: u.to_owned(),
        }
    }

    #[test]
    fn commands_in_lua_resty_uh_form() {
        assert_eq!(p(&[]).unwrap(), Command::List);
        assert_eq!(
            p(&[("t", "ex"), ("u", "b"), ("a", "set"), ("ttl", "30")]).unwrap(),
            Command::Apply {
                subject: ex("b"),
                action: Action::Set { ttl_secs: 30 }
            }
        );
        assert_eq!(
            p(&[("t", "ex"), ("u", "b"), ("a", "set")]).unwrap(),
            Command::Apply {
                subject: ex("b"),
                action: Action::Set { ttl_secs: 0 }
            }
        );
        assert_eq!(
            p(&[
                ("t", "gray"),
                ("u", "b"),
                ("a", "del"),
                ("p", "127.0.0.1:80")
            ])
            .unwrap(),
            Command::Apply {
                subject: Subject::ManualDown {
                    upstream: "b".into(),
                    peer: "127.0.0.1:80".into()
                },
                action: Action::Del
            }
        );
        assert!(!p(&[("t", "ex"), ("u", "b"), ("a", "get")])
            .unwrap()
            .changes_state());
        assert!(p(&[("t", "ex"), ("u", "b"), ("a", "del")])
            .unwrap()
            .changes_state());
        assert!(!Command::List.changes_state());
    }

    #[test]
    fn a_form_is_its_media_type_exactly_with_any_parameters() {
        for ct in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded",
            "application/x-www-form-urlencoded; charset=utf-8",
            "application/x-www-form-urlencoded;charset=UTF-8",
            "application/x-www-form-urlencoded ; charset=utf-8",
        ] {
            assert!(is_form(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "application/x-www-form-urlencodedXYZ",
            "application/x-www-form-urlencoded-not",
            "application/x-www-form",
            "multipart/form-data",
            "application/json",
            "",
        ] {
            assert!(!is_form(ct.as_bytes()), "{ct}");
        }
    }

    #[test]
    fn unknown_parameter_names_are_echoed_shortened() {
        let long = "n".repeat(1024);
        let e = parse_command(&[(long, String::new())]).unwrap_err();
        assert_eq!(
            e.message,
            format!("unknown parameter \"{}...\"", "n".repeat(32))
        );
        let exact = "m".repeat(32);
        let e = parse_command(&[(exact.clone(), String::new())]).unwrap_err();
        assert_eq!(e.message, format!("unknown parameter \"{exact}\""));
        // Cut on a character boundary: 31 ASCII bytes then a two-byte character.
        let name = format!("{}\u{e9}\u{e9}", "x".repeat(31));
        let e = parse_command(&[(name, String::new())]).unwrap_err();
        assert_eq!(
            e.message,
            format!("unknown parameter \"{}...\"", "x".repeat(31))
        );
    }

    #[test]
    fn bad_input_is_a_400_naming_the_parameter() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("t", "x"), ("u", "b"), ("a", "get")],
                "unknown t \"x\", expected \"ex\" or \"gray\"",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("a", "put")],
                "unknown a \"put\", expected \"set\", \"del\" or \"get\"",
            ),
            (&[("t", "ex"), ("a", "get")], "missing parameter \"u\""),
            (
                &[("t", "ex"), ("u", ""), ("a", "get")],
                "missing parameter \"u\"",
            ),
            (
                &[("t", "gray"), ("u", "b"), ("a", "get")],
                "missing parameter \"p\"",
            ),
            (&[("u", "b"), ("a", "get")], "missing parameter \"t\""),
            (&[("t", "ex"), ("u", "b")], "missing parameter \"a\""),
            (
                &[("t", "ex"), ("u", "b"), ("a", "set"), ("ttl", "-1")],
                "invalid ttl \"-1\", expected seconds from 0 to 2592000",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("a", "set"), ("ttl", "2592001")],
                "invalid ttl \"2592001\", expected seconds from 0 to 2592000",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("a", "set"), ("ttl", "1.5")],
                "invalid ttl \"1.5\", expected seconds from 0 to 2592000",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("a", "set"), ("ttl", "")],
                "invalid ttl \"\", expected seconds from 0 to 2592000",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("a", "get"), ("ttl", "5")],
                "parameter \"ttl\" is only allowed with a=set",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("u", "c"), ("a", "get")],
                "parameter \"u\" is repeated",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("a", "get"), ("x", "1")],
                "unknown parameter \"x\"",
            ),
            (
                &[("t", "ex"), ("u", "b"), ("p", "1:2"), ("a", "get")],
                "parameter \"p\" is not allowed with t=ex",
            ),
        ];
        for (q, msg) in cases {
            assert_eq!(err(q), (400, msg.to_string()), "{q:?}");
        }
    }

    fn answer(a: &Answer) -> String {
        let mut s = String::new();
        render_answer(&mut s, a).unwrap();
        s
    }

    #[test]
    fn answers_use_lua_resty_uh_words() {
        assert_eq!(
            answer(&Answer::Set),
            r#"{"status":"ok","err_msg":"","msg":"Set into shm succeded"}"#
        );
        assert_eq!(
            answer(&Answer::Deleted),
            r#"{"status":"ok","err_msg":"","msg":"Delete succeded"}"#
        );
        assert_eq!(
            answer(&Answer::Get(None)),
            r#"{"status":"ok","err_msg":"","msg":"not found"}"#
        );
        let e = Entry {
            upstream: "b".into(),
            peer: None,
            ttl_secs: 12,
        };
        assert_eq!(
            answer(&Answer::Get(Some(e))),
            r#"{"status":"ok","err_msg":"","msg":"found","ttl":12}"#
        );
    }

    #[test]
    fn the_list_separates_exclusions_and_manual_downs() {
        let list = Answer::List(vec![
            Entry {
                upstream: "a\"b".into(),
                peer: None,
                ttl_secs: 0,
            },
            Entry {
                upstream: "b".into(),
                peer: Some("127.0.0.1:1".into()),
                ttl_secs: 5,
            },
        ]);
        let s = answer(&list);
        assert_eq!(
            s,
            r#"{"status":"ok","err_msg":"","msg":{"exclusions":[{"upstream":"a\"b","ttl":0}],"manual_downs":[{"upstream":"b","peer":"127.0.0.1:1","ttl":5}]}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["msg"]["manual_downs"][0]["ttl"], 5);
    }

    #[test]
    fn ttl_arithmetic() {
        assert_eq!(expiry(1000, 0), u64::MAX);
        assert_eq!(expiry(1000, 30), 31_000);
        assert_eq!(ttl_left(u64::MAX, 5), 0);
        assert_eq!(ttl_left(31_000, 1000), 30);
        assert_eq!(ttl_left(31_000, 30_500), 1);
        assert_eq!(ttl_left(31_000, 31_000), 1);
    }

    #[test]
    fn k_picks_the_kind_and_leaves_the_rest() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let mut params = p(&[("t", "ex"), ("k", "stream"), ("u", "db")]);
        assert_eq!(take_kind(&mut params), Ok(Kind::Stream));
        assert_eq!(params, p(&[("t", "ex"), ("u", "db")]));
        let mut params = p(&[("t", "ex")]);
        assert_eq!(take_kind(&mut params), Ok(Kind::Http));
        let mut params = p(&[("k", "mail")]);
        assert_eq!(
            take_kind(&mut params).unwrap_err().message,
            "unknown k \"mail\", expected \"http\" or \"stream\""
        );
        let mut params = p(&[("k", "http"), ("k", "stream")]);
        assert_eq!(take_kind(&mut params).unwrap_err().status, 400);
    }
}
