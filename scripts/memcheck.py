#!/usr/bin/env python3
"""Helpers of scripts/memcheck.sh (python3 standard library only).

  memcheck.py backends PORTS_FILE KIND...   serve scripted backends on loopback, one per KIND
  memcheck.py analyze LOG_DIR MODULE_SO      judge valgrind's logs; exit 1 on a finding
  memcheck.py free-port                      a free port below the ephemeral range

Backend kinds (each answers any request, one request per connection):
  up        200 with a short body        down      503
  hang      reads the request, never answers (until the client closes)
  garbage   bytes that are not HTTP       reset     RST (SO_LINGER 0) after the request
  interim   100 and 103 interim responses, then 200
  long      a 64 KiB status line without end
  refused   nothing listens there (the port is only reserved, then closed)
The backends exit when their parent goes away, or after an hour at most.
"""

import os
import re
import socket
import struct
import sys
import threading
import time


# --------------------------------------------------------------------------------------------
# Backends

def read_request(c):
    c.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d:
            break
        data += d
    return data


def close_gracefully(c):
    try:
        c.shutdown(socket.SHUT_WR)
        c.settimeout(1)
        while c.recv(4096):
            pass
    except OSError:
        pass


def handle(kind, c):
    try:
        if kind == "reset":
            read_request(c)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        read_request(c)
        if kind in ("up", "down"):
            code = b"200 OK" if kind == "up" else b"503 Service Unavailable"
            body = b"backend " + kind.encode() + b"\n"
            c.sendall(b"HTTP/1.1 " + code + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                      % len(body) + body)
        elif kind == "hang":
            c.settimeout(120)
            while c.recv(4096):
                pass
            return
        elif kind == "garbage":
            c.sendall(b"\x16\x03\x01\x00\xa5\x01\x00garbage\xff\xfe\r\n\r\n")
        elif kind == "interim":
            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"
                      b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif kind == "long":
            c.settimeout(5)
            c.sendall(b"HTTP/1.1 200 OK" + b"a" * 65536)
        close_gracefully(c)
    except OSError:
        pass
    finally:
        c.close()


def serve(kind, lsock):
    while True:
        c, _ = lsock.accept()
        threading.Thread(target=handle, args=(kind, c), daemon=True).start()


def free_port():
    """A free port below the kernel's ephemeral range, so that no outgoing connection (a probe,
    a proxied request) can take it before nginx listens on it."""
    import random
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(1000):
        port = random.randrange(10000, low) if low > 12000 else 0
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return s.getsockname()[1]
        except OSError:
            continue
        finally:
            s.close()
    raise SystemExit("no free port")


def backends(ports_file, kinds):
    parent = os.getppid()
    lines = []
    for kind in kinds:
        if kind == "refused":
            # Below the ephemeral range: a probe's own source port can never be this one (a
            # TCP self-connect would "answer" the probe).
            port = free_port()
        else:
            for attempt in range(20):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", free_port()))
                    break
                except OSError:
                    s.close()
                    if attempt == 19:
                        raise
            port = s.getsockname()[1]
            s.listen(128)
            threading.Thread(target=serve, args=(kind, s), daemon=True).start()
        lines.append("%s %d\n" % (kind, port))
    tmp = ports_file + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.rename(tmp, ports_file)
    deadline = time.time() + 3600
    while time.time() < deadline and os.getppid() == parent:
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# Log analysis

# Error kinds that always fail the run, wherever they are.
MEMORY_ERRORS = (
    "Invalid read", "Invalid write", "Invalid free", "Mismatched free",
    "Conditional jump or move depends on uninitialised", "Use of uninitialised value",
    "Syscall param", "Source and destination overlap", "Argument 'size' of function",
    "Invalid memory pool", "Jump to the invalid address",
)

# A frame belongs to the module: the crate (and the Rust code linked into it) or its .so.
RUST_FRAME = re.compile(r"(ngx_http_upstream_healthcheck|\bngx::|\bnginx_sys::|\balloc::|"
                        r"\bcore::|\bstd::|__rust|_ZN|_R[A-Z])")


def blocks(lines):
    """Splits the ==PID== lines of a valgrind log into blank-line separated blocks."""
    block = []
    for line in lines:
        m = re.match(r"==\d+== ?(.*)$", line)
        if not m:
            continue
        text = m.group(1)
        if not text.strip():
            if block:
                yield block
            block = []
        else:
            block.append(text)
    if block:
        yield block


def in_module(block, so_name):
    return any(RUST_FRAME.search(l) or so_name in l for l in block[1:])


def analyze(log_dir, module_so):
    so_name = os.path.basename(module_so)
    logs = sorted(f for f in os.listdir(log_dir) if re.match(r"vg\.\d+\.log$", f))
    if not logs:
        print("memcheck: no valgrind logs in %s" % log_dir)
        return 1
    findings = []
    summary = []
    for name in logs:
        path = os.path.join(log_dir, name)
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        errors = 0
        definite_module = 0
        definite_other = 0
        finished = any("HEAP SUMMARY" in l for l in lines)
        parent = next((l.split("Parent PID: ", 1)[1] for l in lines if "Parent PID: " in l), "?")
        for b in blocks(lines):
            head = b[0]
            if head.startswith(MEMORY_ERRORS):
                errors += 1
                findings.append("%s: %s\n    %s" % (name, head, "\n    ".join(b[1:25])))
            elif "definitely lost in loss record" in head:
                if in_module(b, so_name):
                    definite_module += 1
                    findings.append("%s: %s (module)\n    %s" % (name, head, "\n    ".join(b[1:25])))
                else:
                    definite_other += 1
        if not finished:
            findings.append("%s: the process did not exit normally under valgrind "
                            "(no HEAP SUMMARY), parent pid %s" % (name, parent))
        summary.append("  %-16s parent %-8s errors %d, definitely lost in module %d (elsewhere %d)%s"
                       % (name, parent, errors, definite_module, definite_other,
                          "" if finished else ", NOT FINISHED"))
    print("memcheck: %d process logs in %s" % (len(logs), log_dir))
    print("\n".join(summary))
    if findings:
        print("memcheck: FAILED, %d finding(s):" % len(findings))
        for f in findings:
            print(f)
        return 1
    print("memcheck: no invalid access, no uninitialised use, no leak in the module")
    return 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "backends":
        backends(argv[2], argv[3:])
        return 0
    if len(argv) == 4 and argv[1] == "analyze":
        return analyze(argv[2], argv[3])
    if len(argv) == 2 and argv[1] == "free-port":
        print(free_port())
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
