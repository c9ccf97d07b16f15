"""Serve one folder under one slot name on every replica, all or nothing.

Replicas are swapped in parallel (bounded), each verified (``steps.swap``); then every
replica is read once more, so a replica that changed while the others were swapped is
caught. If any replica fails, in either phase, every replica gets its previous folder
back (``restore``, retried to a deadline) and the first error is raised; the caller
then leaves the aliases untouched. A replica that cannot be put back turns the error
into a ``PartialRolloutError`` (exit 75) that names it and what it serves, and the
caller's ``result.json`` lists it, so a rerun or ``reconcile`` repairs it.

Not done: a first phase that loads the new folder under a scratch name on every replica
before any slot changes. It would find a refusal before the replicas differ, but it
holds a third adapter name on servers sized for two (``--max-loras 2``), the setting
under which unload-then-load once killed the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from loradeploy.clients.vllm import ModelCard, VllmClient
from loradeploy.domain.swap import SwapStrategy, asks_server_version, choose_strategy, needs_swap
from loradeploy.errors import LeftReplica, LoraDeployError, PartialRolloutError, PermanentError, short
from loradeploy.results import Timer
from loradeploy.steps.swap import DEFAULT_PATIENCE, Patience, left_behind, restore, swap_adapter

MAX_PARALLEL = 4

_T = TypeVar("_T")


@dataclass(frozen=True)
class Replica:
    """One server, as found before anything changed."""

    vllm: VllmClient
    base: ModelCard
    current_root: str | None
    strategy: SwapStrategy
    warning: str | None = None  # about the strategy on this server's version

    @property
    def served_names(self) -> tuple[str, ...]:
        """The base model's served id, then its path on the server."""
        return (self.base.id, self.base.root) if self.base.root else (self.base.id,)


def inspect_replicas(clients: Sequence[VllmClient], slot: str, requested: SwapStrategy) -> list[Replica]:
    """Check every replica is healthy and record what its slot serves now."""

    def one(vllm: VllmClient) -> Replica:
        vllm.ensure_healthy()
        base = vllm.base_model()
        current = vllm.adapters().get(slot)
        version = vllm.server_version() if asks_server_version(requested) else None
        choice = choose_strategy(requested, version)
        return Replica(vllm, base, current.root if current else None, choice.strategy, choice.warning)

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(len(clients), 1))) as pool:
        return list(pool.map(one, clients))


def strategy_warnings(replicas: Sequence[Replica]) -> list[str]:
    """The strategy warnings, once each, in replica order."""
    return list(dict.fromkeys(r.warning for r in replicas if r.warning))


def roll_out(
    replicas: Sequence[Replica],
    slot: str,
    new_root: str,
    *,
    patience: Patience = DEFAULT_PATIENCE,
    timer: Timer | None = None,
    guard: Callable[[], None] | None = None,
) -> list[dict[str, object]]:
    """Swap ``slot`` to ``new_root`` everywhere, or nowhere; one row per replica.

    ``guard`` runs right before each replica's swap: the model's lease check
    (``Lease.ensure_held``), so a run that lost the lock changes no replica; what it
    raises counts as that replica's failure, and the replicas already swapped are put
    back. Times the phases "load" and "verify" into ``timer``.
    """
    timer = timer or Timer({})
    with timer("load"):
        swapped = _on_each(replicas, slot, lambda r: _swap(r, slot, new_root, patience, guard))
        if any(isinstance(outcome, LoraDeployError) for outcome in swapped):
            _undo(replicas, slot, swapped, patience)
    with timer("verify"):
        checked = _on_each(replicas, slot, lambda r: _check_serves(r.vllm, slot, new_root))
        if any(isinstance(outcome, LoraDeployError) for outcome in checked):
            _undo(replicas, slot, checked, patience)
    return [
        {
            "replica": replica.vllm.base_url,
            "previous_root": replica.current_root,
            "root": new_root,
            "strategy": outcome,
        }
        for replica, outcome in zip(replicas, swapped, strict=True)
    ]


class NotSwapped(LoraDeployError):
    """Nothing was sent to this replica: the check right before its swap refused (the
    model's lease was lost). Such a replica is never "put back": another deployer may
    have changed it since, and it was not ours to change."""

    def __init__(self, cause: LoraDeployError) -> None:
        super().__init__(cause.message, hint=cause.hint)
        self.cause = cause
        self.exit_code = cause.exit_code


def _swap(
    replica: Replica, slot: str, new_root: str, patience: Patience, guard: Callable[[], None] | None
) -> str:
    if not needs_swap(replica.current_root, new_root):
        return "none"
    if guard is not None:
        try:
            guard()
        except LoraDeployError as exc:
            raise NotSwapped(exc) from exc
    swap_adapter(
        replica.vllm,
        slot,
        new_root,
        current_root=replica.current_root,
        strategy=replica.strategy,
        base_id=replica.base.id,
        patience=patience,
    )
    return str(replica.strategy)


def _check_serves(vllm: VllmClient, slot: str, new_root: str) -> None:
    card = vllm.adapters().get(slot)
    if card is None or card.root != new_root:
        raise PermanentError(
            f"vLLM at {vllm.base_url} does not serve {slot!r} from {new_root} at the final check "
            f"(it serves {card.root if card else 'nothing'}): it changed while the others were swapped",
            hint="run the step again; check that no other deployer or a vLLM restart touched it",
        )


def _undo(
    replicas: Sequence[Replica],
    slot: str,
    outcomes: Sequence[object],
    patience: Patience,
) -> NoReturn:
    """Put every replica this run changed back, then raise the first failure among
    ``outcomes`` (or a ``PartialRolloutError`` naming the replicas that could not be put
    back). A replica it never sent a change to (``"none"``, ``NotSwapped``) is left alone."""
    failures = [
        o.cause if isinstance(o, NotSwapped) else o for o in outcomes if isinstance(o, LoraDeployError)
    ]
    cause = next((f for f in failures if not isinstance(f, PartialRolloutError)), failures[0])
    if isinstance(cause, PartialRolloutError) and isinstance(cause.__cause__, LoraDeployError):
        cause = cause.__cause__  # the swap's own error, before its put-back failed
    # A replica whose put-back already ran out of time is not tried a second time.
    skip = (PartialRolloutError, NotSwapped)
    again = [r for r, o in zip(replicas, outcomes, strict=True) if not isinstance(o, skip) and o != "none"]
    restored = iter(_on_each(again, slot, lambda r: restore(r.vllm, slot, r.current_root, patience=patience)))
    left: list[LeftReplica] = []
    for replica, outcome in zip(replicas, outcomes, strict=True):
        if isinstance(outcome, PartialRolloutError):
            left.extend(outcome.left)
            continue
        if isinstance(outcome, NotSwapped) or outcome == "none":
            continue
        result = next(restored)
        if isinstance(result, LeftReplica):
            left.append(result)
        elif isinstance(result, LoraDeployError):  # restore itself broke: nothing is known
            left.append(LeftReplica(replica.vllm.base_url, slot, None, replica.current_root, known=False))
    if left:
        raise left_behind(left, cause) from cause
    raise cause


def _on_each(
    replicas: Sequence[Replica], slot: str, action: Callable[[Replica], _T]
) -> list[_T | LoraDeployError]:
    """Run ``action`` on every replica in parallel; each one's failure is its result."""

    def guarded(replica: Replica) -> _T | LoraDeployError:
        try:
            return action(replica)
        except LoraDeployError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - catch every failure on one replica so the
            # others are still put back, and translate it here with the replica named
            error = PermanentError(
                f"vLLM at {replica.vllm.base_url}: unexpected {type(exc).__name__} while changing "
                f"slot {slot!r}: {short(str(exc), 120)}",
                hint="the replicas were put back where possible; report this with the log, then rerun",
            )
            error.__cause__ = exc
            return error

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(len(replicas), 1))) as pool:
        return list(pool.map(guarded, replicas))
