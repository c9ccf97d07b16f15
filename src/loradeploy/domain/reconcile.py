"""What ``loradeploy reconcile`` repairs, decided without I/O.

The registry's aliases are the desired state (``live`` -> live slot, ``staged`` ->
candidate slot); each replica's ``/v1/models`` is the actual state (the version is read
back from the served ``root`` folder, see ``domain.layout``). A repair is "serve this
version under this slot on these replicas". Reconcile never changes aliases and never
unloads anything:

- an alias that does not exist leaves its slot alone, whatever the slot serves;
- the candidate slot serving the version the ``candidate`` alias names is a deployment
  in progress (between load-adapter and set-staged-alias), not drift, and is left alone.

``backoff_s`` is the watch loop's wait after consecutive failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from loradeploy.domain.aliases import CANDIDATE, STAGED
from loradeploy.domain.drift import SlotState, compare

Why = Literal["missing", "wrong-version"]


@dataclass(frozen=True)
class Repair:
    """Serve ``version`` (what ``alias`` names) under ``slot`` on ``replicas``."""

    alias: str
    slot: str
    version: str
    replicas: tuple[str, ...]  # replica URLs, in the order they were given
    why: dict[str, Why]  # replica URL -> what is wrong there

    def describe(self) -> str:
        where = ", ".join(f"{url} ({self.why[url]})" for url in self.replicas)
        return f"{self.slot} <- version {self.version} (alias {self.alias}) on {where}"


@dataclass(frozen=True)
class Plan:
    repairs: list[Repair]
    in_sync: list[SlotState]  # slots that serve what their alias names
    left_alone: list[tuple[SlotState, str]]  # slots not touched, and why

    @property
    def nothing_to_do(self) -> bool:
        return not self.repairs


def plan_repairs(
    *,
    model: str,
    aliases: Mapping[str, str],
    slot_for_alias: Mapping[str, str],
    served: Mapping[str, Mapping[str, str | None]],
) -> Plan:
    """``served`` maps replica URL -> slot name -> served root (as ``drift.compare``)."""
    rows = compare(model=model, aliases=aliases, slot_for_alias=slot_for_alias, served=served)
    wanted: dict[tuple[str, str, str], dict[str, Why]] = {}
    in_sync: list[SlotState] = []
    left_alone: list[tuple[SlotState, str]] = []
    for row in rows:
        if row.expected_version is None:
            left_alone.append((row, f"no alias {row.alias!r}: the slot is never unloaded by reconcile"))
            continue
        if not row.drift:
            in_sync.append(row)
            continue
        in_progress = (
            row.alias == STAGED
            and row.served_version is not None
            and row.served_version == aliases.get(CANDIDATE)
        )
        if in_progress:
            left_alone.append(
                (row, f"serves the candidate version {row.served_version}: a deployment in progress")
            )
            continue
        why: Why = "missing" if row.served_root is None else "wrong-version"
        wanted.setdefault((row.alias, row.slot, row.expected_version), {})[row.replica] = why
    repairs = [
        Repair(alias=alias, slot=slot, version=version, replicas=tuple(where), why=where)
        for (alias, slot, version), where in wanted.items()
    ]
    return Plan(repairs=repairs, in_sync=in_sync, left_alone=left_alone)


def backoff_s(failures: int, *, interval_s: float, cap_s: float) -> float:
    """Seconds to wait after ``failures`` consecutive failed rounds (0: the interval).

    Doubles from the interval: interval, 2x, 4x, ... never more than ``cap_s`` (and never
    less than the interval, so a cap below it does not speed the loop up).
    """
    if failures <= 0:
        return interval_s
    return max(interval_s, min(cap_s, interval_s * 2.0 ** min(failures, 32)))
