"""The ``InferenceModelRewrite`` object that splits a stable model name across versioned
adapters (routed mode: the router, not vLLM, picks the adapter for each request).

Pure: builds a value, never sends it. The object's ``spec`` follows the
``inference.networking.x-k8s.io/v1alpha2`` CRD bundled in ``deploy/gateway`` (see its
README for where it comes from); ``tests/unit/test_rewrite.py`` validates what this
renders against that schema. No command writes these objects yet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from loradeploy.domain.names import slot_name
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


def _served_name(ref: str, role: str, value: str) -> None:
    try:
        slot_name(value)
    except UsageError as exc:
        raise UsageError(f"{ref}: {role} {exc.message}", hint=exc.hint) from exc


def render_rewrite(
    *, name: str, namespace: str, pool: str, stable_model: str, weights: Mapping[str, int]
) -> dict[str, object]:
    """The object that sends requests for ``stable_model`` to the served adapters in
    ``weights`` (served name -> percent of the traffic), in the mapping's order.

    Weights are whole percentages in 0..100 that sum to 100. A target with weight 0 is
    left out of the object: the CRD's minimum weight is 1, and a target that is listed
    without a weight would make every weight optional (an even split). So 100/0 renders
    a single target with weight 100. Raises ``UsageError`` naming the object for an
    empty split, a weight outside 0..100, a sum other than 100, a target that is no
    served adapter name, or a stable name that is also a target.
    """
    _k8s_name(f"{KIND} name", name)
    _k8s_name(f"{KIND} namespace", namespace, namespace=True)
    ref = f"{KIND} {namespace}/{name}"
    _k8s_name(f"{ref}: pool", pool)
    _served_name(ref, "stable model:", stable_model)
    if not weights:
        raise UsageError(
            f"{ref}: no targets for {stable_model!r}",
            hint="give each served adapter a percentage, for example 'aws-rag-qa-v7': 100",
        )
    for target, weight in weights.items():
        _served_name(ref, "target", target)
        if not isinstance(weight, int) or isinstance(weight, bool):
            raise UsageError(
                f"{ref}: weight {weight!r} of {target!r} is not a whole number",
                hint="give weights as whole percentages from 0 to 100",
            )
        if not 0 <= weight <= 100:
            raise UsageError(
                f"{ref}: weight {weight} of {target!r} is outside 0..100",
                hint="give weights as whole percentages from 0 to 100",
            )
    if stable_model in weights:
        raise UsageError(
            f"{ref}: stable model {stable_model!r} is also a target, so requests would be "
            "rewritten to the name they were sent for",
            hint="route the stable name only to versioned adapter names, such as 'aws-rag-qa-v8'",
        )
    total = sum(weights.values())
    if total != 100:
        raise UsageError(
            f"{ref}: weights must sum to 100, they sum to {total} ({dict(weights)})",
            hint="adjust the percentages so they add up to 100, for example 95 and 5",
        )
    targets = [{"modelRewrite": target, "weight": weight} for target, weight in weights.items() if weight]
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
