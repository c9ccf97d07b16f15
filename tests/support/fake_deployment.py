"""A whole deployment in memory, for unit tests of the release steps and of the
model-based test: a registry whose aliases can be written (and made to fail), fake vLLM
servers, and a real local adapters folder.

``FakeReleaseRegistry`` adds to ``FakeRegistry`` what the alias writers need: alias
writes that can fail at chosen points (as a 503 from MLflow does) and an audit log.

For the model-based test (tests/unit/test_release_model.py), ``Faults`` numbers every
call one process makes to the registry, the lease store and vLLM and acts at one of
them: the call fails, its answer is lost after the server applied it, the process is
killed there (``Killed``), or a hook runs first (another process acts, time passes).
``FaultyRegistry`` and ``faulty_transport`` put one process's calls through its
``Faults``; ``SerialExecutor`` replaces the rollout's thread pool so the numbering does not
depend on thread scheduling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from loradeploy.clients.files import LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.names import Source
from loradeploy.errors import ServerUnavailableError
from loradeploy.results import StepResult
from loradeploy.steps.load_adapter import LoadRequest, load_adapter
from loradeploy.steps.promote import PromoteRequest, promote_adapter
from loradeploy.steps.set_staged_alias import set_staged_alias
from support.fake_registry import FakeRegistry
from support.fakes import FakeClock, FakeVllmServer
from support.synthetic import write_adapter

MODEL = "aws-rag-qa"
LIVE_SLOT = "aws-rag-qa-live"
CAND_SLOT = "aws-rag-qa-candidate"


@dataclass
class FakeReleaseRegistry(FakeRegistry):
    audit: list[dict[str, str]] = field(default_factory=list)
    fail_alias_writes: set[int] = field(default_factory=set)  # 1-based numbers of alias writes
    alias_writes: int = 0

    def _write(self, name: str) -> None:
        self._check(name)
        self.alias_writes += 1
        if self.alias_writes in self.fail_alias_writes:
            raise ServerUnavailableError(f"MLflow at {self.tracking_uri} failed an alias write (fake 503)")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._write(name)
        self.aliases[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self._write(name)
        self.aliases.pop(alias, None)

    def record_action(
        self, *, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, str]
    ) -> str:
        self._check(self.model)
        self.audit.append({"run_name": run_name, **tags, **params})
        return f"audit-{len(self.audit)}"

    def search_actions(self, *, experiment: str, filter_string: str) -> list[dict[str, object]]:
        return [
            {"start_time": n * 1000, "tags": dict(a), "params": dict(a)} for n, a in enumerate(self.audit, 1)
        ]


@dataclass
class Deployment:
    registry: FakeReleaseRegistry
    servers: dict[str, FakeVllmServer]
    clients: list[VllmClient]
    transport: LocalFolderTransport

    def root(self, slot: str, version: str) -> str:
        return f"{self.transport.root}/{slot}/{MODEL}-v{version}"

    def served(self, slot: str) -> list[str | None]:
        return [server.adapters.get(slot) for server in self.servers.values()]

    def load(self, source: str, slot: str = CAND_SLOT, who: str = "op") -> StepResult:
        kind, _, value = source.partition(":")
        return load_adapter(
            LoadRequest(model=MODEL, source=Source(kind, value), slot=slot),  # type: ignore[arg-type]
            registry=self.registry,  # type: ignore[arg-type]
            replicas=self.clients,
            transport=self.transport,
            actor=actor(who, "load-adapter"),
        )

    def stage(self, source: str, who: str = "op") -> StepResult:
        kind, _, value = source.partition(":")
        return set_staged_alias(
            self.registry,  # type: ignore[arg-type]
            self.clients,
            model=MODEL,
            source=Source(kind, value),  # type: ignore[arg-type]
            slot=CAND_SLOT,
            actor=actor(who, "set-staged-alias"),
        )

    def promote(self, alias: str, who: str = "op", run_key: str = "") -> StepResult:
        return promote_adapter(
            PromoteRequest(model=MODEL, source_alias=alias, live_slot=LIVE_SLOT),
            registry=self.registry,  # type: ignore[arg-type]
            replicas=self.clients,
            transport=self.transport,
            actor=actor(who, "promote-adapter", run_key),
        )


_RUNS = [0]


def actor(who: str, step: str, run_key: str = "") -> Actor:
    _RUNS[0] += 1
    return Actor(who=f"{who}@test", step=step, run_id=f"{who}-{step}-{_RUNS[0]}", run_key=run_key)


@contextmanager
def deployment(tmp: Path, *, versions: int = 4, replicas: int = 1) -> Iterator[Deployment]:
    clock = FakeClock()
    registry = FakeReleaseRegistry(model=MODEL)
    for n in range(1, versions + 1):
        registry.add_version(str(n), write_adapter(tmp / "src" / f"v{n}", fill=n))
    servers = {f"http://vllm-{n}.test:8000": FakeVllmServer(clock=clock) for n in range(1, replicas + 1)}
    with ExitStack() as stack:
        clients = [
            stack.enter_context(VllmClient(url, transport=server.transport(), clock=clock, sleep=clock.sleep))
            for url, server in servers.items()
        ]
        yield Deployment(registry, servers, clients, LocalFolderTransport(tmp / "adapters"))


# -- faults at any call, for the model-based test -------------------------------------------

T = TypeVar("T")
FaultKind = Literal["fail", "lost", "kill", "hook"]

REGISTRY_CALLS = frozenset(
    {
        "get_aliases",
        "get_version",
        "resolve",
        "download_adapter",
        "get_model_tags",
        "set_model_tag",
        "delete_model_tag",
        "set_alias",
        "delete_alias",
        "record_action",
        "search_actions",
    }
)
LEASE_CALLS = frozenset({"create", "read", "write", "remove"})


class Killed(BaseException):
    """The process was killed (SIGKILL) at a call. Not an ``Exception``, so no step catches
    it; and every later call of the same process raises it again (``Faults.killed``), so
    no ``finally`` (a lease release, a restore) reaches a server: the lease stays held and
    replicas stay as they were, as a crashed process leaves them."""


@dataclass
class Faults:
    """One process's calls to the registry, the lease store and vLLM, numbered from 1 in
    ``calls``, with one fault at call number ``at`` (0: none), or at the ``n``-th call whose
    name contains ``part`` when ``at`` is ``(part, n)``:

    - ``fail``: the call fails before it reaches the server (MLflow 503, connection refused);
    - ``lost``: the server applies the call, then the answer is lost (a client timeout);
    - ``kill``: the process is killed before the call reaches the server;
    - ``hook``: ``hook`` runs first (another process acts, time passes), then the call.

    ``observe`` (if set) sees every call just before it reaches the server.
    """

    at: int | tuple[str, int] = 0
    kind: FaultKind = "fail"
    hook: Callable[[], None] | None = None
    observe: Callable[[str], None] | None = None
    calls: list[str] = field(default_factory=list)
    killed: bool = False
    fired: bool = False
    fault_index: int = -1

    def call(
        self,
        what: str,
        do: Callable[[], T],
        *,
        fail: Callable[[], BaseException] | None = None,
        lose: Callable[[], BaseException] | None = None,
    ) -> T:
        """Make call ``what`` (``do``); ``fail`` and ``lose`` make the errors a failed call
        and a lost answer raise (default: ``ServerUnavailableError``, as MLflow's client)."""
        if self.killed:
            raise Killed(f"{what}: the process was killed earlier")
        self.calls.append(what)
        due = not self.fired and self._due()
        unavailable = fail or (lambda: ServerUnavailableError(f"{what}: unreachable (injected fault)"))
        if due:
            self.fired = True
            self.fault_index = len(self.calls) - 1
            if self.kind == "kill":
                self.killed = True
                raise Killed(f"killed at call {self.at} ({what})")
            if self.kind == "fail":
                raise unavailable()
            if self.kind == "hook" and self.hook is not None:
                self.hook()
        if self.observe is not None:
            self.observe(what)
        result = do()
        if due and self.kind == "lost":
            raise (lose or unavailable)()
        return result

    def _due(self) -> bool:
        if isinstance(self.at, int):
            return len(self.calls) == self.at
        part, n = self.at
        return part in self.calls[-1] and sum(part in what for what in self.calls) == n

    @property
    def fired_at(self) -> str | None:
        """The call the fault hit, once it fired."""
        return self.calls[self.fault_index] if self.fired else None


class _Through:
    """A client of a shared fake server: each call named in ``calls`` goes through ``faults``."""

    def __init__(self, target: Any, faults: Faults, calls: frozenset[str], label: str) -> None:
        self._target = target
        self._faults = faults
        self._calls = calls
        self._label = label

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in self._calls:
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._faults.call(f"{self._label}.{name}", lambda: value(*args, **kwargs))

        return call


class FaultyRegistry(_Through):
    """One process's view of a ``FakeReleaseRegistry`` and its ``FakeLeaseStore``."""

    def __init__(self, registry: FakeReleaseRegistry, faults: Faults) -> None:
        super().__init__(registry, faults, REGISTRY_CALLS, "mlflow")
        self.leases = _Through(registry.leases, faults, LEASE_CALLS, "lease")


def faulty_transport(
    server: Callable[[], FakeVllmServer], faults: Callable[[], Faults]
) -> httpx.MockTransport:
    """One process's connection to a fake vLLM server (``server()``, looked up at each
    request); a failed call is a refused connection, a lost answer a read timeout."""

    def handle(request: httpx.Request) -> httpx.Response:
        what = f"vllm {request.url.host} {request.method} {request.url.path}"
        return faults().call(
            what,
            lambda: server().handle(request),
            fail=lambda: httpx.ConnectError(f"{what}: refused (injected fault)", request=request),
            lose=lambda: httpx.ReadTimeout(f"{what}: no answer (injected fault)", request=request),
        )

    return httpx.MockTransport(handle)


class SerialExecutor:
    """``ThreadPoolExecutor`` for tests: runs each task at once, in order, keeping its
    exception (``BaseException`` included) in the future as the pool does."""

    def __init__(self, max_workers: int | None = None) -> None:
        del max_workers

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - kept in the future, as the pool does
            future.set_exception(exc)
        return future

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any]) -> Iterator[T]:
        futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
        return (f.result() for f in futures)
