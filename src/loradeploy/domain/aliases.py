"""The alias lifecycle: what a promotion or rollback moves, decided without I/O.

    candidate -> staged -> eval-passed/-failed -> perf-passed/-failed -> live (+ previous)

``plan_promotion`` returns the moves in the order they are applied. The whole plan is
written to the registry before the first move, so a run that dies half-way is finished
by the next one (see ``coordination.plans``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

LIVE = "live"
PREVIOUS = "previous"
STAGED = "staged"
CANDIDATE = "candidate"
CANARY_FAILED = "canary-failed"  # the version whose canary's analysis failed
GATE_ALIASES = ("eval-passed", "eval-failed", "perf-passed", "perf-failed", CANARY_FAILED)
CLEARED_ON_PROMOTION = (STAGED, *GATE_ALIASES)
DEPLOYMENT_ALIASES = (LIVE, STAGED, PREVIOUS)  # versions whose folders are kept


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: str | None
    to_version: str | None  # None: delete the alias

    def describe(self) -> str:
        return f"{self.alias}: {self.from_version or '-'} -> {self.to_version or '(removed)'}"


def plan_promotion(aliases: Mapping[str, str], version: str) -> list[AliasMove]:
    """Moves that make ``version`` live: ``live`` -> version, old live -> ``previous``,
    and the intermediate aliases that point at ``version`` removed.

    Rolling back is promoting the version ``previous`` names; doing it twice returns to
    where it started.
    """
    moves: list[AliasMove] = []
    old_live = aliases.get(LIVE)
    if old_live != version:
        moves.append(AliasMove(LIVE, old_live, version))
        if old_live is not None:
            moves.append(AliasMove(PREVIOUS, aliases.get(PREVIOUS), old_live))
    for alias in CLEARED_ON_PROMOTION:
        if aliases.get(alias) == version:
            moves.append(AliasMove(alias, version, None))
    return moves


def plan_set(aliases: Mapping[str, str], alias: str, version: str) -> list[AliasMove]:
    """Point one alias at ``version`` (nothing to do when it already does)."""
    current = aliases.get(alias)
    return [] if current == version else [AliasMove(alias, current, version)]


def versions_to_keep(aliases: Mapping[str, str]) -> set[str]:
    """Versions whose folders must stay on the server: what live, staged and previous
    name (previous is the rollback target; staged may be promoted next)."""
    return {aliases[a] for a in DEPLOYMENT_ALIASES if a in aliases}
