"""``loradeploy stack up | down | status``: the local stack."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from loradeploy.cli.common import (
    _local_stack,
    _print_error,
    err,
    out,
)
from loradeploy.errors import ExitCode, LoraDeployError

if TYPE_CHECKING:
    pass


StackHome = Annotated[
    Path | None,
    typer.Option("--home", help="Stack folder (env LORADEPLOY_HOME, default .loradeploy)."),
]


def stack_up(
    home: StackHome = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=4)] = 1,
    router: Annotated[
        bool,
        typer.Option(
            "--router/--no-router",
            help="Also start routed mode's router (the LiteLLM proxy) in front of vLLM.",
        ),
    ] = False,
) -> None:
    """Start MLflow and vLLM (idempotent) and write the connection details, with a demo
    signing key pair (keys/ in the stack folder) that the stack trusts and requires."""
    stack = _local_stack(home, replicas, signing=True, router=router)
    try:
        with err.status("starting the local stack") as status:
            info = stack.up(
                on_tick=lambda name, s: status.update(f"waiting for {name} to be healthy ({s:.0f}s)")
            )
    except LoraDeployError as exc:
        _print_error(exc.one_line())
        raise typer.Exit(int(exc.exit_code)) from None
    _render_stack(stack)
    out.print(f"tracking URI {info.tracking_uri}  vLLM {info.vllm_url}  adapters {info.adapters_root}")
    if info.router_url is not None:
        out.print(f"router {info.router_url} (key in {info.router_key_file}, routes in {info.router_config})")
    if info.sign_key is not None:
        out.print(
            f"signing key {info.sign_key} (trusted and required: {', '.join(map(str, info.trusted_keys))})"
        )


def stack_down(home: StackHome = None) -> None:
    """Stop the servers (whole process groups). Data and logs are kept."""
    stopped = _local_stack(home).down()
    out.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


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
    rows = stack.status()
    for row in rows:
        state = "healthy" if row.healthy else ("starting/unhealthy" if row.running else "stopped")
        table.add_row(row.name, row.url or "-", str(row.pid or "-"), state, str(row.log or "-"))
    out.print(table)
    if any(row.name == "router" for row in rows):
        from loradeploy.domain.routes import describe

        try:
            client = stack.router_client([])
            routes, shadows = client.routes(), client.shadows()
        except LoraDeployError as exc:
            out.print(f"routes: {exc.one_line()}")
            return
        for stable, weights in sorted(routes.items()):
            out.print(f"route {stable} -> {describe(weights, shadows.get(stable))}")
        if not routes:
            out.print("routes: none yet")
