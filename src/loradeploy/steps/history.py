"""``loradeploy history``: every recorded alias move of a model, oldest first, with who
signed the version each move pointed to (as its signature tags record it)."""

from __future__ import annotations

from loradeploy.clients.registry import MLflowHelper
from loradeploy.coordination import history as read_history
from loradeploy.domain.signing import recorded_signer
from loradeploy.errors import NotFoundError
from loradeploy.results import StepResult


def history(registry: MLflowHelper, *, model: str) -> StepResult:
    result = StepResult(step="history", model=model)
    registry.get_aliases(model)  # NotFoundError for an unknown model
    moves = read_history(registry, model)
    signers: dict[str, str] = {}
    for move in moves:
        version = str(move.get("to_version") or "")
        if version and version not in signers:
            try:
                signers[version] = recorded_signer(registry.get_version(model, version).tags)
            except NotFoundError:
                signers[version] = "(version deleted)"
        move["to_signer"] = signers.get(version)
    result.details = {"moves": moves}
    return result
