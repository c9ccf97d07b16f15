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
    registry: AuditRegistry, model: str, moves: Sequence[AliasMove], actor: Actor, *, reason: str
) -> None:
    for move in moves:
        registry.record_action(
            experiment=AUDIT_EXPERIMENT,
            run_name=f"{model} {move.describe()}",
            tags=_tags(model, move.alias, actor),
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
