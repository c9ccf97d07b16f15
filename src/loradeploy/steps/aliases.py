"""Moving aliases safely: one writer per model, a plan written before the first move,
and an audit record of every move.

The lock and the plan are tags on the registered model itself:

- ``loradeploy.lock``: who holds the model and until when. MLflow has no
  compare-and-set, so the lock is written, then read back after a short pause; a writer
  that does not read itself back gives up. This serialises loradeploy processes that
  honour it, with a lease that expires (a crashed run's lock stops counting after its
  TTL, or at once when it was taken on this host by a process that no longer exists;
  ``loradeploy unlock`` removes it by hand). It does not stop a person or program that
  moves aliases by other means, and two writers landing within the read-back pause
  can, very rarely, both believe they hold it: in Argo, the workflow mutex per model is the primary guard.
- ``loradeploy.pending``: the moves of an alias change, written before the first move
  and removed after the last. Whoever next takes the lock finishes a plan left behind,
  so aliases end fully before or fully after a change.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from loradeploy.clients.registry import MLflowHelper
from loradeploy.domain.aliases import AliasMove
from loradeploy.errors import LockHeldError, LoraDeployError

LOCK_TAG = "loradeploy.lock"
PENDING_TAG = "loradeploy.pending"
AUDIT_EXPERIMENT = "loradeploy-audit"
DEFAULT_LOCK_TTL_S = 900.0
READ_BACK_PAUSE_S = 0.3


@dataclass(frozen=True)
class Actor:
    """Who acts: recorded in locks and audit records."""

    who: str  # user@host, or the workflow name
    step: str
    run_id: str  # unique per process run


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def holder_is_gone(held: dict[str, object], host: str, alive: Callable[[int], bool]) -> bool:
    """The lock was taken on this host by a process that has exited (crashed, killed)."""
    pid = held.get("pid")
    return held.get("host") == host and isinstance(pid, int) and not alive(pid)


@dataclass
class Lease:
    """The held lock; after the block, ``release_error`` says if it could not be removed."""

    release_error: str | None = None


@contextmanager
def model_lock(
    registry: MLflowHelper,
    model: str,
    actor: Actor,
    *,
    ttl_s: float = DEFAULT_LOCK_TTL_S,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> Iterator[Lease]:
    """Hold the model's deployment lock; fail fast, naming the holder, when taken."""
    host = host or socket.gethostname()
    tags = registry.get_model_tags(model)
    held = _parse_lock(tags.get(LOCK_TAG))
    now = clock()
    if (
        held
        and held.get("run_id") != actor.run_id
        and float(str(held.get("expires_at", 0))) > now
        and not holder_is_gone(held, host, alive)
    ):
        raise _held_error(model, held)
    mine = {
        "holder": actor.who,
        "step": actor.step,
        "run_id": actor.run_id,
        "host": host,
        "pid": os.getpid(),
        "expires_at": now + ttl_s,
        "expires": datetime.fromtimestamp(now + ttl_s, UTC).isoformat(timespec="seconds"),
    }
    registry.set_model_tag(model, LOCK_TAG, json.dumps(mine))
    sleep(READ_BACK_PAUSE_S)
    back = _parse_lock(registry.get_model_tags(model).get(LOCK_TAG))
    if not back or back.get("run_id") != actor.run_id:
        raise _held_error(model, back or {})
    lease = Lease()
    try:
        yield lease
    finally:
        try:
            current = _parse_lock(registry.get_model_tags(model).get(LOCK_TAG))
            if current and current.get("run_id") == actor.run_id:
                registry.delete_model_tag(model, LOCK_TAG)
        except LoraDeployError as exc:
            # The work is done (or failed on its own); a lease left behind is taken over
            # by the next run on this host, expires elsewhere, or goes with 'unlock'.
            lease.release_error = exc.one_line()


def _parse_lock(raw: str | None) -> dict[str, object] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _held_error(model: str, held: dict[str, object]) -> LockHeldError:
    return LockHeldError(
        f"model {model!r} is being deployed by {held.get('holder', '?')} "
        f"({held.get('step', '?')}, run {held.get('run_id', '?')}, lock expires {held.get('expires', '?')})",
        hint=(
            "wait for that run to finish, then retry; if it crashed, its lock expires by itself, "
            f"or remove it: loradeploy unlock --model-name {model} --run-id {held.get('run_id', '?')}"
        ),
    )


def unlock(registry: MLflowHelper, model: str, run_id: str) -> bool:
    """Remove the lock of run ``run_id`` (a crashed run's); False when another run holds it
    now or nothing does. Naming the run keeps this from breaking a live run's lock."""
    held = _parse_lock(registry.get_model_tags(model).get(LOCK_TAG))
    if not held or held.get("run_id") != run_id:
        return False
    registry.delete_model_tag(model, LOCK_TAG)
    return True


@dataclass(frozen=True)
class FinishedPlan:
    """An alias plan an interrupted run left behind, now completed."""

    moves: list[AliasMove]
    intent: str = ""  # what that run was doing, e.g. "promote alias:staged"

    def moved(self, alias: str) -> str | None:
        """The version the plan moved ``alias`` to (None: not moved, or removed)."""
        return next((m.to_version for m in self.moves if m.alias == alias), None)


def finish_pending(registry: MLflowHelper, model: str, actor: Actor) -> FinishedPlan:
    """Complete an alias plan an interrupted run left behind (call while holding the lock).

    A run stops between moves when MLflow fails mid-way or the process is killed; the
    plan is idempotent, so applying it again is safe.
    """
    raw = registry.get_model_tags(model).get(PENDING_TAG)
    if not raw:
        return FinishedPlan(moves=[])
    plan = json.loads(raw)
    moves = [AliasMove(**move) for move in plan["moves"]]
    _apply(registry, model, moves)
    record_moves(registry, model, moves, actor, reason=f"finished plan left by {plan.get('who')}")
    registry.delete_model_tag(model, PENDING_TAG)
    return FinishedPlan(moves=moves, intent=str(plan.get("intent", "")))


def move_aliases(
    registry: MLflowHelper,
    model: str,
    moves: Sequence[AliasMove],
    actor: Actor,
    *,
    reason: str,
    intent: str = "",
) -> None:
    """Write the plan, apply every move, record it, remove the plan. ``intent`` names the
    request, so a retry can tell that an interrupted plan was its own."""
    if not moves:
        return
    plan = {"who": actor.who, "step": actor.step, "intent": intent, "moves": [asdict(m) for m in moves]}
    registry.set_model_tag(model, PENDING_TAG, json.dumps(plan))
    _apply(registry, model, moves)
    record_moves(registry, model, moves, actor, reason=reason)
    registry.delete_model_tag(model, PENDING_TAG)


def _apply(registry: MLflowHelper, model: str, moves: Sequence[AliasMove]) -> None:
    for move in moves:
        if move.to_version is None:
            registry.delete_alias(model, move.alias)
        else:
            registry.set_alias(model, move.alias, move.to_version)


def record_moves(
    registry: MLflowHelper,
    model: str,
    moves: Sequence[AliasMove],
    actor: Actor,
    *,
    reason: str,
) -> None:
    for move in moves:
        registry.record_action(
            experiment=AUDIT_EXPERIMENT,
            run_name=f"{model} {move.describe()}",
            tags={
                "loradeploy.model": model,
                "loradeploy.alias": move.alias,
                "loradeploy.step": actor.step,
                "loradeploy.who": actor.who,
                "loradeploy.run_id": actor.run_id,
            },
            params={
                "from_version": move.from_version or "",
                "to_version": move.to_version or "",
                "reason": reason,
            },
        )


def history(registry: MLflowHelper, model: str) -> list[dict[str, object]]:
    """Every recorded alias move of ``model``, oldest first."""
    runs = registry.search_actions(
        experiment=AUDIT_EXPERIMENT, filter_string=f"tags.`loradeploy.model` = '{model}'"
    )
    rows = []
    for run in runs:
        tags = run["tags"]
        params = run["params"]
        assert isinstance(tags, dict) and isinstance(params, dict)
        start = run["start_time"]
        rows.append(
            {
                "when": datetime.fromtimestamp(int(str(start)) / 1000, UTC).isoformat(timespec="seconds"),
                "alias": tags.get("loradeploy.alias"),
                "from_version": params.get("from_version") or None,
                "to_version": params.get("to_version") or None,
                "step": tags.get("loradeploy.step"),
                "who": tags.get("loradeploy.who"),
                "reason": params.get("reason"),
            }
        )
    return rows
