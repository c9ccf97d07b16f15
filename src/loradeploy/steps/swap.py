"""Replace the adapter behind a slot name on one replica, verify it, or put it back.

``swap_adapter`` either leaves the replica serving the new folder (verified) or raises;
when it raises, the previous folder has been put back, or the error is a
``PartialRolloutError`` that says what the replica is left on. ``restore`` does the
putting back and keeps trying until its deadline: a failure there is never silent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loradeploy.clients.vllm import VllmClient
from loradeploy.domain.swap import SwapStrategy, needs_swap
from loradeploy.errors import (
    LeftReplica,
    LoraDeployError,
    NotFoundError,
    PartialRolloutError,
    PermanentError,
    ServerUnavailableError,
)


@dataclass(frozen=True)
class Patience:
    """How long a swap waits for its server, in seconds, and the clock it waits on.

    ``verify_s``: from a load answered 200 to the slot listed with the new folder (vLLM
    lists it at once; the margin is for a busy server). ``unknown_load_s``: a load that got
    no answer (timeout, dropped connection) may still complete on the server, so its
    outcome is watched on ``/v1/models`` this long before the old folder is put back;
    the client already waited its 30 s read timeout, and a CPU load of a small adapter
    takes about a second. ``restore_s``: putting the old folder back is retried this long
    (a vLLM restart takes about 25 s on the local stack). ``retry_every_s``: the pause
    between two looks or tries.
    """

    verify_s: float = 30.0
    unknown_load_s: float = 30.0
    restore_s: float = 60.0
    retry_every_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


DEFAULT_PATIENCE = Patience()


def swap_adapter(
    vllm: VllmClient,
    slot: str,
    new_root: str,
    *,
    current_root: str | None,
    strategy: SwapStrategy,
    base_id: str,
    patience: Patience = DEFAULT_PATIENCE,
) -> None:
    """Serve ``new_root`` under ``slot``; on failure, put ``current_root`` back.

    After the swap: the slot lists ``new_root``, ``/health`` is 200 and the base model
    is still the one it was. Nothing is called when the slot already serves ``new_root``.
    Raises the swap's error once the replica serves ``current_root`` again, or a
    ``PartialRolloutError`` (from the swap's error) when it could not be put back.
    """
    if not needs_swap(current_root, new_root):
        return
    try:
        _replace(vllm, slot, new_root, current_root, strategy, patience)
        verify_served(vllm, slot, new_root, base_id, timeout=patience.verify_s)
    except LoraDeployError as exc:
        left = restore(vllm, slot, current_root, patience=patience)
        if left is not None:
            raise left_behind([left], exc) from exc
        raise


def _replace(
    vllm: VllmClient,
    slot: str,
    new_root: str,
    current_root: str | None,
    strategy: SwapStrategy,
    patience: Patience,
) -> None:
    try:
        if current_root is None:
            vllm.load_lora_adapter(slot, new_root)
        elif strategy is SwapStrategy.INPLACE:
            vllm.load_lora_adapter(slot, new_root, load_inplace=True)
        else:
            with contextlib.suppress(NotFoundError):  # evicted meanwhile: nothing to remove
                vllm.unload_lora_adapter(slot)
            vllm.load_lora_adapter(slot, new_root)
    except ServerUnavailableError:
        # No usable answer, so vLLM may still complete the load. Putting the old folder
        # back now would find it still listed, do nothing, and the late load would win.
        await_load(vllm, slot, new_root, patience)
        raise


def await_load(vllm: VllmClient, slot: str, new_root: str, patience: Patience) -> bool:
    """Watch ``/v1/models`` until ``slot`` lists ``new_root`` or ``unknown_load_s`` ends;
    True when the load showed up. An unreachable server is looked at again until then."""
    deadline = patience.clock() + patience.unknown_load_s
    while True:
        with contextlib.suppress(LoraDeployError):
            card = vllm.adapters().get(slot)
            if card is not None and card.root == new_root:
                return True
        if patience.clock() >= deadline:
            return False
        patience.sleep(patience.retry_every_s)


def verify_served(vllm: VllmClient, slot: str, root: str, base_id: str, *, timeout: float = 30.0) -> None:
    vllm.wait_until_model_available(slot, timeout, root=root)
    vllm.ensure_healthy()
    base = vllm.base_model()
    if base.id != base_id:
        raise PermanentError(
            f"vLLM at {vllm.base_url} now serves base {base.id!r}, expected {base_id!r}",
            hint="stop deploying; the server changed underneath this step",
        )


def restore(
    vllm: VllmClient, slot: str, root: str | None, *, patience: Patience = DEFAULT_PATIENCE
) -> LeftReplica | None:
    """Serve ``root`` under ``slot`` again (nothing, when it was empty), checked by reading
    ``/v1/models`` back, and retried until ``restore_s`` ends.

    Returns None once the replica serves ``root``; otherwise what it is left on (the
    last answer seen; ``known`` False when it never answered).
    """
    deadline = patience.clock() + patience.restore_s
    seen: str | None = None
    known = False
    while True:
        try:
            seen, known = _served_root(vllm, slot), True
            if seen == root:
                return None
            if root is None:
                with contextlib.suppress(NotFoundError):  # gone meanwhile: as wanted
                    vllm.unload_lora_adapter(slot)
            else:
                vllm.load_lora_adapter(slot, root, load_inplace=seen is not None)
            seen = _served_root(vllm, slot)
            if seen == root:
                return None
        except LoraDeployError:
            pass  # tried again until the deadline; what it is left on is reported then
        if patience.clock() >= deadline:
            return LeftReplica(vllm.base_url, slot, seen, root, known)
        patience.sleep(patience.retry_every_s)


def _served_root(vllm: VllmClient, slot: str) -> str | None:
    card = vllm.adapters().get(slot)
    return card.root if card is not None else None


def left_behind(left: Sequence[LeftReplica], cause: LoraDeployError) -> PartialRolloutError:
    """The error for a rollout that failed with ``cause`` and could not undo itself."""
    return PartialRolloutError(
        f"{cause.message}; putting the previous folder back failed, so replicas differ: "
        + "; ".join(replica.describe() for replica in left),
        left=left,
    )
