"""Routed mode: serve one version under its immutable versioned name on every replica.

``aws-rag-qa@v7`` is loaded once per replica and never reloaded in place: a replica that
serves the name from this version's folder is left alone, one that serves it from any
other folder stops the step before anything changes. The files are fetched, checked and
placed as for a slot (``steps.deploy.fetch_and_place``), in
``<adapters_root>/<model>.versions/<model>-v<N>``. When the replica's limits are known,
room is made first by unloading this model's versioned names that nothing needs
(``domain.residency.plan_load``: no weight in the router, no alias names the version),
oldest first; a replica without room stops the step before any download.

All or nothing: replicas are changed one after the other; if one fails, every replica
changed so far (and the failing one) gets the new name unloaded and the names unloaded
for room loaded again from their folders. A replica that cannot be put back makes the
error a ``PartialRolloutError`` (exit 75) naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper, VersionInfo
from loradeploy.clients.vllm import ModelCard, VllmClient
from loradeploy.coordination import Actor, model_lock
from loradeploy.coordination.audit import record_event
from loradeploy.domain.canary import versioned_name
from loradeploy.domain.layout import parse_root, versions_folder
from loradeploy.domain.names import Source, model_name
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.residency import Limits, needed, plan_load
from loradeploy.errors import (
    LeftReplica,
    LoraDeployError,
    NotFoundError,
    PermanentError,
    ServerUnavailableError,
    short,
)
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.deploy import fetch_and_place, required_digests
from loradeploy.steps.swap import DEFAULT_PATIENCE, Patience, await_load, left_behind, restore, verify_served

NO_LIMITS_WARNING = (
    "the replicas' --max-loras and --max-cpu-loras are not known, so no room was made: pass "
    "--max-loras and --max-cpu-loras (the vLLM servers' own flags) to unload versions nothing needs"
)


@dataclass(frozen=True)
class _Found:
    """One replica as found before anything changed."""

    vllm: VllmClient
    base: ModelCard
    served: dict[str, ModelCard]

    @property
    def served_names(self) -> tuple[str, ...]:
        return (self.base.id, self.base.root) if self.base.root else (self.base.id,)


@dataclass
class _Change:
    """What this run did to one replica, so that it can be undone."""

    found: _Found
    unloaded: list[tuple[str, str | None]] = field(default_factory=list)  # (name, its root)
    no_answer: bool = False  # the load got no answer: it may still complete on the server


def _inspect(vllm: VllmClient, name: str, version: VersionInfo) -> _Found:
    vllm.ensure_healthy()
    found = _Found(vllm, vllm.base_model(), vllm.adapters())
    card = found.served.get(name)
    if card is not None:
        parsed = parse_root(card.root or "")
        if parsed is None or (parsed.model, parsed.version) != (version.model, version.version):
            raise PermanentError(
                f"vLLM at {vllm.base_url} serves {name!r} from {card.root or 'an unknown folder'}, "
                f"not from a folder of model {version.model!r} version {version.version}; "
                "nothing was changed",
                hint=f"a versioned name is never reloaded in place: unload {name!r} from that "
                "replica (POST /v1/unload_lora_adapter) once nothing routes to it, then run again",
            )
    return found


def _plan(
    found: _Found,
    version: VersionInfo,
    keep: Collection[str],
    weights: Mapping[str, int],
    limits: Limits,
) -> list[str]:
    try:
        plan = plan_load(
            version.model,
            version.version,
            served=list(found.served),
            keep=keep,
            weights=weights,
            limits=limits,
        )
    except PermanentError as exc:
        raise PermanentError(f"vLLM at {found.vllm.base_url}: {exc.message}", hint=exc.hint) from exc
    return plan.unload


def serve_version(
    version: VersionInfo,
    *,
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    transport: AdapterTransport,
    policy: AdapterPolicy,
    keep: set[str],
    weights: Mapping[str, int],
    limits: Limits | None,
    result: StepResult,
    patience: Patience = DEFAULT_PATIENCE,
    guard: Callable[[], None] | None = None,
) -> list[str]:
    """Serve ``version`` as ``model@vN`` on every replica; returns the names unloaded.

    The caller holds the model's lock; ``guard`` (the lease check) runs before each
    replica is changed. ``keep``: names that must stay (``residency.needed``);
    ``weights``: every name's weight in the router (names with weight stay too);
    ``limits`` None: nothing is unloaded (a warning says so).
    """
    name = versioned_name(version.model, version.version)
    timer = Timer(result.timings_s)
    with timer("preflight"):
        found = [_inspect(vllm, name, version) for vllm in replicas]
    lacking = [f for f in found if name not in f.served]
    result.details.update(
        {
            "name": name,
            "already_served": [f.vllm.base_url for f in found if name in f.served],
            "loaded_on": [],
            "unloaded": {},
        }
    )
    if not lacking:
        _record_served(result, found, name)
        return []
    if limits is None:
        plans: dict[str, list[str]] = {f.vllm.base_url: [] for f in lacking}
        result.details.setdefault("warnings", []).append(NO_LIMITS_WARNING)
    else:
        plans = {f.vllm.base_url: _plan(f, version, keep, weights, limits) for f in lacking}
    new_root, info, written, signature = fetch_and_place(
        version,
        slot=versions_folder(version.model),
        registry=registry,
        transport=transport,
        served_names=[f.served_names for f in found],
        policy=policy,
        timer=timer,
    )
    changes: list[_Change] = []
    with timer("load"):
        for replica in lacking:
            change = _Change(replica)
            changes.append(change)
            try:
                _load(change, name, new_root, plans[replica.vllm.base_url], patience, guard)
            except Exception as exc:  # noqa: BLE001 - any failure on one replica undoes them all;
                # translated with the replica named, as steps.rollout does
                _undo(changes, name, new_root, _ours(exc, replica.vllm.base_url, name), patience)
    with timer("verify"):  # read every replica once more: one changed while others loaded?
        for replica in found:
            try:
                _check_serves(replica.vllm, name, new_root, replica.served.get(name))
            except LoraDeployError as exc:
                _undo(changes, name, new_root, exc, patience)
    unloaded = list(dict.fromkeys(n for change in changes for n, _ in change.unloaded))
    result.details.update(
        {
            "loaded_on": [c.found.vllm.base_url for c in changes],
            "unloaded": {c.found.vllm.base_url: [n for n, _ in c.unloaded] for c in changes if c.unloaded},
            "adapter_path": new_root,
            "files_written": written,
            "rank": info.rank,
            "base_model": info.base_model,
            "bytes": info.total_bytes,
            "signature": signature.as_dict(),
            "limits": limits.model_dump() if limits else None,
        }
    )
    _record_served(result, found, name)
    return unloaded


def _load(
    change: _Change,
    name: str,
    new_root: str,
    unload: Sequence[str],
    patience: Patience,
    guard: Callable[[], None] | None,
) -> None:
    vllm, found = change.found.vllm, change.found
    if guard is not None:
        guard()
    for old in unload:
        with contextlib.suppress(NotFoundError):  # gone meanwhile: the room is there
            vllm.unload_lora_adapter(old)
        change.unloaded.append((old, found.served[old].root))
    try:
        vllm.load_lora_adapter(name, new_root)
    except ServerUnavailableError:
        change.no_answer = True
        raise
    verify_served(vllm, name, new_root, found.base.id, timeout=patience.verify_s)


def _ours(exc: Exception, url: str, name: str) -> LoraDeployError:
    if isinstance(exc, LoraDeployError):
        return exc
    error = PermanentError(
        f"vLLM at {url}: unexpected {type(exc).__name__} while loading {name!r}: {short(str(exc), 120)}",
        hint="the replicas were put back where possible; report this with the log, then rerun",
    )
    error.__cause__ = exc
    return error


def _check_serves(vllm: VllmClient, name: str, new_root: str, before: ModelCard | None) -> None:
    card = vllm.adapters().get(name)
    wanted = before.root if before is not None else new_root
    if card is None or card.root != wanted:
        raise PermanentError(
            f"vLLM at {vllm.base_url} does not serve {name!r} from {wanted} at the final check "
            f"(it serves {card.root if card else 'nothing'}): it changed while the others were loaded",
            hint="run the step again; check that no other deployer or a vLLM restart touched it",
        )


def _undo(
    changes: Sequence[_Change], name: str, new_root: str, cause: LoraDeployError, patience: Patience
) -> NoReturn:
    """Unload ``name`` from every replica this run changed and load what it unloaded for
    room again, newest first; then raise ``cause`` (or a ``PartialRolloutError`` naming
    what could not be put back)."""
    left: list[LeftReplica] = []
    for change in reversed(changes):
        vllm = change.found.vllm
        if change.no_answer:  # a late load would appear after the unload: watch it first
            await_load(vllm, name, new_root, patience)
        gone = restore(vllm, name, None, patience=patience)
        if gone is not None:
            left.append(gone)
        for old, root in change.unloaded:
            back = restore(vllm, old, root, patience=patience)
            if back is not None:
                left.append(back)
    if left:
        raise left_behind(left, cause) from cause
    raise cause


def _record_served(result: StepResult, found: Sequence[_Found], name: str) -> None:
    for replica in found:
        result.checks.append(Check(name=f"served:{replica.vllm.base_url}", passed=True, detail=name))


def load_version(
    model: str,
    source: Source,
    *,
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    transport: AdapterTransport,
    policy: AdapterPolicy,
    weights: Mapping[str, int],
    limits: Limits | None,
    actor: Actor,
    patience: Patience = DEFAULT_PATIENCE,
) -> StepResult:
    """``loradeploy load-version``: resolve the source once, then ``serve_version`` under
    the model's lock, keeping every alias's version and every name with weight; a load
    is recorded in the model's history."""
    model = model_name(model)
    result = StepResult(step="load-version", model=model, source=str(source))
    timer = Timer(result.timings_s)
    with timer("resolve"):
        version = registry.resolve(model, source)
    name = versioned_name(model, version.version)
    result.version, result.slot = version.version, name
    required_digests(version)
    with model_lock(registry, model, actor) as held:
        keep = needed(model, registry.get_aliases(model).values(), weights)
        unloaded = serve_version(
            version,
            registry=registry,
            replicas=replicas,
            transport=transport,
            policy=policy,
            keep=keep,
            weights=weights,
            limits=limits,
            result=result,
            patience=patience,
            guard=held.lease.ensure_held,
        )
        loaded = len(result.details["loaded_on"])
        if loaded or unloaded:
            reason = f"{name} loaded on {loaded} of {len(replicas)} replicas ({source})"
            if unloaded:
                reason += f"; unloaded for room: {', '.join(unloaded)}"
            record_event(registry, model, "load-version", actor, reason=reason)
    if held.release_error:
        result.details.setdefault("warnings", []).append(f"lock not released: {held.release_error}")
    return result
