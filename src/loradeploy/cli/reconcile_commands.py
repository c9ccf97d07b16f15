"""What the aliases name against what every replica serves: status shows it, reconcile
repairs it (once, or watching)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from loradeploy.cli.common import (
    _actor,
    _manifest,
    _print_error,
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
    SwapOpt,
    TrackingUri,
    TransportOpt,
    TrustedCas,
    TrustedKeys,
    VllmUrls,
)
from loradeploy.domain import names
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import LoraDeployError, UsageError

if TYPE_CHECKING:
    from loradeploy.results import StepResult
    from loradeploy.settings import Settings
    from loradeploy.steps.status import Traffic


def status(
    model_name: ModelName,
    vllm_url: VllmUrls = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
    pods: PodsOpt = None,
    container: Container = "vllm",
    kubectl: Kubectl = "kubectl",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (with routed mode's figures).")
    ] = False,
    window: Annotated[
        float,
        typer.Option("--window", help="Routed mode: seconds of the router's request log to count.", min=1),
    ] = 300.0,
) -> None:
    """Aliases next to what every replica serves; drift is marked and exits 1. With the
    local stack's router ('stack up --router'): the routes to the model's versions, which
    replica serves each versioned name, and each version's requests, errors and latency
    over the last --window seconds of the router's request log."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.steps.status import status as step

        names.model_name(model_name)
        slots = {"live": names.slot_name(live_slot), "staged": names.slot_name(candidate_slot)}
        settings = _settings(tracking_uri=tracking_uri, api_key=api_key, ca_bundle=ca_bundle)
        urls = wiring.replica_urls(settings, wiring.Where.pods(pods, vllm_url, container, kubectl))
        traffic = _traffic(settings, window)
        with wiring.replicas(settings, urls) as replicas:
            return step(
                _registry(settings), replicas, model=model_name, slot_for_alias=slots, traffic=traffic
            )

    _run("status", output_dir, action, _render_json if as_json else _render_status)


def _traffic(settings: Settings, window_s: float) -> Traffic | None:
    """The router's records of the last ``window_s`` seconds and its routes, when the
    stack file names a router with a request log."""
    stack = settings.stack
    if stack is None or stack.router_log is None or stack.router_url is None:
        return None
    from loradeploy.clients import wiring
    from loradeploy.clients.request_log import RequestLog
    from loradeploy.steps.status import Traffic

    end = time.time()
    log = RequestLog(stack.router_log)
    records = log.read(since=end - window_s, until=end)
    routes = wiring.router_client(settings).routes()
    return Traffic(records=records, start=end - window_s, end=end, routes=routes, skipped_lines=log.skipped)


def _render_json(result: StepResult) -> None:
    typer.echo(result.model_dump_json(indent=2))


def _render_status(result: StepResult) -> None:
    aliases = result.details.get("aliases", {})
    table = Table(title=f"{result.model}: aliases")
    table.add_column("alias")
    table.add_column("version")
    for alias, version in sorted(aliases.items()):
        table.add_row(alias, version)
    out.print(table)
    served = Table(title="what the replicas serve")
    served.add_column("alias -> slot @ replica")
    served.add_column("state", overflow="fold")
    for check in result.checks:
        mark = "[green]ok[/]" if check.passed else "[red]DRIFT[/]"
        served.add_row(check.name, f"{mark} {check.detail}")
    out.print(served)


class _StopOnSignal:
    """``wait(seconds)`` for the watch loop: True once SIGTERM (or Ctrl-C) arrived.

    The handler only sets a flag; the short sleeps let the loop notice it within half a
    second, and the round in progress always finishes first.
    """

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, *_: object) -> None:
        self.stopped = True

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
        return self.stopped


def reconcile(
    model_name: ModelName,
    vllm_url: VllmUrls = None,
    live_slot: LiveSlot = DEFAULT_LIVE_SLOT,
    candidate_slot: CandidateSlot = DEFAULT_CANDIDATE_SLOT,
    watch: Annotated[bool, typer.Option("--watch", help="Repeat until SIGTERM.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between rounds (--watch).")
    ] = 30.0,
    max_backoff: Annotated[
        float, typer.Option("--max-backoff", min=1.0, help="Longest wait after failed rounds (--watch).")
    ] = 300.0,
    output_dir: OutputDir = None,
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
    write_manifest: Annotated[
        bool, typer.Option("--write-manifest", help="Keep lora-modules.json equal to what is served.")
    ] = False,
    base_model_name: Annotated[
        str | None, typer.Option("--base-model-name", help="Served base model, for lora-modules.json.")
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option("--ready-file", help="Exists while every slot serves what its alias names (--watch)."),
    ] = None,
    trusted_key: TrustedKeys = None,
    trusted_ca: TrustedCas = None,
    require_signature: RequireSignature = None,
) -> None:
    """Serve what the aliases name: live -> live slot, staged -> candidate slot, on every
    replica. Repairs missing or wrong slots; never changes aliases, never unloads."""

    def action() -> StepResult:
        from loradeploy.clients import wiring
        from loradeploy.domain.aliases import LIVE, STAGED
        from loradeploy.steps.reconcile import ReconcileRequest
        from loradeploy.steps.reconcile import reconcile as step
        from loradeploy.steps.reconcile import watch as watch_loop

        slots = {LIVE: names.slot_name(live_slot), STAGED: names.slot_name(candidate_slot)}
        if slots[LIVE] == slots[STAGED]:
            raise UsageError(f"--live-slot and --candidate-slot are both {live_slot!r}")
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
        request = ReconcileRequest(
            model=names.model_name(model_name),
            slot_for_alias=slots,
            strategy=swap_strategy,
            policy=wiring.adapter_policy(settings),
            patience=swap_patience(settings),
            write_manifest=write_manifest,
            base_model_name=base_model_name,
        )
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # not ready until a round has said so

        def once() -> StepResult:  # pods and clients are found again every round
            where = wiring.Where(
                vllm_url, transport, namespace, selector, container, pod_adapters_root, kubectl
            )
            with wiring.targets(settings, where) as (files, replicas):
                return step(
                    request,
                    registry=_registry(settings),
                    replicas=replicas,
                    transport=files,
                    actor=_actor(settings, "reconcile"),
                    manifest=_manifest(settings, request.model, live_slot, candidate_slot),
                    router=wiring.optional_router(settings, where, files),
                )

        if not watch:
            return once()
        stop = _StopOnSignal()
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            rounds = watch_loop(
                once, interval_s=interval, max_backoff_s=max_backoff, wait=stop.wait, report=report
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        from loradeploy.results import StepResult

        return StepResult(
            step="reconcile", model=model_name, details={"rounds": rounds, "stopped": "SIGTERM"}
        )

    def report(result: StepResult | None, error: LoraDeployError | None, delay: float) -> None:
        if ready_file is not None:
            from loradeploy.steps.reconcile import ready

            answer = ready(result, error)
            if answer is True:
                ready_file.write_text(f"{time.time():.0f}\n", encoding="utf-8")
            elif answer is False:
                ready_file.unlink(missing_ok=True)
        if output_dir and result is not None:
            from loradeploy.results import write_outputs

            write_outputs(output_dir, result)
        if error is not None:
            _print_error(f"{error.one_line()} (next round in {delay:.0f}s)")
        elif result is not None:
            done = result.details.get("repaired") or []
            state = "in sync" if result.passed else "still drifting"
            err.print(f"reconcile {model_name}: {len(done)} repaired, {state}; next round in {delay:.0f}s")

    _run("reconcile", output_dir, action)
