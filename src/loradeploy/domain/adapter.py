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
from typing import Any, TypeGuard

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


class _KeyTwice(ValueError):
    """A JSON object names a key twice (readers disagree on which value counts)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _KeyTwice(key)
        found[key] = value
    return found


def _parse_json(folder: Path, field: str, text: str) -> Any:
    """``json.loads`` with every failure an InvalidAdapterError naming ``field``."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise _fail(folder, field, f"is not valid JSON ({exc})") from exc
    except RecursionError as exc:  # a nesting bomb
        raise _fail(folder, field, "is nested too deeply to be JSON from PEFT") from exc
    except _KeyTwice as exc:
        raise _fail(folder, field, f"names {short_repr(exc.key, 160)} twice") from exc
    except ValueError as exc:  # int() refuses more than 4300 digits
        raise _fail(folder, field, "holds a number too long to read") from exc


def _read_config(folder: Path, size: int) -> dict[str, Any]:
    if size > MAX_CONFIG_BYTES:
        raise _fail(folder, CONFIG_FILE, f"is {size} bytes, above {MAX_CONFIG_BYTES}")
    try:
        text = (folder / CONFIG_FILE).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(folder, CONFIG_FILE, f"is not valid JSON ({exc})") from exc
    config = _parse_json(folder, CONFIG_FILE, text)
    if not isinstance(config, dict):
        raise _fail(folder, CONFIG_FILE, "must hold a JSON object")
    return config


def _check_config(folder: Path, config: Mapping[str, Any]) -> tuple[str, int, float, list[str]]:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise _fail(folder, "peft_type", f"is {peft_type!r}, expected 'LORA'")
    rank = config.get("r")
    if not _is_int(rank) or not 1 <= rank <= MAX_SANE_RANK:
        raise _fail(folder, "r", f"is {short_repr(rank)}, expected an integer from 1 to {MAX_SANE_RANK}")
    if config.get("rank_pattern"):  # PEFT writes {} when every module has rank r
        raise _fail(
            folder,
            "rank_pattern",
            f"is {short_repr(config['rank_pattern'])}, expected empty: every LoRA tensor, and "
            "the server's --max-lora-rank, is checked against r",
        )
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
        raise _fail(folder, "base_model_name_or_path", f"is {short_repr(base)}, expected the base model name")
    return base, rank, float(alpha), sorted(targets)


def _is_int(value: object) -> TypeGuard[int]:
    """A JSON integer: ``int`` but not ``bool`` (``True`` is an int in Python, not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _read_header(folder: Path, size: int) -> tuple[dict[str, Any], int]:
    """The safetensors header as a JSON object, and the length of the data after it."""
    with (folder / WEIGHTS_FILE).open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _fail(folder, WEIGHTS_FILE, "is shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise _fail(folder, WEIGHTS_FILE, f"header claims {header_len} bytes, file too short")
        raw = handle.read(header_len)
    try:
        # Strictly UTF-8, as the format says: json.loads on bytes would also take UTF-16/32.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(folder, WEIGHTS_FILE, "header is not valid JSON (not UTF-8)") from exc
    header = _parse_json(folder, f"{WEIGHTS_FILE} header", text)
    if not isinstance(header, dict):
        raise _fail(folder, WEIGHTS_FILE, "header must be a JSON object")
    return header, size - 8 - header_len


def _check_metadata(folder: Path, metadata: object) -> None:
    """``__metadata__`` is a map of strings to strings, as the safetensors format says."""
    if not isinstance(metadata, dict):
        raise _fail(
            folder, WEIGHTS_FILE, f"__metadata__ is {short_repr(metadata)}, expected an object of strings"
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _fail(
                folder,
                WEIGHTS_FILE,
                f"__metadata__ value for {short_repr(key)} is {short_repr(value)}, expected a string",
            )


def _byte_count(shape: list[int], item_bytes: int, limit: int) -> int | None:
    """Bytes a tensor of ``shape`` needs; None when that is above ``limit`` (stops early:
    a hostile shape of a million dimensions must not build a number of a million digits)."""
    if 0 in shape:
        return 0
    count = item_bytes
    for dim in shape:
        count *= dim
        if count > limit:
            return None
    return count


def _check_tensor(folder: Path, label: str, entry: object, data_len: int) -> tuple[list[int], int, int]:
    """One header entry: a known dtype, a shape of non-negative integers, and data offsets
    inside the data section that hold exactly the bytes dtype and shape need."""

    def fail(problem: str) -> InvalidAdapterError:
        return _fail(folder, WEIGHTS_FILE, f"{label} {problem}")

    if not isinstance(entry, dict):
        raise fail("entry is not an object with dtype, shape and data_offsets")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise fail(f"has no {key}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        raise fail(f"dtype {short_repr(dtype)} is not a safetensors dtype")
    if not isinstance(shape, list):
        raise fail(f"shape {short_repr(shape)} is not a list")
    for dim in shape:
        if not _is_int(dim):
            raise fail(
                f"shape {short_repr(shape)} has a dimension that is not an integer ({short_repr(dim)})"
            )
        if dim < 0:
            raise fail(f"shape {short_repr(shape)} has a negative dimension ({short_repr(dim)})")
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise fail(f"data_offsets {short_repr(offsets)} is not a pair [begin, end]")
    begin, end = offsets
    if not (_is_int(begin) and _is_int(end)):
        raise fail(f"data_offsets {short_repr(offsets)} are not integers")
    if begin < 0 or end < 0:
        raise fail(f"data_offsets {short_repr(offsets)} are negative")
    if end < begin:
        raise fail(f"data_offsets {short_repr(offsets)} end before they begin")
    if end > data_len:
        raise fail(f"data_offsets {short_repr(offsets)} lie beyond the {data_len} bytes of tensor data")
    needed = _byte_count(shape, _DTYPE_BYTES[dtype], data_len)
    if needed != end - begin:
        need = f"{needed} bytes" if needed is not None else f"more than the {data_len} bytes of tensor data"
        raise fail(f"holds {end - begin} bytes but needs {need} ({dtype} {short_repr(shape)})")
    return shape, begin, end


# PEFT saves a LoRA pair as nn.Linear weights: lora_A maps in_features to r, so its weight
# is [r, in_features]; lora_B maps r to out_features: [out_features, r].
_LORA_RANK_AXIS = {"lora_A": (0, "[r, in_features]"), "lora_B": (1, "[out_features, r]")}


def _check_lora_shape(folder: Path, label: str, name: str, shape: list[int], rank: int) -> bool:
    """True if ``name`` is a lora_A/lora_B tensor, after checking it is a matrix with the
    config's ``r`` on its rank axis (a name holding both is checked as both)."""
    is_lora = False
    for kind, (axis, form) in _LORA_RANK_AXIS.items():
        if kind not in name:
            continue
        is_lora = True
        if len(shape) != 2:
            problem = f"is {len(shape)}-dimensional {short_repr(shape)}, expected a {kind} matrix {form}"
        elif shape[axis] != rank:
            problem = f"has {shape[axis]} on its rank axis, config r={rank} ({kind} is {form})"
        elif 0 in shape:
            problem = f"has an empty axis {shape}"
        else:
            continue
        raise _fail(folder, WEIGHTS_FILE, f"{label} {problem}")
    return is_lora


def _check_pairs(folder: Path, lora_names: list[str]) -> None:
    """Every lora_A has the lora_B of the same module, and the other way round (PEFT
    always saves both; a server would be handed half a module)."""
    present = set(lora_names)
    for name in lora_names:
        for kind, other in (("lora_A", "lora_B"), ("lora_B", "lora_A")):
            partner = name.replace(kind, other)
            if kind in name and partner not in present:
                problem = f"has no matching {other} tensor {short_repr(partner, 160)}"
                raise _fail(folder, WEIGHTS_FILE, f"tensor {short_repr(name, 160)} {problem}")


def _check_safetensors(folder: Path, size: int, rank: int) -> None:
    """Check the header entry by entry, and that the tensors' data covers the file exactly."""
    header, data_len = _read_header(folder, size)
    spans: list[tuple[int, int, str]] = []
    lora_names: list[str] = []
    for name, entry in header.items():
        if name == "__metadata__":
            _check_metadata(folder, entry)
            continue
        label = f"tensor {short_repr(name, 160)}"
        shape, begin, end = _check_tensor(folder, label, entry, data_len)
        if _check_lora_shape(folder, label, name, shape, rank):
            lora_names.append(name)
        spans.append((begin, end, label))
    if not lora_names:
        raise _fail(folder, WEIGHTS_FILE, "holds no lora_A/lora_B tensors")
    _check_pairs(folder, lora_names)
    position, previous = 0, ""
    for begin, end, label in sorted(spans):
        if begin < position:
            raise _fail(folder, WEIGHTS_FILE, f"{label} overlaps the data of {previous}")
        if begin > position:
            raise _fail(
                folder, WEIGHTS_FILE, f"bytes {position}..{begin} before {label} belong to no tensor (a gap)"
            )
        position, previous = end, label
    if position != data_len:
        raise _fail(
            folder, WEIGHTS_FILE, f"{data_len - position} bytes after the last tensor belong to no tensor"
        )


def inspect_adapter(folder: Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> AdapterInfo:
    """Validate ``folder`` as a PEFT LoRA adapter vLLM can serve, and describe it (the
    sha256 of every file, read once)."""
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


def check_digests(
    folder: Path, expected: Mapping[str, str], label: str, *, computed: Mapping[str, str] | None = None
) -> None:
    """Every file present and equal to the registry's sha256 tags, and nothing else.

    ``computed``: the digests ``inspect_adapter`` just took of this folder's files, in
    this process; compared instead of hashing the same bytes a second time."""
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
        got = computed[name] if computed is not None and name in computed else sha256_file(actual[name])
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
