"""Alias changes and their record: stage, promote or roll back, history, unlock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from loradeploy.cli.common import (
    _actor,
    _manifest,
    _registry,
    _run,
    _settings,
    err,
    out,
    swap_patience,
)
from loradeploy.cli.options import (
    DEFAULT_CANDIDATE_SLOT,
    DEFAULT_LIVE_SLOT,
    AdaptersRoot,
    ApiKey,
    BaseAlias,
    CaBundle,
    CandidateSlot,
    Container,
    Kubectl,
    LiveSlot,
    MaxRank,
    ModelName,
    Namespace,
    OutputDir,
    PodRoot,
    PodsOpt,
    RequireSignature,
    Selector,
    SourceOpt,
    SwapOpt,
    TrackingUri,
    TransportOpt,
    TrustedCas,
    TrustedKeys,
    VllmUrls,
)
from loradeploy.domain import names
from loradeploy.domain.swap import SwapStrategy

if TYPE_CHECKING:
    from loradeploy.results import StepResult


def set_staged_alias(
    model_name: ModelName,
    source: SourceOpt,
    slot_name: Annotated[
        str, typer.Option("--slot-name", help="Candidate slot that must serve the version.")
    ] = DEFAULT_CANDIDATE_SLOT,
    vllm_url: VllmUrls = None,
    output_dir: OutputDir = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    adapters_root: Annotated[
        Path | None,
        typer.Option("--adapters-root", help="Rewrite lora-modules.json in this folder (local transport)."),
    ] = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Step 3: set 'staged' on the deployed version (refused if the slot serves another)."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.steps.set_staged_alias import set_staged_alias as step

        parsed = names.parse_source(source)
        names.model_name(model_name)
        names.slot_name(slot_name)
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url[0] if vllm_url else None,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
        )
        urls = wiring.replica_urls(settings, wiring.Where.pods(pods, vllm_url, container, kubectl))
        files = wiring.manifest_transport(settings)  # lora-modules.json is rewritten there (local)
        with wiring.replicas(settings, urls) as replicas:
            return step(
                _registry(settings),
                replicas,
                model=model_name,
                source=parsed,
                slot=slot_name,
                actor=_actor(settings, "set-staged-alias"),
                manifest=_manifest(settings, model_name, live_slot, slot_name),
                transport=files,
            )

    _run("set-staged-alias", output_dir, action)


def promote_adapter(
    model_name: ModelName,
    source_alias: Annotated[
        str, typer.Option("--source-alias", help="Alias to promote; 'previous' rolls back.")
    ] = "staged",
    vllm_url: VllmUrls = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    output_dir: OutputDir = None,
    adapters_root: AdaptersRoot = None,
    swap_strategy: SwapOpt = SwapStrategy.AUTO,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: kept in the audit history.")] = "",
    transport: TransportOpt = "local",
    namespace: Namespace = "ml-models",
    selector: Selector = "app=vllm",
    container: Container = "vllm",
    pod_adapters_root: PodRoot = "/mnt/adapters",
    kubectl: Kubectl = "kubectl",
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Promote a version to the live slot on every replica and move live/previous."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.steps.promote import PromoteRequest
        from loradeploy.steps.promote import promote_adapter as step

        request = PromoteRequest(
            model=names.model_name(model_name),
            source_alias=names.alias_name(source_alias),
            live_slot=names.slot_name(live_slot),
            strategy=swap_strategy,
            reason=reason,
        )
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url[0] if vllm_url else None,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
        )
        request = replace(request, policy=wiring.adapter_policy(settings), patience=swap_patience(settings))
        where = wiring.Where(vllm_url, transport, namespace, selector, container, pod_adapters_root, kubectl)
        with (
            wiring.targets(settings, where) as (files, replicas),
            err.status(f"promoting {model_name}@{source_alias} to {live_slot}"),
            wiring.replicas(settings, wiring.other_replica_urls(settings, where, files, replicas)) as others,
        ):
            return step(
                request,
                registry=_registry(settings),
                replicas=replicas,
                transport=files,
                actor=_actor(settings, "promote-adapter"),
                manifest=_manifest(settings, request.model, live_slot, candidate_slot),
                others=others,
            )

    _run("promote-adapter", output_dir, action)


def history(
    model_name: ModelName,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Every alias move of a model: when, who, which step, from which version to which, why."""

    def action() -> StepResult:
        from loradeploy.steps.history import history as step

        names.model_name(model_name)
        return step(_registry(_settings(tracking_uri=tracking_uri)), model=model_name)

    def render(result: StepResult) -> None:
        table = Table(title=f"{result.model}: alias history")
        for column in ("when (UTC)", "alias", "from", "to", "signed by (to)", "step", "who", "reason"):
            table.add_column(column, overflow="fold")
        for row in result.details["moves"]:
            table.add_row(
                row["when"],
                row["alias"],
                row["from_version"] or "-",
                row["to_version"] or "(removed)",
                row.get("to_signer") or "-",
                row["step"],
                row["who"],
                row["reason"],
            )
        out.print(table)

    _run("history", output_dir, action, render)


def unlock(
    model_name: ModelName,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="The crashed run, as the lock error names it.")
    ] = None,
    abandon_plan: Annotated[
        bool,
        typer.Option("--abandon-plan", help="Drop a pending alias plan that cannot be finished."),
    ] = False,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Remove the lock a crashed run left (only the named run's), or drop a stuck alias plan."""

    def action() -> StepResult:
        from loradeploy.steps.unlock import unlock as step

        names.model_name(model_name)
        settings = _settings(tracking_uri=tracking_uri)
        return step(
            _registry(settings),
            model=model_name,
            run_id=run_id,
            drop_plan=abandon_plan,
            actor=_actor(settings, "unlock"),
        )

    _run("unlock", output_dir, action)
