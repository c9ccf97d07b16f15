"""The ``InferenceModelRewrite`` object that splits a stable model name across versioned
adapters (routed mode: the router, not vLLM, picks the adapter for each request).

Pure: builds a value, never sends it. The object's ``spec`` follows the
``inference.networking.x-k8s.io/v1alpha2`` CRD bundled in ``deploy/gateway`` (see its
README for where it comes from); ``tests/unit/test_rewrite.py`` validates what this
renders against that schema. ``clients.gateway.GatewayRouter`` applies them (``route``
and ``canary`` with ``--transport=kubectl``) and reads them back with ``rewrite_routes``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from loradeploy.domain.routes import check_routes
from loradeploy.errors import UsageError

API_VERSION = "inference.networking.x-k8s.io/v1alpha2"
KIND = "InferenceModelRewrite"
POOL_GROUP = "inference.networking.k8s.io"  # InferencePool's group (the CRD's default)
LABELS = {"app.kubernetes.io/managed-by": "loradeploy", "app.kubernetes.io/part-of": "loradeploy"}

# Kubernetes object names: a DNS-1123 subdomain (names) or label (namespaces).
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_LABEL = re.compile(_DNS_LABEL)


def _k8s_name(what: str, value: str, *, namespace: bool = False) -> None:
    pattern, limit = (_LABEL, 63) if namespace else (_SUBDOMAIN, 253)
    if not (pattern.fullmatch(value) and len(value) <= limit):
        raise UsageError(
            f"{what} {value!r} is not a Kubernetes {'namespace' if namespace else 'object'} name: "
            f"use lower-case letters, digits{'' if namespace else ', dots'} and '-' (at most {limit})",
            hint=f"pass a {'namespace' if namespace else 'name'} such as 'aws-rag-qa-live'",
        )


def render_rewrite(
    *, name: str, namespace: str, pool: str, stable_model: str, weights: Mapping[str, int]
) -> dict[str, object]:
    """The object that sends requests for ``stable_model`` to the versioned names in
    ``weights`` (``aws-rag-qa@v7`` -> percent of the traffic), checked as every route is
    (``domain.routes.check_routes``), in the mapping's order.

    Weights are whole percentages in 0..100 that sum to 100. A target with weight 0 is
    left out of the object: the CRD's minimum weight is 1, and a target that is listed
    without a weight would make every weight optional (an even split). So 100/0 renders
    a single target with weight 100. Raises ``UsageError`` naming the object for an
    empty split, a weight outside 0..100, a sum other than 100, a target that is no
    versioned name, or a stable name that is versioned.
    """
    _k8s_name(f"{KIND} name", name)
    _k8s_name(f"{KIND} namespace", namespace, namespace=True)
    ref = f"{KIND} {namespace}/{name}"
    _k8s_name(f"{ref}: pool", pool)
    try:
        checked = check_routes({stable_model: weights})[stable_model]
    except UsageError as exc:
        raise UsageError(f"{ref}: {exc.message}", hint=exc.hint) from exc
    if not checked:
        raise UsageError(
            f"{ref}: no targets for {stable_model!r}", hint="give the versioned names weights summing to 100"
        )
    targets = [{"modelRewrite": target, "weight": weight} for target, weight in checked.items()]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
        "spec": {
            "poolRef": {"group": POOL_GROUP, "kind": "InferencePool", "name": pool},
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": stable_model}}],
                    "targets": targets,
                }
            ],
        },
    }


def is_managed(rewrite: Mapping[str, Any]) -> bool:
    """Whether loradeploy wrote the object (its labels say so)."""
    labels = (rewrite.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, Mapping) and all(labels.get(k) == v for k, v in LABELS.items())


def rewrite_routes(rewrite: Mapping[str, Any]) -> tuple[str, dict[str, int]] | None:
    """The stable name and weights an object of the shape ``render_rewrite`` makes
    routes (one rule, one exact model match, weighted targets); ``None`` for any other
    shape: a rewrite this project did not write, or one changed by hand, is never
    read as routes."""
    if rewrite.get("apiVersion") != API_VERSION or rewrite.get("kind") != KIND:
        return None
    rules = (rewrite.get("spec") or {}).get("rules")
    if not (isinstance(rules, list) and len(rules) == 1 and isinstance(rules[0], Mapping)):
        return None
    matches, targets = rules[0].get("matches"), rules[0].get("targets")
    if not (isinstance(matches, list) and len(matches) == 1 and isinstance(matches[0], Mapping)):
        return None
    model = matches[0].get("model")
    if not (isinstance(model, Mapping) and model.get("type", "Exact") == "Exact"):
        return None
    stable = model.get("value")
    if not (isinstance(stable, str) and isinstance(targets, list) and targets):
        return None
    weights: dict[str, int] = {}
    for target in targets:
        if not isinstance(target, Mapping):
            return None
        name, weight = target.get("modelRewrite"), target.get("weight")
        if (
            not isinstance(name, str)
            or isinstance(weight, bool)
            or not isinstance(weight, int)
            or name in weights
        ):
            return None
        weights[name] = weight
    return stable, weights
