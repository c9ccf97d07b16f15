"""What every command module shares: the consoles, settings read once, the clients,
running a step and turning its result or error into output, files and an exit code
(``errors.ExitCode``).

The names keep their leading underscore: they are the command modules' helpers, not an
interface of the package.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loradeploy.domain import names
from loradeploy.errors import CheckFailedError, ExitCode, LoraDeployError, redact

if TYPE_CHECKING:  # imported where used: pydantic would double the start-up of --help
    from loradeploy.results import StepResult
    from loradeploy.settings import Settings
    from loradeploy.steps.swap import Patience

out = Console()
err = Console(stderr=True)

# Never printed or written: error lines are scrubbed of these values (and of URL user info).
_SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "VLLM_API_KEY")
_given_secrets: set[str] = set()


def _secrets() -> list[str]:
    return [*(os.environ.get(name, "") for name in _SECRET_ENV), *_given_secrets]


def _settings(**flags: Any) -> Settings:
    if flags.get("api_key"):
        _given_secrets.add(str(flags["api_key"]))
    from loradeploy.settings import load_settings

    return load_settings(flags, os.environ, Path.cwd())


@contextmanager
def _vllm(settings: Settings, url: str | None = None, *, timeout_s: float | None = None) -> Iterator[Any]:
    from loradeploy.clients import wiring

    with wiring.vllm_client(settings, url, timeout_s=timeout_s) as client:
        yield client


def _registry(settings: Settings) -> Any:
    from loradeploy.clients import wiring

    return wiring.registry_client(settings)


def _actor(settings: Settings, step: str) -> Any:
    from loradeploy.clients import wiring

    return wiring.actor(settings, step)


def _pod_urls(pods: str | None, container: str, kubectl: str) -> list[str]:
    """One URL per Ready pod for ``--pods NAMESPACE/SELECTOR``, found as load-adapter's
    kubectl transport finds them; empty without ``--pods``."""
    from loradeploy.clients import wiring

    return wiring.pod_urls(pods, container, kubectl)


def _manifest(settings: Settings, model: str, live_slot: str, candidate_slot: str) -> Any:
    """Which slot restores which alias in lora-modules.json (as init-load-adapters writes it)."""
    from loradeploy.domain.aliases import LIVE, STAGED
    from loradeploy.steps.manifest import ManifestSpec

    return ManifestSpec(
        model=model,
        slot_for_alias={LIVE: names.slot_name(live_slot), STAGED: names.slot_name(candidate_slot)},
        base_model_name=settings.stack.served_model if settings.stack else None,
    )


def _local_stack(
    home: Path | None,
    replicas: int = 1,
    assets: Path | None = None,
    signing: bool = False,
    router: bool = False,
) -> Any:
    from loradeploy.settings import STACK_FILE, read_stack
    from loradeploy.stack.local import LocalStack, StackConfig

    root = (home or Path(os.environ.get("LORADEPLOY_HOME", ".loradeploy"))).resolve()
    if assets is None and (root / STACK_FILE).is_file():
        assets = read_stack(root / STACK_FILE).assets  # keep what an earlier 'up' used
    found = assets or Path(os.environ.get("LORADEPLOY_ASSETS", str(root)))
    return LocalStack(
        StackConfig(home=root, assets=found.resolve(), replicas=replicas, signing=signing, router=router)
    )


def swap_patience(settings: Settings) -> Patience:
    """How long the swaps of this command wait on a server that stopped answering."""
    from loradeploy.steps.swap import Patience

    return Patience(unknown_load_s=settings.swap_watch_s, restore_s=settings.swap_restore_s)


def _print_error(line: str) -> None:
    """One line on stderr, printed literally (messages may hold '[' from user input)."""
    err.print("[red]error:[/] " + escape(line), highlight=False, soft_wrap=True)


def _finish(result: StepResult, output_dir: Path | None, render: Callable[[StepResult], None]) -> None:
    if not result.passed:
        failed = [c.name for c in result.checks if not c.passed]
        result.status = "failed"
        result.exit_code = int(ExitCode.CHECK_FAILED)
        result.error = CheckFailedError(f"{result.step}: checks failed: {', '.join(failed)}").one_line()
    if output_dir:
        from loradeploy.results import write_outputs

        write_outputs(output_dir, result)
    render(result)
    if result.status == "failed":
        _print_error(result.error or "")
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _run(
    step: str,
    output_dir: Path | None,
    action: Callable[[], StepResult],
    render: Callable[[StepResult], None] | None = None,
) -> None:
    """Run one step, render its result, and turn errors into exit codes."""
    if output_dir:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # before the step acts: a step that moved an alias must be able to say so
            _print_error(
                f"--output-dir {output_dir}: cannot be a folder ({exc.strerror}); "
                "next: pass a folder path, or remove the file in its way"
            )
            raise typer.Exit(int(ExitCode.USAGE)) from None
    try:
        result = action()
    except LoraDeployError as exc:
        line = redact(exc.one_line(), _secrets())
        if output_dir:
            from loradeploy.results import StepResult, write_outputs

            failed = StepResult(
                step=step, status="error", exit_code=int(exc.exit_code), error=line, details=exc.details
            )
            write_outputs(output_dir, failed)
        _print_error(line)
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
    for warning in result.details.get("warnings", []):
        err.print("[yellow]warning:[/] " + escape(str(warning)), highlight=False, soft_wrap=True)
