"""The training quality gate: a version's training-run metrics against thresholds;
``candidate`` moves to the version only when every check passes."""

from __future__ import annotations

from loradeploy.clients.registry import MLflowHelper
from loradeploy.coordination import Actor, model_lock, move_aliases
from loradeploy.domain.aliases import CANDIDATE, plan_set
from loradeploy.domain.gates import decide_quality
from loradeploy.errors import NotFoundError, PermanentError
from loradeploy.results import StepResult, Timer


def quality_gate(
    registry: MLflowHelper,
    *,
    model: str,
    version: str | None,
    run_id: str | None,
    min_f1: float | None,
    max_eval_loss: float | None,
    actor: Actor,
) -> StepResult:
    """Exactly one of ``version`` and ``run_id`` names what to judge."""
    result = StepResult(step="quality-gate", model=model)
    timer = Timer(result.timings_s)
    with timer("resolve"):
        if version is not None:
            info = registry.get_version(model, version)
            if not info.run_id:
                raise PermanentError(
                    f"model {model!r} version {version} has no training run to read metrics from",
                    hint="register trained adapters with 'loradeploy train', or pass --run-id",
                )
            run_id = info.run_id
        elif run_id is not None:
            found = registry.versions_of_run(model, run_id)
            if not found:
                raise NotFoundError(
                    f"model {model!r} has no version registered from run {run_id!r}",
                    hint="check the run id, or pass --version",
                )
            version = found[-1]
        assert version is not None and run_id is not None
        metrics = registry.get_run_metrics(run_id)
    result.version = version
    decision = decide_quality(metrics, min_f1=min_f1, max_eval_loss=max_eval_loss)
    result.checks = decision.checks
    moves = []
    if decision.passed:
        with model_lock(registry, model, actor) as held, timer("set-alias"):
            moves = plan_set(registry.get_aliases(model), CANDIDATE, version)
            move_aliases(
                registry, model, moves, actor, held.lease, reason=f"quality gate passed (run {run_id})"
            )
    result.details = {
        "run_id": run_id,
        "metrics": metrics,
        "alias_moves": [m.describe() for m in moves],
    }
    return result
