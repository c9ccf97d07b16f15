"""``loradeploy status``: aliases next to what every replica actually serves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.drift import compare
from loradeploy.domain.signing import recorded_signer
from loradeploy.errors import LoraDeployError, NotFoundError
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
    return result


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
