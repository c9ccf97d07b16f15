"""Which versioned names a replica keeps in routed mode, pure.

vLLM bounds resident adapters with two flags: ``--max-cpu-loras`` (the adapters its
worker keeps without re-reading them from disk) and ``--max-loras`` (the adapters one
batch can mix). Before loading a new version the deployer makes room by unloading this
model's versioned names that nothing needs, oldest first. A name is needed while the
router sends it traffic (a weight above 0) or an alias names its version (live,
previous, staged: rollback must stay instant). Names that are not this model's versioned
names (direct-mode slots, other models' adapters) are never touched here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from pydantic import BaseModel, Field

from loradeploy.domain.canary import parse_versioned_name, versioned_name
from loradeploy.errors import PermanentError


class Limits(BaseModel):
    max_loras: int = Field(ge=1)
    max_cpu_loras: int = Field(ge=1)


class ResidencyPlan(BaseModel):
    load: str | None  # None when the name is served already (never reloaded in place)
    unload: list[str]  # this model's names nothing needs, oldest version first


def _ours(model: str, served: Sequence[str]) -> list[tuple[int, str]]:
    """This model's versioned names among ``served``, by version."""
    found = []
    for name in served:
        parsed = parse_versioned_name(name)
        if parsed is not None and parsed[0] == model:
            found.append((int(parsed[1]), name))
    return sorted(found)


def weights_of(routes: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Every versioned name's weight in the router's routes (the largest, when several
    stable names send to it)."""
    weights: dict[str, int] = {}
    for targets in routes.values():
        for name, weight in targets.items():
            weights[name] = max(weight, weights.get(name, 0))
    return weights


def needed(model: str, alias_versions: Collection[str], weights: Mapping[str, int]) -> set[str]:
    """The versioned names that must stay served: every alias's version and every name
    with traffic."""
    return {versioned_name(model, v) for v in alias_versions} | {n for n, w in weights.items() if w > 0}


def unneeded(model: str, served: Sequence[str], keep: Collection[str]) -> list[str]:
    """This model's served versioned names outside ``keep``, oldest first: what cleanup
    may unload."""
    return [name for _, name in _ours(model, served) if name not in keep]


def plan_load(
    model: str,
    version: str,
    *,
    served: Sequence[str],
    keep: Collection[str],
    weights: Mapping[str, int],
    limits: Limits,
) -> ResidencyPlan:
    """Room for one more version: unload as few unneeded names as the limit requires.

    Refused (``PermanentError``, nothing unloaded) when the names with traffic would be
    more than one batch can mix, or when every name the limit would have to drop is
    still needed."""
    name = versioned_name(model, version)
    weighted = {n for n, w in weights.items() if w > 0} | {name}
    mixed = sorted(n for n in weighted if parse_versioned_name(n) is not None)
    if len(mixed) > limits.max_loras:
        raise PermanentError(
            f"{len(mixed)} versions ({', '.join(mixed)}) would get traffic at once, more than "
            f"--max-loras={limits.max_loras} lets one batch mix",
            hint="finish or abort the running canary first, or start vLLM with a larger --max-loras",
        )
    if name in served:
        return ResidencyPlan(load=None, unload=[])
    over = len(served) + 1 - limits.max_cpu_loras
    spare = unneeded(model, served, set(keep) | weighted)
    if over > len(spare):
        raise PermanentError(
            f"no room to load {name!r}: {len(served)} adapters are served, --max-cpu-loras="
            f"{limits.max_cpu_loras}, and only {len(spare)} of them ({', '.join(spare) or 'none'}) "
            "are versions nothing needs",
            hint="unload adapters that are no longer needed, or start vLLM with a larger --max-cpu-loras",
        )
    return ResidencyPlan(load=name, unload=spare[: max(over, 0)])
