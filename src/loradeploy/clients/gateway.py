"""Routed mode's router on Kubernetes: the Gateway API Inference Extension, driven by
``InferenceModelRewrite`` objects (one per stable name, named after it, labelled as
loradeploy's), through the narrow ``KubeApi`` interface only.

The same three things the canary and ``route`` use from ``LiteLLMRouter``:

- ``routes()``: the stable names loradeploy's rewrites in the namespace route, and
  their weights (objects of other shapes or owners are never read as routes);
- ``apply(routes, deadline_s=...)``: each changed stable name's object rendered
  (``domain.rewrite.render_rewrite``, checked as every route is) and ``kubectl apply``-ed,
  then read back until every stable name reads as asked, within the deadline;
- ``backends``: the vLLM replicas (Ready pods) the pool sends to, whose served names
  the callers check before giving a version weight.

What the read-back confirms: the API server holds the objects as rendered. Whether the
extension's endpoint picker has acted on them is not visible through this interface.
Nothing is ever deleted (RBAC grants no delete): a stable name left out of ``routes``
is refused, as is an object of the same name that loradeploy did not write, or another
rewrite that already routes the same stable name. Validated offline only: the tests run
``tests/support/fake_kubectl.py``, a test double, never a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from loradeploy.clients.kube import KubeApi
from loradeploy.domain.rewrite import KIND, is_managed, render_rewrite, rewrite_routes
from loradeploy.domain.routes import Routes, Shadow, Shadows, check_routes, describe
from loradeploy.errors import DeadlineExceededError, UsageError

POLL_S = 0.5


def _name(rewrite: Mapping[str, Any]) -> str:
    return str((rewrite.get("metadata") or {}).get("name", ""))


class GatewayRouter:
    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        pool: str,
        backends: list[str],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api, self.namespace, self.pool, self.backends = api, namespace, pool, backends
        self.clock, self.sleep = clock, sleep

    def _objects(self) -> list[dict[str, Any]]:
        return self.api.rewrites(self.namespace)

    @staticmethod
    def _routes_of(objects: list[dict[str, Any]]) -> Routes:
        routes: Routes = {}
        for rewrite in objects:
            routed = rewrite_routes(rewrite) if is_managed(rewrite) else None
            if routed is not None and _name(rewrite) == routed[0]:
                routes[routed[0]] = routed[1]
        return routes

    def routes(self) -> Routes:
        """What loradeploy's rewrites in the namespace route, as the API server holds them."""
        return self._routes_of(self._objects())

    def _refuse_conflicts(self, objects: list[dict[str, Any]], wanted: Routes) -> None:
        where = f"namespace {self.namespace}"
        current = self._routes_of(objects)
        dropped = sorted(set(current) - set(wanted))
        if dropped:
            raise UsageError(
                f"{KIND} {where}: the new routes leave out {', '.join(dropped)}; loradeploy never "
                "deletes a rewrite, and nothing was changed",
                hint=f"give every routed stable name its weights, or delete it with "
                f"'kubectl delete {KIND.lower()} NAME -n {self.namespace}'",
            )
        for rewrite in objects:
            routed = rewrite_routes(rewrite)
            if is_managed(rewrite) and routed is not None and routed[0] == _name(rewrite):
                continue  # one of loradeploy's own
            if _name(rewrite) in wanted or (routed is not None and routed[0] in wanted):
                what = "has the name" if _name(rewrite) in wanted else "routes"
                raise UsageError(
                    f"{KIND} {self.namespace}/{_name(rewrite)} is not one loradeploy wrote (or was "
                    f"changed by hand) and {what} of a stable name it would write; nothing was changed",
                    hint="delete or rename that object, or route another stable name",
                )

    def shadows(self) -> Shadows:
        """None: an InferenceModelRewrite mirrors nothing (shadow traffic is the local
        stack's router's, LiteLLM ``silent_model``)."""
        return {}

    def apply(
        self,
        routes: Mapping[str, Mapping[str, int]],
        shadows: Mapping[str, Shadow] | None = None,
        *,
        deadline_s: float = 60.0,
    ) -> float:
        """Make the namespace's rewrites hold ``routes`` (every stable name loradeploy
        routes there). Returns the seconds until every one read back as asked. A shadow
        is refused before anything is written: rewrites cannot mirror requests."""
        if shadows:
            stable = sorted(shadows)[0]
            raise UsageError(
                f"shadow of {stable!r}: an {KIND} cannot mirror requests; nothing was changed",
                hint="use shadow traffic with the local stack's router ('stack up --router'), "
                "or route without --shadow",
            )
        wanted = check_routes(routes)
        rendered = {
            stable: render_rewrite(
                name=stable, namespace=self.namespace, pool=self.pool, stable_model=stable, weights=weights
            )
            for stable, weights in wanted.items()
        }  # every object rendered and checked before the first write
        started = self.clock()
        objects = self._objects()
        self._refuse_conflicts(objects, wanted)
        current = self._routes_of(objects)
        for stable, rewrite in rendered.items():
            if current.get(stable) != wanted[stable]:
                self.api.apply_rewrite(self.namespace, rewrite)
        while True:
            seen = self.routes()
            if all(seen.get(stable) == weights for stable, weights in wanted.items()):
                return self.clock() - started
            if self.clock() - started > deadline_s:
                late = sorted(s for s, w in wanted.items() if seen.get(s) != w)
                raise DeadlineExceededError(
                    f"{KIND} {self.namespace}/{late[0]} did not read back as "
                    f"{describe(wanted[late[0]])} within {deadline_s:.0f}s "
                    f"(read: {describe(seen.get(late[0]))})",
                    hint=f"check who else writes it (kubectl get {KIND.lower()} {late[0]} "
                    f"-n {self.namespace} -o yaml), then run the command again",
                )
            self.sleep(POLL_S)
