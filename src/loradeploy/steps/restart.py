"""Legacy fallback: a rolling restart of the vLLM Deployment, waiting for the rollout.

Same patch as ``kubectl rollout restart`` (a new ``restartedAt`` pod-template annotation),
then the Deployment's status is polled until ``domain.kube.rollout_complete`` says every
replica runs the new template, or the deadline passes. Runtime-loaded adapters are gone
after a restart; the init container restores them from the registry's aliases.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loradeploy.clients.kube import KubeApi
from loradeploy.domain.kube import RESTARTED_AT, rollout_complete, rollout_stalled
from loradeploy.errors import DeadlineExceededError, PermanentError
from loradeploy.results import StepResult
from loradeploy.results import now_iso as utc_now_iso

POLL_S = 2.0  # kubectl rollout status watches; two seconds is a gentle poll of the API server


def restart_deployment(
    api: KubeApi,
    *,
    namespace: str,
    deployment: str,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now_iso: Callable[[], str] = utc_now_iso,
    poll_s: float = POLL_S,
) -> StepResult:
    """Restart ``namespace/deployment`` and wait (at most ``timeout_s``) for the rollout."""
    name = f"{namespace}/{deployment}"
    result = StepResult(step="restart-deployment")
    started = clock()
    deadline = started + timeout_s
    stamp = now_iso()
    api.patch_restart(namespace, deployment, stamp)
    patched = clock()
    result.timings_s["patch"] = round(patched - started, 4)
    polls = 0
    while True:
        status = api.deployment_status(namespace, deployment)
        polls += 1
        done, detail = rollout_complete(status)
        if done:
            break
        stalled = rollout_stalled(status)
        if stalled is not None:
            raise PermanentError(
                f"deployment {name}: the rolling restart stalled ({stalled}); still pending: {detail}",
                hint=f"inspect the new pods (kubectl -n {namespace} describe deployment {deployment})",
            )
        remaining = deadline - clock()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"deployment {name}: rolling restart not complete after {timeout_s:g}s; "
                f"still pending: {detail}",
                hint=f"check the new pods (kubectl -n {namespace} rollout status deployment/{deployment}), "
                "then retry or raise the timeout",
            )
        sleep(min(poll_s, remaining))
    result.timings_s["rollout"] = round(clock() - patched, 4)
    result.details = {
        "namespace": namespace,
        "deployment": deployment,
        "annotation": {RESTARTED_AT: stamp},
        "polls": polls,
        "rollout": detail,
        "status": status,
    }
    return result
