"""Step 3: set the ``staged`` alias on the deployed version once the smoke test passed."""

from __future__ import annotations

from loradeploy.clients.registry import MLflowHelper
from loradeploy.domain.names import Source
from loradeploy.results import StepResult, Timer

STAGED = "staged"


def set_staged_alias(registry: MLflowHelper, *, model: str, source: Source) -> StepResult:
    result = StepResult(step="set-staged-alias", model=model, source=str(source))
    timer = Timer(result.timings_s)
    with timer("resolve"):
        version = registry.resolve(model, source)
    result.version = version.version
    before = registry.get_aliases(model).get(STAGED)
    with timer("set-alias"):
        if before != version.version:
            registry.set_alias(model, STAGED, version.version)
    result.details = {"alias": STAGED, "from_version": before, "to_version": version.version}
    return result
