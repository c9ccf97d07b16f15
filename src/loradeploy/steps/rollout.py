"""Serve one folder under one slot name on every replica, all or nothing.

Replicas are changed in parallel (bounded). If any replica fails to load or verify, the
replicas already changed get their previous folder back and the error is raised; the
caller then leaves the aliases untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from loradeploy.clients.vllm import ModelCard, VllmClient
from loradeploy.domain.swap import SwapStrategy, asks_server_version, choose_strategy, needs_swap
from loradeploy.errors import LoraDeployError
from loradeploy.steps.swap import restore, swap_adapter

MAX_PARALLEL = 4


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


def roll_out(replicas: Sequence[Replica], slot: str, new_root: str) -> list[dict[str, object]]:
    """Swap ``slot`` to ``new_root`` everywhere, or nowhere."""

    def one(replica: Replica) -> str:
        if not needs_swap(replica.current_root, new_root):
            return "none"
        swap_adapter(
            replica.vllm,
            slot,
            new_root,
            current_root=replica.current_root,
            strategy=replica.strategy,
            base_id=replica.base.id,
        )
        return str(replica.strategy)

    outcomes: list[str | LoraDeployError] = []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(len(replicas), 1))) as pool:
        futures = [pool.submit(one, replica) for replica in replicas]
        for future in futures:
            try:
                outcomes.append(future.result())
            except LoraDeployError as exc:
                outcomes.append(exc)
    failures = [o for o in outcomes if isinstance(o, LoraDeployError)]
    if failures:
        changed = [r for r, o in zip(replicas, outcomes, strict=True) if isinstance(o, str) and o != "none"]
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
            list(pool.map(lambda r: restore(r.vllm, slot, r.current_root), changed))
        raise failures[0]
    return [
        {
            "replica": replica.vllm.base_url,
            "previous_root": replica.current_root,
            "root": new_root,
            "strategy": outcome,
        }
        for replica, outcome in zip(replicas, outcomes, strict=True)
    ]
