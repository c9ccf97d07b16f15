"""Replace the adapter behind a slot name on one replica, then verify it."""

from __future__ import annotations

import contextlib

from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.swap import SwapStrategy, needs_swap
from loradeploy.errors import LoraDeployError, NotFoundError, PermanentError

VERIFY_TIMEOUT_S = 30.0


def swap_adapter(
    vllm: VllmClient,
    slot: str,
    new_root: str,
    *,
    current_root: str | None,
    strategy: SwapStrategy,
    base_id: str,
) -> None:
    """Serve ``new_root`` under ``slot``; on failure, put ``current_root`` back.

    After the swap: the slot lists ``new_root``, ``/health`` is 200 and the base model
    is still the one it was. Nothing is called when the slot already serves ``new_root``.
    """
    if not needs_swap(current_root, new_root):
        return
    try:
        if current_root is None:
            vllm.load_lora_adapter(slot, new_root)
        elif strategy is SwapStrategy.INPLACE:
            vllm.load_lora_adapter(slot, new_root, load_inplace=True)
        else:
            with contextlib.suppress(NotFoundError):  # evicted meanwhile: nothing to remove
                vllm.unload_lora_adapter(slot)
            vllm.load_lora_adapter(slot, new_root)
        verify_served(vllm, slot, new_root, base_id)
    except LoraDeployError:
        restore(vllm, slot, current_root)
        raise


def verify_served(vllm: VllmClient, slot: str, root: str, base_id: str) -> None:
    vllm.wait_until_model_available(slot, VERIFY_TIMEOUT_S, root=root)
    vllm.ensure_healthy()
    base = vllm.base_model()
    if base.id != base_id:
        raise PermanentError(
            f"vLLM at {vllm.base_url} now serves base {base.id!r}, expected {base_id!r}",
            hint="stop deploying; the server changed underneath this step",
        )


def restore(vllm: VllmClient, slot: str, root: str | None) -> None:
    """Best effort: serve ``root`` under ``slot`` again (or nothing, when it was empty)."""
    try:
        served = vllm.adapters().get(slot)
        if root is None:
            if served is not None:
                vllm.unload_lora_adapter(slot)
            return
        if served is not None and served.root == root:
            return
        if served is None:
            vllm.load_lora_adapter(slot, root)
        else:
            vllm.load_lora_adapter(slot, root, load_inplace=True)
    except LoraDeployError:
        # The original error matters more; status/reconcile report and repair drift.
        return
