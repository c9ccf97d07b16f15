"""A loopback HTTP proxy in front of a real server, for fault-injection tests.

Every request is forwarded to the real upstream (MLflow or vLLM) until the proxy is
armed; from the ``after``-th request on it answers with the chosen fault instead:

- ``"503"``: HTTP 503, as a failing or overloaded server does;
- ``"drop"``: closes the connection without an answer, as a server that died does;
- ``"slow"``: holds the request for ``delay_s`` before forwarding it.

Independently, ``delay_writes(max_s, seed)`` holds every write (POST, PATCH, PUT,
DELETE) for a random time up to ``max_s`` before forwarding it, as a loaded registry
does; reads pass at once.

This is not a mock: behind it are the real servers of the local stack, and the code under
test talks real HTTP over real sockets. It only decides when the network fails.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import httpx

Fault = Literal["503", "drop", "slow"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[str] = []
        self.faults_served = 0
        self._after: int | None = None
        self._match: str | None = None
        self._matched = 0
        self._fault: Fault = "503"
        self.delay_s = 0.0
        self._write_delay_max_s = 0.0
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=self.upstream, timeout=httpx.Timeout(120.0))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- control -----------------------------------------------------------------------

    def arm(self, after: int, fault: Fault, delay_s: float = 0.0, match: str | None = None) -> None:
        """Requests number ``after`` (0-based, counted from now) and later get ``fault``.
        With ``match``, only requests whose line holds it are counted: the fault starts at
        the ``after``-th of those (a step's request sequence varies a little between runs)."""
        with self._lock:
            self.requests.clear()
            self.faults_served = 0
            self._matched = 0
            self._after, self._fault, self.delay_s, self._match = after, fault, delay_s, match

    def delay_writes(self, max_s: float, seed: int = 0) -> None:
        with self._lock:
            self._write_delay_max_s, self._rng = max_s, random.Random(seed)

    def _write_delay(self, command: str) -> float:
        if command not in ("POST", "PATCH", "PUT", "DELETE"):
            return 0.0
        with self._lock:
            return self._rng.uniform(0, self._write_delay_max_s) if self._write_delay_max_s else 0.0

    def disarm(self) -> None:
        with self._lock:
            self._after = None

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._http.close()

    # -- the handler ---------------------------------------------------------------------

    def _decide(self, line: str) -> Fault | None:
        with self._lock:
            index = len(self.requests)
            self.requests.append(line)
            if self._after is None:
                return None
            if self._match is not None:
                if self.faults_served == 0:
                    if self._match not in line:
                        return None
                    self._matched += 1
                    if self._matched <= self._after:
                        return None
            elif index < self._after:
                return None
            self.faults_served += 1
            return self._fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._decide(f"{self.command} {self.path}")
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "503":
                    payload = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected fault"}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "slow":
                    time.sleep(proxy.delay_s)
                time.sleep(proxy._write_delay(self.command))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                try:
                    answer = proxy._http.request(self.command, self.path, content=body, headers=headers)
                except httpx.HTTPError:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler
