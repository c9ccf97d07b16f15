"""The ``loradeploy`` command line: parse, build settings once, call one step, render,
map errors to exit codes (``errors.ExitCode``). Nothing else happens here.

Every command is listed below, in the order ``--help`` shows them, with the module that
holds it. The modules share ``options`` (flags) and ``common`` (settings, clients,
rendering, exit codes); what a command builds from its settings (clients, transport,
replicas, adapter policy) is ``clients.wiring``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

import typer

from loradeploy import __version__
from loradeploy.cli import (
    alias_commands,
    canary_command,
    gate_commands,
    load_version_command,
    metrics_command,
    reconcile_commands,
    registry_commands,
    report_command,
    route_command,
    serving_commands,
    stack_commands,
)
from loradeploy.cli.common import err, out

app = typer.Typer(
    name="loradeploy",
    help="Deploy LoRA adapters from the MLflow Model Registry to running vLLM servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(help="The local stack: real MLflow and vLLM servers on loopback.")
app.add_typer(stack_app, name="stack")


def version() -> None:
    """Print the loradeploy version."""
    out.print(__version__)


app.command("version")(version)
app.command("register")(registry_commands.register)
app.command("sign")(registry_commands.sign)
app.command("load-adapter")(serving_commands.load_adapter)
app.command("smoke-test")(serving_commands.smoke_test)
app.command("set-staged-alias")(alias_commands.set_staged_alias)
app.command("promote-adapter")(alias_commands.promote_adapter)
app.command("init-load-adapters")(serving_commands.init_load_adapters)
app.command("restart-deployment")(serving_commands.restart_deployment)
app.command("status")(reconcile_commands.status)
app.command("history")(alias_commands.history)
app.command("unlock")(alias_commands.unlock)
app.command("reconcile")(reconcile_commands.reconcile)
app.command("quality-gate")(gate_commands.quality_gate)
app.command("compare-decision")(gate_commands.compare_decision)
app.command("perf-decision")(gate_commands.perf_decision)
app.command("train")(registry_commands.train)
app.command("report")(report_command.release_report)
app.command("route")(route_command.route)
app.command("canary")(canary_command.canary)
app.command("load-version")(load_version_command.load_version)
app.command("metrics")(metrics_command.metrics)
stack_app.command("up")(stack_commands.stack_up)
stack_app.command("down")(stack_commands.stack_down)
stack_app.command("status")(stack_commands.stack_status)


def main() -> None:
    """Console-script entry point. ``kill -USR1 <pid>`` prints every thread's stack to
    stderr, for a run that seems stuck.

    MLflow's client reports usage to an outside service from every process that uses it
    (a DNS look-up and a request per command, found with strace); a release tool runs in
    clusters that may not reach it, so loradeploy turns that off unless
    ``MLFLOW_DISABLE_TELEMETRY`` is set already."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
