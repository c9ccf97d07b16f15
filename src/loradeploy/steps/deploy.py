"""Put one registered version behind one slot on every replica (shared by load-adapter,
promote-adapter and reconcile).

Download and validate the files (PEFT LoRA, rank, base model, sha256 against the
registry's tags), place them in a new folder per version, swap the slot on every
replica (all or nothing), verify ``/v1/models`` lists the slot with the new folder as
``root`` and ``/health`` is still 200. Nothing reaches a server before validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loradeploy.clients.disk import require_free
from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper, VersionInfo
from loradeploy.domain.adapter import (
    AdapterInfo,
    check_compatible,
    check_digests,
    check_file_names,
    inspect_adapter,
)
from loradeploy.domain.layout import version_dir
from loradeploy.domain.listing import BYTES_TAG, check_listing
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.signing import Verdict
from loradeploy.domain.smoke import RECORDED_BESIDE
from loradeploy.errors import InvalidAdapterError
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.rollout import Replica, roll_out, strategy_warnings
from loradeploy.steps.sign import check_signature, signature_artifacts
from loradeploy.steps.swap import DEFAULT_PATIENCE, Patience


def required_digests(version: VersionInfo) -> dict[str, str]:
    digests = version.file_digests()
    if not digests:
        raise InvalidAdapterError(
            f"model {version.model!r} version {version.version} has no loradeploy.sha256.* tags",
            hint="register adapters with 'loradeploy register' so their files can be verified",
        )
    check_file_names(digests, f"model {version.model!r} version {version.version}: the sha256 tags")
    return digests


def fetch_and_place(
    version: VersionInfo,
    *,
    slot: str,
    registry: MLflowHelper,
    transport: AdapterTransport,
    served_names: Sequence[Sequence[str]],
    policy: AdapterPolicy,
    timer: Timer,
) -> tuple[str, AdapterInfo, bool, Verdict]:
    """Download, check the signature against ``policy.trust``, validate against the rest
    of ``policy`` and place one version; returns (server path, info, written, what the
    signature check found)."""
    digests = required_digests(version)
    label = f"model {version.model!r} version {version.version}"
    with timer("list"):  # the size is known and checked before any byte is downloaded
        files = check_listing(
            registry.list_adapter_files(version.model, version.version),
            digests=digests,
            recorded=version.tags.get(BYTES_TAG),
            max_bytes=policy.max_adapter_bytes,
            label=label,
            beside=signature_artifacts(version),
            ignored=RECORDED_BESIDE,
        )
    new_root = version_dir(transport.root, slot, version.model, version.version)
    with transport.staging() as staging:
        with timer("download"):
            require_free(staging.parent, sum(files.values()), f"download of {label}")
            registry.download_adapter(
                version.model,
                version.version,
                staging,
                files=files,
                max_bytes=policy.max_adapter_bytes + sum(signature_artifacts(version).values()),
            )
        with timer("signature"):  # first: the signature artifact leaves the folder here
            verdict = check_signature(version, staging, policy.trust)
        with timer("validate"):
            # One sha256 pass over the files MLflow's download wrote (inspect_adapter's),
            # compared with the registry's tags; placing hashes the copy again.
            info = inspect_adapter(staging, max_total_bytes=policy.max_adapter_bytes)
            check_digests(staging, digests, label, computed=info.files)
            for names in served_names:
                check_compatible(
                    info,
                    served_names=names,
                    base_aliases=policy.base_model_aliases,
                    max_lora_rank=policy.max_lora_rank,
                    label=label,
                )
        with timer("copy"):
            written = transport.place(staging, new_root, digests)
    return new_root, info, written, verdict


def deploy_version(
    version: VersionInfo,
    *,
    slot: str,
    replicas: Sequence[Replica],
    registry: MLflowHelper,
    transport: AdapterTransport,
    policy: AdapterPolicy,
    result: StepResult,
    patience: Patience = DEFAULT_PATIENCE,
    guard: Callable[[], None] | None = None,
) -> str:
    """Serve ``version`` under ``slot`` on every replica; returns the served folder.

    Strategy warnings go to ``result.details["warnings"]`` (appended, before the swap).
    """
    timer = Timer(result.timings_s)
    new_root, info, written, signature = fetch_and_place(
        version,
        slot=slot,
        registry=registry,
        transport=transport,
        served_names=[r.served_names for r in replicas],
        policy=policy,
        timer=timer,
    )
    if warnings := strategy_warnings(replicas):
        result.details.setdefault("warnings", []).extend(warnings)
    # Swap, verify every replica again, and on any failure put every replica back.
    swapped = roll_out(replicas, slot, new_root, patience=patience, timer=timer, guard=guard)
    for row in swapped:
        result.checks.append(
            Check(name=f"served:{row['replica']}", passed=True, detail=f"root={row['root']}")
        )
    result.details.update(
        {
            "adapter_path": new_root,
            "files_written": written,
            "replicas": swapped,
            "rank": info.rank,
            "base_model": info.base_model,
            "bytes": info.total_bytes,
            "signature": signature.as_dict(),
        }
    )
    return new_root
