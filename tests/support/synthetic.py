"""Write synthetic but valid PEFT LoRA adapter folders without torch.

The weights are deterministic bytes in a well-formed safetensors file: good enough for
validation, registry and copy tests (and for sizing benchmarks), useless for inference.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def adapter_config(base: str = SMOLLM2, rank: int = 16, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": 32,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "use_dora": False,
        "modules_to_save": None,
        "task_type": "CAUSAL_LM",
    }
    config.update(overrides)
    return config


def safetensors_bytes(tensors: dict[str, tuple[int, ...]], fill: int = 7) -> bytes:
    """F32 tensors of the given shapes, filled with a repeating byte pattern."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    payload = bytes((i * fill) % 251 for i in range(min(offset, 4096)))
    body = (payload * (offset // max(len(payload), 1) + 1))[:offset]
    return struct.pack("<Q", len(raw)) + raw + body


def lora_tensors(rank: int = 16, hidden: int = 576, layers: int = 2) -> dict[str, tuple[int, ...]]:
    tensors: dict[str, tuple[int, ...]] = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (rank, hidden)
            tensors[f"{prefix}.lora_B.weight"] = (hidden, rank)
    return tensors


def write_adapter(
    folder: Path,
    *,
    config: dict[str, Any] | None = None,
    rank: int = 16,
    layers: int = 2,
    fill: int = 7,
) -> Path:
    """A complete adapter folder (config + safetensors weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else adapter_config(rank=rank)
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    weights = safetensors_bytes(lora_tensors(rank=cfg.get("r", rank), layers=layers), fill=fill)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder
