"""Keep ``lora-modules.json`` in step with the registry after every committed change.

vLLM starts with the slots this file names (the local stack and the Kubernetes launcher
turn it into ``--lora-modules``). If only the cold-start restore wrote it, a vLLM restart
after a promotion would serve the old version until reconcile repaired it. So every step
that changes what an alias names or what is placed rewrites it: promote and rollback
(after the alias moves), set-staged-alias, load-adapter, reconcile repairs, init-load.

After a committed change a failure to write it is a warning, never a failure: a retry
would repeat the change (CONTRIBUTING, "commit point").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.domain.manifest import ManifestPlan, plan_manifest
from loradeploy.errors import LoraDeployError


@dataclass(frozen=True)
class ManifestSpec:
    """Which slot restores which alias: the same mapping init-load-adapters uses."""

    model: str
    slot_for_alias: Mapping[str, str]  # e.g. live -> aws-rag-qa-live, staged -> aws-rag-qa-candidate
    base_model_name: str | None = None  # the served base; None: take it from the replicas


def refresh_manifest(
    spec: ManifestSpec,
    *,
    registry: MLflowHelper,
    transport: AdapterTransport,
    base_model_name: str | None = None,
) -> ManifestPlan:
    """Rebuild the file from what the aliases name now and what is placed; write it."""
    plan = plan_manifest(
        model=spec.model,
        slot_for_alias=spec.slot_for_alias,
        aliases=registry.get_aliases(spec.model),
        placed=transport.list_version_folders(),
        root=transport.root,
        base_model_name=spec.base_model_name or base_model_name,
        existing=transport.read_manifest(),
    )
    transport.write_manifest(plan.modules)
    return plan


def refresh_after_commit(
    spec: ManifestSpec | None,
    *,
    registry: MLflowHelper,
    transport: AdapterTransport,
    base_model_name: str | None = None,
) -> tuple[list[dict[str, str]] | None, list[str]]:
    """``refresh_manifest`` for a step that has committed: (modules written, warnings)."""
    if spec is None:
        return None, []
    try:
        plan = refresh_manifest(spec, registry=registry, transport=transport, base_model_name=base_model_name)
    except LoraDeployError as exc:
        warning = (
            f"lora-modules.json not rewritten (a vLLM restart may serve older versions): {exc.one_line()}"
        )
        return None, [warning]
    return plan.modules, []
