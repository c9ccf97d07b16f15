"""reconcile: the pure plan (domain/reconcile.py), one round against fake servers and a
fake registry (steps/reconcile.py), the watch loop's backoff, and the command line."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from loradeploy.cli import app
from loradeploy.cli.reconcile_commands import _StopOnSignal
from loradeploy.clients.files import LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.reconcile import backoff_s, plan_repairs
from loradeploy.errors import NotFoundError, ServerUnavailableError, UsageError
from loradeploy.results import Check, StepResult
from loradeploy.steps.reconcile import ReconcileRequest, reconcile, watch
from support.fake_registry import FakeRegistry
from support.fakes import FakeClock, FakeVllmServer
from support.synthetic import write_adapter

MODEL = "aws-rag-qa"
LIVE_SLOT = "aws-rag-qa-live"
CAND_SLOT = "aws-rag-qa-candidate"
SLOTS = {"live": LIVE_SLOT, "staged": CAND_SLOT}
R1 = "http://vllm-1.test:8000"
R2 = "http://vllm-2.test:8000"


# -- the plan ------------------------------------------------------------------------------


def root(slot: str, version: str, base: str = "/a") -> str:
    return f"{base}/{slot}/{MODEL}-v{version}"


def test_plan_is_empty_when_every_slot_serves_its_alias() -> None:
    plan = plan_repairs(
        model=MODEL,
        aliases={"live": "1", "staged": "2"},
        slot_for_alias=SLOTS,
        served={R1: {LIVE_SLOT: root(LIVE_SLOT, "1"), CAND_SLOT: root(CAND_SLOT, "2")}},
    )
    assert plan.nothing_to_do
    assert len(plan.in_sync) == 2


def test_plan_groups_replicas_per_slot_and_says_why() -> None:
    plan = plan_repairs(
        model=MODEL,
        aliases={"live": "3"},
        slot_for_alias=SLOTS,
        served={R1: {}, R2: {LIVE_SLOT: root(LIVE_SLOT, "2")}},
    )
    [repair] = plan.repairs
    assert (repair.alias, repair.slot, repair.version) == ("live", LIVE_SLOT, "3")
    assert repair.replicas == (R1, R2)
    assert repair.why == {R1: "missing", R2: "wrong-version"}


def test_plan_never_touches_a_slot_whose_alias_is_absent() -> None:
    plan = plan_repairs(
        model=MODEL,
        aliases={"live": "1"},
        slot_for_alias=SLOTS,
        served={R1: {LIVE_SLOT: root(LIVE_SLOT, "1"), CAND_SLOT: root(CAND_SLOT, "7")}},
    )
    assert plan.nothing_to_do
    assert [(row.slot, "no alias" in why) for row, why in plan.left_alone] == [(CAND_SLOT, True)]


def test_plan_leaves_a_deployment_in_progress_alone() -> None:
    """load-adapter put the candidate version in the candidate slot; staged still names
    the old one until set-staged-alias runs. Reverting it would undo the deployment."""
    plan = plan_repairs(
        model=MODEL,
        aliases={"staged": "1", "candidate": "2"},
        slot_for_alias=SLOTS,
        served={R1: {CAND_SLOT: root(CAND_SLOT, "2")}},
    )
    assert plan.nothing_to_do
    why = {row.slot: reason for row, reason in plan.left_alone}
    assert "in progress" in why[CAND_SLOT]
    assert "no alias" in why[LIVE_SLOT]


def test_plan_repairs_the_candidate_slot_serving_anything_else() -> None:
    plan = plan_repairs(
        model=MODEL,
        aliases={"staged": "1", "candidate": "2"},
        slot_for_alias=SLOTS,
        served={R1: {CAND_SLOT: root(CAND_SLOT, "5")}},
    )
    [repair] = plan.repairs
    assert (repair.slot, repair.version, repair.why) == (CAND_SLOT, "1", {R1: "wrong-version"})


def test_backoff_doubles_from_the_interval_up_to_the_cap() -> None:
    delays = [backoff_s(n, interval_s=30, cap_s=300) for n in range(7)]
    assert delays == [30, 60, 120, 240, 300, 300, 300]
    assert backoff_s(1000, interval_s=30, cap_s=300) == 300
    assert backoff_s(3, interval_s=30, cap_s=10) == 30  # a cap below the interval never speeds up


# -- one round -----------------------------------------------------------------------------


@dataclass
class World:
    registry: FakeRegistry
    servers: dict[str, FakeVllmServer]
    clients: list[VllmClient]
    transport: LocalFolderTransport
    clock: FakeClock
    sources: dict[str, Path] = field(default_factory=dict)

    def root(self, slot: str, version: str) -> str:
        return root(slot, version, base=self.transport.root)

    def run(self) -> StepResult:
        return reconcile(
            ReconcileRequest(model=MODEL, slot_for_alias=SLOTS),
            registry=self.registry,  # type: ignore[arg-type]
            replicas=self.clients,
            transport=self.transport,
            actor=Actor(who="test@host", step="reconcile", run_id="run-1"),
        )

    def served(self) -> dict[str, dict[str, str]]:
        return {url: dict(server.adapters) for url, server in self.servers.items()}


@pytest.fixture
def world(tmp_path: Path, clock: FakeClock) -> Iterator[World]:
    registry = FakeRegistry(model=MODEL)
    for version in ("1", "2", "3"):
        registry.add_version(version, write_adapter(tmp_path / "src" / f"v{version}", fill=int(version)))
    servers = {url: FakeVllmServer(clock=clock) for url in (R1, R2)}
    with ExitStack() as stack:
        clients = [
            stack.enter_context(VllmClient(url, transport=server.transport(), clock=clock, sleep=clock.sleep))
            for url, server in servers.items()
        ]
        yield World(registry, servers, clients, LocalFolderTransport(tmp_path / "adapters"), clock)


def test_nothing_to_do_calls_nothing_and_writes_nothing(world: World) -> None:
    world.registry.aliases = {"live": "1", "staged": "2"}
    for server in world.servers.values():
        server.adapters = {LIVE_SLOT: world.root(LIVE_SLOT, "1"), CAND_SLOT: world.root(CAND_SLOT, "2")}
    result = world.run()
    assert result.passed
    assert result.details["planned"] == []
    assert all(server.lora_calls() == [] for server in world.servers.values())
    assert world.registry.downloads == []
    assert world.registry.model_tags == {} and world.registry.leases.records == {}  # no lock was taken


def test_missing_slots_are_restored_on_every_replica(world: World) -> None:
    world.registry.aliases = {"live": "1", "staged": "2", "previous": "3"}
    result = world.run()
    want = {LIVE_SLOT: world.root(LIVE_SLOT, "1"), CAND_SLOT: world.root(CAND_SLOT, "2")}
    assert world.served() == {R1: want, R2: want}
    assert result.passed
    assert [r["slot"] for r in result.details["repaired"]] == [LIVE_SLOT, CAND_SLOT]
    assert Path(want[LIVE_SLOT], "adapter_config.json").is_file()
    assert world.registry.aliases == {"live": "1", "staged": "2", "previous": "3"}
    assert world.registry.leases.is_free(MODEL)  # released


def test_a_wrong_version_is_replaced_only_where_it_is_wrong(world: World) -> None:
    world.registry.aliases = {"live": "2"}
    world.servers[R1].adapters = {LIVE_SLOT: world.root(LIVE_SLOT, "1")}
    world.servers[R2].adapters = {LIVE_SLOT: world.root(LIVE_SLOT, "2")}
    result = world.run()
    assert world.served()[R1] == {LIVE_SLOT: world.root(LIVE_SLOT, "2")}
    assert world.servers[R2].lora_calls() == []
    [repaired] = result.details["repaired"]
    assert repaired["replicas"] == {R1: "wrong-version"}
    assert repaired["version"] == "2"


def test_a_slot_without_an_alias_is_left_alone_never_unloaded(world: World) -> None:
    world.registry.aliases = {"live": "1"}
    stray = world.root(CAND_SLOT, "3")
    for server in world.servers.values():
        server.adapters = {CAND_SLOT: stray}
    result = world.run()
    for server in world.servers.values():
        assert server.adapters[CAND_SLOT] == stray
        assert all("unload" not in path for path, _ in server.lora_calls())
        assert server.adapters[LIVE_SLOT] == world.root(LIVE_SLOT, "1")
    assert any("no alias" in line for line in result.details["left_alone"])


def test_an_unregistered_model_is_nothing_to_do(world: World) -> None:
    world.registry.model = "another-model"
    result = world.run()
    assert result.passed
    assert result.details["aliases"] == {}
    assert all(server.lora_calls() == [] for server in world.servers.values())


def test_a_failed_repair_does_not_stop_the_other_slot(world: World) -> None:
    world.registry.aliases = {"live": "1", "staged": "2"}
    for server in world.servers.values():
        server.missing_paths = {world.root(LIVE_SLOT, "1")}  # the server cannot read it
    with pytest.raises(NotFoundError):
        world.run()
    for server in world.servers.values():
        assert LIVE_SLOT not in server.adapters
        assert server.adapters[CAND_SLOT] == world.root(CAND_SLOT, "2")
    assert world.registry.leases.is_free(MODEL)


def test_an_unreachable_replica_is_a_transient_error(world: World) -> None:
    world.registry.aliases = {"live": "1"}

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    world.clients[1] = VllmClient(R2, transport=httpx.MockTransport(refuse))
    with pytest.raises(ServerUnavailableError):
        world.run()
    assert world.servers[R1].lora_calls() == []  # nothing changed anywhere


# -- watch ---------------------------------------------------------------------------------


@dataclass
class FakeStop:
    """``wait`` for the watch loop: advances the fake clock, says stop after ``rounds`` waits."""

    clock: FakeClock
    rounds: int
    waits: list[float] = field(default_factory=list)

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.clock.sleep(seconds)
        return len(self.waits) >= self.rounds


def test_watch_backs_off_on_transient_errors_then_repairs(world: World) -> None:
    world.registry.aliases = {"live": "1"}
    world.registry.unavailable = 2  # MLflow is down for the first two rounds
    stop = FakeStop(world.clock, rounds=4)
    reports: list[tuple[bool, str | None, float]] = []
    rounds = watch(
        world.run,
        interval_s=30,
        max_backoff_s=100,
        wait=stop.wait,
        report=lambda result, error, delay: reports.append(
            (result is not None and result.passed, type(error).__name__ if error else None, delay)
        ),
    )
    assert rounds == 4
    assert stop.waits == [60, 100, 30, 30]  # doubled, capped, reset by the good round
    assert reports[0] == (False, "ServerUnavailableError", 60)
    assert reports[2] == (True, None, 30)
    assert world.served()[R1] == {LIVE_SLOT: world.root(LIVE_SLOT, "1")}


def test_watch_stops_on_a_usage_error(world: World) -> None:
    def once() -> StepResult:
        raise UsageError("bad flag")

    with pytest.raises(UsageError):
        watch(once, interval_s=30, max_backoff_s=300, wait=FakeStop(world.clock, 9).wait, report=print)


def test_watch_backs_off_while_checks_still_fail(clock: FakeClock) -> None:
    failing = StepResult(step="reconcile", checks=[Check(name="live", passed=False)])
    stop = FakeStop(clock, rounds=3)
    watch(lambda: failing, interval_s=10, max_backoff_s=1000, wait=stop.wait, report=lambda *_: None)
    assert stop.waits == [20, 40, 80]


def test_sigterm_stops_the_wait() -> None:
    stop = _StopOnSignal()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(30) is True
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _StopOnSignal().wait(0.01) is False


# -- command line --------------------------------------------------------------------------


def test_cli_refuses_the_same_slot_twice() -> None:
    done = CliRunner().invoke(
        app, ["reconcile", "--model-name=m", "--live-slot=same", "--candidate-slot=same"]
    )
    assert done.exit_code == 2
    assert "both 'same'" in done.output
