"""``restart-deployment --local-stack``: the cold start of the local stack's vLLM.

Stop every vLLM server, restore the versions the aliases name into their slot folders
and ``lora-modules.json`` (``steps.init_load``), start the servers again: they load the
restored slots at start-up, as a Kubernetes pod's init container makes vLLM do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.results import StepResult, Timer
from loradeploy.stack.local import Tick
from loradeploy.steps.init_load import init_load_adapters


class VllmProcesses(Protocol):
    """The part of ``LocalStack`` a restart needs."""

    def vllm_names(self) -> list[str]: ...

    def stop(self, name: str) -> None: ...

    def start_vllm(self, name: str, on_tick: Tick | None = None) -> Any: ...


def restart_local(
    stack: VllmProcesses,
    *,
    model: str,
    slot_for_alias: Mapping[str, str],
    registry: MLflowHelper,
    transport: AdapterTransport,
    policy: AdapterPolicy,
    base_model_name: str | None,
    on_tick: Tick | None = None,
) -> StepResult:
    """Stop, restore, start (also after a failed restore); the checks are the restore's
    (one per alias)."""
    result = StepResult(step="restart-deployment", model=model)
    timer = Timer(result.timings_s)
    with timer("stop"):
        for name in stack.vllm_names():
            stack.stop(name)
    try:
        with timer("restore"):
            restored = init_load_adapters(
                model=model,
                slot_for_alias=slot_for_alias,
                registry=registry,
                transport=transport,
                base_model_name=base_model_name,
                policy=policy,
            )
    finally:
        # A failed restore leaves lora-modules.json as it was (it is written last, after
        # every slot was placed), so the servers come back on what they served before
        # instead of staying down; the restore's error then reaches the caller.
        with timer("start"):
            for name in stack.vllm_names():
                stack.start_vllm(name, on_tick=on_tick)
    result.checks = restored.checks
    result.details = {
        "restored": restored.details.get("restored"),
        "skipped": restored.details.get("skipped"),
    }
    return result
