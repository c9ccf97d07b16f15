"""Step 1: download a version from MLflow and serve it under a slot name, no restart.

Resolve the source to one version, check every replica is healthy, then
``steps.deploy.deploy_version``. Any failure before the swap changes nothing; a failed
swap puts the previous folder back on every replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, model_lock
from loradeploy.domain.names import Source
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.swap import SwapStrategy
from loradeploy.results import StepResult, Timer
from loradeploy.steps.deploy import deploy_version, required_digests
from loradeploy.steps.manifest import ManifestSpec, refresh_after_commit
from loradeploy.steps.rollout import inspect_replicas
from loradeploy.steps.swap import DEFAULT_PATIENCE, Patience


@dataclass(frozen=True)
class LoadRequest:
    model: str
    source: Source
    slot: str
    strategy: SwapStrategy = SwapStrategy.AUTO
    policy: AdapterPolicy = field(default_factory=AdapterPolicy)  # rank, size, base, trust
    patience: Patience = DEFAULT_PATIENCE  # how long a swap waits on a silent server


def load_adapter(
    request: LoadRequest,
    *,
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    transport: AdapterTransport,
    actor: Actor,
    manifest: ManifestSpec | None = None,
) -> StepResult:
    result = StepResult(
        step="load-adapter", model=request.model, source=str(request.source), slot=request.slot
    )
    timer = Timer(result.timings_s)
    with timer("resolve"):
        version = registry.resolve(request.model, request.source)
    result.version = version.version
    required_digests(version)
    with model_lock(registry, request.model, actor) as held:
        with timer("preflight"):
            servers = inspect_replicas(replicas, request.slot, request.strategy)
        deploy_version(
            version,
            slot=request.slot,
            replicas=servers,
            registry=registry,
            transport=transport,
            policy=request.policy,
            patience=request.patience,
            result=result,
            guard=held.lease.ensure_held,
        )
        with timer("manifest"):  # the folder an alias names may be placed now
            modules, warnings = refresh_after_commit(
                manifest,
                registry=registry,
                transport=transport,
                base_model_name=servers[0].base.id if servers else None,
            )
    if held.release_error:
        warnings.append(f"lock not released: {held.release_error}")
    if manifest is not None:
        result.details["lora_modules"] = modules
    if warnings:
        result.details.setdefault("warnings", []).extend(warnings)
    return result
