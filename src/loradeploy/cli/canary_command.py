"""``loradeploy canary``: routed mode's release, judged on live traffic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import _actor, _registry, _run, _settings, err, swap_patience
from loradeploy.cli.options import (
    ApiKey,
    BaseAlias,
    CaBundle,
    Container,
    Kubectl,
    MaxRank,
    ModelName,
    Namespace,
    OutputDir,
    PodRoot,
    RequireSignature,
    Selector,
    TrackingUri,
    TransportOpt,
    TrustedCas,
    TrustedKeys,
)
from loradeploy.domain import names

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from loradeploy.clients.files import AdapterTransport
    from loradeploy.clients.registry import MLflowHelper, VersionInfo
    from loradeploy.clients.vllm import VllmClient
    from loradeploy.results import StepResult
    from loradeploy.settings import Settings
    from loradeploy.steps.canary import ShadowScorer
    from loradeploy.steps.shadow import ShadowScore

    Serve = Callable[[VersionInfo, set[str], Mapping[str, int], Callable[[], None]], dict[str, object]]


def _shadow_scorer(figures: object, judge: VllmClient, min_pairs: int) -> ShadowScorer | None:
    """Scores a shadow window from the request log, with the served base model as Gate
    1's judge (on the first replica); None when the figures hold no request log."""
    from loradeploy.clients.request_log import LogFigures
    from loradeploy.domain.shadow import ShadowThresholds
    from loradeploy.steps.shadow import score_shadow

    if not isinstance(figures, LogFigures):
        return None
    thresholds = ShadowThresholds(min_pairs=min_pairs)

    def score(stable: str, candidate: str, start: float, end: float) -> ShadowScore:
        return score_shadow(
            figures.log.read(start, end),
            stable=stable,
            candidate=candidate,
            judge=judge,
            judge_model=judge.base_model().id,
            thresholds=thresholds,
        )

    return score


def _version_server(
    settings: Settings, registry: MLflowHelper, replicas: Sequence[VllmClient], files: AdapterTransport
) -> Serve:
    """What the canary calls to have every replica serve a version under its versioned
    name (``steps.load_version.serve_version``) with this command's transport, adapter
    policy, the replicas' limits and swap patience."""
    from loradeploy.clients import wiring
    from loradeploy.results import StepResult
    from loradeploy.steps.load_version import serve_version

    policy = wiring.adapter_policy(settings)
    limits, patience = wiring.residency_limits(settings), swap_patience(settings)

    def serve(
        version: VersionInfo, keep: set[str], weights: Mapping[str, int], guard: Callable[[], None]
    ) -> dict[str, object]:
        scratch = StepResult(step="serve-version", model=version.model, version=version.version)
        serve_version(
            version,
            registry=registry,
            replicas=replicas,
            transport=files,
            policy=policy,
            keep=keep,
            weights=weights,
            limits=limits,
            result=scratch,
            patience=patience,
            guard=guard,
        )
        return {**scratch.details, "timings_s": scratch.timings_s}

    return serve


def canary(
    model_name: ModelName,
    source_alias: Annotated[
        str, typer.Option("--source-alias", help="Alias of the candidate version, e.g. staged.")
    ] = "staged",
    stable_name: Annotated[
        str | None,
        typer.Option("--stable-name", help="The name clients call on the router (default: MODEL-live)."),
    ] = None,
    steps: Annotated[
        str, typer.Option("--steps", help="The candidate's share at each step, in %, ending at 100.")
    ] = "5,25,50,100",
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds of live traffic analysed at each step.", min=1)
    ] = 60.0,
    max_error_rate: Annotated[
        float, typer.Option("--max-error-rate", help="Share of the candidate's requests that may fail.")
    ] = 0.01,
    max_p50_ratio: Annotated[
        float, typer.Option("--max-p50-ratio", help="Candidate p50 latency / live p50, at most.")
    ] = 1.5,
    max_p95_ratio: Annotated[
        float, typer.Option("--max-p95-ratio", help="Candidate p95 latency / live p95, at most.")
    ] = 1.75,
    min_requests: Annotated[
        int, typer.Option("--min-requests", help="Requests per version before a window counts.", min=1)
    ] = 20,
    max_waits: Annotated[
        int, typer.Option("--max-waits", help="Windows a step may wait for evidence, then abort.", min=0)
    ] = 3,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            "--eval-data",
            help="Reference answers (JSON lines, as Gate 1's): live answers to these questions are "
            "scored, and a candidate clearly worse than live aborts. Needs the router's request log text.",
        ),
    ] = None,
    quality_margin: Annotated[
        float, typer.Option("--quality-margin", help="Mean token F1 the candidate may lose to live.")
    ] = 0.05,
    min_questions: Annotated[
        int, typer.Option("--min-questions", help="Questions both versions answered before quality counts.")
    ] = 6,
    max_loras: Annotated[
        int | None, typer.Option("--max-loras", help="The vLLM servers' --max-loras (room for versions).")
    ] = None,
    max_cpu_loras: Annotated[
        int | None, typer.Option("--max-cpu-loras", help="The vLLM servers' --max-cpu-loras.")
    ] = None,
    shadow_percent: Annotated[
        int,
        typer.Option(
            "--shadow-percent",
            help="First mirror this share of live requests to the candidate (clients see only live's "
            "answers) and judge the pairs; not non-inferior aborts before any client sees it. 0: no shadow.",
            min=0,
            max=100,
        ),
    ] = 0,
    shadow_min_pairs: Annotated[
        int, typer.Option("--shadow-min-pairs", help="Live/shadow pairs before the shadow counts.", min=1)
    ] = 20,
    request_timeout: Annotated[
        float,
        typer.Option(
            "--request-timeout",
            help="Seconds to wait for one answer of the shadow's judge (it queues behind live traffic).",
        ),
    ] = 120.0,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the model's history.")] = "",
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            "--prometheus-url",
            help="Prometheus holding the Inference Extension's metrics: the live figures with "
            "--transport=kubectl (default: LORADEPLOY_PROMETHEUS_URL).",
        ),
    ] = None,
    transport: TransportOpt = "local",
    namespace: Namespace = "ml-models",
    selector: Selector = "app=vllm",
    container: Container = "vllm",
    pod_adapters_root: PodRoot = "/mnt/adapters",
    kubectl: Kubectl = "kubectl",
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    max_lora_rank: MaxRank = None,
    base_model_alias: BaseAlias = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Routed mode: give the candidate a growing share of the stable name's traffic,
    analyse each window against live (errors, p50/p95, live quality with --eval-data),
    promote at 100 %, or put all weight back on live and mark the candidate
    canary-failed (exit 1). An interrupted canary is finished or undone by the next run
    or by 'reconcile'."""

    def action() -> StepResult:
        from pydantic import ValidationError

        from loradeploy.clients import wiring
        from loradeploy.domain.canary import CanaryThresholds, parse_steps
        from loradeploy.domain.scoring import read_qa
        from loradeploy.errors import UsageError
        from loradeploy.steps.canary import CanaryRequest
        from loradeploy.steps.canary import canary as step

        model = names.model_name(model_name)
        stable = names.slot_name(stable_name or f"{model}-live")
        where = wiring.Where(None, transport, namespace, selector, container, pod_adapters_root, kubectl)
        if eval_data and where.transport == wiring.KUBECTL:
            raise UsageError(
                "--eval-data needs the answers clients saw, and on Kubernetes the canary reads "
                "Prometheus metrics, which hold none; nothing was changed",
                hint="leave out --eval-data with --transport=kubectl",
            )
        if shadow_percent and where.transport == wiring.KUBECTL:
            raise UsageError(
                "--shadow-percent needs the router's request log (pairs of answers), and on Kubernetes "
                "the canary reads Prometheus metrics, which hold none; nothing was changed",
                hint="leave out --shadow-percent with --transport=kubectl",
            )
        if not (math.isfinite(request_timeout) and request_timeout >= 1):
            raise UsageError(
                f"--request-timeout {request_timeout} is not a number of seconds of at least 1; "
                "nothing was changed",
                hint="pass for example --request-timeout=120",
            )
        if not math.isfinite(interval):
            raise UsageError(
                f"--interval {interval} is not a finite number of seconds; nothing was changed",
                hint="pass for example --interval=60",
            )
        flags = {
            "max_error_rate": max_error_rate,
            "max_p50_ratio": max_p50_ratio,
            "max_p95_ratio": max_p95_ratio,
            "min_requests": min_requests,
            "max_waits": max_waits,
            "quality_margin": quality_margin,
            "min_questions": min_questions,
        }
        try:
            thresholds = CanaryThresholds.model_validate(flags)
        except ValidationError as exc:
            first = exc.errors()[0]
            flag = "--" + str(first["loc"][0]).replace("_", "-")
            raise UsageError(
                f"{flag} {first['input']!r}: {first['msg'].lower()}; nothing was changed",
                hint=f"pass {flag} within that bound, or leave it out for its default",
            ) from None
        request = CanaryRequest(
            model=model,
            source_alias=names.alias_name(source_alias),
            stable=stable,
            steps=parse_steps(steps),
            interval_s=interval,
            thresholds=thresholds,
            references=read_qa(eval_data) if eval_data else (),
            shadow_percent=shadow_percent,
            reason=reason,
        )
        settings = _settings(
            tracking_uri=tracking_uri,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
            trusted_key=trusted_key,
            trusted_ca=trusted_ca,
            require_signature=require_signature,
            max_loras=max_loras,
            max_cpu_loras=max_cpu_loras,
            prometheus_url=prometheus_url,
        )
        figures = wiring.live_figures(settings, where)
        files = wiring.transport(settings, where)
        router = wiring.router_client(settings, where)
        registry = _registry(settings)
        with (
            wiring.replicas(settings, router.backends) as replicas,
            # the judge asks the first replica, as Gate 1 does, and like Gate 1's its
            # questions wait behind the live traffic the canary runs under
            wiring.vllm_client(settings, replicas[0].base_url, timeout_s=request_timeout) as judge,
            err.status(f"canary of {model} alias {source_alias} on {stable} ({steps} %)"),
        ):
            serve = _version_server(settings, registry, replicas, files)
            return step(
                request,
                registry=registry,
                router=router,
                figures=figures,
                serve=serve,
                actor=_actor(settings, "canary"),
                shadow=_shadow_scorer(figures, judge, shadow_min_pairs) if shadow_percent else None,
            )

    _run("canary", output_dir, action)
