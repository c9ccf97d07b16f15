"""The gates: quality (training metrics), Gate 1 (evaluation), Gate 2 (performance)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import (
    _actor,
    _pod_urls,
    _registry,
    _run,
    _settings,
    _vllm,
    err,
)
from loradeploy.cli.options import (
    DEFAULT_CANDIDATE_SLOT,
    DEFAULT_EVAL_DATA,
    DEFAULT_LIVE_SLOT,
    ApiKey,
    CaBundle,
    CandidateSlot,
    Container,
    EvalData,
    GateSeed,
    Kubectl,
    LiveSlot,
    ModelName,
    OutputDir,
    PodsOpt,
    TrackingUri,
    VllmUrl,
)
from loradeploy.domain import names
from loradeploy.errors import UsageError

if TYPE_CHECKING:
    from loradeploy.results import StepResult


def _gate_report(
    output_dir: Path | None, result: StepResult, title: str, plot: Callable[[StepResult], str]
) -> None:
    from loradeploy.steps.gates import write_report

    if output_dir is not None:
        notes = [
            "Greedy decoding with a fixed seed; CPU floating-point order can still change a token "
            "now and then, and thread scheduling moves latencies (see README, 'What stays random').",
        ]
        for check in result.details.get("inconclusive_checks", []):
            notes.append(f"Inconclusive, not counted: {check['name']}: {check['detail']}")
        write_report(output_dir, result, title=title, notes=notes, plot_svg=plot(result))


def quality_gate(
    model_name: ModelName,
    version: Annotated[str | None, typer.Option("--version", help="Version to judge.")] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Training run whose version to judge.")
    ] = None,
    min_f1: Annotated[float | None, typer.Option("--min-f1", help="Floor for eval_token_f1.")] = 0.5,
    max_eval_loss: Annotated[
        float | None, typer.Option("--max-eval-loss", help="Ceiling for eval_loss.")
    ] = 1.0,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Training gate: read the version's training-run metrics; set 'candidate' only if all pass."""

    def action() -> StepResult:
        from loradeploy.steps.quality_gate import quality_gate as step

        names.model_name(model_name)
        if (version is None) == (run_id is None):
            raise UsageError("pass exactly one of --version and --run-id")
        if version is not None:
            names.parse_source(f"version:{version}")
        settings = _settings(tracking_uri=tracking_uri, ca_bundle=ca_bundle)
        return step(
            _registry(settings),
            model=model_name,
            version=version,
            run_id=run_id,
            min_f1=min_f1,
            max_eval_loss=max_eval_loss,
            actor=_actor(settings, "quality-gate"),
        )

    _run("quality-gate", output_dir, action)


def compare_decision(
    model_name: ModelName,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    vllm_url: VllmUrl = None,
    eval_data: EvalData = DEFAULT_EVAL_DATA,
    output_dir: OutputDir = None,
    min_score: Annotated[
        float, typer.Option("--min-score", help="Floor for the candidate's mean token F1.")
    ] = 0.5,
    margin: Annotated[
        float,
        typer.Option("--margin", min=0.0, help="Non-inferiority margin in mean F1 (CI low >= -margin)."),
    ] = 0.05,
    confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999)] = 0.95,
    bootstrap_samples: Annotated[int, typer.Option("--bootstrap-samples", min=100, max=100000)] = 2000,
    judge_url: Annotated[
        str | None,
        typer.Option("--judge-url", help="OpenAI-compatible judge endpoint (default: --vllm-url)."),
    ] = None,
    judge_model: Annotated[
        str | None,
        typer.Option("--judge-model", help="Judge model (default: the judge server's base model)."),
    ] = None,
    judge_api_key: Annotated[
        str | None,
        typer.Option("--judge-api-key", envvar="LORADEPLOY_JUDGE_API_KEY", show_default=False),
    ] = None,
    min_win_rate: Annotated[
        float, typer.Option("--min-win-rate", min=0.0, max=1.0, help="Judge: wins + ties/2 over questions.")
    ] = 0.4,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=1024)] = 48,
    request_timeout: Annotated[
        float,
        typer.Option(
            "--request-timeout",
            min=1.0,
            help="Seconds to wait for one answer (they queue on the server).",
        ),
    ] = 120.0,
    seed: GateSeed = 0,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Gate 1: candidate slot vs live slot on the eval set (F1 floor, non-inferiority, judge);
    sets eval-passed or eval-failed on the version the candidate slot serves."""

    def action() -> StepResult:
        import httpx

        from loradeploy.clients.vllm import VllmClient
        from loradeploy.domain.gates import EvalThresholds
        from loradeploy.domain.scoring import read_qa
        from loradeploy.steps.compare_decision import CompareRequest, eval_plot
        from loradeploy.steps.compare_decision import compare_decision as step

        request = CompareRequest(
            model=names.model_name(model_name),
            candidate_slot=names.slot_name(candidate_slot),
            live_slot=names.slot_name(live_slot),
            examples=read_qa(eval_data),
            thresholds=EvalThresholds(
                min_score=min_score,
                margin=margin,
                confidence=confidence,
                bootstrap_samples=bootstrap_samples,
                min_win_rate=min_win_rate,
                seed=seed,
            ),
            judge_model=judge_model,
            max_tokens=max_tokens,
        )
        measured = _pod_urls(pods, container, kubectl)[:1]  # one named pod, never a random one
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=measured[0] if measured else vllm_url,
            api_key=api_key,
            ca_bundle=ca_bundle,
        )
        key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        # Gate 1 sends its questions at once; under live traffic an answer can queue on a
        # small server for longer than the default 30 s.
        timeout = httpx.Timeout(request_timeout, connect=5.0)
        with (
            _vllm(settings, timeout_s=request_timeout) as vllm,
            VllmClient(
                judge_url or settings.require_vllm_url(),
                api_key=judge_api_key if judge_url else (judge_api_key or key),
                verify=settings.verify,
                timeout=timeout,
            ) as judge,
            err.status(f"Gate 1: {len(request.examples)} questions through {candidate_slot} and {live_slot}"),
        ):
            result = step(
                request,
                registry=_registry(settings),
                vllm=vllm,
                judge=judge,
                actor=_actor(settings, "compare-decision"),
            )
        result.details["measured"] = [settings.vllm_url]
        _gate_report(
            output_dir, result, f"Gate 1 (evaluation) for {model_name} version {result.version}", eval_plot
        )
        return result

    _run("compare-decision", output_dir, action)


def perf_decision(
    model_name: ModelName,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    vllm_url: VllmUrl = None,
    eval_data: Annotated[
        Path, typer.Option("--eval-data", help="Questions used as the load's prompts.")
    ] = DEFAULT_EVAL_DATA,
    output_dir: OutputDir = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64)] = 4,
    requests: Annotated[int, typer.Option("--requests", min=1, max=10000, help="Requests per slot.")] = 32,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=1024)] = 32,
    max_p50_ratio: Annotated[float, typer.Option("--max-p50-ratio", min=0.0)] = 1.5,
    max_p95_ratio: Annotated[float, typer.Option("--max-p95-ratio", min=0.0)] = 1.75,
    min_throughput_ratio: Annotated[float, typer.Option("--min-throughput-ratio", min=0.0)] = 0.7,
    max_error_rate: Annotated[float, typer.Option("--max-error-rate", min=0.0, max=1.0)] = 0.01,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=1.0, help="Seconds before a request counts as an error.")
    ] = 120.0,
    seed: GateSeed = 0,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
) -> None:
    """Gate 2: the same concurrent load at both slots, interleaved; latency ratios,
    throughput ratio, error rate; sets perf-passed or perf-failed."""

    def action() -> StepResult:

        from loradeploy.domain.gates import PerfThresholds
        from loradeploy.domain.scoring import qa_messages, read_qa
        from loradeploy.steps.perf_decision import PerfRequest, perf_plot
        from loradeploy.steps.perf_decision import perf_decision as step

        request = PerfRequest(
            model=names.model_name(model_name),
            candidate_slot=names.slot_name(candidate_slot),
            live_slot=names.slot_name(live_slot),
            prompts=[qa_messages(example) for example in read_qa(eval_data)],
            thresholds=PerfThresholds(
                max_p50_ratio=max_p50_ratio,
                max_p95_ratio=max_p95_ratio,
                min_throughput_ratio=min_throughput_ratio,
                max_error_rate=max_error_rate,
            ),
            concurrency=concurrency,
            requests=requests,
            max_tokens=max_tokens,
            seed=seed,
        )
        measured = _pod_urls(pods, container, kubectl)[:1]  # one named pod, never a random one
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=measured[0] if measured else vllm_url,
            api_key=api_key,
            ca_bundle=ca_bundle,
        )
        with (
            _vllm(settings, timeout_s=request_timeout) as vllm,
            err.status(f"Gate 2: {requests} requests per slot, {concurrency} at a time"),
        ):
            result = step(
                request, registry=_registry(settings), vllm=vllm, actor=_actor(settings, "perf-decision")
            )
        result.details["measured"] = [settings.vllm_url]
        _gate_report(
            output_dir, result, f"Gate 2 (performance) for {model_name} version {result.version}", perf_plot
        )
        return result

    _run("perf-decision", output_dir, action)
