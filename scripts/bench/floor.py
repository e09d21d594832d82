"""The kernel's own price of one probe on this machine: system CPU of nonblocking loopback probes
driven by epoll like nginx, 100 in flight at a time (so wakeups are amortized as they are for the
module at thousands of peers): tcp = connect + close, http = connect + request + status line +
close. Also the price of one 1 ms epoll_wait timer wakeup. Only system time counts, so the
interpreter's overhead does not; it runs in a process of its own (rusage is per process).

With `keepalive`, the price of one request on a kept-alive connection instead: the request of a
`keepalive=N` probe (HTTP/1.1, no `Connection: close`) sent again and again on ONE connection to
the first address, each full response (Content-Length) read before the next request
(`keepalive`, the floor of the keepalive targets), and the same on BATCH connections at once, so
wakeups are amortized (`keepalive_batch`, for reference). The connects are not counted.

With `udp`, the price of one udp probe: a connected UDP socket, one datagram sent, its answer
read, the socket closed (PORT is then a UDP port answering every datagram).

Usage: floor.py PORT PROBES ADDR,ADDR,...   prints JSON {tcp, http, wakeup, tcp_wakeups, http_wakeups}
       floor.py PORT PROBES ADDR,ADDR,... udp
                                           prints JSON {udp, udp_wakeups}
       floor.py PORT REQUESTS ADDR,ADDR,... keepalive
                                           prints JSON {keepalive, keepalive_batch, keepalive_wakeups,
                                                        keepalive_batch_wakeups}
"""

import errno
import json
import re
import resource
import select
import socket
import sys

REQUEST = (b"GET / HTTP/1.0\r\nHost: u0\r\nUser-Agent: nginx-upstream-healthcheck/0.1.0\r\n"
           b"Connection: close\r\n\r\n")
KEEPALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: u0\r\nUser-Agent: nginx-upstream-healthcheck/0.1.0\r\n\r\n"
BATCH = 100
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)


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


def udp_batch(addrs, port, ep):
    socks = {}
    for a in addrs:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((a, port))
        s.send(b"ping")
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLET)
        socks[s.fileno()] = s
    pending = len(socks)
    while pending:
        events = ep.poll(1.0)
        if not events:
            raise RuntimeError("udp floor: answers missing")
        for fd, _ in events:
            socks[fd].recv(512)
            pending -= 1
    for s in socks.values():
        ep.unregister(s.fileno())
        s.close()


def udp_probes(addrs, port, n):
    ep = select.epoll()
    t0, c0 = usage()
    for i in range(0, n, BATCH):
        udp_batch([addrs[(i + j) % len(addrs)] for j in range(BATCH)], port, ep)
    t1, c1 = usage()
    return (t1 - t0) / n * 1e6, (c1 - c0) / n


def wakeups(n=2000):
    ep = select.epoll()
    t0, _ = usage()
    for _ in range(n):
        ep.poll(0.001)
    return (usage()[0] - t0) / n * 1e6


def response_end(buf):
    """Length of the first whole response in `buf` (headers and Content-Length body), or 0."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return 0
    m = CONTENT_LENGTH.search(buf, 0, head_end + 2)
    if not m:
        raise RuntimeError(f"response without Content-Length: {buf[:200]!r}")
    end = head_end + 4 + int(m.group(1))
    return end if len(buf) >= end else 0


def kept_alive(addrs, port, n):
    """n requests on len(addrs) kept-alive connections, one request in flight on each: system µs
    and wakeups per request. Connecting is done before the count starts."""
    socks = {}
    for a in addrs:
        s = socket.create_connection((a, port))
        s.setblocking(False)
        socks[s.fileno()] = [s, b""]
    ep = select.epoll()
    for fd in socks:
        ep.register(fd, select.EPOLLIN)
    t0, c0 = usage()
    sent = done = 0
    for s, _ in socks.values():
        if sent < n:
            s.send(KEEPALIVE_REQUEST)
            sent += 1
    while done < n:
        for fd, _ in ep.poll(1.0):
            entry = socks[fd]
            chunk = entry[0].recv(65536)
            if not chunk:
                raise RuntimeError("the backend closed a kept-alive connection")
            entry[1] += chunk
            end = response_end(entry[1])
            if not end:
                continue
            entry[1] = entry[1][end:]
            done += 1
            if sent < n:
                entry[0].send(KEEPALIVE_REQUEST)
                sent += 1
    t1, c1 = usage()
    for s, _ in socks.values():
        ep.unregister(s.fileno())
        s.close()
    return (t1 - t0) / n * 1e6, (c1 - c0) / n


if __name__ == "__main__":
    port, n = int(sys.argv[1]), int(sys.argv[2])
    addrs = sys.argv[3].split(",")
    if sys.argv[4:] == ["udp"]:
        udp, udp_w = udp_probes(addrs, port, n)
        print(json.dumps({"udp": udp, "udp_wakeups": udp_w}))
        sys.exit(0)
    if sys.argv[4:] == ["keepalive"]:
        one, one_w = kept_alive(addrs[:1], port, n)
        many, many_w = kept_alive((addrs * BATCH)[:BATCH], port, n)
        print(json.dumps({"keepalive": one, "keepalive_batch": many, "keepalive_wakeups": one_w,
                          "keepalive_batch_wakeups": many_w}))
        sys.exit(0)
    tcp, tcp_w = probes(addrs, port, False, n)
    http, http_w = probes(addrs, port, True, n)
    print(json.dumps({"tcp": tcp, "http": http, "wakeup": wakeups(), "tcp_wakeups": tcp_w, "http_wakeups": http_w}))
