//! nginx + the module under valgrind memcheck: runs `scripts/memcheck.sh --short` for the
//! current target (`NGX_HC_NGINX` / `NGX_HC_MODULE`, as `scripts/test.sh` exports them) and
//! asserts it passes: probes of up/down/hanging/garbage backends, every status format, the
//! control API, a reload and a clean stop with no invalid access, no use of uninitialised
//! memory and no leak in the module. Logs: `target/memcheck/<target>-short/`.
mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Well above the script's own bound (about 3 minutes on a loaded 2-core machine).
const LIMIT: Duration = Duration::from_secs(420);

#[test]
fn short_memcheck_run_is_clean() {
    let (nginx, module) = (nginx_bin(), module_path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/memcheck.sh");
    let out_dir = root.join("target/memcheck");
    fs::create_dir_all(&out_dir).expect("create target/memcheck");
    let output_path = out_dir.join(format!("{}-short.output", target_name()));
    let output = fs::File::create(&output_path).expect("create output file");
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--short")
        .env("NGX_HC_NGINX", &nginx)
        .env("NGX_HC_MODULE", &module)
        .env("NGX_HC_TARGET", target_name())
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("dup"))
        .stderr(output)
        .spawn()
        .expect("run scripts/memcheck.sh");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait memcheck.sh") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            // SIGTERM: the script's exit trap stops the nginx and backends it started.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            thread::sleep(Duration::from_secs(15));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let took = started.elapsed();
    let text = fs::read_to_string(&output_path).unwrap_or_default();
    eprintln!(
        "scripts/memcheck.sh --short ({}) took {took:?}:\n{text}",
        target_name()
    );
    match status {
        None => panic!("scripts/memcheck.sh --short did not finish within {LIMIT:?}:\n{text}"),
        Some(s) => assert!(
            s.success(),
            "scripts/memcheck.sh --short failed ({s}):\n{text}"
        ),
    }
    assert!(
        text.contains("memcheck: no invalid access"),
        "the analysis did not run:\n{text}"
    );
}
