"""A whole deployment in memory, for unit tests of the release steps and of the
model-based test: a registry whose aliases can be written (and made to fail), fake vLLM
servers, and a real local adapters folder.

``FakeReleaseRegistry`` adds to ``FakeRegistry`` what the alias writers need: alias
writes that can fail at chosen points (as a 503 from MLflow does) and an audit log.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
