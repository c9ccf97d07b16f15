"""``loradeploy metrics``: routed mode's live figures in Prometheus's text format."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import _print_error, _registry, _secrets, _settings
from loradeploy.cli.options import ApiKey, CaBundle, TrackingUri
from loradeploy.errors import ExitCode, LoraDeployError, UsageError, redact

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

LISTEN_HOST = "127.0.0.1"


def metrics(
    listen: Annotated[
        int | None,
        typer.Option(
            "--listen",
            help="Serve them on this port of 127.0.0.1 until stopped, read again for every scrape.",
            min=1,
            max=65535,
        ),
    ] = None,
    model_name: Annotated[
        list[str] | None,
        typer.Option(
            "--model-name", help="Also count this model's alias moves from its history (repeatable)."
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    api_key: ApiKey = None,
    ca_bundle: CaBundle = None,
) -> None:
    """Routed mode's figures per versioned name (local stack's router, 'stack up
    --router'): requests, errors, latency and tokens from the router's request log, which
    replica serves which versioned name, the routes and the replicas that do not serve a
    routed version; with --model-name, the alias moves its history records. Prints them
    once in Prometheus's text format, or serves them."""
    try:
        from loradeploy.clients import wiring
        from loradeploy.clients.request_log import RequestLog
        from loradeploy.domain.metrics import Snapshot, registry_of, render
        from loradeploy.domain.names import model_name as checked_model_name
        from loradeploy.steps.metrics import snapshot

        models = [checked_model_name(name) for name in model_name or []]
        settings = _settings(tracking_uri=tracking_uri, api_key=api_key, ca_bundle=ca_bundle)
        audit = _registry(settings) if models else None
        router = wiring.router_client(settings)
        stack = settings.stack
        if stack is None or stack.router_log is None:
            raise UsageError(
                "the stack file names no request log (written by an older 'stack up')",
                hint="run 'loradeploy stack up --router' again",
            )
        log = RequestLog(stack.router_log)
        with wiring.replicas(settings, router.backends) as replicas:

            def take() -> Snapshot:
                return snapshot(log, replicas, router.routes, audit=audit, models=models)

            if listen is None:
                typer.echo(render(take()), nl=False)
                return
            serve(listen, registry_of(take))
    except LoraDeployError as exc:
        _print_error(redact(exc.one_line(), _secrets()))
        raise typer.Exit(int(exc.exit_code)) from None


def serve(port: int, registry: CollectorRegistry, stop: threading.Event | None = None) -> None:
    """Serve ``registry`` on ``port`` of the loopback until Ctrl-C, SIGTERM or ``stop``."""
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=LISTEN_HOST, registry=registry)
    except OSError as exc:
        _print_error(
            f"--listen {port}: cannot listen on {LISTEN_HOST}:{port} ({exc.strerror}); next: pick a free port"
        )
        raise typer.Exit(int(ExitCode.USAGE)) from None
    typer.echo(f"serving metrics on http://{LISTEN_HOST}:{port}/metrics (Ctrl-C stops)")
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)
