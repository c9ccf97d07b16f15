"""Put one registered version behind one slot on every replica (shared by load-adapter,
promote-adapter and reconcile).

Download and validate the files (PEFT LoRA, rank, base model, sha256 against the
registry's tags), place them in a new folder per version, swap the slot on every
replica (all or nothing), verify ``/v1/models`` lists the slot with the new folder as
``root`` and ``/health`` is still 200. Nothing reaches a server before validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper, VersionInfo
from loradeploy.domain.adapter import (
    DEFAULT_MAX_TOTAL_BYTES,
    TAG_PREFIX,
    AdapterInfo,
    check_compatible,
    check_digests,
    check_file_names,
    inspect_adapter,
)
from loradeploy.domain.layout import version_dir
from loradeploy.domain.signing import TrustPolicy, Verdict
from loradeploy.errors import InvalidAdapterError, PermanentError
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.rollout import Replica, roll_out
from loradeploy.steps.sign import check_signature


def required_digests(version: VersionInfo) -> dict[str, str]:
    digests = version.file_digests()
    if not digests:
        raise InvalidAdapterError(
            f"model {version.model!r} version {version.version} has no loradeploy.sha256.* tags",
            hint="register adapters with 'loradeploy register' so their files can be verified",
        )
    check_file_names(digests, f"model {version.model!r} version {version.version}: the sha256 tags")
    return digests


def check_recorded_size(version: VersionInfo, max_adapter_bytes: int) -> None:
    """Refuse before downloading when the size recorded at registration is above the cap.

    The files' real sizes are checked again after the download, before anything is hashed
    or placed (``inspect_adapter``), so a tag that lies does not get a large file through.
    """
    recorded = version.tags.get(f"{TAG_PREFIX}bytes", "")
    if (
        recorded.isascii()
        and recorded.isdigit()
        and (len(recorded) > 18 or int(recorded) > max_adapter_bytes)
    ):
        raise InvalidAdapterError(
            f"model {version.model!r} version {version.version} is {recorded} bytes, above the "
            f"{max_adapter_bytes}-byte limit for an adapter; nothing was downloaded",
            hint="register a smaller adapter, or raise the limit with LORADEPLOY_MAX_ADAPTER_BYTES",
        )


def fetch_and_place(
    version: VersionInfo,
    *,
    slot: str,
    registry: MLflowHelper,
    transport: AdapterTransport,
    served_names: Sequence[Sequence[str]],
    base_model_aliases: Mapping[str, str],
    max_lora_rank: int,
    timer: Timer,
    max_adapter_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    trust: TrustPolicy | None = None,
) -> tuple[str, AdapterInfo, bool, Verdict]:
    """Download, check the signature against ``trust``, validate and place one version;
    returns (server path, info, written, what the signature check found)."""
    digests = required_digests(version)
    check_recorded_size(version, max_adapter_bytes)
    label = f"model {version.model!r} version {version.version}"
    new_root = version_dir(transport.root, slot, version.model, version.version)
    with transport.staging() as staging:
        with timer("download"):
            registry.download_adapter(version.model, version.version, staging)
        with timer("signature"):  # first: the signature artifact leaves the folder here
            verdict = check_signature(version, staging, trust)
        with timer("validate"):
            info = inspect_adapter(staging, max_total_bytes=max_adapter_bytes)
            check_digests(staging, digests, label)
            for names in served_names:
                check_compatible(
                    info,
                    served_names=names,
                    base_aliases=base_model_aliases,
                    max_lora_rank=max_lora_rank,
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
    base_model_aliases: Mapping[str, str],
    max_lora_rank: int,
    result: StepResult,
    max_adapter_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    trust: TrustPolicy | None = None,
) -> str:
    """Serve ``version`` under ``slot`` on every replica; returns the served folder."""
    timer = Timer(result.timings_s)
    new_root, info, written, signature = fetch_and_place(
        version,
        slot=slot,
        registry=registry,
        transport=transport,
        served_names=[r.served_names for r in replicas],
        base_model_aliases=base_model_aliases,
        max_lora_rank=max_lora_rank,
        timer=timer,
        max_adapter_bytes=max_adapter_bytes,
        trust=trust,
    )
    with timer("load"):
        swapped = roll_out(replicas, slot, new_root)
    with timer("verify"):
        for replica in replicas:
            card = replica.vllm.adapters().get(slot)
            if card is None or card.root != new_root:
                raise PermanentError(
                    f"vLLM at {replica.vllm.base_url} does not serve {slot!r} from {new_root}",
                    hint="run the step again; check the vLLM log if it repeats",
                )
            result.checks.append(
                Check(name=f"served:{replica.vllm.base_url}", passed=True, detail=f"root={card.root}")
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
