"""coordination.plans through the release steps: interrupted plans are finished by
whoever takes the lock next, moves are conditional on what the alias names now, retries
are recognised by run key, and hostile plan tags are typed errors.

Runs the real steps against ``FakeReleaseRegistry`` and ``FakeVllmServer``
(tests/support/fake_deployment.py) with a real local adapters folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loradeploy.coordination import PENDING_TAG, abandon_plan, model_lock, move_aliases
from loradeploy.domain.aliases import AliasMove
from loradeploy.errors import (
    AliasMovedError,
    ExitCode,
    LockHeldError,
    PermanentError,
    ServerUnavailableError,
)
from loradeploy.steps.register import register
from support.fake_deployment import CAND_SLOT, LIVE_SLOT, MODEL, Deployment, actor, deployment
from support.synthetic import write_adapter


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Deployment]:
    with deployment(tmp_path) as d:
        yield d


def release(world: Deployment, version: str) -> None:
    """load, stage and promote ``version`` with no faults."""
    world.load(f"version:{version}")
    world.stage(f"version:{version}")
    world.promote("staged")


def test_a_normal_release_moves_aliases_and_serves_them(world: Deployment) -> None:
    release(world, "1")
    release(world, "2")
    assert world.registry.aliases == {"live": "2", "previous": "1"}
    assert world.served(LIVE_SLOT) == [world.root(LIVE_SLOT, "2")]
    assert PENDING_TAG not in world.registry.model_tags
    assert world.registry.leases.is_free(MODEL)


def test_an_interrupted_promotion_is_finished_by_the_next_locked_step_not_lost(world: Deployment) -> None:
    """Review D1: a set-staged-alias after a half-done promotion used to drop its plan,
    and the next rollback then served the wrong version."""
    release(world, "1")
    release(world, "2")
    world.load("version:3")
    world.stage("version:3")
    world.registry.fail_alias_writes = {world.registry.alias_writes + 2}  # 2nd write of the promotion
    with pytest.raises(ServerUnavailableError):
        world.promote("staged")
    assert world.registry.aliases["live"] == "3" and world.registry.aliases["previous"] == "1"
    assert PENDING_TAG in world.registry.model_tags

    world.load("version:4")  # takes the lock: finishes the plan first
    assert world.registry.aliases == {"live": "3", "previous": "2"}
    assert PENDING_TAG not in world.registry.model_tags
    world.stage("version:4")
    world.promote("previous")  # roll back from 3: to 2, not 1
    assert world.registry.aliases["live"] == "2"
    assert world.served(LIVE_SLOT) == [world.root(LIVE_SLOT, "2")]
    reasons = [a["reason"] for a in world.registry.audit]
    assert any(r.startswith("finished the interrupted plan of run op-promote-adapter") for r in reasons)


def test_a_stale_plan_never_moves_an_alias_someone_moved_since(world: Deployment) -> None:
    """Review D2: a plan whose 'staged' was moved by hand used to delete it and exit 0."""
    release(world, "1")
    world.load("version:2")
    world.stage("version:2")
    world.registry.fail_alias_writes = {world.registry.alias_writes + 2}
    with pytest.raises(ServerUnavailableError):
        world.promote("staged")
    assert world.registry.aliases == {"live": "2", "staged": "2"}  # previous failed
    world.registry.aliases["staged"] = "3"  # moved by hand in the MLflow UI meanwhile
    before = dict(world.registry.aliases)
    with pytest.raises(AliasMovedError, match="alias 'staged'") as caught:
        world.promote("staged")
    assert caught.value.exit_code == ExitCode.PERMANENT
    assert "--abandon-plan" in caught.value.one_line()
    assert world.registry.aliases == before
    assert world.served(LIVE_SLOT) == [world.root(LIVE_SLOT, "2")]
    assert PENDING_TAG in world.registry.model_tags  # kept for an operator to decide


def test_a_retry_of_the_same_request_returns_what_its_first_attempt_did(world: Deployment) -> None:
    release(world, "1")
    release(world, "2")
    world.registry.fail_alias_writes = {world.registry.alias_writes + 2}
    with pytest.raises(ServerUnavailableError):
        world.promote("previous", run_key="wf-123/rollback")
    result = world.promote("previous", run_key="wf-123/rollback")  # Argo's retry: same run key
    assert result.version == "1"
    assert result.details["retry_of_interrupted_run"]
    assert world.registry.aliases == {"live": "1", "previous": "2"}  # rolled back once, not twice


def test_another_run_finishing_a_plan_does_not_then_promote_on_top(world: Deployment) -> None:
    """The same intent string is no proof of the same request: a rollback by hand after
    someone else's interrupted rollback finishes theirs and stops, never rolls back twice."""
    release(world, "1")
    release(world, "2")
    world.registry.fail_alias_writes = {world.registry.alias_writes + 2}
    with pytest.raises(ServerUnavailableError):
        world.promote("previous", who="alice")
    with pytest.raises(AliasMovedError, match="interrupted alias plan of run alice") as caught:
        world.promote("previous", who="bob")
    assert "this promotion was not applied" in caught.value.one_line()
    assert world.registry.aliases == {"live": "1", "previous": "2"}
    assert world.served(LIVE_SLOT) == [world.root(LIVE_SLOT, "1")]


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        json.dumps({"moves": []}),
        json.dumps({"run_id": "r", "step": "s", "created_at": 1, "moves": [{"alias": "live"}], "extra": 1}),
        json.dumps(
            {"run_id": "r", "step": "s", "created_at": 1, "moves": [{"alias": "live", "to_version": "x"}]}
        ),
        json.dumps({"run_id": "r", "step": "s", "created_at": "nan", "moves": [{"alias": "live"}]}),
        json.dumps({"run_id": "r", "step": "s", "created_at": 1, "moves": [{"alias": "bad alias!"}]}),
        json.dumps({"run_id": "r", "step": "s", "created_at": 1, "moves": [{"alias": "live"}] * 17}),
        json.dumps(
            {"run_id": "r", "step": "s", "created_at": 1, "moves": [{"alias": "live", "from_version": 1}]}
        ),
        "{" + " " * 9000 + "}",
    ],
)
def test_a_malformed_plan_is_a_one_line_error_naming_the_tag(world: Deployment, raw: str) -> None:
    release(world, "1")
    world.registry.model_tags[PENDING_TAG] = raw
    before = dict(world.registry.aliases)
    with pytest.raises(PermanentError) as caught:
        world.load("version:2")
    line = caught.value.one_line()
    assert "'loradeploy.pending'" in line and "--abandon-plan" in line and "\n" not in line
    assert world.registry.aliases == before
    assert world.served(CAND_SLOT) == [world.root(CAND_SLOT, "1")]  # v2 was not loaded
    assert world.registry.leases.is_free(MODEL)
    # The way out the message names works:
    with model_lock(world.registry, MODEL, actor("op", "unlock"), finish_plan=False) as held:  # type: ignore[arg-type]
        abandon_plan(world.registry, MODEL, actor("op", "unlock"), held.lease)  # type: ignore[arg-type]
    assert PENDING_TAG not in world.registry.model_tags
    assert world.registry.audit[-1]["run_name"] == f"{MODEL} plan abandoned"
    world.load("version:2")


def test_a_forged_plan_is_audited_under_its_run_not_its_claimed_author(world: Deployment) -> None:
    release(world, "1")
    world.registry.model_tags[PENDING_TAG] = json.dumps(
        {
            "run_id": "forged-run",
            "step": "promote-adapter",
            "who": "a trusted colleague",
            "created_at": 1,
            "moves": [{"alias": "staged", "from_version": None, "to_version": "2"}],
        }
    )
    with pytest.raises(PermanentError):  # 'who' is not a field loradeploy writes
        world.load("version:2")
    assert "staged" not in world.registry.aliases


def test_move_aliases_refuses_moves_from_a_state_that_is_not_the_current_one(world: Deployment) -> None:
    release(world, "1")
    lock = model_lock(world.registry, MODEL, actor("op", "x"))  # type: ignore[arg-type]
    with lock as held, pytest.raises(AliasMovedError, match="alias 'live'"):
        move_aliases(
            world.registry,  # type: ignore[arg-type]
            MODEL,
            [AliasMove("live", "7", "2")],
            actor("op", "x"),
            held.lease,
            reason="test",
        )
    assert world.registry.aliases == {"live": "1"}
    assert PENDING_TAG not in world.registry.model_tags


def test_set_staged_alias_waits_for_the_lock_and_checks_under_it(world: Deployment) -> None:
    world.load("version:2")
    lock = model_lock(world.registry, MODEL, actor("other", "load-adapter"))  # type: ignore[arg-type]
    with lock, pytest.raises(LockHeldError):
        world.stage("version:2")
    assert "staged" not in world.registry.aliases
    world.stage("version:2")
    assert world.registry.aliases["staged"] == "2"


def test_register_with_an_alias_goes_through_the_lock(world: Deployment, tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "new", fill=9)
    world.registry.register_adapter = lambda *_a, **_k: "4"  # type: ignore[attr-defined]
    world.registry.find_version_with_files = lambda *_a: None  # type: ignore[attr-defined]
    world.registry.ping = lambda: None  # type: ignore[attr-defined]
    lock = model_lock(world.registry, MODEL, actor("other", "promote-adapter"))  # type: ignore[arg-type]
    with lock, pytest.raises(LockHeldError):
        register(
            world.registry,  # type: ignore[arg-type]
            model=MODEL,
            adapter_dir=folder,
            alias="candidate",
            actor=actor("op", "register"),
        )
    assert "candidate" not in world.registry.aliases
