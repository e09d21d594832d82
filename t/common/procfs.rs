//! What /proc tells about processes: their sockets and how often they were woken.
use std::collections::HashSet;
use std::fs;

/// Socket inodes of a process.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        if let Ok(target) = fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(n) = n.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// The worker among `workers` holding an established TCP connection to 127.0.0.1:`port` (a
/// probe in flight).
pub fn worker_connected_to(workers: &[u32], port: u16) -> Option<u32> {
    let tcp = fs::read_to_string("/proc/net/tcp").ok()?;
    let inodes: HashSet<u64> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rem_port = u16::from_str_radix(f.get(2)?.rsplit_once(':')?.1, 16).ok()?;
            (rem_port == port && *f.get(3)? == "01").then(|| f.get(9)?.parse().ok())?
        })
        .collect();
    workers
        .iter()
        .copied()
        .find(|&w| !socket_inodes(w).is_disjoint(&inodes))
}

/// Context switches of a process so far (voluntary + involuntary): each wakeup of its event
/// loop is one.
pub fn context_switches(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}
