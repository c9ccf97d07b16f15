"""Step 3: set the ``staged`` alias on the deployed version once the smoke test passed.

Refuses when the candidate slot does not serve the version the source names now (the
alias moved since load-adapter ran): staging must name what is actually deployed. The
source is resolved and every replica's slot checked under the model's lock, right before
the alias moves, so a load-adapter in between cannot make ``staged`` name something else.
"""

from __future__ import annotations

from collections.abc import Sequence

from loradeploy.clients.files import AdapterTransport
from loradeploy.clients.registry import MLflowHelper
from loradeploy.clients.vllm import VllmClient
from loradeploy.coordination import Actor, model_lock, move_aliases
from loradeploy.domain.aliases import STAGED, plan_set
from loradeploy.domain.layout import parse_root
from loradeploy.domain.names import Source
from loradeploy.errors import AliasMovedError, NotFoundError
from loradeploy.results import Check, StepResult, Timer
from loradeploy.steps.manifest import ManifestSpec, refresh_after_commit


def set_staged_alias(
    registry: MLflowHelper,
    replicas: Sequence[VllmClient],
    *,
    model: str,
    source: Source,
    slot: str,
    actor: Actor,
    manifest: ManifestSpec | None = None,
    transport: AdapterTransport | None = None,
) -> StepResult:
    result = StepResult(step="set-staged-alias", model=model, source=str(source), slot=slot)
    timer = Timer(result.timings_s)
    with model_lock(registry, model, actor) as held:
        with timer("resolve"):
            version = registry.resolve(model, source)
        result.version = version.version
        with timer("verify-served"):
            for vllm in replicas:
                result.checks.append(
                    _check_served(vllm, model=model, source=source, slot=slot, version=version.version)
                )
        with timer("set-alias"):
            moves = plan_set(registry.get_aliases(model), STAGED, version.version)
            move_aliases(registry, model, moves, actor, held.lease, reason=f"smoke-tested in slot {slot}")
            # Committed. lora-modules.json: a vLLM restart serves the staged version.
            modules, warnings = (
                refresh_after_commit(manifest, registry=registry, transport=transport)
                if transport is not None
                else (None, [])
            )
    result.details = {"alias_moves": [m.describe() for m in moves]}
    if modules is not None:
        result.details["lora_modules"] = modules
    if warnings:
        result.details["warnings"] = warnings
    return result


def _check_served(vllm: VllmClient, *, model: str, source: Source, slot: str, version: str) -> Check:
    card = vllm.adapters().get(slot)
    if card is None or card.root is None:
        raise NotFoundError(
            f"vLLM at {vllm.base_url} does not serve {slot!r}; nothing to stage",
            hint=f"run load-adapter --source={source} --slot-name={slot} first",
        )
    served = parse_root(card.root)
    if served is None or served.model != model or served.version != version:
        raise AliasMovedError(
            f"{source} of model {model!r} names version {version}, but {slot!r} on "
            f"{vllm.base_url} serves {card.root}",
        )
    return Check(name=f"served:{vllm.base_url}", passed=True, detail=card.root)
