//! The Debian package, the way an operator meets it: `scripts/package.sh` builds it, lintian
//! finds no error in it, `apt-get install ./….deb` puts the module into the machine's own
//! nginx (enabled through `/etc/nginx/modules-enabled/`), an upstream with checks dropped into
//! `/etc/nginx/conf.d/` passes `nginx -t` with the stock nginx.conf, the system nginx serves
//! the status page with the checked peers, and `apt-get purge` leaves `/etc/nginx` exactly as
//! it was.
//!
//! It changes the machine, so it needs root (it fails, never skips, without it), runs once per
//! `scripts/test.sh` (`--test package`, not with each nginx target), holds a machine-wide lock
//! against a concurrent run, and restores the machine when it fails: a guard stops the nginx it
//! started, removes its conf.d file, purges the package and truncates the nginx logs back.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PKG: &str = "libnginx-mod-http-upstream-healthcheck";
const NGINX: &str = "/usr/sbin/nginx";
const MODULE: &str = "/usr/lib/nginx/modules/ngx_http_upstream_healthcheck_module.so";
const AVAILABLE: &str = "/usr/share/nginx/modules-available/mod-http-upstream-healthcheck.conf";
const ENABLED: &str = "/etc/nginx/modules-enabled/50-mod-http-upstream-healthcheck.conf";
/// The test's own upstream and status server, as an operator would drop them in.
const SITE: &str = "/etc/nginx/conf.d/ngx-hc-package-test.conf";
const PID_FILE: &str = "/run/nginx.pid";
const LOGS: [&str; 2] = ["/var/log/nginx/error.log", "/var/log/nginx/access.log"];
/// Written before the package goes in, removed once it is out: a run killed in between
/// (SIGKILL leaves no guard to run) is cleaned up by the next one.
const MARKER: &str = "/var/lib/ngx-hc-package-test.in-progress";
const LOCK: &str = "/run/lock/ngx-hc-package-test.lock";
/// lintian warnings kept on purpose, each explained in README ("Installing from the package").
const LINTIAN_KEPT: [&str; 1] = ["initial-upload-closes-no-bugs"];

const BUILD_DEADLINE: Duration = Duration::from_secs(1500);
const APT_DEADLINE: Duration = Duration::from_secs(600);
const TOOL_DEADLINE: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(20);
const STOP_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

fn root_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command to its end (bounded): (success, stdout + stderr).
fn run(program: &str, args: &[&str], timeout: Duration) -> (bool, String) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .current_dir(root_dir());
    let what = format!("{program} {}", args.join(" "));
    let (status, out, err) = run_bounded(cmd, &what, timeout);
    (status.success(), format!("{out}{err}"))
}

fn apt_get(args: &[&str]) -> (bool, String) {
    let mut all = vec!["-o", "DPkg::Lock::Timeout=300", "-y", "-q"];
    all.extend_from_slice(args);
    run("apt-get", &all, APT_DEADLINE)
}

fn installed(pkg: &str) -> bool {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .expect("run dpkg-query");
    String::from_utf8_lossy(&out.stdout) == "install ok installed"
}

/// `nginx -t` with the stock /etc/nginx/nginx.conf: (success, its output).
fn nginx_t() -> (bool, String) {
    run(NGINX, &["-t"], TOOL_DEADLINE)
}

// ---------------------------------------------------------------------------------------------
// What the test may change on the machine

/// One entry of a file tree: its type, mode, owner and contents (a symlink's target).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    content: Vec<u8>,
}

/// Every entry under `root`, by path, symlinks not followed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let ft = meta.file_type();
            let (kind, content) = if ft.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                ("symlink", target.into_os_string().into_encoded_bytes())
            } else if ft.is_dir() {
                ("dir", Vec::new())
            } else if ft.is_file() {
                ("file", fs::read(&path).expect("read file"))
            } else {
                ("other", Vec::new())
            };
            out.insert(
                path.clone(),
                Entry {
                    kind,
                    mode: meta.mode(),
                    owner: (meta.uid(), meta.gid()),
                    content,
                },
            );
            if ft.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

/// What differs between two snapshots, one line per path.
fn tree_diff(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, b) in before {
        match after.get(path) {
            None => out.push(format!("removed {}", path.display())),
            Some(a) if a != b => out.push(format!("changed {}", path.display())),
            _ => {}
        }
    }
    for (path, a) in after {
        if !before.contains_key(path) {
            out.push(format!("added {} ({})", path.display(), a.kind));
        }
    }
    out
}

/// Whether `path` ends in a live process's pid.
fn live_pid(path: &str) -> Option<u32> {
    let pid = fs::read_to_string(path).ok()?.trim().parse::<u32>().ok()?;
    pid_alive(pid).then_some(pid)
}

/// SIGQUIT `pid` and wait (bounded); SIGKILL if it is still there. True if it quit in time.
fn quit(pid: u32) -> bool {
    signal("QUIT", pid);
    let deadline = Instant::now() + STOP_DEADLINE;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            signal("KILL", pid);
            thread::sleep(Duration::from_millis(200));
            return false;
        }
        thread::sleep(POLL);
    }
    true
}

/// Puts the machine back when dropped, whatever happened: stops the nginx the test started,
/// removes the conf.d file, purges the package, truncates the nginx logs back, removes the
/// policy-rc.d it added.
struct Machine {
    /// The lock file, held (flock) for the guard's life.
    _lock: fs::File,
    nginx: Option<u32>,
    /// Log file lengths before (None: it did not exist).
    logs: Vec<(PathBuf, Option<u64>)>,
    policy_added: bool,
}

impl Machine {
    /// Takes the machine-wide lock (bounded wait), then cleans up after an earlier run that was
    /// killed before it could.
    fn take() -> Machine {
        fs::create_dir_all("/run/lock").expect("create /run/lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .unwrap_or_else(|e| panic!("open {LOCK}: {e}"));
        let deadline = Instant::now() + APT_DEADLINE;
        // SAFETY: `lock` is open for the whole loop, and flock only reads the descriptor.
        while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            assert!(
                Instant::now() < deadline,
                "another package test holds {LOCK} for more than {APT_DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
        if Path::new(MARKER).exists() {
            eprintln!("package test: cleaning up after an earlier run that did not finish");
            let _ = fs::remove_file(SITE);
            if installed(PKG) {
                let (ok, out) = apt_get(&["purge", PKG]);
                assert!(ok, "cannot purge the package an earlier run left:\n{out}");
            }
            let _ = fs::remove_file(MARKER);
        }
        Machine {
            _lock: lock,
            nginx: None,
            logs: LOGS
                .iter()
                .map(|l| (PathBuf::from(l), fs::metadata(l).ok().map(|m| m.len())))
                .collect(),
            policy_added: false,
        }
    }

    /// Keeps maintainer scripts from starting or reloading the nginx service, as
    /// scripts/setup.sh does (the standard policy-rc.d hook).
    fn deny_service_starts(&mut self) {
        let policy = Path::new("/usr/sbin/policy-rc.d");
        if !policy.exists() {
            fs::write(policy, "#!/bin/sh\nexit 101\n").expect("write policy-rc.d");
            fs::set_permissions(policy, fs::Permissions::from_mode(0o755)).expect("chmod");
            self.policy_added = true;
        }
    }

    /// Starts the system nginx as its init script does (it daemonizes), directly, not
    /// through systemd; returns the master's pid.
    fn start_nginx(&mut self) -> u32 {
        let out = Command::new(NGINX)
            .args(["-g", "daemon on; master_process on;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run nginx");
        let pid = poll(SETTLE, "nginx writes a live pid to /run/nginx.pid", || {
            live_pid(PID_FILE).ok_or_else(|| format!("nginx exited {out}"))
        });
        self.nginx = Some(pid);
        pid
    }

    /// Stops the nginx it started (SIGQUIT, bounded); true if it quit in time.
    fn stop_nginx(&mut self) -> bool {
        match self.nginx.take() {
            Some(pid) => quit(pid),
            None => true,
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop_nginx();
        let _ = fs::remove_file(SITE);
        if installed(PKG) {
            let (ok, out) = apt_get(&["purge", PKG]);
            if !ok {
                eprintln!("package test: purging {PKG} failed:\n{out}");
            }
        }
        if !installed(PKG) {
            let _ = fs::remove_file(MARKER);
        }
        for (path, len) in &self.logs {
            match len {
                Some(len) => {
                    if let Ok(f) = fs::OpenOptions::new().write(true).open(path) {
                        let _ = f.set_len(*len);
                    }
                }
                None => {
                    let _ = fs::remove_file(path);
                }
            }
        }
        if self.policy_added {
            let _ = fs::remove_file("/usr/sbin/policy-rc.d");
        }
    }
}

/// Fails unless this process may change the machine's packages.
fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the package test installs a Debian package into the machine's nginx and needs root \
         (euid is {euid}): run scripts/test.sh as root"
    );
}

/// Fails unless port 80 (IPv4 and IPv6), where the stock default site listens, is free.
fn require_port_80() {
    for addr in ["0.0.0.0:80", "[::]:80"] {
        if let Err(e) = TcpListener::bind(addr) {
            let (_, who) = run("ss", &["-ltnp", "sport = :80"], TOOL_DEADLINE);
            panic!(
                "port 80 ({addr}) is taken ({e}): the stock nginx.conf's default site listens \
                 there, so the system nginx cannot start. Stop what holds it:\n{who}"
            );
        }
    }
}

#[test]
fn the_debian_package_installs_into_the_system_nginx_and_purges_without_a_trace() {
    require_root();
    let mut machine = Machine::take();
    assert!(
        !installed(PKG),
        "{PKG} is already installed (not by this test): this test installs and purges it, \
         so purge it first (apt-get purge {PKG})"
    );
    assert!(
        live_pid(PID_FILE).is_none(),
        "the system nginx is running ({PID_FILE}); scripts/setup.sh stops it"
    );
    require_port_80();
    let (ok, out) = nginx_t();
    assert!(
        ok,
        "the stock configuration fails nginx -t before the package is installed:\n{out}"
    );
    let etc_before = snapshot(Path::new("/etc/nginx"));

    // The operator builds the package ...
    let mut script = Command::new(root_dir().join("scripts/package.sh"));
    script.current_dir(root_dir());
    let (status, out, err) = run_bounded(script, "scripts/package.sh", BUILD_DEADLINE);
    assert!(
        status.success(),
        "scripts/package.sh failed ({status}):\n{out}{err}"
    );
    // The path is its last line of output (stdout; cargo's notes go to stderr).
    let deb = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(
        deb.is_file()
            && deb
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{PKG}_"))),
        "scripts/package.sh did not end with the path of the package:\n{out}\n--- stderr ---\n{err}"
    );

    // ... lintian finds no error and no warning but those the README explains ...
    let (_, out) = run("lintian", &[deb.to_str().unwrap()], TOOL_DEADLINE);
    let problems: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .filter(|l| !LINTIAN_KEPT.iter().any(|t| l.contains(&format!(": {t} "))))
        .collect();
    assert!(
        problems.is_empty(),
        "lintian on {}:\n{}\n--- full output ---\n{out}",
        deb.display(),
        problems.join("\n")
    );

    // ... and installs it. apt refuses it beside another nginx: it depends on the exact ABI.
    let (_, fields) = run("dpkg-deb", &["-f", deb.to_str().unwrap()], TOOL_DEADLINE);
    let (_, provides) = run(
        "dpkg-query",
        &["-W", "-f=${Provides}\n", "nginx"],
        TOOL_DEADLINE,
    );
    let abi = provides
        .split(',')
        .map(str::trim)
        .find(|p| p.starts_with("nginx-abi-"))
        .unwrap_or_else(|| panic!("the nginx package provides no nginx-abi-*: {provides}"));
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends field:\n{fields}"));
    assert!(
        depends.split(',').any(|d| d.trim() == abi),
        "the package does not depend on exactly {abi}: Depends: {depends}"
    );
    machine.deny_service_starts();
    fs::write(MARKER, "").expect("write the in-progress marker");
    let (ok, out) = apt_get(&["install", "--no-install-recommends", deb.to_str().unwrap()]);
    assert!(ok, "apt-get install {} failed:\n{out}", deb.display());
    assert!(installed(PKG), "{PKG} not installed after apt-get:\n{out}");
    assert!(Path::new(MODULE).is_file(), "{MODULE} missing");
    assert_eq!(
        fs::read_link(ENABLED).ok(),
        Some(PathBuf::from(AVAILABLE)),
        "the maintainer script did not enable the module through {ENABLED}"
    );
    assert_eq!(
        fs::read_to_string(AVAILABLE).ok().as_deref(),
        Some("load_module modules/ngx_http_upstream_healthcheck_module.so;\n")
    );

    // An upstream with checks and a status page, dropped into conf.d.
    let up = Backend::new();
    let down = dead_addr();
    let port = free_port();
    fs::write(
        SITE,
        format!(
            "upstream pkg_backend {{\n    server {};\n    server {down};\n    \
             upstream_healthcheck interval=200ms timeout=1s fall=1 rise=1 uri=/health;\n}}\n\
             server {{\n    listen 127.0.0.1:{port};\n    \
             location / {{ proxy_pass http://pkg_backend; }}\n    \
             location = /upstream_status {{ upstream_healthcheck_status; }}\n}}\n",
            up.addr()
        ),
    )
    .expect("write the conf.d file");
    let (ok, out) = nginx_t();
    assert!(
        ok && out.contains("test is successful"),
        "nginx -t with the module and the conf.d upstream:\n{out}"
    );

    // The system nginx probes the peers and shows them.
    let log_start = fs::metadata(LOGS[0]).map(|m| m.len()).unwrap_or(0);
    let master = machine.start_nginx();
    let want = format!(
        "Upstream pkg_backend\n    Primary Peers\n        {} up\n        {down} DOWN\n    Backup Peers\n",
        up.addr()
    );
    poll(SETTLE, "the status page shows the checked peers", || {
        let page = http_get(port, "/upstream_status").map_err(|e| e.to_string())?;
        if page.0 == 200 && page.2.contains(&want) {
            Ok(())
        } else {
            Err(format!("{page:?}"))
        }
    });
    let (status, _, body) = http_get(port, "/").expect("a request through the upstream");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("backend {} status 200\n", up.port()));
    // (The stock error_log level is `error`: the `warn` line of the DOWN verdict is not there.)
    let log = fs::read(LOGS[0])
        .map(|b| String::from_utf8_lossy(&b[log_start as usize..]).into_owned())
        .unwrap_or_default();
    assert!(alert_lines(&log).is_empty(), "{log}");
    assert!(
        machine.stop_nginx(),
        "nginx {master} did not quit within {STOP_DEADLINE:?}"
    );

    // Purged, the package leaves /etc/nginx as it found it, and nginx -t still passes.
    fs::remove_file(SITE).expect("remove the conf.d file");
    let (ok, out) = apt_get(&["purge", PKG]);
    assert!(ok, "apt-get purge {PKG} failed:\n{out}");
    assert!(!installed(PKG), "{PKG} still installed:\n{out}");
    fs::remove_file(MARKER).expect("remove the in-progress marker");
    assert!(!Path::new(MODULE).exists(), "{MODULE} left behind");
    assert!(!Path::new(AVAILABLE).exists(), "{AVAILABLE} left behind");
    let diff = tree_diff(&etc_before, &snapshot(Path::new("/etc/nginx")));
    assert!(
        diff.is_empty(),
        "/etc/nginx differs after the purge:\n{}",
        diff.join("\n")
    );
    let (ok, out) = nginx_t();
    assert!(ok, "nginx -t fails after the purge:\n{out}");
}
