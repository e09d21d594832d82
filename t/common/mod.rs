//! Integration-test harness shared by every test in `t/` (`mod common;`): runs a real nginx with
//! the module loaded (this file); `admin` (the control endpoint), `backend` (scriptable HTTP
//! backends), `etcd` (a real etcd and etcdctl), `http` (polling and a small HTTP client),
//! `json` (status documents, serde_json), `load` (a request loop on its own thread), `ports`
//! (listen ports that cannot collide), `procfs` (sockets of processes), `process` (external
//! programs), `prometheus` (a Prometheus server scraping nginx, promtool), `stream` (loading
//! the stream module) and `stream_backends` (TCP and UDP servers) hold the rest. Everything is
//! re-exported here, so tests name it `common::NAME`.
//!
//! The nginx binary and module come from `NGX_HC_NGINX` / `NGX_HC_MODULE`, which
//! `scripts/test.sh` exports for each target (`NGX_HC_TARGET` = vendored | debian).
#![allow(dead_code)]

mod admin;
mod backend;
mod etcd;
mod http;
mod json;
mod load;
mod ports;
mod process;
mod procfs;
mod prometheus;
mod slow_tls;
mod stream;
mod stream_backends;
mod tls;

// Not every test crate uses every module.
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use etcd::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use json::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use ports::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use procfs::*;
#[allow(unused_imports)]
pub use prometheus::*;
#[allow(unused_imports)]
pub use slow_tls::*;
#[allow(unused_imports)]
pub use stream::*;
#[allow(unused_imports)]
pub use stream_backends::*;
#[allow(unused_imports)]
pub use tls::*;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const START_DEADLINE: Duration = Duration::from_secs(10);
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);
const STOP_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

fn env_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "{var} is not set: run the integration tests through scripts/test.sh \
             (it builds nginx + the module for each target and exports NGX_HC_NGINX / NGX_HC_MODULE)"
        ),
    }
}

/// The nginx binary under test (`NGX_HC_NGINX`).
pub fn nginx_bin() -> PathBuf {
    env_path("NGX_HC_NGINX")
}

/// The module `.so` under test (`NGX_HC_MODULE`).
pub fn module_path() -> PathBuf {
    env_path("NGX_HC_MODULE")
}

/// `vendored` or `debian` (`NGX_HC_TARGET`), "unknown" when unset.
pub fn target_name() -> String {
    std::env::var("NGX_HC_TARGET").unwrap_or_else(|_| "unknown".into())
}

/// `load_module <module>;`, for hand-written full configs (`nginx_test_raw`).
pub fn load_module_line() -> String {
    format!("load_module {};", module_path().display())
}

// ---------------------------------------------------------------------------------------------
// Temp dirs

/// A unique directory under `std::env::temp_dir()`, world-traversable (nginx workers run as
/// `nobody` when the master is root). Removed on drop, unless the thread is panicking: then it is
/// kept and its path printed.
pub struct TempPrefix {
    path: PathBuf,
}

impl TempPrefix {
    pub fn new() -> TempPrefix {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..100 {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "ngx-hc-{}-{}-{:08x}",
                std::process::id(),
                n,
                nanos
            ));
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .expect("chmod temp prefix");
                    return TempPrefix { path };
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp prefix {}: {e}", path.display()),
            }
        }
        panic!("cannot create a unique temp prefix");
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A directory for state files (`upstream_healthcheck_state_file`) that outlives the nginx
/// runs of a story, writable by the workers (which run as `nobody` when the tests run as root).
pub fn state_dir() -> TempPrefix {
    let dir = TempPrefix::new();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod state dir");
    dir
}

/// The state file at `path` as JSON, once it exists, parses and satisfies `ok` (within 10 s).
pub fn wait_file(
    path: &Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    poll(Duration::from_secs(10), what, || {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if ok(&doc) {
            Ok(doc)
        } else {
            Err(text)
        }
    })
}

impl Default for TempPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempPrefix {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test failed: keeping nginx prefix {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

/// The full nginx.conf the harness writes: module, `worker_processes 1;` (unless `main_extra`
/// sets worker_processes), error log at info, pid, lock file, events, and an http block with
/// `access_log off;` and every temp path inside `prefix`, then `http_body`.
pub fn render_conf(prefix: &Path, main_extra: &str, http_body: &str) -> String {
    let p = prefix.display();
    let workers = if main_extra.contains("worker_processes") {
        ""
    } else {
        "worker_processes 1;\n"
    };
    format!(
        "{load}\n{workers}error_log {p}/error.log info;\npid {p}/nginx.pid;\nlock_file {p}/nginx.lock;\n{main_extra}\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    access_log off;\n\
         \x20   client_body_temp_path {p}/temp/client_body;\n    proxy_temp_path {p}/temp/proxy;\n\
         \x20   fastcgi_temp_path {p}/temp/fastcgi;\n    uwsgi_temp_path {p}/temp/uwsgi;\n\
         \x20   scgi_temp_path {p}/temp/scgi;\n\n{http_body}\n}}\n",
        load = load_module_line(),
    )
}

/// Ports of every `listen 127.0.0.1:PORT` (not `udp`) in a config.
fn listen_ports(conf: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut rest = conf;
    while let Some(i) = rest.find("listen") {
        rest = &rest[i + "listen".len()..];
        let t = rest.trim_start();
        if t.len() == rest.len() {
            continue; // part of a longer word
        }
        if let Some(addr) = t.strip_prefix("127.0.0.1:") {
            let digits: String = addr.chars().take_while(|c| c.is_ascii_digit()).collect();
            // A `listen ... udp` (stream) takes no connections to wait for.
            let udp = addr
                .split(';')
                .next()
                .is_some_and(|l| l.split_whitespace().any(|w| w == "udp"));
            if let (Ok(port), false) = (digits.parse::<u16>(), udp) {
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
    }
    ports
}

/// The arguments that run nginx in the foreground (`daemon off`) on `<prefix>/nginx.conf`, with
/// `prefix` as its prefix (`-p`) and `<prefix>/error.log` as its early error log (`-e`).
pub fn foreground_args(prefix: &Path) -> Vec<OsString> {
    vec![
        "-p".into(),
        prefix.into(),
        "-c".into(),
        prefix.join("nginx.conf").into(),
        "-e".into(),
        prefix.join("error.log").into(),
        "-g".into(),
        "daemon off;".into(),
    ]
}

/// Creates `temp` and `logs` (mode 755) in an nginx prefix.
pub fn prepare_prefix(prefix: &Path) {
    for d in ["temp", "logs"] {
        let dir = prefix.join(d);
        fs::create_dir_all(&dir).expect("create prefix dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod prefix dir");
    }
}

fn run_nginx_t(prefix: &TempPrefix, conf: &str) -> (bool, String) {
    prepare_prefix(prefix.path());
    let conf_path = prefix.path().join("nginx.conf");
    fs::write(&conf_path, conf).expect("write nginx.conf");
    let out = Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.path().join("error.log"))
        .stdin(Stdio::null())
        .output()
        .expect("run nginx -t");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.success(), text)
}

/// `nginx -t` on the config `Nginx::start(http_body)` would write: (success, stderr + stdout).
pub fn nginx_test(http_body: &str) -> (bool, String) {
    let _ = (nginx_bin(), module_path());
    let prefix = TempPrefix::new();
    let conf = render_conf(prefix.path(), "", http_body);
    run_nginx_t(&prefix, &conf)
}

/// `nginx -t` on `full_conf` verbatim (add `load_module_line()` yourself). The prefix (`-p`) is
/// a fresh temp dir, so relative paths in the config land there.
pub fn nginx_test_raw(full_conf: &str) -> (bool, String) {
    let _ = nginx_bin();
    let prefix = TempPrefix::new();
    run_nginx_t(&prefix, full_conf)
}

/// Whether process `pid` is alive (a zombie is not).
pub fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; treat it as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, r)| !r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// (pid, cmdline) of every live child of `ppid`.
pub fn children_of(ppid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after "(comm)": state ppid ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let parent = fields.next().and_then(|s| s.parse::<u32>().ok());
        if parent != Some(ppid) || state == "Z" {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        out.push((pid, cmdline));
    }
    out.sort();
    out
}

/// Pids of every live child of `ppid`.
pub fn child_pids(ppid: u32) -> Vec<u32> {
    children_of(ppid).into_iter().map(|(pid, _)| pid).collect()
}

/// `kill -SIG pid`, ignoring the outcome.
pub fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A running nginx (master in the foreground with `daemon off`, as a child of the test process)
/// in its own `TempPrefix`. Dropping it stops every nginx process it started.
pub struct Nginx {
    prefix: TempPrefix,
    main_extra: String,
    conf: String,
    child: Option<Child>,
    master: u32,
    /// Every worker pid seen, so Drop can kill orphans as a last resort.
    seen_workers: Mutex<HashSet<u32>>,
}

impl Nginx {
    /// Starts nginx with `http_body` inside `http { }` (see `render_conf`).
    pub fn start(http_body: &str) -> Nginx {
        Nginx::start_with("", http_body)
    }

    /// Like `start`, with extra main-context directives (e.g. `worker_processes 4;`).
    pub fn start_with(main_extra: &str, http_body: &str) -> Nginx {
        let _ = (nginx_bin(), module_path()); // panic on missing env before making a prefix
        let prefix = TempPrefix::new();
        let conf = render_conf(prefix.path(), main_extra, http_body);
        Nginx::launch(prefix, main_extra.to_string(), conf)
    }

    /// Writes `conf` as nginx.conf in `prefix`, runs nginx on it in the foreground (stdout and
    /// stderr to `stderr.log`) and waits until it is ready.
    fn launch(prefix: TempPrefix, main_extra: String, conf: String) -> Nginx {
        let bin = nginx_bin();
        prepare_prefix(prefix.path());
        fs::write(prefix.path().join("nginx.conf"), &conf).expect("write nginx.conf");
        let stderr = fs::File::create(prefix.path().join("stderr.log")).expect("create stderr.log");
        let child = Command::new(&bin)
            .args(foreground_args(prefix.path()))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup stderr.log"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let master = child.id();
        let mut nginx = Nginx {
            prefix,
            main_extra,
            conf,
            child: Some(child),
            master,
            seen_workers: Mutex::new(HashSet::new()),
        };
        nginx.wait_ready();
        nginx
    }

    fn expected_workers(&self) -> usize {
        let Some(i) = self.main_extra.find("worker_processes") else {
            return 1;
        };
        let v: String = self.main_extra[i + "worker_processes".len()..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        v.parse().unwrap_or(1)
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("{status}")),
            _ => None,
        }
    }

    fn startup_failure(&mut self, why: &str) -> ! {
        let stderr = fs::read_to_string(self.prefix.path().join("stderr.log")).unwrap_or_default();
        panic!(
            "nginx ({}, target {}) {why}\n--- stderr ---\n{stderr}\n--- error.log ---\n{}\n--- nginx.conf ---\n{}",
            nginx_bin().display(),
            target_name(),
            self.error_log(),
            self.conf
        );
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        let pid_file = self.prefix.path().join("nginx.pid");
        let ports = listen_ports(&self.conf);
        let want = self.expected_workers();
        loop {
            if let Some(status) = self.exited() {
                self.startup_failure(&format!("exited during startup ({status})"));
            }
            let ready = pid_file.exists()
                && self.worker_pids().len() >= want
                && ports.iter().all(|&p| port_accepts(p));
            if ready {
                return;
            }
            if Instant::now() >= deadline {
                self.startup_failure(&format!(
                    "not ready after {START_DEADLINE:?} (pid file, {want} worker(s), ports {ports:?})"
                ));
            }
            thread::sleep(POLL);
        }
    }

    pub fn prefix(&self) -> &Path {
        self.prefix.path()
    }

    /// The current contents of `<prefix>/error.log`.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.prefix.path().join("error.log")).unwrap_or_default()
    }

    pub fn master_pid(&self) -> u32 {
        self.master
    }

    /// Live worker processes of the master ("nginx: worker process", not those already
    /// "is shutting down"; cache manager/loader excluded).
    pub fn worker_pids(&self) -> Vec<u32> {
        let pids: Vec<u32> = children_of(self.master)
            .into_iter()
            .filter(|(_, cmd)| {
                cmd.starts_with("nginx: worker process") && !cmd.contains("shutting down")
            })
            .map(|(pid, _)| pid)
            .collect();
        self.seen_workers
            .lock()
            .unwrap()
            .extend(pids.iter().copied());
        pids
    }

    /// Every live child of the master (workers, shutting-down workers, cache processes).
    fn all_children(&self) -> Vec<u32> {
        let pids = child_pids(self.master);
        self.seen_workers
            .lock()
            .unwrap()
            .extend(pids.iter().copied());
        pids
    }

    /// Rewrites nginx.conf with a new http body (same main_extra); takes effect on `reload()`.
    pub fn rewrite_conf(&mut self, http_body: &str) {
        let main_extra = self.main_extra.clone();
        self.rewrite_conf_with(&main_extra, http_body);
    }

    /// Rewrites nginx.conf with new main-context extras and http body.
    pub fn rewrite_conf_with(&mut self, main_extra: &str, http_body: &str) {
        self.main_extra = main_extra.to_string();
        self.conf = render_conf(self.prefix.path(), main_extra, http_body);
        fs::write(self.prefix.path().join("nginx.conf"), &self.conf).expect("rewrite nginx.conf");
    }

    /// SIGHUP; waits until the worker set is entirely new, the old workers are gone and every
    /// `listen 127.0.0.1:PORT` accepts — or 10 s pass, or a new `[emerg]` shows up in the error log
    /// (rejected config: old workers keep running). Returns the time taken.
    pub fn reload(&mut self) -> Duration {
        let start = Instant::now();
        let old: Vec<u32> = self.all_children();
        let log_len = self.error_log().len();
        let ports = listen_ports(&self.conf);
        signal("HUP", self.master);
        let deadline = start + RELOAD_DEADLINE;
        while Instant::now() < deadline {
            let now = self.worker_pids();
            let fresh = !now.is_empty() && now.iter().all(|p| !old.contains(p));
            let old_gone = old.iter().all(|&p| !pid_alive(p));
            if fresh && old_gone && ports.iter().all(|&p| port_accepts(p)) {
                break;
            }
            if self
                .error_log()
                .get(log_len..)
                .is_some_and(|s| s.contains("[emerg]"))
            {
                break;
            }
            thread::sleep(POLL);
        }
        start.elapsed()
    }

    /// SIGQUIT (graceful), waits up to 10 s for master and workers to exit, then asserts the
    /// error log has no `[alert]`, `[crit]` or `[emerg]` line. Returns the error log.
    pub fn stop(mut self) -> String {
        let graceful = self.shutdown();
        let log = self.error_log();
        assert!(
            graceful,
            "nginx did not exit within {STOP_DEADLINE:?} of SIGQUIT (graceful shutdown blocked?); it was killed.\n{log}"
        );
        let bad = alert_lines(&log);
        assert!(
            bad.is_empty(),
            "error log has alert/crit/emerg lines:\n{}\n--- full log ---\n{log}",
            bad.join("\n")
        );
        log
    }

    /// Like `stop`, without the error-log assertions (for tests that expect such lines).
    pub fn stop_unchecked(mut self) -> String {
        self.shutdown();
        self.error_log()
    }

    /// Stops nginx with `sig` (`QUIT` as `nginx -s quit`, `TERM` as `nginx -s stop`), asserts
    /// that every process exited within the stop deadline, keeps it stopped for `stopped_for`,
    /// then starts it again in the same prefix on the same nginx.conf (its error log goes on).
    pub fn restart(mut self, sig: &str, stopped_for: Duration) -> Nginx {
        let stopped = self.shutdown_with(sig);
        assert!(
            stopped,
            "nginx did not exit within {STOP_DEADLINE:?} of SIG{sig}\n{}",
            self.error_log()
        );
        thread::sleep(stopped_for);
        let prefix = std::mem::take(&mut self.prefix);
        let (main_extra, conf) = (self.main_extra.clone(), self.conf.clone());
        Nginx::launch(prefix, main_extra, conf)
    }

    /// SIGQUIT and wait; force-kill on timeout. True if everything exited gracefully in time.
    fn shutdown(&mut self) -> bool {
        self.shutdown_with("QUIT")
    }

    /// `sig` (QUIT or TERM) and wait; force-kill on timeout. True if everything exited in time.
    fn shutdown_with(&mut self, sig: &str) -> bool {
        if self.child.is_none() {
            return true;
        }
        self.all_children();
        signal(sig, self.master);
        let graceful = self.wait_all_gone(STOP_DEADLINE);
        if !graceful {
            signal("TERM", self.master);
            if !self.wait_all_gone(Duration::from_secs(2)) {
                for &pid in self.seen_workers.lock().unwrap().iter() {
                    if pid_alive(pid) {
                        self.keep_stack_of(pid);
                        signal("KILL", pid);
                    }
                }
                if let Some(child) = self.child.as_mut() {
                    let _ = child.kill();
                }
                self.wait_all_gone(Duration::from_secs(2));
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        graceful
    }

    /// Shows and keeps (`stuck-PID.txt` in the prefix) the stack of a process that would not
    /// stop, with gdb when the machine has it, for the post-mortem of the test that left it.
    fn keep_stack_of(&self, pid: u32) {
        let mut out = format!(
            "wchan: {}\n",
            fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
        );
        if let Ok(o) = Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .output()
        {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        eprintln!("process {pid} did not stop; its stack:\n{out}");
        let _ = fs::write(self.prefix.path().join(format!("stuck-{pid}.txt")), out);
    }

    fn wait_all_gone(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.all_children();
            let master_gone = self.exited().is_some();
            if master_gone
                && self
                    .seen_workers
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|&p| !pid_alive(p))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    /// Starts nginx with `full_conf` verbatim as nginx.conf in a fresh prefix (`-p`, so relative
    /// paths land in the prefix), `daemon off`. Add `load_module_line()` yourself. The config must
    /// write its pid to `nginx.pid` in the prefix (`pid nginx.pid;`) and its error log to
    /// `error.log` (`error_log error.log info;`) for readiness and `stop()` to work. Readiness
    /// as for `start` (pid file, `worker_processes` workers, every `listen 127.0.0.1:PORT`).
    /// Do not use `rewrite_conf*` on it.
    pub fn start_raw(full_conf: &str) -> Nginx {
        let _ = nginx_bin();
        let prefix = TempPrefix::new();
        let main_extra = format!("worker_processes {};", worker_processes_in(full_conf));
        Nginx::launch(prefix, main_extra, full_conf.to_string())
    }

    /// (pid, command line) of every live child of the master: workers (also those "shutting
    /// down"), cache manager, cache loader.
    pub fn child_processes(&self) -> Vec<(u32, String)> {
        self.all_children();
        children_of(self.master)
    }

    /// The path of the running nginx.conf.
    pub fn conf_path(&self) -> PathBuf {
        self.prefix.path().join("nginx.conf")
    }

    /// The text of the running (or last rewritten) nginx.conf.
    pub fn conf_text(&self) -> &str {
        &self.conf
    }

    /// Like `stop` (SIGQUIT, asserts a graceful exit within the stop deadline), but error-log
    /// lines with `[alert]`, `[crit]` or `[emerg]` are allowed when `allowed(line)` is true (e.g.
    /// the master's `worker process N exited on signal 9` after a test killed a worker). Returns
    /// the error log.
    pub fn stop_allowing(mut self, allowed: impl Fn(&str) -> bool) -> String {
        let graceful = self.shutdown();
        let log = self.error_log();
        assert!(
            graceful,
            "nginx did not exit within {STOP_DEADLINE:?} of SIGQUIT (graceful shutdown blocked?); it was killed.\n{log}"
        );
        let bad: Vec<&str> = alert_lines(&log)
            .into_iter()
            .filter(|l| !allowed(l))
            .collect();
        assert!(
            bad.is_empty(),
            "error log has unexpected alert/crit/emerg lines:\n{}\n--- full log ---\n{log}",
            bad.join("\n")
        );
        log
    }
}

/// The lines of an error log that contain `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// An `upstream NAME {}` block with one `server` line per address and `directives` after them.
pub fn upstream_block(name: &str, servers: &[String], directives: &str) -> String {
    let servers: String = servers
        .iter()
        .map(|s| format!("    server {s};\n"))
        .collect();
    format!("upstream {name} {{\n{servers}    {directives}\n}}\n")
}

/// The lines of an error log with `[alert]`, `[crit]` or `[emerg]`.
pub fn alert_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("[alert]") || l.contains("[crit]") || l.contains("[emerg]"))
        .collect()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.child.is_some() && !self.shutdown() {
            eprintln!(
                "nginx in {} did not stop gracefully; killed",
                self.prefix.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config checks with positions, hand-written configs, status page (added for the workers,
// reload, config_errors and examples tests)

/// The outcome of `nginx -t` together with the config it checked, so that a test can assert the
/// `file:line` nginx names in an `[emerg]` line.
pub struct ConfCheck {
    pub ok: bool,
    /// stderr + stdout of `nginx -t`.
    pub output: String,
    /// The path of the checked nginx.conf, as nginx names it in messages (the file itself is
    /// gone once the check returns).
    pub conf_path: PathBuf,
    /// The checked config text.
    pub conf: String,
}

impl ConfCheck {
    /// 1-based number of the only line of the config containing `needle`; panics when no line or
    /// more than one line contains it.
    pub fn line_of(&self, needle: &str) -> usize {
        let hits: Vec<usize> = self
            .conf
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .map(|(i, _)| i + 1)
            .collect();
        assert!(
            hits.len() == 1,
            "expected exactly one config line containing {needle:?}, found lines {hits:?}:\n{}",
            self.conf
        );
        hits[0]
    }

    /// `nginx: [emerg] <msg> in <conf_path>:<line>`, the line nginx prints for a config error.
    pub fn emerg_line(&self, msg: &str, line: usize) -> String {
        format!(
            "nginx: [emerg] {msg} in {}:{line}",
            self.conf_path.display()
        )
    }

    /// The output lines that contain `[emerg]`.
    pub fn emerg_lines(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| l.contains("[emerg]"))
            .collect()
    }
}

/// `nginx -t` on the config `Nginx::start_with(main_extra, http_body)` would write, keeping the
/// config path and text (see `ConfCheck`).
pub fn nginx_test_conf(main_extra: &str, http_body: &str) -> ConfCheck {
    let _ = (nginx_bin(), module_path());
    let prefix = TempPrefix::new();
    let conf = render_conf(prefix.path(), main_extra, http_body);
    let (ok, output) = run_nginx_t(&prefix, &conf);
    ConfCheck {
        ok,
        output,
        conf_path: prefix.path().join("nginx.conf"),
        conf,
    }
}

/// The value of the first `worker_processes N;` in a config, 1 when absent or not a number.
fn worker_processes_in(conf: &str) -> usize {
    conf.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix("worker_processes"))
        .and_then(|rest| {
            rest.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or(1)
}

/// GET `path` (e.g. `/upstream_status`) on 127.0.0.1:port and return the body; panics unless the
/// answer is 200.
pub fn status_page(port: u16, path: &str) -> String {
    let (status, headers, body) =
        http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"));
    assert_eq!(status, 200, "GET {path}: {headers}\n{body}");
    body
}

/// The state (`"up"` or `"DOWN"`) of `peer` (`127.0.0.1:PORT`) in `upstream` on a text status
/// page (`upstream_healthcheck_status`); None when the page does not list it there.
pub fn peer_state<'a>(page: &'a str, upstream: &str, peer: &str) -> Option<&'a str> {
    peer_state_in(page, "Upstream ", upstream, peer)
}

/// As `peer_state`, in the block whose header starts with `header` (`"Upstream "`, or
/// `"Stream upstream "` for the stream module's).
pub fn peer_state_in<'a>(
    page: &'a str,
    header: &str,
    upstream: &str,
    peer: &str,
) -> Option<&'a str> {
    let mut inside = false;
    for line in page.lines() {
        if line.starts_with("Upstream ") || line.starts_with("Stream upstream ") {
            let rest = line.strip_prefix(header).unwrap_or("");
            let name = rest
                .strip_suffix(" (NO checkers)")
                .or_else(|| rest.strip_suffix(" (panic)"))
                .unwrap_or(rest);
            inside = line.starts_with(header) && name == upstream;
            continue;
        }
        if !inside {
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(addr), Some(state), None) = (parts.next(), parts.next(), parts.next()) {
            if addr == peer && (state == "up" || state == "DOWN") {
                return Some(state);
            }
        }
    }
    None
}
