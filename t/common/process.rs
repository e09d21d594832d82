//! External programs the tests run: Debian tools (`tool`), processes in their own group that
//! end with the test (`Spawned`), and commands fed on stdin (`run_with_stdin`).
use super::*;
use std::os::unix::process::CommandExt;
use std::process::ExitStatus;

/// The path of a tool from a Debian package; fails the test (never skips) when missing.
pub fn tool(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing (Debian package {package}): run scripts/setup.sh, which installs \
         every tool the tests need"
    );
    p
}

/// A process started in its own process group; Drop (also on panic) ends the whole group:
/// SIGTERM, then SIGKILL after 5 s.
pub struct Spawned {
    child: Option<Child>,
    pgid: u32,
    what: String,
    log: PathBuf,
}

impl Spawned {
    /// Starts `cmd` with stdin closed and stdout/stderr into `out` / `log`.
    pub fn start(mut cmd: Command, what: &str, out: &Path, log: &Path) -> Spawned {
        let stdout = fs::File::create(out).expect("create stdout file");
        let stderr = fs::File::create(log).expect("create log file");
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Spawned {
            pgid: child.id(),
            child: Some(child),
            what: what.to_owned(),
            log: log.to_owned(),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the process to end; kills its group and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                // Helpers left in the group (if any) go with it.
                self.signal_group("KILL");
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "{} did not finish within {timeout:?}; killed.\n--- its stderr ---\n{}",
                    self.what,
                    self.log_text()
                );
            }
            thread::sleep(POLL);
        }
    }

    pub fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, "--", &format!("-{}", self.pgid)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Ends the process group: SIGTERM, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            self.signal_group("TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(POLL);
            }
        }
        self.signal_group("KILL");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd`, feeding `stdin`; returns (exit status, stdout + stderr).
pub fn run_with_stdin(mut cmd: Command, stdin: &str) -> (ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_owned();
    let writer = thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// Runs `cmd` (stdin closed) in its own process group to its end; after `timeout` the group is
/// killed and the test fails. Returns (exit status, stdout, stderr). Not for commands that
/// leave a daemon behind: the group goes when the command ends.
pub fn run_bounded(cmd: Command, what: &str, timeout: Duration) -> (ExitStatus, String, String) {
    let dir = TempPrefix::new();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut p = Spawned::start(cmd, what, &out, &err);
    let status = p.wait(timeout);
    let read = |path: &Path| fs::read_to_string(path).unwrap_or_default();
    (status, read(&out), read(&err))
}
