//! Listen ports for nginx and backends that cannot collide within or across test processes.
//!
//! Each test process claims a block of ports by holding an exclusive `flock` on
//! `$TMPDIR/ngx-hc-ports/block-N.lock` for its whole life, and hands the block's ports out one
//! after the other. No other process hands out ports of a claimed block, no port is handed out
//! twice, and no port once handed out is ever bound again to test it (a test bind can steal a
//! port from an nginx that is reloading). Blocks lie below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), so no outgoing connection (nginx proxying and
//! probing, the tests' own clients) takes one between the hand-out and nginx's bind.

use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

/// Ports per block; a test binary uses at most a few hundred ports, and takes another block when
/// one runs out.
const BLOCK: u16 = 128;
/// The lowest port handed out.
const FIRST: u16 = 10000;

struct Claim {
    /// Locks of the blocks this process holds (never released before exit).
    locks: Vec<File>,
    /// The next port to hand out and the end of the current block.
    next: u16,
    end: u16,
}

static CLAIM: Mutex<Claim> = Mutex::new(Claim {
    locks: Vec::new(),
    next: 0,
    end: 0,
});

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("ngx-hc-ports");
    fs::create_dir_all(&dir).expect("create port lock directory");
    dir
}

/// Claims a free block (starting the search at a place that depends on the pid, so processes
/// rarely try the same lock first); returns its first port.
fn claim_block(locks: &mut Vec<File>) -> u16 {
    let low = ephemeral_low();
    assert!(
        low >= FIRST + BLOCK,
        "ephemeral port range starts at {low}: no room for test ports below it"
    );
    let blocks = (low - FIRST) / BLOCK;
    let dir = lock_dir();
    let start = std::process::id() % blocks as u32;
    for i in 0..blocks as u32 {
        let n = ((start + i) % blocks as u32) as u16;
        let path = dir.join(format!("block-{n}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: `file` is open for the whole call, and flock only reads the descriptor.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            locks.push(file);
            return FIRST + n * BLOCK;
        }
    }
    panic!(
        "free_port: every port block under {} is taken",
        dir.display()
    );
}

/// A TCP port on 127.0.0.1 for nginx or a backend to listen on, never handed out twice by any
/// test process alive. Ports some other program already listens on are skipped.
pub fn free_port() -> u16 {
    let mut claim = CLAIM.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if claim.next >= claim.end {
            let first = claim_block(&mut claim.locks);
            claim.next = first;
            claim.end = first + BLOCK;
        }
        let port = claim.next;
        claim.next += 1;
        // Nobody else hands this port out, so binding it here cannot steal it from a test.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
