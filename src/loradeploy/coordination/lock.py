"""``model_lock``: take the model's lease, keep it renewed, finish a plan an interrupted
run left, and release the lease afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from loradeploy.coordination.lease import (
    DEFAULT_LOCK_TTL_S,
    HEARTBEAT_S,
    Actor,
    Heartbeat,
    Identity,
    Lease,
    LeaseStore,
    acquire,
    process_alive,
)
from loradeploy.coordination.plans import AliasRegistry, FinishedPlan, finish_pending
from loradeploy.errors import LoraDeployError


class CoordinatedRegistry(AliasRegistry, Protocol):
    """A registry client with a lease store beside it (``MLflowHelper``, or a fake)."""

    @property
    def leases(self) -> LeaseStore: ...

    def get_model_tags(self, name: str) -> dict[str, str]: ...


@dataclass
class Held:
    """What a step gets while it holds the model: the lease (for alias moves) and the plan
    of an interrupted run that taking the lock finished, if any."""

    lease: Lease
    finished: FinishedPlan = field(default_factory=lambda: FinishedPlan(moves=[]))

    @property
    def release_error(self) -> str | None:
        return self.lease.release_error


@contextmanager
def model_lock(
    registry: CoordinatedRegistry,
    model: str,
    actor: Actor,
    *,
    finish_plan: bool = True,
    ttl_s: float = DEFAULT_LOCK_TTL_S,
    heartbeat_s: float | None = HEARTBEAT_S,
    clock: Callable[[], float] = time.time,
    here: Identity | None = None,
    alive: Callable[[int, str], bool] = process_alive,
) -> Iterator[Held]:
    """Hold the model's deployment lock; fail fast, naming the holder, when it is taken.

    Taking it finishes an alias plan an interrupted run left behind (``finish_plan``;
    only ``unlock --abandon-plan`` skips that). After the block, ``release_error`` says if
    the lease could not be released (it then expires by itself).
    """
    registry.get_model_tags(model)  # an unknown model fails here, before any lock object exists
    lease = acquire(registry.leases, model, actor, ttl_s=ttl_s, clock=clock, here=here, alive=alive)
    held = Held(lease=lease)
    try:
        if heartbeat_s:
            with Heartbeat(lease, heartbeat_s):
                if finish_plan:
                    held.finished = finish_pending(registry, model, actor, lease)
                yield held
        else:
            if finish_plan:
                held.finished = finish_pending(registry, model, actor, lease)
            yield held
    finally:
        try:
            lease.release()
        except LoraDeployError as exc:
            # The work is done (or failed on its own); a lease left behind expires by
            # itself, is taken over on this host once the process is gone, or goes with
            # 'loradeploy unlock'.
            lease.release_error = exc.one_line()
