"""The kernel's own price of one probe on this machine: system CPU of a nonblocking loopback
connect + close (tcp), and connect + request + status line + close (http), driven by epoll like
nginx, one at a time; and of one 1 ms epoll_wait timer wakeup. Only system time counts, so the
interpreter's overhead does not; run in a process of its own (user and system time are per process)."""

import errno
import json
import resource
import select
import socket
import sys

REQUEST = (b"GET / HTTP/1.0\r\nHost: u0\r\nUser-Agent: nginx-upstream-healthcheck/0.1.0\r\n"
           b"Connection: close\r\n\r\n")


def sys_s():
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def probes(addrs, port, http, n):
    ep = select.epoll()
    t0 = sys_s()
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((addrs[i % len(addrs)], port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, "connect")
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        ep.poll(1.0)
        if http:
            s.send(REQUEST)
            while True:
                try:
                    if s.recv(4096) is not None:
                        break
                except BlockingIOError:
                    ep.poll(1.0)
        ep.unregister(s.fileno())
        s.close()
    return (sys_s() - t0) / n * 1e6


def wakeups(n=2000):
    ep = select.epoll()
    t0 = sys_s()
    for _ in range(n):
        ep.poll(0.001)
    return (sys_s() - t0) / n * 1e6


if __name__ == "__main__":
    port, n = int(sys.argv[1]), int(sys.argv[2])
    addrs = sys.argv[3].split(",")
    print(json.dumps({"tcp": probes(addrs, port, False, n), "http": probes(addrs, port, True, n),
                      "wakeup": wakeups()}))
