"""``loradeploy report``: one release's evidence, gathered and written as an HTML page.

Gathers, reading only: the version's tags and training run from the registry, the
model's aliases and audit history, and every ``result.json`` under the given folders
that names this version (``domain.release_report.belongs_to``). Building the page is
pure (``domain.release_report.build_page``); this step only reads and writes the file.
Nothing is moved and no server but MLflow is asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from loradeploy import __version__
from loradeploy.clients.registry import VersionInfo
from loradeploy.coordination import history
from loradeploy.coordination.audit import AuditRegistry
from loradeploy.domain.aliases import LIVE
from loradeploy.domain.release_report import (
    FoundResult,
    ReleaseEvidence,
    TrafficRequest,
    TrainingRun,
    belongs_to,
    build_page,
)
from loradeploy.errors import NotFoundError, UsageError
from loradeploy.results import StepResult, Timer, now_iso

RESULT_FILE = "result.json"
REPORT_STEP = "report"  # an earlier report's own result.json is no evidence


class ReportRegistry(AuditRegistry, Protocol):
    """What the report reads from the registry (``clients.registry.MLflowHelper``)."""

    def get_aliases(self, name: str) -> dict[str, str]: ...

    def get_version(self, name: str, version: str, via: str | None = None) -> VersionInfo: ...

    def get_run_metrics(self, run_id: str) -> dict[str, float]: ...

    def get_run_params(self, run_id: str) -> dict[str, str]: ...


def page_name(model: str, version: str) -> str:
    return f"{model}-v{version}.html"


def read_results(folders: Sequence[Path], model: str, version: str) -> tuple[list[FoundResult], list[str]]:
    """Every ``result.json`` under ``folders`` that names ``model`` ``version``, oldest
    first, and a note for each file that could not be read."""
    found: list[FoundResult] = []
    notes: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"results folder {folder} does not exist", hint="pass the steps' --output-dir")
        for path in sorted(folder.rglob(RESULT_FILE)):
            try:
                result = StepResult.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                notes.append(f"{path}: not a step result ({type(exc).__name__}); skipped")
                continue
            if result.step != REPORT_STEP and belongs_to(result, model, version):
                found.append(FoundResult(path=str(path), result=result))
    found.sort(key=lambda item: (item.result.started_at, item.path))
    return found, notes


def read_traffic(path: Path) -> list[TrafficRequest]:
    """JSON lines ``{"start": epoch s, "latency_s": s, "ok": bool}``, one per request."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"traffic file {path}: {exc.strerror}", hint="pass a file the demo wrote") from exc
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            requests.append(TrafficRequest.model_validate_json(line))
        except ValidationError as exc:
            raise UsageError(
                f"traffic file {path} line {number} is not a request record ({exc.error_count()} errors)",
                hint='each line must be {"start": <epoch s>, "latency_s": <s>, "ok": true|false}',
            ) from exc
    return requests


def _training(registry: ReportRegistry, run_id: str | None, notes: list[str]) -> TrainingRun | None:
    if run_id is None:
        return None
    try:
        return TrainingRun(
            run_id=run_id, params=registry.get_run_params(run_id), metrics=registry.get_run_metrics(run_id)
        )
    except NotFoundError as exc:
        notes.append(f"training run {run_id}: {exc.message}")
        return None


def release_report(
    registry: ReportRegistry,
    *,
    model: str,
    version: str | None,
    results_dirs: Sequence[Path],
    output_dir: Path,
    traffic: Path | None = None,
) -> StepResult:
    """Write ``<output_dir>/<model>-v<version>.html``; ``version`` None: the one ``live`` names."""
    result = StepResult(step=REPORT_STEP, model=model)
    timer = Timer(result.timings_s)
    with timer("registry"):
        aliases = registry.get_aliases(model)
        if version is None:
            if LIVE not in aliases:
                raise UsageError(
                    f"model {model!r} has no {LIVE!r} alias to take the version from",
                    hint="pass --version",
                )
            version = aliases[LIVE]
        result.version = version
        info = registry.get_version(model, version)
        notes: list[str] = []
        training = _training(registry, info.run_id, notes)
        moves = history(registry, model)
    with timer("results"):
        steps, unreadable = read_results(results_dirs, model, version)
        requests = read_traffic(traffic) if traffic is not None else []
    if not results_dirs:
        notes.append("no --results-dir given: the steps' result.json files were not read")
    evidence = ReleaseEvidence(
        model=model,
        version=version,
        generated_at=now_iso(),
        generator=f"loradeploy {__version__}",
        aliases=aliases,
        version_tags=info.tags,
        run_id=info.run_id,
        training=training,
        steps=steps,
        history=moves,
        traffic=requests,
        notes=notes + unreadable,
    )
    with timer("page"):
        page = build_page(evidence)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / page_name(model, version)
    path.write_text(page, encoding="utf-8")
    result.details = {
        "report": str(path),
        "bytes": len(page.encode("utf-8")),
        "step_results": [found.path for found in steps],
        "notes": evidence.notes,
    }
    return result
