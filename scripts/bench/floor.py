"""The kernel's own price of one probe on this machine: system CPU of nonblocking loopback probes
driven by epoll like nginx, 100 in flight at a time (so wakeups are amortized as they are for the
module at thousands of peers): tcp = connect + close, http = connect + request + status line +
close. Also the price of one 1 ms epoll_wait timer wakeup. Only system time counts, so the
interpreter's overhead does not; it runs in a process of its own (rusage is per process).

Usage: floor.py PORT PROBES ADDR,ADDR,...   prints JSON {tcp, http, wakeup, tcp_wakeups, http_wakeups}
"""

import errno
import json
import resource
import select
import socket
import sys

REQUEST = (b"GET / HTTP/1.0\r\nHost: u0\r\nUser-Agent: nginx-upstream-healthcheck/0.1.0\r\n"
           b"Connection: close\r\n\r\n")
BATCH = 100


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_nvcsw


def batch(addrs, port, http, ep):
    socks = {}
    for a in addrs:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((a, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, "connect")
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        socks[s.fileno()] = [s, "connecting"]
    pending = len(socks)
    while pending:
        for fd, ev in ep.poll(1.0):
            entry = socks[fd]
            s, stage = entry
            if stage == "connecting" and ev & select.EPOLLOUT:
                if not http:
                    entry[1] = "done"
                    pending -= 1
                    continue
                s.send(REQUEST)
                entry[1] = stage = "reading"
            if stage == "reading" and ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    s.recv(4096)
                except BlockingIOError:
                    continue
                entry[1] = "done"
                pending -= 1
    for s, _ in socks.values():
        ep.unregister(s.fileno())
        s.close()


def probes(addrs, port, http, n):
    ep = select.epoll()
    t0, c0 = usage()
    for i in range(0, n, BATCH):
        batch([addrs[(i + j) % len(addrs)] for j in range(BATCH)], port, http, ep)
    t1, c1 = usage()
    return (t1 - t0) / n * 1e6, (c1 - c0) / n


def wakeups(n=2000):
    ep = select.epoll()
    t0, _ = usage()
    for _ in range(n):
        ep.poll(0.001)
    return (usage()[0] - t0) / n * 1e6


if __name__ == "__main__":
    port, n = int(sys.argv[1]), int(sys.argv[2])
    addrs = sys.argv[3].split(",")
    tcp, tcp_w = probes(addrs, port, False, n)
    http, http_w = probes(addrs, port, True, n)
    print(json.dumps({"tcp": tcp, "http": http, "wakeup": wakeups(), "tcp_wakeups": tcp_w, "http_wakeups": http_w}))
