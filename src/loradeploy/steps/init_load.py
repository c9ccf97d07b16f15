"""Cold-start restore (the init container): put the versions ``live`` and ``staged``
name into their slot folders, and tell vLLM about them.

How vLLM learns about them: the step writes ``<adapters-root>/lora-modules.json``, and
the vLLM container starts with one ``--lora-modules`` entry per restored slot, built
from that file (the local stack does this; ``deploy/`` does it on Kubernetes). The
folders and the file live on the volume shared with vLLM, so a vLLM restart inside the
same pod starts with them again. With ``--vllm-url`` (a server that is already up) the
step loads them through the runtime API instead.

An alias that does not exist (first deployment) is skipped, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.manifest import plan_manifest
from loradeploy.domain.names import Source
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import NotFoundError
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.deploy import fetch_and_place
from loradeploy.steps.rollout import inspect_replicas, roll_out


def init_load_adapters(
    *,
    model: str,
    slot_for_alias: Mapping[str, str],
    registry: MLflowHelper,
    transport: AdapterTransport,
    base_model_name: str | None,
    policy: AdapterPolicy,
    replicas: Sequence[VllmClient] = (),
) -> StepResult:
    result = StepResult(step="init-load-adapters", model=model)
    timer = Timer(result.timings_s)
    restored: list[dict[str, str]] = []
    skipped: dict[str, str] = {}
    for alias, slot in slot_for_alias.items():
        try:
            with timer("resolve"):
                version = registry.resolve(model, Source("alias", alias))
        except NotFoundError as exc:
            skipped[alias] = exc.message
            result.checks.append(Check(name=f"{alias}->{slot}", passed=True, detail="skipped: no alias"))
            continue
        root, _, written, signature = fetch_and_place(
            version,
            slot=slot,
            registry=registry,
            transport=transport,
            served_names=[(base_model_name,)] if base_model_name else [],
            policy=policy,
            timer=timer,
        )
        restored.append(
            {
                "alias": alias,
                "slot": slot,
                "version": version.version,
                "path": root,
                "signature": signature.describe(),
            }
        )
        result.checks.append(
            Check(
                name=f"{alias}->{slot}",
                passed=True,
                detail=f"version {version.version} at {root}" + ("" if written else " (already there)"),
            )
        )
    plan = plan_manifest(  # the same rule as after every committed change (steps.manifest)
        model=model,
        slot_for_alias=slot_for_alias,
        aliases={entry["alias"]: entry["version"] for entry in restored},
        placed=[entry["path"] for entry in restored],
        root=transport.root,
        base_model_name=base_model_name,
    )
    modules = plan.modules
    with timer("manifest"):
        transport.write_manifest(modules)
    if replicas:
        with timer("load"):
            for entry in restored:
                servers = inspect_replicas(replicas, entry["slot"], SwapStrategy.AUTO)
                roll_out(servers, entry["slot"], entry["path"])
    result.details = {
        "restored": restored,
        "skipped": skipped,
        "lora_modules": modules,
        "base_model_checked": base_model_name is not None,
    }
    return result
