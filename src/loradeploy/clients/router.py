"""Client for the router of routed mode on the local stack: the LiteLLM proxy, run under
gunicorn, configured by one YAML file.

The proxy has no API to change weights without a database, so a change is made the way
its process model allows: the new configuration is rendered and read back, replaces the
file in one rename, and the gunicorn master gets SIGHUP; it starts new workers on the
new file and stops the old ones gracefully. ``apply`` returns once the proxy's own
``/model/info`` has shown the new routes on several answers in a row (old and new
workers answer side by side for about a second), within a deadline. A rendering that
does not read back (with PyYAML) as the routes asked for is never written. That is not
proof the proxy accepts it: every file has the one shape ``domain.routes`` renders, which
the integration test runs through the real proxy, and a file the proxy could not read
would stop it at the SIGHUP. A generation still running when the old worker is stopped
has gunicorn's 30 s to finish.

Requests whose keep-alive connection an old worker closes fail to connect and never
reach vLLM; clients that retry connection errors (the OpenAI SDK does by default) see
no failure. Every failure leaves this module as one of the project's errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import httpx
import yaml

from loradeploy.domain.routes import (
    PROXY_CALLBACKS,
    Routes,
    Shadow,
    Shadows,
    check_routes,
    check_shadows,
    litellm_config,
    routes_of,
    shadows_of,
)
from loradeploy.errors import DeadlineExceededError, PermanentError, ServerUnavailableError, UsageError


class Router(Protocol):
    """What steps use of routed mode's router: ``LiteLLMRouter`` on the local stack,
    ``clients.gateway.GatewayRouter`` on Kubernetes (``clients.wiring.router_client``)."""

    backends: list[str]  # the vLLM replicas the router sends to

    def routes(self) -> Routes:
        """Every stable name routed, with its weights."""
        ...

    def shadows(self) -> Shadows:
        """Every stable name's shadow (mirrored share of its requests)."""
        ...

    def apply(
        self,
        routes: Mapping[str, Mapping[str, int]],
        shadows: Mapping[str, Shadow] | None = None,
        *,
        deadline_s: float = 60.0,
    ) -> float:
        """Route exactly ``routes`` with exactly ``shadows`` (none when left out); returns
        the seconds until the change was confirmed."""
        ...


CONFIRMATIONS = 3  # answers in a row that must show the new routes
POLL_S = 0.3


class LiteLLMRouter:
    def __init__(
        self,
        *,
        url: str,
        key: str,
        config: Path,
        record: Path,
        backends: list[str],
        http: httpx.Client | None = None,
        hangup: Callable[[int], None] | None = None,
        callbacks: Sequence[str] | None = None,
    ) -> None:
        self.url, self.config, self.record, self.backends = url.rstrip("/"), config, record, backends
        # None: keep the callbacks the file lists now (the request log's, when 'stack up'
        # shipped it), so a client built without them never drops them
        self.callbacks = None if callbacks is None else tuple(callbacks)
        self.http = http or httpx.Client(timeout=httpx.Timeout(10.0, connect=3.0))
        self.headers = {"Authorization": f"Bearer {key}"}
        self.hangup = hangup or (lambda pid: os.kill(pid, signal.SIGHUP))

    # -- what is configured, what is served --------------------------------------------

    def routes(self) -> Routes:
        """The routes in the configuration file (what the proxy serves once settled)."""
        return routes_of(self._configured())

    def shadows(self) -> Shadows:
        """The shadows in the configuration file."""
        return shadows_of(self._configured())

    def _configured(self) -> list[object]:
        try:
            data = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            return []
        except (OSError, yaml.YAMLError) as exc:
            problem = " ".join(str(exc).split())[:200]
            raise PermanentError(
                f"router configuration {self.config} cannot be read: {problem}",
                hint="fix it, or delete it (its routes are lost), then run 'loradeploy stack up --router'",
            ) from exc
        model_list = data.get("model_list") if isinstance(data, dict) else None
        return model_list if isinstance(model_list, list) else []

    def configured_callbacks(self) -> tuple[str, ...]:
        """The callbacks the configuration file lists (the proxy's metrics if none)."""
        try:
            data = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return PROXY_CALLBACKS
        settings = data.get("litellm_settings") if isinstance(data, dict) else None
        listed = settings.get("callbacks") if isinstance(settings, dict) else None
        if isinstance(listed, list) and listed and all(isinstance(name, str) for name in listed):
            return tuple(listed)
        return PROXY_CALLBACKS

    def serving(self) -> Routes:
        """The routes the proxy's answering worker serves, from ``GET /model/info``."""
        return routes_of(self._model_info())

    def serving_shadows(self) -> Shadows:
        """The shadows the proxy's answering worker serves, from ``GET /model/info``."""
        return shadows_of(self._model_info())

    def _model_info(self) -> list[object]:
        try:
            response = self.http.get(f"{self.url}/model/info", headers=self.headers)
        except httpx.HTTPError as exc:
            raise ServerUnavailableError(
                f"router at {self.url} did not answer: {type(exc).__name__}",
                hint="check it with 'loradeploy stack status'",
            ) from exc
        if response.status_code in (401, 403):
            raise UsageError(f"router at {self.url} refused the key", hint="use the key 'stack up' wrote")
        if response.status_code != 200:
            raise ServerUnavailableError(
                f"router at {self.url} answered {response.status_code} to /model/info",
                hint="check it with 'loradeploy stack status'",
            )
        try:
            data = response.json().get("data", [])
        except (ValueError, AttributeError) as exc:
            raise ServerUnavailableError(
                f"router at {self.url} answered /model/info with no JSON list",
                hint="check that the URL is the router's",
            ) from exc
        return data if isinstance(data, list) else []

    # -- change ---------------------------------------------------------------------------

    def render(
        self, routes: Mapping[str, Mapping[str, int]], shadows: Mapping[str, Shadow] | None = None
    ) -> str:
        """The configuration text for ``routes`` and ``shadows``; refused unless it reads
        back as them."""
        wanted = check_routes(routes)
        mirrored = check_shadows(shadows or {}, wanted)
        callbacks = self.callbacks if self.callbacks is not None else self.configured_callbacks()
        text = yaml.safe_dump(
            litellm_config(wanted, self.backends, callbacks, shadows=mirrored), sort_keys=False
        )
        model_list = yaml.safe_load(text)["model_list"]
        if routes_of(model_list) != wanted or shadows_of(model_list) != mirrored:
            raise PermanentError(
                "the router configuration did not read back as the routes asked for",
                hint="report this: nothing was changed",
            )
        return text

    def write(
        self, routes: Mapping[str, Mapping[str, int]], shadows: Mapping[str, Shadow] | None = None
    ) -> None:
        """Replace the configuration file in one rename (no signal)."""
        text = self.render(routes, shadows)
        temporary = None
        try:
            self.config.parent.mkdir(parents=True, exist_ok=True)
            # a name of its own: a second writer never truncates or renames this one's file
            descriptor, name = tempfile.mkstemp(
                prefix=f".{self.config.name}.", suffix=".tmp", dir=self.config.parent
            )
            temporary = Path(name)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(self.config)
        except OSError as exc:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    temporary.unlink()
            raise PermanentError(
                f"router configuration {self.config} cannot be written: {exc.strerror or exc}",
                hint=f"free space or fix the permissions of {self.config.parent}; nothing was changed",
            ) from exc

    def master_pid(self) -> int:
        try:
            pid = int(json.loads(self.record.read_text(encoding="utf-8"))["pid"])
            # the master leads its own process group ('stack up' starts it in a new
            # session): a pid reused by another process is not signalled
            if os.getpgid(pid) != pid:
                raise ProcessLookupError(pid)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ServerUnavailableError(
                f"router is not running (no live process in {self.record})",
                hint="start it with 'loradeploy stack up --router'",
            ) from exc
        return pid

    def apply(
        self,
        routes: Mapping[str, Mapping[str, int]],
        shadows: Mapping[str, Shadow] | None = None,
        *,
        deadline_s: float = 60.0,
    ) -> float:
        """Make the proxy serve ``routes`` and ``shadows`` (every stable name it serves: a
        name left out is no longer routed, a shadow left out is removed). Returns the
        seconds until the change was confirmed."""
        wanted = check_routes(routes)
        mirrored = check_shadows(shadows or {}, wanted)
        pid = self.master_pid()
        started = time.monotonic()
        self.write(wanted, mirrored)
        try:
            self.hangup(pid)
        except OSError as exc:
            raise ServerUnavailableError(
                f"router (pid {pid}) exited before it got the new routes: {exc.strerror or exc}",
                hint="start it with 'loradeploy stack up --router'; the file holds the new routes",
            ) from exc
        seen: int = 0
        last: tuple[Routes, Shadows] | None = None
        while seen < CONFIRMATIONS:
            elapsed = time.monotonic() - started
            if elapsed > deadline_s:
                raise DeadlineExceededError(
                    f"router at {self.url} did not serve the new routes within {deadline_s:.0f}s "
                    f"(last seen: {last})",
                    hint="check it with 'loradeploy stack status'; the file holds the new routes",
                )
            try:
                served = self._model_info()
                last = (routes_of(served), shadows_of(served))
            except ServerUnavailableError:
                last = None  # workers being replaced
            seen = seen + 1 if last == (wanted, mirrored) else 0
            if seen < CONFIRMATIONS:
                time.sleep(POLL_S)
        return time.monotonic() - started
