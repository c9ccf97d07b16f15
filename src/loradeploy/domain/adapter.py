"""Validation of a PEFT LoRA adapter folder, before it is registered or loaded.

Reads files but changes nothing. Every failure names the field and what was expected.
Weights must be safetensors: pickle formats (``.bin``, ``.pt``) can run code when a
server loads them, so they are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from loradeploy.errors import IncompatibleAdapterError, InvalidAdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt")
TAG_PREFIX = "loradeploy."
SHA_TAG_PREFIX = "loradeploy.sha256."
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20  # same bound the safetensors library uses
# The largest adapter loradeploy downloads, validates or places (all files together). A
# LoRA of a 7B model at rank 64 is about 0.2 GB; 4 GiB leaves room for large bases and
# ranks and stops a runaway (or sparse, lying) file before it is hashed or copied.
DEFAULT_MAX_TOTAL_BYTES = 4 << 30
# vLLM's largest --max-lora-rank is 512; a rank far above any server's limit is a broken
# config, not an adapter (it is refused at registration, before any server is asked).
MAX_SANE_RANK = 4096
# A file of an adapter version: one plain name (no separators, NUL, control characters,
# leading dot or dash). Names become registry tag keys, local paths and pod paths.
_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


class AdapterInfo(BaseModel):
    """What the adapter's files say about it."""

    peft_type: str
    base_model: str
    rank: int
    alpha: float
    target_modules: list[str]
    files: dict[str, str]  # file name -> sha256 hex
    total_bytes: int


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_file_names(names: Iterable[str], label: str) -> None:
    """Refuse any name that is not one plain file name (``../x``, ``/etc/x``, ``a\\b``, NUL)."""
    for name in names:
        if not _SAFE_FILE_NAME.fullmatch(name) or ".." in name:
            raise InvalidAdapterError(
                f"{label}: file name {name!r} is not a plain file name",
                hint="an adapter is a flat folder of plainly named files; register it again "
                "from a clean PEFT save_pretrained folder",
            )


def _fail(folder: Path, field: str, problem: str) -> InvalidAdapterError:
    return InvalidAdapterError(f"adapter {folder}: {field} {problem}")


def _list_files(folder: Path, max_total_bytes: int) -> dict[str, int]:
    if folder.is_symlink() or not folder.is_dir():
        raise InvalidAdapterError(
            f"adapter {folder}: not a folder",
            hint="pass the folder that holds adapter_config.json",
        )
    sizes: dict[str, int] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            raise _fail(folder, entry.name, "is not a regular file (links and sub-folders refused)")
        sizes[entry.name] = entry.stat().st_size
    check_file_names(sizes, f"adapter {folder}")
    total = sum(sizes.values())
    if total > max_total_bytes:
        raise _fail(folder, "total size", f"is {total} bytes, above the {max_total_bytes} limit")
    if CONFIG_FILE not in sizes:
        raise InvalidAdapterError(
            f"adapter {folder}: {CONFIG_FILE} missing: not a PEFT adapter folder",
            hint="pass a folder written by PEFT save_pretrained",
        )
    return sizes


def _read_config(folder: Path, size: int) -> dict[str, Any]:
    if size > MAX_CONFIG_BYTES:
        raise _fail(folder, CONFIG_FILE, f"is {size} bytes, above {MAX_CONFIG_BYTES}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # nesting bomb
        raise _fail(folder, CONFIG_FILE, f"is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise _fail(folder, CONFIG_FILE, "must hold a JSON object")
    return config


def _check_config(folder: Path, config: Mapping[str, Any]) -> tuple[str, int, float, list[str]]:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise _fail(folder, "peft_type", f"is {peft_type!r}, expected 'LORA'")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_SANE_RANK:
        raise _fail(folder, "r", f"is {short_repr(rank)}, expected an integer from 1 to {MAX_SANE_RANK}")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise _fail(folder, "lora_alpha", f"is {short_repr(alpha)}, expected a finite number")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _fail(folder, "target_modules", f"is {short_repr(targets)}, expected a list of module names")
    if config.get("use_dora"):
        raise _fail(folder, "use_dora", "is true, expected false (vLLM does not serve DoRA)")
    if config.get("bias", "none") != "none":
        raise _fail(folder, "bias", f"is {config.get('bias')!r}, expected 'none'")
    if config.get("modules_to_save"):
        raise _fail(folder, "modules_to_save", "is set, expected null (vLLM refuses it)")
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise _fail(folder, "base_model_name_or_path", "is empty, expected the base model name")
    return base, rank, float(alpha), sorted(targets)


def _check_safetensors(folder: Path, size: int, rank: int) -> None:
    """Check that the header is well formed and its offsets cover the file exactly."""
    path = folder / WEIGHTS_FILE
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _fail(folder, WEIGHTS_FILE, "is shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise _fail(folder, WEIGHTS_FILE, f"header claims {header_len} bytes, file too short")
        raw = handle.read(header_len)
    try:
        # Strictly UTF-8, as the format says: json.loads on bytes would also take UTF-16/32.
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _fail(folder, WEIGHTS_FILE, "header is not valid JSON (not UTF-8)") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _fail(folder, WEIGHTS_FILE, "header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise _fail(folder, WEIGHTS_FILE, "header must be a JSON object")
    data_len = size - 8 - header_len
    spans: list[tuple[int, int]] = []
    lora_tensors = 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            count = 1
            for dim in shape:
                count *= int(dim)
            expected = count * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(folder, WEIGHTS_FILE, f"tensor {name!r} has a malformed entry") from exc
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len):
            raise _fail(folder, WEIGHTS_FILE, f"tensor {name!r} points outside the file")
        if end - start != expected:
            raise _fail(folder, WEIGHTS_FILE, f"tensor {name!r} size does not match its shape")
        if "lora_A" in name and shape and int(shape[0]) != rank:
            raise _fail(folder, WEIGHTS_FILE, f"tensor {name!r} has rank {shape[0]}, config r={rank}")
        lora_tensors += "lora_A" in name or "lora_B" in name
        spans.append((start, end))
    if lora_tensors == 0:
        raise _fail(folder, WEIGHTS_FILE, "holds no lora_A/lora_B tensors")
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise _fail(folder, WEIGHTS_FILE, "tensor data overlaps or leaves gaps")
        position = end
    if position != data_len:
        raise _fail(folder, WEIGHTS_FILE, "tensor data does not cover the file exactly")


def inspect_adapter(folder: Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> AdapterInfo:
    """Validate ``folder`` as a PEFT LoRA adapter vLLM can serve, and describe it."""
    sizes = _list_files(folder, max_total_bytes)
    config = _read_config(folder, sizes[CONFIG_FILE])
    base, rank, alpha, targets = _check_config(folder, config)
    pickles = [name for name in PICKLE_WEIGHTS if name in sizes]
    if pickles:
        raise _fail(folder, pickles[0], "is a pickle file; only adapter_model.safetensors is accepted")
    if WEIGHTS_FILE not in sizes:
        raise _fail(folder, WEIGHTS_FILE, "is missing: the adapter has no weights")
    _check_safetensors(folder, sizes[WEIGHTS_FILE], rank)
    files = {name: sha256_file(folder / name) for name in sizes}
    return AdapterInfo(
        peft_type="LORA",
        base_model=base,
        rank=rank,
        alpha=alpha,
        target_modules=targets,
        files=files,
        total_bytes=sum(sizes.values()),
    )


def check_compatible(
    info: AdapterInfo,
    *,
    served_names: Sequence[str],
    base_aliases: Mapping[str, str],
    max_lora_rank: int,
    label: str,
) -> None:
    """Refuse an adapter the server would load but serve wrongly, or refuse outright.

    ``served_names`` are the base model's served name (first) and its path on the server.
    ``base_aliases`` maps a base name written in adapters to a served name (for example
    ``mistralai/Mistral-7B-v0.1`` -> ``TheBloke/Mistral-7B-v0.1-AWQ``).
    """
    wanted = base_aliases.get(info.base_model, info.base_model)
    if wanted not in served_names and info.base_model not in served_names:
        raise IncompatibleAdapterError(
            f"{label}: base_model_name_or_path is {info.base_model!r}, expected the served base "
            f"{served_names[0]!r}",
            hint="deploy an adapter trained for the served base, or map the name with "
            "--base-model-alias ADAPTER_BASE=SERVED_BASE if they are the same model",
        )
    if info.rank > max_lora_rank:
        raise IncompatibleAdapterError(
            f"{label}: r is {info.rank}, expected at most the server's --max-lora-rank {max_lora_rank}",
            hint="retrain with a smaller rank or raise --max-lora-rank on the server",
        )


def check_digests(folder: Path, expected: Mapping[str, str], label: str) -> None:
    """Every file present and equal to the registry's sha256 tags, and nothing else."""
    check_file_names(expected, f"{label}: the registry's sha256 tags")
    actual = {e.name: e for e in folder.iterdir()}
    links = sorted(name for name, entry in actual.items() if entry.is_symlink() or not entry.is_file())
    if links:
        raise InvalidAdapterError(
            f"{label}: {links} are not regular files (links and sub-folders refused)",
            hint="remove the folder's links; adapter folders hold plain files only",
        )
    if set(actual) != set(expected):
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        raise InvalidAdapterError(
            f"{label}: files differ from the registry's record (missing {missing}, extra {extra})",
            hint="re-register the adapter with 'loradeploy register'",
        )
    for name, digest in sorted(expected.items()):
        got = sha256_file(actual[name])
        if got != digest:
            raise InvalidAdapterError(
                f"{label}: sha256 of {name} is {got[:12]}…, expected {digest[:12]}… from the registry tags",
                hint="the artifact changed after registration; re-register the adapter",
            )


def short_repr(value: object, limit: int = 60) -> str:
    """``repr`` cut short: a hostile config can hold megabytes in one field."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def registry_tags(info: AdapterInfo) -> dict[str, str]:
    """Version tags that describe an adapter, written by ``loradeploy register``."""
    tags = {
        f"{TAG_PREFIX}base_model": info.base_model,
        f"{TAG_PREFIX}rank": str(info.rank),
        f"{TAG_PREFIX}alpha": str(info.alpha),
        f"{TAG_PREFIX}target_modules": ",".join(info.target_modules),
        f"{TAG_PREFIX}bytes": str(info.total_bytes),
    }
    tags.update({f"{SHA_TAG_PREFIX}{name}": digest for name, digest in info.files.items()})
    return tags


def digests_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """File name -> sha256, read back from version tags."""
    return {
        key.removeprefix(SHA_TAG_PREFIX): value
        for key, value in tags.items()
        if key.startswith(SHA_TAG_PREFIX)
    }
