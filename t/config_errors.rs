//! An operator's typos: every malformed use of the module's directives makes `nginx -t` fail
//! with one `[emerg]` line that names the directive, the bad parameter and the `file:line` of
//! the directive; so does every configuration that parses but cannot do what it says (a `uri=`
//! a tcp check never sends, a status list no probe can pass), and one that is merely useless
//! gets a `[warn]` line at its `file:line`. Well-formed edge cases pass.
mod common;

use common::*;

/// `listen` on a free loopback port: `nginx -t` binds the ports of a config it accepts.
fn listen() -> String {
    format!("listen 127.0.0.1:{};", free_port())
}

/// An upstream `u` with one peer and `directives` inside it, and a server proxying to it.
fn upstream_with(directives: &str) -> String {
    upstream_of("server 127.0.0.1:18081;", directives)
}

/// An upstream `u` with the `servers` lines and `directives` inside it, and a server proxying
/// to it.
fn upstream_of(servers: &str, directives: &str) -> String {
    format!(
        "upstream u {{\n    {servers}\n{directives}\n}}\n\
         server {{\n    {}\n    location / {{ proxy_pass http://u; }}\n}}\n",
        listen()
    )
}

/// `nginx -t` must fail with exactly one `[emerg]` line: `msg` at the config line that contains
/// `needle` (the offending directive).
fn assert_rejected_at(check: &ConfCheck, needle: &str, msg: &str) {
    assert!(
        !check.ok,
        "nginx -t accepted a bad config (expected: {msg}):\n{}\n--- config ---\n{}",
        check.output, check.conf
    );
    let want = check.emerg_line(msg, check.line_of(needle));
    let emerg = check.emerg_lines();
    assert_eq!(
        emerg,
        vec![want.as_str()],
        "\n--- nginx -t output ---\n{}\n--- config ---\n{}",
        check.output,
        check.conf
    );
    assert!(check.output.contains("test failed"), "{}", check.output);
}

/// `nginx -t` of an upstream containing `directives` fails with `msg` at the line of `needle`.
fn rejected(directives: &str, needle: &str, msg: &str) {
    let check = nginx_test_conf("", &upstream_with(directives));
    assert_rejected_at(&check, needle, msg);
}

/// `invalid parameter "ARG" in "upstream_healthcheck" directive, REASON`
fn bad_param(arg: &str, reason: &str) -> String {
    format!("invalid parameter \"{arg}\" in \"upstream_healthcheck\" directive, {reason}")
}

/// `nginx -t` must succeed with no `[emerg]` line; the check, for more assertions.
fn accepted(http_body: &str) -> ConfCheck {
    let check = nginx_test_conf("", http_body);
    assert!(
        check.ok && check.emerg_lines().is_empty(),
        "nginx -t rejected a valid config:\n{}\n--- config ---\n{}",
        check.output,
        check.conf
    );
    assert!(check.output.contains("syntax is ok"), "{}", check.output);
    assert!(
        check.output.contains("test is successful"),
        "{}",
        check.output
    );
    check
}

/// The output lines that contain `[warn]`.
fn warn_lines(check: &ConfCheck) -> Vec<&str> {
    check
        .output
        .lines()
        .filter(|l| l.contains("[warn]"))
        .collect()
}

/// The two directives that shape only an http probe, each with a line that sets it.
const HTTP_ONLY: [(&str, &str); 2] = [
    (
        "upstream_healthcheck_request",
        "    upstream_healthcheck_request \"GET / HTTP/1.0\\r\\n\\r\\n\";",
    ),
    (
        "upstream_healthcheck_valid_statuses",
        "    upstream_healthcheck_valid_statuses 200;",
    ),
];

#[test]
fn unknown_parameter() {
    rejected(
        "    upstream_healthcheck interval=1s foo=1;",
        "foo=1",
        "invalid parameter \"foo=1\" in \"upstream_healthcheck\" directive",
    );
}

#[test]
fn bad_counts() {
    for (arg, name) in [("fall=abc", "fall"), ("fall=0", "fall"), ("rise=0", "rise")] {
        rejected(
            &format!("    upstream_healthcheck {arg};"),
            arg,
            &bad_param(arg, &format!("{name} must be a number from 1 to 1000000")),
        );
    }
}

#[test]
fn bad_times() {
    for (arg, name) in [
        ("interval=0", "interval"),
        ("timeout=-1s", "timeout"),
        ("fast_interval=0", "fast_interval"),
        ("down_interval=1.5s", "down_interval"),
    ] {
        rejected(
            &format!("    upstream_healthcheck {arg};"),
            arg,
            &bad_param(
                arg,
                &format!(
                    "{name} must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)"
                ),
            ),
        );
    }
}

#[test]
fn bad_type_port_default_down_uri() {
    for (arg, reason) in [
        ("type=udp", "type must be \"tcp\", \"http\" or \"https\""),
        ("port=70000", "port must be from 1 to 65535"),
        (
            "default_down=maybe",
            "default_down must be \"on\" or \"off\"",
        ),
        ("uri=health", "uri must start with \"/\""),
    ] {
        rejected(
            &format!("    upstream_healthcheck fall=2 {arg};"),
            arg,
            &bad_param(arg, reason),
        );
    }
}

#[test]
fn repeated_parameter() {
    rejected(
        "    upstream_healthcheck fall=1 fall=2;",
        "fall=1 fall=2",
        &bad_param("fall=2", "fall is given twice"),
    );
}

#[test]
fn off_with_other_parameters() {
    for line in [
        "    upstream_healthcheck off fall=2;",
        "    upstream_healthcheck fall=2 off;",
    ] {
        rejected(
            line,
            "upstream_healthcheck ",
            &bad_param("off", "\"off\" takes no other parameters"),
        );
    }
}

#[test]
fn healthcheck_outside_an_upstream_block() {
    let msg = "\"upstream_healthcheck\" directive is not allowed here";
    // In a server block.
    let check = nginx_test_conf(
        "",
        &format!(
            "server {{\n    {}\n    upstream_healthcheck fall=2;\n    location / {{ return 200; }}\n}}\n",
            listen()
        ),
    );
    assert_rejected_at(&check, "upstream_healthcheck fall=2", msg);
    // In a location block.
    let check = nginx_test_conf(
        "",
        &format!(
            "server {{\n    {}\n    location / {{\n        upstream_healthcheck fall=2;\n    }}\n}}\n",
            listen()
        ),
    );
    assert_rejected_at(&check, "upstream_healthcheck fall=2", msg);
    // At http level.
    let check = nginx_test_conf(
        "",
        &format!("upstream_healthcheck fall=2;\n{}", upstream_with("")),
    );
    assert_rejected_at(&check, "upstream_healthcheck fall=2", msg);
}

#[test]
fn upstream_directives_outside_an_upstream_block() {
    for (directive, args) in [
        (
            "upstream_healthcheck_request",
            "\"GET / HTTP/1.0\\r\\n\\r\\n\"",
        ),
        ("upstream_healthcheck_valid_statuses", "200"),
    ] {
        let check = nginx_test_conf(
            "",
            &format!(
                "server {{\n    {}\n    {directive} {args};\n    location / {{ return 200; }}\n}}\n",
                listen()
            ),
        );
        assert_rejected_at(
            &check,
            directive,
            &format!("\"{directive}\" directive is not allowed here"),
        );
    }
    // The zone is an http-level directive: not inside an upstream.
    rejected(
        "    upstream_healthcheck;\n    upstream_healthcheck_zone 1m;",
        "upstream_healthcheck_zone",
        "\"upstream_healthcheck_zone\" directive is not allowed here",
    );
}

#[test]
fn duplicate_healthcheck_in_one_upstream() {
    rejected(
        "    upstream_healthcheck interval=1s;\n    upstream_healthcheck fall=2;",
        "upstream_healthcheck fall=2",
        "\"upstream_healthcheck\" directive is duplicate",
    );
}

#[test]
fn unknown_status_token() {
    rejected(
        "    upstream_healthcheck;\n    upstream_healthcheck_valid_statuses 200 2yy;",
        "upstream_healthcheck_valid_statuses",
        "invalid parameter \"2yy\" in \"upstream_healthcheck_valid_statuses\" directive, \
         expected a status (200), a range (200-399 or 2xx) or an exclusion (!502)",
    );
}

#[test]
fn http_only_directives_with_type_tcp_in_either_order() {
    for (directive, line) in HTTP_ONLY {
        let msg = format!(
            "\"{directive}\" directive applies to type=http and type=https only, but \"upstream_healthcheck\" sets type=tcp"
        );
        // type=tcp first: the error is at the http-only directive.
        rejected(
            &format!("    upstream_healthcheck type=tcp;\n{line}"),
            directive,
            &msg,
        );
        // The http-only directive first: the error is at upstream_healthcheck type=tcp.
        rejected(
            &format!("{line}\n    upstream_healthcheck type=tcp;"),
            "type=tcp",
            &msg,
        );
    }
}

#[test]
fn request_without_the_final_empty_line() {
    let msg = "invalid value in \"upstream_healthcheck_request\" directive, the request must \
               start with a method and end with \"\\r\\n\\r\\n\"";
    rejected(
        "    upstream_healthcheck;\n    upstream_healthcheck_request \"GET /status HTTP/1.0\\r\\nHost: foo.com\\r\\n\";",
        "upstream_healthcheck_request",
        msg,
    );
    // No method either.
    rejected(
        "    upstream_healthcheck;\n    upstream_healthcheck_request \"/status\\r\\n\\r\\n\";",
        "upstream_healthcheck_request",
        msg,
    );
}

#[test]
fn http_directives_need_upstream_healthcheck() {
    for (directive, line) in HTTP_ONLY {
        rejected(
            line,
            directive,
            &format!("\"{directive}\" directive needs \"upstream_healthcheck\" in upstream \"u\""),
        );
    }
}

#[test]
fn zone_below_the_minimum() {
    let check = nginx_test_conf(
        "",
        &format!(
            "upstream_healthcheck_zone 8k;\n{}",
            upstream_with("    upstream_healthcheck;")
        ),
    );
    assert_rejected_at(
        &check,
        "upstream_healthcheck_zone",
        "\"upstream_healthcheck_zone\" size \"8k\" is too small, the minimum is 32k",
    );
    let check = nginx_test_conf(
        "",
        &format!(
            "upstream_healthcheck_zone lots;\n{}",
            upstream_with("    upstream_healthcheck;")
        ),
    );
    assert_rejected_at(
        &check,
        "upstream_healthcheck_zone",
        "invalid zone size \"lots\" in \"upstream_healthcheck_zone\" directive",
    );
}

/// 2000 checked peers: an upstream with 2000 `server` lines.
fn many_peers(zone: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(size) = zone {
        body.push_str(&format!("upstream_healthcheck_zone {size};\n"));
    }
    body.push_str("upstream many {\n");
    for i in 0..2000 {
        body.push_str(&format!("    server 127.0.0.1:{};\n", 20000 + i));
    }
    body.push_str("    upstream_healthcheck interval=1s;\n}\n");
    body.push_str(&format!(
        "server {{\n    {}\n    location / {{ proxy_pass http://many; }}\n}}\n",
        listen()
    ));
    body
}

#[test]
fn zone_too_small_for_the_peers_names_the_size_needed() {
    let check = nginx_test_conf("", &many_peers(Some("32k")));
    assert!(!check.ok, "{}", check.output);
    let prefix = "\"upstream_healthcheck_zone\" size 32k is too small for 2000 peers, at least ";
    let emerg = check.emerg_lines();
    assert_eq!(emerg.len(), 1, "{}", check.output);
    let msg = emerg[0]
        .strip_prefix("nginx: [emerg] ")
        .unwrap_or_else(|| panic!("{}", check.output));
    let needed_k: usize = msg
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once("k is needed"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message: {msg}"));
    assert!(
        needed_k > 32 && needed_k < 2000,
        "2000 peers of ~112 bytes need more than 32k and less than 2000k: {msg}"
    );
    assert_rejected_at(
        &check,
        "upstream_healthcheck_zone",
        &format!("{prefix}{needed_k}k is needed"),
    );

    // The size named is enough, and one k less is not.
    let check = nginx_test_conf("", &many_peers(Some(&format!("{needed_k}k"))));
    assert!(
        check.ok,
        "the size the message names is refused:\n{}",
        check.output
    );
    let check = nginx_test_conf("", &many_peers(Some(&format!("{}k", needed_k - 1))));
    assert_rejected_at(
        &check,
        "upstream_healthcheck_zone",
        &format!(
            "\"upstream_healthcheck_zone\" size {}k is too small for 2000 peers, at least {needed_k}k is needed",
            needed_k - 1
        ),
    );
    // Without the directive the module sizes the zone itself.
    let check = nginx_test_conf("", &many_peers(None));
    assert!(check.ok, "{}", check.output);
}

#[test]
fn status_with_an_unknown_format() {
    let check = nginx_test_conf(
        "",
        &format!(
            "{}server {{\n    {}\n    location = /st {{ upstream_healthcheck_status bogus; }}\n}}\n",
            upstream_with("    upstream_healthcheck;"),
            listen()
        ),
    );
    assert_rejected_at(
        &check,
        "upstream_healthcheck_status",
        "invalid parameter \"bogus\" in \"upstream_healthcheck_status\" directive, \
         the format must be \"text\", \"json\", \"prometheus\" or \"html\"",
    );
    // Outside a location.
    let check = nginx_test_conf(
        "",
        &format!(
            "{}server {{\n    {}\n    upstream_healthcheck_status;\n}}\n",
            upstream_with("    upstream_healthcheck;"),
            listen()
        ),
    );
    assert_rejected_at(
        &check,
        "upstream_healthcheck_status",
        "\"upstream_healthcheck_status\" directive is not allowed here",
    );
}

#[test]
fn valid_edge_cases_are_accepted() {
    // A timeout longer than the interval.
    accepted(&upstream_with(
        "    upstream_healthcheck interval=1s timeout=5s;",
    ));
    // A bare number is milliseconds.
    accepted(&upstream_with(
        "    upstream_healthcheck interval=3000 timeout=500 jitter=100;",
    ));
    // off, alone.
    accepted(&upstream_with("    upstream_healthcheck off;"));
    // Every parameter at once, statuses, explicit format of the status page.
    accepted(&format!(
        "upstream_healthcheck_zone 64k;\n{}server {{\n    {}\n    \
         location = /st {{ upstream_healthcheck_status text; }}\n}}\n",
        upstream_with(
            "    upstream_healthcheck type=http interval=2s fast_interval=1500ms \
             down_interval=10s timeout=1s fall=3 rise=2 port=18082 jitter=1s uri=/health \
             host=foo.com default_down=on keepalive=100 panic_threshold=50%;\n    \
             upstream_healthcheck_valid_statuses 200 302 2xx !204 300-399;"
        ),
        listen()
    ));
    // Every parameter but uri= and host= with a request of its own.
    accepted(&upstream_with(
        "    upstream_healthcheck type=http interval=2s timeout=1s fall=3 rise=2 port=18082 \
         jitter=1s default_down=on;\n    \
         upstream_healthcheck_request \"GET /status HTTP/1.0\\r\\nHost: foo.com\\r\\n\\r\\n\";\n    \
         upstream_healthcheck_valid_statuses 200 302 2xx !204 300-399;",
    ));
    // type=tcp alone.
    accepted(&upstream_with(
        "    upstream_healthcheck type=tcp interval=1m30s;",
    ));
    // type=tcp with fast and down intervals.
    accepted(&upstream_with(
        "    upstream_healthcheck type=tcp interval=2s fast_interval=100ms down_interval=30s fall=3;",
    ));
}

#[test]
fn panic_threshold_is_a_percentage_from_1_to_100() {
    for arg in [
        "panic_threshold=0%",
        "panic_threshold=101%",
        "panic_threshold=half",
        "panic_threshold=50%%",
        "panic_threshold=",
    ] {
        rejected(
            &format!("    upstream_healthcheck fall=2 {arg};"),
            arg,
            &bad_param(arg, "panic_threshold must be a percentage from 1% to 100%"),
        );
    }
    for arg in [
        "panic_threshold=1%",
        "panic_threshold=100",
        "panic_threshold=34%",
    ] {
        accepted(&upstream_with(&format!(
            "    upstream_healthcheck type=tcp {arg};"
        )));
    }
}

// ---------------------------------------------------------------------------------------------
// Configurations that parse but cannot do what they say

#[test]
fn keepalive_must_be_a_count() {
    for arg in [
        "keepalive=-1",
        "keepalive=x",
        "keepalive=",
        "keepalive=1000001",
    ] {
        rejected(
            &format!("    upstream_healthcheck {arg};"),
            arg,
            &bad_param(arg, "keepalive must be a number from 0 to 1000000"),
        );
    }
}

#[test]
fn uri_or_host_with_type_tcp() {
    for arg in ["uri=/health", "host=foo.com", "keepalive=10"] {
        let name = arg.split('=').next().unwrap();
        rejected(
            &format!("    upstream_healthcheck type=tcp interval=1s {arg};"),
            arg,
            &bad_param(
                arg,
                &format!("{name} applies to type=http and type=https only"),
            ),
        );
    }
    // The order of the parameters does not matter.
    rejected(
        "    upstream_healthcheck uri=/health type=tcp;",
        "uri=/health",
        &bad_param(
            "uri=/health",
            "uri applies to type=http and type=https only",
        ),
    );
}

#[test]
fn uri_or_host_with_a_request_of_ones_own() {
    let request =
        "    upstream_healthcheck_request \"GET /status HTTP/1.0\\r\\nHost: foo.com\\r\\n\\r\\n\";";
    for arg in ["uri=/health", "host=foo.com"] {
        let name = arg.split('=').next().unwrap();
        let msg = bad_param(
            arg,
            &format!(
                "{name} applies to the default request only, but \"upstream_healthcheck_request\" \
                 sets the request"
            ),
        );
        // In either order, the error is at the parameter that would have no effect.
        let line = format!("    upstream_healthcheck interval=1s {arg};");
        rejected(&format!("{line}\n{request}"), arg, &msg);
        rejected(&format!("{request}\n{line}"), arg, &msg);
    }
}

#[test]
fn request_or_statuses_with_upstream_healthcheck_off() {
    for (directive, line) in HTTP_ONLY {
        let msg = format!(
            "\"{directive}\" directive needs \"upstream_healthcheck\" in upstream \"u\", but it is off"
        );
        // In either order, the error is at the directive that would have no effect.
        rejected(
            &format!("    upstream_healthcheck off;\n{line}"),
            directive,
            &msg,
        );
        rejected(
            &format!("{line}\n    upstream_healthcheck off;"),
            directive,
            &msg,
        );
    }
}

#[test]
fn port_with_only_unix_socket_peers_is_a_warning() {
    let check = accepted(&upstream_of(
        "server unix:/nonexistent/hc-a.sock;\n    server unix:/nonexistent/hc-b.sock backup;",
        "    upstream_healthcheck type=tcp port=8080;",
    ));
    let want = format!(
        "nginx: [warn] parameter \"port=8080\" in \"upstream_healthcheck\" directive is ignored, \
         every peer of upstream \"u\" is a unix socket in {}:{}",
        check.conf_path.display(),
        check.line_of("port=8080")
    );
    assert_eq!(
        warn_lines(&check),
        vec![want.as_str()],
        "\n--- nginx -t output ---\n{}\n--- config ---\n{}",
        check.output,
        check.conf
    );
    // One TCP peer among them: the port applies to it, nothing to say.
    let check = accepted(&upstream_of(
        "server unix:/nonexistent/hc-a.sock;\n    server 127.0.0.1:18081;",
        "    upstream_healthcheck type=tcp port=8080;",
    ));
    assert!(warn_lines(&check).is_empty(), "{}", check.output);
    // Unix peers without port=: nothing to say either.
    let check = accepted(&upstream_of(
        "server unix:/nonexistent/hc-a.sock;",
        "    upstream_healthcheck type=tcp;",
    ));
    assert!(warn_lines(&check).is_empty(), "{}", check.output);
}

#[test]
fn bad_slow_start() {
    for arg in ["slow_start=-5s", "slow_start=soon", "slow_start="] {
        rejected(
            &format!("    upstream_healthcheck {arg};"),
            arg,
            &bad_param(
                arg,
                "slow_start must be a time (e.g. 2s, 500ms; a bare number means milliseconds)",
            ),
        );
    }
    rejected(
        "    upstream_healthcheck slow_start=2d;",
        "slow_start=2d",
        &bad_param("slow_start=2d", "slow_start must be at most 24h"),
    );
}

#[test]
fn slow_start_with_a_balancer_that_ignores_weights_is_a_warning() {
    for balancer in [
        "hash $request_uri;",
        "hash $request_uri consistent;",
        "ip_hash;",
        "random;",
    ] {
        let check = accepted(&upstream_of(
            &format!("server 127.0.0.1:18081;\n    server 127.0.0.1:18082;\n    {balancer}"),
            "    upstream_healthcheck slow_start=30s;",
        ));
        let want = format!(
            "nginx: [warn] parameter \"slow_start=30s\" in \"upstream_healthcheck\" directive is \
             ignored, the balancer of upstream \"u\" (hash, ip_hash or random) does not use it in \
             {}:{}",
            check.conf_path.display(),
            check.line_of("slow_start=30s")
        );
        assert_eq!(
            warn_lines(&check),
            vec![want.as_str()],
            "{balancer}\n--- nginx -t output ---\n{}\n--- config ---\n{}",
            check.output,
            check.conf
        );
    }
    // Round robin and least_conn (with keepalive wrapping it, too) ramp: nothing to say.
    for balancer in [
        "",
        "least_conn;",
        "least_conn;\n    keepalive 8;",
        "keepalive 8;",
    ] {
        let check = accepted(&upstream_of(
            &format!(
                "server 127.0.0.1:18081 weight=3;\n    server 127.0.0.1:18082;\n    {balancer}"
            ),
            "    upstream_healthcheck slow_start=30s;",
        ));
        assert!(
            warn_lines(&check).is_empty(),
            "{balancer}: {}",
            check.output
        );
    }
}

#[test]
fn status_lists_that_can_never_match() {
    let msg = |arg: &str, reason: &str| {
        format!(
            "invalid parameter \"{arg}\" in \"upstream_healthcheck_valid_statuses\" directive, {reason}"
        )
    };
    for (list, want) in [
        // A status both accepted and excluded.
        (
            "200 !200",
            msg("200", "every status it names is excluded"),
        ),
        // 100 Continue is an interim response: a probe skips it and judges the final one.
        (
            "100",
            msg(
                "100",
                "a probe skips interim 1xx responses (all but 101) and never sees them",
            ),
        ),
        // Every class excluded.
        (
            "!2xx !3xx !4xx !5xx",
            "invalid parameters \"!2xx !3xx !4xx !5xx\" in \"upstream_healthcheck_valid_statuses\" \
             directive, together they exclude every status from 200 to 599"
                .to_owned(),
        ),
    ] {
        rejected(
            &format!(
                "    upstream_healthcheck;\n    upstream_healthcheck_valid_statuses {list};"
            ),
            "upstream_healthcheck_valid_statuses",
            &want,
        );
    }
    // An exclusion inside a range leaves the rest of it.
    accepted(&upstream_with(
        "    upstream_healthcheck;\n    upstream_healthcheck_valid_statuses 2xx !204 101;",
    ));
}

#[test]
fn request_method_not_upper_case() {
    rejected(
        "    upstream_healthcheck;\n    upstream_healthcheck_request \"get /status HTTP/1.0\\r\\n\\r\\n\";",
        "upstream_healthcheck_request",
        "invalid method \"get\" in \"upstream_healthcheck_request\" directive, a method is \
         upper-case letters, \"-\" and \"_\" (e.g. GET, HEAD)",
    );
}

#[test]
fn jitter_not_below_interval() {
    rejected(
        "    upstream_healthcheck interval=1s jitter=1s;",
        "jitter=1s",
        &bad_param("jitter=1s", "jitter must be less than interval (1s)"),
    );
    // The default interval is 2s.
    rejected(
        "    upstream_healthcheck jitter=5s;",
        "jitter=5s",
        &bad_param(
            "jitter=5s",
            "jitter must be less than interval (2s by default)",
        ),
    );
    // Jitter is added to fast_interval too.
    rejected(
        "    upstream_healthcheck interval=2s fast_interval=100ms jitter=500ms;",
        "jitter=500ms",
        &bad_param(
            "jitter=500ms",
            "jitter must be less than fast_interval (100ms)",
        ),
    );
}

/// `nginx -t` of an http block with `upstream_healthcheck_ha_address ARGS` and a checked
/// upstream.
fn ha_address_check(args: &str) -> ConfCheck {
    nginx_test_conf(
        "",
        &format!(
            "upstream_healthcheck_ha_address {args};\n{}",
            upstream_with("    upstream_healthcheck;")
        ),
    )
}

#[test]
fn ha_address_with_a_bad_prefix_length() {
    for addr in ["127.0.0.10/99", "127.0.0.10/abc"] {
        assert_rejected_at(
            &ha_address_check(addr),
            "upstream_healthcheck_ha_address",
            &format!(
                "invalid parameter \"{addr}\" in \"upstream_healthcheck_ha_address\" directive, \
                 the prefix length must be from 0 to 32"
            ),
        );
    }
    assert_rejected_at(
        &ha_address_check("::1/129"),
        "upstream_healthcheck_ha_address",
        "invalid parameter \"::1/129\" in \"upstream_healthcheck_ha_address\" directive, \
         the prefix length must be from 0 to 128",
    );
}

#[test]
fn ha_address_interval_has_the_words_of_upstream_healthcheck() {
    // Too long is too long, however long: even past what 64 bits hold.
    for v in ["1000000000h", "99999999999999999999h"] {
        assert_rejected_at(
            &ha_address_check(&format!("127.0.0.10/32 interval={v}")),
            "upstream_healthcheck_ha_address",
            &format!(
                "invalid parameter \"interval={v}\" in \"upstream_healthcheck_ha_address\" \
                 directive, interval must be at most 24h"
            ),
        );
        rejected(
            &format!("    upstream_healthcheck interval={v};"),
            &format!("interval={v}"),
            &bad_param(&format!("interval={v}"), "interval must be at most 24h"),
        );
    }
    assert_rejected_at(
        &ha_address_check("127.0.0.10 interval=0"),
        "upstream_healthcheck_ha_address",
        "invalid parameter \"interval=0\" in \"upstream_healthcheck_ha_address\" directive, \
         interval must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)",
    );
}

#[test]
fn status_page_and_control_endpoint_in_one_location() {
    for (first, second) in [
        ("upstream_healthcheck_status", "upstream_healthcheck_admin"),
        ("upstream_healthcheck_admin", "upstream_healthcheck_status"),
    ] {
        let check = nginx_test_conf(
            "",
            &format!(
                "{}server {{\n    {}\n    location = /hc {{\n        {first};\n        {second};\n    }}\n}}\n",
                upstream_with("    upstream_healthcheck;"),
                listen()
            ),
        );
        assert_rejected_at(
            &check,
            &format!("{second};"),
            &format!("\"{second}\" directive is not allowed in a location with \"{first}\""),
        );
    }
    // In two locations they are fine.
    accepted(&format!(
        "{}server {{\n    {}\n    location = /st {{ upstream_healthcheck_status; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n}}\n",
        upstream_with("    upstream_healthcheck;"),
        listen()
    ));
}

// ---------------------------------------------------------------------------------------------
// upstream_healthcheck_match: named response tests at http level, used with match=

/// An `upstream_healthcheck_match NAME { ... }` block at http level with `lines` inside.
fn match_block(name: &str, lines: &str) -> String {
    format!("upstream_healthcheck_match {name} {{\n{lines}\n}}\n")
}

/// The issue's JSON health endpoint: every kind of condition, and body_max.
const JSON_OK: &str = r#"    status 200-399 !302;
    header Content-Type ~ "json";
    header ! X-Maintenance;
    body ~ "\"status\"\s*:\s*\"ok\"";
    body_max 64k;"#;

/// `nginx -t` of a match block `json_ok` with `lines`, and an upstream using it.
fn match_rejected(lines: &str, needle: &str, msg: &str) {
    let check = nginx_test_conf(
        "",
        &format!(
            "{}{}",
            match_block("json_ok", lines),
            upstream_with("    upstream_healthcheck match=json_ok;")
        ),
    );
    assert_rejected_at(&check, needle, msg);
}

#[test]
fn match_blocks_work_before_or_after_the_upstreams_using_them() {
    let upstream = upstream_with("    upstream_healthcheck interval=1s match=json_ok;");
    // Before the upstream, as NGINX Plus's examples put it.
    accepted(&format!("{}{upstream}", match_block("json_ok", JSON_OK)));
    // After it: names are resolved once the whole http block is read.
    accepted(&format!("{upstream}{}", match_block("json_ok", JSON_OK)));
    // NGINX Plus's forms, a block no upstream uses, and two upstreams sharing one block.
    accepted(&format!(
        "{}{}{}{}",
        match_block(
            "not_redirect",
            "    status ! 301-303 307;\n    header ! Refresh;"
        ),
        match_block("unused", "    body !~ \"maintenance mode\";"),
        upstream_with("    upstream_healthcheck match=not_redirect;"),
        upstream_of(
            "server 127.0.0.1:18082;",
            "    upstream_healthcheck match=not_redirect;"
        )
        .replace("upstream u ", "upstream u2 ")
        .replace("http://u;", "http://u2;"),
    ));
    // With a request of its own.
    accepted(&format!(
        "{}{}",
        match_block("json_ok", JSON_OK),
        upstream_with(
            "    upstream_healthcheck match=json_ok;\n    \
             upstream_healthcheck_request \"GET /health HTTP/1.0\\r\\n\\r\\n\";"
        )
    ));
}

#[test]
fn match_naming_no_block() {
    rejected(
        "    upstream_healthcheck match=nope;",
        "match=nope",
        "unknown match \"nope\" in \"upstream_healthcheck\" directive",
    );
    // Another block exists, by another name.
    let check = nginx_test_conf(
        "",
        &format!(
            "{}{}",
            match_block("json_ok", JSON_OK),
            upstream_with("    upstream_healthcheck match=json_okay;")
        ),
    );
    assert_rejected_at(
        &check,
        "match=json_okay",
        "unknown match \"json_okay\" in \"upstream_healthcheck\" directive",
    );
    rejected(
        "    upstream_healthcheck match=;",
        "match=;",
        &bad_param("match=", "a match name is printable ASCII without spaces"),
    );
}

#[test]
fn empty_match_block() {
    // At the line that opens the block, as nginx reports an upstream without servers.
    for lines in ["", "    body_max 16k;"] {
        match_rejected(
            lines,
            "upstream_healthcheck_match json_ok",
            "no conditions are inside \"upstream_healthcheck_match\" block \"json_ok\"",
        );
    }
}

#[test]
fn match_with_a_bad_regular_expression() {
    match_rejected(
        "    status 200;\n    body ~ \"(unclosed\";",
        "(unclosed",
        "invalid regular expression \"(unclosed\" in \"body\" of \"upstream_healthcheck_match\" \
         block, unclosed group",
    );
    // Backreferences would need backtracking on what a backend sends: refused.
    let check = nginx_test_conf(
        "",
        &format!(
            "{}{}",
            match_block("json_ok", "    header X-Id ~ \"(a)\\1\";"),
            upstream_with("    upstream_healthcheck match=json_ok;")
        ),
    );
    assert!(!check.ok, "{}", check.output);
    let emerg = check.emerg_lines();
    assert_eq!(emerg.len(), 1, "{}", check.output);
    assert!(
        emerg[0].starts_with(
            "nginx: [emerg] invalid regular expression \"(a)\\\\1\" in \"header\" of \
             \"upstream_healthcheck_match\" block, "
        ) && emerg[0].ends_with(&format!(
            " in {}:{}",
            check.conf_path.display(),
            check.line_of("X-Id")
        )),
        "{}",
        check.output
    );
}

#[test]
fn match_with_an_unknown_condition() {
    match_rejected(
        "    status 200;\n    foo bar;",
        "foo bar",
        "invalid condition \"foo\" in \"upstream_healthcheck_match\" block",
    );
    // NGINX Plus's `require` (variables) is not supported.
    match_rejected(
        "    require $upstream_status;",
        "require",
        "invalid condition \"require\" in \"upstream_healthcheck_match\" block",
    );
    match_rejected(
        "    header Content-Type =~ json;",
        "=~",
        "invalid parameter \"=~\" in \"header\" of \"upstream_healthcheck_match\" block, the \
         operator must be \"=\", \"!=\", \"~\" or \"!~\"",
    );
}

#[test]
fn match_with_valid_statuses_in_either_order() {
    let statuses = "    upstream_healthcheck_valid_statuses 200;";
    let msg = "\"upstream_healthcheck_valid_statuses\" directive is not allowed with \
               \"match=json_ok\" in \"upstream_healthcheck\" directive, use a \"status\" \
               condition in the match";
    for directives in [
        format!("    upstream_healthcheck match=json_ok;\n{statuses}"),
        format!("{statuses}\n    upstream_healthcheck match=json_ok;"),
    ] {
        let check = nginx_test_conf(
            "",
            &format!(
                "{}{}",
                match_block("json_ok", JSON_OK),
                upstream_with(&directives)
            ),
        );
        // The error is at the directive the match would override.
        assert_rejected_at(&check, "upstream_healthcheck_valid_statuses", msg);
    }
}

#[test]
fn match_with_type_tcp() {
    let check = nginx_test_conf(
        "",
        &format!(
            "{}{}",
            match_block("json_ok", JSON_OK),
            upstream_with("    upstream_healthcheck type=tcp match=json_ok;")
        ),
    );
    assert_rejected_at(
        &check,
        "match=json_ok",
        &bad_param(
            "match=json_ok",
            "match applies to type=http and type=https only",
        ),
    );
}

#[test]
fn duplicate_match_name() {
    let check = nginx_test_conf(
        "",
        &format!(
            "{}upstream_healthcheck_match json_ok {{ status 204; }}\n{}",
            match_block("json_ok", JSON_OK),
            upstream_with("    upstream_healthcheck match=json_ok;")
        ),
    );
    assert_rejected_at(&check, "status 204", "duplicate match \"json_ok\"");
}

#[test]
fn match_body_max_over_1m() {
    match_rejected(
        "    body ~ ok;\n    body_max 2m;",
        "body_max",
        "invalid parameter \"2m\" in \"body_max\" of \"upstream_healthcheck_match\" block, \
         body_max must be a size from 1 to 1m (e.g. 64k)",
    );
}

#[test]
fn match_block_outside_http_level_or_without_braces() {
    // Inside an upstream.
    rejected(
        "    upstream_healthcheck;\n    upstream_healthcheck_match m { status 200; }",
        "upstream_healthcheck_match",
        "\"upstream_healthcheck_match\" directive is not allowed here",
    );
    // Without its block.
    let check = nginx_test_conf(
        "",
        &format!(
            "upstream_healthcheck_match m;\n{}",
            upstream_with("    upstream_healthcheck;")
        ),
    );
    assert_rejected_at(
        &check,
        "upstream_healthcheck_match",
        "directive \"upstream_healthcheck_match\" has no opening \"{\"",
    );
}

// ---------------------------------------------------------------------------------------------
// type=https and the upstream_healthcheck_ssl_* directives

/// The one-argument ssl directives, each with a well-formed argument.
const SSL_DIRECTIVES: [(&str, &str); 7] = [
    ("upstream_healthcheck_ssl_verify", "off"),
    (
        "upstream_healthcheck_ssl_trusted_certificate",
        "/tmp/ca.pem",
    ),
    ("upstream_healthcheck_ssl_name", "backend.test"),
    ("upstream_healthcheck_ssl_server_name", "on"),
    ("upstream_healthcheck_ssl_certificate", "/tmp/client.pem"),
    (
        "upstream_healthcheck_ssl_certificate_key",
        "/tmp/client.key",
    ),
    ("upstream_healthcheck_ssl_protocols", "TLSv1.2"),
];

#[test]
fn ssl_directives_without_type_https() {
    for (directive, arg) in SSL_DIRECTIVES {
        for (check, why) in [
            ("    upstream_healthcheck type=http;\n", "sets type=http"),
            ("    upstream_healthcheck type=tcp;\n", "sets type=tcp"),
            ("    upstream_healthcheck off;\n", "is off"),
            ("", "is not given"),
        ] {
            rejected(
                &format!("{check}    {directive} {arg};"),
                directive,
                &format!(
                    "\"{directive}\" directive applies to type=https only, but \
                     \"upstream_healthcheck\" in upstream \"u\" {why}"
                ),
            );
        }
    }
}

#[test]
fn ssl_directive_values() {
    let https = "    upstream_healthcheck type=https;\n";
    for (line, needle, msg) in [
        (
            "upstream_healthcheck_ssl_verify yes;",
            "ssl_verify",
            "invalid value \"yes\" in \"upstream_healthcheck_ssl_verify\" directive, it must be \
             \"on\" or \"off\"",
        ),
        (
            "upstream_healthcheck_ssl_server_name 1;",
            "ssl_server_name",
            "invalid value \"1\" in \"upstream_healthcheck_ssl_server_name\" directive, it must \
             be \"on\" or \"off\"",
        ),
        (
            "upstream_healthcheck_ssl_protocols TLSv1.2 SSLv3;",
            "ssl_protocols",
            "invalid value \"SSLv3\" in \"upstream_healthcheck_ssl_protocols\" directive, it must \
             be \"TLSv1\", \"TLSv1.1\", \"TLSv1.2\" or \"TLSv1.3\"",
        ),
    ] {
        rejected(&format!("{https}    {line}"), needle, msg);
    }
    rejected(
        &format!(
            "{https}    upstream_healthcheck_ssl_name a.test;\n    upstream_healthcheck_ssl_name b.test;"
        ),
        "b.test",
        "\"upstream_healthcheck_ssl_name\" directive is duplicate",
    );
}

#[test]
fn verify_on_needs_trusted_certificates() {
    rejected(
        "    upstream_healthcheck type=https;\n    upstream_healthcheck_ssl_verify on;",
        "ssl_verify",
        "no \"upstream_healthcheck_ssl_trusted_certificate\" for \
         \"upstream_healthcheck_ssl_verify\" in upstream \"u\"",
    );
}

#[test]
fn client_certificate_and_key_come_together() {
    rejected(
        "    upstream_healthcheck type=https;\n    upstream_healthcheck_ssl_certificate /tmp/c.pem;",
        "ssl_certificate",
        "no \"upstream_healthcheck_ssl_certificate_key\" is defined for certificate \"/tmp/c.pem\"",
    );
    rejected(
        "    upstream_healthcheck type=https;\n    upstream_healthcheck_ssl_certificate_key /tmp/c.key;",
        "ssl_certificate_key",
        "\"upstream_healthcheck_ssl_certificate_key\" directive needs \
         \"upstream_healthcheck_ssl_certificate\"",
    );
}

/// `nginx -t` fails with nginx's own line about the file (containing `nginx_says`), then the
/// module's line naming the directive, at the directive's `file:line`.
fn file_rejected(directives: &str, needle: &str, nginx_says: &str, msg: &str) {
    let check = nginx_test_conf("", &upstream_with(directives));
    assert!(!check.ok, "nginx -t accepted:\n{}", check.output);
    let emerg = check.emerg_lines();
    let want = check.emerg_line(msg, check.line_of(needle));
    assert_eq!(
        emerg.last().copied(),
        Some(want.as_str()),
        "{}",
        check.output
    );
    assert!(
        emerg.len() == 2 && emerg[0].contains(nginx_says),
        "expected nginx's own line with {nginx_says:?} first:\n{}",
        check.output
    );
}

#[test]
fn files_that_cannot_be_loaded_and_keys_that_do_not_match() {
    let pki = Pki::new();
    let client = pki.leaf("client", "client.test");
    let other = pki.leaf("other", "other.test");
    let missing = pki.dir().join("missing.pem");
    let (cert, key, other_key, ca) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
        other.key.display().to_string(),
        pki.ca().display().to_string(),
    );
    let missing = missing.display().to_string();
    let https = "    upstream_healthcheck type=https;\n";
    let pair = |c: &str, k: &str| {
        format!(
            "{https}    upstream_healthcheck_ssl_certificate {c};\n    \
             upstream_healthcheck_ssl_certificate_key {k};"
        )
    };
    let cannot_load = |c: &str, k: &str| {
        format!(
            "cannot load \"upstream_healthcheck_ssl_certificate\" \"{c}\" with \
             \"upstream_healthcheck_ssl_certificate_key\" \"{k}\""
        )
    };
    file_rejected(
        &pair(&missing, &key),
        "ssl_certificate ",
        "cannot load certificate",
        &cannot_load(&missing, &key),
    );
    file_rejected(
        &pair(&cert, &missing),
        "ssl_certificate ",
        "cannot load certificate key",
        &cannot_load(&cert, &missing),
    );
    file_rejected(
        &pair(&cert, &other_key),
        "ssl_certificate ",
        "key values mismatch",
        &cannot_load(&cert, &other_key),
    );
    file_rejected(
        &format!(
            "{https}    upstream_healthcheck_ssl_verify on;\n    \
             upstream_healthcheck_ssl_trusted_certificate {missing};"
        ),
        "trusted_certificate",
        // nginx 1.28 says "cannot load certificate", 1.22 "SSL_CTX_load_verify_locations(...)".
        &missing,
        &format!("cannot load \"upstream_healthcheck_ssl_trusted_certificate\" \"{missing}\""),
    );
    // All of it, well-formed and loadable, passes.
    accepted(&upstream_with(&format!(
        "{}\n    upstream_healthcheck_ssl_verify on;\n    \
         upstream_healthcheck_ssl_trusted_certificate {ca};\n    \
         upstream_healthcheck_ssl_name backend.test;\n    upstream_healthcheck_ssl_server_name off;\n    \
         upstream_healthcheck_ssl_protocols TLSv1.2 TLSv1.3;",
        pair(&cert, &key)
    )));
}

#[test]
fn traffic_counting_takes_on_or_off_once_per_level_and_nowhere_else() {
    let msg = "invalid value \"yes\" in \"upstream_healthcheck_traffic\" directive, it must be \"on\" or \"off\"";
    rejected(
        "    upstream_healthcheck_traffic yes;",
        "upstream_healthcheck_traffic",
        msg,
    );
    let check = nginx_test_conf(
        "",
        &format!("upstream_healthcheck_traffic yes;\n{}", upstream_with("")),
    );
    assert_rejected_at(&check, "upstream_healthcheck_traffic", msg);
    rejected(
        "    upstream_healthcheck_traffic on;\n    upstream_healthcheck_traffic off;",
        "upstream_healthcheck_traffic off",
        "\"upstream_healthcheck_traffic\" directive is duplicate",
    );
    let check = nginx_test_conf(
        "",
        &format!(
            "server {{\n    {}\n    location / {{\n        upstream_healthcheck_traffic on;\n    }}\n}}\n",
            listen()
        ),
    );
    assert_rejected_at(
        &check,
        "upstream_healthcheck_traffic on",
        "\"upstream_healthcheck_traffic\" directive is not allowed here",
    );
    // Both levels, without any check: fine.
    accepted(&format!(
        "upstream_healthcheck_traffic on;\n{}",
        upstream_with("    upstream_healthcheck_traffic off;")
    ));
}

#[test]
fn passive_checks_need_fails_and_well_formed_parameters() {
    let d = "upstream_healthcheck_passive";
    let bad = |arg: &str, reason: &str| {
        format!("invalid parameter \"{arg}\" in \"{d}\" directive, {reason}")
    };
    for (args, msg) in [
        (
            "window=10s",
            format!("\"{d}\" directive needs the \"fails=\" parameter"),
        ),
        ("fails=0", bad("fails=0", "fails must be a number from 1 to 1000000")),
        ("fails=3 fails=4", bad("fails=4", "fails is given twice")),
        (
            "fails=3 window=soon",
            bad(
                "window=soon",
                "window must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)",
            ),
        ),
        (
            "fails=3 statuses=5xx,abc",
            bad(
                "statuses=5xx,abc",
                "statuses must be a comma-separated list of statuses (500), ranges (500-599 or 5xx) \
                 and exclusions (!503), with at least one status",
            ),
        ),
        (
            "fails=3 statuses=!503",
            bad(
                "statuses=!503",
                "statuses must be a comma-separated list of statuses (500), ranges (500-599 or 5xx) \
                 and exclusions (!503), with at least one status",
            ),
        ),
        ("fails=3 timeouts=maybe", bad("timeouts=maybe", "timeouts must be \"on\" or \"off\"")),
        ("fails=3 down_time=0", bad("down_time=0", "down_time must be a positive time (e.g. 2s, 500ms; a bare number means milliseconds)")),
        ("fails=3 every=1s", format!("invalid parameter \"every=1s\" in \"{d}\" directive")),
    ] {
        rejected(&format!("    {d} {args};"), d, &msg);
    }
    rejected(
        &format!("    {d} fails=3;\n    {d} fails=4;"),
        &format!("{d} fails=4"),
        &format!("\"{d}\" directive is duplicate"),
    );
    accepted(&upstream_with(&format!(
        "    {d} fails=3 window=30s statuses=500,502-504 timeouts=off down_time=1m;"
    )));
}

#[test]
fn the_state_file_is_named_once_in_the_http_block() {
    let d = "upstream_healthcheck_state_file";
    let http = |lines: &str| {
        format!(
            "{lines}\n{}",
            upstream_with("    upstream_healthcheck type=http interval=1s;")
        )
    };
    let check = nginx_test_conf("", &http(&format!("{d} a.state;\n{d} b.state;")));
    assert_rejected_at(
        &check,
        "b.state",
        &format!("\"{d}\" directive is duplicate"),
    );
    let check = nginx_test_conf("", &http(&format!("{d} \"\";")));
    assert_rejected_at(
        &check,
        d,
        &format!("invalid value \"\" in \"{d}\" directive, it must be a file name"),
    );
    let check = nginx_test_conf("", &http(&format!("{d} a.state b.state;")));
    assert_rejected_at(
        &check,
        d,
        &format!("invalid number of arguments in \"{d}\" directive"),
    );
    rejected(
        &format!("    {d} a.state;"),
        d,
        &format!("\"{d}\" directive is not allowed here"),
    );
    accepted(&http(&format!("{d} off;")));
    // `nginx -t` does not read the file (here a directory, which a start would report as
    // unreadable): what is in it is for the start to report.
    let check = accepted(&http(&format!("{d} /;")));
    assert!(!check.output.contains("state file"), "{}", check.output);
    // Nothing to keep: a warning, and nginx -t passes.
    let check = accepted(&format!("{d} hc.state;\n{}", upstream_with("")));
    assert_eq!(
        warn_lines(&check),
        vec![format!(
            "nginx: [warn] \"{d}\" directive is ignored, no upstream is checked and no location \
             has \"upstream_healthcheck_admin\" in {}:{}",
            check.conf_path.display(),
            check.line_of(d)
        )],
        "{}",
        check.output
    );
}

#[test]
fn dynamic_membership_needs_a_zone_a_round_robin_balancer_and_max_peers() {
    let d = "upstream_healthcheck_dynamic";
    let zone = "    zone u 256k;\n";
    // etcd's keys are where the peers come from; nginx -t does not connect to it.
    let etcd = "upstream_healthcheck_etcd http://127.0.0.1:2379;\n";
    let rejected = |directives: &str, needle: &str, msg: &str| {
        let check = nginx_test_conf("", &format!("{etcd}{}", upstream_with(directives)));
        assert_rejected_at(&check, needle, msg);
    };
    for (args, msg) in [
        ("", format!("\"{d}\" directive needs \"max_peers=\"")),
        (
            "max_peers=0",
            format!("invalid parameter \"max_peers=0\" in \"{d}\" directive, from 1 to 65536"),
        ),
        (
            "max_peers=x",
            format!("invalid parameter \"max_peers=x\" in \"{d}\" directive, from 1 to 65536"),
        ),
        (
            "peers=3",
            format!("invalid parameter \"peers=3\" in \"{d}\" directive"),
        ),
    ] {
        let line = format!("    {d} {args};");
        if args.is_empty() {
            // nginx itself counts the arguments.
            let check = nginx_test_conf(
                "",
                &format!("{etcd}{}", upstream_with(&format!("{zone}{line}"))),
            );
            assert_rejected_at(
                &check,
                d,
                &format!("invalid number of arguments in \"{d}\" directive"),
            );
            continue;
        }
        rejected(&format!("{zone}{line}"), d, &msg);
    }
    rejected(
        &format!("{zone}    {d} max_peers=2;\n    {d} max_peers=3;"),
        &format!("{d} max_peers=3"),
        &format!("\"{d}\" directive is duplicate"),
    );
    rejected(
        &format!("    {d} max_peers=4;"),
        d,
        &format!("\"{d}\" directive needs \"zone\" in upstream \"u\""),
    );
    for balancer in ["hash $request_uri", "ip_hash", "random"] {
        rejected(
            &format!("{zone}    {balancer};\n    {d} max_peers=4;"),
            d,
            &format!(
                "\"{d}\" directive is not allowed with hash, ip_hash or random in upstream \"u\""
            ),
        );
    }
    rejected(
        &format!("{zone}    {d} max_peers=4;\n    upstream_healthcheck panic_threshold=50%;"),
        d,
        &format!("\"{d}\" directive is not allowed with \"panic_threshold\" in upstream \"u\""),
    );
    // Without etcd there is nowhere to learn the peers from.
    let check = nginx_test_conf("", &upstream_with(&format!("{zone}    {d} max_peers=4;")));
    assert_rejected_at(
        &check,
        d,
        &format!("\"{d}\" directive needs \"upstream_healthcheck_etcd\" in the http block"),
    );
    accepted(&format!(
        "{etcd}{}",
        upstream_with(&format!("{zone}    {d} max_peers=256;"))
    ));
    accepted(&format!(
        "{etcd}{}",
        upstream_with(&format!(
            "{zone}    least_conn;\n    {d} max_peers=8;\n    upstream_healthcheck interval=1s;"
        ))
    ));
    // Without a static server: the upstream waits for etcd's.
    accepted(&format!(
        "{etcd}{}",
        upstream_of("", &format!("{zone}    {d} max_peers=2;"))
    ));
}
