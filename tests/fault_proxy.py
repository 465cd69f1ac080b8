"""A fault-injecting HTTP front for the local S3 server (tests only), on 127.0.0.1.

Clients talk to the proxy's endpoint; each request is forwarded to the real server unless a rule
fires first. Rules (any number, each for a fraction of matching requests and/or a time window):

    refuse     close the connection without an answer (as a server that went away)
    slowdown   answer 503 SlowDown, as S3 does when throttling
    stall      wait `seconds` before forwarding (a slow or hung server)
    cut        forward, then send the response headers and only half of the body, and close

    with FaultProxy(s3.endpoint) as proxy:
        proxy.add("slowdown", fraction=0.3, methods=("GET",))
        proxy.add("refuse", start=5.0, end=25.0)         # seconds after the rule was added
        ... point AWS_ENDPOINT_URL at proxy.endpoint ...
        proxy.counts  # what fired, by rule

Requests are parsed just enough to be forwarded (request line, headers, body by Content-Length or
chunked); one upstream connection per request. Bounded: it only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>")


@dataclass
class Rule:
    kind: str                       # refuse | slowdown | stall | cut
    fraction: float = 1.0
    methods: tuple[str, ...] = ()   # () = any method
    paths: tuple[str, ...] = ()     # substrings of the request target; () = any
    start: float = 0.0              # seconds after the rule was added
    end: float | None = None
    seconds: float = 5.0            # stall length
    added: float = field(default_factory=time.monotonic)

    def fires(self, method: str, target: str, rng: random.Random) -> bool:
        age = time.monotonic() - self.added
        if age < self.start or (self.end is not None and age >= self.end):
            return False
        if self.methods and method not in self.methods:
            return False
        if self.paths and not any(p in target for p in self.paths):
            return False
        return rng.random() < self.fraction


def _read_line(f) -> bytes:
    line = f.readline(65537)
    if not line:
        raise ConnectionError("closed")
    return line


def _read_message(f, head_only: bool = False) -> tuple[bytes, dict[str, str], bytes]:
    """(start line + headers as raw bytes, lower-cased headers, body) of one HTTP message."""
    raw = [_read_line(f)]
    headers: dict[str, str] = {}
    while True:
        line = _read_line(f)
        raw.append(line)
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return b"".join(raw), headers, (b"" if head_only else _read_body(f, headers))


def _read_body(f, headers: dict[str, str]) -> bytes:
    """A message body framed by chunked transfer-encoding or Content-Length (raw bytes, as sent)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = _read_line(f)
            chunks.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    line = _read_line(f)
                    chunks.append(line)
                    if line in (b"\r\n", b"\n"):
                        break
                break
            chunks.append(f.read(size + 2))
        return b"".join(chunks)
    if "content-length" in headers:
        return f.read(int(headers["content-length"]))
    return b""


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 0):
        u = urlparse(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        if self.upstream[0] not in ("127.0.0.1", "localhost"):
            raise ValueError("the fault proxy only fronts servers on 127.0.0.1")
        self.rules: list[Rule] = []
        self.counts: Counter = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                proxy._serve(self.connection, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ control
    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add(self, kind: str, **kw) -> Rule:
        if kind not in ("refuse", "slowdown", "stall", "cut"):
            raise ValueError(f"unknown fault {kind!r}")
        rule = Rule(kind, **kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    # ------------------------------------------------------------------ serving
    def _pick(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.fires(method, target, self._rng):
                    self.counts[rule.kind] += 1
                    return rule
            self.counts["forwarded"] += 1
        return None

    def _serve(self, client: socket.socket, rfile) -> None:
        while True:
            try:
                head, headers, body = _read_message(rfile)
            except (ConnectionError, OSError, ValueError):
                return
            method, target = head.split(b" ", 2)[:2]
            method, target = method.decode("latin-1"), target.decode("latin-1")
            rule = self._pick(method, target)
            try:
                if rule and rule.kind == "refuse":
                    client.close()
                    return
                if rule and rule.kind == "slowdown":
                    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                   b"Content-Length: %d\r\nRetry-After: 1\r\n\r\n" % len(SLOWDOWN) + SLOWDOWN)
                    continue
                if rule and rule.kind == "stall":
                    time.sleep(rule.seconds)
                status, resp_headers, resp_body = self._forward(head, body, method)
                if rule and rule.kind == "cut" and resp_body:
                    client.sendall(status + resp_body[: len(resp_body) // 2])
                    client.close()
                    return
                client.sendall(status + resp_body)
                if headers.get("connection", "").lower() == "close":
                    return
            except OSError:
                return

    def _forward(self, head: bytes, body: bytes, method: str) -> tuple[bytes, dict, bytes]:
        with socket.create_connection(self.upstream, timeout=60) as up:
            up.sendall(head + body)
            f = up.makefile("rb")
            raw, headers, _ = _read_message(f, head_only=True)
            status_code = int(raw.split(b" ", 2)[1])
            if method == "HEAD" or status_code in (204, 304) or 100 <= status_code < 200:
                resp_body = b""
            elif "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers:
                resp_body = _read_body(f, headers)
            else:
                resp_body = f.read()
            return raw, headers, resp_body

