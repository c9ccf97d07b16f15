"""steps/rollout.py: one slot, every replica or none, including when putting back fails.

Each case of the reliability review's D4 (2026-12-01) is here: a restore that fails, an
exception that is not the project's, a final verification that fails, a load that times
out on the client but completes on the server. Three in-process vLLM servers
(``FakeVllmServer``) stand behind transports a test can make misbehave; time is fake.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import typer

from loradeploy.cli.common import _run
from loradeploy.clients.files import LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.names import Source
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import (
    AdapterRejectedError,
    ExitCode,
    LeftReplica,
    LoraDeployError,
    PartialRolloutError,
    PermanentError,
    ServerUnavailableError,
)
from loradeploy.results import StepResult
from loradeploy.steps.load_adapter import LoadRequest, load_adapter
from loradeploy.steps.rollout import Replica, inspect_replicas, roll_out, strategy_warnings
from loradeploy.steps.swap import Patience
from support.fake_registry import FakeRegistry
from support.fakes import FakeClock, FakeVllmServer
from support.synthetic import write_adapter

SLOT = "aws-rag-qa-live"
V1 = f"/srv/adapters/{SLOT}/aws-rag-qa-v1"
V2 = f"/srv/adapters/{SLOT}/aws-rag-qa-v2"
LOAD = "/v1/load_lora_adapter"
MODELS = "/v1/models"

Rule = Callable[[httpx.Request], httpx.Response | None]


@dataclass
class FakeReplica:
    """A ``FakeVllmServer`` behind a transport whose ``rule`` may answer (or raise) first."""

    url: str
    server: FakeVllmServer
    rule: Rule | None = None
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:  # one request at a time per server, as the fake keeps plain dicts
            self.requests.append(f"{request.method} {request.url.path}")
            if self.rule is not None:
                answer = self.rule(request)
                if answer is not None:
                    return answer
            return self.server.handle(request)


@dataclass
class Fleet:
    replicas: list[FakeReplica]
    clients: list[VllmClient]
    clock: FakeClock
    patience: Patience

    def inspect(self, strategy: SwapStrategy = SwapStrategy.AUTO) -> list[Replica]:
        return inspect_replicas(self.clients, SLOT, strategy)

    def served(self) -> list[str | None]:
        return [r.server.adapters.get(SLOT) for r in self.replicas]


@pytest.fixture
def fleet(clock: FakeClock) -> Iterator[Fleet]:
    replicas = [
        FakeReplica(f"http://vllm-{name}.test:8000", FakeVllmServer(adapters={SLOT: V1}, clock=clock))
        for name in "abc"
    ]
    clients = [
        VllmClient(r.url, transport=httpx.MockTransport(r.handle), clock=clock, sleep=clock.sleep)
        for r in replicas
    ]
    patience = Patience(
        verify_s=5.0, unknown_load_s=20.0, restore_s=30.0, retry_every_s=1.0, clock=clock, sleep=clock.sleep
    )
    try:
        yield Fleet(replicas, clients, clock, patience)
    finally:
        for client in clients:
            client.close()


def test_every_replica_takes_the_new_root(fleet: Fleet) -> None:
    rows = roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)
    assert fleet.served() == [V2, V2, V2]
    assert [row["replica"] for row in rows] == [r.url for r in fleet.replicas]
    assert all(row["previous_root"] == V1 and row["root"] == V2 for row in rows)


def test_a_refused_load_puts_every_replica_back(fleet: Fleet) -> None:
    fleet.replicas[2].server.rejected_paths.add(V2)
    with pytest.raises(AdapterRejectedError) as caught:
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)
    assert fleet.replicas[2].url in caught.value.message
    assert fleet.served() == [V1, V1, V1]


# -- D4.1: a restore that fails --------------------------------------------------------------------


def test_a_restore_that_keeps_failing_names_the_replica_left_and_is_transient(fleet: Fleet) -> None:
    a, _, c = fleet.replicas
    c.server.rejected_paths.add(V2)  # the rollout fails on c
    a.server.rejected_paths.add(V1)  # and a refuses its old folder back, every time
    started = fleet.clock.now

    with pytest.raises(PartialRolloutError) as caught:
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)

    error = caught.value
    assert fleet.served() == [V2, V1, V1]
    assert error.exit_code is ExitCode.TRANSIENT
    line = error.one_line()
    assert a.url in line and V2 in line  # which replica, and what it is left on
    assert c.url in line  # why the rollout was undone
    assert fleet.replicas[1].url not in line  # b was put back
    assert error.details == {
        "replicas_left": [{"replica": a.url, "slot": SLOT, "serves": V2, "wanted": V1, "known": True}]
    }
    # The put-back was retried until its deadline, not tried once.
    assert sum(1 for r in a.requests if r == f"POST {LOAD}") > 3
    assert fleet.clock.now - started >= fleet.patience.restore_s


def test_a_replica_unreachable_after_its_swap_is_named_as_unknown(fleet: Fleet) -> None:
    a, _, c = fleet.replicas
    c.server.rejected_paths.add(V2)
    c_refused = threading.Event()

    def c_rule(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == LOAD:
            c_refused.set()
        return None

    def a_rule(request: httpx.Request) -> httpx.Response | None:
        # a goes away once it serves v2 and c has refused: its put-back cannot reach it.
        if c_refused.is_set() and a.server.adapters.get(SLOT) == V2:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return None

    c.rule, a.rule = c_rule, a_rule
    with pytest.raises(PartialRolloutError) as caught:
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)

    assert fleet.served() == [V2, V1, V1]
    assert [left.replica for left in caught.value.left] == [a.url]
    assert caught.value.left[0].known is False
    assert "unknown" in caught.value.one_line()


def test_a_restore_that_fails_once_is_retried(fleet: Fleet) -> None:
    a, _, c = fleet.replicas
    c.server.rejected_paths.add(V2)
    refusals = [True]  # a's first put-back answers 503, the next one works

    def a_rule(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == LOAD and b'"lora_path":"' + V1.encode() in request.content and refusals:
            refusals.pop()
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return None

    a.rule = a_rule
    with pytest.raises(AdapterRejectedError):  # the rollout's own error, nothing left behind
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)
    assert fleet.served() == [V1, V1, V1]
    assert not refusals


# -- D4.2: an exception that is not the project's -------------------------------------------------


def test_an_exception_that_is_not_ours_is_translated_and_every_replica_put_back(fleet: Fleet) -> None:
    c = fleet.replicas[2]

    def broken(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == LOAD:
            raise RuntimeError("a bug somewhere below the client")
        return None

    c.rule = broken
    with pytest.raises(LoraDeployError) as caught:
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)

    assert fleet.served() == [V1, V1, V1]
    assert c.url in caught.value.message
    assert "RuntimeError" in caught.value.message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_html_with_200_from_one_replica_puts_every_replica_back(fleet: Fleet) -> None:
    """The review's repro: c's /v1/models answers an HTML page from its 3rd call on."""
    c = fleet.replicas[2]
    calls = []

    def html(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == MODELS:
            calls.append(request)
            if len(calls) >= 3:
                return httpx.Response(
                    200, text="<html>maintenance</html>", headers={"Content-Type": "text/html"}
                )
        return None

    replicas = fleet.inspect()  # reads c's /v1/models twice
    c.rule = html
    with pytest.raises(PartialRolloutError) as caught:  # c cannot be read back: it is named
        roll_out(replicas, SLOT, V2, patience=fleet.patience)

    assert fleet.served()[:2] == [V1, V1]
    assert [left.replica for left in caught.value.left] == [c.url]
    assert caught.value.exit_code is ExitCode.TRANSIENT


# -- D4.3: the final verification fails -----------------------------------------------------------


def test_a_failed_final_verification_puts_every_replica_back(fleet: Fleet) -> None:
    b = fleet.replicas[1]
    reads_since_v2: list[str] = []

    def restarted(request: httpx.Request) -> httpx.Response | None:
        # b's swap reads /v1/models twice (listed? base unchanged?); the third read is the
        # final verification: by then b's vLLM restarted and serves v1 from its old manifest.
        if request.url.path == MODELS and b.server.adapters.get(SLOT) == V2:
            reads_since_v2.append(request.url.path)
            if len(reads_since_v2) == 3:
                b.server.adapters[SLOT] = V1
        return None

    b.rule = restarted
    with pytest.raises(PermanentError) as caught:
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)

    assert b.url in caught.value.message
    assert fleet.served() == [V1, V1, V1]


# -- D4.4: a load that times out on the client but completes on the server -------------------------


def test_a_load_that_times_out_but_completes_later_is_put_back(fleet: Fleet) -> None:
    """The review's repro: the load lands just after the first look at /v1/models."""
    a = fleet.replicas[0]
    pending: list[httpx.Request] = []
    landed: list[bool] = []

    def late(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == LOAD and not pending and b"aws-rag-qa-v2" in request.content:
            pending.append(request)  # vLLM keeps working on it; the client gives up
            raise httpx.ReadTimeout("timed out", request=request)
        if request.url.path == MODELS and pending and not landed:
            answer = a.server.handle(request)  # still v1 ...
            a.server.handle(pending[0])  # ... and then the load completes
            landed.append(True)
            return answer
        return None

    a.rule = late
    with pytest.raises(ServerUnavailableError) as caught:
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)

    assert a.url in caught.value.message
    assert fleet.served() == [V1, V1, V1]


def test_a_load_that_times_out_and_completes_at_once_is_put_back(fleet: Fleet) -> None:
    a = fleet.replicas[0]

    def applied_then_timed_out(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == LOAD and b"aws-rag-qa-v2" in request.content:
            a.server.handle(request)
            raise httpx.ReadTimeout("timed out", request=request)
        return None

    a.rule = applied_then_timed_out
    with pytest.raises(ServerUnavailableError):
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)
    assert fleet.served() == [V1, V1, V1]


def test_a_load_that_never_shows_up_is_waited_for_until_the_deadline(fleet: Fleet) -> None:
    a = fleet.replicas[0]

    def lost(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == LOAD and b"aws-rag-qa-v2" in request.content:
            raise httpx.ReadTimeout("timed out", request=request)
        return None

    a.rule = lost
    started = fleet.clock.now
    with pytest.raises(ServerUnavailableError):
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)
    assert fleet.served() == [V1, V1, V1]
    assert fleet.clock.now - started >= fleet.patience.unknown_load_s


# -- an empty slot, and a strategy warning ---------------------------------------------------------


def test_a_first_load_that_fails_elsewhere_empties_the_slot_again(fleet: Fleet) -> None:
    for replica in fleet.replicas:
        replica.server.adapters = {}
    fleet.replicas[1].server.rejected_paths.add(V2)
    with pytest.raises(AdapterRejectedError):
        roll_out(fleet.inspect(), SLOT, V2, patience=fleet.patience)
    assert fleet.served() == [None, None, None]


def test_inspect_asks_the_server_version_only_when_the_choice_needs_it(fleet: Fleet) -> None:
    fleet.inspect(SwapStrategy.AUTO)
    assert not any(r == "GET /version" for replica in fleet.replicas for r in replica.requests)
    for replica in fleet.replicas:
        replica.server.version = "0.32.0"

    replicas = fleet.inspect(SwapStrategy.UNLOAD_LOAD)

    assert all("GET /version" in replica.requests for replica in fleet.replicas)
    assert all(r.strategy is SwapStrategy.UNLOAD_LOAD for r in replicas)
    warnings = strategy_warnings(replicas)
    assert len(warnings) == 1 and "vLLM 0.32.0" in warnings[0]


def test_load_adapter_puts_the_strategy_warning_in_the_result(tmp_path: Path, clock: FakeClock) -> None:
    registry = FakeRegistry(model="m")
    registry.add_version("1", write_adapter(tmp_path / "src" / "v1"))
    server = FakeVllmServer(clock=clock, version="0.32.0")
    with VllmClient(
        "http://vllm.test:8000", transport=server.transport(), clock=clock, sleep=clock.sleep
    ) as vllm:
        result = load_adapter(
            LoadRequest(
                model="m", source=Source("version", "1"), slot=SLOT, strategy=SwapStrategy.UNLOAD_LOAD
            ),
            registry=registry,  # type: ignore[arg-type]
            replicas=[vllm],
            transport=LocalFolderTransport(tmp_path / "adapters"),
            actor=Actor(who="test@host", step="load-adapter", run_id="run-1"),
        )
    assert server.adapters == {SLOT: str(tmp_path / "adapters" / SLOT / "m-v1")}
    [warning] = result.details["warnings"]
    assert "unload-load" in warning and "0.32.0" in warning


def test_the_cli_writes_the_replicas_left_into_result_json(tmp_path: Path) -> None:
    left = LeftReplica("http://vllm-a.test:8000", SLOT, V2, V1)

    def failing() -> StepResult:
        raise PartialRolloutError("rollout failed; vllm-a left on v2", left=[left])

    with pytest.raises(typer.Exit) as caught:
        _run("load-adapter", tmp_path, failing)

    assert caught.value.exit_code == 75
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["exit_code"] == 75
    assert written["details"]["replicas_left"] == [
        {"replica": "http://vllm-a.test:8000", "slot": SLOT, "serves": V2, "wanted": V1, "known": True}
    ]


def test_load_adapter_waits_the_patience_of_its_request(tmp_path: Path, clock: FakeClock) -> None:
    """An unanswered load is watched ``unknown_load_s`` and the put-back tried
    ``restore_s`` of the request's patience (settings: LORADEPLOY_SWAP_WATCH_S and
    LORADEPLOY_SWAP_RESTORE_S), not the defaults of 30 s and 60 s."""
    registry = FakeRegistry(model="m")
    registry.add_version("1", write_adapter(tmp_path / "src" / "v1"))
    server = FakeVllmServer(clock=clock, adapters={SLOT: V1})

    def silent_after_the_load(request: httpx.Request) -> httpx.Response:
        if request.url.path == LOAD or loaded:
            loaded.append(request.url.path)
            raise httpx.ConnectError("connection dropped", request=request)
        return server.handle(request)

    loaded: list[str] = []
    patience = Patience(unknown_load_s=3.0, restore_s=5.0, retry_every_s=1.0, clock=clock, sleep=clock.sleep)
    started = clock.now
    with (
        VllmClient(
            "http://vllm.test:8000",
            transport=httpx.MockTransport(silent_after_the_load),
            clock=clock,
            sleep=clock.sleep,
        ) as vllm,
        pytest.raises(PartialRolloutError),
    ):  # the put-back never got through
        load_adapter(
            LoadRequest(model="m", source=Source("version", "1"), slot=SLOT, patience=patience),
            registry=registry,  # type: ignore[arg-type]
            replicas=[vllm],
            transport=LocalFolderTransport(tmp_path / "adapters"),
            actor=Actor(who="test@host", step="load-adapter", run_id="run-1"),
        )
    waited = clock.now - started
    assert patience.unknown_load_s + patience.restore_s <= waited < 30.0, waited
