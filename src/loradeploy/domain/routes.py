"""Routed mode's routes, pure: which versioned names a stable name sends traffic to, and
with what weights; their rendering as the LiteLLM proxy's configuration and back.

A route maps one stable name that clients call (``aws-rag-qa-live``) to versioned names
(``aws-rag-qa@v7``) with whole-percent weights that sum to 100. The proxy keeps one
entry per version and vLLM replica, all under the stable name; an entry's id is the
versioned name (with ``#<replica>`` when there are several replicas), and the proxy
reports that id with every answer (the ``x-litellm-model-id`` header) and in its
metrics, which is how loradeploy knows which version answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loradeploy.domain.canary import parse_versioned_name
from loradeploy.domain.names import slot_name
from loradeploy.errors import UsageError

Routes = dict[str, dict[str, int]]  # stable name -> {versioned name: weight}
PROVIDER = "hosted_vllm/"  # the proxy's prefix for an OpenAI-compatible vLLM server
REPLICA_MARK = "#"
# The proxy's metrics, and the per-request log that the local stack ships next to the
# configuration (src/loradeploy/routerworkers/request_log.py, loaded by file name).
PROXY_CALLBACKS = ("prometheus",)
REQUEST_LOG_MODULE = "loradeploy_request_log"
REQUEST_LOG_CALLBACK = f"{REQUEST_LOG_MODULE}.request_logger"


def proxy_callbacks(*, request_log: bool) -> tuple[str, ...]:
    """The proxy's callbacks: its metrics, and the request log when it is shipped."""
    return (*PROXY_CALLBACKS, REQUEST_LOG_CALLBACK) if request_log else PROXY_CALLBACKS


def check_routes(routes: Mapping[str, Mapping[str, int]]) -> Routes:
    """The routes, checked: stable names are served names that are not versioned, targets
    are versioned names, weights are whole percentages that sum to 100; a target with
    weight 0 is dropped (the proxy would still pick it)."""
    checked: Routes = {}
    for stable, weights in routes.items():
        hint = "give every route versioned targets whose weights sum to 100, e.g. m@v1=95,m@v2=5"
        if parse_versioned_name(stable) is not None:
            raise UsageError(f"route {stable!r}: a stable name cannot be a versioned name", hint=hint)
        slot_name(stable)
        for target, weight in weights.items():
            if parse_versioned_name(target) is None:
                raise UsageError(f"route {stable!r}: target {target!r} is not a versioned name", hint=hint)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise UsageError(
                    f"route {stable!r}: weight {weight!r} of {target!r} is not a whole number within 0..100",
                    hint=hint,
                )
        if sum(weights.values()) != 100:
            raise UsageError(f"route {stable!r}: weights sum to {sum(weights.values())}, not 100", hint=hint)
        checked[stable] = {target: weight for target, weight in weights.items() if weight > 0}
    return checked


def describe(weights: Mapping[str, int] | None) -> str:
    """``m@v1 95 %, m@v2 5 %`` (by name), or ``no route``."""
    if not weights:
        return "no route"
    return ", ".join(f"{name} {weight} %" for name, weight in sorted(weights.items()))


def entry_id(target: str, replica: int, replicas: int) -> str:
    return target if replicas == 1 else f"{target}{REPLICA_MARK}{replica}"


def version_of(entry: str) -> str:
    """The versioned name behind a proxy entry id (the replica mark dropped)."""
    return entry.split(REPLICA_MARK, 1)[0]


def litellm_config(
    routes: Mapping[str, Mapping[str, int]],
    backends: Sequence[str],
    callbacks: Sequence[str] = PROXY_CALLBACKS,
) -> dict[str, object]:
    """The proxy's configuration for these routes over these vLLM base URLs, with these
    callbacks (a custom one must lie next to the configuration file).

    Every version gets one entry per replica with the version's weight, so each replica
    takes an equal part of it. The proxy neither retries, falls back nor cools an entry
    down: a failed request is reported, never silently answered by another version, and
    a failing version keeps its share. vLLM's key, if any, is read
    by the proxy from its environment (``os.environ/VLLM_API_KEY``), never written here."""
    if not backends:
        raise UsageError(
            "the router has no vLLM server to send to", hint="start vLLM first ('loradeploy stack up')"
        )
    model_list = [
        {
            "model_name": stable,
            "litellm_params": {
                "model": f"{PROVIDER}{target}",
                "api_base": f"{backend.rstrip('/')}/v1",
                "api_key": "os.environ/VLLM_API_KEY",
                "weight": weight,
            },
            "model_info": {"id": entry_id(target, index, len(backends))},
        }
        for stable, weights in sorted(check_routes(routes).items())
        for target, weight in sorted(weights.items())
        for index, backend in enumerate(backends)
    ]
    return {
        "model_list": model_list,
        # no cooldown: the proxy would otherwise take a failing entry out of its group for
        # a while and send its share to the others, hiding a failing canary's errors
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "num_retries": 0,
            "disable_cooldowns": True,
        },
        "litellm_settings": {"telemetry": False, "num_retries": 0, "callbacks": list(callbacks)},
    }


def routes_of(model_list: Sequence[Mapping[str, object]]) -> Routes:
    """The routes a proxy configuration (or its ``/model/info`` answer) serves."""
    routes: Routes = {}
    for entry in model_list:
        if not isinstance(entry, Mapping):
            continue
        params, info = entry.get("litellm_params"), entry.get("model_info")
        stable = entry.get("model_name")
        if not (isinstance(params, Mapping) and isinstance(info, Mapping) and isinstance(stable, str)):
            continue
        target, weight = version_of(str(info.get("id", ""))), params.get("weight")
        if isinstance(weight, int | float):
            routes.setdefault(stable, {})[target] = int(weight)
    return routes
