"""Cleanup never removes a folder any replica of the deployment serves (review L4).

A command may be pointed at some replicas only (``--vllm-url`` given for one of two
local servers). The replicas it was not pointed at still count for cleanup: vLLM
re-reads adapters lazily and crashes when a served folder is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loradeploy.clients.files import LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.layout import version_dir
from loradeploy.errors import ServerUnavailableError
from loradeploy.steps.cleanup import remove_unused_folders
from loradeploy.steps.promote import PromoteRequest, promote_adapter
from support.fake_registry import FakeAliasRegistry
from support.fakes import FakeClock, FakeVllmServer
from support.synthetic import write_adapter

MODEL = "m"
LIVE = "live"


@pytest.fixture
def transport(tmp_path: Path) -> LocalFolderTransport:
    return LocalFolderTransport(tmp_path / "adapters", tmp_path / "staging")


@pytest.fixture
def servers(clock: FakeClock) -> Iterator[tuple[FakeVllmServer, FakeVllmServer, VllmClient, VllmClient]]:
    a, b = FakeVllmServer(clock=clock), FakeVllmServer(clock=clock)
    with (
        VllmClient("http://vllm-a.test:8000", transport=a.transport(), clock=clock, sleep=clock.sleep) as ca,
        VllmClient("http://vllm-b.test:8000", transport=b.transport(), clock=clock, sleep=clock.sleep) as cb,
    ):
        yield a, b, ca, cb


def place(transport: LocalFolderTransport, version: str) -> str:
    folder = version_dir(transport.root, LIVE, MODEL, version)
    write_adapter(Path(folder), fill=int(version) + 2)
    return folder


def test_a_folder_only_a_left_out_replica_serves_is_kept(
    transport: LocalFolderTransport, servers: tuple[FakeVllmServer, FakeVllmServer, VllmClient, VllmClient]
) -> None:
    a, b, client_a, client_b = servers
    v1, v2, v3 = (place(transport, v) for v in ("1", "2", "3"))
    registry = FakeAliasRegistry(MODEL, aliases={"live": "3", "previous": "2"})
    a.adapters = {LIVE: v3}
    b.adapters = {LIVE: v1}  # not named on the command line, still serving v1

    removed = remove_unused_folders(registry, transport, MODEL, [client_a], others=[client_b])

    assert removed == []
    assert Path(v1).is_dir() and Path(v2).is_dir() and Path(v3).is_dir()


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_a_left_out_replica_that_cannot_answer_stops_the_cleanup(
    transport: LocalFolderTransport,
    servers: tuple[FakeVllmServer, FakeVllmServer, VllmClient, VllmClient],
    clock: FakeClock,
) -> None:
    a, _, client_a, _ = servers
    v1, v3 = place(transport, "1"), place(transport, "3")
    registry = FakeAliasRegistry(MODEL, aliases={"live": "3"})
    a.adapters = {LIVE: v3}
    down = VllmClient(
        "http://vllm-down.test:8000", transport=httpx.MockTransport(refuse), clock=clock, sleep=clock.sleep
    )

    with pytest.raises(ServerUnavailableError):
        remove_unused_folders(registry, transport, MODEL, [client_a], others=[down])

    assert Path(v1).is_dir()  # nothing removed without knowing what every replica serves


def test_two_promotions_through_one_of_two_replicas_keep_the_other_ones_folder(
    tmp_path: Path,
    transport: LocalFolderTransport,
    servers: tuple[FakeVllmServer, FakeVllmServer, VllmClient, VllmClient],
) -> None:
    a, b, client_a, client_b = servers
    registry = FakeAliasRegistry(MODEL, aliases={"live": "1"})
    for version in ("1", "2", "3"):
        registry.add_version(version, write_adapter(tmp_path / "registry" / version, fill=int(version) + 2))
    v1 = place(transport, "1")
    a.adapters = {LIVE: v1}
    b.adapters = {LIVE: v1}
    actor = Actor(who="test", step="promote-adapter", run_id="r")

    for version in ("2", "3"):  # the review's L4: only replica A is named
        registry.aliases["staged"] = version
        promote_adapter(
            PromoteRequest(model=MODEL, source_alias="staged", live_slot=LIVE),
            registry=registry,
            replicas=[client_a],
            transport=transport,
            actor=actor,
            others=[client_b],
        )

    assert registry.aliases["live"] == "3"
    assert b.adapters == {LIVE: v1}
    assert Path(v1).is_dir(), "replica B still serves v1: its folder must stay"


def test_a_promotion_whose_left_out_replica_cannot_answer_keeps_every_folder_and_exits_0(
    tmp_path: Path,
    transport: LocalFolderTransport,
    servers: tuple[FakeVllmServer, FakeVllmServer, VllmClient, VllmClient],
    clock: FakeClock,
) -> None:
    a, _, client_a, _ = servers
    registry = FakeAliasRegistry(MODEL, aliases={"live": "1", "staged": "2"})
    for version in ("1", "2"):
        registry.add_version(version, write_adapter(tmp_path / "registry" / version, fill=int(version) + 2))
    stale = place(transport, "7")  # no alias needs it; only the unreachable replica could say
    a.adapters = {LIVE: place(transport, "1")}
    down = VllmClient(
        "http://vllm-down.test:8000", transport=httpx.MockTransport(refuse), clock=clock, sleep=clock.sleep
    )

    result = promote_adapter(
        PromoteRequest(model=MODEL, source_alias="staged", live_slot=LIVE),
        registry=registry,
        replicas=[client_a],
        transport=transport,
        actor=Actor(who="test", step="promote-adapter", run_id="r"),
        others=[down],
    )

    assert registry.aliases["live"] == "2"  # committed
    assert result.details["removed_folders"] == []
    assert Path(stale).is_dir()
    assert any(w.startswith("unused folders kept") for w in result.details["warnings"])
