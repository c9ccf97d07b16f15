"""Routed mode's routes, pure: which versioned names a stable name sends traffic to, and
with what weights; their rendering as the LiteLLM proxy's configuration and back.

A route maps one stable name that clients call (``aws-rag-qa-live``) to versioned names
(``aws-rag-qa@v7``) with whole-percent weights that sum to 100. The proxy keeps one
entry per version and vLLM replica, all under the stable name; an entry's id is the
versioned name (with ``#<replica>`` when there are several replicas), and the proxy
reports that id with every answer (the ``x-litellm-model-id`` header) and in its
metrics, which is how loradeploy knows which version answered.

A route may also carry a shadow: a share of the stable name's requests is mirrored, in
the background, to a candidate's versioned name (LiteLLM's ``silent_model``), whose
answers no client sees. Each target's weight ``w`` is then split between a plain entry
(``w * (100 - P)``) and a mirroring entry (``w * P``, with ``silent_model``), so P % of
the requests, whichever version answers them, are mirrored; the candidate gets a model
group of its own, named by its versioned name, which no stable name's entries name, so
clients calling the stable name never reach it. LiteLLM 1.106.2 mirrors
``/v1/chat/completions`` only: a ``/v1/completions`` request served by a mirroring
entry is answered as usual and not mirrored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


MIRROR_TAG = "mirror"  # id suffix of an entry that mirrors its requests to a shadow
SHADOW_TAG = "shadow"  # id suffix of an entry of a candidate's own (shadow) model group


@dataclass(frozen=True)
class Shadow:
    """``percent`` % of a stable name's requests are mirrored to versioned name ``name``."""

    name: str
    percent: int

    def describe(self) -> str:
        return f"shadow {self.name} {self.percent} %"


Shadows = dict[str, Shadow]  # stable name -> its shadow


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


def check_shadows(shadows: Mapping[str, Shadow], routes: Mapping[str, Mapping[str, int]]) -> Shadows:
    """The shadows, checked against the (checked) routes they ride on: each on a routed
    stable name, naming a versioned name of the route's model that has no weight in it,
    with a whole percentage within 1..100."""
    checked: Shadows = {}
    for stable, shadow in shadows.items():
        hint = "mirror to a version of the route's model that has no weight, e.g. --shadow=m@v2=10"
        weights = routes.get(stable)
        if not weights:
            raise UsageError(f"shadow of {stable!r}: the stable name has no route", hint=hint)
        parsed = parse_versioned_name(shadow.name)
        if parsed is None:
            raise UsageError(f"shadow of {stable!r}: {shadow.name!r} is not a versioned name", hint=hint)
        models = {found[0] for name in weights if (found := parse_versioned_name(name))}
        if models != {parsed[0]}:
            raise UsageError(
                f"shadow of {stable!r}: {shadow.name!r} is not a version of the route's model "
                f"({', '.join(sorted(models))})",
                hint=hint,
            )
        if shadow.name in weights:
            raise UsageError(
                f"shadow of {stable!r}: {shadow.name!r} already has weight in the route", hint=hint
            )
        percent = shadow.percent
        if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
            raise UsageError(
                f"shadow of {stable!r}: {percent!r} is not a whole percentage within 1..100",
                hint="give 1..100, or no shadow",
            )
        checked[stable] = shadow
    return checked


def describe(weights: Mapping[str, int] | None, shadow: Shadow | None = None) -> str:
    """``m@v1 95 %, m@v2 5 %`` (by name), or ``no route``; then the shadow, if any."""
    if not weights:
        return "no route"
    text = ", ".join(f"{name} {weight} %" for name, weight in sorted(weights.items()))
    return f"{text}; {shadow.describe()}" if shadow else text


def entry_id(target: str, replica: int, replicas: int, tag: str = "") -> str:
    """``m@v2``, ``m@v2#1`` with several replicas; a tag makes ``m@v2#mirror``, ``m@v2#1.mirror``."""
    if replicas == 1:
        return f"{target}{REPLICA_MARK}{tag}" if tag else target
    return f"{target}{REPLICA_MARK}{replica}" + (f".{tag}" if tag else "")


def version_of(entry: str) -> str:
    """The versioned name behind a proxy entry id (the replica mark dropped)."""
    return entry.split(REPLICA_MARK, 1)[0]


def litellm_config(
    routes: Mapping[str, Mapping[str, int]],
    backends: Sequence[str],
    callbacks: Sequence[str] = PROXY_CALLBACKS,
    *,
    shadows: Mapping[str, Shadow] | None = None,
) -> dict[str, object]:
    """The proxy's configuration for these routes (and shadows) over these vLLM base URLs,
    with these callbacks (a custom one must lie next to the configuration file).

    Every version gets one entry per replica with the version's weight, so each replica
    takes an equal part of it. The proxy neither retries, falls back nor cools an entry
    down: a failed request is reported, never silently answered by another version, and
    a failing version keeps its share. vLLM's key, if any, is read
    by the proxy from its environment (``os.environ/VLLM_API_KEY``), never written here."""
    if not backends:
        raise UsageError(
            "the router has no vLLM server to send to", hint="start vLLM first ('loradeploy stack up')"
        )
    checked = check_routes(routes)
    mirrored = check_shadows(shadows or {}, checked)

    def entry(group: str, target: str, index: int, weight: int, tag: str = "") -> dict[str, object]:
        params: dict[str, object] = {
            "model": f"{PROVIDER}{target}",
            "api_base": f"{backends[index].rstrip('/')}/v1",
            "api_key": "os.environ/VLLM_API_KEY",
            "weight": weight,
        }
        if tag == MIRROR_TAG:
            params["silent_model"] = mirrored[group].name
        return {
            "model_name": group,
            "litellm_params": params,
            "model_info": {"id": entry_id(target, index, len(backends), tag)},
        }

    model_list = []
    for stable, weights in sorted(checked.items()):
        percent = mirrored[stable].percent if stable in mirrored else 0
        for target, weight in sorted(weights.items()):
            for index in range(len(backends)):
                if not percent:
                    model_list.append(entry(stable, target, index, weight))
                    continue
                if percent < 100:
                    model_list.append(entry(stable, target, index, weight * (100 - percent)))
                model_list.append(entry(stable, target, index, weight * percent, MIRROR_TAG))
    for name in sorted({shadow.name for shadow in mirrored.values()}):
        model_list += [entry(name, name, index, 1, SHADOW_TAG) for index in range(len(backends))]
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


def _entries(model_list: Sequence[object]) -> dict[str, dict[tuple[str, str | None], float]]:
    """Stable name -> (versioned name, shadow it mirrors to or None) -> the entry's weight
    (every replica's entry has the same); a candidate's own group is no stable name."""
    found: dict[str, dict[tuple[str, str | None], float]] = {}
    for entry in model_list:
        if not isinstance(entry, Mapping):
            continue
        params, info = entry.get("litellm_params"), entry.get("model_info")
        stable = entry.get("model_name")
        if not (isinstance(params, Mapping) and isinstance(info, Mapping) and isinstance(stable, str)):
            continue
        if parse_versioned_name(stable) is not None:
            continue  # a shadow's own group: no client's route
        target, weight = version_of(str(info.get("id", ""))), params.get("weight")
        silent = params.get("silent_model")
        if isinstance(weight, int | float) and not isinstance(weight, bool):
            found.setdefault(stable, {})[(target, silent if isinstance(silent, str) else None)] = weight
    return found


def routes_of(model_list: Sequence[object]) -> Routes:
    """The routes a proxy configuration (or its ``/model/info`` answer) serves."""
    routes: Routes = {}
    for stable, entries in _entries(model_list).items():
        scale = 100 if any(silent for _, silent in entries) else 1  # weights were w * P
        totals: dict[str, float] = {}
        for (target, _), weight in entries.items():
            totals[target] = totals.get(target, 0) + weight
        routes[stable] = {target: round(total / scale) for target, total in totals.items()}
    return routes


def shadows_of(model_list: Sequence[object]) -> Shadows:
    """The shadows a proxy configuration (or its ``/model/info`` answer) serves."""
    shadows: Shadows = {}
    for stable, entries in _entries(model_list).items():
        names = {silent for _, silent in entries if silent}
        total = sum(entries.values())
        if len(names) != 1 or not total:
            continue
        mirrored = sum(weight for (_, silent), weight in entries.items() if silent)
        shadows[stable] = Shadow(names.pop(), round(100 * mirrored / total))
    return shadows
