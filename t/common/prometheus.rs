//! A real Prometheus server (Debian's `prometheus`) scraping an nginx status location every
//! second, queried through its HTTP API.
use super::*;
use serde_json::Value;

/// Long enough for Prometheus on a loaded machine to start, scrape and evaluate; polls end far
/// sooner.
pub const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);

/// Debian's Prometheus in a temp dir of its own, on a free port, with a 1 s scrape and rule
/// evaluation interval. Dropping it stops it.
pub struct Prometheus {
    server: Spawned,
    port: u16,
    config: String,
    _dir: TempPrefix,
}

impl Prometheus {
    /// Scrapes `http://127.0.0.1:<nginx_port><metrics_path>?format=prometheus` as job `job`,
    /// evaluating the rule files `rules`.
    pub fn start(job: &str, nginx_port: u16, metrics_path: &str, rules: &[&Path]) -> Prometheus {
        let bin = tool("/usr/bin/prometheus", "prometheus");
        let dir = TempPrefix::new();
        let port = free_port();
        let rule_files = if rules.is_empty() {
            "rule_files: []\n".to_string()
        } else {
            let list: String = rules
                .iter()
                .map(|r| format!("  - '{}'\n", r.display()))
                .collect();
            format!("rule_files:\n{list}")
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             {rule_files}\
             scrape_configs:\n  - job_name: {job}\n    metrics_path: {metrics_path}\n    \
             params:\n      format: [prometheus]\n    static_configs:\n      - targets: ['127.0.0.1:{nginx_port}']\n",
        );
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, &config).expect("write prometheus.yml");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let server = Spawned::start(
            cmd,
            "prometheus",
            &dir.path().join("prometheus.out"),
            &dir.path().join("prometheus.log"),
        );
        Prometheus {
            server,
            port,
            config,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// GET an API path (`/api/v1/...`): the `data` of a `"status":"success"` answer, or why not.
    /// Panics if the server has exited.
    pub fn api(&mut self, path: &str) -> Result<Value, String> {
        if let Some(status) = self.server.exited() {
            panic!(
                "prometheus exited ({status}):\n{}\n--- config ---\n{}",
                self.server.log_text(),
                self.config
            );
        }
        let (status, _, body) = http_get(self.port, path).map_err(|e| e.to_string())?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the result vector, or why not.
    pub fn query(&mut self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(q)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Prometheus's view of its scrape targets, for failure messages.
    pub fn targets(&mut self) -> String {
        http_get(self.port, "/api/v1/targets")
            .map(|r| r.2)
            .unwrap_or_else(|e| e.to_string())
    }

    /// Waits until the scrapes of `job` succeed (`up{job} == 1`).
    pub fn wait_up(&mut self, job: &str) {
        poll(PROMETHEUS_DEADLINE, "prometheus: up{job} == 1", || {
            let r = self
                .query(&format!("up{{job=\"{job}\"}}"))
                .map_err(|e| format!("{e}\ntargets: {}", self.targets()))?;
            match r.first().and_then(|s| s["value"][1].as_str()) {
                Some("1") => Ok(()),
                _ => Err(format!("{r:?}\ntargets: {}", self.targets())),
            }
        });
    }

    pub fn stop(mut self) {
        self.server.stop();
    }
}

/// `promtool check metrics` on a page: no error, no lint problem (non-zero exit or any output
/// mentioning an error fails).
pub fn promtool_accepts(page: &str, what: &str) {
    let promtool = tool("/usr/bin/promtool", "prometheus");
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "metrics"]);
    let (status, out) = run_with_stdin(cmd, page);
    assert!(
        status.success() && !out.to_ascii_lowercase().contains("error"),
        "promtool check metrics rejects {what} ({status}):\n{out}\n--- page ---\n{page}"
    );
}
