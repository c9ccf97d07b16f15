"""``loradeploy history``: every recorded alias move of a model, oldest first."""

from __future__ import annotations

from loradeploy.clients.registry import MLflowHelper
from loradeploy.coordination import history as read_history
from loradeploy.results import StepResult


def history(registry: MLflowHelper, *, model: str) -> StepResult:
    result = StepResult(step="history", model=model)
    registry.get_aliases(model)  # NotFoundError for an unknown model
    result.details = {"moves": read_history(registry, model)}
    return result
