"""Promote an adapter version to the live slot; ``--source-alias=previous`` rolls back.

1. take the model's lock, which finishes any alias plan an interrupted run left; when
   that plan was an earlier attempt of this same request (same run key), its outcome is
   the answer; when it was another run's, stop there (a relative source such as
   ``previous`` now names something else, so going on could roll back twice);
2. resolve the source alias to one version;
3. download, validate and place it in the live slot's folder for that version;
4. swap the live slot on every replica (all or nothing) and verify;
5. move aliases: version -> live, old live -> previous, and remove staged and the gate
   aliases that pointed at the version; every move is recorded in the audit history;
6. rewrite ``lora-modules.json`` from the moved aliases (``steps.manifest``), so a vLLM
   restart serves the promoted version;
7. remove version folders no alias needs and no replica of the deployment serves.

A failure before step 5 leaves the aliases untouched and the previous adapter served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, FinishedPlan, model_lock, move_aliases, moves_of_request
from loradeploy.domain.aliases import LIVE, AliasMove, plan_promotion
from loradeploy.domain.names import Source
from loradeploy.domain.policy import AdapterPolicy
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import AliasMovedError, LoraDeployError
from loradeploy.results import StepResult, Timer
from loradeploy.steps.cleanup import remove_unused_folders
from loradeploy.steps.deploy import deploy_version, required_digests
from loradeploy.steps.manifest import ManifestSpec, refresh_after_commit
from loradeploy.steps.rollout import inspect_replicas
from loradeploy.steps.swap import DEFAULT_PATIENCE, Patience


@dataclass(frozen=True)
class PromoteRequest:
    model: str
    source_alias: str
    live_slot: str
    strategy: SwapStrategy = SwapStrategy.AUTO
    policy: AdapterPolicy = field(default_factory=AdapterPolicy)  # rank, size, base, trust
    patience: Patience = DEFAULT_PATIENCE  # how long a swap waits on a silent server
    reason: str = ""


def promote_adapter(
    request: PromoteRequest,
    *,
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    transport: AdapterTransport,
    actor: Actor,
    manifest: ManifestSpec | None = None,
    others: Sequence[VllmClient] = (),
) -> StepResult:
    """``others``: replicas of the deployment the command was not pointed at; cleanup
    keeps every folder they serve."""
    result = StepResult(
        step="promote-adapter",
        model=request.model,
        source=f"alias:{request.source_alias}",
        slot=request.live_slot,
    )
    timer = Timer(result.timings_s)
    warnings: list[str] = []
    intent = f"promote alias:{request.source_alias}"
    with model_lock(registry, request.model, actor) as held:
        finished = held.finished
        if finished.moves and not finished.was_by(actor):
            raise AliasMovedError(
                f"model {request.model!r}: taking the lock finished the interrupted alias plan of run "
                f"{finished.run_id} ({finished.intent or 'no intent recorded'}: "
                f"{', '.join(m.describe() for m in finished.moves)}); this promotion was not applied",
                hint="check 'loradeploy status', then run the promotion again if it is still wanted",
            )
        with timer("resolve"):
            aliases = registry.get_aliases(request.model)
            retried = _earlier_attempt(registry, request.model, actor, intent, finished, aliases)
            if retried:
                # This request already ran and moved live (its plan finished now, or
                # earlier by another run, or it was killed after committing): the version
                # it made live is the answer, not what the alias names now (a rollback
                # retried must not roll back twice).
                version = registry.get_version(request.model, retried)
            else:
                version = registry.resolve(request.model, Source("alias", request.source_alias))
        result.version = version.version
        required_digests(version)
        with timer("preflight"):
            servers = inspect_replicas(replicas, request.live_slot, request.strategy)
        deploy_version(
            version,
            slot=request.live_slot,
            replicas=servers,
            registry=registry,
            transport=transport,
            policy=request.policy,
            patience=request.patience,
            result=result,
            guard=held.lease.ensure_held,
        )
        moves = plan_promotion(aliases, version.version)
        with timer("aliases"):
            move_aliases(
                registry,
                request.model,
                moves,
                actor,
                held.lease,
                reason=request.reason or f"promoted from alias {request.source_alias}",
                intent=intent,
            )
        # The promotion is committed: from here on a failure must not fail the step, or
        # a retry would promote again (a rollback would roll back twice).
        with timer("manifest"):  # lora-modules.json: a vLLM restart serves the new live
            modules, manifest_warnings = refresh_after_commit(
                manifest,
                registry=registry,
                transport=transport,
                base_model_name=servers[0].base.id if servers else None,
            )
            warnings += manifest_warnings
        removed: list[str] = []
        with timer("cleanup"):
            try:
                removed = remove_unused_folders(
                    registry, transport, request.model, [s.vllm for s in servers], others
                )
            except LoraDeployError as exc:
                warnings.append(f"unused folders kept: {exc.one_line()}")
    if held.release_error:
        warnings.append(f"lock not released: {held.release_error}")
    result.details.update(
        {
            "alias_moves": [m.describe() for m in moves],
            "finished_pending_moves": [m.describe() for m in finished.moves],
            "retry_of_interrupted_run": bool(retried),
            "removed_folders": removed,
            "lora_modules": modules,
            "aliases_after": _after(aliases, moves),
            "warnings": [*result.details.get("warnings", []), *warnings],
        }
    )
    return result


def _earlier_attempt(
    registry: MLflowHelper,
    model: str,
    actor: Actor,
    intent: str,
    finished: FinishedPlan,
    aliases: Mapping[str, str],
) -> str | None:
    """The version an earlier attempt of this same request (same run key) made live, if
    any: from the plan taking the lock just finished, else from the audit history. Only
    a run with an explicit run key (an Argo step) can be a retry; a run by hand is new.
    When live has moved on since, the retry must not undo that: it stops."""
    if finished.was_by(actor) and finished.intent == intent and finished.moved(LIVE):
        return finished.moved(LIVE)
    if not actor.run_key:
        return None
    moved = [
        m.to_version for m in moves_of_request(registry, model, actor.run_key, intent) if m.alias == LIVE
    ]
    if not moved or moved[-1] is None:
        return None
    if aliases.get(LIVE) != moved[-1]:
        raise AliasMovedError(
            f"model {model!r}: an earlier attempt of this request ({actor.run_key}) already made "
            f"version {moved[-1]} live, and live has moved on to {aliases.get(LIVE) or 'nothing'} since; "
            "nothing was done",
            hint="check 'loradeploy history'; start a new promotion if one is still wanted",
        )
    return moved[-1]


def _after(aliases: Mapping[str, str], moves: Sequence[AliasMove]) -> dict[str, str]:
    """The aliases once ``moves`` are applied (no second read of the registry)."""
    after = dict(aliases)
    for move in moves:
        if move.to_version is None:
            after.pop(move.alias, None)
        else:
            after[move.alias] = move.to_version
    return after
