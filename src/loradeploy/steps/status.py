"""``loradeploy status``: aliases next to what every replica actually serves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.drift import compare
from loradeploy.errors import LoraDeployError
from loradeploy.results import Check, StepResult


def status(
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    *,
    model: str,
    slot_for_alias: Mapping[str, str],
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
    }
    return result
