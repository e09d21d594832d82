//! Property tests of the pure parsers (`proptest`, 256 cases a property): directive arguments
//! (`parse.rs`), the incremental status-line parser (`status_line.rs`), the whole-response
//! reader (`response.rs`), the match block (`matcher.rs`), percent-decoding (`query.rs`) and
//! etcd membership (`membership.rs`: keys, values, the roster of reserved places).
//! The parsers take bytes from nginx.conf, from the network and from request URIs, so beyond
//! agreeing with reference models they must never panic on any input.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::config::{CheckType, StatusRange, ValidStatuses};
use crate::matcher::MatchBuilder;
use crate::parse::{
    parse_ha_address, parse_healthcheck, parse_request, parse_size, parse_status_format,
    parse_time_ms, parse_valid_statuses, parse_zone_size,
};
use crate::query::{parse_args, parse_status_query, url_decode, Format};
use crate::response::{Limits, Progress as ResponseProgress, ResponseReader};
use crate::status_line::{Progress, StatusLineParser, MAX_INTERIM, MAX_STATUS_LINE};

// ---------------------------------------------------------------------------------------------
// Generators

/// Arbitrary bytes, biased towards the characters the parsers care about.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(
        b"0123456789msShdwMykKgG=-!xX ,.;/\\\"'\t\r\n%+&\x00\x7f\xff\xc3\xa9:[]".to_vec(),
    );
    vec(prop_oneof![3 => interesting, 1 => any::<u8>()], 0..max)
}

/// Arbitrary directive arguments: a few byte strings, some of them `key=value`.
fn args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let key = prop::sample::select(
        crate::parse::KEYS
            .iter()
            .copied()
            .chain(["off", "", "bogus"])
            .collect::<Vec<_>>(),
    );
    let kv = (key, bytes(24)).prop_map(|(k, v)| {
        let mut a = k.as_bytes().to_vec();
        a.push(b'=');
        a.extend_from_slice(&v);
        a
    });
    vec(prop_oneof![kv, bytes(24)], 0..6)
}

fn as_slices(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

/// Pieces of HTTP responses, so generated streams reach the parser's deeper states.
fn http_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"HTTP/1.1 ".to_vec()),
        Just(b"HTTP/1.0 ".to_vec()),
        Just(b"HTTP/".to_vec()),
        Just(b"HTTP/2 ".to_vec()),
        Just(b"100 Continue".to_vec()),
        Just(b"103".to_vec()),
        Just(b"101".to_vec()),
        Just(b"200".to_vec()),
        Just(b" OK".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"Link: </a.css>".to_vec()),
        Just(b"x".repeat(300)),
        (0u16..1000).prop_map(|n| n.to_string().into_bytes()),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    vec(piece, 0..24).prop_map(|v| v.concat())
}

/// Cut points into an input of `len` bytes: sorted, within bounds, repeats allowed (an empty
/// piece is a valid feed too).
fn cuts_for(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|&r| r % (len + 1)).collect();
    c.sort_unstable();
    c
}

// ---------------------------------------------------------------------------------------------
// Reference models

/// The status-line parser fed the whole input at once.
fn whole(input: &[u8]) -> Progress {
    StatusLineParser::new().feed(input)
}

/// The parser fed `input` cut at `cuts`; the answer after the last piece.
fn in_pieces(input: &[u8], cuts: &[usize]) -> Progress {
    let mut p = StatusLineParser::new();
    let mut at = 0;
    for &c in cuts {
        p.feed(&input[at..c]);
        at = c;
    }
    p.feed(&input[at..])
}

/// One entry of `upstream_healthcheck_valid_statuses`, as written and as meant.
#[derive(Clone, Debug)]
enum Entry {
    Code(u16),
    Range(u16, u16),
    Class(u8, bool),
}

impl Entry {
    fn bounds(&self) -> (u16, u16) {
        match *self {
            Entry::Code(c) => (c, c),
            Entry::Range(lo, hi) => (lo, hi),
            Entry::Class(d, _) => (u16::from(d) * 100, u16::from(d) * 100 + 99),
        }
    }

    fn render(&self) -> String {
        match *self {
            Entry::Code(c) => c.to_string(),
            Entry::Range(lo, hi) => format!("{lo}-{hi}"),
            Entry::Class(d, upper) => format!("{d}{}", if upper { "XX" } else { "xx" }),
        }
    }
}

fn entry() -> impl Strategy<Value = (Entry, bool)> {
    let e = prop_oneof![
        (100u16..=599).prop_map(Entry::Code),
        (100u16..=599, 100u16..=599).prop_map(|(a, b)| Entry::Range(a.min(b), a.max(b))),
        (1u8..=5, any::<bool>()).prop_map(|(d, u)| Entry::Class(d, u)),
    ];
    (e, prop::bool::weighted(0.3))
}

/// The meaning of a list of entries, written independently of `ValidStatuses`: the set of
/// valid statuses.
fn model_valid(entries: &[(Entry, bool)], status: u16) -> bool {
    let inside = |e: &Entry| {
        let (lo, hi) = e.bounds();
        lo <= status && status <= hi
    };
    let positives: Vec<&Entry> = entries.iter().filter(|(_, n)| !n).map(|(e, _)| e).collect();
    let allowed = positives.is_empty() || positives.iter().any(|e| inside(e));
    let excluded = entries.iter().any(|(e, n)| *n && inside(e));
    allowed && !excluded
}

/// Whether a list can let a probe pass, written independently of `parse.rs`: every positive
/// entry holds a status a probe reports (101, or 200 and up) that the list finds valid, and
/// exclusions alone leave some status from 200 to 599.
fn model_passable(entries: &[(Entry, bool)]) -> bool {
    let reported = |s: u16| s == 101 || s >= 200;
    let positives: Vec<&Entry> = entries.iter().filter(|(_, n)| !n).map(|(e, _)| e).collect();
    if positives.is_empty() {
        return (200..=599).any(|s| model_valid(entries, s));
    }
    positives.iter().all(|e| {
        let (lo, hi) = e.bounds();
        (lo..=hi).any(|s| reported(s) && model_valid(entries, s))
    })
}

/// A time in milliseconds written with units, largest first, as `1h2m3s4ms` (parts that are
/// zero left out, `0ms` for zero), optionally with spaces after units.
fn format_ms(mut ms: u64, spaced: bool) -> String {
    let units: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)];
    let mut out = Vec::new();
    for (name, scale) in units {
        let n = ms / scale;
        ms %= scale;
        if n > 0 {
            out.push(format!("{n}{name}"));
        }
    }
    if out.is_empty() {
        out.push("0ms".to_owned());
    }
    out.join(if spaced { " " } else { "" })
}

/// Percent-encodes `v` as a browser or curl might: unreserved bytes as they are, a space as
/// `+` or `%20`, every other byte as `%XX` in either case.
fn percent_encode(v: &[u8], plus_for_space: bool, upper_hex: bool) -> Vec<u8> {
    let hex: &[u8; 16] = if upper_hex {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(v.len() * 3);
    for &b in v {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b),
            b' ' if plus_for_space => out.push(b'+'),
            _ => {
                out.push(b'%');
                out.push(hex[usize::from(b >> 4)]);
                out.push(hex[usize::from(b & 15)]);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// parse.rs

proptest! {
    #[test]
    fn directive_parsers_never_panic(a in args(), raw in bytes(64)) {
        let a = as_slices(&a);
        let _ = parse_healthcheck(&a);
        let _ = parse_valid_statuses(&a);
        let _ = parse_ha_address(&a);
        let _ = parse_request(&raw);
        let _ = parse_time_ms(&raw);
        let _ = parse_size(&raw);
        let _ = parse_zone_size(&raw);
    }

    #[test]
    fn error_messages_are_one_printable_line(a in args(), raw in bytes(64)) {
        for r in [
            parse_healthcheck(&as_slices(&a)).err(),
            parse_valid_statuses(&as_slices(&a)).err(),
            parse_ha_address(&as_slices(&a)).err(),
            parse_status_format(a.first().map(Vec::as_slice)).err(),
            parse_request(&raw).err(),
        ]
        .into_iter()
        .flatten()
        {
            let msg = r.as_str();
            prop_assert!(msg.bytes().all(|b| (0x20..0x7f).contains(&b)), "{msg:?}");
        }
    }

    #[test]
    fn parse_request_keeps_the_bytes_or_refuses(raw in bytes(64)) {
        if let Ok(req) = parse_request(&raw) {
            prop_assert_eq!(&req, &raw);
            prop_assert!(raw.ends_with(b"\r\n\r\n") || raw.ends_with(b"\n\n"));
            let sp = raw.iter().position(|&b| b == b' ').unwrap();
            prop_assert!(sp > 0);
            prop_assert!(raw[..sp].iter().all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn well_formed_requests_are_accepted(
        method in "[A-Z]{1,8}",
        path in "/[!-~]{0,30}",
        headers in vec("[A-Za-z-]{1,12}: [ -~]{0,20}", 0..4),
        lf_only in any::<bool>(),
    ) {
        let eol = if lf_only { "\n" } else { "\r\n" };
        let mut req = format!("{method} {path} HTTP/1.0{eol}");
        for h in &headers {
            req.push_str(h);
            req.push_str(eol);
        }
        req.push_str(eol);
        prop_assert_eq!(parse_request(req.as_bytes()), Ok(req.clone().into_bytes()));
    }

    #[test]
    fn accepted_healthchecks_can_do_what_they_say(a in args()) {
        if let Ok(Some(p)) = parse_healthcheck(&as_slices(&a)) {
            prop_assert!(p.jitter_ms < p.interval_ms, "{:?}", p);
            prop_assert!(p.jitter_ms < p.fast_interval_ms, "{:?}", p);
            prop_assert!(p.jitter_ms < p.down_interval_ms, "{:?}", p);
            if p.check_type == CheckType::Tcp {
                prop_assert!(p.host.is_none(), "{:?}", p);
                prop_assert!(!a.iter().any(|x| x.starts_with(b"uri=")), "{:?}", p);
            }
        }
    }

    #[test]
    fn jitter_is_accepted_below_the_interval_only(interval in 1u64..=5000, jitter in 0u64..=6000) {
        let (i, j) = (format!("interval={interval}"), format!("jitter={jitter}ms"));
        let got = parse_healthcheck(&[i.as_bytes(), j.as_bytes()]);
        prop_assert_eq!(got.is_ok(), jitter < interval, "{:?}", got);
    }

    #[test]
    fn ha_prefix_lengths(n in 0u32..300, v6 in any::<bool>()) {
        let (addr, max) = if v6 { ("fd00::5", 128) } else { ("10.0.0.5", 32) };
        let a = format!("{addr}/{n}");
        prop_assert_eq!(parse_ha_address(&[a.as_bytes()]).is_ok(), n <= max);
    }

    #[test]
    fn too_long_times_are_called_too_long_whatever_their_size(n in any::<u64>(), unit in 0usize..5) {
        let (u, scale) = [("", 1u128), ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)][unit];
        let ms = u128::from(n) * scale;
        let a = format!("interval={n}{u}");
        let hc = parse_healthcheck(&[a.as_bytes()]).map_err(|e| e.to_string());
        let ha = parse_ha_address(&[b"127.0.0.10", a.as_bytes()]).map_err(|e| e.to_string());
        for got in [hc.clone().map(|_| ()), ha.map(|_| ())] {
            if ms == 0 {
                prop_assert!(got.unwrap_err().contains("interval must be a positive time"));
            } else if ms > 86_400_000 {
                prop_assert!(got.unwrap_err().ends_with("interval must be at most 24h"));
            } else {
                prop_assert!(got.is_ok(), "{:?}", got);
            }
        }
    }

    #[test]
    fn time_round_trips_through_units(ms in 0u64..=10 * 24 * 3_600_000, spaced in any::<bool>()) {
        let text = format_ms(ms, spaced);
        prop_assert_eq!(parse_time_ms(text.as_bytes()), Some(ms), "{}", text);
    }

    #[test]
    fn single_unit_times(n in any::<u64>()) {
        prop_assert_eq!(parse_time_ms(format!("{n}").as_bytes()), Some(n));
        prop_assert_eq!(parse_time_ms(format!("{n}ms").as_bytes()), Some(n));
        prop_assert_eq!(parse_time_ms(format!("{n}s").as_bytes()), n.checked_mul(1000));
        prop_assert_eq!(parse_time_ms(format!("{n}m").as_bytes()), n.checked_mul(60_000));
        prop_assert_eq!(parse_time_ms(format!("{n}h").as_bytes()), n.checked_mul(3_600_000));
        prop_assert_eq!(parse_time_ms(format!("{n}d").as_bytes()), n.checked_mul(86_400_000));
        // Units must go from the largest down and a bare number cannot follow one.
        prop_assert_eq!(parse_time_ms(format!("{n}ms1s").as_bytes()), None);
        prop_assert_eq!(parse_time_ms(format!("{n}s1s").as_bytes()), None);
        prop_assert_eq!(parse_time_ms(format!("1m{n}").as_bytes()), None);
        prop_assert_eq!(parse_time_ms(format!("-{n}s").as_bytes()), None);
    }

    #[test]
    fn sizes_scale_by_their_suffix(n in 0u64..1 << 40, suffix in 0usize..7) {
        let (s, scale) = [("", 1u64), ("k", 1 << 10), ("K", 1 << 10), ("m", 1 << 20),
                          ("M", 1 << 20), ("g", 1 << 30), ("G", 1 << 30)][suffix];
        let want = n.checked_mul(scale).and_then(|v| usize::try_from(v).ok());
        prop_assert_eq!(parse_size(format!("{n}{s}").as_bytes()), want);
        prop_assert_eq!(
            parse_zone_size(format!("{n}{s}").as_bytes()).ok(),
            want.filter(|&v| v >= 32 * 1024)
        );
    }

    #[test]
    fn valid_statuses_agree_with_the_model(entries in vec(entry(), 1..6)) {
        let rendered: Vec<String> = entries
            .iter()
            .map(|(e, neg)| format!("{}{}", if *neg { "!" } else { "" }, e.render()))
            .collect();
        let args: Vec<&[u8]> = rendered.iter().map(|s| s.as_bytes()).collect();
        let parsed = parse_valid_statuses(&args);
        prop_assert_eq!(
            parsed.is_ok(),
            model_passable(&entries),
            "{:?}: {:?}", rendered, parsed
        );
        let Ok(parsed) = parsed else {
            // The message names one of the entries, or all of them.
            let msg = parsed.unwrap_err().to_string();
            prop_assert!(
                rendered.iter().any(|r| msg.starts_with(&format!("invalid parameter \"{r}\"")))
                    || msg.starts_with(&format!("invalid parameters \"{}\"", rendered.join(" "))),
                "{}", msg
            );
            return Ok(());
        };
        prop_assert_eq!(parsed.entries.len(), entries.len());
        for status in 0..=1000u16 {
            prop_assert_eq!(
                parsed.is_valid(status),
                model_valid(&entries, status),
                "status {} with {:?}", status, rendered
            );
        }
    }

    #[test]
    fn reversed_or_out_of_range_statuses_are_refused(a in 0u16..1000, b in 0u16..1000) {
        let range = format!("{a}-{b}");
        let in_range = |c: u16| (100..=599).contains(&c) && c.to_string().len() == 3;
        // Interim responses (1xx but 101) never reach the verdict: an entry of nothing else is
        // refused.
        let seen = |lo: u16, hi: u16| hi >= 200 || (lo..=hi).contains(&101);
        let want = (in_range(a) && in_range(b) && a <= b && seen(a, b))
            .then_some(ValidStatuses { entries: vec![StatusRange { lo: a, hi: b, negated: false }] });
        prop_assert_eq!(parse_valid_statuses(&[range.as_bytes()]).ok(), want);
        let code = a.to_string();
        prop_assert_eq!(parse_valid_statuses(&[code.as_bytes()]).is_ok(), in_range(a) && seen(a, a));
    }
}

// ---------------------------------------------------------------------------------------------
// status_line.rs

proptest! {
    #[test]
    fn status_line_never_panics_and_ignores_splits(
        input in prop_oneof![vec(any::<u8>(), 0..300), http_soup()],
        raw_cuts in vec(any::<usize>(), 0..12),
    ) {
        let expected = whole(&input);
        let cuts = cuts_for(input.len(), &raw_cuts);
        prop_assert_eq!(in_pieces(&input, &cuts), expected);
        // One byte at a time as well.
        let mut p = StatusLineParser::new();
        for b in &input {
            p.feed(core::slice::from_ref(b));
        }
        prop_assert_eq!(p.feed(&[]), expected);
    }

    #[test]
    fn an_answer_is_final_and_prefixes_agree(input in http_soup(), k in any::<usize>()) {
        let expected = whole(&input);
        let k = k % (input.len() + 1);
        let early = whole(&input[..k]);
        // A prefix either still needs more or already gave the answer of the whole.
        prop_assert!(early == Progress::NeedMore || early == expected, "{:?} vs {:?}", early, expected);
        // Once answered, the parser ignores whatever follows.
        let mut p = StatusLineParser::new();
        let first = p.feed(&input);
        prop_assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\n"), if first == Progress::NeedMore {
            // Not answered yet: whatever the appended line gives.
            let mut all = input.clone();
            all.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            whole(&all)
        } else {
            first
        });
    }

    #[test]
    fn generated_status_lines_parse_to_their_code(
        minor in 0u8..=9,
        code in 100u16..=999,
        spaces in 1usize..4,
        reason in vec(any::<u8>().prop_filter("no line end", |b| *b != b'\r' && *b != b'\n'), 0..200),
        crlf in any::<bool>(),
        interim in vec((prop_oneof![100u16..=100, 102u16..=199], vec("[A-Za-z-]{1,10}: [ -~]{0,40}", 0..4)), 0..3),
        tail in vec(any::<u8>(), 0..64),
        raw_cuts in vec(any::<usize>(), 0..8),
    ) {
        let code = if (100..=199).contains(&code) && code != 101 { code + 100 } else { code };
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut input = Vec::new();
        for (status, headers) in &interim {
            input.extend_from_slice(format!("HTTP/1.1 {status} Interim").as_bytes());
            input.extend_from_slice(eol);
            for h in headers {
                input.extend_from_slice(h.as_bytes());
                input.extend_from_slice(eol);
            }
            input.extend_from_slice(eol);
        }
        input.extend_from_slice(format!("HTTP/1.{minor}{}{code}", " ".repeat(spaces)).as_bytes());
        if !reason.is_empty() {
            input.push(b' ');
            input.extend_from_slice(&reason);
        }
        input.extend_from_slice(eol);
        input.extend_from_slice(&tail);
        let cuts = cuts_for(input.len(), &raw_cuts);
        prop_assert_eq!(in_pieces(&input, &cuts), Progress::Status(code));
    }

    #[test]
    fn endless_lines_are_cut_off_at_the_bound(
        head in prop_oneof![Just(b"HTTP/1.1 200 ".to_vec()), Just(b"HTTP/1.1 103 Hints\r\nX: ".to_vec())],
        filler in any::<u8>().prop_filter("no line end", |b| *b != b'\r' && *b != b'\n'),
        chunk in 1usize..5000,
    ) {
        let mut input = head.clone();
        input.resize(MAX_INTERIM + MAX_STATUS_LINE + 10, filler);
        let cuts: Vec<usize> = (chunk..input.len()).step_by(chunk).collect();
        let got = in_pieces(&input, &cuts);
        prop_assert!(matches!(got, Progress::Invalid(_)), "{:?}", got);
    }
}

// ---------------------------------------------------------------------------------------------
// query.rs

proptest! {
    #[test]
    fn url_decode_inverts_percent_encoding(
        v in vec(any::<u8>(), 0..200),
        plus in any::<bool>(),
        upper in any::<bool>(),
    ) {
        let encoded = percent_encode(&v, plus, upper);
        prop_assert_eq!(url_decode(&encoded), Some(v));
    }

    #[test]
    fn url_decode_leaves_plain_text_alone(v in "[A-Za-z0-9._~/:=&-]{0,100}") {
        prop_assert_eq!(url_decode(v.as_bytes()), Some(v.into_bytes()));
    }

    #[test]
    fn url_decode_never_panics_and_never_grows(v in bytes(200)) {
        if let Some(d) = url_decode(&v) {
            prop_assert!(d.len() <= v.len());
        }
        let _ = parse_args(&v);
        let _ = parse_status_query(&v, Format::Text);
    }

    #[test]
    fn encoded_pairs_come_back(pairs in vec(("[ -~]{0,20}", "\\PC{0,20}"), 0..5)) {
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                let k = String::from_utf8(percent_encode(k.as_bytes(), true, false)).unwrap();
                let v = String::from_utf8(percent_encode(v.as_bytes(), false, true)).unwrap();
                format!("{k}={v}")
            })
            .collect();
        let got = parse_args(query.join("&").as_bytes());
        prop_assert_eq!(got, Ok(pairs));
    }
}

// ---------------------------------------------------------------------------------------------
// matcher.rs: lines from nginx.conf, responses from backends

/// A line of a match block: a keyword, then words biased towards operators and patterns.
fn match_line() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let keyword = prop::sample::select(vec![
        &b"status"[..],
        b"header",
        b"body",
        b"body_max",
        b"!",
        b"",
    ]);
    let word = prop_oneof![
        prop::sample::select(vec![
            b"!".to_vec(),
            b"=".to_vec(),
            b"!=".to_vec(),
            b"~".to_vec(),
            b"!~".to_vec(),
            b"200-399".to_vec(),
            b"!302".to_vec(),
            b"Content-Type".to_vec(),
            b"(a|aa)*b".to_vec(),
            b"(".to_vec(),
            b"64k".to_vec(),
        ]),
        bytes(12),
    ];
    (keyword, vec(word, 0..4)).prop_map(|(k, mut rest)| {
        rest.insert(0, k.to_vec());
        rest
    })
}

proptest! {
    #[test]
    fn match_lines_never_panic_and_messages_are_one_printable_line(
        lines in vec(match_line(), 0..5),
    ) {
        let mut b = MatchBuilder::default();
        for line in &lines {
            if let Err(e) = b.add(&as_slices(line)) {
                let msg = e.as_str();
                prop_assert!(msg.bytes().all(|b| (0x20..0x7f).contains(&b)), "{msg:?}");
            }
        }
        if let Ok(m) = b.finish(b"m") {
            for c in m.conditions() {
                let text = c.to_string();
                prop_assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text:?}");
            }
        }
    }

    /// Whatever a backend sends, `check` answers, names a real condition when it fails, and
    /// looks at no more than `body_max` bytes.
    #[test]
    fn any_response_gets_a_verdict(
        status in 100u16..=599,
        headers in vec((bytes(12), bytes(24)), 0..6),
        body in bytes(300),
        cut in 1usize..200,
    ) {
        let mut b = MatchBuilder::default();
        for line in [
            &[&b"status"[..], b"2xx", b"!204"][..],
            &[b"header", b"Content-Type", b"~", b"json"],
            &[b"header", b"!", b"X-Maintenance"],
            &[b"body", b"~", br#""status"\s*:\s*"ok""#],
            &[b"body", b"!~", b"(a|aa)*b"],
        ] {
            b.add(line).unwrap();
        }
        let body_max = format!("{cut}");
        b.add(&[b"body_max", body_max.as_bytes()]).unwrap();
        let m = b.finish(b"m").unwrap();
        let h: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        match m.check(status, &h, &body) {
            Ok(()) => prop_assert!((200..=299).contains(&status) && status != 204),
            Err(i) => prop_assert!(i < m.conditions().len()),
        }
        // Bytes past body_max never change the verdict.
        let mut longer = body[..body.len().min(cut)].to_vec();
        longer.extend_from_slice(br#"{"status":"ok"} aab"#);
        let short = &body[..body.len().min(cut)];
        prop_assert_eq!(m.check(status, &h, &longer), m.check(status, &h, short));
    }

    /// Patterns that make a backtracking engine take exponential time take one pass here: a
    /// few hundred KiB of adversarial input per case, answered correctly.
    #[test]
    fn adversarial_bodies_are_matched_in_one_pass(
        n in 1usize..(256 * 1024),
        pattern in prop::sample::select(vec!["(a|aa)*b", "^(a+)+$", "(a*)*c", "(a|a?)+z"]),
    ) {
        let mut b = MatchBuilder::default();
        b.add(&[b"body", b"~", pattern.as_bytes()]).unwrap();
        b.add(&[b"body_max", b"1m"]).unwrap();
        let m = b.finish(b"m").unwrap();
        let mut body = vec![b'a'; n];
        body.push(b'!');
        // No b, c or z, and the `!` breaks the anchored run: no match.
        prop_assert_eq!(m.check(200, &[], &body), Err(0));
    }
}

// ---------------------------------------------------------------------------------------------
// Whole responses (`response.rs`)

/// How a generated response frames its body.
#[derive(Clone, Debug)]
enum Framing {
    Length,
    /// Chunks of these sizes (the rest of the body in a last one).
    Chunked(Vec<usize>),
    UntilClose,
}

/// A response with `body`, framed as told, keep-alive or not; the bytes and whether a reader
/// should find the connection reusable.
fn frame(status: u16, body: &[u8], framing: &Framing, close: bool) -> (Vec<u8>, bool) {
    let mut out = format!("HTTP/1.1 {status} X\r\n").into_bytes();
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    match framing {
        Framing::Length => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        Framing::Chunked(sizes) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = body;
            for &n in sizes.iter().chain(core::iter::once(&usize::MAX)) {
                let n = n.min(rest.len());
                if n == 0 {
                    continue;
                }
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Framing::UntilClose => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
    }
    (out, !close && !matches!(framing, Framing::UntilClose))
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::Length),
        vec(1usize..40, 0..6).prop_map(Framing::Chunked),
        Just(Framing::UntilClose),
    ]
}

/// Feeds `input` in pieces cut at `cuts` (positions, any order), then the close.
fn read_in_pieces(limits: Limits, input: &[u8], cuts: &[usize]) -> ResponseProgress {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut reader = ResponseReader::new(limits);
    let mut at = 0;
    for c in cuts.into_iter().chain(core::iter::once(input.len())) {
        let p = reader.feed(&input[at..c]);
        at = c;
        if p != ResponseProgress::NeedMore {
            return p;
        }
    }
    reader.eof()
}

proptest! {
    #[test]
    fn a_whole_response_reads_the_same_however_it_is_split(
        status in (200u16..600).prop_filter("a status with a body", |s| *s != 204 && *s != 304),
        body in vec(any::<u8>(), 0..300),
        framing in framing(),
        close in any::<bool>(),
        keep in 0usize..400,
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let (input, reusable) = frame(status, &body, &framing, close);
        let limits = Limits { body_keep: keep, body_read: 1 << 20, head_request: false };
        let ResponseProgress::Done(r) = read_in_pieces(limits, &input, &cuts) else {
            return Err(TestCaseError::fail("not done"));
        };
        prop_assert_eq!(r.status, status);
        prop_assert_eq!(&r.body[..], &body[..keep.min(body.len())]);
        if reusable {
            prop_assert!(r.reusable);
        }
        prop_assert!(!r.reusable || reusable);
    }

    #[test]
    fn the_response_reader_never_panics(input in http_soup(), cuts in vec(any::<usize>(), 0..8)) {
        let limits = Limits { body_keep: 64, body_read: 256, head_request: false };
        let _ = read_in_pieces(limits, &input, &cuts);
    }
}

// ---------------------------------------------------------------------------------------------
// etcd membership

/// One event of a membership key: (put?, address index, slot busy mask).
fn member_events() -> impl Strategy<Value = Vec<(bool, u8, u8)>> {
    vec((any::<bool>(), 0u8..12, any::<u8>()), 0..80)
}

proptest! {
    #[test]
    fn membership_values_and_keys_never_panic(v in bytes(64), k in bytes(40)) {
        let parsed = crate::membership::parse_value(&v);
        prop_assert!(parsed.error.is_some() || parsed.weight >= 1);
        if let Ok(text) = std::str::from_utf8(&k) {
            if let Some((_, shown)) = crate::membership::parse_addr(text) {
                prop_assert!(shown.len() <= crate::membership::ADDR_MAX);
            }
        }
    }

    /// Whatever keys come and go, the roster gives each admitted address a place of its own
    /// within `max`, refuses the rest, and a full read of what the events left agrees with it.
    #[test]
    fn the_roster_keeps_places_distinct_and_bounded(max in 1usize..6, events in member_events()) {
        use crate::membership::{Op, Roster};
        use std::collections::{BTreeMap, BTreeSet};
        let mut r = Roster::new(max, []);
        // What etcd holds, and which place each admitted address has, as the ops say.
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let mut places: BTreeMap<usize, String> = BTreeMap::new();
        for (put, i, mask) in events {
            let addr = format!("10.0.0.{i}:80");
            let busy = move |o: usize| mask & (1 << (o % 8)) != 0;
            let ops = if put {
                keys.insert(addr.clone());
                r.put(&addr, b"{}", &busy).into_iter().collect()
            } else {
                keys.remove(&addr);
                r.delete(&addr, &busy)
            };
            for op in ops {
                match op {
                    Op::Set { offset, addr, new, .. } => {
                        prop_assert!(offset < max);
                        if new {
                            prop_assert!(places.insert(offset, addr).is_none(), "a taken place");
                        } else {
                            prop_assert_eq!(places.get(&offset), Some(&addr));
                        }
                    }
                    Op::Free { offset } => {
                        prop_assert!(places.remove(&offset).is_some(), "a free place freed");
                    }
                }
            }
            let admitted: BTreeSet<&String> = places.values().collect();
            prop_assert_eq!(admitted.len(), places.len(), "an address in two places");
            prop_assert!(admitted.iter().all(|a| keys.contains(*a)));
            prop_assert_eq!(places.len() + r.refused(), keys.len());
            prop_assert!(places.len() == keys.len().min(max) || places.len() == max);
        }
    }
}
