"""Step 1: download a version from MLflow and serve it under a slot name, no restart.

Flow: resolve the source to one version; check every replica is healthy and serves the
base the adapter was trained for; download and validate the files (PEFT LoRA, rank,
base model, sha256 against the registry's tags); place them in a new folder per version;
swap the slot on each replica; verify ``/v1/models`` lists the slot with the new folder
as ``root`` and ``/health`` is still 200. Any failure before the swap changes nothing;
a failed swap puts the previous folder back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.adapter import check_compatible, check_digests, inspect_adapter
from loradeploy.domain.layout import version_dir
from loradeploy.domain.names import Source
from loradeploy.domain.swap import SwapStrategy, choose_strategy, needs_swap
from loradeploy.errors import InvalidAdapterError, PermanentError
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.swap import swap_adapter


@dataclass(frozen=True)
class LoadRequest:
    model: str
    source: Source
    slot: str
    strategy: SwapStrategy = SwapStrategy.AUTO
    max_lora_rank: int = 16
    base_model_aliases: Mapping[str, str] = field(default_factory=dict)


def load_adapter(
    request: LoadRequest,
    *,
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    transport: AdapterTransport,
) -> StepResult:
    result = StepResult(
        step="load-adapter", model=request.model, source=str(request.source), slot=request.slot
    )
    timer = Timer(result.timings_s)

    with timer("resolve"):
        version = registry.resolve(request.model, request.source)
    result.version = version.version
    digests = version.file_digests()
    if not digests:
        raise InvalidAdapterError(
            f"model {request.model!r} version {version.version} has no loradeploy.sha256.* tags",
            hint="register adapters with 'loradeploy register' so their files can be verified",
        )
    label = f"model {request.model!r} version {version.version}"

    with timer("preflight"):
        servers = []
        for vllm in replicas:
            vllm.ensure_healthy()
            base = vllm.base_model()
            current = vllm.adapters().get(request.slot)
            strategy = choose_strategy(request.strategy, vllm.server_version())
            servers.append((vllm, base, current.root if current else None, strategy))

    new_root = version_dir(transport.root, request.slot, request.model, version.version)
    with transport.staging() as staging:
        with timer("download"):
            registry.download_adapter(request.model, version.version, staging)
        with timer("validate"):
            info = inspect_adapter(staging)
            check_digests(staging, digests, label)
            for vllm, base, _, _ in servers:
                served = {base.id} | ({base.root} if base.root else set())
                check_compatible(
                    info,
                    served_names=served,
                    base_aliases=request.base_model_aliases,
                    max_lora_rank=request.max_lora_rank,
                    label=f"{label} on {vllm.base_url}",
                )
        with timer("copy"):
            written = transport.place(staging, new_root, digests)

    swapped = []
    with timer("load"):
        for vllm, base, current_root, strategy in servers:
            if needs_swap(current_root, new_root):
                swap_adapter(
                    vllm,
                    request.slot,
                    new_root,
                    current_root=current_root,
                    strategy=strategy,
                    base_id=base.id,
                )
            swapped.append(
                {
                    "replica": vllm.base_url,
                    "previous_root": current_root,
                    "root": new_root,
                    "strategy": str(strategy) if needs_swap(current_root, new_root) else "none",
                }
            )

    with timer("verify"):
        for vllm, _, _, _ in servers:
            card = vllm.adapters().get(request.slot)
            if card is None or card.root != new_root:
                raise PermanentError(
                    f"vLLM at {vllm.base_url} does not serve {request.slot!r} from {new_root}",
                    hint="run the step again; check the vLLM log if it repeats",
                )
            result.checks.append(
                Check(name=f"served:{vllm.base_url}", passed=True, detail=f"root={card.root}")
            )

    result.details = {
        "adapter_path": new_root,
        "files_written": written,
        "replicas": swapped,
        "rank": info.rank,
        "base_model": info.base_model,
        "bytes": info.total_bytes,
    }
    return result
