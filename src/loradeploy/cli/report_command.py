"""The release report: one HTML page for a version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from loradeploy.cli.common import (
    _registry,
    _run,
    _settings,
    err,
    out,
)
from loradeploy.cli.options import (
    CaBundle,
    ModelName,
    TrackingUri,
)
from loradeploy.domain import names

if TYPE_CHECKING:
    from loradeploy.results import StepResult


def release_report(
    model_name: ModelName,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", help="Write <model>-v<version>.html and result.json here.")
    ],
    version: Annotated[
        str | None, typer.Option("--version", help="Version to report on (default: the one 'live' names).")
    ] = None,
    results_dir: Annotated[
        list[Path] | None,
        typer.Option("--results-dir", help="Folder searched for the steps' result.json; repeatable."),
    ] = None,
    traffic: Annotated[
        Path | None,
        typer.Option(
            "--traffic", help='Client requests, JSON lines {"start","latency_s","ok"} (the demo\'s).'
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    ca_bundle: CaBundle = None,
) -> None:
    """One self-contained HTML page for a release: provenance, every step, both gates with
    their plots, and the alias moves; built from the registry and the steps' result.json."""

    def action() -> StepResult:
        from loradeploy.steps.report import release_report as step

        names.model_name(model_name)
        if version is not None:
            names.parse_source(f"version:{version}")
        settings = _settings(tracking_uri=tracking_uri, ca_bundle=ca_bundle)
        with err.status(f"building the release report of {model_name}"):
            return step(
                _registry(settings),
                model=model_name,
                version=version,
                results_dirs=results_dir or [],
                output_dir=output_dir,
                traffic=traffic,
            )

    def render(result: StepResult) -> None:
        out.print(f"release report: {result.details['report']} ({result.details['bytes']} bytes)")

    _run("report", output_dir, action, render)
