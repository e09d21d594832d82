#!/usr/bin/env python3
"""Scriptable HTTP backends for the detection measurement: one asyncio process serving several
loopback ports. Commands on stdin, one a line: `PORT normal|refuse|hang`; each is acknowledged
with `ok PORT MODE` on stdout once in effect.

- normal: answer every request with 200 and close.
- refuse: stop listening (connects are refused) and reset open connections, as a killed process.
- hang:   keep accepting and reading requests, never answer.

Usage: backend.py [--probe-log FILE] PORT...
With --probe-log, the arrival of every health-check request (User-Agent nginx-upstream-healthcheck)
is appended to FILE as `MONOTONIC_TIME PORT MODE`.
"""

import asyncio
import sys
import time

PROBE_LOG = None

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


class Backend:
    def __init__(self, port):
        self.port, self.mode, self.server, self.conns = port, "normal", None, set()

    async def listen(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port, reuse_address=True,
                                                 backlog=1024)

    async def handle(self, reader, writer):
        self.conns.add(writer)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                data += chunk
            if PROBE_LOG and b"nginx-upstream-healthcheck" in data:
                PROBE_LOG.write(f"{time.monotonic():.6f} {self.port} {self.mode}\n")
                PROBE_LOG.flush()
            if self.mode == "hang":
                while await reader.read(4096):  # until the client gives up
                    pass
                return
            writer.write(RESPONSE)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.conns.discard(writer)
            writer.close()

    async def set(self, mode):
        if mode == "refuse":
            if self.server is not None:
                self.server.close()  # closes the listening socket now
                self.server = None
            for w in list(self.conns):
                w.transport.abort()
        elif self.server is None:
            await self.listen()
        self.mode = mode


async def main(ports):
    backends = {p: Backend(p) for p in ports}
    for b in backends.values():
        await b.listen()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("ready", flush=True)
    while True:
        line = await stdin.readline()
        if not line:
            return
        port, mode = line.decode().split()
        await backends[int(port)].set(mode)
        print(f"ok {port} {mode}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--probe-log"]:
        PROBE_LOG = open(args[1], "a")
        args = args[2:]
    asyncio.run(main([int(p) for p in args]))
