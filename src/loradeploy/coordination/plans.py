"""Alias plans: aliases end fully before or fully after a change.

Before the first move of a change, its whole plan is written to the registered model's
``loradeploy.pending`` tag; it is removed after the last move and its audit records. A
run that stops in between (MLflow failing, a killed process) leaves the plan behind, and
whoever takes the model's lock next finishes it before doing anything else
(:func:`finish_pending`, called by :func:`loradeploy.coordination.model_lock`).

Every move is conditional: it applies only while the alias still names the version the
plan expected (``from_version``), or is skipped when it already names the target; any
other value means someone moved the alias meanwhile, and the run stops with
:class:`~loradeploy.errors.AliasMovedError` naming it, having moved nothing more. A
plan that cannot be finished is dropped only on request (``loradeploy unlock
--abandon-plan``), which is recorded in the audit history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loradeploy.coordination.audit import AuditRegistry, record_event, record_moves
from loradeploy.coordination.lease import Actor, Lease
from loradeploy.domain.aliases import AliasMove
from loradeploy.domain.names import alias_name
from loradeploy.errors import AliasMovedError, LoraDeployError, PermanentError, UsageError

PENDING_TAG = "loradeploy.pending"
MAX_PLAN_CHARS = 8192
_VERSION = r"^[0-9]{1,12}$"


class AliasRegistry(AuditRegistry, Protocol):
    """What plans need of the registry: aliases and the registered model's tags."""

    def get_aliases(self, name: str) -> dict[str, str]: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None: ...

    def get_model_tags(self, name: str) -> dict[str, str]: ...

    def set_model_tag(self, name: str, key: str, value: str) -> None: ...

    def delete_model_tag(self, name: str, key: str) -> None: ...


class PlannedMove(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str = Field(min_length=1, max_length=255)
    from_version: str | None = Field(default=None, pattern=_VERSION)
    to_version: str | None = Field(default=None, pattern=_VERSION)

    def as_move(self) -> AliasMove:
        return AliasMove(alias_name(self.alias), self.from_version, self.to_version)


class AliasPlan(BaseModel):
    """The ``loradeploy.pending`` tag, parsed strictly: registry content is not trusted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1, max_length=128)
    run_key: str = Field(default="", max_length=256)
    step: str = Field(max_length=64)
    intent: str = Field(default="", max_length=256)
    created_at: float = Field(ge=0, allow_inf_nan=False)
    moves: list[PlannedMove] = Field(min_length=1, max_length=16)

    def alias_moves(self) -> list[AliasMove]:
        return [m.as_move() for m in self.moves]


@dataclass(frozen=True)
class FinishedPlan:
    """An alias plan an interrupted run left behind, now completed."""

    moves: list[AliasMove]
    run_id: str = ""
    run_key: str = ""
    intent: str = ""  # what that run was doing, e.g. "promote alias:staged"

    def moved(self, alias: str) -> str | None:
        """The version the plan moved ``alias`` to (None: not moved, or removed)."""
        return next((m.to_version for m in self.moves if m.alias == alias), None)

    def was_by(self, actor: Actor) -> bool:
        """The plan was written by an earlier attempt of this same request."""
        return bool(self.moves) and self.run_key == actor.retry_key


def _abandon_hint(model: str) -> str:
    return (
        "read the plan in the model's 'loradeploy.pending' tag and 'loradeploy status', then drop it: "
        f"loradeploy unlock --model-name {model} --abandon-plan"
    )


def read_plan(registry: AliasRegistry, model: str) -> AliasPlan | None:
    """The pending plan, if any. A malformed one is a PermanentError naming the tag."""
    raw = registry.get_model_tags(model).get(PENDING_TAG)
    if not raw:
        return None
    try:
        if len(raw) > MAX_PLAN_CHARS:
            raise ValueError(f"{len(raw)} characters")
        plan = AliasPlan.model_validate(json.loads(raw))
        plan.alias_moves()  # alias names are checked too
        return plan
    except (ValueError, ValidationError, UsageError) as exc:
        text = exc.message if isinstance(exc, UsageError) else str(exc)
        first = text.splitlines()[0][:120] if text else type(exc).__name__
        raise PermanentError(
            f"the tag {PENDING_TAG!r} of model {model!r} is not an alias plan loradeploy wrote ({first})",
            hint=_abandon_hint(model),
        ) from exc


def _check_expected(current: Mapping[str, str], moves: Sequence[AliasMove], model: str, whose: str) -> None:
    for move in moves:
        now = current.get(move.alias)
        if now not in (move.from_version, move.to_version):
            raise AliasMovedError(
                f"alias {move.alias!r} of model {model!r} names "
                f"{'version ' + now if now else 'nothing'}, but {whose} expected "
                f"{'version ' + move.from_version if move.from_version else 'no alias'}; nothing was moved",
                hint=_abandon_hint(model) if whose.startswith("the interrupted") else None,
            )


def _apply(registry: AliasRegistry, model: str, moves: Sequence[AliasMove], lease: Lease, whose: str) -> None:
    """Apply each move that is still due, each only if the alias names what was expected,
    each right after making sure the lease is still ours."""
    for move in moves:
        lease.ensure_held()
        now = registry.get_aliases(model).get(move.alias)
        if now == move.to_version:
            continue  # applied already (a retry, or the plan of an interrupted run)
        _check_expected({move.alias: now} if now else {}, [move], model, whose)
        if move.to_version is None:
            registry.delete_alias(model, move.alias)
        else:
            registry.set_alias(model, move.alias, move.to_version)


def finish_pending(registry: AliasRegistry, model: str, actor: Actor, lease: Lease) -> FinishedPlan:
    """Complete the plan an interrupted run left (call while holding the lease)."""
    plan = read_plan(registry, model)
    if plan is None:
        return FinishedPlan(moves=[])
    moves = plan.alias_moves()
    whose = f"the interrupted plan of run {plan.run_id}"
    _check_expected(registry.get_aliases(model), moves, model, whose)
    _apply(registry, model, moves, lease, whose)
    record_moves(
        registry,
        model,
        moves,
        actor,
        reason=f"finished the interrupted plan of run {plan.run_id} ({plan.step}: {plan.intent or '-'})",
        request=(plan.run_key or plan.run_id, plan.intent),
    )
    lease.ensure_held()
    registry.delete_model_tag(model, PENDING_TAG)
    return FinishedPlan(moves=moves, run_id=plan.run_id, run_key=plan.run_key, intent=plan.intent)


def move_aliases(
    registry: AliasRegistry,
    model: str,
    moves: Sequence[AliasMove],
    actor: Actor,
    lease: Lease,
    *,
    reason: str,
    intent: str = "",
) -> None:
    """Write the plan, apply every move, record it, remove the plan. ``lease`` is the
    held model lock; ``intent`` names the request for the audit history."""
    if not moves:
        return
    lease.ensure_held()
    whose = f"this {actor.step}"
    _check_expected(registry.get_aliases(model), moves, model, whose)
    plan = AliasPlan(
        run_id=actor.run_id,
        run_key=actor.retry_key,
        step=actor.step,
        intent=intent,
        created_at=time.time(),
        moves=[
            PlannedMove(alias=m.alias, from_version=m.from_version, to_version=m.to_version) for m in moves
        ],
    )
    if read_plan(registry, model) is not None:  # finish_pending ran when the lock was taken
        raise PermanentError(
            f"model {model!r} has a pending alias plan of another run; nothing was moved",
            hint=_abandon_hint(model),
        )
    lease.ensure_held()
    registry.set_model_tag(model, PENDING_TAG, plan.model_dump_json())
    _apply(registry, model, moves, lease, whose)
    record_moves(registry, model, moves, actor, reason=reason, request=(actor.retry_key, intent))
    lease.ensure_held()
    registry.delete_model_tag(model, PENDING_TAG)


def abandon_plan(registry: AliasRegistry, model: str, actor: Actor, lease: Lease) -> list[str]:
    """Drop a pending plan without applying it (an operator's explicit decision), and
    record that in the audit history. Returns the dropped moves, described."""
    try:
        plan = read_plan(registry, model)
    except LoraDeployError:  # malformed: dropping it is the point
        described = ["(malformed plan)"]
    else:
        if plan is None:
            return []
        described = [m.describe() for m in plan.alias_moves()]
    lease.ensure_held()
    registry.delete_model_tag(model, PENDING_TAG)
    record_event(registry, model, "plan abandoned", actor, reason="abandoned: " + "; ".join(described))
    return described
