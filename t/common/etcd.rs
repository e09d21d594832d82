//! A real etcd (Debian's `etcd-server`, 3.4) on loopback ports of its own with a data dir of its
//! own, driven with `etcdctl` (`etcd-client`); stopped on drop.
use super::*;

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";

/// A running etcd of one member.
pub struct Etcd {
    /// Holds the data dir and the logs.
    dir: TempPrefix,
    client_port: u16,
    peer_port: u16,
    process: Option<Spawned>,
    starts: u32,
}

impl Etcd {
    /// Starts etcd on fresh ports and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::start_on(free_port())
    }

    /// Starts etcd serving clients on `client_port` (its peer port a fresh one).
    pub fn start_on(client_port: u16) -> Etcd {
        let version = Command::new(tool(ETCD, "etcd-server"))
            .arg("--version")
            .output()
            .expect("etcd --version");
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        assert!(
            version.contains("etcd Version: 3.4."),
            "the tests speak etcd 3.4's gateway (/v3/), found: {version}"
        );
        let mut etcd = Etcd {
            dir: TempPrefix::new(),
            client_port,
            peer_port: free_port(),
            process: None,
            starts: 0,
        };
        etcd.run();
        etcd
    }

    fn run(&mut self) {
        let (c, p) = (self.client_port, self.peer_port);
        let mut cmd = Command::new(tool(ETCD, "etcd-server"));
        cmd.args([
            "--name",
            "t",
            "--data-dir",
            &self.dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{c}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{c}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-cluster",
            &format!("t=http://127.0.0.1:{p}"),
            "--logger",
            "zap",
        ]);
        self.starts += 1;
        let n = self.starts;
        let out = self.dir.path().join(format!("etcd-{n}.out"));
        let log = self.dir.path().join(format!("etcd-{n}.log"));
        self.process = Some(Spawned::start(cmd, "etcd", &out, &log));
        let port = self.client_port;
        wait_until(Duration::from_secs(20), "etcd answers /health", || {
            http_get(port, "/health").is_ok_and(|(s, _, b)| s == 200 && b.contains("true"))
        });
    }

    /// `http://127.0.0.1:PORT`, for `upstream_healthcheck_etcd`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// Stops etcd (SIGTERM, then SIGKILL): its port refuses connections until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Sends `sig` to etcd (`STOP` freezes it: connections stay open, nothing answers;
    /// `CONT` thaws it).
    pub fn signal(&self, sig: &str) {
        if let Some(p) = &self.process {
            p.signal_group(sig);
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Starts etcd again with the same data, serving clients on `client_port` (`port()` and
    /// `ctl` follow it).
    pub fn restart_on(&mut self, client_port: u16) {
        self.stop();
        self.client_port = client_port;
        self.run();
    }

    /// Runs `etcdctl ARGS` against this etcd; panics unless it succeeds. Its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(tool(ETCDCTL, "etcd-client"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .arg("--command-timeout=5s")
            .args(args);
        let (status, out, err) = run_bounded(cmd, "etcdctl", Duration::from_secs(20));
        assert!(status.success(), "etcdctl {args:?} failed: {out}{err}");
        out
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", "--", key, value]);
    }

    pub fn del(&self, key: &str) {
        self.ctl(&["del", "--", key]);
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "--print-value-only", "--", key]);
        let value = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| value.to_owned())
    }

    /// The keys under `prefix`, in etcd's order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", "--", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["get", "-w", "json", "--", "/"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v["header"]["revision"].as_i64().expect("revision")
    }

    /// Compacts the history up to `revision`: watches from before it are canceled.
    pub fn compact(&self, revision: i64) {
        self.ctl(&["compact", &revision.to_string()]);
    }

    /// etcd's own log, for failure messages.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                fs::read_to_string(self.dir.path().join(format!("etcd-{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
