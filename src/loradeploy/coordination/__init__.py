"""Coordination: one writer per model, alias changes fully before or after, and their
audit history.

- ``lease``: the per-model lease on an atomic create (``LeaseStore``), renewed while held;
- ``plans``: alias plans, conditional moves, finishing or abandoning an interrupted plan;
- ``audit``: one record per alias move;
- ``lock``: ``model_lock``, which ties them together for the steps.

The store behind the lease is a small interface: ``clients.mlflow_leases`` keeps it in
the MLflow registry, and tests use ``FakeLeaseStore``.
"""

from loradeploy.coordination.audit import AUDIT_EXPERIMENT, history, moves_of_request, record_moves
from loradeploy.coordination.lease import DEFAULT_LOCK_TTL_S, Actor, Lease, LeaseStore, unlock
from loradeploy.coordination.lock import Held, model_lock
from loradeploy.coordination.plans import PENDING_TAG, FinishedPlan, abandon_plan, move_aliases

__all__ = [
    "AUDIT_EXPERIMENT",
    "DEFAULT_LOCK_TTL_S",
    "PENDING_TAG",
    "Actor",
    "FinishedPlan",
    "Held",
    "Lease",
    "LeaseStore",
    "abandon_plan",
    "history",
    "model_lock",
    "move_aliases",
    "moves_of_request",
    "record_moves",
    "unlock",
]
