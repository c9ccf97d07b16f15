"""Register a local adapter folder as a new model version, tagged for verification."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loradeploy.clients.registry import MLflowHelper
from loradeploy.coordination import Actor, model_lock, move_aliases
from loradeploy.domain.adapter import inspect_adapter, registry_tags
from loradeploy.domain.aliases import plan_set
from loradeploy.domain.smoke import PROBES_FILE, PROBES_TAG, Probe, probes_digest, probes_text
from loradeploy.results import StepResult, Timer
from loradeploy.steps.sign import check_signing_key, ensure_signed


def register(
    registry: MLflowHelper,
    *,
    model: str,
    adapter_dir: Path,
    alias: str | None,
    actor: Actor,
    reuse_identical: bool = False,
    run_id: str | None = None,
    sign_key: Path | None = None,
    sign_cert_chain: Path | None = None,
    probes: Sequence[Probe] | None = None,
) -> StepResult:
    """Validate, then register (or, with ``reuse_identical``, find a version whose files
    are byte-identical), then with ``sign_key`` sign it (as this version: the signature
    names it, so it is made once the version has its number), then record ``probes``
    (the smoke test's prompts for it), then optionally set ``alias`` on it. ``run_id``
    links a new version to the run that trained it."""
    result = StepResult(step="register", model=model)
    timer = Timer(result.timings_s)
    with timer("validate"):
        info = inspect_adapter(adapter_dir)
        if sign_key is not None:  # a key that cannot sign must not leave an unsigned version
            check_signing_key(sign_key, sign_cert_chain)
    with timer("register"):
        registry.ping()
        existing = registry.find_version_with_files(model, info.files) if reuse_identical else None
        version = existing or registry.register_adapter(
            model, adapter_dir, version_tags=registry_tags(info), run_id=run_id
        )
    result.version = version
    signature = "not signed (no --sign-key)"
    if sign_key is not None:
        with timer("sign"):
            signature = ensure_signed(
                registry, model, version, adapter_dir, key=sign_key, cert_chain=sign_cert_chain
            ).describe()
    recorded = "none (no --probes-file)"
    if probes:
        with timer("probes"):
            recorded = record_probes(registry, model, version, probes)
    if alias:
        with timer("set-alias"), model_lock(registry, model, actor) as held:
            moves = plan_set(registry.get_aliases(model), alias, version)
            move_aliases(
                registry, model, moves, actor, held.lease, reason=f"registered from {adapter_dir.name}"
            )
    result.details = {
        "alias": alias,
        "reused_existing_version": existing is not None,
        "base_model": info.base_model,
        "rank": info.rank,
        "target_modules": info.target_modules,
        "files": info.files,
        "signature": signature,
        "probes": recorded,
    }
    return result


def record_probes(registry: MLflowHelper, model: str, version: str, probes: Sequence[Probe]) -> str:
    """Record the smoke test's probes with a version (a file beside its adapter files and a
    tag with its sha256), unless it has some already: a version's probes are written once,
    like its files. Says what it did."""
    if PROBES_TAG in registry.get_version(model, version).tags:
        return "kept the probes recorded with this version earlier"
    text = probes_text(probes)
    registry.attach_file(model, version, PROBES_FILE, text, {PROBES_TAG: probes_digest(text)})
    return f"{len(probes)} recorded in {PROBES_FILE}"
