//! State that survives a restart (`upstream_healthcheck_state_file`), as an operator meets it:
//! a peer found down before `nginx -s quit` starts down; a gray release and an exclusion made
//! through the control API hold after `nginx -s stop` and a start, their ttl shortened by the
//! time nginx was stopped, and one whose ttl ended meanwhile is gone; a corrupt or foreign file is reported in one line and nginx starts as
//! without it; a missing file is a fresh start; a directory nginx cannot write is reported once,
//! and so is the recovery; when the worker writing the file dies, another one takes over; a
//! file another nginx wrote meanwhile (a binary upgrade) is not overwritten at exit.
mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Fast checks: a dead peer is DOWN after two refused probes, about 200 ms.
const FAST: &str =
    "upstream_healthcheck type=http interval=100ms timeout=500ms fall=2 rise=1 uri=/health;";
/// Checks that cannot decide anything within a test: a first probe somewhere in the first
/// hour, and three failures to take a peer down.
const SLOW: &str =
    "upstream_healthcheck type=http interval=1h timeout=500ms fall=3 rise=3 uri=/health;";

/// How long a verdict may take with `FAST`.
const WAIT: Duration = Duration::from_secs(5);

/// The http block: the state file, the upstreams, and a front server with the status page, the
/// control endpoint and `/NAME/` proxying to each upstream without retries.
fn conf(state_file: &str, port: u16, upstreams: &[(&str, Vec<String>, &str)]) -> String {
    let mut text = format!("upstream_healthcheck_state_file {state_file};\n");
    let mut locs = String::new();
    for (name, servers, check) in upstreams {
        text.push_str(&upstream_block(name, servers, check));
        locs.push_str(&format!(
            "    location /{name}/ {{ proxy_pass http://{name}; proxy_next_upstream off; }}\n"
        ));
    }
    text.push_str(&format!(
        "server {{\n    listen 127.0.0.1:{port};\n    keepalive_timeout 0;\n    \
         location = /status {{ upstream_healthcheck_status; }}\n    \
         location = /admin {{ upstream_healthcheck_admin; }}\n{locs}}}\n"
    ));
    text
}

/// nginx with the state file `state_file` and one upstream `app` of `backend` with `FAST`
/// checks, its front server on `port`.
fn start_app(state_file: &str, port: u16, backend: &Backend) -> Nginx {
    Nginx::start(&conf(
        state_file,
        port,
        &[("app", vec![backend.addr()], FAST)],
    ))
}

/// The `health` object of a peer on the JSON status page.
fn health(port: u16, upstream: &str, peer: &str) -> Value {
    let doc = strict_json(&status_page(port, "/status?format=json"));
    json_peer(&doc, upstream, peer)["health"].clone()
}

/// A peer's record in the state file.
fn file_peer<'a>(doc: &'a Value, upstream: &str, peer: &str) -> Option<&'a Value> {
    doc["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == upstream)?["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer"] == peer)
}

/// Sends `n` requests to `/NAME/` and returns their statuses.
fn requests(port: u16, upstream: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| request(port, "GET", &format!("/{upstream}/x"), &[], b"").0)
        .collect()
}

#[test]
fn a_peer_down_at_quit_starts_down_before_any_probe() {
    let live = Backend::new();
    let dead = Backend::new();
    dead.stop();
    let dir = state_dir();
    let path = dir.path().join("hc.state");
    let port = free_port();
    let servers = vec![live.addr(), dead.addr()];
    let file = path.display().to_string();
    let mut nginx = Nginx::start_with(
        "worker_processes 2;",
        &conf(&file, port, &[("app", servers.clone(), FAST)]),
    );
    wait_text_state(port, "app", &dead.addr(), "DOWN", WAIT);
    let checks_before = health(port, "app", &dead.addr())["checks"]
        .as_u64()
        .unwrap();

    // From the next start on, no probe can decide within the story: what shows comes from the
    // file the master wrote at exit.
    nginx.rewrite_conf(&conf(&file, port, &[("app", servers, SLOW)]));
    let nginx = nginx.restart("QUIT", Duration::ZERO);
    let page = status_page(port, "/status");
    assert_eq!(
        text_state(&page, "app", &dead.addr()),
        Some("DOWN"),
        "{page}"
    );
    assert_eq!(text_state(&page, "app", &live.addr()), Some("up"), "{page}");
    let h = health(port, "app", &dead.addr());
    assert!(
        h["checks"].as_u64().unwrap() >= checks_before,
        "counters kept: {h} (had {checks_before} checks)"
    );
    assert_eq!(h["status"], "down", "{h}");

    // No request goes to the dead peer: it is out from the first request.
    live.reset_counts();
    assert_eq!(requests(port, "app", 10), vec![200; 10]);
    assert_eq!(live.proxied(), 10);

    let log = nginx.stop();
    let read = lines_with(&log, "upstream_healthcheck: state of 2 peers");
    assert_eq!(read.len(), 1, "{log}");
    assert!(
        read[0].contains("[notice]") && read[0].contains(&format!("taken from \"{file}\"")),
        "{log}"
    );
    assert!(lines_with(&log, "is ignored").is_empty(), "{log}");
}

#[test]
fn a_gray_release_and_an_exclusion_hold_after_stop_and_start_less_the_time_stopped() {
    let (a, b, batch) = (Backend::new(), Backend::new(), Backend::new());
    let dir = state_dir();
    let file = dir.path().join("hc.state").display().to_string();
    let port = free_port();
    let nginx = Nginx::start(&conf(
        &file,
        port,
        &[
            ("app", vec![a.addr(), b.addr()], FAST),
            ("batch", vec![batch.addr()], FAST),
        ],
    ));
    wait_text_state(port, "app", &a.addr(), "up", WAIT);
    let gray = format!("t=gray&u=app&p={}", a.addr());
    post_ok(port, &format!("{gray}&a=set&ttl=60"), SET);
    post_ok(port, "t=ex&u=batch&a=set&ttl=120", SET);
    // A manual down that ends while nginx is stopped.
    let short = format!("t=gray&u=app&p={}", b.addr());
    post_ok(port, &format!("{short}&a=set&ttl=1"), SET);
    let set_at = Instant::now();

    // `nginx -s stop`, and nginx stays stopped for 2 s.
    let nginx = nginx.restart("TERM", Duration::from_secs(2));
    let stopped = set_at.elapsed().as_secs();
    assert!(stopped >= 2);

    let ttl = get_ttl(port, &format!("{gray}&a=get")).expect("the gray release holds");
    assert!(
        (60 - stopped - 2..=58).contains(&ttl),
        "ttl {ttl} after {stopped} s"
    );
    let ttl = get_ttl(port, "t=ex&u=batch&a=get").expect("the exclusion holds");
    assert!(
        (120 - stopped - 2..=118).contains(&ttl),
        "ttl {ttl} after {stopped} s"
    );
    assert_eq!(
        get_ttl(port, &format!("{short}&a=get")),
        None,
        "ended while stopped"
    );
    let page = status_page(port, "/status");
    assert_eq!(
        text_state(&page, "app", &a.addr()),
        Some("DOWN (manual)"),
        "{page}"
    );
    assert_eq!(text_state(&page, "app", &b.addr()), Some("up"), "{page}");
    assert!(page.contains("Upstream batch (NO checkers)"), "{page}");

    // The gray release keeps every request on b.
    let (a_before, b_before) = (a.proxied(), b.proxied());
    assert_eq!(requests(port, "app", 10), vec![200; 10]);
    assert_eq!((a.proxied() - a_before, b.proxied() - b_before), (0, 10));

    // Ending it works as before the restart.
    post_ok(port, &format!("{gray}&a=del"), DELETED);
    assert_eq!(get_ttl(port, &format!("{gray}&a=get")), None);
    nginx.stop();
}

#[test]
fn a_corrupt_or_foreign_file_is_reported_in_one_line_and_nginx_starts_fresh() {
    let backend = Backend::new();
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "garbage",
            b"\x00\x01\x02 not a state",
            "not JSON (expected value at line 1 column 1)",
        ),
        (
            "truncated",
            br#"{"format": "nginx-upstream-healthcheck-state", "version": 1, "upstreams": [{"na"#,
            "the file is truncated",
        ),
        (
            "foreign",
            br#"{"hello": "world"}"#,
            "not a state file of upstream_healthcheck",
        ),
        (
            "newer",
            br#"{"format": "nginx-upstream-healthcheck-state", "version": 2, "upstreams": []}"#,
            "version 2 is not supported, this module reads version 1",
        ),
        ("empty", b"", "the file is empty"),
    ];
    for (what, bytes, reason) in cases {
        let dir = state_dir();
        let path = dir.path().join("hc.state");
        fs::write(&path, bytes).unwrap();
        let port = free_port();
        // default_down: a peer starts down unless a file says otherwise.
        let check = "upstream_healthcheck type=http interval=1h fall=3 rise=3 default_down=on;";
        let nginx = Nginx::start(&conf(
            &path.display().to_string(),
            port,
            &[("app", vec![backend.addr()], check)],
        ));
        let page = status_page(port, "/status");
        assert_eq!(
            text_state(&page, "app", &backend.addr()),
            Some("DOWN"),
            "{what}: {page}"
        );
        // The writer replaces it with the state of this start.
        wait_file(&path, "a valid state file", |doc| {
            file_peer(doc, "app", &backend.addr()).is_some()
        });
        let log = nginx.stop();
        let lines = lines_with(&log, "state file");
        assert_eq!(
            lines.len(),
            1,
            "{what}: one line about the file expected:\n{log}"
        );
        let tail = format!(
            "upstream_healthcheck: state file \"{}\" is ignored: {reason}",
            path.display()
        );
        assert!(
            lines[0].contains("[warn]") && lines[0].ends_with(&tail),
            "{what}: {}\nwant ...{tail}",
            lines[0]
        );
    }
}

#[test]
fn a_missing_file_is_a_fresh_start_and_the_file_appears() {
    let backend = Backend::new();
    let dir = state_dir();
    let path = dir.path().join("hc.state");
    let port = free_port();
    let nginx = start_app(&path.display().to_string(), port, &backend);
    wait_text_state(port, "app", &backend.addr(), "up", WAIT);
    let doc = wait_file(&path, "the state file", |doc| {
        file_peer(doc, "app", &backend.addr()).is_some()
    });
    assert_eq!(doc["format"], "nginx-upstream-healthcheck-state");
    assert_eq!(doc["version"], 1);
    assert_eq!(file_peer(&doc, "app", &backend.addr()).unwrap()["up"], true);
    // Written atomically: no temporary file stays behind.
    let names: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, vec![path.clone()]);
    let log = nginx.stop();
    assert!(lines_with(&log, "state").is_empty(), "{log}");
}

#[test]
fn a_directory_that_cannot_be_written_is_reported_once_and_so_is_the_recovery() {
    let backend = Backend::new();
    let port = free_port();
    // A relative name is in the prefix, in a directory that is not there yet.
    let nginx = start_app("state/hc.state", port, &backend);
    let dir = nginx.prefix().join("state");
    let path = dir.join("hc.state");
    let error = format!(
        "upstream_healthcheck: cannot write state file \"{}\": open() \"{}.",
        path.display(),
        path.display()
    );
    poll(Duration::from_secs(5), "the write error", || {
        let log = nginx.error_log();
        match lines_with(&log, "cannot write state file").as_slice() {
            [line] if line.contains("[error]") && line.contains(&error) => Ok(()),
            _ => Err(log),
        }
    });
    // Probes go on and change counters; a verdict changes too: still one line.
    backend.stop();
    wait_text_state(port, "app", &backend.addr(), "DOWN", WAIT);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    poll(Duration::from_secs(5), "the recovery notice", || {
        let log = nginx.error_log();
        match lines_with(&log, "is written again").as_slice() {
            [line] if line.contains("[notice]") => Ok(()),
            _ => Err(log),
        }
    });
    let doc = wait_file(&path, "the state file", |_| true);
    assert_eq!(
        file_peer(&doc, "app", &backend.addr()).unwrap()["up"],
        false
    );
    let log = nginx.stop();
    assert_eq!(
        lines_with(&log, "cannot write state file").len(),
        1,
        "{log}"
    );
}

#[test]
fn when_the_writing_worker_dies_another_takes_over() {
    let (a, b) = (Backend::new(), Backend::new());
    let dir = state_dir();
    let path = dir.path().join("hc.state");
    let port = free_port();
    let nginx = Nginx::start_with(
        "worker_processes 2;",
        &conf(
            &path.display().to_string(),
            port,
            &[("app", vec![a.addr(), b.addr()], FAST)],
        ),
    );
    wait_file(&path, "the state file", |doc| {
        file_peer(doc, "app", &a.addr()).is_some()
    });
    // Every worker dies at once, the writer among them; the master starts new ones.
    let old = nginx.worker_pids();
    for &pid in &old {
        signal("KILL", pid);
    }
    poll(Duration::from_secs(5), "new workers", || {
        let now = nginx.worker_pids();
        if now.len() == 2 && now.iter().all(|p| !old.contains(p)) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    post_ok(port, &format!("t=gray&u=app&p={}&a=set", a.addr()), SET);
    wait_file(&path, "the manual down in the file", |doc| {
        file_peer(doc, "app", &a.addr())
            .and_then(|p| p.get("manual_down"))
            .is_some_and(|m| m["until"].is_null())
    });
    // A worker killed while it held the zone lock: the master releases it and says so.
    nginx.stop_allowing(|l| l.contains("exited on signal 9") || l.contains("was locked by"));
}

#[test]
fn a_file_that_cannot_be_read_is_reported_once_and_nginx_starts() {
    let backend = Backend::new();
    let dir = state_dir();
    // A directory where the file should be: it can be neither read nor replaced.
    let path = dir.path().join("hc.state");
    fs::create_dir(&path).unwrap();
    let port = free_port();
    let nginx = start_app(&path.display().to_string(), port, &backend);
    wait_text_state(port, "app", &backend.addr(), "up", WAIT);
    let write_error = format!("cannot write state file \"{}\": rename()", path.display());
    poll(WAIT, "the write error", || {
        let log = nginx.error_log();
        match lines_with(&log, &write_error).as_slice() {
            [line] if line.contains("[error]") => Ok(()),
            _ => Err(log),
        }
    });
    let log = nginx.stop();
    let read = lines_with(&log, "is ignored");
    assert_eq!(read.len(), 1, "{log}");
    assert!(
        read[0].contains("[warn]")
            && read[0].ends_with(&format!(
                "state file \"{}\" is ignored: read() failed (21: Is a directory)",
                path.display()
            )),
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "cannot write state file").len(),
        1,
        "{log}"
    );
}

#[test]
fn a_file_another_nginx_wrote_since_is_left_as_it_is_at_exit() {
    let backend = Backend::new();
    let dir = state_dir();
    let path = dir.path().join("hc.state");
    let port = free_port();
    let nginx = start_app(&path.display().to_string(), port, &backend);
    wait_file(&path, "the state file", |doc| {
        file_peer(doc, "app", &backend.addr()).is_some()
    });
    // The new master of a binary upgrade writes its own state (a new file renamed over it);
    // then the old master quits.
    let newer = format!(
        r#"{{"format": "nginx-upstream-healthcheck-state", "version": 1, "written": 1,
            "upstreams": [{{"name": "app", "peers": [{{"peer": "{}", "up": false}}]}}]}}"#,
        backend.addr()
    );
    let tmp = dir.path().join("newer.tmp");
    fs::write(&tmp, &newer).unwrap();
    fs::rename(&tmp, &path).unwrap();
    let log = nginx.stop();
    assert_eq!(fs::read_to_string(&path).unwrap(), newer);
    let kept = lines_with(&log, "was written by another process since");
    assert_eq!(kept.len(), 1, "{log}");
    assert!(kept[0].contains("[notice]"), "{log}");
}
