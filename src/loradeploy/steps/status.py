"""``loradeploy status``: aliases next to what every replica actually serves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.canary import parse_versioned_name
from loradeploy.domain.drift import compare
from loradeploy.domain.signing import recorded_signer
from loradeploy.domain.traffic import RequestRecord, figures, windows
from loradeploy.errors import LoraDeployError, NotFoundError
from loradeploy.results import Check, StepResult


@dataclass(frozen=True)
class Traffic:
    """Routed mode's evidence for ``status``: the router's records of one window and its
    routes (absent without a router)."""

    records: Sequence[RequestRecord]
    start: float
    end: float
    routes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    skipped_lines: int = 0


def status(
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    *,
    model: str,
    slot_for_alias: Mapping[str, str],
    traffic: Traffic | None = None,
) -> StepResult:
    result = StepResult(step="status", model=model)
    aliases = registry.get_aliases(model)
    served: dict[str, dict[str, str | None]] = {}
    unreachable: dict[str, str] = {}
    for vllm in replicas:
        try:
            served[vllm.base_url] = {name: card.root for name, card in vllm.adapters().items()}
        except LoraDeployError as exc:
            unreachable[vllm.base_url] = exc.message
    rows = compare(model=model, aliases=aliases, slot_for_alias=slot_for_alias, served=served)
    signers = _signers(registry, model, {row.served_version for row in rows if row.served_version})
    for row in rows:
        result.checks.append(
            Check(
                name=f"{row.alias}->{row.slot}@{row.replica}",
                passed=not row.drift,
                detail=(
                    f"alias {row.alias}={row.expected_version or '-'}, "
                    f"serves {row.served_version or row.served_root or '-'}"
                    + (" (DRIFT)" if row.drift else "")
                    + (" (no alias names it)" if row.unnamed else "")
                    + (_signed(signers[row.served_version]) if row.served_version else "")
                ),
            )
        )
    for url, message in unreachable.items():
        result.checks.append(Check(name=f"reachable@{url}", passed=False, detail=message))
    result.details = {
        "aliases": aliases,
        "served": served,
        "drift": [row.__dict__ for row in rows if row.drift],
        "unreachable": unreachable,
        "signers": signers,
    }
    if traffic is not None:
        result.details["routed"] = routed(model, served, traffic)
    return result


def routed(model: str, served: Mapping[str, Mapping[str, object]], traffic: Traffic) -> dict[str, object]:
    """Routed mode's view of ``model``: the routes to its versions, which replica serves
    each versioned name, and each version's live figures over the window."""
    routes = {
        stable: dict(weights)
        for stable, weights in traffic.routes.items()
        if any(_of_model(name, model) for name in weights)
    }
    names = {
        name
        for names in served.values()
        for name in names
        if (parse_versioned_name(name) or ("",))[0] == model
    }
    names |= {name for weights in routes.values() for name in weights}
    names |= {
        r.name for r in traffic.records if r.name and (parse_versioned_name(r.name) or ("",))[0] == model
    }
    found = windows(traffic.records, sorted(names), traffic.start, traffic.end)
    return {
        "window": {"start": traffic.start, "end": traffic.end, "skipped_lines": traffic.skipped_lines},
        "routes": routes,
        "versions": {
            name: {
                "served_on": [replica for replica, names in served.items() if name in names],
                **figures(found[name]),
            }
            for name in sorted(names)
        },
    }


def _of_model(name: str, model: str) -> bool:
    parsed = parse_versioned_name(name)
    return parsed is not None and parsed[0] == model


def _signers(registry: MLflowHelper, model: str, versions: set[str]) -> dict[str, str]:
    """Who signed each served version, from its signature tags. Deployments with a trust
    policy refuse a version whose tags name another signer than its signature."""
    found: dict[str, str] = {}
    for version in sorted(versions):
        try:
            found[version] = recorded_signer(registry.get_version(model, version).tags)
        except NotFoundError:
            found[version] = "(version not in the registry)"
    return found


def _signed(signer: str) -> str:
    return ", unsigned" if signer == "unsigned" else f", signed by {signer}"
