"""``loradeploy metrics``: routed mode's live figures, read fresh for every rendering
(or every scrape with ``--listen``): the router's request log, what every replica the
router sends to serves, and the routes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from loradeploy.clients.request_log import RequestLog
from loradeploy.coordination.audit import AuditRegistry, history
from loradeploy.domain.canary import parse_versioned_name
from loradeploy.domain.metrics import Snapshot
from loradeploy.errors import LoraDeployError


class ServedNames(Protocol):
    """A replica: its URL and its served adapters by name (vLLM's /v1/models)."""

    @property
    def base_url(self) -> str: ...

    def adapters(self) -> Mapping[str, object]: ...


def served_versions(replicas: Sequence[ServedNames]) -> dict[str, frozenset[str] | None]:
    """Versioned names each replica serves; None for a replica that did not answer."""
    served: dict[str, frozenset[str] | None] = {}
    for replica in replicas:
        try:
            names = replica.adapters()
        except LoraDeployError:
            served[replica.base_url] = None
            continue
        served[replica.base_url] = frozenset(name for name in names if parse_versioned_name(name))
    return served


def snapshot(
    log: RequestLog,
    replicas: Sequence[ServedNames],
    routes: Callable[[], Mapping[str, Mapping[str, int]]],
    *,
    since: float = 0.0,
    audit: AuditRegistry | None = None,
    models: Sequence[str] = (),
) -> Snapshot:
    records = log.read(since=since)
    return Snapshot(
        records=records,
        skipped_lines=log.skipped,
        served=served_versions(replicas),
        routes=routes(),
        moves=alias_moves(audit, models) if audit is not None else (),
    )


def alias_moves(audit: AuditRegistry, models: Sequence[str]) -> list[tuple[str, str, str]]:
    """(model, alias, step) of every alias move the audit history records for ``models``."""
    return [
        (model, str(row["alias"]), str(row["step"]))
        for model in models
        for row in history(audit, model)
        if row.get("from_version") or row.get("to_version")  # a move, not a recorded decision
    ]
