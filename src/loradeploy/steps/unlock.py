"""``loradeploy unlock``: clear what a crashed run or hand-edited registry left behind.

- ``--run-id R``: release the lease of run ``R`` (a crashed run's, as the "is being
  deployed by" error names it), or a malformed lease named ``lease-N``. A live run's
  lease is never released by accident: the run must be named.
- ``--abandon-plan``: drop a pending alias plan that cannot be finished (an alias was
  moved by hand since), or a malformed one, under the lock, recorded in the audit history.
"""

from __future__ import annotations

from loradeploy.clients.registry import MLflowHelper
from loradeploy.coordination import Actor, abandon_plan, model_lock
from loradeploy.coordination import unlock as release_run
from loradeploy.errors import NotFoundError, UsageError
from loradeploy.results import StepResult


def unlock(
    registry: MLflowHelper, *, model: str, run_id: str | None, drop_plan: bool, actor: Actor
) -> StepResult:
    if not run_id and not drop_plan:
        raise UsageError("unlock needs --run-id RUN or --abandon-plan (or both)")
    registry.get_model_tags(model)  # NotFoundError for an unknown model, before anything is written
    details: dict[str, object] = {"run_id": run_id, "abandoned_plan": []}
    if run_id and not release_run(registry.leases, model, run_id):
        raise NotFoundError(
            f"model {model!r} holds no lock of run {run_id!r}",
            hint="copy the run id from the 'is being deployed by' error of the blocked step",
        )
    if drop_plan:
        with model_lock(registry, model, actor, finish_plan=False) as held:
            details["abandoned_plan"] = abandon_plan(registry, model, actor, held.lease)
    return StepResult(step="unlock", model=model, details=details)
