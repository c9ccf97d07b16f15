"""``loradeploy reconcile``: make every replica serve what the aliases name again.

One round:

1. read the aliases and what every replica serves, and decide what to repair
   (``domain.reconcile.plan_repairs``); nothing to repair: done, no lock, no writes;
2. otherwise take the model's deployment lock (so a round never interleaves with
   load-adapter, set-staged-alias or promote-adapter), read both again, and for each
   repair download, validate and place the version (the existing fetch/place code) and
   swap the slot on the replicas that need it (the existing rollout: verified, all or
   nothing), then rewrite ``lora-modules.json`` (``steps.manifest``);
3. read everything a last time: one check per alias, slot and replica.

In routed mode a canary an interrupted run left is finished or undone first (all
weight to one version: ``steps.canary.recover``). Aliases are never changed and nothing
is unloaded. ``watch`` repeats rounds: every
``interval_s``, backing off exponentially (up to a cap) after failed rounds.

As the vLLM pod's sidecar (``ReconcileRequest.write_manifest``), a round that ends in
sync also rewrites ``lora-modules.json`` from what the slots serve, so a vLLM restart
inside the pod starts with the versions the aliases name now, not those of pod
creation; and ``ready`` is its readiness answer (the pod's readiness probe reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.router import Router
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, model_lock
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.reconcile import Plan, Repair, backoff_s, plan_repairs
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import LoraDeployError, NotFoundError, UsageError
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.canary import CANARY_TAG, recover
from loradeploy.steps.deploy import deploy_version
from loradeploy.steps.manifest import ManifestSpec, refresh_after_commit
from loradeploy.steps.rollout import inspect_replicas
from loradeploy.steps.swap import DEFAULT_PATIENCE, Patience


@dataclass(frozen=True)
class ReconcileRequest:
    model: str
    slot_for_alias: Mapping[str, str]  # alias -> slot, e.g. live -> aws-rag-qa-live
    strategy: SwapStrategy = SwapStrategy.AUTO
    policy: AdapterPolicy = field(default_factory=AdapterPolicy)  # rank, size, base, trust
    patience: Patience = DEFAULT_PATIENCE  # how long a swap waits on a silent server
    # Sidecar: keep lora-modules.json equal to what is served, with this base model name.
    write_manifest: bool = False
    base_model_name: str | None = None


MANIFEST_CHECK = "lora-modules.json"


def served_modules(plan: Plan, base_model_name: str | None) -> list[dict[str, str]]:
    """``lora-modules.json`` entries for what the slots serve now: one per slot, in sync
    with its alias or left alone (a deployment in progress, a slot without alias)."""
    modules: dict[str, dict[str, str]] = {}
    rows = [*plan.in_sync, *(row for row, _ in plan.left_alone)]
    for row in rows:
        if row.served_root is not None and row.slot not in modules:
            modules[row.slot] = {"name": row.slot, "path": row.served_root} | (
                {"base_model_name": base_model_name} if base_model_name else {}
            )
    return [modules[slot] for slot in sorted(modules)]


def ready(result: StepResult | None, error: LoraDeployError | None) -> bool | None:
    """The sidecar's readiness answer after a round: True when every slot serves what its
    alias names (and the manifest says so), False when a finished round found drift it
    could not repair, None (keep the previous answer) when the round could not look,
    e.g. MLflow unreachable: an outage of the registry must not take every pod out of
    the Service; vLLM's own /health probe covers vLLM being down."""
    if error is not None or result is None:
        return None
    return result.passed


def _observe(
    registry: MLflowHelper, replicas: Sequence[VllmClient], request: ReconcileRequest
) -> tuple[dict[str, str], Plan]:
    try:
        aliases = registry.get_aliases(request.model)
    except NotFoundError:
        aliases = {}  # not registered yet (first deployment): nothing is wanted
    served = {vllm.base_url: {name: card.root for name, card in vllm.adapters().items()} for vllm in replicas}
    plan = plan_repairs(
        model=request.model, aliases=aliases, slot_for_alias=request.slot_for_alias, served=served
    )
    return aliases, plan


def _repair(
    repair: Repair,
    request: ReconcileRequest,
    *,
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    transport: AdapterTransport,
    guard: Callable[[], None],
) -> dict[str, object]:
    version = registry.get_version(request.model, repair.version, via=f"alias:{repair.alias}")
    targets = [vllm for vllm in replicas if vllm.base_url in repair.replicas]
    servers = inspect_replicas(targets, repair.slot, request.strategy)
    scratch = StepResult(step="reconcile")
    root = deploy_version(
        version,
        slot=repair.slot,
        replicas=servers,
        registry=registry,
        transport=transport,
        policy=request.policy,
        patience=request.patience,
        result=scratch,
        guard=guard,
    )
    return {
        "alias": repair.alias,
        "slot": repair.slot,
        "version": repair.version,
        "root": root,
        "replicas": dict(repair.why),
        "files_written": scratch.details.get("files_written"),
        "signature": scratch.details.get("signature"),
        "timings_s": scratch.timings_s,
    }


def _model_tags(registry: MLflowHelper, model: str) -> dict[str, str]:
    try:
        return registry.get_model_tags(model)
    except NotFoundError:
        return {}  # not registered yet: no canary either


def reconcile(
    request: ReconcileRequest,
    *,
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    transport: AdapterTransport,
    actor: Actor,
    manifest: ManifestSpec | None = None,
    router: Router | None = None,
) -> StepResult:
    """One round. Raises the first repair's error after trying every repair. With a
    ``router`` (routed mode), a canary an interrupted run left is finished or undone
    first (``steps.canary.recover``)."""
    result = StepResult(step="reconcile", model=request.model)
    timer = Timer(result.timings_s)
    if router is not None and CANARY_TAG in _model_tags(registry, request.model):
        with timer("canary"), model_lock(registry, request.model, actor) as held:
            recovered = recover(registry, router, request.model, actor, held.lease)
        if recovered is not None:
            result.details["canary_recovered"] = recovered.reason
    with timer("inspect"):
        aliases, plan = _observe(registry, replicas, request)
    repaired: list[dict[str, object]] = []
    manifest_warnings: list[str] = []
    if not plan.nothing_to_do:
        with model_lock(registry, request.model, actor) as held:
            # Read again under the lock: a deployment may have finished meanwhile.
            aliases, plan = _observe(registry, replicas, request)
            errors: list[LoraDeployError] = []
            with timer("repair"):
                for repair in plan.repairs:
                    try:
                        repaired.append(
                            _repair(
                                repair,
                                request,
                                registry=registry,
                                replicas=replicas,
                                transport=transport,
                                guard=held.lease.ensure_held,
                            )
                        )
                    except LoraDeployError as exc:
                        errors.append(exc)  # the other slot may still be repairable
            if repaired:  # folders the aliases name may be placed now
                with timer("manifest"):
                    _, manifest_warnings = refresh_after_commit(
                        manifest, registry=registry, transport=transport
                    )
            if errors:
                raise errors[0]
        with timer("verify"):
            aliases, after = _observe(registry, replicas, request)
    else:
        after = plan
    for row in after.in_sync:
        result.checks.append(
            Check(
                name=f"{row.alias}->{row.slot}@{row.replica}",
                passed=True,
                detail=f"serves version {row.served_version}",
            )
        )
    for row, why in after.left_alone:
        result.checks.append(Check(name=f"{row.alias}->{row.slot}@{row.replica}", passed=True, detail=why))
    for repair in after.repairs:
        for url in repair.replicas:
            result.checks.append(
                Check(
                    name=f"{repair.alias}->{repair.slot}@{url}",
                    passed=False,
                    detail=f"still not serving version {repair.version} ({repair.why[url]})",
                )
            )
    result.details = {
        **result.details,
        "aliases": aliases,
        "planned": [r.describe() for r in plan.repairs],
        "repaired": repaired,
        "left_alone": [f"{row.slot}@{row.replica}: {why}" for row, why in after.left_alone],
    }
    if manifest_warnings:
        result.details["warnings"] = manifest_warnings
    if request.write_manifest and result.passed:
        _write_manifest(result, after, request, transport)
    return result


def _write_manifest(
    result: StepResult, plan: Plan, request: ReconcileRequest, transport: AdapterTransport
) -> None:
    modules = served_modules(plan, request.base_model_name)
    try:
        transport.write_manifest(modules)
    except (OSError, LoraDeployError) as exc:
        detail = exc.one_line() if isinstance(exc, LoraDeployError) else f"{exc.strerror} ({exc.filename})"
        result.checks.append(Check(name=MANIFEST_CHECK, passed=False, detail=f"not written: {detail}"))
        return
    result.checks.append(Check(name=MANIFEST_CHECK, passed=True, detail=f"{len(modules)} module(s)"))
    result.details["lora_modules"] = modules


Round = Callable[[], StepResult]
Report = Callable[[StepResult | None, LoraDeployError | None, float], None]


def watch(
    once: Round,
    *,
    interval_s: float,
    max_backoff_s: float,
    wait: Callable[[float], bool],
    report: Report,
) -> int:
    """Run ``once`` until ``wait`` says stop; returns the number of rounds.

    ``wait(seconds)`` sleeps and returns True when the loop must stop (SIGTERM). After a
    failed round (an error, or checks that still fail) the wait doubles from the
    interval, up to ``max_backoff_s``; a good round resets it. Transient and permanent
    errors are reported and retried (a permanent one may be fixed in the registry
    meanwhile); a usage error stops the loop, since no retry can fix it.
    """
    failures = 0
    rounds = 0
    while True:
        rounds += 1
        result: StepResult | None = None
        error: LoraDeployError | None = None
        try:
            result = once()
        except UsageError:
            raise
        except LoraDeployError as exc:  # transient or permanent: report, back off, retry
            error = exc
        failures = 0 if error is None and result is not None and result.passed else failures + 1
        delay = backoff_s(failures, interval_s=interval_s, cap_s=max_backoff_s)
        report(result, error, delay)
        if wait(delay):
            return rounds
