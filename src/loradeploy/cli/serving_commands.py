"""Adapters on the servers: load one, smoke-test a slot, restore after a cold start,
restart the servers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import (
    _actor,
    _local_stack,
    _manifest,
    _pod_urls,
    _registry,
    _run,
    _settings,
    _vllm,
    err,
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
    VllmUrl,
    VllmUrls,
)
from loradeploy.domain import names
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import UsageError

if TYPE_CHECKING:
    from loradeploy.results import StepResult


def load_adapter(
    model_name: ModelName,
    source: SourceOpt,
    slot_name: Annotated[str, typer.Option("--slot-name", help="Served adapter name (the slot).")],
    vllm_url: VllmUrls = None,
    output_dir: OutputDir = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    adapters_root: AdaptersRoot = None,
    swap_strategy: SwapOpt = SwapStrategy.AUTO,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
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
    """Step 1: download a version from MLflow and load it into every replica, no restart."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.steps.load_adapter import LoadRequest
        from loradeploy.steps.load_adapter import load_adapter as step

        model, parsed, slot = (
            names.model_name(model_name),
            names.parse_source(source),
            names.slot_name(slot_name),
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
        request = LoadRequest(
            model=model,
            source=parsed,
            slot=slot,
            strategy=swap_strategy,
            policy=wiring.adapter_policy(settings),
            patience=swap_patience(settings),
        )
        with (
            wiring.targets(
                settings,
                wiring.Where(vllm_url, transport, namespace, selector, container, pod_adapters_root, kubectl),
            ) as (files, replicas),
            err.status(f"loading {model_name} {source} into {slot_name} on {len(replicas)} replica(s)"),
        ):
            return step(
                request,
                registry=_registry(settings),
                replicas=replicas,
                transport=files,
                actor=_actor(settings, "load-adapter"),
                manifest=_manifest(settings, model, live_slot, candidate_slot),
            )

    _run("load-adapter", output_dir, action)


def smoke_test(
    adapter_name: Annotated[str, typer.Option("--adapter-name", help="Served adapter to test.")],
    vllm_url: VllmUrl = None,
    num_requests: Annotated[int, typer.Option("--num-requests", min=1, max=1000)] = 3,
    max_latency: Annotated[
        float, typer.Option("--max-latency", min=0.0, help="Seconds allowed per request.")
    ] = 30.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=4096)] = 32,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts-file",
            help='JSON lines: {"prompt", "system"?, "reference"?} (default: the probes recorded '
            "with the served version, else built-in).",
        ),
    ] = None,
    min_reference_f1: Annotated[
        float,
        typer.Option("--min-reference-f1", min=0.01, max=1.0, help="Mean token F1 against the references."),
    ] = 0.5,
    tracking_uri: TrackingUri = None,
    compare_base: Annotated[
        bool,
        typer.Option("--compare-base/--no-compare-base", help="Require answers to differ from the base."),
    ] = True,
    min_different: Annotated[
        float, typer.Option("--min-different", min=0.0, max=1.0, help="Share that must differ.")
    ] = 0.5,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Expected model of the served folder.")
    ] = None,
    expected_version: Annotated[
        str | None, typer.Option("--expected-version", help="Version the slot must serve.")
    ] = None,
    output_dir: OutputDir = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Step 2: send test prompts to the adapter; check answers, latency, that it is active."""

    def action() -> StepResult:
        from loradeploy.domain.smoke import read_probes
        from loradeploy.steps.smoke_test import smoke_test as step

        names.slot_name(adapter_name)
        if model_name is not None:
            names.model_name(model_name)
        if expected_version is not None:
            names.parse_source(f"version:{expected_version}")
        probes = read_probes(prompts_file) if prompts_file else None
        settings = _settings(
            vllm_url=vllm_url, api_key=api_key, ca_bundle=ca_bundle, tracking_uri=tracking_uri
        )
        store = _registry(settings) if settings.tracking_uri and probes is None else None

        def run(url: str | None) -> StepResult:
            with _vllm(settings, url) as vllm, err.status(f"smoke-testing {adapter_name} at {url or 'vLLM'}"):
                return step(
                    vllm,
                    adapter=adapter_name,
                    num_requests=num_requests,
                    max_latency_s=max_latency,
                    probes=probes,
                    store=store,
                    max_tokens=max_tokens,
                    compare_base=compare_base,
                    min_different=min_different,
                    min_reference_f1=min_reference_f1,
                    expected_model=model_name,
                    expected_version=expected_version,
                )

        urls = _pod_urls(pods, container, kubectl)
        return _on_every_pod(urls, run) if urls else run(None)

    _run("smoke-test", output_dir, action)


def _on_every_pod(urls: list[str], run: Callable[[str], StepResult]) -> StepResult:
    """``run`` once per pod URL, as one result: each check named after its pod."""
    by_pod = {url: run(url) for url in urls}
    merged = by_pod[urls[0]].model_copy(deep=True)
    merged.checks = [
        c.model_copy(update={"name": f"{c.name}@{url}"}) for url, r in by_pod.items() for c in r.checks
    ]
    merged.details = {"pods": urls, "per_pod": {url: r.details for url, r in by_pod.items()}}
    merged.timings_s = {f"{k}@{url}": v for url, r in by_pod.items() for k, v in r.timings_s.items()}
    return merged


def init_load_adapters(
    model_name: ModelName,
    adapters_root: AdaptersRoot = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    base_model_name: Annotated[
        str | None,
        typer.Option("--base-model-name", help="Served base model, checked against each adapter."),
    ] = None,
    vllm_url: Annotated[
        list[str] | None,
        typer.Option("--vllm-url", help="Also load into these running servers (not in an init container)."),
    ] = None,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Cold-start restore: live -> live slot, staged -> candidate slot, plus
    lora-modules.json for vLLM's --lora-modules; skips aliases that do not exist."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.domain.aliases import LIVE, STAGED
        from loradeploy.steps.init_load import init_load_adapters as step

        names.model_name(model_name)
        settings = _settings(
            tracking_uri=tracking_uri,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
        )
        slots = {LIVE: names.slot_name(live_slot), STAGED: names.slot_name(candidate_slot)}
        with (
            err.status(f"restoring {model_name} live and staged"),
            wiring.replicas(settings, vllm_url or []) as replicas,  # only the running servers named
        ):
            return step(
                model=model_name,
                slot_for_alias=slots,
                registry=_registry(settings),
                transport=wiring.local_transport(settings),
                base_model_name=base_model_name,
                policy=wiring.adapter_policy(settings),
                replicas=replicas,
            )

    _run("init-load-adapters", output_dir, action)


def restart_deployment(
    deployment: Annotated[str, typer.Option("--deployment", help="vLLM Deployment name.")] = "vllm",
    namespace: Namespace = "ml-models",
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the rollout.")
    ] = 900,
    kubectl: Kubectl = "kubectl",
    local_stack: Annotated[
        bool,
        typer.Option("--local-stack", help="Restart the local stack's vLLM instead (cold start)."),
    ] = False,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Model to restore (--local-stack).")
    ] = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    output_dir: OutputDir = None,
) -> None:
    """Legacy fallback: rolling restart of the vLLM Deployment, waiting for the rollout.
    With --local-stack: stop vLLM, restore live/staged (init-load-adapters), start it."""

    def action() -> StepResult:
        if local_stack:
            return _restart_local(model_name, live_slot, candidate_slot)
        from loradeploy.clients.kube import KubectlApi
        from loradeploy.steps.restart import restart_deployment as step

        names.slot_name(deployment)
        names.slot_name(namespace)
        with err.status(f"rolling restart of deployment {namespace}/{deployment}"):
            return step(
                KubectlApi(kubectl=kubectl), namespace=namespace, deployment=deployment, timeout_s=timeout
            )

    _run("restart-deployment", output_dir, action)


def _restart_local(model_name: str | None, live_slot: str, candidate_slot: str) -> StepResult:
    if model_name is None:
        raise UsageError("--local-stack needs --model-name", hint="pass --model-name=aws-rag-qa")
    names.model_name(model_name)
    settings = _settings()
    if settings.stack is None:
        raise UsageError("no local stack found", hint="run 'loradeploy stack up' first")
    from loradeploy.clients import wiring
    from loradeploy.domain.aliases import LIVE, STAGED
    from loradeploy.stack.restart import restart_local

    stack = _local_stack(settings.stack.home, assets=settings.stack.assets)
    with err.status("restarting the local vLLM") as status:
        return restart_local(
            stack,
            model=model_name,
            slot_for_alias={LIVE: names.slot_name(live_slot), STAGED: names.slot_name(candidate_slot)},
            registry=_registry(settings),
            transport=wiring.local_transport(settings),
            policy=wiring.adapter_policy(settings),
            base_model_name=settings.stack.served_model,
            on_tick=lambda n, s: status.update(f"waiting for {n} to be healthy ({s:.0f}s)"),
        )
