"""steps/aliases.py: the per-model deployment lock, on the in-memory FakeRegistry."""

from __future__ import annotations

import json

import pytest

from loradeploy.errors import LockHeldError
from loradeploy.steps.aliases import LOCK_TAG, Actor, holder_is_gone, model_lock, unlock
from support.fake_registry import FakeRegistry

MODEL = "m"
ME = Actor(who="me@here", step="promote-adapter", run_id="run-me")


def held_by(registry: FakeRegistry, *, run_id: str, host: str, pid: int, expires_at: float) -> None:
    lock = {"holder": "other", "step": "load-adapter", "run_id": run_id, "host": host, "pid": pid}
    registry.model_tags[LOCK_TAG] = json.dumps({**lock, "expires_at": expires_at})


def take(registry: FakeRegistry, *, alive: bool, now: float = 1000.0) -> None:
    with model_lock(
        registry, MODEL, ME, clock=lambda: now, sleep=lambda _: None, host="here", alive=lambda _: alive
    ):
        assert json.loads(registry.model_tags[LOCK_TAG])["run_id"] == ME.run_id


def test_free_lock_is_taken_and_released() -> None:
    registry = FakeRegistry(MODEL)
    take(registry, alive=True)
    assert LOCK_TAG not in registry.model_tags


def test_live_holder_on_this_host_blocks_and_is_named() -> None:
    registry = FakeRegistry(MODEL)
    held_by(registry, run_id="run-other", host="here", pid=4242, expires_at=2000.0)
    with pytest.raises(LockHeldError, match="run-other") as caught:
        take(registry, alive=True)
    assert "loradeploy unlock --model-name m --run-id run-other" in caught.value.one_line()
    assert json.loads(registry.model_tags[LOCK_TAG])["run_id"] == "run-other"


def test_dead_holder_on_this_host_is_taken_over() -> None:
    registry = FakeRegistry(MODEL)
    held_by(registry, run_id="run-killed", host="here", pid=4242, expires_at=2000.0)
    take(registry, alive=False)
    assert LOCK_TAG not in registry.model_tags


def test_holder_on_another_host_blocks_until_it_expires() -> None:
    registry = FakeRegistry(MODEL)
    held_by(registry, run_id="run-far", host="elsewhere", pid=4242, expires_at=2000.0)
    with pytest.raises(LockHeldError):
        take(registry, alive=False)  # its pid means nothing here
    take(registry, alive=False, now=2001.0)


@pytest.mark.parametrize(
    ("held", "gone"),
    [
        ({"host": "here", "pid": 7}, True),
        ({"host": "there", "pid": 7}, False),
        ({"host": "here"}, False),  # an old lock without a pid: wait for its TTL
        ({"host": "here", "pid": "7"}, False),
    ],
)
def test_holder_is_gone(held: dict[str, object], gone: bool) -> None:
    assert holder_is_gone(held, "here", lambda _: False) is gone


def test_unlock_removes_only_the_named_run() -> None:
    registry = FakeRegistry(MODEL)
    held_by(registry, run_id="run-killed", host="there", pid=1, expires_at=2000.0)
    assert unlock(registry, MODEL, "run-other") is False
    assert LOCK_TAG in registry.model_tags
    assert unlock(registry, MODEL, "run-killed") is True
    assert LOCK_TAG not in registry.model_tags


def test_finished_plan_names_the_version_it_made_live() -> None:
    from loradeploy.domain.aliases import AliasMove
    from loradeploy.steps.aliases import FinishedPlan

    plan = FinishedPlan(
        moves=[AliasMove("live", "2", "1"), AliasMove("previous", "1", "2")], intent="promote alias:previous"
    )
    assert plan.moved("live") == "1"
    assert plan.moved("staged") is None
    assert FinishedPlan(moves=[]).moved("live") is None
