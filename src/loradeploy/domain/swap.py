"""Choosing how to replace the adapter behind a slot name."""

from __future__ import annotations

import re
from enum import StrEnum


class SwapStrategy(StrEnum):
    AUTO = "auto"
    INPLACE = "inplace"
    UNLOAD_LOAD = "unload-load"


# vLLM 0.33.0 fixed issue 33791: before it, an in-place load stays marked in-place and
# the adapter is re-read from disk on every engine step.
INPLACE_FIXED_IN = (0, 33, 0)


_LEADING_DIGITS = re.compile(r"[0-9]*")


def parse_version(text: str) -> tuple[int, int, int]:
    """Major, minor, patch: the leading digits of each part ("0.32rc1" is 0.32.0, not 0.321)."""
    parts: list[int] = []
    for piece in text.split("+")[0].split(".")[:3]:
        match = _LEADING_DIGITS.match(piece)
        digits = match.group() if match else ""
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def choose_strategy(requested: SwapStrategy, server_version: str) -> SwapStrategy:
    """Resolve ``auto``: in-place (no window where the name is missing) wherever the
    server's in-place load is free of the re-read-every-step defect, else unload-load."""
    if requested is not SwapStrategy.AUTO:
        return requested
    if parse_version(server_version) >= INPLACE_FIXED_IN:
        return SwapStrategy.INPLACE
    return SwapStrategy.UNLOAD_LOAD


def needs_swap(current_root: str | None, new_root: str) -> bool:
    """Nothing to do when the slot already serves exactly this folder."""
    return current_root != new_root
