"""Register a local adapter folder as a new model version, tagged for verification."""

from __future__ import annotations

from pathlib import Path

from loradeploy.clients.registry import MLflowHelper
from loradeploy.domain.adapter import inspect_adapter, registry_tags
from loradeploy.results import StepResult, Timer


def register(registry: MLflowHelper, *, model: str, adapter_dir: Path, alias: str | None) -> StepResult:
    result = StepResult(step="register", model=model)
    timer = Timer(result.timings_s)
    with timer("validate"):
        info = inspect_adapter(adapter_dir)
    with timer("register"):
        registry.ping()
        version = registry.register_adapter(model, adapter_dir, version_tags=registry_tags(info))
    result.version = version
    if alias:
        with timer("set-alias"):
            registry.set_alias(model, alias, version)
    result.details = {
        "alias": alias,
        "base_model": info.base_model,
        "rank": info.rank,
        "target_modules": info.target_modules,
        "files": info.files,
    }
    return result
