"""The audit history: one MLflow run per alias move (or plan decision), in a dedicated
experiment. MLflow keeps no history of alias moves; this is it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from loradeploy.coordination.lease import Actor
from loradeploy.domain.aliases import AliasMove

AUDIT_EXPERIMENT = "loradeploy-audit"


class AuditRegistry(Protocol):
    def record_action(
        self, *, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, str]
    ) -> str: ...

    def search_actions(self, *, experiment: str, filter_string: str) -> list[dict[str, object]]: ...


def _tags(model: str, alias: str, actor: Actor) -> dict[str, str]:
    return {
        "loradeploy.model": model,
        "loradeploy.alias": alias,
        "loradeploy.step": actor.step,
        "loradeploy.who": actor.who,
        "loradeploy.run_id": actor.run_id,
    }


def record_moves(
    registry: AuditRegistry,
    model: str,
    moves: Sequence[AliasMove],
    actor: Actor,
    *,
    reason: str,
    request: tuple[str, str] | None = None,
) -> None:
    """One audit record per move. ``request`` is the (run key, intent) of the request whose
    change these moves are (by default the actor's own): a retry of that request finds them
    again (:func:`moves_of_request`), whoever applied them."""
    run_key, intent = request or (actor.retry_key, "")
    for move in moves:
        registry.record_action(
            experiment=AUDIT_EXPERIMENT,
            run_name=f"{model} {move.describe()}",
            tags={
                **_tags(model, move.alias, actor),
                "loradeploy.run_key": run_key,
                "loradeploy.intent": intent,
            },
            params={
                "from_version": move.from_version or "",
                "to_version": move.to_version or "",
                "reason": reason,
            },
        )


def record_event(registry: AuditRegistry, model: str, what: str, actor: Actor, *, reason: str) -> None:
    """A decision that moved no alias (a plan abandoned by an operator)."""
    registry.record_action(
        experiment=AUDIT_EXPERIMENT,
        run_name=f"{model} {what}",
        tags=_tags(model, f"({what})", actor),
        params={"from_version": "", "to_version": "", "reason": reason},
    )


def moves_of_request(registry: AuditRegistry, model: str, run_key: str, intent: str) -> list[AliasMove]:
    """The alias moves recorded for the request ``run_key`` with ``intent``, oldest first:
    how an Argo retry learns that an earlier attempt of it already changed the aliases
    (its plan finished by another run, or the attempt killed after committing)."""
    key = run_key.replace("'", "")
    runs = registry.search_actions(
        experiment=AUDIT_EXPERIMENT,
        filter_string=f"tags.`loradeploy.model` = '{model}' and tags.`loradeploy.run_key` = '{key}'",
    )
    found = []
    for run in runs:
        tags, params = run["tags"], run["params"]
        if not isinstance(tags, dict) or not isinstance(params, dict):
            continue
        if tags.get("loradeploy.run_key") != run_key or tags.get("loradeploy.intent") != intent:
            continue
        found.append(
            AliasMove(
                str(tags.get("loradeploy.alias")),
                str(params.get("from_version") or "") or None,
                str(params.get("to_version") or "") or None,
            )
        )
    return found


def history(registry: AuditRegistry, model: str) -> list[dict[str, object]]:
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
