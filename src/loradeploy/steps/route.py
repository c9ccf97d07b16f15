"""Routed mode: set the weights of one stable name on the router (``loradeploy route``).

The operator's lever, and the move a canary makes at every step. A version gets weight
only when every replica serves its versioned name (else the router would send requests
to a name vLLM answers with 404), all of one model, under that model's lock; the change
is recorded in the model's history. Other stable names keep their routes and shadows.

A shadow (``--shadow m@v2=10``) mirrors that share of the stable name's chat requests to
a version with no weight, which must be served by every replica too; a route set without
one has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.router import Router
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, model_lock
from loradeploy.coordination.audit import record_event
from loradeploy.domain.canary import parse_versioned_name
from loradeploy.domain.routes import Shadow, check_routes, check_shadows, describe
from loradeploy.errors import NotFoundError, UsageError
from loradeploy.results import Check, StepResult, Timer


def model_of(stable: str, weights: Mapping[str, int]) -> str:
    """The one model whose versions the route names."""
    models = sorted({parsed[0] for name in weights if (parsed := parse_versioned_name(name))})
    if len(models) != 1:
        raise UsageError(
            f"route {stable!r} names versions of {len(models)} models ({', '.join(models) or 'none'})",
            hint="route a stable name to versions of one model, e.g. aws-rag-qa@v1=95,aws-rag-qa@v2=5",
        )
    return models[0]


def route(
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    router: Router,
    *,
    stable: str,
    weights: Mapping[str, int],
    actor: Actor,
    reason: str,
    shadow: Shadow | None = None,
) -> StepResult:
    wanted = check_routes({stable: weights})[stable]
    model = model_of(stable, wanted)
    mirrored = check_shadows({stable: shadow} if shadow else {}, {stable: wanted})
    needed = set(wanted) | {s.name for s in mirrored.values()}
    result = StepResult(step="route", model=model, slot=stable)
    timer = Timer(result.timings_s)
    with model_lock(registry, model, actor):
        with timer("verify-served"):
            for vllm in replicas:
                served = vllm.adapters()
                missing = sorted(name for name in needed if name not in served)
                if missing:
                    raise NotFoundError(
                        f"vLLM at {vllm.base_url} does not serve {', '.join(missing)}; the route "
                        f"{stable!r} was not changed",
                        hint=f"load every version that gets weight{' or the shadow' if mirrored else ''} "
                        "on every replica first",
                    )
                result.checks.append(
                    Check(name=f"served:{vllm.base_url}", passed=True, detail=", ".join(sorted(needed)))
                )
        routes, shadows = router.routes(), router.shadows()
        before, shadow_before = routes.get(stable), shadows.pop(stable, None)
        with timer("apply"):
            router.apply({**routes, stable: wanted}, {**shadows, **mirrored})
        record_event(
            registry,
            model,
            "route",
            actor,
            reason=f"{stable}: {describe(before, shadow_before)} -> {describe(wanted, shadow)}; {reason}",
        )
    result.details = {"before": before or {}, "after": wanted}
    if shadow_before or shadow:
        result.details["shadow_before"] = shadow_before.describe() if shadow_before else None
        result.details["shadow_after"] = shadow.describe() if shadow else None
    return result
