"""lora-modules.json follows every committed change (review D6): what a vLLM restart
starts with is what the aliases name, without waiting for reconcile.

The steps run for real against the fakes: ``FakeAliasRegistry`` (aliases move, audit
records are kept), ``FakeVllmServer`` and a real
``LocalFolderTransport`` in ``tmp_path``; the test reads the manifest file itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from loradeploy.clients.files import MANIFEST, LocalFolderTransport
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor
from loradeploy.domain.layout import version_dir
from loradeploy.domain.manifest import plan_manifest
from loradeploy.domain.names import Source
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.errors import PermanentError
from loradeploy.steps.init_load import init_load_adapters
from loradeploy.steps.load_adapter import LoadRequest, load_adapter
from loradeploy.steps.manifest import ManifestSpec
from loradeploy.steps.promote import PromoteRequest, promote_adapter
from loradeploy.steps.reconcile import ReconcileRequest, reconcile
from loradeploy.steps.set_staged_alias import set_staged_alias
from support.fake_registry import FakeAliasRegistry
from support.fakes import BASE_ID, FakeClock, FakeVllmServer
from support.synthetic import write_adapter

MODEL = "aws-rag-qa"
LIVE, CANDIDATE = "aws-rag-qa-live", "aws-rag-qa-candidate"
SPEC = ManifestSpec(MODEL, {"live": LIVE, "staged": CANDIDATE})
ACTOR = Actor(who="test@here", step="test", run_id="run-1")


class FakeReadOnlyTransport(LocalFolderTransport):
    """FAKE: a local transport whose manifest write fails as on a read-only volume."""

    def write_manifest(self, modules: list[dict[str, str]]) -> None:
        raise PermanentError(f"writing {self.root}/{MANIFEST}: cannot write (Read-only file system)")


@dataclass
class World:
    registry: FakeAliasRegistry
    server: FakeVllmServer
    vllm: VllmClient
    transport: LocalFolderTransport

    def root(self, slot: str, version: str) -> str:
        return version_dir(self.transport.root, slot, MODEL, version)

    def manifest(self) -> dict[str, str]:
        """Slot -> path, as vLLM would be started with."""
        data = json.loads((self.transport.root_path / MANIFEST).read_text())
        return {m["name"]: m["path"] for m in data["modules"]}


@pytest.fixture
def world(tmp_path: Path, server: FakeVllmServer, vllm: VllmClient) -> Iterator[World]:
    registry = FakeAliasRegistry(MODEL)
    for version, fill in (("1", 3), ("2", 5), ("3", 7)):
        registry.add_version(version, write_adapter(tmp_path / "registry" / f"v{version}", fill=fill))
    transport = LocalFolderTransport(tmp_path / "adapters", tmp_path / "staging")
    yield World(registry, server, vllm, transport)


def started(world: World, aliases: Mapping[str, str]) -> None:
    """The cold start: init-load-adapters restored what the aliases name."""
    world.registry.aliases = dict(aliases)
    init_load_adapters(
        model=MODEL,
        slot_for_alias=SPEC.slot_for_alias,
        registry=world.registry,
        transport=world.transport,
        base_model_name=BASE_ID,
        policy=AdapterPolicy(),
    )
    world.server.adapters = dict(world.manifest())  # vLLM started from the manifest


def promote(world: World, source: str, transport: LocalFolderTransport | None = None) -> dict[str, object]:
    result = promote_adapter(
        PromoteRequest(model=MODEL, source_alias=source, live_slot=LIVE),
        registry=world.registry,
        replicas=[world.vllm],
        transport=transport or world.transport,
        actor=ACTOR,
        manifest=SPEC,
    )
    return result.details


def test_init_load_writes_both_slots_with_the_base_model(world: World) -> None:
    started(world, {"live": "1", "staged": "2"})
    data = json.loads((world.transport.root_path / MANIFEST).read_text())
    assert data["modules"] == [
        {"name": LIVE, "path": world.root(LIVE, "1"), "base_model_name": BASE_ID},
        {"name": CANDIDATE, "path": world.root(CANDIDATE, "2"), "base_model_name": BASE_ID},
    ]


def test_a_promotion_rewrites_the_manifest_with_the_promoted_version(world: World) -> None:
    started(world, {"live": "1", "staged": "2"})

    details = promote(world, "staged")

    assert world.registry.aliases == {"live": "2", "previous": "1"}
    # staged moved away: the candidate slot has nothing to restore any more.
    assert world.manifest() == {LIVE: world.root(LIVE, "2")}
    assert details["lora_modules"] == [
        {"name": LIVE, "path": world.root(LIVE, "2"), "base_model_name": BASE_ID}
    ]
    assert details["warnings"] == []


def test_a_rollback_rewrites_it_back(world: World) -> None:
    started(world, {"live": "1", "staged": "2"})
    promote(world, "staged")

    promote(world, "previous")

    assert world.registry.aliases == {"live": "1", "previous": "2"}
    assert world.manifest() == {LIVE: world.root(LIVE, "1")}


def test_a_manifest_that_cannot_be_written_after_the_commit_is_a_warning(
    world: World, tmp_path: Path
) -> None:
    started(world, {"live": "1", "staged": "2"})
    read_only = FakeReadOnlyTransport(tmp_path / "adapters", tmp_path / "staging")

    details = promote(world, "staged", transport=read_only)

    assert world.registry.aliases == {"live": "2", "previous": "1"}  # committed, exit 0
    assert world.server.adapters[LIVE] == world.root(LIVE, "2")
    warnings = details["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1
    assert warnings[0].startswith("lora-modules.json not rewritten") and "Read-only" in warnings[0]


def test_set_staged_alias_adds_the_candidate_slot(world: World) -> None:
    started(world, {"live": "1"})
    load_adapter(
        LoadRequest(model=MODEL, source=Source("version", "3"), slot=CANDIDATE),
        registry=world.registry,
        replicas=[world.vllm],
        transport=world.transport,
        actor=ACTOR,
        manifest=SPEC,
    )
    assert world.manifest() == {LIVE: world.root(LIVE, "1")}  # no alias names v3 yet

    set_staged_alias(
        world.registry,
        [world.vllm],
        model=MODEL,
        source=Source("version", "3"),
        slot=CANDIDATE,
        actor=ACTOR,
        manifest=SPEC,
        transport=world.transport,
    )

    assert world.manifest() == {LIVE: world.root(LIVE, "1"), CANDIDATE: world.root(CANDIDATE, "3")}


def test_load_adapter_writes_the_slot_its_alias_names(world: World) -> None:
    started(world, {"live": "1"})
    world.registry.aliases["staged"] = "2"  # moved by hand; the candidate slot is empty

    load_adapter(
        LoadRequest(model=MODEL, source=Source("alias", "staged"), slot=CANDIDATE),
        registry=world.registry,
        replicas=[world.vllm],
        transport=world.transport,
        actor=ACTOR,
        manifest=SPEC,
    )

    assert world.manifest() == {LIVE: world.root(LIVE, "1"), CANDIDATE: world.root(CANDIDATE, "2")}


def test_a_reconcile_repair_rewrites_the_manifest(world: World, clock: FakeClock) -> None:
    started(world, {"live": "1"})
    world.registry.aliases["live"] = "2"  # moved by hand: the live slot now drifts

    result = reconcile(
        ReconcileRequest(model=MODEL, slot_for_alias=SPEC.slot_for_alias),
        registry=world.registry,
        replicas=[world.vllm],
        transport=world.transport,
        actor=ACTOR,
        manifest=SPEC,
    )

    assert result.passed
    assert world.server.adapters[LIVE] == world.root(LIVE, "2")
    assert world.manifest() == {LIVE: world.root(LIVE, "2")}


@pytest.mark.parametrize(
    ("aliases", "placed", "expected", "skipped"),
    [
        (
            {"live": "2", "staged": "3"},
            ["live/m-v2", "cand/m-v3"],
            {"live": "live/m-v2", "cand": "cand/m-v3"},
            [],
        ),
        ({"live": "2"}, ["live/m-v2", "cand/m-v3"], {"live": "live/m-v2"}, ["cand"]),
        ({"live": "2", "staged": "3"}, ["live/m-v2", "live/m-v3"], {"live": "live/m-v2"}, ["cand"]),
        ({"live": "4"}, ["live/m-v2"], {}, ["live", "cand"]),
        ({}, [], {}, ["live", "cand"]),
    ],
)
def test_plan_manifest_names_only_placed_folders_an_alias_names(
    aliases: dict[str, str], placed: list[str], expected: dict[str, str], skipped: list[str]
) -> None:
    plan = plan_manifest(
        model="m",
        slot_for_alias={"live": "live", "staged": "cand"},
        aliases=aliases,
        placed=[f"/r/{p}" for p in placed],
        root="/r",
        base_model_name=None,
    )
    assert {m["name"]: m["path"] for m in plan.modules} == {k: f"/r/{v}" for k, v in expected.items()}
    assert sorted(plan.skipped) == sorted(skipped)
    assert all(set(m) == {"name", "path"} for m in plan.modules)


def test_plan_manifest_keeps_another_models_slots_while_they_are_placed() -> None:
    """Several models share one vLLM and one adapters folder: a promotion of one must not
    drop the others' entries, or a restart would stop serving them."""
    existing = [
        {"name": "other-live", "path": "/r/other-live/o-v3"},
        {"name": "gone-live", "path": "/r/gone-live/g-v1"},  # folder removed since
        {"name": "live", "path": "/r/live/m-v1"},  # this model's slot: rebuilt
    ]
    plan = plan_manifest(
        model="m",
        slot_for_alias={"live": "live"},
        aliases={"live": "2"},
        placed=["/r/live/m-v2", "/r/other-live/o-v3"],
        root="/r",
        base_model_name=None,
        existing=existing,
    )
    assert {m["name"]: m["path"] for m in plan.modules} == {
        "other-live": "/r/other-live/o-v3",
        "live": "/r/live/m-v2",
    }
