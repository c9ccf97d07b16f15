"""steps/load_version.py with fakes (FakeAliasRegistry for versions, the lock and the
history, one FakeVllmServer per replica, a local adapters folder): a version is placed
once and loaded under its versioned name on every replica that lacks it, a served name is
never reloaded, room is made only from names nothing needs, and a failure on any replica
leaves every replica serving what it served before. The real servers:
tests/integration/test_load_version.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from loradeploy.clients.files import LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, model_lock
from loradeploy.domain.layout import versioned_dir
from loradeploy.domain.names import Source
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.residency import Limits
from loradeploy.errors import (
    AdapterRejectedError,
    ExitCode,
    LockHeldError,
    PermanentError,
    UsageError,
)
from loradeploy.results import StepResult
from loradeploy.steps.load_version import load_version, serve_version
from loradeploy.steps.swap import Patience
from support.fake_registry import FakeAliasRegistry
from support.fakes import FakeClock, FakeVllmServer
from support.synthetic import write_adapter

MODEL = "aws-rag-qa"
R1, R2 = "http://vllm-1.test:8000", "http://vllm-2.test:8000"
ACTOR = Actor(who="ops@test", step="load-version", run_id="run-1")
ROOMY = Limits(max_loras=2, max_cpu_loras=4)


@dataclass
class World:
    registry: FakeAliasRegistry
    servers: list[FakeVllmServer]
    clients: list[VllmClient]
    transport: LocalFolderTransport
    patience: Patience

    def folder(self, version: str) -> str:
        return versioned_dir(self.transport.root, MODEL, version)

    def served(self) -> list[dict[str, str]]:
        return [dict(server.adapters) for server in self.servers]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    registry = FakeAliasRegistry(model=MODEL)
    for version in ("1", "2", "3", "4"):
        registry.add_version(version, write_adapter(tmp_path / "src" / f"v{version}", fill=int(version)))
    clock = FakeClock()
    servers = [FakeVllmServer(clock=clock) for _ in (R1, R2)]
    patience = Patience(verify_s=1, unknown_load_s=1, restore_s=1, clock=clock, sleep=clock.sleep)
    with ExitStack() as stack:
        clients = [
            stack.enter_context(VllmClient(url, transport=server.transport(), clock=clock, sleep=clock.sleep))
            for url, server in zip((R1, R2), servers, strict=True)
        ]
        yield World(registry, servers, clients, LocalFolderTransport(tmp_path / "adapters"), patience)


def serve(
    world: World,
    version: str,
    *,
    keep: set[str] | None = None,
    weights: dict[str, int] | None = None,
    limits: Limits | None = ROOMY,
) -> tuple[list[str], StepResult]:
    result = StepResult(step="load-version", model=MODEL, version=version)
    unloaded = serve_version(
        world.registry.get_version(MODEL, version),
        registry=world.registry,
        replicas=world.clients,
        transport=world.transport,
        policy=AdapterPolicy(),
        keep=keep or set(),
        weights=weights or {},
        limits=limits,
        result=result,
        patience=world.patience,
    )
    return unloaded, result


def test_a_version_is_placed_once_and_served_under_its_name_on_every_replica(world: World) -> None:
    unloaded, result = serve(world, "1")
    folder = world.folder("1")
    assert folder == f"{world.transport.root}/{MODEL}.versions/{MODEL}-v1"
    assert world.served() == [{"aws-rag-qa@v1": folder}] * 2
    assert unloaded == []
    assert result.details["name"] == "aws-rag-qa@v1"
    assert result.details["loaded_on"] == [R1, R2]
    assert [c.name for c in result.checks] == [f"served:{R1}", f"served:{R2}"]
    assert (Path(folder) / "adapter_config.json").is_file()


def test_a_served_name_is_never_reloaded(world: World) -> None:
    serve(world, "1")
    calls = [len(s.lora_calls()) for s in world.servers]
    downloads = list(world.registry.downloads)
    _, result = serve(world, "1")
    assert [len(s.lora_calls()) for s in world.servers] == calls  # no load, no unload
    assert world.registry.downloads == downloads  # nothing fetched either
    assert result.details["loaded_on"] == [] and result.details["already_served"] == [R1, R2]


def test_only_the_replica_that_lacks_the_name_gets_it(world: World) -> None:
    world.servers[0].adapters["aws-rag-qa@v2"] = world.folder("2")
    serve(world, "2")
    assert world.servers[0].lora_calls() == []
    assert world.served() == [{"aws-rag-qa@v2": world.folder("2")}] * 2


def test_a_served_name_from_another_folder_is_refused_and_nothing_changes(world: World) -> None:
    world.servers[1].adapters["aws-rag-qa@v2"] = "/elsewhere/aws-rag-qa-v3"
    before = world.served()
    words = r"vllm-2.test:8000 serves 'aws-rag-qa@v2' from /elsewhere"
    with pytest.raises(PermanentError, match=words) as info:
        serve(world, "2")
    assert info.value.exit_code == ExitCode.PERMANENT
    assert world.served() == before
    assert all(s.lora_calls() == [] for s in world.servers)


def test_second_replica_fails_first_is_unloaded_and_the_rest_stays(world: World) -> None:
    world.servers[0].adapters["other-slot"] = "/a/other"
    world.servers[1].rejected_paths.add(world.folder("3"))
    before = world.served()
    with pytest.raises(AdapterRejectedError, match=r"vllm-2.test:8000 refused load adapter 'aws-rag-qa@v3'"):
        serve(world, "3")
    assert world.served() == before
    assert ("/v1/unload_lora_adapter", {"lora_name": "aws-rag-qa@v3"}) in world.servers[0].lora_calls()


def test_room_is_made_from_names_nothing_needs_oldest_first(world: World) -> None:
    for server in world.servers:
        server.adapters.update({f"aws-rag-qa@v{v}": world.folder(v) for v in ("1", "2")})
        server.adapters["other-slot"] = "/a/other"
    unloaded, _ = serve(world, "3", keep={"aws-rag-qa@v2"}, limits=Limits(max_loras=2, max_cpu_loras=3))
    assert unloaded == ["aws-rag-qa@v1"]
    assert (
        world.served()
        == [
            {"aws-rag-qa@v2": world.folder("2"), "other-slot": "/a/other", "aws-rag-qa@v3": world.folder("3")}
        ]
        * 2
    )


def test_a_failure_after_making_room_puts_the_unloaded_names_back(world: World) -> None:
    for server in world.servers:
        server.adapters.update({f"aws-rag-qa@v{v}": world.folder(v) for v in ("1", "2")})
    world.servers[1].rejected_paths.add(world.folder("3"))
    before = world.served()
    with pytest.raises(AdapterRejectedError):
        serve(world, "3", keep={"aws-rag-qa@v2"}, limits=Limits(max_loras=2, max_cpu_loras=2))
    assert world.served() == before


def test_no_room_changes_nothing(world: World) -> None:
    for server in world.servers:
        server.adapters.update({f"aws-rag-qa@v{v}": world.folder(v) for v in ("1", "2")})
    before = world.served()
    with pytest.raises(PermanentError, match="no room to load 'aws-rag-qa@v3'"):
        serve(
            world,
            "3",
            keep={"aws-rag-qa@v2"},
            weights={"aws-rag-qa@v1": 100},
            limits=Limits(max_loras=2, max_cpu_loras=2),
        )
    assert world.served() == before
    assert all(s.lora_calls() == [] for s in world.servers)
    assert world.registry.downloads == []  # refused before any download


def test_without_known_limits_nothing_is_unloaded_and_a_warning_says_so(world: World) -> None:
    for server in world.servers:
        server.adapters["aws-rag-qa@v1"] = world.folder("1")
    unloaded, result = serve(world, "2", limits=None)
    assert unloaded == []
    assert world.served() == [{"aws-rag-qa@v1": world.folder("1"), "aws-rag-qa@v2": world.folder("2")}] * 2
    assert any("--max-cpu-loras" in w for w in result.details["warnings"])


# -- the command's step: source, lock, history ----------------------------------------------


def test_load_version_resolves_the_alias_and_records_the_load(world: World) -> None:
    world.registry.aliases.update({"staged": "2", "live": "1"})
    for server in world.servers:
        server.adapters["aws-rag-qa@v1"] = world.folder("1")
    result = load_version(
        MODEL,
        Source("alias", "staged"),
        registry=world.registry,
        replicas=world.clients,
        transport=world.transport,
        policy=AdapterPolicy(),
        weights={"aws-rag-qa@v1": 100},
        limits=Limits(max_loras=2, max_cpu_loras=2),
        actor=ACTOR,
        patience=world.patience,
    )
    assert (result.step, result.version, result.slot) == ("load-version", "2", "aws-rag-qa@v2")
    assert world.served() == [{"aws-rag-qa@v1": world.folder("1"), "aws-rag-qa@v2": world.folder("2")}] * 2
    (record,) = world.registry.audit
    assert "aws-rag-qa@v2 loaded on 2 of 2 replicas" in str(record["params"])
    assert world.registry.leases.holder(MODEL) is None


def test_alias_versions_are_never_unloaded(world: World) -> None:
    world.registry.aliases.update({"previous": "1", "live": "2"})
    for server in world.servers:
        server.adapters.update({f"aws-rag-qa@v{v}": world.folder(v) for v in ("1", "2")})
    with pytest.raises(PermanentError, match="no room"):
        load_version(
            MODEL,
            Source("version", "3"),
            registry=world.registry,
            replicas=world.clients,
            transport=world.transport,
            policy=AdapterPolicy(),
            weights={},
            limits=Limits(max_loras=2, max_cpu_loras=2),
            actor=ACTOR,
            patience=world.patience,
        )
    assert world.registry.audit == []


def test_a_held_lock_stops_the_load(world: World) -> None:
    other = Actor(who="someone@else", step="canary", run_id="run-2")
    with model_lock(world.registry, MODEL, other, heartbeat_s=None), pytest.raises(LockHeldError):
        load_version(
            MODEL,
            Source("version", "1"),
            registry=world.registry,
            replicas=world.clients,
            transport=world.transport,
            policy=AdapterPolicy(),
            weights={},
            limits=ROOMY,
            actor=ACTOR,
            patience=world.patience,
        )
    assert world.served() == [{}, {}]


def test_a_bad_model_name_is_a_usage_error_before_anything(world: World) -> None:
    with pytest.raises(UsageError):
        load_version(
            "../x",
            Source("version", "1"),
            registry=world.registry,
            replicas=world.clients,
            transport=world.transport,
            policy=AdapterPolicy(),
            weights={},
            limits=ROOMY,
            actor=ACTOR,
        )
