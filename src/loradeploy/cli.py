"""The ``loradeploy`` command line: parse, build settings once, call one step, render,
map errors to exit codes (``errors.ExitCode``). Nothing else happens here."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from loradeploy import __version__
from loradeploy.domain import names
from loradeploy.domain.swap import SwapStrategy
from loradeploy.errors import CheckFailedError, ExitCode, LoraDeployError
from loradeploy.results import StepResult, write_outputs
from loradeploy.settings import Settings, load_settings

app = typer.Typer(
    name="loradeploy",
    help="Deploy LoRA adapters from the MLflow Model Registry to running vLLM servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(help="The local stack: real MLflow and vLLM servers on loopback.")
app.add_typer(stack_app, name="stack")

out = Console()
err = Console(stderr=True)

# -- shared options ------------------------------------------------------------------------

ModelName = Annotated[str, typer.Option("--model-name", help="Registered model name.")]
SourceOpt = Annotated[str, typer.Option("--source", help="Version to deploy: 'alias:NAME' or 'version:N'.")]
OutputDir = Annotated[
    Path | None,
    typer.Option("--output-dir", help="Write result.json and one file per output value here."),
]
TrackingUri = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (env MLFLOW_TRACKING_URI, or the stack file)."),
]
VllmUrl = Annotated[
    str | None,
    typer.Option("--vllm-url", help="vLLM base URL (env LORADEPLOY_VLLM_URL, or the stack file)."),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", help="vLLM API key (env VLLM_API_KEY).", show_default=False),
]
CaBundle = Annotated[
    Path | None,
    typer.Option("--ca-bundle", help="Extra CA bundle for TLS (env LORADEPLOY_CA_BUNDLE)."),
]


def _settings(**flags: Any) -> Settings:
    return load_settings(flags, os.environ, Path.cwd())


@contextmanager
def _vllm(settings: Settings, url: str | None = None) -> Iterator[Any]:
    from loradeploy.clients.vllm import VllmClient

    api_key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
    client = VllmClient(url or settings.require_vllm_url(), api_key=api_key, verify=settings.verify)
    try:
        yield client
    finally:
        client.close()


def _registry(settings: Settings) -> Any:
    from loradeploy.clients.registry import MLflowHelper

    return MLflowHelper(settings.require_tracking_uri())


def _finish(result: StepResult, output_dir: Path | None, render: Callable[[StepResult], None]) -> None:
    if not result.passed:
        failed = [c.name for c in result.checks if not c.passed]
        result.status = "failed"
        result.exit_code = int(ExitCode.CHECK_FAILED)
        result.error = CheckFailedError(f"{result.step}: checks failed: {', '.join(failed)}").one_line()
    if output_dir:
        write_outputs(output_dir, result)
    render(result)
    if result.status == "failed":
        err.print(f"[red]error:[/] {result.error}", highlight=False, soft_wrap=True)
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _run(
    step: str,
    output_dir: Path | None,
    action: Callable[[], StepResult],
    render: Callable[[StepResult], None] | None = None,
) -> None:
    """Run one step, render its result, and turn errors into exit codes."""
    try:
        result = action()
    except LoraDeployError as exc:
        if output_dir:
            failed = StepResult(step=step, status="error", exit_code=int(exc.exit_code), error=exc.one_line())
            write_outputs(output_dir, failed)
        err.print(f"[red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        raise typer.Exit(int(exc.exit_code)) from None
    _finish(result, output_dir, render or _render_default)


def _render_default(result: StepResult) -> None:
    table = Table(title=f"{result.step}: {result.status}", show_header=True)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key in ("model", "version", "slot", "source"):
        value = getattr(result, key)
        if value is not None:
            table.add_row(key, str(value))
    for check in result.checks:
        mark = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
        shown = check.detail or (
            f"{check.value} (limit {check.threshold})" if check.value is not None else ""
        )
        table.add_row(f"check {check.name}", f"{mark} {shown}")
    if result.timings_s:
        table.add_row("timings (s)", ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items()))
    out.print(table)


def _validated(**values: tuple[Callable[[str], Any], str]) -> dict[str, Any]:
    return {key: check(value) for key, (check, value) in values.items()}


# -- commands ------------------------------------------------------------------------------


@app.command()
def version() -> None:
    """Print the loradeploy version."""
    out.print(__version__)


@app.command()
def register(
    model_name: ModelName,
    adapter_dir: Annotated[Path, typer.Option("--adapter-dir", help="PEFT LoRA adapter folder.")],
    alias: Annotated[str | None, typer.Option("--alias", help="Alias to set on the new version.")] = None,
    tracking_uri: TrackingUri = None,
    output_dir: OutputDir = None,
) -> None:
    """Validate a PEFT LoRA folder and register it as a new model version, tagged with
    base model, rank, target modules and a sha256 per file."""

    def action() -> StepResult:
        names.model_name(model_name)
        if alias is not None:
            names.alias_name(alias)
        from loradeploy.steps.register import register as step

        settings = _settings(tracking_uri=tracking_uri)
        return step(_registry(settings), model=model_name, adapter_dir=adapter_dir, alias=alias)

    _run("register", output_dir, action)


@app.command("load-adapter")
def load_adapter(
    model_name: ModelName,
    source: SourceOpt,
    slot_name: Annotated[str, typer.Option("--slot-name", help="Served adapter name (the slot).")],
    vllm_url: VllmUrl = None,
    output_dir: OutputDir = None,
    adapters_root: Annotated[
        Path | None,
        typer.Option("--adapters-root", help="Folder the vLLM server reads adapters from."),
    ] = None,
    swap_strategy: Annotated[
        SwapStrategy, typer.Option("--swap-strategy", help="How to replace a served adapter.")
    ] = SwapStrategy.AUTO,
    max_lora_rank: Annotated[
        int | None, typer.Option("--max-lora-rank", help="The server's --max-lora-rank.")
    ] = None,
    base_model_alias: Annotated[
        list[str] | None,
        typer.Option("--base-model-alias", help="ADAPTER_BASE=SERVED_BASE, when names differ."),
    ] = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Step 1: download a version from MLflow and load it into the running vLLM server."""

    def action() -> StepResult:
        from loradeploy.clients.files import LocalFolderTransport
        from loradeploy.steps.load_adapter import LoadRequest
        from loradeploy.steps.load_adapter import load_adapter as step

        model, parsed, slot = (
            names.model_name(model_name),
            names.parse_source(source),
            names.slot_name(slot_name),
        )
        settings = _settings(
            tracking_uri=tracking_uri,
            vllm_url=vllm_url,
            adapters_root=adapters_root,
            api_key=api_key,
            ca_bundle=ca_bundle,
            max_lora_rank=max_lora_rank,
            base_model_alias=base_model_alias,
        )
        request = LoadRequest(
            model=model,
            source=parsed,
            slot=slot,
            strategy=swap_strategy,
            max_lora_rank=settings.max_lora_rank,
            base_model_aliases=settings.base_model_aliases,
        )
        transport = LocalFolderTransport(settings.require_adapters_root())
        with _vllm(settings) as vllm, err.status(f"loading {model_name} {source} into {slot_name}"):
            return step(request, registry=_registry(settings), replicas=[vllm], transport=transport)

    _run("load-adapter", output_dir, action)


@app.command("smoke-test")
def smoke_test(
    adapter_name: Annotated[str, typer.Option("--adapter-name", help="Served adapter to test.")],
    vllm_url: VllmUrl = None,
    num_requests: Annotated[int, typer.Option("--num-requests", min=1, max=1000)] = 3,
    max_latency: Annotated[
        float, typer.Option("--max-latency", min=0.0, help="Seconds allowed per request.")
    ] = 30.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=4096)] = 32,
    output_dir: OutputDir = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Step 2: send test prompts to the adapter and check answers and latency."""

    def action() -> StepResult:
        from loradeploy.domain.smoke import DEFAULT_PROMPTS
        from loradeploy.steps.smoke_test import smoke_test as step

        names.slot_name(adapter_name)
        settings = _settings(vllm_url=vllm_url, api_key=api_key, ca_bundle=ca_bundle)
        with _vllm(settings) as vllm, err.status(f"smoke-testing {adapter_name}"):
            return step(
                vllm,
                adapter=adapter_name,
                num_requests=num_requests,
                max_latency_s=max_latency,
                prompts=DEFAULT_PROMPTS,
                max_tokens=max_tokens,
            )

    _run("smoke-test", output_dir, action)


@app.command("set-staged-alias")
def set_staged_alias(
    model_name: ModelName,
    source: SourceOpt,
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Step 3: set the 'staged' alias on the deployed version."""

    def action() -> StepResult:
        from loradeploy.steps.set_staged_alias import set_staged_alias as step

        parsed = names.parse_source(source)
        names.model_name(model_name)
        settings = _settings(tracking_uri=tracking_uri)
        return step(_registry(settings), model=model_name, source=parsed)

    _run("set-staged-alias", output_dir, action)


@app.command()
def status(
    model_name: ModelName,
    vllm_url: Annotated[
        list[str] | None,
        typer.Option("--vllm-url", help="Replica URL; repeat for each (default: the stack's)."),
    ] = None,
    live_slot: Annotated[str, typer.Option("--live-slot")] = "aws-rag-qa-live",
    candidate_slot: Annotated[str, typer.Option("--candidate-slot")] = "aws-rag-qa-candidate",
    output_dir: OutputDir = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Aliases next to what every replica serves; drift is marked and exits 1."""

    def action() -> StepResult:
        from loradeploy.steps.status import status as step

        names.model_name(model_name)
        slots = {"live": names.slot_name(live_slot), "staged": names.slot_name(candidate_slot)}
        settings = _settings(tracking_uri=tracking_uri, api_key=api_key, ca_bundle=ca_bundle)
        urls = list(vllm_url or (settings.stack.vllm_urls if settings.stack else []))
        if not urls:
            urls = [settings.require_vllm_url()]
        with ExitStack() as stack:
            replicas = [stack.enter_context(_vllm(settings, url)) for url in urls]
            return step(_registry(settings), replicas, model=model_name, slot_for_alias=slots)

    _run("status", output_dir, action, _render_status)


def _render_status(result: StepResult) -> None:
    aliases = result.details.get("aliases", {})
    table = Table(title=f"{result.model}: aliases")
    table.add_column("alias")
    table.add_column("version")
    for alias, version in sorted(aliases.items()):
        table.add_row(alias, version)
    out.print(table)
    served = Table(title="what the replicas serve")
    served.add_column("slot @ replica")
    served.add_column("state", overflow="fold")
    for check in result.checks:
        mark = "[green]ok[/]" if check.passed else "[red]DRIFT[/]"
        served.add_row(check.name, f"{mark} {check.detail}")
    out.print(served)


# -- stack ---------------------------------------------------------------------------------


def _local_stack(home: Path | None, replicas: int = 1) -> Any:
    from loradeploy.stack.local import LocalStack, StackConfig

    root = (home or Path(os.environ.get("LORADEPLOY_HOME", ".loradeploy"))).resolve()
    assets = Path(os.environ.get("LORADEPLOY_ASSETS", str(root))).resolve()
    return LocalStack(StackConfig(home=root, assets=assets, replicas=replicas))


StackHome = Annotated[
    Path | None,
    typer.Option("--home", help="Stack folder (env LORADEPLOY_HOME, default .loradeploy)."),
]


@stack_app.command("up")
def stack_up(
    home: StackHome = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=4)] = 1,
) -> None:
    """Start MLflow and vLLM (idempotent) and write the connection details."""
    stack = _local_stack(home, replicas)
    try:
        with err.status("starting the local stack") as status:
            info = stack.up(
                on_tick=lambda name, s: status.update(f"waiting for {name} to be healthy ({s:.0f}s)")
            )
    except LoraDeployError as exc:
        err.print(f"[red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        raise typer.Exit(int(exc.exit_code)) from None
    _render_stack(stack)
    out.print(f"tracking URI {info.tracking_uri}  vLLM {info.vllm_url}  adapters {info.adapters_root}")


@stack_app.command("down")
def stack_down(home: StackHome = None) -> None:
    """Stop the servers (whole process groups). Data and logs are kept."""
    stopped = _local_stack(home).down()
    out.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(home: StackHome = None) -> None:
    """Show what runs where."""
    stack = _local_stack(home)
    _render_stack(stack)
    if not all(row.healthy for row in stack.status()):
        raise typer.Exit(int(ExitCode.TRANSIENT))


def _render_stack(stack: Any) -> None:
    table = Table(title=f"local stack in {stack.home}")
    for column in ("service", "url", "pid", "state", "log"):
        table.add_column(column)
    for row in stack.status():
        state = "healthy" if row.healthy else ("starting/unhealthy" if row.running else "stopped")
        table.add_row(row.name, row.url or "-", str(row.pid or "-"), state, str(row.log or "-"))
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
